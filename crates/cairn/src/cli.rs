//! The command line: `cairn serve` and the client subcommands.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration::{parse_duration, parse_duration_with_unit};

/// cairn: a durable process runtime for AI agent hosts.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    // Usage lines name the program `cairn`, whatever its file is called.
    bin_name = "cairn",
    version,
    about,
    after_help = "Examples:\n  \
        cairn serve --allow-shell                 # a server on ./cairn.db at 127.0.0.1:7070\n  \
        cairn run -- make test                    # run a command as a process, print its output\n  \
        cairn ls --status any                     # newest first\n  \
        cairn await build-42 --timeout 10m        # exit 3 if still running at the timeout\n\n\
        Client commands take --server, --token and --json anywhere after `cairn`\n\
        (`cairn --json schedule ls`, `cairn schedule ls --json`).\n\
        Exit codes: 0 ok; 1 the server answered an error or could not be reached, or the output\n\
        could not be written; 2 bad input (the command line, or a request the server refused as\n\
        invalid: HTTP 400/413/415); 3 `await` timed out with the process still running;\n\
        141 the output closed by its reader; 130 `run` cancelled by Ctrl-C (143, 129: by SIGTERM,\n\
        SIGHUP; a closed or unwritable output cancels it too).\n\
        A process that ended otherwise than completed: `await` exits 1, `run` the command's\n\
        exit code (else 1); how it ended is said on stderr (with --json, only in the record\n\
        printed on stdout)."
)]
pub struct Cli {
    /// Client options given before the command (the same options are accepted after it).
    #[command(flatten)]
    pub client: LeadingClientOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The options of every client command. They are global to the command, so
/// they are accepted after it and after any of its subcommands (`cairn schedule
/// ls --json`); each may also be given before the command ([`LeadingClientOpts`]).
/// Given in two places, the later one wins. Without any: `CAIRN_SERVER`,
/// `CAIRN_TOKEN`, then the default.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientOpts {
    /// Server base URL [env: CAIRN_SERVER] [default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", global = true, value_parser = non_empty)]
    pub server: Option<String>,
    /// Bearer token presented to the server (a host or a session token) [env: CAIRN_TOKEN].
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// Print one JSON document (machines) instead of tables; `events --follow` prints one event per line.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client options given before the command (`cairn --json ls`): the same
/// flags as [`ClientOpts`], but not global, so that `serve`, `bench` and
/// `completions` do not take them (`serve` and `bench` have a `--token` or a
/// `--json` of their own).
#[derive(Debug, Clone, Default, Args)]
pub struct LeadingClientOpts {
    /// Server base URL [env: CAIRN_SERVER] [default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", value_parser = non_empty)]
    pub server: Option<String>,
    /// Bearer token presented to the server (a host or a session token) [env: CAIRN_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print one JSON document (machines) instead of tables; `events --follow` prints one event per line.
    #[arg(long)]
    pub json: bool,
}

/// The default server of client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

impl ClientOpts {
    /// These options over `outer` (given before the command), then the environment.
    pub fn resolve(&self, outer: &LeadingClientOpts) -> ResolvedClient {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let server_flag = self.server.clone().or_else(|| outer.server.clone());
        let token_flag = self.token.is_some() || outer.token.is_some();
        ResolvedClient {
            // An empty `CAIRN_SERVER` is kept, for `client::run` to refuse.
            server: self
                .server
                .clone()
                .or_else(|| outer.server.clone())
                .or_else(|| std::env::var("CAIRN_SERVER").ok())
                .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
            token: self
                .token
                .clone()
                .or_else(|| outer.token.clone())
                .or_else(|| env("CAIRN_TOKEN")),
            json: self.json || outer.json,
            server_flag,
            token_flag,
        }
    }
}

/// Client options after flags and the environment are merged.
#[derive(Debug, Clone)]
pub struct ResolvedClient {
    /// Server base URL.
    pub server: String,
    /// Bearer token.
    pub token: Option<String>,
    /// `--json`.
    pub json: bool,
    /// The `--server` given on the command line (not `CAIRN_SERVER`): the
    /// commands the client suggests pasting carry it.
    pub server_flag: Option<String>,
    /// A `--token` was given on the command line (not `CAIRN_TOKEN`).
    pub token_flag: bool,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (with a worker) over a storage backend.
    #[command(after_help = "Examples:\n  \
        cairn serve --allow-shell\n  \
        cairn serve --db memory --listen 127.0.0.1:0\n  \
        CAIRN_TOKEN=... cairn serve --db postgres://me@db:5432/cairn --listen 0.0.0.0:7070   # a token in the environment, not in `ps`")]
    Serve(ServeArgs),
    /// Start a process from a raw start request (JSON argument, `@FILE`, or stdin when absent or `-`).
    #[command(after_help = "Example:\n  \
        cairn start '{\"id\": \"ci-7\", \"disposition\": \"externally_owned\", \"input\": {\"type\": \"external\"}, \"event_types\": [{\"name\": \"progress\"}]}'")]
    Start {
        /// The start request JSON (`StartRequest`: see docs/reference.md or the server's /openapi.json).
        body: Option<String>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run a command with the `shell` tool (the server needs `--allow-shell`), print its
    /// output and exit with its exit code.
    ///
    /// The command runs on the server's machine in this directory (`--cwd` to change it)
    /// with the server's environment plus what `--env`/`--env-all` forward; it never reads
    /// stdin (input piped to it within 100 ms is refused). Ctrl-C asks the server to cancel it.
    /// With `--json` it prints the ended process's record instead of the output as it comes
    /// (the output's end is in its outcome's `stdout_tail` and `stderr_tail`), and how it
    /// ended is in that record, not said on stderr.
    #[command(after_help = "Examples:\n  \
        cairn run -- make test\n  \
        cairn run --env PATH --env CI=1 -- sh -c 'echo $CI'\n  \
        cairn run --detach --disposition rerunnable --id nightly -- ./nightly.sh")]
    Run(RunArgs),
    /// List processes, newest first.
    #[command(after_help = "Examples:\n  \
        cairn ls                          # running processes\n  \
        cairn ls --status any --waiting true\n  \
        cairn --json ls --definition tool:shell\n  \
        cairn ls --status any --created-from 2026-12-01T00:00:00Z --created-before 1796688000000")]
    Ls(LsArgs),
    /// Show one process.
    #[command(after_help = "Examples:\n  cairn get build-42\n  cairn --json get build-42 | jq .status")]
    Get {
        /// Process id.
        #[arg(value_parser = non_empty)]
        id: String,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a process's events with their times.
    #[command(after_help = "Examples:\n  \
        cairn events build-42\n  \
        cairn events build-42 --follow      # until the process ends\n  \
        cairn --json events build-42        # one document: {\"events\": [...]}")]
    Events {
        /// Process id.
        #[arg(value_parser = non_empty)]
        id: String,
        /// Only events after this sequence.
        #[arg(long, default_value_t = 0, value_parser = cursor(), allow_negative_numbers = true)]
        after: u64,
        /// Keep streaming live events until the process ends.
        #[arg(long, short)]
        follow: bool,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Wait for a process to end and print its record. Exit code 0 when it completed,
    /// 1 when it ended otherwise (said on stderr), 3 (and a message on stderr) when it
    /// is still running at the timeout. With `--json`, neither is said on stderr: the
    /// record printed on stdout says how it ended, or that it still runs.
    #[command(after_help = "Examples:\n  \
        cairn await build-42\n  \
        cairn await build-42 --timeout 1.5s\n  \
        cairn await build-42 --timeout 2h   # longer than the server's --max-await: asks again until then")]
    Await {
        /// Process id.
        #[arg(value_parser = non_empty)]
        id: String,
        /// How long to wait (e.g. 500ms, 1.5s, 10m, 2h). A wait longer than the server's
        /// `--max-await` is made of several requests; a server restart within it is ridden
        /// out (asked again for about 40 s).
        #[arg(long, default_value = "30s", value_parser = named(duration_with_unit), allow_hyphen_values = true)]
        timeout: Duration,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Send a signal to a process.
    #[command(
        after_help = "Example:\n  cairn signal approve-1 approve --id from-alice --payload '{\"by\": \"alice\"}'"
    )]
    Signal {
        /// Process id.
        #[arg(value_parser = non_empty)]
        id: String,
        /// Signal name (ASCII letters, digits, `_`, `-`).
        #[arg(value_parser = non_empty)]
        name: String,
        /// Signal id (idempotency key); generated when absent.
        #[arg(long = "id")]
        signal_id: Option<String>,
        /// JSON payload; `-` reads it from stdin, `@FILE` from a file.
        #[arg(long, default_value = "null", allow_negative_numbers = true)]
        payload: String,
        /// A payload given as a third argument: refused with its `--payload`
        /// spelling, not clap's bare "unexpected argument".
        #[arg(hide = true)]
        stray: Option<String>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Append a declared event to a process (external owners).
    #[command(
        after_help = "Example:\n  cairn append ci-7 progress --payload '{\"text\": \"half way\"}' --replay-key p-50"
    )]
    Append {
        /// Process id.
        #[arg(value_parser = non_empty)]
        id: String,
        /// A declared event type.
        event_type: String,
        /// JSON payload (checked against the type's schema); `-` reads it from stdin, `@FILE` from a file.
        #[arg(long, default_value = "null", allow_negative_numbers = true)]
        payload: String,
        /// A payload given as a third argument (refused, as `signal`'s).
        #[arg(hide = true)]
        stray: Option<String>,
        /// Makes the append idempotent: a retry with the same key returns the original event.
        #[arg(long)]
        replay_key: Option<String>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// End an externally owned process with an outcome.
    #[command(after_help = "Examples:\n  \
        cairn complete ci-7 --value '{\"green\": true}' --authority ci\n  \
        cairn complete ci-7 --failure tests_failed --message '3 tests failed'\n  \
        cairn complete ci-7 --outcome '{\"type\": \"cancelled\", \"message\": \"superseded\"}'")]
    Complete(CompleteArgs),
    /// Request cancellation of a process, or of every running process granted to a session.
    #[command(after_help = "Examples:\n  \
        cairn cancel build-42 --reason 'superseded by build-43'\n  \
        cairn cancel --session s1 --reason 'runaway work'")]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["id", "session"])))]
    Cancel {
        /// Process id (or `--session`).
        #[arg(value_parser = non_empty)]
        id: Option<String>,
        /// Cancel every running process granted to this session as a whole
        /// (not its agent frames': cancel those by id), instead of one process.
        #[arg(long, value_parser = non_empty)]
        session: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Record an abandon request (reconciled once no live lease holds the process).
    #[command(after_help = "Example:\n  cairn abandon ci-7 --reason 'the CI job was deleted'")]
    Abandon {
        /// Process id.
        #[arg(value_parser = non_empty)]
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who asks (defaults to the caller's identity).
        #[arg(long)]
        requested_by: Option<String>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Move grants from one session scope to another.
    #[command(after_help = "Example:\n  cairn transfer --from s1 --to s2 build-42 build-43")]
    Transfer {
        /// Session id the grants move from.
        #[arg(long)]
        from: String,
        /// Agent frame within `--from`.
        #[arg(long)]
        from_frame: Option<String>,
        /// Session id the grants move to.
        #[arg(long)]
        to: String,
        /// Agent frame within `--to`.
        #[arg(long)]
        to_frame: Option<String>,
        /// The processes whose grants move.
        #[arg(required = true, num_args = 1..)]
        ids: Vec<String>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Read the change feed (host only): records changed after a cursor, in cursor order.
    #[command(after_help = "Example:\n  cairn changes --cursor 0 --limit 50")]
    Changes {
        /// Read changes after this cursor.
        #[arg(long, default_value_t = 0, value_parser = cursor(), allow_negative_numbers = true)]
        cursor: u64,
        /// Page size (at most 1000).
        #[arg(long, value_parser = at_least_one(), allow_negative_numbers = true)]
        limit: Option<usize>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete terminal processes older than a cutoff (leaves tombstones).
    #[command(
        after_help = "Examples:\n  cairn prune --older-than 7d --status completed --no-projector\n  cairn prune --older-than 30d --watermark 18446744\n  \
        cairn prune --older-than 7d --no-projector --created-from 2026-11-01T00:00:00Z --created-before 2026-12-01T00:00:00Z"
    )]
    Prune(PruneArgs),
    /// List a session's pending wakes, oldest first.
    #[command(after_help = "Examples:\n  cairn wakes s1\n  cairn --json wakes s1 --limit 10")]
    Wakes {
        /// Session id.
        #[arg(value_parser = non_empty)]
        session: String,
        /// Show at most this many (default 100, at most 1000; a page also
        /// stops at the wake that brings it to 4 MiB); acknowledged wakes
        /// leave the list, so later ones come after.
        #[arg(long, value_parser = at_least_one(), allow_negative_numbers = true)]
        limit: Option<usize>,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Acknowledge a wake.
    #[command(after_help = "Example:\n  cairn ack s1 wake:0f3a...   # an id `cairn wakes s1` printed")]
    Ack {
        /// Session id.
        #[arg(value_parser = non_empty)]
        session: String,
        /// Wake id.
        #[arg(value_parser = non_empty)]
        wake_id: String,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Manage schedules (host only): cron expressions and intervals that start a
    /// process per fire, `{schedule_id}@{fire_time_ms}`.
    #[command(after_help = "Examples:\n  \
        cairn schedule add nightly --cron '0 3 * * *' --timezone Europe/Paris \\\n    \
          '{\"input\": {\"type\": \"tool_call\", \"tool\": \"shell\", \"args\": {\"argv\": [\"/srv/jobs/nightly.sh\"]}}, \"disposition\": \"rerunnable\"}'\n    \
          (a `shell` fire needs `cairn serve --allow-shell`, and runs in the server's directory unless its args give a `cwd`)\n  \
        cairn schedule add sync --every 30m --overlap allow < template.json\n  \
        cairn schedule ls\n  \
        cairn schedule pause nightly")]
    Schedule {
        /// What to do.
        #[command(subcommand)]
        action: ScheduleAction,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Store, list and show script modules (SPEC §14).
    #[command(after_help = "Examples:\n  \
        cairn module put examples/deploy.js\n  \
        cairn module ls\n  \
        cairn module get module:sha256:...")]
    Module {
        /// What to do.
        #[command(subcommand)]
        action: ModuleCommand,
        /// `--server`, `--token`, `--json`.
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Serve MCP (Model Context Protocol) on stdin/stdout: every tool call is
    /// forwarded to the server with `--server` and `--token`.
    #[command(
        after_help = "Example:\n  CAIRN_TOKEN=... cairn mcp --server http://127.0.0.1:7070   # as an MCP client's command (the token from the environment, not in `ps`)"
    )]
    // Its output is MCP's own JSON-RPC: `--json` is refused (in words, so
    // still parsed), and not offered in its help.
    #[command(mut_arg("json", |a| a.hide(true)))]
    Mcp {
        /// `--server`, `--token` (`--json` is refused).
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        cairn completions bash > ~/.local/share/bash-completion/completions/cairn\n  \
        cairn completions zsh > \"${fpath[1]}/_cairn\"")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Measure throughput, latency, scale and memory over real backends, each
    /// figure beside the storage limit it is held against (see docs/BENCHMARKS.md).
    #[command(
        after_help = "Examples:\n  cairn bench --scenario throughput --db sqlite --runs 3\n  cairn bench --scenario http --db sqlite"
    )]
    Bench(BenchArgs),
    /// Internal: the second OS process of `cairn bench`.
    #[command(hide = true)]
    BenchChild(BenchChildArgs),
}

impl Command {
    /// The client options of a client command (`None` for serve, bench, completions).
    pub fn client_opts(&self) -> Option<&ClientOpts> {
        match self {
            Self::Serve(_) | Self::Bench(_) | Self::BenchChild(_) | Self::Completions { .. } => None,
            Self::Run(a) => Some(&a.client),
            Self::Ls(a) => Some(&a.client),
            Self::Complete(a) => Some(&a.client),
            Self::Prune(a) => Some(&a.client),
            Self::Start { client, .. }
            | Self::Get { client, .. }
            | Self::Events { client, .. }
            | Self::Await { client, .. }
            | Self::Signal { client, .. }
            | Self::Append { client, .. }
            | Self::Cancel { client, .. }
            | Self::Abandon { client, .. }
            | Self::Transfer { client, .. }
            | Self::Changes { client, .. }
            | Self::Wakes { client, .. }
            | Self::Ack { client, .. }
            | Self::Schedule { client, .. }
            | Self::Module { client, .. }
            | Self::Mcp { client } => Some(client),
        }
    }
}

/// Whether a command line clap refused asked for `--json` errors: `--json`
/// anywhere before a `--` (the client options go anywhere after `cairn`),
/// unless its command is one that takes no client options (`serve`,
/// `bench`, `completions`: theirs is clap's own refusal).
pub fn json_asked<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> bool {
    let words: Vec<&std::ffi::OsStr> = args
        .iter()
        .skip(1)
        .map(AsRef::as_ref)
        .take_while(|w| *w != "--")
        .collect();
    // The command: the first word that is no option, nor the value of
    // `--server` or `--token` given before it.
    let mut command = None;
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        if *word == "--server" || *word == "--token" {
            rest.next();
        } else if !word.to_string_lossy().starts_with('-') {
            command = Some(word.to_string_lossy());
            break;
        }
    }
    let client = !matches!(
        command.as_deref(),
        Some("serve" | "bench" | "bench-child" | "completions")
    );
    client && words.iter().any(|w| *w == "--json")
}

/// `cairn schedule` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ScheduleAction {
    /// Create a schedule; its start template (a start request without `id`) is the
    /// JSON argument, `@FILE`, or stdin when absent or `-`.
    #[command(after_help = "Examples:\n  \
        cairn schedule add nightly --cron '0 3 * * *' --timezone Europe/Paris \\\n    \
          '{\"input\": {\"type\": \"tool_call\", \"tool\": \"echo\", \"args\": {\"value\": 1}}, \"disposition\": \"rerunnable\"}'\n  \
        cairn schedule add sync --every 30m --overlap allow < template.json")]
    #[command(group(clap::ArgGroup::new("when").required(true).args(["cron", "every"])))]
    Add {
        /// Schedule id. It may not begin with `@` or be `-` here: those are
        /// read as a start template given where the id belongs.
        #[arg(value_parser = new_schedule_id)]
        id: String,
        /// A 5-field cron expression (minute hour day-of-month month day-of-week).
        #[arg(long)]
        cron: Option<String>,
        /// An interval such as 30s, 5m or 1h (at least 1s; a unit is required).
        #[arg(long, value_parser = named(every), allow_hyphen_values = true)]
        every: Option<String>,
        /// The IANA timezone a cron expression is read in (default UTC).
        #[arg(long, requires = "cron")]
        timezone: Option<String>,
        /// What a fire does while the previous fire's process is still running.
        #[arg(long, value_parser = ["skip", "allow"], default_value = "skip")]
        overlap: String,
        /// The start template JSON.
        template: Option<String>,
    },
    /// List schedules.
    #[command(after_help = "Example:\n  cairn schedule ls")]
    Ls,
    /// Show one schedule.
    #[command(after_help = "Example:\n  cairn schedule get nightly")]
    Get {
        /// Schedule id.
        #[arg(value_parser = non_empty)]
        id: String,
    },
    /// Delete a schedule (the processes it started stay).
    #[command(after_help = "Example:\n  cairn schedule rm nightly")]
    Rm {
        /// Schedule id.
        #[arg(value_parser = non_empty)]
        id: String,
    },
    /// Stop a schedule firing.
    #[command(after_help = "Example:\n  cairn schedule pause nightly")]
    Pause {
        /// Schedule id.
        #[arg(value_parser = non_empty)]
        id: String,
    },
    /// Let a paused schedule fire again, from its next fire time after now.
    #[command(after_help = "Example:\n  cairn schedule resume nightly")]
    Resume {
        /// Schedule id.
        #[arg(value_parser = non_empty)]
        id: String,
    },
}

/// `cairn serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database URL: `memory`, `sqlite:PATH` or `postgres://USER@HOST:PORT/DB[?schema=NAME]`
    /// (PostgreSQL also takes `write_lanes=N` (default 1), `read_connections=N` (2), `max_batch=N` (256)
    /// and `call_timeout=SECONDS` (30: how long a call waits for a server that stopped answering)).
    /// (`--help` does not show the environment's value: it may hold a password.)
    #[arg(
        long,
        env = "CAIRN_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite:cairn.db"
    )]
    pub db: String,
    /// Address to listen on (`HOST:PORT`; port 0 picks a free port). The bound
    /// address is printed on stdout as `listening on http://ADDR`.
    #[arg(
        long,
        env = "CAIRN_LISTEN",
        hide_env_values = true,
        default_value = "127.0.0.1:7070",
        value_parser = named(listen_address)
    )]
    pub listen: String,
    /// The host token the server requires (full access). Without any token the
    /// server is open and listens on loopback only.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Most processes the worker runs at once.
    #[arg(
        long,
        env = "CAIRN_WORKERS",
        hide_env_values = true,
        default_value_t = 64,
        value_parser = at_least_one(),
        allow_negative_numbers = true
    )]
    pub workers: usize,
    /// Lease time-to-live (e.g. 30s, 1.5s, or bare milliseconds; at least 1s, at most 24h).
    #[arg(
        long,
        env = "CAIRN_LEASE_TTL",
        hide_env_values = true,
        default_value = "30s",
        value_parser = named(lease_ttl),
        allow_hyphen_values = true
    )]
    pub lease_ttl: Duration,
    /// This server's node id: stable across restarts and unique among the servers of one
    /// database (1-64 of `A-Z a-z 0-9 . _ -`; default: the host name). Each start registers a
    /// new incarnation of it, and sweeps the `owner_bound` work earlier ones left running.
    /// A second live server under the same id on the same database is refused.
    #[arg(long, env = "CAIRN_NODE_ID", hide_env_values = true, value_parser = named(node_id))]
    pub node_id: Option<String>,
    /// A session token, `SESSION=TOKEN` (repeatable): it sees only processes granted to SESSION.
    /// Without any, they are read from `CAIRN_SESSION_TOKENS` (`SESSION=TOKEN` pairs separated by
    /// whitespace), which, unlike flags, other users cannot read in `ps`.
    #[arg(long = "session-token", value_name = "SESSION=TOKEN", value_parser = parse_session_token)]
    pub session_tokens: Vec<(String, String)>,
    /// Enable the `shell` tool (what `cairn run` uses): any caller may then run commands as this server's user.
    #[arg(long)]
    pub allow_shell: bool,
    /// A model session turns may call, `NAME=BASE_URL[,model=ID][,key_env=VAR]`
    /// (repeatable; a turn that names no model uses `default`). BASE_URL is an
    /// OpenAI-compatible endpoint such as `http://127.0.0.1:11434/v1`; the key is
    /// read from the environment variable VAR at each call and stored nowhere
    /// (VAR must hold one when the server starts: a missing key is refused then,
    /// not at a turn's first call).
    #[arg(long = "model", value_name = "NAME=BASE_URL[,model=ID][,key_env=VAR]", value_parser = parse_model)]
    pub models: Vec<cairn_turn::ModelSpec>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub max_body_bytes: usize,
    /// Longest wait one `await` request or one MCP `process_await` call gets (longer asks are
    /// cut to it; `cairn await` asks again; `process_await` waits at most 50s in any case).
    /// At least 100ms: a shorter cap answers every wait at once, which a
    /// client reads as a server shutting down.
    #[arg(long, default_value = "5m", value_parser = named(parse_max_await), allow_hyphen_values = true)]
    pub max_await: Duration,
    /// Close a connection whose request headers have not all arrived this long after
    /// it opened or after its previous answer (so also an idle kept-alive connection).
    #[arg(long, default_value = "10s", value_parser = named(duration), allow_hyphen_values = true)]
    pub header_timeout: Duration,
    /// Answer 408 `request_timeout` (and close the connection) when a request's
    /// body has not all arrived this long after its headers.
    #[arg(long, default_value = "30s", value_parser = named(duration), allow_hyphen_values = true)]
    pub body_timeout: Duration,
    /// Reset a connection whose answer could not be written for this long because its client
    /// stopped reading (an event stream's follower, say: it holds a connection slot until
    /// then); a byte taken starts the bound again. At least 1s.
    #[arg(long, default_value = "60s", value_parser = named(duration), allow_hyphen_values = true)]
    pub send_timeout: Duration,
    /// Most connections open at once; more are answered 503 `unavailable` and closed.
    #[arg(long, default_value_t = 1024, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub max_connections: usize,
    /// How long shutdown waits for open connections before draining the worker
    /// anyway (a second SIGINT or SIGTERM ends the wait at once). The worker
    /// claims no new work during it; runs in flight go on.
    #[arg(long, default_value = "10s", value_parser = named(duration), allow_hyphen_values = true)]
    pub shutdown_grace: Duration,
    /// Heap limit of one script activation, in bytes (past it: `memory_limit`).
    #[arg(
        long,
        env = "CAIRN_SCRIPT_HEAP_BYTES",
        hide_env_values = true,
        default_value_t = 64 * 1024 * 1024,
        value_parser = Integer::<usize>::between(cairn_script::Limits::MIN_HEAP_BYTES, usize::MAX),
        allow_negative_numbers = true
    )]
    pub script_heap_bytes: usize,
    /// CPU time of one script activation, its replay included (past it: `cpu_limit`).
    #[arg(
        long,
        env = "CAIRN_SCRIPT_CPU",
        hide_env_values = true,
        default_value = "10s",
        value_parser = named(script_cpu),
        allow_hyphen_values = true
    )]
    pub script_cpu: Duration,
    /// Journaled calls of one script process (past them: `journal_limit`; at most 1000000).
    #[arg(
        long,
        env = "CAIRN_SCRIPT_MAX_CALLS",
        hide_env_values = true,
        default_value_t = 10_000,
        value_parser = Integer::<u64>::between(1, cairn_core::script::MAX_SCRIPT_CALLS),
        allow_negative_numbers = true
    )]
    pub script_max_calls: u64,
    /// Bytes of one script process's journal: its calls, their answers and its
    /// log lines as stored, which each activation reads back into memory to
    /// replay (past them: `journal_limit`).
    #[arg(
        long,
        env = "CAIRN_SCRIPT_MAX_JOURNAL_BYTES",
        hide_env_values = true,
        default_value_t = cairn_script::Limits::DEFAULT_JOURNAL_BYTES,
        value_parser = Integer::<u64>::between(1, u64::MAX),
        allow_negative_numbers = true
    )]
    pub script_max_journal_bytes: u64,
}

/// `cairn module ...` (the client options are `cairn module`'s, accepted after
/// the subcommand too).
#[derive(Debug, clap::Subcommand)]
pub enum ModuleCommand {
    /// Compile and store a module file; prints its ref and exports.
    #[command(
        after_help = "Examples:\n  cairn module put examples/deploy.js\n  cat deploy.js | cairn module put - --name deploy.js"
    )]
    Put {
        /// The JavaScript file (`-` for stdin).
        file: String,
        /// A name to show with it (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List stored modules (without sources).
    #[command(after_help = "Example:\n  cairn module ls")]
    Ls,
    /// Print a module's source (`--json`: the whole module).
    #[command(after_help = "Example:\n  cairn module get module:sha256:...")]
    Get {
        /// The module ref (`module:sha256:{hex}`).
        #[arg(value_parser = non_empty)]
        module_ref: String,
    },
}

fn parse_model(s: &str) -> Result<cairn_turn::ModelSpec, String> {
    s.parse().map_err(|e: cairn_core::CairnError| e.to_string())
}

/// What `cairn run` records the process as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunDisposition {
    /// Abandoned (never re-run) when the server stops or loses it mid-run (a server killed outright leaves the command running).
    #[value(alias = "owner_bound")]
    OwnerBound,
    /// Run again from the start after a crash or restart.
    Rerunnable,
}

impl RunDisposition {
    /// The wire name.
    pub fn wire(self) -> &'static str {
        match self {
            Self::OwnerBound => "owner_bound",
            Self::Rerunnable => "rerunnable",
        }
    }
}

/// `cairn run` settings.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Process id (generated when absent; printed either way).
    #[arg(long)]
    pub id: Option<String>,
    /// Print the id and return at once instead of following the output.
    #[arg(long, short)]
    pub detach: bool,
    /// What a server restart does to it: `owner-bound` (abandoned; `owner_bound` too) or `rerunnable` (run again).
    #[arg(long, value_enum, default_value = "owner-bound")]
    pub disposition: RunDisposition,
    /// Kill the command after this long (passed to the shell tool; e.g. 30s, 10m),
    /// in whole milliseconds, at most a year (365d).
    #[arg(long, value_parser = named(whole_millis), allow_hyphen_values = true)]
    pub timeout: Option<Duration>,
    /// Working directory of the command on the server's machine (default: this
    /// directory; a relative path is taken from this directory).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Forward an environment variable: `KEY` (its value here) or `KEY=VALUE` (repeatable).
    /// Without `--env`/`--env-all` the command sees only the server's environment.
    #[arg(long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Forward this whole environment but cairn's own `CAIRN_*` variables
    /// (forwarded values are stored in the process's record); a variable
    /// whose name or value is not UTF-8 cannot be sent and is left out,
    /// said on stderr.
    #[arg(long)]
    pub env_all: bool,
    /// `--server`, `--token`, `--json`.
    #[command(flatten)]
    pub client: ClientOpts,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    pub argv: Vec<String>,
}

/// `cairn ls` filters.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// running (default), completed, failed, cancelled, abandoned or any.
    #[arg(long, value_parser = ["running", "completed", "failed", "cancelled", "abandoned", "any"])]
    pub status: Option<String>,
    /// Only processes granted to this session (a session id).
    #[arg(long, value_name = "SESSION")]
    pub granted_to: Option<String>,
    /// Only processes this session started (a session id; host token only).
    /// For the host's own, `--originator host`.
    #[arg(long, value_name = "SESSION")]
    pub originated_by: Option<String>,
    /// Only waiting (true) or not waiting (false) processes; a bare `--waiting` is `true`.
    #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true")]
    pub waiting: Option<bool>,
    /// Definition (`tool:NAME`, `script:MODULE#NAME`, `session_turn`, `external`).
    #[arg(long)]
    pub definition: Option<String>,
    /// Originator scope id (`host`, `session:ID`, ...).
    #[arg(long)]
    pub originator: Option<String>,
    /// Only the children of this process (its id in their `caused_by`).
    #[arg(long, value_name = "ID")]
    pub caused_by: Option<String>,
    /// Go on after this process, the last row a listing showed (newest first, as `ls` lists).
    #[arg(long, value_name = "ID")]
    pub after_id: Option<String>,
    /// Show at most this many (newest first; 10000 when not given).
    #[arg(long, value_parser = at_least_one(), allow_negative_numbers = true)]
    pub limit: Option<usize>,
    /// Only processes created at or after this time: epoch milliseconds
    /// (`1796083200000`) or an RFC 3339 time with its offset
    /// (`2026-12-01T00:00:00Z`, `2026-12-01T09:30:00+02:00`).
    #[arg(long, value_name = "MS|TIME", value_parser = created_at(), allow_negative_numbers = true)]
    pub created_from: Option<u64>,
    /// Only processes created before this time (epoch milliseconds or an RFC
    /// 3339 time, as `--created-from`; it is not included).
    #[arg(long, value_name = "MS|TIME", value_parser = created_at(), allow_negative_numbers = true)]
    pub created_before: Option<u64>,
    /// `--server`, `--token`, `--json`.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `cairn complete`: one of `--value`, `--failure` or `--outcome`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("result").required(true).args(["value", "failure", "outcome"])))]
pub struct CompleteArgs {
    /// Process id.
    #[arg(value_parser = non_empty)]
    pub id: String,
    /// Succeed with this JSON value; `-` reads it from stdin, `@FILE` from a file.
    #[arg(long, allow_negative_numbers = true)]
    pub value: Option<String>,
    /// Fail with this code (class `process`).
    #[arg(long, value_name = "CODE")]
    pub failure: Option<String>,
    /// The failure's message (only with `--failure`).
    #[arg(long, requires = "failure", conflicts_with_all = ["value", "outcome"])]
    pub message: Option<String>,
    /// A whole outcome as JSON: `{"type": "success", "value"}`, `{"type": "failure", "class", "code", "message"}` or `{"type": "cancelled", "message"}`; `-` reads it from stdin, `@FILE` from a file.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Who completes it (recorded; defaults to the caller).
    #[arg(long)]
    pub authority: Option<String>,
    /// `--server`, `--token`, `--json`.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `cairn prune` settings. The watermark is explicit (SPEC §7): a cursor, or
/// `--no-projector`; neither is a usage error, never a guess.
#[derive(Debug, Args)]
#[group(id = "watermark_choice", required = true, multiple = false, args = ["watermark", "no_projector"])]
pub struct PruneArgs {
    /// Prune processes that ended longer ago than this (e.g. 7d, 12h; a unit is required).
    #[arg(long, value_parser = named(duration_with_unit), allow_hyphen_values = true)]
    pub older_than: Duration,
    /// Which terminal statuses (any, completed, failed, cancelled, abandoned).
    #[arg(long, default_value = "any", value_parser = ["any", "completed", "failed", "cancelled", "abandoned"])]
    pub status: String,
    /// Only processes of this definition (`tool:NAME`, `script:MODULE#NAME`, `session_turn`, `external`).
    #[arg(long, value_parser = non_empty)]
    pub definition: Option<String>,
    /// Only processes of this originator scope id (`host`, `session:ID`, ...).
    #[arg(long, value_parser = non_empty)]
    pub originator: Option<String>,
    /// Only the children of this process.
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub caused_by: Option<String>,
    /// Only processes created at or after this time: epoch milliseconds
    /// (`1796083200000`) or an RFC 3339 time with its offset
    /// (`2026-12-01T00:00:00Z`, `2026-12-01T09:30:00+02:00`).
    #[arg(long, value_name = "MS|TIME", value_parser = created_at(), allow_negative_numbers = true)]
    pub created_from: Option<u64>,
    /// Only processes created before this time (epoch milliseconds or an RFC
    /// 3339 time, as `--created-from`; it is not included).
    #[arg(long, value_name = "MS|TIME", value_parser = created_at(), allow_negative_numbers = true)]
    pub created_before: Option<u64>,
    /// Change-feed cursor a projector has read up to: what changed after it stays.
    #[arg(long, value_parser = cursor(), allow_negative_numbers = true)]
    pub watermark: Option<u64>,
    /// No projector reads the change feed: prune by cutoff alone.
    #[arg(long)]
    pub no_projector: bool,
    /// `--server`, `--token`, `--json`.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// A schedule's `--every`, read with its unit required
/// ([`parse_duration_with_unit`]: `--every 3600` read as milliseconds would
/// fire a job meant to run hourly every 3.6 s), months and years refused as
/// the server refuses them, and sent in days and smaller units (`45d 1h`):
/// `humantime`'s own spelling would name months (`1month 14days ...` for
/// `45d`), which the server refuses.
fn interval(raw: &str) -> Result<String, String> {
    if let Some(why) = cairn_core::schedule::every_calendar_problem(raw) {
        return Err(why);
    }
    // Spellings the server's check does not know (`1mo`, `1mon`): the same
    // advice, not a parse error that lists months as a unit.
    if let Some(unit) = crate::duration::calendar_unit(raw) {
        return Err(format!(
            "`every` `{raw}` counts in months or years (`{unit}`), whose length varies, so its fires would drift \
             from the calendar: give `cron` for calendar dates (`0 0 1 * *` is midnight on the first of each \
             month, `0 0 1 1 *` on each 1 January), or `every` in weeks, days or smaller units"
        ));
    }
    // A bare number: the units an interval may take (milliseconds alone
    // would be under the minimum).
    let bare = raw.trim();
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        // Zero in any unit is under the minimum: no unit would make it one.
        if bare.bytes().all(|b| b == b'0') {
            return Err(format!("`{bare}` is below the 1 s minimum"));
        }
        return Err(format!(
            "`{bare}` has no unit: write e.g. {bare}s, {bare}m, {bare}h or {bare}d"
        ));
    }
    let d = parse_duration_with_unit(raw)?;
    // Said here of what was typed: the server would quote the re-spelling.
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "`{raw}` is finer than a millisecond (a schedule fires on whole milliseconds)"
        ));
    }
    if d < cairn_core::schedule::MIN_EVERY {
        return Err(format!("`{raw}` is below the 1 s minimum"));
    }
    let mut ms = d.as_millis();
    let mut parts = Vec::new();
    for (unit, name) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ] {
        if ms >= unit {
            parts.push(format!("{}{name}", ms / unit));
            ms %= unit;
        }
    }
    Ok(parts.join(" "))
}

/// `--max-await`: a duration of at least 100 ms.
fn parse_max_await(raw: &str) -> Result<Duration, String> {
    let d = duration(raw)?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "{raw} is under 100ms: every await would be answered at once, which `cairn await` reads as a server \
             shutting down"
        ));
    }
    Ok(d)
}

/// Parse `SESSION=TOKEN`.
pub fn parse_session_token(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((session, token)) if !session.is_empty() && !token.is_empty() => {
            cairn_core::validate::validate_session_id(session).map_err(|e| e.to_string())?;
            // `a=t1,b=t2` or `a=t1;b=t2` is a list with the wrong separator, not
            // one token: a Bearer token (RFC 6750's b64token) holds neither.
            if token.contains([',', ';']) {
                return Err(format!(
                    "the token of session `{session}` holds `,` or `;`, which no bearer token does: \
                     separate SESSION=TOKEN pairs with spaces"
                ));
            }
            Ok((session.to_string(), token.to_string()))
        }
        _ => Err("expected SESSION=TOKEN with both parts non-empty".to_string()),
    }
}

/// `cairn bench` settings. The defaults finish a SQLite run in about six minutes
/// on a 2-core machine, plus a few for `suspended`, `script` and `schedules`
/// (crates/cairn/README.md, docs/BENCHMARKS.md).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Print one JSON document with every figure instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A scenario to run (repeatable; default all): throughput, http, await, signal, append, memory, suspended, sse,
    /// scale, script, schedules.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// A database URL (repeatable): `memory`, `sqlite` (a fresh file in a temporary
    /// directory), `sqlite:PATH` or `postgres://...`. Default: `sqlite`, plus
    /// `$CAIRN_BENCH_POSTGRES_URL` when set. Giving `--db` replaces the default.
    #[arg(long = "db", value_name = "URL")]
    pub dbs: Vec<String>,
    /// Measured runs per figure; figures are medians with min..max over them.
    #[arg(long, default_value_t = 3, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub runs: usize,
    /// Warm-up runs per scenario, excluded from every figure.
    #[arg(long, default_value_t = 1, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub warmup: usize,
    /// Seed of every random choice (ids picked, payloads, start order, delays).
    #[arg(long, default_value_t = crate::bench::DEFAULT_SEED, value_parser = integer::<u64>(), allow_negative_numbers = true)]
    pub seed: u64,
    /// throughput, http: `echo` processes per run (warm-ups use at most 1,000).
    #[arg(long, default_value_t = 5_000, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub n: usize,
    /// throughput: worker counts W to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3", value_parser = integer::<usize>(), allow_hyphen_values = true)]
    pub workers: Vec<usize>,
    /// await, signal, scale: latency samples per run.
    #[arg(long, default_value_t = 100, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub samples: usize,
    /// scale: terminal rows beside the live ones (the full size is 1000000; the
    /// default fits a default run into ten minutes, see docs/BENCHMARKS.md).
    #[arg(long, default_value_t = crate::bench::DEFAULT_SCALE_ROWS, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub scale_rows: usize,
    /// scale: live (running) processes of the listed session.
    #[arg(long, default_value_t = 100, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub scale_live: usize,
    /// append: events per run of each variant (1 appender; 64 appenders share them).
    #[arg(long, default_value_t = 6_400, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub events: usize,
    /// memory: waiting processes per run (the figure is scaled to 10,000; the
    /// default fits a default run into ten minutes, see docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 5_000, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub memory_processes: usize,
    /// suspended: rerunnable `wait_signal` processes suspended per run (SPEC
    /// §13 holds 100,000 on one node to its figures).
    #[arg(long, default_value_t = 100_000, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub suspended_processes: usize,
    /// suspended, sse, schedules: seconds of idle over which the server's CPU is measured.
    #[arg(long, default_value_t = 30, value_parser = integer::<u64>(), allow_negative_numbers = true)]
    pub idle_seconds: u64,
    /// sse: event streams a `cairn serve` child holds open at once, one per
    /// suspended process.
    #[arg(long, default_value_t = 500, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub sse_streams: usize,
    /// script: three-step scripts per run, and as many `echo` processes beside them (the
    /// issue's size is 10000; the default keeps the scenario near a minute and a half, see docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 5_000, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub script_n: usize,
    /// schedules: schedules created per run (none due during the run).
    #[arg(long, default_value_t = 10_000, value_parser = integer::<usize>(), allow_negative_numbers = true)]
    pub schedules: usize,
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
        #[arg(long, value_parser = integer::<usize>(), allow_negative_numbers = true)]
        processes: usize,
        /// Their id prefix.
        #[arg(long)]
        prefix: String,
    },
    /// Suspend rerunnable `wait_signal` processes and report what they cost
    /// idle, and how fast a signal has one running again.
    Suspended {
        /// How many `wait_signal` processes.
        #[arg(long, value_parser = integer::<usize>(), allow_negative_numbers = true)]
        processes: usize,
        /// Their id prefix.
        #[arg(long)]
        prefix: String,
        /// Seconds of idle to measure CPU over.
        #[arg(long, value_parser = integer::<u64>(), allow_negative_numbers = true)]
        idle_seconds: u64,
        /// Signals to random suspended processes (latency samples).
        #[arg(long, value_parser = integer::<usize>(), allow_negative_numbers = true)]
        samples: usize,
    },
    /// Create schedules that are not due and report what they cost idle.
    Schedules {
        /// How many schedules per run.
        #[arg(long, value_parser = integer::<usize>(), allow_negative_numbers = true)]
        schedules: usize,
        /// Their id prefix.
        #[arg(long)]
        prefix: String,
        /// Seconds of idle to measure CPU over (once without, once per run with them).
        #[arg(long, value_parser = integer::<u64>(), allow_negative_numbers = true)]
        idle_seconds: u64,
        /// Runs (each creates, measures and deletes its schedules).
        #[arg(long, value_parser = integer::<usize>(), allow_negative_numbers = true)]
        runs: usize,
    },
}

/// An id or name: an empty one could only reach a route that does not exist.
/// The usage of `cairn schedule add`, as its refusals say it.
const SCHEDULE_ADD_USAGE: &str = "cairn schedule add [OPTIONS] <--cron <CRON>|--every <EVERY>> <ID> [TEMPLATE]";

/// The id of `schedule add`: not empty, and not a start template given in
/// its place (`@FILE`, or `-` for stdin), which would otherwise be taken as
/// the id.
fn new_schedule_id(s: &str) -> Result<String, String> {
    let s = non_empty(s)?;
    if s == "-" || s.starts_with('@') {
        return Err(format!(
            "the schedule ID is missing before the template (`{s}` reads as the template); \
             usage: {SCHEDULE_ADD_USAGE}"
        ));
    }
    Ok(s)
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// The integer types of the command line's number flags.
pub trait Unsigned: std::str::FromStr + std::fmt::Display + Copy + PartialOrd + Send + Sync + 'static {
    /// The largest value the type holds.
    const MAX: Self;
    /// Zero.
    const ZERO: Self;
}

impl Unsigned for u64 {
    const MAX: Self = u64::MAX;
    const ZERO: Self = 0;
}

impl Unsigned for usize {
    const MAX: Self = usize::MAX;
    const ZERO: Self = 0;
}

/// Every number flag's value parser: a non-negative integer of at least
/// `min`, refused in words that name the flag (`` `--limit` takes a
/// non-negative integer, got `x` ``) rather than in Rust's own ("invalid
/// digit found in string").
#[derive(Debug, Clone, Copy)]
pub struct Integer<T> {
    min: T,
    max: T,
}

impl<T: Unsigned> Integer<T> {
    /// A number flag that takes `min..=max`.
    fn between(min: T, max: T) -> NamingFlag<Self> {
        NamingFlag(Integer { min, max })
    }
}

/// A number flag that takes any non-negative integer its type holds.
fn integer<T: Unsigned>() -> NamingFlag<Integer<T>> {
    Integer::between(T::ZERO, T::MAX)
}

/// The largest event sequence or change-feed cursor the server takes (its
/// integers are SQL's signed ones, as in every store).
const LARGEST_CURSOR: u64 = i64::MAX as u64;

/// An event sequence or change-feed cursor: a larger one would pass here
/// only to be refused by the server.
fn cursor() -> NamingFlag<Integer<u64>> {
    Integer::between(0, LARGEST_CURSOR)
}

/// A count of at least one (`--limit 0` would ask for nothing).
fn at_least_one() -> NamingFlag<Integer<usize>> {
    Integer::between(1, usize::MAX)
}

impl<T: Unsigned> ReadValue for Integer<T> {
    type Value = T;

    fn read(&self, value: &std::ffi::OsStr) -> Result<T, Refused> {
        let text = value.to_string_lossy();
        let refuse = |why: String| Err(Refused::AfterName(why));
        match value.to_str().map(str::parse::<T>) {
            Some(Ok(n)) if n >= self.min && n <= self.max => Ok(n),
            Some(Ok(n)) if n < self.min => refuse(format!("must be at least {}, got `{text}`", self.min)),
            Some(Ok(_)) => refuse(format!("must be at most {}, got `{text}`", self.max)),
            _ => {
                let digits = text.strip_prefix('+').unwrap_or(&text);
                let why = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    format!(
                        "takes a non-negative integer, got `{text}`: over the largest accepted value ({})",
                        self.max
                    )
                } else if text.is_empty() {
                    "takes a non-negative integer, got nothing".to_string()
                } else {
                    format!("takes a non-negative integer, got `{text}`")
                };
                refuse(why)
            }
        }
    }
}

/// Why a flag's value was refused, in one of the two wordings a refusal
/// names the flag in.
#[derive(Debug)]
pub enum Refused {
    /// Said after the flag's name: `` `--limit` takes a non-negative integer ``.
    AfterName(String),
    /// Said as clap says its own: `` invalid value 'X' for `--lease-ttl`: why ``.
    InvalidValue(String),
}

/// A flag's value read from what the command line or the environment gave.
pub trait ReadValue: Clone + Send + Sync + 'static {
    /// What the value is read as.
    type Value: Clone + Send + Sync + 'static;

    /// `value` read, or why it is refused.
    fn read(&self, value: &std::ffi::OsStr) -> Result<Self::Value, Refused>;
}

/// A [`ReadValue`] as clap's value parser: a refusal names where the value
/// came from ([`flag_name`]), which clap tells `parse_ref_` alone (its
/// `parse_ref` is for a value on the command line).
#[derive(Debug, Clone, Copy)]
pub struct NamingFlag<P>(P);

impl<P: ReadValue> clap::builder::TypedValueParser for NamingFlag<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<P::Value, clap::Error> {
        self.parse_ref_(cmd, arg, value, clap::parser::ValueSource::CommandLine)
    }

    fn parse_ref_(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
        source: clap::parser::ValueSource,
    ) -> Result<P::Value, clap::Error> {
        self.0.read(value).map_err(|refused| match refused {
            Refused::AfterName(why) => refusal(cmd, arg, source, &why),
            Refused::InvalidValue(why) => raw_refusal(
                cmd,
                format!(
                    "invalid value '{}' for {}: {why}",
                    value.to_string_lossy(),
                    flag_name(arg, source)
                ),
            ),
        })
    }
}

/// A flag's value refused in words that name the flag: `` `--limit` why ``.
fn refusal(cmd: &clap::Command, arg: Option<&clap::Arg>, source: clap::parser::ValueSource, why: &str) -> clap::Error {
    raw_refusal(cmd, format!("{} {why}", flag_name(arg, source)))
}

/// A usage error saying `message`, as clap formats its own.
fn raw_refusal(cmd: &clap::Command, message: String) -> clap::Error {
    let mut cmd = cmd.clone();
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).format(&mut cmd)
}

/// How a refusal names where a value came from: `` `--limit` ``, or for a
/// value from the environment its variable (`` `CAIRN_LEASE_TTL` (the
/// environment's `--lease-ttl`) ``): the command line may not hold the flag
/// at all.
fn flag_name(arg: Option<&clap::Arg>, source: clap::parser::ValueSource) -> String {
    match arg {
        Some(arg) => match (source, arg.get_env(), arg.get_long()) {
            (clap::parser::ValueSource::EnvVariable, Some(var), Some(long)) => {
                format!("`{}` (the environment's `--{long}`)", var.to_string_lossy())
            }
            (_, _, Some(long)) => format!("`--{long}`"),
            _ => format!("`{}`", arg.get_id()),
        },
        None => "the value".to_string(),
    }
}

/// A flag's value read by `parse`, refused as clap refuses one (`invalid
/// value 'X' for ...: why`) but naming the environment variable it came
/// from, if it did ([`flag_name`]).
#[derive(Debug, Clone, Copy)]
pub struct Named<T> {
    parse: fn(&str) -> Result<T, String>,
}

fn named<T>(parse: fn(&str) -> Result<T, String>) -> NamingFlag<Named<T>> {
    NamingFlag(Named { parse })
}

impl<T: Clone + Send + Sync + 'static> ReadValue for Named<T> {
    type Value = T;

    fn read(&self, value: &std::ffi::OsStr) -> Result<T, Refused> {
        match value.to_str() {
            Some(text) => (self.parse)(text).map_err(Refused::InvalidValue),
            None => Err(Refused::InvalidValue("it is not UTF-8".to_string())),
        }
    }
}

/// A duration flag's value that begins with `-` (these flags take such a
/// value, so that it reaches this check instead of being read as an
/// unknown flag with clap's advice to write `-- -1`).
fn not_negative(raw: &str) -> Result<(), String> {
    let Some(rest) = raw.trim_start().strip_prefix('-') else {
        return Ok(());
    };
    if rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        Err("a duration is not negative: give one such as 500ms, 30s or 5m".into())
    } else {
        Err(format!(
            "`{raw}` reads as a flag, not a duration: give the duration first (e.g. 500ms, 30s)"
        ))
    }
}

/// A duration ([`parse_duration`]: bare numbers are milliseconds).
fn duration(raw: &str) -> Result<Duration, String> {
    not_negative(raw)?;
    parse_duration(raw)
}

/// A duration with its unit ([`parse_duration_with_unit`]).
fn duration_with_unit(raw: &str) -> Result<Duration, String> {
    not_negative(raw)?;
    parse_duration_with_unit(raw)
}

/// A duration in whole milliseconds ([`crate::duration::parse_whole_millis`]).
fn whole_millis(raw: &str) -> Result<Duration, String> {
    not_negative(raw)?;
    crate::duration::parse_whole_millis(raw)
}

/// A schedule's `--every` ([`interval`]).
fn every(raw: &str) -> Result<String, String> {
    not_negative(raw)?;
    interval(raw)
}

/// `--lease-ttl`: within what `serve` takes, checked here so that a value
/// from `CAIRN_LEASE_TTL` is refused naming the variable.
fn lease_ttl(raw: &str) -> Result<Duration, String> {
    let d = duration(raw)?;
    if d < crate::server::MIN_LEASE_TTL {
        return Err(format!(
            "must be at least {:?}: the worker renews a lease every third of it, and a shorter lease lapses \
             under a burst of runs before its renewal is written",
            crate::server::MIN_LEASE_TTL
        ));
    }
    if d > crate::server::MAX_LEASE_TTL {
        return Err("must be at most 24h: work a crashed node held waits that long to run again".into());
    }
    Ok(d)
}

/// `--script-cpu`: some CPU time (with none, no script could run).
fn script_cpu(raw: &str) -> Result<Duration, String> {
    let d = duration(raw)?;
    if d.is_zero() {
        return Err("must be more than 0: with none, no script activation could run".into());
    }
    Ok(d)
}

/// `--listen`: `HOST:PORT`, both there and the port a number (a host
/// name is looked up when the server starts).
fn listen_address(raw: &str) -> Result<String, String> {
    let shape = "expected HOST:PORT, e.g. 127.0.0.1:7070 or [::1]:7070";
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.is_empty() => {
            if port.parse::<u16>().is_err() {
                return Err(format!("the port `{port}` is not a number from 0 to 65535 ({shape})"));
            }
            Ok(raw.to_string())
        }
        _ => Err(shape.to_string()),
    }
}

/// `--node-id`: 1-64 of `A-Z a-z 0-9 . _ -`.
fn node_id(raw: &str) -> Result<String, String> {
    cairn_core::NodeIdentity::validate_node_id(raw).map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

/// The largest creation time the server takes in a filter (its integers are
/// SQL's signed ones).
const LATEST_CREATED_MS: u64 = i64::MAX as u64;

/// The smallest all-digit creation time taken: 1e11 ms is March 1973,
/// before any process could exist. A smaller number is most likely epoch
/// seconds.
const EARLIEST_CREATED_MS: u64 = 100_000_000_000;

/// `--created-from` and `--created-before`: a time as epoch milliseconds
/// (`1796083200000`) or RFC 3339 with its offset (`2026-12-01T00:00:00Z`,
/// `2026-12-01T09:30:00.5+02:00`), read as epoch milliseconds. A time
/// between two milliseconds is rounded up: a record's creation time is a
/// whole millisecond, so either bound keeps exactly the records it would
/// keep unrounded. A number under [`EARLIEST_CREATED_MS`] is refused as
/// likely epoch seconds.
#[derive(Debug, Clone, Copy)]
pub struct CreatedAt;

fn created_at() -> NamingFlag<CreatedAt> {
    NamingFlag(CreatedAt)
}

/// What `--created-from` and `--created-before` take, said when refused.
const CREATED_AT_TAKES: &str = "takes epoch milliseconds (`1796083200000`) or an RFC 3339 time with its offset \
     (`2026-12-01T00:00:00Z`, `2026-12-01T09:30:00+02:00`)";

/// Epoch milliseconds of an RFC 3339 time, or why it is not one.
fn rfc3339_ms(text: &str) -> Result<u64, String> {
    let bytes = text.as_bytes();
    if !text.is_ascii() || bytes.len() < 19 || !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(format!("{CREATED_AT_TAKES}, got `{text}`"));
    }
    // The offset: `Z` or `±HH:MM` (humantime reads UTC alone).
    let (local, offset_s) = if let Some(local) = text.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let at = text.len().saturating_sub(6);
        let (local, offset) = text.split_at(at);
        let o = offset.as_bytes();
        let digits = |i: usize| o[i].is_ascii_digit() && o[i + 1].is_ascii_digit();
        if !(matches!(o[0], b'+' | b'-') && digits(1) && o[3] == b':' && digits(4)) {
            return Err(format!(
                "got `{text}`, which has no offset: add `Z` for UTC, or the offset of its time zone \
                 (e.g. `+02:00`)"
            ));
        }
        let (h, m) = (
            i64::from((o[1] - b'0') * 10 + (o[2] - b'0')),
            i64::from((o[4] - b'0') * 10 + (o[5] - b'0')),
        );
        if h > 23 || m > 59 {
            return Err(format!(
                "got `{text}`, whose offset `{offset}` is not a time zone's (at most 23:59)"
            ));
        }
        let sign = if o[0] == b'-' { -1 } else { 1 };
        (local, sign * (h * 3600 + m * 60))
    };
    let mut utc = local.to_string();
    utc.replace_range(10..11, "T");
    utc.push('Z');
    let at = humantime::parse_rfc3339(&utc).map_err(|e| format!("{CREATED_AT_TAKES}, got `{text}`: {e}"))?;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("got `{text}`, before 1970"))?;
    let nanos = i128::try_from(since.as_nanos()).unwrap_or(i128::MAX) - i128::from(offset_s) * 1_000_000_000;
    if nanos < 0 {
        return Err(format!("got `{text}`, before 1970 in UTC"));
    }
    // Rounded up to the next whole millisecond (see [`CreatedAt`]).
    let ms = (nanos + 999_999) / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("got `{text}`, past the latest time accepted"))
}

impl ReadValue for CreatedAt {
    type Value = u64;

    fn read(&self, value: &std::ffi::OsStr) -> Result<u64, Refused> {
        let text = value.to_string_lossy();
        let refuse = |why: String| Err(Refused::AfterName(why));
        let ms = if text.is_empty() {
            return refuse(format!("{CREATED_AT_TAKES}, got nothing"));
        } else if text.bytes().all(|b| b.is_ascii_digit()) {
            // Digits past `u64`: past the latest time too.
            let ms = text.parse::<u64>().unwrap_or(u64::MAX);
            // Epoch seconds (`$(date +%s)`) read as milliseconds would be a
            // time in January 1970, before any process: refused, not read.
            if ms < EARLIEST_CREATED_MS {
                // The same instant in a form that is taken: milliseconds
                // when those are past the bound, else (`0`) RFC 3339, so
                // following the hint does not meet it again.
                let as_seconds = std::time::UNIX_EPOCH + Duration::from_secs(ms);
                let instead = if ms.saturating_mul(1000) >= EARLIEST_CREATED_MS {
                    format!(
                        "give milliseconds (`{text}000`) or an RFC 3339 time (`{}`)",
                        humantime::format_rfc3339_seconds(as_seconds)
                    )
                } else {
                    format!(
                        "give an RFC 3339 time (`{}`)",
                        humantime::format_rfc3339_seconds(as_seconds)
                    )
                };
                return refuse(format!(
                    "takes epoch milliseconds, got `{text}`, which would be {} and looks like epoch seconds: {instead}",
                    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                ));
            }
            ms
        } else {
            match rfc3339_ms(&text) {
                Ok(ms) => ms,
                Err(why) => return refuse(why),
            }
        };
        if ms > LATEST_CREATED_MS {
            return refuse(format!(
                "takes a time up to {LATEST_CREATED_MS} (epoch milliseconds), got `{text}`"
            ));
        }
        Ok(ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn resolved(args: &[&str]) -> ResolvedClient {
        let cli = Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("`cairn {}` refused: {e}", args.join(" ")));
        cli.command
            .client_opts()
            .unwrap_or_else(|| panic!("`cairn {}` is a client command", args.join(" ")))
            .resolve(&cli.client)
    }

    /// Sequences and cursors go up to the server's largest, i64::MAX: one
    /// past it is refused here, saying that bound, not sent to be refused.
    #[test]
    fn a_cursor_goes_up_to_what_the_server_takes() {
        let largest = i64::MAX.to_string();
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()));
        for flag in [
            &["events", "p", "--after"][..],
            &["changes", "--cursor"],
            &["prune", "--older-than", "1d", "--watermark"],
        ] {
            let with = |value: &'static str| [flag, &[value]].concat();
            match parse(&with("9223372036854775807")).expect("i64::MAX is taken").command {
                Command::Events { after: n, .. } | Command::Changes { cursor: n, .. } => assert_eq!(n, i64::MAX as u64),
                Command::Prune(args) => assert_eq!(args.watermark, Some(i64::MAX as u64)),
                other => panic!("{other:?}"),
            }
            for over in ["9223372036854775808", "18446744073709551615", "18446744073709551616"] {
                let said = parse(&with(over)).expect_err("past i64::MAX").to_string();
                assert!(said.contains(&largest), "{flag:?} {over}: {said}");
                assert!(!said.contains("18446744073709551615)"), "{flag:?} {over}: {said}");
            }
        }
    }

    /// An empty `--server` is a usage error, before or after the command.
    #[test]
    fn an_empty_server_flag_is_refused() {
        for args in [
            &["--server", "", "ls"][..],
            &["ls", "--server", ""],
            &["ls", "--server="],
        ] {
            let e = Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
                .expect_err("an empty --server is refused");
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(
                e.to_string().contains("--server") && e.to_string().contains("must not be empty"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The README's word: every command's `--help` shows examples.
    /// A default that help shows is one the flag takes as written.
    #[test]
    fn bench_workers_default_reads_as_given() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("bench")
            .expect("bench")
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: 1,3]"), "{help}");
        let cli = Cli::try_parse_from(["cairn", "bench"]).expect("parse");
        match cli.command {
            Command::Bench(args) => assert_eq!(args.workers, vec![1, 3]),
            _ => panic!("not bench"),
        }
    }

    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd
                .get_subcommands()
                .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            {
                let name = format!("{path} {}", sub.get_name());
                let examples = sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().starts_with("Example"));
                if !examples {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "cairn", &mut missing);
        assert!(missing.is_empty(), "no examples in --help: {missing:?}");
    }

    /// `--created-from` and `--created-before` take epoch milliseconds or
    /// an RFC 3339 time with its offset, on `ls` and `prune`, and refuse
    /// anything else naming the flag and what it takes.
    #[test]
    fn a_created_bound_is_epoch_ms_or_rfc3339() {
        let parsed = |args: &[&str]| -> Result<(Option<u64>, Option<u64>), String> {
            let cli =
                Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied())).map_err(|e| e.to_string())?;
            Ok(match cli.command {
                Command::Ls(a) => (a.created_from, a.created_before),
                Command::Prune(a) => (a.created_from, a.created_before),
                other => panic!("{other:?}"),
            })
        };
        let ls = |from: &str| parsed(&["ls", "--created-from", from]).map(|r| r.0);
        // 2026-12-01T00:00:00Z.
        let first = 1_796_083_200_000;
        assert_eq!(ls("1796083200000"), Ok(Some(first)));
        // 1e11 ms (March 1973) is the smallest number taken.
        assert_eq!(ls("100000000000"), Ok(Some(100_000_000_000)));
        assert_eq!(ls("2026-12-01T00:00:00Z"), Ok(Some(first)));
        assert_eq!(ls("2026-12-01t00:00:00z"), Ok(Some(first)));
        assert_eq!(ls("2026-12-01 00:00:00+00:00"), Ok(Some(first)));
        assert_eq!(ls("2026-12-01T02:30:00+02:30"), Ok(Some(first)));
        assert_eq!(ls("2026-11-30T23:00:00-01:00"), Ok(Some(first)));
        assert_eq!(ls("2026-12-01T00:00:00.250Z"), Ok(Some(first + 250)));
        // Between two milliseconds: the later one (a record's time is whole).
        assert_eq!(ls("2026-12-01T00:00:00.0001Z"), Ok(Some(first + 1)));
        assert_eq!(ls("9223372036854775807"), Ok(Some(i64::MAX as u64)));
        assert_eq!(
            parsed(&[
                "prune",
                "--older-than",
                "1d",
                "--no-projector",
                "--created-before",
                "2026-12-01T00:00:00Z"
            ]),
            Ok((None, Some(first)))
        );
        for (given, said) in [
            (
                "yesterday",
                "`--created-from` takes epoch milliseconds (`1796083200000`) or an RFC 3339 time",
            ),
            ("", "got nothing"),
            ("1.5", "got `1.5`"),
            ("2026-12-01", "got `2026-12-01`"),
            ("2026-12-01T00:00:00", "which has no offset: add `Z` for UTC"),
            ("2026-12-01T10:00:00+0200", "which has no offset"),
            ("2026-12-01T00:00:00+24:00", "is not a time zone's"),
            ("2026-13-01T00:00:00Z", "got `2026-13-01T00:00:00Z`"),
            ("1969-12-31T23:59:59Z", "got `1969-12-31T23:59:59Z`"),
            ("1970-01-01T00:30:00+01:00", "before 1970"),
            ("9223372036854775808", "takes a time up to 9223372036854775807"),
            ("99999999999999999999", "takes a time up to 9223372036854775807"),
            ("2026-12-01T00:00:00Zé", "got `2026-12-01T00:00:00Zé`"),
            // Epoch seconds (`$(date +%s)`) would be January 1970 as milliseconds.
            (
                "1796083200",
                "got `1796083200`, which would be 1970-01-21T18:54:43.200Z and looks like epoch seconds: \
                 give milliseconds (`1796083200000`)",
            ),
            ("99999999999", "looks like epoch seconds"),
            // A number whose milliseconds are still under the bound is
            // offered as the RFC 3339 time it names, which is taken.
            (
                "0",
                "looks like epoch seconds: give an RFC 3339 time (`1970-01-01T00:00:00Z`)",
            ),
            ("0000", "give an RFC 3339 time (`1970-01-01T00:00:00Z`)"),
            ("99999999", "give an RFC 3339 time (`1973-03-03T09:46:39Z`)"),
            (
                "100000000",
                "give milliseconds (`100000000000`) or an RFC 3339 time (`1973-03-03T09:46:40Z`)",
            ),
        ] {
            let e = ls(given).expect_err(given);
            assert!(e.contains(said), "{given}: {e}");
            assert!(e.contains("`--created-from`"), "{given}: {e}");
        }
        // What those hints offer is taken.
        assert_eq!(ls("1970-01-01T00:00:00Z"), Ok(Some(0)));
        assert_eq!(ls("1973-03-03T09:46:39Z"), Ok(Some(99_999_999_000)));
        assert_eq!(ls("100000000000"), Ok(Some(100_000_000_000)));
        let e = parsed(&["prune", "--older-than", "1d", "--no-projector", "--created-before", "x"]).expect_err("x");
        assert!(e.contains("`--created-before` takes epoch milliseconds"), "{e}");
    }

    /// `ls --waiting` alone is `--waiting true`, as the README's synopsis
    /// writes it; `--waiting true|false` still reads its value.
    #[test]
    fn a_bare_waiting_flag_is_true() {
        let waiting = |args: &[&str]| -> Result<Option<bool>, String> {
            let cli =
                Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied())).map_err(|e| e.to_string())?;
            match cli.command {
                Command::Ls(a) => Ok(a.waiting),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(waiting(&["ls", "--waiting"]), Ok(Some(true)));
        assert_eq!(waiting(&["ls", "--waiting", "--status", "any"]), Ok(Some(true)));
        assert_eq!(waiting(&["ls", "--status", "any", "--waiting"]), Ok(Some(true)));
        assert_eq!(waiting(&["ls", "--waiting", "true"]), Ok(Some(true)));
        assert_eq!(waiting(&["ls", "--waiting", "false"]), Ok(Some(false)));
        assert_eq!(waiting(&["ls", "--waiting=false"]), Ok(Some(false)));
        assert_eq!(waiting(&["ls"]), Ok(None));
        assert!(waiting(&["ls", "--waiting", "maybe"]).is_err());
    }

    /// Every option whose value is a number or a duration takes a value
    /// beginning with `-`, so that its own parser refuses a negative one
    /// naming the flag, instead of clap reading it as an unknown flag and
    /// advising `-- -1`, which fails too.
    #[test]
    fn every_number_and_duration_flag_reads_a_negative_value_itself() {
        fn walk(cmd: &clap::Command, path: &str, unchecked: &mut Vec<String>, numeric: &mut usize) {
            for arg in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
                let parser = arg.get_value_parser();
                let id = parser.type_id();
                let number = id == std::any::TypeId::of::<u64>() || id == std::any::TypeId::of::<usize>();
                let duration = id == std::any::TypeId::of::<Duration>() || arg.get_id() == "every";
                if !(number || duration) {
                    continue;
                }
                *numeric += 1;
                let taken = if duration {
                    arg.is_allow_hyphen_values_set()
                } else {
                    arg.is_allow_negative_numbers_set() || arg.is_allow_hyphen_values_set()
                };
                if !taken {
                    unchecked.push(format!("{path} --{}", arg.get_long().unwrap_or_default()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), unchecked, numeric);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let (mut unchecked, mut numeric) = (Vec::new(), 0);
        walk(&cmd, "cairn", &mut unchecked, &mut numeric);
        assert!(
            unchecked.is_empty(),
            "read by clap as a flag when negative: {unchecked:?}"
        );
        assert!(numeric > 40, "only {numeric} number and duration flags found");
        for args in [
            &["events", "p", "--after", "-1"][..],
            &["await", "p", "--timeout", "-1s"],
            &["serve", "--lease-ttl", "-1"],
            &["bench", "--samples", "-3"],
        ] {
            let e = Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
                .expect_err("a negative value is refused");
            let said = e.to_string();
            assert!(
                said.contains(&format!("`{}`", args[args.len() - 2])),
                "{args:?}: {said}"
            );
            assert!(!said.contains("tip:"), "{args:?}: {said}");
        }
    }

    #[test]
    fn an_interval_needs_its_unit() {
        let bare = interval("3600").expect_err("a bare number is refused");
        assert!(bare.contains("has no unit"), "{bare}");
        // Every unit it suggests is one an interval may take.
        assert!(!bare.contains("3600ms"), "{bare}");
        assert!(interval("5")
            .expect_err("bare")
            .ends_with("write e.g. 5s, 5m, 5h or 5d"));
        assert_eq!(interval("5000ms").as_deref(), Ok("5s"));
        assert_eq!(interval("1.5s").as_deref(), Ok("1s 500ms"));
        assert_eq!(interval("1h 30m").as_deref(), Ok("1h 30m"));
        // Days stay days (humantime would say `1month 14days 13h 30m 54s`).
        assert_eq!(interval("45d").as_deref(), Ok("45d"));
        assert_eq!(interval("2w 1ms").as_deref(), Ok("14d 1ms"));
        assert_eq!(interval("400d 1h").as_deref(), Ok("400d 1h"));
        for (typed, said) in [
            ("500us", "finer than a millisecond"),
            ("0.5ms", "finer"),
            ("0s", "1 s minimum"),
            // A bare zero needs no unit to be refused: any unit is under the minimum.
            ("0", "1 s minimum"),
            ("00", "1 s minimum"),
        ] {
            let e = interval(typed).expect_err("refused");
            assert!(e.contains(&format!("`{typed}`")) && e.contains(said), "{typed}: {e}");
        }
        for calendar in [
            "1month", "1y", "1yr", "2 years", "1mo", "1months", "1mon", "1 Month", "1M", "1mth", "1YR", "2w 1mo",
        ] {
            let e = interval(calendar).expect_err("months and years are refused");
            assert!(
                e.contains("drift from the calendar") && e.contains("give `cron`"),
                "{calendar}: {e}"
            );
            assert!(!e.contains("supported units"), "{calendar}: {e}");
        }
        assert!(interval("soon").is_err());
    }

    #[test]
    fn a_session_token_names_a_session_that_cannot_pass_for_a_frame() {
        assert_eq!(
            parse_session_token("s1=secret"),
            Ok(("s1".to_string(), "secret".to_string()))
        );
        let refused = Cli::try_parse_from(["cairn", "serve", "--session-token", "s1/frame:f1=secret"])
            .expect_err("a session id holding `/frame:` is refused");
        assert!(refused.to_string().contains("`/frame:`"), "{refused}");
        assert!(parse_session_token("=secret").is_err());
    }

    /// Every client command, leaf subcommands included, with a place for the
    /// client options before the command (`^`), between it and its subcommand,
    /// and after the last word.
    #[test]
    fn client_options_are_taken_anywhere_after_cairn() {
        let commands: &[&[&str]] = &[
            &["start", "{}"],
            &["ls"],
            &["get", "p"],
            &["events", "p"],
            &["await", "p"],
            &["signal", "p", "go"],
            &["append", "p", "note"],
            &["complete", "p", "--value", "1"],
            &["cancel", "p"],
            &["abandon", "p", "--reason", "r"],
            &["transfer", "--from", "a", "--to", "b", "p"],
            &["changes"],
            &["prune", "--older-than", "1d", "--no-projector"],
            &["wakes", "s"],
            &["ack", "s", "w"],
            &["schedule", "add", "n", "--every", "1m", "{}"],
            &["schedule", "ls"],
            &["schedule", "get", "n"],
            &["schedule", "rm", "n"],
            &["schedule", "pause", "n"],
            &["schedule", "resume", "n"],
            &["module", "put", "f.js"],
            &["module", "ls"],
            &["module", "get", "module:sha256:00"],
            &["mcp"],
        ];
        let opts = ["--json", "--server", "http://h:1", "--token", "t"];
        for words in commands {
            let mut places = vec![0, 1, words.len()];
            if matches!(words[0], "schedule" | "module") {
                places.push(2);
            }
            for at in places {
                let mut args: Vec<&str> = words.to_vec();
                args.splice(at..at, opts);
                let r = resolved(&args);
                assert_eq!(
                    (r.json, r.server.as_str(), r.token.as_deref()),
                    (true, "http://h:1", Some("t")),
                    "cairn {}",
                    args.join(" ")
                );
            }
        }
        // `run`: before its command; after `--` they are the command's words.
        let r = resolved(&["run", "--json", "--server", "http://h:1", "--", "ls", "--json"]);
        assert_eq!((r.json, r.server.as_str()), (true, "http://h:1"));
        let cli = Cli::try_parse_from(["cairn", "run", "--", "ls", "--json"]).expect("parses");
        let Command::Run(run) = &cli.command else { panic!("run") };
        assert_eq!(
            (run.argv.as_slice(), run.client.json),
            (&["ls".to_string(), "--json".into()][..], false)
        );
    }

    #[test]
    fn the_client_option_given_last_wins() {
        for args in [
            &["--server", "http://a:1", "ls", "--server", "http://b:2"][..],
            &["--server", "http://a:1", "schedule", "ls", "--server", "http://b:2"],
            &[
                "schedule",
                "--server",
                "http://a:1",
                "get",
                "n",
                "--server",
                "http://b:2",
            ],
            &["--server", "http://a:1", "module", "--server", "http://b:2", "ls"],
        ] {
            assert_eq!(resolved(args).server, "http://b:2", "cairn {}", args.join(" "));
        }
        assert_eq!(
            resolved(&["--server", "http://a:1", "schedule", "ls"]).server,
            "http://a:1"
        );
    }

    #[test]
    fn commands_that_are_not_clients_take_no_client_options() {
        for args in [
            &["serve", "--json"][..],
            &["serve", "--server", "http://h:1"],
            &["bench", "--server", "http://h:1"],
            &["bench", "--token", "t"],
            &["completions", "bash", "--json"],
        ] {
            let refused = Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()));
            assert!(refused.is_err(), "cairn {} was accepted", args.join(" "));
        }
        // Their own flags of the same names stay theirs.
        let cli = Cli::try_parse_from(["cairn", "serve", "--token", "t"]).expect("parses");
        let Command::Serve(serve) = &cli.command else {
            panic!("serve")
        };
        assert_eq!((serve.token.as_deref(), cli.client.token.as_deref()), (Some("t"), None));
        let cli = Cli::try_parse_from(["cairn", "bench", "--json"]).expect("parses");
        let Command::Bench(bench) = &cli.command else {
            panic!("bench")
        };
        assert!(bench.json && !cli.client.json);
    }

    /// `--json` anywhere before a `--` asks a client command's refusal as
    /// JSON; a command that takes no client options keeps clap's words.
    #[test]
    fn json_is_asked_by_the_flag_of_a_client_command() {
        for (args, asked) in [
            (&["--json", "ls", "--bogus"][..], true),
            (&["ls", "--bogus", "--json"], true),
            (&["schedule", "--json", "add"], true),
            (&["--token", "serve", "--json", "get"], true),
            (&["--json"], true),
            (&["ls", "--bogus"], false),
            (&["run", "--bogus", "--", "ls", "--json"], false),
            (&["--json", "serve", "--bogus"], false),
            (&["--server", "http://h:1", "--json", "completions"], false),
            (&["bench", "--json", "--bogus"], false),
        ] {
            let line: Vec<&str> = std::iter::once("cairn").chain(args.iter().copied()).collect();
            assert_eq!(json_asked(&line), asked, "cairn {}", args.join(" "));
        }
    }

    #[test]
    fn empty_ids_and_a_message_without_a_failure_are_usage_errors() {
        for args in [
            &["get", ""][..],
            &["signal", "p", ""],
            &["signal", "", "go"],
            &["ack", "s", ""],
            &["schedule", "rm", ""],
            &["complete", "p", "--message", "m", "--value", "1"],
            &["complete", "p", "--message", "m", "--outcome", "{}"],
        ] {
            let refused = Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()));
            let err = refused.err().unwrap_or_else(|| panic!("cairn {args:?} was accepted"));
            assert_eq!(err.exit_code(), 2, "cairn {args:?}: {err}");
        }
        assert!(Cli::try_parse_from(["cairn", "complete", "p", "--failure", "c", "--message", "m"]).is_ok());
    }
}
