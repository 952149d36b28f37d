//! The CLI client commands.

use std::process::ExitCode;

use crate::cli::Command;

/// Run one client command against `server`.
pub async fn run(server: &str, token: Option<&str>, json: bool, command: Command) -> ExitCode {
    let _ = (server, token, json, command);
    ExitCode::FAILURE
}
