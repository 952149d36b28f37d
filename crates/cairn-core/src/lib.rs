//! cairn-core: the durable process model, the storage contract and the
//! in-memory registry.
//!
//! - [`model`] and [`events`]: the process record, outcomes, event types and the
//!   JSON wire shapes.
//! - [`validate`] and [`fold`]: sans-IO rules shared by every backend (what a
//!   registration may declare, what an append means, how the log folds into the record).
//! - [`registry::ProcessRegistry`]: the async storage contract.
//! - [`memory::MemoryRegistry`]: the in-memory implementation.

// `missing_docs` is on per module (each documented module's header) until
// `fold` and `registry` document their last items; then it moves here.
#![warn(unreachable_pub)]

pub mod awaiter;
pub mod clock;
pub mod error;
pub mod events;
pub mod fold;
pub mod memory;
pub mod model;
pub mod processes;
pub mod registry;
pub mod tool;
pub mod validate;
pub mod watch;
pub mod worker;

pub use async_trait::async_trait;
pub use awaiter::{Awaiter, Backoff};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::{CairnError, Result};
pub use events::{
    AppendRequest, AppendResult, EventPage, EventType, EventTypes, ProcessEvent, Selector, SemanticsSpec,
};
pub use memory::MemoryRegistry;
pub use model::*;
pub use processes::{Processes, RuntimeBuilder, StartRequest};
pub use registry::{CancelAnswer, ProcessRegistry, Registered};
pub use tool::{StopReason, Tool, ToolContext, ToolRegistry};
pub use watch::{ChangeHub, EventSink, WatchedRegistry};
pub use worker::{WorkDriver, Worker, WorkerConfig};
