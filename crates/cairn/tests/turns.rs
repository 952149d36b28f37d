//! Session turns through `cairn serve --model`, against the testkit's fake
//! OpenAI-compatible server: deltas on the live SSE stream before the final
//! answer, and `unknown_model` at start.

mod common;

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
