//! The auth matrix and the startup refusals, against the real binary.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{waiter, Server, BIN, TWO_SESSIONS};
use serde_json::{json, Value};

/// Who the last event of `id`'s log (its end) says ended it.
async fn completed_by(client: &common::Client, id: &str) -> Value {
    let (_, events) = client.get(&format!("/v1/processes/{id}/events")).await;
    let ended = events["events"].as_array().and_then(|e| e.last()).cloned();
    ended.map(|e| e["payload"]["completed_by"].clone()).unwrap_or_default()
}

fn code(body: &Value) -> &str {
    body.pointer("/error/code").and_then(Value::as_str).unwrap_or("<none>")
}

/// The host's client and the two sessions' (`s1`, `s2`) of a server started
/// with [`TWO_SESSIONS`].
fn host_and_sessions(server: &Server) -> (common::Client, common::Client, common::Client) {
    (
        server.with_token("host-secret"),
        server.with_token("tok-1"),
        server.with_token("tok-2"),
    )
}

/// Session tokens from `CAIRN_SESSION_TOKENS` (kept out of `ps`), when no
/// `--session-token` is given: each acts as its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_come_from_the_environment() {
    let server = Server::serve_with_env(
        &["--db", "memory", "--listen", "127.0.0.1:0", "--token", "host-secret"],
        &[("CAIRN_SESSION_TOKENS", " s1=tok-1\n s2=tok-2 ")],
    )
    .await;
    let s1 = server.with_token("tok-1");
    let (s, record) = s1.start(waiter("mine")).await;
    assert_eq!(s, 201, "{record}");
    assert_eq!(record["provenance"]["originator"]["scope"]["session_id"], "s1");
    let (s, _) = server.with_token("tok-2").get("/v1/processes/mine").await;
    assert_eq!(s, 404, "s2 does not see s1's process");
    let (s, _) = server.with_token("tok-3").get("/v1/processes").await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_see_only_their_grants() {
    let server = Server::start(TWO_SESSIONS).await;
    let (host, s1, s2) = host_and_sessions(&server);

    // No token, a wrong token: 401 (health stays open).
    let (s, err) = server.client().get("/v1/processes").await;
    assert_eq!((s, code(&err)), (401, "unauthorized"));
    // A 401 names its scheme (RFC 9110), on the API and on MCP alike.
    for path in ["/v1/processes", "/mcp"] {
        let r = reqwest::Client::new()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let scheme = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok());
        assert!(scheme.is_some_and(|v| v.starts_with("Bearer")), "{path}: {scheme:?}");
    }
    // A server with tokens answers any host name (a page cannot know a token).
    let r = reqwest::Client::new()
        .get(server.url("/v1/processes"))
        .header("host", "cairn.internal.example")
        .bearer_auth("host-secret")
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status().as_u16(), 200);
    let (s, err) = server.with_token("nope").get("/v1/processes").await;
    assert_eq!((s, code(&err)), (401, "unauthorized"));
    assert_eq!(server.client().get("/healthz").await.0, 200);

    // The host starts a process granted to s2.
    let mut body = waiter("p-s2");
    body["grant"] = json!({"session_scope": {"session_id": "s2"}});
    assert_eq!(host.start(body).await.0, 201);
    host.wait_for("p-s2", |r| !r["wait"].is_null()).await;

    // s1 cannot read, list, follow, signal, append, cancel, complete, abandon or await it: 404 like an unknown id.
    for path in [
        "/v1/processes/p-s2",
        "/v1/processes/p-s2/events",
        "/v1/processes/p-s2/await?timeout_ms=10",
    ] {
        let (s, err) = s1.get(path).await;
        assert_eq!((s, code(&err)), (404, "unknown_process"), "{path}");
    }
    for (path, body) in [
        ("/v1/processes/p-s2/signals/go", json!({"signal_id": "x", "payload": 1})),
        ("/v1/processes/p-s2/events", json!({"event_type": "progress"})),
        ("/v1/processes/p-s2/cancel", json!({})),
        (
            "/v1/processes/p-s2/complete",
            json!({"outcome": {"type": "success", "value": 1}}),
        ),
        ("/v1/processes/p-s2/abandon-request", json!({"reason": "r"})),
    ] {
        let (s, err) = s1.post(path, body).await;
        assert_eq!((s, code(&err)), (404, "unknown_process"), "{path}");
    }
    let (s, page) = s1.get("/v1/processes?status=any").await;
    assert_eq!((s, page["processes"].clone()), (200, json!([])));
    // Another session's grants are its state, refused like its wakes.
    let (s, err) = s1.get("/v1/processes?status=any&granted_to=s2").await;
    assert_eq!((s, code(&err)), (403, "forbidden"));
    let (s, err) = s1.get("/v1/sessions/s2/wakes").await;
    assert_eq!((s, code(&err)), (403, "forbidden"));
    let (s, page) = s1.get("/v1/processes?status=any&granted_to=s1").await;
    assert_eq!(s, 200, "its own lens: {page}");
    // The provenance lens is host-only: 403, as the README says, for any session named.
    for lens in ["originated_by=s2", "originated_by=s1"] {
        let (s, err) = s1.get(&format!("/v1/processes?{lens}")).await;
        assert_eq!((s, code(&err)), (403, "forbidden"), "{lens}");
    }
    // A session's SSE request is refused the same way.
    let r = s1
        .http
        .get(s1.url("/v1/processes/p-s2/events"))
        .bearer_auth("tok-1")
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 404);

    // s2 and the host can.
    let (s, rec) = s2.get("/v1/processes/p-s2").await;
    assert_eq!((s, rec["id"].as_str()), (200, Some("p-s2")));
    let (s, page) = s2.get("/v1/processes").await;
    assert_eq!(s, 200);
    assert_eq!(page["processes"][0]["id"], "p-s2");
    assert_eq!(host.get("/v1/processes/p-s2").await.0, 200);
    let (s, ev) = s2
        .post("/v1/processes/p-s2/signals/go", json!({"signal_id": "a", "payload": 2}))
        .await;
    assert_eq!((s, ev["event_type"].as_str()), (200, Some("signal.go")));
    let (s, rec) = s2.get("/v1/processes/p-s2/await?timeout_ms=20000").await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("completed")));

    // A session's start may not hand the process to another session: an
    // originator or grant naming one is refused, as a wake target is, and
    // nothing is started.
    let mut body = waiter("p-s1");
    body["originator"] = json!({"type": "host"});
    for (field, value) in [
        (
            "grant",
            json!({"session_scope": {"session_id": "s2"}, "descriptor": {"label": "mine"}}),
        ),
        ("originator", json!({"type": "session", "scope": {"session_id": "s2"}})),
        ("originator", json!({"type": "host", "scope": "ops"})),
    ] {
        let mut elsewhere = body.clone();
        let named = if value["type"] == "host" { "host:ops" } else { "s2" };
        elsewhere[field] = value;
        let (s, err) = s1.start(elsewhere).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{field}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("not `{named}`")),
            "{err}"
        );
    }
    assert_eq!(host.get("/v1/processes/p-s1").await.0, 404);
    // Otherwise it is forced to originate from and be granted to that session.
    body["grant"] = json!({"session_scope": {"session_id": "s1"}, "descriptor": {"label": "mine"}});
    let (s, rec) = s1.start(body.clone()).await;
    assert_eq!(s, 201, "{rec}");
    assert_eq!(
        rec["provenance"]["originator"],
        json!({"type": "session", "scope": {"session_id": "s1"}})
    );
    let (_, page) = s1.get("/v1/processes").await;
    assert_eq!(page["processes"][0]["id"], "p-s1");
    assert_eq!(page["grants"][0]["descriptor"]["label"], "mine");
    let (s, _) = s2.get("/v1/processes/p-s1").await;
    assert_eq!(s, 404);
    // Repeating it is idempotent for s1; another session's start of that id conflicts.
    assert_eq!(s1.start(body.clone()).await.0, 200);
    let (s, err) = s2.start(waiter("p-s1")).await;
    assert_eq!((s, code(&err)), (409, "registration_conflict"));
    assert_eq!(err["error"]["message"], "process id `p-s1` is taken; choose another");
    let mut wake_elsewhere = waiter("p-s1-b");
    wake_elsewhere["wake_target"] = json!({"session_id": "s2"});
    let (s, err) = s1.start(wake_elsewhere).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));

    // A parent s1 may not address is answered as a missing one, whether the
    // start is new or names a taken id: no probing, no child grafted onto
    // another session's tree. Its own process may be a parent.
    for id in ["c-new", "p-s1"] {
        let mut under_hidden = waiter(id);
        under_hidden["caused_by"] = json!({"process_id": "p-s2"});
        let (s, hidden) = s1.start(under_hidden).await;
        let mut under_missing = waiter(id);
        under_missing["caused_by"] = json!({"process_id": "no-such-parent"});
        let (s_missing, missing) = s1.start(under_missing).await;
        assert_eq!((s, code(&hidden)), (400, "invalid_request"), "{hidden}");
        assert_eq!((s_missing, code(&missing)), (400, "invalid_request"), "{missing}");
        let message = |v: &Value, parent: &str| {
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .replace(parent, "PARENT")
        };
        assert_eq!(message(&hidden, "p-s2"), message(&missing, "no-such-parent"));
    }
    assert_eq!(s1.get("/v1/processes/c-new").await.0, 404);
    let (_, page) = host.get("/v1/processes?caused_by=p-s2&status=any").await;
    assert_eq!(page["processes"], json!([]), "nothing grafted under p-s2");
    // The ids cairn gives a schedule's fires and a parent's children are not
    // a session's to take first (the fire, or the parent's start of its
    // child, would fail), whether or not the schedule or parent exists.
    for id in ["nightly@1767312000000", "p-s2/1", "no-such-parent/1.2"] {
        let (s, err) = s1.start(waiter(id)).await;
        assert_eq!((s, code(&err)), (400, "invalid_id"), "{id}: {err}");
        // Naming the parent does not make the id the session's.
        let mut named = waiter(id);
        named["caused_by"] = json!({"process_id": "p-s1"});
        assert_eq!(code(&s1.start(named).await.1), "invalid_id", "{id}");
    }
    for id in ["mail@example", "retry@2", "repo/issue-12", "v1.2/notes"] {
        assert_eq!(s1.start(waiter(id)).await.0, 201, "{id}: not a form cairn gives");
    }
    let mut own_child = waiter("c-own");
    own_child["caused_by"] = json!({"process_id": "p-s1"});
    let (s, rec) = s1.start(own_child).await;
    assert_eq!(
        (s, rec["provenance"]["caused_by"]["process_id"].as_str()),
        (201, Some("p-s1")),
        "{rec}"
    );

    // After s1 gives the process away, it no longer sees it.
    let (s, rep) = s1
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s2"}, "process_ids": ["p-s1"]}),
        )
        .await;
    assert_eq!((s, rep["moved"].clone()), (200, json!(["p-s1"])));
    assert_eq!(s1.get("/v1/processes/p-s1").await.0, 404);
    assert_eq!(s2.get("/v1/processes/p-s1").await.0, 200);
    let (s, err) = s1
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s2"}, "to": {"session_id": "s1"}, "process_ids": ["p-s1"]}),
        )
        .await;
    assert_eq!((s, code(&err)), (403, "forbidden"));
    // A grant to one of its agent frames alone is not the token's to move.
    let framed = json!({"id": "p-frame", "input": {"type": "external"}, "disposition": "externally_owned",
                        "grant": {"session_scope": {"session_id": "s1", "agent_frame_id": "sub"}}});
    assert_eq!(host.start(framed).await.0, 201);
    let (s, err) = s1
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1", "agent_frame_id": "sub"}, "to": {"session_id": "s1"},
                   "process_ids": ["p-frame"]}),
        )
        .await;
    assert_eq!((s, code(&err)), (403, "forbidden"), "{err}");
    let (s, page) = host.get("/v1/processes?status=any&granted_to=s1/frame:sub").await;
    assert_eq!(
        (s, page["processes"][0]["id"].as_str()),
        (200, Some("p-frame")),
        "the grant stayed with the frame: {page}"
    );
    // Nor may it start a process granted to one of its frames alone: refused,
    // not widened to the whole session, and nothing starts.
    let into_frame = json!({"id": "p-into-frame", "input": {"type": "external"}, "disposition": "externally_owned",
                            "grant": {"session_scope": {"session_id": "s1", "agent_frame_id": "sub"}}});
    let (s, err) = s1.start(into_frame).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not to its agent frame `sub`")),
        "{err}"
    );
    assert_eq!(host.get("/v1/processes/p-into-frame").await.0, 404, "nothing started");
    // Nor may it move its own grant into a frame, where it could neither see
    // nor move it back.
    let own = json!({"id": "p-own", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(s1.start(own).await.0, 201);
    let (s, err) = s1
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s1", "agent_frame_id": "sub"},
                   "process_ids": ["p-own"]}),
        )
        .await;
    assert_eq!((s, code(&err)), (403, "forbidden"), "{err}");
    assert_eq!(
        s1.get("/v1/processes/p-own").await.0,
        200,
        "the grant stayed with the session"
    );

    // Host-only and other-session operations.
    let (s, err) = s1
        .post(
            "/v1/prune",
            json!({"cutoff_ms": 0, "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!((s, code(&err)), (403, "forbidden"));
    assert_eq!(s1.get("/v1/changes").await.0, 403);
    assert_eq!(s1.get("/metrics").await.0, 403);
    assert_eq!(s1.get("/v1/sessions/s2/wakes").await.0, 403);
    assert_eq!(s1.delete("/v1/sessions/s2").await.0, 403);
    assert_eq!(s1.get("/v1/sessions/s1/wakes").await.0, 200);
    assert_eq!(host.get("/v1/sessions/s2/wakes").await.0, 200);
    assert_eq!(host.get("/metrics").await.0, 200);

    // A pruned id of another session: s1 learns it is taken (409), not how it ended.
    let gone = json!({"id": "gone-1", "input": {"type": "external"}, "disposition": "externally_owned",
                      "grant": {"session_scope": {"session_id": "s2"}}});
    assert_eq!(host.start(gone.clone()).await.0, 201);
    let own = json!({"id": "own-1", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(s1.start(own.clone()).await.0, 201);
    // A session ends its external work through `complete`, which records it
    // as the session: a core terminal event appended by hand could name
    // anyone as its author, and is refused, changing nothing.
    for (t, payload) in [
        (
            "process.completed",
            json!({"await_output": {"type": "success", "value": 1}, "completed_by": "host"}),
        ),
        (
            "process.failed",
            json!({"await_output": {"type": "failure", "class": "", "code": "", "message": ""}}),
        ),
        (
            "process.cancelled",
            json!({"await_output": {"type": "cancelled", "reason": "x"}}),
        ),
    ] {
        let (s, err) = s1
            .post(
                "/v1/processes/own-1/events",
                json!({"event_type": t, "payload": payload}),
            )
            .await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{t}: {err}");
    }
    assert_eq!(s1.get("/v1/processes/own-1").await.1["status"], "running");
    let (s, _) = s1
        .post(
            "/v1/processes/own-1/complete",
            json!({"outcome": {"type": "success", "value": 1}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(completed_by(&s1, "own-1").await, "session:s1");
    let (s, _) = host
        .post(
            "/v1/processes/gone-1/complete",
            json!({"outcome": {"type": "success", "value": 1}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, rep) = host
        .post(
            "/v1/prune",
            json!({"cutoff_ms": u64::MAX / 2, "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert!(s == 200 && rep["pruned"].as_u64() >= Some(1), "{rep}");
    let mut gone_for_s1 = gone.clone();
    gone_for_s1.as_object_mut().unwrap().remove("grant");
    let (s, err) = s1.start(gone_for_s1.clone()).await;
    assert_eq!((s, code(&err)), (409, "registration_conflict"), "{err}");
    // The same words as for a live process it cannot see.
    assert_eq!(err["error"]["message"], "process id `gone-1` is taken; choose another");
    assert!(err["error"].get("tombstone").is_none(), "{err}");
    // Its own start repeated after the prune: how it ended, as its GET says.
    let (s, err) = s1.start(own).await;
    assert_eq!((s, code(&err)), (410, "no_longer_retained"), "{err}");
    assert_eq!(err["error"]["tombstone"]["status"], "completed", "{err}");
    let (s, err) = host.start(gone).await;
    assert_eq!((s, code(&err)), (410, "no_longer_retained"));
    assert_eq!(err["error"]["tombstone"]["status"], "completed");
}

/// A session that held a grant on a process when it was pruned is told how
/// it ended, as the host is: every route that answers the host 410 with the
/// tombstone answers the session the same. A session that never held it is
/// answered as for an id that never existed. A start of its own pruned id
/// is answered as the host's, and names it as a parent as the host may; of
/// the other's, it is only "taken", and the other's is no parent. Once the
/// session is deleted it learns nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_told_its_own_pruned_process_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    let server = Server::start_on(&db, TWO_SESSIONS).await;
    let (host, s1, s2) = host_and_sessions(&server);
    let external = |id: &str| json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(s1.start(external("mine")).await.0, 201);
    assert_eq!(s2.start(external("theirs")).await.0, 201);
    assert_eq!(s1.start(external("still")).await.0, 201);
    let done = json!({"outcome": {"type": "success", "value": 1}});
    assert_eq!(s1.post("/v1/processes/mine/complete", done.clone()).await.0, 200);
    assert_eq!(s2.post("/v1/processes/theirs/complete", done.clone()).await.0, 200);
    let (s, rep) = host
        .post(
            "/v1/prune",
            json!({"cutoff_ms": u64::MAX / 2, "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!((s, rep["pruned"].as_u64()), (200, Some(2)), "{rep}");
    let (s, err) = host.get("/v1/processes/mine").await;
    assert_eq!((s, code(&err)), (410, "no_longer_retained"), "{err}");
    let tombstone = err["error"]["tombstone"].clone();
    assert_eq!(tombstone["status"], "completed", "{err}");

    // Every route a session may take to an id, read and write.
    let routes: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "", None),
        ("GET", "/events", None),
        ("GET", "/await?timeout_ms=10", None),
        ("POST", "/events", Some(json!({"event_type": "note", "payload": {}}))),
        ("POST", "/signals/go", Some(json!({"signal_id": "g1", "payload": {}}))),
        ("POST", "/cancel", Some(json!({}))),
        ("POST", "/complete", Some(done.clone())),
        ("POST", "/abandon-request", Some(json!({"reason": "x"}))),
    ];
    let ask = |c: &common::Client, id: &str, method: &str, tail: &str, body: &Option<Value>| {
        let (c, path, body) = (c.clone(), format!("/v1/processes/{id}{tail}"), body.clone());
        let method = method.to_string();
        async move {
            match body {
                Some(b) => c.post(&path, b).await,
                None if method == "GET" => c.get(&path).await,
                None => unreachable!(),
            }
        }
    };
    for (method, tail, body) in &routes {
        let (hs, herr) = ask(&host, "mine", method, tail, body).await;
        assert_eq!(
            (hs, code(&herr)),
            (410, "no_longer_retained"),
            "host {method} {tail}: {herr}"
        );
        let (s, err) = ask(&s1, "mine", method, tail, body).await;
        assert_eq!(
            (s, code(&err)),
            (410, "no_longer_retained"),
            "its own pruned process, {method} {tail}: {err}"
        );
        assert_eq!(err["error"]["tombstone"], tombstone, "{method} {tail}: {err}");
        let (s, err) = ask(&s1, "theirs", method, tail, body).await;
        assert_eq!(
            (s, code(&err)),
            (404, "unknown_process"),
            "another session's pruned process, {method} {tail}: {err}"
        );
        assert!(err["error"].get("tombstone").is_none(), "{err}");
        let (s, err) = ask(&s2, "theirs", method, tail, body).await;
        assert_eq!(
            (s, code(&err)),
            (410, "no_longer_retained"),
            "s2 {method} {tail}: {err}"
        );
    }
    // A stream asked for is refused the same way, before it opens.
    let stream = |c: &common::Client| {
        c.auth(
            c.http
                .get(c.url("/v1/processes/mine/events"))
                .header("accept", "text/event-stream"),
        )
        .send()
    };
    assert_eq!(stream(&s1).await.expect("stream").status().as_u16(), 410);
    assert_eq!(stream(&s2).await.expect("stream").status().as_u16(), 404);
    // A start of its own pruned id is answered as the host's, 410 with the
    // tombstone; of another session's pruned id, only "taken".
    let (hs, herr) = host.start(external("mine")).await;
    assert_eq!((hs, code(&herr)), (410, "no_longer_retained"), "{herr}");
    let (s, err) = s1.start(external("mine")).await;
    assert_eq!((s, code(&err)), (410, "no_longer_retained"), "{err}");
    assert_eq!(err["error"]["tombstone"], tombstone, "{err}");
    let (s, err) = s1.start(external("theirs")).await;
    assert_eq!((s, code(&err)), (409, "registration_conflict"), "{err}");
    assert!(err["error"].get("tombstone").is_none(), "{err}");
    assert_eq!(s1.get("/v1/processes/still").await.0, 200);
    // Its own pruned process is a parent, as it is for the host; another
    // session's is missing, as one that never existed is.
    let child = |id: &str, parent: &str| {
        let mut start = external(id);
        start["caused_by"] = json!({"process_id": parent});
        start
    };
    assert_eq!(host.start(child("host-kid", "mine")).await.0, 201);
    let (s, rec) = s1.start(child("kid", "mine")).await;
    assert_eq!(s, 201, "{rec}");
    assert_eq!(rec["provenance"]["caused_by"]["process_id"], "mine", "{rec}");
    let (s, err) = s1.start(child("stray", "theirs")).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    let said = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("`caused_by` names process `theirs`, which does not exist"),
        "{err}"
    );

    // A deleted session learns nothing more of what it held.
    let (s, report) = host.delete("/v1/sessions/s1").await;
    assert_eq!(s, 200, "{report}");
    let (s, err) = s1.get("/v1/processes/mine").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"), "{err}");
    assert_eq!(s2.get("/v1/processes/theirs").await.0, 410);
}

/// A process the host granted to one of a session's agent frames is the
/// session's to address, as it is to list (a frame is inside its session):
/// its token reads, follows, signals, cancels and awaits it, over HTTP, SSE
/// and MCP alike. Another session is answered as for an unknown id, on
/// every one of those routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_addresses_what_its_frames_are_granted() {
    let server = Server::start(TWO_SESSIONS).await;
    let (host, s1, s2) = host_and_sessions(&server);
    for (id, frame) in [("hf1", "f1"), ("hf2", "f2")] {
        let mut body = waiter(id);
        body["grant"] = json!({"session_scope": {"session_id": "s1", "agent_frame_id": frame}});
        assert_eq!(host.start(body).await.0, 201, "{id}");
        host.wait_for(id, |r| !r["wait"].is_null()).await;
    }
    let (s, page) = s1.get("/v1/processes?status=any&granted_to=s1%2Fframe%3Af1").await;
    assert_eq!((s, page["processes"][0]["id"].as_str()), (200, Some("hf1")), "{page}");

    // Another session: every route answers as for an unknown id.
    for path in [
        "/v1/processes/hf1",
        "/v1/processes/hf1/events",
        "/v1/processes/hf1/await?timeout_ms=10",
    ] {
        let (s, err) = s2.get(path).await;
        assert_eq!((s, code(&err)), (404, "unknown_process"), "{path}: {err}");
    }
    for (path, body) in [
        ("/v1/processes/hf1/signals/go", json!({"signal_id": "x", "payload": 1})),
        ("/v1/processes/hf2/cancel", json!({})),
    ] {
        let (s, err) = s2.post(path, body).await;
        assert_eq!((s, code(&err)), (404, "unknown_process"), "{path}: {err}");
    }
    let r = s2
        .http
        .get(s2.url("/v1/processes/hf1/events"))
        .bearer_auth("tok-2")
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 404, "another session's SSE");
    let mcp_get = |token: &str| {
        let request = s1
            .http
            .post(server.url("/mcp"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "process_get", "arguments": {"id": "hf1"}}})
                .to_string(),
            );
        async move {
            let response = request.send().await.expect("answered");
            assert_eq!(response.status().as_u16(), 200);
            response.json::<Value>().await.expect("a JSON-RPC answer")
        }
    };
    let answer = mcp_get("tok-2").await;
    assert_eq!(answer["result"]["isError"], json!(true), "{answer}");

    // Its own session: read, follow (JSON and SSE), MCP, signal, cancel, await.
    let (s, rec) = s1.get("/v1/processes/hf1").await;
    assert_eq!((s, rec["id"].as_str()), (200, Some("hf1")), "{rec}");
    let (s, events) = s1.get("/v1/processes/hf1/events").await;
    assert_eq!(s, 200, "{events}");
    assert!(!events["events"].as_array().expect("events").is_empty(), "{events}");
    let mut sse = s1.sse("hf1", "", None).await;
    assert!(sse.next(Duration::from_secs(10)).await.is_some(), "an event over SSE");
    let answer = mcp_get("tok-1").await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    assert_eq!(answer["result"]["structuredContent"]["id"], "hf1", "{answer}");
    let (s, ev) = s1
        .post("/v1/processes/hf1/signals/go", json!({"signal_id": "a", "payload": 2}))
        .await;
    assert_eq!((s, ev["event_type"].as_str()), (200, Some("signal.go")), "{ev}");
    let (s, rec) = s1.get("/v1/processes/hf1/await?timeout_ms=20000").await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("completed")), "{rec}");
    let (s, rec) = s1.post("/v1/processes/hf2/cancel", json!({"reason": "done"})).await;
    assert_eq!(s, 200, "{rec}");
    let (s, rec) = s1.get("/v1/processes/hf2/await?timeout_ms=20000").await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("cancelled")), "{rec}");
}

/// A session token's delete of its own session takes only the grants to the
/// session as a whole: a grant the host made to one of its agent frames,
/// which the token may neither see nor move, stays, its process is not
/// reported, and the host still finds it granted to the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_tokens_delete_keeps_its_frames_grants() {
    let server = Server::start(&["--token", "host-secret", "--session-token", "s1=tok-1"]).await;
    let host = server.with_token("host-secret");
    let s1 = server.with_token("tok-1");
    let framed = json!({"id": "p-frame", "input": {"type": "external"}, "disposition": "externally_owned",
                        "grant": {"session_scope": {"session_id": "s1", "agent_frame_id": "f1"}}});
    assert_eq!(host.start(framed).await.0, 201);
    let own = json!({"id": "p-own", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(s1.start(own).await.0, 201);

    let (s, report) = s1.delete("/v1/sessions/s1").await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["revoked_grants"], 1, "only the session's own grant: {report}");
    assert_eq!(report["orphaned"], json!(["p-own"]), "{report}");
    assert_eq!(report["preserved"], json!([]), "{report}");
    assert_eq!(s1.get("/v1/processes/p-own").await.0, 404, "its own grant went");

    // The host still finds the frame holding its grant, and may move it.
    let (s, moved) = host
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1", "agent_frame_id": "f1"}, "to": {"session_id": "s1"},
                   "process_ids": ["p-frame"]}),
        )
        .await;
    assert_eq!((s, moved["moved"].clone()), (200, json!(["p-frame"])), "{moved}");
    assert_eq!(s1.get("/v1/processes/p-frame").await.0, 200);

    // The host's delete takes every scope's grants, the frames' too.
    let (s, moved) = host
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s1", "agent_frame_id": "f1"},
                   "process_ids": ["p-frame"]}),
        )
        .await;
    assert_eq!((s, moved["moved"].clone()), (200, json!(["p-frame"])), "{moved}");
    let (s, report) = host.delete("/v1/sessions/s1").await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["revoked_grants"], 1, "{report}");
    assert_eq!(report["orphaned"], json!(["p-frame"]), "{report}");
}

/// A session following a process's events stops reading them once its grant
/// is moved away: the next page is refused as the process is to it now.
/// A session whose id is as long as an id may be completes and asks to
/// abandon its external work like any other: it is recorded as
/// `session:{id}`, longer than an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_the_longest_id_completes_its_work() {
    let long = "s".repeat(256);
    let server = Server::start(&["--token", "host", "--session-token", &format!("{long}=tok-long")]).await;
    let s = server.with_token("tok-long");
    for id in ["long-1", "long-2"] {
        let start = json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned"});
        assert_eq!(s.start(start).await.0, 201);
    }
    let (status, body) = s
        .post(
            "/v1/processes/long-1/complete",
            json!({"outcome": {"type": "success", "value": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(completed_by(&s, "long-1").await, format!("session:{long}"));
    let (status, body) = s
        .post(
            "/v1/processes/long-2/abandon-request",
            json!({"reason": "the other system lost it"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_stops_when_its_grant_moves() {
    let server = Server::start(&["--token", "host", "--session-token", "s1=tok-1"]).await;
    let host = server.with_token("host");
    let s1 = server.with_token("tok-1");
    let start = json!({
        "id": "live", "disposition": "externally_owned", "input": {"type": "external", "metadata": {}},
        "event_types": [{"name": "note"}], "grant": {"session_scope": {"session_id": "s1"}}
    });
    assert_eq!(host.start(start).await.0, 201);
    let mut stream = s1.sse("live", "", None).await;
    let note = |n: u64| json!({"event_type": "note", "payload": {"n": n}});
    assert_eq!(host.post("/v1/processes/live/events", note(1)).await.0, 200);
    loop {
        let e = stream.next(Duration::from_secs(10)).await.expect("an event");
        if e.data.contains("\"note\"") {
            break;
        }
    }
    let (s, moved) = host
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s2"}, "process_ids": ["live"]}),
        )
        .await;
    assert_eq!((s, moved["moved"].clone()), (200, json!(["live"])));
    assert_eq!(host.post("/v1/processes/live/events", note(2)).await.0, 200);
    let e = stream.next(Duration::from_secs(10)).await.expect("the refusal");
    assert_eq!(e.event.as_deref(), Some("error"), "{}", e.data);
    assert!(e.data.contains("unknown_process"), "{}", e.data);
    assert!(
        stream.next(Duration::from_secs(10)).await.is_none(),
        "the stream closed"
    );
}

/// An await that began while the session held the grant answers what a
/// session without it gets once the grant has moved: `unknown_process`, not
/// the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_await_ends_unknown_when_its_grant_moves() {
    let server = Server::start(&["--token", "host", "--session-token", "s1=tok-1"]).await;
    let host = server.with_token("host");
    let s1 = server.with_token("tok-1");
    let start = json!({
        "id": "moving", "disposition": "externally_owned", "input": {"type": "external", "metadata": {}},
        "grant": {"session_scope": {"session_id": "s1"}}
    });
    assert_eq!(host.start(start).await.0, 201);
    let waiting = tokio::spawn(async move { s1.get("/v1/processes/moving/await?timeout_ms=20000").await });
    // The answer is the same whether the await begins before the grant moves
    // or after; the grant moves once it waits, the case the check after the
    // wait is for.
    host.awaits_open(1).await;
    let (s, _) = host
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s2"}, "process_ids": ["moving"]}),
        )
        .await;
    assert_eq!(s, 200);
    let complete = json!({"outcome": {"type": "success", "value": "secret"}, "authority": "ci"});
    assert_eq!(host.post("/v1/processes/moving/complete", complete).await.0, 200);
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the await answers when the process ends")
        .expect("join");
    assert_eq!((status, code(&body)), (404, "unknown_process"), "{body}");
    assert!(!body.to_string().contains("secret"), "{body}");
}

/// A session is recorded as itself whatever `authority` or `requested_by`
/// it names, but a name the host would be refused for is refused for it too,
/// and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_bad_authority_or_requester_is_refused_as_the_hosts() {
    let server = Server::start(&["--token", "host", "--session-token", "s1=tok-1"]).await;
    let host = server.with_token("host");
    let s1 = server.with_token("tok-1");
    let start = json!({
        "id": "named", "disposition": "externally_owned", "input": {"type": "external"},
        "grant": {"session_scope": {"session_id": "s1"}}
    });
    assert_eq!(host.start(start).await.0, 201);
    let ok = json!({"type": "success", "value": 1});
    for (route, body) in [
        ("complete", json!({"outcome": ok, "authority": ""})),
        ("complete", json!({"outcome": ok, "authority": "a\u{1}b"})),
        ("abandon-request", json!({"reason": "stuck", "requested_by": ""})),
        ("abandon-request", json!({"reason": "stuck", "requested_by": "\u{7f}"})),
    ] {
        let path = format!("/v1/processes/named/{route}");
        let (hs, herr) = host.post(&path, body.clone()).await;
        let (s, err) = s1.post(&path, body.clone()).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{route} {body}: {err}");
        assert_eq!((hs, &herr), (s, &err), "{route} {body}");
    }
    let (_, rec) = host.get("/v1/processes/named").await;
    assert_eq!(
        (&rec["status"], rec["last_sequence"].as_u64(), &rec["abandon_request"]),
        (&json!("running"), Some(0), &Value::Null),
        "{rec}"
    );
}

#[test]
fn refuses_open_non_loopback_and_unbuilt_backends() {
    let run = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("CAIRN_TOKEN")
            .env_remove("CAIRN_DATABASE_URL")
            .env_remove("CAIRN_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // These refusals happen before binding; a hang here is a failure, not
        // a wait (bounded at 30 s: a loaded machine may be slow to start it).
        for _ in 0..1_200 {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        child.wait_with_output().expect("output")
    };
    // Bad settings are bad input: exit 2, as for any command (`--help`).
    let out = run(&["serve", "--db", "memory", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on non-loopback"), "{err}");

    // A session token that is the host token, or shared by two sessions,
    // would give its holder more than its session.
    for tokens in [
        &["--token", "A", "--session-token", "s1=A"][..],
        &["--token", "A", "--session-token", "s1=B", "--session-token", "s2=B"][..],
    ] {
        let mut args = vec!["serve", "--db", "memory", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(tokens);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{tokens:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--session-token"), "{tokens:?}: {err}");
    }

    // An await cap that answers every wait at once would read as a shutdown;
    // a script heap no script can run in is refused at start, not met later.
    for (flag, value, said) in [
        ("--max-await", "10ms", "under 100ms"),
        ("--script-heap-bytes", "20000", "at least"),
    ] {
        let out = run(&["serve", "--db", "memory", "--listen", "127.0.0.1:0", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(said), "{flag}: {err}");
    }

    // No worker, or a lease that ends before its first renewal, would start a
    // healthy server that never runs anything: refused at start.
    // Nor do no connections, no body, or a lease a crashed node's work
    // would wait centuries out.
    for (flag, value, said) in [
        ("--workers", "0", "at least"),
        ("--lease-ttl", "0s", "at least"),
        ("--lease-ttl", "99ms", "at least"),
        ("--lease-ttl", "999ms", "at least"),
        ("--lease-ttl", "300y", "at most"),
        ("--max-connections", "0", "at least"),
        ("--max-body-bytes", "0", "at least"),
    ] {
        let out = run(&["serve", "--db", "memory", "--listen", "127.0.0.1:0", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(said), "{flag} {value}: {err}");
    }
    // A token no request could carry, or an empty one (an unset secret that
    // would leave the server open), is refused at start too.
    for token in ["", "padded\n", "pässwörd"] {
        let out = run(&["serve", "--db", "memory", "--listen", "127.0.0.1:0", "--token", token]);
        assert_eq!(out.status.code(), Some(2), "{token:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("host token"), "{token:?}: {err}");
    }

    let foreign = std::env::temp_dir().join(format!("cairn-foreign-{}.txt", std::process::id()));
    std::fs::write(
        &foreign,
        "not a database, just text that is long enough to have a header",
    )
    .expect("write");
    let db = format!("sqlite:{}", foreign.display());
    let out = run(&["serve", "--db", &db, "--listen", "127.0.0.1:0"]);
    let _ = std::fs::remove_file(&foreign);
    // A database URL whose settings are refused before anything is opened
    // is a bad setting: exit 2.
    for url in [
        "postgres://u@127.0.0.1:1/db?write_lanes=0",
        "postgres://u@127.0.0.1:1/db?sslmode=require",
    ] {
        let out = run(&["serve", "--db", url, "--listen", "127.0.0.1:0"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A database that cannot be opened is not a flag's fault: exit 1.
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open"), "{err}");
    // A malformed --listen is bad input; a host name that does not resolve
    // is not the flag's fault.
    let out = run(&["serve", "--db", "memory", "--listen", "127.0.0.1:notaport"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // A host or a port left out is the flag's fault, said with its shape.
    for listen in ["localhost", ":7070", "localhost:"] {
        let out = run(&["serve", "--db", "memory", "--listen", listen]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{listen}: {err}");
        assert!(err.contains("expected HOST:PORT"), "{listen}: {err}");
    }
    let out = run(&["serve", "--db", "memory", "--listen", "cairn-test.invalid:7070"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot resolve --listen"));
    // A database URL without its scheme is one.
    let out = run(&["serve", "--db", "my.db", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported database URL `my.db`"), "{err}");
}

/// A request with two `Authorization` headers is refused 400 before anything
/// runs, on the API and on `/mcp` alike, whichever token comes first: the
/// server does not pick one of them. With one header the same request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() {
    let server = Server::start(&["--token", "host-secret", "--session-token", "s1=tok-1"]).await;
    let host = server.with_token("host-secret");
    let http = reqwest::Client::new();
    let send = |path: &str, tokens: &[&str], body: String| {
        let mut request = http
            .post(server.url(path))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        for token in tokens {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("a JSON body"))
        }
    };
    let start = |id: &str| waiter(id).to_string();
    let mcp_start = |id: &str| {
        json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "process_start", "arguments": waiter(id)},
        })
        .to_string()
    };
    for tokens in [
        &["host-secret", "unknown"][..],
        &["unknown", "host-secret"],
        &["host-secret", "host-secret"],
        &["tok-1", "host-secret"],
    ] {
        for (path, body) in [("/v1/processes", start("two")), ("/mcp", mcp_start("two"))] {
            let (status, answer) = send(path, tokens, body).await;
            assert_eq!(
                (status, code(&answer)),
                (400, "invalid_request"),
                "{path} {tokens:?}: {answer}"
            );
            assert_eq!(
                answer["error"]["message"], "send one Authorization header",
                "{path} {tokens:?}: {answer}"
            );
        }
        let (status, _) = host.get("/v1/processes/two").await;
        assert_eq!(status, 404, "{tokens:?}: nothing ran");
    }
    let read = http
        .get(server.url("/v1/processes"))
        .header("Authorization", "Bearer host-secret")
        .header("Authorization", "Bearer host-secret")
        .send()
        .await
        .expect("answered");
    assert_eq!(read.status().as_u16(), 400, "a read too");
    // One header: the same requests run.
    let (status, answer) = send("/v1/processes", &["host-secret"], start("one-api")).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = send("/mcp", &["host-secret"], mcp_start("one-mcp")).await;
    assert_eq!(
        (status, answer["result"]["isError"].clone()),
        (200, json!(false)),
        "{answer}"
    );
    for id in ["one-api", "one-mcp"] {
        let (status, _) = host.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(status, 200, "{id} ran");
    }
    // An open server takes no token, and still refuses two.
    let open = Server::start(&[]).await;
    let response = http
        .post(open.url("/v1/processes"))
        .header("Content-Type", "application/json")
        .header("Authorization", "Bearer a")
        .header("Authorization", "Bearer b")
        .body(start("open"))
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    let answer: Value = response.json().await.expect("a JSON body");
    assert_eq!((status, code(&answer)), (400, "invalid_request"), "{answer}");
    let (status, _) = open.client().get("/v1/processes/open").await;
    assert_eq!(status, 404, "nothing ran");
}

/// A session token on a host-only route (prune, the change feed, schedules,
/// metrics) is answered 403 `forbidden` before the route reads its query or
/// body, on every such route alike: a caller is not asked to fix a request it
/// may never make. The host is told what is wrong with the same requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_host_only_route_is_refused_before_its_input_is_read() {
    let server = Server::start(&["--token", "host-secret", "--session-token", "s1=tok-1"]).await;
    let host = server.with_token("host-secret");
    let s1 = server.with_token("tok-1");
    let send = |c: &common::Client, method: &str, path: &str, body: Option<&str>| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = c.auth(c.http.request(method, c.url(path)));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            let text = response.text().await.expect("a body");
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    let bad_prune = r#"{"cutoff_ms":1,"watermark":{"type":"no_projector"},"bogus":1}"#;
    let cases: [(&str, &str, Option<&str>, &str); 16] = [
        ("POST", "/v1/prune", Some("{bad"), "prune"),
        ("POST", "/v1/prune", Some(bad_prune), "prune"),
        ("POST", "/v1/prune?dry_run=true", Some("{}"), "prune"),
        ("GET", "/v1/changes?bogus=1", None, "the change feed"),
        ("GET", "/v1/changes?cursor=x", None, "the change feed"),
        ("GET", "/v1/changes?limit=0", None, "the change feed"),
        ("POST", "/v1/schedules", Some("{bad"), "schedules"),
        ("POST", "/v1/schedules", Some(r#"{"id":"s"}"#), "schedules"),
        ("GET", "/v1/schedules?bogus=1", None, "schedules"),
        ("GET", "/v1/schedules?limit=0", None, "schedules"),
        ("GET", "/v1/schedules/nosuch?x=1", None, "schedules"),
        ("POST", "/v1/schedules/nosuch/pause", Some(r#"{"x":1}"#), "schedules"),
        ("POST", "/v1/schedules/nosuch/resume", Some("[1]"), "schedules"),
        ("DELETE", "/v1/schedules/nosuch", Some(r#"{"x":1}"#), "schedules"),
        ("GET", "/metrics?x=1", None, "metrics"),
        ("POST", "/v1/schedules/nosuch/pause", Some("{}"), "schedules"),
    ];
    for (method, path, body, what) in cases {
        let (status, err) = send(&s1, method, path, body).await;
        assert_eq!((status, code(&err)), (403, "forbidden"), "{method} {path}: {err}");
        assert_eq!(
            err["error"]["message"],
            format!("the host token is needed for {what}"),
            "{method} {path}"
        );
        // The host is not refused: it is told what is wrong, if anything.
        let (status, err) = send(&host, method, path, body).await;
        assert_ne!(status, 403, "host {method} {path}: {err}");
    }
    // Its own routes still read its input first where there is nothing to forbid.
    let (status, err) = send(&s1, "GET", "/v1/sessions/s1/wakes?bogus=1", None).await;
    assert_eq!((status, code(&err)), (400, "invalid_request"), "{err}");
}

/// A session token's body over `--max-body-bytes` on a host-only route is
/// answered 403 `forbidden` too, not 413: the route is not its to call,
/// whatever the size of what it sends, declared (`Content-Length`) or not
/// (chunked), and with its body unread the answer closes the connection. The
/// host, and a session on a route of its own, are told the body is too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_a_host_only_route_is_refused_before_its_body_is_weighed() {
    let server = Server::start(&[
        "--token",
        "host-secret",
        "--session-token",
        "s1=tok-1",
        "--max-body-bytes",
        "1024",
    ])
    .await;
    let host = server.with_token("host-secret");
    let s1 = server.with_token("tok-1");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096));
    let send = |c: &common::Client, method: &str, path: &str, chunked: bool| {
        let label = format!("{method} {path} (chunked: {chunked})");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let body = if chunked {
            // No `Content-Length`: the size shows only as it is read.
            let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(big.clone()), Ok(big.clone())];
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        } else {
            reqwest::Body::from(big.clone())
        };
        let request = c
            .auth(c.http.request(method, c.url(path)))
            .header("Content-Type", "application/json")
            .body(body);
        async move {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{label}: not answered: {e:?}"));
            let status = response.status().as_u16();
            let closes = response
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let text = response.text().await.expect("a body");
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                closes,
            )
        }
    };
    let cases: [(&str, &str, &str); 7] = [
        ("POST", "/v1/prune", "prune"),
        ("POST", "/v1/schedules", "schedules"),
        ("POST", "/v1/schedules/nosuch/pause", "schedules"),
        ("POST", "/v1/schedules/nosuch/resume", "schedules"),
        ("DELETE", "/v1/schedules/nosuch", "schedules"),
        ("GET", "/v1/changes", "the change feed"),
        ("GET", "/metrics", "metrics"),
    ];
    for (method, path, what) in cases {
        // The HTTP client sends no body of unknown length with a GET.
        let ways: &[bool] = if method == "GET" { &[false] } else { &[false, true] };
        for &chunked in ways {
            let (status, err, closes) = send(&s1, method, path, chunked).await;
            assert_eq!(
                (status, code(&err)),
                (403, "forbidden"),
                "{method} {path} (chunked: {chunked}): {err}"
            );
            // Its body unread, the connection is not offered again.
            assert!(closes, "{method} {path} (chunked: {chunked}): {err}");
            assert_eq!(
                err["error"]["message"],
                format!("the host token is needed for {what}"),
                "{method} {path}"
            );
        }
        let (status, err, _) = send(&host, method, path, false).await;
        assert_eq!(
            (status, code(&err)),
            (413, "payload_too_large"),
            "host {method} {path}: {err}"
        );
    }
    // A route the session may call weighs its body.
    let (status, err, _) = send(&s1, "POST", "/v1/processes", false).await;
    assert_eq!((status, code(&err)), (413, "payload_too_large"), "{err}");
}

/// `POST /v1/sessions/{id}/cancel` requests the cancellation of every running
/// process granted to the session, answering counts: the host may cancel any
/// session, a session token only its own; a refused request changes nothing,
/// and another session's work is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_running_work_is_cancelled_at_once() {
    let server = Server::start(TWO_SESSIONS).await;
    let (host, s1, s2) = host_and_sessions(&server);
    let granted = |mut body: Value, session: &str| {
        body["grant"] = json!({"session_scope": {"session_id": session}});
        body
    };
    for id in ["w1", "w2", "w3"] {
        assert_eq!(host.start(granted(waiter(id), "s1")).await.0, 201);
    }
    // An externally owned one: its owner ends it, so it keeps the request.
    let ext = json!({"id": "x1", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(host.start(granted(ext, "s1")).await.0, 201);
    // s1's own start, granted to it by its token.
    assert_eq!(s1.start(waiter("w4")).await.0, 201);
    assert_eq!(host.start(granted(waiter("other"), "s2")).await.0, 201);
    for id in ["w1", "w2", "w3", "w4", "other"] {
        host.wait_for(id, |r| !r["wait"].is_null()).await;
    }
    let untouched = |r: &Value| r["status"] == "running" && r["cancel_request"].is_null();
    let all = ["w1", "w2", "w3", "w4", "x1", "other"];
    let nothing_changed = |why: &'static str| {
        let host = host.clone();
        async move {
            for id in all {
                let (_, r) = host.get(&format!("/v1/processes/{id}")).await;
                assert!(untouched(&r), "{why}: {r}");
            }
        }
    };

    // Another session's token: 403, like its wakes.
    let (s, err) = s2.post("/v1/sessions/s1/cancel", json!({})).await;
    assert_eq!((s, code(&err)), (403, "forbidden"), "{err}");
    nothing_changed("a session token on another session").await;
    // A bad body: refused before any request is made.
    for body in [
        json!({"bogus": 1}),
        json!({"reason": 7}),
        json!(["by array"]),
        json!({"reason": "x".repeat(64 * 1024 + 1)}),
    ] {
        let (s, err) = host.post("/v1/sessions/s1/cancel", body).await;
        assert!(matches!(s, 400 | 413), "{s} {err}");
    }
    let (s, _) = host
        .post_raw("/v1/sessions/s1/cancel", "text/plain", b"hello".to_vec())
        .await;
    assert_eq!(s, 415);
    nothing_changed("a bad body").await;
    // A session with nothing granted: zero counts.
    let (s, report) = host.post("/v1/sessions/ghost/cancel", json!({})).await;
    assert_eq!((s, report), (200, json!({"requested": 0, "cancelled_now": 0})));
    nothing_changed("an unknown session").await;

    // The host cancels s1's work: every running process granted to it.
    let (s, report) = host.post("/v1/sessions/s1/cancel", json!({"reason": "runaway"})).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["requested"], 5, "{report}");
    assert!(report["cancelled_now"].as_u64().is_some_and(|n| n <= 5), "{report}");
    for id in ["w1", "w2", "w3", "w4"] {
        let r = host.wait_for(id, |r| r["status"] == "cancelled").await;
        assert_eq!(r["cancel_request"]["reason"], "runaway", "{r}");
    }
    let (_, r) = host.get("/v1/processes/x1").await;
    assert_eq!(r["cancel_request"]["reason"], "runaway", "{r}");
    let (_, r) = host.get("/v1/processes/other").await;
    assert!(untouched(&r), "another session's work is untouched: {r}");
    // Again: only the external one runs still, and it carries a request
    // already: it is skipped and not counted, with the same reason or
    // another, and no event is added to its log.
    let events_of = |id: &'static str| {
        let host = host.clone();
        async move {
            let (_, events) = host.get(&format!("/v1/processes/{id}/events")).await;
            events["events"].as_array().map_or(0, Vec::len)
        }
    };
    let logged = events_of("x1").await;
    for reason in ["runaway", "another reason"] {
        let (s, report) = host.post("/v1/sessions/s1/cancel", json!({"reason": reason})).await;
        assert_eq!(
            (s, report),
            (200, json!({"requested": 0, "cancelled_now": 0})),
            "{reason}"
        );
    }
    let (_, r) = host.get("/v1/processes/x1").await;
    assert_eq!(r["cancel_request"]["reason"], "runaway", "{r}");
    assert_eq!(events_of("x1").await, logged, "no event added to x1");

    // A session token cancels its own session's work; an empty body is `{}`.
    let (s, report) = s2
        .post_raw("/v1/sessions/s2/cancel", "application/json", Vec::new())
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["requested"], 1, "{report}");
    host.wait_for("other", |r| r["status"] == "cancelled").await;
}

/// A session's cancel counts what each request reached through descendants:
/// a parent and its children, all queued behind the only worker slot, are
/// requested and end at once, each counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_cancel_counts_the_descendants_it_reaches() {
    let mut args = TWO_SESSIONS.to_vec();
    args.extend(["--workers", "1"]);
    let server = Server::start(&args).await;
    let (host, _, _) = host_and_sessions(&server);
    // Holds the only worker slot while it runs; granted to no session.
    let blocker = common::tool_start("zz-blocker", "shell", json!({"command": "sleep 600"}), "rerunnable");
    assert_eq!(host.start(blocker).await.0, 201);
    host.wait_for("zz-blocker", |r| !r["lease"].is_null()).await;
    let queued = |id: &str, parent: Option<&str>| {
        let mut body = common::tool_start(id, "echo", json!({"value": 1}), "rerunnable");
        body["grant"] = json!({"session_scope": {"session_id": "s1"}});
        if let Some(parent) = parent {
            body["caused_by"] = json!({"process_id": parent});
        }
        body
    };
    // The parent comes first in id order: its request reaches the children
    // before the listing does.
    assert_eq!(host.start(queued("p", None)).await.0, 201);
    for id in ["q1", "q2", "q3"] {
        assert_eq!(host.start(queued(id, Some("p"))).await.0, 201);
    }
    let (s, report) = host.post("/v1/sessions/s1/cancel", json!({"reason": "stop"})).await;
    assert_eq!((s, report), (200, json!({"requested": 4, "cancelled_now": 4})));
    for id in ["p", "q1", "q2", "q3"] {
        let (_, r) = host.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(r["status"], "cancelled", "{r}");
        assert!(r["started"].is_null(), "never started: {r}");
    }
    let (_, r) = host.get("/v1/processes/zz-blocker").await;
    assert!(r["status"] == "running" && r["cancel_request"].is_null(), "{r}");
    // Its shell stops with it, not left behind the server.
    assert_eq!(host.post("/v1/processes/zz-blocker/cancel", json!({})).await.0, 200);
    host.wait_for("zz-blocker", |r| r["status"] == "cancelled").await;
}

/// Module compiles run one at a time on the server: a session token stores
/// one module at a time (a second concurrent put is 429 and stores nothing),
/// while another session's put and the host's are not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stores_one_module_at_a_time() {
    let mut args = TWO_SESSIONS.to_vec();
    args.extend(["--script-cpu", "2s"]);
    let server = Server::start(&args).await;
    let (host, s1, s2) = host_and_sessions(&server);
    // A top level that spins until the CPU limit: each compile takes it whole.
    let spin = |n: u32| json!({"source": format!("for (;;) {{}}\n// {n}\nexport async function main() {{}}\n")});
    let quick = |n: u32| json!({"source": format!("// {n}\nexport async function main() {{ return {n}; }}\n")});
    let (a, b, other) = tokio::join!(
        s1.post("/v1/modules", spin(1)),
        s1.post("/v1/modules", spin(2)),
        s2.post("/v1/modules", quick(3)),
    );
    let refused: Vec<&(u16, Value)> = [&a, &b].into_iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(refused.len(), 1, "one of s1's puts is refused: {a:?} {b:?}");
    let (_, err) = refused[0];
    assert_eq!(code(err), "too_many_requests", "{err}");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("store one at a time"), "{message}");
    let ran = if a.0 == 429 { &b } else { &a };
    assert_eq!(ran.0, 400, "the spinning top level ran out of CPU: {ran:?}");
    assert_eq!(other.0, 201, "another session's put is not refused: {other:?}");
    // The refused put stored nothing (only s2's module is there), and s1
    // stores again once its put answered.
    let (_, page) = host.get("/v1/modules").await;
    assert_eq!(page["modules"].as_array().map(Vec::len), Some(1), "{page}");
    let (s, stored) = s1.post("/v1/modules", quick(4)).await;
    assert_eq!(s, 201, "{stored}");
    // The host is not limited.
    let (a, b) = tokio::join!(host.post("/v1/modules", spin(5)), host.post("/v1/modules", quick(6)));
    assert_eq!((a.0, b.0), (400, 201), "{a:?} {b:?}");

    // A client that hangs up does not free its session's turn while its
    // compile runs on: the next put is refused until that compile ends.
    let gave_up = s1
        .auth(s1.http.post(s1.url("/v1/modules")).json(&spin(7)))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        gave_up.is_err_and(|e| e.is_timeout()),
        "the spinning put outlasts 300 ms"
    );
    let (s, err) = s1.post("/v1/modules", quick(8)).await;
    assert_eq!((s, code(&err)), (429, "too_many_requests"), "{err}");
    // The host's put is compiled after the abandoned one (one at a time, in
    // turn), so its answer comes once that compile has ended.
    let (s, stored) = host.post("/v1/modules", quick(9)).await;
    assert_eq!(s, 201, "{stored}");
    let ended = std::time::Instant::now();
    let next = loop {
        // The turn is released a moment after the compile's end.
        let put = s1.post("/v1/modules", quick(8)).await;
        if put.0 != 429 || ended.elapsed() > Duration::from_secs(2) {
            break put;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(next.0, 201, "{next:?}");
}
