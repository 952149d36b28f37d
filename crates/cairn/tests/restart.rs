//! `cairn serve` killed with SIGKILL mid-run and restarted on the same SQLite
//! database: recovery follows each process's disposition. And a server's hold
//! on its node id (ADR 0027), on SQLite and PostgreSQL.

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

/// The restart comes up as another node (`--node-id`), so the dead server's
/// owner_bound work is not its to sweep: the reconciled-request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_recovers_per_disposition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, &["--lease-ttl", "1s", "--node-id", "first"]).await;
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

    // The default lease length: a short one could lapse while a loaded
    // machine stalls this server, and its runs below would be lost.
    let server = Server::start_on(&db, &["--node-id", "second"]).await;
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

    // ... while the started owner_bound process stays running: nobody re-runs
    // it, and its node (`first`) never came back to sweep it.
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

/// Whether any process of group `pgid` is alive: a zombie is not (its
/// parent died, and whether it is reaped is up to this machine's init).
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only checks the group this test's server spawned.
        return unsafe { libc::kill(-pgid, 0) == 0 };
    };
    dir.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().take(3).collect();
        matches!(fields.as_slice(), [state, _, pgrp] if pgrp.parse() == Ok(pgid) && !matches!(*state, "Z" | "X"))
    })
}

/// Read the pid a shell command wrote (its process group: the shell tool
/// gives each run its own group, led by the shell).
async fn shell_pgid(path: &std::path::Path) -> i32 {
    for _ in 0..2_000 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the shell never wrote {}", path.display());
}

/// Kills what a test's shell run left behind, whatever the test's outcome.
struct Orphans(i32);

impl Drop for Orphans {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of a shell this test started.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// The owner_bound shell run a test crashes: it records each run in `runs`,
/// then its pid (= process group) in `pid` (so a test that has read the pid
/// sees the run counted), then idles until killed.
fn idle_shell(dir: &std::path::Path) -> Value {
    let command = format!(
        "echo run >> {runs}; echo $$ > {pid}; while [ ! -f {go} ]; do sleep 0.05; done; echo after-go; sleep 30",
        pid = dir.join("pid").display(),
        runs = dir.join("runs").display(),
        go = dir.join("go").display(),
    );
    json!({"command": command})
}

/// SIGKILL `cairn serve` (SQLite) during an owner_bound shell run and restart
/// it as the same node: the restart sweeps the run (`abandoned`, writer
/// `sweep`, the dead incarnation in the evidence), an awaiter on another
/// server of the same file gets that answer, and the shell is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_sweeps_owner_bound_shell_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let c = server.client();
    let (s, rec) = c
        .start(tool_start("ob", "shell", idle_shell(dir.path()), "owner_bound"))
        .await;
    assert_eq!(s, 201, "{rec}");
    let orphans = Orphans(shell_pgid(&dir.path().join("pid")).await);
    let started = until(&c, "ob", "started", |r| !r["started"].is_null()).await;
    assert_eq!(started["started"]["owner_id"], "box-1#1", "{started}");

    // An awaiter on another node of the same file, waiting across the crash.
    let watcher = Server::start_on(&db, &["--node-id", "watcher"]).await;
    let wc = watcher.client();
    let awaiter = tokio::spawn(async move { wc.get("/v1/processes/ob/await?timeout_ms=30000").await });
    // It waits before the crash, not after.
    watcher.client().awaits_open(1).await;

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);
    assert!(group_alive(orphans.0), "the crash left the shell's group running");

    // The default sweep interval is 30 s: the sweep at start answers well within it.
    let server = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let c = server.client();
    let (s, ended) = c.get("/v1/processes/ob/await?timeout_ms=30000").await;
    assert_eq!(s, 200);
    assert_eq!(ended["status"], "abandoned", "{ended}");
    let evidence = &ended["outcome"]["evidence"];
    assert_eq!(evidence["writer"], "sweep", "{ended}");
    assert_eq!(evidence["owner"]["owner_id"], "box-1#1", "{ended}");
    assert_eq!(evidence["owner"]["node"], "box-1", "{ended}");
    assert_eq!(evidence["owner"]["incarnation"], 1, "{ended}");
    assert_eq!(ended["started"]["attempt"], 1, "never claimed again: {ended}");

    let (s, answered) = awaiter.await.expect("awaiter task");
    assert_eq!(s, 200);
    assert_eq!(
        answered["status"], "abandoned",
        "the awaiter got the answer: {answered}"
    );

    // The watcher runs a worker on the same file too: stop it, so the restarted
    // server alone runs the next start (its drive did not re-run the shell).
    drop(watcher);
    let (s, rec) = c
        .start(tool_start("after", "echo", json!({"value": 1}), "owner_bound"))
        .await;
    assert_eq!(s, 201, "{rec}");
    let (_, after) = c.get("/v1/processes/after/await?timeout_ms=20000").await;
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["started"]["owner_id"], "box-1#2", "{after}");
    let runs = std::fs::read_to_string(dir.path().join("runs")).expect("runs file");
    assert_eq!(runs.lines().count(), 1, "the shell ran once: {runs:?}");
    let (s, events) = c.get("/v1/processes/ob/events?limit=1000").await;
    assert_eq!(s, 200);
    let types: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "process.started").count(),
        1,
        "{types:?}"
    );
    assert_eq!(types.last(), Some(&"process.abandoned"), "{types:?}");
    drop(orphans);
}

/// A file's text once a command has written its last line, `past`
/// (bounded: 20 s).
async fn written(path: &std::path::Path) -> String {
    for _ in 0..2_000 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with("past\n") {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing wrote {}", path.display());
}

/// What the docs say of an owner_bound command whose server is killed
/// outright: it is not stopped, but its output went to pipes only the server
/// read, so its next write there ends it with SIGPIPE (or fails with EPIPE
/// when it ignores SIGPIPE), and one that writes nothing more there finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_an_owner_bound_command_only_until_it_writes_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let c = server.client();
    let go = dir.path().join("go");
    // Each writes its pid (its group), waits for `go`, then does its part
    // and says in a file of its own that it got past it.
    let after_go = [
        ("writes", "", "echo more"),
        ("ignores", "trap '' PIPE; ", "echo more || echo EPIPE >> {out}"),
        ("silent", "", "true"),
    ];
    let mut groups = Vec::new();
    for (id, before, part) in after_go {
        let out = dir.path().join(format!("{id}.out"));
        let command = format!(
            "{before}echo $$ > {pid}; echo started; while [ ! -f {go} ]; do sleep 0.05; done; {part}; echo past \
             >> {out}",
            pid = dir.path().join(format!("{id}.pid")).display(),
            go = go.display(),
            part = part.replace("{out}", &out.display().to_string()),
            out = out.display(),
        );
        let (s, rec) = c
            .start(tool_start(id, "shell", json!({"command": command}), "owner_bound"))
            .await;
        assert_eq!(s, 201, "{rec}");
        groups.push(Orphans(shell_pgid(&dir.path().join(format!("{id}.pid"))).await));
    }
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);
    for g in &groups {
        assert!(group_alive(g.0), "the crash itself stopped an owner_bound command");
    }
    std::fs::write(&go, "").expect("go");
    // The one ignoring SIGPIPE saw its write fail and went on; the silent one
    // finished.
    assert_eq!(written(&dir.path().join("ignores.out")).await, "EPIPE\npast\n");
    assert_eq!(written(&dir.path().join("silent.out")).await, "past\n");
    // The writer died at its write (bounded: 20 s; it is past `go` within 50 ms).
    for _ in 0..2_000 {
        if !group_alive(groups[0].0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!group_alive(groups[0].0), "the writer outlived its write");
    assert!(!dir.path().join("writes.out").exists(), "the writer got past its write");
}

/// SIGKILL `cairn serve` during a rerunnable shell run: the run's group dies
/// with the server (its sentinel sees the server's pipe close), so when the
/// restart runs it again, the first run is not still going beside it. (The
/// restart, the same node, runs it again at once; the lease keeps its
/// default length, which no stall of a loaded machine outlasts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ends_a_rerunnable_shell_run_before_its_rerun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let c = server.client();
    let (s, rec) = c
        .start(tool_start("rr", "shell", idle_shell(dir.path()), "rerunnable"))
        .await;
    assert_eq!(s, 201, "{rec}");
    let pid_file = dir.path().join("pid");
    let first = Orphans(shell_pgid(&pid_file).await);
    std::fs::remove_file(&pid_file).expect("pid file");

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);
    // Bounded: the sentinel kills the group as soon as the kernel closes the
    // dead server's descriptors.
    for _ in 0..2_000 {
        if !group_alive(first.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!group_alive(first.0), "the first run's group outlived the server");

    let server = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let c = server.client();
    let second = Orphans(shell_pgid(&pid_file).await);
    assert_ne!(second.0, first.0, "a new run");
    let runs = std::fs::read_to_string(dir.path().join("runs")).expect("runs file");
    assert_eq!(runs.lines().count(), 2, "run again once: {runs:?}");
    let rec = until(&c, "rr", "the rerun's start", |r| r["started"]["attempt"] == 2).await;
    assert_eq!(rec["status"], "running", "{rec}");
    let (s, _) = c.post("/v1/processes/rr/cancel", json!({})).await;
    assert_eq!(s, 200);
    let (_, ended) = c.get("/v1/processes/rr/await?timeout_ms=20000").await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert!(!group_alive(second.0), "a cancel stops the rerun's group");
}

/// A restart under the same node id after SIGKILL runs the dead
/// incarnation's rerunnable work again at once: its newer incarnation is
/// the proof the lease's owner is gone, so it does not wait out the lease
/// (two minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_runs_its_earlier_incarnations_rerunnable_work_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let flags = ["--node-id", "box-1", "--lease-ttl", "120s"];
    let server = Server::start_on(&db, &flags).await;
    let c = server.client();
    let (s, rec) = c
        .start(tool_start("rr", "shell", idle_shell(dir.path()), "rerunnable"))
        .await;
    assert_eq!(s, 201, "{rec}");
    let pid_file = dir.path().join("pid");
    let _first = Orphans(shell_pgid(&pid_file).await);
    std::fs::remove_file(&pid_file).expect("pid file");
    let held = until(&c, "rr", "its first start", |r| r["started"]["attempt"] == 1).await;
    let expires = held["lease"]["expires_at_ms"].as_u64().expect("a lease");

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);
    let server = Server::start_on(&db, &flags).await;
    let c = server.client();
    let _second = Orphans(shell_pgid(&pid_file).await);
    let rec = until(&c, "rr", "the rerun's start", |r| r["started"]["attempt"] == 2).await;
    assert!(
        now_ms() < expires,
        "run again before the first lease would have lapsed: {rec}"
    );
    assert_eq!(rec["lease"]["owner_id"], "box-1#2", "{rec}");
    let (s, _) = c.post("/v1/processes/rr/cancel", json!({})).await;
    assert_eq!(s, 200);
    let (_, ended) = c.get("/v1/processes/rr/await?timeout_ms=20000").await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
}

/// `cairn serve ARGS`, which must refuse to start: its exit status and stderr.
fn refused_serve(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .args(args)
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_NODE_ID")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cairn serve");
    for _ in 0..2_000 {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("stderr piped")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            return (status, stderr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("`cairn serve {args:?}` was to refuse to start, and ran for 20 s");
}

/// `cairn serve --node-id box-1` on `db`, running the owner_bound shell `ob`
/// (started) in `dir`; with the shell's group, killed when dropped.
async fn box_1_running_ob(db: &str, dir: &std::path::Path) -> (Server, Orphans) {
    let server = Server::start_on(db, &["--node-id", "box-1"]).await;
    let c = server.client();
    let (s, rec) = c.start(tool_start("ob", "shell", idle_shell(dir), "owner_bound")).await;
    assert_eq!(s, 201, "{rec}");
    let orphans = Orphans(shell_pgid(&dir.join("pid")).await);
    until(&c, "ob", "started", |r| !r["started"].is_null()).await;
    (server, orphans)
}

/// A second live `cairn serve` under a node id another holds on the same file
/// would sweep the first one's `owner_bound` work as if it had died: it is
/// refused, naming the holder, and the work runs on. Another node id serves
/// beside it, and once the holder is killed its id is free for the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_under_a_live_node_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let (first, orphans) = box_1_running_ob(&db, dir.path()).await;

    let (status, stderr) = refused_serve(&["--db", &db, "--listen", "127.0.0.1:0", "--node-id", "box-1"]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("node id `box-1` is in use") && stderr.contains(&format!("process {}", first.pid())),
        "{stderr}"
    );
    // The host name default is a node id too.
    let _default = Server::start_on(&db, &[]).await;
    let (status, stderr) = refused_serve(&["--db", &db, "--listen", "127.0.0.1:0"]);
    assert!(!status.success() && stderr.contains("is in use"), "{stderr}");

    let other = Server::start_on(&db, &["--node-id", "box-2"]).await;
    let (_, rec) = other.client().get("/v1/processes/ob").await;
    assert_eq!(rec["status"], "running", "nothing swept the live run: {rec}");
    assert_eq!(rec["started"]["owner_id"], "box-1#1", "{rec}");
    assert!(group_alive(orphans.0), "the live run's shell runs on");

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) }, 0);
    drop(first);
    let restarted = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let (_, ended) = restarted.client().get("/v1/processes/ob/await?timeout_ms=30000").await;
    assert_eq!(ended["outcome"]["evidence"]["writer"], "sweep", "{ended}");
}

/// A revenant: `cairn serve` frozen (SIGSTOP) mid-run while a restart of the
/// same node sweeps its work. The frozen server still holds its node id, so
/// the restart is refused until the hold is defeated (its lock file removed,
/// as a careless cleanup might). Thawed, the old incarnation writes nothing
/// more (its lease went with the sweep), stops its shell's process group,
/// and, superseded, exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenant_incarnation_is_fenced_after_the_sweep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let (mut old, orphans) = box_1_running_ob(&db, dir.path()).await;

    old.freeze().await;
    let (status, stderr) = refused_serve(&["--db", &db, "--listen", "127.0.0.1:0", "--node-id", "box-1"]);
    assert!(!status.success() && stderr.contains("is in use"), "{stderr}");
    std::fs::remove_file(dir.path().join("cairn.db-node-box-1.lock")).expect("remove the lock file");
    let new = Server::start_on(&db, &["--node-id", "box-1"]).await;
    let nc = new.client();
    let (_, ended) = nc.get("/v1/processes/ob/await?timeout_ms=30000").await;
    assert_eq!(ended["status"], "abandoned", "{ended}");
    assert_eq!(ended["outcome"]["evidence"]["writer"], "sweep", "{ended}");
    let last = ended["last_sequence"].clone();

    // Thaw the old incarnation and let its shell try to write.
    old.thaw();
    std::fs::write(dir.path().join("go"), "").expect("go file");
    for _ in 0..2_000 {
        if !group_alive(orphans.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!group_alive(orphans.0), "the fenced run stopped its shell's group");
    let (_, rec) = nc.get("/v1/processes/ob").await;
    assert_eq!(rec["status"], "abandoned", "{rec}");
    assert_eq!(
        rec["last_sequence"], last,
        "the old incarnation wrote nothing after the sweep: {rec}"
    );
    assert_eq!(rec["outcome"], ended["outcome"]);
    // Its run ended by another writer, the old server finds a newer
    // incarnation of its node id and stops by itself.
    let status = old
        .wait_exit(Duration::from_secs(30))
        .expect("the superseded server stops");
    assert!(!status.success(), "{status}");
}

/// On PostgreSQL a server holds its node id on a connection of its own. When
/// that connection ends (a restarted database, a broken network), the server
/// takes the id again and serves on; when another runtime took the id in the
/// meantime, the server stops with an error instead of running beside it.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_node_id_is_taken_while_its_hold_is_down_stops() {
    use cairn_postgres::testing::{node_holder, retaken, terminate, test_client, NodeRival};
    let Some(url) = cairn_postgres::testing::test_url() else {
        return;
    };
    let schema = cairn_postgres::testing::TestSchema::new("cairn_node_lost");
    let db = schema.db_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut server = Server::serve_logging_to(
        &[
            "--db",
            &db,
            "--allow-shell",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "box-1",
        ],
        &log,
    )
    .await;
    let admin = test_client(&url).await;

    // The hold's connection ends: the server takes the id again.
    let first = node_holder(&admin, &schema.name, "box-1").await.expect("held");
    assert!(terminate(&admin, first).await);
    let held = retaken(&admin, &schema.name, "box-1", first).await;
    let c = server.client();
    let (s, rec) = c
        .start(tool_start("e", "echo", json!({"value": 1}), "rerunnable"))
        .await;
    assert_eq!(s, 201, "{rec}");
    let (_, ended) = c.get("/v1/processes/e/await?timeout_ms=20000").await;
    assert_eq!(ended["status"], "completed", "the server serves on: {ended}");

    // Another runtime queues for the id; the database grants it the moment the
    // server's hold connection ends, before the server can take it again.
    let rival = NodeRival::queue(&url, &schema.name, "box-1").await;
    assert!(terminate(&admin, held).await);
    let rival = rival.holds().await;
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server stops once its id is taken");
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(&log).expect("log");
    assert!(
        stderr.contains("node id `box-1` was taken by another runtime while this server ran"),
        "{stderr}"
    );
    assert_eq!(node_holder(&admin, &schema.name, "box-1").await, Some(rival.pid));
}

/// On `server` (one worker slot): the owner-bound shell `hold`, which ends
/// once the file `go` exists, in the only slot and the owner-bound `ob`
/// queued behind it, never started.
async fn ob_queued_behind_hold(server: &Server, go: &std::path::Path) {
    let c = server.client();
    let command = format!("while [ ! -f {} ]; do sleep 0.05; done", go.display());
    let (s, rec) = c
        .start(tool_start("hold", "shell", json!({"command": command}), "owner_bound"))
        .await;
    assert_eq!(s, 201, "{rec}");
    until(&c, "hold", "started", |r| !r["started"].is_null()).await;
    let (s, rec) = c
        .start(tool_start("ob", "sleep", json!({"ms": 600_000}), "owner_bound"))
        .await;
    assert_eq!(s, 201, "{rec}");
    assert!(rec["started"].is_null(), "ob waits for the slot: {rec}");
}

/// A server in its shutdown grace claims no more work: queued owner-bound
/// work stays queued for the next start, instead of being claimed when a
/// run ends during the grace and then abandoned by the drain without having
/// run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_its_shutdown_grace_claims_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cairn.db");
    let db = format!("sqlite:{}", path.display());
    let log = dir.path().join("serve.log");
    let mut server = Server::serve_logging_to(
        &[
            "--db",
            &db,
            "--allow-shell",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--shutdown-grace",
            "120s",
            "--body-timeout",
            "120s",
        ],
        &log,
    )
    .await;
    let go = dir.path().join("go");
    ob_queued_behind_hold(&server, &go).await;
    // The grace runs until the second signal.
    let slow = server.hold_a_connection_open().await;
    // The server holds it (and the connection asking) before the signal.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = server
            .http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let open = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cairn_http_connections_open "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if open >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow connection was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An await the shutdown ends: its answer comes after the server stopped
    // claiming, the barrier before `hold` may end.
    let c = server.client();
    let awaiting = tokio::spawn(async move { c.get("/v1/processes/ob/await?timeout_ms=120000").await });
    server.client().awaits_open(1).await;
    let pid = server.pid() as libc::pid_t;
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (s, rec) = tokio::time::timeout(Duration::from_secs(20), awaiting)
        .await
        .expect("the shutdown ended the await")
        .expect("await task");
    assert_eq!((s, rec["status"].as_str()), (200, Some("running")), "{rec}");
    // `hold` ends during the grace (read from the file: the server takes
    // no more requests), freeing the slot.
    std::fs::write(&go, "").expect("go file");
    let reader = cairn_sqlite::SqliteRegistry::open(&path, std::sync::Arc::new(cairn_core::SystemClock))
        .expect("open the database beside the server");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hold = cairn_core::ProcessRegistry::get(&reader, "hold")
            .await
            .expect("get hold");
        if hold.is_terminal() {
            assert_eq!(hold.status, cairn_core::ProcessStatus::Completed, "{hold:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hold never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("shutting down"),
        "hold ended during the grace"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server.wait_exit(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{status:?}");
    drop(slow);
    let ob = cairn_core::ProcessRegistry::get(&reader, "ob").await.expect("get ob");
    assert!(
        ob.started.is_none() && !ob.is_terminal(),
        "ob stays queued for the next start: {ob:?}"
    );
}

/// The names in `dir`, sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A start that fails a check of its own (a model's key variable unset, a
/// port in use) fails before it opens the database: its documented exit
/// code, and the database untouched: a new SQLite path is not made, an
/// existing file (nor its directory) is not changed, so an older binary
/// could still open it.
#[test]
fn a_refused_start_leaves_the_database_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = dir.path().join("fresh.db");
    let db = format!("sqlite:{}", fresh.display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let port = taken.local_addr().expect("its address").to_string();
    let unset = "CAIRN_TEST_NO_SUCH_MODEL_KEY_R4";
    assert!(std::env::var_os(unset).is_none());
    let model = format!("default=http://127.0.0.1:9/v1,key_env={unset}");
    let cases: [(&[&str], i32, &str); 2] = [
        (&["--listen", &port], 1, "cannot listen on"),
        (&["--listen", "127.0.0.1:0", "--model", &model], 2, unset),
    ];
    for (args, exit, said) in cases {
        let mut all = vec!["--db", &db];
        all.extend_from_slice(args);
        let (status, stderr) = refused_serve(&all);
        assert_eq!(status.code(), Some(exit), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert_eq!(names_in(dir.path()), Vec::<String>::new(), "{args:?}: nothing made");
    }

    // A database that exists: the same refusals leave its files as they were.
    let existing = dir.path().join("existing.db");
    let db = format!("sqlite:{}", existing.display());
    {
        let registry = cairn_sqlite::SqliteRegistry::open(&existing, std::sync::Arc::new(cairn_core::SystemClock))
            .expect("make a database");
        drop(registry);
    }
    let before: Vec<(String, Vec<u8>)> = names_in(dir.path())
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(dir.path().join(&n)).expect("read");
            (n, bytes)
        })
        .collect();
    for (args, exit, _) in cases {
        let mut all = vec!["--db", &db];
        all.extend_from_slice(args);
        let (status, stderr) = refused_serve(&all);
        assert_eq!(status.code(), Some(exit), "{args:?}: {stderr}");
        let after: Vec<(String, Vec<u8>)> = names_in(dir.path())
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(dir.path().join(&n)).expect("read");
                (n, bytes)
            })
            .collect();
        assert!(after == before, "{args:?}: the files changed");
    }
    drop(taken);
}

/// On PostgreSQL, a start refused for a port in use creates no schema.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refused_for_its_port_creates_no_postgres_schema() {
    let Some(url) = cairn_postgres::testing::test_url() else {
        return;
    };
    let schema = cairn_postgres::testing::TestSchema::new("cairn_refused_start");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let port = taken.local_addr().expect("its address").to_string();
    let (status, stderr) = refused_serve(&["--db", &schema.db_url(), "--listen", &port]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    let client = cairn_postgres::testing::test_client(&url).await;
    let found = client
        .query_opt(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
            &[&schema.name],
        )
        .await
        .expect("look for the schema");
    assert!(found.is_none(), "schema `{}` was created", schema.name);
    drop(taken);
}

/// A port in use for a moment only is waited out: a server SIGKILLed a
/// moment ago can leave a child it forked for a shell command, not yet at its
/// `exec`, holding the listening socket, and a restart made at once must come
/// up. (A port held for good is refused, as above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_freed_a_moment_later_is_waited_for() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let port = taken.local_addr().expect("its address").to_string();
    // Held a little past the server's first try, then let go.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(taken);
    });
    let server = Server::serve(&["--db", "memory", "--listen", &port]).await;
    release.join().expect("the holder let go");
    assert!(
        server.url("/").contains(&port),
        "it listens where asked: {}",
        server.url("/")
    );
    let (s, body) = server.client().get("/healthz").await;
    assert_eq!(s, 200, "{body}");
}

/// Kills and reaps a child process this test started, whatever its outcome.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server waiting to open its database (another process holds a lock on
/// the SQLite file) has its address bound, so a port in use would have been
/// refused, but does not listen yet: a client is refused at once (the CLI
/// asks whether `cairn serve` runs) instead of hanging unanswered through
/// the wait. Once the lock is released the server opens the file and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_waiting_for_its_database_refuses_connections_until_it_serves() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locked.db");
    // The SQLite shell holds an exclusive lock on the (new) file until told to commit.
    let mut sqlite = KilledOnDrop(
        Command::new("sqlite3")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sqlite3 (the SQLite shell)"),
    );
    let mut hold = sqlite.0.stdin.take().expect("stdin piped");
    hold.write_all(b"BEGIN EXCLUSIVE;\nSELECT 'locked';\n")
        .expect("ask for the lock");
    hold.flush().expect("flush");
    let mut said = String::new();
    BufReader::new(sqlite.0.stdout.take().expect("stdout piped"))
        .read_line(&mut said)
        .expect("read sqlite3's answer");
    assert_eq!(said.trim(), "locked", "sqlite3 holds the lock");

    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("its address").port()
    };
    let log = dir.path().join("serve.log");
    let mut serve = KilledOnDrop(
        Command::new(BIN)
            .arg("serve")
            .args(["--db", &format!("sqlite:{}", path.display())])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("CAIRN_TOKEN")
            .env_remove("CAIRN_SESSION_TOKENS")
            .env_remove("CAIRN_NODE_ID")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn cairn serve"),
    );
    // The server says it waits for the lock: its address is bound by then.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("another process holds a lock on the sqlite database") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not say it waits for the lock within 20 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        serve.0.try_wait().expect("wait").is_none(),
        "the server waits, not exits"
    );
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect_err("a connection while the database is not open yet is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    let base = format!("http://127.0.0.1:{port}");
    let cli = run_cli(&base, None, &["ls"], None).await;
    assert_eq!(cli.code, 1, "{}", cli.stderr);
    assert!(
        cli.stderr.contains("Connection refused") && cli.stderr.contains("is `cairn serve` running"),
        "{}",
        cli.stderr
    );

    // The lock released, the server opens the file, says it listens and answers.
    hold.write_all(b"COMMIT;\n").expect("release the lock");
    drop(hold);
    sqlite.0.wait().expect("sqlite3 ends");
    let stdout = serve.0.stdout.take().expect("stdout piped");
    let line = common::first_line(stdout, Duration::from_secs(20))
        .expect("serve printed its address once the lock was released");
    assert_eq!(line.trim(), format!("listening on {base}"));
    let health = reqwest::get(format!("{base}/healthz")).await.expect("answered");
    assert_eq!(health.status().as_u16(), 200);
}
