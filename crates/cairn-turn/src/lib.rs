//! Session turns (SPEC §15): a model loop against OpenAI-compatible
//! chat-completions endpoints, run as the `session_turn` input kind.
//!
//! Each model answer is journaled as a `turn.response {step, message, usage}`
//! event and each tool call the model asks for is a child process
//! `{process_id}/{step}.{k}`, so a re-run (after a crash, a suspension on the
//! children, a lost lease) answers finished steps from the log and never
//! calls the model or starts a tool again for them. The runner is a
//! [`cairn_core::Tool`] registered with
//! [`cairn_core::ToolRegistry::register_runner`]; the binary wires it with the
//! models of `cairn serve --model`.

mod client;
mod config;
mod runner;

pub use client::{ChatAnswer, ModelFault, MAX_ANSWER_BYTES, MAX_JSON_BODY_BYTES};
pub use config::{ModelSpec, Models, SHORTEST_REDACTED_KEY};
pub use runner::{RetryPolicy, TurnRunner, DELTA, MAX_REPAIR_ATTEMPTS, MAX_STEPS, RESPONSE};
