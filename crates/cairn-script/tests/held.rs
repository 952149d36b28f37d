//! Engine threads a script held past its stop are counted: once
//! `MAX_HELD_THREADS` are held, compiles are refused, saying the server
//! must be restarted, while activations still run (a refused one would
//! fail a durable process for good); a source that held one is refused
//! again without running.
//! (Its own test binary: the threads it holds stay held until it exits.)

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Disposition, MemoryRegistry, Outcome, ProcessInput, Processes, StartRequest};
use cairn_script::{held_threads, Limits, QuickJs, MAX_HELD_THREADS};
use serde_json::json;

async fn outcome(p: &Processes, m: &str, id: &str, name: &str) -> Outcome {
    let req = StartRequest::new(
        id,
        ProcessInput::Script {
            module_ref: m.into(),
            process_name: name.into(),
            args: json!({}),
        },
        Disposition::Rerunnable,
    );
    p.start(req).await.expect("started");
    let rec = p.await_output(id, Duration::from_secs(20)).await.expect("awaited");
    rec.outcome.unwrap_or_else(|| panic!("{id}: no outcome"))
}

#[tokio::test]
async fn held_engine_threads_are_bounded() {
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::new(Limits {
            heap_bytes: Limits::MIN_HEAP_BYTES,
            cpu: Duration::from_millis(50),
            ..Limits::default()
        })))
        .start();
    let m = p
        .put_module(
            "export async function spin() { for (;;) new Promise(() => { for (;;) {} }); }\n\
             export async function ok() { return 1; }"
                .into(),
            None,
        )
        .await
        .expect("stored")
        .module
        .module_ref;
    assert_eq!(held_threads(), 0);
    // Half the threads held by activations, half by module tops.
    for i in 0..MAX_HELD_THREADS {
        if i % 2 == 0 {
            let Outcome::Failure { code, message, .. } = outcome(&p, &m, &format!("spin-{i}"), "spin").await else {
                panic!("spin-{i} failed")
            };
            assert_eq!(code, "cpu_limit");
            assert!(message.contains("its engine thread is held"), "{message}");
        } else {
            let top = format!("for (;;) new Promise(() => {{ for (;;) {{}} }});\nexport async function f{i}() {{}}");
            let err = p.put_module(top.clone(), None).await.expect_err("refused");
            assert_eq!(err.code(), "invalid_module");
            assert!(err.to_string().contains("its engine thread is held"), "{err}");
            // The same source again is refused without running: no second
            // thread is held for it.
            let again = p.put_module(top, None).await.expect_err("refused again");
            assert_eq!(again.code(), "invalid_module");
            assert!(again.to_string().contains("refused without running again"), "{again}");
        }
        assert_eq!(held_threads(), i + 1);
    }
    // The bound is reached: no module is compiled (nothing is stored, so
    // nothing durable is lost), not even one that would not escape.
    let err = p
        .put_module("export async function g() { return 2; }".into(), None)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "unavailable", "{err}");
    assert!(err.to_string().contains("restart the server to free them"), "{err}");
    // Activations still run: refused, a durable process (maybe another
    // session's) would fail for good. One that escapes is held too.
    assert_eq!(outcome(&p, &m, "after", "ok").await, Outcome::success(json!(1)));
    let Outcome::Failure { code, message, .. } = outcome(&p, &m, "spin-after", "spin").await else {
        panic!("spin-after failed")
    };
    assert_eq!(code, "cpu_limit");
    assert!(message.contains("its engine thread is held"), "{message}");
    assert_eq!(held_threads(), MAX_HELD_THREADS + 1);
}
