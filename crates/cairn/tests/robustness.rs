//! The server against slow, idle, greedy and oversized clients, and what it
//! tells an operator: readiness, gauges, latency histograms and build info.

mod common;

use std::time::Duration;

use common::{tool_start, waiter, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Everything the server sends until it closes the connection (bounded).
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed() {
    let server = Server::start(&["--header-timeout", "300ms"]).await;
    // Connected, never sent a byte (a half-open or abandoned client).
    let mut silent = connect(&server).await;
    assert_eq!(read_to_close(&mut silent, Duration::from_secs(20)).await, "");
    // Headers started but never finished (slowloris).
    let mut slow = connect(&server).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut slow, Duration::from_secs(20)).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // A kept-alive connection that goes idle after its answer.
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut idle, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A start whose body stalls after its headers (100 bytes declared, a few
/// sent): what the server answers before it closes the connection.
async fn stalled_start(server: &Server) -> String {
    let mut stalled = connect(server).await;
    stalled
        .write_all(
            b"POST /v1/processes HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"id\":",
        )
        .await
        .expect("write");
    read_to_close(&mut stalled, Duration::from_secs(20)).await
}

/// A request whose body stalls after its headers (declared, never sent) is
/// answered 408 `request_timeout` and its connection closed, so it holds no
/// connection slot; a body that arrives in time is served as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_answered_408_and_closed() {
    let server = Server::start(&["--body-timeout", "300ms"]).await;
    let answer = stalled_start(&server).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    // On `/mcp` too, in JSON-RPC's shape: a slow body is not a large one.
    let mut stalled = connect(&server).await;
    stalled
        .write_all(
            b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":",
        )
        .await
        .expect("write");
    let answer = read_to_close(&mut stalled, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""jsonrpc":"2.0""#) && answer.contains("did not all arrive"),
        "{answer}"
    );
    let (status, _) = server
        .client()
        .start(serde_json::json!({
            "id": "in-time", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"
        }))
        .await;
    assert_eq!(status, 201);
}

/// A request refused before its body is read (no token) is refused at once:
/// its body is never read, so a stalled one holds nothing until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_without_a_token_is_refused_unread() {
    let server = Server::start(&["--token", "host", "--body-timeout", "1h"]).await;
    let answer = stalled_start(&server).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_with_503() {
    let server = Server::start(&["--max-connections", "2"]).await;
    let held = [connect(&server).await, connect(&server).await];
    let mut third = connect(&server).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut third, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
    // Once the held connections close, their slots serve again.
    drop(held);
    let c = server.client();
    let mut ok = false;
    // Bounded at 20 s: a loaded machine may be slow to see them close.
    for _ in 0..800 {
        if c.http
            .get(c.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "slots were never given back");
}

/// An externally owned process `id` with `n` events of 400 KB each: more
/// than a follower's receive buffer and the server's send buffer hold.
async fn process_with_large_events(server: &Server, id: &str, n: usize) {
    let c = server.client();
    let (s, body) = c
        .start(json!({
            "id": id, "disposition": "externally_owned",
            "input": {"type": "external", "metadata": {}}, "event_types": [{"name": "blob"}]
        }))
        .await;
    assert_eq!(s, 201, "{body}");
    let blob = "x".repeat(400 * 1024);
    for _ in 0..n {
        let (s, body) = c
            .post(
                &format!("/v1/processes/{id}/events"),
                json!({"event_type": "blob", "payload": {"blob": blob}}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
}

/// A follower of `id`'s events over a socket with a receive buffer of
/// `receive_buffer` bytes, and its status line (read, nothing more).
async fn follower(server: &Server, id: &str, receive_buffer: u32) -> (TcpStream, String) {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().expect("address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(receive_buffer).expect("receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET /v1/processes/{id}/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut status))
        .await
        .expect("a status line in time")
        .expect("read");
    (stream, String::from_utf8_lossy(&status).into_owned())
}

/// A follower that stops reading is closed once the server's writes to it
/// have made no progress for `--send-timeout` (the client sees the end once
/// it reads), so it no longer holds a connection slot: with every slot
/// taken by such followers, a request is served again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_reading_is_closed_and_frees_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    // Idle connections stay (the test client's own among them): only the
    // bound on writes can free a slot.
    let server = Server::serve_logging_to(
        &[
            "--db",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--send-timeout",
            "2s",
            "--max-connections",
            "3",
            "--header-timeout",
            "1h",
        ],
        &log,
    )
    .await;
    process_with_large_events(&server, "big", 24).await;
    // Followers until the slots are all taken (the test client holds one or two).
    let mut stalled = Vec::new();
    loop {
        let (stream, status) = follower(&server, "big", 4096).await;
        if status == "HTTP/1.1 503" {
            break;
        }
        assert_eq!(status, "HTTP/1.1 200", "a follower is served until the slots are taken");
        stalled.push(stream);
        assert!(stalled.len() <= 3, "more followers served than --max-connections");
    }
    assert!(!stalled.is_empty(), "no follower was served");
    // Each is closed, said in the log with the client's address (read
    // without reading the followers: a read would let the writes on).
    let peers: Vec<String> = stalled
        .iter()
        .map(|s| s.local_addr().expect("address").to_string())
        .collect();
    let closed = |logged: &str, peer: &str| logged.lines().any(|l| l.contains("--send-timeout") && l.contains(peer));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logged = std::fs::read_to_string(&log).expect("log");
        if peers.iter().all(|p| closed(&logged, p)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every stalled follower of {peers:?} was closed:\n{logged}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client sees it once it reads: what was sent before the close,
    // then the end (or a reset).
    for (stream, peer) in stalled.iter_mut().zip(&peers) {
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the follower from {peer} still reads");
    }
    // Its slot is free: a request is served.
    let mut served = String::new();
    for _ in 0..800 {
        let mut probe = connect(&server).await;
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        served = read_to_close(&mut probe, Duration::from_secs(20)).await;
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "no slot was freed: {served}");
}

/// A follower that reads slowly, pausing for most of `--send-timeout` again
/// and again (far longer than it in all), is not closed: each read lets the
/// server's writes on and starts the bound again. It reads the log to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_follower_is_not_closed() {
    let server = Server::start(&["--send-timeout", "4s"]).await;
    process_with_large_events(&server, "slow", 40).await;
    let (mut stream, status) = follower(&server, "slow", 64 * 1024).await;
    assert_eq!(status, "HTTP/1.1 200");
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    // Six pauses of 1.5 s (9 s in all, over twice the bound), 2 MiB read
    // between them.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut taken = 0;
        while taken < 2 * 1024 * 1024 {
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
                .await
                .expect("data in time")
                .expect("the follower was not closed");
            assert!(n > 0, "the follower was closed after {} bytes", seen.len());
            seen.extend_from_slice(&buf[..n]);
            taken += n;
        }
    }
    // Then the process ends and the rest is read to its terminal event.
    let (s, body) = server
        .client()
        .post(
            "/v1/processes/slow/complete",
            json!({"outcome": {"type": "success", "value": null}, "authority": "test"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n = stream.read(&mut buf).await.expect("the follower was not closed");
            assert!(n > 0, "the follower was closed after {} bytes", seen.len());
            seen.extend_from_slice(&buf[..n]);
            let tail = &seen[seen.len().saturating_sub(64 * 1024)..];
            if String::from_utf8_lossy(tail).contains("process.completed") {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the terminal event never came");
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(
        text.matches("\"event_type\":\"blob\"").count(),
        40,
        "every event arrived"
    );
}

/// A follower that reads without pause, but slower than the server's send
/// buffer drains by the third a full socket needs before it takes a write
/// again, is not closed: what it takes starts the bound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_a_third_of_the_send_buffer_is_not_closed() {
    let server = Server::start(&["--send-timeout", "1s"]).await;
    process_with_large_events(&server, "trickle", 10).await;
    let (mut stream, status) = follower(&server, "trickle", 16 * 1024).await;
    assert_eq!(status, "HTTP/1.1 200");
    let mut buf = vec![0u8; 4 * 1024];
    let mut taken = 0;
    // 4 KiB every 50 ms (80 KiB/s) for 4 s, four times the bound: the
    // socket's buffers fill at once, and a third of them does not drain
    // within a second at this rate.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("data in time")
            .expect("the follower was not reset");
        assert!(n > 0, "the follower was closed after {taken} bytes");
        taken += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken > 100 * 1024, "{taken} bytes read");
}

/// A `--send-timeout` under a second is refused at start: it would close
/// connections whose clients are only slow to read.
#[test]
fn a_send_timeout_under_a_second_is_refused() {
    for value in ["0", "0s", "500ms"] {
        let out = std::process::Command::new(common::BIN)
            .args([
                "serve",
                "--db",
                "memory",
                "--listen",
                "127.0.0.1:0",
                "--send-timeout",
                value,
            ])
            .env_remove("CAIRN_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--send-timeout must be at least 1s"), "{value}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_content_length_is_refused_before_the_body() {
    let server = Server::start(&["--max-body-bytes", "1024"]).await;
    let mut stream = connect(&server).await;
    // Declares 100 MB and sends none of it: the answer must not wait for the body.
    stream
        .write_all(
            b"POST /v1/processes HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n\
              content-length: 104857600\r\n\r\n",
        )
        .await
        .expect("write");
    let answer = read_to_close(&mut stream, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // Within the limit, the same route works.
    assert_eq!(server.client().start(waiter("small")).await.0, 201);
}

/// A chunked body whose framing is broken (a chunk size that is no hex
/// number) is answered 400 `invalid_request` in cairn's words, not the HTTP
/// framework's ("Failed to buffer the request body"), and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_is_refused_in_cairns_words() {
    let server = Server::start(&[]).await;
    let body = waiter("chunky").to_string();
    let mut stream = connect(&server).await;
    let request = format!(
        "POST /v1/processes HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\nzz\r\nmore\r\n0\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let answer = read_to_close(&mut stream, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"invalid_request""#), "{answer}");
    assert!(
        answer.contains("request body: it could not be read to its end") && !answer.contains("Failed to buffer"),
        "{answer}"
    );
    let (s, _) = server.client().get("/v1/processes/chunky").await;
    assert_eq!(s, 404, "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gauges_latency_and_build_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("m.db").display());
    let server = Server::start_on(&db, &[]).await;
    let c = server.client();
    let (s, health) = c.get("/healthz").await;
    assert_eq!(s, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    assert_eq!(c.start(waiter("g1")).await.0, 201);
    // g1 suspends (rerunnable: no run, no lease); g2 waits holding both (owner_bound).
    assert_eq!(
        c.start(tool_start("g2", "wait_signal", json!({"name": "go"}), "owner_bound"))
            .await
            .0,
        201
    );
    c.wait_for("g1", |r| !r["wait"].is_null()).await;
    c.wait_for("g2", |r| !r["wait"].is_null()).await;
    // g1's run ends just after its wait is written: observe (bounded) until the
    // worker has let it go, so the scrape below sees the settled state.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = c.metrics().await;
        if text.lines().any(|l| l == "cairn_worker_runs 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never settled at one run:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c.http.get(c.url("/metrics")).send().await.expect("metrics");
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text")));
    let text = r.text().await.expect("text");
    for line in [
        "cairn_processes_running 2",
        "cairn_processes_waiting 2",
        "cairn_wakes_pending 0",
        "cairn_worker_runs 1",
        &format!(
            "cairn_build_info{{version=\"{}\",backend=\"sqlite\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    // Only the owner-bound wait holds a lease.
    assert!(text.lines().any(|l| l == "cairn_leases_held 1"), "{text}");
    assert!(text.lines().any(|l| l == "cairn_leases_lapsed 0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("cairn_http_connections_open ") && !l.ends_with(" 0")),
        "{text}"
    );
    let healthz_count = text
        .lines()
        .find(|l| l.starts_with("cairn_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\"}"))
        .unwrap_or_else(|| panic!("no latency histogram for /healthz in\n{text}"));
    assert!(!healthz_count.ends_with(" 0"), "{healthz_count}");
    assert!(
        text.contains("cairn_http_request_duration_seconds_bucket{le=\"0.001\",method=\"GET\",route=\"/healthz\"}")
            || text
                .contains("cairn_http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\",le=\"0.001\"}"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_database_does_not_answer() {
    if !cairn_postgres::testing::enabled() {
        return;
    }
    let schema = cairn_postgres::testing::TestSchema::new("cairn_ready");
    let db = schema.db_url();
    let server = Server::start_on(&db, &[]).await;
    let c = server.client();
    assert_eq!(c.get("/healthz").await.0, 200);
    // The tables vanish under the running server: not ready.
    schema
        .execute(&format!("DROP SCHEMA \"{}\" CASCADE", schema.name))
        .await
        .expect("drop schema");
    let (s, err) = c.get("/healthz").await;
    assert_eq!((s, err["error"]["code"].as_str()), (503, Some("unavailable")), "{err}");
    // The database's own words stay in the log: this route answers anyone.
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains(&schema.name) && !message.contains("relation"),
        "{message}"
    );
    // The dashboard's list says the same: the server's fault, not the query's.
    let (s, _) = c.get("/ui/list/rows").await;
    assert!(s >= 500, "the dashboard's list answered {s}");
}

/// `cairn serve` raises its open-file limit to the hard one (a shell's soft
/// limit would stop `accept` before `--max-connections`, leaving clients in
/// the backlog instead of answered 503), and lowers a `--max-connections`
/// the limit cannot hold, saying so.
#[cfg(target_os = "linux")]
#[test]
fn serve_fits_its_connections_to_the_open_file_limit() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    // This process's own hard limit bounds what a child may be given.
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) into a local struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    let high = own.rlim_max.min(1 << 16);
    // What a limit leaves for connections (a quarter, at most 256, is kept),
    // when that is under the default 1024.
    let room = |limit: u64| limit - 256u64.min(limit / 4);
    let lowered = |limit: u64| (room(limit) < 1024).then(|| room(limit));
    let mut cases = vec![(high, lowered(high))];
    if own.rlim_max >= 300 {
        cases.push((300, lowered(300)));
    }
    for (hard, lowered) in cases {
        let mut command = std::process::Command::new(common::BIN);
        command
            .args(["serve", "--db", "memory", "--listen", "127.0.0.1:0"])
            .env_remove("CAIRN_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: setrlimit(2) in the child between fork and exec, async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        while lines.len() < 2 {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).expect("read") > 0,
                "the server ended: {lines:?}"
            );
            lines.push(line);
        }
        assert!(lines[1].starts_with("dashboard at"), "{lines:?}");
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
        let open_files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("the open-file limit");
        let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
        assert_eq!(numbers, [hard.to_string(), hard.to_string()], "{open_files}");
        // The warning was written before the address was.
        child.kill().expect("kill");
        let out = child.wait_with_output().expect("exit");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match lowered {
            Some(room) => assert!(
                stderr.contains(&format!("at most {room} are held open")),
                "hard limit {hard}: {stderr}"
            ),
            None => assert!(!stderr.contains("--max-connections"), "hard limit {hard}: {stderr}"),
        }
    }
}
