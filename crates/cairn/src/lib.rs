//! The `cairn` binary: `cairn serve` (the HTTP/JSON server of SPEC §10 over the
//! [`cairn_core::Processes`] facade) and the CLI client subcommands that talk to it.
//!
//! - [`cli`]: the command line (clap).
//! - [`db`]: opening a storage backend from a database URL.
//! - [`server`]: routes, auth, SSE, metrics, OpenAPI and graceful shutdown.
//! - [`client`]: the CLI client commands.
//! - [`bench`]: `cairn bench`, measured figures over real backends.
//! - [`reference`]: `docs/reference.md`, rendered from the code.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod db;
pub mod duration;
pub mod reference;
pub mod server;
