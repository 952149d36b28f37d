//! cairn-tools: the built-in tools of SPEC §12 (`shell`, `sleep`, `echo`,
//! `wait_signal`), written against the [`Tool`] trait of cairn-core.
//!
//! They live apart from cairn-core because `shell` is Unix process plumbing
//! (process groups, signals, pipes): a host that embeds cairn's rules with its
//! own tools does not compile it. A host that wants them registers them:
//!
//! ```no_run
//! # async fn demo() -> cairn_core::Result<()> {
//! use std::sync::Arc;
//! use cairn_core::{MemoryRegistry, Processes};
//!
//! let processes = Processes::builder(Arc::new(MemoryRegistry::new()))
//!     .tools(cairn_tools::builtin_tools(false)) // true also allows `shell`
//!     .start();
//! # processes.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![warn(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use cairn_core::{CairnError, Outcome, Result, Tool, ToolContext, ToolRegistry};

pub mod schemas;
pub mod shell;

pub use schemas::{args_example, args_schema, args_schema_as_taken};
pub use shell::ShellTool;

/// A registry with `sleep`, `echo` and `wait_signal`, plus `shell` when `allow_shell`.
pub fn builtin_tools(allow_shell: bool) -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    tools.register(Arc::new(EchoTool));
    tools.register(Arc::new(SleepTool));
    tools.register(Arc::new(WaitSignalTool));
    if allow_shell {
        tools.register(Arc::new(ShellTool::default()));
    }
    tools
}

/// Parse tool args into `T`, as an `invalid_request` error naming the tool.
/// Args are an object: serde would otherwise read an array into `T`'s fields
/// by position (`[5]` as `{"ms": 5}`). Absent args (`null`) are no fields, so
/// a tool whose fields are all optional runs without any.
pub fn parse_args<T: for<'de> Deserialize<'de>>(tool: &str, args: &Value) -> Result<T> {
    let args = match args {
        Value::Null => Value::Object(Default::default()),
        Value::Object(_) => args.clone(),
        other => {
            return Err(CairnError::InvalidRequest(format!(
                "`{tool}` args must be a JSON object of named fields, not {}",
                cairn_core::validate::json_kind(other)
            )))
        }
    };
    // The field a refusal is about is named (`timeout_ms`), as the API names
    // a body's, and what it takes in wire terms ("a non-negative integer").
    serde_path_to_error::deserialize(&args).map_err(|e| {
        let at = e.path().to_string();
        let why = cairn_core::validate::wire_terms(&e.inner().to_string());
        match at.as_str() {
            "" | "." => CairnError::InvalidRequest(format!("`{tool}` args: {why}")),
            _ => CairnError::InvalidRequest(format!("`{tool}` args: `{at}`: {why}")),
        }
    })
}

/// Refuse a duration past [`schemas::LONGEST_MS`] (a year): a due time
/// beyond it is no real deadline, and far enough past it no longer fits the
/// signed 64-bit integers that store due times.
pub(crate) fn check_ms(tool: &str, field: &str, ms: Option<u64>) -> Result<()> {
    match ms {
        Some(ms) if ms > schemas::LONGEST_MS => Err(CairnError::InvalidRequest(format!(
            "`{tool}` args: `{field}` is {ms} ms, over the limit of {} ms (a year)",
            schemas::LONGEST_MS
        ))),
        _ => Ok(()),
    }
}

/// The outcome a tool returns for args that do not parse at run time.
pub fn bad_args(err: CairnError) -> Outcome {
    Outcome::failure("tool", "invalid_args", err.to_string())
}

/// The cancelled outcome for a stopped run.
pub fn stopped_outcome(ctx: &ToolContext) -> Outcome {
    ctx.stopped_outcome()
}

/// `echo {"value": ...}`: succeeds with the value.
pub struct EchoTool;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoArgs {
    #[serde(default)]
    value: Value,
}

#[async_trait]
impl Tool for EchoTool {
    fn name(&self) -> &str {
        "echo"
    }

    fn args_schema(&self) -> Option<Value> {
        crate::schemas::args_schema(self.name())
    }

    fn validate_args(&self, args: &Value) -> Result<()> {
        parse_args::<EchoArgs>("echo", args).map(|_| ())
    }

    async fn run(&self, _ctx: ToolContext, args: Value) -> Outcome {
        match parse_args::<EchoArgs>("echo", &args) {
            Ok(a) => Outcome::success(a.value),
            Err(e) => bad_args(e),
        }
    }
}

/// `sleep {"ms": N}`: succeeds with `{"slept_ms": N}` once N ms have passed
/// since it first ran; cancellable. Durable: in a `rerunnable` process it
/// suspends (SPEC §13), so the wait holds no worker and survives restarts.
pub struct SleepTool;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    ms: u64,
}

#[async_trait]
impl Tool for SleepTool {
    fn name(&self) -> &str {
        "sleep"
    }

    fn args_schema(&self) -> Option<Value> {
        crate::schemas::args_schema(self.name())
    }

    fn validate_args(&self, args: &Value) -> Result<()> {
        let a = parse_args::<SleepArgs>("sleep", args)?;
        check_ms("sleep", "ms", Some(a.ms))
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        let a = match parse_args::<SleepArgs>("sleep", &args) {
            Ok(a) => a,
            Err(e) => return bad_args(e),
        };
        match ctx.sleep(Duration::from_millis(a.ms)).await {
            Ok(()) => Outcome::success(serde_json::json!({"slept_ms": a.ms})),
            Err(_) if ctx.is_stopped() => stopped_outcome(&ctx),
            Err(e) => Outcome::failure("runtime", e.code(), e.to_string()),
        }
    }
}

/// `wait_signal {"name": "...", "timeout_ms"?}`: waits durably for the next
/// signal of that name and succeeds with its payload; fails `timeout` when the
/// timeout passes first.
pub struct WaitSignalTool;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitSignalArgs {
    name: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[async_trait]
impl Tool for WaitSignalTool {
    fn name(&self) -> &str {
        "wait_signal"
    }

    fn args_schema(&self) -> Option<Value> {
        crate::schemas::args_schema(self.name())
    }

    fn validate_args(&self, args: &Value) -> Result<()> {
        let a = parse_args::<WaitSignalArgs>("wait_signal", args)?;
        check_ms("wait_signal", "timeout_ms", a.timeout_ms)?;
        cairn_core::events::validate_signal_name(&a.name)
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        let a = match parse_args::<WaitSignalArgs>("wait_signal", &args) {
            Ok(a) => a,
            Err(e) => return bad_args(e),
        };
        match ctx.wait_signal(&a.name, a.timeout_ms.map(Duration::from_millis)).await {
            Ok(Some(payload)) => Outcome::success(payload),
            Ok(None) => Outcome::failure("tool", "timeout", format!("no `{}` signal within the timeout", a.name)),
            Err(_) if ctx.is_stopped() => stopped_outcome(&ctx),
            Err(e) => Outcome::failure("runtime", e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Absent args are no fields: a tool whose fields are all optional takes
    /// them, one with a required field names it; an array is never read by position.
    #[test]
    fn absent_args_are_no_fields() {
        let echo = parse_args::<EchoArgs>("echo", &Value::Null).expect("echo without args");
        assert_eq!(echo.value, Value::Null);
        let err = parse_args::<WaitSignalArgs>("wait_signal", &Value::Null)
            .err()
            .expect("wait_signal needs a name");
        assert_eq!(
            err.to_string(),
            "invalid request: `wait_signal` args: missing field `name`"
        );
        assert!(parse_args::<EchoArgs>("echo", &json!([1])).is_err());
    }

    /// A duration of the wrong JSON type or range is named by its field
    /// and said in wire terms, not as the Rust type it is read into.
    #[test]
    fn a_refused_duration_is_said_in_wire_terms() {
        let sleep = SleepTool;
        for (args, given) in [
            (json!({"ms": "5"}), "string \"5\""),
            (json!({"ms": -1}), "integer `-1`"),
            (json!({"ms": 1.5}), "number `1.5`"),
            (json!({"ms": [5]}), "array"),
        ] {
            let said = sleep.validate_args(&args).expect_err("refused").to_string();
            assert!(
                said.contains("`sleep` args: `ms`: invalid ")
                    && said.contains(&format!("{given}, expected a non-negative integer")),
                "{args}: {said}"
            );
            assert!(!said.contains("u64"), "{said}");
        }
        let said = WaitSignalTool
            .validate_args(&json!({"name": "go", "timeout_ms": true}))
            .expect_err("refused")
            .to_string();
        assert!(
            said.contains("`timeout_ms`: invalid type: boolean `true`, expected a non-negative integer"),
            "{said}"
        );
    }
}
