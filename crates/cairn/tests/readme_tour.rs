//! The README's first screen and its tour, run as written against a real server:
//! the commands are read from README.md, so a README that drifts from the CLI fails here.

mod common;

use std::time::Duration;

use common::{Server, BIN};
use serde_json::Value;

const README: &str = include_str!("../../../README.md");

/// The indented code blocks of `section` (from its heading to the next `## `).
fn code_blocks(section: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for line in section.lines() {
        if let Some(code) = line.strip_prefix("    ") {
            current.push(code.to_string());
        } else if line.trim().is_empty() && !current.is_empty() {
            current.push(String::new());
        } else if !current.is_empty() {
            blocks.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

/// Shell commands of a block: comment and blank lines dropped, lines joined while
/// a single quote is open or the line ends with `\`.
fn commands(block: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block {
        if pending.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(line);
        let open_quote = pending.matches('\'').count() % 2 == 1;
        if !open_quote && !pending.trim_end().ends_with('\\') {
            out.push(std::mem::take(&mut pending));
        }
    }
    assert!(pending.is_empty(), "unterminated command in the README: {pending}");
    out
}

fn section<'a>(heading: &str) -> &'a str {
    let start = README
        .find(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}`"));
    let rest = &README[start + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run one README command with `sh`, `cairn` being this build's binary pointed at `server`.
async fn sh(server: &Server, command: &str) -> Ran {
    let host = server.base.trim_start_matches("http://").to_string();
    let script = format!(
        "cairn() {{ \"$CAIRN_BIN\" \"$@\"; }}\n{}",
        command.replace("localhost:7070", &host)
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("CAIRN_BIN", BIN)
            .env("CAIRN_SERVER", &server.base)
            .env_remove("CAIRN_TOKEN")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("command finished in time")
    .expect("sh ran");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_first_screen_has_exactly_the_server_and_the_tests() {
    let intro = &README[..README.find("\n## ").expect("a second section")];
    let blocks = code_blocks(intro);
    assert_eq!(blocks.len(), 1, "one code block on the first screen");
    let cmds = commands(&blocks[0]);
    let words: Vec<Vec<&str>> = cmds
        .iter()
        .map(|c| c.split('#').next().unwrap_or("").split_whitespace().collect())
        .collect();
    assert_eq!(words.len(), 2, "{cmds:?}");
    assert_eq!(
        words[0][..6],
        ["cargo", "run", "--release", "-p", "cairn", "--"],
        "{cmds:?}"
    );
    assert_eq!(words[0][6], "serve");
    assert_eq!(words[1], ["cargo", "test", "--workspace"]);
    assert!(intro.contains("cargo install --path crates/cairn --locked"));
    assert!(
        intro.contains("few minutes"),
        "the first screen says the first build takes minutes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_as_written() {
    // The server as the first screen starts it, on a throwaway database and port.
    let intro = &README[..README.find("\n## ").expect("a second section")];
    let serve = commands(&code_blocks(intro)[0]).remove(0);
    let serve_args: Vec<&str> = serve
        .split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip_while(|w| *w != "serve")
        .skip(1)
        .collect();
    let mut args = serve_args.clone();
    args.extend(["--db", "memory", "--listen", "127.0.0.1:0"]);
    let server = Server::serve(&args).await;
    let http = server.client();

    let tour = commands(&code_blocks(section("## A short tour"))[0]);
    let mut checked = 0;
    let mut run_id = String::new();
    for command in &tour {
        let words: Vec<&str> = command.split_whitespace().collect();
        // The waiting listing needs the worker to have reached the wait first.
        if command.starts_with("cairn ls --waiting") {
            http.wait_for("approve-1", |r| !r["wait"].is_null()).await;
        }
        let ran = sh(&server, command).await;
        let context = format!(
            "`{command}`\nexit {}\nstdout:\n{}\nstderr:\n{}",
            ran.code, ran.stdout, ran.stderr
        );
        assert_eq!(ran.code, 0, "{context}");
        match words.as_slice() {
            ["cairn", "run", "--", "sh", "-c", ..] => {
                assert_eq!(ran.stdout, "hello\ndone\n", "{context}");
                run_id = ran
                    .stderr
                    .split_whitespace()
                    .find(|w| w.starts_with("run-"))
                    .unwrap_or_else(|| panic!("no id printed: {context}"))
                    .to_string();
            }
            ["cairn", "ls", "--status", "any", ..] => {
                let row = ran.stdout.lines().find(|l| l.starts_with(&run_id));
                assert!(row.is_some_and(|r| r.contains("completed")), "{context}");
                assert!(ran.stdout.starts_with("ID"), "{context}");
            }
            ["curl", ..] => {
                let record: Value = serde_json::from_str(&ran.stdout).expect("curl printed the record");
                assert_eq!(record["id"], "approve-1", "{context}");
                assert_eq!(record["status"], "running", "{context}");
            }
            ["cairn", "ls", "--waiting", "true"] => {
                let row = ran.stdout.lines().find(|l| l.starts_with("approve-1"));
                assert!(row.is_some_and(|r| r.ends_with("yes")), "{context}");
            }
            ["cairn", "signal", "approve-1", "approve", ..] => {
                assert!(
                    ran.stdout.starts_with("signal.approve recorded on approve-1 as event"),
                    "{context}"
                );
            }
            ["cairn", "await", "approve-1"] => {
                assert!(
                    ran.stdout
                        .lines()
                        .any(|l| l.starts_with("status") && l.ends_with("completed")),
                    "{context}"
                );
                assert!(ran.stdout.contains(r#"{"by":"alice"}"#), "{context}");
            }
            ["cairn", "events", "approve-1"] => {
                let completed = ran.stdout.lines().find(|l| l.contains("process.completed"));
                // Each row carries its time (RFC 3339, UTC).
                assert!(
                    completed.is_some_and(|l| l.contains('T') && l.contains("Z ")),
                    "{context}"
                );
                assert!(ran.stdout.contains("signal.approve"), "{context}");
            }
            ["cairn", "start", ..] => {
                assert_eq!(ran.stdout.trim(), "started ci-7 (running)", "{context}");
            }
            ["cairn", "complete", "ci-7", ..] => {
                assert_eq!(ran.stdout.trim(), "ci-7 is completed", "{context}");
                let (_, record) = http.get("/v1/processes/ci-7").await;
                assert_eq!(record["outcome"]["value"]["green"], true);
            }
            _ => panic!("the tour has a command this test does not check: {command}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 9, "the tour's commands: {tour:#?}");
}

/// The examples `cairn start --help`, `append --help` and `complete --help`
/// print tell one story about process `ci-7`: run in order, as printed, each
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_work_help_examples_run_as_written() {
    let server = Server::serve(&["--db", "memory", "--listen", "127.0.0.1:0"]).await;
    for command in ["start", "append", "complete"] {
        let help = common::run_cli(&server.base, None, &[command, "--help"], None).await;
        assert_eq!(help.code, 0, "{}", help.stderr);
        let examples = help
            .stdout
            .split_once("Example")
            .unwrap_or_else(|| panic!("`{command} --help` has examples"))
            .1;
        let first = examples
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("cairn "))
            .unwrap_or_else(|| panic!("`{command} --help` has an example command: {examples}"));
        let ran = sh(&server, first).await;
        assert_eq!(ran.code, 0, "`{first}`: {}{}", ran.stdout, ran.stderr);
    }
    let (_, record) = server.client().get("/v1/processes/ci-7").await;
    assert_eq!(record["status"], "completed", "{record}");
    let (_, page) = server.client().get("/v1/processes/ci-7/events").await;
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(types, ["progress", "process.completed"], "{page}");
}
