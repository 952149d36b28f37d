//! `cairn`: the server and the CLI client.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use cairn::cli::{Cli, Command};

// The server allocates and frees many short-lived records and buffers across
// threads; mimalloc does that with less CPU than the system allocator (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often, at most, a runtime thread that goes idle hands freed memory back.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Run when a runtime thread goes idle: give the memory it freed back to the
/// OS. mimalloc keeps what a thread freed (and what other threads freed of
/// its pages) in that thread's heap until the thread allocates again, so an
/// idle server would keep the buffers of closed connections resident for
/// good. At most once a second per thread, so a busy server pays nothing
/// measurable.
fn collect_when_idle() {
    let now = std::time::Instant::now();
    LAST_COLLECT.with(|last| {
        if last.get().is_none_or(|t| now.duration_since(t) >= COLLECT_EVERY) {
            last.set(Some(now));
            // SAFETY: `mi_collect` only walks and frees the calling thread's own
            // heap and the allocator's shared arenas; it takes no pointers.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}

/// Keep the C allocator from handing freed memory back after every free.
///
/// SQLite allocates through the C allocator, not through mimalloc. Each write
/// job runs in a savepoint whose in-memory journal is freed when the job
/// ends; glibc then found the top of the writer thread's arena above its
/// 128 KiB trim threshold and gave it back with `madvise` (a TLB flush on
/// every core), only for the next job to fault it in again: 6.6% of the
/// SQLite writer thread's time in a profile of `cairn bench --scenario
/// throughput`. An arena now keeps up to 4 MiB of free top; blocks of 1 MiB
/// and over still come from (and go back to) the OS directly.
fn tune_c_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// Move the server's secrets out of the environment block it was started
/// with: the kernel shows that block as `/proc/{pid}/environ` to every
/// process of the same user, a `shell` child included (`/proc/$PPID/environ`),
/// however the child's own environment was cleaned. Each variable named
/// (`CAIRN_*`, the models' `key_env` ones) is set again, which puts its
/// `NAME=VALUE` on the heap where the environment's readers still find it,
/// and its bytes in the original block are zeroed. Called before any other
/// thread exists: setting a variable races with any other reader.
fn hide_secrets_from_proc(names: &[String]) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for name in names {
        let Some(value) = std::env::var_os(name) else { continue };
        let prefix = format!("{name}=");
        // SAFETY: no other thread exists (see above); `environ` is the C
        // library's NULL-terminated array of NUL-terminated strings.
        let find = || unsafe {
            let mut at = libc::environ;
            while !at.is_null() && !(*at).is_null() {
                if std::ffi::CStr::from_ptr(*at).to_bytes().starts_with(prefix.as_bytes()) {
                    return Some(*at);
                }
                at = at.add(1);
            }
            None
        };
        let Some(original) = find() else { continue };
        std::env::set_var(name, &value);
        // Only once the entry is a new string is the original unread.
        if find().is_some_and(|now| now != original) {
            // SAFETY: `original` is the variable's string in the block the
            // process was started with, writable, and no longer referenced
            // by `environ`; its bytes are overwritten within its length.
            unsafe {
                let len = std::ffi::CStr::from_ptr(original).to_bytes().len();
                std::ptr::write_bytes(original.add(prefix.len()), 0, len - prefix.len());
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = names;
}

/// The flags whose values may carry a secret (a model endpoint's key in its
/// URL, a session's token): a value refused is not echoed, as clap would.
const SECRET_FLAGS: [&str; 2] = ["--model", "--session-token"];

/// A line on stderr that cannot panic (stderr closed or full: nothing to do).
fn say(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// The usage of the (sub)command `args` name, as its help gives it.
fn usage_of(args: &[std::ffi::OsString]) -> Option<String> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut at = &mut cmd;
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if at.find_subcommand(arg).is_none() {
            continue;
        }
        at = at.find_subcommand_mut(arg)?;
    }
    Some(at.render_usage().to_string())
}

/// Parse the command line; a refused value of a [`SECRET_FLAGS`] flag is
/// said without the value, and exits 2 as any usage error. With `--json`
/// given to a client command, a refused command line is one line of JSON
/// on stderr, as the client's other errors are.
fn parse_cli() -> Cli {
    use clap::error::{ContextKind, ErrorKind};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // `--help` and `--version`, printed through the one path a client
        // command's output takes: a write that fails is said, never a panic.
        Err(e) if !e.use_stderr() => {
            if let Err(source) = e.print().and_then(|()| std::io::stdout().flush()) {
                let failed = cairn::client::http::ClientError::Output {
                    stream: cairn::client::output::Stream::Stdout,
                    source,
                };
                cairn::client::fail(&failed, false);
                std::process::exit(failed.exit_code().into())
            }
            std::process::exit(0)
        }
        Err(e) if cairn::cli::json_asked(&args) => {
            say(format_args!(
                "{}",
                cairn::client::usage_error_json(&e, usage_of(&args).as_deref())
            ));
            std::process::exit(2)
        }
        Err(e) if e.kind() == ErrorKind::ValueValidation => {
            let arg = e
                .get(ContextKind::InvalidArg)
                .map(|a| a.to_string())
                .unwrap_or_default();
            if !SECRET_FLAGS.iter().any(|f| arg.starts_with(f)) {
                e.exit()
            }
            let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
            say(format_args!("error: invalid value for '{arg}' (not shown: it may hold a secret): {why}\n\nFor more information, try '--help'."));
            std::process::exit(2)
        }
        // clap's own words list every command, the hidden `bench-child`
        // too: the help lists the ones a user runs. (A command's own missing
        // subcommand, `cairn schedule --json`, hides none: clap says it.)
        // (Told by the commands it would list, not by the command's name,
        // which is the binary's file name, whatever it is.)
        Err(e)
            if e.kind() == ErrorKind::MissingSubcommand
                && matches!(e.get(ContextKind::ValidSubcommand),
                    Some(clap::error::ContextValue::Strings(listed)) if listed.iter().any(|c| c == "bench-child")) =>
        {
            let help = <Cli as clap::CommandFactory>::command().render_help();
            say(format_args!("error: a command is needed\n\n{help}"));
            std::process::exit(2)
        }
        Err(e) => e.exit(),
    }
}

/// Whether `serve`'s `--listen` comes from `CAIRN_LISTEN`: the variable is
/// set and the command line gives no `--listen` (which would win over it).
fn listen_from_environment() -> bool {
    std::env::var_os("CAIRN_LISTEN").is_some()
        && !std::env::args_os()
            .take_while(|a| a.as_os_str() != "--")
            .any(|a| a.as_os_str() == "--listen" || a.to_string_lossy().starts_with("--listen="))
}

fn main() -> ExitCode {
    tune_c_allocator();
    let cli = parse_cli();
    // Client options before a non-client command would be ignored; a host token
    // ignored would leave the server open, so say so instead.
    let not_a_client = match cli.command {
        Command::Serve(_) => Some("serve"),
        Command::Bench(_) => Some("bench"),
        Command::BenchChild(_) => Some("bench-child"),
        Command::Completions { .. } => Some("completions"),
        _ => None,
    };
    if let Some(name) = not_a_client {
        let c = &cli.client;
        if c.server.is_some() || c.token.is_some() || c.json {
            let instead = if name == "completions" {
                "`cairn completions` takes none (`cairn completions bash`)"
            } else {
                "give the command's own flags after it (e.g. `cairn serve --token T`, `cairn bench --json`)"
            };
            say(format_args!(
                "error: --server, --token and --json before the command are client options; {instead}"
            ));
            return ExitCode::from(2);
        }
    }
    if let Command::Serve(args) = &cli.command {
        let secrets: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| name.starts_with("CAIRN_"))
            .chain(args.models.iter().filter_map(|m| m.key_env.clone()))
            .collect();
        hide_secrets_from_proc(&secrets);
    }
    let listen_from_env = listen_from_environment();
    // A client command hears of a closed output as a failed write (SIGPIPE
    // stays ignored): it ends with 141 (`run` cancels what it runs first),
    // and any other write that fails is said, with 1 (`client::output`).
    let serving = matches!(cli.command, Command::Serve(_));
    // The server logs at info by default; client commands only say what went
    // wrong. The MCP library logs three lines for every stateless call, and a
    // client's own mistake (which the client is answered) as a warning: only
    // its errors are the server's to show.
    let default_filter = if serving { "info,rmcp=error" } else { "warn,rmcp=error" };
    // A `RUST_LOG` that does not parse is said, not quietly replaced.
    let (filter, unreadable) = match std::env::var("RUST_LOG") {
        Ok(given) if !given.trim().is_empty() => match tracing_subscriber::EnvFilter::try_new(&given) {
            Ok(filter) => (filter, None),
            Err(e) => (tracing_subscriber::EnvFilter::new(default_filter), Some((given, e))),
        },
        _ => (tracing_subscriber::EnvFilter::new(default_filter), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some((given, e)) = unreadable {
        tracing::warn!("RUST_LOG `{given}` is not a filter ({e}); logging with `{default_filter}` instead");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_when_idle)
        // A blocking thread (SQLite reads run on them) never parks; it exits
        // after 10 s idle, and what it freed goes back with it.
        // SAFETY: as in `collect_when_idle`.
        .on_thread_stop(|| unsafe { libmimalloc_sys::mi_collect(true) })
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(format_args!("cairn: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => match cairn::server::serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let mut said = e.to_string();
                    // The command line may not hold `--listen` at all.
                    if listen_from_env && matches!(e, cairn::server::ServeError::Lookup(_)) {
                        said = said.replacen("--listen", "`CAIRN_LISTEN` (the environment's `--listen`)", 1);
                    }
                    say(format_args!("cairn serve: {said}"));
                    ExitCode::from(e.exit_code())
                }
            },
            Command::Bench(args) => {
                let json = args.json;
                cairn::bench::run(args, json).await
            }
            Command::Completions { shell } => {
                // Without the hidden commands (`bench-child`): clap_complete's
                // scripts list every subcommand, hidden or not, and clap has
                // no way to remove one, so the root is built again without.
                let full = <Cli as clap::CommandFactory>::command();
                let mut command = clap::Command::new("cairn")
                    .about(full.get_about().cloned().unwrap_or_default())
                    .version(env!("CARGO_PKG_VERSION"))
                    .args(full.get_arguments().cloned())
                    .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
                // Written whole through the client's output: clap_complete
                // panics on a write that fails.
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, "cairn", &mut script);
                match cairn::client::output::bytes(&script).and_then(|()| cairn::client::output::flush()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => cairn::client::fail(&e, false),
                }
            }
            Command::BenchChild(args) => cairn::bench::child::run(args).await,
            command => {
                let opts = command.client_opts().map(|c| c.resolve(&cli.client));
                match opts {
                    Some(opts) => cairn::client::run(&opts, command).await,
                    None => ExitCode::FAILURE,
                }
            }
        }
    })
}
