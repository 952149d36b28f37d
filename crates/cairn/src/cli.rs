//! The command line: `cairn serve` and the client subcommands.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration::parse_duration;

/// cairn: a durable process runtime for AI agent hosts.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    /// Server base URL (client commands).
    #[arg(long, global = true, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// Bearer token. For `serve` it is the host token the server requires; for
    /// client commands it is the token presented (a host or a session token).
    #[arg(long, global = true, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print raw JSON answers instead of tables (client commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (with a worker) over a storage backend.
    Serve(ServeArgs),
    /// Start a process from a raw start request (JSON argument, or stdin when absent or `-`).
    Start {
        /// The start request JSON (SPEC §12).
        body: Option<String>,
    },
    /// Run a shell command as an owner-bound process and print its output.
    Run(RunArgs),
    /// List processes.
    Ls(LsArgs),
    /// Show one process.
    Get {
        /// Process id.
        id: String,
    },
    /// Show a process's events.
    Events {
        /// Process id.
        id: String,
        /// Only events after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep streaming live events until the process ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Wait for a process to end and print its record (exit code 3 when it is still running at the timeout).
    Await {
        /// Process id.
        id: String,
        /// How long to wait (e.g. 30s, 5m; at most what the server allows).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Send a signal to a process.
    Signal {
        /// Process id.
        id: String,
        /// Signal name (ASCII letters, digits, `_`, `-`).
        name: String,
        /// Signal id (idempotency key); generated when absent.
        #[arg(long = "id")]
        signal_id: Option<String>,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        payload: String,
    },
    /// Request cancellation of a process.
    Cancel {
        /// Process id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Record an abandon request (reconciled once the process's lease lapses).
    Abandon {
        /// Process id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who asks (defaults to the caller's identity).
        #[arg(long)]
        requested_by: Option<String>,
    },
    /// Delete terminal processes older than a cutoff (leaves tombstones).
    Prune(PruneArgs),
    /// List a session's pending wakes.
    Wakes {
        /// Session id.
        session: String,
    },
    /// Acknowledge a wake.
    Ack {
        /// Session id.
        session: String,
        /// Wake id.
        wake_id: String,
    },
    /// Serve MCP (Model Context Protocol) on stdin/stdout: every tool call is
    /// forwarded to the server with `--server` and `--token`.
    Mcp,
    /// Measure throughput, latency, scale and memory over real backends, each
    /// figure beside the storage limit it is held against (see docs/BENCHMARKS.md).
    Bench(BenchArgs),
    /// Internal: the second OS process of `cairn bench`.
    #[command(hide = true)]
    BenchChild(BenchChildArgs),
}

/// `cairn serve` settings. The host token is the global `--token`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database URL: `memory`, `sqlite:PATH` or `postgres://USER@HOST:PORT/DB[?schema=NAME]`
    /// (PostgreSQL also takes `write_lanes=N`, `read_connections=N` and `max_batch=N`).
    #[arg(long, env = "CAIRN_DATABASE_URL", default_value = "sqlite:cairn.db")]
    pub db: String,
    /// Address to listen on (`HOST:PORT`; port 0 picks a free port). The bound
    /// address is printed on stdout as `listening on http://ADDR`.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Most processes the worker runs at once.
    #[arg(long, env = "CAIRN_WORKERS", default_value_t = 64)]
    pub workers: usize,
    /// Lease time-to-live (e.g. 30s or 30000).
    #[arg(long, env = "CAIRN_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// A session token, `SESSION=TOKEN` (repeatable): it sees only processes granted to SESSION.
    #[arg(long = "session-token", value_name = "SESSION=TOKEN", value_parser = parse_session_token)]
    pub session_tokens: Vec<(String, String)>,
    /// Enable the `shell` tool.
    #[arg(long)]
    pub allow_shell: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest `await` a request may ask for.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_await: Duration,
    /// How long shutdown waits for open connections before draining the worker anyway.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// `cairn run` settings.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Process id (generated when absent).
    #[arg(long)]
    pub id: Option<String>,
    /// Print the id and return at once instead of following the output.
    #[arg(long, short)]
    pub detach: bool,
    /// Kill the command after this long (passed to the shell tool).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Working directory of the command.
    #[arg(long)]
    pub cwd: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    pub argv: Vec<String>,
}

/// `cairn ls` filters.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// running (default), completed, failed, cancelled, abandoned or any.
    #[arg(long)]
    pub status: Option<String>,
    /// Only processes granted to this session.
    #[arg(long)]
    pub granted_to: Option<String>,
    /// Only processes this session started.
    #[arg(long)]
    pub originated_by: Option<String>,
    /// Only waiting (true) or not waiting (false) processes.
    #[arg(long)]
    pub waiting: Option<bool>,
    /// Definition (`tool:NAME`, `script:MODULE#NAME`, `session_turn`, `external`).
    #[arg(long)]
    pub definition: Option<String>,
    /// Originator scope id (`host`, `session:ID`, ...).
    #[arg(long)]
    pub originator: Option<String>,
    /// Only ids after this one (pagination).
    #[arg(long)]
    pub after_id: Option<String>,
    /// Page size.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `cairn prune` settings.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Prune processes that ended longer ago than this (e.g. 7d, 12h).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Duration,
    /// Which terminal statuses (any, completed, failed, cancelled, abandoned).
    #[arg(long, default_value = "any")]
    pub status: String,
    /// Change-feed cursor a projector has read up to; without it, prune by cutoff alone.
    #[arg(long)]
    pub watermark: Option<u64>,
}

/// Parse `SESSION=TOKEN`.
pub fn parse_session_token(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((session, token)) if !session.is_empty() && !token.is_empty() => {
            Ok((session.to_string(), token.to_string()))
        }
        _ => Err("expected SESSION=TOKEN with both parts non-empty".to_string()),
    }
}

/// `cairn bench` settings. The defaults finish every scenario on SQLite in well
/// under ten minutes on a 2-core machine.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A scenario to run (repeatable; default all): throughput, await, signal, append, memory, suspended, scale.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// A database URL (repeatable): `memory`, `sqlite` (a fresh file in a temporary
    /// directory), `sqlite:PATH` or `postgres://...`. Default: `sqlite`, plus
    /// `$CAIRN_BENCH_POSTGRES_URL` when set. Giving `--db` replaces the default.
    #[arg(long = "db", value_name = "URL")]
    pub dbs: Vec<String>,
    /// Measured runs per figure; figures are medians with min..max over them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Warm-up runs per scenario, excluded from every figure.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Seed of every random choice (ids picked, payloads, start order, delays).
    #[arg(long, default_value_t = crate::bench::DEFAULT_SEED)]
    pub seed: u64,
    /// throughput: `echo` processes per run (warm-ups use at most 1,000).
    #[arg(long, default_value_t = 5_000)]
    pub n: usize,
    /// throughput: worker counts W to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 3])]
    pub workers: Vec<usize>,
    /// await, signal, scale: latency samples per run.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// scale: terminal rows beside the live ones (the full size is 1000000; the
    /// default fits a default run into ten minutes, see docs/BENCHMARKS.md).
    #[arg(long, default_value_t = crate::bench::DEFAULT_SCALE_ROWS)]
    pub scale_rows: usize,
    /// scale: live (running) processes of the listed session.
    #[arg(long, default_value_t = 100)]
    pub scale_live: usize,
    /// append: events per run of each variant (1 appender; 64 appenders share them).
    #[arg(long, default_value_t = 6_400)]
    pub events: usize,
    /// memory: waiting processes per run (the figure is scaled to 10,000; the
    /// default fits a default run into ten minutes, see docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 5_000)]
    pub memory_processes: usize,
    /// suspended: rerunnable `wait_signal` processes suspended per run (SPEC
    /// §13 holds 100,000 on one node to its figures).
    #[arg(long, default_value_t = 100_000)]
    pub suspended_processes: usize,
    /// suspended: seconds of idle over which the server's CPU is measured.
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
}

/// `cairn bench-child`: what the second OS process does. Its database URL comes
/// from the environment (`CAIRN_BENCH_CHILD_DB`), never the command line.
#[derive(Debug, Clone, Args)]
pub struct BenchChildArgs {
    /// The role.
    #[command(subcommand)]
    pub role: BenchChildRole,
}

/// The roles of `cairn bench-child`.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchChildRole {
    /// Await processes named on stdin (`await ID`) and report when each resolved.
    Await,
    /// Start waiting processes and report the resident memory they cost.
    Memory {
        /// How many `wait_signal` processes.
        #[arg(long)]
        processes: usize,
        /// Their id prefix.
        #[arg(long)]
        prefix: String,
    },
    /// Suspend rerunnable `wait_signal` processes and report what they cost
    /// idle, and how fast a signal has one running again.
    Suspended {
        /// How many `wait_signal` processes.
        #[arg(long)]
        processes: usize,
        /// Their id prefix.
        #[arg(long)]
        prefix: String,
        /// Seconds of idle to measure CPU over.
        #[arg(long)]
        idle_seconds: u64,
        /// Signals to random suspended processes (latency samples).
        #[arg(long)]
        samples: usize,
    },
}
