//! The `shell` tool (SPEC §12).
//!
//! Args: `{"argv": [...]}` or `{"command": "..."}` (run by `/bin/sh -c`),
//! exactly one of the two, with optional `cwd`, `env` (added to the inherited
//! environment, from which the server's own `CAIRN_*` settings are removed),
//! `timeout_ms` and `max_output_bytes`.
//!
//! The child runs in its own process group with stdin closed. Its output is
//! read line by line (lossy UTF-8, over-long lines truncated) and appended as
//! `shell.output` events `{"stream": "stdout"|"stderr", "lines": [...]}`,
//! batched by count, size and age; order within each stream is preserved.
//! At most `max_output_bytes` of it is appended (both streams together, each
//! line counted with its newline): from the first line that does not fit, no
//! more lines are appended but one that says so, while the output is still
//! read to its end (the command is never held up) and kept in the result's
//! tails; once it ends, a last line of each stream that lost lines says how
//! many lines and bytes (as the command wrote them) were not kept.
//!
//! The whole group is stopped (SIGTERM, then SIGKILL after a grace period;
//! at once when the run lost its lease, as a peer may run the process from
//! the lapse) when the run is told to stop, when the timeout passes, when an append finds
//! the lease lost, and when the command itself exits while other members of
//! its group are still alive: nothing the command started in its group
//! outlives the run. The group of a `rerunnable` run also dies with this
//! process, however it dies, a stop's grace included (a [`Sentinel`] in the
//! group, ADR 0025), so the rerun after a restart never runs beside it.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use cairn_core::{CairnError, Disposition, EventType, Outcome, Result, StopReason, Tool, ToolContext};

use crate::schemas::{DEFAULT_MAX_OUTPUT_BYTES, MOST_OUTPUT_BYTES};
use crate::{bad_args, parse_args, stopped_outcome};

/// The event type the shell tool appends its output as.
pub const OUTPUT_EVENT: &str = "shell.output";

/// Lines longer than this (in bytes) are cut and marked.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// What a cut line ends with.
const TRUNCATED_MARK: &str = "…[truncated]";
/// A batch is appended once it holds this many lines ...
const BATCH_MAX_LINES: usize = 64;
/// ... or this many bytes of text ...
const BATCH_MAX_BYTES: usize = 32 * 1024;
/// ... or this long after its first line arrived.
const BATCH_MAX_AGE: Duration = Duration::from_millis(50);
/// The tails in the result keep at most this many lines ...
const TAIL_MAX_LINES: usize = 64;
/// ... and this many bytes per stream.
const TAIL_MAX_BYTES: usize = 8 * 1024;
/// How often a stopping group is checked for survivors.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for the group to vanish after SIGKILL before giving up.
const KILL_SETTLE: Duration = Duration::from_secs(5);
/// How long to keep reading pipes after the group is gone with no new line
/// in them (a process outside the group may hold them open) ...
const DRAIN: Duration = Duration::from_millis(250);
/// ... and at most this long in all while lines keep coming: what the
/// command wrote before it exited (up to a pipe and a reader's buffers) is
/// read to its end however slowly the store takes it.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Lines in flight between a pipe reader and the run loop.
const CHANNEL_LINES: usize = 256;
/// The default time between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs a command in its own process group; see the module docs and SPEC §12.
#[derive(Clone, Debug)]
pub struct ShellTool {
    /// Time between SIGTERM and SIGKILL when the group is stopped.
    pub kill_grace: Duration,
    /// More of the server's own environment variables a command does not
    /// inherit, beside every `CAIRN_*` one (the variables model keys are
    /// read from, say).
    pub hidden_env: Vec<String>,
}

impl Default for ShellTool {
    fn default() -> Self {
        Self {
            kill_grace: DEFAULT_KILL_GRACE,
            hidden_env: Vec::new(),
        }
    }
}

impl ShellTool {
    /// A shell tool with the default kill grace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the time between SIGTERM and SIGKILL.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellArgs {
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_output_bytes: Option<u64>,
}

fn invalid(message: impl std::fmt::Display) -> CairnError {
    CairnError::InvalidRequest(format!("`shell` args: {message}"))
}

fn no_nul(what: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

impl ShellArgs {
    fn parse(args: &Value) -> Result<Self> {
        let a: Self = parse_args("shell", args)?;
        match (&a.argv, &a.command) {
            (Some(_), Some(_)) => return Err(invalid("give either `argv` or `command`, not both")),
            (None, None) => return Err(invalid("give `argv` or `command`")),
            (Some(argv), None) => {
                match argv.first() {
                    None => return Err(invalid("`argv` is empty")),
                    Some(p) if p.is_empty() => return Err(invalid("`argv[0]` is empty")),
                    Some(_) => {}
                }
                for arg in argv {
                    no_nul("`argv`", arg)?;
                }
            }
            (None, Some(command)) => {
                if command.trim().is_empty() {
                    return Err(invalid("`command` is empty"));
                }
                no_nul("`command`", command)?;
            }
        }
        crate::check_ms("shell", "timeout_ms", a.timeout_ms)?;
        // A command stopped before it could start would be a race with its
        // first instructions, its outcome `timeout` either way.
        if a.timeout_ms == Some(0) {
            return Err(invalid(
                "`timeout_ms` is 0: give at least 1 ms, or leave it out for no timeout",
            ));
        }
        if let Some(max) = a.max_output_bytes.filter(|&max| max > MOST_OUTPUT_BYTES) {
            return Err(invalid(format!(
                "`max_output_bytes` is {max}, over the limit of {MOST_OUTPUT_BYTES} (1 GiB)"
            )));
        }
        if let Some(cwd) = &a.cwd {
            if cwd.is_empty() {
                return Err(invalid("`cwd` is empty"));
            }
            no_nul("`cwd`", cwd)?;
        }
        for (k, v) in a.env.iter().flatten() {
            if k.is_empty() || k.contains('=') {
                return Err(invalid(format!("`env` name `{k}` is empty or contains `=`")));
            }
            no_nul("`env` name", k)?;
            no_nul("`env` value", v)?;
        }
        Ok(a)
    }

    /// Where `program` is, if it is where the spawn looked for it: at its
    /// path (from `cwd`) when it names one, else in a directory of the
    /// `PATH` the command was given (its own `env`, else this process's).
    /// A spawn that said "not found" of a program that is there could not
    /// find its `#!` interpreter (or a loader it names).
    fn find_program(&self, program: &str) -> Option<std::path::PathBuf> {
        let from_cwd = |path: std::path::PathBuf| match &self.cwd {
            Some(cwd) => std::path::Path::new(cwd).join(path),
            None => path,
        };
        if program.contains('/') {
            return Some(from_cwd(program.into())).filter(|p| p.exists());
        }
        let path = match self.env.as_ref().and_then(|env| env.get("PATH")) {
            Some(path) => std::ffi::OsString::from(path),
            // Where the spawn itself looks when no `PATH` is set.
            None => std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into()),
        };
        std::env::split_paths(&path).find_map(|dir| {
            // An empty entry is the working directory.
            let dir = if dir.as_os_str().is_empty() { ".".into() } else { dir };
            Some(from_cwd(dir.join(program))).filter(|p| p.is_file())
        })
    }

    /// The program (for messages) and the command to spawn.
    fn command(&self, hidden_env: &[String]) -> (String, Command) {
        let (program, mut cmd) = match (&self.argv, &self.command) {
            (Some(argv), _) => {
                let program = argv.first().cloned().unwrap_or_default();
                let mut cmd = Command::new(&program);
                cmd.args(argv.iter().skip(1));
                (program, cmd)
            }
            (None, command) => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c").arg(command.as_deref().unwrap_or_default());
                ("/bin/sh".to_string(), cmd)
            }
        };
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        // The server's own settings are not the command's: `CAIRN_TOKEN` (the
        // host token) and `CAIRN_DATABASE_URL` (its password) would reach any
        // caller who may run a command, a session included, and be written
        // into its durable output by an `env`. The start's own `env` may still
        // give a `CAIRN_*` variable.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("CAIRN_")) {
                cmd.env_remove(name);
            }
        }
        for name in hidden_env {
            cmd.env_remove(name);
        }
        if let Some(env) = &self.env {
            cmd.envs(env);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        (program, cmd)
    }
}

#[async_trait]
impl Tool for ShellTool {
    fn name(&self) -> &str {
        "shell"
    }

    fn args_schema(&self) -> Option<Value> {
        crate::schemas::args_schema(self.name())
    }

    fn event_types(&self) -> Vec<EventType> {
        vec![EventType::plain(OUTPUT_EVENT).with_schema(json!({
            "type": "object",
            "required": ["stream", "lines"],
            "properties": {
                "stream": {"enum": ["stdout", "stderr"]},
                "lines": {"type": "array", "items": {"type": "string"}}
            }
        }))]
    }

    fn validate_args(&self, args: &Value) -> Result<()> {
        ShellArgs::parse(args).map(|_| ())
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        let args = match ShellArgs::parse(&args) {
            Ok(a) => a,
            Err(e) => return bad_args(e),
        };
        if ctx.is_stopped() {
            return stopped_outcome(&ctx);
        }
        run_child(&ctx, &args, self.kill_grace, &self.hidden_env).await
    }
}

/// How the running phase ended.
enum End {
    /// The command exited (or waiting for it failed, with why).
    Exited(std::result::Result<ExitStatus, String>),
    Stopped,
    TimedOut,
    /// An append found the lease lost (or the process ended): write nothing more.
    Halted,
}

async fn run_child(ctx: &ToolContext, args: &ShellArgs, grace: Duration, hidden_env: &[String]) -> Outcome {
    let (program, mut cmd) = args.command(hidden_env);
    // The last look before a command starts, which nothing can take back: a
    // lease that lapsed (this node was paused after its claim, or renewals
    // failed) may be held by a peer that has run the command already.
    if ctx.lease_lapsed() {
        ctx.stop(StopReason::LeaseLost);
        return stopped_outcome(ctx);
    }
    // A rerunnable run is run again after its owner is lost: the group must
    // not outlive this process, or the rerun would race it. Its sentinel
    // leads the group before the command joins it, so a crash at any moment
    // after the command starts ends it.
    let sentinel = match ctx.record().disposition {
        Disposition::Rerunnable => Sentinel::lead(),
        _ => None,
    };
    if let Some(s) = &sentinel {
        cmd.process_group(s.pgid());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            // "No such file or directory" may be of the directory or of the
            // program: said which, where it can be told.
            let dir_problem = args.cwd.as_deref().and_then(|cwd| match std::fs::metadata(cwd) {
                Err(d) if d.kind() == std::io::ErrorKind::NotFound => Some("does not exist"),
                Ok(m) if !m.is_dir() => Some("is not a directory"),
                _ => None,
            });
            let found = match e.kind() {
                std::io::ErrorKind::NotFound => args.find_program(&program),
                _ => None,
            };
            let message = match (&args.cwd, dir_problem) {
                (Some(cwd), Some(problem)) => {
                    format!("could not start `{program}`: its working directory `{cwd}` {problem}")
                }
                // A program named by path that is there: what is missing is
                // its `#!` interpreter (or a loader it names).
                (_, None) if found.is_some() => {
                    // Found on `PATH`: say where, as the name does not.
                    let at = match &found {
                        Some(path) if !program.contains('/') => format!(" (`{}`)", path.display()),
                        _ => String::new(),
                    };
                    format!(
                        "could not start `{program}`: it is there{at}, but its interpreter (its `#!` line) is not ({e})"
                    )
                }
                (Some(cwd), None) if e.kind() == std::io::ErrorKind::NotFound => {
                    format!("could not start `{program}` in `{cwd}`: no such program ({e})")
                }
                (None, None) if e.kind() == std::io::ErrorKind::NotFound => {
                    format!("could not start `{program}`: no such program ({e})")
                }
                (Some(cwd), _) => format!("could not start `{program}` in `{cwd}`: {e}"),
                (None, _) => format!("could not start `{program}`: {e}"),
            };
            return Outcome::failure("tool", "spawn_failed", message);
        }
    };
    // With `process_group(0)` the child leads a new group whose id is its
    // pid; with a sentinel, the sentinel's group is the run's.
    let Some(pgid) = sentinel
        .as_ref()
        .map(Sentinel::pgid)
        .or_else(|| child.id().and_then(|p| libc::pid_t::try_from(p).ok()))
    else {
        let _ = child.kill().await;
        return Outcome::failure("tool", "spawn_failed", format!("`{program}` started without a pid"));
    };
    let mut guard = GroupGuard {
        pgid,
        armed: true,
        readers: Vec::new(),
    };
    let (tx, mut rx) = mpsc::channel(CHANNEL_LINES);
    if let Some(pipe) = child.stdout.take() {
        guard
            .readers
            .push(tokio::spawn(read_stream(pipe, Stream::Stdout, tx.clone())));
    }
    if let Some(pipe) = child.stderr.take() {
        guard
            .readers
            .push(tokio::spawn(read_stream(pipe, Stream::Stderr, tx.clone())));
    }
    drop(tx);

    let deadline = args.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut out = Output::new(args.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES));
    let mut rx_open = true;

    // Running: stream output until the command exits or the run must end.
    let end = loop {
        if out.halted.is_some() {
            break End::Halted;
        }
        let flush_at = out.next_deadline();
        tokio::select! {
            biased;
            _ = ctx.stopped() => break End::Stopped,
            _ = until(deadline) => break End::TimedOut,
            status = child.wait() => break End::Exited(status.map_err(|e| e.to_string())),
            _ = until(flush_at) => {
                interruptible(ctx, deadline, out.flush_due(ctx)).await;
            }
            line = rx.recv(), if rx_open => match line {
                Some(line) => {
                    let stream = line.stream;
                    if out.push(line) {
                        interruptible(ctx, deadline, out.flush(ctx, stream)).await;
                    }
                }
                None => rx_open = false,
            },
        }
    };

    // Stopping: the run ends here, so the group's end is this run's to
    // make: end it (all of it after a stop; survivors after an exit) while
    // still collecting its output. A sentinel stays in it until nothing else
    // is left (it ignores the SIGTERM), so a crash during the grace still
    // ends the group.
    let (leader_done, leader_status) = match &end {
        End::Exited(r) => (true, r.as_ref().ok().copied()),
        _ => (false, None),
    };
    // A run that lost its lease is killed at once: from the lapse a peer
    // may run the process, and a grace would run this copy beside it.
    let grace = if matches!(ctx.stop_reason(), Some(StopReason::LeaseLost)) {
        Duration::ZERO
    } else {
        grace
    };
    let mut group = Group { pgid, sentinel };
    let stop = stop_group(&mut child, &mut group, leader_done, leader_status, grace);
    tokio::pin!(stop);
    // Output keeps flowing to watchers as it does while the command runs
    // (by count, size and age); an append never holds up the group's end
    // (the group is driven on while it waits, and an append it cuts short
    // is made by the next flush).
    let (status, group_gone) = loop {
        let flush_at = out.next_deadline();
        let ended = tokio::select! {
            biased;
            done = &mut stop => Some(done),
            _ = until(flush_at) => beside(&mut stop, out.flush_due(ctx)).await,
            line = rx.recv(), if rx_open => match line {
                Some(line) => {
                    let stream = line.stream;
                    if out.push(line) {
                        beside(&mut stop, out.flush(ctx, stream)).await
                    } else {
                        None
                    }
                }
                None => {
                    rx_open = false;
                    None
                }
            },
        };
        if let Some(done) = ended {
            break done;
        }
    };
    if group_gone {
        guard.armed = false;
    }

    // Draining: the pipes close once every writer is gone; bounded, since a
    // process that left the group may still hold them.
    let drain_end = Instant::now() + DRAIN_MAX;
    let mut drain_until = Instant::now() + DRAIN;
    while rx_open {
        let flush_at = out.next_deadline();
        tokio::select! {
            _ = until(flush_at) => out.flush_due(ctx).await,
            line = rx.recv() => match line {
                Some(line) => {
                    let stream = line.stream;
                    if out.push(line) {
                        out.flush(ctx, stream).await;
                    }
                    // The quiet gap counts from the last line, after its
                    // append: time the store takes is not time without output.
                    drain_until = (Instant::now() + DRAIN).min(drain_end);
                }
                None => rx_open = false,
            },
            _ = sleep_until(drain_until) => break,
        }
    }
    drop(guard);
    out.mark_not_kept();
    out.flush_all(ctx).await;

    match end {
        End::Stopped => stopped_outcome(ctx),
        End::Halted => {
            if ctx.is_stopped() {
                return stopped_outcome(ctx);
            }
            match out.halted.take() {
                Some(e) => Outcome::failure("runtime", e.code(), e.to_string()),
                None => Outcome::failure("runtime", "lease_fenced", "the lease was lost"),
            }
        }
        End::TimedOut => {
            let ms = args.timeout_ms.unwrap_or_default();
            let mut raw = out.tails();
            raw.insert("timeout_ms".into(), json!(ms));
            Outcome::Failure {
                class: "tool".into(),
                code: "timeout".into(),
                message: format!("timed out after {ms} ms"),
                raw: Some(Value::Object(raw)),
            }
        }
        End::Exited(result) => match (status, result) {
            (Some(status), _) => exit_outcome(status, &out),
            (None, result) => {
                let detail = result.err().unwrap_or_else(|| "unknown".into());
                Outcome::Failure {
                    class: "tool".into(),
                    code: "wait_failed".into(),
                    message: format!("could not collect the exit status: {detail}"),
                    raw: Some(Value::Object(out.tails())),
                }
            }
        },
    }
}

fn exit_outcome(status: ExitStatus, out: &Output) -> Outcome {
    let mut raw = Map::new();
    let message = match (status.code(), status.signal()) {
        (Some(code), _) => {
            raw.insert("exit_code".into(), json!(code));
            if code == 0 {
                raw.extend(out.tails());
                return Outcome::success(Value::Object(raw));
            }
            format!("exited with status {code}")
        }
        (None, Some(signal)) => {
            raw.insert("exit_code".into(), Value::Null);
            raw.insert("signal".into(), json!(signal));
            format!("killed by signal {signal}")
        }
        (None, None) => {
            raw.insert("exit_code".into(), Value::Null);
            format!("ended with {status}")
        }
    };
    raw.extend(out.tails());
    Outcome::Failure {
        class: "tool".into(),
        code: "exit_status".into(),
        message,
        raw: Some(Value::Object(raw)),
    }
}

/// Runs `fut` unless the run is stopped or the deadline passes first (the
/// batch being appended is then dropped; the run is ending anyway).
async fn interruptible<F: Future<Output = ()>>(ctx: &ToolContext, deadline: Option<Instant>, fut: F) {
    tokio::select! {
        biased;
        _ = fut => {}
        _ = ctx.stopped() => {}
        _ = until(deadline) => {}
    }
}

/// Runs `fut` while driving `stop` on; `stop`'s answer if it ended first
/// (`fut` is then dropped).
async fn beside<S: Future + Unpin, F: Future<Output = ()>>(stop: &mut S, fut: F) -> Option<S::Output> {
    tokio::select! {
        biased;
        done = stop => Some(done),
        _ = fut => None,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------
// Process group control

/// Sends `signal` to every process of the group; errors (the group is gone)
/// are ignored. `pgid` is the group this run created, which cannot be reused
/// while any member (the unreaped leader included) exists.
fn signal_group(pgid: libc::pid_t, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// The run's process group, with its sentinel while that is in it.
struct Group {
    pgid: libc::pid_t,
    sentinel: Option<Sentinel>,
}

impl Group {
    /// Whether the group still has a member that is not a zombie, the
    /// sentinel aside. Once none is left the sentinel is stopped too (the
    /// group is then empty): it guarded the group until there was nothing
    /// left to guard.
    async fn alive(&mut self) -> bool {
        // No signal: only checks that the group exists and may be signalled.
        match killpg(Pid::from_raw(self.pgid), None) {
            Ok(()) => {}
            // EPERM: members we cannot signal; count them as alive so the
            // grace and SIGKILL steps still run.
            Err(Errno::EPERM) => return true,
            // ESRCH: no member left (a sentinel killed by other means is
            // reaped here).
            Err(_) => {
                self.disarm().await;
                return false;
            }
        }
        // Zombies still count for killpg, and an init that does not reap them
        // would keep the group "alive" forever; look past them (and past the
        // sentinel) where we can. Reading every `/proc/{pid}/stat` blocks:
        // not on the runtime's threads.
        let (pgid, sentinel) = (self.pgid, self.sentinel.as_ref().map(|s| s.pid));
        let listed = tokio::task::spawn_blocking(move || live_member(pgid, sentinel))
            .await
            .ok()
            .flatten();
        match listed {
            Some(true) => true,
            Some(false) => {
                self.disarm().await;
                false
            }
            // Members cannot be listed here, so the sentinel cannot be told
            // from the rest: stop it (the group is unguarded from here on, as
            // without one) and count on what killpg says.
            None if self.sentinel.is_some() => {
                self.disarm().await;
                matches!(killpg(Pid::from_raw(self.pgid), None), Ok(()) | Err(Errno::EPERM))
            }
            None => true,
        }
    }

    /// Stops the sentinel (and reaps it), if it is still there.
    async fn disarm(&mut self) {
        if let Some(sentinel) = self.sentinel.take() {
            sentinel.disarm().await;
        }
    }
}

/// Whether the group has a member that is not a zombie, `except` (the
/// sentinel, this process's unreaped child, so its pid is not reused) aside;
/// `None` when the members cannot be listed.
#[cfg(target_os = "linux")]
fn live_member(pgid: libc::pid_t, except: Option<libc::pid_t>) -> Option<bool> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        if Some(pid) == except {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may contain spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<libc::pid_t>().ok());
        if pgrp == Some(pgid) && !matches!(state, "Z" | "X" | "x") {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(not(target_os = "linux"))]
fn live_member(_pgid: libc::pid_t, _except: Option<libc::pid_t>) -> Option<bool> {
    None
}

/// Ends the group: nothing to do when the leader is reaped and no member is
/// left; otherwise SIGTERM, then SIGKILL once `grace` passes with a member
/// still alive. Reaps the leader, and the sentinel once the rest is gone (it
/// ignores the SIGTERM and stays, so a crash during the grace still ends the
/// group; the SIGKILL ends it with the rest). Answers the leader's exit
/// status (when known) and whether the group was seen empty.
async fn stop_group(
    child: &mut Child,
    group: &mut Group,
    mut leader_done: bool,
    mut status: Option<ExitStatus>,
    grace: Duration,
) -> (Option<ExitStatus>, bool) {
    if leader_done && !group.alive().await {
        return (status, true);
    }
    signal_group(group.pgid, Signal::SIGTERM);
    // A stopped process only acts on SIGTERM once continued.
    signal_group(group.pgid, Signal::SIGCONT);
    let deadline = Instant::now() + grace;
    if settle(child, group, &mut leader_done, &mut status, deadline).await {
        return (status, true);
    }
    signal_group(group.pgid, Signal::SIGKILL);
    let gone = settle(
        child,
        group,
        &mut leader_done,
        &mut status,
        Instant::now() + KILL_SETTLE,
    )
    .await;
    // The SIGKILL ended the sentinel whether or not the rest is seen gone.
    group.disarm().await;
    (status, gone)
}

/// Waits until the leader is reaped and the group is empty (true) or the
/// deadline passes (false).
async fn settle(
    child: &mut Child,
    group: &mut Group,
    leader_done: &mut bool,
    status: &mut Option<ExitStatus>,
    deadline: Instant,
) -> bool {
    loop {
        if *leader_done && !group.alive().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let tick = sleep(POLL.min(deadline - now));
        if *leader_done {
            tick.await;
        } else {
            tokio::select! {
                r = child.wait() => {
                    *leader_done = true;
                    *status = r.ok();
                }
                _ = tick => {}
            }
        }
    }
}

/// A member of a rerunnable run's group that ends the group when this
/// process dies, however it dies (a SIGKILL runs no destructor, so nothing
/// here could). It blocks reading a pipe whose only writer is this process
/// (the write end is close-on-exec, so no child holds it); the read ends when
/// the last copy of the write end closes, and then it kills its own group.
/// Without it, a command outlives a crash and its rerun after the restart
/// runs beside it. It leads the group, and the command joins it: started
/// first, it is in place whenever the command runs. It ignores the signals a
/// stop (or a command signalling its own group) sends, so it stays through
/// a stop's grace, and is stopped alone once nothing else is left in the
/// group. Owner-bound runs have none: they are never run again, and their
/// command may still finish its work if it writes no more output (its
/// pipes' reader is gone: a write ends it with SIGPIPE).
struct Sentinel {
    child: Child,
    pid: libc::pid_t,
    _writer: std::io::PipeWriter,
}

/// The sentinel: it waits for its pipe to close, then kills its group. It
/// ignores every signal that can be ignored (a command may signal its own
/// group: `kill -ALRM 0`), so only SIGKILL ends it before then: ignored
/// before its shell starts ([`ignore_signals`]), since a command that
/// signals its group at once may do so before a shell's own `trap` has run.
const SENTINEL_SCRIPT: &str = "read line; kill -9 0";

/// Sets every signal that can be ignored to be ignored, as the sentinel's
/// process is made: a disposition of "ignore" is kept across `exec`, and a
/// non-interactive shell started with a signal ignored keeps it ignored.
/// SIGCHLD is left as it is (ignoring it changes how children are reaped);
/// SIGKILL and SIGSTOP cannot be ignored. Only `signal`, which is
/// async-signal-safe, so it may run between `fork` and `exec`.
fn ignore_signals() -> std::io::Result<()> {
    for sig in 1..=libc::SIGRTMAX() {
        if matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD) {
            continue;
        }
        // SAFETY: `signal` with `SIG_IGN` touches only this process's
        // dispositions; signals the C library keeps for itself (or that do
        // not exist) answer an error, which leaves them as they were.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    Ok(())
}

impl Sentinel {
    /// A sentinel leading a new group, or `None` when it cannot start (the
    /// command then leads its own group, unguarded, as it would without).
    fn lead() -> Option<Self> {
        let (reader, writer) = std::io::pipe().ok()?;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(SENTINEL_SCRIPT)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the hook runs between fork and exec and calls only
        // `signal`, which is async-signal-safe.
        unsafe {
            command.pre_exec(ignore_signals);
        }
        let child = command.spawn().ok()?;
        let pid = child.id().and_then(|p| libc::pid_t::try_from(p).ok())?;
        Some(Self {
            child,
            pid,
            _writer: writer,
        })
    }

    /// The group it leads (its own pid).
    fn pgid(&self) -> libc::pid_t {
        self.pid
    }

    /// Stop the sentinel alone (and reap it) before its pipe closes.
    async fn disarm(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Kills the group and stops the pipe readers if the run is dropped or ends
/// without seeing the group empty.
struct GroupGuard {
    pgid: libc::pid_t,
    armed: bool,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
        if self.armed {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------
// Output

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn label(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

struct Line {
    stream: Stream,
    text: String,
    /// The bytes the command wrote for it: all of them, with its `\r` and
    /// newline, however much of it `text` keeps.
    written: u64,
}

/// Reads `pipe` line by line into `tx` until EOF.
async fn read_stream<R: AsyncRead + Unpin>(pipe: R, stream: Stream, tx: mpsc::Sender<Line>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        // One byte over the limit is kept: it may be the `\r` of a `\r\n`,
        // which is no part of the line.
        match read_line_bounded(&mut reader, &mut buf, MAX_LINE_BYTES + 1).await {
            Ok(Some((truncated, written))) => {
                let text = decode_line(&buf, truncated);
                if tx.send(Line { stream, text, written }).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(stream = stream.label(), error = %e, "shell output pipe failed");
                return;
            }
        }
    }
}

/// Reads one line (without its `\n`) into `buf`, keeping at most `max` bytes
/// and discarding the rest of the line. `Some((truncated, written))` for a
/// line, `written` counting every byte read for it (its `\n` too), `None` at
/// EOF. A last line without `\n` is still a line.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<(bool, u64)>> {
    buf.clear();
    let mut truncated = false;
    let mut written = 0u64;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((written > 0).then_some((truncated, written)));
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let content = newline.unwrap_or(chunk.len());
        let room = max.saturating_sub(buf.len());
        if content > room {
            truncated = true;
        }
        buf.extend_from_slice(&chunk[..content.min(room)]);
        match newline {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(Some((truncated, written + i as u64 + 1)));
            }
            None => {
                written += content as u64;
                reader.consume(content);
            }
        }
    }
}

/// The text of a line read with at most `MAX_LINE_BYTES + 1` bytes kept
/// (`truncated`: more were there): without a `\r` it ended with, and cut to
/// `MAX_LINE_BYTES` and marked when what is left is longer.
fn decode_line(bytes: &[u8], mut truncated: bool) -> String {
    let mut bytes = bytes;
    if !truncated {
        if let Some(stripped) = bytes.strip_suffix(b"\r") {
            bytes = stripped;
        }
    }
    if bytes.len() > MAX_LINE_BYTES {
        bytes = &bytes[..MAX_LINE_BYTES];
        truncated = true;
    }
    if truncated {
        // Do not leave half a character where the line was cut.
        if let Err(e) = std::str::from_utf8(bytes) {
            if e.error_len().is_none() {
                bytes = &bytes[..e.valid_up_to()];
            }
        }
    }
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if truncated {
        text.push_str(TRUNCATED_MARK);
    }
    text
}

#[derive(Default)]
struct Batch {
    lines: Vec<String>,
    bytes: usize,
    since: Option<Instant>,
}

impl Batch {
    /// Adds a line; true when the batch is due for an append.
    fn add(&mut self, text: String) -> bool {
        self.since.get_or_insert_with(Instant::now);
        self.bytes += text.len();
        self.lines.push(text);
        self.is_full()
    }

    fn is_full(&self) -> bool {
        self.lines.len() >= BATCH_MAX_LINES || self.bytes >= BATCH_MAX_BYTES
    }
}

/// Lines of one stream that were read and not appended.
#[derive(Clone, Copy, Default)]
struct NotKept {
    lines: u64,
    /// Their bytes as the command wrote them (each `\r` and newline
    /// included, a line past the length cut counted whole).
    bytes: u64,
}

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        let mut line = line.to_string();
        if line.len() > TAIL_MAX_BYTES {
            let mut cut = TAIL_MAX_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > TAIL_MAX_LINES || self.bytes > TAIL_MAX_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    fn render(&self) -> String {
        let mut s = String::with_capacity(self.bytes + self.lines.len());
        for line in &self.lines {
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}

/// Pending batches and tails of both streams.
struct Output {
    batches: [Batch; 2],
    tails: [Tail; 2],
    /// The most bytes of output appended (`max_output_bytes`), each line
    /// counted with its newline (so empty lines count too), ...
    max_bytes: u64,
    /// ... the bytes appended so far ...
    kept_bytes: u64,
    /// ... and whether a line did not fit: no line after it is appended,
    /// however short, so what is kept is the output's start in order.
    full: bool,
    /// What each stream lost to the bound.
    not_kept: [NotKept; 2],
    /// Set when an append found the lease lost or the process ended; nothing
    /// more is appended after that.
    halted: Option<CairnError>,
    /// Batches appended by this run: each batch's replay key
    /// (`shell.output/{run}/{n}`), so an append the store failed is tried
    /// again while the lease holds, and one whose answer was lost lands once.
    appended: u64,
    /// The batch whose append was begun and not answered (its flush was
    /// dropped): appended first by the next flush.
    unsent: Option<Unsent>,
}

/// A batch handed to the store and not yet answered.
struct Unsent {
    key: String,
    count: usize,
    stream: Stream,
    payload: Value,
}

impl Output {
    /// Output of which at most `max_bytes` is appended.
    fn new(max_bytes: u64) -> Self {
        Self {
            batches: Default::default(),
            tails: Default::default(),
            max_bytes,
            kept_bytes: 0,
            full: false,
            not_kept: Default::default(),
            halted: None,
            appended: 0,
            unsent: None,
        }
    }

    /// Adds a line (to its stream's tail, and to its batch while the bound
    /// is not reached); true when its batch is due for an append.
    fn push(&mut self, line: Line) -> bool {
        let i = line.stream as usize;
        self.tails[i].push(&line.text);
        let cost = line.text.len() as u64 + 1;
        if !self.full && self.kept_bytes.saturating_add(cost) <= self.max_bytes {
            self.kept_bytes += cost;
            return self.batches[i].add(line.text);
        }
        self.not_kept[i].lines += 1;
        // What the command wrote, not the line as it would have been kept.
        self.not_kept[i].bytes += line.written;
        if self.full {
            return false;
        }
        // Said at once, for whoever follows the output live: the command
        // runs on, its output unrecorded.
        self.full = true;
        self.batches[i].add(format!(
            "…[output past max_output_bytes ({} bytes) is not kept from here on]",
            self.max_bytes
        ))
    }

    /// Once the output has ended: a last line in each stream that lost
    /// lines to the bound, with how many lines and bytes it lost.
    fn mark_not_kept(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let lost = self.not_kept[stream as usize];
            if lost.lines == 0 {
                continue;
            }
            let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            self.batches[stream as usize].add(format!(
                "…[not kept: {}, {} of {} past max_output_bytes ({} bytes)]",
                plural(lost.lines, "line"),
                plural(lost.bytes, "byte"),
                stream.label(),
                self.max_bytes
            ));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.batches
            .iter()
            .filter_map(|b| b.since)
            .min()
            .map(|t| t + BATCH_MAX_AGE)
    }

    /// Appends `stream`'s batch, after any batch whose append was cut off.
    /// Cancel-safe: a flush dropped mid-append (the run told to stop, its
    /// timeout) leaves its batch as `unsent`, and the next flush appends it
    /// first under the same replay key, so it lands once and in order.
    async fn flush(&mut self, ctx: &ToolContext, stream: Stream) {
        self.send_unsent(ctx).await;
        let batch = std::mem::take(&mut self.batches[stream as usize]);
        if batch.lines.is_empty() || self.halted.is_some() {
            return;
        }
        self.appended += 1;
        self.unsent = Some(Unsent {
            key: format!("{OUTPUT_EVENT}/{}/{}", ctx.attempt(), self.appended),
            count: batch.lines.len(),
            stream,
            payload: json!({"stream": stream.label(), "lines": batch.lines}),
        });
        self.send_unsent(ctx).await;
    }

    async fn send_unsent(&mut self, ctx: &ToolContext) {
        let Some(u) = &self.unsent else { return };
        if self.halted.is_some() {
            return;
        }
        let result = ctx.append_once(OUTPUT_EVENT, u.payload.clone(), &u.key).await;
        let Some(u) = self.unsent.take() else { return };
        match result {
            Ok(_) => {}
            Err(e @ (CairnError::LeaseFenced(_) | CairnError::ProcessTerminal(_))) => self.halted = Some(e),
            Err(e) => tracing::warn!(
                process_id = ctx.process_id(),
                stream = u.stream.label(),
                lines = u.count,
                error = %e,
                "shell output not recorded"
            ),
        }
    }

    async fn flush_due(&mut self, ctx: &ToolContext) {
        let now = Instant::now();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if self.batches[stream as usize]
                .since
                .is_some_and(|t| t + BATCH_MAX_AGE <= now)
            {
                self.flush(ctx, stream).await;
            }
        }
    }

    async fn flush_all(&mut self, ctx: &ToolContext) {
        self.flush(ctx, Stream::Stdout).await;
        self.flush(ctx, Stream::Stderr).await;
    }

    fn tails(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("stdout_tail".into(), Value::String(self.tails[0].render()));
        m.insert("stderr_tail".into(), Value::String(self.tails[1].render()));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sentinel ignores its group's signals from the moment it exists: a
    /// command that signals its own group at once (before a shell could have
    /// run a `trap`) leaves it standing, and it still ends its group once its
    /// pipe closes.
    #[tokio::test]
    async fn a_sentinel_ignores_signals_sent_as_it_starts() {
        for _ in 0..5 {
            let mut sentinel = Sentinel::lead().expect("a sentinel");
            let pgid = Pid::from_raw(sentinel.pgid());
            for signal in [
                Signal::SIGALRM,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGUSR1,
                Signal::SIGINT,
            ] {
                killpg(pgid, signal).expect("signal the group");
            }
            // The shell has started and reached its `read` (its pipe is
            // open): a signal it did not ignore would have ended it by now.
            let status = tokio::time::timeout(Duration::from_millis(200), sentinel.child.wait()).await;
            assert!(status.is_err(), "the sentinel ended on a signal: {status:?}");
            let Sentinel { mut child, _writer, .. } = sentinel;
            drop(_writer);
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("the sentinel ends once its pipe closes")
                .expect("reaped");
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "it killed its own group: {status:?}"
            );
        }
    }
}
