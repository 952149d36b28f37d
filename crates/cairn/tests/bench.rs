//! `cairn bench` end to end: the real binary, small sizes, the JSON shape.
//! Figures are never asserted for speed, only for presence and consistency.

mod common;

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

fn bench(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .env_remove("CAIRN_BENCH_POSTGRES_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cairn bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

fn scenario<'a>(backend: &'a Value, name: &str) -> &'a Value {
    backend["scenarios"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["scenario"] == name))
        .unwrap_or_else(|| panic!("no scenario {name} in {backend}"))
}

fn figure<'a>(scenario: &'a Value, key: &str) -> &'a Value {
    scenario["figures"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["key"] == key))
        .unwrap_or_else(|| panic!("no figure {key} in {scenario}"))
}

fn assert_figure_shape(f: &Value, runs: usize) {
    let value = f["value"].as_f64().unwrap_or_else(|| panic!("value in {f}"));
    assert!(value > 0.0, "{f}");
    assert!(f["unit"].as_str().is_some_and(|u| !u.is_empty()), "{f}");
    assert_eq!(f["runs"].as_array().map(Vec::len), Some(runs), "{f}");
    let (min, max) = (f["min"].as_f64().expect("min"), f["max"].as_f64().expect("max"));
    assert!(min <= value && value <= max, "{f}");
}

#[test]
fn memory_throughput_reports_figures_without_a_limit() {
    let (code, json, out) = bench(&[
        "--db",
        "memory",
        "--scenario",
        "throughput",
        "--n",
        "200",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json["config"]["n"], 200, "{out}");
    assert_eq!(json["config"]["workers"], serde_json::json!([1, 3]));
    assert!(json["config"]["seed"].as_u64().is_some());
    let backend = &json["backends"][0];
    assert_eq!(backend["url"], "memory");
    assert_eq!(backend["status"], "ok");
    assert!(backend["limit"].is_null());
    let s = scenario(backend, "throughput");
    assert_eq!(s["status"], "ok", "{s}");
    for key in ["throughput.w1", "throughput.w3"] {
        let f = figure(s, key);
        assert_figure_shape(f, 1);
        assert_eq!(f["unit"], "processes/s");
        assert!(f["limit"].is_null() && f["fraction"].is_null(), "{f}");
        assert!(f["limit_note"].as_str().is_some_and(|n| n.starts_with("n/a")), "{f}");
    }
}

#[test]
fn sqlite_figures_are_held_against_the_fsync_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("b.db").display());
    let (code, json, out) = bench(&[
        "--db",
        &db,
        "--scenario",
        "append",
        "--scenario",
        "signal",
        "--scenario",
        "await",
        "--events",
        "128",
        "--samples",
        "5",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let backend = &json["backends"][0];
    assert_eq!(backend["kind"], "sqlite");
    let rate = backend["limit"]["rate_per_s"].as_f64().expect("fsync rate");
    assert!(rate > 0.0, "{backend}");
    let append = scenario(backend, "append");
    for key in ["append.single", "append.concurrent64"] {
        let f = figure(append, key);
        assert_figure_shape(f, 2);
        assert_eq!(f["limit"]["value"].as_f64(), Some(rate));
        let fraction = f["fraction"].as_f64().expect("fraction");
        let expected = f["value"].as_f64().expect("value") / rate;
        assert!((fraction - expected).abs() <= 1e-9 * expected.max(1.0), "{f}");
    }
    let signal = scenario(backend, "signal");
    let p50 = figure(signal, "signal.p50");
    assert_figure_shape(p50, 2);
    // Latencies are held against the time of their commits: three for a
    // signal (the signal, `process.resumed`, the completion).
    let limit_ms = p50["limit"]["value"].as_f64().expect("limit ms");
    assert!(
        (limit_ms - 3.0 * 1000.0 / rate).abs() < 1e-9 * limit_ms.max(1.0),
        "{p50}"
    );
    let fraction = p50["fraction"].as_f64().expect("fraction");
    let expected = p50["value"].as_f64().expect("value") / limit_ms;
    assert!((fraction - expected).abs() <= 1e-9 * expected.max(1.0), "{p50}");
    let awaiting = scenario(backend, "await");
    for key in ["await.same.p50", "await.same.p99", "await.cross.p50", "await.cross.p99"] {
        assert_figure_shape(figure(awaiting, key), 2);
    }
}

#[test]
fn memory_scenario_measures_a_child_process() {
    let (code, json, out) = bench(&[
        "--db",
        "memory",
        "--scenario",
        "memory",
        "--scenario",
        "await",
        "--memory-processes",
        "200",
        "--samples",
        "3",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let backend = &json["backends"][0];
    let memory = scenario(backend, "memory");
    assert_eq!(memory["status"], "ok", "{memory}");
    let total = figure(memory, "memory.rss_total");
    assert!(total["value"].as_f64().is_some_and(|v| v > 0.0), "{total}");
    assert!(total["limit"].is_null());
    assert!(figure(memory, "memory.rss_per_10k")["value"].as_f64().is_some());
    let awaiting = scenario(backend, "await");
    assert!(awaiting["notes"].as_array().is_some_and(|n| n
        .iter()
        .any(|n| n.as_str().is_some_and(|n| n.contains("n/a: memory is per-process")))));
}

#[test]
fn bad_input_is_refused_clearly() {
    let (code, _, out) = bench(&["--scenario", "nope"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unknown scenario `nope`"), "{out}");
    let (code, _, out) = bench(&["--n", "0", "--db", "memory"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--n must be at least 1"), "{out}");
    let (code, _, out) = bench(&["--db", "mysql://root:pw@localhost/x"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unsupported database URL"), "{out}");
    assert!(!out.contains("pw@"), "the password is redacted: {out}");
}

#[test]
fn a_backend_that_cannot_be_opened_is_reported_as_failed() {
    // Nothing listens on port 1, so the backend fails to open: the run says
    // so in its exit code (never a skip that reads as success), the password
    // never shows and the report is whole.
    let (code, json, out) = bench(&[
        "--db",
        "postgres://bench:hunter2@127.0.0.1:1/nowhere",
        "--scenario",
        "throughput",
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    let backend = &json["backends"][0];
    assert_eq!(backend["url"], "postgres://bench:***@127.0.0.1:1/nowhere");
    assert_eq!(backend["status"], "failed", "{backend}");
    assert!(backend["reason"].as_str().is_some_and(|r| !r.is_empty()), "{backend}");
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[test]
fn postgres_figures_are_held_against_the_server_commit_rate() {
    let Some(url) = cairn_postgres::testing::test_url() else {
        return;
    };
    let (code, json, out) = bench(&[
        "--db",
        &url,
        "--scenario",
        "throughput",
        "--scenario",
        "await",
        "--n",
        "100",
        "--samples",
        "5",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let backend = &json["backends"][0];
    assert_eq!(backend["status"], "ok", "{backend}");
    let limit = backend["limit"]["rate_per_s"].as_f64().expect("commit rate");
    assert!(limit > 0.0, "{backend}");
    let s = scenario(backend, "throughput");
    assert_eq!(s["status"], "ok", "{s}");
    let f = figure(s, "throughput.w1");
    assert_figure_shape(f, 1);
    let fraction = f["fraction"].as_f64().expect("fraction");
    let value = f["median"].as_f64().expect("median");
    assert!((fraction - value / limit).abs() < 1e-6 * fraction.max(1.0), "{f}");
    let a = scenario(backend, "await");
    assert_eq!(a["status"], "ok", "{a}");
}

/// `suspended` runs its child and reports every figure, the SPEC §13 targets
/// beside the memory, CPU and p50 figures.
#[test]
fn suspended_scenario_reports_against_spec_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("s.db").display());
    let (code, json, out) = bench(&[
        "--db",
        &db,
        "--scenario",
        "suspended",
        "--suspended-processes",
        "200",
        "--idle-seconds",
        "1",
        "--samples",
        "5",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let s = scenario(&json["backends"][0], "suspended");
    for (key, target) in [
        ("suspended.bytes_per_process", Some(100.0 * 1024.0 * 1024.0 / 100_000.0)),
        ("suspended.idle_cpu", Some(1.0)),
        ("suspended.signal.p50", Some(10.0)),
        ("suspended.other_ms", None),
        ("suspended.signal.p99", None),
        ("suspended.start_rate", None),
    ] {
        let f = figure(s, key);
        // Idle CPU and growth may honestly measure 0 at this size.
        assert!(f["value"].as_f64().is_some_and(|v| v >= 0.0), "{f}");
        assert_eq!(f["runs"].as_array().map(Vec::len), Some(1), "{f}");
        if let Some(t) = target {
            assert_eq!(f["limit"]["value"].as_f64(), Some(t), "{f}");
        }
    }
    assert!(
        figure(s, "suspended.start_rate")["value"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{s}"
    );
}

/// `sse` runs a `cairn serve` child, holds streams open on it, closes them,
/// and reports every figure, the targets beside memory and CPU.
#[test]
fn sse_scenario_measures_a_serving_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("s.db").display());
    let (code, json, out) = bench(&[
        "--db",
        &db,
        "--scenario",
        "sse",
        "--sse-streams",
        "20",
        "--idle-seconds",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let s = scenario(&json["backends"][0], "sse");
    assert_eq!(s["status"], "ok", "{s}");
    for (key, target) in [
        ("sse.bytes_per_stream", Some(50.0 * 1024.0 * 1024.0 / 500.0)),
        ("sse.idle_cpu", Some(2.0)),
        ("sse.rss_open", None),
        ("sse.rss_after_close", None),
    ] {
        let f = figure(s, key);
        assert!(f["value"].as_f64().is_some_and(f64::is_finite), "{f}");
        assert_eq!(f["runs"].as_array().map(Vec::len), Some(1), "{f}");
        if let Some(t) = target {
            assert_eq!(f["limit"]["value"].as_f64(), Some(t), "{f}");
        }
    }
    // The parameters name what was measured.
    assert_eq!(s["params"]["streams"], 20, "{s}");
    // Closing a stream frees its connection on the server.
    assert_eq!(
        figure(s, "sse.connections_left_open")["value"].as_f64(),
        Some(0.0),
        "{s}"
    );
}

/// `http` serves a child, drives it over HTTP and in process, and holds the
/// served figure against the in-process one.
#[test]
fn http_scenario_serves_a_child_beside_the_in_process_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("h.db").display());
    let (code, json, out) = bench(&[
        "--db",
        &db,
        "--scenario",
        "http",
        "--n",
        "64",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let s = scenario(&json["backends"][0], "http");
    assert_eq!(s["status"], "ok", "{s}");
    let served = figure(s, "http.served");
    let local = figure(s, "http.in_process");
    assert_figure_shape(served, 1);
    assert_figure_shape(local, 1);
    let share = figure(s, "http.share");
    assert_eq!(share["limit"]["value"].as_f64(), Some(50.0), "{share}");
    let expected = served["value"].as_f64().expect("served") / local["value"].as_f64().expect("local") * 100.0;
    let got = share["value"].as_f64().expect("share");
    assert!((got - expected).abs() < 1e-6 * expected.max(1.0), "{got} vs {expected}");
    // What the server and the clients spent of the machine they share.
    for key in ["http.in_process_cpu", "http.server_cpu", "http.client_cpu"] {
        let f = figure(s, key);
        assert_eq!(f["unit"], "cores", "{f}");
        let cores = f["value"].as_f64().expect(key);
        assert!(cores > 0.0 && cores.is_finite(), "{f}");
    }
    // The memory backend is the served process's own: reported as skipped.
    let (code, json, out) = bench(&[
        "--db",
        "memory",
        "--scenario",
        "http",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(scenario(&json["backends"][0], "http")["status"], "skipped", "{json}");
}

/// `script` replays a 1,000-call journal against SPEC §14's 50 ms and
/// reports three-step scripts per second beside `echo` from the same run.
#[test]
fn script_scenario_reports_replay_and_throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("s.db").display());
    let (code, json, out) = bench(&[
        "--db",
        &db,
        "--scenario",
        "script",
        "--script-n",
        "20",
        "--samples",
        "3",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json["config"]["script_n"], 20, "{out}");
    let backend = &json["backends"][0];
    let s = scenario(backend, "script");
    assert_eq!(s["status"], "ok", "{s}");
    assert_eq!(s["params"]["journal_calls"], 1000, "{s}");
    for key in ["script.replay.p50", "script.replay.p99"] {
        let f = figure(s, key);
        assert_figure_shape(f, 1);
        assert_eq!(f["unit"], "ms");
        assert_eq!(f["limit"]["value"].as_f64(), Some(50.0), "{f}");
    }
    let rate = backend["limit"]["rate_per_s"].as_f64().expect("fsync rate");
    for (key, unit) in [("script.three_step", "scripts/s"), ("script.echo", "processes/s")] {
        let f = figure(s, key);
        assert_figure_shape(f, 1);
        assert_eq!(f["unit"], unit);
        assert_eq!(f["limit"]["value"].as_f64(), Some(rate), "{f}");
    }
    let (code, _, out) = bench(&["--db", "memory", "--scenario", "script", "--script-n", "0"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--script-n must be at least 1"), "{out}");
}

/// `schedules` creates its schedules in a child, reports the idle CPU beside
/// the limit and the baseline with none, and leaves none behind.
#[tokio::test]
async fn schedules_scenario_reports_idle_cpu_and_leaves_no_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("s.db").display());
    let args = [
        "--db",
        &db,
        "--scenario",
        "schedules",
        "--schedules",
        "40",
        "--idle-seconds",
        "1",
        "--runs",
        "2",
        "--json",
    ]
    .map(str::to_string);
    let (code, json, out) = tokio::task::spawn_blocking(move || bench(&args.each_ref().map(String::as_str)))
        .await
        .expect("bench");
    assert_eq!(code, 0, "{out}");
    let s = scenario(&json["backends"][0], "schedules");
    assert_eq!(s["status"], "ok", "{s}");
    let cpu = figure(s, "schedules.idle_cpu");
    assert_eq!(cpu["limit"]["value"].as_f64(), Some(1.0), "{cpu}");
    assert_eq!(cpu["runs"].as_array().map(Vec::len), Some(2), "one per run: {cpu}");
    for key in [
        "schedules.idle_cpu",
        "schedules.idle_cpu_none",
        "schedules.bytes_per_schedule",
    ] {
        // Idle CPU and growth may honestly measure 0 at this size.
        assert!(figure(s, key)["value"].as_f64().is_some_and(|v| v >= 0.0), "{key}: {s}");
    }
    assert_eq!(
        figure(s, "schedules.idle_cpu_none")["runs"].as_array().map(Vec::len),
        Some(1)
    );
    assert_figure_shape(figure(s, "schedules.create_rate"), 2);

    // Every schedule the bench created is gone from the database.
    let server = common::Server::start_on(&db, &[]).await;
    let (status, page) = server.client().get("/v1/schedules").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["schedules"], serde_json::json!([]), "{page}");
}
