//! A `cairn serve` child of a bench run: this same binary, default flags, on
//! the bench's database, talked to over HTTP as a client would.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::child::status_kib_of;
use super::suspended::cpu_seconds_of;

/// Start rerunnable tool process `id` on the server at `base`; it must be new.
pub(crate) async fn start_new_over_http(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    tool: &str,
    args: serde_json::Value,
) -> Result<(), String> {
    let body = serde_json::json!({"id": id, "disposition": "rerunnable",
        "input": {"type": "tool_call", "tool": tool, "args": args}});
    let r = http
        .post(format!("{base}/v1/processes"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("start `{id}`: {e}"))?;
    if r.status().as_u16() != 201 {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        return Err(format!(
            "start `{id}`: {status} {text} (ids must be new: use a fresh database or another --seed)"
        ));
    }
    Ok(())
}

/// A `cairn serve` child on the bench's database, killed when dropped.
pub(crate) struct Serve {
    child: Child,
    pid: u32,
    /// `http://ADDR`, as the server printed it.
    pub base: String,
}

impl Serve {
    /// Spawn it and read its address.
    pub async fn spawn(url: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        // A node id of its own: one that a child killed on an error path
        // still held would refuse the next (ADR 0027).
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let node = format!(
            "bench-{}-{}",
            std::process::id(),
            SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--node-id", &node])
            // The URL goes through the environment: a PostgreSQL URL may carry a password.
            .env("CAIRN_DATABASE_URL", url)
            .env_remove("CAIRN_TOKEN")
            .env_remove("CAIRN_LISTEN")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot spawn cairn serve: {e}"))?;
        let pid = child.id().ok_or("cairn serve exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(60), BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| "cairn serve printed no address within 60 s".to_string())?
            .map_err(|e| format!("reading cairn serve's address: {e}"))?;
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("cairn serve printed {line:?}, not its address"))?
            .to_string();
        Ok(Self { child, pid, base })
    }

    /// Its resident set size, in bytes.
    pub fn rss(&self) -> Result<u64, String> {
        status_kib_of(&self.pid.to_string(), "VmRSS:")
    }

    /// Its CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64, String> {
        cpu_seconds_of(self.pid)
    }

    /// Kill it and reap it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// One keep-alive HTTP/1.1 connection to a served child, as a load generator
/// holds it: hyper's connection API without a pool, a URL parser or a JSON
/// tree per answer. The clients share the machine with the server they
/// measure, so what they spend is taken from it (reqwest cost about twice
/// as much a request here).
pub(crate) struct Conn {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    /// `HOST:PORT`, sent as the `host` header.
    authority: String,
}

impl Conn {
    /// Connect to the server at `base` (`http://HOST:PORT`).
    pub async fn open(base: &str) -> Result<Self, String> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{base}` is not an http:// address"))?
            .trim_end_matches('/')
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect to {authority}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let (send, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
        // Drives the connection until this `Conn` is dropped.
        tokio::spawn(connection);
        Ok(Self { send, authority })
    }

    /// `POST path` with a JSON body, or `GET path` without one: the answer's
    /// status and body, within `timeout`.
    pub async fn call(
        &mut self,
        path: &str,
        json: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(hyper::StatusCode, hyper::body::Bytes), String> {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if json.is_some() {
            req = req
                .method(hyper::Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                json.unwrap_or_default(),
            )))
            .map_err(|e| format!("{path}: {e}"))?;
        let exchange = async {
            self.send.ready().await?;
            let answer = self.send.send_request(req).await?;
            let status = answer.status();
            let body = answer.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{path}: no answer within {timeout:?}"))?
            .map_err(|e| format!("{path}: {e}"))
    }
}
