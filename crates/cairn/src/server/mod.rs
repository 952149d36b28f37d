//! `cairn serve`: the HTTP/JSON server of SPEC §10 over [`cairn_core::Processes`].

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use cairn_core::{Processes, WorkerConfig};
use cairn_dashboard::{ChangeNotice, Dashboard};
use cairn_tools::builtin_tools;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::db;

pub mod api;
pub mod auth;
pub mod conn;
pub mod mcp;
pub mod metrics;
pub mod modules;
pub mod openapi;
pub mod routes;
pub mod schedules;
pub mod sse;
pub mod ui;

use auth::Auth;
use metrics::{Metrics, TerminalCounter};

/// Shortest `--lease-ttl` a server takes (its worker renews every third of
/// the ttl, a durable write each time). At 100 ms a burst of thirty runs on
/// one healthy node saw claims lapse before their runs began, owner-bound
/// runs abandoned and rerunnable ones run twice; at 1 s the same burst ran
/// each once.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// The longest lease `--lease-ttl` takes: a rerunnable process a crashed
/// node held is claimed again only once its lease lapses, and a day is past
/// any renewal period worth having.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Shortest `--send-timeout` a server takes: a client on a busy link may
/// take nothing for a moment and still be reading.
pub const MIN_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Request limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest await a request may ask for.
    pub max_await: Duration,
    /// Longest a request's body may take to arrive after its headers.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_await: Duration::from_secs(300),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The host API.
    pub processes: Processes,
    /// The configured tokens.
    pub auth: Auth,
    /// Counters and histograms behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Cancelled at shutdown so long waits and streams end and connections drain.
    pub shutdown: CancellationToken,
    /// Cancelled once the connections have drained (or the grace passed): the
    /// MCP endpoint's own, so a call in flight at shutdown answers as its
    /// route does (an await ends with the running record) instead of with a
    /// 500 from the protocol library, whatever its write did.
    pub mcp_shutdown: CancellationToken,
    /// The names of the tools this server runs (what `/openapi.json` offers).
    pub tools: Vec<String>,
    /// The sessions storing a module now: one at a time each.
    pub module_puts: modules::PutsInFlight,
}

/// The full router over `state`, with the dashboard's pages at `/ui`.
pub fn router(state: Arc<AppState>, dashboard: &Dashboard) -> Router {
    // The MCP calls in flight, which a client's cancel (its own POST) ends.
    let mcp_calls = Arc::new(cairn_mcp::CallsInFlight::default());
    let api = Router::new()
        .route("/v1/processes", post(routes::start).get(routes::list))
        .route("/v1/processes/{id}", get(routes::get))
        .route("/v1/processes/{id}/events", get(routes::events).post(routes::append))
        .route("/v1/processes/{id}/await", get(routes::await_terminal))
        .route("/v1/processes/{id}/signals/{name}", post(routes::signal))
        .route("/v1/processes/{id}/cancel", post(routes::cancel))
        .route("/v1/processes/{id}/complete", post(routes::complete))
        .route("/v1/processes/{id}/abandon-request", post(routes::abandon_request))
        .route("/v1/modules", post(modules::put).get(modules::list))
        .route("/v1/modules/{module_ref}", get(modules::get))
        .route("/v1/grants/transfer", post(routes::transfer))
        .route("/v1/sessions/{session_id}", delete(routes::delete_session))
        .route("/v1/sessions/{session_id}/cancel", post(routes::cancel_session))
        .route("/v1/sessions/{session_id}/wakes", get(routes::wakes))
        .route("/v1/sessions/{session_id}/wakes/{wake_id}/ack", post(routes::ack_wake))
        .route("/v1/schedules", post(schedules::create).get(schedules::list))
        .route("/v1/schedules/{id}", get(schedules::get).delete(schedules::delete))
        .route("/v1/schedules/{id}/pause", post(schedules::pause))
        .route("/v1/schedules/{id}/resume", post(schedules::resume))
        .route("/v1/prune", post(routes::prune))
        .route("/v1/changes", get(routes::changes))
        .route("/metrics", get(routes::metrics))
        .merge(
            Router::new()
                .route_service("/mcp", mcp::service(&state, mcp_calls.clone()))
                .layer(axum::middleware::from_fn({
                    let limit = state.limits.max_body_bytes;
                    move |req, next| mcp::jsonrpc_errors(limit, mcp_calls.clone(), req, next)
                })),
        )
        .route_layer(axum::middleware::from_fn(api::refuse_unread_query))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route_layer(axum::middleware::from_fn(api::refuse_cross_site));
    // Health and the API description need no token: they reveal nothing about processes.
    let open = Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/openapi.json", get(openapi::document));
    // The dashboard authenticates its own visitors (a login cookie, not a
    // bearer header) through the same tokens and visibility rule: `ui::UiAccess`.
    api.merge(open)
        .merge(dashboard.router())
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::refuse_slow_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::refuse_oversized,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::refuse_foreign_hosts,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn(api::close_unread_bodies))
        .with_state(state)
}

/// The queue of connections the kernel keeps for the accept loop (what
/// `tokio::net::TcpListener::bind` asks for).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr` with the options `tokio::net::TcpListener::bind`
/// sets (`SO_REUSEADDR` on Unix, so a restart is not refused for the last
/// run's connections in `TIME_WAIT`), not yet listening: an address in use
/// is refused now, and until [`tokio::net::TcpSocket::listen`] a client
/// connecting is refused by the kernel, not queued unanswered.
fn bind_unlistened(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// How long a bind refused because the address is in use is tried again.
/// A server SIGKILLed a moment ago can leave behind, for some milliseconds
/// on a loaded machine, a child it forked for a shell command that has not
/// reached its `exec` and still holds the listening socket (close-on-exec
/// acts only at the exec): a supervisor restarting at once should not be
/// refused for it. A port another server holds is refused after this.
const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// [`bind_unlistened`], tried again every 50 ms for [`BIND_RETRY_FOR`]
/// while the address is in use.
async fn bind_waiting_out_a_moment(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let until = std::time::Instant::now() + BIND_RETRY_FOR;
    loop {
        match bind_unlistened(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            bound => return bound,
        }
    }
}

/// Why `cairn serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad settings (refused before anything started).
    #[error("{0}")]
    Config(String),
    /// The database could not be opened (with how to create a PostgreSQL
    /// database that does not exist).
    #[error("{}", db_open_message(.0))]
    Db(#[from] db::OpenError),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// Another runtime took this server's node id while it ran (ADR 0027):
    /// the server stopped, as it may no longer claim the id's work.
    #[error(
        "node id `{0}` was taken by another runtime while this server ran; this server stopped so that \
         only one live runtime runs under the id"
    )]
    NodeLost(String),
    /// Another live runtime holds the node id (`--node-id`).
    #[error("{0}")]
    NodeHeld(String),
    /// The `--listen` host name did not resolve.
    #[error("{0}")]
    Lookup(String),
}

/// Why the node id could not be held: another live runtime holds it
/// (answered with the flag that picks another), or taking it failed (a
/// connection lost, a lock file that cannot be made), no matter of node ids.
fn hold_refused(node_id: &str, e: cairn_core::CairnError) -> ServeError {
    match e {
        // Both backends' words for a held id (`node id `X` is in use ...`).
        cairn_core::CairnError::Unavailable(m) if m.contains(&format!("node id `{node_id}` is in use")) => {
            ServeError::NodeHeld(format!("{m} (--node-id NAME)"))
        }
        other => ServeError::NodeHeld(format!("could not take node id `{node_id}`: {other}")),
    }
}

/// What [`ServeError::Db`] says: the backend's words, and for a PostgreSQL
/// database that does not exist (SQLSTATE 3D000) how to create it.
fn db_open_message(e: &db::OpenError) -> String {
    let said = e.to_string();
    let db::OpenError::Open { url, source } = e else {
        return said;
    };
    let missing = db::is_postgres(url) && source.to_string().contains("(3D000)");
    // The database's name: the URL's path, before its parameters.
    let name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(_, name)| name)
        .filter(|name| !name.is_empty());
    match (missing, name) {
        (true, Some(name)) => {
            // SQL folds an unquoted name to lower case.
            let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let sql = if plain {
                name.to_string()
            } else {
                format!("\"{}\"", name.replace('"', "\"\""))
            };
            format!("{said}; create it first: `createdb {name}`, or `CREATE DATABASE {sql};` in psql")
        }
        _ => said,
    }
}

impl ServeError {
    /// The exit code `cairn serve` ends with: 2 for bad settings (a flag's
    /// value, a database URL this binary does not understand), as for any
    /// command's bad input; 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::Db(db::OpenError::Unsupported(_) | db::OpenError::RootedName(..) | db::OpenError::NotAPath(_)) => 2,
            // A URL the backend refused before opening anything (a bad
            // parameter, TLS asked for) is a bad setting too.
            Self::Db(db::OpenError::Open {
                source: cairn_core::CairnError::InvalidRequest(_),
                ..
            }) => 2,
            _ => 1,
        }
    }
}

/// The node id a server takes without `--node-id`: the host name, with any
/// character a node id may not hold replaced by `-` (and `localhost` when the
/// host has no usable name).
pub fn default_node_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(cairn_core::MAX_NODE_ID_BYTES)
        .collect();
    if id.is_empty() {
        id = "localhost".into();
    }
    id
}

/// The session tokens `CAIRN_SESSION_TOKENS` gives (`SESSION=TOKEN` pairs
/// separated by whitespace), for a server given no `--session-token`: an
/// environment variable is the owner's alone, where flags show in `ps`.
/// A refusal never quotes a token.
fn session_tokens_from_env(raw: Option<std::ffi::OsString>) -> Result<Vec<(String, String)>, ServeError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let raw = raw
        .into_string()
        .map_err(|_| ServeError::Config("CAIRN_SESSION_TOKENS is not UTF-8".into()))?;
    raw.split_whitespace()
        .enumerate()
        .map(|(i, pair)| {
            crate::cli::parse_session_token(pair).map_err(|e| {
                let e = match pair.split_once('=') {
                    Some((_, token)) if !token.is_empty() => e.replace(token, "***"),
                    _ => e,
                };
                ServeError::Config(format!("CAIRN_SESSION_TOKENS, pair {}: {e}", i + 1))
            })
        })
        .collect()
}

/// Run the server until SIGINT or SIGTERM, then stop accepting, let open
/// requests finish (bounded by `--shutdown-grace`), drain the worker per
/// disposition and return.
pub async fn serve(mut args: ServeArgs) -> Result<(), ServeError> {
    if args.session_tokens.is_empty() {
        args.session_tokens = session_tokens_from_env(std::env::var_os("CAIRN_SESSION_TOKENS"))?;
    }
    let auth = Auth::new(args.token.clone(), &args.session_tokens);
    // HOST:PORT, both there: `localhost` or `:7070` is the flag's fault,
    // said as such, not a failed lookup.
    let shape = "expected HOST:PORT, e.g. 127.0.0.1:7070 or [::1]:7070";
    match args.listen.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.is_empty() => {}
        _ => return Err(ServeError::Config(format!("--listen `{}`: {shape}", args.listen))),
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&args.listen)
        .await
        .map_err(|e| {
            let said = format!("cannot resolve --listen `{}`: {e} ({shape})", args.listen);
            // A malformed address is the flag's fault; a name that did not
            // resolve (now) is the network's.
            if e.kind() == std::io::ErrorKind::InvalidInput {
                ServeError::Config(said)
            } else {
                ServeError::Lookup(said)
            }
        })?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| ServeError::Config(format!("--listen `{}` resolves to no address", args.listen)))?;
    auth.check_tokens().map_err(ServeError::Config)?;
    for token in auth.short_tokens() {
        tracing::warn!(
            "{token} is shorter than {} characters: nothing slows guesses at a token, so its length is its \
             strength; use a random one (`openssl rand -hex 16`)",
            auth::MIN_TOKEN_CHARS
        );
    }
    for a in &addrs {
        auth.check_bind(a).map_err(ServeError::Config)?;
    }
    if !auth.is_open() && !auth.has_host_token() {
        tracing::warn!("session tokens configured without --token: no caller has host access");
    }
    if args.workers == 0 {
        return Err(ServeError::Config("--workers must be at least 1".into()));
    }
    if args.lease_ttl < MIN_LEASE_TTL {
        return Err(ServeError::Config(format!(
            "--lease-ttl must be at least {MIN_LEASE_TTL:?}: the worker renews a lease every third of it, \
             and a shorter lease lapses under a burst of runs before its renewal is written"
        )));
    }
    if args.lease_ttl > MAX_LEASE_TTL {
        return Err(ServeError::Config(
            "--lease-ttl must be at most 24h: work a crashed node held waits that long to run again".into(),
        ));
    }
    if args.max_connections == 0 {
        return Err(ServeError::Config(
            "--max-connections must be at least 1: with none, every request is refused".into(),
        ));
    }
    if args.send_timeout < MIN_SEND_TIMEOUT {
        return Err(ServeError::Config(format!(
            "--send-timeout must be at least {MIN_SEND_TIMEOUT:?}: a shorter bound closes connections \
             whose clients are only slow to read"
        )));
    }
    if args.max_body_bytes == 0 {
        return Err(ServeError::Config(
            "--max-body-bytes must be at least 1: with 0, every request with a body is refused".into(),
        ));
    }
    let node_id = match &args.node_id {
        Some(n) => n.clone(),
        None => default_node_id(),
    };
    cairn_core::NodeIdentity::validate_node_id(&node_id).map_err(|e| ServeError::Config(format!("--node-id: {e}")))?;
    // Every check that can fail comes before the database is opened: a
    // start refused for a flag, a model or a port in use changes nothing (a
    // new SQLite file is not made, an older schema is not migrated, so the
    // binary that wrote it can still open it).
    db::check_url(&args.db)?;
    let mut tools = builtin_tools(args.allow_shell);
    if args.allow_shell {
        // Nor the variables model keys are read from, beside `CAIRN_*`.
        tools.register(Arc::new(cairn_tools::ShellTool {
            hidden_env: args.models.iter().filter_map(|m| m.key_env.clone()).collect(),
            ..Default::default()
        }));
    }
    let models = cairn_turn::Models::new(args.models.clone()).map_err(|e| ServeError::Config(e.to_string()))?;
    for name in models.keys_too_short_to_redact() {
        tracing::warn!(
            model = name,
            "the key of model `{name}` is under {} bytes: it is sent, but not redacted from what the endpoint answers",
            cairn_turn::SHORTEST_REDACTED_KEY
        );
    }
    let turns = cairn_turn::TurnRunner::new(models, tools.clone());
    tools.register_runner("session_turn", Arc::new(turns));
    let tool_names = tools.names();
    let limits = cairn_script::Limits {
        heap_bytes: args.script_heap_bytes,
        cpu: args.script_cpu,
        max_calls: args.script_max_calls,
        max_journal_bytes: args.script_max_journal_bytes,
    };
    let engine = limits
        .check()
        .map(|()| cairn_script::QuickJs::new(limits))
        .map_err(|e| {
            ServeError::Config(format!(
                "{e} (--script-heap-bytes, --script-cpu, --script-max-calls, --script-max-journal-bytes)"
            ))
        })?;
    // Before the address is printed: a server that says it listens holds
    // the open-file limit it will run with. Bound before the database is
    // opened (a port taken leaves it untouched) and so before the worker
    // starts: a port taken must not leave work claimed by a server that
    // then exits without draining it. Listened on only once the database is
    // open: until then a client is refused at once (`ECONNREFUSED`) instead
    // of waiting, unanswered, through a wait for another process's lock on
    // the file or a long migration.
    let max_connections = conn::fit_to_open_files(args.max_connections);
    let listen_failed = |source| ServeError::Listen {
        addr: args.listen.clone(),
        source,
    };
    let socket = bind_waiting_out_a_moment(addr).await.map_err(listen_failed)?;
    let backend = db::open_backend(&args.db).await?;
    // Held until this function returns (after the worker drained), or until
    // the process dies: a second server under this node id is refused.
    // Another server holding the id is answered with the flag that picks
    // another; a lock file that cannot be made (its directory's owner, say)
    // is no matter of node ids.
    let node_hold = backend
        .hold_node(&node_id)
        .await
        .map_err(|e| hold_refused(&node_id, e))?;
    // Before the worker starts, as the bind above. Only another socket bound
    // to the same address and not yet listening (a second server starting
    // at the same moment) lets the bind pass and fails this.
    let listener = socket.listen(LISTEN_BACKLOG).map_err(listen_failed)?;
    let backend_kind = args.db.split(':').next().unwrap_or("unknown");
    let metrics = Arc::new(Metrics::new(match backend_kind {
        "postgres" | "postgresql" => "postgres",
        other => other,
    }));
    let worker = WorkerConfig {
        lease_ttl: args.lease_ttl,
        concurrency: args.workers,
        batch_size: args.workers.min(WorkerConfig::default().batch_size),
        node_id: Some(node_id.clone()),
        ..WorkerConfig::default()
    };
    // The dashboard's list follows the hub, and the one sink takes terminal
    // events only: a write that does not end its process reads nothing back.
    let notice = ChangeNotice::from_hub(&backend.hub);
    let processes = Processes::builder(backend.registry)
        .hub(backend.hub)
        // The registry's clock: on PostgreSQL, the server's (ADR 0035).
        .clock(backend.clock)
        .tools(tools)
        .script_engine(Arc::new(engine))
        .worker_config(worker)
        .end_sink(Arc::new(TerminalCounter(metrics.clone())))
        .start();
    let shutdown = CancellationToken::new();
    let dashboard = Dashboard::new(
        processes.clone(),
        Arc::new(ui::UiAccess::new(auth.clone(), processes.clone())),
        notice,
        shutdown.clone(),
    );
    let state = Arc::new(AppState {
        processes: processes.clone(),
        auth,
        metrics,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_await: args.max_await,
            body_timeout: args.body_timeout,
        },
        shutdown: shutdown.clone(),
        mcp_shutdown: CancellationToken::new(),
        tools: tool_names,
        module_puts: Default::default(),
    });
    let local = listener.local_addr()?;
    // Listened for before the server says it listens: a SIGTERM sent as soon
    // as it does must be heard, not meet the default action (death, with
    // no drain).
    let mut signals = Signals::install();
    // Printed on stdout (logs go to stderr) so scripts and tests can find a port-0 server.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{local}");
        let _ = writeln!(out, "dashboard at http://{local}/ui");
        let _ = out.flush();
    }
    // Which tokens guard it, never the tokens: an open server says so.
    let auth_mode = match (args.token.is_some(), args.session_tokens.len()) {
        (false, 0) => "open".to_string(),
        (true, 0) => "host token".to_string(),
        (host, n) => format!("{}{n} session token(s)", if host { "host token, " } else { "" }),
    };
    tracing::info!(%local, db = %cairn_postgres::redact(&args.db), allow_shell = args.allow_shell, auth = %auth_mode, "cairn serving");

    let app = router(state.clone(), &dashboard);
    let connections = conn::Connections::new(max_connections, state.metrics.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(args.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let superseding = processes.clone();
    let mut node_lost = false;
    {
        let mut stop = std::pin::pin!(signals.next());
        // Another runtime took this server's node id: its hold was lost, or a
        // newer incarnation of the id registered (the worker stopped claiming).
        let mut lost = std::pin::pin!(node_hold.lost());
        let mut superseded = std::pin::pin!(superseding.superseded());
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait for some to free up.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
                () = &mut lost => {
                    node_lost = true;
                    break;
                }
                () = &mut superseded => {
                    node_lost = true;
                    break;
                }
            };
            let Some(permit) = connections.try_open() else {
                tokio::spawn(conn::refuse_busy(stream));
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let io = hyper_util::rt::TokioIo::new(conn::Lingering::new(stream, peer, args.send_timeout));
            let conn = graceful.watch(http.serve_connection(io, service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
    }
    tracing::info!("shutting down: no new connections or work; ending waits and streams");
    drop(listener);
    // Work claimed during the grace would only be stopped by the drain after
    // it (an owner-bound process abandoned without having run): it stays
    // queued for the next start or a peer instead. Runs in flight go on.
    processes.stop_claiming();
    shutdown.cancel();
    // A second SIGINT or SIGTERM ends the grace at once, as an operator
    // pressing Ctrl-C again expects.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(args.shutdown_grace) => {
            tracing::warn!("open connections outlived the shutdown grace; closing them");
        }
        () = signals.next() => {
            tracing::warn!("a second signal: closing open connections now");
        }
    }
    state.mcp_shutdown.cancel();
    processes.shutdown().await;
    if node_lost {
        return Err(ServeError::NodeLost(node_id));
    }
    tracing::info!("worker drained; bye");
    Ok(())
}

/// SIGINT and SIGTERM, heard from the moment this is made (the handlers
/// are in place then, not at the first wait).
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            Self {
                int: listen(SignalKind::interrupt(), "SIGINT"),
                term: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            let Self { int, term } = self;
            tokio::select! {
                () = one(int) => {}
                () = one(term) => {}
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PostgreSQL database that does not exist is said with how to create
    /// it; other failures to open are said as they are.
    #[test]
    fn a_missing_postgres_database_says_how_to_create_it() {
        let open = |url: &str, said: &str| {
            ServeError::Db(db::OpenError::Open {
                url: url.into(),
                source: cairn_core::CairnError::storage(said),
            })
            .to_string()
        };
        let missing = |name: &str| format!("postgres: database \"{name}\" does not exist (3D000)");
        assert_eq!(
            open("postgres://me@db:5432/cairn?schema=s", &missing("cairn")),
            "cannot open `postgres://me@db:5432/cairn?schema=s`: storage error: postgres: database \"cairn\" \
             does not exist (3D000); create it first: `createdb cairn`, or `CREATE DATABASE cairn;` in psql"
        );
        assert!(open("postgres://me@db/Cairn", &missing("Cairn")).ends_with("`CREATE DATABASE \"Cairn\";` in psql"));
        let refused = open(
            "postgres://me@db/cairn",
            "postgres: password authentication failed (28P01)",
        );
        assert!(!refused.contains("create it"), "{refused}");
    }

    /// A node id another runtime holds is answered with the flag that picks
    /// another; a failure to take it (a connection lost) is said as such.
    #[tokio::test]
    async fn a_held_node_id_is_told_from_a_failure_to_take_it() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite:{}", dir.path().join("c.db").display());
        let backend = db::open_backend(&url).await.expect("open");
        let _held = backend.hold_node("n1").await.expect("held");
        let Err(again) = backend.hold_node("n1").await else {
            panic!("the id is in use")
        };
        let said = hold_refused("n1", again).to_string();
        assert!(
            said.contains("node id `n1` is in use") && said.ends_with("(--node-id NAME)"),
            "{said}"
        );
        let lost = cairn_core::CairnError::Unavailable("postgres: connection closed".into());
        let said = hold_refused("n1", lost).to_string();
        assert!(said.starts_with("could not take node id `n1`: "), "{said}");
        assert!(
            said.contains("connection closed") && !said.contains("--node-id"),
            "{said}"
        );
    }

    #[test]
    fn session_tokens_from_the_environment_are_pairs_split_by_whitespace() {
        let tokens = session_tokens_from_env(Some(" s1=a\n\ts2=b=c ".into())).expect("two pairs");
        assert_eq!(
            tokens,
            [
                ("s1".to_string(), "a".to_string()),
                ("s2".to_string(), "b=c".to_string())
            ]
        );
        assert!(session_tokens_from_env(None).expect("none").is_empty());
        // A refusal names the pair, never its token.
        let said = session_tokens_from_env(Some("s1=a s/frame:x=SECRET".into()))
            .expect_err("a frame is no session")
            .to_string();
        assert!(said.contains("pair 2"), "{said}");
        assert!(!said.contains("SECRET"), "{said}");
        let said = session_tokens_from_env(Some("lonely".into()))
            .expect_err("no token")
            .to_string();
        assert!(said.contains("expected SESSION=TOKEN"), "{said}");
        // A list written with commas or semicolons is refused, not read as
        // one session whose token ends in the next pair.
        for list in ["alice=ta, bob=tb", "alice=ta;bob=tb", "a=t1,b=t2"] {
            let said = session_tokens_from_env(Some(list.into()))
                .expect_err("a list with the wrong separator")
                .to_string();
            assert!(said.contains("separate SESSION=TOKEN pairs with spaces"), "{said}");
            let token = list.split_once('=').expect("a pair").1;
            assert!(!said.contains(token), "{said}");
        }
    }
}
