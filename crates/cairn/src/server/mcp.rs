//! `/mcp`: the MCP tools (crate `cairn-mcp`) over this server's own route
//! handlers, each call made as the caller its bearer token resolved to. A
//! session token therefore sees and starts exactly what it may over the HTTP
//! API, and another session's process answers `unknown_process`; schedules,
//! which belong to the host, answer a session token `forbidden` as HTTP does.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use cairn_core::{Outcome, StartRequest};
use cairn_mcp::{Answer, Cairn, CallsInFlight, Failure, HttpOptions, HttpService, ListArgs, Resolver, SharedCairn};
use serde::Serialize;
use serde_json::Value;

use super::api::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::auth::Caller;
use super::routes::{self, AwaitQuery, CancelBody, CompleteBody, EventsQuery, SignalBody};
use super::schedules;
use super::AppState;

/// The MCP endpoint over `state`; mount it behind [`super::auth::authenticate`].
pub fn service(state: &Arc<AppState>, calls: Arc<CallsInFlight>) -> HttpService {
    let shared = state.clone();
    let resolver: Arc<Resolver> = Arc::new(move |extensions: &axum::http::Extensions| {
        extensions.get::<Caller>().map(|caller| {
            Arc::new(AsCaller {
                state: shared.clone(),
                caller: caller.clone(),
            }) as SharedCairn
        })
    });
    cairn_mcp::http_service(
        resolver,
        HttpOptions {
            max_body_bytes: state.limits.max_body_bytes,
            // The server's own `refuse_foreign_hosts` guards every route of
            // an open server, this one included, and takes every loopback
            // address (the library's list knows three names).
            loopback_hosts_only: false,
            shutdown: state.mcp_shutdown.child_token(),
            calls,
        },
    )
}

/// In front of the MCP endpoint: a JSON `POST` that is not JSON, or not one
/// JSON-RPC 2.0 message, is answered 400 with the JSON-RPC error for it
/// (`-32700` parse error, `-32600` invalid request), where the endpoint's
/// library answered 415 in plain text, which a JSON-RPC client cannot read.
/// A body sent with a `Content-Encoding` or a `charset` the server does not
/// read is 415, as on the HTTP API ([`super::api::unread_encoding`]); a
/// JSON-RPC response is 400 with a null id.
/// A body over `limit` (`--max-body-bytes`) is 413 with the JSON-RPC error
/// too, carrying the message's id when its start shows it (see
/// [`too_large`]). A client's `notifications/cancelled` also ends the call
/// it names (the endpoint's library drops it: [`CallsInFlight`]), and a
/// request header naming an MCP revision this server does not speak is 400
/// ([`cairn_mcp::protocol_version_header_fault`]). A `tools/call` whose
/// one fault is in its arguments' JSON (a key given twice, an integer past
/// 64 bits) passes on with its [`cairn_mcp::message::ArgumentsFault`] in the
/// request's extensions: its tool answers it as a tool error, never runs it.
/// Everything else passes through untouched.
pub async fn jsonrpc_errors(
    limit: usize,
    calls: Arc<CallsInFlight>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let content_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
    let json = content_type
        .as_deref()
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    let post_json = req.method() == axum::http::Method::POST && json;
    let (mut parts, body) = req.into_parts();
    // A body that declares a size over the limit is refused before it is
    // read, but for its start: the message's id, when it shows there, lets
    // a client match the refusal to its request (a JSON-RPC error without
    // one is dropped by clients, which then wait for ever). A client that
    // waits to be told to send its body (`Expect: 100-continue`) is not
    // asked for it.
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&n| n > u64::try_from(limit).unwrap_or(u64::MAX));
    if let Some(len) = declared {
        let waits = parts
            .headers
            .get(axum::http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let id = if post_json && !waits {
            cairn_mcp::message::id_of_start(&read_start(body).await)
        } else {
            Value::Null
        };
        return too_large(
            id,
            &format!("request body of {len} bytes is over the server's limit of {limit}"),
        );
    }
    if !post_json {
        // A POST that is not JSON is refused for its headers (its `Accept`,
        // else its `Content-Type`) and its body is never read as a message:
        // its start is read all the same, for the id a client matches the
        // refusal by.
        let (body, id) = if parts.method == axum::http::Method::POST {
            let start = read_start(body).await;
            let id = cairn_mcp::message::id_of_start(&start);
            (axum::body::Body::from(start), id)
        } else {
            (body, Value::Null)
        };
        let req = axum::extract::Request::from_parts(parts, body);
        return transport_errors_as_jsonrpc(next.run(req).await, id, content_type.as_deref()).await;
    }
    // A body this server would read as something it is not (compressed
    // bytes, another charset) is refused as the HTTP API refuses it (415, in
    // its words), with the id its start shows; the rest is not read.
    if let Err(e) = super::api::unread_encoding(&parts.headers) {
        let id = cairn_mcp::message::id_of_start(&read_start(body).await);
        return closing(rpc_error(
            e.status,
            id,
            -32600,
            &format!("invalid request: {}", e.message),
        ));
    }
    let bytes = match read_within(body, limit).await {
        Ok(b) => b,
        Err(BodyFault::TooLarge(start)) => {
            return too_large(
                cairn_mcp::message::id_of_start(&start),
                &format!("the request body is over the server's limit of {limit} bytes"),
            )
        }
        // A body that did not all arrive within `--body-timeout` is 408, as
        // on every route, and its connection closes: it is not too large.
        Err(BodyFault::TimedOut(text)) => {
            return closing(rpc_error(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                Value::Null,
                -32600,
                &text,
            ))
        }
        Err(BodyFault::Unreadable(text)) => {
            return closing(rpc_error(
                axum::http::StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                &format!("invalid request: the request body could not be read: {text}"),
            ))
        }
    };
    // A body that begins with a byte order mark is read, and passed on, as
    // the body after it (RFC 8259 §8.1), as the HTTP API reads one.
    let bytes = bytes.slice(bytes.len() - cairn_mcp::message::without_bom(&bytes).len()..);
    // A `tools/call` sound but for its arguments' JSON (a key given twice,
    // an integer past 64 bits) goes on to its tool, which answers the fault
    // as a tool error (SPEC §16), as HTTP answers such a body.
    match cairn_mcp::message::parse_call(&bytes) {
        Err((id, code, text)) => rpc_error(axum::http::StatusCode::BAD_REQUEST, id, code, &text),
        Ok((message, arguments_fault)) => match cairn_mcp::message::fault(&message, "each POST carries") {
            Some((code, text)) => rpc_error(
                axum::http::StatusCode::BAD_REQUEST,
                cairn_mcp::message::answerable_id(&message),
                code,
                &text,
            ),
            // A response (no method): nothing here is answered by one. It is
            // refused with an HTTP error, as MCP's streamable HTTP has it, and
            // the error's id is null: a response's id names a request the
            // server sent, not one of the client's that this error answers.
            None if message.get("method").is_none() => rpc_error(
                axum::http::StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                "invalid request: this server sends no requests, so it takes no responses (a message without \
                 a `method`)",
            ),
            None => {
                let id = cairn_mcp::message::answerable_id(&message);
                let version = parts.headers.get("mcp-protocol-version");
                if let Some(text) = cairn_mcp::protocol_version_header_fault(&message, version) {
                    return rpc_error(axum::http::StatusCode::BAD_REQUEST, id, -32600, &text);
                }
                let caller = cairn_mcp::caller_key(&parts.headers);
                // The message is handled to its answer even when the client
                // goes away first (this future is then dropped): a wait ends
                // at once ([`cairn_mcp::ClientGone`]), and its answer has
                // somewhere to go. Dropped, the endpoint's library would
                // find the answer's way closed and log an error for what is
                // a client's ordinary leaving.
                if let Some(fault) = arguments_fault {
                    parts.extensions.insert(fault);
                }
                let gone = tokio_util::sync::CancellationToken::new();
                parts.extensions.insert(cairn_mcp::ClientGone(gone.clone()));
                let leaving = gone.drop_guard();
                let handling =
                    tokio::spawn(next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))));
                let response = match handling.await {
                    Ok(response) => response,
                    Err(e) => {
                        tracing::error!(error = %e, "an MCP request's handling failed");
                        return rpc_error(
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            id,
                            -32603,
                            "internal error: the request's handling failed",
                        );
                    }
                };
                leaving.disarm();
                // A cancel the endpoint took (202; not one it refused for
                // its headers) ends the call it names.
                if response.status() == axum::http::StatusCode::ACCEPTED
                    && message.get("method").and_then(Value::as_str) == Some("notifications/cancelled")
                {
                    if let Some(id) = message.pointer("/params/requestId") {
                        calls.cancel(&caller, id);
                    }
                }
                // Refused for its headers (a protocol version, an `Accept`):
                // the message was read, so its id is answered.
                transport_errors_as_jsonrpc(response, id, content_type.as_deref()).await
            }
        },
    }
}

/// The endpoint's own refusals of a request it will not read as a message (a
/// GET or DELETE, a body that is not JSON, an `Accept` without both JSON and
/// event streams) come as plain text: rewritten as the JSON-RPC error every
/// other refusal is, in this server's words for a `Content-Type` (the
/// request's, `content_type`) or an `Accept`, keeping the status and the
/// `Allow` header.
async fn transport_errors_as_jsonrpc(response: Response, id: Value, content_type: Option<&str>) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let allow = response.headers().get(axum::http::header::ALLOW).cloned();
    // The refusals are one short line; anything longer is cut, not buffered.
    let mut text = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("refused").to_string(),
    };
    match status {
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            let given = match content_type {
                Some(t) => format!("this request's is `{t}`"),
                None => "this request has none".to_string(),
            };
            text = format!("a message is sent as JSON, with `Content-Type: application/json` ({given})");
        }
        axum::http::StatusCode::NOT_ACCEPTABLE => {
            text = "the request's `Accept` must accept both application/json and text/event-stream".to_string();
        }
        _ => {}
    }
    if let Some(methods) = allow.as_ref().and_then(|a| a.to_str().ok()) {
        text.push_str(&format!(" (this endpoint takes {methods})"));
    }
    let mut answer = rpc_error(status, id, -32600, &format!("invalid request: {text}"));
    if let Some(allow) = allow {
        answer.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    answer
}

/// A request body over the server's limit (`--max-body-bytes`), refused as
/// `/mcp` refuses everything, as a JSON-RPC error: 413, `-32600` with the
/// message's `id` when its start showed it (else null), and the connection
/// closed after it (the rest of the body is not read).
fn too_large(id: Value, detail: &str) -> Response {
    closing(rpc_error(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        id,
        -32600,
        &format!("invalid request: {detail}"),
    ))
}

/// `response`, with its connection closed after it (a body left unread).
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// How much of a body that declares a size over the limit is read for its
/// id, and for how long at most: a client sends its message's start at
/// once, and its id is near it (or nowhere near, behind its params).
const ID_SEARCH_BYTES: usize = 64 * 1024;
const ID_SEARCH_TIME: Duration = Duration::from_secs(1);

/// The start of `body`, read until it shows a message's id, or for
/// [`ID_SEARCH_BYTES`] or [`ID_SEARCH_TIME`], whichever comes first.
async fn read_start(body: axum::body::Body) -> Vec<u8> {
    use futures::StreamExt;
    let mut frames = body.into_data_stream();
    let mut start = Vec::new();
    let _ = tokio::time::timeout(ID_SEARCH_TIME, async {
        while start.len() < ID_SEARCH_BYTES && cairn_mcp::message::id_of_start(&start).is_null() {
            match frames.next().await {
                Some(Ok(frame)) => start.extend_from_slice(&frame),
                _ => break,
            }
        }
    })
    .await;
    start
}

/// Why a body was not read whole.
enum BodyFault {
    /// It ran past the limit: what was read of it, up to the limit.
    TooLarge(Vec<u8>),
    /// It did not all arrive within `--body-timeout`.
    TimedOut(String),
    /// Its read failed (the client went away, or its framing was broken).
    Unreadable(String),
}

/// `body`, whole, when it holds at most `limit` bytes.
async fn read_within(body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, BodyFault> {
    use futures::StreamExt;
    let mut frames = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| match super::api::timed_out(&e) {
            Some(t) => BodyFault::TimedOut(t.to_string()),
            None => BodyFault::Unreadable(e.to_string()),
        })?;
        if bytes.len() + frame.len() > limit {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&frame[..room]);
            return Err(BodyFault::TooLarge(bytes));
        }
        bytes.extend_from_slice(&frame);
    }
    Ok(bytes.into())
}

fn rpc_error(status: axum::http::StatusCode, id: Value, code: i64, message: &str) -> Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

/// The server's handlers as one caller sees them.
struct AsCaller {
    state: Arc<AppState>,
    caller: Caller,
}

impl AsCaller {
    fn parts(&self) -> (State<Arc<AppState>>, Extension<Caller>) {
        (State(self.state.clone()), Extension(self.caller.clone()))
    }
}

fn failure(e: ApiError) -> Failure {
    // Said in the server's log as the HTTP API says it: an MCP answer is a
    // 200 whatever it carries, so nothing else would tell an operator.
    if e.status.is_server_error() {
        tracing::error!(code = e.code, message = %e.message, "MCP tool call failed");
    }
    let tombstone = e.tombstone.as_ref().and_then(|t| serde_json::to_value(t).ok());
    Failure::new(e.code, e.message).with_tombstone(tombstone)
}

fn json<T: Serialize>(answer: Result<Json<T>, ApiError>) -> Answer {
    let Json(value) = answer.map_err(failure)?;
    serde_json::to_value(value).map_err(|e| Failure::new("internal", format!("cannot serialize the answer: {e}")))
}

/// Handlers that may also stream answer a `Response`; theirs is always JSON here.
async fn body(answer: Result<Response, ApiError>) -> Answer {
    let response = answer.map_err(failure)?;
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| Failure::new("internal", format!("cannot read the answer: {e}")))?;
    serde_json::from_slice::<Value>(&bytes).map_err(|e| Failure::new("internal", format!("answer is not JSON: {e}")))
}

#[cairn_core::async_trait]
impl Cairn for AsCaller {
    async fn start(&self, request: StartRequest) -> Answer {
        let (state, caller) = self.parts();
        body(routes::start(state, caller, ApiJson(request)).await).await
    }

    async fn get(&self, id: &str) -> Answer {
        let (state, caller) = self.parts();
        json(routes::get(state, caller, ApiPath(id.to_string())).await)
    }

    async fn list(&self, filter: &ListArgs) -> Answer {
        let (state, caller) = self.parts();
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(filter.query_pairs())
            .finish();
        json(routes::list(state, caller, RawQuery(Some(query))).await)
    }

    async fn events(&self, id: &str, after: u64, limit: Option<usize>) -> Answer {
        let (state, caller) = self.parts();
        let query = EventsQuery {
            after: Some(after),
            limit,
        };
        body(
            routes::events(
                state,
                caller,
                ApiPath(id.to_string()),
                ApiQuery(query),
                HeaderMap::new(),
            )
            .await,
        )
        .await
    }

    async fn await_terminal(&self, id: &str, timeout: Duration) -> Answer {
        let (state, caller) = self.parts();
        let query = AwaitQuery {
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        };
        json(routes::await_terminal(state, caller, ApiPath(id.to_string()), ApiQuery(query)).await)
    }

    async fn signal(&self, id: &str, name: &str, signal_id: &str, payload: Value) -> Answer {
        let (state, caller) = self.parts();
        let signal = SignalBody {
            signal_id: signal_id.to_string(),
            payload,
        };
        json(
            routes::signal(
                state,
                caller,
                ApiPath((id.to_string(), name.to_string())),
                ApiJson(signal),
            )
            .await,
        )
    }

    async fn cancel(&self, id: &str, reason: Option<String>) -> Answer {
        let (state, caller) = self.parts();
        json(routes::cancel(state, caller, ApiPath(id.to_string()), ApiJson(CancelBody { reason })).await)
    }

    async fn complete(&self, id: &str, outcome: Outcome, authority: Option<String>) -> Answer {
        let (state, caller) = self.parts();
        let complete = CompleteBody { outcome, authority };
        json(routes::complete(state, caller, ApiPath(id.to_string()), ApiJson(complete)).await)
    }

    async fn module_put(&self, source: String, name: Option<String>) -> Answer {
        let (state, caller) = self.parts();
        body(super::modules::put(state, caller, ApiJson(super::modules::ModuleBody { source, name })).await).await
    }

    async fn schedule_list(&self, after: Option<&str>, limit: Option<usize>) -> Answer {
        let (state, caller) = self.parts();
        let query = schedules::ScheduleListQuery {
            after: after.map(str::to_string),
            limit,
        };
        json(schedules::list(state, caller, ApiQuery(query)).await)
    }

    async fn schedule_pause(&self, id: &str) -> Answer {
        let (state, caller) = self.parts();
        json(schedules::pause(state, caller, ApiPath(id.to_string()), ApiJson(schedules::EmptyBody {})).await)
    }

    async fn schedule_resume(&self, id: &str) -> Answer {
        let (state, caller) = self.parts();
        json(schedules::resume(state, caller, ApiPath(id.to_string()), ApiJson(schedules::EmptyBody {})).await)
    }

    async fn offers_schedules(&self) -> bool {
        matches!(self.caller, Caller::Host)
    }
}
