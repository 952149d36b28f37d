//! The turn loop: replay the journal, call the model for the next step,
//! run the tool calls it asks for as children, check the output contract.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use cairn_core::events::EventType;
use cairn_core::model::ChildrenMode;
use cairn_core::{
    CairnError, Disposition, Outcome, ProcessEvent, ProcessInput, ProcessRecord, StartRequest, Tool, ToolContext,
    ToolRegistry, TurnSession,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::{chat, clip, ChatAnswer, ChatRequest, ModelFault, MAX_ANSWER_BYTES};
use crate::config::{ModelSpec, Models};

/// The event journaling each model answer: `{step, message, usage}`, and the
/// endpoint's `finish_reason` when it gave one.
pub const RESPONSE: &str = "turn.response";
/// Streamed content while a model answers: `{step, run, attempt, text}`, at
/// most one per 100 ms.
pub const DELTA: &str = "turn.delta";
/// The failure code of a turn whose model refused (class `turn`; the message
/// holds the refusal, `raw` the journaled answer).
const REFUSED: &str = "model_refused";
const DELTA_EVERY: Duration = Duration::from_millis(100);
const DEFAULT_MAX_STEPS: u32 = 8;

/// How model faults worth retrying (429, 5xx, broken streams) are retried:
/// exponential backoff from `min_delay` to `max_delay`, a `Retry-After`
/// lengthening a wait (never shortening it), at most `retries` times; then
/// the turn fails `model_unavailable`.
/// A `Retry-After` longer than `max_delay` (up to [`LONGEST_RETRY_AFTER`], at
/// most `retries` times a step) is waited out durably instead: the turn
/// suspends and calls again when it resumes.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: usize,
    /// The first backoff.
    pub min_delay: Duration,
    /// The longest backoff (and the longest `Retry-After` waited in process).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 4,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The longest `Retry-After` a turn waits out (durably, past the policy's
/// `max_delay`); an endpoint asking for more fails the turn `model_unavailable`.
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The output a turn must produce.
enum Contract {
    Text,
    JsonSchema { schema: Value, repair_attempts: u32 },
}

impl Contract {
    fn parse(v: &Value) -> cairn_core::Result<Self> {
        let kind = v.get("type").and_then(Value::as_str);
        let known: &[&str] = match kind {
            Some("json_schema") => &["type", "schema", "repair_attempts"],
            _ => &["type"],
        };
        if let Some(key) = v
            .as_object()
            .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
        {
            return Err(CairnError::InvalidRequest(format!(
                "output_contract has an unknown field `{key}` (it takes {})",
                known.join(", ")
            )));
        }
        match kind {
            None if v.is_null() => Ok(Self::Text),
            Some("text") => Ok(Self::Text),
            Some("json_schema") => {
                let schema = v.get("schema").cloned().ok_or_else(|| {
                    CairnError::InvalidRequest("a `json_schema` output_contract needs its `schema`".into())
                })?;
                cairn_core::validate::compiled_schema("output_contract", &schema)?;
                // Any count a contract may hold is read (a start checks the
                // bounds, so a turn started under looser ones still runs);
                // one no contract could hold (negative, past `u32`, not an
                // integer) is refused naming the range a start takes, as
                // one out of bounds is.
                let repair_attempts = match v.get("repair_attempts") {
                    None => 2,
                    Some(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                        let what = if n.is_i64() || n.is_u64() {
                            ""
                        } else {
                            "an integer from "
                        };
                        CairnError::InvalidRequest(format!(
                            "`repair_attempts` is {what}0 to {MAX_REPAIR_ATTEMPTS}, not {n}"
                        ))
                    })?,
                };
                Ok(Self::JsonSchema {
                    schema,
                    repair_attempts,
                })
            }
            _ => Err(CairnError::InvalidRequest(format!(
                "output_contract {v} is not {{\"type\": \"text\"}} or {{\"type\": \"json_schema\", \"schema\"}}"
            ))),
        }
    }

    /// What the endpoint is asked for: structured output under a schema.
    fn response_format(&self) -> Option<Value> {
        match self {
            Self::Text => None,
            Self::JsonSchema { schema, .. } => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            })),
        }
    }

    /// The success value of a final answer, or why it violates the contract.
    fn check(&self, content: &str) -> Result<Value, String> {
        match self {
            Self::Text => Ok(json!({ "text": content })),
            Self::JsonSchema { schema, .. } => {
                // The depth first, by a scan that builds nothing: the parser
                // stops at 128 levels, and its error would call an answer
                // that is only too deep one that is not JSON.
                let (depth, _) = cairn_core::validate::json_text_depth(content.trim().as_bytes());
                if depth > MAX_ANSWER_DEPTH {
                    return Err(format!(
                        "the answer nests arrays and objects {depth} levels deep, over the {MAX_ANSWER_DEPTH} \
                         levels a result may have"
                    ));
                }
                let value: Value =
                    serde_json::from_str(content.trim()).map_err(|e| format!("the answer is not JSON: {e}"))?;
                let validator =
                    cairn_core::validate::compiled_schema("output_contract", schema).map_err(|e| e.to_string())?;
                match validator.validate(&value) {
                    Ok(()) => Ok(value),
                    // The schema's complaint quotes the value it refuses (the
                    // whole answer, for a wrong type): cut short, so the
                    // failure (and a repair's request) stays small; the
                    // answer itself goes in `raw`.
                    Err(e) => {
                        let at = e.instance_path().to_string();
                        let at = if at.is_empty() {
                            "at its root".to_string()
                        } else {
                            format!("at `{at}`")
                        };
                        Err(clip(&format!("the answer violates the schema {at}: {e}")))
                    }
                }
            }
        }
    }
}

/// The deepest a `json_schema` answer may nest: a result is stored inside
/// its terminal event's payload, two levels down, under
/// [`cairn_core::validate::MAX_JSON_DEPTH`].
const MAX_ANSWER_DEPTH: usize = cairn_core::validate::MAX_JSON_DEPTH - 2;

/// The most model calls a turn may be given (`max_steps`): the bound the
/// record's own reading names ([`cairn_core::TURN_MAX_STEPS`]).
pub const MAX_STEPS: u32 = cairn_core::TURN_MAX_STEPS;
/// The most repairs a `json_schema` contract may allow (`repair_attempts`):
/// [`cairn_core::TURN_MAX_REPAIR_ATTEMPTS`], which the schemas state.
pub const MAX_REPAIR_ATTEMPTS: u32 = cairn_core::TURN_MAX_REPAIR_ATTEMPTS;
/// The roles a message of a turn's `input` may have when it starts.
const START_ROLES: [&str; 3] = ["system", "user", "assistant"];

/// The roles a message of a turn's `input` may have (a turn started before
/// [`START_ROLES`] narrowed them still runs).
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// The fields a message of a turn's `input` may have when it starts (those
/// OpenAI's chat messages of the [`START_ROLES`] take; an assistant's
/// `tool_calls` would need tool messages, which a start does not give).
const START_FIELDS: [&str; 3] = ["role", "content", "name"];

/// A turn's `input`: a non-empty string, or a non-empty array of messages,
/// each an object with a `role` of `roles`.
fn check_input(input: &Value, roles: &[&str]) -> cairn_core::Result<()> {
    let bad = |why: String| Err(CairnError::InvalidRequest(format!("a turn's `input` {why}")));
    match input {
        Value::String(text) if text.trim().is_empty() => bad("is empty".into()),
        Value::String(_) => Ok(()),
        Value::Array(messages) if messages.is_empty() => bad("holds no message".into()),
        Value::Array(messages) => {
            for (i, m) in messages.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                if !m.is_object() || !role.is_some_and(|r| roles.contains(&r)) {
                    return bad(format!(
                        "message {i} is not an object with a `role` of {}: {m}",
                        roles.join(", ")
                    ));
                }
            }
            Ok(())
        }
        other => bad(format!("is a string or an array of messages, not {other}")),
    }
}

/// A parsed `session_turn` input.
struct Turn {
    session: TurnSession,
    input: Value,
    contract: Contract,
}

impl Turn {
    /// A turn as it runs: its messages may have any role a turn ever took.
    fn parse(input: &Value) -> cairn_core::Result<Self> {
        Self::parse_with(input, &ROLES)
    }

    /// A turn as it starts: its messages have the roles a start gives, and
    /// a refusal names only those.
    fn parse_start(input: &Value) -> cairn_core::Result<Self> {
        Self::parse_with(input, &START_ROLES)
    }

    fn parse_with(input: &Value, roles: &[&str]) -> cairn_core::Result<Self> {
        let parsed: ProcessInput = serde_json::from_value(input.clone())
            .map_err(|e| CairnError::InvalidRequest(format!("session_turn input: {e}")))?;
        let ProcessInput::SessionTurn {
            session,
            input,
            output_contract,
        } = parsed
        else {
            return Err(CairnError::InvalidRequest("not a session_turn input".into()));
        };
        check_input(&input, roles)?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = session.tools.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(CairnError::InvalidRequest(format!(
                "a turn's `tools` lists `{twice}` twice"
            )));
        }
        Ok(Self {
            session,
            input,
            contract: Contract::parse(&output_contract)?,
        })
    }

    /// The bounds a start must meet (the OpenAPI document states them):
    /// checked when a turn starts, not when it runs, so a turn started under
    /// looser bounds still runs to its end.
    fn check_bounds(&self) -> cairn_core::Result<()> {
        let bad = |why: String| Err(CairnError::InvalidRequest(why));
        if self.session.model.as_deref() == Some("") {
            return bad(
                "a turn's `session.model` is empty: name a configured model, or leave it out for `default`".into(),
            );
        }
        if let Some(n) = self.session.max_steps.filter(|n| !(1..=MAX_STEPS).contains(n)) {
            return bad(format!("a turn's `max_steps` is 1 to {MAX_STEPS}, not {n}"));
        }
        if let Some(t) = self.session.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            // `{:?}`: the shortest form that reads back (`1e300`), not
            // `Display`'s every digit.
            return bad(format!("a turn's `temperature` is 0 to 2, not {t:?}"));
        }
        if let Contract::JsonSchema {
            schema,
            repair_attempts,
        } = &self.contract
        {
            if !schema.is_object() {
                return bad(format!(
                    "a `json_schema` output_contract's `schema` is an object, not {schema}"
                ));
            }
            if *repair_attempts > MAX_REPAIR_ATTEMPTS {
                return bad(format!(
                    "`repair_attempts` is 0 to {MAX_REPAIR_ATTEMPTS}, not {repair_attempts}"
                ));
            }
        }
        // The roles were checked as the start was read (`parse_start`);
        // each message goes to the endpoint as it is, so a field it may not
        // have, or one of the wrong type, is refused here rather than sent.
        for (i, m) in self.input.as_array().into_iter().flatten().enumerate() {
            if let Some(field) = m
                .as_object()
                .and_then(|o| o.keys().find(|k| !START_FIELDS.contains(&k.as_str())))
            {
                return bad(format!(
                    "a turn's `input` message {i} has an unknown field `{field}` (a message takes {})",
                    START_FIELDS.join(", ")
                ));
            }
            if !m["content"].is_string() {
                return bad(format!("a turn's `input` message {i} has no string `content`: {m}"));
            }
            if let Some(name) = m.get("name").filter(|n| !n.is_string()) {
                return bad(format!(
                    "a turn's `input` message {i} has a `name` that is not a string: {name}"
                ));
            }
        }
        Ok(())
    }

    /// The conversation before the first model call.
    fn first_messages(&self) -> Vec<Value> {
        let mut messages = Vec::new();
        if let Some(system) = &self.session.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        match &self.input {
            Value::String(text) => messages.push(json!({"role": "user", "content": text})),
            Value::Array(given) => messages.extend(given.iter().cloned()),
            _ => {}
        }
        messages
    }

    /// The tools offered to the model, each with the schema of its arguments
    /// where the tool has one (any object otherwise); arguments the tool
    /// refuses fail its child's start, and the model is told why.
    fn tool_defs(&self, tools: &ToolRegistry) -> Vec<Value> {
        self.session
            .tools
            .iter()
            .map(|name| {
                let mut parameters = tools
                    .get(name)
                    .and_then(|t| t.args_schema())
                    .unwrap_or_else(|| json!({"type": "object"}));
                // OpenAI's endpoint refuses these at a function's top level
                // (`shell` says "argv or command" with `oneOf`): said in the
                // description instead (`stripped_rule`), and the tool's own
                // check still holds the model to them.
                let mut description = tool_description(name);
                if let Some(root) = parameters.as_object_mut() {
                    if let Some(rule) = stripped_rule(root) {
                        description.push(' ');
                        description.push_str(&rule);
                    }
                    for key in ["oneOf", "anyOf", "allOf", "not", "enum"] {
                        root.remove(key);
                    }
                }
                json!({"type": "function", "function": {
                    "name": name,
                    "description": description,
                    "parameters": parameters,
                }})
            })
            .collect()
    }
}

/// What the model is told a tool does: the built-in tools' own words, and
/// for another tool its name (a tool says no more of itself than its
/// arguments' schema).
fn tool_description(name: &str) -> String {
    match name {
        "echo" => "Succeeds with the `value` it is given (null when none): hands a value back unchanged.".into(),
        "sleep" => "Waits `ms` milliseconds, then succeeds with `{\"slept_ms\": ms}`.".into(),
        "wait_signal" => "Waits for the next signal named `name` sent to this call's process and succeeds with its \
                          payload; fails with code `timeout` when `timeout_ms` passes first."
            .into(),
        "shell" => "Runs a command on the server (`argv`: a program and its arguments, no shell; or `command`: a \
                    line run by `/bin/sh -c`) and succeeds with its exit code and the last lines of its stdout and \
                    stderr; a non-zero exit is a failure."
            .into(),
        other => format!("Runs the tool `{other}`; its result comes back as JSON."),
    }
}

/// The rule of the schema keywords [`Turn::tool_defs`] takes off the top of
/// a tool's arguments schema, said in words: `oneOf` (or `anyOf`) branches
/// that each require one field are "exactly one (at least one) of" them;
/// any other rule is said to exist, for the tool's answer to tell.
fn stripped_rule(root: &serde_json::Map<String, Value>) -> Option<String> {
    let mut rules = Vec::new();
    let mut other = false;
    for (keyword, how_many) in [("oneOf", "exactly one"), ("anyOf", "at least one")] {
        let Some(branches) = root.get(keyword) else { continue };
        let fields: Option<Vec<String>> = branches.as_array().and_then(|branches| {
            branches
                .iter()
                .map(|b| match b.as_object().map(|o| (o.len(), o.get("required"))) {
                    Some((1, Some(Value::Array(required)))) if required.len() == 1 => {
                        required[0].as_str().map(|f| format!("`{f}`"))
                    }
                    _ => None,
                })
                .collect()
        });
        match fields {
            Some(mut fields) if fields.len() >= 2 => {
                let last = fields.pop().unwrap_or_default();
                rules.push(format!("Give {how_many} of {} and {last}.", fields.join(", ")));
            }
            _ => other = true,
        }
    }
    other |= ["allOf", "not", "enum"].iter().any(|k| root.contains_key(*k));
    if other {
        rules.push(
            "The arguments must also meet a rule not shown in their schema; a call they fail is answered with why."
                .into(),
        );
    }
    (!rules.is_empty()).then(|| rules.join(" "))
}

/// Runs `session_turn` processes (SPEC §15).
pub struct TurnRunner {
    models: Models,
    tools: ToolRegistry,
    http: reqwest::Client,
    /// How long a model call may go without progress (see [`IDLE_TIMEOUT`]).
    idle: Duration,
    retry: RetryPolicy,
}

/// How long a model call may go without a byte (before its answer begins, or
/// between two pieces of it), or a stream without a piece of its answer (an
/// endpoint sending only keep-alive comments or empty chunks), before it
/// counts as a broken stream and is tried again: long enough for a model that reasons before it answers, short
/// enough that a hung endpoint cannot hold a turn (and its worker slot) for
/// good.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn http_client(idle: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(idle))
        .read_timeout(idle)
        // Only a redirect that keeps the POST and its body (307, 308) is
        // followed: a 301, 302 or 303 would be followed as a GET without
        // the request, and its answer (a 404 or 405) would hide the
        // redirect; it is a failure that names where it points instead.
        // Nor is one that leaves the endpoint's origin (its scheme, host and
        // port, as configured): https to http would send the key in the
        // clear, and reqwest drops the key only at the hop that changes
        // host, sending it again to that host's own redirects, so a second
        // redirect would hand the key to a host the operator never named.
        // Where it points is said instead, as the base URL to configure.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|asked| asked.origin() == attempt.url().origin());
            if matches!(attempt.status().as_u16(), 307 | 308) && same_origin && attempt.previous().len() < 10 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .build()
        // Only a TLS back end that cannot start fails here; the default
        // client would fail the same way on its first request.
        .unwrap_or_default()
}

impl TurnRunner {
    /// A runner calling `models`, whose turns may call `tools` (the tools the
    /// worker runs).
    pub fn new(models: Models, tools: ToolRegistry) -> Self {
        Self {
            models,
            tools,
            http: http_client(IDLE_TIMEOUT),
            idle: IDLE_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }

    /// Give up on a model call that is silent for `idle` instead of
    /// [`IDLE_TIMEOUT`] (it is then retried like any broken stream).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.http = http_client(idle);
        self.idle = idle;
        self
    }

    /// Retry model faults by `retry` instead of the default.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    async fn run_turn(&self, ctx: &ToolContext, turn: Turn) -> cairn_core::Result<Outcome> {
        let spec = self.models.get(turn.session.model.as_deref())?;
        let max_steps = turn.session.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
        let journal: HashMap<u64, (Value, Value, bool)> = ctx
            .log()
            .await?
            .into_iter()
            .filter(|e: &ProcessEvent| e.event_type == RESPONSE)
            .filter_map(|e| {
                let finish = e.payload.get("finish_reason").cloned().unwrap_or(Value::Null);
                let cut_at_limit = e.payload.get("cut_at_bytes").is_some();
                Some((
                    e.payload.get("step")?.as_u64()?,
                    (e.payload.get("message")?.clone(), finish, cut_at_limit),
                ))
            })
            .collect();
        let mut messages = turn.first_messages();
        let tool_defs = turn.tool_defs(&self.tools);
        let response_format = turn.contract.response_format();
        let mut repairs = 0;
        // When the run last appended a `turn.delta`: the 100 ms between two
        // holds across the run's model calls, not just within one.
        let mut last_delta: Option<tokio::time::Instant> = None;
        for step in 1u64.. {
            let (message, finish_reason, cut_at_limit) = match journal.get(&step) {
                Some(m) => m.clone(),
                None => {
                    if step > u64::from(max_steps) {
                        return Ok(Outcome::failure(
                            "turn",
                            "max_steps",
                            format!("the turn made {max_steps} model calls without a final answer"),
                        ));
                    }
                    let request = ChatRequest {
                        messages: &messages,
                        tools: &tool_defs,
                        temperature: turn.session.temperature,
                        response_format: response_format.as_ref(),
                    };
                    // An endpoint that asks to be called again later than the
                    // retries wait in process is waited out durably: a
                    // rerunnable turn suspends, holding no slot, and calls
                    // again when it resumes. The step's waits so far are
                    // counted in the log, so the bound holds across runs.
                    // The step's calls are numbered across the waits: an
                    // owner-bound turn waits in its run, and a watcher must
                    // tell the call after a wait from the one before it.
                    let tries = std::sync::atomic::AtomicU64::new(0);
                    let answer = loop {
                        let answer = tokio::select! {
                            r = self.call_model(ctx, spec, step, &request, &tries, &mut last_delta) => r,
                            _ = ctx.stopped() => return Ok(ctx.stopped_outcome()),
                        };
                        match answer {
                            Err(ModelFault::Transient {
                                retry_after: Some(after),
                                message,
                            }) if after > self.retry.max_delay => {
                                let waited = step_waits(ctx, step).await?;
                                if after > LONGEST_RETRY_AFTER {
                                    return Ok(Outcome::failure(
                                        "model",
                                        "model_unavailable",
                                        format!(
                                            "{message} (it asked to be called again in {} s, past the {} s a turn \
                                             waits: not called again)",
                                            after.as_secs(),
                                            LONGEST_RETRY_AFTER.as_secs()
                                        ),
                                    ));
                                }
                                if waited >= self.retry.retries as u64 {
                                    return Ok(Outcome::failure(
                                        "model",
                                        "model_unavailable",
                                        format!("{message} (still unavailable after {waited} waits for this step)"),
                                    ));
                                }
                                tracing::warn!(process_id = %ctx.process_id(), step, ?after, "the model endpoint asked to be called again later; waiting durably");
                                ctx.sleep_nth(step.saturating_mul(1000) + waited + 1, after).await?;
                            }
                            other => break other,
                        }
                    };
                    let answer = match answer {
                        Ok(a) => a,
                        Err(ModelFault::Transient { message, .. }) => {
                            // Said when it was not the only call: the
                            // failure is of the retries, not of one call.
                            let calls = tries.load(std::sync::atomic::Ordering::Relaxed);
                            let message = if calls > 1 {
                                format!("{message} (after {calls} calls)")
                            } else {
                                message
                            };
                            return Ok(Outcome::failure("model", "model_unavailable", message));
                        }
                        Err(ModelFault::Rejected { message, .. }) => {
                            return Ok(Outcome::failure("model", "model_error", message))
                        }
                    };
                    let mut payload = json!({"step": step, "message": answer.message, "usage": answer.usage});
                    if !answer.finish_reason.is_null() {
                        payload["finish_reason"] = answer.finish_reason.clone();
                    }
                    // Cut off by cairn, not by the endpoint: said as such,
                    // so a replay decides as this run does.
                    if answer.cut_at_limit {
                        payload["cut_at_bytes"] = json!(MAX_ANSWER_BYTES);
                    }
                    ctx.append_once(RESPONSE, payload, &format!("{RESPONSE}/{step}"))
                        .await?;
                    (answer.message, answer.finish_reason, answer.cut_at_limit)
                }
            };
            // A refusal (OpenAI's `refusal`, journaled with the answer) is
            // the model declining, not an answer to check or repair, nor a
            // request for tools: the turn fails with the refusal's text, as a
            // cut-off answer does (class `turn`, the message in `raw`), under
            // a code of its own so a caller can tell it from a bad answer.
            if let Some(refusal) = message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                return Ok(Outcome::Failure {
                    class: "turn".into(),
                    code: REFUSED.into(),
                    message: format!("the model refused: {}", clip(refusal)),
                    raw: Some(message),
                });
            }
            messages.push(message.clone());
            let mut calls = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // The tool calls of an answer the endpoint cut off are not the
            // model's whole request: a call's arguments may be cut (empty
            // ones would read as `{}`) or calls left out. None is run; the
            // answer goes through repair, or fails, as a cut-off answer does
            // (and the repair's history holds no call without its result).
            let cut = cut_at_limit || matches!(finish_reason.as_str(), Some("length" | "content_filter"));
            if cut && !calls.is_empty() {
                calls.clear();
                if let Some(asked) = messages.last_mut().and_then(Value::as_object_mut) {
                    asked.remove("tool_calls");
                }
            }
            // The last step allowed: no model call could read tool results,
            // so the tools are not run (their effects would be for nothing).
            let last = step >= u64::from(max_steps);
            if !calls.is_empty() && last {
                return Ok(Outcome::failure(
                    "turn",
                    "max_steps",
                    format!(
                        "the turn made {max_steps} model calls without a final answer (the last asked for tools, \
                         which were not run)"
                    ),
                ));
            }
            if !calls.is_empty() {
                let results = self.run_tool_calls(ctx, &turn.session, step, &calls).await?;
                for (call, content) in calls.iter().zip(results) {
                    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": content}));
                }
                continue;
            }
            let content = message.get("content").and_then(Value::as_str).unwrap_or_default();
            // An answer of nothing (no text, no tool call, no refusal) that
            // was not cut off is no answer: the endpoint failed to give one
            // (a call it could not make, a shape it dropped), and taking it
            // as an empty final answer would hide that.
            if content.is_empty() && !cut {
                let said = finish_reason
                    .as_str()
                    .map(|r| format!(" (finish_reason `{r}`)"))
                    .unwrap_or_default();
                return Ok(Outcome::Failure {
                    class: "model".into(),
                    code: "model_error".into(),
                    message: format!("model `{}` answered neither text nor tool calls{said}", spec.name),
                    raw: Some(message),
                });
            }
            // An answer the endpoint cut off is not the model's final answer,
            // whatever the contract: it goes through repair like any other
            // answer that does not meet it.
            let checked = match finish_reason.as_str() {
                _ if cut_at_limit => Err(format!(
                    "the answer passed the {MAX_ANSWER_BYTES} bytes cairn keeps of one answer and was cut off \
                     there; give a complete, shorter answer"
                )),
                Some("length") => Err(
                    "the endpoint cut the answer off at its token limit (finish_reason `length`); give a complete, \
                     shorter answer"
                        .to_string(),
                ),
                Some("content_filter") => Err(
                    "the endpoint's content filter withheld the answer (finish_reason `content_filter`); answer \
                     within its policy"
                        .to_string(),
                ),
                _ => turn.contract.check(content),
            };
            match checked {
                Ok(value) => return Ok(Outcome::success(value)),
                Err(why) => {
                    let allowed = match &turn.contract {
                        Contract::JsonSchema { repair_attempts, .. } => *repair_attempts,
                        Contract::Text => 0,
                    };
                    // Out of repairs, or of steps to make one in: the answer
                    // stands as the violation it is.
                    if repairs >= allowed || last {
                        // Repairs left, but no step to make one in: said, so
                        // the violation does not read as repairs that failed.
                        let message_text = if repairs < allowed {
                            format!(
                                "{why} (not repaired: max_steps is {max_steps}, so no model call was left for a \
                                 repair; {} of {allowed} repairs unused)",
                                allowed - repairs
                            )
                        } else {
                            why
                        };
                        return Ok(Outcome::Failure {
                            class: "turn".into(),
                            code: "output_contract_violation".into(),
                            message: message_text,
                            raw: Some(message),
                        });
                    }
                    repairs += 1;
                    let again = match &turn.contract {
                        Contract::JsonSchema { .. } => {
                            "Answer again with JSON that matches the schema, and nothing else."
                        }
                        Contract::Text => "Answer again.",
                    };
                    messages.push(json!({"role": "user", "content": format!(
                        "Your answer does not meet the required output: {why}. {again}"
                    )}));
                }
            }
        }
        unreachable!("the step loop only ends by returning")
    }

    /// One model call, retried by the policy; deltas are appended as they
    /// stream, at most one `turn.delta` per 100 ms: `last_delta` is when the
    /// run appended its last one, whichever call it was of.
    async fn call_model(
        &self,
        ctx: &ToolContext,
        spec: &ModelSpec,
        step: u64,
        request: &ChatRequest<'_>,
        tries: &std::sync::atomic::AtomicU64,
        last_delta: &mut Option<tokio::time::Instant>,
    ) -> Result<ChatAnswer, ModelFault> {
        let key = spec
            .key()
            .map_err(|message| ModelFault::Rejected { status: 0, message })?;
        let (tx, rx) = mpsc::unbounded_channel::<(u64, String)>();
        // The closure owns the sender: once the retries end and it is dropped,
        // the flusher drains what is left and ends. Each call is numbered, so
        // a watcher knows a retry's text from the broken call's before it.
        let (http, idle) = (&self.http, self.idle);
        let attempt = move || {
            let tx = tx.clone();
            let key = key.clone();
            let k = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                let mut on_delta = move |text: &str| {
                    let _ = tx.send((k, text.to_string()));
                };
                chat(http, idle, spec, key.as_deref(), request, &mut on_delta).await
            }
        };
        let max_delay = self.retry.max_delay;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(max_delay)
            .with_max_times(self.retry.retries)
            .with_jitter();
        let call = async {
            attempt
                .retry(backoff)
                // A `Retry-After` past the longest backoff ends the retries
                // here: the step waits it out durably (`sleep_nth`).
                .when(|e| match e {
                    ModelFault::Transient { retry_after, .. } => retry_after.is_none_or(|a| a <= max_delay),
                    ModelFault::Rejected { .. } => false,
                })
                // `Retry-After` is a floor under the backoff, never a
                // shortcut past it: gateways that send `0` (or a date gone
                // by) would otherwise spend every retry in milliseconds.
                .adjust(move |e, planned| match e {
                    ModelFault::Transient {
                        retry_after: Some(after),
                        ..
                    } => planned.map(|p| p.max(*after)),
                    _ => planned,
                })
                .notify(|e, after| {
                    tracing::warn!(process_id = %ctx.process_id(), step, error = %e, ?after, "model call failed; retrying")
                })
                .await
        };
        let (answer, ()) = tokio::join!(call, flush_deltas(ctx, step, rx, last_delta));
        answer
    }

    /// Start each tool call as a child `{process_id}/{step}.{k}` and wait for
    /// them all; answers the tool message content of each call, in order. A
    /// call the turn may not make, or whose arguments do not parse, gets an
    /// error message instead of a child.
    async fn run_tool_calls(
        &self,
        ctx: &ToolContext,
        session: &TurnSession,
        step: u64,
        calls: &[Value],
    ) -> cairn_core::Result<Vec<String>> {
        let mut contents: Vec<Option<String>> = vec![None; calls.len()];
        let mut children: Vec<(usize, String)> = Vec::new();
        for (k, call) in calls.iter().enumerate() {
            // A step awaits its children in one wait, which names at most
            // this many: a call past them is refused before anything starts
            // (run, then failed on the wait, its effect was lost).
            if k >= cairn_core::validate::MAX_AWAITED_CHILDREN {
                contents[k] = Some(error_content(
                    "too_many_tool_calls",
                    &format!(
                        "one answer may make at most {} tool calls; this one was not made",
                        cairn_core::validate::MAX_AWAITED_CHILDREN
                    ),
                ));
                continue;
            }
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let raw_args = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            if !session.tools.iter().any(|t| t == name) {
                contents[k] = Some(error_content(
                    "unknown_tool",
                    &format!("this turn may not call `{name}`"),
                ));
                continue;
            }
            let args: Value = match serde_json::from_str(if raw_args.trim().is_empty() { "{}" } else { raw_args }) {
                Ok(a) => a,
                Err(e) => {
                    contents[k] = Some(error_content(
                        "invalid_arguments",
                        &format!("arguments are not JSON: {e}"),
                    ));
                    continue;
                }
            };
            let id = format!("{}/{step}.{}", ctx.process_id(), k + 1);
            let child = StartRequest::tool(&id, name, args, Disposition::Rerunnable);
            match ctx.start_child(child).await {
                Ok(_) => children.push((k, id)),
                // A run that lost its lease goes no further (the model is
                // not called again with the refusal as a tool's result).
                Err(e @ CairnError::LeaseFenced(_)) => return Err(e),
                Err(e) if e.is_client_error() => contents[k] = Some(error_content(e.code(), &e.to_string())),
                Err(e) => return Err(e),
            }
        }
        if !children.is_empty() {
            let ids: Vec<String> = children.iter().map(|(_, id)| id.clone()).collect();
            let records = ctx
                .wait_children(&ids, ChildrenMode::All, None)
                .await?
                .ok_or_else(|| CairnError::Unavailable("a wait without a deadline timed out".into()))?;
            for ((k, _), record) in children.iter().zip(records) {
                contents[*k] = Some(outcome_content(&record));
            }
        }
        Ok(contents.into_iter().map(Option::unwrap_or_default).collect())
    }
}

/// How many durable waits step `step` made so far: its timers in the log
/// (ordinals `step * 1000 + k`, `k` from 1). The next wait is numbered after
/// them, so a re-run after a wait makes a new one.
async fn step_waits(ctx: &ToolContext, step: u64) -> cairn_core::Result<u64> {
    let base = step.saturating_mul(1000);
    let log = ctx.read_log().await?;
    Ok(log
        .iter()
        .filter(|e| e.event_type == cairn_core::events::WAITING && e.payload["kind"] == "timer")
        .filter_map(|e| e.payload["ordinal"].as_u64())
        .filter(|o| *o > base && *o < base + 1000)
        .count() as u64)
}

/// What the model reads of a child's outcome.
fn outcome_content(record: &ProcessRecord) -> String {
    match &record.outcome {
        Some(Outcome::Success { value }) => value.to_string(),
        Some(other) => json!({ "error": other }).to_string(),
        None => error_content("unfinished", "the tool call did not finish"),
    }
}

fn error_content(code: &str, message: &str) -> String {
    json!({"error": {"code": code, "message": message}}).to_string()
}

/// Append the streamed pieces as `turn.delta {step, run, attempt, text}`,
/// coalesced so that at most one is written per [`DELTA_EVERY`]; ends when the
/// sender is dropped, every piece written. `last` is when the run wrote its
/// last delta, read and kept across the run's model calls: a call right after
/// another waits out the window before its first delta too, gathering what
/// streams meanwhile into it (its answer, appended after its deltas, waits at
/// most that window, as the last delta of any call does). `run` is the
/// process's run (`started.attempt`: a re-run after a crash streams the step
/// again) and `attempt` the model call within it (a retry streams the answer
/// again): a watcher joining a step's texts starts over when either changes.
async fn flush_deltas(
    ctx: &ToolContext,
    step: u64,
    mut rx: mpsc::UnboundedReceiver<(u64, String)>,
    last: &mut Option<tokio::time::Instant>,
) {
    let run = ctx.attempt();
    // A piece of the next call, taken while gathering the one before.
    let mut held: Option<(u64, String)> = None;
    loop {
        let (attempt, mut text) = match held.take() {
            Some(piece) => piece,
            None => match rx.recv().await {
                Some(piece) => piece,
                None => return,
            },
        };
        if let Some(at) = *last {
            tokio::time::sleep_until(at + DELTA_EVERY).await;
        }
        while let Ok((k, more)) = rx.try_recv() {
            if k != attempt {
                held = Some((k, more));
                break;
            }
            text.push_str(&more);
        }
        // Best effort: a delta is a live view, the response event is the record.
        let payload = json!({"step": step, "run": run, "attempt": attempt, "text": text});
        let _ = ctx.append(DELTA, payload).await;
        *last = Some(tokio::time::Instant::now());
    }
}

#[async_trait]
impl Tool for TurnRunner {
    fn name(&self) -> &str {
        "session_turn"
    }

    fn event_types(&self) -> Vec<EventType> {
        vec![EventType::plain(RESPONSE), EventType::plain(DELTA)]
    }

    async fn check_start_of(&self, id: &str, input: &Value, disposition: Disposition) -> cairn_core::Result<()> {
        self.check_start(input, disposition).await?;
        let turn = Turn::parse_start(input)?;
        // An owner-bound run waits holding its worker slot, and each tool
        // call is a child that needs a slot of its own: a worker whose slots
        // all hold such turns would run none of their calls, for good.
        if !turn.session.tools.is_empty() && disposition == Disposition::OwnerBound {
            return Err(CairnError::InvalidDisposition(
                "a turn with tools is `rerunnable`, not `owner_bound`: an owner-bound turn holds its worker slot \
                 while its tool calls wait for slots of their own, and a worker full of them runs none \
                 (a rerunnable turn resumes from its journal and repeats no finished call)"
                    .into(),
            ));
        }
        // Each tool call is a child `{id}/{step}.{k}`: the id leaves room for
        // the last step's and for the most calls a step may make.
        if !turn.session.tools.is_empty() {
            let steps = turn.session.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
            let suffix = format!("/{steps}.{}", cairn_core::validate::MAX_AWAITED_CHILDREN).len();
            let most = cairn_core::validate::MAX_ID_BYTES.saturating_sub(suffix);
            if id.len() > most {
                return Err(CairnError::InvalidId(format!(
                    "a turn with tools names its tool calls `{{id}}/{{step}}.{{k}}`, so its id is at most {most} bytes \
                     (with max_steps {steps}), not {}",
                    id.len()
                )));
            }
        }
        Ok(())
    }

    async fn check_start(&self, input: &Value, _disposition: Disposition) -> cairn_core::Result<()> {
        let turn = Turn::parse_start(input)?;
        turn.check_bounds()?;
        self.models.get(turn.session.model.as_deref())?;
        for tool in &turn.session.tools {
            if self.tools.get(tool).is_none() {
                return Err(CairnError::UnknownTool(tool.clone()));
            }
            // The name goes to the endpoint as a function name, which
            // OpenAI-compatible endpoints refuse past this pattern: refused
            // here, before a process exists, not at the first model call.
            let callable = (1..=64).contains(&tool.len())
                && tool
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !callable {
                return Err(CairnError::InvalidRequest(format!(
                    "tool `{tool}` cannot be offered to a model: a function name is 1-64 of [A-Za-z0-9_-]"
                )));
            }
        }
        Ok(())
    }

    async fn run(&self, ctx: ToolContext, input: Value) -> Outcome {
        let turn = match Turn::parse(&input) {
            Ok(t) => t,
            Err(e) => return Outcome::failure("turn", e.code(), e.to_string()),
        };
        match self.run_turn(&ctx, turn).await {
            Ok(outcome) => outcome,
            Err(_) if ctx.is_stopped() => ctx.stopped_outcome(),
            // The store, not the turn: a rerunnable turn is run again later
            // (its answers so far are journaled).
            Err(e @ (CairnError::Unavailable(_) | CairnError::OutcomeUnknown(_))) => {
                Outcome::failure("runtime", e.code(), e.to_string())
            }
            Err(e) => Outcome::failure("turn", e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each tool is offered with a line saying what it does, and a rule
    /// taken off its arguments' schema (which OpenAI refuses at a
    /// function's top level) is said in that line instead.
    #[test]
    fn tools_are_offered_with_what_they_do_and_the_rules_taken_off() {
        let tools = cairn_tools::builtin_tools(true);
        let input = json!({"type": "session_turn", "session": {"tools": ["echo", "sleep", "wait_signal", "shell"]},
                           "input": "hi"});
        let defs = Turn::parse(&input).expect("a turn").tool_defs(&tools);
        let described: Vec<(&str, &str)> = defs
            .iter()
            .map(|d| {
                let f = &d["function"];
                (f["name"].as_str().unwrap(), f["description"].as_str().unwrap())
            })
            .collect();
        assert_eq!(described.len(), 4);
        for (name, description) in &described {
            assert!(!description.contains("the cairn tool"), "{name}: {description}");
            assert!(description.len() > 30, "{name}: {description}");
        }
        let shell = &defs[3]["function"];
        assert!(shell["parameters"].get("oneOf").is_none(), "{shell}");
        assert!(
            described[3].1.ends_with("Give exactly one of `argv` and `command`."),
            "{}",
            described[3].1
        );
        for (name, description) in &described[..3] {
            assert!(!description.contains("Give "), "{name}: {description}");
        }
    }

    /// Rules other than "one of these fields" are said to exist.
    #[test]
    fn a_rule_not_of_fields_is_said_to_exist() {
        let rule = |schema: Value| stripped_rule(schema.as_object().expect("an object"));
        assert_eq!(
            rule(json!({"anyOf": [{"required": ["a"]}, {"required": ["b"]}, {"required": ["c"]}]})).as_deref(),
            Some("Give at least one of `a`, `b` and `c`.")
        );
        for other in [
            json!({"oneOf": [{"required": ["a", "b"]}, {"required": ["c"]}]}),
            json!({"allOf": [{"required": ["a"]}]}),
            json!({"not": {"required": ["a"]}}),
        ] {
            let said = rule(other.clone()).expect("a rule");
            assert!(said.contains("a rule not shown in their schema"), "{other}: {said}");
        }
        assert_eq!(rule(json!({"type": "object"})), None);
    }
}
