//! Schedules over HTTP and the CLI (SPEC §18), against the real server on the
//! system clock: the driver fires at the due time it sleeps until (nothing
//! nudges it), bad input is refused with nothing stored, and `cairn schedule`
//! adds, lists, pauses, resumes and removes.

mod common;

use common::Server;
use serde_json::{json, Value};

fn echo_template() -> Value {
    json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}}, "disposition": "rerunnable"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_over_http() {
    let server = Server::start(&[]).await;
    let c = server.client();

    // Bad input: 400 (or 404 for an unknown tool), and nothing stored.
    let bad = [
        (
            json!({"id": "b", "cron": "61 * * * *", "start": echo_template(), "overlap": "skip"}),
            400,
        ),
        (
            json!({"id": "b", "cron": "0 3 * * *", "timezone": "Mars/Base", "start": echo_template(), "overlap": "skip"}),
            400,
        ),
        (
            json!({"id": "b", "every": "500ms", "start": echo_template(), "overlap": "skip"}),
            400,
        ),
        (
            json!({"id": "b", "every": "1m", "cron": "* * * * *", "start": echo_template(), "overlap": "skip"}),
            400,
        ),
        (json!({"id": "b", "start": echo_template(), "overlap": "skip"}), 400),
        (
            json!({"id": "b", "every": "1m", "start": {"id": "x", "input": {"type": "external"}, "disposition": "externally_owned"}, "overlap": "skip"}),
            400,
        ),
        (
            json!({"id": "b", "every": "1m", "start": {"input": {"type": "tool_call", "tool": "echo", "args": {}}, "disposition": "sometimes"}, "overlap": "skip"}),
            400,
        ),
        (
            json!({"id": "b", "every": "1m", "start": {"input": {"type": "tool_call", "tool": "nope", "args": {}}, "disposition": "rerunnable"}, "overlap": "skip"}),
            404,
        ),
        // Every fire of a child of a process that does not exist would fail.
        (
            json!({"id": "b", "every": "1m", "start": {"input": {"type": "tool_call", "tool": "echo", "args": {}}, "disposition": "rerunnable", "caused_by": {"process_id": "ghost"}}, "overlap": "skip"}),
            400,
        ),
        (
            json!({"id": "b", "every": "101y", "start": echo_template(), "overlap": "skip"}),
            400,
        ),
    ];
    for (body, status) in bad {
        let (got, err) = c.post("/v1/schedules", body.clone()).await;
        assert_eq!(got, status, "{body} -> {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    }
    let (status, page) = c.get("/v1/schedules").await;
    assert_eq!(status, 200);
    assert_eq!(page["schedules"], json!([]), "nothing refused was stored");
    // A template naming an existing parent is taken.
    let parent =
        json!({"id": "parent", "input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    assert_eq!(c.start(parent).await.0, 201);
    let child = json!({"id": "children", "every": "1h", "overlap": "skip",
        "start": {"input": {"type": "tool_call", "tool": "echo", "args": {}}, "disposition": "rerunnable",
                  "caused_by": {"process_id": "parent"}}});
    assert_eq!(c.post("/v1/schedules", child).await.0, 201);
    assert_eq!(c.delete("/v1/schedules/children").await.0, 204);

    // An `every 1s` schedule fires on its own at its due time.
    let body = json!({"id": "tick", "every": "1s", "start": echo_template(), "overlap": "skip"});
    let (status, s) = c.post("/v1/schedules", body.clone()).await;
    assert_eq!(status, 201, "{s}");
    let first = format!("tick@{}", s["next_fire_ms"].as_u64().expect("next fire"));
    let done = c.wait_for(&first, |r| r["status"] == "completed").await;
    assert_eq!(done["outcome"]["value"], json!(1));
    // A fire is a start like any other in the server's metrics: the count
    // read around a listing of every process holds that listing's length.
    let started = |text: String| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with("cairn_processes_started_total "))
            .unwrap_or_else(|| panic!("{text}"));
        line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count")
    };
    let before = started(c.metrics().await);
    let (status, all) = c.get("/v1/processes?status=any&limit=100").await;
    assert_eq!(status, 200, "{all}");
    let listed = all["processes"].as_array().expect("processes").len() as u64;
    let after = started(c.metrics().await);
    assert!(listed >= 2, "{all}");
    assert!(before <= listed && listed <= after, "{before} <= {listed} <= {after}");
    let (status, again) = c.post("/v1/schedules", body).await;
    assert_eq!(status, 200, "the same create again: {again}");
    let (status, e) = c
        .post(
            "/v1/schedules",
            json!({"id": "tick", "every": "2s", "start": echo_template(), "overlap": "skip"}),
        )
        .await;
    assert_eq!((status, e["error"]["code"].as_str()), (409, Some("schedule_conflict")));
    let said = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("it fires on every `1s`, this request on every `2s`"),
        "{e}"
    );

    let (status, paused) = c.post("/v1/schedules/tick/pause", json!({})).await;
    assert_eq!((status, paused["paused"].as_bool()), (200, Some(true)));
    let (status, resumed) = c.post("/v1/schedules/tick/resume", json!({})).await;
    assert_eq!((status, resumed["paused"].as_bool()), (200, Some(false)));
    let (status, _) = c.delete("/v1/schedules/tick").await;
    assert_eq!(status, 204);
    let (status, e) = c.get("/v1/schedules/tick").await;
    assert_eq!((status, e["error"]["code"].as_str()), (404, Some("unknown_schedule")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_schedule_commands() {
    let server = Server::start(&[]).await;
    let template = echo_template().to_string();
    let out = server
        .cli(
            &[
                "schedule",
                "add",
                "nightly",
                "--cron",
                "0 3 * * *",
                "--timezone",
                "Europe/Paris",
                &template,
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("created nightly"), "{}", out.stdout);
    let out = server
        .cli(
            &["schedule", "add", "sync", "--every", "30m", "--overlap", "allow", "-"],
            Some(&template),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server
        .cli(&["schedule", "add", "bad", "--every", "10ms", &template], None)
        .await;
    assert_eq!(out.code, 2, "a refused schedule is bad input: {}", out.stderr);
    assert!(out.stderr.contains("1 s minimum"), "{}", out.stderr);

    let out = server.cli(&["--json", "schedule", "ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ids: Vec<String> = out.json()["schedules"]
        .as_array()
        .expect("a list under `schedules`")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["nightly", "sync"]);
    let out = server.cli(&["schedule", "ls"], None).await;
    assert!(
        out.stdout.contains("cron 0 3 * * * (Europe/Paris)") && out.stdout.contains("every 30m"),
        "{}",
        out.stdout
    );
    let out = server.cli(&["schedule", "pause", "sync"], None).await;
    assert_eq!((out.code, out.stdout.lines().next()), (0, Some("paused sync")));
    // A paused schedule names no next fire (its stored one is where it stopped).
    let out = server.cli(&["schedule", "get", "sync"], None).await;
    assert!(out.stdout.contains("none while paused"), "{}", out.stdout);
    let out = server.cli(&["--json", "schedule", "resume", "sync"], None).await;
    assert_eq!(out.json()["paused"], json!(false));
    let out = server.cli(&["schedule", "rm", "sync"], None).await;
    assert_eq!((out.code, out.stdout.trim()), (0, "deleted sync"));
    let out = server.cli(&["schedule", "rm", "sync"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown_schedule"), "{}", out.stderr);
}

/// A cron step over its field's range selects one value only (`*/90` is
/// minute 0, hourly): it is refused, naming the field, and nothing is stored.
/// A step equal to the span selects both ends and is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_step_over_its_range_is_refused() {
    let server = Server::start(&[]).await;
    let c = server.client();
    for (cron, said) in [
        (
            "*/90 * * * *",
            "minute step 90 is over the 0-59 range: `*/90` fires at minute 0 only",
        ),
        ("0 9 * * */8", "day of week step 8 is over the 0-6 range"),
        ("0 0 */45 * *", "day of month step 45 is over the 1-31 range"),
        ("0 0 1 */13 *", "month step 13 is over the 1-12 range"),
        ("5-50/100 * * * *", "minute step 100 is over the 5-50 range"),
    ] {
        let body = json!({"id": "s", "cron": cron, "start": echo_template(), "overlap": "skip"});
        let (status, e) = c.post("/v1/schedules", body).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{cron}: {e}"
        );
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(said), "{cron}: {message}");
    }
    let (status, page) = c.get("/v1/schedules").await;
    assert_eq!(
        (status, &page["schedules"]),
        (200, &json!([])),
        "nothing refused was stored"
    );
    let body = json!({"id": "s", "cron": "*/59 * * * *", "start": echo_template(), "overlap": "skip"});
    assert_eq!(c.post("/v1/schedules", body).await.0, 201, "minutes 0 and 59");
}

/// A page of schedules is bounded in bytes as well as in count, as a page of
/// processes is: schedules whose templates hold near a mebibyte come back
/// over several pages, each under the byte bound past its first schedule,
/// each naming where the next starts, every schedule once; over MCP too;
/// and `cairn schedule ls` reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_schedules_is_bounded_in_bytes() {
    let server = Server::start(&[]).await;
    let c = server.client();
    let ids: Vec<String> = (0..8).map(|i| format!("big-{i}")).collect();
    for id in &ids {
        let start = json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": "z".repeat(900 * 1024)}},
                           "disposition": "rerunnable"});
        let (s, err) = c
            .post(
                "/v1/schedules",
                json!({"id": id, "every": "1h", "start": start, "overlap": "skip"}),
            )
            .await;
        assert_eq!(s, 201, "{err}");
    }
    let bound = cairn_core::LIST_PAGE_BYTES + 2 * 1024 * 1024;
    let mut after: Option<String> = None;
    let (mut seen, mut pages) = (Vec::new(), 0);
    loop {
        let path = match &after {
            Some(a) => format!("/v1/schedules?limit=1000&after={a}"),
            None => "/v1/schedules?limit=1000".to_string(),
        };
        let r = c.http.get(c.url(&path)).send().await.expect("page");
        assert_eq!(r.status(), 200, "{path}");
        let body = r.bytes().await.expect("body");
        assert!(body.len() <= bound, "{path}: a page of {} bytes", body.len());
        let page: Value = serde_json::from_slice(&body).expect("json");
        pages += 1;
        let schedules = page["schedules"].as_array().expect("schedules");
        assert!(!schedules.is_empty() || page["next_after"].is_null(), "{path}");
        seen.extend(schedules.iter().map(|s| s["id"].as_str().expect("id").to_string()));
        match page["next_after"].as_str() {
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
    assert!(pages > 1, "{pages} page held it all");
    assert_eq!(seen, ids);

    // MCP's schedule_list answers the same pages.
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let config = StreamableHttpClientTransportConfig::with_uri(server.url("/mcp"));
    let mcp = ().serve(StreamableHttpClientTransport::from_config(config)).await.expect("initialize");
    let arguments = json!({"limit": 1000}).as_object().cloned().expect("object");
    let result = mcp
        .call_tool(CallToolRequestParams::new("schedule_list").with_arguments(arguments))
        .await
        .expect("tools/call answered");
    assert_eq!(result.is_error, Some(false), "{:?}", result.content);
    let page = result.structured_content.expect("structured content");
    let listed = page["schedules"].as_array().expect("schedules");
    assert!(listed.len() < ids.len(), "a page of {} schedules", listed.len());
    assert_eq!(
        page["next_after"].as_str(),
        listed.last().and_then(|s| s["id"].as_str())
    );
    mcp.cancel().await.expect("close");

    // The CLI follows the pages to the end.
    let out = server.cli(&["--json", "schedule", "ls"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: Vec<String> = out.json()["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, ids);
}

/// A cron given with extra spaces or a tab is stored and shown with its
/// fields joined by one space, and a repeat spaced otherwise is the same
/// create; a `?` outside the day fields is refused naming its field; an id
/// left out (the template in its place) is refused with a template piped
/// in too, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_text_is_stored_normalised_and_slips_are_named() {
    let server = Server::start(&[]).await;
    let template = echo_template().to_string();
    let out = server
        .cli(
            &["schedule", "add", "nightly", "--cron", " 0  3 * *\t* ", &template],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = server.cli(&["--json", "schedule", "get", "nightly"], None).await;
    assert_eq!(out.json()["cron"], "0 3 * * *", "{}", out.stdout);
    let out = server.cli(&["schedule", "ls"], None).await;
    assert!(out.stdout.contains("cron 0 3 * * * "), "{}", out.stdout);
    let out = server
        .cli(&["schedule", "add", "nightly", "--cron", "0 3 * * *", &template], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("nightly already existed"), "{}", out.stdout);

    let out = server
        .cli(&["schedule", "add", "q", "--cron", "0 3 ? ? *", &template], None)
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("month `?`: `?` is not supported there (use `*`"),
        "{}",
        out.stderr
    );
    // `?` in the day fields is taken, as `*`.
    let out = server
        .cli(&["schedule", "add", "q", "--cron", "0 3 ? * ?", &template], None)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = server
        .cli(
            &["schedule", "add", "--cron", "0 3 * * *", "@template.json"],
            Some(&template),
        )
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("the schedule ID is missing"), "{}", out.stderr);
    let out = server.cli(&["--json", "schedule", "ls"], None).await;
    let ids: Vec<String> = out.json()["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["nightly", "q"]);
}

/// After downtime, the WARN line at the next pass says how many fire times
/// were passed over, as a lower bound when a schedule's count reached its
/// cap, and names the schedules (the first few, then how many more). The
/// downtime is made by moving the stored next fire times back ten days
/// (14,400 minutes, over the 10,000 counted per schedule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_up_warning_names_the_schedules_and_a_capped_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cairn.db").to_string_lossy().into_owned();
    let db = format!("sqlite:{file}");
    let template = echo_template().to_string();
    {
        let server = Server::start_on(&db, &[]).await;
        for id in ["a", "b", "c", "d"] {
            let out = server
                .cli(
                    &[
                        "schedule",
                        "add",
                        id,
                        "--cron",
                        "* * * * *",
                        "--overlap",
                        "allow",
                        &template,
                    ],
                    None,
                )
                .await;
            assert_eq!(out.code, 0, "{}", out.stderr);
        }
    }
    let back = 10 * 86_400_000u64;
    let moved = std::process::Command::new("sqlite3")
        .arg(&file)
        .arg(format!(
            "UPDATE schedules SET next_fire_ms = next_fire_ms - {back}, \
             schedule = json_set(schedule, '$.next_fire_ms', next_fire_ms - {back});"
        ))
        .output()
        .expect("run sqlite3");
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    let log = dir.path().join("serve.log");
    let _server = Server::serve_logging_to(&["--db", &db, "--listen", "127.0.0.1:0"], &log).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("fire times of schedule(s)")) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no catch-up warning in time: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        line.contains("WARN")
            && line.contains("at least 40000 fire times of schedule(s) a, b, c and 1 more passed over")
            && line.contains("passed_over=40000")
            && line.contains("passed_over_at_least=true"),
        "{line}"
    );
}

/// `cairn_schedule_fires_total{outcome}` as a scrape of `c` reads it.
async fn fires(c: &common::Client, outcome: &str) -> u64 {
    let text = c.metrics().await;
    let head = format!("cairn_schedule_fires_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {head}in {text}"))
}

/// The lines of the log file `log` that contain `what`, once there are at
/// least `n` of them (bounded: 30 s).
async fn log_lines(log: &std::path::Path, what: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text.lines().filter(|l| l.contains(what)).map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} lines with {what:?} in time: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Fires skipped by `overlap: skip` leave an account: the first skipped
/// while a process runs is logged at INFO, the next ones at DEBUG, and all
/// are counted in `cairn_schedule_fires_total{outcome="skipped"}`. After
/// downtime, a caught-up fire skipped for overlap is said as such in the
/// catch-up WARN (not as a fire caught up), and counted. The downtime is
/// made by moving the stored next fire time back an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_fires_are_logged_counted_and_said_in_the_catch_up_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cairn.db").to_string_lossy().into_owned();
    let db = format!("sqlite:{file}");
    // External work runs until its owner ends it: every later fire is skipped.
    let template = json!({"input": {"type": "external", "metadata": {}}, "disposition": "externally_owned"});
    {
        let log = dir.path().join("first.log");
        let server = Server::serve_logging_to(&["--db", &db, "--listen", "127.0.0.1:0"], &log).await;
        let c = server.client();
        let body = json!({"id": "cu", "every": "2s", "start": template.clone(), "overlap": "skip"});
        let (status, s) = c.post("/v1/schedules", body).await;
        assert_eq!(status, 201, "{s}");
        let first = s["next_fire_ms"].as_u64().expect("next fire");
        c.wait_for(&format!("cu@{first}"), |r| r["status"] == "running").await;
        let skips = log_lines(&log, "a schedule's fire skipped", 2).await;
        assert!(
            skips[0].contains("INFO")
                && skips[0].contains(&format!("fire=cu@{}", first + 2000))
                && skips[0].contains(&format!("previous=cu@{first}"))
                && skips[0].contains("further fires skipped while it runs are logged at debug"),
            "{skips:?}"
        );
        assert!(skips[1..].iter().all(|l| l.contains("DEBUG")), "{skips:?}");
        assert!(fires(&c, "skipped").await >= 2);
        assert_eq!(fires(&c, "started").await, 1);
        assert_eq!(fires(&c, "refused").await, 0);
    }
    let back = 3_600_000u64;
    let moved = std::process::Command::new("sqlite3")
        .arg(&file)
        .arg(format!(
            "UPDATE schedules SET next_fire_ms = next_fire_ms - {back}, \
             schedule = json_set(schedule, '$.next_fire_ms', next_fire_ms - {back});"
        ))
        .output()
        .expect("run sqlite3");
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    let log = dir.path().join("again.log");
    let server = Server::serve_logging_to(&["--db", &db, "--listen", "127.0.0.1:0"], &log).await;
    let line = log_lines(&log, "fire times of schedule(s)", 1).await.remove(0);
    assert!(
        line.contains("WARN")
            && line.contains("fire times of schedule(s) cu passed over")
            && line.contains("the missed fire of cu was skipped, not caught up (overlap `skip`")
            && line.contains("catch_up_skipped=1")
            && !line.contains("caught up per schedule")
            && !line.contains("one missed fire per schedule is caught up"),
        "{line}"
    );
    let c = server.client();
    assert!(fires(&c, "skipped").await >= 1);
    assert_eq!(fires(&c, "started").await, 0, "nothing was caught up");
}

/// A template whose `caused_by` names a process that was cancelled (ended
/// with its cancellation requested) is refused at `schedule add`, naming
/// it; a schedule whose parent is cancelled after it was made records its
/// next fire as its `last_refusal` and starts nothing, rather than a
/// process born cancelled at every fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_under_a_cancelled_parent_is_refused_and_its_fires_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").to_string_lossy());
    let server = Server::start_on(&db, &[]).await;
    let c = server.client();
    let parent = common::tool_start("parent", "sleep", json!({"ms": 600_000}), "rerunnable");
    assert_eq!(c.start(parent).await.0, 201);
    let child = json!({"input": {"type": "tool_call", "tool": "echo", "args": {"value": 1}},
                       "disposition": "rerunnable", "caused_by": {"process_id": "parent"}});
    let body = json!({"id": "kid", "every": "1s", "start": child.clone(), "overlap": "allow"});
    let (status, s) = c.post("/v1/schedules", body).await;
    assert_eq!(status, 201, "{s}");
    let (status, _) = c.post("/v1/processes/parent/cancel", json!({})).await;
    assert_eq!(status, 200);
    c.wait_for("parent", |r| r["status"] == "cancelled").await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refusal = loop {
        let (status, s) = c.get("/v1/schedules/kid").await;
        assert_eq!(status, 200, "{s}");
        if !s["last_refusal"].is_null() {
            break s["last_refusal"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no refusal recorded in time: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refusal["code"], "invalid_request", "{refusal}");
    let said = refusal["message"].as_str().unwrap_or_default();
    assert!(said.contains("`parent`, which has ended (cancelled)"), "{said}");
    let fire = refusal["process_id"].as_str().expect("the fire's id");
    let (status, e) = c.get(&format!("/v1/processes/{fire}")).await;
    assert_eq!(status, 404, "the refused fire started nothing: {e}");

    let out = server
        .cli(&["schedule", "add", "kid2", "--every", "1h", &child.to_string()], None)
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid_request") && out.stderr.contains("`parent`, which has ended (cancelled)"),
        "{}",
        out.stderr
    );
    let (status, _) = c.get("/v1/schedules/kid2").await;
    assert_eq!(status, 404, "nothing refused was stored");
}
