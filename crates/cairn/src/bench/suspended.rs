//! `suspended`: what suspended processes cost a server, held against SPEC §13.
//!
//! Each run is a fresh OS process (`cairn bench-child suspended`) running a
//! runtime with the default worker flags (64 slots). It runs 3,000 short
//! processes to warm its pools and caches, reads its RSS once it idles, starts N rerunnable `wait_signal` processes (each suspends:
//! its lease is released and it holds no slot, task or memory), reads its RSS
//! again, then measures its own CPU time over an idle window, the time a short
//! `echo` started meanwhile takes to complete (no starvation), and signal →
//! running (`process.resumed` of the signalled process) for random ones.
//! The suspended processes stay in the database afterwards, as waiting rows.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_core::{events, Disposition, Processes, StartRequest, WorkerConfig};
use cairn_tools::builtin_tools;
use nix::time::{clock_getcpuclockid, clock_gettime, ClockId};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::child::{rss_anon_bytes, rss_bytes, say, start_waiting, ChildProc};
use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::stats::{quantile, Rng};
use super::{start_new, Ctx};
use crate::db::open_backend;

const MIB: f64 = 1024.0 * 1024.0;
/// SPEC §13: 100,000 suspended processes cost under 100 MiB beyond an idle server.
const SPEC_BYTES_PER_PROCESS: f64 = 100.0 * MIB / 100_000.0;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let processes = ctx.plan.suspended_processes;
    let idle = ctx.plan.idle_seconds;
    let samples = ctx.plan.samples;
    let mut r = ScenarioReport::new(
        "suspended",
        json!({"processes": processes, "tool": "wait_signal", "disposition": "rerunnable",
               "idle_seconds": idle, "samples": samples, "workers": 64}),
    );
    if cfg!(not(target_os = "linux")) {
        r.outcome = Outcome::Skipped("n/a: RSS and CPU time are read from /proc (Linux only)".into());
        return r;
    }
    if ctx.kind == "memory" {
        r.outcome = Outcome::Skipped("n/a: memory is per-process (the child cannot see the bench's)".into());
        return r;
    }
    r.notes.push(format!(
        "a fresh cairn process with default worker flags; RSS from idle to all {processes} suspended; \
         CPU of that process over {idle} s idle; a short echo started meanwhile; signal -> process.resumed \
         for {samples} random suspended processes (same node); targets from SPEC §13"
    ));
    let signal_target = "SPEC §13: 10 ms p50, same node";
    let signal_target_ms = 10.0;
    let mut bytes_each = Figure {
        key: "suspended.bytes_per_process".into(),
        label: format!("RSS per suspended process ({processes} suspended)"),
        unit: "bytes",
        higher_is_better: false,
        runs: Vec::new(),
        bound: Bound::Target(
            SPEC_BYTES_PER_PROCESS,
            "bytes",
            "SPEC §13: 100,000 suspended under 100 MiB beyond idle",
        ),
        samples_per_run: None,
    };
    let mut delta = Figure {
        key: "suspended.rss_delta".into(),
        label: "RSS beyond the idle server, all suspended".into(),
        unit: "MiB",
        bound: Bound::NotApplicable("held per process above"),
        ..bytes_each.clone()
    };
    let mut cpu = Figure {
        key: "suspended.idle_cpu".into(),
        label: format!("CPU while {processes} are suspended and nothing happens"),
        unit: "% of a core",
        bound: Bound::Target(1.0, "% of a core", "SPEC §13: under 1% of one core idle"),
        ..bytes_each.clone()
    };
    let mut other = Figure::latency(
        "suspended.other_ms",
        "a short echo started meanwhile, start -> completed",
        3,
        1,
    );
    let mut p50 = Figure {
        bound: Bound::Target(signal_target_ms, "ms", signal_target),
        ..Figure::latency("suspended.signal.p50", "signal -> running again, p50", 2, samples)
    };
    let mut p99 = Figure::latency("suspended.signal.p99", "signal -> running again, p99", 2, samples);
    let mut cross50 = Figure {
        bound: Bound::Target(20.0, "ms", "SPEC §13: 20 ms p50 across PostgreSQL nodes"),
        ..Figure::latency(
            "suspended.signal_cross_node.p50",
            "signal written on a second node -> running again, p50",
            2,
            samples,
        )
    };
    let mut cross99 = Figure::latency(
        "suspended.signal_cross_node.p99",
        "signal written on a second node -> running again, p99",
        2,
        samples,
    );
    let mut rate = Figure {
        key: "suspended.start_rate".into(),
        label: "started and suspended per second".into(),
        unit: "processes/s",
        higher_is_better: true,
        runs: Vec::new(),
        bound: Bound::NotApplicable("three commits each: register, claim, suspend"),
        samples_per_run: None,
    };
    for (label, _) in ctx.runs().into_iter().filter(|(_, measured)| *measured) {
        ctx.progress.detail(format!(
            "{}: suspended, {label}: {processes} processes in a child process",
            ctx.tag()
        ));
        let a = match one_run(ctx, &label, processes, idle, samples).await {
            Ok(a) => a,
            Err(e) => {
                r.outcome = Outcome::Failed(format!("{label}: {e}"));
                return r;
            }
        };
        let f = |k: &str| a[k].as_f64().unwrap_or(f64::NAN);
        let grown = (f("rss_after") - f("rss_idle")).max(0.0);
        bytes_each.runs.push(grown / processes as f64);
        delta.runs.push(grown / MIB);
        cpu.runs.push(f("idle_cpu_percent"));
        other.runs.push(f("other_ms"));
        p50.runs.push(f("signal_p50_ms"));
        p99.runs.push(f("signal_p99_ms"));
        rate.runs.push(processes as f64 / f("start_seconds"));
        if a["cross_p50_ms"].is_number() {
            cross50.runs.push(f("cross_p50_ms"));
            cross99.runs.push(f("cross_p99_ms"));
        }
    }
    r.figures.extend([bytes_each, delta, cpu, other, p50, p99, rate]);
    if !cross50.runs.is_empty() {
        r.figures.extend([cross50, cross99]);
    }
    r
}

async fn one_run(ctx: &Ctx<'_>, label: &str, processes: usize, idle: u64, samples: usize) -> Result<Value, String> {
    let prefix = ctx.prefix("suspended", label);
    let (count, idle_s, samples_s) = (processes.to_string(), idle.to_string(), samples.to_string());
    ChildProc::answer(
        ctx.url,
        &[
            "suspended",
            "--processes",
            &count,
            "--prefix",
            &prefix,
            "--idle-seconds",
            &idle_s,
            "--samples",
            &samples_s,
        ],
    )
    .await
}

// ------------------------------------------------------------- the child's side

/// CPU time this process has used, in seconds, from the kernel's CPU-time
/// clock (`CLOCK_PROCESS_CPUTIME_ID`, every thread, nanosecond accounting).
/// `/proc/self/stat`'s utime + stime count 10 ms ticks, which read 0 over a
/// short run.
pub(crate) fn cpu_seconds() -> Result<f64, String> {
    cpu_clock_seconds(ClockId::CLOCK_PROCESS_CPUTIME_ID, "this process")
}

/// CPU time process `pid` has used, in seconds, as [`cpu_seconds`] (its
/// clock from `clock_getcpuclockid`).
pub(crate) fn cpu_seconds_of(pid: u32) -> Result<f64, String> {
    let raw = i32::try_from(pid).map_err(|_| format!("process id {pid} is out of range"))?;
    let clock = clock_getcpuclockid(Pid::from_raw(raw)).map_err(|e| format!("no CPU clock for process {pid}: {e}"))?;
    cpu_clock_seconds(clock, &format!("process {pid}"))
}

fn cpu_clock_seconds(clock: ClockId, whose: &str) -> Result<f64, String> {
    let t = clock_gettime(clock).map_err(|e| format!("cannot read the CPU clock of {whose}: {e}"))?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

pub(crate) async fn child_role(url: &str, processes: usize, prefix: &str, idle: u64, samples: usize) -> ExitCode {
    let answer = match child_measure(url, processes, prefix, idle, samples).await {
        Ok(v) => v,
        Err(e) => json!({"error": e}),
    };
    say(&answer.to_string());
    if answer.get("error").is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn child_measure(url: &str, processes: usize, prefix: &str, idle: u64, samples: usize) -> Result<Value, String> {
    let backend = open_backend(url).await.map_err(|e| e.to_string())?;
    let p = Processes::builder(backend.registry)
        .hub(backend.hub)
        .clock(backend.clock)
        .tools(builtin_tools(false))
        .worker_config(WorkerConfig {
            owner_id: format!("{prefix}-worker"),
            ..WorkerConfig::default()
        })
        .start();
    // An idle server is one that has worked and has nothing in flight: its
    // connection pools, blocking threads, caches and allocator arenas are
    // warm. So first run WARMUP short processes with the same concurrency.
    warm_up(&p, prefix, WARMUP.min(processes.max(100))).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle = rss_bytes()?;
    let anon_idle = rss_anon_bytes()?;
    let t = Instant::now();
    start_waiting(&p, processes, prefix, Disposition::Rerunnable).await?;
    let start_seconds = t.elapsed().as_secs_f64();
    // The same settling before the second reading: what is left is held.
    tokio::time::sleep(SETTLE).await;
    let rss_after = rss_bytes()?;
    let anon_after = rss_anon_bytes()?;
    let cpu0 = cpu_seconds()?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let idle_cpu_percent = (cpu_seconds()? - cpu0) / window.elapsed().as_secs_f64() * 100.0;

    // A short process started while every slot-free suspension sits in the store.
    let other = format!("{prefix}-other");
    let t = Instant::now();
    start_new(
        &p,
        StartRequest::tool(&other, "echo", json!({"value": 1}), Disposition::Rerunnable),
    )
    .await?;
    let done = p
        .await_output(&other, Duration::from_secs(60))
        .await
        .map_err(|e| format!("`{other}`: {e}"))?;
    if !done.is_terminal() {
        return Err(format!(
            "`{other}` did not complete within 60 s while processes were suspended"
        ));
    }
    let other_ms = t.elapsed().as_secs_f64() * 1000.0;

    let mut rng = Rng::new(processes as u64, prefix);
    let mut picked = std::collections::BTreeSet::new();
    let lat = signal_samples(&p, &p, processes, prefix, samples, &mut rng, &mut picked).await?;
    // PostgreSQL: a second node (its own connections, hub and LISTEN, no
    // worker) writes the signal; this node's driver resumes the process.
    let cross = if url.starts_with("postgres") {
        let other = open_backend(url).await.map_err(|e| e.to_string())?;
        let signaller = Processes::builder(other.registry)
            .hub(other.hub)
            .clock(other.clock)
            .tools(builtin_tools(false))
            .without_worker()
            .start();
        let lat = signal_samples(&signaller, &p, processes, prefix, samples, &mut rng, &mut picked).await?;
        signaller.shutdown().await;
        Some(lat)
    } else {
        None
    };
    p.shutdown().await;
    Ok(json!({
        "processes": processes,
        "rss_idle": rss_idle,
        "rss_after": rss_after,
        "anon_idle": anon_idle,
        "anon_after": anon_after,
        "start_seconds": start_seconds,
        "idle_cpu_percent": idle_cpu_percent,
        "other_ms": other_ms,
        "signal_p50_ms": quantile(&lat, 0.50),
        "signal_p99_ms": quantile(&lat, 0.99),
        "cross_p50_ms": cross.as_ref().map(|l| quantile(l, 0.50)),
        "cross_p99_ms": cross.as_ref().map(|l| quantile(l, 0.99)),
    }))
}

/// Signal random suspended processes not picked before through `via`, and time
/// each until `resumer` (the node whose driver runs it) has it resumed.
async fn signal_samples(
    via: &Processes,
    resumer: &Processes,
    processes: usize,
    prefix: &str,
    samples: usize,
    rng: &mut Rng,
    picked: &mut std::collections::BTreeSet<usize>,
) -> Result<Vec<f64>, String> {
    let mut lat = Vec::with_capacity(samples);
    while lat.len() < samples && picked.len() < processes {
        let i = rng.below(processes);
        if !picked.insert(i) {
            continue;
        }
        let id = format!("{prefix}-{i:07}");
        let seen = resumer
            .get(&id)
            .await
            .map_err(|e| format!("`{id}`: {e}"))?
            .last_sequence;
        let t = Instant::now();
        via.signal(&id, "go", "bench", json!({"i": i}))
            .await
            .map_err(|e| format!("signal `{id}`: {e}"))?;
        resumer
            .await_event(&id, events::RESUMED, seen, Duration::from_secs(60))
            .await
            .map_err(|e| format!("`{id}` did not resume: {e}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(lat)
}

/// How long the child idles before each RSS reading: longer than the 10 s
/// tokio keeps an idle blocking thread (SQLite reads run on them), so the
/// threads a burst of starts spawned, and their stacks and heaps, are gone.
const SETTLE: Duration = Duration::from_secs(12);

/// Short processes run to completion before the idle reading (fewer when
/// fewer are suspended).
const WARMUP: usize = 3_000;

async fn warm_up(p: &Processes, prefix: &str, count: usize) -> Result<(), String> {
    let mut tasks = JoinSet::new();
    for s in 0..STARTERS {
        let (p, prefix) = (p.clone(), prefix.to_string());
        tasks.spawn(async move {
            for i in (s..count).step_by(STARTERS) {
                let id = format!("{prefix}-warm-{i:05}");
                start_new(
                    &p,
                    StartRequest::tool(&id, "echo", json!({"value": i}), Disposition::Rerunnable),
                )
                .await?;
                p.await_output(&id, Duration::from_secs(600))
                    .await
                    .map_err(|e| format!("`{id}`: {e}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("warm-up task: {e}"))??;
    }
    Ok(())
}

/// Concurrent starters of the warm-up (as `start_waiting` has).
const STARTERS: usize = 32;
