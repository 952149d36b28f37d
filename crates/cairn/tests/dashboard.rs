//! The dashboard at `/ui`, tested in a real browser: headless Chromium driven
//! over WebDriver (Debian's `chromium` and `chromium-driver`). One chromedriver
//! serves the whole file; each test has its own server and its own browser.
//!
//! Without chromedriver (and not in CI) these tests are built `#[ignore]`d
//! (`cfg(cairn_no_browser)`, set by build.rs). Screenshots go to
//! `target/screenshots/`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{tool_start, Server};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{json, Value};

/// How long any one thing may take to show up in the browser.
const PATIENCE: Duration = Duration::from_secs(20);

/// The chromedriver this file shares: its URL, or why it could not start.
fn driver() -> &'static str {
    static DRIVER: OnceLock<Result<String, String>> = OnceLock::new();
    match DRIVER.get_or_init(start_driver) {
        Ok(url) => url,
        Err(e) => panic!("{e}"),
    }
}

fn chromedriver_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_CHROMEDRIVER") {
        return p.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chromedriver"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

fn start_driver() -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for chromedriver: {e}"))?
        .port();
    let path = chromedriver_path();
    let (tx, rx) = std::sync::mpsc::channel();
    // The driver is started by a thread that lives as long as the test binary,
    // and asks the kernel to kill it when that thread goes (PR_SET_PDEATHSIG
    // follows the spawning thread), so no chromedriver outlives the tests.
    std::thread::spawn(move || {
        let mut cmd = Command::new(&path);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(format!(
                    "cannot start {} ({e}): install chromium and chromium-driver (see .ci/run)",
                    path.display()
                )));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "chromedriver did not start".to_string())??;
    // Ready when it accepts connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("chromedriver never listened on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("http://127.0.0.1:{port}"))
}

/// At most two browsers at once: the machine is small and shared.
fn browsers() -> &'static tokio::sync::Semaphore {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    &SLOTS
}

/// Run `body` with a fresh headless Chromium (1280x800), closing it however the body ends.
async fn with_browser<F, Fut>(body: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let url = driver();
    let _slot = browsers().acquire().await.expect("semaphore open");
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,800", "--no-first-run", "--disable-extensions"]
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(url)
        .await
        .expect("a Chromium session");
    let outcome = std::panic::AssertUnwindSafe(body(client.clone())).catch_unwind().await;
    let _ = client.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A server with the host token `host-secret` that has started `start`
/// (a start body) as the host.
async fn token_server_with(start: Value) -> Server {
    let server = Server::start(&["--token", "host-secret"]).await;
    let (status, body) = server.with_token("host-secret").post("/v1/processes", start).await;
    assert_eq!(status, 201, "{body}");
    server
}

/// The host (token `host-secret`) reads a cancel request on process `id`.
async fn assert_cancel_asked(server: &Server, id: &str) {
    let (_, process) = server
        .with_token("host-secret")
        .get(&format!("/v1/processes/{id}"))
        .await;
    assert!(process["cancel_request"].is_object(), "{process}");
}

/// Click the element `css` selects (it must be there).
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

/// Send the signal form: the page asks first, naming the signal and the
/// process (a window another site opened gets nothing from one click); yes.
/// The question asked.
async fn send_signal(c: &Client) -> String {
    click(c, "#signal-form button[type=submit]").await;
    let question = c.get_alert_text().await.expect("a question before sending a signal");
    assert!(question.starts_with("Send signal \u{201c}"), "{question}");
    c.accept_alert().await.unwrap();
    question
}

/// Wait for an element (CSS or XPath) to be present.
async fn wait_for(c: &Client, locator: Locator<'_>) -> Element {
    match c.wait().at_most(PATIENCE).for_element(locator).await {
        Ok(e) => e,
        Err(e) => {
            let source = c.source().await.unwrap_or_default();
            panic!("{locator:?} never appeared ({e}); page:\n{source}");
        }
    }
}

/// What `script` answers, read inside the page in one step: the live list
/// re-renders its rows on every change, so an element found first and read
/// after may be gone (a stale reference).
async fn in_page(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.expect("find_all").len()
}

/// Write a screenshot to `target/screenshots/NAME.png` for a person to look at.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn start(server: &Server, id: &str, tool: &str, args: Value) {
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": id, "input": {"type": "tool_call", "tool": tool, "args": args}, "disposition": "rerunnable"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Start a `wait_signal` process and wait until it is in its durable wait
/// (following its log over the API's SSE stream).
async fn start_waiting(server: &Server, id: &str) {
    start(server, id, "wait_signal", json!({"name": "go"})).await;
    waits(server, id).await;
}

/// Wait until process `id` is in a durable wait (following its log over the
/// API's SSE stream).
async fn waits(server: &Server, id: &str) {
    let r = server
        .http
        .get(server.url(&format!("/v1/processes/{id}/events")))
        .header("accept", "text/event-stream")
        .timeout(PATIENCE)
        .send()
        .await
        .expect("event stream");
    let seen = read_until(r, "process.waiting").await;
    assert!(seen.contains("process.waiting"), "{id} never waited: {seen}");
}

/// Read an SSE response until `needle` shows up or the stream ends.
async fn read_until(r: reqwest::Response, needle: &str) -> String {
    use futures::StreamExt;
    let mut stream = r.bytes_stream();
    let mut seen = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains(needle) {
            break;
        }
    }
    seen
}

async fn await_terminal(server: &Server, id: &str) -> Value {
    let (status, body) = server
        .client()
        .get(&format!("/v1/processes/{id}/await?timeout_ms=20000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn row(id: &str) -> String {
    format!("tr[data-id='{id}']")
}

/// Acknowledging a wake on the sessions page replaces its row and brings the
/// heading's count down with it (it stayed at what the page first showed).
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn acknowledging_a_wake_brings_the_count_down() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": "ci", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned",
                   "wake_target": {"session_id": "s1"},
                   "event_types": [{"name": "progress", "payload_schema": {"type": "object"},
                                    "semantics": {"wake": {"input": {"pointer": "/text"}}}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for text in ["one", "two", "three"] {
        let (status, body) = server
            .client()
            .post(
                "/v1/processes/ci/events",
                json!({"event_type": "progress", "payload": {"text": text}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    with_browser(|c| async move {
        c.goto(&server.url("/ui/sessions?session=s1")).await.unwrap();
        let heading = wait_for(&c, Locator::Css("#wakes-count")).await;
        assert_eq!(heading.text().await.unwrap(), "(3)");
        c.find(Locator::Css("table.wakes tbody tr button"))
            .await
            .expect("an acknowledge button")
            .click()
            .await
            .unwrap();
        wait_for(&c, Locator::Css("tr.acked")).await;
        let counted = in_page(&c, "return document.querySelector('#wakes-count').innerText").await;
        assert_eq!(counted, json!("(2)"));
        assert_eq!(count(&c, "#wakes-count").await, 1, "one count, replaced in place");
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn list_filters_by_status_and_by_waiting() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    start(server, "done-1", "echo", json!({"value": 1})).await;
    await_terminal(server, "done-1").await;
    start_waiting(server, "waits-1").await;
    // Running and not waiting: work another system runs (cairn never runs it).
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": "elsewhere-1", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes?status=completed")).await.unwrap();
        wait_for(&c, Locator::Css(&row("done-1"))).await;
        assert_eq!(
            count(&c, &row("waits-1")).await,
            0,
            "a running process listed as completed"
        );

        // Filter with the form, as a person would: running and waiting.
        c.find(Locator::Css("select[name=status]"))
            .await
            .unwrap()
            .select_by_value("running")
            .await
            .unwrap();
        c.find(Locator::Css("select[name=waiting]"))
            .await
            .unwrap()
            .select_by_value("true")
            .await
            .unwrap();
        click(&c, "form.filters button[type=submit]").await;
        wait_for(&c, Locator::Css(&row("waits-1"))).await;
        let url = c.current_url().await.unwrap();
        assert!(url.query().unwrap_or("").contains("waiting=true"), "{url}");
        assert_eq!(
            count(&c, &row("elsewhere-1")).await,
            0,
            "a process not waiting listed as waiting"
        );
        assert_eq!(count(&c, &row("done-1")).await, 0);

        c.goto(&server.url("/ui/processes?status=running&waiting=false"))
            .await
            .unwrap();
        wait_for(&c, Locator::Css(&row("elsewhere-1"))).await;
        assert_eq!(
            count(&c, &row("waits-1")).await,
            0,
            "a waiting process listed as not waiting"
        );

        // A bad filter is a clear error, not an ignored key.
        c.goto(&server.url("/ui/processes?created_from=yesterday"))
            .await
            .unwrap();
        wait_for(&c, Locator::Css("#rows .result.err")).await;
        // Read in one step: the live list may re-render the rows meanwhile.
        let err = in_page(&c, "return document.querySelector('#rows .result.err').textContent;").await;
        assert!(err.as_str().is_some_and(|t| t.contains("invalid_filter")), "{err}");
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn a_process_started_through_the_api_appears_without_reload() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    start(server, "first", "echo", json!({"value": 1})).await;
    await_terminal(server, "first").await;
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes?status=any")).await.unwrap();
        wait_for(&c, Locator::Css(&row("first"))).await;
        wait_for(&c, Locator::Css("body[data-live=open]")).await;
        // A marker a reload would wipe.
        c.execute("window.__cairnSamePage = true;", vec![]).await.unwrap();

        start_waiting(server, "arrives-later").await;
        wait_for(&c, Locator::Css(&row("arrives-later"))).await;
        let waiting = format!("{} .s-waiting", row("arrives-later"));
        wait_for(&c, Locator::Css(&waiting)).await;
        let text = in_page(
            &c,
            &format!("return document.querySelector({}).textContent", json!(waiting)),
        )
        .await;
        assert!(text.as_str().is_some_and(|t| t.contains("go")), "{text}");
        let same = c
            .execute("return window.__cairnSamePage === true;", vec![])
            .await
            .unwrap();
        assert_eq!(same, json!(true), "the page reloaded instead of updating");
        // Newest first.
        let first_row = in_page(&c, "return document.querySelector('#rows tbody tr').dataset.id").await;
        assert_eq!(first_row, json!("arrives-later"));
        screenshot(&c, "processes-list").await;
        c.set_window_size(420, 800).await.unwrap();
        screenshot(&c, "processes-list-narrow").await;
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn the_process_page_streams_events_and_a_signal_from_it_completes_the_process() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    start_waiting(server, "approve-1").await;
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes/approve-1")).await.unwrap();
        // History streams in over SSE: started, then waiting.
        wait_for(
            &c,
            Locator::XPath("//ol[@id='timeline']/li//code[text()='process.waiting']"),
        )
        .await;
        wait_for(&c, Locator::Css("#record .s-waiting")).await;
        c.execute("window.__cairnSamePage = true;", vec![]).await.unwrap();
        // A stream opened afresh from the first event (after a proxy's 502,
        // say) appends nothing the timeline already shows; a new one it does.
        let kept = in_page(
            &c,
            "var t = document.getElementById('timeline');
             var told = function (seq) {
               return htmx.trigger(t, 'htmx:sseBeforeMessage', new MessageEvent('timeline', {data: '', lastEventId: seq}));
             };
             return [told('1'), told('99')];",
        )
        .await;
        assert_eq!(kept, serde_json::json!([false, true]));

        // The signal form is prefilled with the name the process waits for.
        let name = c.find(Locator::Css("#signal-form input[name=name]")).await.unwrap();
        assert_eq!(name.prop("value").await.unwrap().as_deref(), Some("go"));
        let payload = c
            .find(Locator::Css("#signal-form textarea[name=payload]"))
            .await
            .unwrap();
        payload.clear().await.unwrap();
        payload.send_keys(r#"{"approved": true}"#).await.unwrap();
        // As over plain HTTP to another host (no secure context), without
        // `crypto.randomUUID`: the form still gets a new signal id for the
        // next signal once this one is sent.
        let first_id = in_page(
            &c,
            "Crypto.prototype.randomUUID = undefined;
             document.addEventListener('htmx:afterRequest', function (e) {
               if (e.detail.elt.id === 'signal-form') {
                 window.__nextSignalId = e.detail.elt.querySelector('input[name=signal_id]').value;
               }
             });
             return document.querySelector('#signal-form input[name=signal_id]').value;",
        )
        .await;
        let question = send_signal(&c).await;
        assert_eq!(question, "Send signal \u{201c}go\u{201d} to process \u{201c}approve-1\u{201d}?");
        wait_for(&c, Locator::Css("#action-result .result.ok")).await;
        let next_id = in_page(&c, "return window.__nextSignalId || null;").await;
        let next = next_id.as_str().unwrap_or_default();
        assert!(
            next.len() == 36 && next.chars().nth(14) == Some('4') && Some(next) != first_id.as_str(),
            "{first_id} then {next_id}"
        );
        // The live timeline shows the signal and the terminal; the record follows.
        wait_for(&c, Locator::XPath("//ol[@id='timeline']/li//code[text()='signal.go']")).await;
        wait_for(
            &c,
            Locator::XPath("//ol[@id='timeline']/li//code[text()='process.completed']"),
        )
        .await;
        wait_for(&c, Locator::Css("#record .s-completed")).await;
        wait_for(&c, Locator::Css("#record .outcome pre")).await;
        let outcome = in_page(&c, "return document.querySelector('#record .outcome pre').textContent").await;
        assert!(outcome.as_str().is_some_and(|t| t.contains("approved")), "{outcome}");
        // The process has ended: its action forms go (each would be refused);
        // what the signal said stays.
        wait_for(&c, Locator::Css("#action-forms .ended")).await;
        assert_eq!(count(&c, "form.action").await, 0);
        assert_eq!(count(&c, "#action-result .result.ok").await, 1);
        let same = c
            .execute("return window.__cairnSamePage === true;", vec![])
            .await
            .unwrap();
        assert_eq!(same, json!(true), "the page reloaded instead of updating");
        // Payloads are collapsed until opened.
        let open = c
            .execute(
                "return document.querySelectorAll('#timeline details[open]').length;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(open, json!(0));
        screenshot(&c, "process-page").await;
        c.set_window_size(420, 800).await.unwrap();
        screenshot(&c, "process-page-narrow").await;
    })
    .await;
    let record = await_terminal(server, "approve-1").await;
    assert_eq!(record["status"], "completed");
    assert_eq!(record["outcome"]["value"], json!({"approved": true}));
}

/// A process page that started at its latest events keeps that many as
/// more stream in, dropping the oldest (a tab left open on a chatty run
/// would grow without end), and a stream opened afresh appends none of the
/// dropped ones again.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn a_live_timeline_keeps_its_latest_events() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": "chatty", "input": {"type": "external", "metadata": {}},
                   "disposition": "externally_owned",
                   "event_types": [{"name": "tick", "payload_schema": {"type": "object"}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes/chatty")).await.unwrap();
        wait_for(&c, Locator::Css("body[data-live='open']")).await;
        let client = server.client();
        let mut last = 0;
        for i in 0..520 {
            let (status, body) = client
                .post(
                    "/v1/processes/chatty/events",
                    json!({"event_type": "tick", "payload": {"i": i}}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            last = body["event"]["sequence"].as_u64().expect("the event's sequence");
        }
        wait_for(&c, Locator::Css(&format!("#timeline li[data-seq='{last}']"))).await;
        let shown = in_page(
            &c,
            "var t = document.getElementById('timeline');
             return [t.children.length, Number(t.firstElementChild.dataset.seq)];",
        )
        .await;
        assert_eq!(shown, json!([500, last - 499]));
        // Above it, how many are left out, with the way to them all.
        let notice = in_page(
            &c,
            "var n = document.querySelector('.timeline-box p.hint.more');
             return n && [n.textContent, n.querySelector('a').getAttribute('href')];",
        )
        .await;
        assert_eq!(
            notice,
            json!([
                format!("The earliest {} events are left out. Show them all", last - 500),
                "/ui/processes/chatty?all=true"
            ])
        );
        // A stream opened afresh from the first event appends neither a
        // dropped event nor one shown; a new one it does.
        let kept = in_page(
            &c,
            &format!(
                "var t = document.getElementById('timeline');
                 var told = function (seq) {{
                   return htmx.trigger(t, 'htmx:sseBeforeMessage', new MessageEvent('timeline', {{data: '', lastEventId: seq}}));
                 }};
                 return [told('1'), told('{}'), told('{last}'), told('{}')];",
                last - 500,
                last + 1
            ),
        )
        .await;
        assert_eq!(kept, json!([false, false, false, true]));
        // A link to an event the timeline leaves out, without `?from=`,
        // moves to the timeline from it and lands on it.
        c.goto(&server.url("/ui/processes")).await.unwrap();
        c.goto(&server.url("/ui/processes/chatty#ev-10")).await.unwrap();
        wait_for(&c, Locator::Css("#timeline li#ev-10.linked")).await;
        assert_eq!(
            in_page(&c, "return location.search + location.hash;").await,
            json!("?from=10#ev-10")
        );
        // A link to one event (a wake's) lands on it once the stream brings
        // it, deep in the timeline, and keeps it as more events arrive.
        let linked = last - 100;
        c.goto(&server.url(&format!("/ui/processes/chatty?from={linked}#ev-{linked}")))
            .await
            .unwrap();
        wait_for(&c, Locator::Css(&format!("#timeline li#ev-{linked}.linked"))).await;
        let (status, body) = client
            .post("/v1/processes/chatty/events", json!({"event_type": "tick", "payload": {}}))
            .await;
        assert_eq!(status, 200, "{body}");
        wait_for(&c, Locator::Css(&format!("#timeline li[data-seq='{}']", last + 1))).await;
        let landed = in_page(
            &c,
            &format!(
                "var e = document.getElementById('ev-{linked}'), r = e.getBoundingClientRect();
                 return [window.scrollY > 0, r.top >= 0 && r.bottom <= window.innerHeight,
                         document.getElementById('timeline').children.length];"
            ),
        )
        .await;
        assert_eq!(landed, json!([true, true, 501]), "the latest 500 and one more, none dropped");
        // The process ends: its stream closes, and the header stops saying "live".
        let (status, body) = client
            .post(
                "/v1/processes/chatty/complete",
                json!({"outcome": {"type": "success", "value": 1}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        wait_for(&c, Locator::Css("body[data-live='ended']")).await;
        let live = in_page(&c, "return document.getElementById('live-state').textContent;").await;
        assert_eq!(live, json!("ended"));
    })
    .await;
}

/// A hidden tab holds no live stream: with more live dashboard tabs open
/// than the six connections a browser opens to one server over HTTP/1.1,
/// the newest still loads and goes live (it never loaded before), and a tab
/// shown again shows what happened while it was hidden.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn tabs_past_the_browsers_connection_limit_still_load_and_go_live() {
    const TABS: usize = 8;
    let owned = Server::start(&[]).await;
    let server = &owned;
    for i in 0..TABS {
        let (status, body) = server
            .client()
            .post(
                "/v1/processes",
                json!({"id": format!("tab{i}"), "input": {"type": "external", "metadata": {}},
                       "disposition": "externally_owned",
                       "event_types": [{"name": "tick", "payload_schema": {"type": "object"}}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    with_browser(|c| async move {
        let first = c.window().await.expect("the first tab");
        c.goto(&server.url("/ui/processes/tab0")).await.unwrap();
        wait_for(&c, Locator::Css("body[data-live='open']")).await;
        in_page(
            &c,
            "window.cairnSseErrors = 0;
             document.addEventListener('htmx:sseError', function () { window.cairnSseErrors++; });",
        )
        .await;
        let mut last = first.clone();
        for i in 1..TABS {
            let tab = c.new_window(true).await.expect("a new tab");
            c.switch_to_window(tab.handle.clone()).await.expect("to the new tab");
            c.goto(&server.url(&format!("/ui/processes/tab{i}"))).await.unwrap();
            wait_for(&c, Locator::Css("body[data-live='open']")).await;
            last = tab.handle;
        }
        // Glances at the first tab (shown and hidden again at once) leave
        // its stream as quick to reopen as ever.
        for _ in 0..8 {
            c.switch_to_window(first.clone()).await.expect("to the first tab");
            c.switch_to_window(last.clone()).await.expect("to the last tab");
        }
        let (status, body) = server
            .client()
            .post(
                "/v1/processes/tab0/events",
                json!({"event_type": "tick", "payload": {"i": 1}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let seq = body["event"]["sequence"].as_u64().expect("the event's sequence");
        c.switch_to_window(first).await.expect("back to the first tab");
        wait_for(&c, Locator::Css(&format!("#timeline li[data-seq='{seq}']"))).await;
        wait_for(&c, Locator::Css("body[data-live='open']")).await;
        assert_eq!(count(&c, "#timeline li").await as u64, seq, "each event once");
        // A stream opened again, not failed: no error was raised for it.
        let errors = in_page(&c, "return window.cairnSseErrors;").await;
        assert_eq!(errors, json!(0));
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn a_refused_action_shows_the_servers_error() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    start_waiting(server, "picky").await;
    // A signal the process does not wait for, sent once; the same signal id
    // again with another payload is a replay conflict. What the API answers:
    let signal = |payload: Value| {
        let c = server.client();
        async move {
            c.post(
                "/v1/processes/picky/signals/note",
                json!({"signal_id": "n1", "payload": payload}),
            )
            .await
        }
    };
    assert_eq!(signal(json!({"v": 1})).await.0, 200);
    let (status, api_err) = signal(json!({"v": 2})).await;
    assert_eq!(status, 409, "{api_err}");
    assert_eq!(api_err["error"]["code"], "replay_conflict");
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes/picky")).await.unwrap();
        wait_for(&c, Locator::Css("#record .s-waiting")).await;
        let payload = c
            .find(Locator::Css("#signal-form textarea[name=payload]"))
            .await
            .unwrap();
        payload.clear().await.unwrap();
        payload.send_keys("{not json").await.unwrap();
        send_signal(&c).await;
        let err = wait_for(&c, Locator::Css("#action-result .result.err")).await;
        let text = err.text().await.unwrap();
        assert!(text.starts_with("invalid_request: payload is not JSON"), "{text}");
        // Nothing was appended: the process still waits.
        assert_eq!(count(&c, "#record .s-waiting").await, 1);

        // A form carrying a field the page's form has not (added to it
        // here) is refused as the API refuses an unknown field, and said
        // in the same place, naming the field; nothing is sent.
        c.goto(&server.url("/ui/processes/picky")).await.unwrap();
        wait_for(&c, Locator::Css("#record .s-waiting")).await;
        c.execute(
            r##"var extra = document.createElement("input");
               extra.type = "hidden"; extra.name = "bogus"; extra.value = "1";
               document.getElementById("signal-form").appendChild(extra);
               document.querySelector("#signal-form input[name=name]").value = "go";"##,
            vec![],
        )
        .await
        .unwrap();
        send_signal(&c).await;
        let err = wait_for(&c, Locator::Css("#action-result .result.err")).await;
        let text = err.text().await.unwrap();
        assert_eq!(
            text,
            "invalid_request: unknown field `bogus`: this form takes `name`, `signal_id` and `payload`"
        );
        assert_eq!(count(&c, "#record .s-waiting").await, 1);

        // A refusal by the runtime reads exactly as the API's error: the same
        // replay conflict, sent from the form.
        c.goto(&server.url("/ui/processes/picky")).await.unwrap();
        wait_for(&c, Locator::Css("#record .s-waiting")).await;
        for (field, value) in [
            ("input[name=name]", "note"),
            ("input[name=signal_id]", "n1"),
            ("textarea[name=payload]", r#"{"v": 3}"#),
        ] {
            let input = c.find(Locator::Css(&format!("#signal-form {field}"))).await.unwrap();
            input.clear().await.unwrap();
            input.send_keys(value).await.unwrap();
        }
        send_signal(&c).await;
        let err = wait_for(&c, Locator::Css("#action-result .result.err")).await;
        let code = err.find(Locator::Css(".code")).await.unwrap().text().await.unwrap();
        let message = err.find(Locator::Css(".message")).await.unwrap().text().await.unwrap();
        assert_eq!(code, api_err["error"]["code"].as_str().unwrap());
        assert_eq!(message, api_err["error"]["message"].as_str().unwrap());
        assert_eq!(count(&c, "#record .s-waiting").await, 1);
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn the_login_gate_keeps_the_token_in_a_cookie_and_refuses_requests_without_csrf() {
    let owned = Server::start(&["--token", "host-secret", "--session-token", "s1=s1-secret"]).await;
    let server = &owned;
    let host = server.with_token("host-secret");
    for (id, session) in [("mine", "s1"), ("theirs", "s2")] {
        let (status, body) = host
            .post(
                "/v1/processes",
                json!({"id": id, "input": {"type": "tool_call", "tool": "sleep", "args": {"ms": 60000}},
                       "disposition": "rerunnable",
                       "grant": {"session_scope": {"session_id": session}}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Outside a browser: no cookie, no page.
    let r = server
        .http
        .post(server.url("/ui/processes/mine/cancel"))
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes")).await.unwrap();
        wait_for(&c, Locator::Css("main.login input[name=token]")).await;
        assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));

        let token = c.find(Locator::Css("input[name=token]")).await.unwrap();
        token.send_keys("wrong").await.unwrap();
        click(&c, "main.login button").await;
        let err = wait_for(&c, Locator::Css("main.login .result.err")).await;
        assert!(err.text().await.unwrap().contains("unknown token"));

        // A session token: in, and it sees only its session's processes.
        let token = c.find(Locator::Css("input[name=token]")).await.unwrap();
        token.send_keys("s1-secret").await.unwrap();
        click(&c, "main.login button").await;
        wait_for(&c, Locator::Css(&row("mine"))).await;
        assert_eq!(
            count(&c, &row("theirs")).await,
            0,
            "a session saw another session's process"
        );
        c.goto(&server.url("/ui/processes/theirs")).await.unwrap();
        let err = wait_for(&c, Locator::Css("main .result.err")).await;
        assert!(err.text().await.unwrap().contains("unknown_process"));

        // The cookie is HttpOnly: page scripts cannot read it.
        let cookies = c.execute("return document.cookie;", vec![]).await.unwrap();
        assert!(!cookies.as_str().unwrap_or("").contains("s1-secret"), "{cookies}");
        // It holds a login id, never the token: every other port of this
        // host is sent it too.
        let held = c.get_all_cookies().await.unwrap();
        let login = held
            .iter()
            .find(|k| k.name().starts_with("cairn_ui"))
            .expect("the login cookie");
        assert!(
            login.value() != "s1-secret" && login.value().len() >= 32 && login.http_only() == Some(true),
            "{login:?}"
        );

        // Another session's grants are refused, as the API refuses them.
        let foreign = c
            .execute_async(
                r#"const done = arguments[0];
                   fetch('/ui/list/rows?lens=granted_to&session=s2').then(r => done(r.status));"#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(foreign, json!(403), "{foreign}");

        // A state-changing request without the page's CSRF token is refused and changes nothing...
        let refused = c
            .execute_async(
                r#"const done = arguments[0];
                   fetch('/ui/processes/mine/cancel', {method: 'POST',
                         headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'reason=csrf'})
                     .then(r => r.text().then(t => done([r.status, t])));"#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(refused[0], json!(403), "{refused}");
        assert!(refused[1].as_str().unwrap().contains("csrf_refused"));
        let (_, mine) = server.with_token("host-secret").get("/v1/processes/mine").await;
        assert!(
            mine.get("cancel_request").is_none(),
            "a refused request changed the process: {mine}"
        );
        // ... and with it, the same request goes through.
        let accepted = c
            .execute_async(
                r#"const done = arguments[0];
                   const token = document.querySelector('meta[name=cairn-csrf]').content;
                   fetch('/ui/processes/mine/cancel', {method: 'POST',
                         headers: {'content-type': 'application/x-www-form-urlencoded', 'x-cairn-csrf': token},
                         body: 'reason=csrf'})
                     .then(r => r.text().then(t => done([r.status, t])));"#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(accepted[0], json!(200), "{accepted}");
    })
    .await;
    assert_cancel_asked(server, "mine").await;
    let (_, theirs) = host.get("/v1/processes/theirs").await;
    assert!(theirs.get("cancel_request").is_none(), "{theirs}");
}

/// A link to one event from another site (a wake's, pasted into a chat)
/// lands on that event on a token server too: the page that loads it again
/// as a same-site navigation (for the `SameSite=Strict` cookie) keeps the
/// link's `#ev-N`, which no request carries.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn a_link_from_another_site_lands_on_its_event() {
    let owned = token_server_with(tool_start("linked", "echo", json!({"value": 1}), "rerunnable")).await;
    let server = &owned;
    let host = server.with_token("host-secret");
    let (status, body) = host.get("/v1/processes/linked/await?timeout_ms=20000").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("completed")), "{body}");
    // Another site: the same server by another host name (`localhost` is
    // not the site `127.0.0.1` is), whose login page needs no cookie.
    let port = server.port();
    let away = format!("http://localhost:{port}/ui/login");
    let target = server.url("/ui/processes/linked?from=2#ev-2");
    let follow = |c: Client| {
        let (away, target) = (away.clone(), target.clone());
        async move {
            c.goto(&away).await.unwrap();
            wait_for(&c, Locator::Css("main.login")).await;
            c.execute(
                "const a = document.createElement('a'); a.href = arguments[0]; a.id = 'away'; \
                 a.textContent = 'the event'; document.body.appendChild(a);",
                vec![json!(target)],
            )
            .await
            .unwrap();
            c.find(Locator::Id("away")).await.unwrap().click().await.unwrap();
        }
    };
    let landed = |c: Client| async move {
        let event = wait_for(&c, Locator::Css("#timeline li#ev-2.linked")).await;
        assert!(event.is_displayed().await.unwrap());
        let url = c.current_url().await.unwrap();
        assert_eq!(
            (url.host_str(), url.path(), url.fragment()),
            (Some("127.0.0.1"), "/ui/processes/linked", Some("ev-2")),
            "{url}"
        );
    };
    with_browser(|c| async move {
        // Not logged in: the login, then the event.
        follow(c.clone()).await;
        let token = wait_for(&c, Locator::Css("main.login input[name=token]")).await;
        assert_eq!(c.current_url().await.unwrap().host_str(), Some("127.0.0.1"));
        token.send_keys("host-secret").await.unwrap();
        click(&c, "main.login button").await;
        landed(c.clone()).await;
        // Logged in: straight to the event.
        follow(c.clone()).await;
        landed(c).await;
    })
    .await;
}

/// A login cookie another service on the host planted at `/ui/` (sent
/// with every dashboard page, the login's too, yet not the one at `/ui`)
/// or at `/` logs the browser out once, not for good: the page clears it,
/// and so does a login posted with it, so the page after the login sees the
/// new login alone. Logging in again as the same viewer (another tab)
/// keeps the login, so an open page's CSRF token still works.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn a_planted_login_cookie_logs_out_once_not_for_good() {
    let owned = token_server_with(tool_start("mine", "sleep", json!({"ms": 60000}), "rerunnable")).await;
    let server = &owned;
    let port = server.port();
    let name = format!("cairn_ui_{port}");
    with_browser(|c| async move {
        let plant = |path: &'static str| {
            let c = c.clone();
            let name = name.clone();
            async move {
                // As another service on this host would set it (a script
                // of a page of this origin sets it for the host alike).
                c.execute(
                    "document.cookie = arguments[0];",
                    vec![json!(format!("{name}=x; Path={path}; Max-Age=34560000"))],
                )
                .await
                .unwrap();
            }
        };
        let held = || {
            let c = c.clone();
            let name = name.clone();
            async move {
                let all = c.get_all_cookies().await.unwrap();
                all.into_iter()
                    .filter(|k| k.name() == name)
                    .map(|k| format!("{}={} at {:?}", k.name(), k.value(), k.path()))
                    .collect::<Vec<_>>()
            }
        };
        let log_in = || {
            let c = c.clone();
            async move {
                let token = wait_for(&c, Locator::Css("main.login input[name=token]")).await;
                token.send_keys("host-secret").await.unwrap();
                click(&c, "main.login button").await;
                wait_for(&c, Locator::Css(&row("mine"))).await;
                assert_eq!(c.current_url().await.unwrap().path(), "/ui/processes");
            }
        };
        c.goto(&server.url("/ui/processes")).await.unwrap();
        log_in().await;
        assert_eq!(held().await.len(), 1);

        // Planted at `/ui/`: the next page asks for a login once, and the
        // login holds.
        plant("/ui/").await;
        assert_eq!(held().await.len(), 2);
        c.goto(&server.url("/ui/processes")).await.unwrap();
        wait_for(&c, Locator::Css("main.login input[name=token]")).await;
        log_in().await;
        let now = held().await;
        assert_eq!(now.len(), 1, "{now:?}");
        c.goto(&server.url("/ui/sessions")).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/ui/sessions");

        // Planted at `/ui/` and at `/ui` (in place of the login), and at
        // `/`: a login posted with them clears them before setting its own.
        for at in ["/ui/", "/ui", "/"] {
            plant(at).await;
        }
        c.goto(&server.url("/ui/login")).await.unwrap();
        log_in().await;
        let now = held().await;
        assert_eq!(now.len(), 1, "{now:?}");
        c.goto(&server.url("/ui/processes/mine")).await.unwrap();
        wait_for(&c, Locator::Css("#signal-form")).await;
        assert_eq!(c.current_url().await.unwrap().path(), "/ui/processes/mine");

        // A second login (another tab's) as the same viewer: this page's
        // CSRF token still works.
        let csrf = in_page(&c, "return document.querySelector('meta[name=cairn-csrf]').content;").await;
        let again = c
            .execute_async(
                r#"const done = arguments[0];
                   fetch('/ui/login', {method: 'POST',
                         headers: {'content-type': 'application/x-www-form-urlencoded'},
                         body: 'token=host-secret'})
                     .then(r => done(r.status));"#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(again, json!(200), "the login, its redirect followed");
        let accepted = c
            .execute_async(
                r#"const done = arguments[1];
                   fetch('/ui/processes/mine/cancel', {method: 'POST',
                         headers: {'content-type': 'application/x-www-form-urlencoded', 'x-cairn-csrf': arguments[0]},
                         body: 'reason=kept'})
                     .then(r => r.text().then(t => done([r.status, t])));"#,
                vec![csrf],
            )
            .await
            .unwrap();
        assert_eq!(accepted[0], json!(200), "{accepted}");
    })
    .await;
    assert_cancel_asked(server, "mine").await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn the_schedules_page_pauses_and_resumes_and_shows_a_refusal() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    for (id, spec) in [
        ("nightly", json!({"cron": "0 3 * * *", "timezone": "Europe/Paris"})),
        ("tick", json!({"every": "1h"})),
    ] {
        let mut body = json!({
            "id": id,
            "start": {"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}}, "disposition": "rerunnable"},
            "overlap": "skip",
        });
        body.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        let (status, answer) = server.client().post("/v1/schedules", body).await;
        assert_eq!(status, 201, "{answer}");
    }
    let paused = |id: &'static str| async move {
        let (_, s) = server.client().get(&format!("/v1/schedules/{id}")).await;
        s["paused"].as_bool().expect("paused")
    };
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes")).await.unwrap();
        c.find(Locator::Css("header nav a[href='/ui/schedules']"))
            .await
            .expect("a nav link")
            .click()
            .await
            .unwrap();
        wait_for(&c, Locator::Css("tr[data-schedule='tick'][data-state='active']")).await;
        let text = in_page(
            &c,
            "return document.querySelector(\"tr[data-schedule='nightly']\").innerText",
        )
        .await;
        let text = text.as_str().unwrap_or_default();
        assert!(text.contains("0 3 * * *") && text.contains("Europe/Paris"), "{text}");

        click(&c, "tr[data-schedule='tick'] button").await;
        wait_for(&c, Locator::Css("tr[data-schedule='tick'][data-state='paused']")).await;
        assert!(paused("tick").await, "the pause is stored");
        click(&c, "tr[data-schedule='tick'] button").await;
        wait_for(&c, Locator::Css("tr[data-schedule='tick'][data-state='active']")).await;
        assert!(!paused("tick").await, "the resume is stored");

        // Deleted behind the page's back: the server's refusal shows above the
        // table, verbatim, and the row goes; the other row stays.
        let (status, _) = server.client().delete("/v1/schedules/nightly").await;
        assert_eq!(status, 204);
        let (_, api_err) = server.client().post("/v1/schedules/nightly/pause", json!({})).await;
        click(&c, "tr[data-schedule='nightly'] button").await;
        let err = wait_for(&c, Locator::Css("#schedule-result .result.err")).await;
        let code = err.find(Locator::Css(".code")).await.unwrap().text().await.unwrap();
        let message = err.find(Locator::Css(".message")).await.unwrap().text().await.unwrap();
        assert_eq!(code, api_err["error"]["code"].as_str().unwrap());
        assert_eq!(message, api_err["error"]["message"].as_str().unwrap());
        assert_eq!(count(&c, "tr[data-schedule='nightly']").await, 0);
        assert_eq!(count(&c, "tr[data-schedule='tick'][data-state='active']").await, 1);
        screenshot(&c, "schedules").await;
    })
    .await;
}

#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn the_modules_page_shows_a_modules_exports_source_and_its_scripts() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    let source = "// <i>greets</i>\nexport async function greet(ctx, args) { return `hi ${args.who}`; }\n";
    let (status, put) = server
        .client()
        .post("/v1/modules", json!({"source": source, "name": "greet.js"}))
        .await;
    assert_eq!(status, 201, "{put}");
    let module_ref = put["module_ref"].as_str().expect("a module ref").to_string();
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": "greet-1", "disposition": "rerunnable",
                   "input": {"type": "script", "module_ref": module_ref, "process_name": "greet", "args": {"who": "you"}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(await_terminal(server, "greet-1").await["status"], "completed");
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes")).await.unwrap();
        c.find(Locator::Css("header nav a[href='/ui/modules']"))
            .await
            .expect("a nav link")
            .click()
            .await
            .unwrap();
        let listed = wait_for(&c, Locator::Css(&format!("tr[data-module='{module_ref}']"))).await;
        assert!(listed.text().await.unwrap().contains("greet.js"));
        listed.find(Locator::Css("a")).await.unwrap().click().await.unwrap();

        wait_for(&c, Locator::Css("li[data-export='greet']")).await;
        let shown = c.find(Locator::Css("pre.source")).await.unwrap().text().await.unwrap();
        assert!(shown.contains("// <i>greets</i>"), "the source as text: {shown}");
        assert_eq!(count(&c, "pre.source i").await, 0, "the source was rendered as HTML");
        wait_for(
            &c,
            Locator::Css("section.scripts[data-export='greet'] tr[data-id='greet-1']"),
        )
        .await;
        screenshot(&c, "module-page").await;

        // The export's link lists its scripts on the processes page.
        click(&c, "li[data-export='greet'] a.scripts").await;
        wait_for(&c, Locator::Css(&row("greet-1"))).await;
        let definition = c
            .find(Locator::Css("form.filters input[name=definition]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(definition, Some(format!("script:{module_ref}#greet")));
    })
    .await;
}

/// Store `source` as a module and start its `export` as process `id`.
async fn start_script(server: &Server, id: &str, source: &str, export: &str) -> String {
    let (status, put) = server.client().post("/v1/modules", json!({"source": source})).await;
    assert_eq!(status, 201, "{put}");
    let module_ref = put["module_ref"].as_str().expect("a module ref").to_string();
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": id, "disposition": "rerunnable",
                   "input": {"type": "script", "module_ref": module_ref, "process_name": export, "args": {}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    module_ref
}

const TWO_SIGNALS: &str = r#"export async function twice(ctx) {
  await ctx.waitSignal("first");
  await ctx.waitSignal("second");
  return "both";
}
"#;

/// The signal form proposes what the process waits for, and keeps doing so
/// as the process moves on to wait for another signal (a name typed in by
/// hand stays); the name's pattern is one the browser checks; the record
/// panel's live re-render leaves the opened input open; and a script's long
/// definition wraps instead of running under the actions or off a narrow
/// screen.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn the_signal_form_follows_what_the_process_waits_for() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    start_script(server, "twice-1", TWO_SIGNALS, "twice").await;
    waits(server, "twice-1").await;
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes/twice-1")).await.unwrap();
        wait_for(&c, Locator::Css("#record .s-waiting")).await;
        wait_for(&c, Locator::Css("body[data-live='open']")).await;
        let name = c.find(Locator::Css("#signal-form input[name=name]")).await.unwrap();
        assert_eq!(name.prop("value").await.unwrap().as_deref(), Some("first"));
        // The browser checks the name against its pattern (one it cannot
        // compile it ignores, and any name passes).
        let checked = in_page(
            &c,
            "var n = document.querySelector('#signal-form input[name=name]'), was = n.value;
             n.value = 'not a name!';
             var refused = n.validity.patternMismatch;
             n.value = 'a_Name-2';
             var accepted = n.validity.valid;
             n.value = was;
             return [refused, accepted];",
        )
        .await;
        assert_eq!(checked, json!([true, true]), "the name's pattern is not checked");

        // A long definition stays in its column.
        let fits = in_page(
            &c,
            "var d = document.querySelector('#record .summary code').getBoundingClientRect();
             var a = document.querySelector('section.actions').getBoundingClientRect();
             return d.right <= a.left;",
        )
        .await;
        assert_eq!(fits, json!(true), "the definition runs under the actions");

        click(&c, "#record details.input summary").await;
        send_signal(&c).await;
        wait_for(&c, Locator::Css("#action-result .result.ok")).await;
        // The process waits for the second signal now: so does the form.
        wait_for(
            &c,
            Locator::XPath("//section[@id='record']//span[contains(@class, 's-waiting') and contains(., 'second')]"),
        )
        .await;
        let after = in_page(
            &c,
            "return [document.querySelector('#signal-form input[name=name]').value,
                     document.querySelector('#record details.input').open];",
        )
        .await;
        assert_eq!(
            after,
            json!(["second", true]),
            "the form's name, the input's being open"
        );

        // A name typed in by hand stays as the record re-renders.
        let name = c.find(Locator::Css("#signal-form input[name=name]")).await.unwrap();
        name.clear().await.unwrap();
        name.send_keys("by_hand").await.unwrap();
        in_page(
            &c,
            "document.querySelector('#record .summary').dataset.old = 'yes';
             htmx.trigger(document.getElementById('record'), 'sse:record');
             return null;",
        )
        .await;
        wait_for(&c, Locator::Css("#record .summary:not([data-old])")).await;
        let kept = in_page(
            &c,
            "return document.querySelector('#signal-form input[name=name]').value;",
        )
        .await;
        assert_eq!(kept, json!("by_hand"));

        // Narrow, nothing scrolls sideways.
        c.set_window_size(375, 800).await.unwrap();
        let widths = in_page(
            &c,
            "var e = document.documentElement; return [e.scrollWidth <= e.clientWidth, e.scrollWidth, e.clientWidth];",
        )
        .await;
        assert_eq!(widths[0], json!(true), "the page scrolls sideways: {widths}");
        screenshot(&c, "script-page-narrow").await;
    })
    .await;
}

/// A script's long definition leaves the list's other columns their room,
/// and a live re-render of the list keeps keyboard focus on the row link
/// that had it.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn a_live_list_keeps_focus_and_room_for_its_ids() {
    let owned = Server::start(&[]).await;
    let server = &owned;
    start_script(server, "approve-order-1", TWO_SIGNALS, "twice").await;
    waits(server, "approve-order-1").await;
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes?status=any")).await.unwrap();
        wait_for(&c, Locator::Css(&row("approve-order-1"))).await;
        wait_for(&c, Locator::Css("body[data-live='open']")).await;
        let lines = in_page(
            &c,
            "var tr = document.querySelector(\"tr[data-id='approve-order-1']\");
             return [tr.querySelector('td.id a').getClientRects().length,
                     Array.prototype.map.call(tr.children, function (td) { return Math.round(td.getBoundingClientRect().width); })];",
        )
        .await;
        assert_eq!(lines[0], json!(1), "the id is broken over lines: its column is squeezed: {lines}");
        screenshot(&c, "processes-list-script").await;

        in_page(
            &c,
            "document.querySelector(\"tr[data-id='approve-order-1'] td.id a\").focus(); return null;",
        )
        .await;
        start(server, "arrives-later", "echo", json!({"value": 1})).await;
        wait_for(&c, Locator::Css(&row("arrives-later"))).await;
        let focused = in_page(
            &c,
            "var a = document.activeElement, r = a && a.closest('tr');
             return [a && a.tagName, r && r.dataset.id];",
        )
        .await;
        assert_eq!(focused, json!(["A", "approve-order-1"]), "focus was lost in the re-render");
    })
    .await;
}

/// Completing an externally owned process asks first, naming the outcome's
/// type; an error the server's outer layer answers in JSON (a body over its
/// limit) reads as the dashboard's own errors do; and with the server gone,
/// the header says the page is reconnecting and an action says it got no
/// answer instead of failing silently.
#[tokio::test]
#[cfg_attr(
    cairn_no_browser,
    ignore = "chromedriver not installed (apt-get install chromium chromium-driver)"
)]
async fn completing_asks_first_and_failures_to_reach_the_server_are_said() {
    let owned = Server::start(&["--max-body-bytes", "4096"]).await;
    let server = &owned;
    let (status, body) = server
        .client()
        .post(
            "/v1/processes",
            json!({"id": "ext-1", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    with_browser(|c| async move {
        c.goto(&server.url("/ui/processes/ext-1")).await.unwrap();
        wait_for(&c, Locator::Css("body[data-live='open']")).await;
        let live = in_page(
            &c,
            "var l = document.getElementById('live-state');
             return [l.hidden, getComputedStyle(l).display !== 'none', l.textContent];",
        )
        .await;
        assert_eq!(live, json!([false, true, "live"]));

        // Asked first; said no, nothing happens.
        click(&c, "#complete-form button[type=submit]").await;
        let question = c.get_alert_text().await.expect("a question before completing");
        assert!(question.contains("\u{201c}success\u{201d}"), "{question}");
        c.dismiss_alert().await.unwrap();
        let (_, record) = server.client().get("/v1/processes/ext-1").await;
        assert_eq!(record["status"], "running", "completed without a yes: {record}");
        assert_eq!(count(&c, "#action-result *").await, 0);

        // Over the server's body limit: its JSON refusal, shown as an error.
        in_page(
            &c,
            "document.querySelector('#complete-form textarea[name=outcome]').value =
               JSON.stringify({type: 'success', value: 'x'.repeat(5000)});
             return null;",
        )
        .await;
        click(&c, "#complete-form button[type=submit]").await;
        c.accept_alert().await.expect("a question before completing");
        let err = wait_for(&c, Locator::Css("#action-result .result.err")).await;
        let code = err.find(Locator::Css(".code")).await.unwrap().text().await.unwrap();
        let message = err.find(Locator::Css(".message")).await.unwrap().text().await.unwrap();
        assert_eq!(code, "payload_too_large");
        assert!(message.contains("over the server's limit of 4096"), "{message}");

        // The server goes away.
        // SAFETY: a signal to the server this test started.
        assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) }, 0);
        wait_for(&c, Locator::Css("body[data-live='reconnecting']")).await;
        let live = in_page(
            &c,
            "var l = document.getElementById('live-state');
             return [getComputedStyle(l).display !== 'none', l.textContent];",
        )
        .await;
        assert_eq!(live, json!([true, "reconnecting\u{2026}"]));
        let name = c.find(Locator::Css("#signal-form input[name=name]")).await.unwrap();
        name.send_keys("go").await.unwrap();
        send_signal(&c).await;
        wait_for(
            &c,
            Locator::XPath(
                "//div[@id='action-result']/div[contains(@class, 'err') \
                 and starts-with(., 'cannot reach the server: no answer to POST')]",
            ),
        )
        .await;
        in_page(&c, "window.scrollTo(0, 0); return null;").await;
        screenshot(&c, "server-gone").await;
    })
    .await;
}
