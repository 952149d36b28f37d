//! The CLI as a new user meets it: ids, working directory, environment, stdin,
//! Ctrl-C, restarts, exit codes, `--json` shapes, timeouts and hints.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run_cli, waiter, Server, BIN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// A `cairn` client started in the background, its stderr read line by line.
struct Running {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
}

impl Running {
    /// As a command typed in a terminal: SIGHUP and SIGINT have their
    /// default actions, whatever the tests were started under (`nohup`, or
    /// a shell's background job, ignores them, and a run keeps ignoring
    /// what it was started ignoring).
    fn spawn(base: &str, args: &[&str]) -> Running {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("--server")
            .arg(base)
            .args(args)
            .env_remove("CAIRN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: `signal` is async-signal-safe; the closure runs in the
        // child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn cairn");
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Running { child, stderr }
    }

    /// The next stderr line containing `needle` (bounded).
    async fn stderr_line(&mut self, needle: &str) -> String {
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut seen = Vec::new();
            while let Some(line) = self.stderr.next_line().await.expect("read stderr") {
                if line.contains(needle) {
                    return line;
                }
                seen.push(line);
            }
            panic!("stderr closed before a line with `{needle}`; it said: {seen:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no stderr line with `{needle}` in time"))
    }

    fn interrupt(&self) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: sending SIGINT to our own child process by its pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    }

    async fn exit_code(mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("cairn exited in time")
            .expect("wait");
        status.code().unwrap_or(-1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_its_id_and_forwards_cwd_and_opted_in_env() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "pwd; echo \"A=${CAIRN_T_A:-unset} B=${CAIRN_T_B:-unset} C=${CAIRN_T_C:-unset}\"";
    let out = tokio::process::Command::new(BIN)
        .args([
            "--server",
            &server.base,
            "run",
            "--env",
            "CAIRN_T_A",
            "--env",
            "CAIRN_T_B=given",
        ])
        .args(["--", "sh", "-c", script])
        .current_dir(dir.path())
        .env("CAIRN_T_A", "from-caller")
        .env("CAIRN_T_C", "not-forwarded")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cairn run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let here = dir.path().canonicalize().expect("canonical");
    assert_eq!(
        stdout,
        format!("{}\nA=from-caller B=given C=unset\n", here.display()),
        "{stderr}"
    );
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("run-"))
        .unwrap_or_else(|| panic!("no id on stderr: {stderr}"));
    let (status, record) = server.client().get(&format!("/v1/processes/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(record["disposition"], "owner_bound");

    // --env-all forwards everything but cairn's own variables (the record
    // keeps what is forwarded); a named variable that is not set is bad input.
    let out = tokio::process::Command::new(BIN)
        .args([
            "--server",
            &server.base,
            "run",
            "--env-all",
            "--",
            "sh",
            "-c",
            "echo $T_ALL_C/${CAIRN_T_OWN:-none}",
        ])
        .env("T_ALL_C", "all-of-it")
        .env("CAIRN_T_OWN", "secret")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cairn run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "all-of-it/none\n");
    let out = run_cli(
        &server.base,
        None,
        &["run", "--env", "CAIRN_T_SURELY_UNSET", "--", "true"],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("`CAIRN_T_SURELY_UNSET` is not set"),
        "{}",
        out.stderr
    );

    // --disposition, and --detach says how to follow.
    let out = run_cli(
        &server.base,
        None,
        &[
            "run",
            "--detach",
            "--disposition",
            "rerunnable",
            "--id",
            "det-1",
            "--",
            "true",
        ],
        None,
    )
    .await;
    assert_eq!((out.code, out.stdout.trim()), (0, "det-1"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cairn --server {} events det-1 --follow", server.base)),
        "{}",
        out.stderr
    );
    let (_, record) = server.client().get("/v1/processes/det-1").await;
    assert_eq!(record["disposition"], "rerunnable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_piped_stdin_and_starts_nothing() {
    let server = Server::start(&[]).await;
    let out = run_cli(
        &server.base,
        None,
        &["run", "--id", "piped", "--", "cat"],
        Some("data\n"),
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("does not forward stdin"), "{}", out.stderr);
    let (status, _) = server.client().get("/v1/processes/piped").await;
    assert_eq!(status, 404, "a refused run must start nothing");
    // A pipe that carries nothing (closed at once) is not input.
    let out = run_cli(
        &server.base,
        None,
        &["run", "--id", "empty-pipe", "--", "true"],
        Some(""),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_asks_the_server_to_cancel() {
    let server = Server::start(&[]).await;
    let mut run = Running::spawn(&server.base, &["run", "--id", "long", "--", "sleep", "30"]);
    run.stderr_line("started long").await;
    server.client().wait_for("long", |r| !r["lease"].is_null()).await;
    run.interrupt();
    let said = run.stderr_line("cancelling long").await;
    assert!(said.contains("Ctrl-C"), "{said}");
    assert_eq!(run.exit_code().await, 130);
    let (_, record) = server.client().get("/v1/processes/long").await;
    assert_eq!(record["status"], "cancelled", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_abandonment_is_said_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    let mut server = Server::start_on(&db, &[]).await;
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let mut run = Running::spawn(&server.base, &["run", "--id", "ob", "--", "sleep", "30"]);
    run.stderr_line("started ob").await;
    server.client().wait_for("ob", |r| !r["lease"].is_null()).await;
    // SAFETY: sending SIGTERM to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()));
    drop(server);
    // The client resumes once the server is back, and says how the run ended.
    let listen = format!("127.0.0.1:{port}");
    let _again = Server::serve(&["--db", &db, "--listen", &listen]).await;
    let said = run.stderr_line("ob was abandoned").await;
    assert!(said.contains("shut down before it ended"), "{said}");
    assert!(!said.contains('{'), "not raw JSON: {said}");
    assert_eq!(run.exit_code().await, 1);
}

/// A shell's process group, killed when dropped (a server killed outright
/// leaves an owner_bound command running).
struct Group(libc::pid_t);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of a command this test started.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// A `run` whose worker node dies and never comes back (its own server, a
/// peer on the same database, up all along) says once that no worker holds
/// the lease, instead of waiting in silence; keeps following; and ends when
/// `cairn abandon` ends the process, which says the lease lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_worker_died_says_no_worker_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    // Node b, the run's server, has one slot, which a long sleep takes
    // before node a is up: node a runs the command.
    let b = Server::start_on(&db, &["--node-id", "b", "--workers", "1"]).await;
    let c = b.client();
    let hold = json!({"id": "hold", "input": {"type": "tool_call", "tool": "sleep", "args": {"ms": 600000}},
                      "disposition": "owner_bound"});
    assert_eq!(c.start(hold).await.0, 201);
    c.wait_for("hold", |r| r["lease"].is_object()).await;
    let a = Server::start_on(&db, &["--node-id", "a", "--lease-ttl", "1s"]).await;
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 120", pid_file.display());
    let mut run = Running::spawn(&b.base, &["run", "--id", "stranded", "--", "sh", "-c", &script]);
    run.stderr_line("started stranded").await;
    let rec = c
        .wait_for("stranded", |r| {
            r["lease"]["owner_id"].as_str().is_some_and(|o| o.starts_with("a#"))
        })
        .await;
    let owner = rec["lease"]["owner_id"].as_str().expect("owner").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pgid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<libc::pid_t>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never wrote its pid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _group = Group(pgid);
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(a.pid() as libc::pid_t, libc::SIGKILL) }, 0);
    drop(a);
    let said = run.stderr_line("no worker holds it").await;
    assert!(
        said.starts_with(&format!("stranded: the lease of worker {owner} lapsed ")),
        "{said}"
    );
    assert!(
        said.contains(&format!("`cairn --server {} abandon stranded --reason ...`", b.base)),
        "{said}"
    );
    // It still runs: `run` keeps following it.
    let (_, rec) = c.get("/v1/processes/stranded").await;
    assert_eq!(rec["status"], "running", "{rec}");
    let out = run_cli(
        &b.base,
        None,
        &["abandon", "stranded", "--reason", "node a is gone"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stdout = out.stdout.trim();
    assert!(
        stdout.starts_with("abandon requested: stranded is running (its lease lapsed ")
            && stdout.ends_with(": reconciled shortly)"),
        "{stdout}"
    );
    let said = run.stderr_line("stranded was abandoned").await;
    assert!(
        said.ends_with(&format!(
            "an abandon request was reconciled once no live lease held it (last run by worker {owner})"
        )),
        "{said}"
    );
    assert_eq!(run.exit_code().await, 1);
}

/// `cairn cancel` (or `cairn signal`) of a started owner_bound process
/// whose node died (its lease lapsed, and another node answers) says nothing
/// acts on the request, naming the node that must come back and the abandon
/// request that ends it, instead of a bare "cancellation requested" (or
/// "recorded"); the request is recorded all the same (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_or_signal_of_a_dead_nodes_owner_bound_work_says_nothing_acts_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    let n1 = Server::start_on(&db, &["--node-id", "n1", "--lease-ttl", "1s"]).await;
    let c = n1.client();
    let body = common::tool_start("ob", "sleep", json!({"ms": 600000}), "owner_bound");
    assert_eq!(c.start(body).await.0, 201);
    c.wait_for("ob", |r| r["lease"].is_object()).await;
    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(n1.pid() as libc::pid_t, libc::SIGKILL) }, 0);
    drop(n1);
    // n9's own leases keep the default length: a short one could lapse
    // while a loaded machine stalls n9, and `live` below would read as dead.
    let n9 = Server::start_on(&db, &["--node-id", "n9"]).await;
    let c = n9.client();
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("fits")
    };
    c.wait_for("ob", |r| {
        r["lease"]["expires_at_ms"].as_u64().is_some_and(|at| at < now_ms())
    })
    .await;
    let out = n9.cli(&["cancel", "ob"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let said = out.stdout.trim();
    assert!(
        said.starts_with(
            "cancellation requested: ob is running, but nothing acts on it: the lease of worker n1#1 lapsed "
        ),
        "{said}"
    );
    assert!(
        said.ends_with(&format!(
            "node n1 must come back (`cairn serve --node-id n1`), or an abandon request ends it (`cairn --server {} \
             abandon ob --reason ...`)",
            n9.base
        )),
        "{said}"
    );
    let (_, rec) = c.get("/v1/processes/ob").await;
    assert!(rec["cancel_request"].is_object(), "the request is recorded: {rec}");
    assert_eq!(rec["status"], "running", "{rec}");
    // A signal to it is recorded, and said to reach nothing that acts.
    let out = n9.cli(&["signal", "ob", "go"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    let recorded = lines.next().unwrap_or_default();
    assert!(
        recorded.starts_with("signal.go recorded on ob as event "),
        "{}",
        out.stdout
    );
    let but = lines.next().unwrap_or_default();
    assert!(
        but.starts_with("but nothing acts on it: the lease of worker n1#1 lapsed ")
            && but.contains("node n1 must come back"),
        "{}",
        out.stdout
    );
    // Owner_bound work a live node holds is answered as before.
    let body = common::tool_start("live", "sleep", json!({"ms": 600000}), "owner_bound");
    assert_eq!(c.start(body).await.0, 201);
    c.wait_for("live", |r| r["lease"].is_object()).await;
    let out = n9.cli(&["signal", "live", "go"], None).await;
    assert!(
        out.stdout.starts_with("signal.go recorded on live") && !out.stdout.contains("nothing acts"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    let out = n9.cli(&["cancel", "live"], None).await;
    let said = out.stdout.trim();
    assert!(
        said.starts_with("cancellation requested: live is ") && !said.contains("nothing acts"),
        "{said} {}",
        out.stderr
    );
}

/// A rerunnable run whose server stops runs again after the restart, and
/// `cairn run` says so before the new run's output: the first run's line and
/// the second's are both printed, with the attempt named between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerunnable_run_started_over_is_said() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    let mark = dir.path().join("ran-once");
    let script = format!(
        "if [ -e {m} ]; then echo second; else touch {m}; echo first; exec sleep 30; fi",
        m = mark.display()
    );
    let mut server = Server::start_on(&db, &[]).await;
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let mut run = Running::spawn(
        &server.base,
        &[
            "run",
            "--id",
            "re",
            "--disposition",
            "rerunnable",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let mut stdout = BufReader::new(run.child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("the first run printed in time")
        .expect("read stdout");
    assert_eq!(first.as_deref(), Some("first"));
    // SAFETY: sending SIGTERM to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()));
    drop(server);
    let listen = format!("127.0.0.1:{port}");
    let _again = Server::serve(&["--db", &db, "--allow-shell", "--listen", &listen]).await;
    let said = run.stderr_line("re runs again").await;
    assert!(said.contains("attempt 2") && said.contains("new run's"), "{said}");
    let second = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("the second run printed in time")
        .expect("read stdout");
    assert_eq!(second.as_deref(), Some("second"));
    assert_eq!(run.exit_code().await, 0);
}

/// `cairn run --id X` of an X that already ended says it already ran (and
/// prints its output again, ending with its exit code), rather than offering
/// to stop it; so does `--detach`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_an_ended_id_says_it_already_ran() {
    let server = Server::start(&[]).await;
    let args = ["run", "--id", "once", "--", "sh", "-c", "echo hello; exit 3"];
    let out = server.cli(&args, None).await;
    assert_eq!((out.code, out.stdout.as_str()), (3, "hello\n"), "{}", out.stderr);
    assert!(out.stderr.contains("started once"), "{}", out.stderr);
    let again = server.cli(&args, None).await;
    assert_eq!((again.code, again.stdout.as_str()), (3, "hello\n"), "{}", again.stderr);
    assert!(
        again.stderr.contains("once already ran and ended failed"),
        "{}",
        again.stderr
    );
    let detached = server
        .cli(
            &[
                "run",
                "--detach",
                "--id",
                "once",
                "--",
                "sh",
                "-c",
                "echo hello; exit 3",
            ],
            None,
        )
        .await;
    assert_eq!(
        (detached.code, detached.stdout.trim()),
        (0, "once"),
        "{}",
        detached.stderr
    );
    assert!(detached.stderr.contains("once already ran"), "{}", detached.stderr);
    assert!(!detached.stderr.contains("cancel"), "{}", detached.stderr);
    // `await` of a process that failed exits 1 and says how it ended (the
    // command's own 3 would read as "still running" here).
    let awaited = server.cli(&["await", "once"], None).await;
    assert_eq!(awaited.code, 1, "{}", awaited.stderr);
    assert!(
        awaited.stderr.contains("once failed: exit_status"),
        "{}",
        awaited.stderr
    );
    // With --json, the record on stdout says it; stderr holds only errors.
    let awaited = server.cli(&["--json", "await", "once"], None).await;
    assert_eq!((awaited.code, awaited.stderr.as_str()), (1, ""));
    assert_eq!(awaited.json()["outcome"]["code"], "exit_status");
    // `cairn start` of an ended id says the same.
    let body = common::tool_start("e1", "echo", json!({"value": 1}), "rerunnable").to_string();
    assert_eq!(server.cli(&["start", &body], None).await.code, 0);
    assert_eq!(server.cli(&["await", "e1"], None).await.code, 0);
    let repeat = server.cli(&["start", &body], None).await;
    assert_eq!(
        (repeat.code, repeat.stdout.trim()),
        (0, "already ran e1 (completed)"),
        "{}",
        repeat.stderr
    );
}

/// A server shut down while `cairn await` waits, and not back within the
/// caller's timeout, ends the wait with words that say so (exit 1), not with
/// "cannot reach the server" nor as a timeout of a running process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_await_is_said() {
    let mut server = Server::start(&[]).await;
    let c = server.client();
    let (s, _) = c.start(waiter("w")).await;
    assert_eq!(s, 201);
    let mut wait = Running::spawn(&server.base, &["await", "w", "--timeout", "5s"]);
    c.awaits_open(1).await;
    // A wait the server ends at once reads as a shutdown by its speed alone;
    // this one has been open a while, as most are when a server stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: sending SIGTERM to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    let said = wait.stderr_line("error:").await;
    assert!(
        said.contains("the server ended the wait") && said.contains("w was still running"),
        "{said}"
    );
    assert_eq!(wait.exit_code().await, 1);
}

/// A server killed outright (SIGKILL) while `cairn await` waits, and not
/// back within the caller's timeout, is told apart from a hung one: the wait
/// ends saying the server ended it and now refuses connections (exit 1), in
/// words, not the HTTP client's, and not "state is unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_await_and_not_back_is_said() {
    let mut server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(c.start(waiter("w")).await.0, 201);
    let mut wait = Running::spawn(&server.base, &["await", "w", "--timeout", "3s"]);
    c.awaits_open(1).await;
    // SAFETY: sending SIGKILL to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    let said = wait.stderr_line("error:").await;
    assert!(
        said.contains(
            "the server ended the wait (it closed the connection before answering) and was not back in time \
             (it refuses connections)"
        ),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "`cairn --server {} await w` again once the server is back",
            server.base
        )),
        "{said}"
    );
    for internal in [
        "unknown",
        "error sending request",
        "connection closed before message completed",
        "http://",
    ] {
        // The server's address is said only in the command to paste.
        let words = said.replace(&format!("--server {}", server.base), "--server URL");
        assert!(!words.contains(internal), "says {internal:?}: {said}");
    }
    assert_eq!(wait.exit_code().await, 1);
}

/// `cairn await` rides out a server restart: the wait its server ended as it
/// stopped is asked again once the server is back over the same database, and
/// the process's end is reported as if nothing had happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_await_rides_out_a_server_restart() {
    await_rides_out(libc::SIGTERM).await;
}

/// So it does when the server is killed (SIGKILL) while it holds the wait:
/// the wait is cut off, and the restart's refused connections are an
/// outage, not a server that was never there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_await_rides_out_a_server_killed_under_it() {
    await_rides_out(libc::SIGKILL).await;
}

async fn await_rides_out(signal: libc::c_int) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    let mut server = Server::start_on(&db, &[]).await;
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let c = server.client();
    assert_eq!(c.start(waiter("w")).await.0, 201);
    let wait = Running::spawn(&server.base, &["--json", "await", "w", "--timeout", "60s"]);
    c.awaits_open(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, signal) }, 0);
    let exit = server.wait_exit(Duration::from_secs(20)).expect("the server exited");
    assert_eq!(exit.success(), signal == libc::SIGTERM, "{exit:?}");
    drop(server);
    // The client asks again 250 ms after its wait ended, then 500 ms
    // later: by a second from here it has met the closed port (refused
    // connections) at least once, and still waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut wait = wait;
    assert!(
        wait.child.try_wait().expect("try_wait").is_none(),
        "the await gave up while the server was down"
    );
    let listen = format!("127.0.0.1:{port}");
    let again = Server::serve(&["--db", &db, "--listen", &listen]).await;
    let c = again.client();
    // The await is back on the new server before the process ends.
    c.awaits_open(1).await;
    let (s, body) = c
        .post("/v1/processes/w/signals/go", json!({"signal_id": "s1", "payload": 1}))
        .await;
    assert!(s < 300, "{s} {body}");
    let mut stdout = String::new();
    let mut child = wait.child;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .await
        .expect("read stdout");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("await exited in time")
        .expect("wait");
    let record: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_three_exit_codes_json_shapes_and_messages() {
    let server = Server::start(&["--max-await", "300ms"]).await;
    let base = server.base.clone();
    let cli = |args: &'static [&'static str]| {
        let base = base.clone();
        async move { run_cli(&base, None, args, None).await }
    };
    assert_eq!(server.client().start(waiter("w1")).await.0, 201);
    server.client().wait_for("w1", |r| !r["wait"].is_null()).await;

    // --json events is one document, like every other --json.
    let out = cli(&["--json", "events", "w1"]).await;
    let doc = out.json();
    let events = doc["events"].as_array().expect("events array");
    assert_eq!(events[0]["sequence"], 1);
    assert_eq!(events.len(), 2, "{doc}");
    // Client flags are also accepted after the command.
    let out = cli(&["events", "w1", "--json"]).await;
    assert_eq!(out.json()["events"].as_array().map(Vec::len), Some(2));

    // await: a timeout longer than the server's cap (300 ms) is honoured, then said.
    let started = Instant::now();
    let out = cli(&["await", "w1", "--timeout", "1.2s"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "cut short at the server cap"
    );
    assert!(
        out.stderr
            .contains("timed out after 1s 200ms: w1 is still running (exit code 3)"),
        "{}",
        out.stderr
    );
    let out = cli(&["await", "w1", "--timeout", "soon"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    // A bare number would be milliseconds: where that surprises (or, for a
    // prune, destroys), the unit is required and nothing is done.
    for args in [
        &["await", "w1", "--timeout", "30"][..],
        &["prune", "--older-than", "7", "--no-projector"][..],
    ] {
        let out = cli(args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("has no unit"), "{}", out.stderr);
    }

    // An outcome that is none is named by its flag, without a column of a
    // body the user never wrote.
    let out = cli(&["complete", "w1", "--outcome", r#"{"type":"failure","code":"x"}"#]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--outcome is no outcome")
            && out.stderr.contains("class")
            && !out.stderr.contains("column 4"),
        "{}",
        out.stderr
    );
    // An abandonment is no completion: said as such, not as a missing field.
    let out = cli(&["complete", "w1", "--outcome", r#"{"type":"abandoned"}"#]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--outcome cannot abandon a process") && out.stderr.contains("`cairn abandon`"),
        "{}",
        out.stderr
    );
    // A type it does not know is told what a completion takes, without `abandoned`.
    let out = cli(&["complete", "w1", "--outcome", r#"{"type":"bogus"}"#]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unknown variant `bogus`, expected one of `success`, `failure`, `cancelled`")
            && !out.stderr.contains("abandoned"),
        "{}",
        out.stderr
    );
    // A status prune or `ls` does not know is named with its flag, before
    // any request.
    for args in [
        &["prune", "--older-than", "7d", "--no-projector", "--status", "bogus"][..],
        &["ls", "--status", "bogus"],
    ] {
        let out = cli(args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("--status") && out.stderr.contains("bogus"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // Bad input the server catches exits 2; an unknown id is 1.
    let out = cli(&["ls", "--definition", "bogus"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("invalid_filter"), "{}", out.stderr);
    for args in [
        ["signal", "w1", "bad name!"],
        ["signal", "w1", "."],
        ["signal", "w1", ".."],
    ] {
        let name = args[2];
        let out = run_cli(&base, None, &args, None).await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("invalid_signal_name"), "{name}: {}", out.stderr);
        // Refused here, before sending: no HTTP answer is claimed.
        assert!(!out.stderr.contains("HTTP"), "{name}: {}", out.stderr);
    }
    // An id no URL can carry is refused before sending, in the server's
    // words, exit 2 and `invalid_id` as the server's 400, without claiming
    // an HTTP status it never got.
    let out = cli(&["get", ".."]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "error: invalid_id: process id `..` is a relative path segment, which no URL can name; choose another",
    );
    let out = cli(&["--json", "get", "."]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let error: Value = serde_json::from_str(out.stderr.trim()).expect("a JSON error");
    assert_eq!(error["error"]["code"], "invalid_id", "{error}");
    assert!(error["error"].get("status").is_none(), "{error}");
    let out = cli(&["get", "nope"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);

    // ls: newest first, whatever the ids' text order.
    for id in ["b-first", "a-second"] {
        assert_eq!(server.client().start(waiter(id)).await.0, 201);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = cli(&["--json", "ls", "--status", "any"]).await;
    let ids: Vec<String> = out.json()["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids[..2], ["a-second", "b-first"], "{ids:?}");
    // A limit that leaves some out says so.
    let out = cli(&["ls", "--status", "any", "--limit", "1"]).await;
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(out.stderr.contains("more match"), "{}", out.stderr);
    // ... and how to go on after the last row shown, newest first.
    assert!(out.stderr.contains("--after-id a-second"), "{}", out.stderr);
    let out = cli(&[
        "--json",
        "ls",
        "--status",
        "any",
        "--limit",
        "1",
        "--after-id",
        "a-second",
    ])
    .await;
    let doc = out.json();
    assert_eq!(doc["processes"][0]["id"], "b-first", "{doc}");
    let out = cli(&["ls", "--status", "any", "--limit", "1000"]).await;
    assert!(!out.stderr.contains("more match"), "{}", out.stderr);
    let out = cli(&["ls", "--status", "any"]).await;
    let first_row = out.stdout.lines().nth(1).unwrap_or_default();
    assert!(first_row.starts_with("a-second"), "{}", out.stdout);

    // complete and append on an externally owned process; changes; transfer.
    let ext = json!({"id": "x1", "disposition": "externally_owned", "input": {"type": "external"},
                     "event_types": [{"name": "progress"}], "grant": {"session_scope": {"session_id": "s1"}}});
    assert_eq!(server.client().start(ext).await.0, 201);
    let out = cli(&[
        "append",
        "x1",
        "progress",
        "--payload",
        "{\"p\": 50}",
        "--replay-key",
        "k",
    ])
    .await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "progress recorded on x1 as event 1"),
        "{}",
        out.stderr
    );
    let out = cli(&[
        "append",
        "x1",
        "progress",
        "--payload",
        "{\"p\": 50}",
        "--replay-key",
        "k",
    ])
    .await;
    assert!(out.stdout.contains("a replay"), "{}", out.stdout);
    let out = cli(&["append", "x1", "undeclared"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    // A signal appended without its replay key: the command that sends one
    // is named, not the HTTP route; the code and exit code are the server's.
    let out = cli(&["append", "x1", "signal.go"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid_request")
            && out
                .stderr
                .contains(&format!("`cairn --server {base} signal x1 go --id SIGNAL_ID`"))
            && out.stderr.contains("--replay-key signal:go:SIGNAL_ID")
            && !out.stderr.contains("POST /v1"),
        "{}",
        out.stderr
    );
    let out = cli(&["--json", "append", "x1", "signal.go"]).await;
    let doc: Value = serde_json::from_str(&out.stderr).expect("a JSON error");
    assert_eq!(doc["error"]["code"], "invalid_request", "{doc}");
    assert_eq!(doc["error"]["status"], 400, "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("signal x1 go --id SIGNAL_ID"),
        "{doc}"
    );
    let out = cli(&["transfer", "--from", "s1", "--to", "s2", "x1", "w1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().next(), Some("moved: x1"), "{}", out.stdout);
    let out = cli(&["transfer", "--from", "s1", "--to", "s2", "x1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["moved: none", "not granted to the source (left alone): x1"],
        "{}",
        out.stdout
    );
    let out = cli(&[
        "--json",
        "complete",
        "x1",
        "--failure",
        "red",
        "--message",
        "3 tests failed",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["outcome"]["code"], "red");
    let out = cli(&["complete", "x1", "--value", "1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("process_terminal"), "{}", out.stderr);
    let out = cli(&["complete", "x1"]).await;
    assert_eq!(out.code, 2, "one of --value, --failure, --outcome is required");
    let out = cli(&["--json", "changes", "--cursor", "0"]).await;
    let changes = out.json();
    assert!(
        changes["changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["process"]["id"] == "x1")),
        "{changes}"
    );
    assert!(changes["next_cursor"].as_u64().is_some_and(|c| c > 0), "{changes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_completions_and_an_unreachable_server() {
    // serve --help lists the server's flags only; client commands list the client's.
    let out = run_cli("http://127.0.0.1:9", None, &["serve", "--help"], None).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("--allow-shell") && out.stdout.contains("--token"));
    assert!(
        !out.stdout.contains("--server") && !out.stdout.contains("--json"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Examples:"), "{}", out.stdout);
    let out = run_cli("http://127.0.0.1:9", None, &["await", "--help"], None).await;
    assert!(
        out.stdout.contains("--server") && out.stdout.contains("--json"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("--allow-shell"), "{}", out.stdout);
    assert!(out.stdout.contains("Examples:"), "{}", out.stdout);

    // A refused value of a flag that may hold a secret is not echoed.
    for (flag, value, secret) in [
        (
            "--model",
            "gpt=https://api.example/v1?api_key=sk-live-123",
            "sk-live-123",
        ),
        // A key given where its variable's name belongs.
        (
            "--model",
            "gpt=https://api.example/v1,key_env=sk-live-456",
            "sk-live-456",
        ),
        ("--session-token", "s1=", "s1="),
    ] {
        let out = run_cli("http://127.0.0.1:9", None, &["serve", flag, value], None).await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.contains(flag) && !out.stderr.contains(secret),
            "{}",
            out.stderr
        );
    }

    // A token before `serve` would not reach it: refused, not ignored.
    let out = tokio::process::Command::new(BIN)
        .args([
            "--token",
            "secret",
            "serve",
            "--db",
            "memory",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cairn");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("client options"));

    // `completions` takes no client options (`--server`): run bare.
    for shell in ["bash", "zsh", "fish"] {
        let out = into_stdout(None, &["completions", shell], Stdio::piped()).await;
        let script = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(script.contains("cairn") && script.contains("schedule"), "{script}");
        assert!(!script.contains("bench-child"), "{shell} offers a hidden command");
        if shell == "bash" {
            assert!(script.contains("complete -F"), "{script}");
        }
    }

    // A server without --allow-shell says how to get `shell`.
    let no_shell = Server::serve(&["--db", "memory", "--listen", "127.0.0.1:0"]).await;
    // `run` from a directory it cannot read (removed since) refuses, rather
    // than leave the command to the server's own directory.
    let gone = tempfile::tempdir().expect("tempdir");
    let out = tokio::process::Command::new("sh")
        .args([
            "-c",
            r#"cd "$1" && rmdir "$1" && exec "$2" --server "$3" run -- pwd"#,
            "sh",
        ])
        .arg(gone.path())
        .args([BIN, &no_shell.base])
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("in time")
        .expect("ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pass --cwd"), "{stderr}");
    let (_, listed) = no_shell.client().get("/v1/processes?status=any").await;
    assert_eq!(listed["processes"], json!([]), "nothing started: {listed}");
    let out = run_cli(&no_shell.base, None, &["run", "--", "true"], None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("unknown_tool"), "{}", out.stderr);
    // The server's message says how to get `shell`, once: no hint repeats it.
    assert!(
        out.stderr
            .contains("`cairn serve --allow-shell` offers the `shell` tool"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("--allow-shell").count(), 1, "{}", out.stderr);

    // A server address with a path after it (copied from a route or the
    // dashboard) reaches cairn, which has no such route: the hint says why.
    for path in ["/v1", "/ui"] {
        let out = run_cli(&format!("{}{path}", no_shell.base), None, &["ls"], None).await;
        assert_eq!(out.code, 1, "{path}: {}", out.stderr);
        assert!(out.stderr.contains("with no path after it"), "{path}: {}", out.stderr);
    }

    // A server that is not there: exit 1 and a hint, at once, also for a
    // stream that never opened (resuming is for one that broke).
    for args in [&["ls"][..], &["events", "x", "--follow"][..]] {
        let started = Instant::now();
        let out = run_cli("http://127.0.0.1:9", None, args, None).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("hint: is `cairn serve` running at http://127.0.0.1:9?"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} retried");
    }
}

/// A client whose reader went away (`cairn completions bash | head -1`) ends
/// quietly on the closed pipe, as other command-line tools do: no panic, no
/// backtrace, no exit status 101, but 141, as `cairn run` answers it.
#[test]
fn a_closed_pipe_ends_a_client_command_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(BIN)
        .args(["completions", "bash"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run cairn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), stderr.as_ref()),
        (Some(141), ""),
        "{:?}",
        out.status
    );
}

/// `cairn ARGS` (against `base`, when given) with its stdout `stdout` and no input.
async fn into_stdout(base: Option<&str>, args: &[&str], stdout: Stdio) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    if let Some(base) = base {
        cmd.arg("--server").arg(base);
    }
    cmd.args(args)
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    // Not `output()`, which pipes stdout itself.
    let child = cmd.spawn().expect("spawn cairn");
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("cairn exited in time")
        .expect("run cairn")
}

/// A command whose output cannot be written says so and fails, instead of
/// panicking (exit 101): to a full disk (`> /dev/full`), exit 1 and the
/// error on stderr (one line of JSON with `--json`); to a reader gone (a
/// closed pipe), quietly 141, as `cairn run` answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_written_fails_without_a_panic() {
    let server = Server::start(&[]).await;
    let start = json!({"id": "w1", "disposition": "externally_owned", "input": {"type": "external"},
                       "event_types": [{"name": "progress"}]});
    let setup: [&[&str]; 3] = [
        &["start", &start.to_string()],
        &["append", "w1", "progress", "--payload", "{\"step\": 1}"],
        &[
            "schedule",
            "add",
            "s1",
            "--every",
            "1h",
            "{\"input\": {\"type\": \"external\"}, \"disposition\": \"externally_owned\"}",
        ],
    ];
    for args in setup {
        let out = server.cli(args, None).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }
    let base = Some(server.base.as_str());
    let commands: [(Option<&str>, &[&str]); 10] = [
        (base, &["ls", "--status", "any"]),
        (base, &["--json", "ls"]),
        (base, &["get", "w1"]),
        (base, &["--json", "get", "w1"]),
        (base, &["events", "w1"]),
        (base, &["events", "w1", "--follow"]),
        (base, &["schedule", "ls"]),
        (base, &["module", "ls"]),
        (None, &["completions", "bash"]),
        (None, &["--help"]),
    ];
    for (base, args) in commands {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = into_stdout(base, args, Stdio::from(full)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        if args[0] == "--json" {
            let said: Value = serde_json::from_str(stderr.trim()).expect("--json errors are JSON");
            assert_eq!(said["error"]["code"], "output", "{args:?}: {said}");
            assert_eq!(said["error"]["exit_code"], 1, "{args:?}: {said}");
        } else {
            assert_eq!(
                stderr.trim(),
                "error: cannot write to stdout: No space left on device (os error 28)",
                "{args:?}"
            );
        }
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = into_stdout(base, args, Stdio::from(writer)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!((out.status.code(), stderr.as_ref()), (Some(141), ""), "{args:?}");
    }
}

/// `cairn run` whose output cannot be written (a full disk) cancels its
/// process, as it does when its output closes, and says why with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_output_is_full_cancels_its_process() {
    let server = Server::start(&[]).await;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let args = ["run", "--id", "full", "--", "sh", "-c", "echo hi; sleep 30"];
    let out = into_stdout(Some(&server.base), &args, Stdio::from(full)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cancelled full: `cairn run` was stopped (its output could not be written)")
            && stderr.contains("error: cannot write to stdout: No space left on device"),
        "{stderr}"
    );
    let record = server.client().wait_for("full", |r| r["status"] != "running").await;
    assert_eq!(record["status"], "cancelled", "{record}");
}

/// `cairn run ... | head -1`: the reader going away while the command is
/// quiet cancels the process at once, and `run` exits 141, without waiting
/// for a next line of output to find the pipe closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_reader_leaves_while_it_is_quiet_cancels_it() {
    use std::io::BufRead;
    let server = Server::start(&[]).await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args([
        "--server",
        &server.base,
        "run",
        "--id",
        "quiet",
        "--",
        "sh",
        "-c",
        "echo a; sleep 120",
    ])
    .env_remove("CAIRN_TOKEN")
    .stdin(Stdio::null())
    .stdout(writer)
    .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn cairn");
    // Only the child holds the write end now.
    drop(cmd);
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(reader).read_line(&mut line).expect("read");
        line
    })
    .await
    .expect("reader");
    assert_eq!(first, "a\n");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("cairn exited before the command would have")
        .expect("run cairn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(
        stderr.contains("cancelled quiet: `cairn run` was stopped (its output was closed)"),
        "{stderr}"
    );
    let record = server.client().wait_for("quiet", |r| r["status"] != "running").await;
    assert_eq!(record["status"], "cancelled", "{record}");
}

/// A command line clap refuses is, under `--json` (anywhere in it), one
/// line of JSON on stderr with the client's `usage` code and exit 2, as the
/// client's own usage errors are; `--help` and `--version` print as ever.
#[test]
fn a_command_line_refused_under_json_is_a_json_usage_error() {
    for (args, said) in [
        (&["--json", "ls", "--bogus"][..], "unexpected argument '--bogus'"),
        (&["ls", "--bogus", "--json"], "unexpected argument '--bogus'"),
        (&["--json", "get"], "<ID>"),
        (&["--json", "await", "x", "--timeout", "7"], "`7` has no unit"),
        (
            &["--json", "schedule", "add", "m", "--every", "7", "{}"],
            "`7` has no unit",
        ),
        (&["--json", "ls", "--limit", "0"], "must be at least 1"),
        (
            &["--json", "schedule"],
            "a subcommand is needed: one of add, ls, get, rm, pause, resume",
        ),
        (&["schedule", "--json"], "a subcommand is needed: one of add, ls"),
    ] {
        let stderr = usage_error(args);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let error: Value = serde_json::from_str(&stderr).unwrap_or_else(|e| panic!("{args:?}: {e}: {stderr}"));
        assert_eq!(
            (&error["error"]["code"], &error["error"]["exit_code"]),
            (&json!("usage"), &json!(2)),
            "{args:?}: {error}"
        );
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(said), "{args:?}: {error}");
        assert!(
            !message.contains("error:") && !message.contains('\n'),
            "{args:?}: {error}"
        );
    }
    // A missing argument's usage is the hint: the command's, as its help
    // gives it.
    let error: Value = serde_json::from_str(&usage_error(&["--json", "get"])).expect("JSON");
    assert_eq!(error["error"]["hint"], "usage: cairn get [OPTIONS] <ID>", "{error}");
    // So is a refused value's, which clap says without a usage.
    for (args, usage) in [
        (&["--json", "ls", "--limit", "0"][..], "usage: cairn ls [OPTIONS]"),
        (&["--json", "ls", "--waiting", "yes"][..], "usage: cairn ls [OPTIONS]"),
        (&["--json", "complete", "ci-7", "--value"][..], "usage: cairn complete"),
        (
            &["schedule", "--json", "add", "s", "--every", "5"][..],
            "usage: cairn schedule add",
        ),
    ] {
        let error: Value = serde_json::from_str(&usage_error(args)).expect("JSON");
        let hint = error["error"]["hint"].as_str().unwrap_or_default();
        assert!(hint.starts_with(usage), "{args:?}: {error}");
    }
    // Not a client command: clap's own words.
    let stderr = usage_error(&["--json", "serve", "--bogus"]);
    assert!(stderr.starts_with("error: unexpected argument '--bogus'"), "{stderr}");
    for (args, shown) in [
        (&["--json", "ls", "--help"][..], "Usage: cairn ls"),
        (&["--json", "--version"], "cairn "),
    ] {
        let out = cairn(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            (out.status.code(), out.stderr.as_slice()),
            (Some(0), &b""[..]),
            "{args:?}"
        );
        assert!(stdout.contains(shown), "{args:?}: {stdout}");
    }
}

/// `cairn ARGS`, run to its end with nothing on stdin.
fn cairn(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

/// Run `cairn ARGS` against a server nobody listens on, with no input:
/// assert it is a usage error (exit 2) that prints nothing on stdout, and
/// answer what it said on stderr.
fn usage_error(args: &[&str]) -> String {
    let out = cairn(&[&["--server", "http://127.0.0.1:9"][..], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    stderr
}

/// JSON where a name goes, or a bare word where JSON goes, is refused
/// before the server is asked, saying where the JSON goes or how a string
/// is written.
#[test]
fn json_in_the_wrong_place_says_where_it_goes() {
    for (args, said) in [
        (
            &["signal", "sig-1", r#"{"by":"alice"}"#][..],
            r#"the signal name `{"by":"alice"}` looks like JSON: the payload goes in --payload '...' (`cairn --server http://127.0.0.1:9 signal sig-1 NAME --payload '{"by":"alice"}'`)"#,
        ),
        (
            &["append", "ext-2", r#"{"x":1}"#],
            r#"the event type `{"x":1}` looks like JSON: the payload goes in --payload '...' (`cairn --server http://127.0.0.1:9 append ext-2 TYPE --payload '{"x":1}'`)"#,
        ),
        (&["append", "ext-2", "[1]"], "the event type `[1]` looks like JSON"),
        (
            &["signal", "sig-1", "go", r#"{"by":"alice"}"#],
            r#"unexpected argument `{"by":"alice"}`: a payload goes in --payload (`cairn --server http://127.0.0.1:9 signal sig-1 go --payload '{"by":"alice"}'`)"#,
        ),
        (
            &["append", "ext-2", "progress", "half"],
            "unexpected argument `half`: a payload goes in --payload (`cairn --server http://127.0.0.1:9 append ext-2 progress --payload '\"half\"'`)",
        ),
        (
            &["complete", "ext-2", "--value", "green"],
            r#"--value is not JSON: expected value at line 1 column 1; a string is quoted as JSON: --value '"green"'"#,
        ),
        (
            &["signal", "sig-1", "go", "--payload", "yes please"],
            r#"a string is quoted as JSON: --payload '"yes please"'"#,
        ),
        (
            &["append", "ext-2", "progress", "--payload", "half-way"],
            r#"--payload '"half-way"'"#,
        ),
        (
            &["complete", "ext-2", "--outcome", "green"],
            r#"--outcome is not JSON: expected value at line 1 column 1; a string is quoted as JSON: --value '"green"'"#,
        ),
    ] {
        let stderr = usage_error(args);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    // JSON that is broken is not taken for a word.
    let stderr = usage_error(&["complete", "ext-2", "--value", "{green}"]);
    assert!(!stderr.contains("quoted as JSON"), "{stderr}");
    // Months and years get the advice to use cron, not a list of units.
    for every in ["1mo", "1months", "2 yrs"] {
        let stderr = usage_error(&["schedule", "add", "s1", "--every", every, "{}"]);
        assert!(
            stderr.contains("drift from the calendar") && !stderr.contains("supported units"),
            "{every}: {stderr}"
        );
    }
}

/// `--limit 0` asks for nothing: a usage error, not an empty table.
#[test]
fn a_limit_of_zero_is_a_usage_error() {
    for args in [&["ls", "--limit", "0"][..], &["changes", "--limit", "0"][..]] {
        let stderr = usage_error(args);
        assert!(stderr.contains("at least 1"), "{args:?}: {stderr}");
    }
}

/// A number flag refuses what is no integer, or too large an one, in words
/// naming the flag, not in Rust's ("invalid digit found in string").
#[test]
fn a_number_flag_refuses_a_value_in_words() {
    for (args, said) in [
        (
            &["ls", "--limit", "x"][..],
            "`--limit` takes a non-negative integer, got `x`",
        ),
        (
            &["ls", "--limit", "1.0"],
            "`--limit` takes a non-negative integer, got `1.0`",
        ),
        (&["ls", "--limit", "0"], "`--limit` must be at least 1, got `0`"),
        (
            &["changes", "--cursor", "x"],
            "`--cursor` takes a non-negative integer, got `x`",
        ),
        (
            &["events", "p", "--after=-1"],
            "`--after` takes a non-negative integer, got `-1`",
        ),
        (
            &["prune", "--older-than", "7d", "--watermark", "99999999999999999999"],
            "`--watermark` takes a non-negative integer, got `99999999999999999999`: \
             over the largest accepted value (9223372036854775807)",
        ),
        (
            &["serve", "--workers", "x"],
            "`--workers` takes a non-negative integer, got `x`",
        ),
        (
            &["bench", "--workers", "1,x"],
            "`--workers` takes a non-negative integer, got `x`",
        ),
    ] {
        let stderr = usage_error(args);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("digit") && !stderr.contains("target type"),
            "{args:?}: {stderr}"
        );
    }
    // A value from the environment is named by its variable.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--db", "memory"])
        .env("CAIRN_WORKERS", "many")
        .stdin(Stdio::null())
        .output()
        .expect("run cairn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`CAIRN_WORKERS` (the environment's `--workers`) takes a non-negative integer, got `many`"),
        "{stderr}"
    );
    // `--json` says it as the other usage errors.
    let stderr = usage_error(&["--json", "ls", "--limit", "x"]);
    let doc: Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert_eq!(
        doc["error"]["message"], "`--limit` takes a non-negative integer, got `x`",
        "{doc}"
    );
}

/// Client options without a command is a usage error that lists the
/// commands a user runs, not the hidden one the bench starts itself.
#[test]
fn options_without_a_command_list_the_commands_but_not_hidden_ones() {
    for args in [&["--json"][..], &["--token", "t"][..]] {
        let stderr = usage_error(args);
        assert!(stderr.contains("a command is needed"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("serve") && stderr.contains("schedule"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("bench-child"), "{args:?}: {stderr}");
    }
    // A command's own subcommand missing is said of that command (with
    // nothing after it, clap shows the command's help).
    let stderr = usage_error(&["schedule", "--token", "t"]);
    assert!(stderr.contains("'cairn schedule' requires a subcommand"), "{stderr}");
    let stderr = usage_error(&["--token", "t", "module"]);
    assert!(stderr.contains("Usage: cairn module"), "{stderr}");
    // The same under another file name (a renamed or linked binary).
    let dir = tempfile::tempdir().expect("dir");
    let renamed = dir.path().join("cairn 1.2");
    std::fs::copy(BIN, &renamed).expect("copy");
    let out = std::process::Command::new(&renamed)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run the copy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a command is needed") && !stderr.contains("bench-child"),
        "{stderr}"
    );
}

/// `cairn mcp` prints the protocol's own JSON-RPC: `--json`, before or
/// after the command, is a usage error that says so, not a flag ignored.
#[test]
fn mcp_refuses_json_output() {
    for args in [&["mcp", "--json"][..], &["--json", "mcp"][..]] {
        let stderr = usage_error(args);
        assert!(stderr.contains("`--json` does not apply"), "{args:?}: {stderr}");
    }
}

/// `schedule add` without a cron or an interval names both ways to give one.
#[test]
fn schedule_add_without_a_timing_names_both() {
    let stderr = usage_error(&["schedule", "add", "q1", "{}"]);
    assert!(stderr.contains("--cron") && stderr.contains("--every"), "{stderr}");
}

/// A `--server` that is not an http(s) URL is a usage error that says so.
#[test]
fn a_server_that_is_not_a_url_is_a_usage_error() {
    for server in ["nonsense", "127.0.0.1:7070", "ftp://127.0.0.1"] {
        let out = std::process::Command::new(BIN)
            .args(["--server", server, "ls"])
            .stdin(Stdio::null())
            .output()
            .expect("run cairn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{server}: {stderr}");
        assert!(
            stderr.contains("is not an http:// or https:// URL"),
            "{server}: {stderr}"
        );
    }
    // Given by the environment, it is named as the environment's too.
    let out = std::process::Command::new(BIN)
        .arg("ls")
        .env("CAIRN_SERVER", "localhost:7070")
        .stdin(Stdio::null())
        .output()
        .expect("run cairn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CAIRN_SERVER"), "{stderr}");
}

/// `--disposition` takes the wire spelling `owner_bound` as well as the
/// flag's `owner-bound`.
#[test]
fn run_takes_either_spelling_of_owner_bound() {
    for spelling in ["owner-bound", "owner_bound", "rerunnable"] {
        let out = std::process::Command::new(BIN)
            .args([
                "--server",
                "http://127.0.0.1:9",
                "run",
                "--disposition",
                spelling,
                "--",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run cairn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("invalid value"), "{spelling}: {stderr}");
        assert!(stderr.contains("is `cairn serve` running"), "{spelling}: {stderr}");
    }
}

/// `module ls` lists every module, across as many pages as the server has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_ls_reads_every_page() {
    let server = Server::start(&[]).await;
    let c = server.client();
    // One more than the client's page of 1,000.
    let stored: Vec<(u16, serde_json::Value)> = futures::future::join_all((0..1001).map(|i| {
        let c = c.clone();
        async move {
            c.post(
                "/v1/modules",
                json!({ "source": format!("export async function f() {{ return {i}; }}") }),
            )
            .await
        }
    }))
    .await;
    assert!(stored.iter().all(|(s, _)| *s == 201), "every module stored");
    let out = run_cli(&server.base, None, &["--json", "module", "ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    let mut listed: Vec<&str> = doc["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .map(|m| m["module_ref"].as_str().expect("ref"))
        .collect();
    assert_eq!(listed.len(), 1001, "every module listed once");
    listed.dedup();
    assert_eq!(listed.len(), 1001, "no module listed twice");
    let out = run_cli(&server.base, None, &["module", "ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1002, "a header and a row per module");
}

/// `module ls` keeps a module of many exports to a short cell (every row is
/// padded to the widest), and `module get` still names each export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_ls_keeps_a_long_export_list_short() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let source: String = (0..500)
        .map(|i| format!("export async function export_{i}() {{ return {i}; }}\n"))
        .collect();
    let (status, stored) = c.post("/v1/modules", json!({ "source": source })).await;
    assert_eq!(status, 201, "{stored}");
    let (status, _) = c
        .post("/v1/modules", json!({ "source": "export async function a() {}\n" }))
        .await;
    assert_eq!(status, 201);
    let out = run_cli(&server.base, None, &["module", "ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines.iter().all(|l| l.chars().count() < 200), "{}", out.stdout);
    let long = lines
        .iter()
        .find(|l| l.contains("export_0"))
        .expect("the long module's row");
    assert!(long.contains("more"), "{long}");
    assert!(
        lines
            .iter()
            .skip(1)
            .any(|l| !l.contains("export_0") && !l.contains("more")),
        "a short list is shown whole: {}",
        out.stdout
    );
    let module_ref = stored["module_ref"].as_str().expect("ref");
    let out = run_cli(&server.base, None, &["module", "get", module_ref], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("export_499"), "get names every export");
}

/// A module is stored once, with the name it was first given: putting the
/// same source again under another name says the name was not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_given_to_a_module_stored_already_is_said_not_applied() {
    let server = Server::start(&[]).await;
    let source = "export async function f(ctx) { return 1; }\n";
    let first = run_cli(&server.base, None, &["module", "put", "-"], Some(source)).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.starts_with("stored "), "{}", first.stdout);
    assert!(!first.stderr.contains("not applied"), "{}", first.stderr);
    let again = run_cli(
        &server.base,
        None,
        &["module", "put", "-", "--name", "mine.js"],
        Some(source),
    )
    .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.starts_with("already stored "), "{}", again.stdout);
    assert!(
        again
            .stderr
            .contains("the name `mine.js` was not applied: this source was stored already, without a name"),
        "{}",
        again.stderr
    );
    // The same name again is no news.
    let named = "export async function g(ctx) { return 2; }\n";
    for _ in 0..2 {
        let out = run_cli(
            &server.base,
            None,
            &["module", "put", "-", "--name", "g.js"],
            Some(named),
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(!out.stderr.contains("not applied"), "{}", out.stderr);
    }
}

/// An empty `ls` says that it lists running processes only, and how to see
/// the ended ones; with `--status` given, an empty table says nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_ls_says_it_shows_running_processes_only() {
    let server = Server::start(&[]).await;
    let out = server.cli(&["ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("ID"), "{}", out.stdout);
    assert!(out.stderr.contains("`--status any`"), "{}", out.stderr);
    let out = server.cli(&["ls", "--status", "any"], None).await;
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let out = server.cli(&["--json", "ls"], None).await;
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "JSON stays quiet");
}

/// What ends a command run in a terminal ends it under `cairn run` too: the
/// reader of its output going away (`| head`), SIGTERM (`timeout`, a CI job
/// stopping) and SIGHUP (the terminal closing) cancel the process, and `run`
/// exits 128 + the signal, instead of leaving the command running unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_a_closed_pipe_or_a_signal_cancels_its_process() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let loop_forever = ["sh", "-c", "while :; do echo y; sleep 0.01; done"];
    // The reader goes away after one line.
    let mut args = vec!["run", "--id", "piped", "--"];
    args.extend(loop_forever);
    let mut run = Running::spawn(&server.base, &args);
    let mut stdout = BufReader::new(run.child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("a line in time")
        .expect("read");
    assert_eq!(first.as_deref(), Some("y"));
    drop(stdout);
    let record = c.wait_for("piped", |r| r["status"] != "running").await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(run.exit_code().await, 141);
    // Signals.
    for (id, signal, code) in [("termed", libc::SIGTERM, 143), ("hung-up", libc::SIGHUP, 129)] {
        let mut args = vec!["run", "--id", id, "--"];
        args.extend(loop_forever);
        let mut run = Running::spawn(&server.base, &args);
        run.stderr_line(&format!("started {id}")).await;
        let pid = run.child.id().expect("running") as libc::pid_t;
        // SAFETY: sending a signal to our own child process by its pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let said = run.stderr_line(&format!("cancelled {id}")).await;
        assert!(said.contains("was stopped"), "{said}");
        assert_eq!(run.exit_code().await, code, "{id}");
        let record = c.wait_for(id, |r| r["status"] != "running").await;
        assert_eq!(record["status"], "cancelled", "{record}");
    }
}

/// A `cairn run` whose stderr is closed (its reader gone) takes it as its
/// output closing: it cancels its process and exits 141, instead of
/// panicking on its first line and leaving the command running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_into_a_closed_stderr_cancels_its_process() {
    let server = Server::start(&[]).await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let status = tokio::process::Command::new(BIN)
        .args([
            "--server",
            &server.base,
            "run",
            "--id",
            "no-stderr",
            "--",
            "sleep",
            "30",
        ])
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("cairn exited in time")
        .expect("run cairn");
    assert_eq!(status.code(), Some(141), "{status:?}");
    let record = server
        .client()
        .wait_for("no-stderr", |r| r["status"] != "running")
        .await;
    assert_eq!(record["status"], "cancelled", "{record}");
}

/// A server that stops answering does not leave `cairn run` deaf to the
/// signal that stops it: the cancel request it sends is given a few
/// seconds, and `run` exits 143 saying the process may still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_while_its_server_is_frozen_still_exits() {
    let server = Server::start(&[]).await;
    let mut run = Running::spawn(&server.base, &["run", "--id", "frozen", "--", "sleep", "60"]);
    run.stderr_line("started frozen").await;
    server.freeze().await;
    let pid = run.child.id().expect("running") as libc::pid_t;
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let said = run.stderr_line("could not cancel frozen").await;
    server.thaw();
    assert!(
        said.contains("may") && said.contains(&format!("`cairn --server {} cancel frozen`", server.base)),
        "{said}"
    );
    assert_eq!(run.exit_code().await, 143);
    let _ = server.client().post("/v1/processes/frozen/cancel", json!({})).await;
}

/// JSON read from `@FILE` or stdin may begin with a UTF-8 byte-order mark
/// (some editors write one): one is dropped, as the HTTP API drops it, for
/// a start request, a schedule's template and a JSON flag's value alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_from_a_file_or_stdin_may_begin_with_a_byte_order_mark() {
    const BOM: &str = "\u{feff}";
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, json: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{BOM}{json}")).expect("write");
        format!("@{}", path.to_str().expect("utf-8"))
    };
    let external = |id: &str| {
        json!({"id": id, "disposition": "externally_owned", "input": {"type": "external"},
               "event_types": [{"name": "progress"}]})
    };
    let start = file("start.json", &external("bom-file"));
    let out = server.cli(&["start", &start], None).await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "started bom-file (running)"),
        "{}",
        out.stderr
    );
    let out = server
        .cli(&["start"], Some(&format!("{BOM}{}", external("bom-stdin"))))
        .await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "started bom-stdin (running)"),
        "{}",
        out.stderr
    );

    let payload = file("payload.json", &json!({"p": 50}));
    let out = server
        .cli(&["append", "bom-file", "progress", "--payload", &payload], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server
        .cli(
            &["signal", "bom-file", "go", "--payload", "-"],
            Some(&format!("{BOM}{{\"by\": \"a\"}}")),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, events) = server.client().get("/v1/processes/bom-file/events").await;
    let payloads: Vec<(&Value, &Value)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| matches!(e["event_type"].as_str(), Some("progress" | "signal.go")))
        .map(|e| (&e["event_type"], &e["payload"]))
        .collect();
    assert_eq!(
        payloads,
        [
            (&json!("progress"), &json!({"p": 50})),
            (&json!("signal.go"), &json!({"by": "a"}))
        ],
        "{events}"
    );

    let value = file("value.json", &json!({"green": true}));
    let out = server.cli(&["complete", "bom-file", "--value", &value], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, record) = server.client().get("/v1/processes/bom-file").await;
    assert_eq!(record["outcome"]["value"], json!({"green": true}), "{record}");
    let outcome = file("outcome.json", &json!({"type": "cancelled", "message": "m"}));
    let out = server
        .cli(&["complete", "bom-stdin", "--outcome", &outcome], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let template = file(
        "template.json",
        &json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}}, "disposition": "rerunnable"}),
    );
    let out = server
        .cli(&["schedule", "add", "bom", "--every", "1h", &template], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, schedule) = server.client().get("/v1/schedules/bom").await;
    assert_eq!(schedule["start"]["input"]["args"]["value"], 1, "{schedule}");

    // One mark only: a second is no JSON.
    let out = server
        .cli(
            &["append", "bom-stdin", "progress", "--payload", "-"],
            Some(&format!("{BOM}{BOM}1")),
        )
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--payload (stdin) is not JSON"), "{}", out.stderr);
}

/// JSON given on the command line is taken as written: a key given twice is
/// refused (exit 2, nothing started) rather than quietly read as its last
/// value, and the server's complaint about a start points at the line the
/// caller wrote, not at a re-encoded body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_arguments_are_taken_as_written() {
    let server = Server::start(&[]).await;
    let twice = r#"{"id":"dup","id":"dup2","disposition":"rerunnable","input":{"type":"tool_call","tool":"echo","args":{"value":1}}}"#;
    let out = server.cli(&["start", twice], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("given twice"), "{}", out.stderr);
    for id in ["dup", "dup2"] {
        assert_eq!(server.client().get(&format!("/v1/processes/{id}")).await.0, 404, "{id}");
    }
    let typo = "{\n  \"id\": \"t1\",\n  \"dispositon\": \"rerunnable\",\n  \"input\": {\"type\": \"external\"}\n}";
    let out = server.cli(&["start", typo], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("dispositon") && out.stderr.contains("line 3"),
        "{}",
        out.stderr
    );
}

/// `run --id X` again from another directory is a different run under the
/// same id: refused, saying what differs and what to do, not a bare 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_an_id_started_elsewhere_says_what_differs() {
    let server = Server::start(&[]).await;
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let run_in = |dir: &std::path::Path| {
        let dir = dir.to_path_buf();
        let base = server.base.clone();
        async move {
            tokio::process::Command::new(BIN)
                .args(["--server", &base, "run", "--id", "here", "--", "true"])
                .current_dir(dir)
                .env_remove("CAIRN_TOKEN")
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run cairn")
        }
    };
    let first = run_in(a.path()).await;
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = run_in(b.path()).await;
    let said = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(
        said.contains("started with a different directory (cwd)") && said.contains("new --id"),
        "{said}"
    );
    assert!(!said.contains("command"), "the command is the same: {said}");
}

/// A start request that is empty (stdin with nothing on it) or the name of
/// a file says so and how to give it, rather than "EOF while parsing".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_file_named_start_request_says_how_to_give_it() {
    let server = Server::start(&[]).await;
    let out = server.cli(&["start"], Some("")).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("is empty") && out.stderr.contains("- < FILE"),
        "{}",
        out.stderr
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("start.json");
    std::fs::write(&file, "{}").expect("write");
    let name = file.to_str().expect("utf-8").to_string();
    let out = server.cli(&["start", &name], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("is a file")
            && out.stderr.contains(&format!("`@{name}`"))
            && out.stderr.contains(&format!("- < {name}")),
        "{}",
        out.stderr
    );
    // `@FILE` reads it, as a JSON flag's value; a file that cannot be read
    // is said, and a schedule's template is read the same way.
    let body = common::tool_start("from-file", "echo", json!({"value": 1}), "rerunnable").to_string();
    std::fs::write(&file, &body).expect("write");
    let out = server.cli(&["start", &format!("@{name}")], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "started from-file (running)");
    let out = server.cli(&["start", "@/no/such/file"], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the start request @/no/such/file: cannot read `/no/such/file`"),
        "{}",
        out.stderr
    );
    let template =
        json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}}, "disposition": "rerunnable"});
    std::fs::write(&file, template.to_string()).expect("write");
    let out = server
        .cli(
            &["schedule", "add", "from-file", "--every", "1h", &format!("@{name}")],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, schedule) = server.client().get("/v1/schedules/from-file").await;
    assert_eq!(schedule["start"]["input"]["args"]["value"], 1, "{schedule}");
}

/// `nohup cairn run ...` keeps its run through a hangup: a signal the caller
/// set to be ignored stays ignored (no handler replaces the ignore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_under_nohup_keeps_ignoring_hangups() {
    use std::os::unix::process::CommandExt;
    let server = Server::start(&[]).await;
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--server", &server.base, "run", "--id", "nohup", "--", "sleep", "30"])
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: `signal` is async-signal-safe; the closure runs in the child
    // between fork and exec, setting what `nohup` sets.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            // What a shell sets for a background job.
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.expect("read") {
            if line.contains("started nohup") {
                return line;
            }
        }
        panic!("stderr closed before `started nohup`");
    })
    .await
    .expect("started in time");
    assert!(started.contains("nohup"));
    // The run is following: its signal handlers are in place. SIGHUP is
    // still ignored, not caught.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().expect("pid"))).expect("status");
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    let hup = 1u64 << (libc::SIGHUP - 1);
    assert_ne!(mask("SigIgn:") & hup, 0, "SIGHUP is still ignored");
    assert_eq!(mask("SigCgt:") & hup, 0, "SIGHUP is not caught");
    let int = 1u64 << (libc::SIGINT - 1);
    assert_ne!(mask("SigIgn:") & int, 0, "SIGINT is still ignored");
    assert_eq!(mask("SigCgt:") & int, 0, "SIGINT is not caught");
    let term = 1u64 << (libc::SIGTERM - 1);
    assert_ne!(
        mask("SigCgt:") & term,
        0,
        "SIGTERM is caught: the handlers are in place"
    );
    let _ = child.kill().await;
    let _ = server.client().post("/v1/processes/nohup/cancel", json!({})).await;
}

/// `cairn ARGS` against `base` with its stdout a pipe whose reader is gone.
async fn into_closed_pipe(base: &str, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    tokio::process::Command::new(BIN)
        .arg("--server")
        .arg(base)
        .args(args)
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        // Not `output()`, which pipes stdout itself.
        .spawn()
        .expect("spawn cairn")
        .wait_with_output()
        .await
        .expect("run cairn")
}

/// `cairn run --detach` whose output is already closed ends quietly, as
/// other commands do, not with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_run_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let server = Server::start(&[]).await;
    let out = into_closed_pipe(&server.base, &["run", "--detach", "--id", "detached", "--", "true"]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("panicked"), "{said}");
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.code() == Some(141),
        "{:?}: {said}",
        out.status
    );
}

/// `cairn run --id X` of an `X` that ended, replaying its output into a pipe
/// whose reader is gone, ends without a word about cancelling: nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_run_into_a_closed_pipe_says_nothing_of_cancelling() {
    let server = Server::start(&[]).await;
    let args = ["run", "--id", "done", "--", "sh", "-c", "seq 1 20000"];
    let first = server.cli(&args, None).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let out = into_closed_pipe(&server.base, &args).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("may still run") && !said.contains("cancel"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

/// A proxy named in the environment is not used for a server on this
/// machine: it would be sent the requests and the bearer token in clear,
/// and could not reach a loopback address of this machine anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_the_environment_is_not_used_for_a_loopback_server() {
    let server = Server::start(&["--token", "host-secret"]).await;
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_url = format!("http://{}", proxy.local_addr().expect("addr"));
    let ls = tokio::process::Command::new(BIN)
        .args(["--server", &server.base, "ls"])
        .env("CAIRN_TOKEN", "host-secret")
        .env("http_proxy", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // A proxy that takes the connection and never answers holds `ls`.
    let out = tokio::time::timeout(Duration::from_secs(20), ls)
        .await
        .expect("cairn ls went to the proxy, which never answers")
        .expect("run cairn ls");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reached = tokio::time::timeout(Duration::from_millis(1), proxy.accept()).await;
    assert!(reached.is_err(), "the proxy was sent the request");
}

/// A cancel repeated with the same reason while the process runs records
/// nothing and says so; another reason is a new request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_cancel_of_a_running_process_says_it_changed_nothing() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ext = json!({"id": "ext", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    assert_eq!(c.start(ext).await.0, 201);
    let cancel = |reason: &'static str| {
        let base = server.base.clone();
        async move { run_cli(&base, None, &["cancel", "ext", "--reason", reason], None).await }
    };
    let out = cancel("enough").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "cancellation requested: ext is running");
    let out = cancel("enough").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "a cancellation with this reason was already requested for ext; this one changed nothing: ext is running"
    );
    let out = cancel("another").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "cancellation requested: ext is running");
    let (_, page) = c.get("/v1/processes/ext/events").await;
    let requests = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "process.cancel_requested")
        .count();
    assert_eq!(requests, 2, "{page}");
}

/// An abandon request repeated with another reason changes nothing (the
/// first stands), and `cairn abandon` says so instead of "requested".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_abandon_request_says_the_first_stands() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let held = json!({"id": "held", "input": {"type": "tool_call", "tool": "sleep", "args": {"ms": 600000}},
                      "disposition": "owner_bound"});
    assert_eq!(c.start(held).await.0, 201);
    c.wait_for("held", |r| r["lease"].is_object()).await;
    let out = run_cli(
        &server.base,
        None,
        &["abandon", "held", "--reason", "host lost", "--requested-by", "alice"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "abandon requested: held is running (reconciled once its lease lapses)"
    );
    let out = run_cli(
        &server.base,
        None,
        &["abandon", "held", "--reason", "other\u{1b}"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "an abandon request was already recorded for held (reason: host lost, by alice); this one changed nothing"
    );
    // The same reason again records nothing either, and says so.
    let again = ["abandon", "held", "--reason", "host lost"];
    let out = run_cli(&server.base, None, &again, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "an abandon request with this reason was already recorded for held; this one changed nothing: held is \
         running (reconciled once its lease lapses)"
    );
    let (_, rec) = c.get("/v1/processes/held").await;
    assert_eq!(rec["abandon_request"]["reason"], "host lost");
    let (_, events) = c.get("/v1/processes/held/events").await;
    let requests = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "process.abandon_requested")
        .count();
    assert_eq!(requests, 1, "{events}");
    // Ended otherwise before its request took effect: the repeat says so.
    let (s, _) = c.post("/v1/processes/held/cancel", json!({})).await;
    assert_eq!(s, 200);
    c.wait_for("held", |r| r["status"] == "cancelled").await;
    let out = run_cli(&server.base, None, &again, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "held had already ended (cancelled); this repeats the abandon request recorded before it ended, and \
         changed nothing"
    );
    // Abandoned by its request: a retry of it says so, not "requested".
    let ext = json!({"id": "gone", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(ext).await.0, 201);
    let first = ["abandon", "gone", "--reason", "owner lost"];
    let out = run_cli(&server.base, None, &first, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("abandon requested: gone"), "{}", out.stdout);
    c.wait_for("gone", |r| r["status"] == "abandoned").await;
    let out = run_cli(&server.base, None, &first, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "gone was already abandoned: this repeats the request that abandoned it"
    );
}

/// `cairn cancel` of a process that had ended says the request went to its
/// running children, not "cancellation requested: … is completed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_ended_parent_says_it_reached_its_children() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let par = json!({"id": "par", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(par).await.0, 201);
    let kid = json!({"id": "par-kid", "input": {"type": "tool_call", "tool": "wait_signal", "args": {"name": "go"}},
                     "disposition": "rerunnable", "caused_by": {"process_id": "par"}});
    assert_eq!(c.start(kid).await.0, 201);
    let (s, _) = c
        .post(
            "/v1/processes/par/complete",
            json!({"outcome": {"type": "success", "value": 1}, "authority": "t"}),
        )
        .await;
    assert_eq!(s, 200);
    let out = run_cli(&server.base, None, &["cancel", "par"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("had already ended (completed)") && out.stdout.contains("running children"),
        "{}",
        out.stdout
    );
    c.wait_for("par-kid", |r| r["status"] == "cancelled").await;
    // The same for a parent that had ended cancelled.
    let par = json!({"id": "par2", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(par).await.0, 201);
    let kid = json!({"id": "par2-kid", "input": {"type": "tool_call", "tool": "wait_signal", "args": {"name": "go"}},
                     "disposition": "rerunnable", "caused_by": {"process_id": "par2"}});
    assert_eq!(c.start(kid).await.0, 201);
    let (s, _) = c
        .post(
            "/v1/processes/par2/complete",
            json!({"outcome": {"type": "cancelled", "message": "superseded\u{1b}[2J"}, "authority": "t"}),
        )
        .await;
    assert_eq!(s, 200);
    let out = run_cli(&server.base, None, &["cancel", "par2"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("had already ended (cancelled)"), "{}", out.stdout);
    c.wait_for("par2-kid", |r| r["status"] == "cancelled").await;
    // A message the server stores is shown with its control characters
    // escaped: it cannot clear the terminal.
    let out = run_cli(&server.base, None, &["await", "par2"], None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    assert!(out.stderr.contains("superseded\\u{1b}[2J"), "{}", out.stderr);
    // The request that cancelled a process, repeated, says so: it reached
    // no children (there are none).
    for (id, reason) in [("cx", None), ("cx-r", Some("stop"))] {
        let w = json!({"id": id, "input": {"type": "tool_call", "tool": "wait_signal", "args": {"name": "go"}},
                       "disposition": "rerunnable"});
        assert_eq!(c.start(w).await.0, 201);
        let mut args = vec!["cancel", id];
        args.extend(reason.iter().flat_map(|r| ["--reason", *r]));
        let out = run_cli(&server.base, None, &args, None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        c.wait_for(id, |r| r["status"] == "cancelled").await;
        let out = run_cli(&server.base, None, &args, None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            out.stdout.trim(),
            format!("{id} was already cancelled: this repeats the request that cancelled it")
        );
    }
    // A request recorded before the process ended otherwise, repeated: it
    // changed nothing, and no children are said to be reached (it has none).
    let ext = json!({"id": "cz", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(ext).await.0, 201);
    let out = run_cli(&server.base, None, &["cancel", "cz"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (s, _) = c
        .post(
            "/v1/processes/cz/complete",
            json!({"outcome": {"type": "success", "value": 1}, "authority": "t"}),
        )
        .await;
    assert_eq!(s, 200);
    let out = run_cli(&server.base, None, &["cancel", "cz"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "cz had already ended (completed); this repeats the cancellation requested before it ended, and changed nothing"
    );
}

/// A JSON value may be a negative number: `--value -1`, `--payload -5` are
/// values, not unknown flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_numbers_are_json_values() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ext = json!({"id": "neg", "disposition": "externally_owned", "input": {"type": "external"},
                     "event_types": [{"name": "level"}]});
    assert_eq!(c.start(ext).await.0, 201);
    assert_eq!(c.start(waiter("wneg")).await.0, 201);
    c.wait_for("wneg", |r| !r["wait"].is_null()).await;
    let out = run_cli(&server.base, None, &["append", "neg", "level", "--payload", "-5"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run_cli(
        &server.base,
        None,
        &["--json", "complete", "neg", "--value", "-1.5"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["outcome"]["value"], json!(-1.5));
    let out = run_cli(&server.base, None, &["signal", "wneg", "go", "--payload", "-2"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done = c.wait_for("wneg", |r| r["status"] != "running").await;
    assert_eq!(done["outcome"]["value"], json!(-2), "{done}");
    let (_, events) = c.get("/v1/processes/neg/events").await;
    let level = events["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["event_type"] == "level"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(level["payload"], json!(-5), "{events}");
}

/// A server that takes requests and never answers (hung, or behind a network
/// that drops what it carries) does not hold `cairn await --timeout` past
/// its timeout (and a short grace): it ends, exit 1, saying the server did
/// not answer and that the state is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_gives_up_on_a_server_that_never_answers() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", hung.local_addr().expect("addr"));
    // Take every connection and hold it, reading nothing, answering nothing.
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            open.push(socket);
        }
    });
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        run_cli(&base, None, &["await", "hung-1", "--timeout", "1s"], None),
    )
    .await
    .expect("cairn await --timeout 1s still waiting after 30 s on a server that never answers");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(
        out.stderr.contains("did not answer within 3s"),
        "says the server did not answer: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown"),
        "says the state is unknown: {}",
        out.stderr
    );
    held.abort();
}

/// A write whose connection breaks after the request went out says why,
/// and that it may or may not have been done, with how to find out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_says_it_may_have_been_done() {
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", closing.local_addr().expect("addr"));
    // Read the request's first bytes, then hang up without a word.
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = closing.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    let out = run_cli(&base, None, &["signal", "p-1", "go", "--id", "s-1"], None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("broke before it answered"),
        "names what happened: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("may or may not have been done")
            && out.stderr.contains(&format!("`cairn --server {base} events p-1`"))
            && out
                .stderr
                .contains(&format!("`cairn --server {base} signal p-1 go --id s-1` repeats it")),
        "says the write may have been done, how to tell, and how to repeat it: {}",
        out.stderr
    );
    assert!(!out.stderr.contains(" ID`"), "no placeholder: {}", out.stderr);
    // A signal id made here is said, in the command that repeats the signal
    // under it (a repeat without it would be a second signal).
    let out = run_cli(&base, None, &["signal", "p-1", "go", "--payload", r#"{"n": 1}"#], None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let repeat = format!("`cairn --server {base} signal p-1 go --id ");
    let after = out
        .stderr
        .split_once(&repeat)
        .unwrap_or_else(|| panic!("says the command that repeats it: {}", out.stderr))
        .1;
    let (made, rest) = after.split_once(' ').expect("the signal id, then the payload");
    assert!(
        uuid::Uuid::parse_str(made).is_ok(),
        "the signal id made here: {}",
        out.stderr
    );
    assert!(
        rest.starts_with(r#"--payload '{"n": 1}'` repeats it"#),
        "with the payload given: {}",
        out.stderr
    );
    // `--json` carries the same hint, under the client's own code.
    let out = run_cli(&base, None, &["--json", "signal", "p-1", "go"], None).await;
    let err: Value = serde_json::from_str(out.stderr.trim()).expect("one JSON line");
    assert_eq!(err["error"]["code"], "lost_answer", "{}", out.stderr);
    let hint = err["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains(&repeat), "{hint}");
    // Other writes name the process they act on.
    for (args, check) in [
        (&["start", r#"{"id": "p-2", "input": {}}"#][..], "get p-2"),
        (&["complete", "p-3", "--value", "1"][..], "get p-3"),
        (&["cancel", "p-4"][..], "get p-4"),
        (&["append", "p-5", "progress"][..], "events p-5"),
    ] {
        let out = run_cli(&base, None, args, None).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "read the state (`cairn --server {base} {check}`) before repeating it"
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    // `run` names the id it made up, so the start can be looked up or repeated.
    let out = run_cli(&base, None, &["run", "--", "true"], None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("may or may not have started: `cairn --server {base} get run-"))
            && out.stderr.contains(&format!("`cairn --server {base} run --id run-")),
        "{}",
        out.stderr
    );
    server.abort();
}

/// `events` into a file or a program prints each payload whole (a terminal
/// gets them cut to a line), so the log can be read or searched as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_into_a_pipe_print_whole_payloads() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = json!({"id": "long", "disposition": "externally_owned",
                       "input": {"type": "external", "metadata": {}},
                       "event_types": [{"name": "note", "payload_schema": {"type": "object"}}]});
    assert_eq!(c.start(start).await.0, 201);
    let text = format!("{}-the-end", "x".repeat(300));
    let (s, _) = c
        .post(
            "/v1/processes/long/events",
            json!({"event_type": "note", "payload": {"text": text}}),
        )
        .await;
    assert_eq!(s, 200);
    let out = server.cli(&["events", "long"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&text), "{}", out.stdout);
}

/// `get` shows what a process runs (its input beside the type) and its
/// parent, so processes of one definition can be told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_input_and_the_parent() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = json!({"id": "sleeper", "disposition": "rerunnable",
                       "input": {"type": "tool_call", "tool": "sleep", "args": {"ms": 600000}}});
    assert_eq!(c.start(start).await.0, 201);
    let child = json!({"id": "kid", "disposition": "externally_owned",
                       "input": {"type": "external", "metadata": {"ticket": "T-42"}},
                       "caused_by": {"process_id": "sleeper"}});
    let (s, body) = c.start(child).await;
    assert_eq!(s, 201, "{body}");
    let out = server.cli(&["get", "sleeper"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("input") && l.contains(r#""args":{"ms":600000}"#)),
        "{}",
        out.stdout
    );
    let out = server.cli(&["get", "kid"], None).await;
    assert!(out.stdout.contains("T-42"), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("parent") && l.ends_with("sleeper")),
        "{}",
        out.stdout
    );
    // A forwarded environment is named, its values not shown.
    let secret = json!({"id": "with-env", "disposition": "rerunnable",
                        "input": {"type": "tool_call", "tool": "shell",
                                  "args": {"argv": ["true"], "env": {"SECRET_TOKEN": "hunter2"}}}});
    assert_eq!(c.start(secret).await.0, 201);
    let out = server.cli(&["get", "with-env"], None).await;
    assert!(
        out.stdout.contains("SECRET_TOKEN") && !out.stdout.contains("hunter2"),
        "{}",
        out.stdout
    );
    // So is one a script journaled in its log (`ctx.tool("shell", ...)`).
    let calls = json!({"id": "calls", "disposition": "externally_owned", "input": {"type": "external"},
                       "event_types": [{"name": "progress"}]});
    assert_eq!(c.start(calls).await.0, 201);
    let call = json!({"event_type": "progress", "payload": {"n": 1, "kind": "tool", "tool": "shell",
                      "args": {"argv": ["true"], "env": {"SECRET_TOKEN": "hunter2"}}}});
    let (s, body) = c.post("/v1/processes/calls/events", call).await;
    assert_eq!(s, 200, "{body}");
    let out = server.cli(&["events", "calls"], None).await;
    assert!(
        out.stdout.contains("SECRET_TOKEN") && out.stdout.contains("(not shown)") && !out.stdout.contains("hunter2"),
        "{}",
        out.stdout
    );
}

/// A command a signal killed makes `run` answer 128 + the signal, as a
/// shell would, and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_answers_128_plus_the_signal_that_killed_the_command() {
    let server = Server::start(&[]).await;
    let out = server
        .cli(
            &["run", "--", "sh", "-c", "echo before; kill -TERM $$; echo after"],
            None,
        )
        .await;
    assert_eq!(out.code, 128 + 15, "{}", out.stderr);
    assert!(
        out.stdout.contains("before") && !out.stdout.contains("after"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("killed by signal 15"), "{}", out.stderr);
}

/// A cancel, signal or abandon of a process that has ended says how it
/// ended and where to look, not only the server's `process_terminal`; the
/// exit code stays 1 and `--json` keeps the server's code and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acting_on_an_ended_process_says_how_it_ended() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = common::tool_start("w2", "echo", json!({"value": 1}), "rerunnable");
    assert_eq!(c.start(start).await.0, 201);
    c.wait_for("w2", |r| r["status"] == "completed").await;
    for (args, nothing_to) in [
        (&["cancel", "w2"][..], "cancel"),
        (&["signal", "w2", "go"][..], "signal"),
        (&["abandon", "w2", "--reason", "gone"][..], "abandon"),
    ] {
        let out = run_cli(&server.base, None, args, None).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "w2 already ended (completed): nothing to {nothing_to}; `cairn --server {} get w2` shows how",
                server.base
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = run_cli(&server.base, None, &["--json", "cancel", "w2"], None).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let error: Value = serde_json::from_str(out.stderr.trim()).expect("JSON");
    assert_eq!(
        (&error["error"]["code"], &error["error"]["status"]),
        (&json!("process_terminal"), &json!(409)),
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("w2 already ended (completed)")),
        "{error}"
    );
}

/// `schedule add` with its id left out reads the template where the id
/// belongs: an id beginning with `@`, or `-`, is refused (exit 2) saying
/// the id is missing, with the usage, and nothing is read or sent.
#[test]
fn schedule_add_with_a_template_in_the_id_says_the_id_is_missing() {
    for id in ["@template.json", "-"] {
        let stderr = usage_error(&["schedule", "add", "--cron", "0 3 * * *", id]);
        assert!(
            stderr.contains(&format!(
                "the schedule ID is missing before the template (`{id}` reads as the template)"
            )) && stderr
                .contains("usage: cairn schedule add [OPTIONS] <--cron <CRON>|--every <EVERY>> <ID> [TEMPLATE]"),
            "{id}: {stderr}"
        );
    }
}

/// Every usage error of `schedule add` under `--json` gives the one usage:
/// the program named `cairn` (whatever its file is called) and TEMPLATE
/// optional.
#[test]
fn schedule_add_usage_errors_give_one_usage() {
    let dir = std::env::temp_dir().join(format!("cairn-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let renamed = dir.join("cairn-renamed");
    std::fs::copy(BIN, &renamed).expect("copy the binary");
    let usage = "usage: cairn schedule add [OPTIONS] <--cron <CRON>|--every <EVERY>> <ID> [TEMPLATE]";
    for bin in [std::path::Path::new(BIN), renamed.as_path()] {
        for args in [
            &["--json", "schedule", "add", "s", "--every", "7"][..],
            &["--json", "schedule", "add", "s", "--every", "1h", "--cron", "0 3 * * *"],
            &["--json", "schedule", "add", "s"],
            &["--json", "schedule", "add", "--every", "1h"],
        ] {
            let out = std::process::Command::new(bin)
                .args(["--server", "http://127.0.0.1:9"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run cairn");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            let error: Value = serde_json::from_str(stderr.trim()).expect("JSON");
            assert_eq!(error["error"]["hint"], usage, "{bin:?} {args:?}: {error}");
        }
    }
    std::fs::remove_dir_all(&dir).expect("remove dir");
}

/// A JSON argument nested past the parser's limit is refused before it is
/// sent, in the server's words: how deep, and the 64 level limit.
#[test]
fn a_json_argument_nested_too_deep_names_the_64_level_limit() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let stderr = usage_error(&["signal", "w", "go", "--payload", &deep]);
    assert!(
        stderr.contains("--payload nests arrays and objects 200 levels deep, over the 64 level limit"),
        "{stderr}"
    );
    assert!(!stderr.contains("recursion limit"), "{stderr}");
    let stderr = usage_error(&["complete", "w", "--value", &deep]);
    assert!(
        stderr.contains("--value nests arrays and objects 200 levels deep"),
        "{stderr}"
    );
    // In a request, the field that nests too deep is named, as the server does.
    let request = format!(r#"{{"id":"d","input":{{"type":"external","x":{deep}}}}}"#);
    let stderr = usage_error(&["start", &request]);
    assert!(
        stderr.contains("the start request: `input` nests arrays and objects 201 levels deep, over the 64 level limit"),
        "{stderr}"
    );
}

/// An empty id is the command line's own refusal (`usage`) on every
/// command that takes one, `module get` too.
#[test]
fn an_empty_id_is_a_usage_error_on_every_command() {
    for args in [
        &["--json", "get", ""][..],
        &["--json", "cancel", ""],
        &["--json", "signal", "", "go"],
        &["--json", "ack", "s1", ""],
        &["--json", "module", "get", ""],
    ] {
        let stderr = usage_error(args);
        let refusal: Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {stderr}"));
        assert_eq!(refusal["error"]["code"], "usage", "{args:?}: {stderr}");
        assert!(stderr.contains("must not be empty"), "{args:?}: {stderr}");
    }
}

/// `run --timeout` is whole milliseconds: less, or a part of one, is refused
/// naming the flag, not sent as 0 or rounded down.
#[test]
fn a_run_timeout_that_is_not_whole_milliseconds_is_refused() {
    for (timeout, said) in [
        ("500us", "`500us` is under 1 ms"),
        ("0", "`0` is under 1 ms"),
        (
            "1500us",
            "`1500us` is not a whole number of milliseconds: give e.g. 1ms or 2ms",
        ),
    ] {
        let stderr = usage_error(&["run", "--timeout", timeout, "--", "echo", "hi"]);
        assert!(
            stderr.contains("--timeout") && stderr.contains(said),
            "{timeout}: {stderr}"
        );
        assert!(!stderr.contains("timeout_ms"), "{timeout}: {stderr}");
    }
}

/// `--env-all` names, on stderr, the variables it cannot forward (not
/// UTF-8), and forwards the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_all_says_which_variables_it_left_out() {
    use std::os::unix::ffi::OsStrExt;
    let server = Server::start(&[]).await;
    let out = tokio::process::Command::new(BIN)
        .args(["--server", &server.base, "run", "--env-all", "--", "sh", "-c"])
        .arg("echo ${T_BAD_VALUE-unset} $T_GOOD")
        .env("T_BAD_VALUE", std::ffi::OsStr::from_bytes(b"a\xffb"))
        .env(std::ffi::OsStr::from_bytes(b"T_BAD\xffNAME"), "x")
        .env("T_GOOD", "good")
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cairn run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unset good\n", "{stderr}");
    assert!(
        stderr.contains("--env-all: not forwarded, their name or value is not UTF-8")
            && stderr.contains(r"`T_BAD\xffNAME`")
            && stderr.contains("`T_BAD_VALUE`"),
        "{stderr}"
    );
    assert!(!stderr.contains("T_GOOD"), "{stderr}");
}

/// A run waiting for a worker slot says so once, and one that starts at
/// once says nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_for_a_worker_slot_says_so() {
    let server = Server::start(&["--workers", "1"]).await;
    let out = run_cli(
        &server.base,
        None,
        &["run", "--detach", "--id", "busy", "--", "sleep", "4"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut run = Running::spawn(
        &server.base,
        &["run", "--id", "second", "--timeout", "30s", "--", "echo", "second"],
    );
    let line = run.stderr_line("is queued").await;
    assert_eq!(
        line,
        "second is queued: it has not started, waiting for a free worker slot on the server (its `--workers` are \
         busy); its --timeout counts from when it starts"
    );
    assert_eq!(run.exit_code().await, 0);
    // A run that starts at once and lasts past the note's delay says nothing of a queue.
    let out = run_cli(
        &server.base,
        None,
        &["run", "--", "sh", "-c", "sleep 2.5; echo done"],
        None,
    )
    .await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "done\n"), "{}", out.stderr);
    assert!(!out.stderr.contains("queued"), "{}", out.stderr);
}

/// What `cairn ARGS` prints on stdout, run without a server (a help text,
/// a completion script); it must succeed.
fn printed(args: &[&str]) -> String {
    let out = cairn(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Under `--json`, how a process ended (or that it still runs at the
/// timeout) is in the record on stdout and not said on stderr, and the help
/// texts and the README say so instead of "said on stderr" alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_json_the_ending_is_in_the_record_and_the_help_says_so() {
    let server = Server::start(&[]).await;
    // A failed command: `run` answers its exit code, `await` 1.
    let out = server
        .cli(&["--json", "run", "--id", "j-fail", "--", "sh", "-c", "exit 3"], None)
        .await;
    assert_eq!((out.code, out.stderr.as_str()), (3, ""), "{}", out.stdout);
    assert_eq!(out.json()["status"], "failed", "{}", out.stdout);
    let out = server.cli(&["--json", "await", "j-fail"], None).await;
    assert_eq!((out.code, out.stderr.as_str()), (1, ""), "{}", out.stdout);
    assert_eq!(out.json()["status"], "failed", "{}", out.stdout);
    // Without `--json` the same ending is said on stderr.
    let out = server.cli(&["await", "j-fail"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("j-fail failed"), "{}", out.stderr);
    // Still running at the timeout: exit 3, the record says it runs.
    let out = server
        .cli(
            &["--json", "run", "--detach", "--id", "j-slow", "--", "sleep", "30"],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server
        .cli(&["--json", "await", "j-slow", "--timeout", "100ms"], None)
        .await;
    assert_eq!((out.code, out.stderr.as_str()), (3, ""), "{}", out.stdout);
    assert_eq!(out.json()["status"], "running", "{}", out.stdout);
    let out = server.cli(&["await", "j-slow", "--timeout", "100ms"], None).await;
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("timed out after"), "{}", out.stderr);
    let out = server.cli(&["cancel", "j-slow"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let help = |args: &[&str]| printed(args).replace('\n', " ");
    let top = help(&["--help"]);
    assert!(
        top.contains("(with --json, only in the record printed on stdout)"),
        "{top}"
    );
    let awaits = help(&["await", "--help"]);
    assert!(
        awaits.contains("With `--json`, neither is said on stderr: the record printed on stdout says how it ended"),
        "{awaits}"
    );
    let runs = help(&["run", "--help"]);
    assert!(
        runs.contains("how it ended is in that record, not said on stderr"),
        "{runs}"
    );
    let readme = include_str!("../README.md").replace('\n', " ");
    assert!(
        readme.contains("with `--json` neither is said on stderr: the record printed on stdout says how it ended")
            && readme.contains("With `--json`, `run` and `await` say nothing of how the process ended on stderr"),
        "crates/cairn/README.md does not say what `--json` prints"
    );
}

/// `cairn mcp --help` does not offer the `--json` it refuses, and client
/// options before `completions` are refused as before `serve` and `bench`,
/// not quietly ignored.
#[test]
fn mcp_offers_no_json_and_completions_takes_no_client_options() {
    let help = printed(&["mcp", "--help"]);
    assert!(help.contains("--server") && help.contains("--token"), "{help}");
    assert!(!help.contains("--json"), "{help}");
    for args in [
        &["--json", "completions", "bash"][..],
        &["--token", "T", "completions", "bash"],
        &["--server", "http://x:1", "completions", "bash"],
    ] {
        let out = cairn(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: a script was printed");
        assert!(
            stderr.contains("are client options") && stderr.contains("`cairn completions` takes none"),
            "{args:?}: {stderr}"
        );
    }
    // `ls --status` completes to its values, as `prune --status` does.
    let script = printed(&["completions", "bash"]);
    assert!(
        script.contains("running completed failed cancelled abandoned any"),
        "no `ls --status` values in the bash completion"
    );
}

/// Every command of crates/cairn/README.md's CLI table shows each flag its
/// `--help` lists (but the client options, which the README gives once).
#[test]
fn the_readme_cli_table_lists_every_flag_of_its_commands() {
    let readme = include_str!("../README.md");
    let table = readme
        .split_once("| command | what |")
        .expect("the CLI table")
        .1
        .split("\n\n")
        .next()
        .expect("rows");
    let mut checked = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cell = row[3..].split("` |").next().expect("first cell");
        for signature in cell.split("`, `") {
            let path: Vec<&str> = signature
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
                .collect();
            let help = printed(&[&path[..], &["--help"]].concat());
            let flags: Vec<&str> = help
                .lines()
                .skip_while(|l| !l.starts_with("Options:"))
                .filter_map(|l| {
                    let l = l.trim_start();
                    // `-f, --follow`: the long name after the short one.
                    let l = match l.as_bytes() {
                        [b'-', c, b',', b' ', ..] if *c != b'-' => &l[4..],
                        _ => l,
                    };
                    l.strip_prefix("--")
                })
                .map(|l| l.split([' ', '=']).next().unwrap_or_default())
                .filter(|f| !matches!(*f, "server" | "token" | "json" | "help"))
                .collect();
            for flag in flags {
                assert!(
                    signature.contains(&format!("--{flag}")),
                    "README's `{signature}` lacks --{flag}, which `cairn {} --help` lists",
                    path.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} flags checked");
}

/// A negative number or duration is refused in cairn's words naming the
/// flag (exit 2), not by clap as an unknown flag with advice (`use '-- -1'`)
/// that fails too.
#[test]
fn a_negative_value_is_refused_naming_its_flag() {
    let integers = [
        "events p --after -1",
        "changes --cursor -1",
        "changes --limit -1",
        "ls --limit -5",
        "wakes s1 --limit -2",
        "prune --older-than 1d --watermark -1",
        "serve --workers -1",
        "bench --runs -1",
    ];
    let durations = [
        "await p --timeout -1s",
        "await p --timeout -1",
        "run --timeout -5m -- true",
        "prune --older-than -7d --no-projector",
        "schedule add s1 --every -1m {}",
        "serve --lease-ttl -1s",
        "serve --max-await -1s",
        "serve --shutdown-grace -1",
    ];
    // The flag given a negative value, and that value.
    let negative = |line: &'static str| {
        let words: Vec<&str> = line.split(' ').collect();
        let at = words
            .iter()
            .position(|w| w.len() > 1 && w.starts_with('-') && w.as_bytes()[1].is_ascii_digit())
            .expect("a negative value");
        (words[at - 1], words[at])
    };
    let cases = integers
        .map(|line| {
            let (flag, value) = negative(line);
            (line, format!("`{flag}` takes a non-negative integer, got `{value}`"))
        })
        .into_iter()
        .chain(durations.map(|line| {
            let (flag, _) = negative(line);
            (line, format!("for `{flag}`: a duration is not negative"))
        }))
        .chain(
            [
                ("ls --created-from -5", "`--created-from` takes epoch milliseconds"),
                (
                    "serve --script-max-calls -1",
                    "`--script-max-calls` takes a non-negative integer",
                ),
                (
                    "bench --workers -1,3",
                    "`--workers` takes a non-negative integer, got `-1`",
                ),
                // A flag where the value belongs is said as one.
                ("await p --timeout --json", "`--json` reads as a flag, not a duration"),
            ]
            .map(|(line, said)| (line, said.to_string())),
        );
    for (line, said) in cases {
        let args: Vec<&str> = line.split(' ').collect();
        let args = &args[..];
        let stderr = usage_error(args);
        assert!(stderr.contains(&said), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("tip:") && !stderr.contains("'-- -"),
            "{args:?}: {stderr}"
        );
    }
    // Under `--json`, the hint is the command's usage, not clap's tip.
    let error: Value = serde_json::from_str(&usage_error(&["--json", "events", "p", "--after", "-1"])).expect("JSON");
    assert_eq!(
        (&error["error"]["message"], &error["error"]["hint"]),
        (
            &json!("`--after` takes a non-negative integer, got `-1`"),
            &json!("usage: cairn events [OPTIONS] <ID>")
        ),
        "{error}"
    );
}

/// `ls --status` takes only the statuses it lists: anything else is a
/// usage error (exit 2) before any request, whether the server is up or not.
#[test]
fn ls_status_is_checked_before_asking_the_server() {
    for status in ["bogus", "Running", "waiting"] {
        let stderr = usage_error(&["ls", "--status", status]);
        assert!(
            stderr.contains("[possible values: running, completed, failed, cancelled, abandoned, any]"),
            "{status}: {stderr}"
        );
    }
}

/// An empty `ls --waiting true` does not point at ended processes (none
/// of which waits); an empty `ls` or `ls --waiting false` still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_waiting_ls_does_not_point_at_ended_processes() {
    let server = Server::start(&[]).await;
    let out = server.cli(&["run", "--", "true"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for args in [&["ls", "--waiting"][..], &["ls", "--waiting", "true"]] {
        let out = server.cli(args, None).await;
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{args:?}");
        assert!(out.stdout.starts_with("ID"), "{args:?}: {}", out.stdout);
    }
    for args in [&["ls"][..], &["ls", "--waiting", "false"]] {
        let out = server.cli(args, None).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("`--status any`"), "{args:?}: {}", out.stderr);
    }
}
