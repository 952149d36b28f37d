//! `append`: event append throughput to externally owned processes, with one
//! sequential appender and with 64 concurrent appenders (one process each).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cairn_core::{AppendRequest, EventType, Outcome as ProcessOutcome, Processes, StartRequest};
use serde_json::json;
use tokio::task::JoinSet;

use super::report::{Figure, Outcome, ScenarioReport};
use super::{start_new, Ctx};

const MANY: usize = 64;
const WARMUP_EVENTS: usize = 1_000;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let events = ctx.plan.events;
    let per_appender = events.div_ceil(MANY);
    let mut r = ScenarioReport::new(
        "append",
        json!({
            "events_single": events,
            "appenders": MANY,
            "events_per_appender": per_appender,
            "events_concurrent": per_appender * MANY,
        }),
    );
    r.notes.push(format!(
        "appends through the facade to externally owned processes; {MANY} appenders each append \
         {per_appender} events to their own process"
    ));
    let p = ctx.runtime(format!("{}-host", ctx.prefix("append", "all")), 64, 64);
    let variants = [
        ("append.single", "event append, 1 appender", 1, events),
        ("append.concurrent64", "event append, 64 appenders", MANY, per_appender),
    ];
    for (key, label, appenders, per) in variants {
        let mut fig = Figure::rate(key, label, "events/s");
        for (run, measured) in ctx.runs() {
            let per = if measured {
                per
            } else {
                per.min(WARMUP_EVENTS / appenders).max(1)
            };
            match one_run(ctx, &p, &format!("a{appenders}-{run}"), appenders, per).await {
                Ok(rate) if measured => fig.runs.push(rate),
                Ok(_) => {}
                Err(e) => {
                    r.outcome = Outcome::Failed(format!("{label}, {run}: {e}"));
                    p.shutdown().await;
                    return r;
                }
            }
        }
        r.figures.push(fig);
    }
    p.shutdown().await;
    r
}

async fn one_run(ctx: &Ctx<'_>, p: &Processes, run: &str, appenders: usize, per: usize) -> Result<f64, String> {
    let ids: Vec<String> = (0..appenders).map(|i| ctx.id("append", run, i)).collect();
    for id in &ids {
        let req = StartRequest::external(id.as_str(), json!({})).with_event_type(EventType::plain("progress"));
        start_new(p, req).await?;
    }
    let mut rng = ctx.rng(&format!("append-{run}"));
    let done = Arc::new(AtomicUsize::new(0));
    let _counter = ctx
        .progress
        .counter(format!("{}: append {run}", ctx.tag()), appenders * per, done.clone());
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for id in ids.clone() {
        let (p, done, salt) = (p.clone(), done.clone(), rng.next_u64() >> 12);
        tasks.spawn(async move {
            for n in 0..per {
                p.append_event(&id, AppendRequest::new("progress", json!({"n": n, "salt": salt})))
                    .await
                    .map_err(|e| format!("append to `{id}`: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("appender task: {e}"))??;
    }
    let rate = (appenders * per) as f64 / t.elapsed().as_secs_f64();
    // End them so nothing of this run stays live.
    for id in &ids {
        p.complete_external(id, ProcessOutcome::success(json!(null)), "bench")
            .await
            .map_err(|e| format!("complete `{id}`: {e}"))?;
    }
    Ok(rate)
}
