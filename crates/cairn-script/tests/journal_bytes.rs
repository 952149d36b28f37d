//! The journal's byte limit (`Limits::max_journal_bytes`, ADR 0036): a call
//! or an answer that would take a script's journal past it ends the process
//! `failed` with `journal_limit`, and so does a replay of a journal past it.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Disposition, MemoryRegistry, Outcome, ProcessInput, ProcessRegistry, Processes, StartRequest};
use cairn_script::{Limits, QuickJs};
use serde_json::{json, Value};

/// Answers `"y"` repeated `args.bytes` times: a small call, a large answer.
struct Big;

#[cairn_core::async_trait]
impl cairn_core::Tool for Big {
    fn name(&self) -> &str {
        "big"
    }
    async fn run(&self, _ctx: cairn_core::ToolContext, args: Value) -> Outcome {
        let bytes = args["bytes"].as_u64().unwrap_or(0) as usize;
        Outcome::success(json!("y".repeat(bytes)))
    }
}

fn runtime(registry: Arc<dyn ProcessRegistry>, max_journal_bytes: u64) -> Processes {
    Processes::builder(registry)
        .script_engine(Arc::new(QuickJs::new(Limits {
            max_journal_bytes,
            ..Limits::default()
        })))
        .tools(cairn_core::ToolRegistry::new().with(Arc::new(Big)))
        .start()
}

fn script(id: &str, module_ref: &str, args: Value) -> StartRequest {
    StartRequest::new(
        id,
        ProcessInput::Script {
            module_ref: module_ref.into(),
            process_name: "main".into(),
            args,
        },
        Disposition::Rerunnable,
    )
}

/// `times` answers of `bytes` each, then a signal `go` when `wait` is set.
const MODULE: &str = r#"export async function main(ctx) {
    let total = 0;
    for (let i = 0; i < ctx.args.times; i++) {
        total += (await ctx.tool("big", {bytes: ctx.args.bytes})).length;
    }
    if (ctx.args.wait) await ctx.waitSignal("go");
    return total;
}"#;

/// The bytes of the journal in `id`'s log, as the limit counts them.
async fn journal_bytes(p: &Processes, id: &str) -> usize {
    let events = p.events(id, 0, Some(1000)).await.expect("events").events;
    events
        .iter()
        .filter(|e| e.event_type.starts_with("script."))
        .map(|e| serde_json::to_vec(&e.payload).unwrap().len())
        .sum()
}

/// Wait for `id` to wait for its signal (it waited for its children before).
async fn suspended_on_signal(p: &Processes, id: &str) {
    let mut after = 0;
    loop {
        let e = p
            .await_event(id, cairn_core::events::WAITING, after, Duration::from_secs(20))
            .await
            .expect("suspended");
        if e.payload.to_string().contains("\"go\"") {
            return;
        }
        after = e.sequence;
    }
}

fn failed_journal_limit(rec: &cairn_core::ProcessRecord) -> String {
    match &rec.outcome {
        Some(Outcome::Failure {
            class, code, message, ..
        }) if class == "script" && code == "journal_limit" => message.clone(),
        other => panic!("failed `journal_limit`: {other:?}"),
    }
}

/// An answer that would take the journal past its bytes is not journaled:
/// the process ends `failed` with `journal_limit`, naming the bytes and the
/// flag; under the bound the same script runs to its end.
#[tokio::test]
async fn an_answer_past_the_journal_bytes_ends_the_script_journal_limit() {
    let p = runtime(Arc::new(MemoryRegistry::new()), 200_000);
    let m = p.put_module(MODULE.into(), None).await.unwrap().module.module_ref;

    p.start(script("fits", &m, json!({"times": 3, "bytes": 50_000})))
        .await
        .unwrap();
    let rec = p.await_output("fits", Duration::from_secs(20)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!(150_000))), "{rec:?}");

    p.start(script("over", &m, json!({"times": 10, "bytes": 50_000})))
        .await
        .unwrap();
    let rec = p.await_output("over", Duration::from_secs(20)).await.unwrap();
    let message = failed_journal_limit(&rec);
    assert!(message.contains("the answer to call 4"), "{message}");
    assert!(message.contains("past its limit of 200000 bytes"), "{message}");
    assert!(
        message.contains("`cairn serve --script-max-journal-bytes`"),
        "{message}"
    );
    let journaled = journal_bytes(&p, "over").await;
    assert!(journaled <= 200_000, "the journal stayed within its bound: {journaled}");
    let results = p.events("over", 0, Some(1000)).await.unwrap().events;
    let answered = results.iter().filter(|e| e.event_type == "script.result").count();
    assert_eq!(answered, 3, "the answer past the bound is not journaled");
}

/// A call (its arguments) and a log line count as they are journaled.
#[tokio::test]
async fn a_call_or_a_log_line_past_the_journal_bytes_ends_the_script_journal_limit() {
    let p = runtime(Arc::new(MemoryRegistry::new()), 100_000);
    let m = p
        .put_module(
            r#"export async function emits(ctx) {
                for (let i = 0; i < 10; i++) await ctx.emit("note", {text: "x".repeat(30000)});
            }
            export async function logs(ctx) {
                for (let i = 0; i < 10; i++) ctx.log("x".repeat(30000));
                await ctx.sleep(1);
            }"#
            .into(),
            None,
        )
        .await
        .unwrap()
        .module
        .module_ref;
    for (id, name, said) in [("emits", "emits", "journaling call 4 "), ("logs", "logs", "a log line")] {
        let req = StartRequest::new(
            id,
            ProcessInput::Script {
                module_ref: m.clone(),
                process_name: name.into(),
                args: json!({}),
            },
            Disposition::Rerunnable,
        )
        .with_event_type(cairn_core::EventType::plain("note"));
        p.start(req).await.unwrap();
        let rec = p.await_output(id, Duration::from_secs(20)).await.unwrap();
        let message = failed_journal_limit(&rec);
        assert!(message.contains(said), "{message}");
        assert!(journal_bytes(&p, id).await <= 100_000);
    }
}

/// A journal past the bound (the limit lowered across a restart) is not
/// replayed: the next activation stops reading it there and ends the
/// process `failed` with `journal_limit`, naming the bytes and the flag.
#[tokio::test]
async fn a_replay_of_a_journal_past_the_bytes_ends_the_script_journal_limit() {
    let registry: Arc<dyn ProcessRegistry> = Arc::new(MemoryRegistry::new());
    let first = runtime(registry.clone(), Limits::DEFAULT_JOURNAL_BYTES);
    let m = first.put_module(MODULE.into(), None).await.unwrap().module.module_ref;
    first
        .start(script(
            "lowered",
            &m,
            json!({"times": 4, "bytes": 50_000, "wait": true}),
        ))
        .await
        .unwrap();
    suspended_on_signal(&first, "lowered").await;
    first.shutdown().await;
    let journaled = journal_bytes(&first, "lowered").await;
    assert!(journaled > 200_000, "{journaled}");

    let second = runtime(registry, 100_000);
    second.signal("lowered", "go", "g1", json!(1)).await.unwrap();
    let rec = second.await_output("lowered", Duration::from_secs(20)).await.unwrap();
    let message = failed_journal_limit(&rec);
    assert!(message.contains("holds more than 100000 bytes"), "{message}");
    assert!(
        message.contains("`cairn serve --script-max-journal-bytes`"),
        "{message}"
    );

    // Under the bound it was written with, the same journal replays.
    let registry: Arc<dyn ProcessRegistry> = Arc::new(MemoryRegistry::new());
    let first = runtime(registry.clone(), Limits::DEFAULT_JOURNAL_BYTES);
    let m = first.put_module(MODULE.into(), None).await.unwrap().module.module_ref;
    first
        .start(script("kept", &m, json!({"times": 4, "bytes": 50_000, "wait": true})))
        .await
        .unwrap();
    suspended_on_signal(&first, "kept").await;
    first.shutdown().await;
    let second = runtime(registry, 300_000);
    second.signal("kept", "go", "g1", json!(1)).await.unwrap();
    let rec = second.await_output("kept", Duration::from_secs(20)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!(200_000))), "{rec:?}");
}

/// No journal is no limit: zero bytes is refused as a configuration.
#[test]
fn a_journal_limit_of_zero_bytes_is_refused() {
    let e = Limits {
        max_journal_bytes: 0,
        ..Limits::default()
    }
    .check()
    .expect_err("refused");
    assert!(e.contains("journal limit is 0 bytes"), "{e}");
    assert_eq!(Limits::default().max_journal_bytes, 64 << 20);
}
