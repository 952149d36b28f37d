//! End-to-end tests of the HTTP API against the real binary (`--db memory`).

mod common;

use std::time::{Duration, Instant};

use common::{tool_start, waiter, Server, TWO_SESSIONS};
use serde_json::{json, Value};

fn code(body: &Value) -> &str {
    body.pointer("/error/code").and_then(Value::as_str).unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_idempotent_and_errors_have_their_classes() {
    let server = Server::start(&[]).await;
    let c = server.client();

    let body = tool_start("p1", "sleep", json!({"ms": 60_000}), "rerunnable");
    let (s, rec) = c.start(body.clone()).await;
    assert_eq!(s, 201, "{rec}");
    assert_eq!(rec["id"], "p1");
    assert_eq!(rec["status"], "running");
    let (s, again) = c.start(body).await;
    assert_eq!(s, 200);
    assert_eq!(again["registration_hash"], rec["registration_hash"]);
    let (s, err) = c.start(tool_start("p1", "sleep", json!({"ms": 1}), "rerunnable")).await;
    assert_eq!((s, code(&err)), (409, "registration_conflict"));

    // Malformed JSON, unknown field, missing disposition: 400 invalid_request.
    let (s, err) = c
        .post_raw("/v1/processes", "application/json", b"{\"id\": ".to_vec())
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    assert!(err.pointer("/error/message").is_some());
    let (s, err) = c
        .start(json!({"id": "p2", "input": {"type": "external"}, "disposition": "externally_owned", "bogus": 1}))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    let (s, err) = c.start(json!({"id": "p2", "input": {"type": "external"}})).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    // Core validation: an over-long id.
    let (s, err) = c
        .start(json!({"id": "x".repeat(300), "input": {"type": "external"}, "disposition": "externally_owned"}))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_id"));
    // External work is run by another system: no worker here could run it.
    for disposition in ["rerunnable", "owner_bound"] {
        let (s, err) = c
            .start(json!({"id": "ext-run", "input": {"type": "external"}, "disposition": disposition}))
            .await;
        assert_eq!((s, code(&err)), (400, "invalid_disposition"), "{disposition}");
    }
    let (s, err) = c.get("/v1/processes/ext-run").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"), "nothing was created");
    // And the other way: what cairn's workers run is never `externally_owned`
    // (it would wait for good).
    let (s, err) = c
        .start(tool_start("ext-run", "echo", json!({"value": 1}), "externally_owned"))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_disposition"), "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`external` input")),
        "{err}"
    );
    let (s, err) = c.get("/v1/processes/ext-run").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"), "nothing was created");
    // A body that is an array, which serde would read by position.
    let (s, err) = c
        .post_raw(
            "/v1/processes",
            "application/json",
            br#"["p3", {"type": "external"}]"#.to_vec(),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    let (s, err) = c
        .post_raw(
            "/v1/processes/p1/cancel",
            "application/json",
            br#" ["by array"]"#.to_vec(),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    assert_eq!(
        c.get("/v1/processes/p1").await.1["cancel_request"],
        Value::Null,
        "nothing changed"
    );
    // A body that is not JSON by content type.
    let (s, err) = c.post_raw("/v1/processes", "text/plain", b"{}".to_vec()).await;
    assert_eq!((s, code(&err)), (415, "invalid_request"));
    // A body labelled compressed, or not UTF-8, is refused for that (the
    // server reads neither), even when its bytes happen to be plain JSON.
    let start = br#"{"id": "labelled", "disposition": "externally_owned", "input": {"type": "external"}}"#;
    let (s, err) = c
        .post_raw("/v1/processes", "application/json; charset=utf-16", start.to_vec())
        .await;
    assert_eq!((s, code(&err)), (415, "invalid_request"));
    assert!(
        err["error"]["message"].as_str().is_some_and(|m| m.contains("utf-16")),
        "{err}"
    );
    let r = c
        .auth(
            c.http
                .post(c.url("/v1/processes"))
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(start.to_vec()),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 415);
    let err: Value = r.json().await.expect("json");
    assert!(
        err["error"]["message"].as_str().is_some_and(|m| m.contains("gzip")),
        "{err}"
    );
    assert_eq!(c.get("/v1/processes/labelled").await.0, 404, "nothing was started");
    // UTF-8 by another name, and `identity`, are read as sent.
    let (s, err) = c
        .post_raw(
            "/v1/processes",
            "application/json; charset=\"us-ascii\"",
            start.to_vec(),
        )
        .await;
    assert_eq!(s, 201, "{err}");
    // Oversize body: 413.
    let big = format!("{{\"id\":\"big\",\"pad\":\"{}\"}}", "a".repeat(3 * 1024 * 1024));
    let (s, err) = c.post_raw("/v1/processes", "application/json", big.into_bytes()).await;
    assert_eq!((s, code(&err)), (413, "payload_too_large"));
    // A payload under the body limit but over the core's payload limit is 413 too.
    let (s, _) = c
        .start(
            json!({"id": "ext", "input": {"type": "external"}, "disposition": "externally_owned",
                      "event_types": [{"name": "blob"}]}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, err) = c
        .post(
            "/v1/processes/ext/events",
            json!({"event_type": "blob", "payload": {"b": "z".repeat(1024 * 1024 + 10)}}),
        )
        .await;
    assert_eq!((s, code(&err)), (413, "payload_too_large"));
    // A payload nested past 64 levels is refused (a stored record wraps it in
    // levels of its own, and no read could decode it); so is a body nested
    // past what the JSON reader takes. The process reads as before.
    let deep = |n: usize| (0..n).fold(json!(1), |v, _| json!([v]));
    let (s, err) = c
        .post(
            "/v1/processes/ext/signals/go",
            json!({"signal_id": "deep", "payload": deep(100)}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("levels deep"),
        "{err}"
    );
    let body = format!(
        r#"{{"signal_id": "deeper", "payload": {}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let (s, err) = c
        .post_raw("/v1/processes/ext/signals/go", "application/json", body.into_bytes())
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    let (s, got) = c.get("/v1/processes/ext").await;
    assert_eq!((s, got["last_sequence"].as_u64()), (200, Some(0)), "{got}");
    let (s, page) = c.get("/v1/processes/ext/events").await;
    assert_eq!((s, page["events"].as_array().map(Vec::len)), (200, Some(0)), "{page}");
    // Unknown tool.
    let (s, err) = c.start(tool_start("p3", "nope", json!({}), "rerunnable")).await;
    assert_eq!((s, code(&err)), (404, "unknown_tool"));
    // Unknown ids and routes.
    let (s, err) = c.get("/v1/processes/missing").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"));
    let (s, err) = c.get("/v1/processes/missing/events").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"));
    let (s, err) = c.get("/v1/nothing-here").await;
    assert_eq!((s, code(&err)), (404, "not_found"));
    assert_eq!(err["error"]["message"], "no such route", "{err}");
    // A child's id (`{id}/{n}`) unencoded reads as more path: the refusal
    // says to percent-encode it.
    for path in ["/v1/processes/k1/1", "/v1/processes/k1/1/events"] {
        let (s, err) = c.get(path).await;
        assert_eq!((s, code(&err)), (404, "not_found"), "{path}");
        assert!(err["error"]["message"].as_str().unwrap().contains("`%2F`"), "{err}");
    }
    let (s, err) = c.delete("/v1/processes/p1").await;
    assert_eq!((s, code(&err)), (405, "method_not_allowed"));
    // Bad query values.
    let (s, err) = c.get("/v1/processes/p1/events?after=x").await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    let (s, err) = c.get("/v1/processes/p1/events?limit=0").await;
    assert_eq!((s, code(&err)), (400, "invalid_page"));
    let (s, err) = c.get("/v1/processes/p1/await?wat=1").await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    // A filter's time past what the stores hold says the largest it takes.
    let (s, err) = c.get("/v1/processes?created_before_ms=18446744073709551616").await;
    assert_eq!((s, code(&err)), (400, "invalid_filter"));
    assert!(
        err["error"]["message"].as_str().is_some_and(|m| m.ends_with(
            "`created_before_ms` is 18446744073709551616, over the largest accepted value 9223372036854775807"
        )),
        "{err}"
    );
    // A number field given something else says which field wants what.
    for (query, said) in [
        (
            "/v1/processes/p1/events?after=x",
            "`after` must be a non-negative integer, got `x`",
        ),
        (
            "/v1/processes/p1/await?timeout_ms=-1",
            "`timeout_ms` must be a non-negative integer, got `-1`",
        ),
        ("/v1/changes?cursor=", "`cursor` must be a non-negative integer, got ``"),
        (
            "/v1/changes?cursor=99999999999999999999",
            "`cursor` is over the largest accepted value 9223372036854775807, got `99999999999999999999`",
        ),
        (
            "/v1/sessions/s1/wakes?limit=-1",
            "`limit` must be a whole number from 1 to 1000, got `-1`",
        ),
        (
            "/v1/schedules?after=%FF",
            "the query holds `%FF`, which does not decode to UTF-8 text",
        ),
        (
            "/v1/processes?originator=session:%C3",
            "the query holds `session:%C3`, which does not decode to UTF-8 text",
        ),
        (
            "/v1/schedules?limit=99999999999999999999999",
            "`limit` must be a whole number from 1 to 1000, got `99999999999999999999999`",
        ),
        (
            "/v1/processes?limit=abc",
            "`limit` must be a whole number from 1 to 1000, got `abc`",
        ),
    ] {
        let (s, err) = c.get(query).await;
        // A bad page size is `invalid_page` on every route, whatever it is.
        let (want, said) = if said.starts_with("`limit`") {
            ("invalid_page", format!("invalid page: {said}"))
        } else {
            ("invalid_request", said.to_string())
        };
        assert_eq!((s, code(&err)), (400, want), "{query}: {err}");
        assert_eq!(err["error"]["message"], said, "{query}");
    }
}

/// A query parameter a route does not take, or one given twice, is refused
/// in cairn's words on every route that takes a query (as `/v1/processes`
/// refuses its filter keys): the unknown one named with those the route
/// takes, the repeated one named; 400 `invalid_request`, and nothing read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_not_taken_or_given_twice_is_refused_in_words() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let (s, _) = c.start(waiter("p1")).await;
    assert_eq!(s, 201);
    for (route, takes) in [
        ("/v1/schedules", "`after` and `limit`"),
        ("/v1/modules", "`after` and `limit`"),
        ("/v1/changes", "`cursor` and `limit`"),
        ("/v1/processes/p1/events", "`after` and `limit`"),
        ("/v1/processes/p1/await", "only `timeout_ms`"),
        ("/v1/sessions/s1/wakes", "only `limit`"),
    ] {
        for (query, said) in [
            (
                "bogus=1".to_string(),
                format!("unknown query parameter `bogus`: this route takes {takes}"),
            ),
            (
                "=1".to_string(),
                format!("a query parameter has no name: this route takes {takes}"),
            ),
        ] {
            let (s, err) = c.get(&format!("{route}?{query}")).await;
            assert_eq!((s, code(&err)), (400, "invalid_request"), "{route}?{query}: {err}");
            assert_eq!(err["error"]["message"], said, "{route}?{query}");
        }
    }
    for (path, said) in [
        ("/v1/schedules?limit=5&limit=6", "`limit` is given twice"),
        ("/v1/schedules?after=a&limit=5&after=b", "`after` is given twice"),
        ("/v1/modules?limit=5&limit=6", "`limit` is given twice"),
        ("/v1/changes?cursor=1&cursor=2", "`cursor` is given twice"),
        ("/v1/processes/p1/events?after=0&after=0", "`after` is given twice"),
        (
            "/v1/processes/p1/await?timeout_ms=1&timeout_ms=2",
            "`timeout_ms` is given twice",
        ),
        ("/v1/sessions/s1/wakes?limit=1&limit=1", "`limit` is given twice"),
        // The first fault in the order given is the one said.
        ("/v1/schedules?limit=1&limit=2&bogus=1", "`limit` is given twice"),
        (
            "/v1/schedules?bogus=1&limit=1&limit=2",
            "unknown query parameter `bogus`: this route takes `after` and `limit`",
        ),
    ] {
        let (s, err) = c.get(path).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{path}: {err}");
        assert_eq!(err["error"]["message"], said, "{path}");
    }
    // A key spelled with escapes is the key it decodes to.
    let (s, page) = c.get("/v1/schedules?lim%69t=5").await;
    assert_eq!(s, 200, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_paging() {
    let server = Server::start(&[]).await;
    let c = server.client();
    for id in ["a1", "a2", "a3"] {
        let (s, _) = c.start(waiter(id)).await;
        assert_eq!(s, 201);
    }
    let mut from_session = tool_start("b1", "echo", json!({"value": 1}), "rerunnable");
    from_session["originator"] = json!({"type": "session", "scope": {"session_id": "s1"}});
    from_session["grant"] = json!({"session_scope": {"session_id": "s2"}, "descriptor": {"kind": "k"}});
    assert_eq!(c.start(from_session).await.0, 201);
    c.wait_for("b1", |r| r["status"] == "completed").await;
    for id in ["a1", "a2", "a3"] {
        c.wait_for(id, |r| !r["wait"].is_null()).await;
    }

    let ids = |page: &Value| -> Vec<String> {
        page["processes"]
            .as_array()
            .map(|a| a.iter().map(|p| p["id"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };
    let (s, page) = c.get("/v1/processes").await;
    assert_eq!(s, 200);
    assert_eq!(ids(&page), ["a1", "a2", "a3"]);
    let (_, page) = c.get("/v1/processes?status=any").await;
    assert_eq!(ids(&page), ["a1", "a2", "a3", "b1"]);
    let (_, page) = c.get("/v1/processes?status=completed").await;
    assert_eq!(ids(&page), ["b1"]);
    let (_, page) = c.get("/v1/processes?waiting=true").await;
    assert_eq!(ids(&page), ["a1", "a2", "a3"]);
    let (_, page) = c.get("/v1/processes?status=any&waiting=false").await;
    assert_eq!(ids(&page), ["b1"]);
    let (_, page) = c.get("/v1/processes?status=any&definition=tool:echo").await;
    assert_eq!(ids(&page), ["b1"]);
    let (_, page) = c.get("/v1/processes?status=any&originator=session:s1").await;
    assert_eq!(ids(&page), ["b1"]);
    let (_, page) = c.get("/v1/processes?status=any&originated_by=s1").await;
    assert_eq!(ids(&page), ["b1"]);
    let (_, page) = c.get("/v1/processes?status=any&granted_to=s2").await;
    assert_eq!(ids(&page), ["b1"]);
    assert_eq!(page["grants"][0]["descriptor"]["kind"], "k");
    let (_, page) = c.get("/v1/processes?status=any&granted_to=s1").await;
    assert_eq!(ids(&page), Vec::<String>::new());
    let (_, page) = c.get("/v1/processes?created_from_ms=0&created_before_ms=1").await;
    assert_eq!(ids(&page), Vec::<String>::new());

    // Paging: limit and after_id, with a cursor while more may follow.
    let (_, page) = c.get("/v1/processes?status=any&limit=2").await;
    assert_eq!(ids(&page), ["a1", "a2"]);
    assert_eq!(page["next_after_id"], "a2");
    let (_, page) = c.get("/v1/processes?status=any&limit=2&after_id=a2").await;
    assert_eq!(ids(&page), ["a3", "b1"]);

    // Errors: unknown key, wrong type, both lenses, bad page size.
    for (q, want) in [
        ("bogus=1", "invalid_filter"),
        ("waiting=maybe", "invalid_filter"),
        ("status=sleeping", "invalid_filter"),
        ("granted_to=s1&originated_by=s1", "invalid_filter"),
        ("granted_to=s1&granted_to=s2", "invalid_filter"),
        // Values no process can have: a typo, or another lens's form.
        ("originator=s1", "invalid_filter"),
        ("originator=session:", "invalid_filter"),
        ("originator=session:s1/frame:", "invalid_filter"),
        ("originator=session:/frame:f", "invalid_filter"),
        ("originator=host:", "invalid_filter"),
        ("originator=session:s%01", "invalid_filter"),
        ("definition=echo", "invalid_filter"),
        ("definition=tool:", "invalid_filter"),
        ("definition=script:module:sha256:00", "invalid_filter"),
        ("definition=script:module:sha256:00%23main", "invalid_filter"),
        ("definition=script:deploy%23main", "invalid_filter"),
        ("caused_by=", "invalid_filter"),
        ("created_before_ms=9223372036854775808", "invalid_filter"),
        ("created_from_ms=18446744073709551616", "invalid_filter"),
        ("limit=0", "invalid_page"),
        ("limit=100000", "invalid_page"),
    ] {
        let (s, err) = c.get(&format!("/v1/processes?{q}")).await;
        assert_eq!((s, code(&err)), (400, want), "{q}: {err}");
    }
    for q in [
        "originator=session:s1/frame:f1",
        "originator=host:ops",
        "originator=host",
    ] {
        assert_eq!(c.get(&format!("/v1/processes?{q}")).await.0, 200, "{q}");
    }
    // An unknown key is named with the keys the route takes, as the other
    // listings name theirs; every key it names is taken.
    let (_, err) = c.get("/v1/processes?bogus=1").await;
    let said = err["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        said.contains("unknown filter key `bogus`: this route takes `granted_to`, `originated_by`, `status`"),
        "{said}"
    );
    let taken: Vec<&str> = said.split('`').skip(3).step_by(2).collect();
    assert_eq!(taken.len(), 12, "{said}");
    for key in taken {
        let value = match key {
            "granted_to" | "originated_by" => "s1",
            "status" => "any",
            "definition" => "external",
            "waiting" => "false",
            "originator" => "host",
            "caused_by" | "after_id" => "a1",
            "order" => "newest",
            _ => "1",
        };
        let (s, page) = c.get(&format!("/v1/processes?{key}={value}")).await;
        assert_eq!(s, 200, "{key}: {page}");
    }
}

/// `order=newest` lists newest first (descending `created_at_ms`, ties by
/// descending id), paging by `next_after_id`; an unknown order is
/// `invalid_filter`, and a newest-first cursor naming no process
/// `invalid_page`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_pages_newest_first() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ids = ["n-c", "n-a", "n-e", "n-b", "n-d"];
    let mut made: Vec<(u64, String)> = Vec::new();
    for id in ids {
        let start = json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned"});
        let (s, rec) = c.start(start).await;
        assert_eq!(s, 201, "{rec}");
        let at = rec["created_at_ms"].as_u64().expect("created_at_ms");
        made.push((at, id.to_string()));
    }
    made.sort_by(|a, b| b.cmp(a));
    let newest: Vec<String> = made.into_iter().map(|(_, id)| id).collect();
    let listed = |page: &Value| -> Vec<String> {
        page["processes"]
            .as_array()
            .map(|a| a.iter().map(|p| p["id"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };
    let (_, page) = c.get("/v1/processes?status=any").await;
    assert_eq!(
        listed(&page),
        ["n-a", "n-b", "n-c", "n-d", "n-e"],
        "id order by default"
    );
    let mut walked: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..ids.len() {
        let q = match &after {
            Some(a) => format!("/v1/processes?status=any&order=newest&limit=2&after_id={a}"),
            None => "/v1/processes?status=any&order=newest&limit=2".to_string(),
        };
        let (s, page) = c.get(&q).await;
        assert_eq!(s, 200, "{q}: {page}");
        let items = listed(&page);
        assert!(items.len() <= 2, "{q}: {page}");
        walked.extend(items);
        match page["next_after_id"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), walked.last().map(String::as_str), "{q}: {page}");
                after = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(walked, newest, "each process once, newest first");
    for (q, want) in [("order=bogus", "invalid_filter"), ("order=", "invalid_filter")] {
        let (s, err) = c.get(&format!("/v1/processes?status=any&{q}")).await;
        assert_eq!((s, code(&err)), (400, want), "{q}: {err}");
    }
    let (s, err) = c.get("/v1/processes?status=any&order=newest&after_id=n-gone").await;
    assert_eq!((s, code(&err)), (400, "invalid_page"), "{err}");
    let (s, page) = c.get("/v1/processes?status=any&after_id=n-gone").await;
    assert_eq!(
        (s, listed(&page)),
        (200, Vec::<String>::new()),
        "in id order only a position"
    );
}

/// A stream of large events, read ahead only a few at a time, sends every
/// one once and in order, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_large_events_sends_each_once_in_order() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = json!({"id": "big", "input": {"type": "external"}, "disposition": "externally_owned",
                       "event_types": [{"name": "chunk"}, {"name": "small"}]});
    assert_eq!(c.start(start).await.0, 201);
    // Large and small mixed: a page's budget cuts it, and grows back.
    for i in 0..12 {
        let (event_type, text) = if i % 4 == 3 {
            ("small", "s".to_string())
        } else {
            ("chunk", format!("{i}").repeat(300_000))
        };
        let (s, body) = c
            .post(
                "/v1/processes/big/events",
                json!({"event_type": event_type, "payload": {"text": text}}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, _) = c
        .post(
            "/v1/processes/big/complete",
            json!({"outcome": {"type": "success", "value": 1}, "authority": "t"}),
        )
        .await;
    assert_eq!(s, 200);
    let mut sse = c.sse("big", "", None).await;
    let mut seen = Vec::new();
    while let Some(e) = sse.next(Duration::from_secs(20)).await {
        let ev: Value = serde_json::from_str(&e.data).expect("event json");
        assert_eq!(e.id.as_deref(), Some(ev["sequence"].to_string().as_str()));
        seen.push(ev["sequence"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (1..=13).collect::<Vec<u64>>(),
        "every event once, in order, then the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_signals_and_sse_resume() {
    let server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(c.start(waiter("w")).await.0, 201);
    c.wait_for("w", |r| !r["wait"].is_null()).await;

    let (s, page) = c.get("/v1/processes/w/events").await;
    assert_eq!(s, 200);
    let types: Vec<&str> = page["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["event_type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(types, ["process.started", "process.waiting"]);
    let (_, page) = c.get("/v1/processes/w/events?after=1&limit=1").await;
    assert_eq!(page["events"][0]["sequence"], 2);

    // Resume after event 1: the stream starts with event 2, then follows live.
    let mut sse = c.sse("w", "", Some(1)).await;
    let first = sse.next(Duration::from_secs(20)).await.expect("event 2");
    assert_eq!(first.id.as_deref(), Some("2"));
    let ev: Value = serde_json::from_str(&first.data).expect("event json");
    assert_eq!(ev["event_type"], "process.waiting");

    // Signal; repeating the signal id returns the same event; a different payload conflicts.
    let (s, sig) = c
        .post(
            "/v1/processes/w/signals/go",
            json!({"signal_id": "sig-1", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{sig}");
    assert_eq!(sig["event_type"], "signal.go");
    let seq = sig["sequence"].as_u64().expect("sequence");
    let (s, again) = c
        .post(
            "/v1/processes/w/signals/go",
            json!({"signal_id": "sig-1", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!((s, again["sequence"].as_u64()), (200, Some(seq)));
    let (s, err) = c
        .post(
            "/v1/processes/w/signals/go",
            json!({"signal_id": "sig-1", "payload": {"n": 2}}),
        )
        .await;
    // The process may already have ended by now; either way nothing new is written.
    assert_eq!(s, 409, "{err}");
    assert!(["replay_conflict", "process_terminal"].contains(&code(&err)), "{err}");
    let (s, err) = c
        .post(
            "/v1/processes/w/signals/bad name",
            json!({"signal_id": "x", "payload": null}),
        )
        .await;
    assert_eq!(s, 400, "{err}");

    // The live tail: signal, the claim that resumes the suspension (started,
    // resumed), completed; then the stream closes.
    let mut seen = Vec::new();
    while let Some(e) = sse.next(Duration::from_secs(20)).await {
        let ev: Value = serde_json::from_str(&e.data).expect("event json");
        assert_eq!(e.id, Some(ev["sequence"].to_string()));
        seen.push(ev["event_type"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(
        seen,
        ["signal.go", "process.started", "process.resumed", "process.completed"]
    );

    // Resuming at or past the terminal is 204 No Content, which tells an
    // `EventSource` to stop (a stream it sees close, it reopens); `?after=`
    // works without the header.
    for last in ["6", "9"] {
        let r = c
            .http
            .get(c.url("/v1/processes/w/events"))
            .header("accept", "text/event-stream")
            .header("last-event-id", last)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 204, "{last}");
    }
    let mut sse = c.sse("w", "?after=3", None).await;
    let e = sse.next(Duration::from_secs(20)).await.expect("event 4");
    assert_eq!(e.id.as_deref(), Some("4"));
    let (_, rec) = c.get("/v1/processes/w/await?timeout_ms=1000").await;
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["outcome"], json!({"type": "success", "value": {"n": 1}}));

    // A bad Last-Event-ID is a 400 saying what is wrong, in the words `after`
    // gets; an unknown id a 404; both before any stream starts.
    for (given, said) in [
        (
            "abc",
            "`Last-Event-ID` must be a non-negative integer (an event sequence number), got `abc`",
        ),
        (
            "99999999999999999999",
            "`Last-Event-ID` is 99999999999999999999, over the largest accepted value 9223372036854775807",
        ),
        (
            "9223372036854775808",
            "`Last-Event-ID` is 9223372036854775808, over the largest accepted value 9223372036854775807",
        ),
    ] {
        let r = c
            .http
            .get(c.url("/v1/processes/w/events"))
            .header("accept", "text/event-stream")
            .header("last-event-id", given)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 400, "{given}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["message"], said, "{given}");
    }
    let r = c
        .http
        .get(c.url("/v1/processes/nope/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 404);
}

/// `GET .../events` streams only when the client's `Accept` prefers
/// `text/event-stream` to JSON: quality values count, `q=0` refuses, ties go
/// to the type listed first, and `*/*` or an `Accept` naming neither get JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_negotiate_the_accept_header() {
    let server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(
        c.start(tool_start("e", "echo", json!({"value": 1}), "rerunnable"))
            .await
            .0,
        201
    );
    let (_, rec) = c.get("/v1/processes/e/await?timeout_ms=10000").await;
    assert_eq!(rec["status"], "completed", "{rec}");
    const SSE: &str = "text/event-stream";
    const JSON: &str = "application/json";
    for (accept, expected) in [
        (vec![SSE], SSE),
        (vec!["text/event-stream; charset=utf-8"], SSE),
        (vec!["Text/Event-Stream; Charset=UTF-8"], SSE),
        (vec!["application/json; charset=utf-8, text/event-stream;q=0.5"], JSON),
        (vec!["text/event-stream; charset=latin1"], JSON),
        (vec![JSON], JSON),
        (vec![], JSON),
        (vec!["*/*"], JSON),
        (vec!["text/event-stream;q=0, application/json"], JSON),
        (vec!["text/event-stream;q=0"], JSON),
        (vec!["text/event-stream;q=0, */*"], JSON),
        (vec!["application/json;q=0.5, text/event-stream"], SSE),
        (vec!["application/json, text/event-stream"], JSON),
        (vec!["text/event-stream, application/json"], SSE),
        (vec!["text/*"], SSE),
        (vec!["text/html"], JSON),
        (vec!["application/json;q=0.1", SSE], SSE),
        (vec!["text/event-stream, not a media type"], JSON),
    ] {
        let mut r = c.http.get(c.url("/v1/processes/e/events"));
        for a in &accept {
            r = r.header("accept", *a);
        }
        let r = r.send().await.expect("request");
        assert_eq!(r.status().as_u16(), 200, "{accept:?}");
        let ty = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ty.starts_with(expected), "Accept {accept:?}: got {ty}");
        // Either way the body is the whole log (the stream closes after the terminal event).
        let body = r.text().await.expect("body");
        assert!(body.contains("process.completed"), "{accept:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_await_with_timeout() {
    let server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(
        c.start(tool_start("s", "sleep", json!({"ms": 60_000}), "rerunnable"))
            .await
            .0,
        201
    );
    // A rerunnable sleep suspends: it shows a timer wait and holds no lease.
    c.wait_for("s", |r| r["wait"]["kind"] == "timer" && r["lease"].is_null())
        .await;

    // Await with a timeout answers the still-running record.
    let t = Instant::now();
    let (s, rec) = c.get("/v1/processes/s/await?timeout_ms=300").await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("running")));
    assert!(t.elapsed() >= Duration::from_millis(290));

    // A reason past 64 KiB is too large, and changes nothing.
    let long = "r".repeat(64 * 1024 + 1);
    let (s, err) = c.post("/v1/processes/s/cancel", json!({ "reason": long })).await;
    assert_eq!((s, code(&err)), (413, "payload_too_large"), "{err}");
    let (s, err) = c
        .post("/v1/processes/s/abandon-request", json!({ "reason": long }))
        .await;
    assert_eq!((s, code(&err)), (413, "payload_too_large"), "{err}");
    let (_, rec) = c.get("/v1/processes/s").await;
    assert!(
        rec["cancel_request"].is_null() && rec["abandon_request"].is_null(),
        "{rec}"
    );
    let (s, rec) = c.post("/v1/processes/s/cancel", json!({"reason": "enough"})).await;
    assert_eq!(s, 200, "{rec}");
    assert!(rec["cancel_request"].is_object(), "{rec}");
    let (s, rec) = c.get("/v1/processes/s/await?timeout_ms=10000").await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("cancelled")), "{rec}");
    assert_eq!(rec["outcome"]["type"], "cancelled");
    // A terminal process takes no more requests; an empty body is fine for cancel.
    let r = c
        .http
        .post(c.url("/v1/processes/s/cancel"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 409);
    let (s, err) = c.post("/v1/processes/missing/cancel", json!({})).await;
    assert_eq!((s, code(&err)), (404, "unknown_process"));
}

/// A child names an existing parent; cancelling the parent cancels its tree
/// (a suspended child resumes and ends `cancelled`, an externally owned one
/// gets the request); a child started afterwards is born cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_and_the_tree_cancel() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let child = |parent: &str, mut body: Value| {
        body["caused_by"] = json!({ "process_id": parent });
        body
    };
    let (s, err) = c
        .start(child(
            "nobody",
            tool_start("orphan", "echo", json!({"value": 1}), "rerunnable"),
        ))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap_or("").contains("nobody"),
        "{err}"
    );
    assert_eq!(c.get("/v1/processes/orphan").await.0, 404, "nothing was stored");

    assert_eq!(c.start(waiter("root")).await.0, 201);
    let (s, rec) = c.start(child("root", waiter("kid"))).await;
    assert_eq!(s, 201, "{rec}");
    let ext = json!({"id": "ext", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(child("kid", ext)).await.0, 201);
    c.wait_for("kid", |r| r["wait"]["kind"] == "signal" && r["lease"].is_null())
        .await;

    let (s, rec) = c.post("/v1/processes/root/cancel", json!({"reason": "tree"})).await;
    assert_eq!(s, 200, "{rec}");
    for id in ["root", "kid"] {
        let (s, rec) = c.get(&format!("/v1/processes/{id}/await?timeout_ms=10000")).await;
        assert_eq!((s, rec["status"].as_str()), (200, Some("cancelled")), "{id}: {rec}");
    }
    let (_, ext) = c.get("/v1/processes/ext").await;
    assert_eq!(ext["status"], "running", "externally owned: a request only");
    assert_eq!(ext["cancel_request"]["reason"], "tree", "{ext}");

    let (s, late) = c.start(child("root", waiter("late"))).await;
    assert_eq!(s, 201, "{late}");
    assert_eq!(late["status"], "cancelled", "born cancelled: {late}");
    let (s, listed) = c.get("/v1/processes?caused_by=root&status=any").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = listed["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["kid", "late"]);
}

/// An append's `wake_target` on a type without wake semantics is refused,
/// naming the field and the type, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_target_on_a_type_without_wake_semantics_is_refused() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let body = json!({
        "id": "wt-1", "input": {"type": "external"}, "disposition": "externally_owned",
        "event_types": [
            {"name": "plain"},
            {"name": "ping", "semantics": {"wake": {"input": {"pointer": "/text"}}}}
        ]
    });
    assert_eq!(c.start(body).await.0, 201);
    let (s, err) = c
        .post(
            "/v1/processes/wt-1/events",
            json!({"event_type": "plain", "payload": {}, "wake_target": {"session_id": "s2"}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert_eq!(
        err["error"]["message"],
        "invalid request: `wake_target` takes effect only on an event type with wake semantics; `plain` has none"
    );
    let (_, rec) = c.get("/v1/processes/wt-1").await;
    assert_eq!(rec["last_sequence"], 0, "nothing was appended: {rec}");
    let (s, res) = c
        .post(
            "/v1/processes/wt-1/events",
            json!({"event_type": "ping", "payload": {"text": "hi"}, "wake_target": {"session_id": "s2"}}),
        )
        .await;
    assert_eq!(s, 200, "{res}");
    let (_, wakes) = c.get("/v1/sessions/s2/wakes").await;
    assert_eq!(wakes["wakes"].as_array().map(Vec::len), Some(1), "{wakes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_process_append_wakes_complete_and_prune() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let body = json!({
        "id": "ext-1",
        "input": {"type": "external", "metadata": {"ticket": 7}},
        "disposition": "externally_owned",
        "wake_target": {"session_id": "s1"},
        "grant": {"session_scope": {"session_id": "s1"}, "descriptor": {"kind": "ticket", "label": "t7"}},
        "event_types": [
            {"name": "progress", "payload_schema": {"type": "object", "required": ["text"]},
             "semantics": {"wake": {"input": {"pointer": "/text"}}}}
        ],
        "external_ref": {"backend": "tickets", "id": "7"}
    });
    let (s, rec) = c.start(body).await;
    assert_eq!(s, 201, "{rec}");

    // Append a declared event with a replay key; the wake lands for s1.
    let (s, res) = c
        .post(
            "/v1/processes/ext-1/events",
            json!({"event_type": "progress", "payload": {"text": "half way"}, "replay_key": "r1"}),
        )
        .await;
    assert_eq!(s, 200, "{res}");
    assert_eq!(res["replayed"], false);
    assert_eq!(res["event"]["sequence"], 1);
    let (s, res) = c
        .post(
            "/v1/processes/ext-1/events",
            json!({"event_type": "progress", "payload": {"text": "half way"}, "replay_key": "r1"}),
        )
        .await;
    assert_eq!((s, res["replayed"].as_bool()), (200, Some(true)));
    let (s, err) = c
        .post(
            "/v1/processes/ext-1/events",
            json!({"event_type": "progress", "payload": {}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "schema_violation"));
    let (s, err) = c
        .post(
            "/v1/processes/ext-1/events",
            json!({"event_type": "nope", "payload": {}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "undeclared_event_type"));
    let (s, err) = c
        .post(
            "/v1/processes/ext-1/events",
            json!({"event_type": "progress", "lease": {}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));

    let (s, wakes) = c.get("/v1/sessions/s1/wakes").await;
    assert_eq!(s, 200);
    let wake = &wakes["wakes"][0];
    assert_eq!(wake["input"], "half way");
    let wake_id = wake["wake_id"].as_str().expect("wake id").to_string();
    // The ack takes no fields: anything else is refused and acknowledges nothing.
    let (s, err) = c
        .post(&format!("/v1/sessions/s1/wakes/{wake_id}/ack"), json!({"bogus": 1}))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    // ... in words a client can act on (no Rust type names, no `?` path).
    for (body, said) in [
        (&b"null"[..], "request body: must be empty or `{}`, got null"),
        (b"[]", "request body: expected a JSON object, not an array"),
        (
            b"{\"x\": 1}",
            "request body: takes no fields (send no body, or `{}`), got `x`",
        ),
        (b"{bad", "request body: key must be a string at line 1 column 2"),
    ] {
        let (s, err) = c
            .post_raw(
                &format!("/v1/sessions/s1/wakes/{wake_id}/ack"),
                "application/json",
                body.to_vec(),
            )
            .await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
        assert_eq!(err["error"]["message"], said);
    }
    let (_, still) = c.get("/v1/sessions/s1/wakes").await;
    assert_eq!(still["wakes"][0]["wake_id"], json!(wake_id), "still pending");
    let (s, ack) = c.post(&format!("/v1/sessions/s1/wakes/{wake_id}/ack"), json!({})).await;
    assert_eq!((s, ack["acked"].as_bool()), (200, Some(true)));
    let (s, ack) = c.post(&format!("/v1/sessions/s1/wakes/{wake_id}/ack"), json!({})).await;
    assert_eq!((s, ack["acked"].as_bool()), (200, Some(false)));
    let (_, wakes) = c.get("/v1/sessions/s1/wakes").await;
    assert_eq!(wakes["wakes"], json!([]));
    let (s, err) = c.post("/v1/sessions/s1/wakes/nope/ack", json!({})).await;
    assert_eq!((s, code(&err)), (404, "unknown_wake"));

    // External completion; only once (a retry of the same completion answers
    // the same record), and only for externally owned processes.
    let complete = json!({"outcome": {"type": "success", "value": {"done": true}}, "authority": "tickets"});
    let (s, rec) = c.post("/v1/processes/ext-1/complete", complete.clone()).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["status"], "completed");
    let (s, again) = c.post("/v1/processes/ext-1/complete", complete).await;
    assert_eq!((s, &again), (200, &rec), "the retry changes nothing");
    let (s, err) = c
        .post(
            "/v1/processes/ext-1/complete",
            json!({"outcome": {"type": "success", "value": 1}}),
        )
        .await;
    assert_eq!((s, code(&err)), (409, "process_terminal"));
    // A cancel of it says how it ended.
    let (s, err) = c.post("/v1/processes/ext-1/cancel", json!({})).await;
    assert_eq!((s, code(&err)), (409, "process_terminal"), "{err}");
    assert_eq!(
        err["error"]["message"], "process `ext-1` already ended (completed)",
        "{err}"
    );
    assert_eq!(c.start(waiter("own")).await.0, 201);
    let (s, err) = c
        .post(
            "/v1/processes/own/complete",
            json!({"outcome": {"type": "success", "value": 1}}),
        )
        .await;
    assert_eq!((s, code(&err)), (409, "not_externally_owned"));

    // The change feed sees both.
    let (s, feed) = c.get("/v1/changes?cursor=0&limit=10").await;
    assert_eq!(s, 200);
    assert!(feed["changes"].as_array().is_some_and(|a| a.len() >= 2), "{feed}");
    assert!(feed["next_cursor"].as_u64().is_some_and(|n| n > 0));

    // Prune: running never goes; the terminal one leaves a tombstone (410).
    let future = json!(u64::MAX / 2);
    let (s, err) = c
        .post(
            "/v1/prune",
            json!({"cutoff_ms": future, "status": "running", "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_filter"));
    let (s, err) = c.post("/v1/prune", json!({"cutoff_ms": 0})).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
    let (s, report) = c
        .post(
            "/v1/prune",
            json!({"cutoff_ms": future, "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["pruned"], 1);
    let (s, err) = c.get("/v1/processes/ext-1").await;
    assert_eq!((s, code(&err)), (410, "no_longer_retained"));
    assert_eq!(err["error"]["tombstone"]["status"], "completed");
    let (s, _) = c.get("/v1/processes/own").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_transfer_and_session_delete() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let mut body = json!({"id": "x", "input": {"type": "external"}, "disposition": "externally_owned"});
    body["grant"] = json!({"session_scope": {"session_id": "s1"}});
    assert_eq!(c.start(body).await.0, 201);
    let mut w = waiter("y");
    w["grant"] = json!({"session_scope": {"session_id": "s1"}});
    assert_eq!(c.start(w).await.0, 201);

    let (s, report) = c
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s2"}, "process_ids": ["x", "nope"]}),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["moved"], json!(["x"]));
    assert_eq!(report["not_granted"], json!(["nope"]));

    // A body other than none or `{}` is refused, as the ack's is, and deletes nothing.
    for (content_type, body) in [("text/plain", "hello"), ("application/json", r#"{"x": 1}"#)] {
        let r = c
            .http
            .delete(c.url("/v1/sessions/s1"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("answered");
        assert!(
            matches!(r.status().as_u16(), 400 | 415),
            "{content_type}: {}",
            r.status()
        );
    }
    let (s, report) = c.delete("/v1/sessions/s1").await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["revoked_grants"], 1);
    assert_eq!(report["orphaned"], json!(["y"]));

    // An abandon request on an unleased external process is reconciled by the worker.
    let (s, err) = c.post("/v1/processes/x/abandon-request", json!({"reason": " "})).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "a reason is required");
    let (s, rec) = c
        .post("/v1/processes/x/abandon-request", json!({"reason": "owner vanished"}))
        .await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["abandon_request"]["requested_by"], "host");
    let rec = c.wait_for("x", |r| r["status"] == "abandoned").await;
    assert_eq!(rec["outcome"]["evidence"]["writer"], "reconciled_request");
    let (s, err) = c.post("/v1/processes/x/abandon-request", json!({})).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
}

/// A created range that holds no time (`created_from_ms` at or after
/// `created_before_ms`) is `invalid_filter` naming both keys, in a list's
/// query and in a prune's body, and the prune removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_created_range_is_invalid_filter_naming_both_keys() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ext = json!({"id": "done-1", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(ext).await.0, 201);
    let done = json!({"outcome": {"type": "success", "value": 1}});
    assert_eq!(c.post("/v1/processes/done-1/complete", done).await.0, 200);
    let names_both = |err: &Value| {
        let message = err["error"]["message"].as_str().unwrap_or_default().to_string();
        message.contains("`created_from_ms`") && message.contains("`created_before_ms`")
    };
    for (from, before) in [(5u64, 5u64), (9, 3), (u64::MAX / 4, 0)] {
        let q = format!("/v1/processes?status=any&created_from_ms={from}&created_before_ms={before}");
        let (s, err) = c.get(&q).await;
        assert_eq!((s, code(&err)), (400, "invalid_filter"), "{q}: {err}");
        assert!(names_both(&err), "{q}: {err}");
        let body = json!({"cutoff_ms": u64::MAX / 2, "watermark": {"type": "no_projector"},
                          "created_from_ms": from, "created_before_ms": before});
        let (s, err) = c.post("/v1/prune", body).await;
        assert_eq!((s, code(&err)), (400, "invalid_filter"), "{from}..{before}: {err}");
        assert!(names_both(&err), "{err}");
    }
    assert_eq!(c.get("/v1/processes/done-1").await.0, 200, "nothing was pruned");
    // A range of one millisecond still holds time.
    let (_, rec) = c.get("/v1/processes/done-1").await;
    let at = rec["created_at_ms"].as_u64().expect("created_at_ms");
    let q = format!(
        "/v1/processes?status=any&created_from_ms={at}&created_before_ms={}",
        at + 1
    );
    let (s, page) = c.get(&q).await;
    assert_eq!(
        (s, page["processes"][0]["id"].as_str()),
        (200, Some("done-1")),
        "{page}"
    );
}

/// Every bad filter value, in a list's query or a prune's body, is
/// `invalid_filter` and names its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_filter_value_is_invalid_filter_naming_its_key() {
    let server = Server::start(&[]).await;
    let c = server.client();
    for (q, key) in [
        ("granted_to=", "granted_to"),
        ("originated_by=", "originated_by"),
        ("granted_to=a/frame:", "granted_to"),
        ("originated_by=/frame:b", "originated_by"),
        ("granted_to=..", "granted_to"),
        ("caused_by=", "caused_by"),
        ("status=bogus", "status"),
        ("waiting=maybe", "waiting"),
        ("created_from_ms=x", "created_from_ms"),
    ] {
        let (s, err) = c.get(&format!("/v1/processes?{q}")).await;
        assert_eq!((s, code(&err)), (400, "invalid_filter"), "{q}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{key}`")), "{q}: {message}");
    }
    let prune = |field: &str, value: Value| {
        let mut body = json!({"cutoff_ms": 1, "watermark": {"type": "no_projector"}});
        body[field] = value;
        body
    };
    for (key, value) in [
        ("status", json!("bogus")),
        ("status", json!("running")),
        ("status", json!(3)),
        ("status", json!(null)),
        ("definition", json!("echo")),
        ("definition", json!(7)),
        ("originator", json!("s1")),
        ("caused_by", json!("")),
        ("caused_by", json!(["p"])),
        ("created_from_ms", json!("x")),
        ("created_from_ms", json!(-1)),
        ("created_before_ms", json!(u64::MAX)),
    ] {
        let (s, err) = c.post("/v1/prune", prune(key, value.clone())).await;
        assert_eq!((s, code(&err)), (400, "invalid_filter"), "{key}: {value}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{key}`")), "{key}: {value}: {message}");
    }
    // A status prune does not know is told the ones it takes: not `running`.
    let (_, err) = c.post("/v1/prune", prune("status", json!("bogus"))).await;
    assert_eq!(
        err["error"]["message"],
        "invalid filter: `status`: unknown status `bogus`: one of completed, failed, cancelled, abandoned, any",
        "{err}"
    );
    // What is not a filter keeps its own code, and good filters still prune.
    let (s, err) = c
        .post(
            "/v1/prune",
            json!({"cutoff_ms": "x", "watermark": {"type": "no_projector"}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    let (s, err) = c.post("/v1/prune", prune("bogus", json!(1))).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    let mut body = prune("status", json!("completed"));
    body["definition"] = json!("external");
    body["caused_by"] = json!(null);
    body["created_from_ms"] = json!(0);
    let (s, report) = c.post("/v1/prune", body).await;
    assert_eq!((s, report["pruned"].as_u64()), (200, Some(0)), "{report}");
}

/// A completion repeated (a retry after a lost reply) writes nothing, so the
/// end it answers again is counted once, whatever the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_completion_counts_one_end() {
    let server = Server::start(&[]).await;
    let c = server.client();
    for (id, outcome) in [
        ("ok", json!({"type": "success", "value": 1})),
        (
            "broke",
            json!({"type": "failure", "class": "remote", "code": "E1", "message": "m"}),
        ),
        ("dropped", json!({"type": "cancelled", "message": "superseded"})),
    ] {
        let start = json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned"});
        assert_eq!(c.start(start).await.0, 201);
        let path = format!("/v1/processes/{id}/complete");
        let (s, first) = c.post(&path, json!({"outcome": outcome})).await;
        assert_eq!(s, 200, "{first}");
        for _ in 0..2 {
            let (s, again) = c.post(&path, json!({"outcome": outcome})).await;
            assert_eq!((s, &again), (200, &first), "{id}: the retry answers the same record");
        }
        let (_, events) = c.get(&format!("/v1/processes/{id}/events")).await;
        let events = events["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "{id}: one end: {events:?}");
    }
    let text = c.metrics().await;
    for status in ["completed", "failed", "cancelled"] {
        let line = format!("cairn_processes_ended_total{{status=\"{status}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    assert!(text.lines().any(|l| l == "cairn_processes_started_total 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let (s, h) = c.get("/healthz").await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    assert_eq!(
        c.start(tool_start("e", "echo", json!({"value": 1}), "rerunnable"))
            .await
            .0,
        201
    );
    c.wait_for("e", |r| r["status"] == "completed").await;
    assert_eq!(c.start(waiter("w")).await.0, 201);
    let _ = c
        .post("/v1/processes/w/signals/go", json!({"signal_id": "a", "payload": 1}))
        .await;
    let _ = c.get("/v1/processes/w/await?timeout_ms=5000").await;

    let text = c.metrics().await;
    assert!(text.contains("cairn_processes_started_total 2"), "{text}");
    assert!(
        text.contains("cairn_processes_ended_total{status=\"completed\"}"),
        "{text}"
    );
    assert!(
        text.contains("cairn_http_requests_total{method=\"POST\",route=\"/v1/processes\",status=\"201\"} 2"),
        "{text}"
    );
    assert!(text.contains("cairn_append_duration_seconds_count 1"), "{text}");
    assert!(text.contains("cairn_await_duration_seconds_count 1"), "{text}");
    assert!(
        text.lines().any(|l| l == "cairn_awaits_open 0"),
        "an answered await is no longer open: {text}"
    );

    let (s, doc) = c.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/v1/processes",
        "/v1/processes/{id}",
        "/v1/processes/{id}/events",
        "/v1/processes/{id}/await",
        "/v1/processes/{id}/signals/{name}",
        "/v1/processes/{id}/cancel",
        "/v1/processes/{id}/complete",
        "/v1/processes/{id}/abandon-request",
        "/v1/grants/transfer",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/wakes",
        "/v1/sessions/{session_id}/wakes/{wake_id}/ack",
        "/v1/prune",
        "/v1/changes",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    // Every id the server takes fits the schema's ids: 256 bytes of ASCII
    // are 256 characters.
    let id = &doc["components"]["schemas"]["StartRequest"]["properties"]["id"];
    assert_eq!(id["maxLength"], 256, "{id}");
    let long = "i".repeat(256);
    let (s, _) = c
        .start(json!({"id": long, "input": {"type": "external"}, "disposition": "externally_owned"}))
        .await;
    assert_eq!(s, 201);
    // The variants of the tagged enums take no fields beyond their own, as
    // the server reads them.
    for name in ["Originator", "Outcome"] {
        let variants = doc["components"]["schemas"][name]["oneOf"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!variants.is_empty(), "{name}");
        for v in variants {
            assert_eq!(v["additionalProperties"], json!(false), "{name}: {v}");
        }
    }
    // A parameter is described as the server reads it: events page by
    // sequence, schedules by id.
    let parameter = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| p["schema"]["type"].clone())
    };
    assert_eq!(parameter("/v1/processes/{id}/events", "after"), Some(json!("integer")));
    assert_eq!(parameter("/v1/schedules", "after"), Some(json!("string")));
    // Every reference resolves, and the core wire types are described field by field.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("odd ref {r}"));
        assert!(doc["components"]["schemas"][name].is_object(), "dangling {r}");
    }
    let record = &doc["components"]["schemas"]["ProcessRecord"];
    for field in [
        "id",
        "status",
        "outcome",
        "disposition",
        "input",
        "provenance",
        "wait",
        "lease",
        "last_sequence",
    ] {
        assert!(
            record["properties"][field].is_object(),
            "ProcessRecord lacks {field}: {record}"
        );
    }
    assert!(doc["components"]["schemas"]["StartRequest"]["properties"]["disposition"].is_object());
    assert!(doc["components"]["schemas"]["Outcome"].is_object());

    // Auth, every answer, and the limits the server enforces are in the document.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let start = &doc["paths"]["/v1/processes"]["post"];
    assert_eq!(start["operationId"], "start_process");
    for status in ["201", "400", "401", "409", "413", "415", "500", "503"] {
        assert!(start["responses"][status].is_object(), "start lacks {status}");
    }
    // A route without a body still says a declared body over the limit is 413.
    assert!(doc["paths"]["/v1/processes"]["get"]["responses"]["413"].is_object());
    // A body whose fields are all optional may be left out, and is said so;
    // one with a required field is required.
    for (path, method) in [
        ("/v1/processes/{id}/cancel", "post"),
        ("/v1/sessions/{session_id}", "delete"),
        ("/v1/sessions/{session_id}/wakes/{wake_id}/ack", "post"),
        ("/v1/schedules/{id}/pause", "post"),
        ("/v1/schedules/{id}/resume", "post"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["requestBody"]["required"],
            json!(false),
            "{method} {path}"
        );
    }
    assert_eq!(start["requestBody"]["required"], json!(true));
    let after = doc["paths"]["/v1/processes/{id}/events"]["get"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "after"))
        .expect("after")
        .clone();
    assert_eq!(after["schema"]["maximum"], json!(i64::MAX));
    let tools: Vec<Value> = doc["components"]["schemas"]["StartInput"]["oneOf"]
        .as_array()
        .expect("variants")
        .iter()
        .filter_map(|v| v.pointer("/properties/tool/enum/0").cloned())
        .collect();
    assert!(
        tools.contains(&json!("shell")) && tools.contains(&json!("echo")),
        "{tools:?}"
    );
    // A turn's input is required, as a start without one is refused.
    let turn = doc["components"]["schemas"]["StartInput"]["oneOf"]
        .as_array()
        .expect("variants")
        .iter()
        .find(|v| v.pointer("/properties/type/enum/0") == Some(&json!("session_turn")))
        .expect("the session_turn variant")
        .clone();
    assert_eq!(turn["required"], json!(["type", "input"]));
    let (s, err) = c
        .post(
            "/v1/processes",
            json!({"id": "no-input", "disposition": "rerunnable", "input": {"type": "session_turn"}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");

    // Cursors above the int64 range are refused, not wrapped.
    let too_big = "9223372036854775808";
    for path in [
        format!("/v1/processes/e/events?after={too_big}"),
        format!("/v1/changes?cursor={too_big}"),
        format!("/v1/processes/e/await?timeout_ms={too_big}"),
    ] {
        let (s, err) = c.get(&path).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{path}");
    }
    let (s, _) = c.get("/v1/processes/e/events?after=9223372036854775807").await;
    assert_eq!(s, 200);
    let (s, err) = c
        .post(
            "/v1/prune",
            json!({"cutoff_ms": 0, "watermark": {"type": "cursor", "cursor": u64::MAX}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"));
}

/// An open loopback server answers only loopback names and loopback pages: a
/// page that re-points its own name at 127.0.0.1 (DNS rebinding) sends its
/// name as `Host` and is same-origin to the browser, so the host decides.
/// Every route is covered, reads too; nothing a refused request asked for is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_answers_only_loopback_hosts_and_pages() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let port = server.port();
    let rebound = format!("attacker.example:{port}");
    // An authority whose "port" is not a number, or is no TCP port, or
    // that carries a user part, names no loopback.
    let port_named = format!("localhost:{port}.attacker.example");
    let user_part = format!("attacker.example@localhost:{port}");
    let send = |method: reqwest::Method, path: &str, host: Option<&str>, origin: Option<&str>| {
        let mut r = c
            .http
            .request(method, c.url(path))
            .header("sec-fetch-site", "same-origin")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(h) = host {
            r = r.header("host", h);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.body(serde_json::to_vec(&waiter("rebound")).expect("body")).send()
    };
    for (host, origin) in [
        (Some(rebound.as_str()), None),
        (Some(rebound.as_str()), Some(format!("http://{rebound}"))),
        (None, Some("http://evil.example".to_string())),
        (None, Some("null".to_string())),
        (Some("localhost.evil.example"), None),
        (Some("127.0.0.1.evil.example"), None),
        (Some(port_named.as_str()), None),
        (None, Some(format!("http://{port_named}"))),
        (Some("127.0.0.1:7711.evil.example"), None),
        (Some("[::1]:7711.evil.example"), None),
        (Some("localhost:65536"), None),
        (Some("localhost:+7711"), None),
        (Some(user_part.as_str()), None),
        (None, Some(format!("http://{user_part}"))),
    ] {
        let r = send(reqwest::Method::POST, "/v1/processes", host, origin.as_deref())
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), 403, "start with {host:?} {origin:?}");
        let err: Value = r.json().await.expect("an error body");
        assert_eq!(code(&err), "forbidden");
        for (method, path) in [
            (reqwest::Method::GET, "/v1/processes"),
            (reqwest::Method::GET, "/ui/"),
            (reqwest::Method::POST, "/mcp"),
        ] {
            let r = send(method.clone(), path, host, origin.as_deref())
                .await
                .expect("answered");
            assert_eq!(r.status().as_u16(), 403, "{method} {path} with {host:?} {origin:?}");
        }
    }
    assert_eq!(c.get("/v1/processes/rebound").await.0, 404, "nothing was started");
    // Loopback names, with or without a loopback page, are answered.
    for (host, origin) in [
        (
            Some(format!("localhost:{port}")),
            Some(format!("http://localhost:{port}")),
        ),
        (Some(format!("LOCALHOST:{port}")), None),
        (None, Some(format!("http://127.0.0.1:{port}"))),
        // Any loopback address written out (an open server may listen on
        // 127.0.0.2): no name a page could re-point.
        (
            Some(format!("127.0.0.2:{port}")),
            Some(format!("http://127.0.0.2:{port}")),
        ),
        (Some(format!("[::1]:{port}")), None),
        // An empty port is the default one (RFC 3986: `port = *DIGIT`).
        (Some("localhost:".to_string()), None),
    ] {
        let r = send(
            reqwest::Method::GET,
            "/v1/processes",
            host.as_deref(),
            origin.as_deref(),
        )
        .await
        .expect("answered");
        assert_eq!(r.status().as_u16(), 200, "{host:?} {origin:?}");
    }
    let r = send(
        reqwest::Method::POST,
        "/v1/processes",
        None,
        Some(&format!("http://[::1]:{port}")),
    )
    .await
    .expect("answered");
    assert_eq!(r.status().as_u16(), 201);
    // The MCP endpoint answers any loopback address written out too.
    let initialize = c
        .http
        .post(c.url("/mcp"))
        .header("host", format!("127.0.0.2:{port}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(initialize.status().as_u16(), 200);
    // A request that names no host: HTTP/1.1 requires one (400); an HTTP/1.0
    // one is addressed to no loopback name (403). Neither starts anything.
    let body = serde_json::to_string(&waiter("hostless")).expect("body");
    for (version, status) in [("HTTP/1.1", "400"), ("HTTP/1.0", "403")] {
        let answer = raw_exchange(
            &port,
            &format!(
                "POST /v1/processes {version}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert_eq!(answer.split(' ').nth(1), Some(status), "{version}: {answer}");
    }
    assert_eq!(c.get("/v1/processes/hostless").await.0, 404, "nothing was started");
}

/// A request with two `Host` headers, or two `Origin` headers, is refused
/// 400 `invalid_request` before anything runs, whichever comes first and on
/// a server with tokens as on an open one: the server does not pick one.
/// With one of each, the same request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_or_origin_headers_are_refused() {
    let body = serde_json::to_string(&waiter("doubled")).expect("body");
    for tokens in [&[][..], &["--token", "host-secret"]] {
        let server = Server::start(tokens).await;
        let port = server.port();
        let bearer = if tokens.is_empty() {
            String::new()
        } else {
            "authorization: Bearer host-secret\r\n".to_string()
        };
        let local = format!("localhost:{port}");
        let page = format!("http://localhost:{port}");
        let send = |headers: String| {
            let (port, body, bearer) = (port.clone(), body.clone(), bearer.clone());
            async move {
                raw_exchange(
                    &port,
                    &format!(
                        "POST /v1/processes HTTP/1.1\r\n{headers}{bearer}content-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                )
                .await
            }
        };
        for (headers, one) in [
            (format!("host: {local}\r\nhost: attacker.example\r\n"), "Host"),
            (format!("host: attacker.example\r\nhost: {local}\r\n"), "Host"),
            (format!("host: {local}\r\nhost: {local}\r\n"), "Host"),
            (
                format!("host: {local}\r\norigin: {page}\r\norigin: http://attacker.example\r\n"),
                "Origin",
            ),
            (
                format!("host: {local}\r\norigin: http://attacker.example\r\norigin: {page}\r\n"),
                "Origin",
            ),
        ] {
            let answer = send(headers.clone()).await;
            assert_eq!(
                answer.split(' ').nth(1),
                Some("400"),
                "{tokens:?} {headers:?}: {answer}"
            );
            assert!(
                answer.contains("\"invalid_request\"") && answer.contains(&format!("send one {one} header")),
                "{tokens:?} {headers:?}: {answer}"
            );
        }
        let c = if tokens.is_empty() {
            server.client()
        } else {
            server.with_token("host-secret")
        };
        assert_eq!(
            c.get("/v1/processes/doubled").await.0,
            404,
            "{tokens:?}: nothing was started"
        );
        let answer = send(format!("host: {local}\r\norigin: {page}\r\n")).await;
        assert_eq!(answer.split(' ').nth(1), Some("201"), "{tokens:?}: {answer}");
    }
}

/// An error quoting what it refused (a megabyte-long name, say) is cut to a
/// bounded message that says how long it was; short ones are whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_error_message_is_cut() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let long = "n".repeat(1_000_000);
    let (s, err) = c
        .start(tool_start("cut-1", "wait_signal", json!({"name": long}), "rerunnable"))
        .await;
    assert_eq!(s, 400, "{}", &err.to_string()[..200]);
    let message = err["error"]["message"].as_str().expect("a message");
    assert!(message.len() < 4200, "{} bytes", message.len());
    assert!(message.contains("bytes in all"), "{}", &message[message.len() - 100..]);
    let (s, err) = c.start(tool_start("cut-2", "nope", json!({}), "rerunnable")).await;
    assert_eq!((s, code(&err)), (404, "unknown_tool"));
    assert!(!err["error"]["message"].as_str().unwrap().contains("in all"), "{err}");
    assert_eq!(c.get("/v1/processes/cut-1").await.0, 404, "nothing was started");
}

/// Sends `request` as is to the server on `port` and reads the answer to its end.
async fn raw_exchange(port: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// An open loopback server takes no writes a web page of another site could
/// make a browser send: an empty form (no JSON content type) is 415, and any
/// write the browser marks as from another site is 403, whatever its body.
/// Reads, and the same writes from a client, go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_of_another_site_cannot_write() {
    let server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(c.start(waiter("w")).await.0, 201);
    let schedule = json!({"id": "nightly", "cron": "0 3 * * *", "overlap": "skip",
        "start": {"input": {"type": "tool_call", "tool": "echo", "args": {}}, "disposition": "rerunnable"}});
    assert_eq!(c.post("/v1/schedules", schedule).await.0, 201);

    for path in ["/v1/schedules/nightly/pause", "/v1/processes/w/cancel"] {
        for content_type in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"] {
            let (s, err) = c.post_raw(path, content_type, Vec::new()).await;
            assert_eq!((s, code(&err)), (415, "invalid_request"), "{path} {content_type}");
        }
        let (s, err) = c.post_raw(path, "text/plain", b"x=1".to_vec()).await;
        assert_eq!((s, code(&err)), (415, "invalid_request"), "{path}");
        for site in ["cross-site", "same-site"] {
            let r = c
                .http
                .post(c.url(path))
                .header("sec-fetch-site", site)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), 403, "{path} from a {site} page");
        }
    }
    let (_, schedule) = c.get("/v1/schedules/nightly").await;
    assert_eq!(schedule["paused"], json!(false), "nothing was paused");
    let (_, record) = c.get("/v1/processes/w").await;
    assert_eq!(record["cancel_request"], Value::Null, "nothing was cancelled");

    let r = c
        .http
        .get(c.url("/v1/processes/w"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200, "a read is not refused");
    let (s, paused) = c
        .post_raw("/v1/schedules/nightly/pause", "application/json", Vec::new())
        .await;
    assert_eq!(
        (s, &paused["paused"]),
        (200, &json!(true)),
        "an empty JSON body is fine"
    );
    let (s, err) = c.post("/v1/schedules/nightly/resume", json!({"now": true})).await;
    assert_eq!(
        (s, code(&err)),
        (400, "invalid_request"),
        "pause and resume take no fields"
    );
}

/// What the server answers fits the document it serves: records (of every
/// input kind, with the core event types and their `abandoned` terminal, a
/// start's omitted `args` and `output_contract` read as null), listings and
/// change pages validate against their schemas, while the document still
/// narrows what a start may send (a start input per tool this server runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_fit_the_served_document() {
    let server = Server::start(&["--model", "default=http://127.0.0.1:9/v1"]).await;
    let c = server.client();
    let (s, doc) = c.get("/openapi.json").await;
    assert_eq!(s, 200);
    let validator = |schema: &str| {
        let root = json!({"$ref": format!("#/components/schemas/{schema}"), "components": doc["components"]});
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{schema} compiles: {e}"))
    };
    let record = validator("ProcessRecord");
    let starts = [
        tool_start("with-args", "echo", json!({"value": 1}), "rerunnable"),
        json!({"id": "no-args", "input": {"type": "tool_call", "tool": "echo"}, "disposition": "rerunnable"}),
        json!({"id": "turn", "input": {"type": "session_turn", "session": {}, "input": "hi"}, "disposition": "rerunnable"}),
        json!({"id": "ext", "input": {"type": "external"}, "disposition": "externally_owned",
               "event_types": [{"name": "build.done", "semantics": {"terminal": {"state": "completed"}}}]}),
    ];
    for body in starts {
        let (s, rec) = c.start(body.clone()).await;
        assert_eq!(s, 201, "{body} -> {rec}");
        let errors: Vec<String> = record
            .iter_errors(&rec)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{rec}\n{errors:#?}");
    }
    c.wait_for("no-args", |r| r["status"] == "completed").await;
    let (s, rec) = c.get("/v1/processes/no-args").await;
    assert_eq!(s, 200);
    assert!(record.is_valid(&rec), "{rec}");
    let (s, page) = c.get("/v1/processes?status=any").await;
    assert_eq!(s, 200);
    let errors: Vec<String> = validator("ListPage")
        .iter_errors(&page)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let (s, changes) = c.get("/v1/changes").await;
    assert_eq!(s, 200);
    let errors: Vec<String> = validator("ChangePage")
        .iter_errors(&changes)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Schedules hold their templates as stored: one without args, one turn
    // without a contract.
    for (id, input) in [
        ("no-args", json!({"type": "tool_call", "tool": "echo"})),
        ("turn", json!({"type": "session_turn", "session": {}, "input": "hi"})),
    ] {
        let body =
            json!({"id": id, "every": "1h", "overlap": "skip", "start": {"input": input, "disposition": "rerunnable"}});
        let (s, schedule) = c.post("/v1/schedules", body).await;
        assert_eq!(s, 201, "{schedule}");
        let errors: Vec<String> = validator("Schedule")
            .iter_errors(&schedule)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{schedule}\n{errors:#?}");
    }
    let (s, page) = c.get("/v1/schedules").await;
    assert_eq!(s, 200);
    assert!(validator("SchedulePage").is_valid(&page), "{page}");
    // A start still says which tools this server runs, with their args.
    let start = validator("StartRequest");
    assert!(start.is_valid(&tool_start("a", "echo", json!({"value": 1}), "rerunnable")));
    assert!(!start.is_valid(&tool_start("a", "no_such_tool", json!({}), "rerunnable")));
    // What the server took above without `args`, the document takes too.
    let no_args = json!({"id": "no-args", "input": {"type": "tool_call", "tool": "echo"}, "disposition": "rerunnable"});
    let errors: Vec<String> = start.iter_errors(&no_args).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // A tool with a required argument still needs its `args`.
    let sleep = json!({"id": "s", "input": {"type": "tool_call", "tool": "sleep"}, "disposition": "rerunnable"});
    assert!(!start.is_valid(&sleep));
    assert_eq!(c.start(sleep).await.0, 400, "the server refuses it too");
}

/// Where the served document says what a body may hold, the server takes
/// what it allows and refuses what it does not: text the server refuses
/// empty, blank or holding control characters (an authority, a module's
/// name, a failure's class and code), fields it reads null as left out (a
/// turn's model, a tool's optional argument), objects that take no other
/// keys (an acknowledgement, a template selector), and which fields go
/// together (a cause, a schedule's timing, `shell`'s `argv` or `command`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_takes_what_the_server_takes() {
    let server = Server::start(&["--model", "default=http://127.0.0.1:9/v1"]).await;
    let c = server.client();
    let (s, doc) = c.get("/openapi.json").await;
    assert_eq!(s, 200);
    let validator = |schema: &str| {
        let root = json!({"$ref": format!("#/components/schemas/{schema}"), "components": doc["components"]});
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{schema} compiles: {e}"))
    };
    let ok = json!({"type": "success", "value": 1});
    let failure = |class: &str, code: &str| json!({"type": "failure", "class": class, "code": code, "message": "m"});
    let start = |input: Value| json!({"input": input, "disposition": "rerunnable"});
    let external = |extra: Value| {
        let mut body = json!({"input": {"type": "external"}, "disposition": "externally_owned"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let turn = |session: Value| start(json!({"type": "session_turn", "input": "hi", "session": session}));
    let shell = |args: Value| start(json!({"type": "tool_call", "tool": "shell", "args": args}));
    let schedule = |timing: Value| {
        let mut body =
            json!({"overlap": "skip", "start": {"input": {"type": "external"}, "disposition": "externally_owned"}});
        body.as_object_mut()
            .unwrap()
            .extend(timing.as_object().unwrap().clone());
        body
    };
    let wake =
        |input: Value| external(json!({"event_types": [{"name": "t.x", "semantics": {"wake": {"input": input}}}]}));
    // (schema, route: `{ext}` a running external process, body (a start's
    // and a schedule's without their id), whether it is taken)
    let cases = [
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": ok, "authority": "ci"}),
            true,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": ok, "authority": null}),
            true,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": ok, "authority": ""}),
            false,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": ok, "authority": "c\u{1}"}),
            false,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": ok, "authority": ".."}),
            false,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": failure("tool", "x")}),
            true,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": failure("", "x")}),
            false,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": failure("tool", " ")}),
            false,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": {"type": "cancelled", "message": ""}}),
            false,
        ),
        (
            "CompleteBody",
            "{ext}/complete",
            json!({"outcome": {"type": "abandoned", "evidence": {"writer": "sweep", "epoch_ms": 1}}}),
            false,
        ),
        (
            "AbandonBody",
            "{ext}/abandon-request",
            json!({"reason": "r", "requested_by": "ops"}),
            true,
        ),
        (
            "AbandonBody",
            "{ext}/abandon-request",
            json!({"reason": "r", "requested_by": ""}),
            false,
        ),
        (
            "AbandonBody",
            "{ext}/abandon-request",
            json!({"reason": "r", "requested_by": "\u{7f}"}),
            false,
        ),
        ("AbandonBody", "{ext}/abandon-request", json!({"reason": " \n"}), false),
        (
            "ModuleBody",
            "/v1/modules",
            json!({"source": "export async function main() {}", "name": "m"}),
            true,
        ),
        (
            "ModuleBody",
            "/v1/modules",
            json!({"source": "export async function main() {}", "name": ""}),
            false,
        ),
        (
            "ModuleBody",
            "/v1/modules",
            json!({"source": "export async function main() {}", "name": "a\tb"}),
            false,
        ),
        ("ModuleBody", "/v1/modules", json!({"source": " "}), false),
        ("AckBody", "/v1/sessions/s1/wakes/w1/ack", json!({"x": 1}), false),
        (
            "StartRequest",
            "/v1/processes",
            wake(json!({"template": {"template": "x", "fields": {}}})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            wake(json!({"template": {"template": "x", "extra": 1}})),
            false,
        ),
        ("StartRequest", "/v1/processes", wake(json!({"present": "x"})), false),
        (
            "StartRequest",
            "/v1/processes",
            turn(json!({"model": null, "system": null, "max_steps": null, "temperature": null})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            turn(json!({"tools": ["echo", "echo"]})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            start(json!({"type": "session_turn", "input": "hi", "output_contract": null})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            start(json!({"type": "tool_call", "tool": "wait_signal", "args": {"name": "go", "timeout_ms": null}})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            shell(json!({"argv": ["true"], "command": null, "timeout_ms": null})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            shell(json!({"argv": ["true"], "command": "true"})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            shell(json!({"argv": null, "command": null})),
            false,
        ),
        ("StartRequest", "/v1/processes", shell(json!({"command": "  "})), false),
        (
            "StartRequest",
            "/v1/processes",
            start(json!({"type": "script", "module_ref": "m1", "process_name": "main"})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            external(json!({"originator": {"type": "host", "scope": null}})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            external(json!({"originator": {"type": "host", "scope": ""}})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            external(json!({"originator": {"type": "session", "scope": {"session_id": "s/frame:f"}}})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            external(json!({"caused_by": {"kind": "turn", "id": "t1", "process_id": null}})),
            true,
        ),
        (
            "StartRequest",
            "/v1/processes",
            external(json!({"caused_by": {}})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            external(json!({"caused_by": {"kind": "turn"}})),
            false,
        ),
        (
            "StartRequest",
            "/v1/processes",
            json!({"id": ".", "input": {"type": "external"}, "disposition": "externally_owned"}),
            false,
        ),
        (
            "ScheduleRequest",
            "/v1/schedules",
            schedule(json!({"every": "1h", "cron": null})),
            true,
        ),
        (
            "ScheduleRequest",
            "/v1/schedules",
            schedule(json!({"every": "1h", "cron": "0 * * * *"})),
            false,
        ),
        (
            "ScheduleRequest",
            "/v1/schedules",
            schedule(json!({"every": null})),
            false,
        ),
        (
            "ScheduleRequest",
            "/v1/schedules",
            schedule(json!({"every": "1h", "id": "s".repeat(236)})),
            false,
        ),
        (
            "PruneBody",
            "/v1/prune",
            json!({"cutoff_ms": 0, "watermark": {"type": "no_projector"}, "status": "running"}),
            false,
        ),
        (
            "PruneBody",
            "/v1/prune",
            json!({"cutoff_ms": 0, "watermark": {"type": "no_projector"}, "definition": "tool:echo", "originator": "host"}),
            true,
        ),
        (
            "PruneBody",
            "/v1/prune",
            json!({"cutoff_ms": 0, "watermark": {"type": "no_projector"}, "definition": "script:m1#main"}),
            false,
        ),
    ];
    for (i, (schema, route, mut body, taken)) in cases.into_iter().enumerate() {
        let path = if route.starts_with("{ext}") {
            let id = format!("ext-{i}");
            let (s, _) = c
                .start(json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned"}))
                .await;
            assert_eq!(s, 201);
            route.replace("{ext}", &format!("/v1/processes/{id}"))
        } else {
            route.to_string()
        };
        if matches!(schema, "StartRequest" | "ScheduleRequest") && body.get("id").is_none() {
            body["id"] = json!(format!("case-{i}"));
        }
        let errors: Vec<String> = validator(schema).iter_errors(&body).map(|e| e.to_string()).collect();
        assert_eq!(errors.is_empty(), taken, "the document on {body}: {errors:#?}");
        let (s, answer) = c.post(&path, body.clone()).await;
        assert_eq!(s < 300, taken, "the server on {body}: {s} {answer}");
    }
    // The path and query parameters say so too.
    let ops = &doc["paths"];
    let param = |path: &str, method: &str, name: &str| {
        let p = ops[path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{method} {path} has no {name}"));
        jsonschema::validator_for(&p["schema"]).expect("compiles")
    };
    let definition = param("/v1/processes", "get", "definition");
    assert!(definition.is_valid(&json!("tool:echo")) && !definition.is_valid(&json!("bogus")));
    assert_eq!(c.get("/v1/processes?definition=bogus").await.0, 400);
    let module = param("/v1/modules/{module_ref}", "get", "module_ref");
    assert!(!module.is_valid(&json!("m1")));
    assert_eq!(c.get("/v1/modules/m1").await.0, 400);
}

/// The bounds a session turn's start is held to are in the document's
/// `StartInput`, and the document and the server agree at each bound and
/// past it: `temperature` 0 to 2, `max_steps` 1 to 64, `repair_attempts` 0
/// to 5, and messages of the fields a chat message takes (`name` a string).
/// A temperature past its bound is named as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_turns_bounds_are_in_the_document() {
    let server = Server::start(&["--model", "default=http://127.0.0.1:9/v1"]).await;
    let c = server.client();
    let (s, doc) = c.get("/openapi.json").await;
    assert_eq!(s, 200);
    let root = json!({"$ref": "#/components/schemas/StartRequest", "components": doc["components"]});
    let start_schema = jsonschema::validator_for(&root).expect("StartRequest compiles");
    let turn = |session: Value, input: Value, contract: Value| {
        json!({"input": {"type": "session_turn", "session": session, "input": input, "output_contract": contract},
               "disposition": "rerunnable"})
    };
    let session = |field: &str, v: Value| turn(json!({field: v}), json!("hi"), Value::Null);
    let messages = |m: Value| turn(json!({}), json!([m]), Value::Null);
    let repairs = |n: Value| {
        turn(
            json!({}),
            json!("hi"),
            json!({"type": "json_schema", "schema": {"type": "object"}, "repair_attempts": n}),
        )
    };
    let cases = [
        (session("temperature", json!(0)), true),
        (session("temperature", json!(2)), true),
        (session("temperature", json!(2.01)), false),
        (session("temperature", json!(-0.5)), false),
        (session("temperature", json!(1e300)), false),
        (session("max_steps", json!(1)), true),
        (session("max_steps", json!(64)), true),
        (session("max_steps", json!(65)), false),
        (session("max_steps", json!(0)), false),
        (repairs(json!(0)), true),
        (repairs(json!(5)), true),
        (repairs(json!(6)), false),
        (messages(json!({"role": "user", "content": "a", "name": "alice"})), true),
        (messages(json!({"role": "user", "content": "a", "name": 5})), false),
        (messages(json!({"role": "user", "content": "a", "bogus": 1})), false),
        (messages(json!({"role": "developer", "content": "a"})), false),
    ];
    for (i, (mut body, taken)) in cases.into_iter().enumerate() {
        body["id"] = json!(format!("bound-{i}"));
        let errors: Vec<String> = start_schema.iter_errors(&body).map(|e| e.to_string()).collect();
        assert_eq!(errors.is_empty(), taken, "the document on {body}: {errors:#?}");
        let (s, answer) = c.start(body.clone()).await;
        assert_eq!(s < 300, taken, "the server on {body}: {s} {answer}");
        if !taken {
            assert_eq!(code(&answer), "invalid_request", "{body}: {answer}");
        }
    }
    let mut body = session("temperature", json!(1e300));
    body["id"] = json!("bound-far");
    let (_, answer) = c.start(body).await;
    let said = answer["error"]["message"].as_str().expect("a message");
    assert!(said.contains("`temperature` is 0 to 2, not 1e300"), "{said}");
}

/// A write (or a read by id) given query parameters it does not read is
/// refused and changes nothing: `POST /v1/prune?dry_run=true` must not prune.
/// A schedule's delete reads its body as the other writes do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_a_route_does_not_read_are_refused() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ext = json!({"id": "ext", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(ext).await.0, 201);
    let (s, _) = c
        .post(
            "/v1/processes/ext/complete",
            json!({"outcome": {"type": "success", "value": 1}, "authority": "t"}),
        )
        .await;
    assert_eq!(s, 200);
    let prune = json!({"cutoff_ms": u64::MAX / 2, "watermark": {"type": "no_projector"}});
    let (s, err) = c.post("/v1/prune?dry_run=true", prune.clone()).await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("dry_run"), "{err}");
    assert_eq!(c.get("/v1/processes/ext").await.0, 200, "nothing was pruned");
    let (s, err) = c
        .post(
            "/v1/processes?dry_run=1",
            tool_start("q", "echo", json!({"value": 1}), "rerunnable"),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert_eq!(c.get("/v1/processes/q").await.0, 404, "nothing was started");
    let (s, err) = c.get("/v1/processes/ext?fields=id").await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    // A read has no body to move them to: it is not told to.
    let said = err["error"]["message"].as_str().unwrap();
    assert!(said.contains("fields=id") && !said.contains("body"), "{said}");
    // A body left empty is read as `{}`: the field it lacks is named, with
    // no line and column in a body never sent.
    let r = c
        .http
        .post(c.url("/v1/processes/ext2/signals/go"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.expect("json");
    let said = err["error"]["message"].as_str().unwrap();
    assert!(said.contains("signal_id") && !said.contains("line 1"), "{said}");
    // The listings still read theirs, on HEAD as on GET.
    assert_eq!(c.get("/v1/processes?status=any").await.0, 200);
    assert_eq!(c.get("/v1/processes/ext/events?after=0").await.0, 200);
    for path in ["/v1/processes?status=any", "/v1/changes?limit=1"] {
        let head = c.http.head(c.url(path)).send().await.expect("HEAD");
        assert_eq!(head.status(), 200, "HEAD {path}");
    }

    let schedule = json!({"id": "nightly", "every": "1h", "overlap": "skip",
        "start": {"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}}, "disposition": "rerunnable"}});
    assert_eq!(c.post("/v1/schedules", schedule).await.0, 201);
    let (s, err) = c.delete("/v1/schedules/nightly?confirm=false").await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    let r = c
        .http
        .delete(c.url("/v1/schedules/nightly"))
        .header("content-type", "text/plain")
        .body("{\"confirm\": false")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 415);
    assert_eq!(c.get("/v1/schedules/nightly").await.0, 200, "the schedule stays");
    assert_eq!(c.delete("/v1/schedules/nightly").await.0, 204);
}

/// A key given twice anywhere in a body is refused and changes nothing, in
/// an open field (a tool's `args`) and in a schedule's fields alike, not
/// read as its last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_twice_is_refused() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let args_twice = br#"{"id":"d1","disposition":"rerunnable","input":{"type":"tool_call","tool":"echo","args":{"value":1,"value":2}}}"#;
    let (s, err) = c
        .post_raw("/v1/processes", "application/json", args_twice.to_vec())
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("given twice"),
        "{err}"
    );
    assert_eq!(c.get("/v1/processes/d1").await.0, 404);
    let schedule_twice = br#"{"id":"nightly","id":"nightly-old","every":"1h","overlap":"skip","start":{"input":{"type":"tool_call","tool":"echo","args":{"value":1}},"disposition":"rerunnable"}}"#;
    let (s, err) = c
        .post_raw("/v1/schedules", "application/json", schedule_twice.to_vec())
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    for id in ["nightly", "nightly-old"] {
        assert_eq!(c.get(&format!("/v1/schedules/{id}")).await.0, 404, "{id}");
    }
    // Malformed JSON is still said as the parser says it.
    let (s, err) = c
        .post_raw("/v1/processes", "application/json", b"{\"id\": ".to_vec())
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
}

/// An integer past 64 bits in a body is refused and changes nothing: kept as
/// the nearest double, two different integers would be one payload, and a
/// second signal or append carrying the other would replay as the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integer_past_64_bits_is_refused() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = json!({"id": "big", "disposition": "externally_owned",
                       "input": {"type": "external", "metadata": {}},
                       "event_types": [{"name": "n", "payload_schema": {}}]});
    assert_eq!(c.start(start).await.0, 201);
    for (path, body) in [
        (
            "/v1/processes/big/events",
            r#"{"event_type":"n","payload":100000000000000000000001,"replay_key":"k"}"#,
        ),
        (
            "/v1/processes/big/signals/s",
            r#"{"signal_id":"a","payload":{"amount":18446744073709551617}}"#,
        ),
    ] {
        let (s, err) = c.post_raw(path, "application/json", body.as_bytes().to_vec()).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{path}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("past what 64 bits hold"),
            "{err}"
        );
    }
    let (_, rec) = c.get("/v1/processes/big").await;
    assert_eq!(rec["last_sequence"], 0, "nothing was appended: {rec}");
    // The widest integers 64 bits hold, and floats, are kept as given.
    let (s, answer) = c
        .post_raw(
            "/v1/processes/big/events",
            "application/json",
            br#"{"event_type":"n","payload":{"u":18446744073709551615,"f":1e23}}"#.to_vec(),
        )
        .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["event"]["payload"]["u"], json!(18446744073709551615u64));
}

/// A refused body names the field it is about, also where the parser's own
/// words do not (a null where a disposition goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_names_its_field() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let (s, err) = c
        .start(json!({"id": "d1", "input": {"type": "external"}, "disposition": null}))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("`disposition`"),
        "{err}"
    );
    let (s, err) = c
        .start(json!({"id": "d2", "input": {"type": "tool_call", "tool": 7}, "disposition": "rerunnable"}))
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("`input"), "{err}");
    // Inside a turn's session, where serde names no field of its own.
    let turn = |session: Value| {
        json!({"id": "t1", "disposition": "rerunnable",
               "input": {"type": "session_turn", "session": session, "input": "hi"}})
    };
    for (session, field) in [
        (
            json!({"temperature": "hot"}),
            "`input.session.temperature`: invalid type: string \"hot\"",
        ),
        (json!({"system": 5}), "`input.session.system`"),
        (json!({"model": 7}), "`input.session.model`"),
        (json!({"tools": ["echo", 3]}), "`input.session.tools[1]`"),
        (json!("big"), "`input.session`: invalid type: string"),
    ] {
        let (s, err) = c.start(turn(session.clone())).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{session}: {err}");
        let said = err["error"]["message"].as_str().unwrap();
        assert!(said.contains(field), "{session}: {said}");
    }
    // Said in the wire's terms, never by a Rust type's name.
    for (body, said) in [
        (json!("x"), "a start request"),
        (
            json!({"id": "d3", "input": {"type": "external"}, "disposition": "externally_owned", "wake_target": "s1"}),
            "a session scope",
        ),
    ] {
        let (s, err) = c.start(body.clone()).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(said) && !message.contains("struct"),
            "{body}: {message}"
        );
    }
    // Every body and every shape nested in one, given a value of the wrong
    // JSON type (or a selector with a second key), says what it wanted in
    // the wire's terms: never a Rust type's name, never a bare "expected value".
    let ext = |extra: Value| {
        let mut body = json!({"id": "w1", "input": {"type": "external"}, "disposition": "externally_owned"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let typed = |semantics: Value| ext(json!({"event_types": [{"name": "a.b", "semantics": semantics}]}));
    let wake = |dedupe: Value| typed(json!({"wake": {"input": {"const": "x"}, "dedupe_key": dedupe}}));
    let tool = json!({"type": "tool_call", "tool": "echo", "args": {}});
    let bad_starts = [
        (ext(json!({"input": 7})), "a process input"),
        (ext(json!({"disposition": 7})), "a disposition"),
        (ext(json!({"event_types": [7]})), "an event type"),
        (typed(json!(7)), "semantics: an object"),
        (typed(json!({"wake": 7})), "wake semantics"),
        (typed(json!({"terminal": 7})), "terminal semantics"),
        (
            typed(json!({"terminal": {"state": 7, "await_output": "payload"}})),
            "a terminal state",
        ),
        (
            typed(json!({"terminal": {"state": "failed", "await_output": 7}})),
            "a selector",
        ),
        (wake(json!(7)), "a dedupe key"),
        (wake(json!({"const": "k", "x": 1})), "one key: `const` and `x`"),
        (
            wake(json!({"selector": {"pointer": "/a", "x": 1}})),
            "one key: `pointer` and `x`",
        ),
        (wake(json!({"selector": {"template": "t"}})), "a template"),
        (ext(json!({"originator": 7})), "an originator"),
        (ext(json!({"caused_by": 7})), "a causal reference"),
        (ext(json!({"grant": 7})), "a grant"),
        (
            ext(json!({"grant": {"session_scope": {"session_id": "s"}, "descriptor": 7}})),
            "a grant descriptor",
        ),
        (ext(json!({"external_ref": 7})), "an external reference"),
        (ext(json!({"env_spec": 7})), "an environment spec"),
        (
            ext(json!({"input": {"type": "session_turn", "session": 7, "input": "hi"}, "disposition": "rerunnable"})),
            "a turn session",
        ),
    ];
    let mut bad: Vec<(&str, Value, &str)> = bad_starts
        .into_iter()
        .map(|(b, said)| ("/v1/processes", b, said))
        .collect();
    let (s, _) = c
        .start(json!({"id": "w0", "input": tool, "disposition": "rerunnable"}))
        .await;
    assert!(s < 300, "{s}");
    bad.extend([
        ("/v1/processes/w0/events", json!(null), "an append"),
        ("/v1/processes/w0/signals/go", json!(null), "a signal"),
        ("/v1/processes/w0/cancel", json!(7), "a cancel request"),
        ("/v1/processes/w0/complete", json!(null), "a completion"),
        ("/v1/processes/w0/complete", json!({"outcome": 7}), "an outcome"),
        ("/v1/processes/w0/abandon-request", json!("x"), "an abandon request"),
        ("/v1/grants/transfer", json!(7), "a transfer"),
        ("/v1/schedules", json!(null), "a schedule"),
        (
            "/v1/schedules",
            json!({"id": "s", "every": "1h", "start": 7}),
            "`start` must be a JSON object",
        ),
        (
            "/v1/schedules",
            json!({"id": "s", "every": "1h", "overlap": 7, "start": {}}),
            "an overlap policy",
        ),
        ("/v1/schedules/s/pause", json!(7), "an empty object"),
        ("/v1/modules", json!(7), "a module"),
        ("/v1/prune", json!(7), "a prune request"),
    ]);
    for (path, body, said) in bad {
        let (s, err) = c.post(path, body.clone()).await;
        assert_eq!(s, 400, "{path} {body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        for rust in ["struct", "enum ", "::", "expected value"] {
            assert!(!message.contains(rust), "{path} {body}: {message}");
        }
        assert!(message.contains(said), "{path} {body}: {message}");
    }
    // A nested object given as an array is refused, not read by position,
    // and nothing is made; arrays where the wire takes them stay fine.
    for (path, body, at) in [
        (
            "/v1/processes",
            ext(json!({"id": "arr1", "wake_target": ["s1", "f1"]})),
            "wake_target",
        ),
        (
            "/v1/processes",
            ext(json!({"id": "arr2", "env_spec": [{}, {}]})),
            "env_spec",
        ),
        (
            "/v1/processes",
            ext(json!({"id": "arr3", "event_types": [["ev.q", {}, [null, {"input": "payload"}]]]})),
            "event_types[0]",
        ),
        (
            "/v1/processes",
            ext(json!({"id": "arr4", "grant": [{"session_id": "s1"}, ["k", "l"]]})),
            "grant",
        ),
        (
            "/v1/grants/transfer",
            json!({"from": ["s1"], "to": {"session_id": "s2"}, "process_ids": ["w0"]}),
            "from",
        ),
        (
            "/v1/schedules",
            json!({"id": "arr5", "every": "1h", "overlap": "skip", "start": {"input": {"type": "external"},
                   "disposition": "externally_owned", "wake_target": ["s1"]}}),
            "start.wake_target",
        ),
    ] {
        let (s, err) = c.post(path, body.clone()).await;
        assert_eq!(s, 400, "{path} {body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{at}`: expected a JSON object, not an array")),
            "{path} {body}: {message}"
        );
    }
    for id in ["arr1", "arr2", "arr3", "arr4"] {
        assert_eq!(c.get(&format!("/v1/processes/{id}")).await.0, 404, "{id} was made");
    }
    assert_eq!(c.get("/v1/schedules/arr5").await.0, 404, "the schedule was made");
    let fine = ext(json!({"id": "arr-ok", "input": {"type": "external", "metadata": [1, [2]]}}));
    assert_eq!(c.start(fine).await.0, 201);
    // A schedule's, the most nested body, too.
    let (s, err) = c
        .post(
            "/v1/schedules",
            json!({"id": "s", "every": "1h", "overlap": "skip",
                   "start": {"input": {"type": "external"}, "disposition": null}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`start.disposition`"),
        "{err}"
    );
    let (s, err) = c
        .post(
            "/v1/schedules",
            json!({"id": "s", "every": "1h", "overlap": "skip",
                   "start": {"input": {"type": "session_turn", "session": {"max_steps": "5"}}, "disposition": "rerunnable"}}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
    let said = err["error"]["message"].as_str().unwrap();
    assert!(said.contains("`start.input.session.max_steps`"), "{err}");
}

/// `GET path`: 200, a body of at most `bound` bytes, as JSON.
async fn bounded_page(c: &common::Client, path: &str, bound: usize) -> Value {
    let r = c.http.get(c.url(path)).send().await.expect("page");
    assert_eq!(r.status(), 200, "{path}");
    let body = r.bytes().await.expect("body");
    assert!(body.len() <= bound, "{path}: a page of {} bytes", body.len());
    serde_json::from_slice(&body).expect("json")
}

/// A page of events is bounded in bytes as well as in events: a log of
/// events near the payload limit comes back over several pages, each under
/// the byte bound past its first event, in order, each event once; a
/// stream of it sends them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_events_is_bounded_in_bytes() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let (s, _) = c
        .start(
            json!({"id": "big", "input": {"type": "external"}, "disposition": "externally_owned",
                      "event_types": [{"name": "blob"}]}),
        )
        .await;
    assert_eq!(s, 201);
    let n = 12;
    for i in 0..n {
        let (s, err) = c
            .post(
                "/v1/processes/big/events",
                json!({"event_type": "blob", "payload": {"i": i, "b": "z".repeat(900 * 1024)}}),
            )
            .await;
        assert_eq!(s, 200, "{err}");
    }
    let bound = cairn_core::EVENT_PAGE_BYTES + 1024 * 1024;
    let mut after = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = bounded_page(&c, &format!("/v1/processes/big/events?limit=1000&after={after}"), bound).await;
        pages += 1;
        for e in page["events"].as_array().expect("events") {
            if e["event_type"] == "blob" {
                seen.push(e["payload"]["i"].as_u64().expect("i"));
            }
        }
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert!(pages > 1, "one page held it all");
    assert_eq!(seen, (0..n).collect::<Vec<u64>>());
}

/// A page of processes is bounded in bytes as well as in count: records
/// near the payload limit come back over several pages, each under the
/// byte bound past its first record, each naming where the next starts, in
/// id order, each process once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_records_is_bounded_in_bytes() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let n = 8;
    let ids: Vec<String> = (0..n).map(|i| format!("big-{i}")).collect();
    for id in &ids {
        let (s, err) = c
            .start(
                json!({"id": id, "disposition": "rerunnable", "input": {"type": "tool_call", "tool": "echo",
                                               "args": {"value": "z".repeat(900 * 1024)}}}),
            )
            .await;
        assert!(s == 201, "{err}");
    }
    let bound = cairn_core::LIST_PAGE_BYTES + 2 * 1024 * 1024;
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(a) => format!("/v1/processes?status=any&limit=1000&after_id={a}"),
            None => "/v1/processes?status=any&limit=1000".to_string(),
        };
        let page = bounded_page(&c, &query, bound).await;
        pages += 1;
        for p in page["processes"].as_array().expect("processes") {
            seen.push(p["id"].as_str().expect("id").to_string());
        }
        match page["next_after_id"].as_str() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    seen.last().map(String::as_str),
                    "the next page starts after the last"
                );
                after = Some(next.to_string());
            }
            None => break,
        }
    }
    assert!(pages > 2, "{pages} pages held it all");
    assert_eq!(seen, ids);
}

/// A page of the change feed is bounded in bytes as well as in count:
/// records near the payload limit come back over several pages, each under
/// the byte bound past its first record, each naming the cursor of its last
/// change, every process once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_the_change_feed_is_bounded_in_bytes() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let n = 8;
    let ids: Vec<String> = (0..n).map(|i| format!("big-{i}")).collect();
    for id in &ids {
        let (s, err) = c
            .start(json!({"id": id, "disposition": "externally_owned",
                          "input": {"type": "external", "metadata": {"blob": "z".repeat(900 * 1024)}}}))
            .await;
        assert!(s == 201, "{err}");
    }
    let bound = cairn_core::LIST_PAGE_BYTES + 2 * 1024 * 1024;
    let mut cursor = 0u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = bounded_page(&c, &format!("/v1/changes?cursor={cursor}&limit=1000"), bound).await;
        let changes = page["changes"].as_array().expect("changes");
        if changes.is_empty() {
            assert_eq!(page["next_cursor"].as_u64(), Some(cursor), "nothing more: {page}");
            break;
        }
        pages += 1;
        for change in changes {
            seen.push(change["process"]["id"].as_str().expect("id").to_string());
        }
        let last = changes.last().and_then(|c| c["cursor"].as_u64()).expect("a cursor");
        assert_eq!(
            page["next_cursor"].as_u64(),
            Some(last),
            "reads on after the last change"
        );
        cursor = last;
    }
    assert!(pages >= 2, "{pages} page held it all");
    assert_eq!(seen, ids);
}

/// An integer field, a watermark's `cursor` and a `type` tag given a value
/// of the wrong JSON type are refused naming their field, in the wire's
/// terms (never `u64` or serde's "variant identifier"), and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_and_type_tags_are_refused_in_wire_terms() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ext = json!({"id": "done", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(ext).await.0, 201);
    let (s, _) = c
        .post(
            "/v1/processes/done/complete",
            json!({"authority": "ci", "outcome": {"type": "success", "value": 1}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        c.start(json!({"id": "open", "input": {"type": "external"}, "disposition": "externally_owned"}))
            .await
            .0,
        201
    );
    let sleep = |ms: Value| {
        json!({"id": "i1", "disposition": "rerunnable",
               "input": {"type": "tool_call", "tool": "sleep", "args": {"ms": ms}}})
    };
    let later = u64::MAX / 2;
    for (path, body, said) in [
        (
            "/v1/processes",
            sleep(json!("5")),
            "`sleep` args: `ms`: invalid type: string \"5\", expected a non-negative integer",
        ),
        (
            "/v1/processes",
            sleep(json!(-5)),
            "`ms`: invalid value: integer `-5`, expected a non-negative integer",
        ),
        (
            "/v1/processes",
            json!({"id": "i2", "disposition": "rerunnable",
                   "input": {"type": "session_turn", "session": {"max_steps": "x"}}}),
            "`input.session.max_steps`: invalid type: string \"x\", expected an integer from 1 to 64",
        ),
        // Past what a record holds: said as the bounds a start checks (as for `100`).
        (
            "/v1/processes",
            json!({"id": "i2", "disposition": "rerunnable",
                   "input": {"type": "session_turn", "session": {"max_steps": 5_000_000_000u64}}}),
            "`input.session.max_steps`: a turn's `max_steps` is 1 to 64, not 5000000000",
        ),
        (
            "/v1/processes",
            json!({"id": "i2", "disposition": "rerunnable",
                   "input": {"type": "session_turn", "input": "hi", "session": {"max_steps": 100}}}),
            "a turn's `max_steps` is 1 to 64, not 100",
        ),
        (
            "/v1/prune",
            json!({"cutoff_ms": "x", "watermark": {"type": "no_projector"}}),
            "`cutoff_ms`: invalid type: string \"x\", expected a non-negative integer",
        ),
        (
            "/v1/prune",
            json!({"cutoff_ms": 1.5, "watermark": {"type": "no_projector"}}),
            "`cutoff_ms`: invalid type: number `1.5`, expected a non-negative integer",
        ),
        (
            "/v1/prune",
            json!({"cutoff_ms": later, "watermark": {"type": "cursor", "cursor": "x"}}),
            "`watermark.cursor`: invalid type: string \"x\", expected a non-negative integer",
        ),
        (
            "/v1/prune",
            json!({"cutoff_ms": later, "watermark": {"type": 5}}),
            "`watermark.type`: invalid type: integer `5`, expected a watermark type: `no_projector` or `cursor`",
        ),
        (
            "/v1/processes",
            json!({"id": "i3", "disposition": "rerunnable", "input": {"type": 5, "tool": "sleep"}}),
            "`input.type`: invalid type: integer `5`, expected a string, one of `tool_call`, `script`, \
             `session_turn`, `external`",
        ),
        (
            "/v1/processes",
            json!({"id": "i4", "disposition": "externally_owned", "input": {"type": "external"},
                   "originator": {"type": []}}),
            "`originator.type`: invalid type: array, expected a string, one of `host` or `session`",
        ),
        (
            "/v1/processes/open/complete",
            json!({"authority": "ci", "outcome": {"type": 5}}),
            "`outcome.type`: invalid type: integer `5`, expected a string, one of `success`, `failure`",
        ),
        (
            "/v1/processes/open/complete",
            json!({"authority": "ci", "outcome": {"type": "success"}, "extra": true}),
            "unknown field `extra`",
        ),
    ] {
        let (s, err) = c.post(path, body.clone()).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{path} {body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(said), "{path} {body}: {message}");
        for rust in [
            "u64",
            "u32",
            "variant identifier",
            "struct",
            "sequence",
            "floating point",
        ] {
            assert!(!message.contains(rust), "{path} {body}: {message}");
        }
    }
    // Nothing was made, pruned or ended.
    for id in ["i1", "i2", "i3", "i4"] {
        assert_eq!(c.get(&format!("/v1/processes/{id}")).await.0, 404, "{id} was made");
    }
    let (s, done) = c.get("/v1/processes/done").await;
    assert_eq!((s, done["status"].as_str()), (200, Some("completed")), "{done}");
    let (s, open) = c.get("/v1/processes/open").await;
    assert_eq!((s, open["status"].as_str()), (200, Some("running")), "{open}");
}

/// `/metrics` answers a scraper that asks for the classic Prometheus text
/// format (`Accept: text/plain;version=0.0.4`) in it, each counter typed by
/// its sample's name; anyone else (a plain client, Prometheus's own
/// preference, no `Accept`) gets OpenMetrics, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_the_classic_format_to_who_asks() {
    let server = Server::start(&[]).await;
    let c = server.client();
    assert_eq!(
        c.start(json!({"id": "m", "input": {"type": "external"}, "disposition": "externally_owned"}))
            .await
            .0,
        201
    );
    let scrape = |accept: Option<&'static str>| {
        let mut request = c.http.get(c.url("/metrics"));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        async move {
            let response = request.send().await.expect("metrics");
            assert_eq!(response.status().as_u16(), 200);
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let (content_type, vary) = (header("content-type"), header("vary"));
            (content_type, vary, response.text().await.expect("text"))
        }
    };
    let (content_type, vary, classic) = scrape(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(vary.eq_ignore_ascii_case("accept"), "{vary}");
    for line in [
        "# TYPE cairn_processes_started_total counter",
        "cairn_processes_started_total 1",
        "# TYPE cairn_processes_running gauge",
        "# TYPE cairn_http_request_duration_seconds histogram",
        "# TYPE cairn_build_info gauge",
    ] {
        assert!(classic.lines().any(|l| l == line), "{line} in {classic}");
    }
    assert!(!classic.contains("# EOF"), "{classic}");
    for accept in [
        None,
        Some("*/*"),
        Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    ] {
        let (content_type, _, text) = scrape(accept).await;
        assert_eq!(
            content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{accept:?}"
        );
        assert!(text.lines().any(|l| l == "# TYPE cairn_processes_started counter"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

/// A body that begins with a UTF-8 byte order mark (RFC 8259 §8.1 lets a
/// parser ignore one) is read as the body after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_may_begin_with_a_byte_order_mark() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let with_bom = |body: &str| [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    let body = r#"{"id":"bom","input":{"type":"external"},"disposition":"externally_owned"}"#;
    let (s, made) = c.post_raw("/v1/processes", "application/json", with_bom(body)).await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["id"], "bom");
    // The same start again, without it, is the same start.
    let (s, again) = c
        .post_raw("/v1/processes", "application/json", body.as_bytes().to_vec())
        .await;
    assert_eq!((s, &again["id"]), (200, &json!("bom")), "{again}");
    // A mark alone is an empty body: a cancel takes one.
    let (s, cancelled) = c
        .post_raw("/v1/processes/bom/cancel", "application/json", with_bom(""))
        .await;
    assert!(s < 300, "{s}: {cancelled}");
    // Only one is ignored: a second is no JSON.
    let (s, err) = c
        .post_raw(
            "/v1/processes",
            "application/json",
            with_bom(&String::from_utf8(with_bom(body)).unwrap()),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
}

/// Who completes (`authority`) or asks to abandon (`requested_by`) is a
/// label, not an id: a bad one is refused as a request that names its field,
/// a control character shown escaped as in every refusal, and nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_authority_or_requester_is_refused_by_its_field() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = json!({"id": "who", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(start).await.0, 201);
    let ok = json!({"type": "success", "value": 1});
    let long = "a".repeat(cairn_core::validate::MAX_AUTHORITY_BYTES + 1);
    for (field, given, said) in [
        ("authority", "", "invalid request: `authority` must not be empty"),
        (
            "authority",
            "a\u{1}b",
            "invalid request: `authority` `a\\u{1}b` contains a control character",
        ),
        ("authority", "..", "invalid request: `authority` may not be `.` or `..`"),
        (
            "authority",
            long.as_str(),
            "invalid request: `authority` is 265 bytes, over the 264 byte limit",
        ),
        ("requested_by", "", "invalid request: `requested_by` must not be empty"),
        (
            "requested_by",
            "\u{7f}",
            "invalid request: `requested_by` `\\u{7f}` contains a control character",
        ),
    ] {
        let (route, body) = match field {
            "authority" => ("complete", json!({"outcome": ok, "authority": given})),
            _ => ("abandon-request", json!({"reason": "stuck", "requested_by": given})),
        };
        let (s, err) = c.post(&format!("/v1/processes/who/{route}"), body).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{field} {given:?}: {err}");
        assert_eq!(err["error"]["message"], said, "{field} {given:?}");
    }
    let (_, rec) = c.get("/v1/processes/who").await;
    assert_eq!(
        (&rec["status"], rec["last_sequence"].as_u64()),
        (&json!("running"), Some(0)),
        "{rec}"
    );
}

/// A start's or a schedule's grant descriptor over its limits, empty or with
/// a control character is refused (400 `invalid_request`) naming the field,
/// and nothing is stored; one at the limits is kept as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_grant_descriptor_is_refused_by_its_field() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = |id: &str, descriptor: Value| {
        json!({"id": id, "input": {"type": "external"}, "disposition": "externally_owned",
               "grant": {"session_scope": {"session_id": "s1"}, "descriptor": descriptor}})
    };
    let long_label = "l".repeat(cairn_core::validate::MAX_GRANT_LABEL_BYTES + 1);
    for (descriptor, said) in [
        (
            json!({"label": long_label}),
            "invalid request: `grant.descriptor.label` is 1025 bytes, over the 1024 byte limit",
        ),
        (
            json!({"kind": "a\u{1b}[2Jb"}),
            "invalid request: `grant.descriptor.kind` contains a control character (U+001B at byte 1)",
        ),
        (
            json!({"kind": ""}),
            "invalid request: `grant.descriptor.kind` must not be empty: omit it instead",
        ),
    ] {
        let (s, err) = c.start(start("g", descriptor.clone())).await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{descriptor}: {err}");
        assert_eq!(err["error"]["message"], said, "{descriptor}");
        let body = json!({"id": "every", "every": "1h", "overlap": "skip",
                          "start": {"input": {"type": "external"}, "disposition": "externally_owned",
                                    "grant": {"session_scope": {"session_id": "s1"}, "descriptor": descriptor}}});
        let (s, err) = c.post("/v1/schedules", body).await;
        assert_eq!(
            (s, code(&err)),
            (400, "invalid_request"),
            "schedule {descriptor}: {err}"
        );
        assert_eq!(err["error"]["message"], said, "schedule {descriptor}");
    }
    let (s, err) = c.get("/v1/processes/g").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"), "{err}");
    let (_, page) = c.get("/v1/schedules").await;
    assert_eq!(page["schedules"], json!([]), "nothing refused was stored");
    let at_limit = json!({"kind": "k".repeat(64), "label": "é".repeat(512)});
    assert_eq!(c.start(start("g", at_limit.clone())).await.0, 201);
    let (s, page) = c.get("/v1/processes?granted_to=s1").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["grants"][0]["descriptor"], at_limit, "{page}");
}

/// A completion's outcome takes `success`, `failure` or `cancelled`: a
/// refused `type` is told those, not `abandoned` (which a completion refuses,
/// saying to ask for an abandonment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completions_refused_type_names_what_a_completion_takes() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = json!({"id": "ends", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(c.start(start).await.0, 201);
    for (outcome, said) in [
        (
            json!({"type": "bogus"}),
            "request body: `outcome.type`: unknown variant `bogus`, expected one of `success`, `failure`, `cancelled`",
        ),
        (
            json!({"type": 5}),
            "request body: `outcome.type`: invalid type: integer `5`, expected a string, one of `success`, `failure`, \
             `cancelled`",
        ),
        (
            json!("success"),
            "request body: `outcome`: invalid type: string \"success\", expected an outcome: an object with `type` \
             (`success`, `failure` or `cancelled`)",
        ),
    ] {
        let (s, err) = c
            .post("/v1/processes/ends/complete", json!({ "outcome": outcome }))
            .await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{outcome}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(said), "{outcome}: {message}");
        assert!(!message.contains("abandoned"), "{outcome}: {message}");
    }
    // Refused on its tag, whatever else it says (or leaves out), before or after it.
    for abandoned in [
        json!({"type": "abandoned", "evidence": {"writer": "sweep", "epoch_ms": 1}}),
        json!({"type": "abandoned"}),
        json!({"type": "abandoned", "evidence": {}}),
        json!({"evidence": 7, "type": "abandoned", "extra": [1]}),
    ] {
        let (s, err) = c
            .post("/v1/processes/ends/complete", json!({ "outcome": abandoned }))
            .await;
        assert_eq!((s, code(&err)), (400, "invalid_outcome"), "{abandoned}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("use an abandon request"),
            "{abandoned}: {err}"
        );
    }
    // What it takes is read as before.
    let failure = json!({"type": "failure", "class": "remote", "code": "E1", "message": "broke", "raw": {"n": 1}});
    let (s, rec) = c
        .post("/v1/processes/ends/complete", json!({ "outcome": failure }))
        .await;
    assert_eq!((s, &rec["outcome"]), (200, &failure), "{rec}");
}

/// A script s1 started and then transferred to s2 may not start a child
/// that wakes s1: s2, holding the child, would write s1's wakes. The script
/// sees the refusal a direct start by s2 naming s1 gets; a child waking s2,
/// its holder now, is started and granted to s2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transferred_scripts_child_may_not_wake_the_session_that_gave_it_away() {
    let server = two_sessions().await;
    let (host, s1, s2) = (
        server.with_token("host-secret"),
        server.with_token("tok-1"),
        server.with_token("tok-2"),
    );
    let source = r#"
export async function spawner(ctx) {
  await ctx.waitSignal("go");
  const child = (session_id) => ({input: {type: "tool_call", tool: "echo", args: {value: 1}},
                                  disposition: "rerunnable", wake_target: {session_id}});
  let refused = null;
  try { await ctx.start(child("s1")); } catch (e) { refused = {code: e.code, message: e.message}; }
  const ok = await ctx.start(child("s2"));
  return {refused, ok};
}
"#;
    let (s, m) = host.post("/v1/modules", json!({ "source": source })).await;
    assert_eq!(s, 201, "{m}");
    let module_ref = m["module_ref"].as_str().expect("module_ref");
    let (s, rec) = s1
        .start(
            json!({"id": "sc4", "input": {"type": "script", "module_ref": module_ref, "process_name": "spawner"},
                      "disposition": "rerunnable"}),
        )
        .await;
    assert_eq!(s, 201, "{rec}");
    let (s, moved) = s1
        .post(
            "/v1/grants/transfer",
            json!({"from": {"session_id": "s1"}, "to": {"session_id": "s2"}, "process_ids": ["sc4"]}),
        )
        .await;
    assert_eq!((s, moved["moved"].clone()), (200, json!(["sc4"])), "{moved}");
    let (s, sent) = s2
        .post(
            "/v1/processes/sc4/signals/go",
            json!({"signal_id": "g1", "payload": {}}),
        )
        .await;
    assert!(s == 200 || s == 201, "{s} {sent}");
    let (s, rec) = s2.get("/v1/processes/sc4/await?timeout_ms=20000").await;
    assert_eq!((s, rec["status"].as_str()), (200, Some("completed")), "{rec}");
    let value = &rec["outcome"]["value"];
    assert_eq!(value["refused"]["code"], "invalid_request", "{rec}");
    let refused = value["refused"]["message"].as_str().expect("message");
    let (s, direct) = s2
        .start(
            json!({"id": "direct", "input": {"type": "external"}, "disposition": "externally_owned",
                      "wake_target": {"session_id": "s1"}}),
        )
        .await;
    assert_eq!((s, code(&direct)), (400, "invalid_request"), "{direct}");
    let said = direct["error"]["message"].as_str().expect("message");
    assert!(
        said.contains("may only set a wake target in that session, not `s1`"),
        "{said}"
    );
    // The same words, without the code's (`invalid request: `), which a
    // script's rejection says in its `code`.
    let words = said.strip_prefix("invalid request: ").expect("the code's words");
    assert!(
        refused.ends_with(words) && !refused.contains("invalid request: "),
        "the script is told as a direct start is: {refused} / {said}"
    );
    let ok = value["ok"].as_str().expect("the child waking s2 started");
    let (s, child) = s2.get(&format!("/v1/processes/{}", ok.replace('/', "%2F"))).await;
    assert_eq!(
        (s, child["wake_target"].clone()),
        (200, json!({"session_id": "s2"})),
        "{child}"
    );
    let (_, page) = host.get("/v1/processes?status=any&caused_by=sc4").await;
    let children: Vec<&str> = page["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(children, vec![ok], "no child waking s1 was started: {page}");
    let (_, wakes) = host.get("/v1/sessions/s1/wakes").await;
    assert_eq!(wakes["wakes"], json!([]), "{wakes}");
}

/// `granted_to` and `originated_by` take a frame scope
/// (`SESSION/frame:FRAME`): that frame's grants, exactly; a session's own
/// scope lists its own grants, not its frames'. A session token may list its
/// own session's frames, not another session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frames_grants_and_starts_are_listed_by_its_scope() {
    let server = two_sessions().await;
    let (host, s1, s2) = (
        server.with_token("host-secret"),
        server.with_token("tok-1"),
        server.with_token("tok-2"),
    );
    let framed = json!({"id": "p-frame", "input": {"type": "external"}, "disposition": "externally_owned",
                        "originator": {"type": "session", "scope": {"session_id": "s2", "agent_frame_id": "planner"}},
                        "grant": {"session_scope": {"session_id": "s2", "agent_frame_id": "planner"}}});
    assert_eq!(host.start(framed).await.0, 201);
    let own = json!({"id": "p-own", "input": {"type": "external"}, "disposition": "externally_owned"});
    assert_eq!(s2.start(own).await.0, 201);
    let ids = |page: &Value| -> Vec<String> {
        page["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect()
    };
    for (client, query, listed) in [
        (&host, "granted_to=s2/frame:planner", vec!["p-frame"]),
        (&host, "granted_to=s2", vec!["p-own"]),
        (&host, "granted_to=s2/frame:other", vec![]),
        (&host, "originated_by=s2/frame:planner", vec!["p-frame"]),
        (&host, "originated_by=s2", vec!["p-own"]),
        (&s2, "granted_to=s2/frame:planner", vec!["p-frame"]),
        (&s2, "granted_to=s2", vec!["p-own"]),
        (&s2, "", vec!["p-own"]),
    ] {
        let (s, page) = client.get(&format!("/v1/processes?status=any&{query}")).await;
        assert_eq!(s, 200, "{query}: {page}");
        assert_eq!(ids(&page), listed, "{query}: {page}");
    }
    let (_, page) = host.get("/v1/processes?status=any&granted_to=s2/frame:planner").await;
    assert_eq!(
        page["grants"][0]["scope"],
        json!({"session_id": "s2", "agent_frame_id": "planner"}),
        "{page}"
    );
    let (s, err) = s1.get("/v1/processes?granted_to=s2/frame:planner").await;
    assert_eq!((s, code(&err)), (403, "forbidden"), "another session's frame: {err}");
    let (s, err) = s2.get("/v1/processes?originated_by=s2/frame:planner").await;
    assert_eq!((s, code(&err)), (403, "forbidden"), "host only: {err}");
    let (s, err) = host.get("/v1/processes?granted_to=s2/frame:").await;
    assert_eq!((s, code(&err)), (400, "invalid_filter"), "{err}");
    // The OpenAPI document says a frame scope is taken, and takes its length.
    let (_, doc) = host.get("/openapi.json").await;
    for key in ["granted_to", "originated_by"] {
        let param = doc["paths"]["/v1/processes"]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == key))
            .unwrap_or_else(|| panic!("{key} documented"));
        let said = param["schema"]["description"].as_str().unwrap_or_default();
        assert!(said.contains("SESSION/frame:FRAME"), "{key}: {param}");
        assert!(param["schema"]["maxLength"].as_u64() > Some(300), "{key}: {param}");
    }
}

/// A server with a host token (`host-secret`) and two sessions' (`s1`:
/// `tok-1`, `s2`: `tok-2`).
async fn two_sessions() -> Server {
    Server::start(TWO_SESSIONS).await
}

/// A repeated start answers 200 and does not apply its `grant`, whatever
/// scope or descriptor it names; another `wake_target` is part of the
/// registration and conflicts (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_grants_nothing() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let start = |grant: Value| json!({"id": "g", "input": {"type": "external"}, "disposition": "externally_owned", "grant": grant});
    let first = json!({"session_scope": {"session_id": "s1"}, "descriptor": {"kind": "first"}});
    let (s, rec) = c.start(start(first)).await;
    assert_eq!(s, 201, "{rec}");
    for grant in [
        json!({"session_scope": {"session_id": "s2"}, "descriptor": {"kind": "second"}}),
        json!({"session_scope": {"session_id": "s1"}, "descriptor": {"kind": "second"}}),
        json!({"session_scope": {"session_id": "s1", "agent_frame_id": "f"}}),
    ] {
        let (s, again) = c.start(start(grant.clone())).await;
        assert_eq!((s, &again), (200, &rec), "{grant}");
    }
    let held = |page: &Value| -> Vec<Value> {
        page["grants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| json!([g["process_id"], g["descriptor"]]))
            .collect()
    };
    let (_, page) = c.get("/v1/processes?status=any&granted_to=s1").await;
    assert_eq!(held(&page), [json!(["g", {"kind": "first"}])], "{page}");
    for scope in ["s2", "s1/frame:f"] {
        let (_, page) = c.get(&format!("/v1/processes?status=any&granted_to={scope}")).await;
        assert_eq!(held(&page), Vec::<Value>::new(), "{scope}: {page}");
    }
    let mut waking = start(json!({"session_scope": {"session_id": "s1"}}));
    waking["wake_target"] = json!({"session_id": "s2"});
    let (s, err) = c.start(waking).await;
    assert_eq!((s, code(&err)), (409, "registration_conflict"), "{err}");
}

/// A start may not declare an `abandoned` terminal type: 400
/// `invalid_semantics`, nothing created, and the OpenAPI document names
/// that code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_abandoned_terminal_is_invalid_semantics() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let (s, err) = c
        .start(
            json!({"id": "gone", "input": {"type": "external"}, "disposition": "externally_owned",
                      "event_types": [{"name": "gone", "semantics": {"terminal": {"state": "abandoned"}}}]}),
        )
        .await;
    assert_eq!((s, code(&err)), (400, "invalid_semantics"), "{err}");
    let (s, err) = c.get("/v1/processes/gone").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"), "nothing was created");
    let (_, doc) = c.get("/openapi.json").await;
    let said = doc
        .pointer("/components/schemas/TerminalSpec/properties/state/description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(said.contains("`invalid_semantics`"), "{said}");
}

/// JSON nested past what the parser reads (128 levels) is refused in the
/// words, and with the limit, of a value nested past 64 levels: short, naming
/// the field and the 64 level limit, on every route that reads a body, and
/// nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_nested_past_the_parsers_limit_is_refused_naming_the_64_level_limit() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let (s, rec) = c
        .start(
            json!({"id": "ext", "input": {"type": "external"}, "disposition": "externally_owned",
                      "event_types": [{"name": "blob"}]}),
        )
        .await;
    assert_eq!(s, 201, "{rec}");
    let arrays = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    for (deep, levels) in [(arrays(200), 200), (objects(100_000), 100_000)] {
        let cases = [
            (
                "/v1/processes",
                format!(
                    r#"{{"id":"dd","input":{{"type":"tool_call","tool":"echo","args":{{"value":{deep}}}}},"disposition":"rerunnable"}}"#
                ),
                "input",
                levels + 2,
            ),
            (
                "/v1/processes/ext/events",
                format!(r#"{{"event_type":"blob","payload":{deep}}}"#),
                "payload",
                levels,
            ),
            (
                "/v1/processes/ext/signals/go",
                format!(r#"{{"signal_id":"x","payload":{deep}}}"#),
                "payload",
                levels,
            ),
            (
                "/v1/processes/ext/cancel",
                format!(r#"{{"reason":{deep}}}"#),
                "reason",
                levels,
            ),
            (
                "/v1/schedules",
                format!(
                    r#"{{"id":"sd","every":"1m","template":{{"input":{{"type":"tool_call","tool":"echo","args":{deep}}},"disposition":"rerunnable"}}}}"#
                ),
                "template",
                levels + 2,
            ),
            ("/v1/modules", format!(r#"{{"source":{deep}}}"#), "source", levels),
            (
                "/v1/prune",
                format!(r#"{{"cutoff_ms":1,"definition":{deep},"watermark":{{"type":"no_projector"}}}}"#),
                "definition",
                levels,
            ),
            (
                "/v1/grants/transfer",
                format!(r#"{{"from":{deep},"to":{{"session_id":"b"}},"process_ids":[]}}"#),
                "from",
                levels,
            ),
            (
                "/v1/sessions/s1/wakes/w1/ack",
                format!(r#"{{"x":{deep}}}"#),
                "x",
                levels,
            ),
        ];
        for (path, body, field, depth) in cases {
            let (s, err) = c.post_raw(path, "application/json", body.into_bytes()).await;
            assert_eq!((s, code(&err)), (400, "invalid_request"), "{path}: {err}");
            assert_eq!(
                err["error"]["message"],
                format!(
                    "request body: `{field}` nests arrays and objects {depth} levels deep, over the 64 level limit"
                ),
                "{path}"
            );
        }
        // A body nesting from its first field names that field.
        let (s, err) = c
            .post_raw("/v1/processes", "application/json", objects(300).into_bytes())
            .await;
        assert_eq!((s, code(&err)), (400, "invalid_request"), "{err}");
        assert_eq!(
            err["error"]["message"],
            "request body: `a` nests arrays and objects 299 levels deep, over the 64 level limit",
            "{err}"
        );
    }
    let (s, got) = c.get("/v1/processes/ext").await;
    assert_eq!(
        (s, got["last_sequence"].as_u64(), got["status"].as_str()),
        (200, Some(0), Some("running")),
        "{got}"
    );
    let (s, err) = c.get("/v1/processes/dd").await;
    assert_eq!((s, code(&err)), (404, "unknown_process"), "{err}");
    let (s, err) = c.get("/v1/schedules/sd").await;
    assert_eq!((s, code(&err)), (404, "unknown_schedule"), "{err}");
}

/// Two `Content-Type` headers are refused (400, nothing runs), whichever
/// comes first, as two `Authorization` headers are: the server does not pick
/// one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_content_type_headers_are_refused() {
    let server = Server::start(&[]).await;
    let c = server.client();
    for (i, (first, second)) in [
        ("application/json", "text/plain"),
        ("text/plain", "application/json"),
        ("application/json", "application/json"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("two-{i}");
        for path in ["/v1/processes", "/mcp"] {
            let response = c
                .http
                .post(c.url(path))
                .header("Content-Type", first)
                .header("Content-Type", second)
                .header("Accept", "application/json, text/event-stream")
                .body(waiter(&id).to_string())
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let answer: Value = response.json().await.expect("a JSON body");
            assert_eq!(
                (status, code(&answer)),
                (400, "invalid_request"),
                "{path} {first} {second}: {answer}"
            );
            assert_eq!(answer["error"]["message"], "send one Content-Type header", "{path}");
        }
        let (s, _) = c.get(&format!("/v1/processes/{id}")).await;
        assert_eq!(s, 404, "{first}, {second}: nothing ran");
    }
    let (s, rec) = c.start(waiter("one")).await;
    assert_eq!(s, 201, "one header: {rec}");
}

/// A bad `after` of the module listing is a bad id (`invalid_id`), as the
/// schedule listing's is; `invalid_page` is a bad `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_module_cursor_is_an_invalid_id() {
    let server = Server::start(&[]).await;
    let c = server.client();
    for after in ["nosuch", "%01", "module:sha256:ABC"] {
        let (s, err) = c.get(&format!("/v1/modules?after={after}")).await;
        assert_eq!((s, code(&err)), (400, "invalid_id"), "{after}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("invalid id: `after` is the last module ref of a page: module ref `")
                && !message.contains("invalid page"),
            "{after}: {message}"
        );
    }
    let (s, err) = c.get("/v1/modules?limit=0").await;
    assert_eq!((s, code(&err)), (400, "invalid_page"), "{err}");
    let (s, page) = c
        .get(&format!("/v1/modules?after=module:sha256:{}", "0".repeat(64)))
        .await;
    assert_eq!(s, 200, "{page}");
}

/// An answer given before its request's body was read (no such route, a
/// wrong method, a query the route does not take) says `Connection: close`,
/// so a client opens another connection rather than lose its next request
/// on this one; an answer to a body read whole keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_leaves_a_body_unread_says_the_connection_closes() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200_000));
    let closes = |r: &reqwest::Response| {
        r.headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    };
    for (method, path, status) in [
        (reqwest::Method::POST, "/v1/nope", 404),
        (reqwest::Method::PUT, "/v1/processes", 405),
        (reqwest::Method::POST, "/v1/processes?x=1", 400),
    ] {
        let r = c
            .http
            .request(method.clone(), c.url(path))
            .header("Content-Type", "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(closes(&r), "{method} {path}: {:?}", r.headers());
    }
    let r = c
        .http
        .post(c.url("/v1/processes"))
        .header("Content-Type", "application/json")
        .body(waiter("kept").to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status().as_u16(), 201);
    assert!(!closes(&r), "{:?}", r.headers());
}
