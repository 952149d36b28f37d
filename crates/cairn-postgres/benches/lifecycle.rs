//! PostgreSQL: full-lifecycle throughput with 1 and 3 worker nodes, start-to-running
//! latency and cross-node await latency, beside the server's single-row commit rate.
//!
//! `CAIRN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p cairn-postgres --bench lifecycle`
//! (`CAIRN_BENCH_N` scales the process count, default 10,000; `CAIRN_BENCH_ONLY=lifecycle`
//! or `latency` runs one half, `starts` only the rate of starts with no worker node; `CAIRN_BENCH_WORKERS=3` runs one worker-node count;
//! `CAIRN_BENCH_LANES` and `CAIRN_BENCH_READS` override the
//! write lanes and read connections per node; `CAIRN_BENCH_RUNS`, default 3, is
//! how many runs each figure and the commit rate are the median of, shown with
//! min..max). Each node is its own
//! `PostgresRegistry` (own connections, own LISTEN) in this OS process. Each
//! lifecycle run also prints its CPU per process, this OS process's and the whole
//! machine's (Linux only). Figures go to docs/BENCHMARKS.md.

// The allocator the `cairn` server binary ships with (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{
    Awaiter, ChangeHub, Disposition, Outcome, ProcessFilter, ProcessRegistry, ProcessStatus, Processes, StartRequest,
    StatusFilter, SystemClock, WorkerConfig,
};
use cairn_postgres::testing::TestSchema;
use cairn_postgres::PostgresRegistry;
use cairn_testkit::probe::ReadProbe;
use cairn_tools::builtin_tools;
use serde_json::json;

/// One node: a registry with its listener and hub.
async fn node(schema: &TestSchema) -> (Arc<PostgresRegistry>, ChangeHub) {
    let mut options = schema.options(Arc::new(SystemClock));
    if let Some(lanes) = std::env::var("CAIRN_BENCH_LANES").ok().and_then(|v| v.parse().ok()) {
        options.write_lanes = lanes;
    }
    if let Some(reads) = std::env::var("CAIRN_BENCH_READS").ok().and_then(|v| v.parse().ok()) {
        options.read_connections = reads;
    }
    let reg = Arc::new(PostgresRegistry::connect_with(options).await.expect("connect"));
    let hub = ChangeHub::new();
    reg.listen(hub.clone());
    let mut generation = reg.listener_generation();
    generation.wait_for(|g| *g >= 1).await.expect("listening");
    (reg, hub)
}

fn worker_runtime(reg: Arc<PostgresRegistry>, hub: ChangeHub, owner: &str) -> Processes {
    Processes::builder(reg)
        .hub(hub)
        .tools(builtin_tools(false))
        .worker_config(WorkerConfig {
            owner_id: owner.into(),
            concurrency: 512,
            batch_size: 256,
            ..WorkerConfig::default()
        })
        .start()
}

/// The server's rate of single-row autocommit inserts from one connection: the
/// bound one durable commit is held against.
async fn commit_rate(schema: &TestSchema) -> f64 {
    let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{0}\"; CREATE TABLE IF NOT EXISTS \"{0}\".commit_probe (id bigserial PRIMARY KEY, v text)",
            schema.name
        ))
        .await
        .expect("probe table");
    let stmt = client
        .prepare(&format!("INSERT INTO \"{}\".commit_probe (v) VALUES ($1)", schema.name))
        .await
        .expect("prepare");
    let n = 2_000;
    let t = Instant::now();
    for i in 0..n {
        client.execute(&stmt, &[&format!("row {i}")]).await.expect("insert");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Start `n` echo processes from 64 starters on a node without a worker, with
/// `workers` worker nodes; processes/s from the first start to the last terminal.
async fn lifecycle(n: usize, workers: usize) -> f64 {
    let schema = TestSchema::new("cairn_bench");
    let (reg, hub) = node(&schema).await;
    let starter = Processes::builder(reg.clone())
        .hub(hub)
        .tools(builtin_tools(false))
        .without_worker()
        .start();
    let mut runtimes = Vec::new();
    for w in 0..workers {
        let (reg, hub) = node(&schema).await;
        runtimes.push(worker_runtime(reg, hub, &format!("worker-{w}")));
    }
    let cpu_before = cpu_seconds();
    let t = Instant::now();
    start_all(&starter, n).await;
    let starts_done = t.elapsed();
    // Done when no running row is left (one indexed probe per 5 ms).
    let running = ProcessFilter {
        status: StatusFilter::Running,
        limit: Some(1),
        ..ProcessFilter::default()
    };
    while !reg.list(&running).await.expect("list").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds();
    println!(
        "  ({n} processes, {workers} worker node(s): the last start returned after {:.0} ms of {:.0} ms)",
        starts_done.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
    if let (Some((own0, all0)), Some((own1, all1))) = (cpu_before, cpu_after) {
        let per = |s: f64| s * 1e6 / n as f64;
        println!(
            "  (CPU per process: cairn {:.0} µs, whole machine {:.0} µs, of which PostgreSQL and the rest {:.0} µs)",
            per(own1 - own0),
            per(all1 - all0),
            per((all1 - all0) - (own1 - own0))
        );
    }
    // Untimed: every process completed with its own value. A failed or
    // cancelled process also leaves `running`, and must not count as work done.
    check_every_outcome(reg.as_ref(), n).await;
    for r in runtimes {
        r.shutdown().await;
    }
    starter.shutdown().await;
    rate
}

/// Every `echo-{i}` of `0..n` is completed with the value `i`; panics otherwise.
async fn check_every_outcome(reg: &dyn ProcessRegistry, n: usize) {
    let mut seen = 0;
    let mut after_id = None;
    loop {
        let page = reg
            .list(&ProcessFilter {
                status: StatusFilter::Any,
                limit: Some(1000),
                after_id: after_id.clone(),
                ..ProcessFilter::default()
            })
            .await
            .expect("list");
        let Some(last) = page.last() else { break };
        after_id = Some(last.id.clone());
        for r in &page {
            let i: u64 =
                r.id.strip_prefix("echo-")
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected process `{}`", r.id));
            assert_eq!(
                (r.status, r.outcome.as_ref()),
                (ProcessStatus::Completed, Some(&Outcome::success(json!(i)))),
                "`{}` did not complete with its value",
                r.id
            );
            seen += 1;
        }
    }
    assert_eq!(seen, n, "{seen} of {n} processes exist");
}

/// CPU seconds used so far by this OS process (every node, the starters and
/// the workers) and by the whole machine (PostgreSQL included), from Linux's
/// `/proc`; `None` elsewhere. Both count in clock ticks of 1/100 s.
fn cpu_seconds() -> Option<(f64, f64)> {
    const TICK: f64 = 0.01;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime and stime
    // are the 12th and 13th of them.
    let after = own.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let own_ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let all = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = all
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq: busy is all but idle and iowait
    // (time the hypervisor took, `steal`, is nobody's work here).
    let busy: f64 = cpu.iter().take(7).sum::<f64>() - cpu.get(3)? - cpu.get(4)?;
    Some((own_ticks * TICK, busy * TICK))
}

/// Start `echo-0..n` from 64 concurrent starters; each start must create its process.
async fn start_all(starter: &Processes, n: usize) {
    let starters = 64;
    let mut tasks = Vec::new();
    for s in 0..starters {
        let p = starter.clone();
        tasks.push(tokio::spawn(async move {
            for i in (s..n).step_by(starters) {
                let started = p
                    .start(StartRequest::tool(
                        format!("echo-{i}"),
                        "echo",
                        json!({"value": i}),
                        Disposition::Rerunnable,
                    ))
                    .await
                    .expect("start");
                assert!(started.created);
            }
        }));
    }
    for task in tasks {
        task.await.expect("starter");
    }
}

/// Start `n` processes on one node with no worker node: starts per second,
/// the starter node's own bound.
async fn starts_only(n: usize) -> f64 {
    let schema = TestSchema::new("cairn_bench");
    let (reg, hub) = node(&schema).await;
    let starter = Processes::builder(reg)
        .hub(hub)
        .tools(builtin_tools(false))
        .without_worker()
        .start();
    let t = Instant::now();
    start_all(&starter, n).await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    starter.shutdown().await;
    rate
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

/// Start one process at a time on node A and wait until it is running
/// (`process.started`) on a worker of node B: milliseconds per process.
async fn start_to_running(samples: usize) -> (f64, f64) {
    let schema = TestSchema::new("cairn_bench");
    let (reg_a, hub_a) = node(&schema).await;
    let starter = Processes::builder(reg_a)
        .hub(hub_a)
        .tools(builtin_tools(false))
        .without_worker()
        .start();
    let (reg_b, hub_b) = node(&schema).await;
    // A tool that stays running, so only the start is measured.
    let worker = worker_runtime(reg_b, hub_b, "worker-b");
    let mut out = Vec::new();
    let mut committed = Vec::new();
    for i in 0..samples + 20 {
        let id = format!("sleep-{i}");
        let t = Instant::now();
        starter
            .start(StartRequest::tool(
                id.clone(),
                "sleep",
                json!({"ms": 60_000}),
                Disposition::Rerunnable,
            ))
            .await
            .expect("start");
        let start_ms = t.elapsed().as_secs_f64() * 1000.0;
        starter
            .await_event(&id, "process.started", 0, Duration::from_secs(10))
            .await
            .expect("started");
        if i >= 20 {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
            committed.push(start_ms);
        }
        // Let the cancellation finish on B first, so the next start meets a quiet system.
        starter.cancel(&id, None).await.expect("cancel");
        starter
            .awaiter()
            .await_terminal_for(&id, Duration::from_secs(10))
            .await
            .expect("cancelled");
    }
    worker.shutdown().await;
    starter.shutdown().await;
    let (c50, c99) = summary(committed);
    println!("  of which the start's own commit:     p50 {c50:.2} ms  p99 {c99:.2} ms");
    summary(out)
}

/// Node A awaits an externally owned process; node B completes it: milliseconds
/// from B's completion call to A's awaiter resolving.
async fn cross_node_await(samples: usize) -> (f64, f64) {
    let schema = TestSchema::new("cairn_bench");
    let (reg_a, hub_a) = node(&schema).await;
    let (reg_b, _hub_b) = node(&schema).await;
    let hour = Duration::from_secs(3600);
    // The awaiter reads through a probe, so the bench knows when its first read
    // has answered "running": from then on only node A's hub can wake it.
    let probe = ReadProbe::new(reg_a.clone());
    let awaiter =
        Awaiter::new(probe.clone(), Some(hub_a)).with_backoff(cairn_core::awaiter::Backoff { floor: hour, cap: hour });
    let mut out = Vec::new();
    for i in 0..samples + 20 {
        let id = format!("ext-{i}");
        reg_a
            .register(cairn_testkit::external(&id), None)
            .await
            .expect("register");
        let reads = *probe.gets().borrow();
        let waiting = {
            let (awaiter, id) = (awaiter.clone(), id.clone());
            // Not `await_terminal_for`: on its timeout it reads the record once
            // more, which would find the completion without any wake-up.
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_secs(10), awaiter.await_terminal(&id)).await },
            )
        };
        // Parked: its first read (after it subscribed to the hub) has answered.
        probe.answered_gets(reads + 1).await;
        let t = Instant::now();
        reg_b
            .complete_external(&id, Outcome::success(json!({})), "bench")
            .await
            .expect("complete");
        let record = waiting
            .await
            .expect("join")
            .unwrap_or_else(|_| panic!("`{id}`: node A's awaiter was not woken within 10 s"))
            .expect("resolved");
        assert_eq!(record.status, ProcessStatus::Completed);
        if i >= 20 {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    summary(out)
}

/// The median, min and max of `values` (each figure is the median of repeated runs).
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

/// `median (min..max)` of `values`, with `digits` decimals.
fn shown(values: &[f64], digits: usize) -> String {
    let (median, min, max) = spread(values);
    format!("{median:.digits$} ({min:.digits$}..{max:.digits$})")
}

fn main() {
    let Some(_) = cairn_postgres::testing::test_url() else {
        return;
    };
    let n: usize = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // Every figure, and the commit rate it is held against, is the median of
    // this many runs (like `cairn bench --runs`).
    let runs: usize = std::env::var("CAIRN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let probe = TestSchema::new("cairn_bench");
        let mut rates = Vec::new();
        for _ in 0..runs {
            rates.push(commit_rate(&probe).await);
        }
        let (commits, _, _) = spread(&rates);
        println!(
            "single-row commit rate (1 connection), median (min..max) of {runs}: {} /s  (bound for one durable commit)",
            shown(&rates, 0)
        );
        // `CAIRN_BENCH_ONLY=lifecycle` or `latency` runs one half; `starts`
        // runs only the starts-only figure.
        let only = std::env::var("CAIRN_BENCH_ONLY").unwrap_or_default();
        if only == "starts" {
            starts_only(1_000).await;
            let mut rates = Vec::new();
            for _ in 0..runs {
                rates.push(starts_only(n).await);
            }
            println!(
                "starts only, no worker node, {n} processes: {} starts/s",
                shown(&rates, 0)
            );
            return;
        }
        if only != "latency" {
            // Warm-up, excluded.
            lifecycle(1_000, 1).await;
        }
        // `CAIRN_BENCH_WORKERS=3` runs one worker-node count.
        let counts: Vec<usize> = match std::env::var("CAIRN_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()) {
            Some(w) => vec![w],
            None => vec![1, 3],
        };
        for workers in counts {
            if only == "latency" {
                break;
            }
            let mut rates = Vec::new();
            for _ in 0..runs {
                rates.push(lifecycle(n, workers).await);
            }
            let (rate, _, _) = spread(&rates);
            println!(
                "lifecycle, {workers} worker node(s), {n} processes: {} processes/s  ({:.2} per single-row commit)",
                shown(&rates, 0),
                rate / commits
            );
        }
        if only == "lifecycle" {
            return;
        }
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (p50, p99) = start_to_running(300).await;
            p50s.push(p50);
            p99s.push(p99);
        }
        println!(
            "start → running (other node):          p50 {} ms  p99 {} ms",
            shown(&p50s, 2),
            shown(&p99s, 2)
        );
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (p50, p99) = cross_node_await(300).await;
            p50s.push(p50);
            p99s.push(p99);
        }
        println!(
            "cross-node await (complete → resolved): p50 {} ms  p99 {} ms",
            shown(&p50s, 2),
            shown(&p99s, 2)
        );
    });
}
