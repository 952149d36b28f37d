//! Durable scripts (SPEC §14) survive a real crash: `cairn serve` is killed
//! with SIGKILL while a script's child runs, while the script is suspended on a
//! signal, while it is suspended on a timer, while it races a signal against a
//! timer, and while a cancelled script cleans up; a server restarted over the same database finishes the script.
//! A child that had finished is never started again, journaled values stay
//! what they were, a cleanup's journaled call is not repeated, and the script
//! returns what it would have returned without the crash.

mod common;

use std::time::Duration;

use common::{Client, Server};
use serde_json::{json, Value};

const MODULE: &str = r#"
// A finished child and a journaled clock reading, then a child still running
// at the crash (it ends once the file `args.gate` exists), then one more step.
export async function build(ctx, args) {
  const a = await ctx.tool("echo", {value: args.x});
  const t0 = ctx.now();
  const out = await ctx.tool("shell", {argv: ["sh", "-c", 'while [ ! -f "$1" ]; do sleep 0.05; done; echo built', "sh", args.gate]});
  const b = await ctx.tool("echo", {value: a + 1});
  return {a, b, t0, code: out.exit_code, said: out.stdout_tail.trim()};
}

// A finished child, then a signal that arrives after the restart.
export async function approve(ctx, args) {
  const a = await ctx.tool("echo", {value: args.x});
  const t0 = ctx.now();
  const ok = await ctx.waitSignal("approve");
  const b = await ctx.tool("echo", {value: a * 2});
  return {a, b, t0, by: ok.by};
}

// A finished child, then a durable timer that comes due around the restart.
export async function pause(ctx, args) {
  const a = await ctx.tool("echo", {value: args.x});
  const t0 = ctx.now();
  await ctx.sleep(args.ms);
  const slept = ctx.now() - t0;
  const b = await ctx.tool("echo", {value: a + 3});
  return {a, b, t0, slept_enough: slept >= args.ms};
}

// A signal raced against a timer; the timer wins, and the signal, still
// pending, is awaited after the race.
export async function race(ctx, args) {
  const sig = ctx.waitSignal("go");
  const first = await Promise.race([sig.then(s => s.by), ctx.sleep(args.ms).then(() => "timer")]);
  const later = await sig;
  return {first, later: later.by};
}

// Cancelled while suspended: the cleanup emits, then spins until the CPU
// limit ends the activation (the process then ends `cancelled`).
export async function tidy(ctx) {
  try {
    await ctx.waitSignal("go");
    return "not cancelled";
  } catch (e) {
    await ctx.emit("cleanup", {code: e.code});
    for (;;) {}
  }
}
"#;

/// A restart is the same node (the host name), so it runs its dead
/// incarnation's rerunnable work again at once; leases keep their default
/// length, which no stall of a loaded machine outlasts (a lapse before the
/// crash would run a child again early).
const SERVE: &[&str] = &[];

fn script(id: &str, module_ref: &str, name: &str, args: Value) -> Value {
    json!({
        "id": id,
        "input": {"type": "script", "module_ref": module_ref, "process_name": name, "args": args},
        "disposition": "rerunnable",
    })
}

async fn events(c: &Client, id: &str) -> Vec<Value> {
    let path = format!("/v1/processes/{}/events?limit=1000", id.replace('/', "%2F"));
    let (s, page) = c.get(&path).await;
    assert_eq!(s, 200, "{page}");
    page["events"].as_array().expect("events").clone()
}

async fn count(c: &Client, id: &str, event_type: &str) -> usize {
    events(c, id)
        .await
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .count()
}

/// The journaled result of call `n` of script `id`.
async fn journaled(c: &Client, id: &str, n: u64) -> Value {
    events(c, id)
        .await
        .into_iter()
        .find(|e| e["event_type"] == "script.result" && e["payload"]["n"] == n)
        .unwrap_or_else(|| panic!("{id} journaled no result {n}"))["payload"]["value"]
        .clone()
}

async fn await_end(c: &Client, id: &str) -> Value {
    let (s, rec) = c.get(&format!("/v1/processes/{id}/await?timeout_ms=30000")).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["status"], "completed", "{id}: {rec}");
    rec
}

/// Start a server, store the module, start script `name` as `id`, and wait
/// (by the records and events the server writes) for `ready`.
async fn start_and_reach(db: &str, id: &str, name: &str, args: Value, ready: impl AsyncFn(&Client)) -> Server {
    let server = Server::start_on(db, SERVE).await;
    let c = server.client();
    let (s, m) = c.post("/v1/modules", json!({"source": MODULE})).await;
    assert!(s == 201 || s == 200, "{m}");
    let module_ref = m["module_ref"].as_str().expect("module_ref");
    let (s, rec) = c.start(script(id, module_ref, name, args)).await;
    assert_eq!(s, 201, "{rec}");
    ready(&c).await;
    server
}

/// SIGKILL, no drain; then a new server over the same database.
async fn crash_and_restart(server: Server, db: &str) -> Server {
    crash_and_restart_with(server, db, SERVE).await
}

/// [`crash_and_restart`] with the new server's flags.
async fn crash_and_restart_with(server: Server, db: &str, serve: &[&str]) -> Server {
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);
    Server::start_on(db, serve).await
}

/// The first child (`{id}/1`, an `echo` that finished before the crash) was
/// started exactly once, and the clock reading of call 2 kept its value.
async fn assert_finished_step_kept(c: &Client, id: &str, before: &Value, done: &Value) {
    assert_eq!(
        count(c, &format!("{id}/1"), "process.started").await,
        1,
        "{id}/1 finished before the crash and never started again"
    );
    assert_eq!(
        &journaled(c, id, 2).await,
        before,
        "the journaled clock reading is unchanged"
    );
    assert_eq!(
        &done["outcome"]["value"]["t0"], before,
        "the script saw the journaled reading"
    );
}

async fn killed_while_a_child_runs(db: &str) {
    let id = "crash-child";
    // The child runs until the test says, not for a time a stalled machine
    // could let pass before the crash.
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    let args = json!({"x": 7, "gate": gate.display().to_string()});
    let server = start_and_reach(db, id, "build", args, async |c: &Client| {
        // The shell child has started and the script waits on it.
        c.wait_for("crash-child%2F3", |r| !r["started"].is_null()).await;
        c.wait_for(id, |r| r["wait"]["kind"] == "children" && r["lease"].is_null())
            .await;
        assert_eq!(count(c, "crash-child/3", "process.started").await, 1);
    })
    .await;
    let c = server.client();
    let (_, running) = c.get("/v1/processes/crash-child%2F3").await;
    assert_eq!(
        running["status"], "running",
        "the shell child runs at the crash: {running}"
    );
    let before = journaled(&c, id, 2).await;

    let server = crash_and_restart(server, db).await;
    std::fs::write(&gate, "").expect("gate");
    let c = server.client();
    let done = await_end(&c, id).await;
    assert_eq!(
        done["outcome"]["value"],
        json!({"a": 7, "b": 8, "t0": before, "code": 0, "said": "built"}),
        "{done}"
    );
    assert_finished_step_kept(&c, id, &before, &done).await;
    assert_eq!(
        count(&c, "crash-child/3", "process.started").await,
        2,
        "the child that ran at the crash ran again (it had not finished)"
    );
    assert_eq!(count(&c, "crash-child/4", "process.started").await, 1);
}

async fn killed_while_waiting_for_a_signal(db: &str) {
    let id = "crash-signal";
    let server = start_and_reach(db, id, "approve", json!({"x": 5}), async |c: &Client| {
        c.wait_for(id, |r| r["wait"]["kind"] == "signal" && r["lease"].is_null())
            .await;
    })
    .await;
    let before = journaled(&server.client(), id, 2).await;

    let server = crash_and_restart(server, db).await;
    let c = server.client();
    // Still suspended: nothing re-ran it, and it holds no lease.
    let (_, rec) = c.get(&format!("/v1/processes/{id}")).await;
    assert!(rec["status"] == "running" && rec["wait"]["kind"] == "signal", "{rec}");
    let (s, body) = c
        .post(
            &format!("/v1/processes/{id}/signals/approve"),
            json!({"signal_id": "after-restart", "payload": {"by": "ann"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let done = await_end(&c, id).await;
    assert_eq!(
        done["outcome"]["value"],
        json!({"a": 5, "b": 10, "t0": before, "by": "ann"}),
        "{done}"
    );
    assert_finished_step_kept(&c, id, &before, &done).await;
    assert_eq!(count(&c, "crash-signal/4", "process.started").await, 1);
}

async fn killed_while_sleeping(db: &str) {
    let id = "crash-timer";
    let server = start_and_reach(db, id, "pause", json!({"x": 9, "ms": 1500}), async |c: &Client| {
        c.wait_for(id, |r| r["wait"]["kind"] == "timer" && r["lease"].is_null())
            .await;
    })
    .await;
    let before = journaled(&server.client(), id, 2).await;

    let server = crash_and_restart(server, db).await;
    let c = server.client();
    let done = await_end(&c, id).await;
    assert_eq!(
        done["outcome"]["value"],
        json!({"a": 9, "b": 12, "t0": before, "slept_enough": true}),
        "{done}"
    );
    assert_finished_step_kept(&c, id, &before, &done).await;
    assert_eq!(count(&c, "crash-timer/5", "process.started").await, 1);
    let resumed: Vec<Value> = events(&c, id)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "process.resumed")
        .map(|e| e["payload"]["reason"].clone())
        .collect();
    assert!(resumed.contains(&json!("timer")), "the timer woke it: {resumed:?}");
}

async fn killed_while_cleaning_up(db: &str) {
    let id = "crash-cleanup";
    // The CPU limit ends each cleanup's spin; the crash comes well before it.
    let serve = ["--script-cpu", "3s"];
    let server = Server::start_on(db, &serve).await;
    let c = server.client();
    let (s, m) = c.post("/v1/modules", json!({"source": MODULE})).await;
    assert!(s == 201 || s == 200, "{m}");
    let mut req = script(id, m["module_ref"].as_str().expect("module_ref"), "tidy", json!({}));
    req["event_types"] = json!([{"name": "cleanup"}]);
    let (s, rec) = c.start(req).await;
    assert_eq!(s, 201, "{rec}");
    c.wait_for(id, |r| r["wait"]["kind"] == "signal" && r["lease"].is_null())
        .await;
    let mut follow = c.sse(id, "", None).await;
    let (s, rec) = c
        .post(&format!("/v1/processes/{id}/cancel"), json!({"reason": "stop"}))
        .await;
    assert_eq!(s, 200, "{rec}");
    loop {
        let e = follow.next(Duration::from_secs(10)).await.expect("the cleanup runs");
        let e: Value = serde_json::from_str(&e.data).expect("an event");
        assert_ne!(e["event_type"], "process.cancelled", "ended before the crash: {e}");
        if e["event_type"] == "cleanup" {
            break;
        }
    }

    let server = crash_and_restart_with(server, db, &serve).await;
    let c = server.client();
    let (s, done) = c.get(&format!("/v1/processes/{id}/await?timeout_ms=30000")).await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["outcome"]["message"], "stop", "{done}");
    assert_eq!(count(&c, id, "cleanup").await, 1, "the cleanup's emit was not repeated");
    let emits = events(&c, id)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "script.call" && e["payload"]["kind"] == "emit")
        .count();
    assert_eq!(emits, 1);
    assert!(
        count(&c, id, "process.started").await >= 3,
        "the cleanup ran again after the restart"
    );
}

/// Killed while suspended on a race of a signal and a timer: after the
/// restart the timer wins the race, and the signal the race left pending
/// answers its payload when it comes (not the race's timeout).
async fn killed_while_racing(db: &str) {
    let id = "crash-race";
    let server = start_and_reach(db, id, "race", json!({"ms": 1500}), async |c: &Client| {
        // Suspended on the signal, bounded by the timer's deadline.
        c.wait_for(id, |r| {
            r["wait"]["kind"] == "signal" && r["wait"]["until_ms"].is_u64() && r["lease"].is_null()
        })
        .await;
    })
    .await;

    let server = crash_and_restart(server, db).await;
    let c = server.client();
    // The timer won; now the signal alone is awaited, with no deadline.
    c.wait_for(id, |r| {
        r["wait"]["kind"] == "signal" && r["wait"]["until_ms"].is_null() && r["lease"].is_null()
    })
    .await;
    let (s, body) = c
        .post(
            &format!("/v1/processes/{id}/signals/go"),
            json!({"signal_id": "after-race", "payload": {"by": "ann"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let done = await_end(&c, id).await;
    assert_eq!(
        done["outcome"]["value"],
        json!({"first": "timer", "later": "ann"}),
        "{done}"
    );
    let resumed: Vec<Value> = events(&c, id)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "process.resumed")
        .map(|e| e["payload"]["reason"].clone())
        .collect();
    // The race's timer ended the first wait: a timer's due time, not a
    // deadline of the signal's own.
    assert_eq!(resumed, [json!("timer"), json!("signal")], "{resumed:?}");
}

fn sqlite_db(dir: &tempfile::TempDir) -> String {
    format!("sqlite:{}", dir.path().join("cairn.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_a_child_runs_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_while_a_child_runs(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_waiting_for_a_signal_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_while_waiting_for_a_signal(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_sleeping_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_while_sleeping(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_cleaning_up_after_a_cancel_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_while_cleaning_up(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_racing_a_signal_and_a_timer_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_while_racing(&sqlite_db(&dir)).await;
}

/// The same database URL for both servers: a throwaway schema of the test server.
fn postgres_db(name: &str) -> Option<(String, cairn_postgres::testing::TestSchema)> {
    cairn_postgres::testing::test_url()?;
    let schema = cairn_postgres::testing::TestSchema::new(name);
    Some((schema.db_url(), schema))
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_a_child_runs_resumes_on_postgres() {
    let Some((db, _schema)) = postgres_db("cairn_script_crash_child") else {
        return;
    };
    killed_while_a_child_runs(&db).await;
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_waiting_for_a_signal_resumes_on_postgres() {
    let Some((db, _schema)) = postgres_db("cairn_script_crash_signal") else {
        return;
    };
    killed_while_waiting_for_a_signal(&db).await;
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_sleeping_resumes_on_postgres() {
    let Some((db, _schema)) = postgres_db("cairn_script_crash_timer") else {
        return;
    };
    killed_while_sleeping(&db).await;
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_cleaning_up_after_a_cancel_resumes_on_postgres() {
    let Some((db, _schema)) = postgres_db("cairn_script_crash_cleanup") else {
        return;
    };
    killed_while_cleaning_up(&db).await;
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_racing_a_signal_and_a_timer_resumes_on_postgres() {
    let Some((db, _schema)) = postgres_db("cairn_script_crash_race") else {
        return;
    };
    killed_while_racing(&db).await;
}
