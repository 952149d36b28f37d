//! `throughput`: N no-op (`echo`) processes from start to terminal with W
//! workers, in processes per second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cairn_core::{Disposition, ProcessStatus, Processes, StartRequest};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::report::{Figure, Outcome, ScenarioReport};
use super::{start_new, Ctx, AWAIT_TIMEOUT};

/// Concurrent starters (host tasks issuing starts).
pub(crate) const STARTERS: usize = 64;
/// Each worker's concurrency and claim batch.
pub(crate) const CONCURRENCY: usize = 512;
pub(crate) const BATCH: usize = 256;
/// Warm-ups run at most this many processes.
const WARMUP_N: usize = 1_000;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let plan = ctx.plan;
    let mut r = ScenarioReport::new(
        "throughput",
        json!({
            "n": plan.n,
            "workers": plan.workers,
            "starters": STARTERS,
            "worker_concurrency": CONCURRENCY,
            "claim_batch": BATCH,
            "warmup_n": plan.n.min(WARMUP_N),
            "tool": "echo",
            "disposition": "rerunnable",
        }),
    );
    r.notes.push(format!(
        "{STARTERS} concurrent starters; W workers = W runtimes in this OS process sharing one registry \
         (concurrency {CONCURRENCY}, claim batch {BATCH} each); timed from the first start to the last terminal"
    ));
    for &w in &plan.workers {
        let mut fig = Figure::rate(
            format!("throughput.w{w}"),
            format!("start -> complete (echo), W={w}"),
            "processes/s",
        );
        for (label, measured) in ctx.runs() {
            let n = if measured { plan.n } else { plan.n.min(WARMUP_N) };
            match one_run(ctx, w, &label, n).await {
                Ok(rate) if measured => fig.runs.push(rate),
                Ok(_) => {}
                Err(e) => {
                    r.outcome = Outcome::Failed(format!("W={w} {label}: {e}"));
                    return r;
                }
            }
        }
        r.figures.push(fig);
    }
    r
}

async fn one_run(ctx: &Ctx<'_>, w: usize, label: &str, n: usize) -> Result<f64, String> {
    let run = format!("w{w}-{label}");
    let runtimes: Arc<Vec<Processes>> = Arc::new(
        (0..w)
            .map(|k| ctx.runtime(format!("{}-worker{k}", ctx.prefix("tp", &run)), CONCURRENCY, BATCH))
            .collect(),
    );
    let result = drive(ctx, &runtimes, &run, n).await;
    for p in runtimes.iter() {
        p.shutdown().await;
    }
    result
}

async fn drive(ctx: &Ctx<'_>, runtimes: &Arc<Vec<Processes>>, run: &str, n: usize) -> Result<f64, String> {
    let mut rng = ctx.rng(&format!("throughput-{run}"));
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let payloads: Vec<u64> = (0..n).map(|_| rng.next_u64() >> 12).collect();
    let batch = Batch {
        what: format!("throughput {run}"),
        requests: (0..n)
            .map(|i| {
                StartRequest::tool(
                    ctx.id("tp", run, i),
                    "echo",
                    json!({"value": payloads[i]}),
                    Disposition::Rerunnable,
                )
            })
            .collect(),
        expected: payloads.iter().map(|v| json!(v)).collect(),
        order,
    };
    drive_batch(ctx, runtimes, batch).await
}

/// Processes to start and the success value each must complete with.
pub(crate) struct Batch {
    /// What the progress line calls it.
    pub what: String,
    pub requests: Vec<StartRequest>,
    pub expected: Vec<Value>,
    /// The order the starters take them in (indexes into `requests`).
    pub order: Vec<usize>,
}

/// Start `batch` from [`STARTERS`] concurrent starters spread over
/// `runtimes`; each starter then awaits the processes it started, each
/// completed with its expected value. Answers processes per second from the
/// first start to the last terminal.
///
/// The awaits run in the starters, concurrently, as a host's callers would:
/// one awaiter reading `n` terminal records one after another timed its own
/// read round trips (a quarter of a PostgreSQL run), not the runtime.
pub(crate) async fn drive_batch(ctx: &Ctx<'_>, runtimes: &Arc<Vec<Processes>>, batch: Batch) -> Result<f64, String> {
    let n = batch.requests.len();
    let order = Arc::new(batch.order);
    let requests = Arc::new(batch.requests);
    let expected = Arc::new(batch.expected);
    let done = Arc::new(AtomicUsize::new(0));
    let _counter = ctx.progress.counter(
        format!("{}: {} (starts + completions)", ctx.tag(), batch.what),
        2 * n,
        done.clone(),
    );
    let t = Instant::now();
    let mut starters = JoinSet::new();
    for s in 0..STARTERS.min(n) {
        let (order, requests, expected, runtimes, done) = (
            order.clone(),
            requests.clone(),
            expected.clone(),
            runtimes.clone(),
            done.clone(),
        );
        starters.spawn(async move {
            let mine = (s..order.len()).step_by(STARTERS);
            for k in mine.clone() {
                start_new(&runtimes[k % runtimes.len()], requests[order[k]].clone()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            for k in mine {
                let i = order[k];
                completed_with(&runtimes[k % runtimes.len()], &requests[i].id, &expected[i]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = starters.join_next().await {
        joined.map_err(|e| format!("starter task: {e}"))??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Await `id` and check that it completed with `expected`.
async fn completed_with(p: &Processes, id: &str, expected: &Value) -> Result<(), String> {
    let rec = p
        .await_output(id, AWAIT_TIMEOUT)
        .await
        .map_err(|e| format!("await `{id}`: {e}"))?;
    if rec.status != ProcessStatus::Completed {
        return Err(format!(
            "`{id}` ended {} instead of completed: {:?}",
            rec.status.label(),
            rec.outcome
        ));
    }
    if rec.outcome != Some(cairn_core::Outcome::success(expected.clone())) {
        return Err(format!(
            "`{id}` completed with an unexpected outcome: {:?}",
            rec.outcome
        ));
    }
    Ok(())
}
