//! The dashboard's routes over an in-memory runtime, without a browser: paging,
//! auth, CSRF and visibility. (The browser tests live in the `cairn` crate.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use cairn_core::{
    async_trait, CairnError, Disposition, GrantDescriptor, ManualClock, MemoryRegistry, ProcessFilter, Processes,
    SessionScope, StartRequest, StatusFilter,
};
use cairn_dashboard::{Access, ChangeNotice, Dashboard, Viewer};
use serde_json::json;
use tower::ServiceExt;

/// Tokens `host` and `s1-token`; a session sees what is granted to it.
struct TestAccess {
    processes: Processes,
    open: bool,
}

#[async_trait]
impl Access for TestAccess {
    fn is_open(&self) -> bool {
        self.open
    }

    fn resolve(&self, token: &str) -> Option<Viewer> {
        match token {
            "host" => Some(Viewer::Host),
            "s1-token" => Some(Viewer::Session("s1".into())),
            _ => None,
        }
    }

    async fn check_visible(&self, viewer: &Viewer, id: &str) -> cairn_core::Result<()> {
        let Viewer::Session(s) = viewer else { return Ok(()) };
        let filter = ProcessFilter {
            status: StatusFilter::Any,
            ..ProcessFilter::default()
        };
        let granted = self
            .processes
            .list_granted_to(&SessionScope::session(s.clone()), &filter)
            .await?;
        if granted.items.iter().any(|g| g.process.id == id) {
            Ok(())
        } else {
            Err(CairnError::UnknownProcess(id.into()))
        }
    }
}

const T0: u64 = 1_790_000_000_000;

fn runtime(clock: &Arc<ManualClock>) -> Processes {
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    Processes::builder(registry)
        .clock(clock.clone())
        .without_worker()
        .start()
}

fn app(processes: &Processes, open: bool) -> Router {
    let access = Arc::new(TestAccess {
        processes: processes.clone(),
        open,
    });
    Dashboard::new(processes.clone(), access, ChangeNotice::new(), Default::default()).router()
}

async fn external(p: &Processes, id: &str) {
    p.start(StartRequest::external(id, json!({}))).await.expect("start");
}

/// Start externally owned `id`, waking `wake_target` with each `progress`
/// event's `/text`, granted to session `granted` if given.
async fn waking(p: &Processes, id: &str, wake_target: serde_json::Value, granted: Option<&str>) {
    let mut start = json!({
        "id": id,
        "input": {"type": "external", "metadata": {}},
        "disposition": "externally_owned",
        "wake_target": wake_target,
        "event_types": [{"name": "progress", "payload_schema": {"type": "object"},
                         "semantics": {"wake": {"input": {"pointer": "/text"}}}}]
    });
    if let Some(session) = granted {
        start["grant"] = json!({"session_scope": {"session_id": session}});
    }
    p.start(StartRequest::from_json(start).unwrap()).await.unwrap();
}

/// Append a `progress` event of `text` to `id`.
async fn progress(p: &Processes, id: &str, text: &str) -> cairn_core::AppendResult {
    p.append_event(
        id,
        serde_json::from_value(json!({"event_type": "progress", "payload": {"text": text}})).unwrap(),
    )
    .await
    .unwrap()
}

async fn get(app: &Router, path: &str, cookie: Option<&str>) -> (StatusCode, String, HeaderMap) {
    let mut req = Request::get(path);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    send(app, req.body(Body::empty()).unwrap()).await
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String, HeaderMap) {
    let r = app.clone().oneshot(req).await.expect("answered");
    let status = r.status();
    let headers = r.headers().clone();
    let body = axum::body::to_bytes(r.into_body(), 4 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// Log in with `token` (it must be a known one): the `Cookie` header the
/// browser then sends.
async fn login_as(app: &Router, token: &str) -> String {
    let r = login_post(format!("token={token}"), &[]);
    let (status, html, headers) = send(app, r).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    cookie_pair(headers[header::SET_COOKIE].to_str().unwrap()).to_string()
}

/// `POST /ui/login` of the form `form`, with `headers` besides its
/// content type.
fn login_post(form: impl Into<String>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::post("/ui/login").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::from(form.into())).unwrap()
}

/// The `name=value` a `Set-Cookie` header `set` sets: the `Cookie` header
/// the browser then sends.
fn cookie_pair(set: &str) -> &str {
    set.split(';').next().unwrap()
}

/// Log out the login `cookie` names, with the CSRF token of its page: the
/// answer's status and headers.
async fn log_out(app: &Router, cookie: &str) -> (StatusCode, HeaderMap) {
    let (_, page, _) = get(app, "/ui/processes", Some(cookie)).await;
    let out = Request::post("/ui/logout")
        .header(header::COOKIE, cookie)
        .header("x-cairn-csrf", csrf_of(&page))
        .body(Body::empty())
        .unwrap();
    let (status, _, headers) = send(app, out).await;
    (status, headers)
}

/// The cancel form of `ext-1` posted with `cookie` and `csrf`, as `reason`.
fn cancel_ext_1(cookie: &str, csrf: &str, reason: &str) -> Request<Body> {
    Request::post("/ui/processes/ext-1/cancel")
        .header(header::COOKIE, cookie)
        .header("x-cairn-csrf", csrf)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("reason={reason}")))
        .unwrap()
}

/// A live stream request for `path`, sent with `cookie`.
fn stream_request(path: &str, cookie: &str) -> Request<Body> {
    Request::get(path)
        .header(header::ACCEPT, "text/event-stream")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

/// The ids of the listed rows, in page order.
fn listed(html: &str) -> Vec<String> {
    html.split("<tr data-id=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap_or("").to_string())
        .collect()
}

/// The "Older" link of a page, HTML-unescaped.
fn older(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\" href=\"")?;
    let rest = &html[at + "rel=\"next\" href=\"".len()..];
    Some(rest.split('"').next()?.replace("&amp;", "&"))
}

#[tokio::test]
async fn pages_list_newest_first_across_sparse_and_crowded_times() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    // Ten days apart, minutes apart, and several in the same millisecond.
    let mut expected = Vec::new();
    for (i, at) in [0, 10 * 86_400_000, 10 * 86_400_000 + 300_000, 10 * 86_400_000 + 300_001]
        .into_iter()
        .enumerate()
    {
        clock.set(T0 + at);
        for j in 0..3 {
            let id = format!("p{i}-{j}");
            external(&p, &id).await;
            expected.push((T0 + at, id));
        }
    }
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    let app = app(&p, true);
    let mut seen = Vec::new();
    let mut next = Some("/ui/list/rows?size=5".to_string());
    while let Some(path) = next {
        let (status, html, _) = get(&app, &path.replace("/ui/processes?", "/ui/list/rows?"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        let page = listed(&html);
        assert!(page.len() <= 5);
        seen.extend(page);
        next = older(&html);
        assert!(seen.len() <= expected.len(), "paging repeats rows: {seen:?}");
    }
    assert_eq!(seen, expected);
    // A cursor is the process it names: its time, even the largest, is not
    // where the page starts, and a cursor naming no process is refused.
    let (status, html, _) = get(&app, &format!("/ui/list/rows?size=100&before={}:p1-0", u64::MAX), None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let after = expected.iter().position(|id| id == "p1-0").expect("listed") + 1;
    assert_eq!(listed(&html), expected[after..].to_vec());
    let (status, html, _) = get(&app, &format!("/ui/list/rows?size=100&before={}:x", u64::MAX), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("invalid_page"), "{html}");
}

#[tokio::test]
async fn filters_are_those_of_the_api_and_bad_ones_are_errors() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    p.start(StartRequest::tool("tool-1", "echo", json!({}), Disposition::Rerunnable))
        .await
        .unwrap();
    let app = app(&p, true);
    let (_, html, _) = get(&app, "/ui/list/rows?definition=external", None).await;
    assert_eq!(listed(&html), vec!["ext-1"]);
    let (_, html, _) = get(&app, "/ui/list/rows?created_before=1970-01-02", None).await;
    assert!(listed(&html).is_empty());
    let (status, html, _) = get(&app, "/ui/list/rows?waiting=perhaps", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("invalid_filter"), "{html}");
    // A definition or originator of spaces is refused, as the API refuses
    // it, not dropped while the box still shows it.
    for bad in ["definition=%20", "originator=%20%20"] {
        let (status, html, _) = get(&app, &format!("/ui/list/rows?status=any&{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(html.contains("invalid_filter"), "{bad}: {html}");
    }
    let (status, _, _) = get(&app, "/ui/list/rows?colour=blue", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A page whose query cannot be read shows the error and keeps it: no
    // live refresh that would swap in another list under its address.
    let (status, html, _) = get(&app, "/ui/processes?status=failed&limit=10", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("invalid_filter"), "{html}");
    assert!(
        !html.contains("sse-connect") && !html.contains("/ui/list/rows?"),
        "{html}"
    );
    // So is one read but refused: its rows would be refused at every change.
    for bad in [
        "status=bogus",
        "size=0",
        "before=nonsense",
        "before=123:",
        "lens=granted_to",
    ] {
        let (status, html, _) = get(&app, &format!("/ui/processes?{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {html}");
        if bad.starts_with("before") {
            assert!(html.contains("invalid_filter"), "{bad}: {html}");
        }
        assert!(
            !html.contains("sse-connect") && !html.contains("/ui/list/rows?"),
            "{bad}: {html}"
        );
    }
    // A readable one is live.
    let (status, html, _) = get(&app, "/ui/processes?status=failed", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"sse-connect="/ui/list/live""#), "{html}");
}

#[tokio::test]
async fn with_tokens_pages_need_a_login_and_writes_need_the_csrf_token() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, false);

    let (status, _, headers) = get(&app, "/ui/processes", None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/login?next=%2Fui%2Fprocesses");
    // The login goes back where the visitor was going: a page of this
    // dashboard, never another site.
    let (status, html, _) = get(&app, "/ui/login?next=%2Fui%2Fprocesses%2Fext-1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"name="next" value="/ui/processes/ext-1""#), "{html}");
    for (next, to) in [
        ("%2Fui%2Fprocesses%2Fext-1%3Fx%3D1", "/ui/processes/ext-1?x=1"),
        ("https%3A%2F%2Fevil.example%2Fui%2F", "/ui/processes"),
        ("%2F%2Fevil.example%2Fui%2F", "/ui/processes"),
        ("%2Fui%2F..%5C..%5Cevil", "/ui/processes"),
    ] {
        let back = login_post(format!("token=host&next={next}"), &[]);
        let (status, _, headers) = send(&app, back).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(headers[header::LOCATION], to, "{next}");
    }
    // A link followed from another site carries no `SameSite=Strict`
    // cookie: the page reloads itself (same-site, which carries it).
    let followed = Request::get("/ui/processes/ext-1")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    let (status, html, _) = send(&app, followed).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"content="0; url=/ui/processes/ext-1""#), "{html}");
    assert!(!html.contains("ext-1</"), "nothing of the process is shown: {html}");
    // A fragment request whose login lapsed is sent to log in and back to
    // the page it came from.
    let fragment = Request::get("/ui/list/rows")
        .header("hx-request", "true")
        .header("hx-current-url", "http://127.0.0.1:7070/ui/processes?status=any")
        .body(Body::empty())
        .unwrap();
    let (status, _, headers) = send(&app, fragment).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["hx-redirect"],
        "/ui/login?next=%2Fui%2Fprocesses%3Fstatus%3Dany"
    );
    // A live stream whose login lapsed is told so in the stream (a redirect
    // to a page would leave it reconnecting for ever); the pages hear it.
    for stream in ["/ui/list/live", "/ui/processes/ext-1/live"] {
        let (status, body, headers) = send(&app, stream_request(stream, "cairn_ui=lapsed")).await;
        assert_eq!(status, StatusCode::OK, "{stream}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream", "{stream}");
        assert!(body.starts_with("event: login\n"), "{stream}: {body}");
    }

    let login = |token: &str| login_post(format!("token={token}"), &[]);
    let (status, html, headers) = send(&app, login("nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(html.contains("unknown token"));
    assert!(headers.get(header::SET_COOKIE).is_none());

    let mut cross = login("host");
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    let (status, _, headers) = send(&app, cross).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a login posted from another site");
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    // A browser without `Sec-Fetch-Site` says where the form came from in
    // `Origin`: another one than this server's is refused, its own is not.
    for (origin, allowed) in [
        ("http://evil.example", false),
        ("null", false),
        ("http://127.0.0.1:7070", true),
    ] {
        let mut posted = login("host");
        posted.headers_mut().insert("origin", origin.parse().unwrap());
        posted.headers_mut().insert("host", "127.0.0.1:7070".parse().unwrap());
        let (status, _, headers) = send(&app, posted).await;
        assert_eq!(
            (
                status == StatusCode::FORBIDDEN,
                headers.get(header::SET_COOKIE).is_some()
            ),
            (!allowed, allowed),
            "{origin}"
        );
    }
    // Behind a proxy that rewrites `Host`, `Origin` names the public
    // address: a browser's `Sec-Fetch-Site: same-origin` is believed.
    for (site, allowed) in [("same-origin", true), ("cross-site", false), ("same-site", false)] {
        let mut posted = login("host");
        posted
            .headers_mut()
            .insert("origin", "https://cairn.example.com".parse().unwrap());
        posted.headers_mut().insert("host", "127.0.0.1:7070".parse().unwrap());
        posted.headers_mut().insert("sec-fetch-site", site.parse().unwrap());
        let (status, _, headers) = send(&app, posted).await;
        assert_eq!(
            (
                status == StatusCode::FORBIDDEN,
                headers.get(header::SET_COOKIE).is_some()
            ),
            (!allowed, allowed),
            "{site}"
        );
    }

    let (_, _, headers) = send(&app, login("host")).await;
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_string();
    for attr in ["cairn_ui=", "HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "a login over plain HTTP: {set}");
    let cookie_owned = cookie_pair(&set).to_string();
    let cookie = cookie_owned.as_str();
    let (status, html, _) = get(&app, "/ui/processes?status=any", Some(cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"sse-swap="login""#),
        "the list hears a lapsed login: {html}"
    );
    let (_, page, _) = get(&app, "/ui/processes/ext-1", Some(cookie)).await;
    assert!(page.contains(r#"sse-swap="login""#), "the process page too: {page}");
    let csrf = html
        .split("name=\"cairn-csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string();

    let complete_with = |csrf: Option<&str>, value: u32| {
        let mut r = Request::post("/ui/processes/ext-1/complete")
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(t) = csrf {
            r = r.header("x-cairn-csrf", t);
        }
        r.body(Body::from(format!(
            "outcome=%7B%22type%22%3A%22success%22%2C%22value%22%3A{value}%7D"
        )))
        .unwrap()
    };
    let complete = |csrf: Option<&str>| complete_with(csrf, 1);
    let (status, html, _) = send(&app, complete(None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("csrf_refused"));
    let (status, _, _) = send(&app, complete(Some(&"0".repeat(64)))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        !p.get("ext-1").await.unwrap().is_terminal(),
        "a refused request changed nothing"
    );

    // A key given twice is refused, as the API refuses it, and changes nothing.
    let twice = |path: &str, body: &str| {
        Request::post(format!("/ui/processes/ext-1/{path}"))
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-cairn-csrf", csrf.as_str())
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let before = p.get("ext-1").await.unwrap().last_sequence;
    for (path, body) in [
        ("signal", "name=go&signal_id=g1&payload=%7B%22a%22%3A1%2C%22a%22%3A2%7D"),
        (
            "complete",
            "outcome=%7B%22type%22%3A%22success%22%2C%22value%22%3A%7B%22a%22%3A1%2C%22a%22%3A2%7D%7D",
        ),
    ] {
        let (status, html, _) = send(&app, twice(path, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {html}");
        assert!(html.contains("twice"), "{path}: {html}");
    }
    let after = p.get("ext-1").await.unwrap();
    assert_eq!(after.last_sequence, before, "nothing was written");
    assert!(!after.is_terminal());

    let (status, html, _) = send(&app, complete(Some(&csrf))).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(p.get("ext-1").await.unwrap().is_terminal());
    // The same completion again changes nothing; another outcome is
    // refused with the runtime's own error.
    let (status, html, _) = send(&app, complete(Some(&csrf))).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (status, html, _) = send(&app, complete_with(Some(&csrf), 2)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains("process_terminal"), "{html}");
}

#[tokio::test]
async fn a_session_token_sees_only_its_sessions_processes() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    for (id, s) in [("mine", "s1"), ("theirs", "s2")] {
        p.start(StartRequest::external(id, json!({})).with_grant(SessionScope::session(s), GrantDescriptor::default()))
            .await
            .unwrap();
    }
    let app = app(&p, false);
    let s1_cookie = login_as(&app, "s1-token").await;
    let cookie = Some(s1_cookie.as_str());
    let (_, html, _) = get(&app, "/ui/list/rows", cookie).await;
    assert_eq!(listed(&html), vec!["mine"]);
    let (_, html, _) = get(&app, "/ui/list/rows?lens=granted_to&session=s2", cookie).await;
    assert!(listed(&html).is_empty());
    // What the filter form sends for a session viewer: the lens it offers,
    // the session box left empty.
    let (status, html, _) = get(&app, "/ui/list/rows?status=any&lens=granted_to&session=", cookie).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(listed(&html), vec!["mine"]);
    // The provenance lens is the host's: 403, as the API answers.
    let (status, html, _) = get(&app, "/ui/list/rows?lens=originated_by&session=s2", cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("host token"), "{html}");
    // Its page has no live stream re-reading a list refused at every change.
    let (status, html, _) = get(&app, "/ui/processes?lens=originated_by&session=s2", cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(!html.contains("sse-connect"), "{html}");
    let (_, html, _) = get(&app, "/ui/processes", cookie).await;
    assert!(html.contains("sse-connect"), "{html}");
    let (status, html, _) = get(&app, "/ui/processes/theirs", cookie).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("unknown_process"));
    let (status, _, _) = get(&app, "/ui/processes/mine", cookie).await;
    assert_eq!(status, StatusCode::OK);
    // Refusals are said in the page, with its navigation, as other pages say theirs.
    let (status, html, _) = get(&app, "/ui/sessions?session=s2", cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("<title>") && html.contains("forbidden"), "{html}");
    let (status, html, _) = get(&app, "/ui/sessions?bogus=1", cookie).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("<title>") && html.contains("invalid_request"), "{html}");
    let (status, html, _) = get(&app, "/ui/sessions", cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("mine") && !html.contains("theirs"), "{html}");
}

#[tokio::test]
async fn a_window_crowded_past_one_registry_page_still_pages_in_order() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let mut expected = Vec::new();
    for j in 0..5 {
        let id = format!("old-{j}");
        external(&p, &id).await;
        expected.push((T0, id));
    }
    // More rows in one millisecond than one registry page holds.
    clock.set(T0 + 30_000);
    for j in 0..1100 {
        let id = format!("new-{j:04}");
        external(&p, &id).await;
        expected.push((T0 + 30_000, id));
    }
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    let app = app(&p, true);
    let mut seen = Vec::new();
    let mut next = Some("/ui/list/rows?size=500".to_string());
    while let Some(path) = next {
        let (status, html, _) = get(&app, &path.replace("/ui/processes?", "/ui/list/rows?"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        seen.extend(listed(&html));
        next = older(&html);
        assert!(seen.len() <= expected.len(), "paging repeats rows");
    }
    assert_eq!(seen, expected);
}

/// Every page of `first` (a rows path or a page's "Older" link), read in
/// turn: the ids listed, in page order, each page at most `size` rows.
async fn page_through(app: &Router, first: &str, size: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(path) = next {
        let (status, html, _) = get(app, &path.replace("/ui/processes?", "/ui/list/rows?"), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        let page = listed(&html);
        assert!(page.len() <= size, "{path}: {page:?}");
        next = older(&html);
        assert!(
            next.is_none() || page.len() == size,
            "an older page after a short one: {path}"
        );
        seen.extend(page);
        assert!(seen.len() <= 1_000, "paging does not end: {seen:?}");
    }
    seen
}

/// Processes crowded into one millisecond and spread across others, their
/// ids against creation order, are each listed once, newest first (ties by
/// the larger id), through every lens and a filter, on pages of any size.
#[tokio::test]
async fn pages_show_each_process_once_newest_first_whatever_its_id() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    // (created, id, whether session s1 started it and holds a grant on it)
    let mut made = Vec::new();
    let mut at = T0;
    for i in 0..150u64 {
        // 60 in the first millisecond, 40 more in ones a few apart, 30 in
        // another crowded one, then 20 more apart.
        match i {
            0..60 | 101..130 => {}
            _ => at += 1 + i % 3,
        }
        clock.set(at);
        // 7 is prime to 150: every id once, out of creation order.
        let id = format!("q{:03}", (i * 7) % 150);
        let theirs = i % 3 != 0;
        if theirs {
            let start = StartRequest::from_json(json!({
                "id": id,
                "input": {"type": "external", "metadata": {}},
                "disposition": "externally_owned",
                "originator": {"type": "session", "scope": {"session_id": "s1"}},
                "grant": {"session_scope": {"session_id": "s1"}},
            }))
            .unwrap();
            p.start(start).await.expect("start");
        } else {
            external(&p, &id).await;
        }
        made.push((at, id, theirs));
    }
    made.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let every: Vec<String> = made.iter().map(|m| m.1.clone()).collect();
    let s1s: Vec<String> = made.iter().filter(|m| m.2).map(|m| m.1.clone()).collect();
    assert!(
        every.windows(2).any(|w| w[0] < w[1]),
        "ids against creation order somewhere"
    );
    let app = app(&p, true);
    for size in [1, 7, 50, 149, 150, 151] {
        assert_eq!(
            page_through(&app, &format!("/ui/list/rows?size={size}"), size).await,
            every,
            "size {size}"
        );
    }
    for (query, expected) in [
        ("lens=granted_to&session=s1", &s1s),
        ("lens=originated_by&session=s1", &s1s),
        ("originator=session%3As1", &s1s),
    ] {
        for size in [4, 45] {
            let first = format!("/ui/list/rows?{query}&size={size}");
            assert_eq!(&page_through(&app, &first, size).await, expected, "{first}");
        }
    }
}

/// A page whose cursor names a process pruned since the page that linked to
/// it is refused as other bad input is (no live stream), saying to go back
/// to the first page, and linking to it.
#[tokio::test]
async fn a_page_after_a_pruned_process_says_to_go_back_to_the_first() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    for id in ["a", "b", "c"] {
        clock.advance(1);
        external(&p, id).await;
    }
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes?status=any&size=2", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(listed(&html), ["c", "b"]);
    let link = older(&html).expect("an older page");
    p.complete_external("b", cairn_core::Outcome::success(json!(1)), "ci")
        .await
        .expect("complete");
    let report = p
        .prune(
            T0 + 4,
            cairn_core::StatusFilter::Any,
            cairn_core::Watermark::NoProjector,
        )
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    let (status, html, _) = get(&app, &link, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        html.contains("invalid_page") && html.contains("go back to the first page"),
        "{html}"
    );
    assert!(
        html.contains(r#"href="/ui/processes?status=any&amp;size=2""#),
        "a link to the first page: {html}"
    );
    assert!(!html.contains("sse-connect"), "{html}");
    // The first page still reads.
    let (status, html, _) = get(&app, "/ui/list/rows?status=any&size=2", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(listed(&html), ["c", "a"]);
}

#[tokio::test]
async fn the_session_page_lists_pending_wakes_and_acknowledges_them() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let start = StartRequest::from_json(json!({
        "id": "ci-1",
        "input": {"type": "external", "metadata": {}},
        "disposition": "externally_owned",
        "originator": {"type": "session", "scope": {"session_id": "s1"}},
        "grant": {"session_scope": {"session_id": "s1"}, "descriptor": {"label": "ci run"}},
        "wake_target": {"session_id": "s1"},
        "event_types": [{"name": "progress", "payload_schema": {"type": "object"},
                         "semantics": {"wake": {"input": {"pointer": "/text"}, "dedupe_key": {"const": "p"}}}}]
    }))
    .unwrap();
    p.start(start).await.unwrap();
    let appended = p
        .append_event(
            "ci-1",
            serde_json::from_value(json!({"event_type": "progress", "payload": {"text": "tests are green"}})).unwrap(),
        )
        .await
        .unwrap();
    assert!(appended.wake.is_some(), "the append wrote a wake");
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/sessions?session=s1", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("tests are green"), "{html}");
    assert!(html.contains("ci run"), "the grant's label is shown: {html}");
    // The wake links to its event, which the process page shows however
    // many events follow it.
    let seq = appended.event.sequence;
    assert!(
        html.contains(&format!(r#"href="/ui/processes/ci-1?from={seq}#ev-{seq}""#)),
        "{html}"
    );
    let csrf = html
        .split("name=\"cairn-csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let wake_id = p.wakes("s1", None).await.unwrap()[0].wake_id.clone();
    let ack = Request::post(format!("/ui/sessions/s1/wakes/{wake_id}/ack"))
        .header("x-cairn-csrf", csrf)
        .body(Body::empty())
        .unwrap();
    let (status, html, _) = send(&app, ack).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("acknowledged"));
    assert!(p.wakes("s1", None).await.unwrap().is_empty());
    let (_, html, _) = get(&app, "/ui/sessions?session=s1", None).await;
    assert!(html.contains("No pending wake."));

    // A wake's input is shown by its start: an input of a mebibyte each,
    // two hundred of them, made a page of hundreds of megabytes.
    let big = "g".repeat(100_000);
    waking(&p, "ci-2", json!({"session_id": "s1"}), Some("s1")).await;
    progress(&p, "ci-2", &big).await;
    let (status, html, _) = get(&app, "/ui/sessions?session=s1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(&"g".repeat(200)) && !html.contains(&"g".repeat(201)),
        "clipped"
    );
    assert!(html.len() < 50_000, "a page of {} bytes", html.len());
    // An ack the server refuses says so above the table; the row stays.
    let wake_id = p.wakes("s1", None).await.unwrap()[0].wake_id.clone();
    let csrf = csrf_of(&html);
    p.delete_session("s1").await.unwrap();
    let ack = Request::post(format!("/ui/sessions/s1/wakes/{wake_id}/ack"))
        .header("x-cairn-csrf", csrf)
        .body(Body::empty())
        .unwrap();
    let (status, html, headers) = send(&app, ack).await;
    assert_ne!(status, StatusCode::OK, "{html}");
    assert_eq!(
        headers.get("hx-retarget").and_then(|v| v.to_str().ok()),
        Some("#wake-result")
    );
    assert_eq!(
        headers.get("hx-reswap").and_then(|v| v.to_str().ok()),
        Some("innerHTML")
    );
}

/// A page of wakes cut at its bytes (inputs of most of a mebibyte) says it
/// shows the oldest ones and that acknowledging them shows the next.
#[tokio::test]
async fn the_session_page_says_when_its_wakes_were_cut_at_their_bytes() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    waking(&p, "ci-big", json!({"session_id": "s1"}), Some("s1")).await;
    for i in 0..6 {
        progress(&p, "ci-big", &format!("{i}").repeat(900 * 1024)).await;
    }
    let shown = p.wakes("s1", None).await.unwrap().len();
    assert_eq!(shown, 5, "the page stops at its bytes");
    let (status, html, _) = get(&app, "/ui/sessions?session=s1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("(first 5)"), "{}", &html[..html.len().min(3000)]);
    assert!(html.contains("The oldest 5; acknowledging them shows the next."));
}

/// A process page's timeline starts at its latest events (a long run logs
/// thousands, each up to a mebibyte), says how many it left out and links to
/// them all; a query the page does not take is refused in the page.
#[tokio::test]
async fn a_long_timeline_starts_at_its_latest_events() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    let start = StartRequest::from_json(json!({
        "id": "long",
        "input": {"type": "external", "metadata": {}},
        "disposition": "externally_owned",
        "event_types": [{"name": "progress", "payload_schema": {"type": "object"}}]
    }))
    .unwrap();
    p.start(start).await.unwrap();
    for i in 0..510 {
        p.append_event(
            "long",
            serde_json::from_value(json!({"event_type": "progress", "payload": {"i": i}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let last = p.get("long").await.unwrap().last_sequence;
    let left_out = last - 500;
    let (status, html, headers) = get(&app, "/ui/processes/long", None).await;
    assert_eq!(status, StatusCode::OK);
    // No page is kept by the browser (Back after a logout shows none).
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(
        html.contains(&format!(r#"sse-connect="/ui/processes/long/live?after={left_out}""#)),
        "{html}"
    );
    assert!(
        html.contains(&format!("The earliest {left_out} events are left out.")),
        "{html}"
    );
    assert!(html.contains(r#"data-keep="500""#), "the page keeps its latest: {html}");
    // The page says how many it leaves out, so a link to one of them
    // (`#ev-N`, which the server never sees) goes to the timeline from it.
    assert!(html.contains(&format!(r#"data-left-out="{left_out}""#)), "{html}");
    let script = get(&app, "/ui/assets/app.js", None).await.1;
    assert!(
        script.contains("timeline.dataset.leftOut") && script.contains("\"?from=\" + seq"),
        "{script}"
    );
    let (status, html, _) = get(&app, "/ui/processes/long?all=true", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"sse-connect="/ui/processes/long/live?after=0""#),
        "{html}"
    );
    assert!(
        !html.contains("are left out") && !html.contains("data-keep") && !html.contains("data-left-out"),
        "{html}"
    );
    // A link to one event (a wake's) shows the timeline from it on, and
    // keeps all it shows; one within the latest shows those, kept too.
    let (status, html, _) = get(&app, "/ui/processes/long?from=3", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"sse-connect="/ui/processes/long/live?after=2""#),
        "{html}"
    );
    assert!(html.contains("The earliest 2 events are left out.") && !html.contains("data-keep"));
    let (_, html, _) = get(&app, &format!("/ui/processes/long?from={last}"), None).await;
    assert!(
        html.contains(&format!(r#"sse-connect="/ui/processes/long/live?after={left_out}""#))
            && !html.contains("data-keep"),
        "{html}"
    );
    let (status, _, _) = get(&app, "/ui/processes/long?from=x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, html, _) = get(&app, "/ui/processes/long?bogus=1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("<title>") && html.contains("invalid_request"), "{html}");
}

/// A path under `/ui` that is no page answers 404 as a page, with the
/// navigation (the API's JSON answer was no page to a browser); without a
/// login it is sent to log in first, as every page is.
#[tokio::test]
async fn an_unknown_dashboard_path_is_a_page_not_found() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let closed = app(&p, false);
    let app = app(&p, true);
    for path in ["/ui/nosuch", "/ui/processes/x/nosuch", "/ui/sessions/s1"] {
        let (status, html, headers) = get(&app, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"),
            "{path}"
        );
        assert!(html.contains("<title>") && html.contains("not_found"), "{path}: {html}");
    }
    let (status, _, headers) = get(&closed, "/ui/nosuch", None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers[header::LOCATION].to_str().unwrap().starts_with("/ui/login"));
}

/// A pruned process's page says how it ended and when it was pruned, as
/// times people read, not as epoch milliseconds.
#[tokio::test]
async fn a_pruned_process_page_says_when_in_words() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    external(&p, "gone").await;
    p.complete_external("gone", cairn_core::Outcome::success(json!(1)), "ci")
        .await
        .expect("complete");
    clock.advance(60_000);
    let report = p
        .prune(
            T0 + 1,
            cairn_core::StatusFilter::Any,
            cairn_core::Watermark::NoProjector,
        )
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    let (status, html, _) = get(&app, "/ui/processes/gone", None).await;
    assert_eq!(status, StatusCode::GONE, "{html}");
    assert!(html.contains("no_longer_retained"), "{html}");
    assert!(html.contains("s-completed"), "how it ended, as a badge: {html}");
    let raw = format!("pruned at {}", T0 + 60_000);
    assert!(!html.contains(&raw), "raw milliseconds in the page: {html}");
    assert!(html.contains("2026-09-21 14:14:20 UTC"), "the pruning time: {html}");
}

/// A large input, outcome or event payload is shown cut, with a word on
/// where to read it whole: the page stays small however large they are.
#[tokio::test]
async fn large_values_are_shown_cut() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    let big = "é".repeat(450 * 1024);
    p.start(StartRequest::external("big", json!({ "blob": big })))
        .await
        .expect("start");
    p.complete_external("big", cairn_core::Outcome::success(json!({ "blob": big })), "ci")
        .await
        .expect("complete");
    let (status, html, _) = get(&app, "/ui/processes/big", None).await;
    assert_eq!(status, StatusCode::OK);
    // Input, outcome and the terminal event's payload: three values of
    // 900 KB each, shown at 64 KiB each.
    assert!(html.len() < 400 * 1024, "a page of {} bytes", html.len());
    assert!(html.matches("Shown: the first 64 KiB").count() >= 2, "the cut is said");
    let (_, record, _) = get(&app, "/ui/processes/big/record", None).await;
    assert!(record.len() < 300 * 1024, "a record panel of {} bytes", record.len());
    assert!(record.contains("Shown: the first 64 KiB"), "the cut is said");
}

/// A wake aimed at a session by a process not granted to it is the
/// session's to see and acknowledge, but its process is not the session's to
/// open: the page names it without a link that would answer 404.
#[tokio::test]
async fn a_wake_from_a_process_the_session_cannot_open_has_no_link() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    for (id, grant) in [("hosts", None), ("mine", Some("s1"))] {
        waking(&p, id, json!({"session_id": "s1", "agent_frame_id": "f1"}), grant).await;
        let appended = progress(&p, id, &format!("from {id}")).await;
        assert!(appended.wake.is_some(), "{id}: a wake");
    }
    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let s1_cookie = login_as(&app, "s1-token").await;
    let (status, html, _) = get(&app, "/ui/sessions?session=s1", Some(s1_cookie.as_str())).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("from hosts") && html.contains("from mine"),
        "both wakes: {html}"
    );
    assert!(
        html.contains("href=\"/ui/processes/mine\""),
        "its own process is linked: {html}"
    );
    assert!(
        !html.contains("href=\"/ui/processes/hosts"),
        "no link to what it cannot open: {html}"
    );
    // The host opens both.
    let (_, html, _) = get(&app, "/ui/sessions?session=s1", Some(host_cookie.as_str())).await;
    assert!(html.contains("href=\"/ui/processes/hosts\""), "{html}");
}

/// The session page says which agent frame a wake is for (or the whole
/// session), and shows a control character in a wake's input as its escape,
/// never as a raw byte an HTML parser would drop.
#[tokio::test]
async fn the_session_page_names_a_wakes_frame_and_escapes_control_characters() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    for (id, target, text) in [
        ("whole", json!({"session_id": "s1"}), "nul\u{0}here"),
        ("framed", json!({"session_id": "s1", "agent_frame_id": "F1"}), "for F1"),
    ] {
        waking(&p, id, target, None).await;
        progress(&p, id, text).await;
    }
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/sessions?session=s1", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let row = |id: &str| {
        let at = html.find(&format!("href=\"/ui/processes/{id}\"")).expect("the row");
        html[html[..at].rfind("<tr").expect("row start")..at].to_string()
    };
    assert!(row("framed").contains("<code><bdi>F1</bdi></code>"), "{html}");
    assert!(row("whole").contains("session"), "{html}");
    assert!(!html.contains('\u{0}'), "a raw NUL in the page");
    assert!(
        html.contains(r#"nul<span class="fmt" title="U+0000">\u0000</span>here"#),
        "{html}"
    );
}

/// A process's originator links to the page of the scope it shows: an
/// agent frame's processes list on the frame's page, not the session's.
#[tokio::test]
async fn the_originator_link_names_the_frame() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let start = StartRequest::from_json(json!({
        "id": "from-frame",
        "input": {"type": "external", "metadata": {}},
        "disposition": "externally_owned",
        "originator": {"type": "session", "scope": {"session_id": "s 1", "agent_frame_id": "f1"}},
    }))
    .unwrap();
    p.start(start).await.unwrap();
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes/from-frame", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let link = "/ui/sessions?session=s%201%2Fframe%3Af1";
    assert!(html.contains(link), "{html}");
    let (status, html, _) = get(&app, link, None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("from-frame"), "the frame's page lists it: {html}");
}

/// The filter form keeps the page size in use, as the pager's links do.
#[tokio::test]
async fn the_filter_form_keeps_the_page_size() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes?status=any&size=5", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(r#"<input type="hidden" name="size" value="5">"#),
        "{html}"
    );
    let (_, html, _) = get(&app, "/ui/processes?status=any", None).await;
    assert!(!html.contains(r#"name="size""#), "no size asked, none kept: {html}");
}

/// A session id is taken as given: ` s1` (a leading space is allowed in an
/// id) is another session than `s1`, on the session page and in the list's
/// lenses.
#[tokio::test]
async fn session_ids_are_not_trimmed() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    for (id, session) in [("plain-1", "s1"), ("spaced-1", " s1")] {
        let start = StartRequest::from_json(json!({
            "id": id,
            "input": {"type": "external", "metadata": {}},
            "disposition": "externally_owned",
            "originator": {"type": "session", "scope": {"session_id": session}},
            "grant": {"session_scope": {"session_id": session}},
        }))
        .unwrap();
        p.start(start).await.unwrap();
    }
    let app = app(&p, true);
    for (query, shown, hidden) in [("s1", "plain-1", "spaced-1"), ("%20s1", "spaced-1", "plain-1")] {
        let (status, html, _) = get(&app, &format!("/ui/sessions?session={query}"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(
            html.contains(shown) && !html.contains(hidden),
            "session={query}: {html}"
        );
        for lens in ["granted_to", "originated_by"] {
            let (status, html, _) = get(&app, &format!("/ui/list/rows?lens={lens}&session={query}"), None).await;
            assert_eq!(status, StatusCode::OK, "{html}");
            assert!(
                html.contains(shown) && !html.contains(hidden),
                "{lens} session={query}: {html}"
            );
        }
        // The originator filter takes the scope as given too.
        let (status, html, _) = get(
            &app,
            &format!("/ui/list/rows?status=any&originator=session%3A{query}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(
            html.contains(shown) && !html.contains(hidden),
            "originator session:{query}: {html}"
        );
    }
    // A session id with no lens to read it would be ignored: refused.
    let (status, html, _) = get(&app, "/ui/list/rows?lens=all&session=s1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("invalid_filter"), "{html}");
}

#[tokio::test]
async fn a_process_page_lists_its_children_and_links_its_parent() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "parent").await;
    for id in ["kid-1", "kid-2"] {
        let mut req = StartRequest::external(id, json!({}));
        req.caused_by = Some(cairn_core::CausalRef::process("parent"));
        p.start(req).await.expect("start child");
    }
    external(&p, "stranger").await;
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes/parent", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    for kid in ["kid-1", "kid-2"] {
        assert!(html.contains(&format!("data-child=\"{kid}\"")), "{kid} missing: {html}");
    }
    assert!(!html.contains("data-child=\"stranger\""), "{html}");
    let (status, html, _) = get(&app, "/ui/processes/kid-1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("parent process"), "the child links its parent: {html}");
    assert!(!html.contains("data-child="), "a leaf lists no children");
}

/// A session viewer's process whose parent is not granted to the session
/// names that parent without a link the viewer could not open (it answers
/// 404); the host, and a session granted the parent, get the link.
#[tokio::test]
async fn a_parent_the_session_cannot_open_has_no_link() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let s1 = || SessionScope::session("s1");
    external(&p, "hparent-secret").await;
    p.start(StartRequest::external("shared-parent", json!({})).with_grant(s1(), GrantDescriptor::default()))
        .await
        .unwrap();
    for (kid, parent) in [("hchild", "hparent-secret"), ("schild", "shared-parent")] {
        let mut req = StartRequest::external(kid, json!({})).with_grant(s1(), GrantDescriptor::default());
        req.caused_by = Some(cairn_core::CausalRef::process(parent));
        p.start(req).await.expect("start child");
    }
    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let s1_cookie = login_as(&app, "s1-token").await;
    let session = Some(s1_cookie.as_str());
    let (status, page, _) = get(&app, "/ui/processes/hchild", session).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, fragment, _) = get(&app, "/ui/processes/hchild/record", session).await;
    assert_eq!(status, StatusCode::OK, "{fragment}");
    for html in [&page, &fragment] {
        assert!(!html.contains("href=\"/ui/processes/hparent-secret"), "no link: {html}");
        assert!(
            html.contains(
                "parent process <code class=\"parent\" title=\"not granted to this session\"><bdi>hparent-secret</bdi></code>"
            ),
            "the parent named: {html}"
        );
    }
    let (status, _, _) = get(&app, "/ui/processes/hparent-secret", session).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "what the link would have opened");
    let (_, html, _) = get(&app, "/ui/processes/schild", session).await;
    assert!(
        html.contains("<a class=\"parent\" href=\"/ui/processes/shared-parent\">"),
        "a parent granted to the session is linked: {html}"
    );
    let (_, html, _) = get(&app, "/ui/processes/hchild", Some(host_cookie.as_str())).await;
    assert!(
        html.contains("<a class=\"parent\" href=\"/ui/processes/hparent-secret\">"),
        "the host opens it: {html}"
    );
}

/// A process page's live stream ends with the process: its children section
/// then says the list no longer updates, with a reload, while a child it
/// lists still runs; not while the parent runs, nor once its children ended.
#[tokio::test]
async fn an_ended_parent_says_its_running_children_are_not_followed() {
    use cairn_core::Outcome;
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "parent").await;
    child(&p, "kid", "parent").await;
    let app = app(&p, true);
    let note = "this list no longer updates";
    let reload = "<a href=\"/ui/processes/parent\">Reload</a>";
    let (_, html, _) = get(&app, "/ui/processes/parent", None).await;
    assert!(html.contains("data-child=\"kid\"") && !html.contains(note), "{html}");

    p.complete_external("parent", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let (_, page, _) = get(&app, "/ui/processes/parent", None).await;
    let (_, fragment, _) = get(&app, "/ui/processes/parent/record", None).await;
    for html in [&page, &fragment] {
        let section = html.split("id=\"children\"").nth(1).expect("the section");
        let section = section.split("</section>").next().unwrap_or_default();
        assert!(section.contains(note) && section.contains(reload), "{section}");
    }

    p.complete_external("kid", Outcome::success(json!(2)), "host")
        .await
        .expect("complete");
    let (_, page, _) = get(&app, "/ui/processes/parent", None).await;
    let (_, fragment, _) = get(&app, "/ui/processes/parent/record", None).await;
    for html in [&page, &fragment] {
        assert!(html.contains("data-child=\"kid\"") && !html.contains(note), "{html}");
    }
}

/// A shell call's forwarded environment is named on its page, its values
/// (secrets, often) not shown.
#[tokio::test]
async fn a_process_page_names_a_shells_environment_without_its_values() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let req = StartRequest::tool(
        "with-env",
        "shell",
        json!({"argv": ["true"], "env": {"SECRET_TOKEN": "hunter2"}}),
        cairn_core::Disposition::Rerunnable,
    );
    p.start(req).await.expect("start");
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes/with-env", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("SECRET_TOKEN") && !html.contains("hunter2"), "{html}");
}

/// A journaled shell call in a process's timeline (a script's `ctx.tool`)
/// names the variables it forwards, not their values, as the child's own
/// page does.
#[tokio::test]
async fn a_timeline_names_a_journaled_shells_environment_without_its_values() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(StartRequest::external("calls", json!({})).with_event_type(cairn_core::EventType::plain("note")))
        .await
        .unwrap();
    let call = json!({"n": 1, "kind": "tool", "tool": "shell",
        "args": {"argv": ["true"], "env": {"SECRET_TOKEN": "hunter2"}}});
    p.append_event("calls", cairn_core::AppendRequest::new("note", call))
        .await
        .unwrap();
    let app = app(&p, true);
    let r = app
        .clone()
        .oneshot(Request::get("/ui/processes/calls/live").body(Body::empty()).unwrap())
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body().into_data_stream();
    let mut seen = String::new();
    assert!(read_until(&mut body, &mut seen, "SECRET_TOKEN").await, "{seen}");
    assert!(
        read_until(&mut body, &mut seen, "not shown").await && !seen.contains("hunter2"),
        "{seen}"
    );
}

async fn child(p: &Processes, id: &str, parent: &str) {
    let mut req = StartRequest::external(id, json!({}));
    req.caused_by = Some(cairn_core::CausalRef::process(parent));
    p.start(req).await.expect("start child");
}

/// A store that fails to list a process's children is said in the children
/// section, not shown as a process without children.
#[tokio::test]
async fn a_failed_children_listing_is_said() {
    let clock = Arc::new(ManualClock::new(T0));
    let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(MemoryRegistry::with_clock(clock.clone())));
    let p = Processes::builder(probe.clone())
        .clock(clock.clone())
        .without_worker()
        .start();
    external(&p, "parent").await;
    child(&p, "kid", "parent").await;
    let app = app(&p, true);
    probe.fail_next_lists(1);
    let (status, html, _) = get(&app, "/ui/processes/parent", None).await;
    assert_eq!(status, StatusCode::OK);
    let section = html.split(r#"id="children""#).nth(1).expect("the section");
    let section = section.split("</section>").next().unwrap_or_default();
    assert!(
        section.contains("unavailable") && !section.contains("hidden"),
        "{section}"
    );
    let (_, html, _) = get(&app, "/ui/processes/parent", None).await;
    assert!(html.contains(r#"data-child="kid""#), "{html}");
}

/// A child started after the parent's page was rendered, and a child's end,
/// reach an open page: the live record fragment carries the children section
/// out of band.
#[tokio::test]
async fn the_record_fragment_lists_children_started_after_the_page() {
    use cairn_core::Outcome;
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "parent").await;
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes/parent", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(!html.contains("data-child="), "{html}");
    // The (hidden) target the fragment swaps out of band is on the page.
    assert!(
        html.contains("<section class=\"children\" id=\"children\" hidden>"),
        "{html}"
    );

    child(&p, "late-kid", "parent").await;
    let (status, fragment, _) = get(&app, "/ui/processes/parent/record", None).await;
    assert_eq!(status, StatusCode::OK, "{fragment}");
    let section = fragment
        .split("<section class=\"children\" id=\"children\" hx-swap-oob=\"true\">")
        .nth(1)
        .expect("the children section, out of band");
    assert!(section.contains("data-child=\"late-kid\""), "{fragment}");
    assert!(section.contains("(1)"), "{section}");
    assert!(!fragment.contains("action-forms"), "the parent runs: {fragment}");

    p.complete_external("late-kid", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let (_, fragment, _) = get(&app, "/ui/processes/parent/record", None).await;
    let kid = fragment.split("data-child=\"late-kid\"").nth(1).expect("still listed");
    assert!(
        kid.starts_with("><span class=\"status s-completed\""),
        "its status follows: {kid}"
    );
}

/// A session viewer's children section lists the children granted to its
/// session, through its grants: children it may not see are neither shown
/// nor counted, and do not push its own out of the first 100.
#[tokio::test]
async fn a_session_viewer_sees_its_own_children_only() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(
        StartRequest::external("shared", json!({})).with_grant(SessionScope::session("s1"), GrantDescriptor::default()),
    )
    .await
    .unwrap();
    for i in 0..101 {
        child(&p, &format!("a-hidden-{i:03}"), "shared").await;
    }
    for i in 0..3 {
        let mut req = StartRequest::external(format!("z-mine-{i}"), json!({}))
            .with_grant(SessionScope::session("s1"), GrantDescriptor::default());
        req.caused_by = Some(cairn_core::CausalRef::process("shared"));
        p.start(req).await.expect("start child");
    }
    let app = app(&p, false);
    let s1_cookie = login_as(&app, "s1-token").await;
    let (status, html, _) = get(&app, "/ui/processes/shared", Some(s1_cookie.as_str())).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(html.matches("data-child=").count(), 3, "{html}");
    for i in 0..3 {
        assert!(html.contains(&format!("data-child=\"z-mine-{i}\"")), "{html}");
    }
    assert!(!html.contains("a-hidden-"), "{html}");
    assert!(html.contains("Children <span class=\"count\">(3)</span>"), "{html}");
}

/// Past 100 children the page says the list is cut and links to the list of
/// all of them, which the processes list filters by parent.
#[tokio::test]
async fn a_cut_children_list_says_so_and_links_to_all() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "big parent").await;
    for i in 0..101 {
        child(&p, &format!("kid-{i:03}"), "big parent").await;
    }
    external(&p, "small").await;
    child(&p, "only-kid", "small").await;
    external(&p, "stranger").await;
    let app = app(&p, true);
    let link = "href=\"/ui/processes?status=any&amp;caused_by=big+parent\"";
    let (status, html, _) = get(&app, "/ui/processes/big%20parent", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (_, fragment, _) = get(&app, "/ui/processes/big%20parent/record", None).await;
    for html in [&html, &fragment] {
        assert_eq!(html.matches("data-child=").count(), 100, "{html}");
        assert!(html.contains("(first 100)"), "{html}");
        assert!(html.contains("The first 100 by id, as text sorts them."), "{html}");
        assert!(html.contains(link), "{html}");
        assert!(!html.contains("data-child=\"kid-100\""), "{html}");
    }
    // The link lists the children, and only them.
    let (status, all, _) = get(&app, "/ui/processes?status=any&caused_by=big+parent&size=200", None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let ids = listed(&all);
    assert_eq!(ids.len(), 101, "{all}");
    assert!(ids.iter().all(|id| id.starts_with("kid-")), "{ids:?}");
    assert!(
        all.contains("name=\"caused_by\" value=\"big parent\""),
        "the filter shows: {all}"
    );

    let (_, html, _) = get(&app, "/ui/processes/small", None).await;
    assert_eq!(html.matches("data-child=").count(), 1, "{html}");
    assert!(html.contains("(1)") && !html.contains("The first 100"), "{html}");
}

/// An open process page hears of what appends nothing to the log (a lease
/// renewed, a child started): a quiet stream still sends `record` while the
/// process runs.
#[tokio::test]
async fn a_quiet_live_stream_still_refreshes_the_record() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "parent").await;
    let app = app(&p, true);
    let r = app
        .clone()
        .oneshot(Request::get("/ui/processes/parent/live").body(Body::empty()).unwrap())
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body().into_data_stream();
    // An external process's log is empty: nothing to send, and a child's
    // start appends nothing to it.
    let last = p.get("parent").await.unwrap().last_sequence;
    child(&p, "kid", "parent").await;
    let mut seen = String::new();
    // A `record` comes after a quiet FOLLOW_WAIT (15 s) all the same.
    assert!(
        read_until_within(&mut body, &mut seen, "event: record", 20).await,
        "{seen}"
    );
    assert!(!seen.contains("event: timeline"), "{seen}");
    // Each connection first empties what an earlier one showed failing.
    assert!(seen.starts_with("event: cleared\n"), "{seen}");
    assert_eq!(p.get("parent").await.unwrap().last_sequence, last);
    let (_, page, _) = get(&app, "/ui/processes/parent", None).await;
    assert!(
        page.contains(r#"id="timeline-failed" sse-swap="failed,cleared""#),
        "{page}"
    );
    let (_, fragment, _) = get(&app, "/ui/processes/parent/record", None).await;
    assert!(fragment.contains("data-child=\"kid\""), "{fragment}");
}

/// A login lives in the memory of the server that made it: another node
/// (or the same one restarted) does not know it, and asks for a login
/// again; a CSRF token another node drew is refused.
#[tokio::test]
async fn a_login_is_the_servers_that_made_it() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let (a, b) = (app(&p, false), app(&p, false));
    let cookie = login_as(&a, "host").await;
    let (status, html, _) = get(&a, "/ui/processes/ext-1", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (status, _, headers) = get(&b, "/ui/processes/ext-1", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/login?next=%2Fui%2Fprocesses%2Fext-1");
    let other = login_as(&b, "host").await;
    let cancel = cancel_ext_1(&other, &csrf_of(&html), "from+another+node");
    let (status, fragment, _) = send(&b, cancel).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{fragment}");
    assert!(fragment.contains("csrf_refused"), "{fragment}");
    assert!(p.get("ext-1").await.unwrap().cancel_request.is_none());
}

fn csrf_of(html: &str) -> String {
    html.split("name=\"cairn-csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string()
}

async fn schedule(p: &Processes, body: serde_json::Value) {
    let request = cairn_core::ScheduleRequest::from_json(body).expect("schedule request");
    p.create_schedule(request).await.expect("create schedule");
}

#[tokio::test]
async fn the_schedules_page_lists_pauses_and_resumes_for_the_host_only() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let template = json!({"input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    schedule(
        &p,
        json!({"id": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Paris", "start": template, "overlap": "skip"}),
    )
    .await;
    schedule(
        &p,
        json!({"id": "tick", "every": "10s", "start": template, "overlap": "allow"}),
    )
    .await;
    // One fire of `tick`, so it has a last fire and a last process.
    clock.set(T0 + 10_000);
    let fired = p.fire_schedules().await.expect("fire");
    assert_eq!(fired.started, vec![format!("tick@{}", T0 + 10_000)]);

    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let s1_cookie = login_as(&app, "s1-token").await;
    let host = Some(host_cookie.as_str());
    let (status, html, _) = get(&app, "/ui/schedules", host).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("href=\"/ui/schedules\" aria-current=\"page\""),
        "nav link: {html}"
    );
    let rows: Vec<&str> = html.split("<tr data-schedule=\"").skip(1).collect();
    assert_eq!(rows.len(), 2, "{html}");
    let (nightly, tick) = (rows[0], rows[1]);
    assert!(nightly.starts_with("nightly\" data-state=\"active\""), "{nightly}");
    assert!(nightly.contains("30 2 * * *") && nightly.contains("(Europe/Paris)") && nightly.contains(">skip<"));
    assert!(nightly.contains("never"), "no fire yet: {nightly}");
    assert!(
        tick.contains("every <code>10s</code>") && tick.contains(">allow<"),
        "{tick}"
    );
    let last = format!("href=\"/ui/processes/tick%40{}\"", T0 + 10_000);
    assert!(tick.contains(&last), "links the last process: {tick}");
    assert!(tick.contains("/ui/schedules/tick/pause"), "{tick}");
    let next = p.get_schedule("tick").await.unwrap().next_fire_ms;
    assert!(
        tick.contains(&format!("data-ms=\"{next}\"")),
        "shows the next fire: {tick}"
    );

    let csrf = csrf_of(&html);
    let post = |path: &str, cookie: &str, csrf: Option<&str>| {
        let mut r = Request::post(path).header(header::COOKIE, cookie);
        if let Some(t) = csrf {
            r = r.header("x-cairn-csrf", t);
        }
        r.body(Body::empty()).unwrap()
    };
    let (status, _, _) = send(&app, post("/ui/schedules/tick/pause", host_cookie.as_str(), None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    assert!(
        !p.get_schedule("tick").await.unwrap().paused,
        "the refused pause changed nothing"
    );

    let (status, row, _) = send(
        &app,
        post("/ui/schedules/tick/pause", host_cookie.as_str(), Some(&csrf)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert!(
        row.starts_with("<tr data-schedule=\"tick\" data-state=\"paused\""),
        "{row}"
    );
    assert!(row.contains("/ui/schedules/tick/resume"), "{row}");
    assert!(p.get_schedule("tick").await.unwrap().paused);

    clock.set(T0 + 25_000);
    let (status, row, _) = send(
        &app,
        post("/ui/schedules/tick/resume", host_cookie.as_str(), Some(&csrf)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert!(row.contains("data-state=\"active\""), "{row}");
    let resumed = p.get_schedule("tick").await.unwrap();
    assert!(!resumed.paused);
    assert_eq!(
        resumed.next_fire_ms,
        T0 + 30_000,
        "fires again from the first time after now"
    );

    // A schedule deleted since the page loaded: the runtime's error,
    // verbatim, shown above the table, and its row deleted out of band.
    let (_, page, _) = get(&app, "/ui/schedules", host).await;
    assert!(page.contains("id=\"schedule-row-nightly\""), "{page}");
    p.delete_schedule("nightly").await.expect("delete");
    let (status, html, headers) = send(
        &app,
        post("/ui/schedules/nightly/pause", host_cookie.as_str(), Some(&csrf)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.starts_with("<div class=\"result err\""), "{html}");
    assert!(html.contains("unknown_schedule"), "{html}");
    assert!(
        html.ends_with("<template><tr id=\"schedule-row-nightly\" hx-swap-oob=\"delete\"></tr></template>"),
        "{html}"
    );
    assert_eq!(headers["hx-retarget"], "#schedule-result");
    assert_eq!(headers["hx-reswap"], "innerHTML");
    schedule(
        &p,
        json!({"id": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Paris", "start": template, "overlap": "skip"}),
    )
    .await;

    // A session token: no nav link, the page and the actions are refused.
    let s1 = Some(s1_cookie.as_str());
    let (_, html, _) = get(&app, "/ui/processes", s1).await;
    assert!(!html.contains("href=\"/ui/schedules\""), "{html}");
    let (status, html, _) = get(&app, "/ui/schedules", s1).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("forbidden") && !html.contains("nightly"), "{html}");
    let session_csrf = csrf_of(&html);
    let (status, _, _) = send(
        &app,
        post("/ui/schedules/nightly/pause", s1_cookie.as_str(), Some(&session_csrf)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!p.get_schedule("nightly").await.unwrap().paused);
}

#[tokio::test]
async fn the_schedules_page_pages_by_id() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let template = json!({"input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    let mut expected = Vec::new();
    for i in 0..130 {
        let id = format!("s{i:03}");
        schedule(
            &p,
            json!({"id": id, "every": "1h", "start": template, "overlap": "skip"}),
        )
        .await;
        expected.push(id);
    }
    let app = app(&p, true);
    let mut seen = Vec::new();
    let mut next = Some("/ui/schedules".to_string());
    while let Some(path) = next {
        let (status, html, _) = get(&app, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        seen.extend(
            html.split("<tr data-schedule=\"")
                .skip(1)
                .map(|s| s.split('"').next().unwrap().to_string()),
        );
        next = older(&html);
        assert!(seen.len() <= expected.len(), "paging repeats rows");
    }
    assert_eq!(seen, expected);
}

/// A stand-in for the JavaScript engine: a module's exports are its
/// `export async function NAME` lines. (Nothing runs: the runtimes here have no worker.)
struct ExportLines;

#[async_trait]
impl cairn_core::ScriptEngine for ExportLines {
    fn exports(&self, source: &str) -> cairn_core::Result<Vec<String>> {
        Ok(source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export async function "))
            .filter_map(|rest| rest.split('(').next())
            .map(|name| name.trim().to_string())
            .collect())
    }

    async fn run(
        &self,
        _ctx: cairn_core::ToolContext,
        _module: cairn_core::Module,
        _process_name: String,
        _args: serde_json::Value,
    ) -> cairn_core::Outcome {
        cairn_core::Outcome::failure("test", "not_run", "these tests run no worker")
    }
}

fn scripted_runtime(clock: &Arc<ManualClock>) -> Processes {
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    Processes::builder(registry)
        .clock(clock.clone())
        .script_engine(Arc::new(ExportLines))
        .without_worker()
        .start()
}

async fn put_module(p: &Processes, source: &str, name: Option<&str>) -> String {
    p.put_module(source.to_string(), name.map(str::to_string))
        .await
        .expect("put module")
        .module
        .module_ref
}

async fn start_script(p: &Processes, id: &str, module_ref: &str, export: &str, session: Option<&str>) {
    let input = cairn_core::ProcessInput::Script {
        module_ref: module_ref.to_string(),
        process_name: export.to_string(),
        args: json!({}),
    };
    let mut req = StartRequest::new(id, input, Disposition::Rerunnable);
    if let Some(s) = session {
        req = req.with_grant(SessionScope::session(s), GrantDescriptor::default());
    }
    p.start(req).await.expect("start script");
}

/// The `href` of the first link with class `class`, HTML-unescaped.
fn link_of(html: &str, class: &str) -> String {
    let marker = format!("<a class=\"{class}\" href=\"");
    let at = html.find(&marker).unwrap_or_else(|| panic!("no {marker}: {html}"));
    html[at + marker.len()..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&")
}

const DEPLOY: &str = r#"// Ships a build. <script>alert("pwned")</script> & more
export async function deploy(ctx, args) {
  return "<b>done</b>";
}
export async function rollback(ctx, args) {
  return null;
}
"#;

#[tokio::test]
async fn the_modules_page_lists_modules_and_a_module_shows_exports_escaped_source_and_its_scripts() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = scripted_runtime(&clock);
    let deploy = put_module(&p, DEPLOY, Some("deploy <prod>.js")).await;
    let other = put_module(&p, "export async function other(ctx) {}\n", None).await;
    start_script(&p, "deploy-1", &deploy, "deploy", None).await;
    clock.set(T0 + 1_000);
    start_script(&p, "deploy-2", &deploy, "deploy", None).await;
    start_script(&p, "other-1", &other, "other", None).await;
    let app = app(&p, true);

    let (status, html, _) = get(&app, "/ui/modules", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("href=\"/ui/modules\" aria-current=\"page\""),
        "nav link: {html}"
    );
    let rows: Vec<&str> = html.split("<tr data-module=\"").skip(1).collect();
    assert_eq!(rows.len(), 2, "{html}");
    let row = rows
        .iter()
        .find(|r| r.starts_with(deploy.as_str()))
        .expect("the deploy module is listed");
    assert!(
        row.contains("<code><bdi>deploy</bdi></code>, <code><bdi>rollback</bdi></code>"),
        "exports: {row}"
    );
    assert!(row.contains("deploy &lt;prod&gt;.js"), "the name, escaped: {row}");
    let page = format!("/ui/modules/{}", deploy.replace(':', "%3A"));
    assert!(row.contains(&format!("href=\"{page}\"")), "links the module: {row}");

    let (status, html, _) = get(&app, &page, None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(&deploy), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; more"),
        "the source, escaped: {html}"
    );
    assert!(!html.contains("<script>alert"), "unescaped source: {html}");
    assert!(!html.contains("<b>done</b>"), "unescaped source: {html}");
    for export in ["deploy", "rollback"] {
        assert!(
            html.contains(&format!("<li data-export=\"{export}\"")),
            "{export}: {html}"
        );
    }
    // The newest scripts of each export, inline; none of another module's.
    let deploy_section = html
        .split("<section class=\"scripts\" data-export=\"deploy\">")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .expect("a section for deploy");
    assert_eq!(listed(deploy_section), vec!["deploy-2", "deploy-1"]);
    let rollback_section = html
        .split("<section class=\"scripts\" data-export=\"rollback\">")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .expect("a section for rollback");
    assert!(listed(rollback_section).is_empty(), "{rollback_section}");
    assert!(!listed(&html).contains(&"other-1".to_string()), "{html}");

    // The export's link is the list page filtered to its definition.
    let scripts = link_of(&html, "scripts");
    assert_eq!(
        scripts,
        format!(
            "/ui/processes?status=any&definition={}",
            format!("script:{deploy}#deploy")
                .replace(':', "%3A")
                .replace('#', "%23")
        )
    );
    let (status, html, _) = get(&app, &scripts.replace("/ui/processes?", "/ui/list/rows?"), None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(listed(&html), vec!["deploy-2", "deploy-1"]);

    // A ref nothing is stored under: a 404 page; a malformed one: the API's 400.
    let unknown = format!("/ui/modules/module%3Asha256%3A{}", "0".repeat(64));
    let (status, html, _) = get(&app, &unknown, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(html.contains("unknown_module") && html.contains("← Modules"), "{html}");
    let (status, html, _) = get(&app, "/ui/modules/nope", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("invalid_id"), "{html}");
}

/// A module of many exports lists the newest scripts of its first exports
/// only (each listing walks an index); every export keeps its link.
#[tokio::test]
async fn a_module_of_many_exports_lists_scripts_of_its_first_exports() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = scripted_runtime(&clock);
    let source: String = (1..=25)
        .map(|k| format!("export async function e{k:02}(ctx) {{ return {k}; }}\n"))
        .collect();
    let module = put_module(&p, &source, None).await;
    start_script(&p, "first", &module, "e01", None).await;
    start_script(&p, "last", &module, "e25", None).await;
    let app = app(&p, true);
    let page = format!("/ui/modules/{}", module.replace(':', "%3A"));
    let (status, html, _) = get(&app, &page, None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(html.matches("<section class=\"scripts\"").count(), 20, "{html}");
    assert!(html.contains("Listed for the first 20 exports of 25"), "{html}");
    assert_eq!(listed(&html), vec!["first"], "{html}");
    assert!(
        html.contains("<li data-export=\"e25\""),
        "every export keeps its link: {html}"
    );
}

#[tokio::test]
async fn the_modules_pages_need_a_login_and_show_a_session_only_its_scripts() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = scripted_runtime(&clock);
    let deploy = put_module(&p, DEPLOY, None).await;
    start_script(&p, "mine", &deploy, "deploy", Some("s1")).await;
    start_script(&p, "theirs", &deploy, "deploy", Some("s2")).await;
    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let s1_cookie = login_as(&app, "s1-token").await;
    let page = format!("/ui/modules/{}", deploy.replace(':', "%3A"));
    for path in ["/ui/modules", page.as_str()] {
        for cookie in [None, Some("cairn_ui=not-a-token")] {
            let (status, html, headers) = get(&app, path, cookie).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{path} with {cookie:?}");
            let location = headers[header::LOCATION].to_str().unwrap();
            assert!(
                location.starts_with("/ui/login?next=%2Fui%2Fmodules"),
                "{path}: {location}"
            );
            assert!(!html.contains("deploy"), "{path} leaked the module: {html}");
        }
    }
    let s1 = Some(s1_cookie.as_str());
    let (status, html, _) = get(&app, "/ui/modules", s1).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "modules are listed to sessions, as on the API: {html}"
    );
    assert!(html.contains(&format!("data-module=\"{deploy}\"")), "{html}");
    let (status, html, _) = get(&app, &page, s1).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(listed(&html), vec!["mine"], "a session sees only its own scripts");
    let (_, html, _) = get(&app, &page, Some(host_cookie.as_str())).await;
    assert_eq!(listed(&html), vec!["theirs", "mine"]);
}

#[tokio::test]
async fn the_modules_page_pages_by_ref() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = scripted_runtime(&clock);
    let mut expected = Vec::new();
    for i in 0..130 {
        expected.push(put_module(&p, &format!("export async function f{i}(ctx) {{}}\n"), None).await);
    }
    expected.sort();
    let app = app(&p, true);
    let mut seen = Vec::new();
    let mut next = Some("/ui/modules".to_string());
    while let Some(path) = next {
        let (status, html, _) = get(&app, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        seen.extend(
            html.split("<tr data-module=\"")
                .skip(1)
                .map(|s| s.split('"').next().unwrap().to_string()),
        );
        next = older(&html);
        assert!(seen.len() <= expected.len(), "paging repeats rows");
    }
    assert_eq!(seen, expected);
    let (status, html, _) = get(&app, "/ui/modules?colour=blue", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
}

/// The waiting panel says what a wait is for in full: a signal's deadline,
/// which children a `children` wait waits for, linked, and the other signals
/// that also end it.
#[tokio::test]
async fn a_waiting_process_shows_its_deadline_and_the_children_it_waits_for() {
    use cairn_core::model::{ChildrenMode, WaitRequest};
    use cairn_core::ProcessRegistry;
    let clock = Arc::new(ManualClock::new(T0));
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    let p = Processes::builder(registry.clone())
        .clock(clock.clone())
        .without_worker()
        .start();
    let waits = [
        ("by-signal", WaitRequest::signal("go", 1, Some(T0 + 60_000))),
        (
            "by-kids",
            WaitRequest::children(vec!["kid-a".into(), "kid-b".into()], ChildrenMode::Any, 1, None)
                .or_signals(vec!["stop".into()]),
        ),
    ];
    for (id, wait) in waits {
        p.start(StartRequest::tool(id, "anything", json!({}), Disposition::OwnerBound))
            .await
            .expect("start");
        for kid in wait.ids.iter().flatten() {
            let mut req = StartRequest::external(kid, json!({}));
            req.caused_by = Some(cairn_core::CausalRef::process(id));
            p.start(req).await.expect("start child");
        }
        let lease = registry.claim(id, "w1", 30_000).await.expect("claim");
        let seen = p.get(id).await.expect("get").last_sequence;
        assert!(registry.wait(&lease, wait, seen).await.expect("wait"), "{id} waits");
    }
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes/by-signal", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let panel = html.split("class=\"panel wait\"").nth(1).expect("a waiting panel");
    assert!(panel.contains(", until "), "the deadline is shown: {panel}");
    let (_, html, _) = get(&app, "/ui/processes/by-kids", None).await;
    let panel = html.split("class=\"panel wait\"").nth(1).expect("a waiting panel");
    assert!(panel.contains("any of "), "{panel}");
    assert!(
        panel.contains("or a signal <code>stop</code>"),
        "the other signals it waits for: {panel}"
    );
    for kid in ["kid-a", "kid-b"] {
        assert!(
            panel.contains(&format!("href=\"/ui/processes/{kid}\"")),
            "{kid} linked: {panel}"
        );
    }
}

/// Every action on a process that has ended would be refused: its page shows
/// none, and the live record fragment takes them off a page opened before the end.
#[tokio::test]
async fn a_process_that_has_ended_offers_no_actions() {
    use cairn_core::Outcome;
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "open").await;
    p.start(StartRequest::tool(
        "queued",
        "anything",
        json!({}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    external(&p, "done").await;
    p.complete_external("done", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    external(&p, "failed").await;
    p.complete_external("failed", Outcome::failure("process", "broke", "it broke"), "host")
        .await
        .expect("fail");
    p.start(StartRequest::tool(
        "stopped",
        "anything",
        json!({}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    // Nobody started it: cancelled at once.
    assert_eq!(
        p.cancel("stopped", None).await.expect("cancel").status.label(),
        "cancelled"
    );
    let app = app(&p, true);
    let forms = ["signal-form", "cancel-form", "abandon-form", "complete-form"];

    for (id, offered) in [("open", &forms[..]), ("queued", &forms[..3])] {
        let (status, html, _) = get(&app, &format!("/ui/processes/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        for form in forms {
            let shown = html.contains(&format!("id=\"{form}\""));
            assert_eq!(shown, offered.contains(&form), "{id}: {form} shown: {shown}: {html}");
        }
        assert!(!html.contains("class=\"empty ended\""), "{html}");
        let (_, fragment, _) = get(&app, &format!("/ui/processes/{id}/record"), None).await;
        assert!(!fragment.contains("action-forms"), "{fragment}");
    }
    for (id, label) in [("done", "completed"), ("failed", "failed"), ("stopped", "cancelled")] {
        let (status, html, _) = get(&app, &format!("/ui/processes/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains(&format!("data-status=\"{label}\"")), "{id}: {html}");
        assert!(
            !html.contains("<form class=\"action\""),
            "{id} offers an action: {html}"
        );
        for form in forms {
            assert!(!html.contains(&format!("id=\"{form}\"")), "{id}: {form}: {html}");
        }
        assert!(html.contains("This process has ended"), "{html}");
        // The live re-render of the record swaps the forms out of an open page.
        let (status, fragment, _) = get(&app, &format!("/ui/processes/{id}/record"), None).await;
        assert_eq!(status, StatusCode::OK, "{fragment}");
        assert!(
            fragment.contains("<div id=\"action-forms\" hx-swap-oob=\"true\"><p class=\"empty ended\">"),
            "{fragment}"
        );
    }
}

/// A session following a process's live page stops reading its log once the
/// grant is gone: the next page of events is refused, and the stream ends.
#[tokio::test]
async fn a_session_live_stream_stops_when_its_grant_is_revoked() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let scope = SessionScope::session("s1");
    p.start(
        StartRequest::external("mine", json!({}))
            .with_event_type(cairn_core::EventType::plain("note"))
            .with_grant(scope.clone(), GrantDescriptor::default()),
    )
    .await
    .unwrap();
    let app = app(&p, false);
    let s1_cookie = login_as(&app, "s1-token").await;
    let req = Request::get("/ui/processes/mine/live")
        .header(header::COOKIE, s1_cookie.as_str())
        .body(Body::empty())
        .unwrap();
    let r = app.clone().oneshot(req).await.expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body().into_data_stream();
    let mut seen = String::new();
    p.append_event("mine", cairn_core::AppendRequest::new("note", json!({"n": "first"})))
        .await
        .unwrap();
    assert!(
        read_until(&mut body, &mut seen, "first").await,
        "the first note is shown"
    );
    assert!(p.revoke(&scope, "mine").await.unwrap());
    p.append_event("mine", cairn_core::AppendRequest::new("note", json!({"n": "second"})))
        .await
        .unwrap();
    assert!(
        read_until(&mut body, &mut seen, "event: failed").await,
        "the next page is refused"
    );
    assert!(
        read_until(&mut body, &mut seen, "event: end").await,
        "then `end`, which closes the page's stream for good (not a reconnect to fail again)"
    );
    assert!(
        !read_until(&mut body, &mut seen, "second").await,
        "and the stream ends without it"
    );
    assert!(seen.contains("unknown_process"), "{seen}");
}

/// A page's stream opened again for a process since pruned (or never
/// there, or not the viewer's) answers the failure and `end` as a stream
/// (an `EventSource` reads no error page, and the page would reconnect for
/// ever, showing the process as it last saw it).
#[tokio::test]
async fn a_stream_reopened_for_a_process_gone_says_so_and_ends() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    let (status, body, headers) = get(&app, "/ui/processes/ghost/live?after=1", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream", "{body}");
    let failed = body.find("event: failed").expect("the failure is told");
    let end = body.find("event: end").expect("then `end`");
    assert!(failed < end && body.contains("unknown_process"), "{body}");
}

/// While events flow faster than a page reads its record (it reads a
/// moment after each `record`, and each restarts that moment), the stream
/// tells `record` at most once per 300 ms, so the page still reads it now
/// and then; before, it told one after every page of events and a busy
/// process's record panel stood still until the flow stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_process_page_is_told_to_read_its_record_now_and_then() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(StartRequest::external("busy", json!({})).with_event_type(cairn_core::EventType::plain("note")))
        .await
        .unwrap();
    let app = app(&p, true);
    let r = app
        .clone()
        .oneshot(Request::get("/ui/processes/busy/live").body(Body::empty()).unwrap())
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body().into_data_stream();
    let last = p.get("busy").await.unwrap().last_sequence + 60;
    // Read as the events flow, as a browser does.
    let reader = tokio::spawn(async move {
        let mut seen = String::new();
        let all = read_until(&mut body, &mut seen, &format!("id: {last}\n")).await;
        (all, seen)
    });
    let started = std::time::Instant::now();
    for n in 0..60 {
        p.append_event("busy", cairn_core::AppendRequest::new("note", json!({"n": n})))
            .await
            .expect("append");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let flow = started.elapsed();
    let (all, seen) = reader.await.expect("reader");
    assert!(all, "every event is told: {seen}");
    let records = seen.matches("event: record").count();
    let most = (flow.as_secs_f64() / 0.3).ceil() as usize + 3;
    assert!(
        (2..=most).contains(&records),
        "{records} `record` events over a flow of {flow:?} (at most {most})"
    );
}

/// Read `body` into `seen` until it holds `want` (`true`) or the body ends
/// (`false`); bounded.
async fn read_until(body: &mut axum::body::BodyDataStream, seen: &mut String, want: &str) -> bool {
    read_until_within(body, seen, want, 10).await
}

/// [`read_until`], bounded by `secs`.
async fn read_until_within(body: &mut axum::body::BodyDataStream, seen: &mut String, want: &str, secs: u64) -> bool {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(secs), async {
        while !seen.contains(want) {
            match body.next().await {
                Some(Ok(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return false,
            }
        }
        true
    })
    .await
    .expect("in time")
}

/// A live list (`/ui/list/live`) of the viewer `cookie` names, over `p`.
/// A live list of a dashboard following `p`'s hub, logged in with `token`:
/// the dashboard, the stream, and the login's cookie.
async fn live_list(p: &Processes, token: &str) -> (Router, axum::body::BodyDataStream, String) {
    let access = Arc::new(TestAccess {
        processes: p.clone(),
        open: false,
    });
    let app = Dashboard::new(p.clone(), access, ChangeNotice::from_hub(p.hub()), Default::default()).router();
    let cookie = login_as(&app, token).await;
    let r = app
        .clone()
        .oneshot(
            Request::get("/ui/list/live")
                .header(header::COOKIE, cookie.as_str())
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    (app, r.into_body().into_data_stream(), cookie)
}

/// The next `changed` event of a live list; keep-alive comments are skipped.
/// Without one within the bound the list would stay stale, which is the failure.
async fn changed(stream: &mut axum::body::BodyDataStream) {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let chunk = stream.next().await.expect("the stream stays open").expect("a chunk");
            if String::from_utf8_lossy(&chunk).contains("event: changed") {
                return;
            }
        }
    })
    .await
    .expect("a `changed` event")
}

/// One write that changes more processes than a session viewer's stream
/// checks one by one (a tree cancel of a host's fan-out) still tells the
/// viewer's list when one of its own is among them, however far down.
#[tokio::test]
async fn a_session_list_hears_its_own_change_in_a_crowded_batch() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(StartRequest::external("fan", json!({}))).await.unwrap();
    // The session's child first (so the history names it early) and last
    // in the cancel's order (children by id).
    let mut own =
        StartRequest::external("fan/zz", json!({})).with_grant(SessionScope::session("s1"), GrantDescriptor::default());
    own.caused_by = Some(cairn_core::CausalRef::process("fan"));
    p.start(own).await.unwrap();
    for i in 0..80 {
        child(&p, &format!("fan/{i:02}"), "fan").await;
    }
    let (_app, mut stream, _) = live_list(&p, "s1-token").await;
    changed(&mut stream).await; // the one on connecting
    changed(&mut stream).await; // the history, which names the session's child first
    let cancelled = p.registry().request_cancel("fan", Some("enough".into())).await.unwrap();
    assert_eq!(cancelled.descendants.len(), 81);
    changed(&mut stream).await;
}

/// A page of the change feed cut at its bytes is not the feed's end: behind
/// a history of large records (three pages of them), a session's list hears
/// its own new process at once, not a fallback read later.
#[tokio::test]
async fn a_list_hears_a_change_behind_a_history_of_large_records() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let big = "z".repeat(900 * 1024);
    for i in 0..12 {
        p.start(StartRequest::external(format!("big-{i:02}"), json!({ "blob": big })))
            .await
            .unwrap();
    }
    let (_app, mut stream, _) = live_list(&p, "s1-token").await;
    changed(&mut stream).await; // the one on connecting
    p.start(
        StartRequest::external("mine", json!({})).with_grant(SessionScope::session("s1"), GrantDescriptor::default()),
    )
    .await
    .unwrap();
    use futures::StreamExt;
    // Well inside the fallback read (5 s), which would also tell it.
    let heard = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        loop {
            let chunk = stream.next().await.expect("the stream stays open").expect("a chunk");
            if String::from_utf8_lossy(&chunk).contains("event: changed") {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the list did not hear its new process");
}

/// A live list renders again when a grant moves, is revoked or its session is
/// deleted: no record changes, so the change feed alone never says so.
#[tokio::test]
async fn live_lists_hear_grants_move_and_sessions_go() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(
        StartRequest::external("moved", json!({})).with_grant(SessionScope::session("s2"), GrantDescriptor::default()),
    )
    .await
    .unwrap();
    let (app, mut stream, s1_cookie) = live_list(&p, "s1-token").await;
    let cookie = Some(s1_cookie.as_str());
    changed(&mut stream).await; // the one on connecting
    let (_, html, _) = get(&app, "/ui/list/rows", cookie).await;
    assert!(listed(&html).is_empty(), "{html}");

    p.transfer(
        &SessionScope::session("s2"),
        &SessionScope::session("s1"),
        &["moved".into()],
    )
    .await
    .unwrap();
    changed(&mut stream).await;
    let (_, html, _) = get(&app, "/ui/list/rows", cookie).await;
    assert_eq!(listed(&html), vec!["moved"]);

    p.delete_session("s1").await.unwrap();
    changed(&mut stream).await;
    let (_, html, _) = get(&app, "/ui/list/rows", cookie).await;
    assert!(listed(&html).is_empty(), "{html}");
}

/// A session page shows at most 200 rows a list; past that it says so and
/// links to the whole list, newest first, instead of cutting it silently.
#[tokio::test]
async fn a_long_session_list_says_it_is_cut_and_links_to_all() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    for i in 0..201 {
        let start = StartRequest::external(format!("g{i}"), json!({}))
            .with_grant(SessionScope::session("big s"), GrantDescriptor::default());
        p.start(start).await.unwrap();
    }
    p.start(
        StartRequest::external("one", json!({})).with_grant(SessionScope::session("small"), GrantDescriptor::default()),
    )
    .await
    .unwrap();
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/sessions?session=big%20s", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(listed(&html).len(), 200);
    assert!(html.contains("(first 200)"), "{html}");
    let (status, all, _) = get(&app, "/ui/processes?status=any&lens=granted_to&session=big%20s", None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(
        html.contains("href=\"/ui/processes?status=any&amp;lens=granted_to&amp;session=big%20s\""),
        "{html}"
    );
    let (_, html, _) = get(&app, "/ui/sessions?session=small", None).await;
    assert_eq!(listed(&html), vec!["one"]);
    assert!(html.contains("(1)") && !html.contains("All of them"), "{html}");
}

/// A fire the start path refused shows on its schedule's row, code and
/// message, until a fire starts a process.
#[tokio::test]
async fn a_refused_fire_shows_on_its_schedule_row() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let template = json!({"input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    schedule(
        &p,
        json!({"id": "tick", "every": "10s", "start": template, "overlap": "allow"}),
    )
    .await;
    // Another start takes the first fire's id, so that fire is refused.
    p.start(StartRequest::external(
        format!("tick@{}", T0 + 10_000),
        json!({"other": true}),
    ))
    .await
    .expect("start");
    clock.set(T0 + 10_000);
    let fired = p.fire_schedules().await.expect("fire");
    assert_eq!(fired.refused, vec![format!("tick@{}", T0 + 10_000)]);
    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let (status, html, _) = get(&app, "/ui/schedules", Some(host_cookie.as_str())).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let row = html.split("<tr data-schedule=\"tick\"").nth(1).expect("the row");
    assert!(
        row.contains("refused") && row.contains("registration_conflict"),
        "{row}"
    );
    clock.set(T0 + 20_000);
    assert_eq!(p.fire_schedules().await.expect("fire").started.len(), 1);
    let (_, html, _) = get(&app, "/ui/schedules", Some(host_cookie.as_str())).await;
    let row = html.split("<tr data-schedule=\"tick\"").nth(1).expect("the row");
    assert!(
        !row.contains("registration_conflict"),
        "cleared once a fire started: {row}"
    );
}

/// A path, query or form the dashboard cannot read is answered 400 with the
/// `invalid_request` fragment (or, for the login form, the login page saying
/// why), never axum's plain-text rejection that htmx would swap in raw.
#[tokio::test]
async fn unreadable_paths_queries_and_forms_are_said_in_the_page() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let open = app(&p, true);
    let (_, page, _) = get(&open, "/ui/processes", None).await;
    let ack = Request::post("/ui/sessions/%FF/wakes/w/ack")
        .header("x-cairn-csrf", csrf_of(&page))
        .body(Body::empty())
        .unwrap();
    let (status, html, _) = send(&open, ack).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("invalid_request"), "{html}");
    for query in ["after=x", "after=-1"] {
        let (status, html, _) = get(&open, &format!("/ui/processes/ext-1/live?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {html}");
        assert!(html.contains("invalid_request"), "{query}: {html}");
    }
    let closed = app(&p, false);
    // Not the login page's form: said on the login page, in cairn's words
    // (naming the field), and nobody is logged in.
    for (content_type, body, status, said) in [
        (
            "application/x-www-form-urlencoded",
            "next=%2Fui",
            StatusCode::BAD_REQUEST,
            "the login form carried no token: sign in from this page",
        ),
        (
            "application/x-www-form-urlencoded",
            "user=host",
            StatusCode::BAD_REQUEST,
            "unknown field `user`: this form takes `token` and `next`; sign in from this page",
        ),
        (
            "application/x-www-form-urlencoded",
            "token=host&token=host",
            StatusCode::BAD_REQUEST,
            "field `token` given twice; sign in from this page",
        ),
        (
            "text/plain",
            "token=host",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms must be sent with `Content-Type: application/x-www-form-urlencoded`; sign in from this page",
        ),
    ] {
        let login = Request::post("/ui/login")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let (got, html, headers) = send(&closed, login).await;
        assert_eq!(got, status, "{body}: {html}");
        assert!(html.contains(said), "{body}: {html}");
        assert!(!html.contains("Failed to"), "{html}");
        assert!(headers.get(header::SET_COOKIE).is_none());
    }
}

/// Vendored assets (versioned names) are cached for good; the stylesheet and
/// page script are asked for again each time and answered 304 while the
/// browser's copy is current.
#[tokio::test]
async fn assets_are_cached_by_version_or_by_tag() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    let (status, _, headers) = get(&app, "/ui/assets/htmx-2.0.11.min.js", None).await;
    assert_eq!(status, StatusCode::OK);
    let cache = headers[header::CACHE_CONTROL].to_str().unwrap();
    assert!(
        cache.contains("max-age=31536000") && cache.contains("immutable"),
        "{cache}"
    );
    for asset in ["/ui/assets/app.js", "/ui/assets/app.css"] {
        let (status, body, headers) = get(&app, asset, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        let tag = headers[header::ETAG].to_str().unwrap().to_string();
        let again = Request::get(asset)
            .header(header::IF_NONE_MATCH, &tag)
            .body(Body::empty())
            .unwrap();
        let (status, body, _) = send(&app, again).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{asset}");
        assert!(body.is_empty(), "{asset}");
        let stale = Request::get(asset)
            .header(header::IF_NONE_MATCH, "\"old\"")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, stale).await.0, StatusCode::OK, "{asset}");
    }
}

/// Two servers on one machine keep their logins apart: the cookie is named
/// by the port the browser reached (browsers keep cookies by host alone).
#[tokio::test]
async fn a_login_cookie_is_named_by_the_servers_port() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let login = login_post("token=host", &[("host", "127.0.0.1:7070")]);
    let (_, _, headers) = send(&app, login).await;
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.starts_with("cairn_ui_7070="), "{set}");
    let cookie = cookie_pair(&set).to_string();
    let page = |host: &str| {
        Request::get("/ui/processes")
            .header(header::HOST, host)
            .header(header::COOKIE, cookie.as_str())
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, page("127.0.0.1:7070")).await.0, StatusCode::OK);
    assert_eq!(
        send(&app, page("127.0.0.1:7071")).await.0,
        StatusCode::SEE_OTHER,
        "another port's login is not this server's"
    );
}

/// A process writing steadily does not flood a live list: its `changed`
/// events come at most one per spacing (300 ms), so the list's own short
/// delay ends between them and it re-renders; the last change is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_process_tells_a_live_list_at_a_steady_pace() {
    use futures::StreamExt;
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "busy").await;
    let (_app, mut stream, _) = live_list(&p, "host").await;
    changed(&mut stream).await; // the one on connecting
    let writer = {
        let p = p.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                p.signal("busy", "tick", &format!("t{i}"), json!(i))
                    .await
                    .expect("signal");
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        })
    };
    let mut told = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(2_500);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until, stream.next()).await {
        if String::from_utf8_lossy(&chunk).contains("event: changed") {
            told.push(tokio::time::Instant::now());
        }
    }
    writer.await.expect("writer");
    // 30 changes over about a second, read for 2.5 s: one `changed` per
    // 300 ms at most is 9 (each change told alone would be about 30).
    assert!(!told.is_empty(), "the changes were told");
    assert!(told.len() <= 10, "{} `changed` events", told.len());
}

/// What the process page's scripts build on: the record panel names the
/// signal the process waits for now (the form's proposal follows it), the
/// input panel is kept open across the panel's re-render, the signal name's
/// pattern compiles under the `v` flag browsers use, completing asks first,
/// and a list row's link has an id (htmx gives focus back by id).
#[tokio::test]
async fn the_process_page_carries_what_its_scripts_need() {
    use cairn_core::model::WaitRequest;
    use cairn_core::ProcessRegistry;
    let clock = Arc::new(ManualClock::new(T0));
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    let p = Processes::builder(registry.clone())
        .clock(clock.clone())
        .without_worker()
        .start();
    p.start(StartRequest::tool("w", "anything", json!({}), Disposition::OwnerBound))
        .await
        .expect("start");
    let lease = registry.claim("w", "w1", 30_000).await.expect("claim");
    let seen = p.get("w").await.expect("get").last_sequence;
    assert!(registry
        .wait(&lease, WaitRequest::signal("second", 2, None), seen)
        .await
        .expect("wait"));
    external(&p, "ext").await;
    let app = app(&p, true);

    let (status, fragment, _) = get(&app, "/ui/processes/w/record", None).await;
    assert_eq!(status, StatusCode::OK, "{fragment}");
    assert!(fragment.contains("data-signal=\"second\""), "{fragment}");
    assert!(
        fragment.contains("<details class=\"panel input\" id=\"record-input\" hx-preserve=\"true\">"),
        "{fragment}"
    );
    let (_, html, _) = get(&app, "/ui/processes/w", None).await;
    assert!(
        html.contains(r#"value="second" data-proposed="second" required pattern="[A-Za-z0-9_\-]+""#),
        "{html}"
    );
    assert!(!html.contains("id=\"complete-form\""), "{html}");

    let (_, html, _) = get(&app, "/ui/processes/ext", None).await;
    let complete = html.split("id=\"complete-form\"").nth(1).expect("a complete form");
    let complete = complete.split('>').next().unwrap_or_default();
    assert!(
        complete.contains("hx-confirm=\""),
        "completing asks nothing first: {complete}"
    );
    assert!(html.contains("data-signal=\"\""), "{html}");

    let (_, rows, _) = get(&app, "/ui/list/rows?status=any", None).await;
    for id in ["w", "ext"] {
        assert!(
            rows.contains(&format!("<a id=\"row-{id}\" href=\"/ui/processes/{id}\">")),
            "{rows}"
        );
    }
}

/// An abandon request's answer says what the record shows: this request
/// recorded (reconciled once the lease lapses, or shortly when there is no
/// lease), an earlier one standing with nothing new recorded, or the
/// process already ended.
#[tokio::test]
async fn an_abandon_request_says_what_the_record_shows() {
    use cairn_core::ProcessRegistry;
    let clock = Arc::new(ManualClock::new(T0));
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    let p = Processes::builder(registry.clone())
        .clock(clock.clone())
        .without_worker()
        .start();
    p.start(StartRequest::tool(
        "leased",
        "anything",
        json!({}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    registry.claim("leased", "w1", 30_000).await.expect("claim");
    // A lease that lapsed before the request (its owner gone) is no lease
    // to wait for.
    p.start(StartRequest::tool(
        "lapsed",
        "anything",
        json!({}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    registry.claim("lapsed", "gone", 1_000).await.expect("claim");
    external(&p, "ext").await;
    external(&p, "ended").await;
    let app = app(&p, true);
    let (_, page, _) = get(&app, "/ui/processes", None).await;
    // A browser without scripts is told what does not work, and what does.
    assert!(
        page.contains("<noscript><p class=\"result err\" role=\"alert\">This dashboard needs JavaScript"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let abandon = |id: &str, reason: &str| {
        Request::post(format!("/ui/processes/{id}/abandon"))
            .header("x-cairn-csrf", &csrf)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("reason={reason}")))
            .unwrap()
    };

    let (status, note, _) = send(&app, abandon("leased", "stuck")).await;
    assert_eq!(status, StatusCode::OK, "{note}");
    assert!(
        note.contains("abandon request recorded; it is reconciled once the lease lapses"),
        "{note}"
    );
    // A second request (another reason, or the same again) records nothing:
    // the first one stands.
    for reason in ["other", "stuck"] {
        let (status, note, _) = send(&app, abandon("leased", reason)).await;
        assert_eq!(status, StatusCode::OK, "{note}");
        assert!(
            note.contains("already recorded and stands; nothing new was recorded")
                && note.contains("by host")
                && note.contains("once the lease lapses")
                && !note.contains("abandon request recorded"),
            "{reason}: {note}"
        );
    }
    assert_eq!(p.get("leased").await.unwrap().abandon_request.unwrap().reason, "stuck");

    clock.advance(5_000);
    let (status, note, _) = send(&app, abandon("lapsed", "owner gone")).await;
    assert_eq!(status, StatusCode::OK, "{note}");
    assert!(
        note.contains("abandon request recorded; it is reconciled shortly") && !note.contains("lease"),
        "{note}"
    );
    // No lease (externally owned): no lease to lapse.
    let (status, note, _) = send(&app, abandon("ext", "gone")).await;
    assert_eq!(status, StatusCode::OK, "{note}");
    assert!(
        note.contains("abandon request recorded; it is reconciled shortly") && !note.contains("lease"),
        "{note}"
    );

    // Ended since its request: said, with its status, nothing recorded.
    let (status, note, _) = send(&app, abandon("ended", "first")).await;
    assert_eq!(status, StatusCode::OK, "{note}");
    p.complete_external("ended", cairn_core::Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let (status, note, _) = send(&app, abandon("ended", "again")).await;
    assert_eq!(status, StatusCode::OK, "{note}");
    assert!(
        note.contains("nothing new was recorded: the process has ended; the process is completed")
            && !note.contains("abandon request recorded"),
        "{note}"
    );
}

/// A page's address with a slash after it (as people and browsers add one)
/// is that page, its query kept: a list, and a process's or a module's page
/// when what comes before the slash names one (an id's own `/` is encoded
/// in its address); what is not an id is refused as without the slash, and
/// anything else there is no page.
#[tokio::test]
async fn a_trailing_slash_is_the_page_with_its_query() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    let module = format!("module:sha256:{}", "ab".repeat(32));
    let mut moved = vec![
        ("/ui/".to_string(), "/ui".to_string()),
        ("/ui/?status=any".into(), "/ui?status=any".into()),
        (
            "/ui/processes/?status=failed".into(),
            "/ui/processes?status=failed".into(),
        ),
        (
            "/ui/processes/?definition=script%3Aab%23main&status=any".into(),
            "/ui/processes?definition=script%3Aab%23main&status=any".into(),
        ),
        ("/ui/sessions/?session=s1".into(), "/ui/sessions?session=s1".into()),
        ("/ui/processes/ext-1/".into(), "/ui/processes/ext-1".into()),
        (
            "/ui/processes/repo%2Fissue-12/?tab=events".into(),
            "/ui/processes/repo%2Fissue-12?tab=events".into(),
        ),
        // An id may end in `/`: encoded, it is not the slash after the page.
        ("/ui/processes/repo%2F/".into(), "/ui/processes/repo%2F".into()),
        (format!("/ui/modules/{module}/"), format!("/ui/modules/{module}")),
        (
            format!("/ui/modules/{module}/?x=1"),
            format!("/ui/modules/{module}?x=1"),
        ),
    ];
    for page in ["/ui/processes", "/ui/sessions", "/ui/modules", "/ui/schedules"] {
        moved.push((format!("{page}/"), page.to_string()));
    }
    for (from, to) in &moved {
        let (status, _, headers) = get(&app, from, None).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "{from}");
        assert_eq!(headers[header::LOCATION], to.as_str(), "{from}");
    }
    for nothing in ["/ui/processes//", "/ui/processes/a/b/"] {
        let (status, html, _) = get(&app, nothing, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{nothing}");
        assert!(html.contains("not_found"), "{nothing}: {html}");
    }
    // What is not an id is said as the page without the slash says it.
    for bad in ["/ui/processes/%2E%2E", "/ui/processes/a%01"] {
        let (status, html, _) = get(&app, bad, None).await;
        let (slashed, slashed_html, _) = get(&app, &format!("{bad}/"), None).await;
        assert_eq!(
            (status, slashed),
            (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST),
            "{bad}"
        );
        assert_eq!(slashed_html, html, "{bad}");
        assert!(
            html.contains(r#"<code class="code">invalid_id</code>"#),
            "{bad}: {html}"
        );
        assert!(html.contains("← Processes"), "{bad}: {html}");
    }
}

/// The page a link from another site gets loads the browser's own address
/// again (the fragment, `#ev-2`, never reaches the server), with a refresh
/// to the address the server saw for a browser without scripts; the login
/// carries the fragment along in `next`, and goes back to it.
#[tokio::test]
async fn the_cross_site_reload_and_the_login_keep_the_fragment() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, false);
    let followed = Request::get("/ui/processes/ext-1?from=2")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    let (status, html, headers) = send(&app, followed).await;
    assert_eq!(status, StatusCode::OK);
    let script = html
        .split("<script>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .expect("a script");
    assert!(
        script.contains("var to = location.href;")
            && script.contains(r#"history.replaceState(null, "", "/ui/login");"#)
            && script.ends_with("location.replace(to);"),
        "{html}"
    );
    assert!(
        html.contains(
            r#"<noscript><meta http-equiv="refresh" content="0; url=/ui/processes/ext-1?from=2"></noscript>"#
        ),
        "the refresh only without scripts (it would go to the address without its fragment): {html}"
    );
    assert!(html.find("<script>") < html.find("<noscript>"), "{html}");
    // The CSP admits the inline script by its hash, no other inline one.
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self' 'sha256-") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    let (status, html, _) = get(&app, "/ui/login?next=%2Fui%2Fprocesses%2Fext-1%3Ffrom%3D2", None).await;
    assert_eq!(status, StatusCode::OK);
    let form_end = html.find("</form>").expect("a form");
    let script = html
        .split("<script>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .expect("a script on the login page");
    assert!(html.find("<script>") > Some(form_end), "after the form: {html}");
    assert!(
        script.contains(r#"document.querySelector("form input[name=next]")"#)
            && script.contains("next.value += location.hash"),
        "{script}"
    );
    let back = login_post("token=host&next=%2Fui%2Fprocesses%2Fext-1%3Ffrom%3D2%23ev-2", &[]);
    let (status, _, headers) = send(&app, back).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/processes/ext-1?from=2#ev-2");
}

/// A path segment that is not UTF-8 is said in a page with the navigation
/// to a browser navigating to it, as other bad addresses are; htmx gets the
/// fragment it shows in place.
#[tokio::test]
async fn a_path_that_is_not_utf8_is_a_page_or_a_fragment() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    for path in ["/ui/processes/%ff%fe", "/ui/modules/%ff"] {
        let (status, html, headers) = get(&app, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"),
            "{path}"
        );
        assert!(
            html.starts_with("<!DOCTYPE html>")
                && html.contains("<title>")
                && html.contains("<nav>")
                && html.contains("invalid_request"),
            "{path}: {html}"
        );
    }
    let (_, html, _) = get(&app, "/ui/modules/%ff", None).await;
    assert!(html.contains(r#"href="/ui/modules" aria-current="page""#), "{html}");
    for path in ["/ui/processes/%ff%fe", "/ui/modules/%ff", "/ui/processes/%ff/record"] {
        let fragment = Request::get(path)
            .header("hx-request", "true")
            .body(Body::empty())
            .unwrap();
        let (status, html, _) = send(&app, fragment).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            html.starts_with(r#"<div class="result err""#) && html.contains("invalid_request"),
            "{path}: {html}"
        );
    }
}

/// Pages declare their icon, so the browser does not ask the server for
/// `/favicon.ico` (the API's JSON 404) on every page.
#[tokio::test]
async fn pages_and_the_login_declare_an_icon() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let (_, html, _) = get(&app(&p, true), "/ui/processes", None).await;
    assert!(html.contains(r#"<link rel="icon" href="data:,">"#), "{html}");
    let (status, html, _) = get(&app(&p, false), "/ui/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"<link rel="icon" href="data:,">"#), "{html}");
}

/// The question before completing names the outcome's type with no article
/// that depends on it ("a “abandoned” outcome").
#[tokio::test]
async fn the_complete_question_reads_for_any_outcome_type() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let script = get(&app(&p, true), "/ui/assets/app.js", None).await.1;
    assert!(
        script.contains(r#""Complete this process with an outcome of type \u201c" + type + "\u201d?"#),
        "{script}"
    );
    assert!(!script.contains(r#"with a \u201c"#), "{script}");
}

/// The text of a page, its tags (and their attributes) left out.
fn text_of(html: &str) -> String {
    html.split('<')
        .map(|s| s.split_once('>').map_or(s, |(_, text)| text))
        .collect()
}

/// Ids, session ids and labels holding bidi controls or invisible format
/// characters are shown with each as its escape, set apart (`span.fmt`), in
/// titles, headings, rows and links' text; links keep the real id.
#[tokio::test]
async fn ids_with_bidi_or_invisible_characters_are_shown_escaped() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let rlo = "invoice-\u{202e}gnp.exe";
    let zw = "zw\u{200b}\u{200b}x";
    let session = "s\u{2066}1";
    p.start(StartRequest::external(rlo, json!({})).with_grant(
        SessionScope::session(session),
        GrantDescriptor {
            label: Some("lab\u{feff}el".into()),
            ..GrantDescriptor::default()
        },
    ))
    .await
    .unwrap();
    external(&p, zw).await;
    let app = app(&p, true);
    let raw = ['\u{202e}', '\u{200b}', '\u{2066}', '\u{feff}'];
    let shown_rlo = r#"<bdi>invoice-<span class="fmt" title="U+202E">\u202e</span>gnp.exe</bdi>"#;
    let shown_zw =
        r#"<bdi>zw<span class="fmt" title="U+200B">\u200b</span><span class="fmt" title="U+200B">\u200b</span>x</bdi>"#;

    let (status, html, _) = get(&app, "/ui/processes?status=any", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text_of(&html).contains(raw), "a raw format character shown: {html}");
    assert!(
        html.contains(&format!(
            r#"href="/ui/processes/invoice-%E2%80%AEgnp.exe">{shown_rlo}</a>"#
        )),
        "{html}"
    );
    assert!(
        html.contains(&format!(r#"href="/ui/processes/zw%E2%80%8B%E2%80%8Bx">{shown_zw}</a>"#)),
        "{html}"
    );
    // The row keeps the real id where no one reads it.
    assert!(html.contains(&format!(r#"data-id="{rlo}""#)), "{html}");

    let (status, html, _) = get(&app, "/ui/processes/invoice-%E2%80%AEgnp.exe", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"<title>invoice-\u202egnp.exe · cairn</title>"#),
        "{html}"
    );
    assert!(
        html.contains(&format!("<h1 class=\"pid\"><code>{shown_rlo}</code></h1>")),
        "{html}"
    );
    // The process page's live stream and forms address the real id.
    assert!(html.contains("/ui/processes/invoice-%E2%80%AEgnp.exe/live"), "{html}");

    let (status, html, _) = get(&app, "/ui/sessions?session=s%E2%81%A61", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(r#"Granted to <code><bdi>s<span class="fmt" title="U+2066">\u2066</span>1</bdi></code>"#),
        "{html}"
    );
    assert!(html.contains(shown_rlo), "{html}");
    assert!(
        html.contains(r#"<small class="hint"><bdi>lab<span class="fmt" title="U+FEFF">\ufeff</span>el</bdi></small>"#),
        "{html}"
    );
    assert!(!text_of(&html).contains(raw), "{html}");
    // The form keeps what was asked for.
    assert!(html.contains(&format!(r#"value="{session}""#)), "{html}");

    // A process page that is refused names the id escaped too.
    let (status, html, _) = get(&app, "/ui/processes/nope%E2%80%AE", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains(r#"<title>nope\u202e · cairn</title>"#), "{html}");
}

/// `a`, U+202E, `b`, U+200B, `c`: what each text below holds.
const FMT: &str = "a\u{202e}b\u{200b}c";
/// [`FMT`] as a page shows it.
const FMT_SHOWN: &str =
    r#"a<span class="fmt" title="U+202E">\u202e</span>b<span class="fmt" title="U+200B">\u200b</span>c"#;

/// Whether `html`'s text holds U+202E or U+200B as they are.
fn shows_raw(html: &str) -> bool {
    text_of(html).contains(['\u{202e}', '\u{200b}'])
}

/// Text callers and producers give, beyond ids, is shown with bidi
/// controls and invisible format characters escaped, as ids are: an error
/// quoting it, a failure's message and a reason; a module's name, exports
/// and source; a lease's owner; an external ref.
#[tokio::test]
async fn caller_and_producer_text_is_shown_escaped() {
    use cairn_core::ProcessRegistry;
    let clock = Arc::new(ManualClock::new(T0));
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    let p = Processes::builder(registry.clone())
        .clock(clock.clone())
        .script_engine(Arc::new(ExportLines))
        .without_worker()
        .start();
    let app = app(&p, true);

    // 1. Errors: a page's, a fragment's, a failure's message, a reason.
    let (status, html, _) = get(&app, "/ui/processes/a%E2%80%AEb%E2%80%8Bc", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(
        html.contains(&format!(
            r#"<span class="message">unknown process `{FMT_SHOWN}`</span>"#
        )),
        "{html}"
    );
    assert!(!shows_raw(&html), "{html}");
    let (status, html, _) = get(&app, "/ui/processes/a%E2%80%AEb%E2%80%8Bc/record", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(html.contains(FMT_SHOWN) && !shows_raw(&html), "{html}");
    external(&p, "failed").await;
    p.complete_external("failed", cairn_core::Outcome::failure("test", "bad", FMT), "host")
        .await
        .expect("complete");
    external(&p, "asked").await;
    p.request_abandon("asked", "host", FMT).await.expect("abandon");
    for (id, shown) in [
        ("failed", format!("&quot;message&quot;: &quot;{FMT_SHOWN}&quot;")),
        ("asked", format!(": {FMT_SHOWN}</p>")),
    ] {
        let (status, html, _) = get(&app, &format!("/ui/processes/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains(&shown) && !shows_raw(&html), "{id}: {html}");
    }

    // 2. A module's name, exports and source, on the list and its page.
    let export = format!("go{FMT}");
    let source = format!("// {FMT}\nexport async function {export}(ctx) {{}}\n");
    let module = put_module(&p, &source, Some(FMT)).await;
    start_script(&p, "script-1", &module, &export, None).await;
    let (status, html, _) = get(&app, "/ui/modules", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(&format!("<td><bdi>{FMT_SHOWN}</bdi></td>")),
        "name: {html}"
    );
    assert!(
        html.contains(&format!(
            r#"<td class="exports"><code><bdi>go{FMT_SHOWN}</bdi></code></td>"#
        )),
        "export: {html}"
    );
    assert!(!shows_raw(&html), "{html}");
    let (status, html, _) = get(&app, &format!("/ui/modules/{}", module.replace(':', "%3A")), None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(&format!("<h1><bdi>{FMT_SHOWN}</bdi></h1>")),
        "name: {html}"
    );
    assert!(html.contains(r#"<title>a\u202eb\u200bc · cairn</title>"#), "{html}");
    assert!(
        html.contains(&format!(
            "<li data-export=\"{export}\"><code><bdi>go{FMT_SHOWN}</bdi></code>"
        )),
        "export: {html}"
    );
    assert!(
        html.contains(&format!("<h3><code><bdi>go{FMT_SHOWN}</bdi></code></h3>")),
        "scripts: {html}"
    );
    assert!(
        html.contains(&format!("<pre class=\"source\">// {FMT_SHOWN}\n")),
        "source: {html}"
    );
    assert!(!shows_raw(&html), "{html}");
    // The definition the processes list shows names the export.
    let (_, html, _) = get(&app, "/ui/processes?status=any", None).await;
    assert!(html.contains(&format!("#go{FMT_SHOWN}</bdi></code>")), "{html}");
    assert!(!shows_raw(&html), "{html}");

    // 3. A lease's owner.
    p.start(StartRequest::tool(
        "leased",
        "anything",
        json!({}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    registry.claim("leased", FMT, 30_000).await.expect("claim");
    let (status, html, _) = get(&app, "/ui/processes/leased", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(&format!("held by <code><bdi>{FMT_SHOWN}</bdi></code>")),
        "{html}"
    );
    assert!(!shows_raw(&html), "{html}");

    // 4. An external ref: the other system's name and the work's id there.
    let mut start = StartRequest::external("linked", json!({}));
    start.external_ref = Some(cairn_core::ExternalRef {
        backend: format!("sys{FMT}"),
        id: format!("id{FMT}"),
        metadata: None,
    });
    p.start(start).await.expect("start");
    let (status, html, _) = get(&app, "/ui/processes/linked", None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(&format!(
            r#"<dd class="external"><bdi>sys{FMT_SHOWN}</bdi> <code><bdi>id{FMT_SHOWN}</bdi></code></dd>"#
        )),
        "{html}"
    );
    assert!(!shows_raw(&html), "{html}");
}

/// A module page for a ref that is not a module ref says so (400), and one
/// for a ref no module is stored under says that (404), with a slash after
/// it or not, as a process's page does for a bad or unknown id.
#[tokio::test]
async fn a_bad_or_unknown_module_ref_is_said_in_its_page() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = scripted_runtime(&clock);
    let app = app(&p, true);
    let nav = r#"href="/ui/modules" aria-current="page""#;
    for path in ["/ui/modules/m1", "/ui/modules/m1/", "/ui/modules/m1%E2%80%AE/"] {
        let (status, html, _) = get(&app, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {html}");
        assert!(
            html.contains(r#"<code class="code">invalid_id</code>"#)
                && html.contains("This is not a valid module ref.")
                && html.contains("← Modules")
                && html.contains(nav),
            "{path}: {html}"
        );
        assert!(!html.contains("no such page"), "{path}: {html}");
        assert!(!shows_raw(&html), "{path}: {html}");
    }
    let (_, html, _) = get(&app, "/ui/modules/m1%E2%80%AE/", None).await;
    assert!(
        html.contains(
            r#"<h1 class="pid">Module <code><bdi>m1<span class="fmt" title="U+202E">\u202e</span></bdi></code></h1>"#
        ),
        "{html}"
    );
    let unknown = format!("/ui/modules/module%3Asha256%3A{}", "0".repeat(64));
    let (status, _, headers) = get(&app, &format!("{unknown}/"), None).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], unknown.as_str());
    let (status, html, _) = get(&app, &unknown, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(
        html.contains(r#"<code class="code">unknown_module</code>"#)
            && html.contains("No module with this ref is stored.")
            && html.contains(nav),
        "{html}"
    );
    // A stored one is its page.
    let stored = put_module(&p, "export async function f(ctx) {}\n", None).await;
    let (status, html, _) = get(&app, &format!("/ui/modules/{}", stored.replace(':', "%3A")), None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
}

/// A form post to an action (`POST /ui/processes/{id}/signal`, ...).
fn form_post(path: &str, csrf: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::post(path).header("x-cairn-csrf", csrf);
    if let Some(t) = content_type {
        r = r.header(header::CONTENT_TYPE, t);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// The text of an error fragment's message, unescaped as a browser shows it.
fn said(html: &str) -> String {
    html.split("<span class=\"message\">")
        .nth(1)
        .and_then(|s| s.split("</span>").next())
        .unwrap_or(html)
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

/// An action's form is read as the API reads a body: a field the page's
/// form does not have, one given twice or one left out is refused (400,
/// naming the field, in cairn's words), as is another content type (415)
/// or a query string, and the refused request changes nothing. What the
/// page's own forms send is taken.
#[tokio::test]
async fn action_forms_refuse_fields_they_do_not_take_and_change_nothing() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, true);
    let (_, page, _) = get(&app, "/ui/processes/ext-1", None).await;
    let csrf = csrf_of(&page);
    let before = p.get("ext-1").await.unwrap();
    let refused = [
        (
            "signal",
            FORM,
            "name=go&signal_id=b&payload=1&bogus=1&also_unknown=2",
            StatusCode::BAD_REQUEST,
            "unknown field `bogus`: this form takes `name`, `signal_id` and `payload`",
        ),
        (
            "signal",
            FORM,
            "name=go&signal_id=b&name=stop",
            StatusCode::BAD_REQUEST,
            "field `name` given twice",
        ),
        (
            "signal",
            FORM,
            "signal_id=b",
            StatusCode::BAD_REQUEST,
            "missing field `name`",
        ),
        (
            "signal",
            FORM,
            "name=go&signal_id=%FF",
            StatusCode::BAD_REQUEST,
            "the form holds `%FF`, which does not decode to UTF-8 text",
        ),
        (
            "cancel",
            FORM,
            "reason=x&bogus=1",
            StatusCode::BAD_REQUEST,
            "unknown field `bogus`: this form takes only `reason`",
        ),
        (
            "cancel",
            FORM,
            "=x",
            StatusCode::BAD_REQUEST,
            "a field has no name: this form takes only `reason`",
        ),
        (
            "abandon",
            FORM,
            "reason=x&reason=y",
            StatusCode::BAD_REQUEST,
            "field `reason` given twice",
        ),
        (
            "complete",
            FORM,
            "",
            StatusCode::BAD_REQUEST,
            "missing field `outcome`",
        ),
        (
            "complete",
            FORM,
            "outcome=%7B%22type%22%3A%22success%22%7D&by=me",
            StatusCode::BAD_REQUEST,
            "unknown field `by`: this form takes only `outcome`",
        ),
        (
            "cancel",
            Some("text/plain"),
            "reason=x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms must be sent with `Content-Type: application/x-www-form-urlencoded`",
        ),
        (
            "cancel",
            Some("application/json"),
            "{\"reason\":\"x\"}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms must be sent with `Content-Type: application/x-www-form-urlencoded`",
        ),
        (
            "cancel",
            Some("application/json"),
            "",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms must be sent with `Content-Type: application/x-www-form-urlencoded`",
        ),
        (
            "cancel",
            None,
            "reason=x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms must be sent with `Content-Type: application/x-www-form-urlencoded`",
        ),
        (
            "cancel",
            Some("application/x-www-form-urlencoded; charset=latin1"),
            "reason=x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms are read as UTF-8: `charset=latin1` is not supported",
        ),
        (
            "cancel?reason=x",
            FORM,
            "",
            StatusCode::BAD_REQUEST,
            "`POST /ui/processes/ext-1/cancel` takes no query parameters (got `reason=x`): a form's fields go in its body",
        ),
    ];
    for (action, content_type, body, status, message) in refused {
        let path = format!("/ui/processes/ext-1/{action}");
        let (got, html, _) = send(&app, form_post(&path, &csrf, content_type, body)).await;
        assert_eq!(got, status, "{action} {body}: {html}");
        assert!(
            html.contains("<code class=\"code\">invalid_request</code>"),
            "{action} {body}: {html}"
        );
        assert_eq!(said(&html), message, "{action} {body}");
        assert!(!html.contains("Failed to") && !html.contains("Form requests"), "{html}");
    }
    let after = p.get("ext-1").await.unwrap();
    assert_eq!(after.last_sequence, before.last_sequence, "no signal was appended");
    assert!(after.cancel_request.is_none(), "no cancel was recorded");
    assert!(after.abandon_request.is_none(), "no abandon was requested");
    assert!(!after.is_terminal());

    // What the page's forms send (htmx posts every field, empty or not,
    // as `application/x-www-form-urlencoded`) is taken, charset or not.
    let taken = [
        ("signal", FORM, "name=go&signal_id=g1&payload=%7B%7D"),
        (
            "signal",
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            "name=go&signal_id=g2&payload=",
        ),
        ("cancel", FORM, "reason="),
    ];
    for (action, content_type, body) in taken {
        let path = format!("/ui/processes/ext-1/{action}");
        let (got, html, _) = send(&app, form_post(&path, &csrf, content_type, body)).await;
        assert_eq!(got, StatusCode::OK, "{action} {body}: {html}");
    }
    let after = p.get("ext-1").await.unwrap();
    assert_eq!(
        after.last_sequence,
        before.last_sequence + 3,
        "two signals and the cancel request were appended"
    );
    assert!(after.cancel_request.is_some());
}

/// The buttons that post no field (pause, resume, acknowledge, log out)
/// refuse one, above their table as their other refusals show, and the
/// refused request changes nothing; a bare `POST`, or htmx's empty form, is
/// taken.
#[tokio::test]
async fn buttons_refuse_fields_and_change_nothing() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let template = json!({"input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    schedule(
        &p,
        json!({"id": "tick", "every": "10s", "start": template, "overlap": "allow"}),
    )
    .await;
    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let host = host_cookie.as_str();
    let (_, html, _) = get(&app, "/ui/schedules", Some(host)).await;
    let csrf = csrf_of(&html);
    let post = |path: &str, content_type: Option<&str>, body: &str| {
        let mut r = form_post(path, &csrf, content_type, body);
        r.headers_mut().insert(header::COOKIE, host.parse().unwrap());
        r
    };
    for (content_type, body, status, message) in [
        (
            FORM,
            "x=1",
            StatusCode::BAD_REQUEST,
            "unknown field `x`: this action takes no fields",
        ),
        (
            Some("text/plain"),
            "",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "forms must be sent with `Content-Type: application/x-www-form-urlencoded`",
        ),
    ] {
        let (got, html, headers) = send(&app, post("/ui/schedules/tick/pause", content_type, body)).await;
        assert_eq!(got, status, "{html}");
        assert_eq!(said(&html), message);
        assert_eq!(
            headers.get("hx-retarget").and_then(|v| v.to_str().ok()),
            Some("#schedule-result")
        );
        assert!(
            !p.get_schedule("tick").await.unwrap().paused,
            "the refused pause changed nothing"
        );
    }
    let (got, row, _) = send(&app, post("/ui/schedules/tick/pause", FORM, "")).await;
    assert_eq!(got, StatusCode::OK, "{row}");
    assert!(p.get_schedule("tick").await.unwrap().paused);
    let (got, html, _) = send(&app, post("/ui/schedules/tick/resume", FORM, "paused=false")).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        p.get_schedule("tick").await.unwrap().paused,
        "the refused resume changed nothing"
    );
    let (got, _, _) = send(&app, post("/ui/schedules/tick/resume", None, "")).await;
    assert_eq!(got, StatusCode::OK);
    assert!(!p.get_schedule("tick").await.unwrap().paused);

    // Logging out with a field is refused, and the cookie stays.
    let (got, html, headers) = send(&app, post("/ui/logout", FORM, "everywhere=1")).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(said(&html), "unknown field `everywhere`: this action takes no fields");
    assert!(headers.get(header::SET_COOKIE).is_none());
    let (got, _, headers) = send(&app, post("/ui/logout", FORM, "")).await;
    assert_eq!(got, StatusCode::OK);
    assert!(headers.get(header::SET_COOKIE).is_some());
}

/// A wake's acknowledge button posts no field: one with a field is refused
/// above the table, and the wake stays pending.
#[tokio::test]
async fn an_ack_with_a_field_is_refused_and_the_wake_stays() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    waking(&p, "w-1", json!({"session_id": "s1"}), Some("s1")).await;
    progress(&p, "w-1", "hi").await;
    let app = app(&p, true);
    let (_, html, _) = get(&app, "/ui/sessions?session=s1", None).await;
    let csrf = csrf_of(&html);
    let wake_id = p.wakes("s1", None).await.unwrap()[0].wake_id.clone();
    let path = format!("/ui/sessions/s1/wakes/{wake_id}/ack");
    let (got, html, headers) = send(&app, form_post(&path, &csrf, FORM, "all=true")).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(said(&html), "unknown field `all`: this action takes no fields");
    assert_eq!(
        headers.get("hx-retarget").and_then(|v| v.to_str().ok()),
        Some("#wake-result")
    );
    assert_eq!(p.wakes("s1", None).await.unwrap().len(), 1, "the wake is still pending");
    let (got, html, _) = send(&app, form_post(&path, &csrf, FORM, "")).await;
    assert_eq!(got, StatusCode::OK, "{html}");
    assert!(p.wakes("s1", None).await.unwrap().is_empty());
}

/// A page's query is refused in the words the API uses for the same
/// mistakes: the processes list's as `GET /v1/processes` says them
/// (`invalid_filter`), the other pages' as the API's listings do; never in
/// the HTTP framework's.
#[tokio::test]
async fn bad_queries_are_said_in_cairns_words() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, true);
    let keys = "`status`, `waiting`, `lens`, `session`, `definition`, `originator`, `caused_by`, \
                `created_from`, `created_before`, `before` and `size`";
    for (path, status, code, message) in [
        (
            "/ui/list/rows?bogus=1".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            format!("unknown filter key `bogus`: this route takes {keys}"),
        ),
        (
            "/ui/list/rows?limit=-1".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            format!("unknown filter key `limit`: this route takes {keys}"),
        ),
        (
            "/ui/list/rows?status=running&status=any".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            "filter key `status` given twice".to_string(),
        ),
        (
            "/ui/processes?status=running&status=any".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            "filter key `status` given twice".to_string(),
        ),
        (
            "/ui/list/rows?definition=%FF".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            "the query holds `%FF`, which does not decode to UTF-8 text".to_string(),
        ),
        (
            "/ui/processes/ext-1?bogus=1".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown query parameter `bogus`: this route takes `all` and `from`".to_string(),
        ),
        (
            "/ui/processes/ext-1?from=x".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`from` must be a non-negative integer, got `x`".to_string(),
        ),
        (
            "/ui/processes/ext-1?all=maybe".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`all` must be `true` or `false`, got `maybe`".to_string(),
        ),
        (
            "/ui/processes/ext-1/live?after=-1".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`after` must be a non-negative integer, got `-1`".to_string(),
        ),
        (
            "/ui/modules?after=a&after=b".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`after` is given twice".to_string(),
        ),
        (
            "/ui/schedules?limit=5".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown query parameter `limit`: this route takes only `after`".to_string(),
        ),
        (
            "/ui/sessions?id=s1".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown query parameter `id`: this route takes only `session`".to_string(),
        ),
    ] {
        let (got, html, _) = get(&app, &path, None).await;
        assert_eq!(got, status, "{path}: {html}");
        assert!(
            html.contains(&format!("<code class=\"code\">{code}</code>")),
            "{path}: {html}"
        );
        assert_eq!(said(&html), message, "{path}");
        assert!(!html.contains("Failed to deserialize"), "{path}: {html}");
    }
    // What the filter form sends (every field, empty ones too) is read.
    let form = "/ui/list/rows?status=running&waiting=&lens=all&session=&definition=&originator=\
                &caused_by=&created_from=&created_before=";
    let (got, html, _) = get(&app, form, None).await;
    assert_eq!(got, StatusCode::OK, "{html}");
}

/// The routes the pages ask for by a bare address (the live list stream,
/// the record fragment) and a module's page take no query: one sent is
/// refused, not ignored, as on every other page; what the pages themselves
/// ask for is answered. A modules cursor that is no module ref is refused as
/// `GET /v1/modules` refuses it.
#[tokio::test]
async fn routes_without_a_query_refuse_one_and_a_bad_module_cursor_is_refused() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = scripted_runtime(&clock);
    external(&p, "ext-1").await;
    let module = put_module(&p, "export async function f(ctx) {}\n", None).await;
    let app = app(&p, true);
    let none = "unknown query parameter `bogus`: this route takes no parameters".to_string();
    for (path, code, message) in [
        ("/ui/list/live?bogus=1".to_string(), "invalid_request", none.clone()),
        (
            "/ui/processes/ext-1/record?bogus=1".to_string(),
            "invalid_request",
            none.clone(),
        ),
        (format!("/ui/modules/{module}?bogus=1"), "invalid_request", none.clone()),
        (
            format!("/ui/modules/{module}?after=1&after=2"),
            "invalid_request",
            "unknown query parameter `after`: this route takes no parameters".to_string(),
        ),
        (
            "/ui/modules?after=bogus".to_string(),
            "invalid_id",
            "invalid id: `after` is the last module ref of a page: ".to_string(),
        ),
    ] {
        // The status first: a stream answered 200 would never end.
        let r = app
            .clone()
            .oneshot(Request::get(&path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let html = String::from_utf8_lossy(&body);
        assert!(
            html.contains(&format!("<code class=\"code\">{code}</code>")),
            "{path}: {html}"
        );
        assert!(said(&html).starts_with(&message), "{path}: {}", said(&html));
    }
    // What the pages ask for is answered.
    let (got, page, _) = get(&app, "/ui/processes/ext-1", None).await;
    assert_eq!(got, StatusCode::OK);
    assert!(page.contains("hx-get=\"/ui/processes/ext-1/record\""), "{page}");
    let (got, html, _) = get(&app, "/ui/processes/ext-1/record", None).await;
    assert_eq!(got, StatusCode::OK, "{html}");
    let (got, list, _) = get(&app, "/ui/processes", None).await;
    assert_eq!(got, StatusCode::OK);
    assert!(list.contains("sse-connect=\"/ui/list/live\""), "{list}");
    let r = app
        .clone()
        .oneshot(Request::get("/ui/list/live").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (got, html, _) = get(&app, &format!("/ui/modules/{module}"), None).await;
    assert_eq!(got, StatusCode::OK, "{html}");
    let (got, html, _) = get(&app, &format!("/ui/modules?after={module}"), None).await;
    assert_eq!(got, StatusCode::OK, "{html}");
    assert!(html.contains("No more modules."), "{html}");
    let (got, html, _) = get(&app, "/ui/modules?after=", None).await;
    assert_eq!(got, StatusCode::OK, "{html}");
    assert!(html.contains(&format!("data-module=\"{module}\"")), "{html}");
}

/// A created range that holds no time is refused naming the form's fields,
/// with the times as its pickers show them, not the API's parameters in
/// milliseconds.
#[tokio::test]
async fn an_empty_created_range_is_said_in_the_forms_terms() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, true);
    for path in [
        "/ui/processes?created_from=2026-12-07T04:00&created_before=2026-12-07T03:00",
        "/ui/list/rows?created_from=2026-12-07T04:00&created_before=2026-12-07T03:00",
    ] {
        let (got, html, _) = get(&app, path, None).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{path}: {html}");
        assert!(html.contains("<code class=\"code\">invalid_filter</code>"), "{html}");
        assert_eq!(
            said(&html),
            "invalid filter: `created_from` 2026-12-07T04:00 UTC is not before `created_before` 2026-12-07T03:00 UTC: \
             the range holds no time (`created_from` is inclusive, `created_before` exclusive)",
            "{path}"
        );
    }
    let (got, html, _) = get(
        &app,
        "/ui/processes?created_from=2026-12-07T03:00:05.250&created_before=2026-12-07T03:00:05.250",
        None,
    )
    .await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        said(&html).starts_with("invalid filter: `created_from` 2026-12-07T03:00:05.250 UTC is not before"),
        "{html}"
    );
    let (got, html, _) = get(
        &app,
        "/ui/processes?created_from=2026-12-07T03:00&created_before=2026-12-07T04:00",
        None,
    )
    .await;
    assert_eq!(got, StatusCode::OK, "{html}");
}

/// A JSON payload or outcome nested past the parser's own limit is said as
/// the 64 level limit (as the API says it), not as where the parser stopped;
/// nothing is done.
#[tokio::test]
async fn a_payload_nested_past_the_parser_is_said_as_the_level_limit() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, true);
    let (_, page, _) = get(&app, "/ui/processes/ext-1", None).await;
    let csrf = csrf_of(&page);
    let logged = p.events("ext-1", 0, None).await.unwrap().events.len();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let encoded = deep.replace('[', "%5B").replace(']', "%5D");
    let (got, html, _) = send(
        &app,
        form_post(
            "/ui/processes/ext-1/signal",
            &csrf,
            FORM,
            &format!("name=go&signal_id=s1&payload={encoded}"),
        ),
    )
    .await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(
        said(&html),
        "payload nests arrays and objects 200 levels deep, over the 64 level limit"
    );
    // A string holding brackets is not nesting.
    let outcome = format!("{{\"type\":\"success\",\"value\":{{\"s\":\"[[[\\\"\",\"v\":{deep}}}}}");
    let encoded: String = url_encode(&outcome);
    let (got, html, _) = send(
        &app,
        form_post(
            "/ui/processes/ext-1/complete",
            &csrf,
            FORM,
            &format!("outcome={encoded}"),
        ),
    )
    .await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{html}");
    assert_eq!(
        said(&html),
        "outcome nests arrays and objects 202 levels deep, over the 64 level limit"
    );
    assert!(!p.get("ext-1").await.unwrap().is_terminal(), "nothing was done");
    assert_eq!(
        p.events("ext-1", 0, None).await.unwrap().events.len(),
        logged,
        "no signal was sent"
    );
}

/// `s` percent-encoded for a form body.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A lens's session box and the sessions page read an agent frame's scope
/// (`SESSION/frame:FRAME`) as the API reads `granted_to`: a session token
/// lists its own frames' grants, a value no scope can have is
/// `invalid_filter`, and another session's frame is 403.
#[tokio::test]
async fn a_session_box_names_an_agent_frame_as_the_api_does() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(
        StartRequest::external("whole", json!({})).with_grant(SessionScope::session("s1"), GrantDescriptor::default()),
    )
    .await
    .expect("start");
    p.start(
        StartRequest::external("framed", json!({}))
            .with_grant(SessionScope::frame("s1", "f"), GrantDescriptor::default()),
    )
    .await
    .expect("start");
    let app = app(&p, false);
    let host_cookie = login_as(&app, "host").await;
    let s1_cookie = login_as(&app, "s1-token").await;
    let session = Some(s1_cookie.as_str());
    let host = Some(host_cookie.as_str());
    for cookie in [session, host] {
        let (status, html, _) = get(
            &app,
            "/ui/list/rows?status=any&lens=granted_to&session=s1/frame:f",
            cookie,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{cookie:?}: {html}");
        assert_eq!(listed(&html), vec!["framed"], "{cookie:?}");
        let (status, html, _) = get(
            &app,
            "/ui/processes?status=any&lens=granted_to&session=s1/frame:f",
            cookie,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{cookie:?}: {html}");
        assert_eq!(listed(&html), vec!["framed"], "{cookie:?}");
        // The session's own scope is not its frames'.
        let (_, html, _) = get(&app, "/ui/list/rows?status=any&lens=granted_to&session=s1", cookie).await;
        assert_eq!(listed(&html), vec!["whole"], "{cookie:?}");
        let (status, html, _) = get(&app, "/ui/sessions?session=s1/frame:f", cookie).await;
        assert_eq!(status, StatusCode::OK, "{cookie:?}: {html}");
        assert!(
            html.contains("/ui/processes/framed") && !html.contains("/ui/processes/whole"),
            "{html}"
        );
        // A frame no scope can have: the API's code, naming what was read.
        for bad in ["s1/frame:", "/frame:f"] {
            let (status, html, _) = get(&app, &format!("/ui/list/rows?lens=granted_to&session={bad}"), cookie).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {html}");
            assert!(
                html.contains("invalid_filter") && html.contains("`granted_to`"),
                "{bad}: {html}"
            );
            let (status, html, _) = get(&app, &format!("/ui/sessions?session={bad}"), cookie).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {html}");
            assert!(html.contains("invalid_filter"), "{bad}: {html}");
        }
    }
    // The host lists a frame through the provenance lens too.
    let (status, html, _) = get(
        &app,
        "/ui/list/rows?status=any&lens=originated_by&session=s1/frame:f",
        host,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    // Another session's frame is another session's state.
    let (status, html, _) = get(&app, "/ui/list/rows?lens=granted_to&session=s2/frame:f", session).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("only address its own session"), "{html}");
    let (status, html, _) = get(&app, "/ui/sessions?session=s2/frame:f", session).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("only address its own session"), "{html}");
}

/// The complete form reads its outcome as the API and MCP read one: the
/// three types a completion takes are named, and a refused one changes
/// nothing.
#[tokio::test]
async fn the_complete_form_names_the_outcomes_a_completion_takes() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "x3").await;
    let app = app(&p, true);
    let (_, page, _) = get(&app, "/ui/processes", None).await;
    let csrf = csrf_of(&page);
    let complete = |outcome: &str| {
        let body = format!("outcome={}", url_encode(outcome));
        form_post("/ui/processes/x3/complete", &csrf, FORM, &body)
    };
    let (status, html, _) = send(&app, complete(r#"{"type":"nope"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    let message = said(&html);
    assert!(
        message.contains("unknown variant `nope`, expected one of `success`, `failure`, `cancelled`")
            && !message.contains("abandoned"),
        "{message}"
    );
    let (status, html, _) = send(&app, complete(r#""done""#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    let message = said(&html);
    assert!(
        message.contains("(`success`, `failure` or `cancelled`)") && !message.contains("abandoned"),
        "{message}"
    );
    assert!(!p.get("x3").await.unwrap().is_terminal());
    let (status, html, _) = send(&app, complete(r#"{"type":"success","value":1}"#)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(p.get("x3").await.unwrap().is_terminal());
}

/// A cancel answered for a process that had ended says what `cairn cancel`
/// says: a retry of the request that cancelled it, or of one recorded
/// before it ended, changed nothing; one that reached the running children
/// of an ended parent says so.
#[tokio::test]
async fn a_cancel_of_an_ended_process_says_what_it_did() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(StartRequest::tool(
        "c1",
        "sleep",
        json!({"ms": 600_000}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    external(&p, "cz").await;
    external(&p, "par").await;
    child(&p, "par-kid", "par").await;
    let app = app(&p, true);
    let (_, page, _) = get(&app, "/ui/processes", None).await;
    let csrf = csrf_of(&page);
    let cancel = |id: &str, reason: &str| {
        form_post(
            &format!("/ui/processes/{id}/cancel"),
            &csrf,
            FORM,
            &format!("reason={reason}"),
        )
    };
    let note = |html: &str| text_of(html).trim().to_string();

    // Nobody had started it: this request cancelled it. Again, a retry.
    let (status, html, _) = send(&app, cancel("c1", "r")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        note(&html).contains("cancellation requested; the process is cancelled"),
        "{html}"
    );
    let last = p.get("c1").await.unwrap().last_sequence;
    let (status, html, _) = send(&app, cancel("c1", "r")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        note(&html).contains("the process was already cancelled: this repeats the request that cancelled it"),
        "{html}"
    );
    assert_eq!(
        p.get("c1").await.unwrap().last_sequence,
        last,
        "the retry wrote nothing"
    );

    // Recorded for its owner, which then completed it: the retry changed nothing.
    let (status, html, _) = send(&app, cancel("cz", "")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        note(&html).contains("cancellation requested; the process is running"),
        "{html}"
    );
    p.complete_external("cz", cairn_core::Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let last = p.get("cz").await.unwrap().last_sequence;
    let (status, html, _) = send(&app, cancel("cz", "")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        note(&html).contains(
            "the process had already ended (completed); this repeats the cancellation requested before it ended, \
             and changed nothing"
        ),
        "{html}"
    );
    assert_eq!(
        p.get("cz").await.unwrap().last_sequence,
        last,
        "the retry wrote nothing"
    );

    // An ended parent: the request went to its running child.
    p.complete_external("par", cairn_core::Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let (status, html, _) = send(&app, cancel("par", "e")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        note(&html)
            .contains("the process had already ended (completed); the cancellation went to its running children")
            && !note(&html).contains("cancellation requested"),
        "{html}"
    );
    let kid = p.get("par-kid").await.unwrap();
    assert_eq!(kid.cancel_request.and_then(|c| c.reason).as_deref(), Some("e"));
}

/// The value of the cookie `set` (a `Set-Cookie` header) sets.
fn cookie_value(set: &str) -> &str {
    cookie_pair(set).split_once('=').unwrap().1
}

/// The login cookie names a login the server holds, never the token: a
/// random id, another for each login; the token itself, or an id the server
/// did not hand out, is no login.
#[tokio::test]
async fn the_login_cookie_holds_a_random_id_not_the_token() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let first = login_as(&app, "host").await;
    let second = login_as(&app, "host").await;
    for cookie in [&first, &second] {
        let id = cookie.strip_prefix("cairn_ui=").unwrap();
        assert!(id.len() >= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{cookie}");
        assert!(!id.contains("host"), "{cookie}");
        assert_eq!(get(&app, "/ui/processes", Some(cookie)).await.0, StatusCode::OK);
    }
    assert_ne!(first, second);
    let forged = format!("cairn_ui={}", "0".repeat(64));
    for cookie in ["cairn_ui=host", "cairn_ui=s1-token", forged.as_str(), "cairn_ui="] {
        let (status, _, headers) = get(&app, "/ui/processes", Some(cookie)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{cookie}");
        assert_eq!(
            headers[header::LOCATION],
            "/ui/login?next=%2Fui%2Fprocesses",
            "{cookie}"
        );
    }
    // Posted from a page served over HTTPS (a TLS proxy in front), as the
    // browser says in `Origin`: the cookie goes over HTTPS only.
    let over_tls = login_post(
        "token=host",
        &[
            ("origin", "https://cairn.example.com"),
            ("sec-fetch-site", "same-origin"),
        ],
    );
    let (status, _, headers) = send(&app, over_tls).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    assert!(!cookie_value(set).contains("host"), "{set}");
}

/// Logging out ends the login on the server: the cookie it had is no login
/// afterwards, wherever it was kept.
#[tokio::test]
async fn logging_out_makes_the_old_cookie_useless() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, false);
    let cookie = login_as(&app, "host").await;
    let kept = login_as(&app, "host").await;
    let (status, html, _) = get(&app, "/ui/processes", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&html);
    let (status, headers) = log_out(&app, &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let set = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("cairn_ui=;") && set.contains("Max-Age=0"), "{set}");
    let (status, _, _) = get(&app, "/ui/processes", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the old cookie is no login");
    let cancel = cancel_ext_1(&cookie, &csrf, "after+logout");
    assert_eq!(send(&app, cancel).await.0, StatusCode::UNAUTHORIZED);
    assert!(p.get("ext-1").await.unwrap().cancel_request.is_none());
    // Another browser's login is its own.
    assert_eq!(get(&app, "/ui/processes", Some(&kept)).await.0, StatusCode::OK);
}

/// A request carrying the login cookie's name twice (another service on
/// the host planted one with a longer path, which the browser sends first)
/// is logged out, whichever login each names, and the cookie is cleared at
/// the paths it may have been planted at.
#[tokio::test]
async fn a_login_cookie_sent_twice_is_logged_out() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let host = login_as(&app, "host").await;
    let s1 = login_as(&app, "s1-token").await;
    for cookies in [
        format!("{s1}; {host}"),
        format!("{host}; {host}"),
        format!("{host}; a=1; {s1}"),
    ] {
        let (status, _, headers) = get(&app, "/ui/processes?status=any", Some(&cookies)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{cookies}");
        assert_eq!(
            headers[header::LOCATION],
            "/ui/login?next=%2Fui%2Fprocesses%3Fstatus%3Dany",
            "{cookies}"
        );
        let cleared = set_cookies(&headers);
        for path in ["/ui", "/ui/processes"] {
            assert!(clears_at(&cleared, path), "{path}: {cleared:?}");
        }
    }
    // Sent in two `Cookie` headers, the same.
    let twice = Request::get("/ui/processes")
        .header(header::COOKIE, host.as_str())
        .header(header::COOKIE, s1.as_str())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, twice).await.0, StatusCode::SEE_OTHER);
    // Alone, each is still the login it was.
    assert_eq!(get(&app, "/ui/processes", Some(&host)).await.0, StatusCode::OK);
}

/// The CSRF token is no HMAC keyed by the token (which anyone who saw it
/// could test token guesses against): each login has its own, and one
/// login's is refused with another's cookie.
#[tokio::test]
async fn the_csrf_token_is_the_logins_not_the_tokens() {
    use hmac::Mac;
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, false);
    let (a, b) = (login_as(&app, "host").await, login_as(&app, "host").await);
    let (_, page_a, _) = get(&app, "/ui/processes/ext-1", Some(&a)).await;
    let (_, page_b, _) = get(&app, "/ui/processes/ext-1", Some(&b)).await;
    let (csrf_a, csrf_b) = (csrf_of(&page_a), csrf_of(&page_b));
    let mut of_token = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"host").unwrap();
    of_token.update(b"cairn-ui-csrf\0");
    let of_token = hex::encode(of_token.finalize().into_bytes());
    assert_ne!(csrf_a, of_token);
    assert_ne!(csrf_a, csrf_b);
    let cancel = |cookie: &str, csrf: &str| cancel_ext_1(cookie, csrf, "r");
    for (cookie, csrf) in [(&b, &csrf_a), (&a, &of_token)] {
        let (status, html, _) = send(&app, cancel(cookie, csrf)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
        assert!(html.contains("csrf_refused"), "{html}");
    }
    assert!(p.get("ext-1").await.unwrap().cancel_request.is_none());
    let (status, html, _) = send(&app, cancel(&a, &csrf_a)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
}

/// Every `/ui` answer (pages, fragments, event streams, the login, assets,
/// refusals) says: run only the dashboard's own scripts, no sniffing, no
/// opener's handle; an event stream is not stored.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, false);
    let cookie = login_as(&app, "host").await;
    let mut answers = Vec::new();
    for path in [
        "/ui/processes",
        "/ui/list/rows",
        "/ui/processes/ext-1",
        "/ui/processes/ext-1/record",
        "/ui/sessions",
        "/ui/modules",
        "/ui/schedules",
        "/ui/nowhere",
        "/ui/assets/app.js",
        "/ui/assets/htmx-2.0.11.min.js",
    ] {
        let (status, _, headers) = get(&app, path, Some(&cookie)).await;
        answers.push((path.to_string(), status, headers));
    }
    for (path, cookie) in [
        ("/ui/login", None),
        ("/ui/processes", None),
        ("/ui/processes", Some("cairn_ui=lapsed")),
    ] {
        let (status, _, headers) = get(&app, path, cookie).await;
        answers.push((format!("{path} {cookie:?}"), status, headers));
    }
    for stream in ["/ui/list/live", "/ui/processes/ext-1/live"] {
        for cookie in [cookie.as_str(), "cairn_ui=lapsed"] {
            let r = app.clone().oneshot(stream_request(stream, cookie)).await.unwrap();
            let headers = r.headers().clone();
            assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream", "{stream}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{stream} {cookie}");
            answers.push((format!("{stream} {cookie}"), r.status(), headers));
        }
    }
    for (what, _, headers) in &answers {
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for part in [
            "default-src 'self'",
            "script-src 'self' 'sha256-",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{what}: {part} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{what}: {csp}");
        assert_eq!(headers["cross-origin-opener-policy"], "same-origin", "{what}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{what}");
    }
    // A page tells htmx to evaluate nothing and add no inline style.
    let (_, html, _) = get(&app, "/ui/processes", Some(&cookie)).await;
    assert!(
        html.contains(r#"<meta name="htmx-config" content="{&quot;allowEval&quot;:false,"#)
            && html.contains("&quot;includeIndicatorStyles&quot;:false"),
        "{html}"
    );
}

/// Send signal asks first, naming the signal and the process, as cancel,
/// abandon and complete do: a window another site opened gets no signal
/// (an approval, often) from one click.
#[tokio::test]
async fn the_signal_form_asks_before_sending() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, true);
    let (status, html, _) = get(&app, "/ui/processes/ext-1", None).await;
    assert_eq!(status, StatusCode::OK);
    let form = html
        .split("<form")
        .find(|f| f.contains(r#"id="signal-form""#))
        .expect("a signal form");
    let tag = form.split('>').next().unwrap();
    assert!(
        tag.contains("hx-confirm=\"Send signal \u{201c}\u{201d} to process \u{201c}ext-1\u{201d}?\""),
        "{tag}"
    );
    assert!(tag.contains(r#"data-process="ext-1""#), "{tag}");
}

/// The `Set-Cookie` headers of an answer, in order.
fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Whether `set` clears the login cookie at exactly `path`.
fn clears_at(set: &[String], path: &str) -> bool {
    set.iter().any(|c| {
        c.starts_with("cairn_ui=;")
            && c.contains("Max-Age=0")
            && c.split("; ").any(|attr| attr == format!("Path={path}"))
    })
}

/// A cookie planted at `/ui/` (sent with every page, the login's too, but
/// not the one at `/ui`) is cleared by the page it reaches, with every
/// other path the browser sends it from, whatever a segment holds; a login
/// posted with it clears it before it sets its own, so the page it goes to
/// gets the new login alone, and logs in many times, wrong tokens between,
/// are each answered at once (no throttle to lock anyone out).
#[tokio::test]
async fn a_cookie_planted_at_a_path_with_a_slash_after_it_is_cleared() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let mine = login_as(&app, "host").await;
    let planted = "cairn_ui=x";
    for path in [
        "/ui/processes",
        "/ui/processes/poll@2026-01-01T00:00:00Z",
        "/ui/sessions",
    ] {
        let (status, _, headers) = get(&app, path, Some(&format!("{planted}; {mine}"))).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        let set = set_cookies(&headers);
        for at in ["/", "/ui", "/ui/", path] {
            assert!(clears_at(&set, at), "{path}: {at} in {set:?}");
        }
    }
    let (_, _, headers) = get(
        &app,
        "/ui/processes/poll@2026-01-01T00:00:00Z/record",
        Some(&format!("{planted}; {mine}")),
    )
    .await;
    let set = set_cookies(&headers);
    for at in [
        "/ui/processes/",
        "/ui/processes/poll@2026-01-01T00:00:00Z",
        "/ui/processes/poll@2026-01-01T00:00:00Z/",
        "/ui/processes/poll@2026-01-01T00:00:00Z/record",
    ] {
        assert!(clears_at(&set, at), "{at} in {set:?}");
    }

    // On a host reached by name, the cookie set with `Domain=` (a cookie of
    // its own to the browser) is cleared too, at each name the host ends in.
    let (_, _, headers) = send(&app, planted_twice_at("cairn.example.com:7070")).await;
    let set = set_cookies(&headers);
    for domain in ["cairn.example.com", "example.com"] {
        assert!(
            set.iter().any(|c| c.starts_with("cairn_ui_7070=;")
                && c.contains("Max-Age=0")
                && c.contains(&format!("Domain={domain}"))
                && c.split("; ").any(|attr| attr == "Path=/ui/")),
            "{domain} in {set:?}"
        );
    }
    assert!(
        set.iter().any(|c| c.starts_with("cairn_ui_7070=;")
            && !c.contains("Domain=")
            && c.split("; ").any(|attr| attr == "Path=/ui/")),
        "{set:?}"
    );

    // A login posted with one cookie that names no login (planted at
    // `/ui/`, where the login is sent it): it is cleared before the new
    // login is set, which the next page would be sent with it.
    let login = login_post("token=host", &[("cookie", planted)]);
    let (status, _, headers) = send(&app, login).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = set_cookies(&headers);
    for at in ["/", "/ui/", "/ui/login", "/ui/processes"] {
        assert!(clears_at(&set, at), "{at} in {set:?}");
    }
    assert!(!set.last().unwrap().contains("Max-Age=0"), "{set:?}");

    // The login, posted with both: the planted one cleared first, then
    // the new login set at `/ui`, last.
    for _ in 0..30 {
        let wrong = login_post("token=guess", &[]);
        assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    }
    let login = login_post(
        "token=host&next=%2Fui%2Fprocesses%2Fa%40b",
        &[("cookie", &format!("{planted}; {mine}"))],
    );
    let (status, html, headers) = send(&app, login).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let set = set_cookies(&headers);
    for at in ["/", "/ui/", "/ui/login", "/ui/processes/", "/ui/processes/a@b"] {
        assert!(clears_at(&set, at), "{at} in {set:?}");
    }
    let last = set.last().unwrap();
    assert!(
        last.split("; ").any(|attr| attr == "Path=/ui") && !last.contains("Max-Age=0"),
        "{set:?}"
    );
    let fresh = cookie_pair(last);
    assert_ne!(fresh, mine);
    assert_eq!(get(&app, "/ui/processes", Some(fresh)).await.0, StatusCode::OK);
}

/// Logins are held per viewer: a session token logging in again and again
/// ends only its own oldest logins, never the host's.
#[tokio::test]
async fn a_session_logging_in_again_and_again_leaves_the_host_logged_in() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let host = login_as(&app, "host").await;
    let first = login_as(&app, "s1-token").await;
    let mut last = String::new();
    for _ in 0..100 {
        last = login_as(&app, "s1-token").await;
    }
    assert_eq!(get(&app, "/ui/processes", Some(&host)).await.0, StatusCode::OK);
    assert_eq!(get(&app, "/ui/processes", Some(&last)).await.0, StatusCode::OK);
    assert_eq!(
        get(&app, "/ui/processes", Some(&first)).await.0,
        StatusCode::SEE_OTHER,
        "the session's own oldest login went"
    );
}

/// Logging in again from a browser already logged in as the same viewer
/// (another tab) keeps its login, so pages open elsewhere keep working; as
/// another viewer, the login is replaced and the old one ends.
#[tokio::test]
async fn a_second_login_as_the_same_viewer_keeps_open_pages_working() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    external(&p, "ext-1").await;
    let app = app(&p, false);
    let cookie = login_as(&app, "host").await;
    let (_, page, _) = get(&app, "/ui/processes/ext-1", Some(&cookie)).await;
    let csrf = csrf_of(&page);
    let again = |cookie: &str, token: &str| login_post(format!("token={token}"), &[("cookie", cookie)]);
    let (status, _, headers) = send(&app, again(&cookie, "host")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = set_cookies(&headers);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(cookie_pair(&set[0]), cookie, "the same login");
    let cancel = cancel_ext_1(&cookie, &csrf, "r");
    let (status, html, _) = send(&app, cancel).await;
    assert_eq!(status, StatusCode::OK, "{html}");

    let (_, _, headers) = send(&app, again(&cookie, "s1-token")).await;
    let set = set_cookies(&headers);
    let session = cookie_pair(set.last().unwrap()).to_string();
    assert_ne!(session, cookie);
    assert_eq!(get(&app, "/ui/processes", Some(&cookie)).await.0, StatusCode::SEE_OTHER);
    let (status, html, _) = get(&app, "/ui/processes", Some(&session)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("session:s1"), "{html}");
}

/// A method a dashboard path does not take is answered by the dashboard,
/// with its headers, also merged into a router with a 405 fallback of its
/// own (as the server's is).
#[tokio::test]
async fn a_wrong_method_is_answered_with_the_security_headers() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let outer: Router = Router::new()
        .merge(app(&p, false))
        .method_not_allowed_fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "outer") });
    for (method, path) in [
        ("PUT", "/ui/login"),
        ("PUT", "/ui/processes/rw-1"),
        ("DELETE", "/ui/processes"),
    ] {
        let req = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let (status, body, headers) = send(&outer, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(body.contains("method_not_allowed"), "{method} {path}: {body}");
        for h in [
            header::CONTENT_SECURITY_POLICY.as_str(),
            "cross-origin-opener-policy",
            "x-content-type-options",
            "x-frame-options",
            "cache-control",
        ] {
            assert!(headers.contains_key(h), "{method} {path}: {h} in {headers:?}");
        }
        assert!(headers.contains_key(header::ALLOW), "{method} {path}: {headers:?}");
    }
}

/// A cookie whose name is the login cookie's percent-encoded
/// (`cairn%5Fui`, planted by another service on the host) is another
/// cookie to the browser, which a clear of `cairn_ui` leaves: it is
/// neither taken nor counted, so the login beside it holds and the login
/// page sets its cookie alone, without clearing anything.
#[tokio::test]
async fn a_cookie_of_an_encoded_name_is_a_stranger() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let mine = login_as(&app, "host").await;
    for stranger in ["cairn%5Fui=x", "cairn_u%69=x", "cairn%5fui=x"] {
        let both = format!("{stranger}; {mine}");
        let (status, html, headers) = get(&app, "/ui/processes", Some(&both)).await;
        assert_eq!(status, StatusCode::OK, "{stranger}: {html}");
        assert!(set_cookies(&headers).is_empty(), "{stranger}: {headers:?}");
        let both = format!("{mine}; {stranger}");
        assert_eq!(
            get(&app, "/ui/processes", Some(&both)).await.0,
            StatusCode::OK,
            "{stranger}"
        );
        // Alone it is no login.
        assert_eq!(
            get(&app, "/ui/processes", Some(stranger)).await.0,
            StatusCode::SEE_OTHER,
            "{stranger}"
        );
        let login = login_post("token=host", &[("cookie", stranger)]);
        let (status, _, headers) = send(&app, login).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let set = set_cookies(&headers);
        assert_eq!(set.len(), 1, "{set:?}");
        let id = cookie_value(&set[0]);
        assert_eq!(
            set[0],
            format!("cairn_ui={id}; HttpOnly; SameSite=Strict; Path=/ui"),
            "{set:?}"
        );
        let fresh = format!("cairn_ui={id}");
        assert_eq!(
            get(&app, "/ui/processes", Some(&format!("{stranger}; {fresh}")))
                .await
                .0,
            StatusCode::OK
        );
    }
}

/// `GET /ui/processes` at `host`, carrying its login cookie twice.
fn planted_twice_at(host: &str) -> Request<Body> {
    Request::get("/ui/processes")
        .header(header::HOST, host)
        .header(header::COOKIE, "cairn_ui_7070=x; cairn_ui_7070=y")
        .body(Body::empty())
        .unwrap()
}

/// The clears of `cairn_ui_7070` at each of `paths`, in order: plain, then
/// `Partitioned`.
fn cleared_both_ways(paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .flat_map(|path| {
            [
                format!("cairn_ui_7070=; HttpOnly; SameSite=Strict; Path={path}; Max-Age=0"),
                format!("cairn_ui_7070=; HttpOnly; SameSite=Strict; Partitioned; Secure; Path={path}; Max-Age=0"),
            ]
        })
        .collect()
}

/// A cookie planted `Secure; Partitioned` is deleted by browsers only by a
/// `Set-Cookie` that is `Partitioned` too: every path (and domain) cleared
/// is cleared both ways.
#[tokio::test]
async fn a_planted_cookie_is_cleared_partitioned_too() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let app = app(&p, false);
    let (status, _, headers) = send(&app, planted_twice_at("127.0.0.1:7070")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let want = cleared_both_ways(&["/", "/ui", "/ui/", "/ui/processes"]);
    assert_eq!(set_cookies(&headers), want);

    // At a host name, each `Domain=` form as well.
    let (_, _, headers) = send(&app, planted_twice_at("cairn.example.com:7070")).await;
    let set = set_cookies(&headers);
    assert_eq!(set.len(), 4 * 4 * 2, "{set:?}");
    for domain in ["cairn.example.com", "example.com", "com"] {
        let at = format!(
            "cairn_ui_7070=; HttpOnly; SameSite=Strict; Partitioned; Secure; Path=/ui/; Domain={domain}; Max-Age=0"
        );
        assert!(set.contains(&at), "{at} in {set:?}");
    }

    // A login posted with a planted one clears it both ways before it sets
    // its own, last.
    let login = login_post(
        "token=host",
        &[("host", "127.0.0.1:7070"), ("cookie", "cairn_ui_7070=x")],
    );
    let (status, _, headers) = send(&app, login).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = set_cookies(&headers);
    let (last, clears) = set.split_last().unwrap();
    let id = cookie_value(last);
    assert_eq!(
        *last,
        format!("cairn_ui_7070={id}; HttpOnly; SameSite=Strict; Path=/ui")
    );
    let want = cleared_both_ways(&["/", "/ui", "/ui/", "/ui/login", "/ui/processes"]);
    assert_eq!(clears, want.as_slice());
}

/// Open `path`'s live stream with `cookie`.
async fn open_stream(app: &Router, path: &str, cookie: &str) -> axum::body::BodyDataStream {
    let r = app
        .clone()
        .oneshot(stream_request(path, cookie))
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    r.into_body().into_data_stream()
}

/// A live stream keeps to the login it was opened with: once that login
/// ends (logged out, or replaced by a login as another viewer) the stream
/// ends with `login`, and no event appended after it is sent.
#[tokio::test]
async fn a_live_stream_ends_with_its_login() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    p.start(StartRequest::external("ext-live", json!({})).with_event_type(cairn_core::EventType::plain("note")))
        .await
        .unwrap();
    let note = |n: &'static str| {
        let p = p.clone();
        async move {
            p.append_event("ext-live", cairn_core::AppendRequest::new("note", json!({"n": n})))
                .await
                .unwrap();
        }
    };
    let app = app(&p, false);

    // Logged out.
    let cookie = login_as(&app, "host").await;
    let mut body = open_stream(&app, "/ui/processes/ext-live/live", &cookie).await;
    let mut seen = String::new();
    note("before-logout").await;
    assert!(read_until(&mut body, &mut seen, "before-logout").await, "{seen}");
    assert_eq!(log_out(&app, &cookie).await.0, StatusCode::OK);
    note("after-logout").await;
    assert!(
        read_until(&mut body, &mut seen, "event: login\ndata: log in again\n\n").await,
        "{seen}"
    );
    assert!(
        !read_until(&mut body, &mut seen, "after-logout").await,
        "the stream ends"
    );
    assert!(!seen.contains("after-logout"), "{seen}");
    assert!(seen.trim_end().ends_with("data: log in again"), "{seen}");

    // Replaced by a login as another viewer from the same browser.
    let cookie = login_as(&app, "host").await;
    let mut body = open_stream(&app, "/ui/processes/ext-live/live", &cookie).await;
    let mut seen = String::new();
    assert!(read_until(&mut body, &mut seen, "after-logout").await, "{seen}");
    let again = login_post("token=s1-token", &[("cookie", cookie.as_str())]);
    assert_eq!(send(&app, again).await.0, StatusCode::SEE_OTHER);
    note("after-replace").await;
    assert!(read_until(&mut body, &mut seen, "event: login").await, "{seen}");
    assert!(!read_until(&mut body, &mut seen, "after-replace").await, "{seen}");
}

/// A live list ends with its login too: after a logout the next change is
/// told as `login`, not `changed`, and the stream ends.
#[tokio::test]
async fn a_live_list_ends_with_its_login() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = runtime(&clock);
    let (app, mut stream, cookie) = live_list(&p, "host").await;
    changed(&mut stream).await; // the one on connecting
    external(&p, "before-logout").await;
    changed(&mut stream).await;
    assert_eq!(log_out(&app, &cookie).await.0, StatusCode::OK);
    external(&p, "after-logout").await;
    let mut seen = String::new();
    assert!(read_until(&mut stream, &mut seen, "event: login").await, "{seen}");
    assert!(!read_until(&mut stream, &mut seen, "event: changed").await, "{seen}");
}
