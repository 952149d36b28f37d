//! `cairn bench-child`: the second OS process of a bench run, and the bench's
//! side of talking to it. The child is this same binary
//! ([`std::env::current_exe`]); it opens the database named by
//! [`CHILD_DB_ENV`](super::CHILD_DB_ENV) through [`open_backend`], as a second
//! host of the same database would.
//!
//! Protocol (one line each way):
//!
//! - `await`: prints `ready`; then for each stdin line `await ID` prints
//!   `waiting ID` just before it starts awaiting and `done ID UNIX_NANOS STATUS`
//!   when the await resolved (or `error ID MESSAGE`). Exits at end of stdin.
//! - `memory`: prints one JSON object (`rss_before`, `rss_after` in bytes,
//!   `processes`, `start_seconds`) or `{"error": ...}`, then drains its runtime
//!   and exits.
//! - `suspended`, `schedules`: print one JSON object (see `bench::suspended`,
//!   `bench::schedules`) or `{"error": ...}`, then exit.

use std::io::Write;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::{Disposition, Processes, StartRequest, WorkerConfig};
use cairn_tools::builtin_tools;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;

use super::{start_new, CHILD_DB_ENV};
use crate::cli::{BenchChildArgs, BenchChildRole};
use crate::db::open_backend;

/// Run a child role.
pub async fn run(args: BenchChildArgs) -> ExitCode {
    let Ok(url) = std::env::var(CHILD_DB_ENV) else {
        eprintln!("cairn bench-child: an internal command of `cairn bench` ({CHILD_DB_ENV} is not set)");
        return ExitCode::from(2);
    };
    match args.role {
        BenchChildRole::Await => await_role(&url).await,
        BenchChildRole::Memory { processes, prefix } => memory_role(&url, processes, &prefix).await,
        BenchChildRole::Suspended {
            processes,
            prefix,
            idle_seconds,
            samples,
        } => super::suspended::child_role(&url, processes, &prefix, idle_seconds, samples).await,
        BenchChildRole::Schedules {
            schedules,
            prefix,
            idle_seconds,
            runs,
        } => super::schedules::child_role(&url, schedules, &prefix, idle_seconds, runs).await,
    }
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Nanoseconds since the Unix epoch: the one clock both processes read.
pub fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn await_role(url: &str) -> ExitCode {
    let backend = match open_backend(url).await {
        Ok(b) => b,
        Err(e) => {
            say(&format!("error - {e}"));
            return ExitCode::FAILURE;
        }
    };
    // An awaiter only: this process must not claim anything of the bench's.
    let p = Processes::builder(backend.registry)
        .hub(backend.hub)
        .clock(backend.clock)
        .tools(builtin_tools(false))
        .without_worker()
        .start();
    say("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(id) = line.strip_prefix("await ") else {
            continue;
        };
        let (p, id) = (p.clone(), id.to_string());
        tokio::spawn(async move {
            say(&format!("waiting {id}"));
            match p.await_output(&id, super::AWAIT_TIMEOUT).await {
                Ok(rec) => say(&format!("done {id} {} {}", wall_ns(), rec.status.label())),
                Err(e) => say(&format!("error {id} {e}")),
            }
        });
    }
    ExitCode::SUCCESS
}

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`).
pub fn rss_bytes() -> Result<u64, String> {
    status_kib("VmRSS:")
}

/// Anonymous resident memory (`RssAnon`): the heap and stacks, without the
/// file pages (the binary's code, mapped files) that `VmRSS` also counts.
pub fn rss_anon_bytes() -> Result<u64, String> {
    status_kib("RssAnon:")
}

fn status_kib(field: &str) -> Result<u64, String> {
    status_kib_of("self", field)
}

/// A `kB` field of `/proc/{pid}/status` (`pid` may be `self`), in bytes.
pub fn status_kib_of(pid: &str, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {field} line in /proc/self/status"))
}

async fn memory_role(url: &str, processes: usize, prefix: &str) -> ExitCode {
    let backend = match open_backend(url).await {
        Ok(b) => b,
        Err(e) => {
            say(&json!({"error": e.to_string()}).to_string());
            return ExitCode::FAILURE;
        }
    };
    let before = match rss_bytes() {
        Ok(v) => v,
        Err(e) => {
            say(&json!({"error": e}).to_string());
            return ExitCode::FAILURE;
        }
    };
    // Every process must hold a slot at once: concurrency above the count.
    let p = Processes::builder(backend.registry)
        .hub(backend.hub)
        .clock(backend.clock)
        .tools(builtin_tools(false))
        .worker_config(WorkerConfig {
            owner_id: format!("{prefix}-worker"),
            concurrency: processes + 64,
            batch_size: 256,
            ..WorkerConfig::default()
        })
        .start();
    let t = Instant::now();
    let answer = match start_waiting(&p, processes, prefix, Disposition::OwnerBound).await {
        Ok(()) => {
            let start_seconds = t.elapsed().as_secs_f64();
            // Let freed request buffers settle before reading.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match rss_bytes() {
                Ok(after) => json!({
                    "rss_before": before,
                    "rss_after": after,
                    "processes": processes,
                    "start_seconds": start_seconds,
                }),
                Err(e) => json!({"error": e}),
            }
        }
        Err(e) => json!({"error": e}),
    };
    say(&answer.to_string());
    // Owner-bound: the drain ends every one (abandoned, owner_drain), so nothing
    // of this run stays claimable for a later scenario.
    p.shutdown().await;
    if answer.get("error").is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Start `processes` `wait_signal` processes (`{prefix}-{i:07}`) from 32
/// starters and return once every one has recorded its wait (an `owner_bound`
/// one waits holding its run, a `rerunnable` one has suspended).
pub(crate) async fn start_waiting(
    p: &Processes,
    processes: usize,
    prefix: &str,
    disposition: Disposition,
) -> Result<(), String> {
    const STARTERS: usize = 32;
    let mut tasks = JoinSet::new();
    for s in 0..STARTERS.min(processes) {
        let (p, prefix) = (p.clone(), prefix.to_string());
        tasks.spawn(async move {
            for i in (s..processes).step_by(STARTERS) {
                let id = format!("{prefix}-{i:07}");
                let req = StartRequest::tool(id, "wait_signal", json!({"name": "go"}), disposition);
                start_new(&p, req).await?;
            }
            for i in (s..processes).step_by(STARTERS) {
                let id = format!("{prefix}-{i:07}");
                p.await_event(&id, cairn_core::events::WAITING, 0, Duration::from_secs(600))
                    .await
                    .map_err(|e| format!("`{id}` never waited: {e}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("starter task: {e}"))??;
    }
    Ok(())
}

// ------------------------------------------------------------- the bench's side

/// A running child with line-oriented stdin/stdout.
pub(crate) struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProc {
    /// Spawn `cairn bench-child ARGS` with the database URL in its environment.
    pub async fn spawn(url: &str, args: &[&str]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("bench-child")
            .args(args)
            .env(CHILD_DB_ENV, url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot spawn `cairn bench-child`: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("child stdout not piped")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Send one line.
    pub async fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("child stdin closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("child stdin: {e}"))?;
        stdin.flush().await.map_err(|e| format!("child stdin: {e}"))
    }

    /// The next line, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<String, String> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err("the child process ended early".into()),
            Ok(Err(e)) => Err(format!("child stdout: {e}")),
            Err(_) => Err(format!("no answer from the child process within {timeout:?}")),
        }
    }

    /// The next line parsed as JSON.
    /// Spawn `cairn bench-child ARGS` for a role that prints one JSON answer
    /// (or `{"error": ...}`) and exits; answer it once the child has exited.
    pub async fn answer(url: &str, args: &[&str]) -> Result<Value, String> {
        let mut child = Self::spawn(url, args).await?;
        let answer = child.recv_json(Duration::from_secs(3600)).await?;
        let finished = child.finish(Duration::from_secs(120)).await;
        if let Some(e) = answer.get("error") {
            return Err(format!("{} child: {}", args[0], e.as_str().unwrap_or("failed")));
        }
        finished?;
        Ok(answer)
    }

    pub async fn recv_json(&mut self, timeout: Duration) -> Result<Value, String> {
        let line = self.recv(timeout).await?;
        serde_json::from_str(&line).map_err(|e| format!("child answered `{line}`: {e}"))
    }

    /// Close stdin and wait for the child to exit within `timeout` (killed after).
    pub async fn finish(mut self, timeout: Duration) -> Result<(), String> {
        self.stdin = None;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("waiting for the child: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!("the child process did not exit within {timeout:?}"))
            }
        }
    }
}
