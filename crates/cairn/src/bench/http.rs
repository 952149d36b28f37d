//! `http`: the path a user of `cairn serve` takes. N `echo` processes, each
//! started (`POST /v1/processes`) and awaited (`GET .../await`) by one of 32
//! concurrent clients over keep-alive connections, against a `cairn serve`
//! child with default flags; and, in the same run, the same work through
//! `Processes` in this OS process (one runtime with the server's default
//! worker flags, the same 32 clients each starting then awaiting), so the
//! figure is held both against the storage limit and against the in-process
//! path (issue 24: at least 50% of it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{Disposition, Processes, StartRequest, WorkerConfig};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::serve::{start_new_over_http, Serve};
use super::{start_new, Ctx, AWAIT_TIMEOUT};

/// Concurrent clients, as `throughput` has starters.
const CLIENTS: usize = 32;
/// Warm-ups run at most this many processes.
const WARMUP_N: usize = 1_000;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let n = ctx.plan.n;
    let mut r = ScenarioReport::new(
        "http",
        json!({"n": n, "clients": CLIENTS, "tool": "echo", "disposition": "rerunnable",
               "worker": "the server's defaults (concurrency 64, claim batch 64)"}),
    );
    if ctx.kind == "memory" {
        r.outcome = Outcome::Skipped("n/a: a served memory database is the server's own, not the bench's".into());
        return r;
    }
    r.notes.push(format!(
        "{CLIENTS} clients, each starting an echo process then awaiting it: over HTTP/1.1 keep-alive to a \
         `cairn serve` child with default flags, and through Processes in this OS process with the same \
         worker flags; timed from the first start to the last terminal"
    ));
    let mut served = Figure::rate("http.served", "start -> await (echo) over HTTP", "processes/s");
    let mut in_process = Figure::rate(
        "http.in_process",
        "start -> await (echo) in process, same clients",
        "processes/s",
    );
    let mut share = Figure {
        key: "http.share".into(),
        label: "HTTP figure as a share of the in-process one".into(),
        unit: "%",
        higher_is_better: true,
        runs: Vec::new(),
        bound: Bound::Target(50.0, "%", "issue 24: at least 50% of the in-process figure"),
        samples_per_run: None,
    };
    for (label, measured) in ctx.runs() {
        let count = if measured { n } else { n.min(WARMUP_N) };
        ctx.progress.detail(format!(
            "{}: http, {label}: {count} processes, in process then served",
            ctx.tag()
        ));
        let rates = async {
            let local = local_run(ctx, &label, count).await?;
            let server = Serve::spawn(ctx.url).await?;
            let remote = served_run(&server.base, &ctx.prefix("http", &format!("{label}-served")), count).await;
            server.stop().await;
            Ok::<(f64, f64), String>((local, remote?))
        };
        match rates.await {
            Ok((local, remote)) if measured => {
                in_process.runs.push(local);
                served.runs.push(remote);
                share.runs.push(remote / local * 100.0);
            }
            Ok(_) => {}
            Err(e) => {
                r.outcome = Outcome::Failed(format!("{label}: {e}"));
                return r;
            }
        }
    }
    r.figures.extend([served, in_process, share]);
    r
}

async fn local_run(ctx: &Ctx<'_>, label: &str, n: usize) -> Result<f64, String> {
    let prefix = ctx.prefix("http", &format!("{label}-local"));
    let defaults = WorkerConfig::default();
    let p = ctx.runtime(format!("{prefix}-worker"), defaults.concurrency, defaults.batch_size);
    let result = {
        let (p, prefix) = (p.clone(), prefix.clone());
        clients(n, move |i| {
            let (p, id) = (p.clone(), format!("{prefix}-{i:07}"));
            async move { local_one(&p, &id, i).await }
        })
        .await
    };
    p.shutdown().await;
    result
}

async fn local_one(p: &Processes, id: &str, i: usize) -> Result<(), String> {
    let req = StartRequest::tool(id, "echo", json!({"value": i}), Disposition::Rerunnable);
    start_new(p, req).await?;
    let rec = p
        .await_output(id, AWAIT_TIMEOUT)
        .await
        .map_err(|e| format!("await `{id}`: {e}"))?;
    check_outcome(id, &serde_json::to_value(&rec).map_err(|e| e.to_string())?, i)
}

async fn served_run(base: &str, prefix: &str, n: usize) -> Result<f64, String> {
    // One pooled client: each of the 32 clients keeps its connection alive.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let (base, prefix) = (Arc::new(base.to_string()), Arc::new(prefix.to_string()));
    clients(n, move |i| {
        let (http, base, id) = (http.clone(), base.clone(), format!("{prefix}-{i:07}"));
        async move { served_one(&http, &base, &id, i).await }
    })
    .await
}

async fn served_one(http: &reqwest::Client, base: &str, id: &str, i: usize) -> Result<(), String> {
    start_new_over_http(http, base, id, "echo", json!({"value": i})).await?;
    let timeout_ms = AWAIT_TIMEOUT.as_millis();
    let rec: Value = http
        .get(format!("{base}/v1/processes/{id}/await?timeout_ms={timeout_ms}"))
        .timeout(AWAIT_TIMEOUT + Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("await `{id}`: {e}"))?
        .json()
        .await
        .map_err(|e| format!("await `{id}`: {e}"))?;
    check_outcome(id, &rec, i)
}

fn check_outcome(id: &str, rec: &Value, i: usize) -> Result<(), String> {
    if rec["status"] != "completed" || rec["outcome"]["value"] != json!(i) {
        return Err(format!("`{id}` did not complete with its value: {rec}"));
    }
    Ok(())
}

/// Run `one(i)` for i in 0..n from [`CLIENTS`] concurrent clients, each taking
/// every CLIENTS-th index; answers processes per second.
async fn clients<F, Fut>(n: usize, one: F) -> Result<f64, String>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..CLIENTS.min(n) {
        let one = one.clone();
        tasks.spawn(async move {
            for i in (c..n).step_by(CLIENTS) {
                one(i).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("client task: {e}"))??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
