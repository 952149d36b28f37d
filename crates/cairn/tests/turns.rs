//! Session turns through `cairn serve --model`, against the testkit's fake
//! OpenAI-compatible server: deltas on the live SSE stream before the final
//! answer, `unknown_model` at start, and a server killed with SIGKILL
//! mid-turn then restarted over the same database.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_testkit::fake_openai::{FakeOpenAi, Reply};
use common::Server;
use serde_json::json;

const KEY_ENV: &str = "CAIRN_TURNS_HTTP_KEY";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_deltas_on_sse_before_its_answer() {
    std::env::set_var(KEY_ENV, "sk-http-secret");
    let fake = FakeOpenAi::start().await;
    let model = format!("default={},model=fake-1,key_env={KEY_ENV}", fake.base_url());
    let server = Server::start(&["--model", &model]).await;
    let client = server.client();
    fake.push(Reply::SlowText {
        text: "streaming answers as they form".into(),
        delay: Duration::from_millis(50),
    });
    let (status, body) = client
        .start(json!({
            "id": "turn-1",
            "disposition": "rerunnable",
            "input": {"type": "session_turn",
                      "session": {"system": "Be brief.", "max_steps": 2},
                      "input": "Say something.",
                      "output_contract": {"type": "text"}}
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut sse = client.sse("turn-1", "", None).await;
    let mut seen = Vec::new();
    while let Some(e) = sse.next(Duration::from_secs(20)).await {
        let event: serde_json::Value = serde_json::from_str(&e.data).expect("json");
        let t = event["event_type"].as_str().unwrap_or_default().to_string();
        seen.push(t.clone());
        if t == "process.completed" {
            break;
        }
    }
    let first_delta = seen.iter().position(|t| t == "turn.delta").expect("a delta on SSE");
    let response = seen.iter().position(|t| t == "turn.response").expect("the response");
    assert!(first_delta < response, "{seen:?}");
    let done = client.wait_for("turn-1", |r| r["status"] == "completed").await;
    assert_eq!(done["outcome"]["value"]["text"], "streaming answers as they form");

    let (status, body) = client
        .start(json!({
            "id": "turn-2",
            "disposition": "rerunnable",
            "input": {"type": "session_turn", "session": {"model": "absent"}, "input": "hi"}
        }))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_model");
    assert_eq!(fake.received().len(), 1);
}

async fn count(client: &common::Client, id: &str, event_type: &str) -> usize {
    let (status, page) = client.get(&format!("/v1/processes/{id}/events?limit=1000")).await;
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .count()
}

/// A server on a new SQLite file (kept in the directory answered) with the
/// fake endpoint as its `default` model, for a test that kills and restarts
/// it: the directory, the database URL, the `--model` value, the endpoint
/// and the server.
async fn on_sqlite_with_a_fake_model() -> (tempfile::TempDir, String, String, FakeOpenAi, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let fake = FakeOpenAi::start().await;
    let model = format!("default={},model=fake-1", fake.base_url());
    let server = Server::start_on(&db, &["--model", &model]).await;
    (dir, db, model, fake, server)
}

/// SIGKILL while a turn's tool call runs, after its first model answer:
/// after a restart over the same file the turn goes on from its journal. The
/// endpoint never sees the finished step again and no finished tool call runs
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_killed_mid_tool_call_resumes_from_its_journal() {
    let (_dir, db, model, fake, server) = on_sqlite_with_a_fake_model().await;
    let client = server.client();
    fake.push(Reply::ToolCalls(vec![
        ("echo".into(), json!({"value": 1})),
        ("wait_signal".into(), json!({"name": "go"})),
    ]));
    let (status, body) = client
        .start(json!({
            "id": "crash-1",
            "disposition": "rerunnable",
            "input": {"type": "session_turn",
                      "session": {"tools": ["echo", "wait_signal"]},
                      "input": "Echo 1, then wait for go."}
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    client.wait_for("crash-1%2F1.1", |r| r["status"] == "completed").await;

    client
        .wait_for("crash-1%2F1.2", |r| {
            r["wait"]["kind"] == "signal" && r["lease"].is_null()
        })
        .await;
    client
        .wait_for("crash-1", |r| r["wait"]["kind"] == "children" && r["lease"].is_null())
        .await;

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);

    let server = Server::start_on(&db, &["--model", &model]).await;
    let client = server.client();
    fake.push(Reply::Text("all done".into()));
    let (status, body) = client
        .post(
            "/v1/processes/crash-1%2F1.2/signals/go",
            json!({"signal_id": "once", "payload": {"ok": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = client.wait_for("crash-1", |r| r["status"] != "running").await;
    assert_eq!(done["outcome"]["value"], json!({"text": "all done"}), "{done}");
    assert_eq!(fake.received().len(), 2, "the finished step was not asked again");
    assert_eq!(count(&client, "crash-1", "turn.response").await, 2);
    assert_eq!(
        count(&client, "crash-1%2F1.1", "process.started").await,
        1,
        "echo ran once"
    );
    let second = &fake.received()[1].body["messages"];
    let tools: Vec<&serde_json::Value> = second
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tools.len(), 2);
    assert_eq!(tools[1]["content"], "{\"ok\":true}");
}

/// SIGKILL while a turn holds its lease, streaming its second model answer
/// (the first asked for a tool call, which finished): after a restart over
/// the same file the unfinished call is made again, once, with the same
/// request. The finished step is not asked again and its tool call is not
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_killed_mid_answer_asks_that_answer_again_once() {
    let (_dir, db, model, fake, server) = on_sqlite_with_a_fake_model().await;
    let client = server.client();
    fake.push(Reply::ToolCalls(vec![("echo".into(), json!({"value": 1}))]));
    // Never resumed: the second answer stalls mid-way until the kill.
    let resume = Arc::new(tokio::sync::Notify::new());
    fake.push(Reply::Paused {
        before: "Almost th".into(),
        after: "ere".into(),
        resume: resume.clone(),
    });
    let (status, body) = client
        .start(json!({
            "id": "crash-2",
            "disposition": "rerunnable",
            "input": {"type": "session_turn",
                      "session": {"tools": ["echo"]},
                      "input": "Echo 1, then answer."}
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    // The second answer is streaming: a delta of step 2 is journaled.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = client.get("/v1/processes/crash-2/events?limit=1000").await;
        assert_eq!(status, 200, "{page}");
        let streaming = page["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["event_type"] == "turn.delta" && e["payload"]["step"] == 2);
        if streaming {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no delta of step 2: {page}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, held) = client.get("/v1/processes/crash-2").await;
    assert!(
        held["status"] == "running" && !held["lease"].is_null(),
        "the turn holds its lease: {held}"
    );
    assert_eq!(fake.received().len(), 2);

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
    drop(server);

    fake.push(Reply::Text("all done".into()));
    let server = Server::start_on(&db, &["--model", &model]).await;
    let client = server.client();
    let done = client.wait_for("crash-2", |r| r["status"] != "running").await;
    assert_eq!(done["outcome"]["value"], json!({"text": "all done"}), "{done}");
    let received = fake.received();
    assert_eq!(
        received.len(),
        3,
        "the unfinished call was made again once, the finished step not at all"
    );
    assert_eq!(received[2].body, received[1].body, "the same request again");
    assert_eq!(count(&client, "crash-2", "turn.response").await, 2);
    let (status, listed) = client.get("/v1/processes?caused_by=crash-2&status=any").await;
    assert_eq!(status, 200, "{listed}");
    let children: Vec<&str> = listed["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(children, ["crash-2/1.1"], "one tool call, started once");
    assert_eq!(
        count(&client, "crash-2%2F1.1", "process.started").await,
        1,
        "echo ran once"
    );
}

/// `ctx.turn` in a script (SPEC §14) is a `session_turn` child: the script
/// gets the turn's success value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_runs_a_turn_as_its_child() {
    let fake = FakeOpenAi::start().await;
    let model = format!("default={},model=fake-1", fake.base_url());
    let server = Server::start(&["--model", &model]).await;
    let client = server.client();
    fake.push(Reply::Text("{\"verdict\": \"ship\"}".into()));
    let source = r#"
        export async function review(ctx, args) {
          const out = await ctx.turn({system: "You review."}, "Ship " + args.build + "?",
            {type: "json_schema", schema: {type: "object", required: ["verdict"]}});
          return {build: args.build, verdict: out.verdict};
        }"#;
    let (status, module) = client.post("/v1/modules", json!({"source": source})).await;
    assert_eq!(status, 201, "{module}");
    let (status, body) = client
        .start(json!({
            "id": "review-1",
            "disposition": "rerunnable",
            "input": {"type": "script", "module_ref": module["module_ref"],
                      "process_name": "review", "args": {"build": 42}}
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    let done = client.wait_for("review-1", |r| r["status"] != "running").await;
    assert_eq!(
        done["outcome"]["value"],
        json!({"build": 42, "verdict": "ship"}),
        "{done}"
    );
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["messages"][1]["content"], "Ship 42?");
    let (status, child) = client.get("/v1/processes/review-1%2F1").await;
    assert_eq!(status, 200, "{child}");
    assert_eq!(child["input"]["type"], "session_turn");
}

/// The model's key reaches the endpoint and no log line, even at `debug`,
/// through a retried 429 and a refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_appears_in_no_log_line() {
    const SECRET: &str = "sk-log-secret-91c2";
    std::env::set_var("CAIRN_TURNS_LOG_KEY", SECRET);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let fake = FakeOpenAi::start().await;
    let model = format!("default={},model=fake-1,key_env=CAIRN_TURNS_LOG_KEY", fake.base_url());
    let server =
        Server::serve_logging_to(&["--db", "memory", "--listen", "127.0.0.1:0", "--model", &model], &log).await;
    let client = server.client();
    fake.push(Reply::Status {
        status: 429,
        retry_after: None,
        message: "slow down".into(),
    });
    fake.push(Reply::Text("fine".into()));
    fake.push(Reply::Status {
        status: 401,
        retry_after: None,
        message: "bad key".into(),
    });
    for id in ["logged-1", "logged-2"] {
        let (status, body) = client
            .start(json!({"id": id, "disposition": "rerunnable",
                          "input": {"type": "session_turn", "input": "hi"}}))
            .await;
        assert_eq!(status, 201, "{body}");
        client.wait_for(id, |r| r["status"] != "running").await;
    }
    let received = fake.received();
    assert_eq!(received.len(), 3);
    assert!(received
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {SECRET}"))));
    drop(server);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("retrying"), "the retry was logged: {text}");
    assert!(!text.contains(SECRET), "the key is in the log");
}
