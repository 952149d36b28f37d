//! Array built-ins that loop over a length of the receiver's choosing and
//! never reach the engine's interrupt: they are the engine's own, unguarded,
//! and a module's top level spinning in one is given up, not waited for.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Disposition, MemoryRegistry, Outcome, ProcessInput, Processes, StartRequest};
use cairn_script::{Limits, QuickJs};
use serde_json::{json, Value};

fn runtime(cpu: Duration) -> Processes {
    Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::new(Limits {
            cpu,
            ..Limits::default()
        })))
        .start()
}

async fn put(p: &Processes, source: &str) -> String {
    p.put_module(source.to_string(), None)
        .await
        .expect("module stored")
        .module
        .module_ref
}

/// Runs `name` of module `m`, and answers its outcome; the test fails if it
/// has not ended in 20 s.
async fn outcome(p: &Processes, m: &str, name: &str) -> Outcome {
    let req = StartRequest::new(
        name,
        ProcessInput::Script {
            module_ref: m.into(),
            process_name: name.into(),
            args: json!({}),
        },
        Disposition::Rerunnable,
    );
    p.start(req).await.expect("started");
    let rec = tokio::time::timeout(Duration::from_secs(20), p.await_output(name, Duration::from_secs(20)))
        .await
        .unwrap_or_else(|_| panic!("{name}: the script was never stopped"))
        .expect("awaited");
    rec.outcome.unwrap_or_else(|| panic!("{name}: no outcome"))
}

fn value(o: &Outcome) -> &Value {
    match o {
        Outcome::Success { value } => value,
        other => panic!("{other:?}"),
    }
}

/// The array built-ins are the engine's own, unguarded: their source is
/// `[native code]`, and calls a bound on the receiver's length would refuse
/// (a slice of a long sparse array) or a script rewrite would overflow the
/// stack on (`flat(Infinity)` of a deep nesting) work as in any engine.
#[tokio::test]
async fn array_built_ins_are_the_engine_s_own() {
    let p = runtime(Duration::from_secs(5));
    let m = put(
        &p,
        r#"export async function own() {
            const AP = Array.prototype;
            const native = ["join", "sort", "slice", "splice", "concat", "reverse", "flat", "flatMap", "toSorted"]
                .filter((n) => !/\[native code\]/.test(String(AP[n])));
            const sparse = [];
            sparse.length = 4e7;
            sparse[0] = 1;
            let deep = [1];
            for (let i = 0; i < 2000; i++) deep = [deep];
            return {
                notNative: native,
                slice: sparse.slice(0, 10).length,
                sliceLast: sparse.slice(-1).length,
                flat: deep.flat(Infinity).join(),
                joined: AP.join.call({length: 3, 0: "a", 2: "c"}, "-"),
                concat: [1].concat([2], 3, {length: 1, 0: 4, [Symbol.isConcatSpreadable]: true}).join(),
            };
        }"#,
    )
    .await;
    assert_eq!(
        value(&outcome(&p, &m, "own").await),
        &json!({"notNative": [], "slice": 10, "sliceLast": 1, "flat": "1", "joined": "a--c", "concat": "1,2,3,4"})
    );
}

/// A module whose top level spins in a built-in the engine cannot interrupt
/// is given up once its thread has run past its CPU limit (`invalid_module`,
/// its thread held), and does not wedge module storage: the next module is
/// stored and runs.
#[tokio::test]
async fn a_top_level_spinning_in_a_built_in_is_given_up() {
    let p = runtime(Duration::from_millis(300));
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        p.put_module(
            "Array.prototype.join.call({length: 2 ** 53 - 1}, \"\");\nexport async function f() { return 1; }".into(),
            None,
        ),
    )
    .await
    .expect("the top level was answered")
    .expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("did not stop at the CPU limit"), "{err}");
    let ok = tokio::time::timeout(
        Duration::from_secs(20),
        put(&p, "export async function ok() { return 2; }"),
    )
    .await
    .expect("the next module is answered");
    assert_eq!(value(&outcome(&p, &ok, "ok").await), &json!(2));
}
