//! One streamed chat-completions call against an OpenAI-compatible endpoint.
//!
//! Plain `reqwest` plus `eventsource-stream` rather than a full client crate:
//! the runner owns the loop (each model call is journaled, each tool call is a
//! child process), so all it needs is one request and the SSE framing of the
//! answer (ADR 0019).

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::config::ModelSpec;

/// What one model call answered: the assistant message (`content`, and
/// `tool_calls` when it asked for any) and the endpoint's usage counts.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatAnswer {
    /// `{"role": "assistant", "content", "tool_calls"?}`.
    pub message: Value,
    /// The usage the endpoint reported (`null` when it reported none).
    pub usage: Value,
}

/// Why a model call failed.
#[derive(Debug)]
pub enum ModelFault {
    /// Worth retrying: 429, 5xx, a broken connection or stream.
    Transient {
        /// What happened.
        message: String,
        /// The endpoint's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Refused for good: another 4xx, with the endpoint's message.
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
}

impl std::fmt::Display for ModelFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient { message, .. } => f.write_str(message),
            Self::Rejected { status, message } => write!(f, "HTTP {status}: {message}"),
        }
    }
}

/// A `Retry-After` value (RFC 9110): delay-seconds or an HTTP date (a date
/// already past means now).
pub(crate) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A request body: the messages so far, the tools offered, and options.
pub(crate) struct ChatRequest<'a> {
    pub messages: &'a [Value],
    pub tools: &'a [Value],
    pub temperature: Option<f64>,
    pub response_format: Option<&'a Value>,
}

/// Call the model once, streaming: `on_delta` sees each piece of content as
/// it arrives. Tool-call arguments split across chunks are joined by index.
pub(crate) async fn chat(
    http: &reqwest::Client,
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
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(String::from))
            .unwrap_or(text);
        let message = format!("model `{}` answered {status}: {message}", spec.name);
        return Err(if status.as_u16() == 429 || status.is_server_error() {
            ModelFault::Transient { message, retry_after }
        } else {
            ModelFault::Rejected {
                status: status.as_u16(),
                message,
            }
        });
    }
    let mut events = response.bytes_stream().eventsource();
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut usage = Value::Null;
    let mut done = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| ModelFault::transient(format!("model `{}`: broken stream: {e}", spec.name)))?;
        if event.data.trim() == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|e| ModelFault::transient(format!("model `{}`: unreadable chunk: {e}", spec.name)))?;
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                content.push_str(text);
                on_delta(text);
            }
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            merge_tool_call(&mut calls, call);
        }
    }
    if !done {
        return Err(ModelFault::transient(format!(
            "model `{}`: the stream ended before [DONE]",
            spec.name
        )));
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(ChatAnswer { message, usage })
}

/// Fold one streamed tool-call fragment into the calls by its `index`.
fn merge_tool_call(calls: &mut Vec<Value>, fragment: &Value) {
    let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
    while calls.len() <= index {
        calls.push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
    }
    let call = &mut calls[index];
    if let Some(id) = fragment.get("id").and_then(Value::as_str) {
        call["id"] = json!(id);
    }
    for field in ["name", "arguments"] {
        if let Some(piece) = fragment.pointer(&format!("/function/{field}")).and_then(Value::as_str) {
            let joined = format!("{}{piece}", call["function"][field].as_str().unwrap_or_default());
            call["function"][field] = json!(joined);
        }
    }
}

/// A transport error's text without the URL's query (keys never travel in
/// it, but an error should not echo more than it must).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find('?') {
        e.truncate(i);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn tool_call_fragments_join_by_index() {
        let mut calls = Vec::new();
        for f in [
            json!({"index": 0, "id": "a", "function": {"name": "echo", "arguments": "{\"val"}}),
            json!({"index": 1, "id": "b", "function": {"name": "sleep", "arguments": ""}}),
            json!({"index": 0, "function": {"arguments": "ue\": 1}"}}),
            json!({"index": 1, "function": {"arguments": "{\"ms\": 5}"}}),
        ] {
            merge_tool_call(&mut calls, &f);
        }
        assert_eq!(calls[0]["function"]["arguments"], "{\"value\": 1}");
        assert_eq!(calls[0]["id"], "a");
        assert_eq!(calls[1]["function"]["name"], "sleep");
        assert_eq!(calls[1]["function"]["arguments"], "{\"ms\": 5}");
    }
}
