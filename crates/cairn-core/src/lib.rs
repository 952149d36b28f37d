//! cairn-core: the durable process model, its rules, the storage contract and
//! the runtime above it. A short tour, from the data up:
//!
//! 1. [`model`] and [`events`]: the process record, outcomes, event types and
//!    the JSON wire shapes (SPEC §12).
//! 2. [`validate`]: what a registration may declare, sizes, ids, hashes.
//! 3. [`fold`]: what an append means and how a log folds into its record
//!    ([`select`] evaluates the selectors it reads).
//! 4. [`ops`]: every write operation, written once against the storage
//!    primitives a backend provides ([`ops::WriteTx`], [`ops::admin::AdminTx`]).
//! 5. [`registry::ProcessRegistry`]: the async storage contract each backend
//!    implements ([`memory::MemoryRegistry`] here; SQLite and PostgreSQL in
//!    their own crates), pinned clause by clause by `cairn-testkit`.
//! 6. Above storage: [`watch`] (change hub), [`awaiter`], [`worker`] (leases,
//!    claims, fenced completion), [`tool`] and the [`Processes`] facade.
//!
//! ```
//! # tokio_test_block_on(async {
//! use std::sync::Arc;
//! use cairn_core::{Disposition, MemoryRegistry, ProcessRegistry, Registration};
//!
//! let registry = Arc::new(MemoryRegistry::new());
//! let reg = Registration {
//!     id: "job-1".into(),
//!     input: cairn_core::ProcessInput::External { metadata: serde_json::json!({}) },
//!     disposition: Disposition::ExternallyOwned,
//!     event_types: Vec::new(),
//!     provenance: Default::default(),
//!     wake_target: None,
//!     env_ref: None,
//!     external_ref: None,
//! };
//! let created = registry.register(reg, None).await.unwrap();
//! assert!(created.created);
//! let done = registry
//!     .complete_external("job-1", cairn_core::Outcome::Success { value: serde_json::json!(7) }, "ci")
//!     .await
//!     .unwrap();
//! assert!(done.completed_now);
//! assert_eq!(done.process.status, cairn_core::ProcessStatus::Completed);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod awaiter;
pub mod clock;
pub mod error;
pub mod events;
pub mod fold;
mod hash;
pub mod memory;
pub mod model;
pub mod ops;
pub mod processes;
pub mod registry;
mod retry;
pub mod schedule;
mod scheduler;
pub mod schema_limits;
pub mod script;
pub mod select;
pub mod tool;
pub mod validate;
pub mod watch;
mod wire;
#[cfg(feature = "openapi")]
mod wire_schema;
#[cfg(feature = "openapi")]
pub use wire_schema::{turn_start_contract_forms, turn_start_input_forms};
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
pub use processes::{Listed, Processes, RuntimeBuilder, StartRequest, EVENT_PAGE_BYTES, LIST_PAGE_BYTES};
pub use registry::{CancelAnswer, CompleteAnswer, ProcessRegistry, Registered};
pub use schedule::{
    FireRefusal, FireReport, Overlap, Schedule, ScheduleAdvance, SchedulePage, ScheduleRequest, StartTemplate,
};
pub use script::{Module, ModuleInfo, ModulePut, ScriptEngine};
pub use tool::{FirstOf, StopReason, Tool, ToolContext, ToolRegistry};
pub use watch::{ChangeHub, EndSink, EventSink, Subscription, WatchedRegistry};
pub use worker::{WorkDriver, Worker, WorkerConfig};
