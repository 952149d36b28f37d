//! The `shell` tool (SPEC §12).

use async_trait::async_trait;
use serde_json::Value;

use crate::model::Outcome;
use crate::tool::{Tool, ToolContext};

/// Runs a command in its own process group; see SPEC §12.
#[derive(Default)]
pub struct ShellTool {}

#[async_trait]
impl Tool for ShellTool {
    fn name(&self) -> &str {
        "shell"
    }

    async fn run(&self, _ctx: ToolContext, _args: Value) -> Outcome {
        Outcome::failure("tool", "unsupported", "shell is not implemented yet")
    }
}
