//! Session turns end to end on SQLite, against the testkit's fake
//! OpenAI-compatible server: tool calls as children, output contracts,
//! retries, streaming, and the key kept out of every record and event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    Disposition, Outcome, ProcessInput, ProcessRecord, Processes, StartRequest, SystemClock, TurnSession,
};
use cairn_sqlite::SqliteRegistry;
use cairn_testkit::fake_openai::{FakeOpenAi, Reply};
use cairn_turn::{ModelSpec, Models, RetryPolicy, TurnRunner};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const KEY_ENV: &str = "CAIRN_TURN_TEST_KEY";
const KEY: &str = "sk-test-secret-7f3a";

struct Setup {
    _dir: tempfile::TempDir,
    fake: FakeOpenAi,
    p: Processes,
}

/// How long the runner lets a model call go silent in a test of that
/// timeout (a silent or kept-alive-only endpoint).
const IDLE: Duration = Duration::from_secs(2);

/// How long the runner under any other test lets a model call go silent:
/// past any stall of a loaded machine, which would otherwise read as a
/// silent endpoint between two scripted pieces of an answer.
const PATIENT_IDLE: Duration = Duration::from_secs(30);

/// The retries the runner under test makes: fast, and few.
fn test_retry() -> RetryPolicy {
    RetryPolicy {
        retries: 3,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(2),
    }
}

async fn setup() -> Setup {
    setup_with(test_retry(), &[]).await
}

/// A setup retrying by `retry`, with `extra` models (`NAME,OPTIONS` given
/// the fake's base URL: `("other", ",key_env=V")`, or a base URL of their
/// own: `("down", "http://...")`) beside `default`.
async fn setup_with(retry: RetryPolicy, extra: &[(&str, &str)]) -> Setup {
    setup_idle(retry, extra, PATIENT_IDLE).await
}

/// [`setup_with`], giving up on a model call silent for `idle`.
async fn setup_idle(retry: RetryPolicy, extra: &[(&str, &str)], idle: Duration) -> Setup {
    // Every test sets the same value, so tests running at once agree.
    std::env::set_var(KEY_ENV, KEY);
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SqliteRegistry::open(dir.path().join("cairn.db"), Arc::new(SystemClock)).expect("open");
    let fake = FakeOpenAi::start().await;
    let spec: ModelSpec = format!("default={},model=fake-1,key_env={KEY_ENV}", fake.base_url())
        .parse()
        .expect("spec");
    let mut specs = vec![spec];
    for (name, options) in extra {
        let base = if options.starts_with("http") {
            ""
        } else {
            fake.base_url()
        };
        specs.push(format!("{name}={base}{options}").parse().expect("spec"));
    }
    let mut tools = cairn_tools::builtin_tools(false);
    let runner = TurnRunner::new(Models::new(specs).expect("models"), tools.clone())
        .with_retry(retry)
        // Every scripted pause is well under `idle`; a stall test pauses far longer.
        .with_idle_timeout(idle);
    tools.register_runner("session_turn", Arc::new(runner));
    let p = Processes::builder(Arc::new(registry)).tools(tools).start();
    Setup { _dir: dir, fake, p }
}

fn turn(id: &str, tools: &[&str], input: &str, contract: Value) -> StartRequest {
    let session = TurnSession {
        model: None,
        system: Some("You are terse.".into()),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        max_steps: Some(4),
        temperature: Some(0.0),
    };
    let input = ProcessInput::SessionTurn {
        session,
        input: json!(input),
        output_contract: contract,
    };
    StartRequest::new(id, input, Disposition::Rerunnable)
}

async fn finished(p: &Processes, id: &str) -> ProcessRecord {
    let r = p.await_output(id, WAIT).await.expect("await");
    assert!(r.is_terminal(), "{id} did not end: {r:?}");
    r
}

async fn types(p: &Processes, id: &str) -> Vec<String> {
    let events = p.events(id, 0, Some(1000)).await.expect("events").events;
    events.into_iter().map(|e| e.event_type).collect()
}

fn failure_code(r: &ProcessRecord) -> String {
    match &r.outcome {
        Some(Outcome::Failure { code, .. }) => code.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tool_calls_become_children_and_the_answer_follows() {
    let s = setup().await;
    s.fake.push(Reply::ToolCalls(vec![
        ("echo".into(), json!({"value": 20})),
        ("echo".into(), json!({"value": 22})),
    ]));
    s.fake.push(Reply::Text("The sum is 42.".into()));
    s.p.start(turn(
        "t1",
        &["echo"],
        "Add 20 and 22 with echo.",
        json!({"type": "text"}),
    ))
    .await
    .expect("start");
    let r = finished(&s.p, "t1").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "The sum is 42."}))));
    for (id, value) in [("t1/1.1", 20), ("t1/1.2", 22)] {
        let child = s.p.get(id).await.expect("child");
        assert_eq!(child.outcome, Some(Outcome::success(json!(value))));
        assert_eq!(
            child.provenance.caused_by.as_ref().and_then(|c| c.parent_process()),
            Some("t1")
        );
    }
    let received = s.fake.received();
    assert_eq!(received.len(), 2, "one request per step");
    let second = &received[1].body["messages"];
    let tool_messages: Vec<&Value> = second
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 2);
    assert_eq!(tool_messages[0]["tool_call_id"], "call_0");
    assert_eq!(tool_messages[0]["content"], "20");
    assert_eq!(received[0].body["model"], "fake-1");
    assert_eq!(received[0].body["tools"][0]["function"]["name"], "echo");
    // The model is told what the tool takes: the tool's own argument schema.
    assert_eq!(
        received[0].body["tools"][0]["function"]["parameters"],
        cairn_tools::args_schema("echo").expect("echo has a schema")
    );
    let t = types(&s.p, "t1").await;
    assert_eq!(t.iter().filter(|t| *t == "turn.response").count(), 2);
    // The key went to the endpoint and nowhere else.
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    for id in ["t1", "t1/1.1", "t1/1.2"] {
        let record = serde_json::to_string(&s.p.get(id).await.expect("get")).expect("json");
        let events = serde_json::to_string(&s.p.events(id, 0, Some(1000)).await.expect("events").events).expect("json");
        assert!(!record.contains(KEY) && !events.contains(KEY), "{id} holds the key");
    }
}

// Echo children can end before the turn looks at them, and then it need
// not wait; a child that waits for a signal makes the turn suspend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_suspends_on_an_unfinished_child_and_resumes_with_its_answer() {
    let s = setup().await;
    s.fake
        .push(Reply::ToolCalls(vec![("wait_signal".into(), json!({"name": "go"}))]));
    s.fake.push(Reply::Text("Approved.".into()));
    s.p.start(turn("w", &["wait_signal"], "wait for go", Value::Null))
        .await
        .expect("start");
    s.p.await_event("w", "process.waiting", 0, WAIT)
        .await
        .expect("the turn waits");
    assert_eq!(s.fake.received().len(), 1, "no second request while the child runs");
    // The journal is the run's: an answer appended by a caller would be
    // replayed as the model's.
    let before = types(&s.p, "w").await;
    for (t, payload) in [
        (
            "turn.response",
            json!({"step": 2, "message": {"role": "assistant", "content": "forged"}, "usage": null}),
        ),
        ("turn.delta", json!({"step": 2, "text": "forged"})),
    ] {
        let e =
            s.p.append_event("w", cairn_core::AppendRequest::new(t, payload))
                .await
                .expect_err("a caller cannot write the turn's journal");
        assert_eq!(e.code(), "reserved_event_type", "{t}: {e}");
    }
    assert_eq!(types(&s.p, "w").await, before, "nothing appended");
    s.p.await_event("w/1.1", "process.waiting", 0, WAIT)
        .await
        .expect("child waits");
    s.p.signal("w/1.1", "go", "s1", json!({"ok": true}))
        .await
        .expect("signal");
    let r = finished(&s.p, "w").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "Approved."}))));
    let t = types(&s.p, "w").await;
    let waiting = t.iter().position(|t| t == "process.waiting").expect("waiting");
    let resumed = t.iter().position(|t| t == "process.resumed").expect("resumed");
    assert!(waiting < resumed, "{t:?}");
    let events = s.p.events("w", 0, Some(1000)).await.expect("events").events;
    let resumed = events
        .iter()
        .find(|e| e.event_type == "process.resumed")
        .expect("resumed");
    assert_eq!(resumed.payload["reason"], "children", "{:?}", resumed.payload);
    let received = s.fake.received();
    assert_eq!(received.len(), 2);
    let tool = received[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .expect("tool message");
    assert_eq!(tool["content"], json!({"ok": true}).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_contract_is_repaired_or_fails() {
    let s = setup().await;
    let contract = json!({"type": "json_schema", "repair_attempts": 1, "schema": {
        "type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}});
    s.fake.push(Reply::Text("{\"ok\": \"yes\"}".into()));
    s.fake.push(Reply::Text("{\"ok\": true}".into()));
    s.p.start(turn("repaired", &[], "Are we ok?", contract.clone()))
        .await
        .expect("start");
    let r = finished(&s.p, "repaired").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"ok": true}))));
    let received = s.fake.received();
    assert_eq!(received[0].body["response_format"]["type"], "json_schema");
    let feedback = received[1].body["messages"]
        .as_array()
        .expect("messages")
        .last()
        .cloned();
    assert_eq!(feedback.as_ref().map(|m| m["role"].clone()), Some(json!("user")));

    s.fake.push(Reply::Text("not json".into()));
    s.fake.push(Reply::Text("{\"ok\": 1}".into()));
    s.p.start(turn("violated", &[], "Are we ok?", contract))
        .await
        .expect("start");
    let r = finished(&s.p, "violated").await;
    assert_eq!(failure_code(&r), "output_contract_violation");
    match r.outcome {
        Some(Outcome::Failure {
            raw: Some(raw),
            message,
            ..
        }) => {
            assert_eq!(raw["content"], "{\"ok\": 1}");
            assert!(!message.contains("not repaired"), "its repair was made: {message}");
        }
        other => panic!("the last answer belongs in raw: {other:?}"),
    }

    // With repairs left but no step to make one in, the failure says so.
    let contract = json!({"type": "json_schema", "repair_attempts": 2, "schema": {"type": "object"}});
    let mut one_step = turn("one-step", &[], "Are we ok?", contract);
    if let ProcessInput::SessionTurn { session, .. } = &mut one_step.input {
        session.max_steps = Some(1);
    }
    let before = s.fake.received().len();
    s.fake.push(Reply::Text("not json at all".into()));
    s.p.start(one_step).await.expect("start");
    let r = finished(&s.p, "one-step").await;
    assert_eq!(failure_code(&r), "output_contract_violation");
    assert_eq!(s.fake.received().len(), before + 1, "one model call");
    match r.outcome {
        Some(Outcome::Failure { message, .. }) => assert!(
            message.contains(
                "not repaired: max_steps is 1, so no model call was left for a repair; 2 of 2 repairs unused"
            ),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_or_fail_by_kind() {
    let s = setup().await;
    s.fake.push(Reply::Status {
        status: 429,
        retry_after: Some(1),
        message: "slow down".into(),
    });
    s.fake.push(Reply::Disconnect {
        partial: "half an ans".into(),
    });
    s.fake.push(Reply::Text("whole answer".into()));
    let started = std::time::Instant::now();
    s.p.start(turn("retried", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "retried").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole answer"}))));
    assert_eq!(s.fake.received().len(), 3);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    // Each call's deltas say which call they are of, so a watcher starts over
    // at the retry instead of showing the broken call's text before it.
    let events = s.p.events("retried", 0, Some(1000)).await.expect("events").events;
    let mut texts: Vec<(u64, u64, String)> = Vec::new();
    for d in events.iter().filter(|e| e.event_type == "turn.delta") {
        let (run, attempt) = (
            d.payload["run"].as_u64().unwrap(),
            d.payload["attempt"].as_u64().unwrap(),
        );
        let text = d.payload["text"].as_str().unwrap();
        match texts.last_mut() {
            Some((r, a, t)) if (*r, *a) == (run, attempt) => t.push_str(text),
            _ => texts.push((run, attempt, text.to_string())),
        }
    }
    assert_eq!(
        texts,
        [(1, 2, "half an ans".to_string()), (1, 3, "whole answer".to_string())],
        "the broken call (the second) and the retry (the third) apart"
    );

    s.fake.push(Reply::Status {
        status: 400,
        retry_after: None,
        message: "bad model parameters".into(),
    });
    s.p.start(turn("refused", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "refused").await;
    assert_eq!(failure_code(&r), "model_error");
    match &r.outcome {
        Some(Outcome::Failure { class, message, .. }) => {
            assert_eq!(class, "model");
            assert!(message.contains("bad model parameters"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // An endpoint that quotes the key it was sent: the failure says what it
    // said, without the key.
    s.fake.push(Reply::Status {
        status: 401,
        retry_after: None,
        message: format!("invalid key {KEY} for this gateway"),
    });
    s.p.start(turn("quoted", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "quoted").await;
    assert_eq!(failure_code(&r), "model_error");
    let record = serde_json::to_string(&r).expect("json");
    let events =
        serde_json::to_string(&s.p.events("quoted", 0, Some(1000)).await.expect("events").events).expect("json");
    assert!(!record.contains(KEY) && !events.contains(KEY), "{record}");
    assert!(record.contains("invalid key [redacted] for this gateway"), "{record}");

    // An endpoint that echoes the key in its answer, streamed in pieces of a
    // few characters (the key split across them) or whole: neither the
    // deltas, the journaled answer nor the outcome keep it.
    let echo = format!("auth was Bearer {KEY} ok");
    for (id, reply) in [
        ("echoed", Reply::Text(echo.clone())),
        ("echoed-whole", Reply::NotStreamed(echo.clone())),
    ] {
        s.fake.push(reply);
        s.p.start(turn(id, &[], "hi", Value::Null)).await.expect("start");
        let r = finished(&s.p, id).await;
        assert_eq!(
            r.outcome,
            Some(Outcome::success(json!({"text": "auth was Bearer [redacted] ok"}))),
            "{id}"
        );
        let events = s.p.events(id, 0, Some(1000)).await.expect("events").events;
        assert!(!serde_json::to_string(&events).expect("json").contains(KEY), "{id}");
        let deltas: String = events
            .iter()
            .filter(|e| e.event_type == "turn.delta")
            .map(|d| d.payload["text"].as_str().expect("text"))
            .collect();
        assert_eq!(deltas, "auth was Bearer [redacted] ok", "{id}");
    }

    let calls_before = s.fake.received().len();
    for _ in 0..4 {
        s.fake.push(Reply::Status {
            status: 503,
            retry_after: None,
            message: "down".into(),
        });
    }
    s.p.start(turn("down", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "down").await;
    assert_eq!(failure_code(&r), "model_unavailable");
    // The failure is of the retries, and says so.
    let calls = s.fake.received().len() - calls_before;
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => {
            assert!(message.ends_with(&format!("(after {calls} calls)")), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// No part of the key stays in what is journaled of an answer: not in the
/// endpoint's `usage` or `finish_reason` (streamed or not), and not as a
/// quote of it cut off, by the token limit or by a broken stream, in the
/// deltas, the journaled answer or the failure's `raw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_leaves_no_part_of_the_answer_journaled() {
    let s = setup().await;
    // The shortest quote of the key taken out: half of it, 16 bytes at least.
    let quote = &KEY[..KEY.len().div_ceil(2).max(16).min(KEY.len())];
    let choice =
        |delta: Value, finish: Value| json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    s.fake.push(Reply::Raw(vec![
        choice(json!({"role": "assistant", "content": "fine"}), Value::Null).to_string(),
        choice(json!({}), json!(KEY)).to_string(),
        json!({"choices": [], "usage": {"prompt_tokens": 1, "note": format!("billed to {KEY}"), KEY: 1}}).to_string(),
        "[DONE]".into(),
    ]));
    s.fake.push(Reply::Completion(
        json!({"choices": [{"index": 0, "finish_reason": &KEY[..KEY.len() - 2],
        "message": {"role": "assistant", "content": "fine"}}], "usage": {"api_key_used": KEY}}),
    ));
    s.fake.push(Reply::TextEnding {
        text: format!("the header was Bearer {}", &KEY[..KEY.len() - 1]),
        finish_reason: "length".into(),
    });
    s.fake.push(Reply::Disconnect {
        partial: format!("debug: auth was {}", &KEY[..KEY.len() - 2]),
    });
    s.fake.push(Reply::Text("fine now".into()));
    for id in ["in-usage", "not-streamed", "cut-by-length", "cut-by-a-break"] {
        s.p.start(turn(id, &[], "hi", Value::Null)).await.expect("start");
        let r = finished(&s.p, id).await;
        let events = s.p.events(id, 0, Some(1000)).await.expect("events").events;
        let all = format!(
            "{}{}",
            serde_json::to_string(&r).expect("json"),
            serde_json::to_string(&events).expect("json")
        );
        assert!(!all.contains(quote), "{id}: {all}");
        let answer = &events
            .iter()
            .find(|e| e.event_type == "turn.response")
            .expect("an answer")
            .payload;
        let deltas = |attempt: u64| -> String {
            events
                .iter()
                .filter(|e| e.event_type == "turn.delta" && e.payload["attempt"] == attempt)
                .map(|d| d.payload["text"].as_str().expect("text"))
                .collect()
        };
        match id {
            "in-usage" => {
                assert_eq!(answer["finish_reason"], "[redacted]", "{answer}");
                assert_eq!(
                    answer["usage"],
                    json!({"prompt_tokens": 1, "note": "billed to [redacted]", "[redacted]": 1})
                );
                assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "fine"}))));
            }
            "not-streamed" => {
                assert_eq!(answer["finish_reason"], "[redacted]", "{answer}");
                assert_eq!(answer["usage"], json!({"api_key_used": "[redacted]"}));
            }
            "cut-by-length" => {
                let said = "the header was Bearer [redacted]";
                assert_eq!(deltas(1), said);
                assert_eq!(answer["message"]["content"], said);
                match &r.outcome {
                    Some(Outcome::Failure {
                        code, raw: Some(raw), ..
                    }) => {
                        assert_eq!(code, "output_contract_violation");
                        assert_eq!(raw["content"], said);
                    }
                    other => panic!("{other:?}"),
                }
            }
            _ => {
                assert_eq!(deltas(1), "debug: auth was [redacted]");
                assert_eq!(deltas(2), "fine now");
                assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "fine now"}))));
            }
        }
    }
}

/// With a key set, streamed text that cannot begin the key reaches watchers
/// as it comes, not held back until the answer ends: a delta shows while the
/// endpoint stalls after its first piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_not_beginning_the_key_streams_at_once() {
    let s = setup().await;
    let resume = Arc::new(tokio::sync::Notify::new());
    s.fake.push(Reply::Paused {
        before: "Thinking it over".into(),
        after: " and done.".into(),
        resume: resume.clone(),
    });
    s.p.start(turn("stalled", &[], "hi", Value::Null)).await.expect("start");
    let delta =
        s.p.await_event("stalled", "turn.delta", 0, WAIT)
            .await
            .expect("a delta while the endpoint stalls");
    let text = delta.payload["text"].as_str().expect("text");
    assert!(!text.is_empty() && "Thinking it over".starts_with(text), "{text}");
    assert!(!s.p.get("stalled").await.expect("get").is_terminal());
    resume.notify_one();
    let r = finished(&s.p, "stalled").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"text": "Thinking it over and done."})))
    );
    let events = s.p.events("stalled", 0, Some(1000)).await.expect("events").events;
    let deltas: String = events
        .iter()
        .filter(|e| e.event_type == "turn.delta")
        .map(|d| d.payload["text"].as_str().expect("text"))
        .collect();
    assert_eq!(deltas, "Thinking it over and done.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_stream_before_the_answer() {
    let s = setup().await;
    s.fake.push(Reply::SlowText {
        text: "one two three four five six seven".into(),
        delay: Duration::from_millis(60),
    });
    s.p.start(turn("streamed", &[], "count", Value::Null))
        .await
        .expect("start");
    let delta =
        s.p.await_event("streamed", "turn.delta", 0, WAIT)
            .await
            .expect("a delta");
    let record = s.p.get("streamed").await.expect("get");
    assert!(!record.is_terminal(), "a delta arrives while the answer forms");
    assert_eq!(delta.payload["step"], 1);
    finished(&s.p, "streamed").await;
    let events = s.p.events("streamed", 0, Some(1000)).await.expect("events").events;
    let deltas: Vec<_> = events.iter().filter(|e| e.event_type == "turn.delta").collect();
    assert!(deltas.len() >= 2, "several deltas: {}", deltas.len());
    for pair in deltas.windows(2) {
        assert!(
            pair[1].occurred_at_ms >= pair[0].occurred_at_ms + 100,
            "at most one delta per 100 ms"
        );
    }
    let text: String = deltas.iter().filter_map(|d| d.payload["text"].as_str()).collect();
    assert!("one two three four five six seven".starts_with(&text), "{text}");
    let response = events
        .iter()
        .position(|e| e.event_type == "turn.response")
        .expect("response");
    assert!(events.iter().position(|e| e.event_type == "turn.delta").expect("delta") < response);
}

/// The 100 ms between two deltas hold across the turn's model calls: quick
/// calls one after another (two repairs) do not each start with a delta at
/// once, and every call's text still arrives whole, before its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_stay_100ms_apart_across_model_calls() {
    let s = setup().await;
    let contract = json!({"type": "json_schema", "repair_attempts": 2, "schema": {
        "type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}});
    let answers = ["not json at all", "{\"ok\": \"yes\"}", "{\"ok\": true}"];
    for answer in answers {
        s.fake.push(Reply::Text(answer.into()));
    }
    s.p.start(turn("quick", &[], "Are we ok?", contract))
        .await
        .expect("start");
    let r = finished(&s.p, "quick").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"ok": true}))));
    assert_eq!(s.fake.received().len(), 3, "two repairs: three model calls");
    let events = s.p.events("quick", 0, Some(1000)).await.expect("events").events;
    let deltas: Vec<_> = events.iter().filter(|e| e.event_type == "turn.delta").collect();
    for pair in deltas.windows(2) {
        assert!(
            pair[1].occurred_at_ms >= pair[0].occurred_at_ms + 100,
            "at most one delta per 100 ms across the turn's calls: step {} at {} ms, then step {} at {} ms",
            pair[0].payload["step"],
            pair[0].occurred_at_ms,
            pair[1].payload["step"],
            pair[1].occurred_at_ms
        );
    }
    // No text is lost: each step's deltas join into its answer, all written
    // before that step's `turn.response`.
    for (step, answer) in (1u64..).zip(answers) {
        let text: String = deltas
            .iter()
            .filter(|d| d.payload["step"] == step)
            .filter_map(|d| d.payload["text"].as_str())
            .collect();
        assert_eq!(text, answer, "step {step}'s deltas");
        let response = events
            .iter()
            .position(|e| e.event_type == "turn.response" && e.payload["step"] == step)
            .expect("response");
        let last_delta = events
            .iter()
            .rposition(|e| e.event_type == "turn.delta" && e.payload["step"] == step)
            .expect("delta");
        assert!(last_delta < response, "step {step}'s deltas come before its answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_turns_are_refused_at_start() {
    let s = setup().await;
    let mut unknown_model = turn("m", &[], "hi", Value::Null);
    if let ProcessInput::SessionTurn { session, .. } = &mut unknown_model.input {
        session.model = Some("nope".into());
    }
    assert_eq!(
        s.p.start(unknown_model).await.expect_err("refused").code(),
        "unknown_model"
    );
    let e =
        s.p.start(turn("t", &["no_such_tool"], "hi", Value::Null))
            .await
            .expect_err("refused");
    assert_eq!(e.code(), "unknown_tool");
    // An owner-bound turn would hold its slot while its tool calls wait for
    // one; without tools it may be owner-bound.
    let mut held = turn("ob", &["echo"], "hi", Value::Null);
    held.disposition = Disposition::OwnerBound;
    let e = s.p.start(held).await.expect_err("refused");
    assert_eq!(e.code(), "invalid_disposition", "{e}");
    assert_eq!(s.p.get("ob").await.expect_err("not stored").code(), "unknown_process");
    let e =
        s.p.start(turn("c", &[], "hi", json!({"type": "yaml"})))
            .await
            .expect_err("refused");
    assert_eq!(e.code(), "invalid_request");
    // Inputs, contracts and tool lists that could only fail later, or mean nothing.
    let with_input = |id: &str, input: Value| {
        let mut req = turn(id, &[], "hi", Value::Null);
        if let ProcessInput::SessionTurn { input: i, .. } = &mut req.input {
            *i = input;
        }
        req
    };
    let with_session = |id: &str, f: &dyn Fn(&mut TurnSession)| {
        let mut req = turn(id, &[], "hi", Value::Null);
        if let ProcessInput::SessionTurn { session, .. } = &mut req.input {
            f(session);
        }
        req
    };
    let object = json!({"type": "object"});
    let refused = [
        // The bounds the OpenAPI document states.
        with_session("b1", &|s| s.max_steps = Some(65)),
        with_session("b2", &|s| s.temperature = Some(9.5)),
        with_session("b3", &|s| s.temperature = Some(-3.0)),
        with_session("b4", &|s| s.model = Some(String::new())),
        turn(
            "b5",
            &[],
            "hi",
            json!({"type": "json_schema", "schema": object, "repair_attempts": 6}),
        ),
        turn("b6", &[], "hi", json!({"type": "json_schema", "schema": true})),
        with_input("b7", json!([{"role": "user"}])),
        with_input("b8", json!([{"role": "user", "content": 123}])),
        with_input("b9", json!([{"role": "tool", "content": "x"}])),
        with_input("i1", json!([1, 2, 3])),
        with_input("i2", json!([{"role": "wizard", "content": "x"}])),
        with_input("i3", json!("  ")),
        with_input("i4", json!([])),
        turn("c2", &[], "hi", json!({"type": "text", "foo": 1})),
        turn("c3", &[], "hi", json!({"type": "json_schema"})),
        turn("d1", &["echo", "echo"], "hi", Value::Null),
    ];
    for req in refused {
        let id = req.id.clone();
        let e = s.p.start(req).await.expect_err(&id);
        assert_eq!(e.code(), "invalid_request", "{id}: {e}");
        assert_eq!(s.p.get(&id).await.expect_err("not stored").code(), "unknown_process");
    }
    for id in ["m", "t", "c"] {
        assert_eq!(s.p.get(id).await.expect_err("not stored").code(), "unknown_process");
    }
    // The runner's types may be given wake semantics, nothing more: a
    // terminal `turn.delta` would end the turn with its first piece, and a
    // schema of the start's could refuse the runner's own writes.
    let declared = |t: Value| serde_json::from_value::<cairn_core::EventType>(t).expect("event type");
    let terminal = declared(json!({"name": "turn.delta", "semantics": {"terminal": {"state": "completed"}}}));
    let schema = cairn_core::EventType::plain("turn.response").with_schema(json!({"required": ["nope"]}));
    for (id, t) in [("r1", terminal), ("r2", schema)] {
        let e =
            s.p.start(turn(id, &[], "hi", Value::Null).with_event_type(t))
                .await
                .expect_err(id);
        assert_eq!(e.code(), "invalid_semantics", "{id}: {e}");
        assert_eq!(s.p.get(id).await.expect_err("not stored").code(), "unknown_process");
    }
    let waking = declared(
        json!({"name": "turn.response", "semantics": {"wake": {"input": {"const": "answered"}, "dedupe_key": {"const": "r3"}}}}),
    );
    s.p.start(turn("r3", &[], "hi", Value::Null).with_event_type(waking))
        .await
        .expect("wake semantics on the runner's type");
    assert!(s.fake.received().len() <= 1, "only r3 may have called the model");
    // The bounds themselves are allowed.
    s.p.start(with_session("edge", &|s| {
        s.max_steps = Some(64);
        s.temperature = Some(2.0);
    }))
    .await
    .expect("max_steps 64, temperature 2");
    s.p.start(turn(
        "edge2",
        &[],
        "hi",
        json!({"type": "json_schema", "schema": {"type": "object"}, "repair_attempts": 5}),
    ))
    .await
    .expect("repair_attempts 5");
}

/// A start's messages are refused, naming why, when they have a field a
/// chat message of their role does not take or one of the wrong type, or a
/// role a start does not give (named by the roles it does give); a
/// message's `name` is taken and sent. A temperature out of range is
/// named as given, not in every digit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_messages_are_held_to_what_a_start_sends() {
    let s = setup().await;
    let with = |id: &str, input: Value, temperature: f64| {
        let mut req = turn(id, &[], "hi", Value::Null);
        if let ProcessInput::SessionTurn { input: i, session, .. } = &mut req.input {
            *i = input;
            session.temperature = Some(temperature);
        }
        req
    };
    let roles = "a `role` of system, user, assistant:";
    for (id, input, temperature, said) in [
        (
            "f1",
            json!([{"role": "user", "content": "a", "bogus": 1}]),
            0.0,
            "message 0 has an unknown field `bogus` (a message takes role, content, name)",
        ),
        (
            "f2",
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "name": 5}]),
            0.0,
            "message 1 has a `name` that is not a string: 5",
        ),
        (
            "f3",
            json!([{"role": "user", "content": "a", "name": null}]),
            0.0,
            "has a `name` that is not a string: null",
        ),
        (
            "f4",
            json!([{"role": "assistant", "content": "a", "tool_calls": []}]),
            0.0,
            "unknown field `tool_calls`",
        ),
        ("r1", json!([{"role": "wizard", "content": "x"}]), 0.0, roles),
        ("r2", json!([{"role": "developer", "content": "x"}]), 0.0, roles),
        ("r3", json!([{"role": "tool", "content": "x"}]), 0.0, roles),
        ("t1", json!("hi"), 1e300, "`temperature` is 0 to 2, not 1e300"),
        ("t2", json!("hi"), 2.5, "`temperature` is 0 to 2, not 2.5"),
    ] {
        let e = s.p.start(with(id, input, temperature)).await.expect_err(id);
        assert_eq!(e.code(), "invalid_request", "{id}: {e}");
        assert!(e.to_string().contains(said), "{id}: {e}");
        assert!(!e.to_string().contains("system, developer"), "{id}: {e}");
        assert_eq!(s.p.get(id).await.expect_err("not stored").code(), "unknown_process");
    }
    assert!(s.fake.received().is_empty(), "no turn called the model");
    s.fake.push(Reply::Text("ok".into()));
    let named = json!([{"role": "user", "content": "a", "name": "alice"}]);
    s.p.start(with("named", named.clone(), 0.0))
        .await
        .expect("a named message");
    let r = finished(&s.p, "named").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "ok"}))));
    assert_eq!(s.fake.received()[0].body["messages"][1], named[0]);
}

/// A key shorter than the floor (a local endpoint's dummy, `ollama`) is
/// sent, and left in what the model answers: its text, its tool calls'
/// arguments and its JSON field names reach the tools, the journal and the
/// result as the model gave them. The default model's key, at the floor or
/// over it, is still taken out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_key_leaves_the_answer_as_the_model_gave_it() {
    const SHORT_ENV: &str = "CAIRN_TURN_TEST_SHORT_KEY";
    std::env::set_var(SHORT_ENV, "ollama");
    let s = setup_with(test_retry(), &[("local", &format!(",key_env={SHORT_ENV}"))]).await;
    let local = |id: &str, tools: &[&str], contract: Value| {
        let mut req = turn(id, tools, "use ollama", contract);
        if let ProcessInput::SessionTurn { session, .. } = &mut req.input {
            session.model = Some("local".into());
        }
        req
    };
    let args = json!({"value": {"ollama": "ollama list"}});
    s.fake.push(Reply::ToolCalls(vec![("echo".into(), args.clone())]));
    s.fake.push(Reply::Text("ran ollama list with ollama".into()));
    s.p.start(local("short", &["echo"], Value::Null)).await.expect("start");
    let r = finished(&s.p, "short").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"text": "ran ollama list with ollama"})))
    );
    let child = s.p.get("short/1.1").await.expect("child");
    assert_eq!(child.outcome, Some(Outcome::success(args["value"].clone())));
    let received = s.fake.received();
    assert_eq!(received[0].authorization.as_deref(), Some("Bearer ollama"));
    let events = s.p.events("short", 0, Some(1000)).await.expect("events").events;
    let all = serde_json::to_string(&events).expect("json");
    assert!(!all.contains("[redacted]"), "{all}");
    let deltas: String = events
        .iter()
        .filter(|e| e.event_type == "turn.delta")
        .map(|d| d.payload["text"].as_str().expect("text"))
        .collect();
    assert_eq!(deltas, "ran ollama list with ollama");
    // Field names too: a schema's answer keyed by the key's word.
    s.fake.push(Reply::Text("{\"ollama\": \"ollama\"}".into()));
    let schema = json!({"type": "object", "required": ["ollama"],
                        "properties": {"ollama": {"enum": ["ollama"]}}});
    s.p.start(local(
        "short-json",
        &[],
        json!({"type": "json_schema", "schema": schema}),
    ))
    .await
    .expect("start");
    let r = finished(&s.p, "short-json").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"ollama": "ollama"}))));
    // The default model's key is long enough: taken out as ever.
    s.fake.push(Reply::Text(format!("the key is {KEY}")));
    s.p.start(turn("long", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "long").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"text": "the key is [redacted]"})))
    );
}

/// A `repair_attempts` no contract could hold (negative, past `u32`, not
/// an integer) is refused naming the range a start takes, as one past it
/// is, never as a `u32`'s; the steps bound is the record's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_attempts_out_of_range_names_its_range() {
    assert_eq!(cairn_turn::MAX_STEPS, cairn_core::TURN_MAX_STEPS);
    let s = setup().await;
    for (i, (given, said)) in [
        (json!(6), "`repair_attempts` is 0 to 5, not 6"),
        (json!(5_000_000_000u64), "`repair_attempts` is 0 to 5, not 5000000000"),
        (json!(u64::MAX), "`repair_attempts` is 0 to 5, not 18446744073709551615"),
        (json!(-1), "`repair_attempts` is 0 to 5, not -1"),
        (json!(1.5), "`repair_attempts` is an integer from 0 to 5, not 1.5"),
        (json!("2"), "`repair_attempts` is an integer from 0 to 5, not \"2\""),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("r{i}");
        let contract = json!({"type": "json_schema", "schema": {"type": "object"}, "repair_attempts": given});
        let e = s.p.start(turn(&id, &[], "hi", contract)).await.expect_err(&id);
        assert_eq!(e.code(), "invalid_request", "{given}: {e}");
        assert!(e.to_string().contains(said), "{given}: {e}");
        assert!(!e.to_string().contains("4294967295"), "{given}: {e}");
        assert_eq!(s.p.get(&id).await.expect_err("not stored").code(), "unknown_process");
    }
    assert!(s.fake.received().is_empty(), "no turn called the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_turn_stops_its_stream_and_its_tool_calls() {
    let s = setup().await;
    // Read out, the answer takes at least 17 pauses of 1.5 s (one before
    // each of its 14 pieces of text, its finish, usage and end).
    s.fake.push(Reply::SlowText {
        text: "this answer takes a long time to arrive, piece by piece".into(),
        delay: Duration::from_millis(1500),
    });
    s.p.start(turn("slow", &[], "talk", Value::Null)).await.expect("start");
    s.p.await_event("slow", "turn.delta", 0, WAIT).await.expect("streaming");
    let started = std::time::Instant::now();
    s.p.cancel("slow", Some("enough".into())).await.expect("cancel");
    let r = finished(&s.p, "slow").await;
    assert_eq!(r.status, cairn_core::ProcessStatus::Cancelled, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stream was dropped, not read out"
    );
    assert!(!types(&s.p, "slow").await.contains(&"turn.response".to_string()));

    s.fake
        .push(Reply::ToolCalls(vec![("wait_signal".into(), json!({"name": "go"}))]));
    s.p.start(turn("waits", &["wait_signal"], "wait", Value::Null))
        .await
        .expect("start");
    s.p.await_event("waits", "process.waiting", 0, WAIT)
        .await
        .expect("the turn waits");
    s.p.await_event("waits/1.1", "process.waiting", 0, WAIT)
        .await
        .expect("child waits");
    s.p.cancel("waits", None).await.expect("cancel");
    for id in ["waits", "waits/1.1"] {
        let r = finished(&s.p, id).await;
        assert_eq!(r.status, cairn_core::ProcessStatus::Cancelled, "{id}: {r:?}");
    }
}

/// A model call that goes silent (an endpoint that hangs mid-answer) counts as
/// a broken stream after the idle timeout and is tried again, instead of
/// holding the turn and its worker slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_model_call_is_given_up_and_tried_again() {
    let s = setup_idle(test_retry(), &[], IDLE).await;
    s.fake.push(Reply::SlowText {
        text: "stalled answer".into(),
        delay: Duration::from_secs(600),
    });
    s.fake.push(Reply::Text("recovered".into()));
    let started = std::time::Instant::now();
    s.p.start(turn("stalled", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "stalled").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "recovered"}))));
    assert_eq!(s.fake.received().len(), 2, "the silent call was made again");
    assert!(started.elapsed() >= IDLE, "given up only after the idle timeout");
}

/// The last step allowed ends the turn with what it got: an answer that
/// violates the contract fails `output_contract_violation` with that answer
/// (not `max_steps`, which would hide it), and tool calls asked for then are
/// not run, since no model call could read their results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_step_ends_with_what_it_got() {
    let s = setup().await;
    let one_step = |id: &str, tools: &[&str], contract: Value| {
        let mut req = turn(id, tools, "hi", contract);
        if let ProcessInput::SessionTurn { session, .. } = &mut req.input {
            session.max_steps = Some(1);
        }
        req
    };
    let contract = json!({"type": "json_schema", "repair_attempts": 2,
                          "schema": {"type": "object", "required": ["ok"]}});
    s.fake.push(Reply::Text("prose, not json".into()));
    s.p.start(one_step("no-repair", &[], contract.clone()))
        .await
        .expect("start");
    let r = finished(&s.p, "no-repair").await;
    assert_eq!(failure_code(&r), "output_contract_violation");
    match r.outcome {
        Some(Outcome::Failure { raw: Some(raw), .. }) => assert_eq!(raw["content"], "prose, not json"),
        other => panic!("the answer belongs in raw: {other:?}"),
    }
    // A fault of the whole answer is said to be at its root.
    s.fake.push(Reply::Text("{}".into()));
    s.p.start(one_step("at-root", &[], contract)).await.expect("start");
    let r = finished(&s.p, "at-root").await;
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => assert!(
            message.starts_with("the answer violates the schema at its root: "),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    s.fake
        .push(Reply::ToolCalls(vec![("echo".into(), json!({"value": 1}))]));
    s.p.start(one_step("no-tools", &["echo"], Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "no-tools").await;
    assert_eq!(failure_code(&r), "max_steps");
    let children =
        s.p.list(&cairn_core::ProcessFilter {
            caused_by: Some("no-tools".into()),
            status: cairn_core::StatusFilter::Any,
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(children.items.is_empty(), "no tool ran: {children:?}");
    assert_eq!(s.fake.received().len(), 3, "one model call each");
}

/// A `Retry-After` longer than the in-process backoff is waited out durably:
/// the turn suspends on a timer (holding no lease), and calls the model again
/// when it resumes. One past an hour fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_is_waited_out_suspended() {
    let s = setup().await;
    // The setup's backoff is at most 2 s.
    s.fake.push(Reply::Status {
        status: 429,
        retry_after: Some(3),
        message: "come back in 3 s".into(),
    });
    s.fake.push(Reply::Text("after the wait".into()));
    s.p.start(turn("patient", &[], "hi", Value::Null)).await.expect("start");
    let waiting =
        s.p.await_event("patient", "process.waiting", 0, WAIT)
            .await
            .expect("suspended");
    assert_eq!(waiting.payload["kind"], "timer");
    assert!(
        waiting.payload["until_ms"].as_u64().unwrap() >= waiting.occurred_at_ms + 2_900,
        "waits what was asked: {waiting:?}"
    );
    // Read well before the timer is due (3 s after the wait was recorded).
    let suspended = s.p.get("patient").await.expect("get");
    assert!(
        suspended.wait.is_some() && suspended.lease.is_none(),
        "a suspended turn holds no lease: {suspended:?}"
    );
    let r = finished(&s.p, "patient").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "after the wait"}))));
    assert_eq!(s.fake.received().len(), 2);
    let resumed = s.p.events("patient", 0, Some(1000)).await.expect("events").events;
    assert!(
        resumed
            .iter()
            .any(|e| e.event_type == "process.resumed" && e.payload["reason"] == "timer"),
        "the timer resumed it"
    );

    s.fake.push(Reply::Status {
        status: 429,
        retry_after: Some(7_200),
        message: "come back in two hours".into(),
    });
    s.p.start(turn("impatient", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "impatient").await;
    assert_eq!(failure_code(&r), "model_unavailable");
    assert_eq!(s.fake.received().len(), 3, "no retry of a wait past an hour");
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => assert!(
            message.contains("it asked to be called again in 7200 s, past the 3600 s a turn waits"),
            "the failure says why it was not called again: {message}"
        ),
        other => panic!("{other:?}"),
    }
}

/// A `Retry-After` of 0 (some gateways send it) or a date gone by is a floor
/// under the backoff, not a replacement for it: the retries still wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retry_after_keeps_the_backoff() {
    let s = setup_with(
        RetryPolicy {
            retries: 3,
            min_delay: Duration::from_millis(300),
            max_delay: Duration::from_secs(2),
        },
        &[],
    )
    .await;
    for _ in 0..2 {
        s.fake.push(Reply::Status {
            status: 429,
            retry_after: Some(0),
            message: "slow down".into(),
        });
    }
    s.fake.push(Reply::Text("at last".into()));
    let started = std::time::Instant::now();
    s.p.start(turn("floored", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "floored").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "at last"}))), "{r:?}");
    assert_eq!(s.fake.received().len(), 3, "two 429s, each retried");
    // Backoff from 300 ms, doubling: at least 300 + 600 ms (jitter only
    // adds), where `Retry-After: 0` alone would have waited nothing.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the backoff was kept: {:?}",
        started.elapsed()
    );
}

/// An HTTP 408 is another 4xx (SPEC §15): the turn fails `model_error` at
/// once, with the endpoint's message, and the model is not called again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_408_fails_at_once() {
    let s = setup().await;
    s.fake.push(Reply::Status {
        status: 408,
        retry_after: None,
        message: "request timed out".into(),
    });
    s.fake.push(Reply::Text("never asked for".into()));
    s.p.start(turn("timed-out", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "timed-out").await;
    match &r.outcome {
        Some(Outcome::Failure {
            class, code, message, ..
        }) => {
            assert_eq!((class.as_str(), code.as_str()), ("model", "model_error"));
            assert!(
                message.contains("408") && message.contains("request timed out"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.fake.received().len(), 1, "a 408 is not retried");
}

/// An owner-bound turn waits out a long `Retry-After` in its run: the call
/// after the wait is numbered on from the calls before it, so a watcher
/// does not join its text to a broken call's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_a_wait_in_the_run_are_numbered_on() {
    let s = setup_with(
        RetryPolicy {
            retries: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
        },
        &[],
    )
    .await;
    s.fake.push(Reply::Disconnect {
        partial: "half an ans".into(),
    });
    s.fake.push(Reply::Status {
        status: 429,
        retry_after: Some(1),
        message: "come back in 1 s".into(),
    });
    s.fake.push(Reply::Text("whole answer".into()));
    let mut request = turn("held", &[], "hi", Value::Null);
    request.disposition = Disposition::OwnerBound;
    s.p.start(request).await.expect("start");
    let r = finished(&s.p, "held").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole answer"}))));
    assert_eq!(s.fake.received().len(), 3);
    let events = s.p.events("held", 0, Some(1000)).await.expect("events").events;
    let calls: Vec<(u64, u64, &str)> = events
        .iter()
        .filter(|e| e.event_type == "turn.delta")
        .map(|d| {
            (
                d.payload["run"].as_u64().unwrap(),
                d.payload["attempt"].as_u64().unwrap(),
                d.payload["text"].as_str().unwrap(),
            )
        })
        .collect();
    let numbers: BTreeSet<(u64, u64)> = calls.iter().map(|(r, a, _)| (*r, *a)).collect();
    assert_eq!(numbers, BTreeSet::from([(1, 1), (1, 3)]), "{calls:?}");
}

/// A `Retry-After` past the in-process backoff is waited out at most
/// `retries` times a step, however many runs those waits take (each wait
/// suspends the turn and ends its run): then the turn fails `model_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_retry_afters_are_bounded_across_suspensions() {
    let s = setup_with(
        RetryPolicy {
            retries: 1,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
        },
        &[],
    )
    .await;
    for _ in 0..4 {
        s.fake.push(Reply::Status {
            status: 429,
            retry_after: Some(1),
            message: "come back in 1 s".into(),
        });
    }
    s.p.start(turn("bounded", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "bounded").await;
    assert_eq!(failure_code(&r), "model_unavailable", "{r:?}");
    assert_eq!(s.fake.received().len(), 2, "one durable wait, then the failure");
    let waits = types(&s.p, "bounded")
        .await
        .into_iter()
        .filter(|t| t == "process.waiting")
        .count();
    assert_eq!(waits, 1);
}

/// An `{"error": ...}` chunk inside the stream is a failed model call, not an
/// answer: retried when it is a server error, refused when it is the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_inside_the_stream_is_a_failed_call() {
    let s = setup().await;
    let content = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    s.fake.push(Reply::Chunks(vec![
        content("partial"),
        json!({"error": {"message": "The server had an error while processing your request.",
                         "type": "server_error", "code": null}}),
    ]));
    s.fake.push(Reply::Text("whole answer".into()));
    s.p.start(turn("stream-err", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "stream-err").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole answer"}))));
    assert_eq!(s.fake.received().len(), 2, "the failed call was made again");
    let responses = types(&s.p, "stream-err")
        .await
        .into_iter()
        .filter(|t| t == "turn.response")
        .count();
    assert_eq!(responses, 1, "only the whole answer is journaled");

    s.fake.push(Reply::Chunks(vec![json!({"error": {
        "message": "This model's maximum context length is exceeded.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}})]));
    s.p.start(turn("stream-refused", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "stream-refused").await;
    assert_eq!(failure_code(&r), "model_error");
    match &r.outcome {
        Some(Outcome::Failure { class, message, .. }) => {
            assert_eq!(class, "model");
            assert!(message.contains("maximum context length"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.fake.received().len(), 3, "a refused call is not made again");
}

/// An answer the endpoint cut off (`finish_reason: "length"`) is not a final
/// answer: under `text` it fails `output_contract_violation` with the cut-off
/// answer in `raw`; under `json_schema` it is sent back for repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_answer_is_not_a_final_answer() {
    let s = setup().await;
    s.fake.push(Reply::TextEnding {
        text: "{\"answer\": \"trunc".into(),
        finish_reason: "length".into(),
    });
    s.p.start(turn("cut", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "cut").await;
    assert_eq!(failure_code(&r), "output_contract_violation");
    match &r.outcome {
        Some(Outcome::Failure {
            message,
            raw: Some(raw),
            ..
        }) => {
            assert!(message.contains("`length`"), "{message}");
            assert_eq!(raw["content"], "{\"answer\": \"trunc");
        }
        other => panic!("the cut-off answer belongs in raw: {other:?}"),
    }
    let events = s.p.events("cut", 0, Some(1000)).await.expect("events").events;
    let response = events
        .iter()
        .find(|e| e.event_type == "turn.response")
        .expect("response");
    assert_eq!(response.payload["finish_reason"], "length", "journaled with the answer");

    // A content filter's stop is told as what it is, not as a long answer.
    s.fake.push(Reply::TextEnding {
        text: "partial".into(),
        finish_reason: "content_filter".into(),
    });
    s.p.start(turn("filtered", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "filtered").await;
    assert_eq!(failure_code(&r), "output_contract_violation");
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => {
            assert!(message.contains("content filter"), "{message}");
            assert!(!message.contains("shorter"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let contract = json!({"type": "json_schema", "repair_attempts": 1, "schema": {"type": "object"}});
    s.fake.push(Reply::TextEnding {
        text: "{\"a\": 1, \"b\": [1, 2".into(),
        finish_reason: "length".into(),
    });
    s.fake.push(Reply::Text("{\"a\": 1}".into()));
    s.p.start(turn("cut-repaired", &[], "hi", contract))
        .await
        .expect("start");
    let r = finished(&s.p, "cut-repaired").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"a": 1}))));
    let received = s.fake.received();
    let repair = received.last().expect("request").body["messages"]
        .as_array()
        .expect("messages")
        .last()
        .cloned()
        .expect("repair");
    assert_eq!(repair["role"], "user");
    assert!(
        repair["content"].as_str().unwrap().contains("cut the answer off"),
        "{repair}"
    );
}

/// An answer that streams on past what one journal entry holds is cut off
/// there, much as the model's own limit cuts one: the rest is not read, the
/// journal says cairn cut it (`cut_at_bytes`), and the turn ends as a
/// cut-off answer does.
/// A large answer that breaks its schema fails the turn as a violation with
/// the answer in `raw`: the schema's complaint, which quotes the value it
/// refuses, is cut short so the failure can be recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_against_its_schema_is_a_violation() {
    // 100,000 pieces of a few characters take seconds to read in a debug
    // build on a loaded machine: a pause in them is not what this tests.
    let s = setup_idle(test_retry(), &[], Duration::from_secs(30)).await;
    let contract = json!({"type": "json_schema", "repair_attempts": 0, "schema": {"type": "object"}});
    let answer = serde_json::to_string(&vec!["abcdefgh"; 50_000]).expect("answer");
    s.fake.push(Reply::Text(answer.clone()));
    s.p.start(turn("large", &[], "hi", contract)).await.expect("start");
    let r = finished(&s.p, "large").await;
    match &r.outcome {
        Some(Outcome::Failure {
            class,
            code,
            message,
            raw: Some(raw),
        }) => {
            assert_eq!((class.as_str(), code.as_str()), ("turn", "output_contract_violation"));
            assert!(message.len() < 8 * 1024, "{} bytes of message", message.len());
            assert_eq!(raw["content"], answer.as_str());
        }
        other => panic!("a violation with the answer in raw: {other:?}"),
    }
    // An answer nested deeper than a result may be is a violation too.
    let deep = format!("{}{}", "[".repeat(63), "]".repeat(63));
    s.fake.push(Reply::Text(deep.clone()));
    let contract = json!({"type": "json_schema", "repair_attempts": 0, "schema": {"type": "array"}});
    s.p.start(turn("deep", &[], "hi", contract)).await.expect("start");
    let r = finished(&s.p, "deep").await;
    assert_eq!(failure_code(&r), "output_contract_violation", "{:?}", r.outcome);
    // Past the 128 levels a parser reads, the answer is still JSON too
    // deep, not an answer that is not JSON.
    for depth in [63, 200] {
        let id = format!("deep-{depth}");
        if depth != 63 {
            s.fake
                .push(Reply::Text(format!("{}{}", "[".repeat(depth), "]".repeat(depth))));
            let contract = json!({"type": "json_schema", "repair_attempts": 0, "schema": {"type": "array"}});
            s.p.start(turn(&id, &[], "hi", contract)).await.expect("start");
        }
        let r = finished(&s.p, if depth == 63 { "deep" } else { &id }).await;
        match &r.outcome {
            Some(Outcome::Failure { code, message, .. }) => {
                assert_eq!(code, "output_contract_violation");
                assert_eq!(
                    message,
                    &format!(
                        "the answer nests arrays and objects {depth} levels deep, over the 62 levels a result may have"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // The deepest a result may be is taken as it is.
    let deepest = format!("{}{}", "[".repeat(62), "]".repeat(62));
    s.fake.push(Reply::Text(deepest.clone()));
    let contract = json!({"type": "json_schema", "repair_attempts": 0, "schema": {"type": "array"}});
    s.p.start(turn("deepest", &[], "hi", contract)).await.expect("start");
    let r = finished(&s.p, "deepest").await;
    let value: Value = serde_json::from_str(&deepest).expect("json");
    assert_eq!(r.outcome, Some(Outcome::success(value)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_where_the_journal_ends() {
    let s = setup().await;
    let chunk = |delta: Value| {
        json!({"id": "c", "object": "chat.completion.chunk", "model": "fake",
               "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    };
    let name = |piece: &str| json!({"tool_calls": [{"index": 0, "function": {"name": piece}}]});
    let mut cases: Vec<(&str, Vec<Value>, usize)> = Vec::new();
    // Plain text, and newlines (twice their length once journaled).
    for (id, piece) in [
        ("endless", "x".repeat(64 * 1024)),
        ("endless-lines", "\n".repeat(64 * 1024)),
    ] {
        let chunks = (0..40).map(|_| chunk(json!({"content": piece}))).collect();
        cases.push((id, chunks, 40 * piece.len()));
    }
    // A tool call's name streamed for ever counts as the answer it is.
    let mut named = vec![chunk(
        json!({"tool_calls": [{"index": 0, "id": "call-1", "type": "function",
                                                      "function": {"name": "echo", "arguments": "{}"}}]}),
    )];
    named.extend((0..40).map(|_| chunk(name(&"x".repeat(64 * 1024)))));
    cases.push(("endless-name", named, 40 * 64 * 1024));
    // One line of 32 MiB is cut where it passes what an answer could be,
    // not kept whole and scanned again at every read (minutes of a core).
    cases.push((
        "one-line",
        vec![chunk(json!({"content": "y".repeat(32 << 20)}))],
        32 << 20,
    ));
    // An answer that is not streamed is cut where a stream would be: its
    // content, and its tool calls (thousands of them, with ids or without,
    // once grew past what `turn.response` holds and failed the turn
    // `payload_too_large`).
    let call = |k: usize, id: bool| {
        let arguments = format!("{{\"value\": {k}, \"pad\": \"{}\"}}", "x".repeat(16));
        let mut c = json!({"type": "function", "function": {"name": "echo", "arguments": arguments}});
        if id {
            c["id"] = json!(format!("call-{k}"));
        }
        c
    };
    let bodies = [
        (
            "whole-text",
            json!({"role": "assistant", "content": "z".repeat(1_000_000)}),
        ),
        (
            "whole-calls",
            json!({"role": "assistant", "content": null,
                   "tool_calls": (0..7_000).map(|k| call(k, true)).collect::<Vec<_>>()}),
        ),
        (
            "whole-calls-no-ids",
            json!({"role": "assistant", "content": null,
                   "tool_calls": (0..7_000).map(|k| call(k, false)).collect::<Vec<_>>()}),
        ),
    ];
    let replies = cases
        .into_iter()
        .map(|(id, chunks, sent)| (id, Reply::Chunks(chunks), sent))
        .chain(bodies.into_iter().map(|(id, message)| {
            let sent = message.to_string().len();
            let body = json!({
                "id": "c", "object": "chat.completion", "model": "fake",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]
            });
            (id, Reply::Completion(body), sent)
        }));
    for (id, reply, sent) in replies {
        s.fake.push(reply);
        s.p.start(turn(id, &[], "hi", Value::Null)).await.expect("start");
        let r = finished(&s.p, id).await;
        assert_eq!(failure_code(&r), "output_contract_violation", "{id}: {:?}", r.outcome);
        let events = s.p.events(id, 0, Some(1000)).await.expect("events").events;
        let response = events
            .iter()
            .find(|e| e.event_type == "turn.response")
            .expect("the cut-off answer is journaled");
        // Cut by cairn, and said so: not a `finish_reason` the endpoint
        // never sent, nor a failure blamed on it.
        assert_eq!(response.payload.get("finish_reason"), None, "{id}");
        assert_eq!(response.payload["cut_at_bytes"], cairn_turn::MAX_ANSWER_BYTES, "{id}");
        match &r.outcome {
            Some(Outcome::Failure { message, .. }) => assert!(
                message.contains("bytes cairn keeps of one answer") && !message.contains("endpoint"),
                "{id}: {message}"
            ),
            other => panic!("{other:?}"),
        }
        let kept = response.payload.to_string().len();
        assert!(
            kept <= cairn_turn::MAX_ANSWER_BYTES + 4096,
            "{id}: {kept} bytes journaled of {sent}"
        );
    }
}

/// A redirect that keeps the POST (307, 308) within the endpoint's origin
/// is followed, with the key; one that would turn it into a GET (301, 302,
/// 303) or leave the origin is not: the failure names where it points,
/// instead of the 404 or 405 a GET without the request would get, or the
/// key reaching a host nobody configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_that_would_drop_the_post_is_a_failure_naming_it() {
    let s = setup().await;
    let to = format!("{}/chat/completions", s.fake.base_url());
    s.fake.push(Reply::Redirect {
        status: 307,
        location: to.clone(),
    });
    s.fake.push(Reply::Text("followed".into()));
    s.p.start(turn("kept", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "kept").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "followed"}))), "{r:?}");
    let received = s.fake.received();
    assert_eq!(received.len(), 2, "the POST was sent again where it points");
    assert_eq!(received[1].body, received[0].body);
    assert_eq!(received[1].authorization, received[0].authorization);

    // Not followed, each named as the URL it resolves to, with the base URL
    // that reaches it: a 302 (a GET would follow), a relative one, and a
    // 307 to another scheme (the key would be dropped, or sent in clear).
    let origin = s.fake.base_url().trim_end_matches("/v1").to_string();
    let https = to.replacen("http://", "https://", 1);
    let other_host = to.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other_host, to, "the fake listens on 127.0.0.1");
    for (id, status, location, named, base) in [
        ("moved", 302, to.clone(), to.clone(), s.fake.base_url().to_string()),
        (
            "relative",
            301,
            "/v2/chat/completions".to_string(),
            format!("{origin}/v2/chat/completions"),
            format!("{origin}/v2"),
        ),
        (
            "scheme",
            307,
            https.clone(),
            https.clone(),
            https.replace("/chat/completions", ""),
        ),
        // Another host (the same server under another name): the key stays
        // with the endpoint's origin, at the first hop and every later one.
        (
            "host",
            308,
            other_host.clone(),
            other_host.clone(),
            other_host.replace("/chat/completions", ""),
        ),
    ] {
        let before = s.fake.received().len();
        s.fake.push(Reply::Redirect { status, location });
        s.p.start(turn(id, &[], "hi", Value::Null)).await.expect("start");
        let r = finished(&s.p, id).await;
        assert_eq!(failure_code(&r), "model_error", "{r:?}");
        match &r.outcome {
            Some(Outcome::Failure { message, .. }) => {
                assert!(message.contains(&format!("{status} ")), "{message}");
                assert!(
                    message.contains(&format!("a redirect to `{named}`, not followed")),
                    "{message}"
                );
                assert!(
                    message.ends_with(&format!(": its base URL may be `{base}`")),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.fake.received().len(),
            before + 1,
            "{id}: the redirect was not followed"
        );
    }
}

/// A huge error page from the endpoint is read to a bound and clipped in
/// the failure, which stays class `model`, code `model_error`, and says the
/// page was longer than what was read (not that it was that long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_error_body_is_clipped() {
    let s = setup().await;
    s.fake.push(Reply::StatusBody {
        status: 404,
        body: format!("<html>{}</html>", "x".repeat(3_000_000)),
    });
    s.p.start(turn("big", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "big").await;
    assert_eq!(failure_code(&r), "model_error", "{:?}", r.status);
    match &r.outcome {
        Some(Outcome::Failure { class, message, .. }) => {
            assert_eq!(class, "model");
            assert!(
                message.starts_with("model `default` answered 404 Not Found: <html>xxx"),
                "{}",
                &message[..100]
            );
            assert!(message.len() < 8 * 1024, "{} bytes", message.len());
            assert!(
                message.ends_with("(more than 65536 bytes in all)"),
                "{}",
                &message[message.len() - 60..]
            );
        }
        other => panic!("{other:?}"),
    }
    // A short one is given whole.
    s.fake.push(Reply::StatusBody {
        status: 404,
        body: "no such model".into(),
    });
    s.p.start(turn("small", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "small").await;
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => {
            assert_eq!(message, "model `default` answered 404 Not Found: no such model");
        }
        other => panic!("{other:?}"),
    }
}

/// A 200 that is neither an event stream nor JSON (a proxy's login page) is
/// no answer, and asking again buys the same page: `model_error` at once,
/// with the start of the page, after one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_is_not_an_answer_is_refused_at_once() {
    let s = setup().await;
    for _ in 0..4 {
        s.fake.push(Reply::StatusBody {
            status: 200,
            body: "<html>sign in</html>".into(),
        });
    }
    s.p.start(turn("page", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "page").await;
    assert_eq!(failure_code(&r), "model_error", "{:?}", r.outcome);
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => assert_eq!(
            message,
            "model `default` answered 200 OK `text/html`, neither an event stream nor a JSON chat completion: \
             <html>sign in</html>"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.fake.received().len(), 1, "not asked again");
}

/// An answer in one JSON body past what cairn keeps of one answer is read
/// and cut there, as the same answer streamed is: a cut-off answer, not a
/// final one (a violation under `text`, sent back for repair under
/// `json_schema`). Only a body past `MAX_JSON_BODY_BYTES` is refused as the
/// endpoint's fault (`model_error`), read no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_json_answer_is_cut_as_a_streamed_one_is() {
    let s = setup().await;
    // Over the 1 MiB a journal entry holds, well under the bound read.
    s.fake.push(Reply::NotStreamed("y".repeat(2 * 1024 * 1024)));
    s.p.start(turn("huge", &[], "hi", json!({"type": "text"})))
        .await
        .expect("start");
    let r = finished(&s.p, "huge").await;
    assert_eq!(failure_code(&r), "output_contract_violation", "{:?}", r.outcome);
    let journaled = response(&s.p, "huge", 1).await;
    assert_eq!(journaled["cut_at_bytes"], cairn_turn::MAX_ANSWER_BYTES);
    assert_eq!(
        journaled["message"]["content"].as_str().map(str::len),
        Some(cairn_turn::MAX_ANSWER_BYTES)
    );
    assert_eq!(
        journaled.get("finish_reason"),
        None,
        "the cut answer has no reason of the endpoint's"
    );

    // Under `json_schema`, the cut answer goes back for repair.
    let contract = json!({"type": "json_schema", "repair_attempts": 1, "schema": {"type": "object"}});
    s.fake.push(Reply::NotStreamed(format!(
        "{{\"a\": \"{}\"}}",
        "z".repeat(1536 * 1024)
    )));
    s.fake.push(Reply::Text("{\"a\": \"short\"}".into()));
    s.p.start(turn("huge-repaired", &[], "hi", contract))
        .await
        .expect("start");
    let r = finished(&s.p, "huge-repaired").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"a": "short"}))),
        "{:?}",
        r.outcome
    );
    let received = s.fake.received();
    assert_eq!(received.len(), 3, "one call cut, one repair");
    let repair = received[2].body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .expect("repair");
    assert!(
        repair["content"]
            .as_str()
            .unwrap_or_default()
            .contains("bytes cairn keeps of one answer"),
        "{repair}"
    );

    // Past the bound read of one body: refused, not called again.
    s.fake
        .push(Reply::NotStreamed("y".repeat(cairn_turn::MAX_JSON_BODY_BYTES)));
    s.p.start(turn("past-bound", &[], "hi", json!({"type": "text"})))
        .await
        .expect("start");
    let r = finished(&s.p, "past-bound").await;
    match &r.outcome {
        Some(Outcome::Failure { code, message, .. }) => {
            assert_eq!(code, "model_error");
            assert!(
                message.contains(&format!("{} bytes or more", cairn_turn::MAX_JSON_BODY_BYTES)),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.fake.received().len(), 4, "a body past the bound is not asked again");
    assert!(!types(&s.p, "past-bound").await.contains(&"turn.response".to_string()));
}

/// An answer that is not in chat completion shape (the legacy completions'
/// `text`, a streamed `message` in place of `delta`, a choice without any
/// `message`) is not a chat completion: `model_error` at once, not called
/// again, nothing journaled, rather than an empty answer that loses the
/// model's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_not_shaped_as_a_chat_completion_is_a_model_error() {
    let s = setup().await;
    let cases = [
        (
            "legacy-whole",
            Reply::Completion(json!({"choices": [{"index": 0, "text": "hello legacy", "finish_reason": "stop"}]})),
            "no `message`",
        ),
        (
            "message-chunk",
            Reply::Raw(vec![
                json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "full msg"},
                                    "finish_reason": "stop"}]})
                .to_string(),
                "[DONE]".into(),
            ]),
            "`message` and no `delta`",
        ),
        (
            "legacy-chunks",
            Reply::Chunks(vec![
                json!({"choices": [{"index": 0, "text": "hello legacy"}]}),
                json!({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
            ]),
            "`text` and no `delta`",
        ),
        (
            "no-message",
            Reply::Completion(json!({"choices": [{"index": 0, "finish_reason": "stop"}]})),
            "no `message`",
        ),
        (
            "null-message",
            Reply::Completion(json!({"choices": [{"index": 0, "message": null, "finish_reason": "stop"}]})),
            "no `message`",
        ),
        // The legacy call shape: read as a chat completion, the call was
        // dropped and the answer taken as empty text.
        (
            "function-call-whole",
            Reply::Completion(json!({"choices": [{"index": 0, "finish_reason": "function_call",
                "message": {"role": "assistant", "content": null,
                            "function_call": {"name": "echo", "arguments": "{\"value\": 1}"}}}]})),
            "legacy `function_call`",
        ),
        (
            "function-call-streamed",
            Reply::Chunks(vec![
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null,
                                    "function_call": {"name": "echo", "arguments": ""}}}]}),
                json!({"choices": [{"index": 0, "delta": {"function_call": {"arguments": "{}"}}}]}),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "function_call"}]}),
            ]),
            "legacy `function_call`",
        ),
        (
            "function-call-reason-only",
            Reply::Chunks(vec![
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "function_call"}]}),
            ]),
            "legacy `function_call`",
        ),
    ];
    let mut calls = 0;
    for (id, reply, said) in cases {
        s.fake.push(reply);
        s.p.start(turn(id, &[], "hi", json!({"type": "text"})))
            .await
            .expect("start");
        let r = finished(&s.p, id).await;
        match &r.outcome {
            Some(Outcome::Failure {
                class, code, message, ..
            }) => {
                assert_eq!((class.as_str(), code.as_str()), ("model", "model_error"), "{id}");
                assert!(message.contains("not a chat completion"), "{id}: {message}");
                assert!(message.contains(said), "{id}: {message}");
            }
            other => panic!("{id}: not a chat completion is no answer: {other:?}"),
        }
        calls += 1;
        assert_eq!(s.fake.received().len(), calls, "{id} is not called again");
        assert!(!types(&s.p, id).await.contains(&"turn.response".to_string()), "{id}");
    }
}

/// What real endpoints send stays an answer: a last chunk with only its
/// `finish_reason` (no `delta`, or `delta: {}`), a usage chunk of
/// `choices: []`, and `content: null` beside tool calls, streamed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_real_endpoints_send_stay_answers() {
    let s = setup().await;
    let cases = [
        (
            "finish-without-delta",
            Reply::Chunks(vec![
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi "}}]}),
                json!({"choices": [{"index": 0, "delta": {"content": "there"}, "finish_reason": null}]}),
                json!({"choices": [{"index": 0, "finish_reason": "stop"}]}),
                json!({"choices": [], "usage": {"total_tokens": 3}}),
            ]),
            "hi there",
        ),
        (
            "finish-with-empty-delta",
            Reply::Raw(vec![
                json!({"choices": [{"index": 0, "delta": {"content": "ok"}}]}).to_string(),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
                "[DONE]".into(),
            ]),
            "ok",
        ),
    ];
    for (id, reply, text) in cases {
        s.fake.push(reply);
        s.p.start(turn(id, &[], "hi", json!({"type": "text"})))
            .await
            .expect("start");
        let r = finished(&s.p, id).await;
        assert_eq!(r.outcome, Some(Outcome::success(json!({"text": text}))), "{id}");
    }

    // `content: null` beside tool calls, streamed and whole, each ending in
    // a chunk with only its `finish_reason`.
    let call = json!({"index": 0, "id": "call-a", "type": "function",
                      "function": {"name": "echo", "arguments": "{\"value\": 7}"}});
    s.fake.push(Reply::Chunks(vec![
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null, "tool_calls": [call]}}]}),
        json!({"choices": [{"index": 0, "finish_reason": "tool_calls"}]}),
    ]));
    s.fake.push(Reply::Completion(
        json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call-b", "type": "function", "function": {"name": "echo", "arguments": "{\"value\": 8}"}}]}}]}),
    ));
    s.fake.push(Reply::Text("done".into()));
    s.p.start(turn("null-content", &["echo"], "hi", json!({"type": "text"})))
        .await
        .expect("start");
    let r = finished(&s.p, "null-content").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "done"}))), "{r:?}");
    for (id, value) in [("null-content/1.1", 7), ("null-content/2.1", 8)] {
        let child = s.p.get(id).await.expect("child");
        assert_eq!(child.outcome, Some(Outcome::success(json!(value))), "{id}");
    }
}

/// An answer of neither text nor tool calls (nor a refusal), streamed or
/// not, is no final answer: it fails `model_error`, journaled, without
/// another call. One the endpoint cut off still goes the way of a cut-off
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_neither_text_nor_tool_calls_is_a_model_error() {
    let s = setup().await;
    let cases = [
        (
            "empty-streamed",
            Reply::Chunks(vec![
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
                json!({"choices": [{"index": 0, "finish_reason": "stop"}]}),
            ]),
        ),
        (
            "empty-whole",
            Reply::Completion(json!({"choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": null}}]})),
        ),
    ];
    let mut calls = 0;
    for (id, reply) in cases {
        s.fake.push(reply);
        s.p.start(turn(id, &[], "hi", json!({"type": "text"})))
            .await
            .expect("start");
        let r = finished(&s.p, id).await;
        match &r.outcome {
            Some(Outcome::Failure {
                class,
                code,
                message,
                raw: Some(raw),
            }) => {
                assert_eq!((class.as_str(), code.as_str()), ("model", "model_error"), "{id}");
                assert_eq!(
                    message, "model `default` answered neither text nor tool calls (finish_reason `stop`)",
                    "{id}"
                );
                assert_eq!(raw["content"], "", "{id}");
            }
            other => panic!("{id}: an empty answer is no final answer: {other:?}"),
        }
        calls += 1;
        assert_eq!(s.fake.received().len(), calls, "{id} is not called again");
        assert!(types(&s.p, id).await.contains(&"turn.response".to_string()), "{id}");
    }
    // Cut off by the endpoint's token limit with nothing said: a cut-off
    // answer, as before.
    s.fake.push(Reply::TextEnding {
        text: String::new(),
        finish_reason: "length".into(),
    });
    s.p.start(turn("empty-cut", &[], "hi", json!({"type": "text"})))
        .await
        .expect("start");
    let r = finished(&s.p, "empty-cut").await;
    assert_eq!(failure_code(&r), "output_contract_violation", "{r:?}");
}

/// An endpoint that ignores `stream: true` and answers one JSON chat
/// completion is taken at its word: one call, its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_to_a_streamed_call_is_the_answer() {
    let s = setup().await;
    s.fake.push(Reply::NotStreamed("plain json answer".into()));
    s.p.start(turn("plain", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "plain").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "plain json answer"}))));
    assert_eq!(s.fake.received().len(), 1);
    let events = s.p.events("plain", 0, Some(1000)).await.expect("events").events;
    let response = events
        .iter()
        .find(|e| e.event_type == "turn.response")
        .expect("response");
    assert_eq!(response.payload["usage"]["total_tokens"], 15);
}

/// Tool calls streamed without `index`, each whole with its own `id`, are
/// separate calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_without_an_index_are_separate_calls() {
    let s = setup().await;
    let call = |id: &str, value: u64| {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"id": id, "type": "function",
               "function": {"name": "echo", "arguments": json!({"value": value}).to_string()}}]}}]})
    };
    s.fake.push(Reply::Chunks(vec![call("a1", 1), call("b2", 2)]));
    s.fake.push(Reply::Text("ok".into()));
    s.p.start(turn("noindex", &["echo"], "go", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "noindex").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "ok"}))));
    for (id, value) in [("noindex/1.1", 1), ("noindex/1.2", 2)] {
        let child = s.p.get(id).await.expect("child");
        assert_eq!(child.outcome, Some(Outcome::success(json!(value))));
    }
    let tool_ids: Vec<Value> = s.fake.received()[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].clone())
        .collect();
    assert_eq!(tool_ids, [json!("a1"), json!("b2")]);
}

/// Tool call arguments streamed as a JSON object, not its text, are the
/// arguments the tool runs with, as in a whole (not streamed) answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_object_arguments_are_the_calls_arguments() {
    let s = setup().await;
    s.fake.push(Reply::Chunks(vec![
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
               "function": {"name": "echo", "arguments": {"value": 7}}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ]));
    s.fake.push(Reply::Text("done".into()));
    s.p.start(turn("objargs", &["echo"], "go", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "objargs").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "done"}))));
    let child = s.p.get("objargs/1.1").await.expect("child");
    assert_eq!(child.outcome, Some(Outcome::success(json!(7))));
    let tool: Vec<Value> = s.fake.received()[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(tool, [json!("7")]);
}

/// A stream broken or stalled after its `finish_reason` (before its usage
/// chunk and `[DONE]`) carried a whole answer: it is the answer, without
/// usage, not a failed call asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_stream_breaks_after_it_finished_is_kept() {
    let s = setup().await;
    s.fake.push(Reply::BrokenAfterFinish("whole".into()));
    s.p.start(turn("broken", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "broken").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole"}))));
    s.fake.push(Reply::StalledAfterFinish("also whole".into()));
    s.p.start(turn("stalled", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "stalled").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "also whole"}))));
    assert_eq!(s.fake.received().len(), 2, "one call each");
    let events = s.p.events("broken", 0, Some(1000)).await.expect("events").events;
    let response = events
        .iter()
        .find(|e| e.event_type == "turn.response")
        .expect("response");
    assert!(response.payload["usage"].is_null(), "{response:?}");
}

/// An endpoint that cannot be reached fails `model_unavailable` with a
/// message saying why (the connection refused), not only that a request
/// could not be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_says_why() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/v1");
    let s = setup_with(test_retry(), &[("down", url.as_str())]).await;
    let mut req = turn("unreached", &[], "hi", Value::Null);
    if let ProcessInput::SessionTurn { session, .. } = &mut req.input {
        session.model = Some("down".into());
    }
    s.p.start(req).await.expect("start");
    let r = finished(&s.p, "unreached").await;
    assert_eq!(failure_code(&r), "model_unavailable");
    match &r.outcome {
        Some(Outcome::Failure { message, .. }) => {
            assert!(message.contains("refused"), "the cause is named: {message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A model whose key variable went missing fails `model_error`, and its
/// message says what is missing without calling it unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_a_model_error() {
    const VAR: &str = "CAIRN_TURN_TEST_GONE_KEY";
    std::env::set_var(VAR, "sk-soon-gone");
    let s = setup_with(test_retry(), &[("gone", ",key_env=CAIRN_TURN_TEST_GONE_KEY")]).await;
    std::env::remove_var(VAR);
    let mut req = turn("nokey", &[], "hi", Value::Null);
    if let ProcessInput::SessionTurn { session, .. } = &mut req.input {
        session.model = Some("gone".into());
    }
    s.p.start(req).await.expect("start");
    let r = finished(&s.p, "nokey").await;
    assert_eq!(failure_code(&r), "model_error");
    match &r.outcome {
        Some(Outcome::Failure { class, message, .. }) => {
            assert_eq!(class, "model");
            assert_eq!(
                message,
                "model `gone`: the environment variable `CAIRN_TURN_TEST_GONE_KEY` holding its key is not set"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(s.fake.received().is_empty());
}

/// A turn with tools whose id leaves no room for its tool calls' ids
/// `{id}/{step}.{k}` is refused at start; without tools it may use them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_id_leaves_room_for_its_tool_calls() {
    let s = setup().await;
    // max_steps 4, up to 1,000 calls a step: room for `/4.1000`, 7 bytes.
    let max = cairn_core::validate::MAX_AWAITED_CHILDREN;
    let long = "L".repeat(250);
    let e =
        s.p.start(turn(&long, &["echo"], "go", Value::Null))
            .await
            .expect_err("refused");
    assert_eq!(e.code(), "invalid_id", "{e}");
    assert!(e.to_string().contains("at most 249 bytes"), "{e}");
    assert_eq!(s.p.get(&long).await.expect_err("not stored").code(), "unknown_process");
    // The longest id that fits makes as many calls as a step may, the last
    // one's id included.
    let fits = "L".repeat(249);
    let calls = (1..=max).map(|i| ("echo".to_string(), json!({"value": i}))).collect();
    s.fake.push(Reply::ToolCalls(calls));
    s.fake.push(Reply::Text("ok".into()));
    s.p.start(turn(&fits, &["echo"], "go", Value::Null))
        .await
        .expect("start");
    assert_eq!(
        finished(&s.p, &fits).await.outcome,
        Some(Outcome::success(json!({"text": "ok"})))
    );
    let child = s.p.get(&format!("{fits}/1.{max}")).await.expect("the last child");
    assert_eq!(child.outcome, Some(Outcome::success(json!(max))));
    s.fake.push(Reply::Text("no tools".into()));
    s.p.start(turn(&"N".repeat(256), &[], "hi", Value::Null))
        .await
        .expect("no tools, no children");
}

/// The journaled answer of a turn's step `step`.
async fn response(p: &Processes, id: &str, step: u64) -> Value {
    let events = p.events(id, 0, Some(1000)).await.expect("events").events;
    events
        .into_iter()
        .find(|e| e.event_type == "turn.response" && e.payload["step"] == step)
        .map(|e| e.payload)
        .unwrap_or_else(|| panic!("{id} journaled no answer for step {step}"))
}

/// A refusal (OpenAI's `refusal`, streamed as `delta.refusal` or whole as
/// `message.refusal`) is journaled with the answer and fails the turn
/// `model_refused` (class `turn`, the refusal in the message, the answer in
/// `raw`); under `json_schema` it is not sent back for repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_fails_the_turn_with_its_text_journaled() {
    let s = setup().await;
    const NO: &str = "I cannot help with that.";
    s.fake.push(Reply::Refusal(NO.into()));
    s.p.start(turn("refused", &["echo"], "hi", json!({"type": "text"})))
        .await
        .expect("start");
    let r = finished(&s.p, "refused").await;
    match &r.outcome {
        Some(Outcome::Failure {
            class,
            code,
            message,
            raw: Some(raw),
        }) => {
            assert_eq!((class.as_str(), code.as_str()), ("turn", "model_refused"));
            assert!(message.contains(NO), "{message}");
            assert_eq!(raw["refusal"], NO);
        }
        other => panic!("a refusal is a failure with the answer in raw: {other:?}"),
    }
    let journaled = response(&s.p, "refused", 1).await;
    assert_eq!(journaled["message"]["refusal"], NO, "{journaled}");
    assert_eq!(journaled["message"]["content"], "");
    assert_eq!(journaled["finish_reason"], "stop");
    assert!(
        !types(&s.p, "refused").await.contains(&"turn.delta".to_string()),
        "a refusal is not streamed as content"
    );

    let contract = json!({"type": "json_schema", "repair_attempts": 2, "schema": {"type": "object"}});
    s.fake.push(Reply::Completion(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": null, "refusal": NO}}]})));
    s.p.start(turn("refused-whole", &[], "hi", contract))
        .await
        .expect("start");
    let r = finished(&s.p, "refused-whole").await;
    assert_eq!(failure_code(&r), "model_refused");
    match &r.outcome {
        Some(Outcome::Failure { message, raw, .. }) => {
            assert!(message.contains(NO), "{message}");
            assert_eq!(raw.as_ref().map(|m| m["refusal"].clone()), Some(json!(NO)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(response(&s.p, "refused-whole", 1).await["message"]["refusal"], NO);
    assert_eq!(s.fake.received().len(), 2, "one call each: a refusal is not repaired");
}

/// An answer without any choice (a stream of nothing but `[DONE]`, one whose
/// only chunk is the usage, a whole body with `"choices": []`) is no answer:
/// a failed call, retried like a broken stream, then `model_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_choice_is_a_failed_call() {
    let s = setup().await;
    s.fake.push(Reply::Raw(vec!["[DONE]".into()]));
    s.fake.push(Reply::Text("whole answer".into()));
    s.p.start(turn("empty-once", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "empty-once").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole answer"}))));
    assert_eq!(s.fake.received().len(), 2, "the empty call was made again");
    let responses = types(&s.p, "empty-once")
        .await
        .into_iter()
        .filter(|t| t == "turn.response")
        .count();
    assert_eq!(responses, 1, "only the whole answer is journaled");

    // The setup retries 3 times: 4 calls, none answered.
    s.fake.push(Reply::Raw(vec!["[DONE]".into()]));
    s.fake.push(Reply::Chunks(vec![]));
    s.fake
        .push(Reply::Completion(json!({"object": "chat.completion", "choices": []})));
    s.fake.push(Reply::Raw(vec!["[DONE]".into()]));
    s.p.start(turn("empty", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "empty").await;
    match &r.outcome {
        Some(Outcome::Failure {
            class, code, message, ..
        }) => {
            assert_eq!((class.as_str(), code.as_str()), ("model", "model_unavailable"));
            assert!(message.contains("without any choice"), "{message}");
        }
        other => panic!("no answer is not a success: {other:?}"),
    }
    assert_eq!(s.fake.received().len(), 6);
    assert!(!types(&s.p, "empty").await.contains(&"turn.response".to_string()));
}

/// An SSE frame of one content chunk `text`, with its `finish_reason`.
fn piece(text: &str, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})
    )
}

/// A usage past what a journal entry should hold (a few counts take a few
/// hundred bytes), or a finish_reason that is no short word, is journaled
/// as null, and the answer stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_usage_is_journaled_as_null() {
    let s = setup().await;
    let usage = json!({"choices": [], "usage": {"total_tokens": 15, "details": "u".repeat(1_100_000)}});
    s.fake.push(Reply::Frames(vec![
        piece("small", Some("stop")),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".into(),
    ]));
    s.p.start(turn("used", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "used").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "small"}))));
    assert_eq!(response(&s.p, "used", 1).await["usage"], Value::Null);
    // So are a usage nested past a few levels and a finish_reason that is
    // no short word.
    let mut deep = json!(15);
    for _ in 0..70 {
        deep = json!([deep]);
    }
    let long_reason = "s".repeat(1_100_000);
    s.fake.push(Reply::Frames(vec![
        piece("small", Some(&long_reason)),
        format!("data: {}\n\n", json!({"choices": [], "usage": {"total_tokens": deep}})),
        "data: [DONE]\n\n".into(),
    ]));
    s.p.start(turn("odd", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "odd").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "small"}))));
    let answer = response(&s.p, "odd", 1).await;
    assert_eq!(
        (answer["usage"].clone(), answer["finish_reason"].clone()),
        (Value::Null, Value::Null),
        "{answer}"
    );
    // Such a reason still says the answer is whole: a stream that ends after
    // it without `[DONE]` is a whole answer.
    s.fake.push(Reply::Frames(vec![piece("whole", Some(&long_reason))]));
    s.p.start(turn("odd-end", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "odd-end").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole"}))));
}

/// Frames a gateway puts between chunks (an event with no data, a named
/// keep-alive of its own) carry no chunk and are passed over; an unnamed
/// event whose data is no JSON is still a broken stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_events_between_chunks_are_passed_over() {
    let s = setup().await;
    s.fake.push(Reply::Frames(vec![
        "data:\n\n".into(),
        piece("who", None),
        "event: ping\ndata:\n\n".into(),
        "event: ping\ndata: ping\n\n".into(),
        piece("le", Some("stop")),
        "data: [DONE]\n\n".into(),
    ]));
    s.p.start(turn("pinged", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "pinged").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole"}))));
    assert_eq!(s.fake.received().len(), 1, "one call, read whole");
    // The setup retries 3 times: 4 calls, each with an unreadable chunk.
    for _ in 0..4 {
        s.fake.push(Reply::Frames(vec![
            piece("who", None),
            "data: not json\n\n".into(),
            "data: [DONE]\n\n".into(),
        ]));
    }
    s.p.start(turn("garbled", &[], "hi", Value::Null)).await.expect("start");
    match finished(&s.p, "garbled").await.outcome {
        Some(Outcome::Failure { code, message, .. }) => {
            assert_eq!(code, "model_unavailable");
            assert!(message.contains("unreadable chunk"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// A stream whose body ends cleanly after a choice gave its `finish_reason`
/// is a whole answer, `[DONE]` or not; one that ends before any
/// `finish_reason` is a broken stream and is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ending_cleanly_after_its_finish_reason_is_whole() {
    let s = setup().await;
    s.fake.push(Reply::WithoutDone(Box::new(Reply::ToolCalls(vec![(
        "echo".into(),
        json!({"value": 7}),
    )]))));
    s.fake
        .push(Reply::WithoutDone(Box::new(Reply::Text("complete answer".into()))));
    s.p.start(turn("no-done", &["echo"], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "no-done").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "complete answer"}))));
    assert_eq!(s.fake.received().len(), 2, "one call a step");
    let child = s.p.get("no-done/1.1").await.expect("child");
    assert_eq!(child.outcome, Some(Outcome::success(json!(7))));
    let journaled = response(&s.p, "no-done", 2).await;
    assert_eq!(journaled["finish_reason"], "stop");
    assert_eq!(
        journaled["usage"]["total_tokens"], 15,
        "the usage after the finish is kept"
    );

    let content = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    s.fake.push(Reply::WithoutDone(Box::new(Reply::Chunks(vec![content(
        "half an ans",
    )]))));
    s.fake.push(Reply::Text("whole answer".into()));
    s.p.start(turn("cut-short", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "cut-short").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole answer"}))));
    assert_eq!(
        s.fake.received().len(),
        4,
        "the stream without a finish_reason was asked again"
    );
    assert_eq!(
        response(&s.p, "cut-short", 1).await["message"]["content"],
        "whole answer"
    );
}

/// The tool calls of an answer the endpoint cut off (`finish_reason`
/// `length`) are not run: a call cut before its arguments would otherwise
/// run with `{}`, an action the model never named. The answer fails as a
/// cut-off answer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_answers_tool_calls_are_not_run() {
    let s = setup().await;
    s.fake.push(Reply::Chunks(vec![
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
               "function": {"name": "echo", "arguments": ""}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
    ]));
    s.p.start(turn("cut-call", &["echo"], "go", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "cut-call").await;
    assert_eq!(failure_code(&r), "output_contract_violation", "{r:?}");
    let err = s.p.get("cut-call/1.1").await.expect_err("no child was started");
    assert_eq!(err.code(), "unknown_process");
    assert_eq!(s.fake.received().len(), 1, "no second model call");

    // Under a contract with a repair, the repair's history holds no call
    // without its result (an endpoint refuses such a history).
    let contract = json!({"type": "json_schema", "repair_attempts": 1, "schema": {"type": "object"}});
    s.fake.push(Reply::Chunks(vec![
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
               "function": {"name": "echo", "arguments": "{\"val"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
    ]));
    s.fake.push(Reply::Text("{\"a\": 1}".into()));
    s.p.start(turn("cut-call-repaired", &["echo"], "go", contract))
        .await
        .expect("start");
    let r = finished(&s.p, "cut-call-repaired").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"a": 1}))), "{r:?}");
    assert!(s.p.get("cut-call-repaired/1.1").await.is_err(), "no child was started");
    let received = s.fake.received();
    let history = received.last().expect("request").body["messages"].clone();
    assert!(
        history
            .as_array()
            .expect("messages")
            .iter()
            .all(|m| m.get("tool_calls").is_none()),
        "{history}"
    );
}

/// An answer whose `content` is an array of parts (as some endpoints answer)
/// is read as the text of its `text` parts, streamed or not, rather than
/// dropped for an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_given_as_parts_is_read_as_text() {
    let s = setup().await;
    s.fake.push(Reply::Completion(json!({"choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}}]})));
    s.p.start(turn("parts", &[], "hello", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "parts").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "hi there"}))), "{r:?}");
    s.fake.push(Reply::Chunks(vec![
        json!({"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "streamed "}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "parts"}]}, "finish_reason": "stop"}]}),
    ]));
    s.p.start(turn("streamed-parts", &[], "hello", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "streamed-parts").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"text": "streamed parts"}))),
        "{r:?}"
    );
    assert!(types(&s.p, "streamed-parts").await.contains(&"turn.delta".to_string()));
}

/// An endpoint that keeps the connection alive with comments and never
/// answers (a proxy whose upstream is stuck) is given up after the idle
/// timeout, as a silent one is, and the call is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_keep_alives_alone_is_given_up_and_tried_again() {
    let s = setup_idle(test_retry(), &[], IDLE).await;
    s.fake.push(Reply::KeepAlive {
        every: Duration::from_millis(200),
    });
    s.fake.push(Reply::Text("recovered".into()));
    s.p.start(turn("kept-alive", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "kept-alive").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "recovered"}))), "{r:?}");
    assert_eq!(s.fake.received().len(), 2);
}

/// A tool a host registered under a name no model endpoint takes as a
/// function name (`fs.read`) is refused when a turn offering it starts,
/// before a process exists, rather than failing the turn at its first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_name_no_endpoint_takes_is_refused_at_start() {
    struct Named;
    #[cairn_core::async_trait]
    impl cairn_core::Tool for Named {
        fn name(&self) -> &str {
            "fs.read"
        }
        async fn run(&self, _ctx: cairn_core::ToolContext, _args: Value) -> Outcome {
            Outcome::success(json!(null))
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SqliteRegistry::open(dir.path().join("cairn.db"), Arc::new(SystemClock)).expect("open");
    let spec: ModelSpec = "default=http://127.0.0.1:9/v1".parse().expect("spec");
    let mut tools = cairn_tools::builtin_tools(false);
    tools.register(Arc::new(Named));
    let runner = TurnRunner::new(Models::new(vec![spec]).expect("models"), tools.clone());
    tools.register_runner("session_turn", Arc::new(runner));
    let p = Processes::builder(Arc::new(registry)).tools(tools).start();
    let e = p
        .start(turn("dotted", &["fs.read"], "hi", Value::Null))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), "invalid_request");
    assert!(e.to_string().contains("fs.read"), "{e}");
    assert_eq!(
        p.get("dotted").await.expect_err("nothing started").code(),
        "unknown_process"
    );
    p.shutdown().await;
}

/// Tool-call arguments holding any text reach the tool whole (the fake
/// endpoint splits them across chunks on a character boundary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_arguments_of_any_text_arrive_whole() {
    let s = setup().await;
    s.fake
        .push(Reply::ToolCalls(vec![("echo".into(), json!({"value": "日本語"}))]));
    s.fake.push(Reply::Text("ok".into()));
    s.p.start(turn("utf8", &["echo"], "go", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "utf8").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "ok"}))), "{r:?}");
    let child = s.p.get("utf8/1.1").await.expect("child");
    assert_eq!(child.outcome, Some(Outcome::success(json!("日本語"))));
}

/// A model that streams its reasoning (`reasoning_content`) for longer than
/// the idle timeout before its answer is making progress: its call is not
/// given up, and it is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_reasoning_is_progress() {
    let s = setup().await;
    let mut chunks: Vec<Value> = (0..15)
        .map(|i| json!({"choices": [{"index": 0, "delta": {"reasoning_content": format!("step {i} ")}}]}))
        .collect();
    chunks.push(json!({"choices": [{"index": 0, "delta": {"content": "answer"}, "finish_reason": "stop"}]}));
    s.fake.push(Reply::SlowChunks {
        chunks,
        delay: Duration::from_millis(200),
    });
    s.p.start(turn("reasons", &[], "hi", Value::Null)).await.expect("start");
    let r = finished(&s.p, "reasons").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "answer"}))), "{r:?}");
    assert_eq!(s.fake.received().len(), 1, "one model call");
}

/// An answer with more tool calls than a step can await makes the first
/// ones and tells the model of the rest, instead of running them all and
/// then failing on the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_past_what_a_step_awaits_are_refused_before_they_run() {
    let s = setup().await;
    let max = cairn_core::validate::MAX_AWAITED_CHILDREN;
    let calls = (0..=max).map(|i| ("echo".to_string(), json!({"value": i}))).collect();
    s.fake.push(Reply::ToolCalls(calls));
    s.fake.push(Reply::Text("done".into()));
    s.p.start(turn("many", &["echo"], "call echo a lot", json!({"type": "text"})))
        .await
        .expect("start");
    let r = p_finished(&s, "many").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"text": "done"}))),
        "{:?}",
        r.outcome
    );
    assert!(s.p.get(&format!("many/1.{max}")).await.is_ok(), "the first {max} ran");
    let past = s.p.get(&format!("many/1.{}", max + 1)).await;
    assert_eq!(past.expect_err("never started").code(), "unknown_process");
    let received = s.fake.received();
    let tools: Vec<&Value> = received[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tools.len(), max + 1);
    assert!(
        tools[max]["content"]
            .as_str()
            .is_some_and(|c| c.contains("too_many_tool_calls")),
        "{}",
        tools[max]
    );
}

async fn p_finished(s: &Setup, id: &str) -> ProcessRecord {
    let r = s.p.await_output(id, Duration::from_secs(120)).await.expect("await");
    assert!(r.is_terminal(), "{id} did not end: {r:?}");
    r
}

/// A stream that stays open after its `finish_reason` (a proxy holding the
/// connection) gives its answer a few seconds later, not after the whole
/// idle timeout (three minutes by default; a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_open_after_it_finished_is_taken_soon() {
    let s = setup_idle(test_retry(), &[], Duration::from_secs(60)).await;
    s.fake.push(Reply::StalledAfterFinish("whole".into()));
    s.p.start(turn("held-open", &[], "hi", Value::Null))
        .await
        .expect("start");
    let r = finished(&s.p, "held-open").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "whole"}))));
}
