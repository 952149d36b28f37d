//! The CLI client against the real server, and graceful shutdown.

mod common;

use std::time::Duration;

use common::{waiter, Server};
use serde_json::{json, Value};

/// `--json events` over a log of several pages prints, page by page, the
/// very document the whole log would print: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_events_of_many_pages_are_one_document() {
    let server = Server::start(&[]).await;
    let ext = json!({"id": "e1", "input": {"type": "external"}, "disposition": "externally_owned",
                     "event_types": [{"name": "note"}]});
    assert_eq!(server.client().start(ext).await.0, 201);
    for n in 0..250 {
        let body = json!({"event_type": "note", "payload": {"n": n, "text": "two\nlines"}});
        let (status, answer) = server.client().post("/v1/processes/e1/events", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let out = server.cli(&["--json", "events", "e1"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    assert_eq!(
        out.stdout,
        format!("{}\n", serde_json::to_string_pretty(&doc).expect("JSON"))
    );
    let events = doc["events"].as_array().expect("events");
    let last = events.last().expect("an event")["sequence"].as_u64().expect("sequence");
    assert!(last >= 250, "{last}");
    let sequences: Vec<u64> = events.iter().filter_map(|e| e["sequence"].as_u64()).collect();
    assert_eq!(sequences, (1..=last).collect::<Vec<_>>());
    let notes: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "note").collect();
    assert_eq!(notes.len(), 250);
    assert!(notes.iter().enumerate().all(|(n, e)| e["payload"]["n"] == n));
    // Nothing after the last event: an empty list, as the whole would print it.
    let out = server
        .cli(&["--json", "events", "e1", "--after", &last.to_string()], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "{\n  \"events\": []\n}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_the_server() {
    let server = Server::start(&[]).await;

    // start: from an argument and from stdin; repeat is reported, conflicts fail.
    let body = waiter("c1").to_string();
    let out = server.cli(&["start", &body], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "started c1 (running)");
    let out = server.cli(&["start"], Some(&body)).await;
    assert_eq!((out.code, out.stdout.trim()), (0, "already started c1 (running)"));
    let ext = json!({"id": "c2", "input": {"type": "external"}, "disposition": "externally_owned",
                     "wake_target": {"session_id": "s1"},
                     "event_types": [{"name": "note", "semantics": {"wake": {"input": {"pointer": "/t"}}}}]});
    let out = server.cli(&["--json", "start", "-"], Some(&ext.to_string())).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["id"], "c2");
    let out = server.cli(&["start", "{not json"], None).await;
    assert_eq!(out.code, 2);
    let conflicting = json!({"id": "c1", "input": {"type": "external"}, "disposition": "externally_owned"});
    let out = server.cli(&["start", &conflicting.to_string()], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("registration_conflict"), "{}", out.stderr);
    server.client().wait_for("c1", |r| !r["wait"].is_null()).await;

    // ls: a table by default, JSON with --json, filters passed through.
    let out = server.cli(&["ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", out.stdout);
    assert!(lines
        .iter()
        .any(|l| l.starts_with("c1") && l.contains("tool:wait_signal") && l.ends_with("yes")));
    let out = server.cli(&["--json", "ls", "--definition", "external"], None).await;
    assert_eq!(out.json()["processes"][0]["id"], "c2");
    let out = server.cli(&["ls", "--waiting", "true", "--status", "any"], None).await;
    assert!(
        out.stdout.contains("c1") && !out.stdout.contains("c2"),
        "{}",
        out.stdout
    );

    // get and events.
    let out = server.cli(&["get", "c1"], None).await;
    assert!(
        out.stdout.contains("status") && out.stdout.contains("running"),
        "{}",
        out.stdout
    );
    let out = server.cli(&["--json", "get", "c1"], None).await;
    assert_eq!(out.json()["disposition"], "rerunnable");
    let out = server.cli(&["get", "missing"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown_process"), "{}", out.stderr);
    // With --json, an error is one JSON document on stderr: the server's
    // code and status, or the client's own code for its own refusals.
    let out = server.cli(&["--json", "get", "missing"], None).await;
    assert_eq!(out.code, 1);
    let said: Value = serde_json::from_str(out.stderr.trim()).expect("--json errors are JSON");
    assert_eq!(said["error"]["code"], "unknown_process", "{said}");
    assert_eq!(said["error"]["status"], 404, "{said}");
    assert_eq!(said["error"]["exit_code"], 1, "{said}");
    // A JSON flag's value from stdin (`-`) or a file (`@FILE`).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("value.json");
    std::fs::write(&file, r#"{"from": "a file"}"#).expect("write");
    let out = server
        .cli(
            &["signal", "c1", "note", "--id", "n1", "--payload", "-"],
            Some(r#"{"from": "stdin"}"#),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let at = format!("@{}", file.display());
    let out = server
        .cli(&["signal", "c1", "note", "--id", "n2", "--payload", &at], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server.cli(&["--json", "events", "c1"], None).await;
    let payloads: Vec<Value> = out.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "signal.note")
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(payloads, [json!({"from": "stdin"}), json!({"from": "a file"})]);
    let out = server
        .cli(&["signal", "c1", "note", "--payload", "@/no/such/file"], None)
        .await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot read `/no/such/file`"), "{}", out.stderr);
    let out = server.cli(&["--json", "start", "{not json"], None).await;
    assert_eq!(out.code, 2);
    let said: Value = serde_json::from_str(out.stderr.trim()).expect("--json errors are JSON");
    assert_eq!(said["error"]["code"], "usage", "{said}");
    assert!(
        said["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not JSON")),
        "{said}"
    );
    let out = server.cli(&["events", "c1"], None).await;
    assert!(out.stdout.contains("process.waiting"), "{}", out.stdout);

    // await: exit 3 while still running at the timeout, said on stderr;
    // with --json, the record says it runs and stderr holds no prose.
    let out = server.cli(&["await", "c1", "--timeout", "200ms"], None).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("is still running"), "{}", out.stderr);
    let out = server.cli(&["--json", "await", "c1", "--timeout", "200ms"], None).await;
    assert_eq!((out.code, out.stderr.as_str()), (3, ""));
    assert_eq!(out.json()["status"], "running");

    // events --follow in the background, then signal (idempotent on --id).
    let base = server.base.clone();
    let follow = tokio::spawn(async move { common::run_cli(&base, None, &["events", "c1", "--follow"], None).await });
    let signal = [
        "--json",
        "signal",
        "c1",
        "go",
        "--id",
        "sig-1",
        "--payload",
        "{\"v\":3}",
    ];
    let out = server.cli(&signal, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seq = out.json()["sequence"].clone();
    let out = server.cli(&signal, None).await;
    assert_eq!(out.json()["sequence"], seq);
    let followed = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("follow ended after the terminal event")
        .expect("follow task");
    assert_eq!(followed.code, 0, "{}", followed.stderr);
    assert!(followed.stdout.contains("signal.go"), "{}", followed.stdout);
    assert!(followed.stdout.contains("process.completed"), "{}", followed.stdout);
    let out = server.cli(&["--json", "await", "c1", "--timeout", "5s"], None).await;
    assert_eq!(out.code, 0);
    assert_eq!(out.json()["outcome"]["value"], json!({"v": 3}));

    // wakes and ack, through an appended wake event.
    let (s, _) = server
        .client()
        .post(
            "/v1/processes/c2/events",
            json!({"event_type": "note", "payload": {"t": "look"}}),
        )
        .await;
    assert_eq!(s, 200);
    let out = server.cli(&["--json", "wakes", "s1"], None).await;
    let wake_id = out.json()["wakes"][0]["wake_id"].as_str().expect("wake").to_string();
    let out = server.cli(&["wakes", "s1"], None).await;
    assert!(
        out.stdout.contains(&wake_id) && out.stdout.contains("look"),
        "{}",
        out.stdout
    );
    let out = server.cli(&["ack", "s1", &wake_id], None).await;
    assert_eq!(out.stdout.trim(), format!("acknowledged {wake_id}"));
    let out = server.cli(&["ack", "s1", &wake_id], None).await;
    assert!(out.stdout.contains("already"), "{}", out.stdout);
    // A full page of wakes says there may be more; a shorter one does not.
    for t in ["one", "two", "three"] {
        let (s, _) = server
            .client()
            .post(
                "/v1/processes/c2/events",
                json!({"event_type": "note", "payload": {"t": t}}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let out = server.cli(&["--json", "wakes", "s1", "--limit", "2"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let inputs: Vec<Value> = out.json()["wakes"]
        .as_array()
        .expect("wakes")
        .iter()
        .map(|w| w["input"].clone())
        .collect();
    assert_eq!(inputs, [json!("one"), json!("two")], "oldest first");
    assert!(out.stderr.contains("there may be more"), "{}", out.stderr);
    let out = server.cli(&["wakes", "s1", "--limit", "3"], None).await;
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    assert!(
        out.stdout.starts_with("WAKE") && out.stdout.contains("FRAME"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("there may be more"), "{}", out.stderr);
    let out = server.cli(&["wakes", "s1"], None).await;
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(server.cli(&["wakes", "s1", "--limit", "0"], None).await.code, 2);
    // A page cut at its bytes (4 MiB) says there may be more, without the
    // larger --limit that would not help.
    for i in 0..6 {
        let (s, _) = server
            .client()
            .post(
                "/v1/processes/c2/events",
                json!({"event_type": "note", "payload": {"t": format!("{i}").repeat(900 * 1024)}}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let out = server.cli(&["--json", "wakes", "s1"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let shown = out.json()["wakes"].as_array().expect("wakes").len();
    assert_eq!(shown, 8, "three small ones, then five of the six big ones");
    assert!(out.stderr.contains("there may be more"), "{}", out.stderr);
    assert!(!out.stderr.contains("--limit"), "{}", out.stderr);

    // cancel and abandon.
    assert_eq!(server.client().start(waiter("c3")).await.0, 201);
    let out = server.cli(&["cancel", "c3", "--reason", "stop"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rec = server.client().wait_for("c3", |r| r["status"] == "cancelled").await;
    assert_eq!(rec["outcome"]["type"], "cancelled");
    let out = server.cli(&["abandon", "c2", "--reason", "gone"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Externally owned, it holds no lease to wait for.
    assert_eq!(
        out.stdout.trim(),
        "abandon requested: c2 is running (no lease holds it: reconciled shortly)"
    );
    server.client().wait_for("c2", |r| r["status"] == "abandoned").await;

    // prune everything terminal (cutoff in the future relative to their end).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = server
        .cli(
            &["prune", "--older-than", "0s", "--definition", "echo", "--no-projector"],
            None,
        )
        .await;
    assert_eq!(out.code, 2, "a definition no process has: {}", out.stderr);
    assert!(out.stderr.contains("invalid_filter"), "{}", out.stderr);
    let by_definition = [
        "--json",
        "prune",
        "--older-than",
        "0s",
        "--definition",
        "external",
        "--no-projector",
    ];
    let out = server.cli(&by_definition, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["pruned"], 1, "only c2 is external");
    // The watermark is explicit: neither a cursor nor --no-projector is a usage error.
    let out = server.cli(&["prune", "--older-than", "0s"], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--no-projector"), "{}", out.stderr);
    let out = server
        .cli(&["--json", "prune", "--older-than", "0s", "--no-projector"], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["pruned"], 2);
    let out = server.cli(&["get", "c1"], None).await;
    assert!(out.stderr.contains("no_longer_retained"), "{}", out.stderr);
    // When it ended and was pruned, as times people read.
    let said = out.stderr.split("(ended ").nth(1).unwrap_or_default();
    let times: Vec<&str> = said
        .split(" at ")
        .skip(1)
        .map(|t| t.split([',', ')']).next().unwrap_or(""))
        .collect();
    assert_eq!(times.len(), 2, "{}", out.stderr);
    for t in times {
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}: {}",
            out.stderr
        );
    }

    // run --detach creates a shell process with a generated id.
    let out = server.cli(&["run", "--detach", "--", "echo", "hi"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    assert!(id.starts_with("run-"), "{id}");
    let (s, rec) = server.client().get(&format!("/v1/processes/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(rec["input"]["args"]["argv"], json!(["echo", "hi"]));
    assert_eq!(rec["disposition"], "owner_bound");

    // A relative --cwd is the caller's directory joined to it: the server's
    // own working directory means nothing to the caller.
    let here = std::env::temp_dir().join(format!("cairn-cwd-{}", std::process::id()));
    std::fs::create_dir_all(here.join("sub")).expect("dirs");
    let out = std::process::Command::new(common::BIN)
        .current_dir(&here)
        .args([
            "--server",
            &server.url(""),
            "run",
            "--detach",
            "--id",
            "rel-cwd",
            "--cwd",
            "sub",
            "--",
            "true",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cli ran");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, rec) = server.client().get("/v1/processes/rel-cwd").await;
    assert_eq!(
        rec["input"]["args"]["cwd"],
        json!(here.join("sub").to_str().unwrap()),
        "{rec}"
    );
    let _ = std::fs::remove_dir_all(&here);

    // run in the foreground follows to the end and answers the outcome as its exit code.
    let out = server.cli(&["run", "--id", "fg-1", "--", "true"], None).await;
    let (_, rec) = server.client().get("/v1/processes/fg-1").await;
    assert_ne!(rec["status"], "running", "run returned before the end: {rec}");
    let succeeded = rec["outcome"]["type"] == "success";
    assert_eq!(out.code == 0, succeeded, "exit {} for {rec}: {}", out.code, out.stderr);

    // Ids with reserved URL characters travel percent-encoded.
    let odd = json!({"id": "a/b c?d", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(server.cli(&["start", &odd.to_string()], None).await.code, 0);
    let out = server.cli(&["--json", "get", "a/b c?d"], None).await;
    assert_eq!(out.json()["id"], "a/b c?d");

    // An unreachable server is exit 1 with a message.
    let out = common::run_cli("http://127.0.0.1:9", None, &["ls"], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("cannot reach the server at http://127.0.0.1:9: Connection refused"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: is `cairn serve` running at http://127.0.0.1:9?"),
        "{}",
        out.stderr
    );
}

/// `cairn` with the words of `line`, each of URL, FILE, REF and TEMPLATE replaced
/// by its value in `with`, exactly so (no `--server` added, none in the environment).
async fn cairn(line: &str, with: &[(&str, &str)]) -> common::CliOutput {
    let words = line
        .split_whitespace()
        .map(|w| with.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v));
    let out = tokio::process::Command::new(common::BIN)
        .args(words)
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("cli finished in time")
        .expect("cli ran");
    common::CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What [`cairn`] printed, as JSON, after it succeeded.
async fn json_of(line: &str, with: &[(&str, &str)]) -> serde_json::Value {
    let out = cairn(line, with).await;
    assert_eq!(out.code, 0, "cairn {line}: {}", out.stderr);
    out.json()
}

/// `--server`, `--token` and `--json` are taken anywhere after `cairn`: after a
/// subcommand's subcommand (`schedule ls`, `module ls`), between the two, and
/// before the command, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_options_go_anywhere_after_cairn() {
    let server = Server::start(&["--token", "host-secret"]).await;
    let template =
        json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}}, "disposition": "rerunnable"});
    let template = template.to_string();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/deploy.js");
    let mut with = vec![("URL", server.base.as_str()), ("TEMPLATE", &template), ("FILE", file)];

    // After the leaf subcommand.
    let line = "schedule add nightly --every 1h TEMPLATE --json --server URL --token host-secret";
    assert_eq!(json_of(line, &with).await["id"], "nightly");
    let line = "schedule ls --json --server URL --token host-secret";
    assert_eq!(json_of(line, &with).await["schedules"][0]["id"], "nightly");
    let line = "schedule get nightly --server URL --json --token host-secret";
    assert_eq!(json_of(line, &with).await["paused"], json!(false));
    let line = "module put FILE --json --server URL --token host-secret";
    let module_ref = json_of(line, &with).await["module_ref"]
        .as_str()
        .expect("a ref")
        .to_string();
    with.push(("REF", &module_ref));
    let line = "module ls --json --server URL --token host-secret";
    assert_eq!(
        json_of(line, &with).await["modules"][0]["module_ref"],
        module_ref.as_str()
    );

    // Between the command and its subcommand, and split across the places.
    let line = "schedule --json --server URL --token host-secret ls";
    assert_eq!(json_of(line, &with).await["schedules"][0]["id"], "nightly");
    let line = "--server URL schedule --token host-secret pause nightly --json";
    assert_eq!(json_of(line, &with).await["paused"], json!(true));
    let line = "module --json --server URL --token host-secret get REF";
    assert_eq!(json_of(line, &with).await["module_ref"], module_ref.as_str());
    let line = "--json module --server URL ls --token host-secret";
    assert_eq!(
        json_of(line, &with).await["modules"][0]["module_ref"],
        module_ref.as_str()
    );

    // Before the command, and after a command without subcommands, as before.
    let line = "--json --server URL --token host-secret schedule ls";
    assert_eq!(json_of(line, &with).await["schedules"][0]["id"], "nightly");
    let line = "--server URL --token host-secret ls --json --status any";
    assert!(json_of(line, &with).await["processes"].is_array());

    // The token after the subcommand is the one presented: without it, refused.
    let out = cairn("schedule ls --json --server URL", &with).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("unauthorized"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(c.start(waiter("long")).await.0, 201);
    c.wait_for("long", |r| !r["wait"].is_null()).await;
    // A long await in flight must not hold the shutdown up.
    let waiter_client = c.clone();
    let pending = tokio::spawn(async move { waiter_client.get("/v1/processes/long/await?timeout_ms=120000").await });
    c.awaits_open(1).await;
    // SAFETY: sending a signal to our own child process by its pid.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = server.wait_exit(Duration::from_secs(15)).expect("server exited");
    assert!(status.success(), "{status:?}");
    let (s, rec) = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("await answered at shutdown")
        .expect("task");
    assert_eq!((s, rec["status"].as_str()), (200, Some("running")));
}

/// The lines a `shell` process wrote, from its `shell.output` events.
async fn shell_lines(c: &common::Client, id: &str) -> Vec<String> {
    let (_, page) = c.get(&format!("/v1/processes/{id}/events?after=0")).await;
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "shell.output")
        .flat_map(|e| e["payload"]["lines"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l.as_str().map(String::from))
        .collect()
}

/// A command run by the `shell` tool does not inherit the server's own
/// settings: the host token and the database URL (its password) would reach
/// any caller who may run a command and land in its durable output. A start
/// may still give such a variable itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_command_does_not_inherit_the_servers_secrets() {
    let server = common::Server::serve_with_env(
        &[
            "--db",
            "memory",
            "--allow-shell",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "m=http://127.0.0.1:1/v1,key_env=MODEL_KEY_T",
        ],
        &[
            ("CAIRN_TOKEN", "host-secret"),
            ("CAIRN_WORKERS", "2"),
            ("MODEL_KEY_T", "model-secret"),
        ],
    )
    .await;
    let c = server.with_token("host-secret");
    let (status, _) = c
        .post(
            "/v1/processes",
            json!({
                "id": "env-probe",
                "disposition": "rerunnable",
                "input": {"type": "tool_call", "tool": "shell", "args": {
                    "command": "echo \"token=${CAIRN_TOKEN:-unset} workers=${CAIRN_WORKERS:-unset} key=${MODEL_KEY_T:-unset} given=${CAIRN_GIVEN:-unset}\"",
                    "env": {"CAIRN_GIVEN": "yes"}
                }}
            }),
        )
        .await;
    assert_eq!(status, 201);
    let record = c.wait_for("env-probe", |r| r["status"] != "running").await;
    assert_eq!(record["status"], "completed", "{record}");
    let lines = shell_lines(&c, "env-probe").await;
    assert_eq!(lines, vec!["token=unset workers=unset key=unset given=yes".to_string()]);
}

/// Nor can such a command read them from the server's own environment
/// block, which the kernel shows every process of the same user as
/// `/proc/{pid}/environ`: the server moved its secrets out of it at start,
/// and still uses them (the token below is the one it checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_command_cannot_read_the_servers_secrets_from_proc() {
    let server = common::Server::serve_with_env(
        &[
            "--db",
            "memory",
            "--allow-shell",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "m=http://127.0.0.1:1/v1,key_env=MODEL_KEY_P",
        ],
        &[("CAIRN_TOKEN", "host-secret-p"), ("MODEL_KEY_P", "model-secret-p")],
    )
    .await;
    let c = server.with_token("host-secret-p");
    let probe = json!({"command": "tr '\\000' '\\n' < /proc/$PPID/environ"});
    let (status, _) = c
        .post(
            "/v1/processes",
            json!({"id": "proc-probe", "disposition": "rerunnable",
                   "input": {"type": "tool_call", "tool": "shell", "args": probe}}),
        )
        .await;
    assert_eq!(status, 201);
    let record = c.wait_for("proc-probe", |r| r["status"] != "running").await;
    assert_eq!(record["status"], "completed", "{record}");
    let lines = shell_lines(&c, "proc-probe").await;
    // The block was read (the test's own variables are in it), and holds
    // neither secret.
    assert!(lines.iter().any(|l| l.starts_with("PATH=")), "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("host-secret-p") || l.contains("model-secret-p")),
        "{lines:?}"
    );
}

/// `cairn serve --help` does not print the database URL the environment
/// gives (it may carry a password).
#[test]
fn serve_help_does_not_show_the_database_url_of_the_environment() {
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--help"])
        .env("CAIRN_DATABASE_URL", "postgres://bob:hunter2@db/cairn")
        .output()
        .expect("run cairn");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("CAIRN_DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

/// A second SIGTERM during the shutdown grace ends the grace at once: a
/// connection whose body never comes does not hold the server for its whole
/// `--shutdown-grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_shutdown_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut server = Server::serve_logging_to(
        &[
            "--db",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "120s",
            "--body-timeout",
            "120s",
        ],
        &log,
    )
    .await;
    let slow = server.hold_a_connection_open().await;
    let pid = server.pid() as libc::pid_t;
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // The server is in its grace once it says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("shutting down")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never began its shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the second signal ended the 120 s grace");
    assert!(status.success(), "{status:?}");
    drop(slow);
}

/// A `RUST_LOG` that does not parse is said on stderr, not quietly replaced
/// by the default filter.
#[test]
fn an_unreadable_log_filter_is_said() {
    let out = std::process::Command::new(common::BIN)
        .args(["ls", "--server", "http://127.0.0.1:1"])
        .env("RUST_LOG", "warn,cairn=loud")
        .env_remove("CAIRN_TOKEN")
        .output()
        .expect("run cairn");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("RUST_LOG `warn,cairn=loud` is not a filter"), "{said}");
}

/// A SIGTERM sent the moment the server says it listens is heard: it drains
/// and exits 0, rather than dying by the signal's default action (its
/// handlers are in place before it prints its address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_as_soon_as_the_server_listens_is_heard() {
    for _ in 0..5 {
        let mut server = Server::serve(&["--db", "memory", "--listen", "127.0.0.1:0"]).await;
        // SAFETY: sending a signal to our own child process by its pid.
        assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) }, 0);
        let status = server.wait_exit(Duration::from_secs(20)).expect("it exits");
        assert!(status.success(), "{status:?}");
    }
}

/// `start`, `module put` and `schedule add` say with `--json` whether the
/// call created the thing (`"created": true`, the server's 201) or found it
/// there already (`false`, its 200); a repeated `schedule add` says in
/// words that the schedule already existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_says_whether_it_created() {
    let server = Server::start(&[]).await;
    let created = |out: &common::CliOutput| {
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.json()["created"].clone()
    };
    let body = waiter("k1").to_string();
    let first = server.cli(&["--json", "start", &body], None).await;
    assert_eq!(created(&first), json!(true));
    assert_eq!(first.json()["id"], "k1", "the record is the document");
    let again = server.cli(&["start", "--json", &body], None).await;
    assert_eq!(created(&again), json!(false));
    assert_eq!(again.json()["id"], "k1");

    let source = "export async function f(ctx) { return 1; }\n";
    let first = server.cli(&["--json", "module", "put", "-"], Some(source)).await;
    assert_eq!(created(&first), json!(true));
    assert!(first.json()["module_ref"].is_string(), "{}", first.stdout);
    let again = server.cli(&["--json", "module", "put", "-"], Some(source)).await;
    assert_eq!(created(&again), json!(false));

    let template = json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}},
                          "disposition": "rerunnable"})
    .to_string();
    let add = ["schedule", "add", "hourly", "--every", "1h", template.as_str()];
    let first = server.cli(&[&["--json"][..], &add[..]].concat(), None).await;
    assert_eq!(created(&first), json!(true));
    assert_eq!(first.json()["id"], "hourly");
    let again = server.cli(&[&["--json"][..], &add[..]].concat(), None).await;
    assert_eq!(created(&again), json!(false));
    let said = server.cli(&add, None).await;
    assert_eq!(said.code, 0, "{}", said.stderr);
    assert!(
        said.stdout
            .starts_with("hourly already existed, as given (nothing changed)\n"),
        "{}",
        said.stdout
    );
}

/// `ls` and `prune` take `--created-from` (inclusive) and `--created-before`
/// (exclusive), as epoch milliseconds or RFC 3339; a range with nothing in
/// it, or a time that is not one, is a usage error that asks the server
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_prune_take_a_created_range() {
    let server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(
        c.start(common::tool_start("r1", "echo", json!({"value": 1}), "rerunnable"))
            .await
            .0,
        201
    );
    let record = c.wait_for("r1", |r| r["status"] == "completed").await;
    let at = record["created_at_ms"].as_u64().expect("created_at_ms");
    let srv = &server;
    let rfc3339 =
        |ms: u64| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    let listed = |args: Vec<String>| async move {
        let mut line = vec!["--json".to_string(), "ls".into(), "--status".into(), "any".into()];
        line.extend(args);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        let out = srv.cli(&line, None).await;
        assert_eq!(out.code, 0, "{line:?}: {}", out.stderr);
        out.json()["processes"].as_array().expect("processes").len()
    };
    let flag = |name: &str, ms: u64| vec![format!("--created-{name}"), ms.to_string()];
    assert_eq!(listed(flag("from", at)).await, 1);
    assert_eq!(listed(flag("from", at + 1)).await, 0);
    assert_eq!(listed(flag("before", at + 1)).await, 1);
    assert_eq!(listed(flag("before", at)).await, 0);
    assert_eq!(listed(vec!["--created-from".into(), rfc3339(at)]).await, 1);
    assert_eq!(listed(vec!["--created-before".into(), rfc3339(at)]).await, 0);
    // With `--after-id`, what comes after that process newest first.
    let mut paged = flag("before", at + 1);
    paged.extend(["--after-id".to_string(), "r1".into()]);
    assert_eq!(listed(paged).await, 0);

    let prune = |range: Vec<String>| async move {
        let mut line = vec!["--json", "prune", "--older-than", "0s", "--no-projector"];
        line.extend(range.iter().map(String::as_str));
        let out = srv.cli(&line, None).await;
        assert_eq!(out.code, 0, "{line:?}: {}", out.stderr);
        out.json()["pruned"].clone()
    };
    assert_eq!(prune(flag("before", at)).await, 0);
    assert_eq!(prune(flag("from", at + 1)).await, 0);
    assert_eq!(c.get("/v1/processes/r1").await.0, 200, "left as it was");
    let mut range = vec!["--created-from".to_string(), rfc3339(at)];
    range.extend(flag("before", at + 1));
    assert_eq!(prune(range).await, 1);
    assert_eq!(c.get("/v1/processes/r1").await.0, 410, "pruned");

    const FIVE_MS: &str = "1970-01-01T00:00:00.005Z";
    for line in [
        &["ls", "--created-from", FIVE_MS, "--created-before", FIVE_MS][..],
        &[
            "prune",
            "--older-than",
            "0s",
            "--no-projector",
            "--created-from",
            "1970-01-01T00:00:00.006Z",
            "--created-before",
            FIVE_MS,
        ],
    ] {
        let out = server.cli(line, None).await;
        assert_eq!(out.code, 2, "{line:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("`--created-from` (1970-01-01T00:00:00.00")
                && out.stderr.contains("no process was created in between"),
            "{}",
            out.stderr
        );
    }
    // Epoch seconds (`$(date +%s)`) would be January 1970 read as
    // milliseconds: refused, on `ls` and on `prune`, before the server is asked.
    let seconds = (at / 1000).to_string();
    for line in [
        &["ls", "--created-before", &seconds][..],
        &[
            "prune",
            "--older-than",
            "1s",
            "--no-projector",
            "--status",
            "completed",
            "--created-from",
            &seconds,
        ],
    ] {
        let out = server.cli(line, None).await;
        assert_eq!(out.code, 2, "{line:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("looks like epoch seconds")
                && out.stderr.contains(&format!("give milliseconds (`{seconds}000`)")),
            "{}",
            out.stderr
        );
    }
    let out = server.cli(&["ls", "--created-from", "last week"], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`--created-from` takes epoch milliseconds (`1796083200000`) or an RFC 3339 time"),
        "{}",
        out.stderr
    );
}

/// `cairn ARGS` with `env` set (and no other `CAIRN_SERVER` or `CAIRN_TOKEN`).
async fn cairn_with_env(args: &[&str], env: &[(&str, &str)]) -> common::CliOutput {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(args)
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("cli finished in time")
        .expect("cli ran");
    common::CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The commands a note suggests pasting carry the `--server` typed on the
/// command line (pasted, they ask the same server), never the token (the
/// note says one is needed), and no `--server` that came from `CAIRN_SERVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasted_hints_ask_the_server_that_was_typed() {
    let server = Server::start(&["--token", "host-secret"]).await;
    let base = server.base.as_str();

    let out = cairn_with_env(
        &[
            "--server",
            base,
            "run",
            "--detach",
            "--id",
            "h1",
            "--token",
            "host-secret",
            "--",
            "sleep",
            "30",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let said = out.stderr.trim();
    assert_eq!(
        said,
        format!(
            "started h1 in the background; follow it with `cairn --server {base} events h1 --follow`, wait with \
             `cairn --server {base} await h1`, stop it with `cairn --server {base} cancel h1` (with your --token)"
        ),
        "{said}"
    );
    assert!(!said.contains("host-secret"), "{said}");

    // Server and token from the environment: the commands as typed work as they are.
    let out = cairn_with_env(
        &["run", "--detach", "--id", "h2", "--", "sleep", "30"],
        &[("CAIRN_SERVER", base), ("CAIRN_TOKEN", "host-secret")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "started h2 in the background; follow it with `cairn events h2 --follow`, wait with `cairn await h2`, \
         stop it with `cairn cancel h2`"
    );

    // The server typed, the token from the environment: no token note.
    let out = cairn_with_env(&["cancel", "h1", "--server", base], &[("CAIRN_TOKEN", "host-secret")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    server
        .with_token("host-secret")
        .wait_for("h1", |r| r["status"] != "running")
        .await;
    let out = cairn_with_env(
        &["run", "--detach", "--id", "h1", "--server", base, "--", "sleep", "30"],
        &[("CAIRN_TOKEN", "host-secret")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "see how with `cairn --server {base} get h1`, its output with `cairn --server {base} events h1`"
        )) && !out.stderr.contains("--token"),
        "{}",
        out.stderr
    );
    let out = cairn_with_env(&["cancel", "h2", "--server", base, "--token", "host-secret"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A signal id sent again with another payload is refused naming the signal
/// id, not the replay key it is stored under; a completion that fails says
/// `x1 failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_signal_id_and_a_failed_completion_read_well() {
    let server = Server::start(&[]).await;
    let ext = json!({"id": "x1", "input": {"type": "external"}, "disposition": "externally_owned"});
    let out = server.cli(&["start", &ext.to_string()], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server
        .cli(&["signal", "x1", "go", "--id", "s1", "--payload", "1"], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The same payload again: the same event.
    let out = server
        .cli(&["signal", "x1", "go", "--id", "s1", "--payload", "1"], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server
        .cli(&["signal", "x1", "go", "--id", "s1", "--payload", "2"], None)
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("signal id `s1` of `go` was already sent to process `x1` with another payload")
            && out.stderr.contains("replay_conflict")
            && !out.stderr.contains("signal:go:s1"),
        "{}",
        out.stderr
    );
    let out = server.cli(&["complete", "x1", "--failure", "red"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "x1 failed");
}

/// A file that is not UTF-8 is refused naming it and the offset of its first
/// byte that is not, before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_utf8_is_refused_naming_the_byte() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("latin1.js");
    // `é` in Latin-1: 0xE9 at offset 39.
    std::fs::write(&module, b"export function f() { return 1 }\n/* caf\xe9 */\n").expect("write");
    let module = module.to_str().expect("a UTF-8 path");
    let out = server.cli(&["module", "put", module], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "`{module}` is not UTF-8 text: the byte at offset 39 (0xE9) is not valid UTF-8"
        )),
        "{}",
        out.stderr
    );
    let out = server.cli(&["--json", "module", "ls"], None).await;
    assert_eq!(out.json()["modules"], json!([]), "nothing was stored");

    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, b"{\"a\": \"\xff\"}").expect("write");
    let at = format!("@{}", payload.display());
    let out = server.cli(&["start", &at], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "`{}` is not UTF-8 text: the byte at offset 7 (0xFF) is not valid UTF-8",
            payload.display()
        )),
        "{}",
        out.stderr
    );
}

/// `cairn serve` with `env` (every other `CAIRN_*` setting removed): its
/// exit code and stderr, the server killed if it started after all.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("serve").args(args);
    for var in [
        "CAIRN_DATABASE_URL",
        "CAIRN_LISTEN",
        "CAIRN_TOKEN",
        "CAIRN_WORKERS",
        "CAIRN_LEASE_TTL",
        "CAIRN_NODE_ID",
        "CAIRN_SCRIPT_HEAP_BYTES",
        "CAIRN_SCRIPT_CPU",
        "CAIRN_SCRIPT_MAX_CALLS",
        "CAIRN_SCRIPT_MAX_JOURNAL_BYTES",
        "CAIRN_SESSION_TOKENS",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cairn serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A `serve` setting refused for its value from the environment names the
/// variable, not a flag the command line does not hold; the same value
/// given as the flag names the flag.
#[test]
fn a_serve_setting_refused_from_the_environment_names_its_variable() {
    for (var, value, flag, said) in [
        ("CAIRN_LEASE_TTL", "5", "--lease-ttl", "must be at least 1s"),
        ("CAIRN_LEASE_TTL", "25h", "--lease-ttl", "must be at most 24h"),
        ("CAIRN_LISTEN", "", "--listen", "expected HOST:PORT"),
        ("CAIRN_LISTEN", "localhost", "--listen", "expected HOST:PORT"),
        ("CAIRN_NODE_ID", "", "--node-id", "must be 1-64 ASCII letters"),
        ("CAIRN_NODE_ID", "a b", "--node-id", "must be 1-64 ASCII letters"),
        ("CAIRN_WORKERS", "0", "--workers", "must be at least 1"),
        (
            "CAIRN_SCRIPT_HEAP_BYTES",
            "20000",
            "--script-heap-bytes",
            "must be at least 1048576",
        ),
        ("CAIRN_SCRIPT_CPU", "0", "--script-cpu", "must be more than 0"),
        (
            "CAIRN_SCRIPT_MAX_CALLS",
            "0",
            "--script-max-calls",
            "must be at least 1",
        ),
        (
            "CAIRN_SCRIPT_MAX_JOURNAL_BYTES",
            "0",
            "--script-max-journal-bytes",
            "must be at least 1",
        ),
        (
            "CAIRN_SCRIPT_MAX_CALLS",
            "1000001",
            "--script-max-calls",
            "must be at most 1000000",
        ),
    ] {
        let listen: &[&str] = if var == "CAIRN_LISTEN" {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let args: Vec<&str> = ["--db", "memory"].iter().chain(listen).copied().collect();
        let (code, stderr) = serve_refused(&args, &[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        let named = format!("`{var}` (the environment's `{flag}`)");
        assert!(
            stderr.contains(&named) && stderr.contains(said),
            "{var}={value}: {stderr}"
        );
        // The flag given instead is named as the flag.
        let mut args = args.clone();
        args.extend([flag, value]);
        let (code, stderr) = serve_refused(&args, &[]);
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(&format!("`{flag}`")) && stderr.contains(said) && !stderr.contains(var),
            "{flag} {value}: {stderr}"
        );
    }
    // A host name that does not resolve: not the flag's fault (exit 1), but
    // still said of where it came from.
    let (code, stderr) = serve_refused(&["--db", "memory"], &[("CAIRN_LISTEN", "cairn-test.invalid:7070")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot resolve `CAIRN_LISTEN` (the environment's `--listen`) `cairn-test.invalid:7070`"),
        "{stderr}"
    );
}

/// `serve --help` shows each environment variable by its name alone, set or
/// not (`[env: CAIRN_LISTEN=]` reads as set to empty), and never a value: a
/// secret's least of all.
#[test]
fn serve_help_names_its_variables_without_values() {
    for env in [
        &[][..],
        &[
            ("CAIRN_LISTEN", "127.0.0.1:9"),
            ("CAIRN_TOKEN", "sekrit-host"),
            ("CAIRN_NODE_ID", "node-from-env"),
            ("CAIRN_WORKERS", "4242"),
        ],
    ] {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["serve", "--help"]);
        for var in [
            "CAIRN_LISTEN",
            "CAIRN_TOKEN",
            "CAIRN_NODE_ID",
            "CAIRN_WORKERS",
            "CAIRN_LEASE_TTL",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd.envs(env.iter().copied()).output().expect("run cairn");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{help}");
        let shown: Vec<&str> = help
            .split("[env: ")
            .skip(1)
            .map(|r| r.split(']').next().unwrap_or(r))
            .collect();
        assert_eq!(shown.len(), 10, "{help}");
        for var in shown {
            assert!(
                var.starts_with("CAIRN_") && var.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "`[env: {var}]` in {help}"
            );
        }
        for (_, value) in env {
            assert!(!help.contains(value), "{value} shown: {help}");
        }
    }
}

/// `cairn cancel --session S`: every running process granted to the session
/// has its cancellation requested, another session's work is untouched; a
/// session token may not name another session; a process id and `--session`
/// together, or neither, is a usage error that sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_session_cancels_the_sessions_running_work() {
    let server = Server::start(common::TWO_SESSIONS).await;
    let host = server.with_token("host-secret");
    let cli = |token: &'static str, args: &'static [&'static str]| {
        let base = server.base.clone();
        async move { common::run_cli(&base, Some(token), args, None).await }
    };
    for (id, session) in [("a1", "s1"), ("a2", "s1"), ("a3", "s1"), ("b1", "s2")] {
        let mut body = waiter(id);
        body["grant"] = json!({"session_scope": {"session_id": session}});
        assert_eq!(host.start(body).await.0, 201);
        host.wait_for(id, |r| !r["wait"].is_null()).await;
    }
    let untouched = |r: &Value| r["status"] == "running" && r["cancel_request"].is_null();

    for (args, said) in [
        (&["cancel"][..], "--session"),
        (&["cancel", "a1", "--session", "s1"][..], "cannot be used with"),
    ] {
        let out = cli("host-secret", args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(said), "{args:?}: {}", out.stderr);
    }
    let out = cli("tok-2", &["cancel", "--session", "s1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    for id in ["a1", "a2", "a3", "b1"] {
        let (_, r) = host.get(&format!("/v1/processes/{id}")).await;
        assert!(untouched(&r), "nothing changed: {r}");
    }

    let out = cli("host-secret", &["cancel", "--session", "s1", "--reason", "runaway"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with(
            "cancellation requested for 3 running processes granted to session s1 or descending from them ("
        ),
        "{}",
        out.stdout
    );
    for id in ["a1", "a2", "a3"] {
        let r = host.wait_for(id, |r| r["status"] == "cancelled").await;
        assert_eq!(r["cancel_request"]["reason"], "runaway", "{r}");
    }
    let (_, r) = host.get("/v1/processes/b1").await;
    assert!(untouched(&r), "another session's work is untouched: {r}");

    // Nothing left to cancel; the JSON answer is the server's counts.
    let out = cli("tok-1", &["cancel", "--session", "s1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "session s1 has no running process granted to it whose cancellation was not requested already: nothing to cancel"
    );
    let out = cli("tok-2", &["--json", "cancel", "--session", "s2"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["requested"], 1, "{}", out.stdout);
    host.wait_for("b1", |r| r["status"] == "cancelled").await;
}

/// A proxy in front of `server` counting what goes through it: the
/// listing requests the client makes and the bytes the server answers.
struct Counted {
    base: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counted {
    async fn start(server: &Server) -> Counted {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let upstream = server.base.trim_start_matches("http://").to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (req, ans) = (requests.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.expect("upstream");
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let req = req.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        req.lock().expect("requests").extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let ans = ans.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        ans.fetch_add(n, Ordering::Relaxed);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Counted {
            base,
            requests,
            answered,
        }
    }

    /// The listing requests made so far.
    fn listings(&self) -> usize {
        let sent = self.requests.lock().expect("requests");
        let needle = b"GET /v1/processes?";
        sent.windows(needle.len()).filter(|w| w == needle).count()
    }
}

/// `cairn ls --limit 20` over thousands of processes, their ids in no
/// order of their creation, prints the newest 20, newest first, and reads
/// about what it prints: one newest-first page of the 20 and one more, not
/// every match (or the first 10,000) in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_with_a_limit_reads_about_what_it_prints() {
    const N: usize = 4_000;
    let server = Server::start(&[]).await;
    let c = server.client();
    // Ids scattered over the id order: 1777 and N share no factor.
    let ids: Vec<String> = (0..N).map(|i| format!("p{:05}", (i * 1777) % N)).collect();
    for chunk in ids.chunks(200) {
        let starts = chunk.iter().map(|id| {
            let c = c.clone();
            let body = json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned"});
            async move { c.start(body).await.0 }
        });
        for status in futures::future::join_all(starts).await {
            assert_eq!(status, 201);
        }
    }
    // Every process, newest first (the greater id first within a millisecond).
    let mut all: Vec<(u64, String)> = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = c.get(&format!("/v1/processes?limit=1000&after_id={after}")).await;
        assert_eq!(status, 200, "{page}");
        for p in page["processes"].as_array().expect("processes") {
            all.push((
                p["created_at_ms"].as_u64().expect("created"),
                p["id"].as_str().expect("id").into(),
            ));
        }
        match page["next_after_id"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(all.len(), N);
    all.sort_by(|a, b| b.cmp(a));
    let newest: Vec<&str> = all[..20].iter().map(|(_, id)| id.as_str()).collect();
    let (_, one) = c.get(&format!("/v1/processes/{}", newest[0])).await;
    let record_bytes = one.to_string().len();

    let proxy = Counted::start(&server).await;
    let out = common::run_cli(&proxy.base, None, &["--json", "ls", "--limit", "20"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let shown: Vec<String> = out.json()["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(shown, newest);
    assert!(out.stderr.contains("the newest 20 shown"), "{}", out.stderr);
    let (requests, answered) = (
        proxy.listings(),
        proxy.answered.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(requests, 1, "{requests} listing requests");
    // The 20 shown and the one saying more match.
    assert!(
        answered < 30 * record_bytes,
        "{answered} bytes answered, {} records' worth, to show 20 of {N}",
        answered / record_bytes
    );
    // The table shows the same rows.
    let out = common::run_cli(&proxy.base, None, &["ls", "--limit", "20"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rows, newest);
}

/// `cairn signal` to a process waiting for a signal of another name
/// succeeds (the signal is kept, SPEC §13) and notes on stderr what it
/// waits for; a signal of the awaited name has no note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_of_another_name_is_noted_as_kept() {
    let server = Server::start(&[]).await;
    let (status, _) = server.client().start(waiter("gw")).await;
    assert_eq!(status, 201);
    server
        .client()
        .wait_for("gw", |r| r["wait"]["kind"] == "signal" && r["wait"]["name"] == "go")
        .await;
    let out = server.cli(&["signal", "gw", "og"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("signal.og recorded on gw"), "{}", out.stdout);
    assert_eq!(
        out.stderr,
        "note: gw waits for signal `go`, not `og`; the signal is kept for a later wait\n"
    );
    let out = server.cli(&["signal", "gw", "go"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("note:"), "{}", out.stderr);
}

/// An empty `CAIRN_SERVER` is a usage error (exit 2) saying so, not the
/// default server; an empty `--server` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_server_is_refused() {
    let out = cairn_with_env(&["ls"], &[("CAIRN_SERVER", "")]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("CAIRN_SERVER is set but empty") && !out.stderr.contains("unreachable"),
        "{}",
        out.stderr
    );
    let out = cairn_with_env(&["--json", "mcp"], &[("CAIRN_SERVER", "")]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let said: Value = serde_json::from_str(out.stderr.trim()).expect("a JSON error");
    assert_eq!(said["error"]["code"], "usage", "{said}");
    let out = cairn_with_env(&["ls", "--server", ""], &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--server"), "{}", out.stderr);
}
