//! `Retry-After` values the testkit's fake cannot send, end to end: an HTTP
//! date measured by the endpoint's own `Date` header, and delay-seconds too
//! many for a u64. The endpoint here is a few lines of HTTP/1.1 over a
//! socket, answering each request with the next scripted response.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cairn_core::{
    Disposition, Outcome, ProcessInput, ProcessRecord, Processes, StartRequest, SystemClock, TurnSession,
};
use cairn_sqlite::SqliteRegistry;
use cairn_turn::{ModelSpec, Models, RetryPolicy, TurnRunner};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// One scripted response: the status line's code and reason, its extra
/// headers, and a JSON body.
type Response = (&'static str, Vec<(&'static str, String)>, Value);

/// An endpoint answering each request with the next of its responses (the
/// last one again once they run out), counting the requests.
struct Endpoint {
    base_url: String,
    calls: Arc<Mutex<usize>>,
}

impl Endpoint {
    /// Serve `responses` in turn.
    fn start(responses: Vec<Response>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let calls = Arc::new(Mutex::new(0));
        let counted = calls.clone();
        let mut script: VecDeque<_> = responses.into();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                // The request: its head, then a body of its Content-Length.
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                *counted.lock().unwrap() += 1;
                let (status, headers, body) = if script.len() > 1 {
                    script.pop_front().expect("a response")
                } else {
                    script.front().cloned().expect("a response")
                };
                let body = body.to_string();
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            }
        });
        Self { base_url, calls }
    }

    fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

fn too_many_requests(headers: Vec<(&'static str, String)>) -> Response {
    (
        "429 Too Many Requests",
        headers,
        json!({"error": {"message": "slow down", "type": "rate_limit_error"}}),
    )
}

fn answer(text: &str) -> Response {
    (
        "200 OK",
        vec![],
        json!({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}}]}),
    )
}

/// A server whose `default` model is `endpoint`, retrying 3 times with at
/// most 2 s between calls (a `Retry-After` past that is waited out durably,
/// one past an hour not at all).
fn processes(endpoint: &Endpoint) -> (tempfile::TempDir, Processes) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SqliteRegistry::open(dir.path().join("cairn.db"), Arc::new(SystemClock)).expect("open");
    let spec: ModelSpec = format!("default={}", endpoint.base_url).parse().expect("spec");
    let mut tools = cairn_tools::builtin_tools(false);
    let runner = TurnRunner::new(Models::new([spec]).expect("models"), tools.clone()).with_retry(RetryPolicy {
        retries: 3,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(2),
    });
    tools.register_runner("session_turn", Arc::new(runner));
    let p = Processes::builder(Arc::new(registry)).tools(tools).start();
    (dir, p)
}

fn turn(id: &str) -> StartRequest {
    let session = TurnSession {
        model: None,
        system: None,
        tools: vec![],
        max_steps: Some(2),
        temperature: None,
    };
    let input = ProcessInput::SessionTurn {
        session,
        input: json!("hi"),
        output_contract: Value::Null,
    };
    StartRequest::new(id, input, Disposition::Rerunnable)
}

async fn finished(p: &Processes, id: &str) -> ProcessRecord {
    let r = p.await_output(id, WAIT).await.expect("await");
    assert!(r.is_terminal(), "{id} did not end: {r:?}");
    r
}

/// The failure's message, asserting it is `model_unavailable`.
fn unavailable(r: &ProcessRecord) -> &str {
    match &r.outcome {
        Some(Outcome::Failure { code, message, .. }) if code == "model_unavailable" => message,
        other => panic!("expected model_unavailable, got {other:?}"),
    }
}

/// Delay-seconds too many for a u64 is a very long wait: past the hour a
/// turn waits, so the endpoint is not called again (not taken as absent,
/// and called again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_retry_after_is_not_called_again() {
    let endpoint = Endpoint::start(vec![too_many_requests(vec![(
        "Retry-After",
        "99999999999999999999".into(),
    )])]);
    let (_dir, p) = processes(&endpoint);
    p.start(turn("overflow")).await.expect("start");
    let r = finished(&p, "overflow").await;
    let message = unavailable(&r);
    assert!(
        message.contains("past the 3600 s a turn waits: not called again"),
        "{message}"
    );
    assert_eq!(endpoint.calls(), 1, "not called again");
}

/// A `Retry-After` date two hours past the endpoint's `Date` is two hours,
/// though the local clock is years past both: not called again (measured by
/// the local clock it would be a date gone by, and called again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_counts_from_the_endpoints_date_when_the_local_clock_is_ahead() {
    let endpoint = Endpoint::start(vec![too_many_requests(vec![
        ("Date", "Wed, 21 Oct 2015 07:28:00 GMT".into()),
        ("Retry-After", "Wed, 21 Oct 2015 09:28:00 GMT".into()),
    ])]);
    let (_dir, p) = processes(&endpoint);
    p.start(turn("ahead")).await.expect("start");
    let r = finished(&p, "ahead").await;
    let message = unavailable(&r);
    assert!(
        message.contains("it asked to be called again in 7200 s, past the 3600 s a turn waits"),
        "{message}"
    );
    assert_eq!(endpoint.calls(), 1, "not called again");
}

/// A `Retry-After` date one second past the endpoint's `Date` is one
/// second, though the local clock is a day behind both: called again after
/// it (measured by the local clock it would be a day, and not waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_counts_from_the_endpoints_date_when_the_local_clock_is_behind() {
    let endpoint_now = SystemTime::now() + Duration::from_secs(86_400);
    let endpoint = Endpoint::start(vec![
        too_many_requests(vec![
            ("Date", httpdate::fmt_http_date(endpoint_now)),
            (
                "Retry-After",
                httpdate::fmt_http_date(endpoint_now + Duration::from_secs(1)),
            ),
        ]),
        answer("after a second"),
    ]);
    let (_dir, p) = processes(&endpoint);
    let started = std::time::Instant::now();
    p.start(turn("behind")).await.expect("start");
    let r = finished(&p, "behind").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"text": "after a second"}))));
    assert_eq!(endpoint.calls(), 2);
    assert!(started.elapsed() >= Duration::from_secs(1), "the second was waited");
}
