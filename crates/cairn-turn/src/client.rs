//! One streamed chat-completions call against an OpenAI-compatible endpoint.
//!
//! Plain `reqwest` plus `eventsource-stream` rather than a full client crate:
//! the runner owns the loop (each model call is journaled, each tool call is a
//! child process), so all it needs is one request and the SSE framing of the
//! answer (ADR 0019).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::config::{ModelSpec, SHORTEST_REDACTED_KEY};

/// What one model call answered: the assistant message (`content`,
/// `tool_calls` when it asked for any, `refusal` when it refused) and the
/// endpoint's usage counts.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatAnswer {
    /// `{"role": "assistant", "content", "tool_calls"?, "refusal"?}`.
    pub message: Value,
    /// The usage the endpoint reported (`null` when it reported none).
    pub usage: Value,
    /// Why the endpoint stopped (`stop`, `tool_calls`, `length`, ...; `null`
    /// when it did not say).
    pub finish_reason: Value,
    /// Whether cairn cut the answer off at [`MAX_ANSWER_BYTES`] (what one
    /// journal entry holds) and read no more of it: the endpoint's own
    /// `finish_reason` and usage, which come last, were not read.
    pub cut_at_limit: bool,
}

/// Why a model call failed.
#[derive(Debug)]
pub enum ModelFault {
    /// Worth retrying: 429, 5xx, a broken connection or stream, an answer
    /// without any choice.
    Transient {
        /// What happened.
        message: String,
        /// The endpoint's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Refused for good: another 4xx (408 too), with the endpoint's message.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The endpoint's message.
        message: String,
    },
}

impl ModelFault {
    fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// This fault with `key` taken out of its message: an endpoint (a
    /// gateway, say) may quote the key it was sent in its error text, and
    /// the message is stored in the turn's failure and logged (SPEC §15: the
    /// key is never stored in a record or an event).
    fn without_key(self, key: Option<&str>) -> Self {
        let clean = |m: String| redact(&m, key).into_owned();
        match self {
            Self::Transient { message, retry_after } => Self::Transient {
                message: clean(message),
                retry_after,
            },
            Self::Rejected { status, message } => Self::Rejected {
                status,
                message: clean(message),
            },
        }
    }
}

impl std::fmt::Display for ModelFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient { message, .. } => f.write_str(message),
            Self::Rejected { status, message } => write!(f, "HTTP {status}: {message}"),
        }
    }
}

/// `text` without `key` in it, nor a quote of it cut off: an endpoint (a
/// gateway, say) may quote the key it was sent in its error text or its
/// answer, which is stored and logged. Taken out before a text is clipped, so
/// no part of a key survives at the cut. A key shorter than
/// [`SHORTEST_REDACTED_KEY`] is left in: it is a dummy (`ollama`, `EMPTY`) or
/// a word, and taking it out would rewrite the model's answers.
fn redact<'a>(text: &'a str, key: Option<&str>) -> Cow<'a, str> {
    match redacted(key) {
        Some(key) => take_out(text, key, true).0,
        None => text.into(),
    }
}

/// The key to take out of what an endpoint answers: `key` when it is at
/// least [`SHORTEST_REDACTED_KEY`] long, else none.
fn redacted(key: Option<&str>) -> Option<&str> {
    key.filter(|k| k.len() >= SHORTEST_REDACTED_KEY)
}

/// The shortest start of a key taken out as the whole key is: a quote of the
/// key cut off (a stream broken mid-way, an answer ended at its token limit)
/// is the key but for a few guessable bytes. Half the key, and
/// [`SHORTEST_REDACTED_KEY`] bytes at least, so that a start most keys share
/// (`sk-proj-`) is not one alone (a shorter key is not taken out at all).
fn shortest_quote(key: &str) -> usize {
    let mut n = key.len().div_ceil(2).max(SHORTEST_REDACTED_KEY).min(key.len());
    while !key.is_char_boundary(n) {
        n += 1;
    }
    n
}

/// `text` with each quote of `key` replaced by `[redacted]`: the whole key,
/// or a start of it at least [`shortest_quote`] long that goes no further
/// (the text ends there, or goes on with other than the key). With `end`
/// false more text follows, and a start of the key reaching the end of
/// `text` may go on into it: that is held back. Answers what of `text` is
/// decided, the quotes replaced, and where what is held back begins
/// (`text.len()` when nothing is).
fn take_out<'a>(text: &'a str, key: &str, end: bool) -> (Cow<'a, str>, usize) {
    let Some(first) = key.chars().next() else {
        return (text.into(), text.len());
    };
    let shortest = shortest_quote(key);
    let mut out = String::new();
    // `text[..copied]` is decided, and in `out`; a quote can only begin at
    // the key's first character, looked for from `from`.
    let (mut copied, mut from) = (0, 0);
    while let Some(at) = text[from..].find(first).map(|i| from + i) {
        let mut same = text.as_bytes()[at..]
            .iter()
            .zip(key.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while !key.is_char_boundary(same) {
            same -= 1;
        }
        let to_the_end = at + same == text.len();
        if same == key.len() || (same >= shortest && (end || !to_the_end)) {
            out.push_str(&text[copied..at]);
            out.push_str(REDACTED);
            copied = at + same;
            from = copied;
        } else if to_the_end && !end {
            out.push_str(&text[copied..at]);
            return (out.into(), at);
        } else {
            from = at + first.len_utf8();
        }
    }
    if copied == 0 {
        return (text.into(), text.len());
    }
    out.push_str(&text[copied..]);
    (out.into(), text.len())
}

/// What stands where a key was.
const REDACTED: &str = "[redacted]";

/// A `Retry-After` value (RFC 9110): delay-seconds or an HTTP date (a date
/// already past means now). A date is measured against `date`, the
/// response's own `Date` header, when it has a parseable one: both are in the
/// endpoint's clock, so a node whose clock is off from it still waits what
/// was asked. Only without one is it measured against `now`, the local clock.
pub(crate) fn retry_after(value: &str, date: Option<&str>, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    // Delay-seconds is digits only (RFC 9110 §10.2.3: `+3` is no value);
    // too many for a u64 is a very long wait, not no wait (RFC 9111
    // §1.2.2): past any a turn waits out.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let from = date
        .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
        .unwrap_or(now);
    Some(at.duration_since(from).unwrap_or(Duration::ZERO))
}

/// A request body: the messages so far, the tools offered, and options.
pub(crate) struct ChatRequest<'a> {
    pub messages: &'a [Value],
    pub tools: &'a [Value],
    pub temperature: Option<f64>,
    pub response_format: Option<&'a Value>,
}

/// Call the model once, streaming: `on_delta` sees each piece of content as
/// it arrives (a refusal is not content: it is kept in the message only).
/// Tool-call arguments split across chunks are joined by index (or by `id`,
/// for endpoints that send none). A 200 with a JSON body instead of an event
/// stream is read as a whole chat completion (to [`MAX_JSON_BODY_BYTES`]).
///
/// The answer is whole when the stream says `[DONE]`, or when its body ends
/// cleanly after a choice gave its `finish_reason` (some endpoints and
/// proxies never send `[DONE]`); a body that ends before either is a broken
/// stream. An answer without any choice is no answer (see [`no_choice`]).
pub(crate) async fn chat(
    http: &reqwest::Client,
    idle: std::time::Duration,
    spec: &ModelSpec,
    key: Option<&str>,
    request: &ChatRequest<'_>,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatAnswer, ModelFault> {
    let key = key.filter(|k| !k.is_empty());
    // A key too short to redact is sent and left in the answer (see
    // `redact`): nothing is held back or rewritten.
    let Some(key) = redacted(key) else {
        return ask(http, idle, spec, key, request, on_delta).await;
    };
    // An endpoint (a gateway, a proxy) may echo the key it was sent in its
    // answer too: the key leaves neither the streamed deltas nor the answer
    // journaled, whole or cut off (SPEC §15: never stored in a record or an
    // event).
    let mut held = KeyFilter::new(key);
    let mut forward = |text: &str| {
        let out = held.push(text);
        if !out.is_empty() {
            on_delta(&out);
        }
    };
    let answer = ask(http, idle, spec, Some(key), request, &mut forward).await;
    // Nothing more comes, also after a broken stream's partial text: what
    // was held back goes out, or `[redacted]` when it is a quote of the key
    // cut off.
    let rest = held.finish();
    if !rest.is_empty() {
        on_delta(&rest);
    }
    let mut answer = answer.map_err(|fault| fault.without_key(Some(key)))?;
    // All of the answer is journaled: the endpoint's usage and
    // finish_reason as much as its message.
    for part in [&mut answer.message, &mut answer.usage, &mut answer.finish_reason] {
        redact_strings(part, key);
    }
    Ok(answer)
}

/// Streamed text with a key taken out, also when the key is split across
/// pieces: only a start of the key at the end of the text so far is held
/// back, until the next piece (or the end) shows whether it goes on into the
/// key. Hand-written: it is a few lines over [`take_out`].
struct KeyFilter<'k> {
    key: &'k str,
    pending: String,
}

impl<'k> KeyFilter<'k> {
    fn new(key: &'k str) -> Self {
        Self {
            key,
            pending: String::new(),
        }
    }

    /// What of `pending + text` can be sent now, the key replaced.
    fn push(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        let (out, held) = take_out(&self.pending, self.key, false);
        let out = out.into_owned();
        self.pending.drain(..held);
        out
    }

    /// What is left held back at the end of the answer: `[redacted]` when
    /// it is a quote of the key cut off.
    fn finish(self) -> String {
        take_out(&self.pending, self.key, true).0.into_owned()
    }
}

/// Every string in `value` (and every field name: an endpoint's `usage` is
/// any object) with `key` taken out.
fn redact_strings(value: &mut Value, key: &str) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = redact(s, Some(key)) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, key)),
        Value::Object(fields) => {
            if fields.keys().any(|k| matches!(redact(k, Some(key)), Cow::Owned(_))) {
                *fields = std::mem::take(fields)
                    .into_iter()
                    .map(|(k, v)| (redact(&k, Some(key)).into_owned(), v))
                    .collect();
            }
            fields.values_mut().for_each(|v| redact_strings(v, key));
        }
        _ => {}
    }
}

/// [`chat`], with faults as the endpoint worded them.
async fn ask(
    http: &reqwest::Client,
    idle: std::time::Duration,
    spec: &ModelSpec,
    key: Option<&str>,
    request: &ChatRequest<'_>,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatAnswer, ModelFault> {
    let mut body = json!({
        "model": spec.model,
        "messages": request.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = json!(request.tools);
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(f) = request.response_format {
        body["response_format"] = f.clone();
    }
    let mut req = http.post(format!("{}/chat/completions", spec.base_url)).json(&body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let response = req
        .send()
        .await
        .map_err(|e| ModelFault::transient(format!("model `{}`: {}", spec.name, without_url(&e))))?;
    let status = response.status();
    if !status.is_success() {
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .and_then(|v| retry_after(v, header(reqwest::header::DATE), std::time::SystemTime::now()));
        // Where a redirect not followed points, resolved against the URL
        // asked (a Location may be relative).
        let response_location = status
            .is_redirection()
            .then(|| response.headers().get(reqwest::header::LOCATION))
            .flatten()
            .map(|v| {
                let to = String::from_utf8_lossy(v.as_bytes()).into_owned();
                response.url().join(&to).map_or(to, |u| u.to_string())
            });
        // Read to a bound (a message is clipped anyway): an endpoint's error
        // page of any size costs no more than that.
        let (text, cut) = body_within(response, ERROR_BODY_BYTES).await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(String::from))
            .unwrap_or(text);
        let message = match response_location {
            // A redirect not followed (it would not keep the POST): where it
            // points is what the operator needs, to set the base URL to it.
            Some(to) => {
                // The base URL that would reach it, when it names the
                // completions path as asked.
                let base = to
                    .strip_suffix("/chat/completions")
                    .map(|b| format!(": its base URL may be `{}`", clip_read(&redact(b, key), false)))
                    .unwrap_or_default();
                format!(
                    "model `{}` answered {status}, a redirect to `{}`, not followed (only a 307 or 308 \
                     within the endpoint's own scheme, host and port keeps the POST and its key, ten at \
                     most){base}",
                    spec.name,
                    clip_read(&redact(&to, key), false)
                )
            }
            None => format!(
                "model `{}` answered {status}: {}",
                spec.name,
                clip_read(&redact(&message, key), cut)
            ),
        };
        // 429 and 5xx are worth another call; another 4xx, 408 too, is
        // refused for good (SPEC §15). An error inside a stream that names
        // 408 is a stream broken while answering, and retried as one.
        return Err(if status.as_u16() == 429 || status.is_server_error() {
            ModelFault::Transient { message, retry_after }
        } else {
            ModelFault::Rejected {
                status: status.as_u16(),
                message,
            }
        });
    }
    // An endpoint that ignores `stream: true` answers one JSON chat
    // completion: a whole answer, taken as it is (calling again would only
    // buy the same answer again).
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_ascii_lowercase());
    let json_body = content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/json"));
    // Anything else (a proxy's login page, a web app answering every path)
    // is not an answer, and asking again buys the same page: refused at
    // once, with the start of what came.
    if let Some(ct) = content_type
        .as_deref()
        .filter(|ct| !json_body && !ct.starts_with("text/event-stream"))
    {
        let (text, cut) = body_within(response, ERROR_BODY_BYTES).await.unwrap_or_default();
        return Err(ModelFault::Rejected {
            status: status.as_u16(),
            message: format!(
                "model `{}` answered {status} `{ct}`, neither an event stream nor a JSON chat completion: {}",
                spec.name,
                clip_read(&redact(&text, key), cut)
            ),
        });
    }
    if json_body {
        // Read whole to a bound, then cut as a stream is (`completion`): an
        // answer past what cairn keeps of one is the same cut-off answer,
        // streamed or not. Only a body past the bound is refused.
        let status = status.as_u16();
        let (text, _) = body_within(response, MAX_JSON_BODY_BYTES)
            .await
            .map_err(|e| ModelFault::transient(format!("model `{}`: broken answer: {}", spec.name, without_url(&e))))?;
        if text.len() >= MAX_JSON_BODY_BYTES {
            return Err(ModelFault::Rejected {
                status,
                message: format!(
                    "model `{}` answered {MAX_JSON_BODY_BYTES} bytes or more in one JSON body, more than cairn \
                     reads of an answer that is not streamed",
                    spec.name
                ),
            });
        }
        return completion(spec, &text, key, on_delta);
    }
    // A line longer than an answer could be is cut where it passes that:
    // the event parser keeps a line whole and scans it again at every
    // network read (a line of megabytes took minutes of a core), and its
    // content would pass `MAX_ANSWER_BYTES` anyway.
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutting = cut.clone();
    let mut line = 0usize;
    let mut events = response
        .bytes_stream()
        .scan((), move |_, chunk| {
            if let Ok(bytes) = &chunk {
                line = match bytes.iter().rposition(|b| *b == b'\n') {
                    Some(at) => bytes.len() - at - 1,
                    None => line.saturating_add(bytes.len()),
                };
                if line > MAX_STREAM_LINE_BYTES {
                    cutting.store(true, std::sync::atomic::Ordering::SeqCst);
                    return futures::future::ready(None);
                }
            }
            futures::future::ready(Some(chunk))
        })
        .eventsource();
    let mut content = String::new();
    let mut refusal = String::new();
    let mut chose = false;
    let mut calls = ToolCalls::default();
    let mut usage = Value::Null;
    let mut finish_reason = Value::Null;
    let mut cut_at_limit = false;
    let mut done = false;
    // What the answer holds so far (content, refusal, tool calls), in bytes
    // as journaled (JSON-escaped).
    let mut held = 0usize;
    // The stream must make progress (a piece of the answer, its end), not
    // only bytes: comments and empty chunks keep a connection alive without
    // it, and would hold the turn for good.
    let mut progress_by = tokio::time::Instant::now() + idle;
    loop {
        let Ok(next) = tokio::time::timeout_at(progress_by, events.next()).await else {
            // After its `finish_reason` the answer is whole: only its usage
            // and `[DONE]` were to come, and a stream that stalls there (a
            // proxy holding the connection) ends it as a clean end would.
            if !finish_reason.is_null() {
                break;
            }
            return Err(ModelFault::transient(format!(
                "model `{}`: the stream made no progress for {idle:?} (keep-alives only)",
                spec.name
            )));
        };
        let Some(event) = next else { break };
        // The same for a connection broken after the `finish_reason` (a
        // proxy resetting it rather than closing it).
        if event.is_err() && !finish_reason.is_null() {
            break;
        }
        let event = event.map_err(|e| {
            let why = match &e {
                eventsource_stream::EventStreamError::Transport(t) => without_url(t),
                other => other.to_string(),
            };
            ModelFault::transient(format!("model `{}`: broken stream: {why}", spec.name))
        })?;
        if event.data.trim() == "[DONE]" {
            done = true;
            break;
        }
        // A keep-alive some gateways and proxies send between chunks (an
        // event with no data, or one of their own naming, `event: ping`)
        // carries no chunk: passed over, as the OpenAI client libraries do.
        if event.data.trim().is_empty() {
            continue;
        }
        let chunk: Value = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(_) if !matches!(event.event.as_str(), "" | "message" | "error") => continue,
            Err(e) => {
                return Err(ModelFault::transient(format!(
                    "model `{}`: unreadable chunk: {e}",
                    spec.name
                )))
            }
        };
        // A failure during generation comes as a chunk `{"error": {...}}`:
        // the answer so far is not an answer.
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(spec, error, key));
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = bounded_usage(u.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            continue;
        };
        // A chat completion chunk carries its piece in `delta`. A choice
        // with the legacy completions' `text`, or a whole `message`, in its
        // place is not one: read as an empty piece, its text would be lost
        // and the answer taken as empty. Refused as a body that is not a
        // chat completion is: calling again would buy the same shape. A
        // choice with neither (a last chunk with only its `finish_reason`)
        // is read as it is.
        if choice.get("delta").is_none_or(Value::is_null) {
            if let Some(field) = ["text", "message"]
                .into_iter()
                .find(|f| choice.get(*f).is_some_and(|v| !v.is_null()))
            {
                return Err(not_a_chunk(spec, field, &event.data, key));
            }
        }
        if is_legacy_call(choice, &choice["delta"]) {
            return Err(legacy_call(spec, &event.data, key));
        }
        chose = true;
        let delta = &choice["delta"];
        let text_of = |field: &str| delta.get(field).and_then(text_parts).filter(|t| !t.is_empty());
        let tool_calls = delta.get("tool_calls").and_then(Value::as_array);
        // An answer past what one journal entry holds could never be
        // journaled: it is cut off before the chunk that would pass it,
        // much as the model's own token limit cuts one, and nothing more is
        // read of it (`cut_at_limit`).
        let adds = [text_of("content"), text_of("refusal")]
            .into_iter()
            .flatten()
            .map(|t| journaled_len(&t))
            .chain(tool_calls.into_iter().flatten().map(|f| calls.added_len(f)))
            .sum::<usize>();
        if held + adds > MAX_ANSWER_BYTES {
            cut_at_limit = true;
            done = true;
            break;
        }
        held += adds;
        if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
            // Kept as given while the stream is read (that one came says
            // the answer is whole); bounded where the answer is made.
            finish_reason = reason.clone();
            progress_by = tokio::time::Instant::now() + idle;
        }
        // Any piece of a delta is progress: reasoning a model streams
        // before its answer (`reasoning_content`, `reasoning`) too. Only
        // comments and empty or role-only deltas keep a stream alive
        // without it.
        let moved = delta.as_object().is_some_and(|d| {
            d.iter().any(|(k, v)| {
                k != "role"
                    && match v {
                        Value::String(s) => !s.is_empty(),
                        Value::Array(a) => !a.is_empty(),
                        Value::Object(o) => !o.is_empty(),
                        _ => false,
                    }
            })
        });
        if adds > 0 || moved {
            progress_by = tokio::time::Instant::now() + idle;
        }
        // After its `finish_reason` only the usage chunk and `[DONE]` are to
        // come: a stream held open past a short grace ends the answer (a
        // proxy holding the connection would hold the turn and its slot
        // for the whole idle timeout).
        if !finish_reason.is_null() {
            progress_by = progress_by.min(tokio::time::Instant::now() + AFTER_FINISH.min(idle));
        }
        if let Some(text) = text_of("content") {
            content.push_str(&text);
            on_delta(&text);
        }
        if let Some(text) = text_of("refusal") {
            refusal.push_str(&text);
        }
        for call in tool_calls.into_iter().flatten() {
            calls.merge(call);
        }
    }
    if cut.load(std::sync::atomic::Ordering::SeqCst) {
        // Cut off in its line: an answer (what came before it) at its
        // length, as past `MAX_ANSWER_BYTES`.
        cut_at_limit = true;
        done = true;
        chose = true;
    }
    if !done && finish_reason.is_null() {
        return Err(ModelFault::transient(format!(
            "model `{}`: the stream ended before [DONE] and before any finish_reason",
            spec.name
        )));
    }
    if !chose {
        return Err(no_choice(spec));
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.calls.is_empty() {
        let mut calls = calls.calls;
        with_distinct_ids(&mut calls);
        message["tool_calls"] = Value::Array(calls);
    }
    if !refusal.is_empty() {
        message["refusal"] = json!(refusal);
    }
    Ok(ChatAnswer {
        message,
        usage,
        finish_reason: bounded_reason(&finish_reason),
        cut_at_limit,
    })
}

/// A whole (not streamed) chat completion `text`, read as the answer.
fn completion(
    spec: &ModelSpec,
    text: &str,
    key: Option<&str>,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatAnswer, ModelFault> {
    let not_an_answer = |why: &str| ModelFault::Rejected {
        status: 200,
        message: format!(
            "model `{}` answered application/json, not an event stream, and {why}: {}",
            spec.name,
            clip(&redact(text, key))
        ),
    };
    let body: Value = serde_json::from_str(text).map_err(|_| not_an_answer("the body is not JSON"))?;
    if let Some(error) = body.get("error").filter(|e| !e.is_null()) {
        return Err(stream_error(spec, error, key));
    }
    if body
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| choices.is_empty())
    {
        return Err(no_choice(spec));
    }
    let choice = body
        .pointer("/choices/0")
        .ok_or_else(|| not_an_answer("the body is not a chat completion"))?;
    // A choice without a `message` object (the legacy completions' `text`,
    // or nothing but its `finish_reason`) is not a chat completion: read as
    // an empty message, the answer would be taken as empty.
    let given = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| not_an_answer("its choice holds no `message` object: the body is not a chat completion"))?;
    if is_legacy_call(choice, given) {
        return Err(legacy_call(spec, text, key));
    }
    // As a stream is (see `chat`): what passes `MAX_ANSWER_BYTES` once
    // journaled is cut off, in the order a stream sends it (content, the
    // refusal, then the calls one by one), and the answer says so.
    let mut held = 0;
    let mut cut_at_limit = false;
    let mut kept = |text: &str| -> String {
        let (prefix, len) = within_journaled(text, MAX_ANSWER_BYTES.saturating_sub(held));
        held += len;
        if prefix.len() < text.len() {
            cut_at_limit = true;
        }
        prefix.to_string()
    };
    let content = kept(&given.get("content").and_then(text_parts).unwrap_or_default());
    let refusal = given
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(&mut kept);
    if !content.is_empty() {
        on_delta(&content);
    }
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(calls) = given
        .get("tool_calls")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    {
        // Each element is a whole call here, not a fragment to join, even
        // without an id or an index.
        let mut whole = Vec::new();
        for call in calls.iter().map(whole_call) {
            let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).map_or(0, journaled_len);
            let len = CALL_OVERHEAD_BYTES + text("/id") + text("/function/name") + text("/function/arguments");
            if cut_at_limit || held + len > MAX_ANSWER_BYTES {
                cut_at_limit = true;
                break;
            }
            held += len;
            whole.push(call);
        }
        if !whole.is_empty() {
            with_distinct_ids(&mut whole);
            message["tool_calls"] = Value::Array(whole);
        }
    }
    if let Some(refusal) = refusal.filter(|r| !r.is_empty()) {
        message["refusal"] = json!(refusal);
    }
    Ok(ChatAnswer {
        message,
        usage: bounded_usage(body.get("usage").cloned().unwrap_or(Value::Null)),
        // A cut answer has no reason of the endpoint's (as a stream cut
        // before its last chunk).
        finish_reason: if cut_at_limit {
            Value::Null
        } else {
            choice.get("finish_reason").map_or(Value::Null, bounded_reason)
        },
        cut_at_limit,
    })
}

/// The longest prefix of `text` (at a character boundary) whose journaled
/// form (JSON-escaped, without quotes) is at most `room` bytes, and that
/// form's length. serde_json escapes `"`, `\\` and the control characters
/// (two bytes for the named ones, six for the rest) and nothing else; a unit
/// test holds this to [`journaled_len`].
fn within_journaled(text: &str, room: usize) -> (&str, usize) {
    let mut len = 0;
    for (at, c) in text.char_indices() {
        let add = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if len + add > room {
            return (&text[..at], len);
        }
        len += add;
    }
    (text, len)
}

/// Give every tool call of an answer an id of its own, before the answer is
/// journaled (so a replay sends the same): an endpoint that sends none (some
/// local servers) or repeats one left the model unable to tell the results
/// apart, and a strict endpoint refuses the request that carries them. A
/// call without an id, or with one an earlier call of the answer holds, gets
/// `call_{k}` (its place; further on when another call holds that).
fn with_distinct_ids(calls: &mut [Value]) {
    // The ids the endpoint sent, looked up in a set: an answer of thousands
    // of calls without ids took seconds of a runtime thread when each fresh
    // id scanned every call.
    let sent: std::collections::HashSet<String> = calls
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for k in 0..calls.len() {
        let id = calls[k]["id"].as_str().unwrap_or_default().to_string();
        if !id.is_empty() && seen.insert(id) {
            continue;
        }
        let fresh = (0..)
            .map(|n: usize| format!("call_{}", k + n * calls.len()))
            .find(|c| !seen.contains(c) && !sent.contains(c))
            .unwrap_or_default();
        seen.insert(fresh.clone());
        calls[k]["id"] = json!(fresh);
    }
}

/// One tool call of an answer that was not streamed, in the shape the
/// stream's calls are joined into. Arguments sent as a JSON value rather than
/// the string OpenAI's shape has are taken as that value's text.
fn whole_call(call: &Value) -> Value {
    let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
    let arguments = arguments_piece(call).map(Cow::into_owned).unwrap_or_default();
    json!({
        "id": text("/id"),
        "type": "function",
        "function": {"name": text("/function/name"), "arguments": arguments}
    })
}

/// The fault of a streamed chunk whose choice carries `field` (`text`, as
/// the legacy completions stream it, or a whole `message`) and no `delta`:
/// not a chat completion chunk. Refused for good (`model_error`), as a whole
/// body that is not a chat completion is: the endpoint speaks another shape,
/// and calling again would buy the same.
fn not_a_chunk(spec: &ModelSpec, field: &str, data: &str, key: Option<&str>) -> ModelFault {
    ModelFault::Rejected {
        status: 200,
        message: format!(
            "model `{}` streamed a choice with `{field}` and no `delta`, not a chat completion chunk: {}",
            spec.name,
            clip(&redact(data, key))
        ),
    }
}

/// Whether a choice asks for a call in the legacy shape (`function_call`
/// in its message or delta, or finish_reason `function_call`) in place of
/// `tool_calls`: read as a chat completion, the call would be dropped without
/// trace and the answer taken as its text alone.
fn is_legacy_call(choice: &Value, message: &Value) -> bool {
    message.get("function_call").is_some_and(|c| !c.is_null())
        || choice.get("finish_reason").and_then(Value::as_str) == Some("function_call")
}

/// The fault of an answer asking for a call in the legacy `function_call`
/// shape (see [`is_legacy_call`]): refused for good (`model_error`), as the
/// other shapes that are not a chat completion are; calling again would buy
/// the same shape.
fn legacy_call(spec: &ModelSpec, data: &str, key: Option<&str>) -> ModelFault {
    ModelFault::Rejected {
        status: 200,
        message: format!(
            "model `{}` asked for a call in the legacy `function_call` shape in place of `tool_calls`, not a \
             chat completion answer cairn reads: {}",
            spec.name,
            clip(&redact(data, key))
        ),
    }
}

/// The fault of an answer that holds no choice at all (a stream of nothing
/// but `[DONE]`, or `"choices": []`): the endpoint neither answered nor said
/// why. Taken as a broken stream, so retried within the policy's bound, then
/// `model_unavailable`: like a stream that ends before any `finish_reason`, it
/// carries no answer and no error, so another call wastes nothing and may
/// get one (an endpoint that knows the request is wrong says so with a 4xx or
/// an `{"error"}`, which are refused for good).
fn no_choice(spec: &ModelSpec) -> ModelFault {
    ModelFault::transient(format!(
        "model `{}` answered without any choice: no content, no finish_reason",
        spec.name
    ))
}

/// The fault an `{"error": {...}}` object the endpoint sent with a 200 means:
/// refused for good when it names a client error (an `invalid_request_error`
/// and the like, or a 4xx code other than 408 and 429), else worth retrying.
fn stream_error(spec: &ModelSpec, error: &Value, key: Option<&str>) -> ModelFault {
    let text = error
        .get("message")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| error.to_string());
    let message = format!(
        "model `{}` failed while answering: {}",
        spec.name,
        clip(&redact(&text, key))
    );
    let status = ["code", "status"]
        .iter()
        .find_map(|k| {
            let v = error.get(*k)?;
            v.as_u64().or_else(|| v.as_str()?.parse().ok())
        })
        .and_then(|s| u16::try_from(s).ok());
    let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
    let refused_kind = matches!(
        kind,
        "invalid_request_error" | "authentication_error" | "permission_error" | "not_found_error"
    );
    match status {
        Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => ModelFault::Rejected { status: s, message },
        _ if refused_kind => ModelFault::Rejected { status: 200, message },
        _ => ModelFault::transient(message),
    }
}

/// The most of an endpoint's text a failure message holds.
pub(crate) const MESSAGE_LIMIT: usize = 4096;

/// `text` cut to [`MESSAGE_LIMIT`] bytes on a char boundary (an endpoint's
/// error page can be megabytes of HTML; a failure carries its start).
pub(crate) fn clip(text: &str) -> String {
    clip_read(text, false)
}

/// [`clip`], of a text that was read only in part when `cut` (its length in
/// all is not known, only that it is longer).
fn clip_read(text: &str, cut: bool) -> String {
    if text.len() <= MESSAGE_LIMIT && !cut {
        return text.to_string();
    }
    let mut end = MESSAGE_LIMIT.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let more = if cut { "more than " } else { "" };
    format!("{}... ({more}{} bytes in all)", &text[..end], text.len())
}

/// The tool calls of an answer, joined from their streamed fragments: by
/// `index`, and, where a fragment has none (or names a call another already
/// holds at that index), by `id`: a fragment with a new `id` starts a new call.
#[derive(Default)]
struct ToolCalls {
    calls: Vec<Value>,
    by_index: HashMap<u64, usize>,
    last: Option<usize>,
}

impl ToolCalls {
    /// Fold one streamed tool-call fragment in.
    fn merge(&mut self, fragment: &Value) {
        let index = fragment.get("index").and_then(Value::as_u64);
        let id = fragment.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let at = match self.slot(fragment) {
            Some(at) => at,
            None => {
                self.calls
                    .push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
                self.calls.len() - 1
            }
        };
        if let Some(i) = index {
            self.by_index.insert(i, at);
        }
        self.last = Some(at);
        let call = &mut self.calls[at];
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        let name = Self::name_piece(call, fragment).map(Cow::Borrowed);
        for (field, piece) in [("name", name), ("arguments", arguments_piece(fragment))] {
            if let Some(piece) = piece {
                // Appended in place: arguments stream a few characters a
                // fragment, and copying the whole so far at each is quadratic.
                match &mut call["function"][field] {
                    Value::String(so_far) => so_far.push_str(&piece),
                    other => *other = json!(piece),
                }
            }
        }
    }

    /// The piece of a call's function name a fragment adds. Some endpoints
    /// repeat the whole name in every fragment of a call (where OpenAI's
    /// sends it in the first only): a piece equal to the name the call holds
    /// adds nothing, or every such call would name a tool twice over.
    fn name_piece<'f>(call: &Value, fragment: &'f Value) -> Option<&'f str> {
        let piece = fragment.pointer("/function/name").and_then(Value::as_str)?;
        (call["function"]["name"].as_str() != Some(piece)).then_some(piece)
    }

    /// The call a fragment continues (`None`: it begins one). A call already
    /// holding another id is another call.
    fn slot(&self, fragment: &Value) -> Option<usize> {
        let index = fragment.get("index").and_then(Value::as_u64);
        let id = fragment.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let current = match index {
            Some(i) => self.by_index.get(&i).copied(),
            None => self.last,
        }?;
        match (id, self.calls[current]["id"].as_str()) {
            (Some(new), Some(held)) if !held.is_empty() && held != new => None,
            _ => Some(current),
        }
    }

    /// The bytes `fragment` would add to the answer as journaled: its
    /// arguments and name pieces, an id the call did not hold, and the room
    /// of a call it begins (an endless run of new calls, or of name pieces,
    /// is an answer too, however little each adds).
    fn added_len(&self, fragment: &Value) -> usize {
        let arguments = arguments_piece(fragment).map_or(0, |a| journaled_len(&a));
        let slot = self.slot(fragment);
        let name = match slot {
            Some(at) => Self::name_piece(&self.calls[at], fragment),
            None => fragment.pointer("/function/name").and_then(Value::as_str),
        }
        .map_or(0, journaled_len);
        let id = fragment.get("id").and_then(Value::as_str).unwrap_or_default();
        let call = match slot {
            None => CALL_OVERHEAD_BYTES + journaled_len(id),
            Some(at) if self.calls[at]["id"].as_str() != Some(id) && !id.is_empty() => journaled_len(id),
            Some(_) => 0,
        };
        arguments + name + call
    }
}

/// A streamed tool call fragment's arguments as text: a string as it is, and
/// (as some endpoints stream them whole) a JSON object in its JSON text, as
/// the whole answer's reading takes it ([`whole_call`]); dropping it would
/// run the tool with arguments the model never gave.
fn arguments_piece(fragment: &Value) -> Option<Cow<'_, str>> {
    match fragment.pointer("/function/arguments")? {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// How long a stream may stay open after its `finish_reason` with nothing
/// more of it: its usage chunk and `[DONE]` follow at once when they come.
const AFTER_FINISH: std::time::Duration = std::time::Duration::from_secs(5);

/// The most bytes of an endpoint's `usage` journaled with its answer: a few
/// counts take a few hundred. A larger one (or one nested past
/// [`MAX_USAGE_DEPTH`]) is journaled as `null`, so it cannot push a good
/// answer past what one `turn.response` entry holds.
const MAX_USAGE_BYTES: usize = 16 * 1024;

/// The deepest `usage` journaled (OpenAI's nests its token details two deep).
const MAX_USAGE_DEPTH: usize = 8;

/// `usage` as journaled: itself, or `null` past [`MAX_USAGE_BYTES`] or
/// [`MAX_USAGE_DEPTH`].
fn bounded_usage(usage: Value) -> Value {
    match cairn_core::validate::check_shape_within(String::new, &usage, MAX_USAGE_BYTES, MAX_USAGE_DEPTH) {
        Ok(()) => usage,
        Err(_) => Value::Null,
    }
}

/// A `finish_reason` as journaled and read: a short string (`stop`,
/// `length`, ...), else `null`, for the same reason as [`bounded_usage`].
fn bounded_reason(reason: &Value) -> Value {
    match reason.as_str() {
        Some(r) if r.len() <= 64 => reason.clone(),
        _ => Value::Null,
    }
}

/// What a tool call takes in a journaled answer beside its id, name and
/// arguments (`{"id", "type": "function", "function": {...}}` and the comma
/// between calls: 66 bytes), with room for the id cairn gives a call sent
/// without one (`call_{k}`): an answer of thousands of calls is held to
/// [`MAX_ANSWER_BYTES`] as journaled, not a few percent past it.
const CALL_OVERHEAD_BYTES: usize = 80;

/// The longest line of an event stream read: past it, the answer is cut off
/// there (`cut_at_limit`). One chunk holding a whole answer of
/// [`MAX_ANSWER_BYTES`], escaped, fits.
const MAX_STREAM_LINE_BYTES: usize = 2 * MAX_ANSWER_BYTES + 64 * 1024;

/// The most of one answer (content, refusal and tool calls, in bytes) read
/// from a stream: well inside what one `turn.response` entry may hold
/// ([`cairn_core::validate::MAX_PAYLOAD_BYTES`]) beside its other fields.
pub const MAX_ANSWER_BYTES: usize = cairn_core::validate::MAX_PAYLOAD_BYTES / 4 * 3;

/// The most of a JSON body (an answer not streamed) read: 8 MiB. The body
/// is parsed whole before its answer is cut at [`MAX_ANSWER_BYTES`], so it
/// must hold an answer at that limit however the endpoint escapes it (six
/// bytes a character as `\u00XX`: 4.5 MiB), with room for its other fields;
/// and it bounds what one such answer costs in memory.
pub const MAX_JSON_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The bytes `text` takes in a journal entry: as a JSON string, escapes
/// included (a run of newlines is twice its length there).
fn journaled_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(text.len(), |j| j.len().saturating_sub(2))
}

/// How much of an endpoint's error body is read (its message is clipped).
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// `response`'s body as text, read to `cap` bytes at most (what is past
/// them is not read; a body that reaches `cap` comes back `cap` long).
async fn body_within(response: reqwest::Response, cap: usize) -> Result<(String, bool), reqwest::Error> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    let mut cut = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = cap - body.len();
        cut = chunk.len() > room;
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), cut))
}

/// A transport error's text with its causes (reqwest's own text never
/// shows them: "error sending request" says nothing of a refused
/// connection, a name that did not resolve, a rejected certificate or a
/// timeout), without the URL's query (keys never travel in it, but an error
/// should not echo more than it must).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(i) = text.find('?') {
        text.truncate(i);
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// A message's text: a string, or (as some endpoints answer, and as OpenAI's
/// requests may say it) an array of parts whose `text` parts are joined.
fn text_parts(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::Array(parts) => Some(std::borrow::Cow::Owned(
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cut of a body's text counts bytes as the journal will hold them.
    #[test]
    fn a_prefix_within_journaled_bytes_is_measured_as_journaled() {
        let text = "a\"b\\c\nd\u{1}e\u{7f}é😀\t\u{8}\u{c}\r/";
        assert_eq!(within_journaled(text, usize::MAX), (text, journaled_len(text)));
        for room in 0..=journaled_len(text) {
            let (prefix, len) = within_journaled(text, room);
            assert_eq!(len, journaled_len(prefix), "{room}");
            assert!(len <= room, "{room}");
            let next = text[prefix.len()..].chars().next();
            if let Some(c) = next {
                let longer = &text[..prefix.len() + c.len_utf8()];
                assert!(journaled_len(longer) > room, "{room}: {longer:?} would fit");
            }
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after(" 120 ", None, now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:30:00 GMT", None, now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", None, now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", None, now), None);
        assert_eq!(retry_after("", None, now), None);
    }

    /// A date is measured against the response's own `Date` (the
    /// endpoint's clock), whichever way the local clock is off from it; the
    /// local clock counts only without a parseable `Date`.
    #[test]
    fn a_retry_after_date_is_measured_by_the_endpoints_clock() {
        let at = "Wed, 21 Oct 2015 07:28:40 GMT";
        let date = Some("Wed, 21 Oct 2015 07:28:00 GMT");
        let forty = Some(Duration::from_secs(40));
        let endpoint_now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        for skew in [0i64, 60, 3_600, -60, -86_400] {
            let local = if skew >= 0 {
                endpoint_now + Duration::from_secs(skew as u64)
            } else {
                endpoint_now - Duration::from_secs(skew.unsigned_abs())
            };
            assert_eq!(retry_after(at, date, local), forty, "local clock off by {skew} s");
        }
        let ahead = endpoint_now + Duration::from_secs(60);
        let behind = endpoint_now - Duration::from_secs(60);
        // Without a `Date`, or with one that does not parse, the local clock.
        for no_date in [None, Some("yesterday"), Some("")] {
            assert_eq!(retry_after(at, no_date, ahead), Some(Duration::ZERO), "{no_date:?}");
            assert_eq!(
                retry_after(at, no_date, behind),
                Some(Duration::from_secs(100)),
                "{no_date:?}"
            );
        }
        // A date before the endpoint's `Date` is now; seconds are seconds.
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", date, behind),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("7", date, ahead), Some(Duration::from_secs(7)));
    }

    /// Delay-seconds too many for a u64 is a very long wait (RFC 9111
    /// §1.2.2), not an absent header.
    #[test]
    fn an_overflowing_retry_after_is_a_very_long_wait() {
        let now = std::time::SystemTime::now();
        let longest = Some(Duration::from_secs(u64::MAX));
        assert_eq!(retry_after("18446744073709551615", None, now), longest);
        assert_eq!(retry_after("18446744073709551616", None, now), longest);
        assert_eq!(retry_after(" 99999999999999999999 ", None, now), longest);
        assert_eq!(retry_after("9999999999999999999999999999999999", None, now), longest);
        assert_eq!(retry_after("-1", None, now), None);
        assert_eq!(retry_after("+3", None, now), None, "delay-seconds is digits only");
        assert_eq!(retry_after("1.5", None, now), None);
    }

    #[test]
    fn tool_call_fragments_join_by_index() {
        let mut calls = ToolCalls::default();
        for f in [
            json!({"index": 0, "id": "a", "function": {"name": "echo", "arguments": "{\"val"}}),
            json!({"index": 1, "id": "b", "function": {"name": "sleep", "arguments": ""}}),
            json!({"index": 0, "function": {"arguments": "ue\": 1}"}}),
            json!({"index": 1, "function": {"arguments": "{\"ms\": 5}"}}),
        ] {
            calls.merge(&f);
        }
        let calls = calls.calls;
        assert_eq!(calls[0]["function"]["arguments"], "{\"value\": 1}");
        assert_eq!(calls[0]["id"], "a");
        assert_eq!(calls[1]["function"]["name"], "sleep");
        assert_eq!(calls[1]["function"]["arguments"], "{\"ms\": 5}");
    }

    /// A name repeated in every fragment of a call (as some endpoints send
    /// it) names the tool once; a name sent in pieces is joined.
    #[test]
    fn a_name_repeated_in_each_fragment_is_taken_once() {
        let mut calls = ToolCalls::default();
        for f in [
            json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "echo", "arguments": "{\"value\""}}),
            json!({"index": 0, "function": {"name": "echo", "arguments": ": 9}"}}),
            json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "echo", "arguments": ""}}),
            json!({"index": 1, "id": "c2", "function": {"name": "sl", "arguments": "{}"}}),
            json!({"index": 1, "function": {"name": "eep"}}),
        ] {
            assert_eq!(
                calls.added_len(&f) == 0,
                f == json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "echo", "arguments": ""}}),
                "{f}"
            );
            calls.merge(&f);
        }
        let names: Vec<&str> = calls
            .calls
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["echo", "sleep"]);
        assert_eq!(calls.calls[0]["function"]["arguments"], "{\"value\": 9}");
    }

    /// Calls without an id, or repeating one, get ids of their own, and
    /// none takes an id another call of the answer holds.
    #[test]
    fn every_tool_call_gets_an_id_of_its_own() {
        let mut calls: Vec<Value> = ["", "", "same", "same", "call_1", ""]
            .iter()
            .map(|id| json!({"id": id, "type": "function", "function": {"name": "echo", "arguments": "{}"}}))
            .collect();
        with_distinct_ids(&mut calls);
        let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["call_0", "call_7", "same", "call_3", "call_1", "call_5"]);
    }

    #[test]
    fn tool_calls_without_an_index_are_told_apart_by_id() {
        let mut calls = ToolCalls::default();
        for f in [
            json!({"id": "a1", "type": "function", "function": {"name": "echo", "arguments": "{\"value\": 1}"}}),
            json!({"id": "b2", "type": "function", "function": {"name": "echo", "arguments": "{\"value\""}}),
            json!({"function": {"arguments": ": 2}"}}),
            // One index for every call, each with its own id.
            json!({"index": 0, "id": "c3", "function": {"name": "sleep", "arguments": "{}"}}),
            json!({"index": 0, "id": "d4", "function": {"name": "echo", "arguments": "{\"val"}}),
            json!({"index": 0, "function": {"arguments": "ue\": 4}"}}),
        ] {
            calls.merge(&f);
        }
        let got: Vec<(String, String, String)> = calls
            .calls
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["function"]["name"].as_str().unwrap().to_string(),
                    c["function"]["arguments"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("a1", "echo", "{\"value\": 1}"),
            ("b2", "echo", "{\"value\": 2}"),
            ("c3", "sleep", "{}"),
            ("d4", "echo", "{\"value\": 4}"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn long_texts_are_clipped_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MESSAGE_LIMIT);
        let clipped = clip(&long);
        assert!(clipped.len() < MESSAGE_LIMIT + 64, "{}", clipped.len());
        assert!(clipped.starts_with("éé") && clipped.ends_with(&format!("({} bytes in all)", long.len())));
    }

    #[test]
    fn an_answer_not_streamed_keeps_each_tool_call_apart() {
        let spec: ModelSpec = "m=http://h/v1".parse().expect("spec");
        let body = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
        "tool_calls": [
            {"id": "", "type": "function", "function": {"name": "echo", "arguments": "{\"value\":1}"}},
            {"type": "function", "function": {"name": "echo", "arguments": {"value": 2}}}
        ]}}]});
        let answer = completion(&spec, &body.to_string(), None, &mut |_| {}).expect("an answer");
        let calls = answer.message["tool_calls"].as_array().expect("calls");
        assert_eq!(calls.len(), 2, "{calls:?}");
        let args: Vec<Value> = calls
            .iter()
            .map(|c| {
                assert_eq!(c["function"]["name"], "echo");
                serde_json::from_str(c["function"]["arguments"].as_str().expect("a string")).expect("JSON")
            })
            .collect();
        assert_eq!(args, [json!({"value": 1}), json!({"value": 2})]);
    }

    /// A key split across streamed pieces is taken out whole, and every
    /// piece of text but the key comes through in order.
    #[test]
    fn a_key_split_across_pieces_is_taken_out() {
        let key = "sk-0123456789abcdef";
        for cut in 0..=key.len() {
            let text = format!("é{key}ü and {key}");
            let at = "é".len() + cut;
            let mut filter = KeyFilter::new(key);
            let mut out = filter.push(&text[..at]);
            out.push_str(&filter.push(&text[at..]));
            out.push_str(&filter.finish());
            assert_eq!(out, "é[redacted]ü and [redacted]", "cut at {cut}");
        }
        let mut message = json!({"content": format!("a {key}"), "tool_calls": [{"function": {"arguments": key}}]});
        redact_strings(&mut message, key);
        assert_eq!(
            message,
            json!({"content": "a [redacted]", "tool_calls": [{"function": {"arguments": "[redacted]"}}]})
        );
    }

    /// Text that cannot begin the key goes out at once; only a start of the
    /// key at the end of what came is held back, until what follows shows
    /// whether it goes on into the key.
    #[test]
    fn only_a_start_of_the_key_is_held_back() {
        let key = "sk-0123456789abcdef";
        let mut filter = KeyFilter::new(key);
        assert_eq!(filter.push("Thinking"), "Thinking");
        assert_eq!(filter.push(" it over, s"), " it over, ");
        assert_eq!(filter.push("o sk-01"), "so ");
        assert_eq!(filter.push("2 it"), "sk-012 it");
        assert_eq!(filter.push(" sk-0123456789ab"), " ");
        assert_eq!(filter.push("cdef."), "[redacted].");
        assert_eq!(filter.finish(), "");
    }

    /// A quote of the key cut off (at least half of it, and 16 bytes) is
    /// taken out as the whole key is, wherever it stands: mid-text, at the
    /// end of a whole text, or held back when a stream ends. A shorter start
    /// of the key is text.
    #[test]
    fn a_quote_of_the_key_cut_off_is_taken_out() {
        let key = "sk-0123456789abcdef"; // 19 bytes: 16 are a quote
        assert_eq!(shortest_quote(key), 16);
        assert_eq!(shortest_quote(&"k".repeat(40)), 20);
        assert_eq!(shortest_quote(&"k".repeat(16)), 16, "a key at the floor only whole");
        let cases = [
            ("was sk-0123456789abc, then", "was [redacted], then"),
            ("was sk-0123456789ab, then", "was sk-0123456789ab, then"),
            ("cut at sk-0123456789abcde", "cut at [redacted]"),
            ("cut at sk-012345", "cut at sk-012345"),
            ("sk-sk-0123456789abcdef!", "sk-[redacted]!"),
            (
                "twice sk-0123456789abcdefsk-0123456789abc",
                "twice [redacted][redacted]",
            ),
            ("é sk-0123456789abcdeé", "é [redacted]é"),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text, Some(key)), want, "{text}");
            // Streamed in pieces of any size, the deltas join into the
            // same text as the answer journaled.
            for size in 1..=text.len() {
                let mut filter = KeyFilter::new(key);
                let mut out = String::new();
                let mut at = 0;
                while at < text.len() {
                    let mut to = (at + size).min(text.len());
                    while !text.is_char_boundary(to) {
                        to += 1;
                    }
                    out.push_str(&filter.push(&text[at..to]));
                    at = to;
                }
                out.push_str(&filter.finish());
                assert_eq!(out, want, "{text} in pieces of {size}");
            }
        }
        // The whole answer, the endpoint's usage and finish_reason too, and
        // a field name of its usage.
        let mut usage = json!({"note": "billed to sk-0123456789abc", "sk-0123456789abcdef": 1, "n": [key]});
        redact_strings(&mut usage, key);
        assert_eq!(
            usage,
            json!({"note": "billed to [redacted]", "[redacted]": 1, "n": ["[redacted]"]})
        );
    }

    /// A key under [`SHORTEST_REDACTED_KEY`] (a local endpoint's dummy,
    /// `ollama`, or a letter) is left in the answer: its text, its tool
    /// calls' arguments and its field names stay as the model gave them,
    /// streamed or journaled. A key at the floor is taken out.
    #[test]
    fn a_short_key_is_left_in_the_answer() {
        let answer = |key: &str| {
            json!({"role": "assistant", "content": format!("run {key} list; {key}"),
                   "tool_calls": [{"id": "c", "type": "function",
                                   "function": {"name": "shell", "arguments": format!("{{\"command\": \"{key} list\"}}")}}],
                   "usage": {key: 1}})
        };
        for key in ["ollama", "EMPTY", "e", "k23456789012345"] {
            assert!(key.len() < SHORTEST_REDACTED_KEY, "{key}");
            assert_eq!(redact(&format!("said {key}"), Some(key)), format!("said {key}"));
            let mut message = answer(key);
            redact_strings(&mut message, key);
            assert_eq!(message, answer(key), "{key}");
            let fault = ModelFault::transient(format!("bad key {key}")).without_key(Some(key));
            assert_eq!(fault.to_string(), format!("bad key {key}"));
        }
        let key = "k234567890123456";
        assert_eq!(key.len(), SHORTEST_REDACTED_KEY);
        assert_eq!(redact(&format!("said {key}"), Some(key)), "said [redacted]");
        let mut message = answer(key);
        redact_strings(&mut message, key);
        assert_eq!(message["content"], "run [redacted] list; [redacted]");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"command\": \"[redacted] list\"}"
        );
        assert_eq!(message["usage"], json!({"[redacted]": 1}));
    }

    /// A key the endpoint quotes is taken out before the text is clipped, so
    /// none of it survives where the cut falls inside it.
    #[test]
    fn a_quoted_key_is_taken_out_before_the_cut() {
        let spec: ModelSpec = "m=http://h/v1".parse().expect("spec");
        let key = "sk-0123456789abcdef";
        let text = format!("{}{key} is not valid", "x".repeat(MESSAGE_LIMIT - 8));
        let fault = stream_error(&spec, &json!({"message": text}), Some(key));
        assert!(!fault.to_string().contains(&key[..8]), "{fault}");
        let fault = ModelFault::transient(format!("said {key}")).without_key(Some(key));
        assert_eq!(fault.to_string(), "said [redacted]");
    }

    #[test]
    fn an_error_in_the_stream_is_retried_or_refused_by_its_kind() {
        let spec: ModelSpec = "m=http://h/v1".parse().expect("spec");
        let transient = |e: Value| matches!(stream_error(&spec, &e, None), ModelFault::Transient { .. });
        assert!(transient(
            json!({"message": "overloaded", "type": "server_error", "code": null})
        ));
        assert!(transient(json!({"message": "slow down", "code": 429})));
        assert!(transient(json!({"message": "?"})));
        assert!(!transient(json!({"message": "bad", "type": "invalid_request_error"})));
        assert!(!transient(json!({"message": "bad", "code": "400"})));
    }
}
