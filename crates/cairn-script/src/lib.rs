//! cairn-script: durable JavaScript scripts (SPEC §14) on QuickJS (ADR 0016).
//!
//! [`QuickJs`] is a [`cairn_core::ScriptEngine`]: it compiles modules to
//! learn their exports and runs one activation of a `script` process at a
//! time. An activation is a fresh runtime and context on a thread of its own
//! (QuickJS is single-threaded and not `Send`): no module loader, no timers, no
//! network or file system, a heap limit and a CPU-time interrupt. The function
//! runs from the top; each context call is numbered, and a call the journal
//! (the `script.call` / `script.result` events of the log) already holds is
//! answered from it, so a finished effect never happens twice. New calls are
//! journaled by the driver (this module), which performs their effects through
//! the run's [`ToolContext`] and suspends the process (SPEC §13) when what the
//! script awaits is not there yet.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(registry: Arc<dyn cairn_core::ProcessRegistry>) {
//! let runtime = cairn_core::Processes::builder(registry)
//!     .script_engine(Arc::new(cairn_script::QuickJs::new(cairn_script::Limits::default())))
//!     .start();
//! # }
//! ```

mod engine;

use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::script::{SCRIPT_CALL, SCRIPT_LOG, SCRIPT_RESULT};
use cairn_core::{CairnError, Module, Outcome, Result, StopReason, ToolContext};
use serde_json::{json, Value};

use engine::{Entry, Reply, Setup, Step, ABORT};

/// Per-activation and per-process limits (SPEC §14; `cairn serve` flags).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The heap of one activation, in bytes (`memory_limit` past it).
    pub heap_bytes: usize,
    /// The CPU time of one activation (`cpu_limit` past it).
    pub cpu: Duration,
    /// Journaled calls per process (`journal_limit` past it).
    pub max_calls: u64,
}

impl Default for Limits {
    /// SPEC's defaults: 64 MiB, 10 s, 10,000 calls.
    fn default() -> Self {
        Self {
            heap_bytes: 64 << 20,
            cpu: Duration::from_secs(10),
            max_calls: 10_000,
        }
    }
}

/// The QuickJS script engine.
#[derive(Clone, Debug, Default)]
pub struct QuickJs {
    limits: Limits,
}

impl QuickJs {
    /// An engine under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits it runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// `line L, column C` from the first `script.js:L:C` of a stack.
fn position(stack: &str) -> Option<String> {
    let at = stack.find(engine::MODULE_NAME)? + engine::MODULE_NAME.len();
    let mut parts = stack[at..].strip_prefix(':')?.splitn(2, ':');
    let line: u32 = parts.next()?.parse().ok()?;
    let column: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    let column: u32 = column.parse().ok()?;
    Some(format!("line {line}, column {column}"))
}

#[async_trait]
impl cairn_core::ScriptEngine for QuickJs {
    fn exports(&self, source: &str) -> Result<Vec<String>> {
        cairn_core::script::check_source(source)?;
        let limits = self.limits.clone();
        let source = source.to_string();
        // The engine's thread has a stack of known size (its limit is set below it).
        let answer = std::thread::Builder::new()
            .name("cairn-script-compile".into())
            .stack_size(8 << 20)
            .spawn(move || engine::exports(&limits, &source))
            .map_err(|e| CairnError::Unavailable(format!("cannot start the script engine: {e}")))?
            .join()
            .map_err(|_| CairnError::Unavailable("the script engine panicked".into()))?;
        answer.map_err(|(syntax, err)| {
            let message = err.get("message").and_then(Value::as_str).unwrap_or("invalid module");
            let at = match (
                err.get("line").and_then(Value::as_u64),
                err.get("column").and_then(Value::as_u64),
            ) {
                (Some(line), Some(column)) => Some(format!("line {line}, column {column}")),
                _ => err.get("stack").and_then(Value::as_str).and_then(position),
            };
            match (syntax, at) {
                (true, Some(at)) => CairnError::InvalidModule(format!("{message} at {at}")),
                (_, Some(at)) => CairnError::InvalidModule(format!("loading the module failed: {message} at {at}")),
                (true, None) => CairnError::InvalidModule(message.to_string()),
                (false, None) => CairnError::InvalidModule(format!("loading the module failed: {message}")),
            }
        })
    }

    async fn run(&self, ctx: ToolContext, module: Module, process_name: String, args: Value) -> Outcome {
        let log = match ctx.read_log().await {
            Ok(l) => l,
            Err(e) => return Outcome::failure("runtime", e.code(), e.to_string()),
        };
        let stop = Arc::new(AtomicU8::new(engine::RUN));
        // Whatever still runs in the engine stops at its next interrupt check
        // once this activation ends, also when the worker drops it unfinished
        // (a stopped run, a cancelled one's cleanup included, gets
        // `stop_grace`), so a cleanup that never ends holds its thread no longer.
        let _abort = AbortOnDrop(stop.clone());
        let (step_tx, step_rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        let setup = Setup {
            limits: self.limits.clone(),
            source: module.source,
            process_name,
            args,
            journal: engine::Journal::from_log(&log),
            ctx: ctx.clone(),
            stop: stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("cairn-script".into())
            .stack_size(8 << 20)
            .spawn(move || engine::activate(setup, step_tx, reply_rx));
        if let Err(e) = spawned {
            return Outcome::failure(
                "runtime",
                "script_engine",
                format!("cannot start the script engine: {e}"),
            );
        }
        Driver {
            ctx: &ctx,
            steps: step_rx,
            replies: reply_tx,
            cancelled: None,
        }
        .drive()
        .await
    }
}

/// Stops an activation's engine thread when dropped.
struct AbortOnDrop(Arc<AtomicU8>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(ABORT, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The async side of an activation: journals the engine's entries, performs
/// pending calls, and answers them.
struct Driver<'a> {
    ctx: &'a ToolContext,
    steps: tokio::sync::mpsc::UnboundedReceiver<Step>,
    replies: std::sync::mpsc::Sender<Reply>,
    /// The cancellation message, once the script was told.
    cancelled: Option<String>,
}

/// Why a call was not answered.
enum Held {
    /// The run suspended (or was stopped): the activation ends here.
    Stopped,
}

fn error_result(n: u64, e: &CairnError) -> Value {
    json!({"n": n, "error": {"class": "cairn", "code": e.code(), "message": e.to_string()}})
}

fn is_wait(kind: &str) -> bool {
    matches!(kind, "sleep" | "wait_signal" | "tool" | "turn" | "wait")
}

impl Driver<'_> {
    async fn drive(mut self) -> Outcome {
        loop {
            let step = tokio::select! {
                s = self.steps.recv() => match s {
                    Some(s) => s,
                    None => return Outcome::failure("runtime", "script_engine", "the script engine stopped"),
                },
                _ = self.ctx.stopped(), if self.cancelled.is_none() && !self.stop_is_cancel() => {
                    // A cancellation is told to the script at its next step
                    // (it may clean up); any other stop ends the activation.
                    if self.stop_is_cancel() {
                        continue;
                    }
                    return self.stopped_outcome();
                }
            };
            for entry in step.entries {
                if let Err(e) = self.journal(entry).await {
                    return Outcome::failure("runtime", e.code(), e.to_string());
                }
            }
            if let Some(outcome) = step.end {
                return match (&self.cancelled, outcome) {
                    (Some(message), Outcome::Success { .. } | Outcome::Failure { .. }) => {
                        Outcome::cancelled(message.clone())
                    }
                    (_, o) => o,
                };
            }
            if let Some(message) = self.cancel_message() {
                if self.cancelled.is_none() {
                    self.cancelled = Some(message.clone());
                    if self.replies.send(Reply::Cancel(message)).is_err() {
                        return self.stopped_outcome();
                    }
                    continue;
                }
            }
            let mut answers = Vec::new();
            for (n, call) in step.pending.iter().filter(|(_, c)| !is_wait(kind(c))) {
                answers.push((*n, self.perform(*n, call).await));
            }
            // Every pending `ctx.tool` and `ctx.turn` child starts now, together.
            for (n, call) in step.pending.iter().filter(|(_, c)| matches!(kind(c), "tool" | "turn")) {
                if self.cancelled.is_none() {
                    if let Some(failed) = self.start_tool(*n, call).await {
                        answers.push((*n, failed));
                    }
                }
            }
            // `ctx.wait(id)` names a child by its id: anything but a string
            // rejects now, saying so.
            for (n, call) in step.pending.iter().filter(|(_, c)| kind(c) == "wait") {
                let named = call.get("id").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
                if !named {
                    let given = call.get("id").map_or_else(|| "nothing".to_string(), Value::to_string);
                    let e = CairnError::InvalidRequest(format!(
                        "ctx.wait(id) takes the id of a child process (a string), not {given}"
                    ));
                    answers.push((*n, error_result(*n, &e)));
                }
            }
            if answers.is_empty() {
                let children: Vec<(u64, Value)> = step
                    .pending
                    .iter()
                    .filter(|(_, c)| matches!(kind(c), "tool" | "turn" | "wait"))
                    .cloned()
                    .collect();
                let first = step.pending.iter().find(|(_, c)| is_wait(kind(c)));
                let waited = match first {
                    Some((_, c)) if matches!(kind(c), "tool" | "turn" | "wait") && self.cancelled.is_none() => {
                        self.wait_children(&children).await
                    }
                    Some((n, call)) => self.wait(*n, call).await.map(|r| vec![(*n, r)]),
                    None => Ok(Vec::new()),
                };
                match waited {
                    Ok(results) => answers.extend(results),
                    Err(Held::Stopped) => {
                        if self.cancel_message().is_some() {
                            continue;
                        }
                        return self.stopped_outcome();
                    }
                }
            }
            for (n, result) in &answers {
                if let Err(e) = self.journal(Entry::Result(*n, result.clone())).await {
                    return Outcome::failure("runtime", e.code(), e.to_string());
                }
            }
            if self.replies.send(Reply::Answers(answers)).is_err() {
                return Outcome::failure("runtime", "script_engine", "the script engine stopped");
            }
        }
    }

    fn stop_is_cancel(&self) -> bool {
        matches!(self.ctx.stop_reason(), Some(StopReason::Cancelled { .. }))
    }

    fn cancel_message(&self) -> Option<String> {
        match self.ctx.stop_reason() {
            Some(StopReason::Cancelled { reason }) => Some(reason.unwrap_or_else(|| "cancelled".into())),
            _ => None,
        }
    }

    /// What a run that was stopped (suspended, lease lost, shutdown) answers;
    /// the worker writes nothing for those.
    fn stopped_outcome(&self) -> Outcome {
        Outcome::failure("runtime", "stopped", "the run was stopped")
    }

    async fn journal(&self, entry: Entry) -> Result<()> {
        let (t, payload, key) = match entry {
            Entry::Call(n, p) => (SCRIPT_CALL, p, format!("script.call:{n}")),
            Entry::Result(n, p) => (SCRIPT_RESULT, p, format!("script.result:{n}")),
            Entry::Log(k, p) => (SCRIPT_LOG, p, format!("script.log:{k}")),
        };
        self.ctx.append_once(t, payload, &key).await.map(|_| ())
    }

    /// Perform a call that does not wait; answer its result.
    async fn perform(&self, n: u64, call: &Value) -> Value {
        match kind(call) {
            "emit" => {
                let t = call.get("type").and_then(Value::as_str).unwrap_or("");
                let payload = call.get("payload").cloned().unwrap_or(Value::Null);
                match self.ctx.append_once(t, payload, &format!("script.emit:{n}")).await {
                    Ok(_) => json!({"n": n, "value": null}),
                    Err(e) => error_result(n, &e),
                }
            }
            "start" => {
                let mut request = call.get("request").cloned().unwrap_or(Value::Null);
                let id = self.child_id(n);
                if let Some(m) = request.as_object_mut() {
                    m.insert("id".into(), json!(id));
                }
                let started = match cairn_core::StartRequest::from_json(request) {
                    Ok(r) => self.ctx.start_child(r).await,
                    Err(e) => Err(e),
                };
                match started {
                    Ok(child) => json!({"n": n, "value": child.id}),
                    Err(e) => error_result(n, &e),
                }
            }
            other => error_result(
                n,
                &CairnError::InvalidRequest(format!("unknown context call `{other}`")),
            ),
        }
    }

    fn child_id(&self, n: u64) -> String {
        format!("{}/{n}", self.ctx.process_id())
    }

    /// Start the child of a pending `ctx.tool` call (idempotent: a replayed
    /// start answers the stored child); an error result when it cannot start.
    async fn start_tool(&self, n: u64, call: &Value) -> Option<Value> {
        let name = call.get("name").and_then(Value::as_str).unwrap_or("");
        let args = call.get("args").cloned().unwrap_or(Value::Null);
        let disposition = match call.get("disposition").cloned().map(serde_json::from_value) {
            None => cairn_core::Disposition::Rerunnable,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                return Some(error_result(
                    n,
                    &CairnError::InvalidRequest(format!("ctx.tool disposition: {e}")),
                ))
            }
        };
        let request = if kind(call) == "turn" {
            // `ctx.turn(session, input, outputContract?)`: a session turn child (SPEC §15).
            let input = json!({
                "type": "session_turn",
                "session": call.get("session").cloned().unwrap_or(json!({})),
                "input": call.get("input").cloned().unwrap_or(Value::Null),
                "output_contract": call.get("output_contract").cloned().unwrap_or(Value::Null),
            });
            match serde_json::from_value(input) {
                Ok(input) => cairn_core::StartRequest::new(self.child_id(n), input, disposition),
                Err(e) => return Some(error_result(n, &CairnError::InvalidRequest(format!("ctx.turn: {e}")))),
            }
        } else {
            cairn_core::StartRequest::tool(self.child_id(n), name, args, disposition)
        };
        match self.ctx.start_child(request).await {
            Ok(_) => None,
            Err(e) => Some(error_result(n, &e)),
        }
    }

    /// Wait for any of the pending children; the results of the calls whose
    /// child ended (`tool` rejects unless it succeeded; `wait` never rejects).
    async fn wait_children(&self, calls: &[(u64, Value)]) -> std::result::Result<Vec<(u64, Value)>, Held> {
        let ids: Vec<String> = calls
            .iter()
            .map(|(n, c)| match kind(c) {
                "wait" => c.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                _ => self.child_id(*n),
            })
            .collect();
        let records = match self
            .ctx
            .wait_children(&ids, cairn_core::model::ChildrenMode::Any, None)
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Vec::new()),
            Err(_) if self.ctx.is_stopped() => return Err(Held::Stopped),
            // A bad id (not a child of this process): that call rejects.
            Err(e) => return Ok(calls.iter().take(1).map(|(n, _)| (*n, error_result(*n, &e))).collect()),
        };
        let mut answers = Vec::new();
        for ((n, call), record) in calls.iter().zip(records) {
            let Some(outcome) = record.outcome else { continue };
            let result = if kind(call) == "wait" {
                json!({"n": n, "value": outcome})
            } else {
                match outcome {
                    Outcome::Success { value } => json!({"n": n, "value": value}),
                    Outcome::Failure {
                        class, code, message, ..
                    } => {
                        json!({"n": n, "error": {"class": class, "code": code, "message": message}})
                    }
                    Outcome::Cancelled { message, .. } => {
                        json!({"n": n, "error": {"class": "cairn", "code": "cancelled", "message": message}})
                    }
                    Outcome::Abandoned { .. } => json!({"n": n, "error": {
                        "class": "cairn", "code": "abandoned", "message": format!("child `{}` was abandoned", record.id)
                    }}),
                }
            };
            answers.push((*n, result));
        }
        Ok(answers)
    }

    /// Perform a call that may wait: its result, or `Held` when the run suspended.
    async fn wait(&self, n: u64, call: &Value) -> std::result::Result<Value, Held> {
        if let Some(message) = &self.cancelled {
            let e = json!({"class": "cairn", "code": "cancelled", "message": message});
            return Ok(json!({"n": n, "error": e}));
        }
        let answer = match kind(call) {
            "sleep" => match millis(call.get("ms"), "ctx.sleep(ms)") {
                Ok(ms) => self
                    .ctx
                    .sleep_nth(n, Duration::from_millis(ms))
                    .await
                    .map(|()| Value::Null),
                Err(e) => Err(e),
            },
            "wait_signal" => {
                let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                let ordinal = call.get("ordinal").and_then(Value::as_u64).unwrap_or(1);
                let timeout = match call.get("timeout_ms") {
                    None | Some(Value::Null) => Ok(None),
                    given => millis(given, "ctx.waitSignal's timeoutMs").map(|ms| Some(Duration::from_millis(ms))),
                };
                match timeout {
                    Ok(timeout) => self
                        .ctx
                        .wait_signal_nth(name, ordinal, timeout)
                        .await
                        .map(|v| v.unwrap_or(Value::Null)),
                    Err(e) => Err(e),
                }
            }
            other => Err(CairnError::InvalidRequest(format!(
                "ctx.{other} is not supported by this runtime yet"
            ))),
        };
        match answer {
            Ok(value) => Ok(json!({"n": n, "value": value})),
            Err(_) if self.ctx.is_stopped() => Err(Held::Stopped),
            Err(e) => Ok(error_result(n, &e)),
        }
    }
}

/// A duration a script gave in milliseconds: a number from 0 up to 2^53 - 1, a fraction
/// rounded up (a wait is never shorter than asked); anything else makes the
/// call reject with `invalid_request`, as a silent zero or a wait without its
/// deadline would not say.
fn millis(given: Option<&Value>, what: &str) -> Result<u64> {
    let ms = given.and_then(Value::as_f64).filter(|ms| ms.is_finite() && *ms >= 0.0);
    match ms {
        // JavaScript's largest exact integer (about 285,000 years).
        Some(ms) if ms.ceil() <= 9_007_199_254_740_991.0 => Ok(ms.ceil() as u64),
        _ => Err(CairnError::InvalidRequest(format!(
            "{what} takes a number of milliseconds from 0 up, not {}",
            given.map_or_else(|| "nothing".to_string(), Value::to_string)
        ))),
    }
}

fn kind(call: &Value) -> &str {
    call.get("kind").and_then(Value::as_str).unwrap_or("")
}
