//! Durable scripts (SPEC §14) through the HTTP API of a real `cairn serve`, on
//! SQLite and on PostgreSQL: modules, start checks, a script with children, a
//! signal and a timer, journaled values, the limits, and the cleanup of a
//! script cancelled while suspended.

mod common;

use common::{Client, Server};
use serde_json::{json, Value};

const DEPLOY: &str = r#"
export async function deploy(ctx, args) {
  const t = Date.now(), r = Math.random();
  const [a, b, c] = await Promise.all([1, 2, 3].map((v) => ctx.tool("echo", {value: v * args.k})));
  await ctx.emit("progress", {text: `built: ${a + b + c}`});
  ctx.log("waiting for approval");
  const ok = await ctx.waitSignal("approve", {timeoutMs: 86400000});
  if (!ok) throw Object.assign(new Error("not approved in time"), {code: "not_approved"});
  await ctx.sleep(20);
  return {approved_by: ok.by, sum: a + b + c, t, r};
}

export async function boom(ctx) {
  throw Object.assign(new Error("it broke"), {code: "broken"});
}

export async function spin() { for (;;) {} }
export async function hog() { const a = []; for (;;) a.push(new Array(100000).fill(7)); }
export async function chatty(ctx) { for (let i = 0; i < 50; i++) ctx.now(); return 1; }
export async function fine() { return "fine"; }
"#;

fn script(id: &str, module_ref: &str, name: &str, args: Value) -> Value {
    json!({
        "id": id,
        "input": {"type": "script", "module_ref": module_ref, "process_name": name, "args": args},
        "disposition": "rerunnable",
        "event_types": [{"name": "progress"}]
    })
}

async fn events(c: &Client, id: &str) -> Vec<Value> {
    let id = id.replace('/', "%2F");
    let (s, page) = c.get(&format!("/v1/processes/{id}/events?limit=1000")).await;
    assert_eq!(s, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == t).collect()
}

async fn await_end(c: &Client, id: &str) -> Value {
    let (s, rec) = c.get(&format!("/v1/processes/{id}/await?timeout_ms=20000")).await;
    assert_eq!(s, 200, "{rec}");
    assert_ne!(rec["status"], "running", "{id} ended: {rec}");
    rec
}

async fn scenario(db: &str) {
    let server = Server::start_on(
        db,
        &[
            "--script-cpu",
            "300ms",
            "--script-heap-bytes",
            "16777216",
            "--script-max-calls",
            "20",
        ],
    )
    .await;
    let c = server.client();

    // Modules: 201, then 200 for the same source; listed without source.
    let (s, m) = c
        .post("/v1/modules", json!({"source": DEPLOY, "name": "deploy.js"}))
        .await;
    assert_eq!(s, 201, "{m}");
    let module_ref = m["module_ref"].as_str().unwrap().to_string();
    assert_eq!(m["exports"], json!(["boom", "chatty", "deploy", "fine", "hog", "spin"]));
    let (s, again) = c.post("/v1/modules", json!({"source": DEPLOY})).await;
    assert_eq!((s, &again), (200, &m));
    let (s, list) = c.get("/v1/modules").await;
    assert_eq!(s, 200);
    assert_eq!(list["modules"], json!([m.clone()]));
    let (s, got) = c.get(&format!("/v1/modules/{module_ref}")).await;
    assert_eq!((s, got["source"].as_str()), (200, Some(DEPLOY)));
    let (s, e) = c
        .post(
            "/v1/modules",
            json!({"source": "export async function f() {\n  return )\n}"}),
        )
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_module")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("line 2"), "{e}");
    let big = format!("// {}\nexport async function f() {{}}", "x".repeat(1 << 20));
    let (s, e) = c.post("/v1/modules", json!({"source": big})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{e}"
    );
    let missing = format!("module:sha256:{}", "0".repeat(64));
    let (s, e) = c.get(&format!("/v1/modules/{missing}")).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("unknown_module")));
    assert_eq!(
        c.get("/v1/modules").await.1["modules"].as_array().unwrap().len(),
        1,
        "nothing else stored"
    );
    // Pages follow a module ref; anything else in `after` is a clear 400,
    // and the OpenAPI document says so.
    let (s, page) = c.get(&format!("/v1/modules?after={module_ref}")).await;
    assert_eq!((s, page["modules"].as_array().map(Vec::len)), (200, Some(0)), "{page}");
    let (s, page) = c.get(&format!("/v1/modules?after={missing}")).await;
    assert_eq!((s, page["modules"].as_array().map(Vec::len)), (200, Some(1)), "{page}");
    for bad in ["zzz", "1"] {
        let (s, e) = c.get(&format!("/v1/modules?after={bad}")).await;
        assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_id")), "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("module:sha256:"),
            "{e}"
        );
    }
    // A full page names where the next begins; the last page names nothing.
    assert_eq!(list["next_after"], Value::Null, "{list}");
    let mut refs = vec![module_ref.clone()];
    for i in 0..2 {
        let source = format!("export async function f{i}() {{ return {i}; }}");
        let (s, m) = c.post("/v1/modules", json!({ "source": source })).await;
        assert_eq!(s, 201, "{m}");
        // SPEC §14 lists `name` in every answer: null when none was given.
        assert_eq!(m.get("name"), Some(&Value::Null), "{m}");
        refs.push(m["module_ref"].as_str().unwrap().to_string());
    }
    refs.sort();
    let (s, first) = c.get("/v1/modules?limit=2").await;
    assert_eq!(s, 200, "{first}");
    let listed: Vec<&str> = first["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["module_ref"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [refs[0].as_str(), refs[1].as_str()], "{first}");
    assert_eq!(first["next_after"].as_str(), Some(refs[1].as_str()), "{first}");
    let (s, last) = c.get(&format!("/v1/modules?limit=2&after={}", refs[1])).await;
    assert_eq!(s, 200, "{last}");
    assert_eq!(last["modules"].as_array().unwrap().len(), 1, "{last}");
    assert_eq!(last["modules"][0]["module_ref"].as_str(), Some(refs[2].as_str()));
    assert_eq!(last["next_after"], Value::Null, "{last}");
    for bad in ["0", "1001", "x"] {
        let (s, e) = c.get(&format!("/v1/modules?limit={bad}")).await;
        assert_eq!(s, 400, "limit={bad}: {e}");
    }
    let (s, doc) = c.get("/openapi.json").await;
    assert_eq!(s, 200);
    let params = doc["paths"]["/v1/modules"]["get"]["parameters"].as_array().unwrap();
    let after = params.iter().find(|p| p["name"] == "after").unwrap();
    assert_eq!(after["schema"]["type"], "string", "{after}");
    assert_eq!(after["schema"]["pattern"], "^module:sha256:[0-9a-f]{64}$", "{after}");

    // Start checks.
    let (s, e) = c.start(script("x", &missing, "deploy", json!({}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("unknown_module")));
    let (s, e) = c.start(script("x", &module_ref, "nope", json!({}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("unknown_export")));
    // A case typo is seen against the exports the refusal names.
    let (s, e) = c.start(script("x", &module_ref, "Deploy", json!({}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("unknown_export")));
    assert_eq!(
        e["error"]["message"],
        format!(
            "module `{module_ref}` exports no function `Deploy` (its exports: `boom`, `chatty`, `deploy`, \
             `fine`, `hog`, `spin`)"
        )
    );
    let mut owner_bound = script("x", &module_ref, "deploy", json!({}));
    owner_bound["disposition"] = json!("owner_bound");
    let (s, e) = c.start(owner_bound).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_disposition")));
    // A terminal type nothing could append: `ctx.emit` refuses one, and a
    // host's append needs the run's lease.
    let mut terminal = script("x", &module_ref, "deploy", json!({}));
    terminal["event_types"] = json!([{"name": "done", "semantics": {"terminal": {"state": "completed"}}}]);
    let (s, e) = c.start(terminal).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_semantics")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a script ends by returning or throwing"),
        "{e}"
    );
    let (s, _) = c.get("/v1/processes/x").await;
    assert_eq!(s, 404, "nothing started");

    // The deploy script: three children at once, an event, a signal, a timer.
    let (s, rec) = c.start(script("d1", &module_ref, "deploy", json!({"k": 10}))).await;
    assert_eq!(s, 201, "{rec}");
    assert_eq!(rec["input"]["type"], "script");
    let waiting = c.wait_for("d1", |r| r["wait"]["kind"] == "signal").await;
    assert_eq!(waiting["wait"]["name"], "approve");
    let (_, children) = c.get("/v1/processes?caused_by=d1&status=any").await;
    let ids: Vec<&str> = children["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    // Calls 1 and 2 were `now` and `random`: the children are calls 3-5.
    assert_eq!(ids, ["d1/3", "d1/4", "d1/5"]);
    let (s, _) = c
        .post(
            "/v1/processes/d1/signals/approve",
            json!({"signal_id": "s1", "payload": {"by": "ann"}}),
        )
        .await;
    assert_eq!(s, 200);
    let done = await_end(&c, "d1").await;
    assert_eq!(done["status"], "completed", "{done}");
    let value = &done["outcome"]["value"];
    assert_eq!(
        (value["approved_by"].as_str(), value["sum"].as_u64()),
        (Some("ann"), Some(60))
    );
    let log = events(&c, "d1").await;
    let results = of_type(&log, "script.result");
    // now and random answered the journaled values on every replay.
    assert_eq!(
        value["t"],
        results.iter().find(|r| r["payload"]["n"] == 1).unwrap()["payload"]["value"]
    );
    assert_eq!(
        value["r"],
        results.iter().find(|r| r["payload"]["n"] == 2).unwrap()["payload"]["value"]
    );
    assert_eq!(of_type(&log, "progress").len(), 1, "the emit happened once");
    assert_eq!(
        of_type(&log, "script.log").len(),
        1,
        "the log line was not repeated on replay"
    );
    assert!(
        of_type(&log, "process.started").len() >= 2,
        "it was resumed after suspending"
    );
    for child in ["d1/3", "d1/4", "d1/5"] {
        let started = of_type(&events(&c, child).await, "process.started").len();
        assert_eq!(started, 1, "{child} started once");
    }
    let (_, listed) = c
        .get(&format!(
            "/v1/processes?status=any&definition=script:{module_ref}%23deploy"
        ))
        .await;
    assert_eq!(listed["processes"].as_array().unwrap().len(), 1, "{listed}");

    // The journal is the run's alone.
    let (s, e) = c
        .post(
            "/v1/processes/d1/events",
            json!({"event_type": "script.result", "payload": {"n": 99}}),
        )
        .await;
    assert_eq!(s / 100, 4, "{e}");

    // Failures: an uncaught error, and the limits; the server stays healthy.
    for (id, name, class, code) in [
        ("f1", "boom", "script", "broken"),
        ("f2", "spin", "script", "cpu_limit"),
        ("f3", "hog", "script", "memory_limit"),
        ("f4", "chatty", "script", "journal_limit"),
    ] {
        let (s, _) = c.start(script(id, &module_ref, name, json!({}))).await;
        assert_eq!(s, 201);
        let rec = await_end(&c, id).await;
        assert_eq!(rec["status"], "failed", "{rec}");
        assert_eq!(
            (rec["outcome"]["class"].as_str(), rec["outcome"]["code"].as_str()),
            (Some(class), Some(code)),
            "{rec}"
        );
    }
    let f1 = await_end(&c, "f1").await;
    assert!(
        f1["outcome"]["raw"]["stack"].as_str().unwrap().contains("script.js"),
        "{f1}"
    );
    // The call limit names the clock reads that ran into it.
    let f4 = await_end(&c, "f4").await;
    let said = f4["outcome"]["message"].as_str().unwrap();
    assert!(
        said.contains("every clock or randomness read") && said.contains("`ctx.now()`"),
        "{f4}"
    );
    assert_eq!(c.get("/healthz").await.0, 200);
    c.start(script("ok", &module_ref, "fine", json!({}))).await;
    assert_eq!(await_end(&c, "ok").await["outcome"]["value"], "fine");
}

/// Suspended on a signal, a durable timer or a child, then cancelled: the
/// awaited call rejects `cancelled` and the catch block cleans up.
const GUARDED: &str = r#"
export async function guarded(ctx, args) {
  try {
    if (args.on === "signal") await ctx.waitSignal("go");
    else if (args.on === "timer") await ctx.sleep(86400000);
    else await ctx.tool("wait_signal", {name: "go"});
    return "not cancelled";
  } catch (e) {
    ctx.log("cleaning up");
    await ctx.emit("cleanup", {code: e.code, cancelled: ctx.cancelled});
    throw e;
  }
}
"#;

async fn cancel_scenario(db: &str) {
    let server = Server::start_on(db, &[]).await;
    let c = server.client();
    let (s, m) = c.post("/v1/modules", json!({"source": GUARDED})).await;
    assert_eq!(s, 201, "{m}");
    let module_ref = m["module_ref"].as_str().unwrap().to_string();
    for (on, wait_kind) in [("signal", "signal"), ("timer", "timer"), ("child", "children")] {
        let id = format!("g-{on}");
        let mut req = script(&id, &module_ref, "guarded", json!({"on": on}));
        req["event_types"] = json!([{"name": "cleanup"}]);
        let (s, rec) = c.start(req).await;
        assert_eq!(s, 201, "{rec}");
        c.wait_for(&id, |r| r["wait"]["kind"] == wait_kind && r["lease"].is_null())
            .await;
        if on == "child" {
            // The child runs and is suspended on its own signal.
            c.wait_for(&format!("{id}%2F1"), |r| r["wait"]["kind"] == "signal")
                .await;
        }
        let (s, rec) = c
            .post(
                &format!("/v1/processes/{id}/cancel"),
                json!({"reason": "no longer needed"}),
            )
            .await;
        assert_eq!(s, 200, "{rec}");
        let (s, done) = c.get(&format!("/v1/processes/{id}/await?timeout_ms=20000")).await;
        assert_eq!(s, 200, "{done}");
        assert_eq!(done["status"], "cancelled", "{id}: {done}");
        assert_eq!(done["outcome"]["message"], "no longer needed", "{done}");

        let log = events(&c, &id).await;
        let seq = |t: &str| {
            let found = of_type(&log, t);
            assert_eq!(found.len(), 1, "{id}: one {t}: {log:?}");
            found[0]["sequence"].as_u64().unwrap()
        };
        let resumed = of_type(&log, "process.resumed");
        assert_eq!(resumed.len(), 1, "{log:?}");
        // A child's end may wake its parent before the parent's claim does.
        let reasons: &[&str] = match on {
            "child" => &["cancel_requested", "children"],
            _ => &["cancel_requested"],
        };
        let reason = resumed[0]["payload"]["reason"].as_str().unwrap_or("");
        assert!(reasons.contains(&reason), "{id}: {resumed:?}");
        let cleanup = of_type(&log, "cleanup");
        assert_eq!(cleanup.len(), 1, "{id}: the cleanup ran once: {log:?}");
        assert_eq!(
            cleanup[0]["payload"],
            json!({"code": "cancelled", "cancelled": true}),
            "{id}: the awaited call rejected `cancelled`"
        );
        let resumed_at = seq("process.resumed");
        assert!(seq("cleanup") > resumed_at, "{id}: the cleanup ran after the resume");
        assert!(seq("script.log") > resumed_at, "{id}");
        // The cleanup's emit was journaled like any call.
        let emit = of_type(&log, "script.call")
            .into_iter()
            .find(|e| e["payload"]["kind"] == "emit")
            .unwrap_or_else(|| panic!("{id}: the emit was journaled: {log:?}"));
        assert!(emit["sequence"].as_u64().unwrap() > resumed_at);
        if on == "child" {
            let child = c.wait_for(&format!("{id}%2F1"), |r| r["status"] != "running").await;
            assert_eq!(child["status"], "cancelled", "the child ends cancelled too: {child}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_durably_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    scenario(&db).await;
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_durably_on_postgres() {
    if !cairn_postgres::testing::enabled() {
        return;
    }
    let schema = cairn_postgres::testing::TestSchema::new("cairn_scripts");
    scenario(&schema.db_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_cancelled_while_suspended_cleans_up_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("cairn.db").display());
    cancel_scenario(&db).await;
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_cancelled_while_suspended_cleans_up_on_postgres() {
    if !cairn_postgres::testing::enabled() {
        return;
    }
    let schema = cairn_postgres::testing::TestSchema::new("cairn_script_cancel");
    cancel_scenario(&schema.db_url()).await;
}

/// A module whose top level runs on past its stop (inside promise
/// executors, where the engine's interrupt becomes a rejection) is refused,
/// and its engine thread, held until the server stops, is counted in
/// `/metrics` for an operator to see (and restart the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_engine_thread_is_counted_in_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("held.db").display());
    let server = Server::start_on(&db, &["--script-cpu", "100ms", "--script-heap-bytes", "4194304"]).await;
    let c = server.client();
    let held = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("cairn_script_threads_held "))
            .map(str::to_string)
    };
    assert_eq!(held(&c.metrics().await).as_deref(), Some("0"));
    let escape = "for (;;) { new Promise(() => { for (;;) {} }); }\nexport async function f() { return 1; }";
    let (s, e) = c.post("/v1/modules", json!({"source": escape})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_module")), "{e}");
    assert_eq!(held(&c.metrics().await).as_deref(), Some("1"));
}
