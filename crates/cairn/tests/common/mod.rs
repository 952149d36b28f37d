//! Test support: run the real `cairn` binary on a free loopback port and talk to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// `serve`'s flags for the host token `host-secret` and two sessions' tokens,
/// `s1=tok-1` and `s2=tok-2`.
pub const TWO_SESSIONS: &[&str] = &[
    "--token",
    "host-secret",
    "--session-token",
    "s1=tok-1",
    "--session-token",
    "s2=tok-2",
];

/// A running `cairn serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `cairn serve --db memory --allow-shell --listen 127.0.0.1:0` plus `extra`.
    pub async fn start(extra: &[&str]) -> Server {
        Self::start_on("memory", extra).await
    }

    /// `cairn serve --db DB --allow-shell --listen 127.0.0.1:0` plus `extra`.
    pub async fn start_on(db: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--db", db, "--allow-shell", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::serve(&args).await
    }

    /// `cairn serve ARGS` (which must listen on port 0 of loopback).
    pub async fn serve(args: &[&str]) -> Server {
        let stderr = if std::env::var_os("CAIRN_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Self::spawn(args, "warn", stderr).await
    }

    /// `cairn serve ARGS` logging at `debug` into the file `log`.
    pub async fn serve_logging_to(args: &[&str], log: &std::path::Path) -> Server {
        let file = std::fs::File::create(log).expect("log file");
        Self::spawn(args, "debug", Stdio::from(file)).await
    }

    /// `cairn serve ARGS` with `env` set in its environment.
    pub async fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_with(args, "warn", Stdio::null(), env).await
    }

    async fn spawn(args: &[&str], rust_log: &str, stderr: Stdio) -> Server {
        Self::spawn_with(args, rust_log, stderr, &[]).await
    }

    async fn spawn_with(args: &[&str], rust_log: &str, stderr: Stdio, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(args)
            .env_remove("CAIRN_TOKEN")
            .env_remove("CAIRN_SESSION_TOKENS")
            .env_remove("CAIRN_DATABASE_URL")
            .env_remove("CAIRN_LISTEN")
            .envs(env.iter().copied())
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn cairn serve");
        let stdout = child.stdout.take().expect("stdout piped");
        // `serve` prints its bound address as its first stdout line.
        let line = first_line(stdout, Duration::from_secs(20)).expect("serve printed its address");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let server = Server {
            child,
            base,
            http: reqwest::Client::new(),
            token: None,
        };
        // Bounded wait for health (a loaded machine may stall for seconds).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(r) = server.http.get(server.url("/healthz")).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server at {} never became healthy within 30 s", server.base);
    }

    /// The same server, presenting `token` on every request of the helpers.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            base: self.base.clone(),
            http: self.http.clone(),
            token: Some(token.to_string()),
        }
    }

    /// A client without a token.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            http: self.http.clone(),
            token: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The port the server listens on, as `base` names it.
    pub fn port(&self) -> String {
        self.base
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string()
    }

    /// A connection that sent a request's headers and then a body that
    /// never comes: the server keeps it open (a shutdown grace runs on).
    pub async fn hold_a_connection_open(&self) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let addr = self.base.trim_start_matches("http://").to_string();
        let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        slow.write_all(
            b"POST /v1/processes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .expect("write");
        slow
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freeze the server (SIGSTOP) and return once every one of its threads
    /// is stopped: the signal stops the first thread that takes it, and until
    /// then another thread may still answer a request.
    pub async fn freeze(&self) {
        let pid = self.pid();
        // SAFETY: stopping our own child process by its pid.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
        let all_stopped = || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
            tasks.flatten().all(|task| {
                // The state follows the parenthesised command name.
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit_once(')')
                            .map(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                    .unwrap_or(true)
            })
        };
        for _ in 0..2_000 {
            if all_stopped() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the server's threads did not all stop within 10 s");
    }

    /// Continue a server [`Server::freeze`] stopped.
    pub fn thaw(&self) {
        // SAFETY: continuing our own child process by its pid.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGCONT) }, 0);
    }

    /// Wait for the server process to exit by itself (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Run a CLI client command against this server.
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        run_cli(&self.base, self.token.as_deref(), args, stdin).await
    }
}

/// What a CLI run printed.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Run `cairn ARGS` with `--server base`.
pub async fn run_cli(base: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--server").arg(base).args(args).env_remove("CAIRN_TOKEN");
    if let Some(t) = token {
        cmd.env("CAIRN_TOKEN", t);
    }
    // No input: stdin is /dev/null, as in a terminal that types nothing (a pipe
    // would be input `cairn run` refuses).
    let piped = stdin.is_some();
    cmd.stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn cairn client");
    if let Some(s) = stdin {
        let mut input = child.stdin.take().expect("stdin piped");
        // A command refused before it reads its input may exit before this
        // write: its answer, not the pipe, is what the test asserts.
        if let Err(e) = input.write_all(s.as_bytes()).await {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("cli finished in time")
        .expect("cli ran");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A small HTTP helper: every call answers (status, JSON body).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Client {
    pub fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.auth(self.http.get(self.url(path))).send().await.expect("request");
        decode(r).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.auth(self.http.get(self.url("/metrics")))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Wait (bounded) until the server counts `n` awaits waiting
    /// (`cairn_awaits_open`): the barrier for "the await has begun".
    pub async fn awaits_open(&self, n: u64) {
        let want = format!("cairn_awaits_open {n}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if self.metrics().await.lines().any(|l| l == want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server never counted {n} awaits open within 20 s");
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .auth(self.http.post(self.url(path)).json(&body))
            .send()
            .await
            .expect("request");
        decode(r).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .auth(
                self.http
                    .post(self.url(path))
                    .header("content-type", content_type)
                    .body(body),
            )
            .send()
            .await
            .expect("request");
        decode(r).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .auth(self.http.delete(self.url(path)))
            .send()
            .await
            .expect("request");
        decode(r).await
    }

    pub async fn start(&self, body: Value) -> (u16, Value) {
        self.post("/v1/processes", body).await
    }

    /// Poll a process until `pred` holds on its record (bounded: 20 s, which
    /// only a stalled machine comes near).
    pub async fn wait_for(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, record) = self.get(&format!("/v1/processes/{id}")).await;
            if status == 200 && pred(&record) {
                return record;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {id} never reached the expected state: {status} {record}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Open an SSE stream on a process's events.
    pub async fn sse(&self, id: &str, query: &str, last_event_id: Option<u64>) -> Sse {
        let mut rb = self
            .http
            .get(self.url(&format!("/v1/processes/{id}/events{query}")))
            .header("accept", "text/event-stream");
        if let Some(l) = last_event_id {
            rb = rb.header("last-event-id", l.to_string());
        }
        let resp = self.auth(rb).send().await.expect("sse request");
        assert_eq!(resp.status().as_u16(), 200, "sse status");
        Sse {
            stream: Box::pin(sse_stream::SseStream::from_bytes_stream(resp.bytes_stream())),
        }
    }
}

async fn decode(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body)
}

type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

/// One SSE event with data.
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// An open SSE stream.
pub struct Sse {
    stream: EventStream,
}

impl Sse {
    /// The next SSE event with data, or `None` when the stream closed. Panics after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(e)) => {
                        if let Some(data) = e.data {
                            return Some(SseEvent {
                                event: e.event,
                                id: e.id,
                                data,
                            });
                        }
                    }
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("sse event in time")
    }
}

/// A start body for a builtin tool.
pub fn tool_start(id: &str, tool: &str, args: Value, disposition: &str) -> Value {
    json!({
        "id": id,
        "input": {"type": "tool_call", "tool": tool, "args": args},
        "disposition": disposition,
    })
}

/// A process that waits for signal `go` (running until signalled).
pub fn waiter(id: &str) -> Value {
    tool_start(id, "wait_signal", json!({"name": "go"}), "rerunnable")
}

/// The first line `stdout` gives within `within` (read on a thread of its
/// own, so a child that prints nothing cannot hang the test), or `None`.
pub fn first_line(stdout: std::process::ChildStdout, within: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).ok()
}
