//! `scale`: `get` and a session's live listing (`list_granted_to`, status
//! running) with a few live processes among many terminal rows.
//!
//! Setup (once per backend, timed as its own figure): `scale_rows` terminal
//! and `scale_live` live externally owned processes, all granted to one
//! session, inserted through the registry by 64 concurrent inserters taking
//! batches of 256 ids; each terminal row is a start then a `complete_external`.
//! Live ids are scattered among the terminal ones by the seed. Every run then
//! times `samples` gets (alternating a live and a terminal id, seeded) and
//! `samples` listings of the session's live processes, each checked complete.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cairn_core::{
    GrantDescriptor, Outcome as ProcessOutcome, ProcessFilter, ProcessStatus, Processes, SessionScope, StartRequest,
    MAX_PAGE_SIZE,
};
use serde_json::json;
use tokio::task::JoinSet;

use super::report::{Figure, Outcome, ScenarioReport};
use super::stats::quantile;
use super::{ms, start_new, Ctx};

const INSERTERS: usize = 64;
const BATCH: usize = 256;
/// The size the scenario is specified at.
const FULL_SIZE: usize = 1_000_000;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let plan = ctx.plan;
    let mut r = ScenarioReport::new(
        "scale",
        json!({
            "terminal_rows": plan.scale_rows,
            "live_rows": plan.scale_live,
            "samples": plan.samples,
            "inserters": INSERTERS,
            "insert_batch": BATCH,
        }),
    );
    r.notes.push(format!(
        "{} live among {} terminal rows, all granted to one session; reads are held against one commit \
         (a fraction below 1 is a read cheaper than a durable write)",
        plan.scale_live, plan.scale_rows
    ));
    if plan.scale_rows < FULL_SIZE {
        r.notes.push(format!(
            "{} terminal rows, not the full {FULL_SIZE}: the default is sized so a default run fits ten minutes \
             (inserting is bound by the backend's writer); `--scale-rows {FULL_SIZE}` measures the full size",
            plan.scale_rows
        ));
    }
    let p = ctx.runtime(format!("{}-host", ctx.prefix("scale", "all")), 64, 64);
    let result = measure(ctx, &p, &mut r).await;
    p.shutdown().await;
    if let Err(e) = result {
        r.outcome = Outcome::Failed(e);
    }
    r
}

async fn measure(ctx: &Ctx<'_>, p: &Processes, r: &mut ScenarioReport) -> Result<(), String> {
    let plan = ctx.plan;
    let total = plan.scale_rows + plan.scale_live;
    let session = SessionScope::session(ctx.prefix("scale", "session"));
    let mut rng = ctx.rng("scale-layout");
    let mut live = HashSet::with_capacity(plan.scale_live);
    while live.len() < plan.scale_live {
        live.insert(rng.below(total));
    }
    let mut live_ids: Vec<usize> = live.iter().copied().collect();
    live_ids.sort_unstable();
    let live = Arc::new(live);

    // Setup: insert every row.
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let guard = ctx
        .progress
        .counter(format!("{}: scale, inserting rows", ctx.tag()), total, done.clone());
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..INSERTERS {
        let (p, live, done, next, session) = (p.clone(), live.clone(), done.clone(), next.clone(), session.clone());
        let prefix = ctx.prefix("scale", "row");
        tasks.spawn(async move {
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= total {
                    return Ok::<(), String>(());
                }
                for i in from..(from + BATCH).min(total) {
                    let id = format!("{prefix}-{i:07}");
                    let req = StartRequest::external(id.as_str(), json!({}))
                        .with_grant(session.clone(), GrantDescriptor::default());
                    start_new(&p, req).await?;
                    if !live.contains(&i) {
                        p.complete_external(&id, ProcessOutcome::success(json!(null)), "bench")
                            .await
                            .map_err(|e| format!("complete `{id}`: {e}"))?;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("inserter task: {e}"))??;
    }
    drop(guard);
    let mut insert = Figure::rate(
        "scale.insert",
        format!("setup: rows inserted (start + complete), {INSERTERS} inserters"),
        "rows/s",
    );
    insert.runs.push(total as f64 / t.elapsed().as_secs_f64());
    ctx.progress.line(format!(
        "{}: scale: {total} rows inserted in {:.1} s",
        ctx.tag(),
        t.elapsed().as_secs_f64()
    ));
    if ctx.kind == "postgres" {
        // Measure the steady state a live server reaches (autovacuum has run),
        // not a table whose statistics and dead index entries predate the fill.
        ctx.progress
            .step(format!("{}: scale: vacuum analyze (steady state)", ctx.tag()));
        super::limits::postgres_settle(ctx.url).await?;
    }

    let samples = plan.samples;
    let mut get50 = Figure::latency("scale.get.p50", "get, p50", 1, samples);
    let mut get99 = Figure::latency("scale.get.p99", "get, p99", 1, samples);
    let mut list50 = Figure::latency(
        "scale.list_live.p50",
        format!("session's {} live of {total}, p50", plan.scale_live),
        1,
        samples,
    );
    let mut list99 = Figure::latency(
        "scale.list_live.p99",
        format!("session's {} live of {total}, p99", plan.scale_live),
        1,
        samples,
    );
    for (label, measured) in ctx.runs() {
        let mut rng = ctx.rng(&format!("scale-{label}"));
        let mut gets = Vec::with_capacity(samples);
        for k in 0..samples {
            let want_live = k % 2 == 0;
            let i = if want_live {
                live_ids[rng.below(live_ids.len())]
            } else {
                loop {
                    let i = rng.below(total);
                    if !live.contains(&i) {
                        break i;
                    }
                }
            };
            let id = format!("{}-{i:07}", ctx.prefix("scale", "row"));
            let t = Instant::now();
            let rec = p.get(&id).await.map_err(|e| format!("get `{id}`: {e}"))?;
            gets.push(ms(t.elapsed()));
            if (rec.status == ProcessStatus::Running) != want_live {
                return Err(format!("`{id}` is {} but should be the other", rec.status.label()));
            }
        }
        ctx.progress.detail(format!("{}: scale, {label}: listing", ctx.tag()));
        let mut lists = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            let found = list_live(p, &session).await?;
            lists.push(ms(t.elapsed()));
            if found != plan.scale_live {
                return Err(format!(
                    "the session's live listing found {found} processes, expected {}",
                    plan.scale_live
                ));
            }
        }
        if measured {
            get50.runs.push(quantile(&gets, 0.50));
            get99.runs.push(quantile(&gets, 0.99));
            list50.runs.push(quantile(&lists, 0.50));
            list99.runs.push(quantile(&lists, 0.99));
        }
    }
    r.figures.extend([insert, get50, get99, list50, list99]);
    Ok(())
}

/// Every running process granted to `session`, page by page; the count.
async fn list_live(p: &Processes, session: &SessionScope) -> Result<usize, String> {
    let mut filter = ProcessFilter {
        limit: Some(MAX_PAGE_SIZE),
        ..ProcessFilter::running()
    };
    let mut found = 0;
    loop {
        let page = p
            .list_granted_to(session, &filter)
            .await
            .map_err(|e| format!("list_granted_to: {e}"))?;
        found += page.items.len();
        match page.next_after_id {
            Some(next) => filter.after_id = Some(next),
            None => return Ok(found),
        }
    }
}
