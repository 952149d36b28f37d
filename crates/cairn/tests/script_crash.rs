//! Durable scripts (SPEC §14) survive a real crash: `cairn serve` is killed
//! with SIGKILL while a script's child runs, while the script is suspended on a
//! signal, while it is suspended on a timer, while it races a signal against a
//! timer, while a cancelled script cleans up (cancelled while suspended, while
//! busy, after reading `ctx.cancelled` before and while polling it with no
//! call after its true read), and while a script that returned makes the
//! failing calls it did not await; a server restarted over the same database
//! finishes the script.
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

// Keeps the run busy until `ms` after the journaled clock reading `t0` (a
// cleanup still under way at the crash): a replay holds until the same
// moment, then goes on past where the crash cut the first run short.
function holdUntil(ctx, t0, ms) {
  while (ctx.now() - t0 < ms) {
    for (let i = 0; i < 1000000; i++) {}
  }
}

// Busy until cancelled, emitting each round; then an emit and a wait made
// together race (the emit wins, the wait rejects `cancelled`), and the
// cleanup holds before its last emit.
export async function busy(ctx, args) {
  let rounds = 0;
  while (!ctx.cancelled) {
    rounds += 1;
    await ctx.emit("tick", {round: rounds});
  }
  const winner = await Promise.race([
    ctx.emit("progress", {cleanup: true}).then(() => "emitted"),
    ctx.sleep(60000).then(() => "slept", (e) => "sleep " + e.code),
  ]);
  const t0 = ctx.now();
  await ctx.emit("done", {winner, rounds});
  holdUntil(ctx, t0, args.hold);
  await ctx.emit("after", {winner, rounds});
  return winner;
}

// Reads `ctx.cancelled` before its cancellation and emits what it read, then
// polls until it turns true, and holds in its cleanup.
export async function branchy(ctx, args) {
  const before = ctx.cancelled;
  await ctx.emit("ready", {before});
  while (!ctx.cancelled) {}
  const t0 = ctx.now();
  await ctx.emit("seen", {before});
  holdUntil(ctx, t0, args.hold);
  await ctx.emit("after", {before});
  return "done";
}

// Starts a long sleep, then polls `ctx.cancelled` with no call after its
// first true read until it awaits the sleep (which rejects `cancelled`), and
// holds in its cleanup.
export async function poller(ctx, args) {
  await ctx.emit("looping", {});
  const slept = ctx.sleep(60000).then(() => "slept", (e) => e.code);
  while (!ctx.cancelled) {}
  const r = await slept;
  const t0 = ctx.now();
  await ctx.emit("done", {r});
  holdUntil(ctx, t0, args.hold);
  await ctx.emit("after", {r});
  return r;
}

// Returns leaving `args.k` rounds of calls it did not await: an emit of a
// type it did not declare and a call of a tool that does not exist (both
// fail, and each has a handler that never runs), and an emit of a `note`.
export async function scatter(ctx, args) {
  for (let i = 0; i < args.k; i++) {
    ctx.emit("nope", {i}).catch((e) => ctx.log("caught", e.code));
    ctx.tool("nosuchtool", {i}).catch((e) => ctx.log("caught", e.code));
    ctx.emit("note", {i});
  }
  return 1;
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

/// Every event of `id`, page by page.
async fn events(c: &Client, id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let path = format!(
            "/v1/processes/{}/events?after={after}&limit=1000",
            id.replace('/', "%2F")
        );
        let (s, page) = c.get(&path).await;
        assert_eq!(s, 200, "{page}");
        all.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return all,
        }
    }
}

/// The payloads of `id`'s events of type `event_type`, in order.
async fn payloads(c: &Client, id: &str, event_type: &str) -> Vec<Value> {
    events(c, id)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == event_type)
        .map(|e| e["payload"].clone())
        .collect()
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

/// How long a cleanup holds after its journaled clock reading: the crash
/// comes at once, well within it, and the replay holds what is left. Long,
/// for a loaded machine (only a kill that comes late costs it), but inside
/// the 10 s stop grace a cancelled run's cleanup is given.
const HOLD_MS: u64 = 8000;

/// Follow `follow` (the events of `id`) until an event of type `event_type`;
/// the process must not end first.
async fn follow_until(follow: &mut common::Sse, id: &str, event_type: &str) -> Value {
    loop {
        let e = follow
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{id}'s stream ended before `{event_type}`"));
        let e: Value = serde_json::from_str(&e.data).expect("an event");
        assert!(
            !["process.completed", "process.failed", "process.cancelled"]
                .contains(&e["event_type"].as_str().unwrap_or("")),
            "{id} ended before `{event_type}`: {e}"
        );
        if e["event_type"] == event_type {
            return e;
        }
    }
}

/// The types of `id`'s events written before the restarted server started
/// it again (its second `process.started`), and of those written after.
async fn split_at_restart(c: &Client, id: &str) -> (Vec<String>, Vec<String>) {
    let types: Vec<String> = events(c, id)
        .await
        .iter()
        .map(|e| e["event_type"].as_str().expect("a type").to_string())
        .collect();
    let at = types
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == "process.started")
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("{id} was never started again after the restart: {types:?}"));
    let (before, after) = types.split_at(at);
    (before.to_vec(), after.to_vec())
}

/// Each journaled call of `id` and each result was written once: a call
/// made again after the restart matched its journaled one and wrote nothing.
async fn assert_journaled_once(c: &Client, id: &str) {
    for t in ["script.call", "script.result"] {
        let mut ns: Vec<u64> = payloads(c, id, t)
            .await
            .iter()
            .map(|p| p["n"].as_u64().expect("numbered"))
            .collect();
        let all = ns.len();
        ns.sort_unstable();
        ns.dedup();
        assert_eq!(ns.len(), all, "a `{t}` of {id} was written twice: {ns:?}");
    }
}

/// Start script `name` as `id` (declaring `types`, holding its cleanup
/// [`HOLD_MS`]); once it emitted `cancel_on`, cancel it ("enough"); once its
/// cleanup emitted `crash_on` (and holds), SIGKILL the server and restart it
/// over the same database. The restarted server replays the cleanup, which
/// ends `cancelled` as it would have without the crash.
async fn cancelled_and_killed_in_its_cleanup(
    db: &str,
    id: &str,
    name: &str,
    types: &[&str],
    cancel_on: &str,
    crash_on: &str,
) -> Server {
    let server = Server::start_on(db, SERVE).await;
    let c = server.client();
    let (s, m) = c.post("/v1/modules", json!({"source": MODULE})).await;
    assert!(s == 201 || s == 200, "{m}");
    let mut req = script(
        id,
        m["module_ref"].as_str().expect("module_ref"),
        name,
        json!({"hold": HOLD_MS}),
    );
    req["event_types"] = types.iter().map(|t| json!({"name": t})).collect();
    let (s, rec) = c.start(req).await;
    assert_eq!(s, 201, "{rec}");
    let mut follow = c.sse(id, "", None).await;
    follow_until(&mut follow, id, cancel_on).await;
    let (s, rec) = c
        .post(&format!("/v1/processes/{id}/cancel"), json!({"reason": "enough"}))
        .await;
    assert_eq!(s, 200, "{rec}");
    follow_until(&mut follow, id, crash_on).await;
    drop(follow);

    let server = crash_and_restart(server, db).await;
    let c = server.client();
    let (s, done) = c.get(&format!("/v1/processes/{id}/await?timeout_ms=30000")).await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["outcome"]["message"], "enough", "{done}");
    assert_eq!(
        count(&c, id, "process.started").await,
        2,
        "the crash cut the cleanup short, and the restarted server ran it again"
    );
    let (before, after) = split_at_restart(&c, id).await;
    assert!(
        before.contains(&crash_on.to_string()) && !before.contains(&"after".to_string()),
        "the crash came while the cleanup held: {before:?}"
    );
    assert!(after.contains(&"after".to_string()), "{after:?}");
    assert_eq!(payloads(&c, id, "script.log").await, Vec::<Value>::new());
    assert_journaled_once(&c, id).await;
    server
}

/// Cancelled while busy (emitting each round, never suspended), killed in
/// its cleanup: the replay reads `ctx.cancelled` as the run did, so it
/// makes the same rounds (each journaled emit answered from the journal,
/// none appended twice), the race of its cleanup has the same winner, and
/// it goes on past the crash to its last emit.
async fn killed_in_a_cleanup_after_a_cancel_seen_while_busy(db: &str) {
    let id = "crash-busy";
    let types = ["tick", "progress", "done", "after"];
    let server = cancelled_and_killed_in_its_cleanup(db, id, "busy", &types, "tick", "done").await;
    let c = server.client();
    let done = payloads(&c, id, "done").await;
    let rounds = done
        .first()
        .and_then(|d| d["rounds"].as_u64())
        .unwrap_or_else(|| panic!("the cleanup said its rounds: {done:?}"));
    assert_eq!(done, [json!({"winner": "emitted", "rounds": rounds})]);
    assert_eq!(
        payloads(&c, id, "after").await,
        [json!({"winner": "emitted", "rounds": rounds})],
        "the replay went on past the crash, with the same race winner"
    );
    let ticks: Vec<Value> = payloads(&c, id, "tick").await;
    let expected: Vec<Value> = (1..=rounds).map(|r| json!({"round": r})).collect();
    assert_eq!(ticks, expected, "each round emitted once");
    assert_eq!(payloads(&c, id, "progress").await, [json!({"cleanup": true})]);
    let slept = payloads(&c, id, "script.result")
        .await
        .into_iter()
        .find(|r| r["n"] == rounds + 2)
        .expect("the sleep's result");
    assert_eq!(slept["error"]["code"], "cancelled", "{slept}");
}

/// Read `ctx.cancelled` before its cancellation and polled it after, killed
/// in its cleanup: the replay, with the cancellation in force from its
/// start, reads `false` first as the run did (its `ready` emit matches the
/// journal), then `true` at the same read, and goes on past the crash.
async fn killed_after_reading_ctx_cancelled(db: &str) {
    let id = "crash-branchy";
    let types = ["ready", "seen", "after"];
    let server = cancelled_and_killed_in_its_cleanup(db, id, "branchy", &types, "ready", "seen").await;
    let c = server.client();
    assert_eq!(payloads(&c, id, "ready").await, [json!({"before": false})]);
    assert_eq!(payloads(&c, id, "seen").await, [json!({"before": false})]);
    assert_eq!(
        payloads(&c, id, "after").await,
        [json!({"before": false})],
        "the replay went on past the crash without `nondeterminism`"
    );
    let calls = payloads(&c, id, "script.call").await;
    let read = calls
        .iter()
        .find(|c| c["n"] == 2)
        .and_then(|c| c["cancel_seen"].as_u64())
        .unwrap_or_else(|| panic!("the call after the true read says which read: {calls:?}"));
    assert!(read >= 2, "{calls:?}");
}

/// Polled `ctx.cancelled` with no call after its first true read (the read
/// is journaled on the results of the step that follows it), killed in its
/// cleanup: the replay reads `true` at that read, as the run did, rather
/// than polling forever, and goes on past the crash.
async fn killed_after_a_true_read_journaled_on_results(db: &str) {
    let id = "crash-poller";
    let types = ["looping", "done", "after"];
    let server = cancelled_and_killed_in_its_cleanup(db, id, "poller", &types, "looping", "done").await;
    let c = server.client();
    assert_eq!(payloads(&c, id, "done").await, [json!({"r": "cancelled"})]);
    assert_eq!(
        payloads(&c, id, "after").await,
        [json!({"r": "cancelled"})],
        "the replay read `true` where the run did and went on past the crash"
    );
    let results = payloads(&c, id, "script.result").await;
    let slept = results.iter().find(|r| r["n"] == 2).expect("the sleep's result");
    assert_eq!(slept["error"]["code"], "cancelled", "{results:?}");
    assert!(slept["cancel_seen"].as_u64().is_some(), "{results:?}");
    let calls = payloads(&c, id, "script.call").await;
    assert!(
        calls.iter().all(|c| c.get("cancel_seen").is_none()),
        "only the results say which read was true: {calls:?}"
    );
}

/// The `script.*` events of `id`, its id written as `as_id`.
async fn journal_as(c: &Client, id: &str, as_id: &str) -> Vec<Value> {
    events(c, id)
        .await
        .into_iter()
        .filter(|e| e["event_type"].as_str().is_some_and(|t| t.starts_with("script.")))
        .map(|e| {
            let text = json!([e["event_type"], e["payload"]]).to_string();
            serde_json::from_str(&text.replace(id, as_id)).expect("json")
        })
        .collect()
}

/// Killed while a script that returned makes the calls it did not await
/// (after their `script.call`s, among their failures' results): the
/// restarted server makes them again, and the journal and the outcome are
/// those of the same script run without a crash; no note is emitted twice,
/// and no handler ran in either run.
async fn killed_while_making_calls_not_awaited(db: &str) {
    let id = "crash-scatter";
    let k = 400;
    let server = Server::start_on(db, SERVE).await;
    let c = server.client();
    let (s, m) = c.post("/v1/modules", json!({"source": MODULE})).await;
    assert!(s == 201 || s == 200, "{m}");
    let module_ref = m["module_ref"].as_str().expect("module_ref").to_string();
    let start = |id: &str| {
        let mut req = script(id, &module_ref, "scatter", json!({"k": k}));
        req["event_types"] = json!([{"name": "note"}]);
        req
    };
    let (s, rec) = c.start(start(id)).await;
    assert_eq!(s, 201, "{rec}");
    let mut follow = c.sse(id, "", None).await;
    follow_until(&mut follow, id, "script.result").await;
    drop(follow);

    let server = crash_and_restart(server, db).await;
    let c = server.client();
    let done = await_end(&c, id).await;
    assert_eq!(done["outcome"]["value"], 1, "{done}");
    let (before, after) = split_at_restart(&c, id).await;
    let results = |types: &[String]| types.iter().filter(|t| *t == "script.result").count();
    assert!(
        results(&before) >= 1 && results(&after) >= 1,
        "the crash came among the failures' results: {} before it, {} after",
        results(&before),
        results(&after)
    );
    // The same script run without a crash.
    let twin = "twin-scatter";
    let (s, rec) = c.start(start(twin)).await;
    assert_eq!(s, 201, "{rec}");
    let twin_done = await_end(&c, twin).await;
    assert_eq!(twin_done["outcome"], done["outcome"]);
    let journal = journal_as(&c, id, twin).await;
    assert_eq!(journal.len(), 3 * k + 2 * k, "every call and each failure's result");
    assert!(
        journal == journal_as(&c, twin, twin).await,
        "the journal is the one of the run without a crash"
    );
    let notes: Vec<Value> = payloads(&c, id, "note").await;
    let expected: Vec<Value> = (0..k).map(|i| json!({"i": i})).collect();
    assert_eq!(notes, expected, "each note emitted once");
    assert_eq!(
        payloads(&c, id, "script.log").await,
        Vec::<Value>::new(),
        "no handler ran"
    );
    assert_journaled_once(&c, id).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_in_a_cleanup_after_a_cancel_seen_while_busy_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_in_a_cleanup_after_a_cancel_seen_while_busy(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_after_reading_ctx_cancelled_replays_the_same_reads_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_after_reading_ctx_cancelled(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_after_a_true_read_journaled_on_results_resumes_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_after_a_true_read_journaled_on_results(&sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_killed_while_making_calls_not_awaited_makes_them_once_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    killed_while_making_calls_not_awaited(&sqlite_db(&dir)).await;
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
