//! The MCP server handler and its two transports.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Extensions, Implementation, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig, ServerResult, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::calls::CallsInFlight;
use crate::message::ArgumentsFault;
use crate::tools::ToolKind;
use crate::{Answer, Failure, SharedCairn};

/// Picks the [`crate::Cairn`] view an HTTP request speaks to, from the
/// extensions of that request (where the server's auth put the caller).
/// `None` means the request carries no caller: a wiring fault, answered as an
/// internal protocol error.
pub type Resolver = dyn Fn(&http::Extensions) -> Option<SharedCairn> + Send + Sync;

#[derive(Clone)]
enum Backend {
    /// stdio: one client, one server behind it.
    Fixed(SharedCairn),
    /// streamable HTTP: a view per request, by its bearer token.
    PerRequest(Arc<Resolver>),
}

/// The MCP server: `tools/list` and `tools/call` over a [`crate::Cairn`].
#[derive(Clone)]
pub struct McpServer {
    backend: Backend,
    tools: Arc<Vec<Tool>>,
    max_argument_bytes: usize,
    /// Over streamable HTTP: the calls a client's cancel may end.
    calls: Option<Arc<CallsInFlight>>,
}

/// The oldest MCP revision this server agrees to (SPEC §16): 2025-06-18.
/// The revisions before it asked of a server what this one does not do
/// (2025-03-26: JSON-RPC batches), so a client that asks for one is
/// answered, as MCP's lifecycle has it, with the latest revision the server
/// supports, and may then stay or leave.
pub const OLDEST_PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2025_06_18;

/// The MCP revisions this server speaks, oldest first: every one the
/// protocol library knows from [`OLDEST_PROTOCOL_VERSION`] on. What
/// `initialize` may agree to and `server/discover` advertises, on both
/// transports, and what an HTTP request's `MCP-Protocol-Version` header may
/// name.
pub fn protocol_versions() -> &'static [ProtocolVersion] {
    let known = ProtocolVersion::KNOWN_VERSIONS;
    let from = known
        .iter()
        .position(|v| v.as_str() >= OLDEST_PROTOCOL_VERSION.as_str())
        .unwrap_or(known.len());
    &known[from..]
}

/// What is wrong with the `MCP-Protocol-Version` header of an HTTP POST
/// carrying `message`, if anything: it names a revision this server does
/// not speak ([`protocol_versions`]). The protocol library refuses (400) a
/// header naming a revision it does not know, but takes every one it knows,
/// the revisions before [`OLDEST_PROTOCOL_VERSION`] included: this refuses
/// those as it refuses unknown ones, and says which revisions it speaks.
/// Where the library reads the header otherwise, this leaves it to the
/// library: an `initialize` (its header must match the revision its params
/// ask for, which the handshake then negotiates), a request that names its
/// revision in its `_meta` (answered `-32602` unsupported protocol version,
/// with the revisions supported, when it names one this server does not
/// speak), and a header that is not text.
pub fn protocol_version_header_fault(message: &Value, header: Option<&http::HeaderValue>) -> Option<String> {
    let version = header?.to_str().ok()?;
    let is_request = message.get("id").is_some();
    let method = message.get("method").and_then(Value::as_str);
    let names_its_own = message
        .pointer("/params/_meta")
        .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
        .is_some_and(Value::is_string);
    if is_request && (method == Some("initialize") || names_its_own) {
        return None;
    }
    if protocol_versions().iter().any(|v| v.as_str() == version) {
        return None;
    }
    let spoken: Vec<&str> = protocol_versions().iter().map(ProtocolVersion::as_str).collect();
    Some(format!(
        "invalid request: unsupported MCP-Protocol-Version `{version}`: this server speaks MCP {}",
        spoken.join(", ")
    ))
}

/// In an HTTP request's extensions (put there by the server in front of
/// [`http_service`]): cancelled when the client's connection goes away
/// before its answer. A `process_await` then ends as its bound would end
/// it, and its answer goes to the request's handling, which the server
/// keeps running, not to a connection the protocol library would find
/// closed (it logs each such answer as an error).
#[derive(Clone, Debug, Default)]
pub struct ClientGone(pub CancellationToken);

/// Largest `arguments` object a call may carry by default (the HTTP API's
/// default body limit): anything larger cannot be forwarded anyway.
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 2 * 1024 * 1024;

impl McpServer {
    /// A server whose every call goes to `cairn`.
    pub fn new(cairn: SharedCairn) -> Self {
        Self::with_backend(Backend::Fixed(cairn))
    }

    /// A server that asks `resolver` which view each HTTP request speaks to.
    pub fn per_request(resolver: Arc<Resolver>) -> Self {
        Self::with_backend(Backend::PerRequest(resolver))
    }

    fn with_backend(backend: Backend) -> Self {
        Self {
            backend,
            tools: Arc::new(ToolKind::ALL.into_iter().map(ToolKind::definition).collect()),
            max_argument_bytes: DEFAULT_MAX_ARGUMENT_BYTES,
            calls: None,
        }
    }

    /// Refuse calls whose `arguments` serialize to more than `bytes` (`payload_too_large`).
    pub fn with_max_argument_bytes(mut self, bytes: usize) -> Self {
        self.max_argument_bytes = bytes;
        self
    }

    fn backend(&self, extensions: &Extensions) -> Result<SharedCairn, ErrorData> {
        match &self.backend {
            Backend::Fixed(cairn) => Ok(cairn.clone()),
            Backend::PerRequest(resolve) => extensions
                .get::<http::request::Parts>()
                .and_then(|parts| resolve(&parts.extensions))
                .ok_or_else(|| ErrorData::internal_error("the request carries no authenticated caller", None)),
        }
    }

    /// The refusal of `arguments` a call of `kind` meets before it runs:
    /// arguments over the size limit (`payload_too_large`, as the HTTP API
    /// refuses a body for its size before reading it), then a `fault` of
    /// their JSON ([`ArgumentsFault`]: `invalid_request`).
    fn refused(&self, kind: ToolKind, arguments: &Value, fault: Option<&ArgumentsFault>) -> Option<CallToolResult> {
        let size = serde_json::to_vec(arguments).map(|b| b.len()).unwrap_or(usize::MAX);
        if size > self.max_argument_bytes {
            return Some(failure(&Failure::new(
                "payload_too_large",
                format!(
                    "arguments of `{}` are {size} bytes, over the {} byte limit",
                    kind.name(),
                    self.max_argument_bytes
                ),
            )));
        }
        fault.map(|f| failure(&f.failure(kind.name())))
    }

    /// The answer to a `tools/call` request `message` whose arguments hold
    /// `fault`, as `tools/call` answers it (a tool error), when the protocol
    /// library would call a tool with it: `None` for a message it reads as no
    /// call, or one naming no tool, which it answers itself and never runs.
    /// Shaped, as the library shapes its results, for the revision the
    /// request's `_meta` names, else the session's (`session`, when a request
    /// naming it opened the session; else one `initialize` agreed to).
    fn refused_call(
        &self,
        message: &Value,
        fault: &ArgumentsFault,
        session: Option<&ProtocolVersion>,
    ) -> Option<ServerResult> {
        use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta};
        let Ok(ClientJsonRpcMessage::Request(request)) =
            serde_json::from_value::<ClientJsonRpcMessage>(message.clone())
        else {
            return None;
        };
        let revision = request
            .request
            .get_meta()
            .protocol_version()
            .or_else(|| session.cloned());
        let ClientRequest::CallToolRequest(call) = request.request else {
            return None;
        };
        let kind = ToolKind::from_name(&call.params.name)?;
        let arguments = Value::Object(call.params.arguments.unwrap_or_default());
        let mut result = ServerResult::CallToolResult(self.refused(kind, &arguments, Some(fault))?);
        // The fields of 2026-07-28 (`resultType`) are not sent to a client
        // of an older revision, as the library leaves them out of its own.
        if revision.is_none_or(|v| v.as_str() < ProtocolVersion::V_2026_07_28.as_str()) {
            result.strip_result_type_for_legacy_peer();
            result.strip_non_object_output_for_legacy_peer();
        }
        Some(result)
    }

    /// Run one call (the part of `tools/call` after the tool is known).
    /// A wait's text counts from `started`. Arguments whose JSON the
    /// transport found at `fault` are refused, never run.
    async fn run(
        &self,
        kind: ToolKind,
        cairn: SharedCairn,
        arguments: Value,
        fault: Option<&ArgumentsFault>,
        started: std::time::Instant,
    ) -> CallToolResult {
        if let Some(refused) = self.refused(kind, &arguments, fault) {
            return refused;
        }
        let answer: Answer = kind.call(cairn.as_ref(), arguments).await;
        match answer {
            Ok(value) => {
                let still_running =
                    kind == ToolKind::Await && value.get("status").and_then(Value::as_str) == Some("running");
                let mut result = CallToolResult::structured(value);
                if still_running {
                    // The wait that happened, which the server may have cut
                    // short (`--max-await`), not the one asked for.
                    result.content.push(ContentBlock::text(format!(
                        "The process is still running after waiting {} ms: call process_await again to keep waiting.",
                        started.elapsed().as_millis()
                    )));
                }
                result
            }
            Err(f) => failure(&f),
        }
    }
}

/// What the params of a request method MCP defines look like, for the
/// answer to params that do not fit; `None` for a method MCP does not define.
fn expected_params(method: &str) -> Option<&'static str> {
    Some(match method {
        "initialize" => crate::message::INITIALIZE_PARAMS,
        "tools/call" => "an object with `name` (a string) and, optionally, `arguments` (an object)",
        "tools/list" => "an optional object with an optional `cursor` (a string)",
        "ping" => "no params, or an object",
        // Methods of capabilities this server does not offer are not found,
        // whatever their params: no instructions for params it never reads.
        _ => return None,
    })
}

/// A method of a capability this server does not offer, or one MCP does not
/// define, said as such, with the methods it does offer.
fn not_offered(method: &str) -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode::METHOD_NOT_FOUND,
        format!("method not found: `{method}` (this server offers tools only: `tools/list` and `tools/call`)"),
        None,
    )
}

/// Params as a message quotes them: their JSON, cut to its first 200 bytes.
fn given(params: Option<&Value>) -> String {
    const SHOWN: usize = 200;
    let Some(params) = params else {
        return "no params".into();
    };
    let text = params.to_string();
    if text.len() <= SHOWN {
        return text;
    }
    let cut = (0..=SHOWN).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// A cairn error as a tool result: `isError`, and the HTTP API's error body as
/// text. No structured content: the tool's output schema describes successes.
fn failure(f: &Failure) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(f.to_json().to_string())])
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "cairn runs durable background processes. Start one with process_start (pick a unique id: \
             repeating a start is safe), follow it with process_get, process_events or process_await, \
             and steer it with process_signal, process_cancel or process_complete. module_put stores a \
             JavaScript module whose exports process_start can run as durable scripts. schedule_list, \
             schedule_pause and schedule_resume manage the schedules that start processes (host token). \
             Errors carry cairn's code, e.g. unknown_process.",
        );
        info.server_info = Implementation::new("cairn", env!("CARGO_PKG_VERSION"));
        info
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(protocol_versions())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // One page holds every tool and no answer carries a `nextCursor`, so
        // any cursor is one this server never gave (MCP: invalid params).
        if let Some(cursor) = request.and_then(|r| r.cursor) {
            return Err(ErrorData::invalid_params(
                format!("unknown cursor `{cursor}`: tools/list answers every tool in one page"),
                None,
            ));
        }
        // A session token is offered no tool that could only refuse it.
        if !self.backend(&context.extensions)?.offers_schedules().await {
            let schedules: Vec<&str> = ToolKind::ALL
                .into_iter()
                .filter(|k| k.is_schedule())
                .map(ToolKind::name)
                .collect();
            let tools = self.tools.iter().filter(|t| !schedules.contains(&t.name.as_ref()));
            return Ok(ListToolsResult::with_all_items(tools.cloned().collect()));
        }
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    // Methods of capabilities this server does not offer: the library's own
    // answers to them name the method alone.
    async fn read_resource(
        &self,
        _request: rmcp::model::ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        Err(not_offered("resources/read"))
    }

    async fn get_prompt(
        &self,
        _request: rmcp::model::GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        Err(not_offered("prompts/get"))
    }

    async fn complete(
        &self,
        _request: rmcp::model::CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CompleteResult, ErrorData> {
        Err(not_offered("completion/complete"))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        Err(not_offered("resources/list"))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        Err(not_offered("resources/templates/list"))
    }

    async fn subscribe(
        &self,
        _request: rmcp::model::SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Err(not_offered("resources/subscribe"))
    }

    async fn unsubscribe(
        &self,
        _request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Err(not_offered("resources/unsubscribe"))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        Err(not_offered("prompts/list"))
    }

    // Logging is deprecated in MCP, but clients still ask for it.
    #[allow(deprecated)]
    async fn set_level(
        &self,
        _request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Err(not_offered("logging/setLevel"))
    }

    /// A request the protocol library could not read as any method it knows.
    /// A method of `tools` or the lifecycle reached here because its params
    /// did not fit it: invalid params (`-32602`), not "method not found".
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        let method = request.method;
        match expected_params(&method) {
            Some(shape) => Err(ErrorData::invalid_params(
                format!(
                    "invalid params for `{method}`: it takes {shape}; it was given {}",
                    given(request.params.as_ref())
                ),
                None,
            )),
            None => Err(not_offered(&method)),
        }
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // MCP: an unknown tool is a protocol error (invalid params), not a tool result.
        let kind = ToolKind::from_name(&request.name).ok_or_else(|| {
            ErrorData::invalid_params(
                format!("unknown tool `{}`; tools/list names the tools", request.name),
                None,
            )
        })?;
        let cairn = self.backend(&context.extensions)?;
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        // Over HTTP a cancel comes on a POST of its own ([`CallsInFlight`]).
        let parts = context.extensions.get::<http::request::Parts>();
        let in_flight = self.calls.as_ref().and_then(|calls| {
            let id = serde_json::to_value(&context.id).ok()?;
            Some(calls.enter(crate::calls::caller_key(&parts?.headers), &id))
        });
        // Over HTTP, what the server found wrong with the arguments' JSON
        // (a key given twice, an integer past 64 bits), which the library
        // read leniently (over stdio such a call is answered before it).
        let fault = parts.and_then(|p| p.extensions.get::<ArgumentsFault>()).cloned();
        let fault = fault.as_ref();
        let cancelled_here = in_flight.as_ref().map(|c| c.cancelled.clone()).unwrap_or_default();
        let gone = parts
            .and_then(|p| p.extensions.get::<ClientGone>())
            .map(|g| g.0.clone())
            .unwrap_or_default();
        // A wait the client gave up on (it cancelled the call, or its
        // connection went away) ends with it: it would otherwise hold an
        // await, past what the connection limit bounds, to its timeout.
        // Writes run to their end either way.
        let started = std::time::Instant::now();
        if kind == ToolKind::Await {
            let mut now = arguments.clone();
            return tokio::select! {
                // The call first: arguments it refuses are refused, even
                // when a cancel came before it.
                biased;
                answer = self.run(kind, cairn.clone(), arguments, fault, started) => Ok(answer.into()),
                () = context.ct.cancelled() => Err(ErrorData::internal_error("the call was cancelled", None)),
                // A cancel over HTTP may be another client's late one
                // ([`CallsInFlight`]): the wait ends as its bound would end
                // it, with the record as it stands. So does a wait whose
                // client went away ([`ClientGone`]): its answer is dropped.
                () = async { tokio::select! { () = cancelled_here.cancelled() => {}, () = gone.cancelled() => {} } } => {
                    if let Some(fields) = now.as_object_mut() {
                        fields.insert("timeout_ms".into(), Value::from(0));
                    }
                    Ok(self.run(kind, cairn, now, fault, started).await.into())
                }
            };
        }
        Ok(self.run(kind, cairn, arguments, fault, started).await.into())
    }
}

/// Serve MCP on this process's stdin/stdout until the client closes it.
pub async fn serve_stdio(server: McpServer) -> std::io::Result<()> {
    serve_lines(server, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Serve MCP over newline-delimited JSON-RPC on `input` and `output`. A line
/// that is not one JSON-RPC 2.0 message is answered here with its error
/// ([`crate::message`]); the protocol library would drop it unanswered.
pub async fn serve_lines<R, W>(server: McpServer, input: R, output: W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    const PIPE: usize = 1 << 16;
    let (to_library, library_in) = tokio::io::duplex(PIPE);
    let (library_out, from_library) = tokio::io::duplex(PIPE);
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The ids of requests passed to the library and not yet answered: the
    // end of input waits for them (the library gives requests in flight
    // only a few seconds once its input ends, and an await takes up to
    // its cap).
    let in_flight = std::sync::Arc::new(InFlight::default());
    let answering = in_flight.clone();
    // Output: the library's lines and this filter's answers, a whole line at a time.
    let writer = tokio::spawn(async move {
        let mut output = output;
        let mut from_library = BufReader::new(from_library).lines();
        let (mut library_open, mut answers_open) = (true, true);
        loop {
            let line = tokio::select! {
                l = from_library.next_line(), if library_open => match l {
                    Ok(Some(l)) => { answering.answered(&l); l }
                    _ => { library_open = false; continue; }
                },
                a = answered.recv(), if answers_open => match a {
                    Some(a) => a,
                    None => { answers_open = false; continue; }
                },
                else => break,
            };
            if output.write_all(format!("{line}\n").as_bytes()).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    // Whether any message reached the protocol: input that ends before one
    // did (a client that connected and left) is no failed initialization.
    let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forwarding = forwarded.clone();
    let asking = in_flight.clone();
    // Input: each line checked, passed on whole or answered here.
    let refusing = server.clone();
    let reader = tokio::spawn(async move {
        let mut to_library = to_library;
        let mut input = BufReader::new(input);
        let mut bytes = Vec::new();
        // Whether an `initialize` went to the library.
        let mut initializing = false;
        // Whether the library has left its handshake ([`opens_lifecycle`]):
        // before it, it ends on any message but a request.
        let mut in_lifecycle = false;
        // The revision a request that opened the lifecycle without
        // `initialize` named, which the library then answers in; `None`
        // for a session `initialize` opened (always a revision before
        // 2026-07-28, the first without that handshake) or none yet.
        let mut inline_revision: Option<ProtocolVersion> = None;
        loop {
            bytes.clear();
            match (&mut input)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut bytes)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line the library would drop (it discards lines past its
            // limit, unanswered) is answered here, by the id its start
            // shows, and the rest of it is skipped, never held.
            if bytes.len() > MAX_LINE_BYTES && bytes.last() != Some(&b'\n') {
                let id = crate::message::leading_id(&bytes);
                forwarding.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = answers.send(crate::message::error_line(
                    id,
                    -32600,
                    &format!("invalid request: a line carries one message of at most {MAX_LINE_BYTES} bytes"),
                ));
                if !skip_line(&mut input).await {
                    break;
                }
                continue;
            }
            // A byte order mark the line begins with is ignored, as the
            // HTTP API and the CLI ignore one (RFC 8259 §8.1); the line goes
            // on without it.
            let message_bytes = crate::message::without_bom(&bytes);
            // Bytes that are not UTF-8 are a parse error of their line, not
            // the end of the input.
            let line = String::from_utf8_lossy(message_bytes);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            let fault = match crate::message::parse_call(message_bytes) {
                Err(_) if crate::message::is_notification_bytes(message_bytes) => {
                    tracing::debug!("a notification that gives a key twice was dropped");
                    continue;
                }
                Err(fault) => Some(fault),
                // A notification whose params are wrong is dropped: JSON-RPC
                // never answers a notification (over HTTP its POST is refused
                // with a status instead).
                Ok((message, arguments_fault)) => match crate::message::fault(&message, "each line carries") {
                    Some((_, text)) if crate::message::is_notification(&message) => {
                        tracing::debug!(error = %text, "a notification with faulty params was dropped");
                        continue;
                    }
                    // The handshake comes first: the library would answer
                    // another request before it with a message about
                    // per-request `_meta` fields, which is not what is wrong.
                    // Said here; the library goes on waiting for `initialize`.
                    // A notification or a response before the handshake
                    // (one the client sent early, or a stray one) is
                    // dropped, as JSON-RPC has a notification go unanswered:
                    // the library would end the session on it, and the
                    // `initialize` after it is served.
                    None if !in_lifecycle && (message.get("id").is_none() || message.get("method").is_none()) => {
                        tracing::debug!("a notification or response before `initialize` was dropped");
                        forwarding.store(true, std::sync::atomic::Ordering::SeqCst);
                        continue;
                    }
                    None => match (!initializing)
                        .then(|| crate::message::first_request_fault(&message))
                        .flatten()
                    {
                        Some(text) => Some((crate::message::answerable_id(&message), -32600, text)),
                        // A request under the id of one in flight: the
                        // library would answer one of the two only.
                        None => match asking.reused_id(&message) {
                            Some(text) => Some((crate::message::answerable_id(&message), -32600, text)),
                            None => {
                                // A call whose arguments' JSON holds a key twice or
                                // an integer past 64 bits is answered here with its
                                // tool error: the library would read them leniently.
                                // (One that names no tool the library answers
                                // itself, and runs nothing.)
                                let refused = arguments_fault
                                    .as_ref()
                                    .and_then(|f| refusing.refused_call(&message, f, inline_revision.as_ref()));
                                if let Some(result) = refused {
                                    forwarding.store(true, std::sync::atomic::Ordering::SeqCst);
                                    let _ = answers.send(result_line(&message, &result));
                                    continue;
                                }
                                initializing |= message.get("method").and_then(Value::as_str) == Some("initialize");
                                if !in_lifecycle && opens_lifecycle(&message) {
                                    in_lifecycle = true;
                                    inline_revision = inline_revision_of(&message);
                                }
                                asking.forwarded(&message);
                                None
                            }
                        },
                    },
                    fault => fault.map(|(code, text)| (crate::message::answerable_id(&message), code, text)),
                },
            };
            match fault {
                Some((id, code, text)) => {
                    // A message, if a faulty one: input that ends after it
                    // is a failed initialization, not one that never began.
                    forwarding.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = answers.send(crate::message::error_line(id, code, &text));
                }
                None => {
                    forwarding.store(true, std::sync::atomic::Ordering::SeqCst);
                    if to_library.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        }
        // End of input ends the library's input once the requests in flight
        // are answered (within a bound past the longest await); their
        // answers still drain.
        let _ = tokio::time::timeout(DRAIN_AT_END, asking.drained()).await;
        let _ = to_library.shutdown().await;
        drop(answers);
    });
    let served = async {
        let running = match server.serve((library_in, library_out)).await {
            Ok(running) => running,
            Err(_) if !forwarded.load(std::sync::atomic::Ordering::SeqCst) => return Ok(()),
            Err(e) => return Err(std::io::Error::other(format!("MCP initialization failed: {e}"))),
        };
        running
            .waiting()
            .await
            .map_err(|e| std::io::Error::other(format!("MCP service stopped: {e}")))?;
        Ok(())
    }
    .await;
    reader.abort();
    let _ = writer.await;
    served
}

/// The answer to request `message` with `result`, as one line of JSON, its
/// id as the library answers it (an integer written `2.0` is 2).
fn result_line(message: &Value, result: &ServerResult) -> String {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let id = match id.as_f64() {
        Some(f) if !id.is_i64() && !id.is_u64() && f.fract() == 0.0 => Value::from(f as i64),
        _ => id,
    };
    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// Whether `message`, passed to the protocol library during its handshake,
/// ends the handshake: an `initialize`, or a request (not `ping` nor
/// `discover`) whose `_meta` names a revision this server speaks and the
/// client's capabilities, which the library serves without one. Its other
/// requests are answered and the handshake goes on; a notification or a
/// response would end it with a failed initialization.
fn opens_lifecycle(message: &Value) -> bool {
    use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta};
    let Ok(ClientJsonRpcMessage::Request(request)) = serde_json::from_value::<ClientJsonRpcMessage>(message.clone())
    else {
        return false;
    };
    match request.request {
        ClientRequest::InitializeRequest(_) => true,
        ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => false,
        request => {
            let meta = request.get_meta();
            meta.missing_required_keys(&ProtocolVersion::V_2026_07_28).is_empty()
                && meta
                    .protocol_version()
                    .is_some_and(|v| protocol_versions().contains(&v))
        }
    }
}

/// The revision request `message`, which opens the lifecycle
/// ([`opens_lifecycle`]), has the session speak when it is no
/// `initialize`: the one its `_meta` names.
fn inline_revision_of(message: &Value) -> Option<ProtocolVersion> {
    use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta};
    let Ok(ClientJsonRpcMessage::Request(request)) = serde_json::from_value::<ClientJsonRpcMessage>(message.clone())
    else {
        return None;
    };
    match request.request {
        ClientRequest::InitializeRequest(_) => None,
        request => request.get_meta().protocol_version(),
    }
}

/// The longest line passed to the protocol library, its newline left out:
/// the library discards longer ones unanswered.
const MAX_LINE_BYTES: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;

/// Skip the rest of a line; `false` when the input ends (or fails) first.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(input: &mut R) -> bool {
    use tokio::io::AsyncBufReadExt;
    loop {
        let (end, n) = match input.fill_buf().await {
            Ok([]) | Err(_) => return false,
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            },
        };
        input.consume(n);
        if end {
            return true;
        }
    }
}

/// How long the end of stdio input waits for the requests in flight to be
/// answered: past the longest `process_await` (`MAX_AWAIT`) with room for
/// the request that follows it.
const DRAIN_AT_END: std::time::Duration = std::time::Duration::from_secs(90);

/// The requests passed to the protocol library and not answered yet: their
/// method, by their id's JSON.
#[derive(Default)]
struct InFlight {
    ids: std::sync::Mutex<std::collections::HashMap<String, String>>,
    changed: tokio::sync::Notify,
}

impl InFlight {
    fn ids(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The refusal of request `message` when its id is that of a request
    /// still in flight: the library would keep one of the two under that id
    /// and never answer the other. Said here; the first is answered as ever.
    fn reused_id(&self, message: &serde_json::Value) -> Option<String> {
        message.get("method")?;
        let id = message.get("id")?;
        let key = Self::key(id);
        let ids = self.ids();
        let method = ids.get(&key)?;
        Some(format!(
            "invalid request: id {key} is that of a `{method}` request still in flight; give each request \
             an id of its own (one no unanswered request holds)"
        ))
    }

    /// A message passed to the library: a request is in flight until its
    /// answer; a cancellation (`notifications/cancelled`), which the
    /// library answers with nothing, takes its request out.
    fn forwarded(&self, message: &serde_json::Value) {
        let Some(method) = message.get("method").and_then(serde_json::Value::as_str) else {
            return;
        };
        match message.get("id") {
            Some(id) => {
                self.ids().insert(Self::key(id), method.to_string());
            }
            None if method == "notifications/cancelled" => {
                if let Some(id) = message.pointer("/params/requestId") {
                    self.take(&Self::key(id));
                }
            }
            None => {}
        }
    }

    /// An id as the library reads it: a number written `2.0` or `2e0` is
    /// the integer 2, which its answer carries.
    fn key(id: &serde_json::Value) -> String {
        match id.as_f64() {
            Some(f) if id.is_number() && !id.is_i64() && !id.is_u64() && f.fract() == 0.0 => (f as i64).to_string(),
            _ => id.to_string(),
        }
    }

    fn take(&self, id: &str) {
        if self.ids().remove(id).is_some() {
            self.changed.notify_waiters();
        }
    }

    /// A line the library wrote: an answer takes its request out.
    fn answered(&self, line: &str) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        if message.get("method").is_some() || !(message.get("result").is_some() || message.get("error").is_some()) {
            return;
        }
        if let Some(id) = message.get("id") {
            self.take(&Self::key(id));
        }
    }

    /// Resolves once no request is in flight.
    async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            if self.ids().is_empty() {
                return;
            }
            changed.await;
        }
    }
}

/// How the streamable HTTP endpoint behaves.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Largest request body (the server's `--max-body-bytes`); larger bodies are 413.
    pub max_body_bytes: usize,
    /// Accept only loopback `Host` headers (DNS-rebinding protection for a
    /// server without tokens); a server with tokens accepts any host.
    pub loopback_hosts_only: bool,
    /// Cancelled at shutdown: open MCP requests end.
    pub shutdown: CancellationToken,
    /// The calls in flight, which the server's `notifications/cancelled`
    /// reach through [`CallsInFlight::cancel`] (the library drops them).
    pub calls: Arc<CallsInFlight>,
}

/// The streamable HTTP endpoint as a tower service.
pub type HttpService = StreamableHttpService<McpServer, NeverSessionManager>;

/// The streamable HTTP endpoint (mount it at `/mcp` behind the server's auth).
///
/// Stateless: no MCP session lives in the server, every POST stands alone and
/// is answered with one JSON body, so any node of a PostgreSQL deployment can
/// answer any request (see ADR 0011).
pub fn http_service(resolver: Arc<Resolver>, options: HttpOptions) -> HttpService {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_sse_retry(None)
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(options.shutdown);
    if !options.loopback_hosts_only {
        config = config.disable_allowed_hosts();
    }
    let mut server = McpServer::per_request(resolver).with_max_argument_bytes(options.max_body_bytes);
    server.calls = Some(options.calls);
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Answer, Cairn, ListArgs};
    use async_trait::async_trait;
    use cairn_core::{Outcome, StartRequest};
    use serde_json::json;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};

    /// A cairn whose one process `p` runs until the test lets its await end.
    #[derive(Default)]
    struct Stub {
        ends: tokio::sync::Notify,
    }

    fn unknown(id: &str) -> Answer {
        Err(Failure::new("unknown_process", format!("no process `{id}`")))
    }

    #[async_trait]
    impl Cairn for Stub {
        async fn start(&self, _: StartRequest) -> Answer {
            unknown("")
        }
        async fn get(&self, id: &str) -> Answer {
            unknown(id)
        }
        async fn list(&self, _: &ListArgs) -> Answer {
            Ok(json!({"processes": []}))
        }
        async fn events(&self, id: &str, _: u64, _: Option<usize>) -> Answer {
            unknown(id)
        }
        async fn await_terminal(&self, id: &str, _: Duration) -> Answer {
            self.ends.notified().await;
            Ok(json!({"id": id, "status": "completed"}))
        }
        async fn signal(&self, id: &str, _: &str, _: &str, _: Value) -> Answer {
            unknown(id)
        }
        async fn cancel(&self, id: &str, _: Option<String>) -> Answer {
            unknown(id)
        }
        async fn complete(&self, id: &str, _: Outcome, _: Option<String>) -> Answer {
            unknown(id)
        }
        async fn module_put(&self, _: String, _: Option<String>) -> Answer {
            unknown("")
        }
        async fn schedule_list(&self, _: Option<&str>, _: Option<usize>) -> Answer {
            Ok(json!({"schedules": []}))
        }
        async fn schedule_pause(&self, id: &str) -> Answer {
            unknown(id)
        }
        async fn schedule_resume(&self, id: &str) -> Answer {
            unknown(id)
        }
    }

    struct Session {
        input: DuplexStream,
        output: Lines<BufReader<DuplexStream>>,
    }

    impl Session {
        /// `serve_lines` over `cairn`, before any message.
        fn open(cairn: Arc<Stub>) -> Self {
            let (input, server_in) = tokio::io::duplex(1 << 16);
            let (server_out, output) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve_lines(McpServer::new(cairn), server_in, server_out));
            Self {
                input,
                output: BufReader::new(output).lines(),
            }
        }

        /// One opened with `initialize` asking for `revision`.
        async fn initialized(cairn: Arc<Stub>, revision: &str) -> Self {
            let mut session = Self::open(cairn);
            session
                .send(
                    json!({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
                    "protocolVersion": revision, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
                )
                .await;
            assert_eq!(session.next().await["result"]["protocolVersion"], revision);
            session
                .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await;
            session
        }

        async fn send(&mut self, message: Value) {
            self.send_line(&message.to_string()).await;
        }

        async fn send_line(&mut self, line: &str) {
            self.input
                .write_all(format!("{line}\n").as_bytes())
                .await
                .expect("write");
        }

        async fn next(&mut self) -> Value {
            let line = tokio::time::timeout(Duration::from_secs(10), self.output.next_line())
                .await
                .expect("answered in time")
                .expect("read")
                .expect("a line");
            serde_json::from_str(&line).expect("a JSON line")
        }
    }

    fn call(id: Value, tool: &str, arguments: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": arguments}})
    }

    /// A request under the id of one still in flight is refused (`-32600`,
    /// naming the id), and the one in flight is answered: the library would
    /// keep one of the two and never answer the other.
    #[tokio::test]
    async fn a_request_reusing_an_id_in_flight_is_refused_and_the_first_answered() {
        let cairn = Arc::new(Stub::default());
        let mut session = Session::initialized(cairn.clone(), "2025-06-18").await;
        session
            .send(call(json!(20), "process_await", json!({"id": "p", "timeout_ms": 4000})))
            .await;
        session
            .send(json!({"jsonrpc": "2.0", "id": 20, "method": "ping"}))
            .await;
        // The same id written as a float is the same id to the library.
        session
            .send(json!({"jsonrpc": "2.0", "id": 20.0, "method": "ping"}))
            .await;
        for _ in 0..2 {
            let refused = session.next().await;
            assert_eq!(refused["id"].as_f64(), Some(20.0), "{refused}");
            assert_eq!(refused["error"]["code"], -32600, "{refused}");
            let said = refused["error"]["message"].as_str().expect("message");
            assert!(said.contains("id 20") && said.contains("`tools/call`"), "{said}");
        }
        cairn.ends.notify_waiters();
        let answer = session.next().await;
        assert_eq!(answer["id"], 20, "{answer}");
        assert_eq!(answer["result"]["structuredContent"]["status"], "completed", "{answer}");
        // Answered, the id is free again.
        session
            .send(json!({"jsonrpc": "2.0", "id": 20, "method": "ping"}))
            .await;
        let pong = session.next().await;
        assert_eq!((&pong["id"], &pong["result"]), (&json!(20), &json!({})), "{pong}");
    }

    /// A call refused here for its arguments' JSON (a key given twice, an
    /// integer past 64 bits) has the shape of the negotiated revision, as a
    /// result the library answers has: no `resultType` before 2026-07-28.
    #[tokio::test]
    async fn a_refused_calls_result_has_the_sessions_shape() {
        let meta_2026 = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        });
        // Sessions `initialize` opened, and one a request naming 2026-07-28
        // opened (every request naming it, as that revision has it).
        for (revision, meta, result_type) in [
            ("2025-06-18", None, None),
            ("2025-11-25", None, None),
            ("2026-07-28", Some(&meta_2026), Some("complete")),
        ] {
            let cairn = Arc::new(Stub::default());
            let mut session = match meta {
                None => Session::initialized(cairn, revision).await,
                Some(_) => Session::open(cairn),
            };
            let meta = meta.map(|m| format!(r#","_meta":{m}"#)).unwrap_or_default();
            // The library's own answer to a call cairn refuses.
            let mut asked = call(json!(0), "process_get", json!({"id": "a"}));
            if let Some(m) = meta.strip_prefix(r#","_meta":"#) {
                asked["params"]["_meta"] = serde_json::from_str(m).expect("meta");
            }
            session.send(asked).await;
            let own = session.next().await;
            assert_eq!(own["result"]["isError"], true, "{revision}: {own}");
            assert_eq!(
                own["result"].get("resultType").and_then(Value::as_str),
                result_type,
                "{revision}: {own}"
            );
            for line in [
                format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"process_get","arguments":{{"id":"a","id":"b"}}{meta}}}}}"#
                ),
                format!(
                    r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"process_await","arguments":{{"id":"a","timeout_ms":18446744073709551616}}{meta}}}}}"#
                ),
            ] {
                session.send_line(&line).await;
                let answer = session.next().await;
                assert_eq!(answer["result"]["isError"], true, "{revision} {line}: {answer}");
                let text = answer["result"]["content"][0]["text"].as_str().expect("text");
                assert!(text.contains("invalid_request"), "{text}");
                assert_eq!(
                    answer["result"].get("resultType").and_then(Value::as_str),
                    result_type,
                    "{revision} {line}: {answer}"
                );
            }
        }
    }
}
