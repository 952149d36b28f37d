//! `sse`: what open event streams cost a server, and whether closing them
//! gives the memory back (issue 17's targets: 500 streams on idle processes
//! under 50 MiB and 2% of a core).
//!
//! Each run spawns a real `cairn serve` (this binary, default flags, on the
//! bench's database) and talks to it over HTTP as a client would. It warms the
//! server (a cycle of streams opened and closed), starts N rerunnable
//! `wait_signal` processes and waits until each has suspended, then reads the
//! server's RSS (`/proc/{pid}/status`), opens one SSE stream on each process
//! and reads the first event of each, reads the RSS again and the server's CPU
//! time (its kernel CPU-time clock) over an idle window, closes every stream and
//! reads the RSS once the server has let them go.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::serve::{start_new_over_http, Serve};
use super::Ctx;

const MIB: f64 = 1024.0 * 1024.0;
/// Issue 17: 500 open SSE streams on idle processes cost under 50 MiB.
const TARGET_BYTES_PER_STREAM: f64 = 50.0 * MIB / 500.0;
/// How long the server idles before the readings with the streams closed
/// (or not yet open): longer than the 15 s keep-alive interval of a stream
/// (a server that missed a close notices it at its next keep-alive write) and
/// the 10 s tokio keeps an idle blocking thread.
const SETTLE: Duration = Duration::from_secs(20);
/// Streams opened and closed while warming the server up.
const WARM_STREAMS: usize = 50;

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let streams = ctx.plan.sse_streams;
    let idle = ctx.plan.idle_seconds;
    let mut r = ScenarioReport::new(
        "sse",
        json!({"streams": streams, "tool": "wait_signal", "disposition": "rerunnable", "idle_seconds": idle}),
    );
    if cfg!(not(target_os = "linux")) {
        r.outcome = Outcome::Skipped("n/a: RSS and CPU time are read from /proc (Linux only)".into());
        return r;
    }
    r.notes.push(format!(
        "a `cairn serve` child with default flags; {streams} SSE streams, one per suspended wait_signal \
         process; RSS of the server before they open, open, and {} s after they close; its CPU over \
         {idle} s with them open and idle; targets from issue 17",
        SETTLE.as_secs()
    ));
    let mut each = Figure {
        key: "sse.bytes_per_stream".into(),
        label: format!("RSS per open stream ({streams} open)"),
        unit: "bytes",
        higher_is_better: false,
        runs: Vec::new(),
        bound: Bound::Target(TARGET_BYTES_PER_STREAM, "bytes", "issue 17: 500 streams under 50 MiB"),
        samples_per_run: None,
    };
    let mut open = Figure {
        key: "sse.rss_open".into(),
        label: "RSS beyond the server before the streams, all open".into(),
        unit: "MiB",
        bound: Bound::NotApplicable("held per stream above"),
        ..each.clone()
    };
    let mut cpu = Figure {
        key: "sse.idle_cpu".into(),
        label: format!("server CPU while {streams} streams are open and idle"),
        unit: "% of a core",
        bound: Bound::Target(2.0, "% of a core", "issue 17: under 2% of one core"),
        ..each.clone()
    };
    let mut left = Figure {
        key: "sse.connections_left_open".into(),
        label: "connections the server still holds after the streams closed".into(),
        unit: "connections",
        bound: Bound::NotApplicable("0 when closing a stream frees its connection"),
        ..each.clone()
    };
    let mut kept = Figure {
        key: "sse.rss_after_close".into(),
        label: "RSS beyond the server before the streams, all closed".into(),
        unit: "MiB",
        bound: Bound::NotApplicable("compare with the open figure: closing returns what they took"),
        ..each.clone()
    };
    for (label, measured) in ctx.runs() {
        ctx.progress.detail(format!(
            "{}: sse, {label}: {streams} streams on a cairn serve",
            ctx.tag()
        ));
        let n = if measured { streams } else { streams.min(100) };
        let a = match one_run(ctx, &label, n, if measured { idle } else { 1 }).await {
            Ok(a) => a,
            Err(e) => {
                r.outcome = Outcome::Failed(format!("{label}: {e}"));
                return r;
            }
        };
        if !measured {
            continue;
        }
        let f = |k: &str| a[k].as_f64().unwrap_or(f64::NAN);
        let grown = f("rss_open") - f("rss_before");
        each.runs.push(grown.max(0.0) / n as f64);
        open.runs.push(grown / MIB);
        cpu.runs.push(f("idle_cpu_percent"));
        kept.runs.push((f("rss_closed") - f("rss_before")) / MIB);
        left.runs.push(f("connections_left_open"));
    }
    r.figures.extend([each, open, cpu, kept, left]);
    r
}

async fn one_run(ctx: &Ctx<'_>, label: &str, n: usize, idle: u64) -> Result<Value, String> {
    let prefix = ctx.prefix("sse", label);
    let server = Serve::spawn(ctx.url).await?;
    let result = measure(&server, &prefix, n, idle).await;
    server.stop().await;
    result
}

async fn measure(server: &Serve, prefix: &str, n: usize, idle: u64) -> Result<Value, String> {
    let http = local_client()?;
    // Warm up: a cycle of streams opened and closed, so the reading before
    // counts a server that has served streams (its buffers and arenas warm).
    let warm: Vec<String> = (0..WARM_STREAMS).map(|i| format!("{prefix}-warm-{i:03}")).collect();
    start_suspended(&http, &server.base, &warm).await?;
    drop(open_streams(&server.base, &warm).await?);
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    start_suspended(&http, &server.base, &ids).await?;
    drop(http);
    tokio::time::sleep(SETTLE).await;
    let rss_before = server.rss()?;
    let connections_before = open_connections(&server.base).await?;

    let streams = open_streams(&server.base, &ids).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_open = server.rss()?;
    let cpu0 = server.cpu_seconds()?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let idle_cpu_percent = (server.cpu_seconds()? - cpu0) / window.elapsed().as_secs_f64() * 100.0;
    drop(streams);
    tokio::time::sleep(SETTLE).await;
    let rss_closed = server.rss()?;
    let connections_after = open_connections(&server.base).await?;
    Ok(json!({
        "connections_left_open": connections_after - connections_before,
        "streams": n,
        "rss_before": rss_before,
        "rss_open": rss_open,
        "rss_closed": rss_closed,
        "idle_cpu_percent": idle_cpu_percent,
    }))
}

/// A client for the bench's own server on loopback: straight to it, past
/// any proxy the environment names.
fn local_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// The server's open HTTP connections (`cairn_http_connections_open`), this
/// request's own among them.
async fn open_connections(base: &str) -> Result<f64, String> {
    let text = local_client()?
        .get(format!("{base}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("cairn_http_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "metrics: no cairn_http_connections_open".to_string())
}

/// Start rerunnable `wait_signal` processes `ids` (32 at a time) and return
/// once each has suspended.
async fn start_suspended(http: &reqwest::Client, base: &str, ids: &[String]) -> Result<(), String> {
    let starts = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let http = http.clone();
            async move {
                start_new_over_http(&http, base, &id, "wait_signal", json!({"name": "go"})).await?;
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let rec: Value = http
                        .get(format!("{base}/v1/processes/{id}"))
                        .send()
                        .await
                        .and_then(reqwest::Response::error_for_status)
                        .map_err(|e| format!("get `{id}`: {e}"))?
                        .json()
                        .await
                        .map_err(|e| format!("get `{id}`: {e}"))?;
                    if rec["wait"]["kind"] == "signal" && rec["lease"].is_null() {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("`{id}` did not suspend within 120 s: {rec}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<Result<(), String>>>()
        .await;
    starts.into_iter().collect()
}

/// Open one SSE stream per id on its own connection (a client of its own, so
/// dropping the answer closes them all) and read each until its first event.
async fn open_streams(base: &str, ids: &[String]) -> Result<Vec<reqwest::Response>, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let mut open = Vec::with_capacity(ids.len());
    for id in ids {
        let mut r = client
            .get(format!("{base}/v1/processes/{id}/events"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("stream `{id}`: {e}"))?;
        let first = tokio::time::timeout(Duration::from_secs(30), r.chunk())
            .await
            .map_err(|_| format!("stream `{id}` sent nothing within 30 s"))?
            .map_err(|e| format!("stream `{id}`: {e}"))?;
        if first.is_none() {
            return Err(format!("stream `{id}` closed at once"));
        }
        open.push(r);
    }
    Ok(open)
}
