//! `memory`: resident memory per 10,000 waiting processes in one server process.
//!
//! Each run is a fresh OS process (`cairn bench-child memory`): it opens the
//! backend, reads its RSS, starts the `wait_signal` processes on its own runtime
//! (worker concurrency above the count, so every one is running and waiting at
//! once), waits until each shows `process.waiting`, and reads its RSS again.
//! The runtime, the tasks, and for `memory` the records themselves count; a
//! database server's own memory does not. A fresh process per run keeps one
//! run's freed heap from hiding the next run's growth.

use std::time::Duration;

use serde_json::json;

use super::child::ChildProc;
use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::Ctx;

const MIB: f64 = 1024.0 * 1024.0;
const PER: f64 = 10_000.0;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let processes = ctx.plan.memory_processes;
    let mut r = ScenarioReport::new(
        "memory",
        json!({"processes": processes, "tool": "wait_signal", "disposition": "owner_bound"}),
    );
    if cfg!(not(target_os = "linux")) {
        r.outcome = Outcome::Skipped("n/a: RSS is read from /proc (Linux only)".into());
        return r;
    }
    r.notes.push(format!(
        "RSS delta of a fresh cairn process from before its runtime starts to all {processes} processes \
         waiting, scaled linearly to 10,000; no warm-up (each run is a fresh process); the limit is n/a"
    ));
    if processes != 10_000 {
        r.notes.push(format!(
            "{processes} processes, not 10,000: each owner-bound wait holds a run (a task, a slot, a lease \
             renewed every 10 s); `--memory-processes 10000` measures the full count, and the `suspended` \
             scenario what rerunnable (suspended) waits cost"
        ));
    }
    let why = "resident memory has no commit-rate limit";
    let mut per_10k = Figure {
        key: "memory.rss_per_10k".into(),
        label: format!("RSS per 10,000 waiting processes ({processes} started, scaled)"),
        unit: "MiB",
        higher_is_better: false,
        runs: Vec::new(),
        bound: Bound::NotApplicable(why),
        samples_per_run: None,
    };
    let mut total = Figure {
        key: "memory.rss_total".into(),
        label: "RSS of that process, all waiting".into(),
        ..per_10k.clone()
    };
    let mut bytes_each = Figure {
        key: "memory.bytes_per_process".into(),
        label: "RSS per waiting process".into(),
        unit: "KiB",
        ..per_10k.clone()
    };
    // No warm-up: every run is a fresh OS process, so there is nothing to warm
    // but the disk cache, and a run at this size is the most expensive of the bench.
    for (label, measured) in ctx.runs().into_iter().filter(|(_, measured)| *measured) {
        ctx.progress.detail(format!(
            "{}: memory, {label}: {processes} waiting processes in a child process",
            ctx.tag()
        ));
        match one_run(ctx, &label, processes).await {
            Ok((before, after)) if measured => {
                let delta = after.saturating_sub(before) as f64;
                per_10k.runs.push(delta / processes as f64 * PER / MIB);
                total.runs.push(after as f64 / MIB);
                bytes_each.runs.push(delta / processes as f64 / 1024.0);
            }
            Ok(_) => {}
            Err(e) => {
                r.outcome = Outcome::Failed(format!("{label}: {e}"));
                return r;
            }
        }
    }
    r.figures.extend([per_10k, bytes_each, total]);
    r
}

async fn one_run(ctx: &Ctx<'_>, label: &str, processes: usize) -> Result<(u64, u64), String> {
    let prefix = ctx.prefix("memory", label);
    let count = processes.to_string();
    let mut child = ChildProc::spawn(ctx.url, &["memory", "--processes", &count, "--prefix", &prefix]).await?;
    let answer = child.recv_json(Duration::from_secs(600)).await?;
    // The child drains its runtime before it exits; wait so the next run starts clean.
    let finished = child.finish(Duration::from_secs(600)).await;
    if let Some(e) = answer.get("error") {
        return Err(format!("memory child: {}", e.as_str().unwrap_or("failed")));
    }
    finished?;
    let get = |k: &str| {
        answer[k]
            .as_u64()
            .ok_or_else(|| format!("memory child answered without `{k}`: {answer}"))
    };
    Ok((get("rss_before")?, get("rss_after")?))
}
