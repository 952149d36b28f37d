//! One public async function per contract. Each takes the store factory, builds
//! a fresh store and panics with a description when the backend breaks the
//! contract. [`crate::conformance_suite!`] runs all of them.

mod abandon;
mod cancel;
mod children;
mod events;
mod filters;
mod leases;
mod modules;
mod order;
mod registration;
mod retention;
mod schedules;
mod sessions;
mod suspension;
mod sweep;
mod wakes;

pub use abandon::*;
pub use cancel::*;
pub use children::*;
pub use events::*;
pub use filters::*;
pub use leases::*;
pub use modules::*;
pub use order::*;
pub use registration::*;
pub use retention::*;
pub use schedules::*;
pub use sessions::*;
pub use suspension::*;
pub use sweep::*;
pub use wakes::*;
