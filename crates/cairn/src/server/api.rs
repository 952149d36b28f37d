//! The error answer and the request extractors: every rejection, whatever its
//! source, answers `{"error":{"code","message"}}`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_core::{CairnError, Tombstone};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error answer: an HTTP status and the stable `{"error":{"code","message"}}` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine code (the core's codes plus a few of the server's own).
    pub code: &'static str,
    /// For humans.
    pub message: String,
    /// Present on `no_longer_retained`: how the process ended and when it was pruned.
    pub tombstone: Option<Tombstone>,
    /// Ask the client not to reuse the connection: set when the request body was
    /// left unread (oversized), so the next request does not land on a stream
    /// the server is about to close.
    pub close_connection: bool,
}

/// The documented shape of every error answer.
#[derive(utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorSchema {
    /// `code` (stable, machine-matched), `message` (for humans) and, for
    /// `no_longer_retained`, `tombstone` (`{id, status, terminal_at_ms, pruned_at_ms}`).
    #[allow(dead_code)]
    error: ErrorDetailSchema,
}

/// The inner error object.
#[derive(utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
#[allow(dead_code)]
pub struct ErrorDetailSchema {
    code: String,
    message: String,
    tombstone: Option<Tombstone>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tombstone: Option<&'a Tombstone>,
}

impl ApiError {
    /// An error with a server-level code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            tombstone: None,
            close_connection: false,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`: a host-only operation, or another session's state.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found` for routes that do not exist.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }
}

/// The HTTP status of a core error code. Validation errors are all 400: the
/// request was wrong, whether in shape or in content.
pub fn status_of(err: &CairnError) -> StatusCode {
    match err {
        CairnError::InvalidId(_)
        | CairnError::InvalidRequest(_)
        | CairnError::InvalidEventTypeName(_)
        | CairnError::DuplicateEventType(_)
        | CairnError::ReservedEventType(_)
        | CairnError::InvalidSchema { .. }
        | CairnError::InvalidSignalName(_)
        | CairnError::InvalidSemantics { .. }
        | CairnError::UndeclaredEventType { .. }
        | CairnError::SchemaViolation { .. }
        | CairnError::TerminalNeedsAuthority(_)
        | CairnError::InvalidOutcome { .. }
        | CairnError::InvalidFilter(_)
        | CairnError::InvalidPage(_)
        | CairnError::InvalidModule(_)
        | CairnError::InvalidDisposition(_) => StatusCode::BAD_REQUEST,
        CairnError::UnknownProcess(_)
        | CairnError::UnknownWake(_)
        | CairnError::UnknownEnv(_)
        | CairnError::UnknownTool(_)
        | CairnError::UnknownModel(_)
        | CairnError::UnknownSchedule(_)
        | CairnError::UnknownModule(_)
        | CairnError::UnknownExport { .. } => StatusCode::NOT_FOUND,
        CairnError::NoLongerRetained(_) => StatusCode::GONE,
        CairnError::RegistrationConflict { .. }
        | CairnError::ReplayConflict { .. }
        | CairnError::ProcessTerminal(_)
        | CairnError::LeaseHeld { .. }
        | CairnError::LeaseFenced(_)
        | CairnError::NotClaimable { .. }
        | CairnError::NotExternallyOwned(_)
        | CairnError::ScheduleConflict { .. } => StatusCode::CONFLICT,
        CairnError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        CairnError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        CairnError::CorruptEnv { .. } | CairnError::Storage { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        // Both are 503; the code tells a client whether to retry at once
        // (`unavailable`: nothing was done) or to read first (`outcome_unknown`).
        CairnError::Unavailable(_) | CairnError::OutcomeUnknown(_) => StatusCode::SERVICE_UNAVAILABLE,
        // `CairnError` is non-exhaustive: a variant added later is a server
        // error until it is given its status here.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CairnError> for ApiError {
    fn from(err: CairnError) -> Self {
        let tombstone = match &err {
            CairnError::NoLongerRetained(t) => Some((**t).clone()),
            _ => None,
        };
        // An unknown `shell` says how a server offers it (`CairnError`'s own words).
        let message = err.to_string();
        Self {
            status: status_of(&err),
            code: err.code(),
            message,
            tombstone,
            close_connection: false,
        }
    }
}

/// The longest error message an answer carries. A message may quote what
/// was refused (a name, a value a schema rejected), and that may be a
/// megabyte: past this, it is cut and says how long it was.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// `message`, cut to [`MAX_ERROR_MESSAGE_BYTES`] at a character boundary.
fn bounded_message(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message.into();
    }
    let mut end = MAX_ERROR_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (the message is cut: {} bytes in all)",
        &message[..end],
        message.len()
    )
    .into()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = bounded_message(&self.message);
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &message,
                tombstone: self.tombstone.as_ref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names its scheme (a bearer token here),
            // so a client knows to send one rather than look for OAuth.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"cairn\""),
            );
        }
        response
    }
}

/// A JSON body, parsed strictly. Malformed JSON and unknown fields are 400
/// `invalid_request`; a non-JSON content type is 415 (so a browser form cannot
/// post to a loopback server); an oversized body is 413 `payload_too_large`. An
/// empty body reads as `{}` so bodies whose fields are all optional may be left out.
/// One leading UTF-8 byte order mark is ignored (RFC 8259 §8.1).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + serde::Serialize,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Two labels: which one counts is not for the server to guess
        // (`auth::authenticate` refuses them first on the API's routes).
        let mut labels = req.headers().get_all(header::CONTENT_TYPE).iter();
        let content_type = labels.next().map(|v| v.to_str().unwrap_or("").to_string());
        if labels.next().is_some() {
            return Err(ApiError::invalid_request("send one Content-Type header"));
        }
        // A body the server would read as something it is not (compressed
        // bytes, UTF-16) is refused for what it is, not as bad JSON, and a
        // plain body labelled as compressed is not taken as if unlabelled.
        unread_encoding(req.headers())?;
        let mut bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        // RFC 8259 §8.1: a parser may ignore a byte order mark at the start;
        // one is read as if the body began after it.
        if bytes.starts_with(UTF8_BOM) {
            bytes = bytes.slice(UTF8_BOM.len()..);
        }
        // An empty body may leave out its content type, but may not name
        // another one: an empty browser form is not an empty JSON body.
        if bytes.is_empty() && !content_type.as_deref().is_none_or(is_json_content_type) {
            return Err(unsupported_media_type());
        }
        if bytes.is_empty() {
            // Read as `{}`: the field it lacks is named, but not a line and
            // column of a body that was never sent.
            return serde_json::from_slice(b"{}").map(ApiJson).map_err(|e| {
                let said = cairn_core::validate::wire_terms(&e.to_string());
                let said = said.split(" at line ").next().unwrap_or(&said);
                ApiError::invalid_request(format!("request body is required: {said}"))
            });
        }
        if !content_type.as_deref().is_some_and(is_json_content_type) {
            return Err(unsupported_media_type());
        }
        // Every body is an object; serde would also read a struct from an
        // array, by position, which no client means.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::invalid_request(
                "request body: expected a JSON object, not an array",
            ));
        }
        // A key given twice anywhere (a tool's args, a schedule's fields)
        // is refused, not read as its last value; a typed field would be
        // refused by serde, an open one (`args`) would not.
        let given = match cairn_core::validate::parse_strict_json(&bytes) {
            Ok(given) => Some(given),
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(ApiError::invalid_request(format!("request body: {e}")));
            }
            // Past the parser's own limit on nesting (128 levels), said as
            // the 64 level limit a value just under it is refused with, not
            // as the parser's path to where it stopped.
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
                return Err(too_deep(&bytes));
            }
            Err(_) => None,
        };
        // The field a refusal is about is named (`disposition: ...`).
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        // Said in wire terms: "a non-negative integer", not `u64`.
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let at = e.path().to_string();
            let why = match &given {
                Some(given) => cairn_core::validate::refusal_in_wire_terms::<T>(given, &at, &e.inner().to_string()),
                None => cairn_core::validate::wire_terms(&e.inner().to_string()),
            };
            match at.as_str() {
                // `?`: a syntax error, at no field.
                "" | "." | "?" => ApiError::invalid_request(format!("request body: {why}")),
                _ => match refused_input_field(&bytes, &at) {
                    Some((inner, why)) => ApiError::invalid_request(format!(
                        "request body: `{at}.{inner}`: {}",
                        cairn_core::validate::wire_terms(&why)
                    )),
                    None => ApiError::invalid_request(format!("request body: `{at}`: {why}")),
                },
            }
        })?;
        de.end()
            .map_err(|e| ApiError::invalid_request(format!("request body: {e}")))?;
        // Nor is a nested object read from an array.
        if let (Some(given), Ok(read)) = (given, serde_json::to_value(&value)) {
            if let Some(at) = cairn_core::validate::array_read_as_object(&given, &read) {
                return Err(ApiError::invalid_request(format!(
                    "request body: `{at}`: expected a JSON object, not an array"
                )));
            }
        }
        Ok(ApiJson(value))
    }
}

/// Middleware (outermost): an answer given before its request's body was
/// read to its end says `Connection: close`. Whatever refused it early (no
/// route, a wrong method, a cross-site or foreign-host check, a query the
/// route does not take, the dashboard's login or CSRF check) left the rest
/// of the body on the connection, and the server closes it rather than
/// read that as the next request: the client is told, so it opens another
/// instead of losing its next request on this one. A request without a body
/// is passed as it is.
pub async fn close_unread_bodies(req: Request, next: axum::middleware::Next) -> Response {
    if axum::body::HttpBody::size_hint(req.body()).exact() == Some(0) {
        return next.run(req).await;
    }
    let read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(ReadToEnd {
        inner: body,
        read: read.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !read.load(std::sync::atomic::Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it was read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    read: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A UTF-8 byte order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The refusal of a JSON body nested past what the parser reads: how deep
/// it goes, under which field, and the limit a stored value is held to
/// ([`cairn_core::validate::MAX_JSON_DEPTH`]), as a value nested less deep
/// but still over that limit is refused.
fn too_deep(bytes: &[u8]) -> ApiError {
    ApiError::invalid_request(match cairn_core::validate::json_text_depth(bytes) {
        (_, Some((field, depth))) => {
            cairn_core::validate::too_deep_message(&format!("request body: `{}`", field.escape_debug()), depth)
        }
        (depth, None) => cairn_core::validate::too_deep_message("request body", depth),
    })
}

/// The field inside a refused process input at `at` (`input`,
/// `start.input`) that serde did not name ([`ProcessInput::refused_at`]).
fn refused_input_field(bytes: &[u8], at: &str) -> Option<(String, String)> {
    if at != "input" && !at.ends_with(".input") {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let pointer = format!("/{}", at.replace('.', "/"));
    cairn_core::ProcessInput::refused_at(body.pointer(&pointer)?)
}

/// Refuse a `Content-Encoding` other than `identity`, or a `charset` other
/// than UTF-8: the server reads neither (the API's JSON bodies, and `/mcp`'s
/// messages: `mcp::jsonrpc_errors`).
pub(super) fn unread_encoding(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let refuse = |message: String| {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            message,
        ))
    };
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let coding = value.to_str().unwrap_or("?").trim();
        if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
            return refuse(format!(
                "request bodies are read as sent: `Content-Encoding: {}` is not supported; send plain JSON",
                coding.escape_debug()
            ));
        }
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    for param in content_type.split(';').skip(1) {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        // UTF-8 and its subset ASCII are read as sent.
        if name.trim().eq_ignore_ascii_case("charset")
            && !["utf-8", "utf8", "us-ascii", "ascii"]
                .iter()
                .any(|ok| value.eq_ignore_ascii_case(ok))
        {
            return refuse(format!(
                "JSON bodies are UTF-8: `charset={}` is not supported",
                value.escape_debug()
            ));
        }
    }
    Ok(())
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
        "request bodies must be sent with `Content-Type: application/json`",
    )
}

/// Refuse a query string on an API route that reads none: every write, and
/// a read by id. A parameter the client believes it sends (`POST
/// /v1/prune?dry_run=true`) must not be ignored while the write goes ahead.
/// The listings read theirs through [`ApiQuery`], which refuses unknown keys.
pub async fn refuse_unread_query(req: Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    if let Some(query) = req.uri().query().filter(|q| !q.is_empty()) {
        if !takes_query(req.method(), path) {
            let shown: String = query.chars().take(100).collect();
            let hint = if req.method() == axum::http::Method::GET {
                ""
            } else {
                ": a write's fields go in its body"
            };
            return ApiError::invalid_request(format!(
                "`{} {path}` takes no query parameters (got `{shown}`){hint}",
                req.method()
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Whether the route at `path` reads a query string: the listings (and the
/// routes off `/v1`, which read their own).
fn takes_query(method: &axum::http::Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return true;
    };
    // HEAD answers what GET would, without the body (RFC 9110).
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return false;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    matches!(
        segments.as_slice(),
        ["processes"]
            | ["processes", _, "events"]
            | ["processes", _, "await"]
            | ["changes"]
            | ["modules"]
            | ["schedules"]
            | ["sessions", _, "wakes"]
    )
}

/// Middleware: a write that a page of another site made the browser send
/// (`Sec-Fetch-Site: cross-site` or `same-site`) is refused with 403
/// `forbidden`, before it is authenticated. A page may send a bodyless POST
/// without asking first; the content-type rule of [`ApiJson`] refuses its
/// forms, and this refuses the rest. No browser page can call the API anyway:
/// the server answers no CORS preflight, so only the writes that need none
/// reach it, and none of them is meant.
pub async fn refuse_cross_site(req: Request, next: axum::middleware::Next) -> Response {
    let write = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if write && matches!(site, Some("cross-site" | "same-site")) {
        return ApiError::forbidden(
            "a write sent by another site's page is refused: call the API from a client, not a web page",
        )
        .into_response();
    }
    next.run(req).await
}

/// The host names an open (tokenless, loopback-only) server answers to.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether `authority` (`host[:port]`) names this machine's loopback: a
/// loopback name, or any loopback address written out (`127.0.0.2`, which an
/// open server may listen on; an address literal is no name a page could
/// re-point). Nothing else may be in it: a port is a number a TCP port can be,
/// or empty (RFC 3986's `*DIGIT`: `localhost:` is the default port), so
/// `localhost:7711.evil.com` names no port, and no loopback; and there is no
/// user part (`Host` and `Origin` carry none).
fn is_loopback_authority(authority: &str) -> bool {
    authority.parse::<axum::http::uri::Authority>().is_ok_and(|a| {
        let host = a.host();
        // `u16` parsing alone would take a sign (`+7711`).
        let only_a_port = match authority.strip_prefix(host) {
            Some("") => true,
            Some(rest) => rest.strip_prefix(':').is_some_and(|port| {
                port.is_empty() || port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
            }),
            None => false,
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        only_a_port
            && (LOOPBACK_NAMES.iter().any(|n| host.eq_ignore_ascii_case(n))
                || literal.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    })
}

/// Middleware: a request with more than one `Host` or `Origin` header is
/// refused on every server, 400 `invalid_request`, before anything runs:
/// which one counts is not for the server to guess (as for `Authorization`),
/// and a check that reads one while a proxy or route reads another checks
/// nothing. An open server (no tokens, so loopback only) then answers only
/// requests addressed to a loopback name and, when a browser says which page
/// sent them (`Origin`), sent by a loopback page; anything else is 403
/// `forbidden`, as is a request that names no host. A page on another site that re-points its own name at
/// 127.0.0.1 (DNS rebinding) sends its own name as `Host`, and its requests
/// are then same-origin to the browser, so only this check stops it. A server
/// with tokens answers any host: a page cannot know a token.
pub async fn refuse_foreign_hosts(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<super::AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    for (name, said) in [(header::HOST, "Host"), (header::ORIGIN, "Origin")] {
        if req.headers().get_all(&name).iter().nth(1).is_some() {
            return ApiError::invalid_request(format!("send one {said} header")).into_response();
        }
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(ToString::to_string));
    // RFC 9112 §3.2: an HTTP/1.1 request without `Host` is answered 400.
    if host.is_none() && req.version() == axum::http::Version::HTTP_11 {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "an HTTP/1.1 request names its host (`Host`)",
        )
        .into_response();
    }
    if !state.auth.is_open() {
        return next.run(req).await;
    }
    // A request that names no host is addressed to no loopback name.
    let host = host.unwrap_or_default();
    if !is_loopback_authority(&host) {
        let named = if host.is_empty() {
            "not a request that names no host (`Host`)".to_string()
        } else {
            format!("not `{host}`")
        };
        return ApiError::forbidden(format!(
            "this server has no tokens, so it answers only requests addressed to localhost or a loopback address, \
             {named}"
        ))
        .into_response();
    }
    let origin = req.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or("?"));
    if let Some(origin) = origin {
        let loopback = origin
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && is_loopback_authority(rest));
        if !loopback {
            return ApiError::forbidden(format!(
                "this server has no tokens, so it answers no page but its own (`Origin: {origin}`)"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Middleware: a body whose `Content-Length` is over the limit is refused with
/// 413 before a byte of it is read (the connection is closed after the answer).
/// A session token on a host-only route is refused as such first, 403
/// `forbidden` as when its body is small (`auth::authenticate`): it is not
/// told to shrink a request it may not make.
pub async fn refuse_oversized(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<super::AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = u64::try_from(state.limits.max_body_bytes).unwrap_or(u64::MAX);
    match declared {
        // `/mcp` refuses it in its own shape, a JSON-RPC error with the
        // message's id when its start shows it (`mcp::jsonrpc_errors`).
        Some(len) if len > limit && req.uri().path() != "/mcp" => {
            let refused = super::auth::host_only_refusal(&state.auth, &req).unwrap_or_else(|| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body of {len} bytes is over the server's limit of {limit}"),
                )
            });
            // Its body is left unread either way.
            ApiError {
                close_connection: true,
                ..refused
            }
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// A request body that has not all arrived `--body-timeout` after the
/// request's headers fails when it is read: a handler that reads it answers
/// 408 `request_timeout`, and the connection closes (its body unread), so a
/// client that sends its headers and then stalls, or trickles its body,
/// cannot hold a connection slot or a shutdown for ever. Nothing is read
/// here: a request refused before its body is read (no token, an unknown
/// route) is refused without it, as before.
pub async fn refuse_slow_bodies(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<super::AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if axum::body::HttpBody::size_hint(req.body()).exact() == Some(0) {
        return next.run(req).await;
    }
    let within = state.limits.body_timeout;
    let deadline = tokio::time::Instant::now() + within;
    let (parts, body) = req.into_parts();
    let frames = futures::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut stream)).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(axum::BoxError::from(BodyTimedOut(within))), None)),
        }
    });
    next.run(Request::from_parts(parts, axum::body::Body::from_stream(frames)))
        .await
}

/// The error a request body's read ends with past `--body-timeout`.
#[derive(Debug)]
pub struct BodyTimedOut(std::time::Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not all arrive within {:?} of its headers",
            self.0
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// The [`BodyTimedOut`] somewhere in `e`'s chain of sources, if it is there.
pub(crate) fn timed_out<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
            return Some(t);
        }
        at = e.source();
    }
    None
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if let Some(t) = timed_out(&rejection) {
        return ApiError {
            close_connection: true,
            ..ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", t.to_string())
        };
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError {
            close_connection: true,
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is over the server's size limit",
            )
        }
    } else {
        // The framework's words ("Failed to buffer the request body") say
        // nothing a client can act on: a body that ends before it is whole
        // (a broken connection) or a chunked body whose framing is broken.
        ApiError {
            close_connection: true,
            ..ApiError::invalid_request(
                "request body: it could not be read to its end (a chunked body whose chunk framing is \
                 malformed, or a connection that broke while it was sent); nothing was done",
            )
        }
    }
}

/// `application/json` or any `application/*+json`, with or without parameters.
fn is_json_content_type(value: &str) -> bool {
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A query string parsed into `T` (which must deny unknown fields: a query it reads is taken as is); errors
/// are 400 `invalid_request`, said in cairn's words: a parameter the route
/// does not take names the ones it does (from `T`'s parameters as the
/// OpenAPI document lists them), and one given twice is said to be.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + utoipa::IntoParams,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        utf8_query(parts.uri.query())?;
        let read = axum::extract::Query::<T>::from_request_parts(parts, state).await;
        // `T` denies unknown and repeated keys, so a query read without error
        // has neither; only a refused one is looked at key by key (the names
        // a route takes are built from its OpenAPI description, which no
        // request that reads well needs to pay for).
        if read.is_err() {
            let taken: Vec<String> = T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
                .into_iter()
                .map(|p| p.name)
                .collect();
            query_keys(parts.uri.query(), &taken)?;
        }
        read.map(|q| ApiQuery(q.0)).map_err(|e: QueryRejection| {
            let said = query_error(&e.body_text(), parts.uri.query());
            // A page size that is no number is as bad a page as 0 is,
            // and said as `invalid_page` says it.
            if said.starts_with("`limit` ") {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_page", format!("invalid page: {said}"))
            } else {
                ApiError::invalid_request(said)
            }
        })
    }
}

/// Refuse a query naming a parameter that is not among `taken`, or one
/// parameter twice: the first such key, in the order given.
fn query_keys(raw: Option<&str>, taken: &[String]) -> Result<(), ApiError> {
    let mut seen: Vec<String> = Vec::new();
    for (key, _) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if key.is_empty() {
            return Err(ApiError::invalid_request(format!(
                "a query parameter has no name: this route takes {}",
                said_list(taken)
            )));
        }
        if !taken.iter().any(|t| *t == key) {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter `{key}`: this route takes {}",
                said_list(taken)
            )));
        }
        if seen.iter().any(|s| *s == key) {
            return Err(ApiError::invalid_request(format!("`{key}` is given twice")));
        }
        seen.push(key.into_owned());
    }
    Ok(())
}

/// `` `a` ``, `` `a` and `b` `` or `` `a`, `b` and `c` ``; "no parameters" for none.
pub(crate) fn said_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "no parameters".into(),
        [one] => format!("only {one}"),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The cursor of the next page of a listing paged by key: the last item's
/// key when the page is full (the next page may then be empty), else none.
pub fn next_page<T>(items: &[T], limit: usize, key: impl Fn(&T) -> &str) -> Option<String> {
    (items.len() >= limit)
        .then(|| items.last().map(|i| key(i).to_string()))
        .flatten()
}

/// Refuse a query whose keys or values do not decode to UTF-8. The form
/// decoder would replace the bytes, so a value would silently become another;
/// a path id with them is a 400, and so is a query.
pub fn utf8_query(raw: Option<&str>) -> Result<(), ApiError> {
    let bad = raw
        .unwrap_or("")
        .split(['&', '='])
        .find(|part| percent_encoding::percent_decode_str(part).decode_utf8().is_err());
    match bad {
        Some(part) => Err(ApiError::invalid_request(format!(
            "the query holds `{part}`, which does not decode to UTF-8 text"
        ))),
        None => Ok(()),
    }
}

/// A query's parse error in words: a number field given something else says
/// which field wants what (the parser says only "invalid digit found in string").
fn query_error(text: &str, query: Option<&str>) -> String {
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let numeric = [
        ("invalid digit found in string", "must be a non-negative integer"),
        (
            "cannot parse integer from empty string",
            "must be a non-negative integer",
        ),
        (
            "number too large to fit in target type",
            "is over the largest accepted value 9223372036854775807",
        ),
    ];
    for (said, meant) in numeric {
        if let Some(field) = detail.strip_suffix(said).and_then(|f| f.strip_suffix(": ")) {
            // A page size is a count: 0 is refused too.
            let meant = if field == "limit" {
                format!("must be a whole number from 1 to {}", cairn_core::model::MAX_PAGE_SIZE)
            } else {
                meant.to_string()
            };
            let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .find(|(k, _)| k == field)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            return format!("`{field}` {meant}, got `{given}`");
        }
    }
    // Anything else (`field: invalid type: ...`) named as a query parameter,
    // its types in wire terms.
    match detail.split_once(": ") {
        Some((field, why)) if !field.is_empty() && !field.contains(' ') => {
            format!("`{field}`: {}", cairn_core::validate::wire_terms(why))
        }
        _ => cairn_core::validate::wire_terms(detail),
    }
}

/// Path parameters; errors are 400 `invalid_request`.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::invalid_request(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_key_not_taken_or_repeated_is_said_in_words() {
        let taken = ["after".to_string(), "limit".to_string()];
        assert!(query_keys(Some("after=a&limit=2"), &taken).is_ok());
        assert!(query_keys(None, &taken).is_ok());
        let said = |raw: &str, taken: &[String]| query_keys(Some(raw), taken).map_err(|e| e.message).unwrap_err();
        assert_eq!(
            said("bogus=1", &taken),
            "unknown query parameter `bogus`: this route takes `after` and `limit`"
        );
        assert_eq!(said("limit=1&limit=1", &taken), "`limit` is given twice");
        assert_eq!(said("limit=1&lim%69t=2", &taken), "`limit` is given twice");
        let one = ["timeout_ms".to_string()];
        assert_eq!(
            said("x=1", &one),
            "unknown query parameter `x`: this route takes only `timeout_ms`"
        );
        let three = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(
            said("x", &three),
            "unknown query parameter `x`: this route takes `a`, `b` and `c`"
        );
        assert_eq!(
            said("x", &[]),
            "unknown query parameter `x`: this route takes no parameters"
        );
    }

    #[test]
    fn the_deepest_field_is_found_past_strings_that_hold_brackets() {
        use cairn_core::validate::json_text_depth;
        assert_eq!(
            json_text_depth(br#"{"a": "[[[{", "b\"[": [[1]], "c": {"d": 1}}"#),
            (3, Some(("b\\\"[".to_string(), 2)))
        );
        assert_eq!(json_text_depth(br#"{"a": 1}"#), (1, None));
        assert_eq!(json_text_depth(b"[[[1]]]"), (3, None));
        let said = too_deep(br#"{"payload": [[[1]]]}"#).message;
        assert_eq!(
            said,
            "request body: `payload` nests arrays and objects 3 levels deep, over the 64 level limit"
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
    }

    #[test]
    fn statuses_follow_codes() {
        assert_eq!(
            status_of(&CairnError::UnknownProcess("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&CairnError::RegistrationConflict {
                id: "x".into(),
                differs: vec![]
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_of(&CairnError::InvalidFilter("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(&CairnError::Unavailable("x".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_of(&CairnError::storage("x")), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn an_unknown_shell_tool_says_how_a_server_offers_it() {
        let shell = ApiError::from(CairnError::UnknownTool("shell".into()));
        assert_eq!((shell.status, shell.code), (StatusCode::NOT_FOUND, "unknown_tool"));
        assert!(
            shell.message.contains("`cairn serve --allow-shell`"),
            "{}",
            shell.message
        );
        let other = ApiError::from(CairnError::UnknownTool("nope".into()));
        assert_eq!(other.message, "unknown tool `nope`");
    }

    #[test]
    fn an_unknown_outcome_is_503_with_its_own_code() {
        let err = ApiError::from(CairnError::OutcomeUnknown("the commit reply was lost".into()));
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, "outcome_unknown");
        assert_eq!(err.message, "outcome unknown: the commit reply was lost");
        let unavailable = ApiError::from(CairnError::Unavailable("down".into()));
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.code, "unavailable");
    }
}
