//! `signal`: signal → `wait_signal` process resumed and terminal, p50/p99.
//!
//! Each sample starts a `wait_signal` process, waits (untimed) until it shows
//! `process.waiting`, then times from just before the signal to the awaiter
//! seeing the process completed with the signal's payload. The path holds three
//! durable commits, one after another: the signal's append, the tool's
//! `process.resumed` and the completion.

use std::time::{Duration, Instant};

use cairn_core::{Disposition, Outcome as ProcessOutcome, ProcessStatus, Processes, StartRequest};
use serde_json::json;

use super::report::{Figure, Outcome, ScenarioReport};
use super::stats::quantile;
use super::{ms, start_new, Ctx, AWAIT_TIMEOUT};

const WARMUP_SAMPLES: usize = 20;

/// Durable commits on the measured path: the signal, `process.resumed`, the completion.
const COMMITS: u32 = 3;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let samples = ctx.plan.samples;
    let mut r = ScenarioReport::new(
        "signal",
        json!({"samples": samples, "tool": "wait_signal", "disposition": "rerunnable"}),
    );
    r.notes
        .push("latency = signal call -> awaiter sees the process completed (held against 3 commits)".into());
    let p = ctx.runtime(format!("{}-worker", ctx.prefix("signal", "all")), 64, 64);
    let result = measure(ctx, &p, &mut r).await;
    p.shutdown().await;
    if let Err(e) = result {
        r.outcome = Outcome::Failed(e);
    }
    r
}

async fn measure(ctx: &Ctx<'_>, p: &Processes, r: &mut ScenarioReport) -> Result<(), String> {
    let samples = ctx.plan.samples;
    let mut p50 = Figure::latency("signal.p50", "signal -> resumed -> completed, p50", COMMITS, samples);
    let mut p99 = Figure::latency("signal.p99", "signal -> resumed -> completed, p99", COMMITS, samples);
    for (label, measured) in ctx.runs() {
        let n = if measured { samples } else { samples.min(WARMUP_SAMPLES) };
        let mut rng = ctx.rng(&format!("signal-{label}"));
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            ctx.progress.detail(format!("{}: signal, {label}: {i}/{n}", ctx.tag()));
            let id = ctx.id("signal", &label, i);
            let payload = json!({"n": rng.next_u64() >> 12});
            lat.push(sample(p, &id, payload).await?);
        }
        if measured {
            p50.runs.push(quantile(&lat, 0.50));
            p99.runs.push(quantile(&lat, 0.99));
        }
    }
    r.figures.extend([p50, p99]);
    Ok(())
}

async fn sample(p: &Processes, id: &str, payload: serde_json::Value) -> Result<f64, String> {
    let req = StartRequest::tool(id, "wait_signal", json!({"name": "go"}), Disposition::Rerunnable);
    start_new(p, req).await?;
    p.await_event(id, cairn_core::events::WAITING, 0, Duration::from_secs(60))
        .await
        .map_err(|e| format!("`{id}` never waited: {e}"))?;
    let t0 = Instant::now();
    p.signal(id, "go", "bench", payload.clone())
        .await
        .map_err(|e| format!("signal `{id}`: {e}"))?;
    let rec = p
        .await_output(id, AWAIT_TIMEOUT)
        .await
        .map_err(|e| format!("await `{id}`: {e}"))?;
    let elapsed = t0.elapsed();
    if rec.status != ProcessStatus::Completed || rec.outcome != Some(ProcessOutcome::success(payload)) {
        return Err(format!(
            "`{id}` ended {} without the signal's payload",
            rec.status.label()
        ));
    }
    Ok(ms(elapsed))
}
