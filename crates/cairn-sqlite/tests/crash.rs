//! A real crash: a child OS process runs a mix of dispositions over a SQLite
//! file and is killed with SIGKILL mid-run; a fresh process reopens the file and
//! proves nothing acknowledged was lost or duplicated and recovery follows the
//! declared dispositions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{
    AbandonWriter, AppendRequest, Clock, Disposition, EventType, ManualClock, Outcome, ProcessFilter, ProcessRegistry,
    ProcessStatus, Processes, StartRequest, SystemClock, Tool, ToolContext, WorkerConfig,
};
use cairn_sqlite::SqliteRegistry;
use cairn_tools::builtin_tools;
use serde_json::{json, Value};

const CHILD_ENV: &str = "CAIRN_CRASH_CHILD_DB";
const RERUNNABLE: usize = 24;
const OWNER_BOUND: usize = 12;
const EXTERNAL: usize = 8;

/// Appends `ticks` tick events (each acknowledged on stdout after its commit), then succeeds.
struct Ticker {
    ticks: u64,
    pause: Duration,
    announce: bool,
}

#[async_trait]
impl Tool for Ticker {
    fn name(&self) -> &str {
        "ticker"
    }

    fn event_types(&self) -> Vec<EventType> {
        vec![EventType::plain("tick")]
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        for i in 0..self.ticks {
            tokio::select! {
                _ = tokio::time::sleep(self.pause) => {}
                _ = ctx.stopped() => return Outcome::cancelled("stopped"),
            }
            match ctx.append("tick", json!({"attempt": ctx.attempt(), "i": i})).await {
                Ok(e) if self.announce => ack(&format!("EVENT {} {}", e.process_id, e.sequence)),
                Ok(_) => {}
                Err(e) => return Outcome::failure("runtime", e.code(), e.to_string()),
            }
        }
        Outcome::success(json!({"ticks": self.ticks, "attempt": ctx.attempt()}))
    }
}

fn ack(line: &str) {
    let mut out = std::io::stdout().lock();
    // An ack is printed only after the write it names committed.
    let _ = writeln!(out, "ACK {line}");
    let _ = out.flush();
}

fn tools(ticks: u64, pause: Duration, announce: bool) -> cairn_core::ToolRegistry {
    builtin_tools(false).with(Arc::new(Ticker { ticks, pause, announce }))
}

/// The child side: runs the workload until it is killed. Run only by `sqlite_survives_sigkill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sqlite_survives_sigkill"]
async fn crash_child() {
    let db = std::env::var(CHILD_ENV).expect("child needs the database path");
    let registry = Arc::new(SqliteRegistry::open(&db, Arc::new(SystemClock)).expect("open"));
    let p = Processes::builder(registry)
        .tools(tools(200, Duration::from_millis(15), true))
        .worker_config(WorkerConfig {
            owner_id: "crashing-child".into(),
            lease_ttl: Duration::from_secs(5),
            concurrency: 8,
            batch_size: 8,
            ..WorkerConfig::default()
        })
        .start();
    let mut ids = Vec::new();
    for i in 0..RERUNNABLE.max(OWNER_BOUND).max(EXTERNAL) {
        if i < RERUNNABLE {
            ids.push((format!("p{i:02}-re"), Disposition::Rerunnable));
        }
        if i < OWNER_BOUND {
            ids.push((format!("p{i:02}-ob"), Disposition::OwnerBound));
        }
        if i < EXTERNAL {
            ids.push((format!("p{i:02}-ext"), Disposition::ExternallyOwned));
        }
    }
    for (id, d) in &ids {
        let req = if *d == Disposition::ExternallyOwned {
            StartRequest::external(id.clone(), json!({})).with_event_type(EventType::plain("progress"))
        } else {
            StartRequest::tool(id.clone(), "ticker", json!({}), *d)
        };
        p.start(req).await.expect("start");
        ack(&format!("START {id}"));
    }
    // The external system reports progress until the crash.
    let mut n = 0u64;
    loop {
        for (id, d) in &ids {
            if *d == Disposition::ExternallyOwned {
                let r = p
                    .append_event(
                        id,
                        AppendRequest::new("progress", json!({"n": n})).with_replay_key(format!("p-{n}")),
                    )
                    .await
                    .expect("append");
                ack(&format!("EVENT {} {}", id, r.event.sequence));
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn all_events(reg: &dyn ProcessRegistry, id: &str) -> Vec<cairn_core::ProcessEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = reg.events_after(id, after, Some(1000)).await.expect("events");
        out.extend(page.events);
        match page.next_after {
            Some(n) => after = n,
            None => return out,
        }
    }
}

async fn check_all_folds(reg: &dyn ProcessRegistry) -> Vec<cairn_core::ProcessRecord> {
    let records = reg
        .list(&ProcessFilter {
            limit: Some(1000),
            ..ProcessFilter::any()
        })
        .await
        .expect("list");
    for r in &records {
        let events = all_events(reg, &r.id).await;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1, "gap in the log of {}", r.id);
        }
        cairn_core::fold::check_fold(r, &events).expect("fold invariant");
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut started = BTreeSet::new();
    let mut acked_events: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut lines = BufReader::new(stdout).lines();
    let total = RERUNNABLE + OWNER_BOUND + EXTERNAL;
    // Kill once every start is acknowledged and work is well under way (bounded by the child's output).
    while let Some(Ok(line)) = lines.next() {
        // libtest may print its own prefix on the same line as the first ack.
        let Some(at) = line.find("ACK ") else { continue };
        let mut parts = line[at + 4..].split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("START"), Some(id), None) => {
                started.insert(id.to_string());
            }
            (Some("EVENT"), Some(id), Some(seq)) => {
                acked_events
                    .entry(id.to_string())
                    .or_default()
                    .insert(seq.parse().expect("seq"));
            }
            _ => {}
        }
        let ticked = acked_events.keys().filter(|k| !k.ends_with("-ext")).count();
        if started.len() == total && ticked >= 8 && acked_events.values().map(BTreeSet::len).sum::<usize>() >= 200 {
            break;
        }
    }
    eprintln!(
        "killing child after {} starts, {} events",
        started.len(),
        acked_events.values().map(BTreeSet::len).sum::<usize>()
    );
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap child");
    // Killed by this SIGKILL, not ended some other way (a panic, an exit).
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the child was killed by SIGKILL: {status:?}"
    );
    assert_eq!(
        started.len(),
        total,
        "the child acknowledged every start before the kill"
    );

    // A fresh process (this one) reopens the file, with time past every lease of the dead child.
    let clock = ManualClock::new(SystemClock.now_ms() + 3_600_000);
    let reg: Arc<dyn ProcessRegistry> = Arc::new(SqliteRegistry::open(&db, Arc::new(clock.clone())).expect("reopen"));

    // Nothing acknowledged was lost or duplicated; every record is the fold of its log.
    let records = check_all_folds(reg.as_ref()).await;
    let ids: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
    assert!(started.is_subset(&ids), "an acknowledged start was lost");
    for (id, seqs) in &acked_events {
        let events = all_events(reg.as_ref(), id).await;
        for seq in seqs {
            assert!(
                events.iter().any(|e| e.sequence == *seq),
                "acknowledged event {id}#{seq} was lost"
            );
        }
        let ticks: Vec<(u64, u64)> = events
            .iter()
            .filter(|e| e.event_type == "tick")
            .map(|e| {
                (
                    e.payload["attempt"].as_u64().unwrap_or(0),
                    e.payload["i"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let unique: BTreeSet<_> = ticks.iter().collect();
        assert_eq!(unique.len(), ticks.len(), "an event of {id} was duplicated");
    }

    // The change feed has no holes: paging it from 0 yields every record once, cursors rising.
    let mut cursor = 0;
    let mut fed = BTreeSet::new();
    loop {
        let page = reg.changed_since(cursor, Some(7)).await.expect("changes");
        if page.changes.is_empty() {
            break;
        }
        for c in page.changes {
            assert!(c.cursor > cursor, "change feed cursors rise");
            cursor = c.cursor;
            assert!(fed.insert(c.process.id.clone()), "a record appeared twice in one pass");
        }
    }
    assert_eq!(fed, ids, "the change feed covers every record");

    let started_owner_bound: BTreeSet<String> = records
        .iter()
        .filter(|r| r.disposition == Disposition::OwnerBound && r.started.is_some() && !r.is_terminal())
        .map(|r| r.id.clone())
        .collect();
    assert!(
        !started_owner_bound.is_empty(),
        "the kill caught owner_bound work mid-run"
    );

    eprintln!("verified log; recovering");
    // Recovery: a fresh worker re-runs rerunnable work (and never-started owner_bound work) to completion.
    let p = Processes::builder(reg.clone())
        .tools(tools(3, Duration::from_millis(1), false))
        .clock(Arc::new(clock.clone()))
        .worker_config(WorkerConfig {
            owner_id: "recovering-worker".into(),
            concurrency: 8,
            batch_size: 8,
            ..WorkerConfig::default()
        })
        .start();
    for r in &records {
        let runnable = match r.disposition {
            Disposition::Rerunnable => true,
            Disposition::OwnerBound => r.started.is_none(),
            Disposition::ExternallyOwned => false,
        };
        if runnable && !r.is_terminal() {
            let done = p.await_output(&r.id, Duration::from_secs(60)).await.expect("await");
            assert_eq!(done.status, ProcessStatus::Completed, "{} re-ran to completion", r.id);
        }
    }
    // Started owner_bound work stays running: elapsed time never makes it terminal.
    for id in &started_owner_bound {
        let r = p.get(id).await.expect("get");
        assert_eq!(
            r.status,
            ProcessStatus::Running,
            "{id} must not re-run or end by itself"
        );
        assert_eq!(r.started.map(|s| s.owner_id).as_deref(), Some("crashing-child"));
    }
    // ... until an abandon request is reconciled (the dead child's lease has lapsed).
    for id in &started_owner_bound {
        p.request_abandon(id, "operator", "the child was killed")
            .await
            .expect("abandon");
    }
    for id in &started_owner_bound {
        let r = p.await_output(id, Duration::from_secs(60)).await.expect("await");
        assert_eq!(r.status, ProcessStatus::Abandoned);
        match r.outcome {
            Some(Outcome::Abandoned { evidence }) => assert_eq!(evidence.writer, AbandonWriter::ReconciledRequest),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // External work was never claimed by anyone and still waits for its owner.
    for r in records.iter().filter(|r| r.disposition == Disposition::ExternallyOwned) {
        let now = p.get(&r.id).await.expect("get");
        assert_eq!(now.status, ProcessStatus::Running);
        assert!(now.started.is_none());
    }
    p.shutdown().await;
    check_all_folds(reg.as_ref()).await;
}
