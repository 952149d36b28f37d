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

use cairn_core::{Disposition, Outcome as Ended, ProcessStatus, Processes, StartRequest, WorkerConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::serve::{Conn, Serve};
use super::suspended::cpu_seconds;
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
    let cores = |key: &str, label: &str| Figure {
        key: key.into(),
        label: label.into(),
        unit: "cores",
        higher_is_better: false,
        runs: Vec::new(),
        bound: Bound::NotApplicable("the clients and the server share this machine's cores"),
        samples_per_run: None,
    };
    let mut in_process_cpu = cores("http.in_process_cpu", "CPU of this process over the in-process run");
    let mut server_cpu = cores("http.server_cpu", "CPU of the served child over the HTTP run");
    let mut client_cpu = cores(
        "http.client_cpu",
        "CPU of this process (the HTTP clients) over the HTTP run",
    );
    for (label, measured) in ctx.runs() {
        let count = if measured { n } else { n.min(WARMUP_N) };
        ctx.progress.detail(format!(
            "{}: http, {label}: {count} processes, in process then served",
            ctx.tag()
        ));
        let rates = async {
            let before = cpu_seconds()?;
            let (local, secs) = local_run(ctx, &label, count).await?;
            let local_cores = (cpu_seconds()? - before) / secs;
            let server = Serve::spawn(ctx.url).await?;
            let over_http = async {
                let before = (server.cpu_seconds()?, cpu_seconds()?);
                let prefix = ctx.prefix("http", &format!("{label}-served"));
                let (rate, secs) = served_run(&server.base, &prefix, count).await?;
                let server_cores = (server.cpu_seconds()? - before.0) / secs;
                let client_cores = (cpu_seconds()? - before.1) / secs;
                Ok::<_, String>((rate, server_cores, client_cores))
            }
            .await;
            server.stop().await;
            let (remote, server_cores, client_cores) = over_http?;
            Ok::<_, String>((local, local_cores, remote, server_cores, client_cores))
        };
        match rates.await {
            Ok((local, local_cores, remote, server_cores, client_cores)) if measured => {
                in_process_cpu.runs.push(local_cores);
                in_process.runs.push(local);
                served.runs.push(remote);
                share.runs.push(remote / local * 100.0);
                server_cpu.runs.push(server_cores);
                client_cpu.runs.push(client_cores);
            }
            Ok(_) => {}
            Err(e) => {
                r.outcome = Outcome::Failed(format!("{label}: {e}"));
                return r;
            }
        }
    }
    r.figures
        .extend([served, in_process, share, in_process_cpu, server_cpu, client_cpu]);
    r
}

/// The in-process run: processes per second and its length in seconds.
async fn local_run(ctx: &Ctx<'_>, label: &str, n: usize) -> Result<(f64, f64), String> {
    let prefix = ctx.prefix("http", &format!("{label}-local"));
    let defaults = WorkerConfig::default();
    let p = ctx.runtime(format!("{prefix}-worker"), defaults.concurrency, defaults.batch_size);
    let result = {
        let (p, prefix) = (p.clone(), prefix.clone());
        clients(
            n,
            || async { Ok(()) },
            move |(), i| {
                let (p, id) = (p.clone(), format!("{prefix}-{i:07}"));
                async move { local_one(&p, &id, i).await }
            },
        )
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
    let value = match (&rec.status, &rec.outcome) {
        (ProcessStatus::Completed, Some(Ended::Success { value })) => Some(value),
        _ => None,
    };
    check_outcome(id, rec.status.label(), value, i)
}

/// The served run: processes per second and its length in seconds.
async fn served_run(base: &str, prefix: &str, n: usize) -> Result<(f64, f64), String> {
    let base = Arc::new(base.to_string());
    let prefix = Arc::new(prefix.to_string());
    clients(
        n,
        || Conn::open(&base),
        move |conn, i| {
            let id = format!("{prefix}-{i:07}");
            async move { served_one(conn, &id, i).await }
        },
    )
    .await
}

/// What the bench reads of an awaited record: serde skips the rest.
#[derive(Deserialize)]
struct Awaited {
    status: String,
    outcome: Option<AwaitedOutcome>,
}

#[derive(Deserialize)]
struct AwaitedOutcome {
    value: Option<Value>,
}

async fn served_one(mut conn: Conn, id: &str, i: usize) -> Result<Conn, String> {
    let body = json!({"id": id, "disposition": "rerunnable",
        "input": {"type": "tool_call", "tool": "echo", "args": {"value": i}}});
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let (status, text) = conn.call("/v1/processes", Some(body), AWAIT_TIMEOUT).await?;
    if status != hyper::StatusCode::CREATED {
        return Err(format!(
            "start `{id}`: {status} {} (ids must be new: use a fresh database or another --seed)",
            String::from_utf8_lossy(&text)
        ));
    }
    let timeout_ms = AWAIT_TIMEOUT.as_millis();
    let path = format!("/v1/processes/{id}/await?timeout_ms={timeout_ms}");
    let (status, text) = conn
        .call(&path, None, AWAIT_TIMEOUT + Duration::from_secs(10))
        .await
        .map_err(|e| format!("await `{id}`: {e}"))?;
    if status != hyper::StatusCode::OK {
        return Err(format!("await `{id}`: {status} {}", String::from_utf8_lossy(&text)));
    }
    let rec: Awaited = serde_json::from_slice(&text).map_err(|e| format!("await `{id}`: {e}"))?;
    let value = rec.outcome.as_ref().and_then(|o| o.value.as_ref());
    check_outcome(id, &rec.status, value, i)?;
    Ok(conn)
}

fn check_outcome(id: &str, status: &str, value: Option<&Value>, i: usize) -> Result<(), String> {
    if status != "completed" || value != Some(&json!(i)) {
        return Err(format!("`{id}` did not complete with its value: {status}, {value:?}"));
    }
    Ok(())
}

/// Run `one(state, i)` for i in 0..n from [`CLIENTS`] concurrent clients,
/// each with a state `make` gave it before the clock started (its
/// connection), taking every CLIENTS-th index; answers processes per second
/// and the seconds it took.
async fn clients<S, M, MF, F, Fut>(n: usize, make: M, one: F) -> Result<(f64, f64), String>
where
    S: Send + 'static,
    M: Fn() -> MF,
    MF: std::future::Future<Output = Result<S, String>>,
    F: Fn(S, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<S, String>> + Send + 'static,
{
    let mut states = Vec::new();
    for _ in 0..CLIENTS.min(n) {
        states.push(make().await?);
    }
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for (c, mut state) in states.into_iter().enumerate() {
        let one = one.clone();
        tasks.spawn(async move {
            for i in (c..n).step_by(CLIENTS) {
                state = one(state, i).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("client task: {e}"))??;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((n as f64 / secs, secs))
}
