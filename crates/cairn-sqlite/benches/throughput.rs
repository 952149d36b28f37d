//! SQLite throughput: start-to-complete with the `echo` tool, and event appends.
//!
//! `cargo bench -p cairn-sqlite --bench throughput` (env `CAIRN_BENCH_N` scales the
//! process count). Figures go to docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{
    AppendRequest, Disposition, EventType, Outcome, ProcessRegistry, ProcessStatus, Processes, StartRequest,
    SystemClock, WorkerConfig,
};
use cairn_sqlite::SqliteRegistry;
use cairn_tools::builtin_tools;
use serde_json::json;

fn open(dir: &tempfile::TempDir, name: &str) -> Arc<SqliteRegistry> {
    Arc::new(SqliteRegistry::open(dir.path().join(name), Arc::new(SystemClock)).expect("open sqlite"))
}

/// The disk's fsync rate: the bound a durable single-row commit is held against.
fn fsync_rate(dir: &tempfile::TempDir) -> f64 {
    use std::io::Write;
    let path = dir.path().join("fsync.probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let n = 200;
    let t = Instant::now();
    for i in 0..n {
        f.write_all(&[i as u8; 64]).expect("write");
        f.sync_data().expect("fsync");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn start_to_complete(dir: &tempfile::TempDir, n: usize, starters: usize) -> f64 {
    let reg = open(dir, "lifecycle.db");
    let p = Processes::builder(reg)
        .tools(builtin_tools(false))
        .worker_config(WorkerConfig {
            owner_id: "bench".into(),
            concurrency: 256,
            batch_size: 256,
            ..WorkerConfig::default()
        })
        .start();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..starters {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for i in (s..n).step_by(starters) {
                p.start(StartRequest::tool(
                    format!("echo-{i}"),
                    "echo",
                    json!({"value": i}),
                    Disposition::Rerunnable,
                ))
                .await
                .expect("start");
            }
        }));
    }
    for t in tasks {
        t.await.expect("starter");
    }
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let r = p
            .await_output(&format!("echo-{i}"), Duration::from_secs(600))
            .await
            .expect("await");
        records.push(r);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    // Untimed: each process completed with its own value. A failed or
    // cancelled process is terminal too, and must not count as work done.
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            (r.status, r.outcome.as_ref()),
            (ProcessStatus::Completed, Some(&Outcome::success(json!(i)))),
            "echo-{i} did not complete with its value"
        );
    }
    p.shutdown().await;
    rate
}

async fn appends(dir: &tempfile::TempDir, name: &str, processes: usize, per_process: usize) -> f64 {
    let reg: Arc<dyn ProcessRegistry> = open(dir, name);
    for i in 0..processes {
        let mut r = StartRequest::external(format!("ext-{i}"), json!({}));
        r.event_types.push(EventType::plain("progress"));
        let reg_ = cairn_core::Registration {
            id: r.id.clone(),
            input: r.input.clone(),
            disposition: r.disposition,
            event_types: r.event_types.clone(),
            provenance: Default::default(),
            wake_target: None,
            env_ref: None,
            external_ref: None,
        };
        reg.register(reg_, None).await.expect("register");
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..processes {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_process {
                reg.append_event(&format!("ext-{i}"), AppendRequest::new("progress", json!({"n": n})))
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender");
    }
    (processes * per_process) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("CAIRN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let fsync = fsync_rate(&dir);
    println!("disk fsync rate:                     {fsync:>10.0} /s  (bound for one durable commit)");
    rt.block_on(async {
        // Warm-up run, excluded.
        let warm = tempfile::tempdir().expect("tempdir");
        start_to_complete(&warm, 1_000, 8).await;
        let rate = start_to_complete(&dir, n, 32).await;
        println!(
            "start→complete (echo, {n} processes): {rate:>10.0} processes/s  ({:.1} per fsync)",
            rate / fsync
        );
        let single = appends(&dir, "append-single.db", 1, 10_000).await;
        println!(
            "event append, 1 appender:            {single:>10.0} events/s  ({:.1} per fsync)",
            single / fsync
        );
        let many = appends(&dir, "append-many.db", 64, 2_000).await;
        println!(
            "event append, 64 appenders:          {many:>10.0} events/s  ({:.1} per fsync)",
            many / fsync
        );
    });
}
