//! `cairn serve` killed with SIGKILL mid-run and restarted on the same SQLite
//! database: recovery follows each process's disposition.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Read a record until `done` holds (bounded: the server does the work, this only observes).
async fn until(c: &Client, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2_000 {
        let (s, rec) = c.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(s, 200, "{rec}");
        if done(&rec) {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id}: {what} did not happen within 20 s");
}

/// Wall-clock milliseconds since the epoch, as the server stamps leases.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_recovers_per_disposition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, &["--lease-ttl", "1s"]).await;
    let c = server.client();
    for (id, disposition) in [("re", "rerunnable"), ("ob", "owner_bound")] {
        let (s, rec) = c
            .start(tool_start(id, "wait_signal", json!({"name": "go"}), disposition))
            .await;
        assert_eq!(s, 201, "{rec}");
    }
    for id in ["re", "ob"] {
        until(&c, id, "waiting", |r| !r["wait"].is_null()).await;
    }
    let old_owner = until(&c, "ob", "started", |r| !r["started"].is_null()).await["started"]["owner_id"].clone();

    // A real crash: SIGKILL, no drain.
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);

    let server = Server::start_on(&db, &["--lease-ttl", "1s"]).await;
    let c = server.client();
    // The rerunnable process had suspended: it held no lease to lapse, and the
    // restarted server leaves it suspended (no re-run) until its signal ...
    let (s, rec) = c.get("/v1/processes/re").await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["status"], "running");
    assert_eq!(rec["started"]["attempt"], 1, "{rec}");
    assert!(rec["lease"].is_null() && rec["wait"]["kind"] == "signal", "{rec}");
    let (s, _) = c
        .post(
            "/v1/processes/re/signals/go",
            json!({"signal_id": "after-restart", "payload": {"ok": true}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, done) = c.get("/v1/processes/re/await?timeout_ms=20000").await;
    assert_eq!(s, 200);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["outcome"]["value"], json!({"ok": true}));
    assert_eq!(done["started"]["attempt"], 2, "the signal's claim resumed it: {done}");

    // ... while the started owner_bound process stays running: nobody re-runs it.
    // First the dead server's lease on it lapses ...
    until(&c, "ob", "lease lapse", |r| {
        r["lease"].is_null() || r["lease"]["expires_at_ms"].as_u64().is_some_and(|t| t < now_ms())
    })
    .await;
    // ... then the new server claims again: a process started now is claimed by
    // a drive that would take `ob` too, were it claimable.
    let (s, rec) = c
        .start(tool_start("after-lapse", "echo", json!({"value": 1}), "rerunnable"))
        .await;
    assert_eq!(s, 201, "{rec}");
    let (s, probe) = c.get("/v1/processes/after-lapse/await?timeout_ms=20000").await;
    assert_eq!(s, 200);
    assert_eq!(probe["status"], "completed", "{probe}");
    let (s, ob) = c.get("/v1/processes/ob").await;
    assert_eq!(s, 200, "{ob}");
    assert_eq!(ob["status"], "running");
    assert!(
        ob["lease"].is_null() || ob["lease"]["owner_id"] == old_owner,
        "the new server claimed the started owner_bound process: {ob}"
    );
    assert_eq!(ob["started"]["attempt"], 1);
    assert_eq!(ob["started"]["owner_id"], old_owner);

    // Until an abandon request is reconciled.
    let (s, body) = c
        .post(
            "/v1/processes/ob/abandon-request",
            json!({"requested_by": "operator", "reason": "server was killed"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, ended) = c.get("/v1/processes/ob/await?timeout_ms=20000").await;
    assert_eq!(s, 200);
    assert_eq!(ended["status"], "abandoned", "{ended}");
    assert_eq!(ended["outcome"]["evidence"]["writer"], "reconciled_request");
}

/// The resumptions in a process's log.
async fn resumptions(c: &Client, id: &str) -> Vec<Value> {
    let (s, page) = c.get(&format!("/v1/processes/{id}/events?limit=1000")).await;
    assert_eq!(s, 200, "{page}");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "process.resumed")
        .cloned()
        .collect()
}

/// A suspended sleeper and a suspended signal waiter hold nothing a SIGKILL
/// can lose: after a restart over the same file the sleeper resumes at its
/// original due time and the waiter on its signal, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_processes_survive_sigkill_and_resume_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, &[]).await;
    let c = server.client();
    for (id, tool, args) in [
        ("nap", "sleep", json!({"ms": 3_000})),
        ("sig", "wait_signal", json!({"name": "go"})),
    ] {
        let (s, rec) = c.start(tool_start(id, tool, args, "rerunnable")).await;
        assert_eq!(s, 201, "{rec}");
    }
    let mut until_ms = 0;
    for id in ["nap", "sig"] {
        let rec = until(&c, id, "suspended", |r| !r["wait"].is_null() && r["lease"].is_null()).await;
        if id == "nap" {
            until_ms = rec["wait"]["until_ms"].as_u64().expect("a due time");
        }
    }
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);

    let server = Server::start_on(&db, &[]).await;
    let c = server.client();
    let (s, nap) = c.get("/v1/processes/nap/await?timeout_ms=20000").await;
    assert_eq!(s, 200);
    assert_eq!(nap["status"], "completed", "{nap}");
    assert_eq!(nap["outcome"]["value"], json!({"slept_ms": 3_000}));
    assert!(
        nap["terminal_at_ms"].as_u64().is_some_and(|t| t >= until_ms),
        "resumed before its due time {until_ms}: {nap}"
    );
    let resumed = resumptions(&c, "nap").await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["payload"]["reason"], "timer");
    assert_eq!(
        resumed[0]["payload"]["until_ms"],
        json!(until_ms),
        "the due time survived"
    );

    let (s, sig) = c.get("/v1/processes/sig").await;
    assert_eq!(s, 200);
    assert!(sig["lease"].is_null() && sig["wait"]["kind"] == "signal", "{sig}");
    let (s, body) = c
        .post(
            "/v1/processes/sig/signals/go",
            json!({"signal_id": "once", "payload": 1}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (_, sig) = c.get("/v1/processes/sig/await?timeout_ms=20000").await;
    assert_eq!(sig["status"], "completed", "{sig}");
    let resumed = resumptions(&c, "sig").await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["payload"]["reason"], "signal");
}
