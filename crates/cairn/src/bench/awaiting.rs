//! `await`: completion → awaiter resolved, p50/p99, with the awaiter in this
//! process (woken by the change hub) and in a second OS process on the same
//! database (woken by whatever reaches it across processes: for SQLite, its
//! bounded-backoff point reads; for PostgreSQL, LISTEN/NOTIFY).
//!
//! Each sample starts an externally owned process, lets the awaiter begin
//! waiting, waits a seeded random delay, then completes it (`complete_external`,
//! one durable commit). Latency is from just before the completion call to the
//! awaiter's resolution. On SQLite the scenario also measures the disk's own
//! durable write after the same idle gaps: the floor of a same-process sample.

use std::time::{Duration, Instant};

use cairn_core::{Outcome as ProcessOutcome, ProcessStatus, Processes, StartRequest};
use serde_json::json;
use tokio::sync::oneshot;

use super::child::{wall_ns, ChildProc};
use super::report::{Figure, Outcome, ScenarioReport};
use super::stats::{quantile, Rng};
use super::{ms, start_new, Ctx, AWAIT_TIMEOUT};

/// The completer waits this long (seeded, uniform) after the awaiter began.
const DELAY_MS: (u64, u64) = (1, 20);
/// Warm-ups take at most this many samples.
const WARMUP_SAMPLES: usize = 20;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let samples = ctx.plan.samples;
    let mut r = ScenarioReport::new(
        "await",
        json!({
            "samples": samples,
            "delay_ms": [DELAY_MS.0, DELAY_MS.1],
            "completion": "complete_external (externally_owned)",
        }),
    );
    r.notes.push(format!(
        "each sample: the completer waits a seeded {}-{} ms after the awaiter began, then completes; \
         latency = completion call -> awaiter resolved (held against 1 commit)",
        DELAY_MS.0, DELAY_MS.1
    ));
    let p = ctx.runtime(format!("{}-host", ctx.prefix("await", "all")), 64, 64);
    let result = measure(ctx, &p, &mut r).await;
    p.shutdown().await;
    if let Err(e) = result {
        r.outcome = Outcome::Failed(e);
    }
    r
}

async fn measure(ctx: &Ctx<'_>, p: &Processes, r: &mut ScenarioReport) -> Result<(), String> {
    let samples = ctx.plan.samples;
    if ctx.kind == "sqlite" {
        r.figures.push(idle_commit(ctx, samples).await?);
        r.notes.push(
            "idle commit (sqlite): the disk's own write + fdatasync after the same idle gaps as the samples; \
             a same-process await cannot resolve before its completion's commit, so this is its floor"
                .into(),
        );
    }
    let mut p50 = Figure::latency("await.same.p50", "same process, p50", 1, samples);
    let mut p99 = Figure::latency("await.same.p99", "same process, p99", 1, samples);
    for (label, measured) in ctx.runs() {
        let n = if measured { samples } else { samples.min(WARMUP_SAMPLES) };
        let mut rng = ctx.rng(&format!("await-same-{label}"));
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            ctx.progress
                .detail(format!("{}: await, same process, {label}: {i}/{n}", ctx.tag()));
            let id = ctx.id("await", &format!("same-{label}"), i);
            lat.push(same_sample(p, &id, delay(&mut rng)).await?);
        }
        if measured {
            p50.runs.push(quantile(&lat, 0.50));
            p99.runs.push(quantile(&lat, 0.99));
        }
    }
    r.figures.extend([p50, p99]);

    if ctx.kind == "memory" {
        r.notes
            .push("cross-process: n/a: memory is per-process (a second OS process cannot see it)".into());
        return Ok(());
    }
    let mut child = ChildProc::spawn(ctx.url, &["await"]).await?;
    let ready = child.recv(Duration::from_secs(60)).await?;
    if ready != "ready" {
        return Err(format!("the await child answered `{ready}` instead of `ready`"));
    }
    let mut p50 = Figure::latency("await.cross.p50", "across OS processes, p50", 1, samples);
    let mut p99 = Figure::latency("await.cross.p99", "across OS processes, p99", 1, samples);
    for (label, measured) in ctx.runs() {
        let n = if measured { samples } else { samples.min(WARMUP_SAMPLES) };
        let mut rng = ctx.rng(&format!("await-cross-{label}"));
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            ctx.progress
                .detail(format!("{}: await, across processes, {label}: {i}/{n}", ctx.tag()));
            let id = ctx.id("await", &format!("cross-{label}"), i);
            lat.push(cross_sample(p, &mut child, &id, delay(&mut rng)).await?);
        }
        if measured {
            p50.runs.push(quantile(&lat, 0.50));
            p99.runs.push(quantile(&lat, 0.99));
        }
    }
    child.finish(Duration::from_secs(30)).await?;
    r.figures.extend([p50, p99]);
    if ctx.kind == "sqlite" {
        r.notes.push(
            "cross-process (sqlite): the other process learns of the completion from the file system's notice \
             of the write and one read of `data_version` (ADR 0020), however long the awaiter has waited"
                .into(),
        );
    }
    Ok(())
}

/// The floor of a same-process sample on SQLite: the disk's durable write
/// after the same seeded idle gaps the samples leave (a disk left idle for a
/// few milliseconds flushes more slowly than the back-to-back probe of the limit).
async fn idle_commit(ctx: &Ctx<'_>, samples: usize) -> Result<Figure, String> {
    let mut p50 = Figure::latency(
        "await.idle_commit.p50",
        "disk: one 4 KiB write + fdatasync after the same idle gaps, p50",
        1,
        samples,
    );
    let dir = super::sqlite_dir(ctx.url);
    for (label, measured) in ctx.runs() {
        if !measured {
            continue;
        }
        let mut rng = ctx.rng(&format!("await-same-{label}"));
        let gaps: Vec<Duration> = (0..samples).map(|_| delay(&mut rng)).collect();
        let dir = dir.clone();
        let ms = tokio::task::spawn_blocking(move || super::limits::idle_fsync_ms(&dir, &gaps))
            .await
            .map_err(|e| format!("idle fsync probe: {e}"))??;
        p50.runs.push(quantile(&ms, 0.50));
    }
    Ok(p50)
}

fn delay(rng: &mut Rng) -> Duration {
    Duration::from_millis(rng.range(DELAY_MS.0, DELAY_MS.1))
}

async fn same_sample(p: &Processes, id: &str, delay: Duration) -> Result<f64, String> {
    start_new(p, StartRequest::external(id, json!({}))).await?;
    let (began, began_rx) = oneshot::channel();
    let (p2, id2) = (p.clone(), id.to_string());
    let awaiter = tokio::spawn(async move {
        let _ = began.send(());
        let r = p2.await_output(&id2, AWAIT_TIMEOUT).await;
        (Instant::now(), r)
    });
    let _ = began_rx.await;
    tokio::time::sleep(delay).await;
    let t0 = Instant::now();
    complete(p, id).await?;
    let (t1, rec) = awaiter.await.map_err(|e| format!("awaiter task: {e}"))?;
    let rec = rec.map_err(|e| format!("await `{id}`: {e}"))?;
    if rec.status != ProcessStatus::Completed {
        return Err(format!("awaiter of `{id}` resolved with status {}", rec.status.label()));
    }
    Ok(ms(t1.saturating_duration_since(t0)))
}

async fn cross_sample(p: &Processes, child: &mut ChildProc, id: &str, delay: Duration) -> Result<f64, String> {
    start_new(p, StartRequest::external(id, json!({}))).await?;
    child.send(&format!("await {id}")).await?;
    let line = child.recv(Duration::from_secs(60)).await?;
    if line != format!("waiting {id}") {
        return Err(format!("the await child answered `{line}` instead of `waiting {id}`"));
    }
    tokio::time::sleep(delay).await;
    let t0 = wall_ns();
    complete(p, id).await?;
    let line = child.recv(AWAIT_TIMEOUT + Duration::from_secs(10)).await?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts.as_slice() {
        ["done", got, t1, status] if *got == id => {
            if *status != "completed" {
                return Err(format!("the await child saw `{id}` {status}"));
            }
            let t1: u128 = t1.parse().map_err(|_| format!("bad time in `{line}`"))?;
            Ok(t1.saturating_sub(t0) as f64 / 1e6)
        }
        _ => Err(format!("the await child answered `{line}`")),
    }
}

async fn complete(p: &Processes, id: &str) -> Result<(), String> {
    p.complete_external(id, ProcessOutcome::success(json!({"id": id})), "bench")
        .await
        .map(|_| ())
        .map_err(|e| format!("complete `{id}`: {e}"))
}
