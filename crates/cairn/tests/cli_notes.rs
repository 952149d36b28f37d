//! The CLI's words about what it was given: a signal of another name than
//! the awaited one, an empty server.

mod common;

use std::time::Duration;

use common::{waiter, Server};
use serde_json::Value;

/// `cairn ARGS` with `env` set (and no other `CAIRN_SERVER` or `CAIRN_TOKEN`).
async fn cairn_with_env(args: &[&str], env: &[(&str, &str)]) -> common::CliOutput {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(args)
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("cli finished in time")
        .expect("cli ran");
    common::CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `cairn signal` to a process waiting for a signal of another name
/// succeeds (the signal is kept, SPEC §13) and notes on stderr what it
/// waits for; a signal of the awaited name has no note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_of_another_name_is_noted_as_kept() {
    let server = Server::start(&[]).await;
    let (status, _) = server.client().start(waiter("gw")).await;
    assert_eq!(status, 201);
    server
        .client()
        .wait_for("gw", |r| r["wait"]["kind"] == "signal" && r["wait"]["name"] == "go")
        .await;
    let out = server.cli(&["signal", "gw", "og"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("signal.og recorded on gw"), "{}", out.stdout);
    assert_eq!(
        out.stderr,
        "note: gw waits for signal `go`, not `og`; the signal is kept for a later wait\n"
    );
    let out = server.cli(&["signal", "gw", "go"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("note:"), "{}", out.stderr);
}

/// An empty `CAIRN_SERVER` is a usage error (exit 2) saying so, not the
/// default server; an empty `--server` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_server_is_refused() {
    let out = cairn_with_env(&["ls"], &[("CAIRN_SERVER", "")]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("CAIRN_SERVER is set but empty") && !out.stderr.contains("unreachable"),
        "{}",
        out.stderr
    );
    let out = cairn_with_env(&["--json", "mcp"], &[("CAIRN_SERVER", "")]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let said: Value = serde_json::from_str(out.stderr.trim()).expect("a JSON error");
    assert_eq!(said["error"]["code"], "usage", "{said}");
    let out = cairn_with_env(&["ls", "--server", ""], &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--server"), "{}", out.stderr);
}
