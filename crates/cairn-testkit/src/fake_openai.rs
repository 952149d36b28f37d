//! A fake OpenAI-compatible chat-completions server for tests: scripted
//! answers streamed with real SSE framing (content in pieces, tool-call
//! arguments split across chunks), injected 429 / 5xx / mid-stream
//! disconnects, and the requests it received, for assertions. No test needs
//! the internet or a key.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// One scripted answer, used by the next request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Stream `text` as content, in pieces of a few characters.
    Text(String),
    /// Like [`Reply::Text`], waiting `delay` between pieces.
    SlowText {
        /// The content.
        text: String,
        /// The pause between pieces.
        delay: Duration,
    },
    /// Ask for tool calls `(name, args)`; each call's arguments arrive split
    /// across two chunks.
    ToolCalls(Vec<(String, Value)>),
    /// Answer an HTTP error with an OpenAI-shaped error body.
    Status {
        /// The status code.
        status: u16,
        /// A `Retry-After` header, in seconds.
        retry_after: Option<u64>,
        /// The error message.
        message: String,
    },
    /// Stream `partial` as content (no `finish_reason`), then, once it went
    /// out, break the connection: an answer broken mid-way.
    Disconnect {
        /// What arrives before the break.
        partial: String,
    },
    /// Stream `text` as content, ending with `finish_reason` (`length` for
    /// an answer cut off at the token limit).
    TextEnding {
        /// The content.
        text: String,
        /// The `finish_reason` of the last chunk.
        finish_reason: String,
    },
    /// Stream these chunks as they are (each a `data:` line), then the usage
    /// chunk and `[DONE]`: an `{"error": ...}` chunk, tool-call deltas
    /// without `index`, and other shapes real endpoints send.
    Chunks(Vec<Value>),
    /// Ignore `stream: true`: answer `text` as one `chat.completion` JSON
    /// object (`Content-Type: application/json`).
    NotStreamed(String),
    /// Answer an HTTP error with `body` as it is (an HTML page, say).
    StatusBody {
        /// The status code.
        status: u16,
        /// The body.
        body: String,
    },
    /// Redirect: answer `status` (301, 302, 307, ...) with a `Location`
    /// header, as a proxy or a moved endpoint does.
    Redirect {
        /// The status code.
        status: u16,
        /// Where to.
        location: String,
    },
    /// Refuse: stream `refusal` in pieces as `delta.refusal` (content `null`),
    /// ending with `finish_reason` `stop`, as OpenAI streams a refusal.
    Refusal(String),
    /// Ignore `stream: true`: answer this JSON body as it is
    /// (`Content-Type: application/json`): a `message.refusal`, no choices.
    Completion(Value),
    /// A streamed reply whose body ends cleanly after its last chunk (and
    /// the usage chunk) without the `[DONE]` line, as some endpoints and
    /// proxies answer; a reply that is not streamed is answered as it is.
    WithoutDone(Box<Reply>),
    /// Stream these `data:` payloads exactly (`"[DONE]"` only where given),
    /// nothing else, then end the body cleanly.
    Raw(Vec<String>),
    /// Like [`Reply::Chunks`], waiting `delay` between chunks.
    SlowChunks {
        /// The chunks, each a `data:` line.
        chunks: Vec<Value>,
        /// The pause between two of them.
        delay: Duration,
    },
    /// Stream `text` as content with its `finish_reason` `stop`, then break
    /// the connection before the usage chunk and `[DONE]`: a proxy that
    /// resets a finished stream rather than closing it.
    BrokenAfterFinish(String),
    /// Stream `text` as content with its `finish_reason` `stop`, then
    /// nothing but SSE comments: a stream stalled before its usage chunk.
    StalledAfterFinish(String),
    /// Send these SSE frames exactly as written (each a whole frame with its
    /// blank line, `"event: ping\ndata:\n\n"`), nothing else, then end the
    /// body cleanly: what gateways and proxies put between chunks.
    Frames(Vec<String>),
    /// Stream nothing but an SSE comment (`: keep-alive`) every `every`, for
    /// as long as the client reads: an endpoint (or a proxy before it) whose
    /// upstream is stuck.
    KeepAlive {
        /// The pause between two comments.
        every: Duration,
    },
    /// Stream `before` as content, then nothing until `resume` is notified
    /// (`notify_one`, before or after the pause begins), then `after` and the
    /// end of a [`Reply::Text`]: an answer that stalls mid-way for as long as
    /// a test needs (for good, when it never resumes).
    Paused {
        /// What arrives before the pause.
        before: String,
        /// What arrives after it.
        after: String,
        /// Ends the pause.
        resume: Arc<tokio::sync::Notify>,
    },
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    received: Vec<Received>,
}

/// The running fake server; it stops when dropped.
pub struct FakeOpenAi {
    base_url: String,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    /// Serve on a free loopback port.
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            script,
            task,
        }
    }

    /// The base URL a model spec names (`.../v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Queue the answer to a later request.
    pub fn push(&self, reply: Reply) {
        self.script.lock().replies.push_back(reply);
    }

    /// The requests received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().received.clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn completions(State(script): State<Arc<Mutex<Script>>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = {
        let mut s = script.lock();
        s.received.push(Received {
            body,
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        });
        s.replies.pop_front()
    };
    let Some(reply) = reply else {
        return error(500, None, "the fake server has no scripted reply left");
    };
    let (chunks, delay, ending) = match streamed(reply) {
        Ok(stream) => stream,
        Err(whole) => return *whole,
    };
    let frames = frames_ending(&chunks, ending);
    let stream = futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| async move {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(frame))
    });
    let body = if ending == Ending::Break {
        // The break comes after what was sent went out (a pause flushes it),
        // as when a connection drops mid-answer.
        let fail = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<Bytes, std::io::Error>(std::io::Error::other("the fake server broke the stream"))
        });
        Body::from_stream(stream.chain(fail))
    } else if ending == Ending::Stall {
        let comments = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b": keep-alive\n\n")), ()))
        });
        Body::from_stream(stream.chain(comments))
    } else {
        Body::from_stream(stream)
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The SSE frames of `chunks`, each a `data:` line, and of what follows them.
fn frames_ending(chunks: &[String], ending: Ending) -> Vec<String> {
    let mut frames: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if matches!(ending, Ending::UsageAndDone | Ending::Usage) {
        frames.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
        ));
    }
    if ending == Ending::UsageAndDone {
        frames.push("data: [DONE]\n\n".into());
    }
    frames
}

/// What follows a streamed reply's chunks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The usage chunk, then `[DONE]`, then a clean end of the body.
    UsageAndDone,
    /// The usage chunk, then a clean end of the body.
    Usage,
    /// A broken connection.
    Break,
    /// A clean end of the body, at once.
    Nothing,
    /// SSE comments every 100 ms, for as long as the client reads.
    Stall,
}

/// A reply as the chunks of a stream, the pause between them and what
/// follows them; or, when it is not streamed, the whole response.
fn streamed(reply: Reply) -> Result<(Vec<String>, Duration, Ending), Box<Response>> {
    let whole = |response: Response| Err(Box::new(response));
    Ok(match reply {
        Reply::Status {
            status,
            retry_after,
            message,
        } => return whole(error(status, retry_after, &message)),
        Reply::StatusBody { status, body } => {
            return whole(
                Response::builder()
                    .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                    .header("content-type", "text/html")
                    .body(Body::from(body))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            )
        }
        Reply::Redirect { status, location } => {
            return whole(
                Response::builder()
                    .status(StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND))
                    .header("location", location)
                    .body(Body::empty())
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            )
        }
        Reply::NotStreamed(text) => {
            let body = json!({"id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
            return whole(json_response(&body));
        }
        Reply::Completion(body) => return whole(json_response(&body)),
        Reply::Frames(frames) => {
            let frames = futures::stream::iter(frames.into_iter().map(|f| Ok::<_, std::io::Error>(Bytes::from(f))));
            return whole(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(frames))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            );
        }
        Reply::KeepAlive { every } => {
            let comments = futures::stream::unfold((), move |()| async move {
                tokio::time::sleep(every).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b": keep-alive\n\n")), ()))
            });
            return whole(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(comments))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            );
        }
        Reply::Paused { before, after, resume } => {
            let mut head = text_chunks(&before);
            head.pop();
            let mut tail = text_chunks(&after);
            tail.remove(0);
            let frame = |f: String| Ok::<_, std::io::Error>(Bytes::from(f));
            let head = futures::stream::iter(frames_ending(&head, Ending::Nothing).into_iter().map(frame));
            let tail = futures::stream::once(async move {
                resume.notified().await;
                futures::stream::iter(frames_ending(&tail, Ending::UsageAndDone).into_iter().map(frame))
            })
            .flatten();
            return whole(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(head.chain(tail)))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            );
        }
        Reply::Text(text) => (text_chunks(&text), Duration::ZERO, Ending::UsageAndDone),
        Reply::TextEnding { text, finish_reason } => {
            let mut chunks = text_chunks(&text);
            chunks.pop();
            chunks.push(chunk(json!({}), Some(&finish_reason)));
            (chunks, Duration::ZERO, Ending::UsageAndDone)
        }
        Reply::Chunks(given) => (
            given.iter().map(Value::to_string).collect(),
            Duration::ZERO,
            Ending::UsageAndDone,
        ),
        Reply::SlowText { text, delay } => (text_chunks(&text), delay, Ending::UsageAndDone),
        Reply::Disconnect { partial } => {
            // Broken mid-answer: before the chunk with its `finish_reason`.
            let mut chunks = text_chunks(&partial);
            chunks.pop();
            (chunks, Duration::ZERO, Ending::Break)
        }
        Reply::BrokenAfterFinish(text) => (text_chunks(&text), Duration::ZERO, Ending::Break),
        Reply::StalledAfterFinish(text) => (text_chunks(&text), Duration::ZERO, Ending::Stall),
        Reply::ToolCalls(calls) => (tool_call_chunks(&calls), Duration::ZERO, Ending::UsageAndDone),
        Reply::Refusal(refusal) => (refusal_chunks(&refusal), Duration::ZERO, Ending::UsageAndDone),
        Reply::WithoutDone(reply) => {
            let (chunks, delay, ending) = streamed(*reply)?;
            let ending = match ending {
                Ending::UsageAndDone => Ending::Usage,
                other => other,
            };
            (chunks, delay, ending)
        }
        Reply::Raw(payloads) => (payloads, Duration::ZERO, Ending::Nothing),
        Reply::SlowChunks { chunks, delay } => (
            chunks.iter().map(Value::to_string).collect(),
            delay,
            Ending::UsageAndDone,
        ),
    })
}

fn json_response(body: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    .to_string()
}

fn text_chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for piece in chars.chunks(4) {
        out.push(chunk(json!({"content": piece.iter().collect::<String>()}), None));
    }
    out.push(chunk(json!({}), Some("stop")));
    out
}

fn refusal_chunks(refusal: &str) -> Vec<String> {
    let chars: Vec<char> = refusal.chars().collect();
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": null, "refusal": ""}),
        None,
    )];
    for piece in chars.chunks(4) {
        out.push(chunk(json!({"refusal": piece.iter().collect::<String>()}), None));
    }
    out.push(chunk(json!({}), Some("stop")));
    out
}

fn tool_call_chunks(calls: &[(String, Value)]) -> Vec<String> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": null}), None)];
    for (i, (name, args)) in calls.iter().enumerate() {
        let args = args.to_string();
        // Split near the middle, on a character boundary (arguments may
        // hold any text).
        let mut mid = args.len() / 2;
        while !args.is_char_boundary(mid) {
            mid += 1;
        }
        let (a, b) = args.split_at(mid);
        out.push(chunk(
            json!({"tool_calls": [{"index": i, "id": format!("call_{i}"), "type": "function",
                                   "function": {"name": name, "arguments": a}}]}),
            None,
        ));
        out.push(chunk(
            json!({"tool_calls": [{"index": i, "function": {"arguments": b}}]}),
            None,
        ));
    }
    out.push(chunk(json!({}), Some("tool_calls")));
    out
}

fn error(status: u16, retry_after: Option<u64>, message: &str) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    if let Some(after) = retry_after {
        response = response.header("retry-after", after.to_string());
    }
    let body = json!({"error": {"message": message, "type": "fake_error"}}).to_string();
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
