//! `schedules`: what N schedules whose fires are far away cost an idle server
//! (issue 23: "10,000 schedules cost no idle CPU beyond the driver's single
//! sleep"), and how fast they are created.
//!
//! One fresh OS process (`cairn bench-child schedules`) runs a runtime with the
//! default worker flags and the built-in tools. It idles first with none of
//! this run's schedules and reads its own CPU time over `--idle-seconds` (the
//! baseline); then, per measured run, it creates N schedules from 32 concurrent
//! creators (half `every 1h`, half a daily cron whose time passed two minutes
//! ago, so nothing is due for about an hour), reads its RSS and its CPU over
//! another idle window, checks that no schedule fired, and deletes them, so the
//! database is left with none of them.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::{Processes, ScheduleRequest, WorkerConfig};
use cairn_tools::builtin_tools;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::child::{rss_bytes, say, ChildProc};
use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::suspended::cpu_seconds;
use super::Ctx;
use crate::db::open_backend;

/// The limit: an idle server with any number of schedules sleeps once, until
/// the earliest fire, so its CPU stays what an idle server's is (SPEC §13's
/// idle figure: under 1% of one core).
const IDLE_CPU_TARGET: f64 = 1.0;

/// Quiet time before each reading, after the burst of creates (WAL
/// checkpoints, the driver's last look at the new schedules).
const SETTLE: Duration = Duration::from_secs(3);

/// Concurrent creators (and deleters).
const CREATORS: usize = 32;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let count = ctx.plan.schedules;
    let idle = ctx.plan.idle_seconds;
    let runs = ctx.plan.runs;
    let mut r = ScenarioReport::new(
        "schedules",
        json!({"schedules": count, "specs": ["every 1h", "daily cron"], "idle_seconds": idle,
               "runs": runs, "workers": 64, "creators": CREATORS}),
    );
    if cfg!(not(target_os = "linux")) {
        r.outcome = Outcome::Skipped("n/a: RSS and CPU time are read from /proc (Linux only)".into());
        return r;
    }
    r.notes.push(format!(
        "one fresh cairn process with default worker flags: CPU over {idle} s idle with no schedule of \
         this run, then per run {count} schedules created (none due for an hour), CPU over {idle} s idle, \
         then deleted; warm-up runs are not made (the baseline window warms the process)"
    ));
    let mut cpu = Figure {
        key: "schedules.idle_cpu".into(),
        label: format!("CPU while {count} schedules wait and nothing is due"),
        unit: "% of a core",
        higher_is_better: false,
        runs: Vec::new(),
        bound: Bound::Target(
            IDLE_CPU_TARGET,
            "% of a core",
            "issue 23: no idle CPU beyond the driver's single sleep (under 1% of a core)",
        ),
        samples_per_run: None,
    };
    let mut baseline = Figure {
        key: "schedules.idle_cpu_none".into(),
        label: "the same process idle before any schedule".into(),
        bound: Bound::NotApplicable("the baseline of the figure above"),
        ..cpu.clone()
    };
    let mut bytes = Figure {
        key: "schedules.bytes_per_schedule".into(),
        label: format!("RSS growth per schedule ({count} created)"),
        unit: "bytes",
        bound: Bound::NotApplicable("includes the store's page cache; schedules are not held in memory"),
        ..cpu.clone()
    };
    let mut rate = Figure {
        key: "schedules.create_rate".into(),
        label: "schedules created per second".into(),
        unit: "schedules/s",
        higher_is_better: true,
        bound: Bound::NotApplicable("one registry write each, 32 concurrent creators"),
        ..cpu.clone()
    };
    ctx.progress.detail(format!(
        "{}: schedules: {runs} x {count} schedules in a child process, {idle} s idle each",
        ctx.tag()
    ));
    let answer = match one_child(ctx, count, idle, runs).await {
        Ok(a) => a,
        Err(e) => {
            r.outcome = Outcome::Failed(e);
            return r;
        }
    };
    baseline
        .runs
        .push(answer["baseline_cpu_percent"].as_f64().unwrap_or(f64::NAN));
    for run in answer["runs"].as_array().into_iter().flatten() {
        let f = |k: &str| run[k].as_f64().unwrap_or(f64::NAN);
        cpu.runs.push(f("idle_cpu_percent"));
        bytes
            .runs
            .push((f("rss_after") - f("rss_before")).max(0.0) / count as f64);
        rate.runs.push(count as f64 / f("create_seconds"));
    }
    r.figures.extend([cpu, baseline, bytes, rate]);
    r
}

async fn one_child(ctx: &Ctx<'_>, count: usize, idle: u64, runs: usize) -> Result<Value, String> {
    let prefix = ctx.prefix("schedules", "run");
    let (count_s, idle_s, runs_s) = (count.to_string(), idle.to_string(), runs.to_string());
    ChildProc::answer(
        ctx.url,
        &[
            "schedules",
            "--schedules",
            &count_s,
            "--prefix",
            &prefix,
            "--idle-seconds",
            &idle_s,
            "--runs",
            &runs_s,
        ],
    )
    .await
}

// ------------------------------------------------------------- the child's side

pub(crate) async fn child_role(url: &str, count: usize, prefix: &str, idle: u64, runs: usize) -> ExitCode {
    let answer = match child_measure(url, count, prefix, idle, runs).await {
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

/// This process's CPU use over `idle` seconds of doing nothing, in % of a core.
async fn idle_cpu(idle: u64) -> Result<f64, String> {
    let cpu0 = cpu_seconds()?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    Ok((cpu_seconds()? - cpu0) / window.elapsed().as_secs_f64() * 100.0)
}

async fn child_measure(url: &str, count: usize, prefix: &str, idle: u64, runs: usize) -> Result<Value, String> {
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
    tokio::time::sleep(SETTLE).await;
    let baseline_cpu_percent = idle_cpu(idle).await?;
    let mut measured = Vec::with_capacity(runs);
    for run in 1..=runs {
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}{run}-{i:07}")).collect();
        let rss_before = rss_bytes()?;
        let t = Instant::now();
        let created = for_each(&p, &ids, Op::Create).await;
        let create_seconds = t.elapsed().as_secs_f64();
        let outcome = match created {
            Ok(()) => measure_idle(&p, &ids, idle).await,
            Err(e) => Err(e),
        };
        // Delete what was created even when the run failed: a later server on
        // this database must not fire them.
        let t = Instant::now();
        let deleted = for_each(&p, &ids, Op::Delete).await;
        let delete_seconds = t.elapsed().as_secs_f64();
        let (rss_after, idle_cpu_percent) = outcome?;
        deleted?;
        measured.push(json!({
            "rss_before": rss_before,
            "rss_after": rss_after,
            "create_seconds": create_seconds,
            "idle_cpu_percent": idle_cpu_percent,
            "delete_seconds": delete_seconds,
        }));
    }
    p.shutdown().await;
    Ok(json!({
        "schedules": count,
        "baseline_cpu_percent": baseline_cpu_percent,
        "runs": measured,
    }))
}

/// RSS with the schedules in place, then CPU over the idle window; and a check
/// that nothing fired (the measurement would not be of an idle server).
async fn measure_idle(p: &Processes, ids: &[String], idle: u64) -> Result<(u64, f64), String> {
    tokio::time::sleep(SETTLE).await;
    let rss_after = rss_bytes()?;
    let cpu = idle_cpu(idle).await?;
    let first = p.get_schedule(&ids[0]).await.map_err(|e| e.to_string())?;
    let last = p.get_schedule(&ids[ids.len() - 1]).await.map_err(|e| e.to_string())?;
    if let Some(fired) = first.last_process_id.or(last.last_process_id) {
        return Err(format!("a schedule fired during the idle window (`{fired}`)"));
    }
    Ok((rss_after, cpu))
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Delete,
}

/// Run `op` on every id from [`CREATORS`] concurrent tasks.
async fn for_each(p: &Processes, ids: &[String], op: Op) -> Result<(), String> {
    let (hour, minute) = two_minutes_ago_utc();
    let mut tasks = JoinSet::new();
    for s in 0..CREATORS.min(ids.len()) {
        let p = p.clone();
        let mine: Vec<(usize, String)> = ids.iter().cloned().enumerate().skip(s).step_by(CREATORS).collect();
        tasks.spawn(async move {
            for (i, id) in mine {
                match op {
                    Op::Create => {
                        let spec = if i % 2 == 0 {
                            json!({"every": "1h"})
                        } else {
                            json!({"cron": format!("{minute} {hour} * * *"), "timezone": "UTC"})
                        };
                        let mut body = json!({
                            "id": id,
                            "start": {"input": {"type": "tool_call", "tool": "echo", "args": {"value": i}},
                                      "disposition": "rerunnable"},
                            "overlap": "skip",
                        });
                        body.as_object_mut()
                            .expect("object")
                            .extend(spec.as_object().cloned().unwrap_or_default());
                        let request = ScheduleRequest::from_json(body).map_err(|e| format!("`{id}`: {e}"))?;
                        let (_, fresh) = p
                            .create_schedule(request)
                            .await
                            .map_err(|e| format!("create `{id}`: {e}"))?;
                        if !fresh {
                            return Err(format!(
                                "schedule `{id}` already exists in this database (left by an earlier bench \
                                 with the same seed): use a fresh database or another --seed"
                            ));
                        }
                    }
                    Op::Delete => p
                        .delete_schedule(&id)
                        .await
                        .map_err(|e| format!("delete `{id}`: {e}"))?,
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("schedule task: {e}"))??;
    }
    Ok(())
}

/// The UTC wall-clock hour and minute two minutes ago: a daily cron at that
/// time is next due in about 23 h 58 min.
fn two_minutes_ago_utc() -> (u64, u64) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let minute_of_day = (secs / 60 + 1440 - 2) % 1440;
    (minute_of_day / 60, minute_of_day % 60)
}
