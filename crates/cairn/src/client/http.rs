//! A small JSON/SSE client for the cairn HTTP API (SSE parsed by `sse-stream`).

use std::time::Duration;

use cairn_core::validate::validate_id;
use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made to the server.
    #[error("cannot reach the server at {server}: {}", root_cause(.source))]
    Unreachable {
        /// The base URL tried.
        server: String,
        /// Why (the innermost cause, e.g. "Connection refused").
        source: reqwest::Error,
    },
    /// The connection broke or the answer could not be read.
    #[error("cannot talk to the server: {}", with_cause(.0))]
    Http(#[from] reqwest::Error),
    /// A write's connection broke after the request went out, before its
    /// answer came: the write may have been done.
    #[error("the connection to the server broke before it answered: {}", with_cause(.0))]
    LostAnswer(reqwest::Error),
    /// The server took the request and gave no answer in time (a server
    /// hung, or a network that drops what it carries).
    #[error("the server at {server} did not answer within {}", about(*.within))]
    NoAnswer {
        /// The base URL asked.
        server: String,
        /// How long the client waited for the answer.
        within: Duration,
        /// Whether the request was a write (it may have been done).
        write: bool,
    },
    /// The server answered with an error body.
    #[error("{code}: {} (HTTP {status})", without_code(code, message))]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// The message.
        message: String,
        /// A pruned process's tombstone, with `no_longer_retained`.
        tombstone: Option<Value>,
    },
    /// The client refused the input itself, with the code and the words the
    /// server answers it with: nothing was sent, so no HTTP status is said.
    #[error("{code}: {}", without_code(code, message))]
    Refused {
        /// The server's code for such input (`invalid_id`, ...).
        code: String,
        /// The server's message for it.
        message: String,
    },
    /// The server answered success with a body that is not JSON: not a
    /// cairn server, or something between us rewrote the answer.
    #[error("the server at {server} answered HTTP {status} with a body that is not JSON (`{start}`)")]
    NotJson {
        /// The base URL asked.
        server: String,
        /// HTTP status.
        status: u16,
        /// The body's first characters.
        start: String,
    },
    /// The server answered an error without a cairn error body: not a cairn
    /// server (a web server, a proxy's page), or a path after its address.
    #[error("the server at {server} answered HTTP {status} without a cairn error ({start})")]
    NotCairn {
        /// The base URL asked.
        server: String,
        /// HTTP status.
        status: u16,
        /// The body's first characters, or that there was none.
        start: String,
    },
    /// The command line or its input is wrong.
    #[error("{0}")]
    Usage(String),
    /// The server stopped answering partway (a stream that could not be resumed,
    /// a wait it ended early).
    #[error("{0}")]
    Interrupted(String),
    /// The command's own output could not be written: its reader went away
    /// (a broken pipe), or its file could not take it (a full disk).
    #[error("cannot write to {stream}: {source}")]
    Output {
        /// Which output.
        stream: super::output::Stream,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The CLI's exit code for this error: 2 for bad input (ours, or refused by the
    /// server as invalid: 400, 413, 415), 141 for an output closed by its
    /// reader, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Refused { .. } => 2,
            Self::Output { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe => {
                super::output::EXIT_OUTPUT_CLOSED
            }
            Self::Api {
                status: 400 | 413 | 415,
                ..
            } => 2,
            _ => 1,
        }
    }

    /// The error as `--json` prints it on stderr: `{"error": {"code",
    /// "message", "exit_code", ...}}`, with the server's code, HTTP status
    /// and tombstone when the server answered, the server's code without a
    /// status for input refused before sending, else the client's own code
    /// (`usage`, `unreachable`, `no_answer`, `lost_answer`, ...).
    pub fn to_json(&self) -> Value {
        let code = match self {
            Self::Api { code, .. } | Self::Refused { code, .. } => code.as_str(),
            Self::Unreachable { .. } => "unreachable",
            Self::Http(_) => "transport",
            Self::LostAnswer(_) => "lost_answer",
            Self::NoAnswer { .. } => "no_answer",
            Self::NotJson { .. } => "not_json",
            Self::NotCairn { .. } => "not_cairn",
            Self::Usage(_) => "usage",
            Self::Interrupted(_) => "interrupted",
            Self::Output { .. } => "output",
        };
        let message = match self {
            Self::Api { message, .. } | Self::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let mut error = serde_json::json!({"code": code, "message": message, "exit_code": self.exit_code()});
        match self {
            Self::Api { status, tombstone, .. } => {
                error["status"] = (*status).into();
                if let Some(t) = tombstone {
                    error["tombstone"] = t.clone();
                }
            }
            Self::NotJson { status, .. } | Self::NotCairn { status, .. } => error["status"] = (*status).into(),
            _ => {}
        }
        if let Some(hint) = self.hint() {
            error["hint"] = hint.into();
        }
        serde_json::json!({ "error": error })
    }

    /// Whether the server took the request and gave no answer in time (a
    /// hung server, or a network that drops what it carries), rather than
    /// one that is gone (refusing or closing connections) or said why.
    pub fn is_no_answer(&self) -> bool {
        matches!(self, Self::NoAnswer { .. })
    }

    /// What a failed request shows of the server, in words and without the
    /// HTTP client's own text ("it refuses connections", "it closed the
    /// connection before answering"): how an await says its server went away.
    pub fn server_state(&self) -> String {
        match self {
            Self::Unreachable { source, .. } if source.is_timeout() => {
                "no connection to it could be made in time".into()
            }
            Self::Unreachable { source, .. } => match io_kind(source) {
                Some(std::io::ErrorKind::ConnectionRefused) => "it refuses connections".into(),
                _ => format!("it cannot be reached: {}", root_cause(source)),
            },
            Self::Http(e) | Self::LostAnswer(e) => match io_kind(e) {
                Some(std::io::ErrorKind::ConnectionReset) => "it reset the connection before answering".into(),
                _ => "it closed the connection before answering".into(),
            },
            Self::NoAnswer { within, .. } => {
                format!("it took the request and did not answer within {}", about(*within))
            }
            Self::Api { .. } => format!("it answered {self}"),
            other => other.to_string(),
        }
    }

    /// What to try next, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unreachable { server, .. } => Some(format!(
                "is `cairn serve` running at {server}? Start it with `cairn serve` (`cairn serve \
                 --allow-shell` to take `cairn run`'s commands), or point the client elsewhere with --server \
                 or CAIRN_SERVER"
            )),
            // The server's own message says it since it names `--allow-shell`.
            Self::Api { code, message, .. }
                if code == "unknown_tool" && message.contains("shell") && !message.contains("--allow-shell") =>
            {
                Some("the server runs the `shell` tool only when started with `--allow-shell`".into())
            }
            Self::Api { status: 401, .. } => Some("pass the server's token with --token or CAIRN_TOKEN".into()),
            // A write whose answer never came may have been done: the state
            // tells, and a repeat with the same ids is taken once anyway.
            // So too when the server says it cannot tell.
            Self::NoAnswer { write: true, .. } | Self::LostAnswer(_) => Some(super::hints::lost_answer()),
            Self::Api { code, .. } if code == "outcome_unknown" => Some(super::hints::lost_answer()),
            Self::NotJson { .. } | Self::NotCairn { .. } => {
                Some("is --server (or CAIRN_SERVER) the address of `cairn serve`, with no path after it?".into())
            }
            // The client asks only for routes the server has: a route it
            // does not is a base address with a path (`.../v1`, `.../ui`).
            Self::Api { code, .. } if code == "not_found" => {
                Some("is --server (or CAIRN_SERVER) the address of `cairn serve`, with no path after it?".into())
            }
            _ => None,
        }
    }
}

/// A transport error and its innermost cause ("error sending request for
/// url (...): connection closed before message completed"), the cause said
/// once when it is the error itself.
fn with_cause(e: &reqwest::Error) -> String {
    let (outer, root) = (e.to_string(), root_cause(e));
    if outer.contains(&root) {
        outer
    } else {
        format!("{outer}: {root}")
    }
}

/// A server message without the code it may begin with (`unavailable:
/// postgres: ...`), which the error shows before it anyway.
fn without_code<'a>(code: &str, message: &'a str) -> &'a str {
    let spoken = code.replace('_', " ");
    // `storage error: ...` says its code so.
    let named = format!("{spoken} error");
    [code, spoken.as_str(), named.as_str()]
        .iter()
        .find_map(|c| message.strip_prefix(*c).and_then(|m| m.strip_prefix(": ")))
        .unwrap_or(message)
}

/// A wait as a person reads it: to the second (to the millisecond below one).
fn about(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs_f64().round() as u64)
    } else {
        Duration::from_millis(d.as_millis() as u64)
    })
}

/// How long a request waits for its whole answer, unless it says otherwise
/// (an await waits as long as it asked the server to, and a little more).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// How long an open event stream may stay silent before its server is taken
/// to have stopped: three of the keep-alives it sends every 15 s.
pub const STREAM_QUIET_LIMIT: Duration = Duration::from_secs(45);

/// How much longer than the wait it asked for an await waits for its answer.
pub const AWAIT_GRACE: Duration = Duration::from_secs(2);

/// The innermost cause of an error, for a one-line message ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The kind of the I/O error under a transport error, if one is there
/// (a refused or reset connection).
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = c.source();
    }
    None
}

/// A connection to one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// How long an event stream's server may take to open it, and an open
    /// one stay silent ([`ANSWER_WITHIN`], [`STREAM_QUIET_LIMIT`]; shorter
    /// in this module's tests).
    stream_limits: (Duration, Duration),
}

/// Everything but RFC 3986's unreserved characters is escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Refuse a path with a `.` or `..` segment (an id or name of just dots):
/// URL parsing resolves those away, so the request would reach another
/// route, and no id or name can be one (the server refuses them as ids).
/// An empty segment (an empty id or name) is refused too: the request would
/// reach another route or none, where the server refuses an empty id.
/// Refused as the server refuses the segment where it stands (a process id,
/// a schedule id, a signal name, ...), in its words, and said as refused
/// here: nothing is sent.
fn no_dot_segments(path: &str) -> Result<(), ClientError> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, s) in segments.iter().enumerate() {
        if !matches!(*s, "" | "." | "..") {
            continue;
        }
        let what = match (i.checked_sub(1).map(|j| segments[j]), segments.get(1).copied()) {
            (Some("processes"), _) => "process id",
            // A signal name is checked as the server checks it.
            (Some("signals"), Some("processes")) => match cairn_core::events::validate_signal_name(s) {
                Err(e) => return Err(refused(e)),
                Ok(()) => "signal name",
            },
            (Some("schedules"), _) => "schedule id",
            (Some("sessions"), _) => "session id",
            (Some("wakes"), _) => "wake id",
            (Some("modules"), _) => "module ref",
            _ => "an id or a name",
        };
        validate_id(what, s).map_err(refused)?;
    }
    Ok(())
}

/// A refusal made here, as the server words it ([`ClientError::Refused`]).
fn refused(e: cairn_core::CairnError) -> ClientError {
    ClientError::Refused {
        code: e.code().into(),
        message: e.to_string(),
    }
}

/// Percent-encode one path segment (ids may hold `/`, `?`, spaces, ...).
pub fn segment(raw: &str) -> String {
    percent_encoding::utf8_percent_encode(raw, SEGMENT).to_string()
}

/// A query string from pairs (without the leading `?`).
pub fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, &v);
    }
    s.finish()
}

/// Whether `url` names this machine: `localhost` or a loopback address.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `raw` with what lies between `://` and the host's `@` cut out when it
/// is not a URL this client takes: a password in it is not repeated.
fn without_password(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &raw[..scheme], &raw[at + 1..]),
        _ => raw.to_string(),
    }
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`) presenting `token` when given.
    pub fn new(base: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()));
        let Some(url) = url else {
            return Err(ClientError::Usage(format!(
                "--server (or CAIRN_SERVER) `{}` is not an http:// or https:// URL (e.g. http://127.0.0.1:7070)",
                without_password(base)
            )));
        };
        // A user or password in the URL would be sent as a second
        // `Authorization` header (Basic, beside the token's Bearer), which
        // the server refuses, and be shown in every error that names the
        // URL: cairn authenticates by token only.
        if !url.username().is_empty() || url.password().is_some() {
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            return Err(ClientError::Usage(format!(
                "--server (or CAIRN_SERVER) names a user or password, which cairn does not take: give the URL \
                 without it (`{}`) and the token with --token or CAIRN_TOKEN",
                shown.as_str().trim_end_matches('/')
            )));
        }
        // As the server says of its own tokens: one no header can carry is
        // the caller's mistake (a secret file's newline), not a transport fault.
        if let Some(t) = token {
            if t.trim() != t {
                return Err(ClientError::Usage(
                    "the token (--token or CAIRN_TOKEN) begins or ends with whitespace (a newline from a file?), \
                     which no request can carry"
                        .into(),
                ));
            }
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Usage(
                    "the token (--token or CAIRN_TOKEN) holds a character other than visible ASCII, which a \
                     request's header cannot carry as text"
                        .into(),
                ));
            }
        }
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        // A server on this machine is reached directly: a proxy the
        // environment names (`http_proxy`, `ALL_PROXY`) would be sent the
        // requests and their bearer token, in clear, and could not reach a
        // loopback address of this machine anyway.
        if is_loopback(&url) {
            http = http.no_proxy();
        }
        let http = http.build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            stream_limits: (ANSWER_WITHIN, STREAM_QUIET_LIMIT),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            None => rb,
        }
    }

    /// A failed send: `Unreachable` when no connection could be made.
    fn send_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                server: self.base.clone(),
                source: e,
            }
        } else {
            ClientError::Http(e)
        }
    }

    /// A request sent, and its answer read, within `within`: `NoAnswer`
    /// past it, saying whether the request was a `write`.
    async fn send(
        &self,
        rb: RequestBuilder,
        within: Duration,
        write: bool,
    ) -> Result<(StatusCode, Value), ClientError> {
        let no_answer = |e: reqwest::Error| {
            // A connection never made (refused, or its own 10 s timeout) is
            // unreachable, whatever else the error also says: nothing was sent.
            if e.is_connect() {
                self.send_error(e)
            } else if e.is_timeout() {
                ClientError::NoAnswer {
                    server: self.base.clone(),
                    within,
                    write,
                }
            } else if write && !e.is_connect() && !e.is_builder() {
                ClientError::LostAnswer(e)
            } else {
                self.send_error(e)
            }
        };
        let resp = rb.timeout(within).send().await.map_err(no_answer)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(no_answer)?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                // Success means the answer is the JSON the command prints:
                // anything else is not taken as an empty answer.
                Err(_) if status.is_success() => {
                    return Err(ClientError::NotJson {
                        server: self.base.clone(),
                        status: status.as_u16(),
                        start: first_words(&String::from_utf8_lossy(&bytes)),
                    });
                }
                Err(_) => Value::String(String::from_utf8_lossy(&bytes).into()),
            }
        };
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(self.error_answer(status.as_u16(), &body))
        }
    }

    /// A failure's answer: cairn's error, or (a body without one) that the
    /// server is not cairn.
    fn error_answer(&self, status: u16, body: &Value) -> ClientError {
        if body.pointer("/error/code").and_then(Value::as_str).is_some() {
            return api_error(status, body);
        }
        let text = match body {
            Value::Null => String::new(),
            Value::String(s) => first_words(s),
            other => first_words(&other.to_string()),
        };
        ClientError::NotCairn {
            server: self.base.clone(),
            status,
            start: if text.is_empty() {
                "no body".into()
            } else {
                format!("`{text}`")
            },
        }
    }

    /// `GET path`, answering the JSON body.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.get_within(path, ANSWER_WITHIN).await
    }

    /// `GET path`, answered within `within` (an await's own wait and more).
    pub async fn get_within(&self, path: &str, within: Duration) -> Result<Value, ClientError> {
        no_dot_segments(path)?;
        Ok(self
            .send(self.request(reqwest::Method::GET, path), within, false)
            .await?
            .1)
    }

    /// Every item of a listing paged by `after` and `next_after` (schedules,
    /// modules): `GET path?limit=1000[&after=...]` until a page names no next,
    /// the items of each page under `key`.
    pub async fn every_page(&self, path: &str, key: &str) -> Result<Vec<Value>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut pairs = vec![("limit", "1000".to_string())];
            if let Some(a) = after.take() {
                pairs.push(("after", a));
            }
            let page = self.get(&format!("{path}?{}", query(pairs))).await?;
            all.extend(page.get(key).and_then(Value::as_array).into_iter().flatten().cloned());
            match page.get("next_after").and_then(Value::as_str) {
                Some(next) => after = Some(next.to_string()),
                None => return Ok(all),
            }
        }
    }

    /// `POST path` with a JSON body, answering the status and the JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), ClientError> {
        self.post_within(path, body, ANSWER_WITHIN).await
    }

    /// `POST path` with a JSON body, answered within `within` (a prune of
    /// millions of rows takes longer than any other request).
    pub async fn post_within(
        &self,
        path: &str,
        body: &Value,
        within: Duration,
    ) -> Result<(StatusCode, Value), ClientError> {
        no_dot_segments(path)?;
        self.send(self.request(reqwest::Method::POST, path).json(body), within, true)
            .await
    }

    /// `POST path` with `text`, JSON the caller checked, sent as written: the
    /// server's complaints then point at lines and columns of the caller's text.
    pub async fn post_text(&self, path: &str, text: String) -> Result<(StatusCode, Value), ClientError> {
        no_dot_segments(path)?;
        self.send(
            self.request(reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(text),
            ANSWER_WITHIN,
            true,
        )
        .await
    }

    /// `DELETE path`, answering the status.
    pub async fn delete(&self, path: &str) -> Result<StatusCode, ClientError> {
        no_dot_segments(path)?;
        Ok(self
            .send(self.request(reqwest::Method::DELETE, path), ANSWER_WITHIN, true)
            .await?
            .0)
    }

    /// Follow a process's events over SSE from `after`, calling `on_event` with each
    /// event JSON, until the terminal event or an error `on_event` returns (its
    /// output closed, say). Reconnects with `Last-Event-ID` when
    /// the stream drops early (a server restart, a proxy timeout). `reached` says
    /// the caller has already reached this server (`run` just started the
    /// process): a server gone before the stream opened is then a restart to
    /// ride out, not a wrong address to report at once.
    pub async fn follow(
        &self,
        id: &str,
        after: u64,
        reached: bool,
        mut on_event: impl FnMut(&Value) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/processes/{}/events", segment(id));
        no_dot_segments(&path)?;
        let mut last = after;
        let mut retries = reconnect_delays();
        // When the stream was last lost with no event read since: how long
        // the resumption tried is told from it (each try may wait on a
        // server that does not answer, past the delays between them).
        let mut lost_since: Option<std::time::Instant> = None;
        // A server never reached is said at once (with its hint); resuming
        // is for a stream that was open.
        let mut opened = reached;
        let (opening, quiet) = self.stream_limits;
        let hung = |within| ClientError::NoAnswer {
            server: self.base.clone(),
            within,
            write: false,
        };
        loop {
            // Each outage has the whole budget of retries: one that reopened
            // the stream and read on from it spent none of the next one's.
            let read_from = last;
            let attempt = async {
                let send = self
                    .request(reqwest::Method::GET, &path)
                    .header(ACCEPT, "text/event-stream")
                    .header("Last-Event-ID", last.to_string())
                    .send();
                // A server that took the request and sends nothing (hung,
                // stopped) is not waited on forever.
                let resp = tokio::time::timeout(opening, send)
                    .await
                    .map_err(|_| hung(opening))?
                    .map_err(|e| self.send_error(e))?;
                let status = resp.status();
                if !status.is_success() {
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let body = serde_json::from_slice::<Value>(&bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
                    return Err(self.error_answer(status.as_u16(), &body));
                }
                opened = true;
                // The server sends a keep-alive every 15 s on an open stream:
                // one silent for three of them has a server that stopped.
                // Keep-alives are comments, which the parser reads and never
                // yields, so what was heard is told from the bytes under it.
                let heard = std::sync::Arc::new(parking_lot::Mutex::new(tokio::time::Instant::now()));
                let bytes = {
                    let heard = heard.clone();
                    resp.bytes_stream()
                        .inspect(move |_| *heard.lock() = tokio::time::Instant::now())
                };
                let mut stream = sse_stream::SseStream::from_bytes_stream(bytes);
                loop {
                    let until = *heard.lock() + quiet;
                    let Ok(next) = tokio::time::timeout_at(until, stream.next()).await else {
                        if heard.lock().elapsed() < quiet {
                            continue;
                        }
                        return Err(hung(quiet));
                    };
                    let Some(item) = next else { break };
                    let ev = item.map_err(|e| ClientError::Interrupted(format!("event stream of {id}: {e}")))?;
                    // Events with no data (none the server sends) are passed over.
                    let Some(data) = ev.data else { continue };
                    if ev.event.as_deref() == Some("error") {
                        let body: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        let status = body.pointer("/error/status").and_then(Value::as_u64).unwrap_or(500);
                        return Err(api_error(u16::try_from(status).unwrap_or(500), &body));
                    }
                    let Ok(event) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    if let Some(seq) = event.get("sequence").and_then(Value::as_u64) {
                        last = seq;
                    }
                    // What the caller could not do with it (its output
                    // closed) ends the stream.
                    on_event(&event)?;
                    if event.pointer("/semantics/terminal").is_some() {
                        return Ok(true);
                    }
                }
                Ok(false)
            };
            let answer = attempt.await;
            let lost = match &answer {
                Err(e) => Some(e.to_string()),
                _ => None,
            };
            match answer {
                Ok(true) => return Ok(()),
                Err(e @ ClientError::Unreachable { .. }) if !opened => return Err(e),
                // A server that holds the connection and says nothing is no
                // restart to ride out: asking it again would hang as long.
                Err(ClientError::NoAnswer { within, .. }) => {
                    return Err(ClientError::Interrupted(format!(
                        "the server stopped answering: it sent nothing on the event stream of {id} for {}, though \
                         it sends a keep-alive every 15 s; {id}'s state is unknown: `{}`{} picks it up again \
                         once the server answers",
                        about(within),
                        super::hints::cmd(format_args!("events {id} --follow")),
                        super::hints::token_note()
                    )));
                }
                // `unavailable` (503: the store faulted, or the server was
                // full) changed nothing and says to ask again: so does a follower.
                Ok(false)
                | Err(
                    ClientError::Http(_)
                    | ClientError::Unreachable { .. }
                    | ClientError::Interrupted(_)
                    | ClientError::Api { status: 503, .. },
                ) => {
                    // The stream ended without the terminal: done if the log ends here, else resume.
                    if let Ok(record) = self.get(&format!("/v1/processes/{}", segment(id))).await {
                        let terminal = record.get("status").and_then(Value::as_str) != Some("running");
                        let last_seq = record.get("last_sequence").and_then(Value::as_u64).unwrap_or(0);
                        if terminal && last_seq <= last {
                            return Ok(());
                        }
                    }
                    if last > read_from {
                        retries = reconnect_delays();
                        lost_since = None;
                    }
                    let since = *lost_since.get_or_insert_with(std::time::Instant::now);
                    match retries.next() {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => {
                            let why = lost.map_or_else(
                                || "the server kept ending it early".to_string(),
                                |e| format!("the last try: {e}"),
                            );
                            let tried = about(since.elapsed());
                            return Err(ClientError::Interrupted(format!(
                                "lost the event stream of {id} and could not resume it for {tried} ({why}); `{}`{} picks \
                                 it up again",
                                super::hints::cmd(format_args!("events {id} --follow")),
                                super::hints::token_note()
                            )));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits between attempts to resume a broken event stream: long enough to ride
/// out a server restart (about 40 s in all), short at first for a dropped proxy.
/// A stream that reopens and delivers starts the next outage's waits afresh.
pub(crate) fn reconnect_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(12)
        .build()
}

/// The first 60 characters of `text`, its runs of white space made one space.
fn first_words(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(60)
        .collect()
}

fn api_error(status: u16, body: &Value) -> ClientError {
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("http_error")
        .to_string();
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    let tombstone = body.pointer("/error/tombstone").cloned();
    ClientError::Api {
        status,
        code,
        message,
        tombstone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error's message is shown without the code it begins with, in any
    /// of the ways the server says it, so the code is said once.
    #[test]
    fn the_code_is_said_once() {
        let api = |code: &str, message: &str| ClientError::Api {
            status: 503,
            code: code.into(),
            message: message.into(),
            tombstone: None,
        };
        for (code, message) in [
            ("storage", "storage error: sqlite: disk I/O error"),
            ("unavailable", "unavailable: sqlite: the disk is full"),
            ("invalid_request", "invalid request: `x` is empty"),
            ("storage", "sqlite: disk I/O error"),
        ] {
            let shown = api(code, message).to_string();
            assert_eq!(shown.matches(code).count(), 1, "{shown}");
            assert!(shown.starts_with(&format!("{code}: ")), "{shown}");
        }
    }

    /// A success whose body is not JSON (a web page where the server should
    /// be) is an error naming the server and the body, not an empty answer.
    #[tokio::test]
    async fn a_success_that_is_not_json_is_an_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let page = "<html>\n  <body>It works!</body></html>";
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            conn.write_all(answer.as_bytes()).await.expect("answer");
        });
        let server = format!("http://{addr}");
        let client = Client::new(&server, None).expect("client");
        let err = client.get("/v1/processes").await.expect_err("not JSON");
        assert_eq!(
            err.to_string(),
            format!("the server at {server} answered HTTP 200 with a body that is not JSON (`<html> <body>It works!</body></html>`)")
        );
        assert_eq!(err.exit_code(), 1);
        assert!(err.hint().is_some_and(|h| h.contains("--server")));
    }

    /// An error whose body is not cairn's (a web server's page, an empty
    /// body) says the server is not cairn, not the page's text as a code.
    #[tokio::test]
    async fn an_error_without_a_cairn_body_says_the_server_is_not_cairn() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (page, shown) in [
            (
                "<!DOCTYPE HTML>\n<html>\n  <body>Nothing here</body></html>",
                "(`<!DOCTYPE HTML> <html> <body>Nothing here</body></html>`)",
            ),
            ("", "(no body)"),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                conn.write_all(answer.as_bytes()).await.expect("answer");
            });
            let server = format!("http://{addr}");
            let client = Client::new(&server, None).expect("client");
            let err = client.get("/v1/processes").await.expect_err("not cairn");
            assert_eq!(
                err.to_string(),
                format!("the server at {server} answered HTTP 404 without a cairn error {shown}")
            );
            assert_eq!(err.exit_code(), 1);
            assert!(err.hint().is_some_and(|h| h.contains("--server")));
        }
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(segment("build-42_x.y~"), "build-42_x.y~");
    }

    /// An id of just dots would be resolved away by URL parsing and reach
    /// another route (`/v1/processes/./await` is `/v1/processes/await`):
    /// refused before anything is sent, as the server refuses such ids.
    #[test]
    fn a_server_message_does_not_repeat_its_code() {
        let e = |code: &str, message: &str| ClientError::Api {
            status: 503,
            code: code.into(),
            message: message.into(),
            tombstone: None,
        };
        assert_eq!(
            e("unavailable", "unavailable: postgres: no answer").to_string(),
            "unavailable: postgres: no answer (HTTP 503)"
        );
        assert_eq!(
            e("outcome_unknown", "outcome unknown: lost").to_string(),
            "outcome_unknown: lost (HTTP 503)"
        );
        assert_eq!(
            e("unknown_process", "process `p` not found").to_string(),
            "unknown_process: process `p` not found (HTTP 503)"
        );
    }

    #[test]
    fn a_token_no_header_can_carry_is_bad_input() {
        for (token, says) in [
            ("s3cr3t\r", "begins or ends with whitespace"),
            ("s3cr3t\n", "begins or ends with whitespace"),
            ("s3cr3tö", "other than visible ASCII"),
        ] {
            let e = Client::new("http://127.0.0.1:1", Some(token)).err().expect("refused");
            assert_eq!(e.exit_code(), 2, "{token:?}");
            assert!(e.to_string().contains(says), "{token:?}: {e}");
            assert!(!e.to_string().contains("s3cr3t"), "the token is not shown: {e}");
        }
        assert!(Client::new("http://127.0.0.1:1", Some("tok")).is_ok());
    }

    #[tokio::test]
    async fn dot_segments_are_refused_before_sending() {
        // Nothing listens on port 1: a request that went out would be unreachable.
        let client = Client::new("http://127.0.0.1:1", None).expect("client");
        for path in [
            format!("/v1/processes/{}/await", segment(".")),
            format!("/v1/processes/{}", segment("..")),
            format!("/v1/processes/p/signals/{}", segment(".")),
            format!("/v1/processes/{}", segment("")),
            format!("/v1/processes/{}/events", segment("")),
        ] {
            match client.get(&path).await {
                Err(ClientError::Refused { code, .. }) => assert!(
                    ["invalid_id", "invalid_signal_name"].contains(&code.as_str()),
                    "{path}: {code}"
                ),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(no_dot_segments(&format!("/v1/processes/{}", segment("..."))).is_ok());
        assert!(no_dot_segments(&format!("/v1/processes/{}/events?after=.", segment("a.b"))).is_ok());
        assert!(matches!(
            client.post("/v1/processes/./cancel", &Value::Null).await,
            Err(ClientError::Refused { .. })
        ));
    }

    /// A `--server` URL naming a user or password is refused before any
    /// request (it would be a second `Authorization` header), and no error
    /// repeats the password.
    #[test]
    fn a_server_url_with_a_password_is_refused_without_repeating_it() {
        for base in [
            "http://u:secretpw@127.0.0.1:7070",
            "http://u@127.0.0.1:7070/",
            "ftp://u:secretpw@h",
        ] {
            let Err(ClientError::Usage(why)) = Client::new(base, Some("tok")) else {
                panic!("{base} was taken");
            };
            assert!(!why.contains("secretpw"), "{why}");
        }
        let Err(ClientError::Usage(why)) = Client::new("http://u:secretpw@127.0.0.1:7070", None) else {
            panic!("taken");
        };
        assert!(
            why.contains("`http://127.0.0.1:7070`") && why.contains("--token"),
            "{why}"
        );
    }

    /// A refusal made before sending is worded as the server words it for
    /// the segment where it stands, exits 2 as the server's 400 does, and
    /// claims no HTTP status: no request was made.
    #[test]
    fn a_refusal_before_sending_says_what_the_server_says_and_no_http_status() {
        for (path, code, said) in [
            (
                "/v1/processes/..",
                "invalid_id",
                "invalid_id: process id `..` is a relative path segment, which no URL can name; choose another",
            ),
            (
                "/v1/processes//events",
                "invalid_id",
                "invalid_id: process id must not be empty",
            ),
            (
                "/v1/schedules/./pause",
                "invalid_id",
                "invalid_id: schedule id `.` is a relative path segment, which no URL can name; choose another",
            ),
            (
                "/v1/sessions/s/wakes/../ack",
                "invalid_id",
                "invalid_id: wake id `..` is a relative path segment, which no URL can name; choose another",
            ),
            (
                "/v1/modules/..",
                "invalid_id",
                "invalid_id: module ref `..` is a relative path segment, which no URL can name; choose another",
            ),
            (
                "/v1/processes/p/signals/..",
                "invalid_signal_name",
                "invalid_signal_name: `..`: signal names are 1-128 ASCII letters, digits, `_` or `-`",
            ),
        ] {
            let e = no_dot_segments(path).expect_err(path);
            assert_eq!(e.to_string(), said, "{path}");
            assert_eq!(e.exit_code(), 2, "{path}");
            let doc = e.to_json();
            assert_eq!(doc["error"]["code"], code, "{path}: {doc}");
            assert!(doc["error"].get("status").is_none(), "{path}: {doc}");
        }
    }

    /// A free port on loopback, nothing listening on it.
    fn free_port() -> u16 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    }

    /// Outages one after another, more than one outage's retries in all, each
    /// ended by a stream that delivers: the follower rides out every one.
    #[tokio::test]
    async fn each_outage_has_the_whole_budget_of_retries() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let drops = 16u64;
        let server = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.expect("read");
                let request = String::from_utf8_lossy(&request[..n]).to_string();
                let (content_type, body) = if request.starts_with("GET /v1/processes/p/events") {
                    sent += 1;
                    let terminal = if sent > drops {
                        r#","semantics":{"terminal":{"state":"completed"}}"#
                    } else {
                        ""
                    };
                    let event = format!(r#"{{"sequence":{sent},"event_type":"note{sent}"{terminal}}}"#);
                    ("text/event-stream", format!("event: event\ndata: {event}\n\n"))
                } else {
                    (
                        "application/json",
                        format!(r#"{{"status":"running","last_sequence":{}}}"#, sent + 1),
                    )
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.expect("write");
                if sent > drops {
                    return;
                }
            }
        });
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).expect("client");
        let mut seen = 0;
        let done = client
            .follow("p", 0, true, |_| {
                seen += 1;
                Ok(())
            })
            .await;
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(seen, drops + 1);
        server.await.expect("server");
    }

    /// A server that holds the stream open and sends nothing (stopped, hung)
    /// is not followed forever, nor asked again: the follower says its
    /// state is unknown once the stream is silent past three keep-alives,
    /// or once a server that took the request sends no answer at all.
    #[tokio::test]
    async fn a_silent_server_ends_the_follow_saying_so() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for answers in [true, false] {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let asked = std::sync::Arc::new(AtomicUsize::new(0));
            let counted = asked.clone();
            let server = tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let (mut socket, _) = listener.accept().await.expect("accept");
                    let mut request = vec![0u8; 4096];
                    let n = socket.read(&mut request).await.expect("read");
                    if String::from_utf8_lossy(&request[..n]).starts_with("GET /v1/processes/p/events") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    if answers {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
                        let event = "event: event\ndata: {\"sequence\":1,\"event_type\":\"note\"}\n\n";
                        socket
                            .write_all(format!("{head}{event}").as_bytes())
                            .await
                            .expect("write");
                    }
                    // Held open, and silent from here on.
                    held.push(socket);
                }
            });
            let mut client = Client::new(&format!("http://127.0.0.1:{port}"), None).expect("client");
            client.stream_limits = (Duration::from_millis(400), Duration::from_millis(300));
            let mut seen = 0;
            let started = tokio::time::Instant::now();
            let follow = client.follow("p", 0, true, |_| {
                seen += 1;
                Ok(())
            });
            let done = tokio::time::timeout(Duration::from_secs(20), follow)
                .await
                .expect("the follow of a silent server never ended");
            let said = done.expect_err("a silent server ends the follow").to_string();
            assert!(said.contains("the server stopped answering"), "{said}");
            assert!(said.contains("p's state is unknown"), "{said}");
            let limit = if answers {
                client.stream_limits.1
            } else {
                client.stream_limits.0
            };
            assert_eq!(seen, usize::from(answers));
            assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
            assert_eq!(
                asked.load(Ordering::SeqCst),
                1,
                "asked again a server that did not answer"
            );
            server.abort();
        }
    }

    /// Keep-alives are what a quiet stream's server sends: a stream that
    /// carries only them for many times the silence limit is followed on
    /// to its next event, not taken for a server that stopped.
    #[tokio::test]
    async fn keep_alives_keep_a_quiet_stream_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (quiet_tx, quiet_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 4096];
            let n = socket.read(&mut request).await.expect("read");
            assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /v1/processes/p/events"));
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
            let first = "event: event\ndata: {\"sequence\":1,\"event_type\":\"note\"}\n\n";
            socket
                .write_all(format!("{head}{first}").as_bytes())
                .await
                .expect("write");
            // Four times the silence limit, with a keep-alive every tenth of it.
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                socket.write_all(b":\n\n").await.expect("keep-alive");
            }
            let _ = quiet_tx.send(());
            let end = "event: event\ndata: {\"sequence\":2,\"event_type\":\"end\",\"semantics\":{\"terminal\":{\"state\":\"completed\"}}}\n\n";
            socket.write_all(end.as_bytes()).await.expect("write");
            socket
        });
        let mut client = Client::new(&format!("http://127.0.0.1:{port}"), None).expect("client");
        client.stream_limits = (Duration::from_secs(10), Duration::from_secs(1));
        let mut seen = Vec::new();
        let follow = client.follow("p", 0, true, |e| {
            seen.push(e["sequence"].as_u64());
            Ok(())
        });
        let done = tokio::time::timeout(Duration::from_secs(30), follow)
            .await
            .expect("the follow ended");
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(seen, [Some(1), Some(2)]);
        quiet_rx.await.expect("the quiet stretch was sent whole before the end");
        server.await.expect("server");
    }

    /// A stream the server ends with `unavailable` (a passing store fault),
    /// or a reconnect it answers 503, is resumed where it broke off, not
    /// given up.
    #[tokio::test]
    async fn an_unavailable_stream_is_resumed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let mut streams = Vec::new();
            loop {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.expect("read");
                let request = String::from_utf8_lossy(&request[..n]).to_string();
                let (status, content_type, body) = if request.starts_with("GET /v1/processes/p/events") {
                    let last = request
                        .lines()
                        .find_map(|l| l.strip_prefix("last-event-id: "))
                        .map(str::to_string);
                    streams.push(last);
                    let unavailable =
                        r#"{"error":{"code":"unavailable","status":503,"message":"the store did not answer"}}"#;
                    match streams.len() {
                        1 => (
                            "200 OK",
                            "text/event-stream",
                            format!(
                                "event: event\ndata: {{\"sequence\":1,\"event_type\":\"note\"}}\n\nevent: error\ndata: {unavailable}\n\n"
                            ),
                        ),
                        2 => ("503 Service Unavailable", "application/json", unavailable.to_string()),
                        _ => (
                            "200 OK",
                            "text/event-stream",
                            r#"event: event
data: {"sequence":2,"event_type":"end","semantics":{"terminal":{"state":"completed"}}}

"#
                            .to_string(),
                        ),
                    }
                } else {
                    (
                        "200 OK",
                        "application/json",
                        r#"{"status":"running","last_sequence":2}"#.to_string(),
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.expect("write");
                if streams.len() == 3 {
                    return streams;
                }
            }
        });
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).expect("client");
        let mut seen = Vec::new();
        let done = client
            .follow("p", 0, true, |e| {
                seen.push(e["event_type"].as_str().unwrap_or_default().to_string());
                Ok(())
            })
            .await;
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(seen, ["note", "end"]);
        let streams = server.await.expect("server");
        assert_eq!(
            streams[1..],
            [Some("1".to_string()), Some("1".to_string())],
            "resumed after 1"
        );
    }

    /// A follower that has reached the server before (`run` just started the
    /// process) waits out a server that is down when the stream first opens,
    /// and reads the stream once it is back; one that never reached it says
    /// so at once.
    #[tokio::test]
    async fn a_follower_that_reached_the_server_rides_out_its_restart() {
        let port = free_port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).expect("client");
        assert!(matches!(
            client.follow("p", 0, false, |_| Ok(())).await,
            Err(ClientError::Unreachable { .. })
        ));
        let mut follower = tokio::spawn(async move {
            let mut types = Vec::new();
            let done = client
                .follow("p", 0, true, |event| {
                    types.push(event["event_type"].as_str().unwrap_or_default().to_string());
                    Ok(())
                })
                .await;
            (done, types)
        });
        // The server comes back after the follower's first attempt (a refused
        // connect, microseconds after the spawn) and before its first retry,
        // which waits at least 250 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind again");
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted.expect("accept"),
            ended = &mut follower => panic!("the follower gave up instead of retrying: {:?}", ended.map(|e| e.0)),
        };
        let (mut socket, _) = accepted;
        let mut request = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut socket, &mut request)
            .await
            .expect("read");
        assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /v1/processes/p/events"));
        let event = r#"{"sequence":1,"event_type":"process.completed","semantics":{"terminal":{"state":"completed"}}}"#;
        let body = format!("event: event\ndata: {event}\n\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut socket, response.as_bytes())
            .await
            .expect("write");
        let (done, types) = follower.await.expect("follower");
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(types, ["process.completed"]);
    }
}
