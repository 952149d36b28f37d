//! Array built-ins that loop over a length of the receiver's choosing and
//! never reach the engine's interrupt: refused past cairn's bound, and a
//! script calling them in a loop still ends at its CPU limit.

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

fn cpu_limit_unwound(name: &str, o: &Outcome) {
    let Outcome::Failure { code, message, .. } = o else {
        panic!("{name}: {o:?}")
    };
    assert_eq!(code, "cpu_limit", "{name}: {o:?}");
    assert!(
        !message.contains("held"),
        "{name}: stopped and unwound, not held: {message}"
    );
}

/// A call over more elements than the bound (the length times the objects
/// an element's lookup may visit) is a catchable RangeError naming cairn's
/// bound, not a loop past the CPU limit; calls within it work as ever, and
/// the replaced built-ins keep their names and lengths.
#[tokio::test]
async fn array_built_ins_refuse_work_past_the_bound() {
    let p = runtime(Duration::from_secs(5));
    let m = put(
        &p,
        r#"const said = (f) => { try { return "ran: " + f(); } catch (e) { return `${e.name}: ${e.message}`; } };
        export async function refused() {
            const AP = Array.prototype;
            let deep = {};
            for (let i = 0; i < 100000; i++) deep = Object.create(deep);
            const onDeep = Object.create(deep);
            onDeep.length = 1024;
            const sparse = [];
            sparse.length = 2 ** 32 - 1;
            return {
                join31: said(() => AP.join.call({length: 2 ** 31 - 1}, "")),
                join53: said(() => AP.join.call({length: 2 ** 53 - 1}, "")),
                toString: said(() => AP.toString.call({length: 2 ** 53 - 1, join: AP.join})),
                reverse: said(() => AP.reverse.call({length: 2 ** 53 - 1})),
                sparse: said(() => sparse.join("")),
                shift: said(() => AP.shift.call({length: 2 ** 40})),
                copyWithin: said(() => AP.copyWithin.call({length: 2 ** 53 - 1}, 0, 1)),
                sort: said(() => AP.sort.call({length: 2 ** 40})),
                concat: said(() => [].concat({length: 2 ** 53 - 1, [Symbol.isConcatSpreadable]: true})),
                deep: said(() => AP.join.call(onDeep, "")),
                proxied: said(() => AP.join.call(new Proxy(onDeep, {}), "")),
            };
        }
        export async function within() {
            const AP = Array.prototype;
            const names = ["join", "reverse", "sort", "concat", "splice", "flat", "flatMap", "toSorted"]
                .map((n) => `${AP[n].name}/${AP[n].length}`).join(" ");
            const big = Array.from({length: 100000}, (_, i) => i);
            class Mine extends Array {}
            return {
                names,
                joined: AP.join.call({length: 3, 0: "a", 2: "c"}, "-"),
                big: big.join("").length,
                sorted: [3, 1, 2].sort().join(),
                concat: [1].concat([2], 3, {length: 1, 0: 4, [Symbol.isConcatSpreadable]: true}).join(),
                flat: [1, [2, [3, [4]]], , 5].flat(Infinity).join(),
                flatOne: JSON.stringify([1, [2, [3]]].flat()),
                flatMap: [1, 2].flatMap((x, i) => [x, i]).join(),
                species: Mine.from([1, [2]]).flat() instanceof Mine,
                badMapper: said(() => [1].flatMap(1)),
            };
        }"#,
    )
    .await;
    let refused = outcome(&p, &m, "refused").await;
    for (call, said) in value(&refused).as_object().expect("an object") {
        let said = said.as_str().unwrap_or_default();
        assert!(
            said.starts_with("RangeError: Array.prototype.")
                && said.contains("past cairn's bound on one call of an array built-in (33554432 element lookups"),
            "{call}: {said}"
        );
    }
    let within = outcome(&p, &m, "within").await;
    assert_eq!(
        value(&within),
        &json!({
            "names": "join/1 reverse/0 sort/1 concat/1 splice/2 flat/0 flatMap/1 toSorted/1",
            "joined": "a--c",
            "big": 488890,
            "sorted": "1,2,3",
            "concat": "1,2,3,4",
            "flat": "1,2,3,4,5",
            "flatOne": "[1,2,[3]]",
            "flatMap": "1,0,2,1",
            "species": true,
            "badMapper": "TypeError: Array.prototype.flatMap's mapper is not a function",
        })
    );
}

/// A script that calls such a built-in again and again, each call within the
/// bound, ends at its CPU limit (each call checks it first), unwound; so do
/// `flat` of an array of 2^32 - 1 holes (written in the prelude, so its
/// loop is script code), and an iterator helper over an array iterator
/// whose length grew past the bound after it was made. And the top level
/// of a module making a call past the bound is refused at once, not waited for.
#[tokio::test]
async fn a_loop_of_built_in_calls_ends_at_the_cpu_limit() {
    let p = runtime(Duration::from_millis(300));
    let m = put(
        &p,
        r#"export async function joins() { const o = {length: 2 ** 23}; for (;;) Array.prototype.join.call(o, ""); }
        export async function caught() { const o = {length: 2 ** 23}; for (;;) { try { Array.prototype.reverse.call(o); } catch (_) {} } }
        export async function flat() { const a = []; a.length = 2 ** 32 - 1; return [a].flat().length; }
        export async function iterates() {
            const o = {length: 1};
            const it = Array.prototype.values.call(o);
            o.length = 2 ** 53 - 1;
            it.forEach(Math.abs);
            return 1;
        }"#,
    )
    .await;
    for name in ["joins", "caught", "flat", "iterates"] {
        cpu_limit_unwound(name, &outcome(&p, &m, name).await);
    }
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
    assert!(err.to_string().contains("past cairn's bound"), "{err}");
    // The engine still stores and runs modules.
    let ok = put(&p, "export async function ok() { return 2; }").await;
    assert_eq!(value(&outcome(&p, &ok, "ok").await), &json!(2));
}
