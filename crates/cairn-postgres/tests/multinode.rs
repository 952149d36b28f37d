//! Many nodes, one database, as real OS processes.
//!
//! - `three_nodes_run_every_process_once_and_survive_a_sigkill`: three worker
//!   processes (this test binary re-run as `node_child`) work through 2,000
//!   processes whose tool counts its runs in a table: every process completes
//!   exactly once and runs exactly once. Then one node is killed with SIGKILL
//!   mid-run: its rerunnable work completes on the others, its started
//!   owner-bound work stays `running` until an abandon request is reconciled,
//!   and every log is gap-free with exactly one terminal event.
//! - `a_restarted_node_sweeps_its_dead_incarnations_work_once`: two nodes with
//!   node ids; node A is killed with SIGKILL while it runs owner-bound work.
//!   Node B sweeps on, and never takes A's work while A is down; when A
//!   restarts (a newer incarnation), A's old work ends `abandoned {sweep}`,
//!   exactly once, and B's own work is untouched.
//! - `an_awaiter_sees_another_process_complete_without_polling`: an awaiter
//!   whose fallback backoff is an hour resolves within seconds when another OS
//!   process completes the work: the notification path, not polling.
//!
//! Needs `CAIRN_TEST_POSTGRES_URL`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use cairn_core::Clock;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::awaiter::Backoff;
use cairn_core::tool::{Tool, ToolContext, ToolRegistry};
use cairn_core::{
    Awaiter, ChangeHub, Disposition, Outcome, ProcessInput, ProcessRecord, ProcessRegistry, ProcessStatus, Processes,
    Provenance, Registration, SystemClock, WorkerConfig,
};
use cairn_postgres::testing::{self, TestSchema};
use cairn_postgres::PostgresRegistry;
use serde_json::{json, Value};

const ENV_SCHEMA: &str = "CAIRN_NODE_SCHEMA";
const ENV_OWNER: &str = "CAIRN_NODE_OWNER";
const ENV_GATE: &str = "CAIRN_NODE_GATE";
const ENV_MODE: &str = "CAIRN_NODE_MODE";
const ENV_NODE_ID: &str = "CAIRN_NODE_ID";
/// How many runs a node holds at once (its worker's concurrency and batch).
const NODE_SLOTS: usize = 16;

// ------------------------------------------------------------------ tools

/// Records one row per run in the schema's `hits` table, then succeeds.
struct Count {
    db: Arc<tokio_postgres::Client>,
    schema: String,
    owner: String,
}

#[async_trait]
impl Tool for Count {
    fn name(&self) -> &str {
        "count"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        record_hit(&self.db, &self.schema, ctx.process_id(), &self.owner).await;
        Outcome::success(json!({ "by": self.owner }))
    }
}

/// Records its run, then holds until the gate file exists (or it is stopped).
struct Gated {
    db: Arc<tokio_postgres::Client>,
    schema: String,
    owner: String,
    gate: PathBuf,
}

#[async_trait]
impl Tool for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        record_hit(&self.db, &self.schema, ctx.process_id(), &self.owner).await;
        while !self.gate.exists() {
            tokio::select! {
                _ = ctx.stopped() => return Outcome::cancelled("stopped at the gate"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Outcome::success(json!({ "by": self.owner }))
    }
}

async fn record_hit(db: &tokio_postgres::Client, schema: &str, id: &str, owner: &str) {
    db.execute(
        &format!("INSERT INTO \"{schema}\".hits (process_id, node) VALUES ($1, $2)"),
        &[&id, &owner],
    )
    .await
    .expect("record a hit");
}

// ------------------------------------------------------------------ the child node

/// Not a test on its own: the body of a node process, run by the tests below.
#[test]
#[ignore = "run as a child process by the multi-node tests"]
fn node_child() {
    let Ok(schema) = std::env::var(ENV_SCHEMA) else { return };
    let url = testing::test_url().expect("url");
    let owner = std::env::var(ENV_OWNER).expect("owner");
    let mode = std::env::var(ENV_MODE).unwrap_or_else(|_| "worker".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A node's warnings (a drive or a sweep the store failed) go to stderr,
    // named by node: what a failed run of these tests shows of its nodes.
    let named = format!("[{owner}] ");
    tracing_subscriber::fmt()
        .with_writer(move || Named(named.clone()))
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();
    rt.block_on(async move {
        let options = cairn_postgres::PostgresOptions::new(&url, Arc::new(SystemClock)).with_schema(schema.clone());
        let registry = PostgresRegistry::connect_with(options).await.expect("connect");
        if let Some(id) = mode.strip_prefix("complete:") {
            registry
                .complete_external(id, Outcome::success(json!({"from": owner})), "other-node")
                .await
                .expect("complete");
            println!("\nCAIRN-NODE DONE");
            return;
        }
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("hits db");
        tokio::spawn(conn);
        let db = Arc::new(db);
        let gate = PathBuf::from(std::env::var(ENV_GATE).expect("gate"));
        let tools = ToolRegistry::new()
            .with(Arc::new(Count {
                db: db.clone(),
                schema: schema.clone(),
                owner: owner.clone(),
            }))
            .with(Arc::new(Gated {
                db,
                schema,
                owner: owner.clone(),
                gate,
            }));
        let hub = ChangeHub::new();
        registry.listen(hub.clone());
        let _runtime = Processes::builder(Arc::new(registry))
            .hub(hub)
            .tools(tools)
            .worker_config(WorkerConfig {
                owner_id: owner,
                lease_ttl: Duration::from_secs(3),
                concurrency: NODE_SLOTS,
                batch_size: NODE_SLOTS,
                sweep_interval: Duration::from_millis(250),
                node_id: std::env::var(ENV_NODE_ID).ok(),
                ..WorkerConfig::default()
            })
            .start();
        println!("\nCAIRN-NODE READY");
        std::future::pending::<()>().await;
    });
}

/// Stderr, each write led by the node's name.
struct Named(String);

impl std::io::Write for Named {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        err.write_all(self.0.as_bytes())?;
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

struct Node {
    name: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start this test binary as a node and wait for its first line.
fn spawn_node(schema: &str, name: &str, gate: &Path, mode: &str, ready: &str) -> Node {
    spawn_node_with(schema, name, gate, mode, ready, None)
}

/// [`spawn_node`], as node `node_id` when one is given.
fn spawn_node_with(schema: &str, name: &str, gate: &Path, mode: &str, ready: &str, node_id: Option<&str>) -> Node {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command.env_remove(ENV_NODE_ID);
    if let Some(n) = node_id {
        command.env(ENV_NODE_ID, n);
    }
    let mut child = command
        .args(["--exact", "node_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ENV_SCHEMA, schema)
        .env(ENV_OWNER, name)
        .env(ENV_GATE, gate)
        .env(ENV_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            // The harness may print `test node_child ... ` on the same line first.
            Some(Ok(line)) if line.trim_end().ends_with(ready) => break,
            Some(Ok(_)) => continue,
            other => panic!("node {name} ended before `{ready}`: {other:?}"),
        }
    }
    // Keep draining its stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Node {
        name: name.to_string(),
        child,
    }
}

fn task(id: &str, tool: &str, disposition: Disposition) -> Registration {
    Registration {
        id: id.to_string(),
        input: ProcessInput::ToolCall {
            tool: tool.into(),
            args: json!({}),
        },
        disposition,
        event_types: Vec::new(),
        provenance: Provenance::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    }
}

async fn register_all(reg: &Arc<PostgresRegistry>, regs: Vec<Registration>) {
    let mut set = tokio::task::JoinSet::new();
    // Chunks of an odd size: work that alternates in kind (phase 2) is then
    // registered in both kinds at any moment. With an even size every chunk
    // registered the same kind at once, and a node claiming just then
    // filled its slots with one kind only.
    for chunk in regs.chunks(49) {
        let (reg, chunk) = (reg.clone(), chunk.to_vec());
        set.spawn(async move {
            for r in chunk {
                reg.register(r, None).await.expect("register");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("join");
    }
}

async fn await_all(awaiter: &Awaiter, ids: &[String]) -> Vec<ProcessRecord> {
    let mut out = Vec::new();
    for id in ids {
        let record = awaiter
            .await_terminal_for(id, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{id} did not finish: {e}"));
        out.push(record);
    }
    out
}

async fn hits(db: &tokio_postgres::Client, schema: &str) -> BTreeMap<String, Vec<String>> {
    let rows = db
        .query(
            &format!("SELECT process_id, node FROM \"{schema}\".hits ORDER BY id"),
            &[],
        )
        .await
        .expect("hits");
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        map.entry(r.get(0)).or_default().push(r.get(1));
    }
    map
}

/// Every log is gap-free from 1, holds exactly one terminal event when the
/// process is terminal, and folds back to its record.
async fn check_logs(reg: &Arc<PostgresRegistry>, ids: &[String]) {
    for id in ids {
        let record = reg.get(id).await.expect("get");
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = reg.events_after(id, after, Some(1000)).await.expect("events");
            after = page.events.last().map_or(after, |e| e.sequence);
            events.extend(page.events);
            if page.next_after.is_none() {
                break;
            }
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        let expected: Vec<u64> = (1..=record.last_sequence).collect();
        assert_eq!(seqs, expected, "{id}: the log is gap-free and duplicate-free");
        let terminals = events.iter().filter(|e| e.semantics.terminal.is_some()).count();
        assert_eq!(terminals, usize::from(record.is_terminal()), "{id}: one terminal event");
        cairn_testkit::assert_fold(reg.as_ref(), id).await;
    }
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[test]
fn three_nodes_run_every_process_once_and_survive_a_sigkill() {
    if !testing::enabled() {
        return;
    }
    cairn_testkit::run(async {
        let schema = TestSchema::new("cairn_mn");
        let reg = Arc::new(schema.connect(Arc::new(SystemClock)).await.expect("connect"));
        schema
            .execute(&format!(
                "CREATE TABLE \"{}\".hits (id bigserial PRIMARY KEY, process_id text NOT NULL, node text NOT NULL)",
                schema.name
            ))
            .await
            .expect("hits table");
        let (db, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
            .await
            .expect("db");
        tokio::spawn(conn);
        let dir = tempfile::tempdir().expect("temp dir");
        let gate = dir.path().join("gate");
        let hub = ChangeHub::new();
        reg.listen(hub.clone());
        let awaiter = Awaiter::new(reg.clone(), Some(hub));

        let nodes: Vec<Node> = ["node-a", "node-b", "node-v"]
            .iter()
            .map(|n| spawn_node(&schema.name, n, &gate, "worker", "CAIRN-NODE READY"))
            .collect();

        // Phase 1: 2,000 counting processes, each run and completed exactly once.
        let ids: Vec<String> = (0..2000).map(|i| format!("count-{i:04}")).collect();
        register_all(
            &reg,
            ids.iter()
                .map(|id| task(id, "count", Disposition::Rerunnable))
                .collect(),
        )
        .await;
        let done = await_all(&awaiter, &ids).await;
        assert!(done.iter().all(|r| r.status == ProcessStatus::Completed));
        let counted = hits(&db, &schema.name).await;
        assert_eq!(counted.len(), 2000, "every process ran");
        let twice: Vec<_> = counted.iter().filter(|(_, v)| v.len() != 1).collect();
        assert!(twice.is_empty(), "no process ran twice: {twice:?}");
        let by_node: BTreeSet<&str> = counted.values().flat_map(|v| v.iter().map(String::as_str)).collect();
        eprintln!("phase 1: 2,000 processes over nodes {by_node:?}");
        // "Once" must mean something: the nodes competed for the work.
        assert!(by_node.len() >= 2, "one node ran everything: {by_node:?}");
        check_logs(&reg, &ids).await;

        // Phase 2: gated work, every other one owner-bound (so each node's 16
        // slots hold both kinds but for a 2^-16 chance); kill node-v mid-run.
        let owner_bound = |i: usize| i.is_multiple_of(2);
        let gated: Vec<String> = (0..200).map(|i| format!("gated-{i:04}")).collect();
        let regs = gated
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let d = if owner_bound(i) {
                    Disposition::OwnerBound
                } else {
                    Disposition::Rerunnable
                };
                task(id, "gated", d)
            })
            .collect();
        register_all(&reg, regs).await;
        let victim_name = nodes[2].name.clone();
        let started_by_victim = |records: &[ProcessRecord]| {
            let mine: Vec<&ProcessRecord> = records
                .iter()
                .filter(|r| r.started.as_ref().is_some_and(|s| s.owner_id == victim_name))
                .collect();
            let ob = mine.iter().filter(|r| r.disposition == Disposition::OwnerBound).count();
            let ids: Vec<String> = mine.iter().map(|r| r.id.clone()).collect();
            (mine.len() - ob, ob, ids)
        };
        // Wait (bounded) until the victim has started both kinds, holds all
        // its slots (it claims nothing more: the gate is shut), and every run
        // it started has recorded its hit, so the kill below never lands
        // between a claim and its run's start (a claimed owner-bound process
        // that never ran would have no hit).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut nodes = nodes;
        loop {
            let records = list_all(&reg, "gated-").await;
            let (rr, ob, mine) = started_by_victim(&records);
            if rr > 0 && ob > 0 && mine.len() == NODE_SLOTS {
                let ran = hits(&db, &schema.name).await;
                if mine.iter().all(|id| ran.contains_key(id)) {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                // Say what the nodes were doing: whether each still lives,
                // and what each has started of the gated work.
                let mut by_owner: BTreeMap<String, (usize, usize)> = BTreeMap::new();
                for r in &records {
                    let owner = r.started.as_ref().map_or("(none)".into(), |s| s.owner_id.clone());
                    let e = by_owner.entry(owner).or_default();
                    if r.disposition == Disposition::OwnerBound {
                        e.1 += 1;
                    } else {
                        e.0 += 1;
                    }
                }
                let alive: Vec<String> = nodes
                    .iter_mut()
                    .map(|n| format!("{}: {:?}", n.name, n.child.try_wait()))
                    .collect();
                panic!(
                    "the victim never started both kinds of gated work in 60 s; \
                     started (rerunnable, owner-bound) by owner: {by_owner:?}; node exits: {alive:?}"
                );
            }
            // A bounded re-check of a condition on another process's progress.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut victim = nodes.pop().expect("victim");
        // SIGKILL: no drain, no goodbye.
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(victim.child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0);
        let status = victim.child.wait().expect("reap the victim");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the victim was killed by SIGKILL: {status:?}"
        );
        let records = list_all(&reg, "gated-").await;
        let orphaned_ob: Vec<String> = records
            .iter()
            .filter(|r| {
                r.status == ProcessStatus::Running
                    && r.disposition == Disposition::OwnerBound
                    && r.started.as_ref().is_some_and(|s| s.owner_id == victim.name)
            })
            .map(|r| r.id.clone())
            .collect();
        assert!(!orphaned_ob.is_empty());
        std::fs::write(&gate, b"open").expect("open the gate");

        // Rerunnable work (including the victim's) completes on the survivors.
        let rerunnable: Vec<String> = gated
            .iter()
            .enumerate()
            .filter(|(i, _)| !owner_bound(*i))
            .map(|(_, id)| id.clone())
            .collect();
        let done = await_all(&awaiter, &rerunnable).await;
        for r in &done {
            assert_eq!(r.status, ProcessStatus::Completed, "{}", r.id);
        }
        // Owner-bound work nobody else started also completes; the victim's stays running.
        let others_ob: Vec<String> = gated
            .iter()
            .enumerate()
            .filter(|(i, id)| owner_bound(*i) && !orphaned_ob.contains(id))
            .map(|(_, id)| id.clone())
            .collect();
        for r in await_all(&awaiter, &others_ob).await {
            assert_eq!(r.status, ProcessStatus::Completed, "{}", r.id);
        }
        for id in &orphaned_ob {
            let r = reg.get(id).await.expect("get");
            assert_eq!(r.status, ProcessStatus::Running, "{id} is never re-run");
            assert_eq!(
                r.started.as_ref().map(|s| s.owner_id.as_str()),
                Some(victim.name.as_str())
            );
            // Nobody renews the dead victim's lease: it lapses when it said
            // at the kill. (The rerunnable work ended on each lease's own
            // lapse; this one's may come a moment after theirs.)
            if let Some(until) = r.lease.as_ref().map(|l| l.expires_at_ms) {
                let left = until.saturating_sub(SystemClock.now_ms());
                assert!(left <= 3_000, "{id}: a lease of at most the 3 s ttl: {left} ms left");
                tokio::time::sleep(Duration::from_millis(left + 1)).await;
                let r = reg.get(id).await.expect("get");
                assert!(
                    r.lease.as_ref().is_none_or(|l| l.expires_at_ms == until),
                    "{id}: the lease was renewed after the kill: {:?}",
                    r.lease
                );
                assert!(SystemClock.now_ms() > until, "{id}: lease lapsed");
            }
        }
        let runs = hits(&db, &schema.name).await;
        for id in &orphaned_ob {
            assert_eq!(runs.get(id).map(Vec::len), Some(1), "{id} ran once, on the victim");
        }
        for id in &others_ob {
            assert_eq!(runs.get(id).map(Vec::len), Some(1), "{id} ran once");
        }
        // An abandon request is reconciled by a surviving node's driver.
        for id in &orphaned_ob {
            reg.request_abandon(id, "operator", "node-v was killed")
                .await
                .expect("request");
        }
        let abandoned = await_all(&awaiter, &orphaned_ob).await;
        for r in &abandoned {
            assert_eq!(r.status, ProcessStatus::Abandoned, "{}", r.id);
        }
        check_logs(&reg, &gated).await;
        drop(nodes);
    });
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[test]
fn a_restarted_node_sweeps_its_dead_incarnations_work_once() {
    if !testing::enabled() {
        return;
    }
    cairn_testkit::run(async {
        let schema = TestSchema::new("cairn_sw");
        let reg = Arc::new(schema.connect(Arc::new(SystemClock)).await.expect("connect"));
        schema
            .execute(&format!(
                "CREATE TABLE \"{}\".hits (id bigserial PRIMARY KEY, process_id text NOT NULL, node text NOT NULL)",
                schema.name
            ))
            .await
            .expect("hits table");
        let (db, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
            .await
            .expect("db");
        tokio::spawn(conn);
        let dir = tempfile::tempdir().expect("temp dir");
        let gate = dir.path().join("gate");
        let hub = ChangeHub::new();
        reg.listen(hub.clone());
        let awaiter = Awaiter::new(reg.clone(), Some(hub));
        let spawn = |name: &str| spawn_node_with(&schema.name, name, &gate, "worker", "CAIRN-NODE READY", Some(name));
        let mut a = spawn("node-a");
        let b = spawn("node-b");

        // 24 gated owner-bound processes: 16 slots per node, so both start some.
        let ids: Vec<String> = (0..24).map(|i| format!("ob-{i:02}")).collect();
        register_all(
            &reg,
            ids.iter()
                .map(|id| task(id, "gated", Disposition::OwnerBound))
                .collect(),
        )
        .await;
        let started_by = |records: &[ProcessRecord], owner: &str| -> Vec<String> {
            records
                .iter()
                .filter(|r| r.started.as_ref().is_some_and(|s| s.owner_id == owner))
                .map(|r| r.id.clone())
                .collect()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (a_work, b_work) = loop {
            let records = list_all(&reg, "ob-").await;
            let (a_work, b_work) = (started_by(&records, "node-a#1"), started_by(&records, "node-b#1"));
            // Started (claimed) and running: each run has recorded its hit, so
            // the kill below never lands between a claim and its run's start.
            let ran = hits(&db, &schema.name).await.len();
            if a_work.len() + b_work.len() == ids.len() && ran == ids.len() && !a_work.is_empty() && !b_work.is_empty()
            {
                break (a_work, b_work);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes never started all the work"
            );
            // A bounded re-check of a condition on other processes' progress.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(a.child.id() as i32, libc::SIGKILL) }, 0);
        let _ = a.child.wait();

        // B sweeps on (its heartbeat, written by each sweep, moves on) and never
        // takes A's work: A has not registered a newer incarnation.
        let beat = |n: Option<cairn_core::NodeLiveness>| n.expect("node-b registered").heartbeat_at_ms;
        let first = beat(reg.node("node-b").await.expect("node-b"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut sweeps = 0;
        let mut last = first;
        while sweeps < 4 {
            let now = beat(reg.node("node-b").await.expect("node-b"));
            if now > last {
                sweeps += 1;
                last = now;
            }
            assert!(tokio::time::Instant::now() < deadline, "node-b stopped sweeping");
            // A bounded re-check of another process's progress.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for id in &a_work {
            let r = reg.get(id).await.expect("get");
            assert_eq!(
                r.status,
                ProcessStatus::Running,
                "{id}: nobody sweeps A's work while A is down"
            );
        }
        let a_row = reg.node("node-a").await.expect("node-a").expect("registered");
        assert_eq!(a_row.incarnation, 1);

        // A restarts: incarnation 2, and its dead incarnation's work is swept.
        let a2 = spawn("node-a");
        for id in &a_work {
            let r = awaiter
                .await_terminal_for(id, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{id} was not swept: {e}"));
            assert_eq!(r.status, ProcessStatus::Abandoned, "{id}");
            match &r.outcome {
                Some(Outcome::Abandoned { evidence }) => {
                    assert_eq!(evidence.writer, cairn_core::AbandonWriter::Sweep, "{id}");
                    let owner = evidence.owner.as_ref().expect("owner");
                    assert_eq!(owner.owner_id, "node-a#1");
                    assert_eq!((owner.node.as_deref(), owner.incarnation), (Some("node-a"), Some(1)));
                }
                other => panic!("{id}: expected abandoned, got {other:?}"),
            }
        }
        let a_row = reg.node("node-a").await.expect("node-a").expect("registered");
        assert_eq!(a_row.incarnation, 2);
        // B's own work is untouched; it finishes once the gate opens.
        for id in &b_work {
            assert_eq!(reg.get(id).await.expect("get").status, ProcessStatus::Running, "{id}");
        }
        std::fs::write(&gate, b"open").expect("open the gate");
        for r in await_all(&awaiter, &b_work).await {
            assert_eq!(r.status, ProcessStatus::Completed, "{}", r.id);
        }
        // Exactly once: one terminal per log, each process ran once.
        check_logs(&reg, &ids).await;
        let runs = hits(&db, &schema.name).await;
        for id in &ids {
            assert_eq!(runs.get(id).map(Vec::len), Some(1), "{id} ran once");
        }
        assert!(reg.sweep_worklist(100).await.expect("sweep worklist").is_empty());
        drop((a2, b));
    });
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[test]
fn an_awaiter_sees_another_process_complete_without_polling() {
    if !testing::enabled() {
        return;
    }
    cairn_testkit::run(async {
        let schema = TestSchema::new("cairn_mn");
        let reg = Arc::new(schema.connect(Arc::new(SystemClock)).await.expect("connect"));
        let hub = ChangeHub::new();
        let mut generation = reg.listener_generation();
        reg.listen(hub.clone());
        generation.wait_for(|g| *g >= 1).await.expect("listening");
        reg.register(cairn_testkit::external("ext-1"), None)
            .await
            .expect("register");
        let hour = Duration::from_secs(3600);
        let hub_probe = hub.clone();
        let awaiter = Awaiter::new(reg.clone(), Some(hub)).with_backoff(Backoff { floor: hour, cap: hour });
        let waiting = {
            let awaiter = awaiter.clone();
            tokio::spawn(async move { awaiter.await_terminal_for("ext-1", Duration::from_secs(30)).await })
        };
        // The awaiter subscribes before its first read; a new OS process takes far
        // longer to start and connect than that read, so it parks on the hub first.
        while hub_probe.watched() < 1 {
            tokio::task::yield_now().await;
        }
        let mut announced = hub_probe.subscribe("ext-1");
        let dir = tempfile::tempdir().expect("temp dir");
        let completer = spawn_node(
            &schema.name,
            "completer",
            &dir.path().join("gate"),
            "complete:ext-1",
            "CAIRN-NODE DONE",
        );
        let record = waiting
            .await
            .expect("join")
            .expect("resolved long before the hour-long backoff");
        assert_eq!(record.status, ProcessStatus::Completed);
        // The completion reached this process's hub through LISTEN/NOTIFY: the
        // registry here is not watched, so nothing else publishes to it.
        let seq = *announced.borrow_and_update();
        assert_eq!(seq, record.last_sequence, "the hub was told of the completion");
        drop(completer);
    });
}

// ------------------------------------------------------------------ helpers

async fn list_all(reg: &Arc<PostgresRegistry>, prefix: &str) -> Vec<ProcessRecord> {
    let mut out = Vec::new();
    let mut filter = cairn_core::ProcessFilter {
        limit: Some(1000),
        ..Default::default()
    };
    loop {
        let page = reg.list(&filter).await.expect("list");
        let last = page.last().map(|r| r.id.clone());
        out.extend(page.into_iter().filter(|r| r.id.starts_with(prefix)));
        match last {
            Some(l) => filter.after_id = Some(l),
            None => return out,
        }
    }
}
