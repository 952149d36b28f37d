//! The engine through a runtime over the in-memory registry: compile checks,
//! the journal, replay, suspension and the limits.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Disposition, MemoryRegistry, Outcome, ProcessInput, ProcessStatus, Processes, StartRequest};
use cairn_script::{Limits, QuickJs};
use serde_json::{json, Value};

fn runtime(limits: Limits) -> Processes {
    Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::new(limits)))
        .start()
}

async fn put(p: &Processes, source: &str) -> String {
    p.put_module(source.to_string(), Some("t.js".into()))
        .await
        .expect("module stored")
        .module
        .module_ref
}

fn script(id: &str, module_ref: &str, name: &str, args: Value) -> StartRequest {
    StartRequest::new(
        id,
        ProcessInput::Script {
            module_ref: module_ref.into(),
            process_name: name.into(),
            args,
        },
        Disposition::Rerunnable,
    )
}

async fn run(p: &Processes, req: StartRequest) -> cairn_core::ProcessRecord {
    let id = req.id.clone();
    p.start(req).await.expect("started");
    let rec = p.await_output(&id, Duration::from_secs(20)).await.expect("awaited");
    assert!(rec.is_terminal(), "the script ended: {rec:?}");
    rec
}

async fn events(p: &Processes, id: &str, t: &str) -> Vec<Value> {
    p.events(id, 0, Some(1000))
        .await
        .expect("events")
        .events
        .into_iter()
        .filter(|e| e.event_type == t)
        .map(|e| e.payload)
        .collect()
}

/// A module nested past what the parser's stack takes is refused saying so:
/// the engine gives no line and column for it.
#[tokio::test]
async fn a_module_nested_past_the_parser_is_refused_saying_so() {
    let p = runtime(Limits::default());
    let depth = 200_000;
    let source = format!(
        "export const v = {}1{};\nexport async function f() {{ return 1; }}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let err = p.put_module(source, None).await.expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(
        err.to_string()
            .contains("nests brackets, blocks or expressions too deeply"),
        "{err}"
    );
    assert!(p.list_modules(None, None).await.unwrap().is_empty(), "nothing stored");
}

/// A module whose top level never ends is refused naming the limit it hit.
#[tokio::test]
async fn a_top_level_past_the_cpu_limit_names_the_limit() {
    let p = runtime(Limits {
        cpu: Duration::from_millis(200),
        ..Limits::default()
    });
    let err = p
        .put_module("while (true) {}\nexport async function f() {}".into(), None)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("CPU limit of 200ms"), "{err}");
    assert!(p.list_modules(None, None).await.unwrap().is_empty(), "nothing stored");
}

/// A script's calls name their children `{id}/{n}`: a script id without
/// room for the largest `n` is refused at start, not at the call that
/// would overflow it, and nothing is created.
#[tokio::test]
async fn a_script_id_leaves_room_for_its_childrens() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        "export async function f(ctx) { return await ctx.tool(\"echo\", {value: 1}); }",
    )
    .await;
    let most = cairn_core::script::MAX_SCRIPT_ID_BYTES;
    let long = "s".repeat(most + 1);
    let e = p.start(script(&long, &m, "f", json!({}))).await.unwrap_err();
    assert_eq!(e.code(), "invalid_id", "{e}");
    assert!(
        e.to_string()
            .contains(&format!("its id is at most {most} bytes, not {}", most + 1)),
        "{e}"
    );
    assert_eq!(p.get(&long).await.unwrap_err().code(), "unknown_process");
    // At the limit, the child of the largest call number is an id still.
    let fits = "s".repeat(most);
    let child = format!("{fits}/{}", cairn_core::script::MAX_SCRIPT_CALLS);
    cairn_core::validate::validate_id("process id", &child).expect("the largest child id fits");
    let rec = run(&p, script(&fits, &m, "f", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(1))), "{rec:?}");
    // And no call limit past the one the ids leave room for.
    let past = Limits {
        max_calls: cairn_core::script::MAX_SCRIPT_CALLS + 1,
        ..Limits::default()
    };
    let e = past.check().expect_err("refused");
    assert!(e.contains("it must be at most 1000000"), "{e}");
}

/// A top level making more journaled calls than a process may is refused at
/// store, naming the limit; stored under a higher limit, a start of it ends
/// `journal_limit`, not as an interrupted script.
#[tokio::test]
async fn a_top_level_past_the_call_limit_names_the_limit() {
    let source =
        "const t = Array.from({length: 20}, () => Math.random());\nexport async function f() { return t.length; }";
    let strict = runtime(Limits {
        max_calls: 5,
        ..Limits::default()
    });
    let err = strict.put_module(source.into(), None).await.expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("more than 5 journaled calls"), "{err}");
    assert!(err.to_string().contains("`cairn serve --script-max-calls`"), "{err}");
    // Lines count too, though their refusal is dropped where they are written.
    let logging = "for (let i = 0; i < 20; i++) console.log(i);\nexport async function f() { return 1; }";
    let err = strict.put_module(logging.into(), None).await.expect_err("refused");
    assert!(err.to_string().contains("more than 5 journaled calls"), "{err}");
    assert!(err.to_string().contains("`cairn serve --script-max-calls`"), "{err}");
    assert!(
        strict.list_modules(None, None).await.unwrap().is_empty(),
        "nothing stored"
    );

    let store = Arc::new(MemoryRegistry::new());
    let lenient = Processes::builder(store.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .start();
    let m = put(&lenient, source).await;
    let strict = Processes::builder(store)
        .script_engine(Arc::new(QuickJs::new(Limits {
            max_calls: 5,
            ..Limits::default()
        })))
        .start();
    let rec = run(&strict, script("calls", &m, "f", json!({}))).await;
    assert!(
        matches!(&rec.outcome, Some(Outcome::Failure { class, code, .. }) if class == "script" && code == "journal_limit"),
        "{:?}",
        rec.outcome
    );
}

/// What a module's top level throws is described as what a function throws:
/// a plain object's message is kept.
#[tokio::test]
async fn what_a_top_level_throws_is_described() {
    let p = runtime(Limits::default());
    let err = p
        .put_module(
            "throw {message: \"needs config\"};\nexport async function f() {}".into(),
            None,
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("needs config"), "{err}");
}

#[tokio::test]
async fn a_syntax_error_names_line_and_column() {
    let p = runtime(Limits::default());
    let err = p
        .put_module("export async function f(ctx) {\n  let x = ;\n}".into(), None)
        .await
        .expect_err("a syntax error");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("line 2"), "{err}");
    // Columns count characters, as an editor does, not UTF-8 bytes.
    let err = p
        .put_module("const s = 'éééé'; let x = ;".into(), None)
        .await
        .expect_err("a syntax error");
    assert!(err.to_string().ends_with("line 1, column 27"), "{err}");
    // Nor a byte order mark leading the source.
    let err = p
        .put_module("\u{feff}let x = ;".into(), None)
        .await
        .expect_err("a syntax error");
    assert!(err.to_string().ends_with("line 1, column 9"), "{err}");
    // The engine reads a source only up to a NUL: one is refused where it is.
    let err = p
        .put_module("export async function f() {\n  return 'a\u{0}b';\n}".into(), None)
        .await
        .expect_err("a NUL");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("NUL character at line 2, column 12"), "{err}");
    assert!(p.list_modules(None, None).await.unwrap().is_empty(), "nothing stored");
}

/// A module's top level is judged at store time with the globals it runs
/// with: `console` is there (a line written at store time goes nowhere; at
/// run time it is a `script.log` line), the journaled `Date.now()` and
/// `Math.random()` answer, and `performance`, which no activation has, is
/// refused at store rather than failing every start.
#[tokio::test]
async fn a_module_is_stored_with_the_globals_it_runs_with() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"console.log("loaded");
        const t = Date.now(), r = Math.random();
        export async function f(ctx) {
            const residues = new Set(Array.from({length: 200}, () => (Math.random() * 2 ** 53) % 32));
            return [typeof t, typeof r, typeof performance, typeof WeakRef, typeof FinalizationRegistry,
                    residues.size > 2];
        }"#,
    )
    .await;
    let rec = run(&p, script("globals", &m, "f", json!({}))).await;
    // The collector's doings (weak references, finalizers) would differ on a
    // replay; `Math.random` gives 53 random bits, none fixed.
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!([
            "number",
            "number",
            "undefined",
            "undefined",
            "undefined",
            true
        ])))
    );
    let logs: Vec<Value> = events(&p, "globals", "script.log")
        .await
        .into_iter()
        .map(|l| l["message"].clone())
        .collect();
    assert_eq!(logs, [json!("loaded")], "the run's line only");
    let err = p
        .put_module(
            "const t0 = performance.now();\nexport async function f(ctx) { return 1; }".into(),
            None,
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(
        err.to_string()
            .contains("performance is not defined at line 1, column 12"),
        "{err}"
    );
    assert_eq!(
        p.list_modules(None, None).await.unwrap().len(),
        1,
        "only the first stored"
    );
}

/// A `ctx.start` request that is no object, or holds a field no start
/// takes, is refused in terms of what ctx.start takes: never `id` or
/// `caused_by`, which it makes itself.
#[tokio::test]
async fn a_bad_ctx_start_request_says_what_ctx_start_takes() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const said = [];
            for (const r of [null, "echo", [1], {input: {type: "external"}, disposition: "externally_owned", bogus: 1}]) {
                await ctx.start(r).then(() => said.push("started"), e => said.push(e.message));
            }
            // A request whose `has` trap throws rejects too: no throw where
            // the call is made.
            let where = "rejected";
            try {
                await ctx.start(new Proxy({}, {has() { throw new Error("has"); }}))
                    .then(() => said.push("started"), e => said.push(`${e.code}: ${e.message}`));
            } catch (e) {
                where = "thrown: " + e.message;
            }
            said.push(where);
            return said;
        }"#,
    )
    .await;
    let rec = run(&p, script("bad-starts", &m, "main", json!({}))).await;
    let Some(Outcome::Success { value, .. }) = rec.outcome else {
        panic!("{:?}", rec.outcome)
    };
    let said: Vec<&str> = value.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for (message, given) in said[..3].iter().zip(["null", "a string", "an array"]) {
        assert_eq!(
            *message,
            format!(
                "ctx.start takes a start request without `id`: an object with `input` and \
                 `disposition`, not {given}"
            )
        );
    }
    assert!(said[3].contains("unknown field `bogus`"), "{}", said[3]);
    assert!(
        !said[3].contains("`id`") && !said[3].contains("`caused_by`"),
        "{}",
        said[3]
    );
    assert!(said[3].contains("`input`, `disposition`"), "{}", said[3]);
    assert_eq!(
        said[4..],
        ["invalid_request: ctx.start's request cannot be read: has", "rejected"]
    );
}

/// An export of a name no variable has is a syntax error the engine names
/// without a place: it is found, as any syntax error's, past a mention of
/// the name in a comment or a longer name.
#[tokio::test]
async fn an_export_of_no_variable_names_its_line_and_column() {
    let p = runtime(Limits::default());
    for (source, at) in [
        (
            "// missing\nexport async function f(ctx) { const missingNo = 1; return missingNo; }\n\n\nexport { missing as m };",
            "line 5, column 10",
        ),
        ("async function a() {}\nexport { a, nope };", "line 2, column 13"),
    ] {
        let err = p.put_module(source.into(), None).await.expect_err("refused");
        assert_eq!(err.code(), "invalid_module", "{source}");
        let said = err.to_string();
        assert!(said.contains("does not exist") && said.ends_with(at), "{source}: {said}");
    }
    assert!(p.list_modules(None, None).await.unwrap().is_empty(), "nothing stored");
}

/// Scripts have no `import` (SPEC §14): a static import is refused at store
/// naming its specifier and where it is (not a mention in a comment or a
/// string), and `import()` fails at run time saying the same.
#[tokio::test]
async fn imports_are_refused_saying_scripts_have_none() {
    let p = runtime(Limits::default());
    for (source, at) in [
        ("import x from \"y\"; export async function f() {}", "line 1, column 15"),
        (
            "// import x from \"y\"\nconst s = 'from \"y\"';\n  import {x} from \"y\";\nexport async function f() {}",
            "line 3, column 19",
        ),
        ("export * from 'y';\nexport async function f() {}", "line 1, column 15"),
    ] {
        let err = p.put_module(source.into(), None).await.expect_err("an import");
        assert_eq!(err.code(), "invalid_module", "{source}");
        let said = err.to_string();
        assert!(
            said.contains("scripts cannot import modules (SPEC §14), and this one imports \"y\""),
            "{said}"
        );
        assert!(said.ends_with(at), "{source}: {said}");
    }
    assert!(p.list_modules(None, None).await.unwrap().is_empty(), "nothing stored");
    let m = put(
        &p,
        r#"export async function caught(ctx) {
            try { await import("y"); } catch (e) { return e.message; }
        }
        export async function uncaught(ctx) { return await import("y"); }"#,
    )
    .await;
    let refused = "scripts cannot import modules (SPEC §14), and this one imports \"y\"";
    let rec = run(&p, script("imp1", &m, "caught", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(refused))));
    let rec = run(&p, script("imp2", &m, "uncaught", json!({}))).await;
    match rec.outcome {
        Some(Outcome::Failure { class, message, .. }) => {
            assert_eq!((class.as_str(), message.as_str()), ("script", refused));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn exports_are_the_exported_functions() {
    let p = runtime(Limits::default());
    let put = p
        .put_module(
            "export async function b() {}\nexport function a() {}\nexport const c = 1;".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(put.module.exports, ["a", "b"]);
    assert!(put.created);
    let again = p
        .put_module(
            "export async function b() {}\nexport function a() {}\nexport const c = 1;".into(),
            None,
        )
        .await
        .unwrap();
    assert!(!again.created);
    // A class or a generator function is a function to JavaScript, but not one
    // a start can run: a class needs `new`, a generator answers an iterator.
    let put = p
        .put_module(
            "export class C {}\nexport function* g() {}\nexport async function* ag() {}\n\
             export const arrow = async () => 1;\nexport function plain() {}\n\
             export const bound = plain.bind(null);"
                .into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(put.module.exports, ["arrow", "bound", "plain"]);
    // A module that exports no function a start could run is refused, and
    // nothing is stored.
    for (source, says) in [
        ("async function f() {}", "exports no function"),
        ("export const f = 1;", "exports no function"),
        ("export class C {}", "exports no function"),
        ("", "the module source is empty"),
        ("\n  \n", "the module source is empty"),
    ] {
        let err = p.put_module(source.into(), None).await.expect_err(source);
        assert_eq!(err.code(), "invalid_module", "{source}: {err}");
        assert!(err.to_string().contains(says), "{err}");
        let stored = cairn_core::script::module_ref(source);
        assert!(p.get_module(&stored).await.is_err(), "{source}: stored");
    }
    // One stored before that rule answers as any stored source does.
    let registry = Arc::new(MemoryRegistry::new());
    let p = Processes::builder(registry.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .start();
    let source = "export const f = 1;";
    let module = cairn_core::script::Module {
        info: cairn_core::ModuleInfo {
            module_ref: cairn_core::script::module_ref(source),
            name: None,
            exports: Vec::new(),
            created_at_ms: 0,
        },
        source: source.into(),
    };
    cairn_core::ProcessRegistry::put_module(&*registry, &module)
        .await
        .expect("stored as an earlier build did");
    let again = p
        .put_module(source.into(), None)
        .await
        .expect("a stored source answers");
    assert!(!again.created);
    assert_eq!(again.module.module_ref, module.info.module_ref);
}

#[tokio::test]
async fn start_checks_module_export_and_disposition() {
    let p = runtime(Limits::default());
    let m = put(&p, "export async function main(ctx) { return 1; }").await;
    let missing = format!("module:sha256:{}", "0".repeat(64));
    let e = p.start(script("a", &missing, "main", json!({}))).await.unwrap_err();
    assert_eq!(e.code(), "unknown_module");
    for malformed in ["deploy.js", "module:sha256:abc", &m.to_uppercase()] {
        let e = p.start(script("a", malformed, "main", json!({}))).await.unwrap_err();
        assert_eq!(e.code(), "invalid_id", "{malformed}: {e}");
        assert!(e.to_string().contains("64 lowercase hex digits"), "{e}");
    }
    assert!(p.get("a").await.is_err(), "nothing started");
    let e = p.start(script("a", &m, "nope", json!({}))).await.unwrap_err();
    assert_eq!(e.code(), "unknown_export");
    // A case typo is seen against the exports the refusal names.
    let e = p.start(script("a", &m, "Main", json!({}))).await.unwrap_err();
    assert_eq!(e.code(), "unknown_export");
    assert_eq!(
        e.to_string(),
        format!("module `{m}` exports no function `Main` (its exports: `main`)")
    );
    let mut req = script("a", &m, "main", json!({}));
    req.disposition = Disposition::OwnerBound;
    assert_eq!(p.start(req).await.unwrap_err().code(), "invalid_disposition");
    assert!(matches!(p.get("a").await.unwrap_err().code(), "unknown_process"));
}

#[tokio::test]
async fn three_steps_complete_with_the_right_value() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx, args) {
            const a = ctx.now();
            await ctx.emit("progress", {step: 1});
            ctx.log("half way", {a: 1});
            await ctx.sleep(1);
            await ctx.emit("progress", {step: 2});
            return {sum: args.x + 1, id: ctx.processId, t: typeof a};
        }"#,
    )
    .await;
    let req = script("s1", &m, "main", json!({"x": 41})).with_event_type(cairn_core::EventType::plain("progress"));
    let rec = run(&p, req).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"sum": 42, "id": "s1", "t": "number"})))
    );
    let calls = events(&p, "s1", "script.call").await;
    let kinds: Vec<_> = calls.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["now", "emit", "sleep", "emit"]);
    assert_eq!(events(&p, "s1", "script.result").await.len(), 4);
    assert_eq!(
        events(&p, "s1", "progress").await,
        [json!({"step": 1}), json!({"step": 2})]
    );
    assert_eq!(
        events(&p, "s1", "script.log").await.len(),
        1,
        "the log line is written once, not again on replay"
    );
}

/// A duration is a number of milliseconds from 0 up: a fraction is rounded up
/// (the sleep and the signal's deadline both take effect), anything else
/// rejects the call instead of passing for zero or for "no deadline". A
/// number that is not finite is named as the number it is (`not NaN`), a
/// string as a string (`not "NaN"`).
#[tokio::test]
async fn durations_round_up_and_bad_ones_reject() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const bad = [];
            for (const ms of [-5, "abc", 1e300, undefined, 365 * 86400000 + 1]) {
                try { await ctx.sleep(ms); bad.push("resolved"); } catch (e) { bad.push(e.code); }
            }
            try { await ctx.waitSignal("never", {timeoutMs: -1}); bad.push("resolved"); } catch (e) { bad.push(e.code); }
            try { await ctx.waitSignal("never", {timeoutMs: 2 ** 53}); bad.push("resolved"); } catch (e) { bad.push(e.message); }
            for (const t of [NaN, Infinity]) {
                try { await ctx.waitSignal("never", {timeoutMs: t}); bad.push("resolved"); } catch (e) { bad.push(e.message); }
            }
            for (const t of [NaN, -Infinity, "NaN"]) {
                try { await ctx.sleep(t); bad.push("resolved"); } catch (e) { bad.push(e.message); }
            }
            const t0 = ctx.now();
            await ctx.sleep(2.5);
            const slept = ctx.now() - t0;
            const timedOut = await ctx.waitSignal("never", {timeoutMs: 5.5});
            return {bad, slept: slept >= 3, timedOut};
        }"#,
    )
    .await;
    let rec = run(&p, script("d1", &m, "main", json!({}))).await;
    let bad = "invalid_request";
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"bad": [bad, bad, bad, bad, bad, bad,
                "ctx.waitSignal's timeoutMs takes at most 31536000000 ms (a year), not 9007199254740992",
                "ctx.waitSignal's timeoutMs takes a number of milliseconds from 0 up, not NaN",
                "ctx.waitSignal's timeoutMs takes a number of milliseconds from 0 up, not Infinity",
                "ctx.sleep(ms) takes a number of milliseconds from 0 up, not NaN",
                "ctx.sleep(ms) takes a number of milliseconds from 0 up, not -Infinity",
                "ctx.sleep(ms) takes a number of milliseconds from 0 up, not \"NaN\""],
                "slept": true, "timedOut": null})))
    );
}

/// Arguments that are not JSON (a BigInt, a cycle) reject the call, as any
/// bad argument does, rather than throwing where it is made; and an error
/// logged shows its message and code, not `{}`.
#[tokio::test]
async fn calls_whose_arguments_are_not_json_reject_and_errors_log_their_message() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const codes = [];
            await ctx.emit("progress", {n: 1n}).catch(e => codes.push(e.code));
            const o = {}; o.o = o;
            await ctx.tool("echo", o).catch(e => codes.push(e.code));
            try { await ctx.tool("nope", {}); } catch (e) { console.log("failed:", e); }
            return codes;
        }"#,
    )
    .await;
    let rec = run(&p, script("nj", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!(["invalid_request", "invalid_request"])))
    );
    let logged = events(&p, "nj", "script.log").await;
    let line = logged[0]["message"].as_str().expect("a message");
    assert!(
        line.starts_with("failed: Error: ") && line.contains("nope") && line.contains("(code unknown_tool)"),
        "{line}"
    );
}

#[tokio::test]
async fn now_and_random_replay_identically_across_a_suspension() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const t = Date.now(), r = Math.random(), u = ctx.uuid();
            const sig = await ctx.waitSignal("go");
            return {t, r, u, again: [Date.now() >= t], sig};
        }"#,
    )
    .await;
    p.start(script("r1", &m, "main", json!({}))).await.unwrap();
    // Suspended on the signal: the record shows the wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rec = p.get("r1").await.unwrap();
        if rec.wait.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the script never suspended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first: Vec<Value> = events(&p, "r1", "script.result").await;
    p.signal("r1", "go", "g1", json!({"by": "ann"})).await.unwrap();
    let rec = p.await_output("r1", Duration::from_secs(10)).await.unwrap();
    let Some(Outcome::Success { value }) = rec.outcome else {
        panic!("success: {rec:?}")
    };
    assert_eq!(value["t"], first[0]["value"]);
    assert_eq!(value["r"], first[1]["value"]);
    assert_eq!(value["u"], first[2]["value"]);
    assert_eq!(value["sig"], json!({"by": "ann"}));
}

/// `new Date()` and `Date()` read the journaled clock as `Date.now()` does, so
/// a replay after a suspension sees the times the first activation saw; a Date
/// of given parts is unaffected and stays a `Date`; `performance` is gone.
#[tokio::test]
async fn new_date_and_date_replay_identically_across_a_suspension() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const a = new Date().getTime(), s = Date();
            const sig = await ctx.waitSignal("go");
            class Stamp extends Date {}
            const stamp = new Stamp();
            return {
              a, s, sig,
              parsed: Date.parse(s),
              later: stamp.getTime() >= a,
              stamp_is_date: stamp instanceof Date && stamp instanceof Stamp,
              fixed: new Date(Date.UTC(2020, 0, 2)).toISOString(),
              is_date: new Date(0) instanceof Date && new Date(0).constructor === Date,
              name: Date.name,
              performance: typeof performance,
            };
        }"#,
    )
    .await;
    p.start(script("d1", &m, "main", json!({}))).await.unwrap();
    p.await_event("d1", cairn_core::events::WAITING, 0, Duration::from_secs(10))
        .await
        .expect("suspended on the signal");
    let first: Vec<Value> = events(&p, "d1", "script.result").await;
    assert_eq!(first.len(), 2, "new Date() and Date() were journaled: {first:?}");
    p.signal("d1", "go", "g1", json!(1)).await.unwrap();
    let rec = p.await_output("d1", Duration::from_secs(10)).await.unwrap();
    let Some(Outcome::Success { value }) = rec.outcome else {
        panic!("success: {rec:?}")
    };
    assert_eq!(
        value["a"], first[0]["value"],
        "the replayed `new Date()` is the journaled time"
    );
    let second = first[1]["value"].as_u64().expect("a time");
    assert_eq!(
        value["parsed"].as_u64(),
        Some(second / 1000 * 1000),
        "`Date()` is the journaled time as a string (to the second): {value}"
    );
    assert_eq!(value["later"], true);
    assert_eq!(value["stamp_is_date"], true);
    assert_eq!(value["fixed"], "2020-01-02T00:00:00.000Z");
    assert_eq!(value["is_date"], true);
    assert_eq!(value["name"], "Date");
    assert_eq!(value["performance"], "undefined", "no other clock");
    let kinds: Vec<Value> = events(&p, "d1", "script.call")
        .await
        .into_iter()
        .map(|c| c["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("now"), json!("now"), json!("wait_signal"), json!("now")]);
}

#[tokio::test]
async fn an_uncaught_error_fails_with_class_script_and_its_code() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            throw Object.assign(new Error("not approved in time"), {code: "not_approved"});
        }
        export async function plain() { null.x; }"#,
    )
    .await;
    let rec = run(&p, script("e1", &m, "main", json!({}))).await;
    let Some(Outcome::Failure {
        class,
        code,
        message,
        raw,
    }) = rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!(
        (class.as_str(), code.as_str(), message.as_str()),
        ("script", "not_approved", "not approved in time")
    );
    assert!(raw.unwrap()["stack"].as_str().unwrap().contains("script.js"));
    let rec = run(&p, script("e2", &m, "plain", json!({}))).await;
    let Some(Outcome::Failure { code, .. }) = rec.outcome else {
        panic!("{rec:?}")
    };
    assert_eq!(code, "uncaught");
}

/// A failure's code and message are never blank, as a completion's may not
/// be: a code of spaces is `uncaught` (as an empty one is), and an error
/// thrown without words says so.
#[tokio::test]
async fn a_blank_code_or_message_is_not_kept() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx, a) {
            throw Object.assign(new Error(a.msg), {code: a.code});
        }
        export async function bare() { throw "  "; }"#,
    )
    .await;
    for (id, args, want_code) in [
        ("b1", json!({"code": "   ", "msg": "m"}), "uncaught"),
        ("b2", json!({"code": "ok", "msg": " \n "}), "ok"),
        ("b3", json!({"code": "", "msg": ""}), "uncaught"),
    ] {
        let rec = run(&p, script(id, &m, "main", args)).await;
        let Some(Outcome::Failure { code, message, .. }) = rec.outcome else {
            panic!("{rec:?}")
        };
        assert_eq!(code, want_code, "{id}");
        let expected = if id == "b1" {
            "m"
        } else {
            "the script threw an error without a message"
        };
        assert_eq!(message, expected, "{id}");
    }
    let rec = run(&p, script("b4", &m, "bare", json!({}))).await;
    let Some(Outcome::Failure { code, message, .. }) = rec.outcome else {
        panic!("{rec:?}")
    };
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("uncaught", "the script threw an error without a message")
    );
}

/// A script's `args` is an object (SPEC §14): none given is `{}`, and
/// another kind of value is refused at the start, which stores nothing.
#[tokio::test]
async fn args_are_an_object_or_none() {
    let p = runtime(Limits::default());
    let m = put(&p, "export async function main(ctx, args) { return [args, ctx.args]; }").await;
    let rec = run(&p, script("none", &m, "main", Value::Null)).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::Success { value: json!([{}, {}]) }),
        "{rec:?}"
    );
    for (id, args, kind) in [
        ("s", json!("1.4.2"), "a string"),
        ("n", json!(5), "a number"),
        ("l", json!([1]), "an array"),
    ] {
        let e = p.start(script(id, &m, "main", args)).await.unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{id}: {e}");
        assert!(e.to_string().contains(&format!("not {kind}")), "{e}");
        assert_eq!(p.get(id).await.unwrap_err().code(), "unknown_process");
    }
}

/// A call of a misspelt `ctx` method fails saying what was called and the
/// method meant; a call of any other member that is no function says what
/// was called. `ctx` itself is as it was: a misspelt name reads undefined.
#[tokio::test]
async fn a_misspelt_ctx_method_names_the_one_meant() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function lower(ctx) { await ctx.waitsignal("go"); }
        export async function extra(ctx) {
            await ctx.emitt("x", {});
        }
        export async function short(ctx) { return ctx.nw(); }
        export async function far(ctx) { const o = {}; return o.frobnicate(); }
        export async function methods(ctx) {
            return [Object.keys(ctx).filter((k) => typeof Object.getOwnPropertyDescriptor(ctx, k).value === "function"),
                    typeof ctx.waitsignal, "waitsignal" in ctx];
        }"#,
    )
    .await;
    for (id, name, said) in [
        (
            "m1",
            "lower",
            "not a function: `.waitsignal` (did you mean `ctx.waitSignal`?)",
        ),
        ("m2", "extra", "not a function: `.emitt` (did you mean `ctx.emit`?)"),
        ("m3", "short", "not a function: `.nw` (did you mean `ctx.now`?)"),
        ("m4", "far", "not a function: `.frobnicate`"),
    ] {
        let rec = run(&p, script(id, &m, name, json!({}))).await;
        let Some(Outcome::Failure { code, message, .. }) = rec.outcome else {
            panic!("{rec:?}")
        };
        assert_eq!((code.as_str(), message.as_str()), ("uncaught", said), "{name}");
    }
    // The engine's list of methods (`CTX_METHODS`) is these: a method added
    // to the prelude goes there too.
    let rec = run(&p, script("m5", &m, "methods", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::Success {
            value: json!([
                [
                    "tool",
                    "start",
                    "wait",
                    "turn",
                    "sleep",
                    "waitSignal",
                    "emit",
                    "now",
                    "random",
                    "uuid",
                    "log"
                ],
                "undefined",
                false
            ])
        })
    );
}

/// A script that replaces the global `JSON` has its own error reported, and
/// its context calls read back right: the prelude keeps the engine's own
/// `JSON.stringify` and `JSON.parse` (it reported the script's bug as the
/// engine's, `runtime/script_engine`, or as `stuck`).
#[tokio::test]
async fn a_script_that_replaces_json_keeps_its_own_error_and_its_calls() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function broke(ctx) {
            JSON.stringify = () => "{}";
            throw new Error("my bug");
        }
        export async function parsed(ctx) {
            JSON.parse = () => ({});
            JSON.stringify = () => undefined;
            ctx.log("still heard");
            return Date.now() > 0;
        }"#,
    )
    .await;
    let rec = run(&p, script("j1", &m, "broke", json!({}))).await;
    let Some(Outcome::Failure {
        class, code, message, ..
    }) = rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!(
        (class.as_str(), code.as_str(), message.as_str()),
        ("script", "uncaught", "my bug")
    );
    let rec = run(&p, script("j2", &m, "parsed", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(true))), "{rec:?}");
    assert_eq!(events(&p, "j2", "script.log").await.len(), 1);
}

#[tokio::test]
async fn limits_fail_with_their_codes() {
    let limits = Limits {
        heap_bytes: 8 << 20,
        cpu: Duration::from_millis(300),
        max_calls: 5,
        ..Limits::default()
    };
    let p = runtime(limits);
    let m = put(
        &p,
        r#"export async function spin() { for (;;) {} }
        export async function hog() { const a = []; for (;;) a.push(new Array(10000).fill(1)); }
        export async function chatty(ctx) { for (let i = 0; i < 10; i++) ctx.now(); return 1; }
        export async function says() { throw Object.assign(new Error("out of memory"), {code: "quota"}); }"#,
    )
    .await;
    // Each limit's message names the setting that raises it.
    for (id, name, code, setting) in [
        ("c", "spin", "cpu_limit", "`cairn serve --script-cpu`"),
        ("m", "hog", "memory_limit", "`cairn serve --script-heap-bytes`"),
        ("j", "chatty", "journal_limit", "`cairn serve --script-max-calls`"),
        ("q", "says", "quota", ""),
    ] {
        let rec = run(&p, script(id, &m, name, json!({}))).await;
        assert_eq!(rec.status, ProcessStatus::Failed, "{id}");
        let Some(Outcome::Failure { code: got, message, .. }) = &rec.outcome else {
            panic!("{rec:?}")
        };
        assert_eq!(got.as_str(), code, "{id}: {:?}", rec.outcome);
        assert!(message.contains(setting), "{id}: {message}");
    }
    let ok = put(&p, "export async function f() { return 'fine'; }").await;
    let rec = run(&p, script("after", &ok, "f", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!("fine"))),
        "the runtime is still healthy"
    );
}

/// A limit holds where QuickJS would let the script past it: inside
/// `Promise` executors (which turn the engine's interruption into a
/// rejection, so a loop of them never stopped), in a native built-in that
/// makes no interrupt polls (one `JSON.stringify` of a large string after
/// another), and at a top level doing either.
#[tokio::test]
async fn limits_hold_against_promise_executors_and_native_built_ins() {
    let limits = Limits {
        cpu: Duration::from_millis(300),
        ..Limits::default()
    };
    let p = runtime(limits.clone());
    let m = put(
        &p,
        r#"export async function executors() { for (;;) new Promise(() => { for (;;) {} }); }
        export async function caught() { for (;;) { try { new Promise(() => { for (;;) {} }); } catch (_) {} } }
        export async function native() { const big = "x".repeat(4000000); for (;;) JSON.stringify(big); }"#,
    )
    .await;
    for name in ["executors", "caught", "native"] {
        let id = format!("cpu-{name}");
        let rec = tokio::time::timeout(Duration::from_secs(60), run(&p, script(&id, &m, name, json!({}))))
            .await
            .unwrap_or_else(|_| panic!("{name}: the script was never stopped"));
        let Some(Outcome::Failure { code, .. }) = &rec.outcome else {
            panic!("{rec:?}")
        };
        assert_eq!(code, "cpu_limit", "{name}: {:?}", rec.outcome);
    }
    // A script that swallows every error it can catch, keeping what it
    // makes, is still unwound by the stop (the engine's "interrupted" error
    // is allocated, and uncatchable), not given up and held.
    let big = Limits {
        cpu: Duration::from_millis(300),
        heap_bytes: 1 << 30,
        ..Limits::default()
    };
    let keeper = runtime(big);
    let m = put(
        &keeper,
        r#"export async function keep() {
            const kept = [];
            for (;;) { try { for (;;) kept.push({n: kept.length}); } catch (_) {} }
        }"#,
    )
    .await;
    let rec = tokio::time::timeout(
        Duration::from_secs(60),
        run(&keeper, script("keep", &m, "keep", json!({}))),
    )
    .await
    .expect("the script was stopped");
    let Some(Outcome::Failure { code, message, .. }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    assert_eq!(code, "cpu_limit", "{rec:?}");
    assert!(
        !message.contains("ran on past its stop"),
        "unwound, not held: {message}"
    );
    for top in [
        "for (;;) new Promise(() => { for (;;) {} });\nexport async function f() {}",
        "const big = 'x'.repeat(4000000); for (;;) JSON.stringify(big);\nexport async function f() {}",
    ] {
        let err = tokio::time::timeout(Duration::from_secs(60), p.put_module(top.into(), None))
            .await
            .unwrap_or_else(|_| panic!("the top level was never stopped: {top}"))
            .expect_err("refused");
        assert_eq!(err.code(), "invalid_module");
        assert!(err.to_string().contains("CPU limit of 300ms"), "{err}");
    }
    let ok = put(&p, "export async function f() { return 'fine'; }").await;
    let rec = run(&p, script("after-cpu", &ok, "f", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("fine"))));
}

/// A top level awaiting what nothing can settle (it runs before any context
/// exists) is refused when stored, saying so, rather than stored to fail
/// every start with "not initialized".
#[tokio::test]
async fn a_top_level_that_never_settles_is_refused() {
    let p = runtime(Limits::default());
    let err = p
        .put_module(
            "const config = await new Promise(() => {});\nexport async function main() { return config; }".into(),
            None,
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "invalid_module");
    assert!(err.to_string().contains("never settles"), "{err}");
    assert!(p.list_modules(None, None).await.unwrap().is_empty(), "nothing stored");
}

/// The engine's own `Date` (and so the host's clock and time zone) cannot be
/// had from a stack frame: a frame's function is `undefined`.
#[tokio::test]
async fn the_engine_clock_is_not_reachable_through_stack_frames() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function f() {
            let found = "none";
            new Date({ valueOf() {
                Error.prepareStackTrace = (e, s) => s;
                const sites = new Error().stack;
                Error.prepareStackTrace = undefined;
                const fns = sites.map((c) => c.getFunction());
                if (fns.some((g) => g !== undefined)) found = "a frame's function";
                return 0;
            } });
            return found;
        }"#,
    )
    .await;
    let rec = run(&p, script("frames", &m, "f", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("none"))), "{rec:?}");
}

/// An engine whose second and later activations see `{"switch": true}` in
/// their args: code that changes under replay, forced.
struct Switching {
    inner: QuickJs,
    runs: std::sync::atomic::AtomicUsize,
}

#[cairn_core::async_trait]
impl cairn_core::ScriptEngine for Switching {
    fn exports(&self, source: &str) -> cairn_core::Result<Vec<String>> {
        self.inner.exports(source)
    }

    async fn run(
        &self,
        ctx: cairn_core::ToolContext,
        module: cairn_core::Module,
        name: String,
        mut args: Value,
    ) -> Outcome {
        if self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            args["switch"] = json!(true);
        }
        self.inner.run(ctx, module, name, args).await
    }
}

/// An engine that finds one more export than the module has, `notfn`: a
/// module whose export is a function when stored and something else when it
/// runs, as top-level code may make it.
struct OneMoreExport(QuickJs);

#[cairn_core::async_trait]
impl cairn_core::ScriptEngine for OneMoreExport {
    fn exports(&self, source: &str) -> cairn_core::Result<Vec<String>> {
        let mut exports = self.0.exports(source)?;
        exports.extend(["notfn", "cls", "gen"].map(String::from));
        Ok(exports)
    }

    async fn run(
        &self,
        ctx: cairn_core::ToolContext,
        module: cairn_core::Module,
        name: String,
        args: Value,
    ) -> Outcome {
        self.0.run(ctx, module, name, args).await
    }
}

/// An export that is no function when its activation runs fails the
/// process naming it (`unknown_export`), not with a bare "not a function".
#[tokio::test]
async fn an_export_that_is_no_function_when_it_runs_fails_naming_it() {
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(OneMoreExport(QuickJs::default())))
        .start();
    let m = put(
        &p,
        "export const notfn = 5;\nexport class cls {}\nexport function* gen() {}\n\
         export async function main() { return 1; }",
    )
    .await;
    for (name, what) in [("notfn", "number"), ("cls", "a class"), ("gen", "a generator")] {
        let rec = run(&p, script(&format!("nf-{name}"), &m, name, json!({}))).await;
        match &rec.outcome {
            Some(Outcome::Failure {
                class, code, message, ..
            }) => {
                assert_eq!(
                    (class.as_str(), code.as_str()),
                    ("script", "unknown_export"),
                    "{message}"
                );
                let says = format!("`{name}` is not a function in this activation (it is {what})");
                assert!(message.contains(&says), "{message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A runtime whose script runs after the first are given `switch: true`,
/// on a clock that moves only when the test says: a `ctx.sleep` always
/// suspends the first run (on a real clock a slow machine could let its
/// time pass before the run checks it, and the sleep would return at once,
/// unrecorded), and [`past_the_sleep`] ends it.
fn switching_runtime() -> (Processes, Arc<cairn_core::ManualClock>) {
    let clock = Arc::new(cairn_core::ManualClock::new(1_000_000));
    let p = Processes::builder(Arc::new(MemoryRegistry::with_clock(clock.clone())))
        .clock(clock.clone())
        .script_engine(Arc::new(Switching {
            inner: QuickJs::default(),
            runs: Default::default(),
        }))
        .start();
    (p, clock)
}

/// Once `id`'s first run suspended on its `ctx.sleep(50)`, move the clock
/// past it: the next run (given `switch: true`) replays the journal.
async fn past_the_sleep(p: &Processes, clock: &cairn_core::ManualClock, id: &str) {
    let waiting = p
        .await_event(id, "process.waiting", 0, Duration::from_secs(10))
        .await
        .expect("the first run suspended");
    assert_eq!(waiting.payload["kind"], "timer", "{id}: {waiting:?}");
    clock.advance(50);
    p.nudge();
}

#[tokio::test]
async fn a_replay_that_changes_its_calls_fails_nondeterminism() {
    let (p, clock) = switching_runtime();
    let m = put(
        &p,
        r#"export async function main(ctx, args) {
            if (!args.switch) await ctx.sleep(50);
            else await ctx.emit("other", {});
            await ctx.waitSignal("go");
            return "unreachable";
        }"#,
    )
    .await;
    let req = script("nd", &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("other"));
    p.start(req).await.unwrap();
    // The first activation slept; the second (after the timer) replays with
    // the other branch.
    past_the_sleep(&p, &clock, "nd").await;
    let rec = p.await_output("nd", Duration::from_secs(10)).await.unwrap();
    let calls = events(&p, "nd", "script.call").await;
    assert_eq!(calls[0]["kind"], "sleep", "the first activation took the first branch");
    let Some(Outcome::Failure {
        class, code, message, ..
    }) = rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!((class.as_str(), code.as_str()), ("script", "nondeterminism"));
    assert!(
        message.contains("emit") && message.contains("sleep"),
        "names both calls: {message}"
    );
    assert!(
        events(&p, "nd", "other").await.is_empty(),
        "the changed call had no effect"
    );
}

/// A replay that makes another call where the first run's call was refused
/// (too large to journal, so only its result is journaled) took another
/// path: it fails, instead of taking the refusal as its own call's answer.
#[tokio::test]
async fn a_replay_that_changes_a_refused_call_fails_nondeterminism() {
    let (p, clock) = switching_runtime();
    let m = put(
        &p,
        r#"export async function main(ctx, args) {
            if (!args.switch) await ctx.emit("other", {big: "x".repeat(1100000)}).catch(e => e.code);
            else await ctx.emit("other", {small: true}).catch(e => e.code);
            await ctx.sleep(50);
            await ctx.waitSignal("go");
            return "unreachable";
        }"#,
    )
    .await;
    let req = script("nd-refused", &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("other"));
    p.start(req).await.unwrap();
    past_the_sleep(&p, &clock, "nd-refused").await;
    let rec = p.await_output("nd-refused", Duration::from_secs(10)).await.unwrap();
    let results = events(&p, "nd-refused", "script.result").await;
    assert_eq!(results[0]["error"]["code"], "payload_too_large", "{results:?}");
    let Some(Outcome::Failure {
        class, code, message, ..
    }) = &rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!((class.as_str(), code.as_str()), ("script", "nondeterminism"), "{rec:?}");
    assert!(message.contains("refused another call"), "{message}");
    assert!(
        events(&p, "nd-refused", "other").await.is_empty(),
        "the changed call had no effect"
    );
}

/// So does a replay that changes or leaves out a call whose arguments no
/// decoder reads back (nested past its limit, a string cut inside a
/// character): refused, it is counted and named by its result as a call
/// too large is.
#[tokio::test]
async fn a_replay_that_changes_an_unreadable_call_fails_nondeterminism() {
    for (id, made) in [
        (
            "nd-deep",
            "{ let v = 1; for (let i = 0; i < (args.switch ? 600 : 500); i++) v = [v]; return v; }",
        ),
        ("nd-cut", r#"{ return (args.switch ? "cd😀" : "ab😀").slice(0, 3); }"#),
    ] {
        let (p, clock) = switching_runtime();
        let m = put(
            &p,
            &format!(
                r#"export async function main(ctx, args) {{
                    const value = (() => {made})();
                    const said = await ctx.emit("other", {{value}}).catch(e => e.message);
                    await ctx.emit("other", {{said}});
                    await ctx.sleep(50);
                    await ctx.waitSignal("go");
                    return "unreachable";
                }}"#
            ),
        )
        .await;
        let req = script(id, &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("other"));
        p.start(req).await.unwrap();
        past_the_sleep(&p, &clock, id).await;
        let rec = p.await_output(id, Duration::from_secs(10)).await.unwrap();
        let said = events(&p, id, "other").await;
        let message = said[0]["said"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("cannot be journaled"), "{id}: {said:?}");
        let why = if id == "nd-deep" {
            "level limit"
        } else {
            "lone UTF-16 surrogate"
        };
        assert!(message.contains(why), "{id}: {message}");
        let results = events(&p, id, "script.result").await;
        assert!(results[0]["refused"]["digest"].is_string(), "{id}: {results:?}");
        let Some(Outcome::Failure {
            class, code, message, ..
        }) = &rec.outcome
        else {
            panic!("{id}: {rec:?}")
        };
        assert_eq!(
            (class.as_str(), code.as_str()),
            ("script", "nondeterminism"),
            "{id}: {rec:?}"
        );
        assert!(message.contains("refused another call"), "{id}: {message}");
    }
}

/// A journal written before such calls counted (the call refused uncounted,
/// its next call journaled at its number) still replays: the call is
/// refused there as it was then, and the run goes on without repeating the
/// journaled emit.
#[tokio::test]
async fn a_journal_from_before_unreadable_calls_counted_replays() {
    let registry: Arc<dyn cairn_core::ProcessRegistry> = Arc::new(MemoryRegistry::new());
    let engine = Arc::new(QuickJs::default());
    let host = Processes::builder(registry.clone())
        .script_engine(engine.clone())
        .without_worker()
        .start();
    let m = put(
        &host,
        r#"export async function main(ctx, args) {
            let v = 1; for (let i = 0; i < 500; i++) v = [v];
            const said = await ctx.emit("other", {v}).catch(e => e.code);
            if (args.big) await ctx.emit("other", {big: "x".repeat(1100000)}).catch(e => e.code);
            await ctx.emit("other", {said});
            return said;
        }"#,
    )
    .await;
    let said = json!({"said": "invalid_request"});
    // The call refused for its size after it: only its result, at 1.
    let big = json!({"type": "other", "payload": {"big": "x".repeat(1_100_000)}, "n": 1, "kind": "emit"});
    let refused_big = json!({"n": 1, "refused": {"digest": cairn_core::validate::sha256_hex(big.to_string().as_bytes())},
                             "error": {"class": "cairn", "code": "payload_too_large", "message": "too large"}});
    for (id, args, journal) in [
        (
            "old",
            json!({}),
            vec![
                (
                    "script.call",
                    json!({"type": "other", "payload": said, "n": 1, "kind": "emit"}),
                    "script.call:1",
                ),
                ("other", said.clone(), "emit:1"),
                ("script.result", json!({"n": 1, "value": null}), "script.result:1"),
            ],
        ),
        (
            "old-big",
            json!({"big": true}),
            vec![
                ("script.result", refused_big.clone(), "script.result:1"),
                (
                    "script.call",
                    json!({"type": "other", "payload": said, "n": 2, "kind": "emit"}),
                    "script.call:2",
                ),
                ("other", said.clone(), "emit:2"),
                ("script.result", json!({"n": 2, "value": null}), "script.result:2"),
            ],
        ),
    ] {
        let req = script(id, &m, "main", args).with_event_type(cairn_core::EventType::plain("other"));
        host.start(req).await.unwrap();
        // What the earlier run journaled: the unreadable call took no
        // number, and the calls after it are numbered from 1, with their effects.
        let lease = registry.claim(id, "earlier", 60_000).await.unwrap();
        for (event_type, payload, key) in journal {
            let mut append = cairn_core::AppendRequest::new(event_type, payload);
            append.lease = Some(lease.clone());
            append.replay_key = Some(key.into());
            registry.append_event(id, append).await.expect("journaled");
        }
        assert!(registry.release(&lease).await.unwrap());
    }
    let p = Processes::builder(registry).script_engine(engine).start();
    for id in ["old", "old-big"] {
        let rec = p.await_output(id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            rec.outcome,
            Some(Outcome::success(json!("invalid_request"))),
            "{id}: {rec:?}"
        );
        assert_eq!(
            events(&p, id, "other").await,
            std::slice::from_ref(&said),
            "{id}: the emit was not made again"
        );
    }
}

/// A replay that settles before making every journaled call took another
/// path than the run whose effects are journaled: it fails, naming the call.
#[tokio::test]
async fn a_replay_that_makes_fewer_calls_fails_nondeterminism() {
    let (p, clock) = switching_runtime();
    let m = put(
        &p,
        r#"export async function main(ctx, args) {
            if (args.switch) return "a shortcut the first run never took";
            await ctx.emit("other", {});
            await ctx.sleep(50);
            return "done";
        }"#,
    )
    .await;
    let req = script("fewer", &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("other"));
    p.start(req).await.unwrap();
    past_the_sleep(&p, &clock, "fewer").await;
    let rec = p.await_output("fewer", Duration::from_secs(10)).await.unwrap();
    let Some(Outcome::Failure {
        class, code, message, ..
    }) = rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!(
        (class.as_str(), code.as_str()),
        ("script", "nondeterminism"),
        "{message}"
    );
    assert!(
        message.contains("after 0 call(s)") && message.contains("call 1") && message.contains("emit"),
        "names the first call it did not make: {message}"
    );
}

/// A tool whose runs all wait at one barrier: three of them return only when
/// three run at once. `{"fail": code}` fails with that code instead.
struct Gate(Arc<tokio::sync::Barrier>);

#[cairn_core::async_trait]
impl cairn_core::Tool for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    async fn run(&self, _ctx: cairn_core::ToolContext, args: Value) -> Outcome {
        if let Some(code) = args.get("fail").and_then(Value::as_str) {
            return Outcome::failure("tool", code, "the gate refused");
        }
        self.0.wait().await;
        Outcome::success(args["v"].clone())
    }
}

fn runtime_with_gate() -> Processes {
    Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::default()))
        .tools(cairn_core::ToolRegistry::new().with(Arc::new(Gate(Arc::new(tokio::sync::Barrier::new(3))))))
        .start()
}

#[tokio::test]
async fn promise_all_of_three_tool_calls_runs_three_children_at_once() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const [a, b, c] = await Promise.all([1, 2, 3].map(v => ctx.tool("gate", {v})));
            return a + b + c;
        }"#,
    )
    .await;
    // The gate lets the children go only when all three run together.
    let rec = run(&p, script("pa", &m, "main", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(6))));
    let children = p
        .list(&cairn_core::ProcessFilter {
            caused_by: Some("pa".into()),
            status: cairn_core::StatusFilter::Any,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    let ids: Vec<_> = children.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["pa/1", "pa/2", "pa/3"]);
    for c in &children {
        let started = p
            .events(&c.id, 0, None)
            .await
            .unwrap()
            .events
            .iter()
            .filter(|e| e.event_type == "process.started")
            .count();
        assert_eq!(started, 1, "{} started once", c.id);
    }
}

#[tokio::test]
async fn a_failed_child_rejects_with_its_code_and_wait_never_rejects() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            let caught = null;
            try { await ctx.tool("gate", {fail: "no_entry"}); } catch (e) { caught = {code: e.code, cls: e.class}; }
            const id = await ctx.start({input: {type: "tool_call", tool: "gate", args: {fail: "again"}}, disposition: "rerunnable"});
            const out = await ctx.wait(id);
            let bad = null;
            try { await ctx.wait(42); } catch (e) { bad = e.code + ": " + e.message; }
            return {caught, id, out: out.type, code: out.code, bad};
        }"#,
    )
    .await;
    let rec = run(&p, script("fc", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({
            "caught": {"code": "no_entry", "cls": "tool"},
            "id": "fc/2",
            "out": "failure",
            "code": "again",
            "bad": "invalid_request: ctx.wait(id) takes the id of a child process (a string), not 42"
        })))
    );
}

/// Suspended on a signal; a cancellation rejects the wait `cancelled` and the
/// catch block cleans up (`args.hang` then spins: a cleanup that never ends).
const GUARDED: &str = r#"export async function guarded(ctx, args) {
    try {
        await ctx.waitSignal("go");
        return "not cancelled";
    } catch (e) {
        ctx.log("cleaning up");
        await ctx.emit("cleanup", {code: e.code, cancelled: ctx.cancelled});
        if (args.hang) for (;;) {}
        throw e;
    }
}"#;

fn guarded(id: &str, module_ref: &str) -> StartRequest {
    script(id, module_ref, "guarded", json!({})).with_event_type(cairn_core::EventType::plain("cleanup"))
}

/// An engine whose first activation (with a cancellation in force, when
/// `only_cancelled`) runs with `args[flag]` true and, once its `event` is
/// written, loses its lease (released here, in the same process, over the
/// memory store: what a crashed node's lapsed lease amounts to for the
/// journal, not a crash) and returns: the worker's completion is fenced and
/// a later claim replays the script from the log. The real crashes (SIGKILL
/// of `cairn serve`, a restart over the same database) are in
/// `crates/cairn/tests/script_crash.rs`.
struct LeaseLostAfterEvent {
    inner: QuickJs,
    processes: Arc<std::sync::OnceLock<Processes>>,
    crashed: std::sync::atomic::AtomicBool,
    only_cancelled: bool,
    flag: &'static str,
    event: &'static str,
}

impl LeaseLostAfterEvent {
    fn new(inner: QuickJs, only_cancelled: bool, flag: &'static str, event: &'static str) -> Self {
        Self {
            inner,
            processes: Default::default(),
            crashed: Default::default(),
            only_cancelled,
            flag,
            event,
        }
    }
}

#[cairn_core::async_trait]
impl cairn_core::ScriptEngine for LeaseLostAfterEvent {
    fn exports(&self, source: &str) -> cairn_core::Result<Vec<String>> {
        self.inner.exports(source)
    }

    async fn run(
        &self,
        ctx: cairn_core::ToolContext,
        module: cairn_core::Module,
        name: String,
        mut args: Value,
    ) -> Outcome {
        let cancelled = matches!(ctx.stop_reason(), Some(cairn_core::StopReason::Cancelled { .. }));
        if (self.only_cancelled && !cancelled) || self.crashed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return self.inner.run(ctx, module, name, args).await;
        }
        args[self.flag] = json!(true);
        let p = self.processes.get().expect("the runtime is set").clone();
        let id = ctx.process_id().to_string();
        tokio::select! {
            o = self.inner.run(ctx.clone(), module, name, args) => o,
            e = p.await_event(&id, self.event, 0, Duration::from_secs(10)) => {
                e.expect("the script wrote its event");
                assert!(p.registry().release(&ctx.lease()).await.expect("released"));
                Outcome::failure("test", "crashed", "the run went away after its event")
            }
        }
    }
}

/// A script cancelled while suspended, whose cleanup loses its lease after
/// its emit, runs the cleanup again from the journal once (the emit is not
/// made twice) and ends `cancelled`.
#[tokio::test]
async fn a_script_cancelled_while_suspended_runs_its_cleanup_once_across_a_lost_lease() {
    let engine = Arc::new(LeaseLostAfterEvent::new(QuickJs::default(), true, "hang", "cleanup"));
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(engine.clone())
        .start();
    engine.processes.set(p.clone()).ok().expect("set once");
    let m = put(&p, GUARDED).await;
    p.start(guarded("sc", &m)).await.unwrap();
    p.await_event("sc", cairn_core::events::WAITING, 0, Duration::from_secs(10))
        .await
        .expect("suspended on the signal");
    p.cancel("sc", Some("no longer needed".into())).await.unwrap();
    let rec = p.await_output("sc", Duration::from_secs(20)).await.unwrap();
    assert_eq!(rec.status, ProcessStatus::Cancelled, "{rec:?}");
    assert_eq!(rec.outcome, Some(Outcome::cancelled("no longer needed")));
    assert!(
        engine.crashed.load(std::sync::atomic::Ordering::SeqCst),
        "the cleanup was cut short once"
    );
    assert_eq!(
        events(&p, "sc", "cleanup").await,
        [json!({"code": "cancelled", "cancelled": true})],
        "the awaited call rejected `cancelled`, and the replay answered the cleanup's emit from the journal"
    );
    assert_eq!(events(&p, "sc", "script.log").await.len(), 1);
    let kinds: Vec<Value> = events(&p, "sc", "script.call")
        .await
        .into_iter()
        .map(|c| c["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("wait_signal"), json!("emit")]);
    assert_eq!(
        events(&p, "sc", "process.started").await.len(),
        3,
        "the first run, the cut-short cleanup, the cleanup replayed"
    );
}

/// A script woken by its child's end but not yet claimed again is not
/// cancelled on the spot: like one a signal woke, the next claim replays it
/// with the cancellation in force, so its cleanup runs before it ends.
#[tokio::test]
async fn a_script_woken_by_its_child_and_cancelled_runs_its_cleanup() {
    let registry: Arc<dyn cairn_core::ProcessRegistry> = Arc::new(MemoryRegistry::new());
    let engine = Arc::new(QuickJs::default());
    let first = Processes::builder(registry.clone())
        .script_engine(engine.clone())
        .start();
    let m = put(
        &first,
        r#"export async function parent(ctx) {
            const id = await ctx.start({input: {type: "external"}, disposition: "externally_owned"});
            try {
                await ctx.wait(id);
                await ctx.waitSignal("more");
                return "not cancelled";
            } catch (e) {
                await ctx.emit("cleanup", {code: e.code});
                throw e;
            }
        }"#,
    )
    .await;
    first
        .start(script("woken", &m, "parent", json!({})).with_event_type(cairn_core::EventType::plain("cleanup")))
        .await
        .unwrap();
    first
        .await_event("woken", cairn_core::events::WAITING, 0, Duration::from_secs(10))
        .await
        .expect("suspended on its child");
    first.shutdown().await;

    let host = Processes::builder(registry.clone())
        .script_engine(engine.clone())
        .without_worker()
        .start();
    host.complete_external("woken/1", Outcome::success(json!(1)), "ci")
        .await
        .expect("the child ends, waking its parent");
    let rec = host.cancel("woken", Some("no longer needed".into())).await.unwrap();
    assert!(!rec.is_terminal(), "not ended on the spot: {rec:?}");

    let p = Processes::builder(registry).script_engine(engine).start();
    let rec = p.await_output("woken", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::cancelled("no longer needed")));
    assert_eq!(events(&p, "woken", "cleanup").await, [json!({"code": "cancelled"})]);
}

#[tokio::test]
async fn a_script_cancelled_before_it_ever_ran_runs_no_cleanup() {
    let registry: Arc<dyn cairn_core::ProcessRegistry> = Arc::new(MemoryRegistry::new());
    let engine = Arc::new(QuickJs::default());
    // Started while nothing runs it; then claimed elsewhere, cancelled while
    // that claim is live, and released without ever running.
    let host = Processes::builder(registry.clone())
        .script_engine(engine.clone())
        .without_worker()
        .start();
    let m = put(&host, GUARDED).await;
    host.start(guarded("nr", &m)).await.unwrap();
    let lease = registry.claim("nr", "elsewhere", 60_000).await.unwrap();
    let rec = host.cancel("nr", None).await.unwrap();
    assert!(!rec.is_terminal() && rec.cancel_request.is_some(), "{rec:?}");
    assert!(registry.release(&lease).await.unwrap());

    let p = Processes::builder(registry).script_engine(engine).start();
    let rec = p.await_output("nr", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::cancelled("cancelled before it ran")));
    assert!(events(&p, "nr", "script.call").await.is_empty(), "nothing ran");
    assert!(events(&p, "nr", "cleanup").await.is_empty());
}

/// `Promise.race` over waits settles with the first to settle, whatever the
/// call order: a timer beats a signal that never comes, a signal beats a
/// timer of ten minutes, the shorter of two timers wins, and a child that
/// ends beats a long timer.
#[tokio::test]
async fn a_race_of_waits_settles_with_the_first_to_settle() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function timerFirst(ctx) {
            return await Promise.race([ctx.waitSignal("never").then(v => ({sig: v})), ctx.sleep(20).then(() => "timer")]);
        }
        export async function signalFirst(ctx) {
            return await Promise.race([ctx.sleep(600000).then(() => "timer"), ctx.waitSignal("go").then(v => ({sig: v}))]);
        }
        export async function shorterTimer(ctx) {
            return await Promise.race([ctx.sleep(600000).then(() => "long"), ctx.sleep(20).then(() => "short")]);
        }
        export async function childFirst(ctx) {
            return await Promise.race([ctx.sleep(600000).then(() => "timer"), ctx.tool("gate", {fail: "quick"})]).catch(e => e.code);
        }"#,
    )
    .await;
    let rec = run(&p, script("rt", &m, "timerFirst", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("timer"))));
    // The sleep's due time ended the wait: a timer's, not a deadline passed.
    let reasons: Vec<Value> = events(&p, "rt", "process.resumed")
        .await
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("timer")], "{reasons:?}");
    let rec = run(&p, script("rs", &m, "shorterTimer", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("short"))));
    let rec = run(&p, script("rc", &m, "childFirst", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("quick"))));

    p.start(script("rg", &m, "signalFirst", json!({}))).await.unwrap();
    // The race waits on the signal, bounded by the timer's deadline.
    let waiting = p
        .await_event("rg", "process.waiting", 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(waiting.payload["kind"], "signal");
    p.signal("rg", "go", "g1", json!({"by": "ann"})).await.unwrap();
    let rec = p.await_output("rg", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"sig": {"by": "ann"}}))));
}

/// The wait that lost a race is still pending: awaiting it later answers
/// what it waits for (its signal), not the timeout of the race it lost.
#[tokio::test]
async fn the_loser_of_a_race_can_still_be_awaited() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const sig = ctx.waitSignal("go", {timeoutMs: 600000});
            const first = await Promise.race([sig, ctx.sleep(20).then(() => "timer")]);
            await ctx.emit("raced", {first});
            const later = await sig;
            return {first, later};
        }"#,
    )
    .await;
    let start = script("rl", &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("raced"));
    p.start(start).await.unwrap();
    p.await_event("rl", "raced", 0, Duration::from_secs(10)).await.unwrap();
    p.signal("rl", "go", "g1", json!({"by": "bo"})).await.unwrap();
    let rec = p.await_output("rl", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"first": "timer", "later": {"by": "bo"}})))
    );
}

/// A sleep that lost a race is still pending, and a later wait is woken at
/// its due time to settle it: that resumption is the timer's (`timer`), not
/// the later wait timing out, and the record says the wait's `until_ms` is a
/// timer's due time (`due_timer`), not the later wait's own deadline.
#[tokio::test]
async fn a_leftover_sleep_wakes_a_later_wait_as_a_timer() {
    // Time moves only when the test says: the sleep cannot win the race
    // before the signal comes, however slow the machine.
    let clock = Arc::new(cairn_core::ManualClock::new(1_000_000));
    let p = Processes::builder(Arc::new(MemoryRegistry::with_clock(clock.clone())))
        .clock(clock.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .start();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const w = await Promise.race([ctx.waitSignal("a").then(v => ({sig: v})), ctx.sleep(300).then(() => "timer")]);
            const b = await ctx.waitSignal("b", {timeoutMs: 600000});
            return {w, b};
        }"#,
    )
    .await;
    p.start(script("lo", &m, "main", json!({}))).await.unwrap();
    let raced = p
        .await_event("lo", "process.waiting", 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (&raced.payload["name"], &raced.payload["due_timer"]),
        (&json!("a"), &json!(true))
    );
    p.signal("lo", "a", "a1", json!("A")).await.unwrap();
    // The wait for `b`, bounded by the leftover sleep's due time.
    let waiting = p
        .await_event("lo", "process.waiting", raced.sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(waiting.payload["name"], "b", "{waiting:?}");
    assert_eq!(waiting.payload["due_timer"], true, "{waiting:?}");
    // Past the sleep's due time the run settles it and waits for `b` again.
    clock.advance(300);
    p.nudge();
    let again = p
        .await_event("lo", "process.waiting", waiting.sequence, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(again.payload["name"], "b", "{again:?}");
    assert!(
        again.payload.get("due_timer").is_none(),
        "only b's own deadline now: {again:?}"
    );
    let record = p.get("lo").await.unwrap();
    assert!(record.wait.as_ref().is_some_and(|w| !w.due_timer), "{:?}", record.wait);
    p.signal("lo", "b", "b1", json!("B")).await.unwrap();
    let rec = p.await_output("lo", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"w": {"sig": "A"}, "b": "B"})))
    );
    let reasons: Vec<Value> = events(&p, "lo", "process.resumed")
        .await
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        [json!("signal"), json!("timer"), json!("signal")],
        "{reasons:?}"
    );
}

/// Timers awaited together run from their calls: `Promise.all` of timers of
/// 300, 200 and 100 ms takes the longest, not the sum, and every deadline a
/// wait records is its call's journal time plus its duration.
#[tokio::test]
async fn timers_run_from_their_calls_not_one_after_another() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const t0 = ctx.now();
            await Promise.all([ctx.sleep(300), ctx.sleep(200), ctx.sleep(100)]);
            return ctx.now() - t0;
        }"#,
    )
    .await;
    let rec = run(&p, script("ta", &m, "main", json!({}))).await;
    let Some(Outcome::Success { value }) = &rec.outcome else {
        panic!("success: {rec:?}")
    };
    assert!(value.as_u64().is_some_and(|ms| ms >= 300), "slept the longest: {value}");
    let log = p.events("ta", 0, Some(1000)).await.unwrap().events;
    let called: std::collections::HashMap<u64, (u64, u64)> = log
        .iter()
        .filter(|e| e.event_type == "script.call" && e.payload["kind"] == "sleep")
        .map(|e| {
            let n = e.payload["n"].as_u64().unwrap();
            (n, (e.occurred_at_ms, e.payload["ms"].as_u64().unwrap()))
        })
        .collect();
    let waits: Vec<&Value> = log
        .iter()
        .filter(|e| e.event_type == "process.waiting")
        .map(|e| &e.payload)
        .collect();
    assert!(!waits.is_empty(), "the timers suspended the script");
    for w in waits {
        let (at, ms) = called[&w["ordinal"].as_u64().unwrap()];
        let late = w["until_ms"].as_u64().unwrap() - (at + ms);
        assert!(
            late < 50,
            "timer {w} is due {late} ms after its call's time plus its duration"
        );
    }
}

/// This process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// Calls too large to journal are refused where they are made: a script
/// making a hundred and fifty of them in one step (each a fresh 1.5 MiB string its heap
/// limit lets it make and drop) does not make the server hold them all
/// outside that limit until the step ends.
#[tokio::test]
async fn refused_calls_are_not_held_outside_the_heap_limit() {
    // About memory, not time: a debug build making these strings on a busy
    // machine has taken past the default 10 s of CPU.
    let p = runtime(Limits {
        cpu: Duration::from_secs(60),
        ..Limits::default()
    });
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const refused = [];
            for (let i = 0; i < 150; i++) {
                refused.push(ctx.emit("t", {i, v: "x".repeat(3 << 19)}).catch(e => e.code));
            }
            const codes = await Promise.all(refused);
            return codes.filter(c => c === "payload_too_large").length;
        }"#,
    )
    .await;
    let before = peak_rss();
    let rec = run(&p, script("many", &m, "main", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(150))));
    // Held, they would be 150 × 1.5 MiB three times over (675 MiB).
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < 250 << 20, "the peak grew by {} MiB", grew >> 20);
}

/// Calls a step makes count against the heap limit until the step hands
/// them on: a script making many calls each just under the journal's limit
/// in one step (the strings shared, so its heap stays small) ends
/// `memory_limit` instead of making the server hold them all outside it.
#[tokio::test]
async fn a_steps_calls_count_against_the_heap_limit() {
    let p = runtime(Limits {
        heap_bytes: 16 << 20,
        ..Limits::default()
    });
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const big = "x".repeat(900000);
            for (let i = 0; i < 200; i++) ctx.emit("t", {i, v: big});
            return "held";
        }"#,
    )
    .await;
    let rec = run(&p, script("held", &m, "main", json!({}))).await;
    let Some(Outcome::Failure { code, .. }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    assert_eq!(code, "memory_limit", "{rec:?}");
}

/// What a script hands on is held to the limits of what it becomes, not to
/// them less the journal's own fields: an emit's payload of exactly 1 MiB,
/// or nested exactly 64 levels deep, is appended (its `script.call` is
/// larger or deeper by those fields, and replays), and one a byte larger or
/// a level deeper is refused naming the call, as are a tool's `args`.
#[tokio::test]
async fn an_emit_payload_at_the_limits_is_appended_and_past_them_refused_naming_the_call() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        r#"export async function main(ctx, args) {
            const said = e => `${e.code}: ${e.message}`;
            const nested = depth => { let v = 1; for (let i = 0; i < depth; i++) v = [v]; return v; };
            // A JSON string is its characters and two quotes.
            const fits = await ctx.emit("progress", "x".repeat(args.limit - 2)).then(() => "ok", said);
            const over = await ctx.emit("progress", "x".repeat(args.limit - 1)).then(() => "ok", said);
            const args_over = await ctx.tool("echo", "x".repeat(args.limit - 1)).then(() => "ok", said);
            const deep = await ctx.emit("progress", nested(args.depth)).then(() => "ok", said);
            const deeper = await ctx.emit("progress", nested(args.depth + 1)).then(() => "ok", said);
            await ctx.sleep(1);
            return {fits, over, args_over, deep, deeper};
        }"#,
    )
    .await;
    let limit = cairn_core::validate::MAX_PAYLOAD_BYTES;
    let depth = cairn_core::validate::MAX_JSON_DEPTH;
    let req = script("edges", &m, "main", json!({"limit": limit, "depth": depth}))
        .with_event_type(cairn_core::EventType::plain("progress"));
    let rec = run(&p, req).await;
    let Some(Outcome::Success { value }) = &rec.outcome else {
        panic!("{:?}", rec.outcome)
    };
    assert_eq!(value["fits"], "ok", "{value}");
    assert_eq!(value["deep"], "ok", "{value}");
    assert_eq!(
        value["over"],
        format!(
            "payload_too_large: `ctx.emit(\"progress\")`'s payload is {} bytes, over the {limit} byte limit",
            limit + 1
        )
    );
    assert_eq!(
        value["args_over"],
        format!(
            "payload_too_large: `ctx.tool(\"echo\")`'s `args` is {} bytes, over the {limit} byte limit",
            limit + 1
        )
    );
    assert_eq!(
        value["deeper"],
        format!(
            "invalid_request: `ctx.emit(\"progress\")`'s payload nests arrays and objects {} levels deep, \
             over the {depth} level limit",
            depth + 1
        )
    );
    // Both appended, the journal's calls past the limits by their own
    // fields, and replayed after the sleep's suspension.
    let progress = events(&p, "edges", "progress").await;
    assert_eq!(progress.len(), 2);
    assert_eq!(progress[0].as_str().map(str::len), Some(limit - 2));
    let calls = events(&p, "edges", "script.call").await;
    let first = serde_json::to_string(&calls[0]).unwrap().len();
    assert!(first > limit, "the call journaled {first} bytes");
}

/// A call too large to journal rejects with `payload_too_large`, and the
/// script goes on; a replay (after the sleep's suspension) is refused the
/// same call the same way.
#[tokio::test]
async fn a_call_too_large_to_journal_rejects_and_the_script_goes_on() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            let code = null;
            try { await ctx.tool("gate", {v: "x".repeat(2 << 20)}); } catch (e) { code = e.code; }
            await ctx.sleep(1);
            const after = await ctx.tool("gate", {fail: "small"}).catch(e => e.code);
            return {code, after};
        }"#,
    )
    .await;
    let rec = run(&p, script("big", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"code": "payload_too_large", "after": "small"})))
    );
    let calls = events(&p, "big", "script.call").await;
    let kinds: Vec<_> = calls
        .iter()
        .map(|c| (c["n"].as_u64().unwrap(), c["kind"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [(2, json!("sleep")), (3, json!("tool"))],
        "the refused call was not journaled"
    );
}

/// Arguments nested past the journal's depth limit reject the call with
/// `invalid_request` and the script goes on; so do arguments nested past what
/// a JSON decoder reads at all, rather than running with no arguments.
#[tokio::test]
async fn a_call_too_deep_to_journal_rejects_and_the_script_goes_on() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const deep = (n) => { let v = 1; for (let i = 0; i < n; i++) v = [v]; return v; };
            const codes = [];
            for (const n of [100, 500]) {
                await ctx.tool("gate", {v: deep(n)}).catch(e => codes.push([e.code, /levels deep|recursion/.test(e.message)]));
            }
            await ctx.sleep(1);
            const after = await ctx.tool("gate", {fail: "small"}).catch(e => e.code);
            return {codes, after};
        }"#,
    )
    .await;
    let rec = run(&p, script("deep", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({
            "codes": [["invalid_request", true], ["invalid_request", true]],
            "after": "small"
        })))
    );
    let calls = events(&p, "deep", "script.call").await;
    let kinds: Vec<_> = calls.iter().map(|c| c["kind"].clone()).collect();
    assert_eq!(
        kinds,
        [json!("sleep"), json!("tool")],
        "the refused calls were not journaled"
    );
}

/// A signal at the payload depth limit is one level deeper inside its wait's
/// result, which the journal has room for: the wait takes it, and a replay
/// counts it as taken (the run that takes the next signal is one).
#[tokio::test]
async fn a_signal_at_the_depth_limit_is_taken_by_its_wait() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const got = await ctx.waitSignal("go").then(() => "taken", e => e.code);
            const next = await ctx.waitSignal("go");
            return {got, next};
        }"#,
    )
    .await;
    p.start(script("deep-signal", &m, "main", json!({})))
        .await
        .expect("started");
    let first = p
        .await_event("deep-signal", cairn_core::events::WAITING, 0, Duration::from_secs(10))
        .await
        .expect("waiting");
    let mut deep = json!(1);
    for _ in 0..cairn_core::validate::MAX_JSON_DEPTH {
        deep = json!([deep]);
    }
    p.signal("deep-signal", "go", "s1", deep)
        .await
        .expect("a signal at the limit is taken");
    // The second wait suspends before s2 comes: the run that takes s2 is a
    // replay, which must count s1 as taken by the first wait.
    p.await_event(
        "deep-signal",
        cairn_core::events::WAITING,
        first.sequence,
        Duration::from_secs(10),
    )
    .await
    .expect("the second wait");
    p.signal("deep-signal", "go", "s2", json!({"ok": 1}))
        .await
        .expect("signal");
    let rec = p
        .await_output("deep-signal", Duration::from_secs(20))
        .await
        .expect("awaited");
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"got": "taken", "next": {"ok": 1}}))),
        "{rec:?}"
    );
}

/// An option a call does not take rejects the call with `invalid_request`
/// naming it, instead of being ignored (a misspelt `timeoutMs` would wait for
/// ever), as does an `id` for a `ctx.start` child, whose id is its call's;
/// nothing is journaled for them.
#[tokio::test]
async fn unknown_call_options_are_refused() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const seen = [];
            const note = (e) => seen.push([e.code, e.message]);
            await ctx.waitSignal("go", {timeout: 5}).catch(note);
            await ctx.waitSignal("go", 5).catch(note);
            await ctx.tool("gate", {}, {dispositon: "owner_bound"}).catch(note);
            await ctx.start({id: "mine", input: {type: "external"}, disposition: "externally_owned"}).catch(note);
            const ok = await ctx.waitSignal("go", {timeoutMs: 1});
            return {seen, ok};
        }"#,
    )
    .await;
    let rec = run(&p, script("opts", &m, "main", json!({}))).await;
    let Some(Outcome::Success { value, .. }) = rec.outcome else {
        panic!("expected success, got {:?}", rec.outcome);
    };
    assert_eq!(
        value["seen"],
        json!([
            [
                "invalid_request",
                "ctx.waitSignal takes no option `timeout` (its options: `timeoutMs`)"
            ],
            ["invalid_request", "ctx.waitSignal's options must be an object"],
            [
                "invalid_request",
                "ctx.tool takes no option `dispositon` (its options: `disposition`)"
            ],
            [
                "invalid_request",
                "ctx.start names its child `opts/{n}` itself: leave `id` out of the request"
            ],
        ])
    );
    let calls = events(&p, "opts", "script.call").await;
    assert_eq!(calls.len(), 1, "only the valid wait was journaled: {calls:?}");
}

/// A value given where a call takes a choice is the choice or refused:
/// `timeoutMs: null` is no "no deadline", a disposition of `null` or `""`
/// no `rerunnable`, and a `ctx.start` child's `caused_by` is its parent's,
/// never the request's. Leaving the option out keeps its default.
#[tokio::test]
async fn empty_option_values_are_refused_not_defaulted() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const seen = [];
            const note = (e) => seen.push([e.code, e.message]);
            // A script's own `Object.prototype` cannot take the refusal away.
            Object.defineProperty(Object.prototype, "refuse", {set() {}, get() { return undefined; }});
            // A getter read once: it cannot pass a number for the check and
            // nothing for the call.
            let reads = 0;
            const flip = {get timeoutMs() { reads += 1; return reads === 1 ? {toJSON: () => null} : 5; }};
            await ctx.waitSignal("go", flip).then(() => seen.push("waited")).catch(note);
            let jsons = 0;
            const late = {toJSON() { jsons += 1; return jsons === 1 ? 5 : null; }};
            await ctx.waitSignal("go", {timeoutMs: late}).then(() => seen.push(`timed out, ${jsons} toJSON`)).catch(note);
            // A start whose caused_by JSON leaves out has none.
            await ctx.start({input: {type: "external"}, disposition: "externally_owned", caused_by: () => 1})
                .then(() => seen.push("started")).catch(note);
            for (const t of [null, () => 5, new Date(NaN)]) {
                await ctx.waitSignal("go", {timeoutMs: t}).then(() => seen.push("waited")).catch(note);
            }
            for (const d of [null, "", false, 0, 0n, Symbol("x"), 5]) {
                await ctx.tool("echo", {value: 1}, {disposition: d}).then(() => seen.push("ran")).catch(note);
            }
            await ctx.start({input: {type: "external"}, disposition: "externally_owned", caused_by: {process_id: "elsewhere"}})
                .then(() => seen.push("started")).catch(note);
            const ran = await ctx.tool("echo", {value: 2}, {disposition: undefined});
            return {seen, ran};
        }"#,
    )
    .await;
    let rec = run(&p, script("empty", &m, "main", json!({}))).await;
    let Some(Outcome::Success { value, .. }) = rec.outcome else {
        panic!("expected success, got {:?}", rec.outcome);
    };
    let timeout = |given: &str| {
        json!([
            "invalid_request",
            format!(
                "ctx.waitSignal's timeoutMs takes a number of milliseconds from 0 up, \
                 not {given} (leave it out to wait without a deadline)"
            )
        ])
    };
    let disposition = |given: &str| {
        json!([
            "invalid_request",
            format!(
                "ctx.tool's disposition is `rerunnable` (the default, when it is left out) \
                 or `owner_bound` (a tool call is run here, so never `externally_owned`), not {given}"
            )
        ])
    };
    assert_eq!(
        value["seen"],
        json!([
            timeout("null"),
            "timed out, 1 toJSON",
            "started",
            timeout("null"),
            timeout("() => 5"),
            timeout("null"),
            disposition("null"),
            disposition("\"\""),
            disposition("false"),
            disposition("0"),
            disposition("0n"),
            disposition("Symbol(x)"),
            disposition("5"),
            [
                "invalid_request",
                "ctx.start names its child's parent (`empty`) itself: leave `caused_by` out of the request"
            ],
        ])
    );
    assert_eq!(value["ran"], json!(2));
    let children = p
        .list(&cairn_core::ProcessFilter {
            caused_by: Some("empty".into()),
            status: cairn_core::StatusFilter::Any,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(
        children.len(),
        2,
        "only the tool call left with its default ran, and the start without caused_by: {children:?}"
    );
    assert!(children.iter().any(|c| c.disposition == Disposition::Rerunnable));
    // Each refusal is a counted call whose result refuses it, no call
    // journaled: a replay refuses them again, and makes the same calls.
    let refused = events(&p, "empty", "script.result")
        .await
        .into_iter()
        .filter(|r| r.pointer("/refused/digest").is_some())
        .count();
    assert_eq!(refused, 12);
    assert_eq!(events(&p, "empty", "script.call").await.len(), 3);
}

/// A journal written before empty option values were refused holds such
/// calls as they ran then (no deadline, `rerunnable`, the parent replaced):
/// it replays as that run went on, answered or not yet, instead of failing
/// `nondeterminism` or refusing a call whose effect was made.
#[tokio::test]
async fn a_journal_from_before_empty_option_values_were_refused_replays() {
    let registry: Arc<dyn cairn_core::ProcessRegistry> = Arc::new(MemoryRegistry::new());
    let host = Processes::builder(registry.clone())
        .script_engine(Arc::new(QuickJs::default()))
        .without_worker()
        .start();
    let m = put(
        &host,
        r#"export async function answered(ctx) {
            return await ctx.tool("echo", {value: 1}, {disposition: null});
        }
        export async function running(ctx) {
            return await ctx.tool("echo", {value: 2}, {disposition: ""});
        }
        export async function waiting(ctx) {
            return await ctx.waitSignal("go", {timeoutMs: null});
        }
        export async function big(ctx) {
            const code = await ctx.tool("echo", {value: "x".repeat(1100000)}, {disposition: null}).catch(e => e.code);
            return code;
        }
        export async function lone(ctx) {
            return await ctx.tool("echo", {t: "\ud83d"}, {disposition: null}).catch(e => e.code);
        }
        export async function parent(ctx) {
            return await ctx.start({input: {type: "external"}, disposition: "externally_owned", caused_by: {process_id: "x"}});
        }"#,
    )
    .await;
    let tool = |n: u64, value: Value| json!({"name": "echo", "args": {"value": value}, "disposition": "rerunnable", "n": n, "kind": "tool"});
    let big_call = tool(1, json!("x".repeat(1_100_000)));
    let refused_big = json!({"n": 1, "refused": {"digest": cairn_core::validate::sha256_hex(big_call.to_string().as_bytes())},
                             "error": {"class": "cairn", "code": "payload_too_large", "message": "too large"}});
    let start = json!({"request": {"input": {"type": "external"}, "disposition": "externally_owned",
                                   "caused_by": {"process_id": "x"}}, "n": 1, "kind": "start"});
    let wait = json!({"name": "go", "timeout_ms": null, "ordinal": 1, "n": 1, "kind": "wait_signal"});
    // Arguments no decoder reads back: refused by the digest of their text.
    let text = r#"{"kind":"tool","n":1}{"name":"echo","args":{"t":"\ud83d"},"disposition":"rerunnable"}"#;
    let refused_lone = json!({"n": 1, "refused": {"digest": cairn_core::validate::sha256_hex(text.as_bytes())},
                              "error": {"class": "cairn", "code": "invalid_request",
                                        "message": "invalid request: the call's arguments cannot be journaled: a string holds a lone UTF-16 surrogate"}});
    for (id, journal) in [
        (
            "answered",
            vec![
                ("script.call", tool(1, json!(1))),
                ("script.result", json!({"n": 1, "value": "journaled"})),
            ],
        ),
        ("running", vec![("script.call", tool(1, json!(2)))]),
        ("waiting", vec![("script.call", wait)]),
        ("big", vec![("script.result", refused_big)]),
        ("lone", vec![("script.result", refused_lone)]),
        ("parent", vec![("script.call", start)]),
    ] {
        host.start(script(id, &m, id, json!({}))).await.unwrap();
        let lease = registry.claim(id, "earlier", 60_000).await.unwrap();
        for (event_type, payload) in journal {
            let mut append = cairn_core::AppendRequest::new(event_type, payload);
            append.lease = Some(lease.clone());
            append.replay_key = Some(format!("{event_type}:1"));
            registry.append_event(id, append).await.expect("journaled");
        }
        assert!(registry.release(&lease).await.unwrap());
    }
    let p = Processes::builder(registry)
        .script_engine(Arc::new(QuickJs::default()))
        .tools(cairn_core::ToolRegistry::new().with(Arc::new(Echo)))
        .start();
    let done = |id: &'static str| {
        let p = p.clone();
        async move { p.await_output(id, Duration::from_secs(10)).await.unwrap().outcome }
    };
    assert_eq!(done("answered").await, Some(Outcome::success(json!("journaled"))));
    assert_eq!(done("running").await, Some(Outcome::success(json!(2))), "its child ran");
    assert_eq!(done("big").await, Some(Outcome::success(json!("payload_too_large"))));
    assert_eq!(done("lone").await, Some(Outcome::success(json!("invalid_request"))));
    assert_eq!(
        done("parent").await,
        Some(Outcome::success(json!("parent/1"))),
        "its child was started"
    );
    // The wait without a deadline waits on, and takes the signal.
    p.signal("waiting", "go", "s1", json!({"by": "alice"})).await.unwrap();
    assert_eq!(done("waiting").await, Some(Outcome::success(json!({"by": "alice"}))));
}

/// A `waitSignal` that timed out took no signal: the next call of that name
/// gets the next signal sent (a retry loop around an approval does not miss
/// it), and calls waiting together take the signals in the order they came.
#[tokio::test]
async fn a_timed_out_signal_wait_takes_no_signal() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function retry(ctx) {
            const first = await ctx.waitSignal("tick", {timeoutMs: 20});
            await ctx.emit("missed", {first});
            const second = await ctx.waitSignal("tick", {timeoutMs: 600000});
            return {first, second};
        }
        export async function both(ctx) {
            return await Promise.all([ctx.waitSignal("x"), ctx.waitSignal("x")]);
        }"#,
    )
    .await;
    let start = script("tk", &m, "retry", json!({})).with_event_type(cairn_core::EventType::plain("missed"));
    p.start(start).await.unwrap();
    p.await_event("tk", "missed", 0, Duration::from_secs(10)).await.unwrap();
    p.signal("tk", "tick", "t1", json!({"n": 1})).await.unwrap();
    let rec = p.await_output("tk", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"first": null, "second": {"n": 1}})))
    );

    p.start(script("bx", &m, "both", json!({}))).await.unwrap();
    p.signal("bx", "x", "x1", json!("one")).await.unwrap();
    p.signal("bx", "x", "x2", json!("two")).await.unwrap();
    let rec = p.await_output("bx", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!(["one", "two"]))));
}

/// A signal raced against a child, or against another signal, settles with
/// whichever comes first: the one wait recorded names every condition.
#[tokio::test]
async fn a_race_of_a_signal_against_a_child_or_another_signal_settles_with_the_first() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function childWins(ctx) {
            return await Promise.race([
                ctx.waitSignal("a").then(v => ({a: v})),
                ctx.tool("gate", {fail: "quick"}).catch(e => ({child: e.code})),
            ]);
        }
        export async function signalWins(ctx) {
            // One gate run waits at a barrier of three: it never ends here.
            return await Promise.race([ctx.tool("gate", {v: 1}), ctx.waitSignal("a").then(v => ({a: v}))]);
        }
        export async function secondSignal(ctx) {
            const a = ctx.waitSignal("a");
            const first = await Promise.race([a.then(v => ({a: v})), ctx.waitSignal("b").then(v => ({b: v}))]);
            await ctx.emit("raced", {first});
            return {first, later: await a};
        }"#,
    )
    .await;
    let rec = run(&p, script("cw", &m, "childWins", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"child": "quick"}))));

    p.start(script("sw", &m, "signalWins", json!({}))).await.unwrap();
    let waiting = p
        .await_event("sw", "process.waiting", 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(waiting.payload["kind"], "children");
    assert_eq!(waiting.payload["signals"], json!(["a"]));
    p.signal("sw", "a", "a1", json!("A")).await.unwrap();
    let rec = p.await_output("sw", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"a": "A"}))));
    let resumed: Vec<Value> = events(&p, "sw", "process.resumed").await;
    assert_eq!(
        resumed[0]["reason"], "signal",
        "a children wait ended by its signal says so"
    );

    let start = script("ss", &m, "secondSignal", json!({})).with_event_type(cairn_core::EventType::plain("raced"));
    p.start(start).await.unwrap();
    let waiting = p
        .await_event("ss", "process.waiting", 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (&waiting.payload["name"], &waiting.payload["signals"]),
        (&json!("a"), &json!(["b"]))
    );
    p.signal("ss", "b", "b1", json!("B")).await.unwrap();
    p.await_event("ss", "raced", 0, Duration::from_secs(10)).await.unwrap();
    p.signal("ss", "a", "a1", json!("A")).await.unwrap();
    let rec = p.await_output("ss", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"first": {"b": "B"}, "later": "A"})))
    );
    let resumed: Vec<Value> = events(&p, "ss", "process.resumed").await;
    assert_eq!(resumed[0]["reason"], "signal");
}

/// A race replays as it ran: when the loser settles later, the activation
/// that replays the journal (after the next suspension) still sees the
/// winner win, for a signal and for a child alike.
#[tokio::test]
async fn a_race_replays_with_the_winner_it_had() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function bySignal(ctx) {
            const w = ctx.waitSignal("go");
            const r = await Promise.race([w.then(() => "sig"), ctx.sleep(20).then(() => "sleep")]);
            await ctx.emit("raced", {r});
            const later = await w;
            await ctx.sleep(1);
            return {r, later};
        }
        export async function byChild(ctx) {
            const id = await ctx.start({input: {type: "external"}, disposition: "externally_owned"});
            const w = ctx.wait(id);
            const r = await Promise.race([w.then(() => "child"), ctx.sleep(20).then(() => "sleep")]);
            await ctx.emit("raced", {r});
            const later = await w;
            await ctx.sleep(1);
            return {r, later: later.type};
        }"#,
    )
    .await;
    let raced = cairn_core::EventType::plain("raced");
    p.start(script("rs1", &m, "bySignal", json!({})).with_event_type(raced.clone()))
        .await
        .unwrap();
    p.await_event("rs1", "raced", 0, Duration::from_secs(10)).await.unwrap();
    p.signal("rs1", "go", "g1", json!("G")).await.unwrap();
    let rec = p.await_output("rs1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"r": "sleep", "later": "G"}))));

    p.start(script("rs2", &m, "byChild", json!({})).with_event_type(raced))
        .await
        .unwrap();
    p.await_event("rs2", "raced", 0, Duration::from_secs(10)).await.unwrap();
    let done = p.complete_external("rs2/1", Outcome::success(json!(1)), "ci").await;
    assert!(done.is_ok(), "{done:?} {:?}", p.get("rs2").await);
    let rec = p.await_output("rs2", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"r": "sleep", "later": "success"})))
    );
}

/// A script may wait on more children at once than one children wait names
/// (1,000): a round waits on the first 1,000 still pending, and the rest wait
/// their turn, so no call rejects for the number of its siblings.
#[tokio::test]
async fn more_pending_children_than_one_wait_names() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const ids = await Promise.all(Array.from({length: 1001},
                () => ctx.start({input: {type: "external"}, disposition: "externally_owned"})));
            const outs = await Promise.all(ids.map((id) => ctx.wait(id)));
            return outs.filter((o) => o.type === "success").length;
        }"#,
    )
    .await;
    p.start(script("many", &m, "main", json!({}))).await.unwrap();
    p.await_event("many", "process.waiting", 0, Duration::from_secs(30))
        .await
        .unwrap();
    for i in (1..=1001).rev() {
        p.complete_external(&format!("many/{i}"), Outcome::success(json!(i)), "ci")
            .await
            .unwrap();
    }
    let rec = p.await_output("many", Duration::from_secs(60)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!(1001))), "{rec:?}");
}

/// A signal that comes after the deadline is too late, even when the run is
/// resumed only after it came (a busy worker, a restart): the wait answers
/// null, as a timeout does, and leaves the signal to the next call.
#[tokio::test]
async fn a_signal_after_the_deadline_is_too_late() {
    let clock = Arc::new(cairn_core::ManualClock::new(1_000_000));
    let p = Processes::builder(Arc::new(MemoryRegistry::with_clock(clock.clone())))
        .clock(clock.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .start();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const first = await ctx.waitSignal("go", {timeoutMs: 1000});
            const next = await ctx.waitSignal("go");
            return {first, next};
        }"#,
    )
    .await;
    p.start(script("late", &m, "main", json!({}))).await.unwrap();
    p.await_event("late", "process.waiting", 0, Duration::from_secs(10))
        .await
        .unwrap();
    clock.advance(5_000);
    p.signal("late", "go", "g1", json!("late")).await.unwrap();
    let rec = p.await_output("late", Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"first": null, "next": "late"})))
    );
}

/// Signals raced against each other settle by which came first, not by the
/// order of the calls.
#[tokio::test]
async fn raced_signals_settle_in_the_order_they_came() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            await ctx.sleep(100);
            return await Promise.race([ctx.waitSignal("a").then(v => ({a: v})), ctx.waitSignal("b").then(v => ({b: v}))]);
        }"#,
    )
    .await;
    p.start(script("ab", &m, "main", json!({}))).await.unwrap();
    p.signal("ab", "b", "b1", json!("B")).await.unwrap();
    p.signal("ab", "a", "a1", json!("A")).await.unwrap();
    let rec = p.await_output("ab", Duration::from_secs(10)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"b": "B"}))));
}

/// `ctx.emit` of a type cairn writes itself (the journal, a terminal, a
/// signal, a turn's) rejects `reserved_event_type`, journaled like any refused
/// call, and appends nothing: the journal cannot be forged, and the process
/// does not end with an outcome the script made up.
#[tokio::test]
async fn emit_refuses_the_types_cairn_writes() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const codes = [];
            for (const t of ["script.result", "script.call", "script.log", "process.completed",
                             "process.failed", "process.cancel_requested", "signal.go", "turn.response"]) {
                try { await ctx.emit(t, {n: 3, value: "forged", await_output: {type: "success", value: "forged"}}); codes.push("appended " + t); }
                catch (e) { codes.push(e.class + "/" + e.code); }
            }
            const real = await ctx.tool("gate", {fail: "real"}).catch(e => e.code);
            return {codes, real};
        }"#,
    )
    .await;
    let rec = run(&p, script("em", &m, "main", json!({}))).await;
    let refused = json!("cairn/reserved_event_type");
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({"codes": vec![refused; 8], "real": "real"}))),
        "{rec:?}"
    );
    let log = p.events("em", 0, None).await.unwrap().events;
    let appended: Vec<_> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert!(
        !appended.contains(&"signal.go") && !appended.contains(&"turn.response"),
        "{appended:?}"
    );
    assert!(
        !appended.contains(&"process.failed") && !appended.contains(&"process.cancel_requested"),
        "{appended:?}"
    );
    assert_eq!(
        appended.iter().filter(|t| **t == "process.completed").count(),
        1,
        "{appended:?}"
    );
    assert_eq!(appended.last(), Some(&"process.completed"), "ended by its own return");
    let results = events(&p, "em", "script.result").await;
    assert_eq!(results.len(), 9, "every call has its one result: {results:?}");
    assert!(
        results[..8].iter().all(|r| r["error"]["code"] == "reserved_event_type"),
        "{results:?}"
    );
}

/// `ctx.wait` of an id that is no child of this process (unknown, another
/// process, its own) rejects, saying so, and the script goes on; a child
/// awaited with it in the same round still answers.
#[tokio::test]
async fn waiting_on_a_process_that_is_not_a_child_rejects() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        r#"export async function other() { return "other"; }
        export async function main(ctx, args) {
            const bad = async (id) => { try { await ctx.wait(id); return "awaited"; } catch (e) { return e.code + ": " + e.message; } };
            const unknown = await bad("no-such-process");
            const pruned = await bad("gone");
            const stranger = await bad(args.other);
            const itself = await bad(ctx.processId);
            const id = await ctx.start({input: {type: "tool_call", tool: "gate", args: {fail: "child"}}, disposition: "rerunnable"});
            const [mixed, child] = await Promise.all([bad("no-such-process"), ctx.wait(id)]);
            const [own, long] = await Promise.allSettled([ctx.tool("gate", {fail: "own"}), ctx.wait("x".repeat(300))]);
            return {unknown, pruned, stranger, itself, mixed, child: child.code,
                    own: own.reason.code, long: long.status === "rejected" ? long.reason.code : long.status};
        }"#,
    )
    .await;
    // A pruned process that is not its child answers as an unknown one:
    // its tombstone (how and when it ended) is not the script's to read.
    run(&p, script("gone", &m, "other", json!({}))).await;
    let pruned = p
        .prune(
            u64::MAX,
            cairn_core::StatusFilter::Any,
            cairn_core::Watermark::NoProjector,
        )
        .await
        .unwrap();
    assert_eq!(pruned.pruned, 1, "{pruned:?}");
    run(&p, script("stranger", &m, "other", json!({}))).await;
    let rec = run(&p, script("w", &m, "main", json!({"other": "stranger"}))).await;
    let Some(Outcome::Success { value }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    for (k, code, id) in [
        ("unknown", "unknown_process", "no-such-process"),
        ("pruned", "unknown_process", "gone"),
        ("stranger", "invalid_request", "stranger"),
        ("itself", "invalid_request", "w"),
        ("mixed", "unknown_process", "no-such-process"),
    ] {
        let said = value[k].as_str().unwrap();
        assert!(said.starts_with(code), "{k}: {said}");
        assert!(
            said.contains(&format!("ctx.wait(\"{id}\")")),
            "{k} names the id: {said}"
        );
    }
    assert_eq!(value["child"], "child", "{value}");
    assert_eq!(value["own"], "own", "a malformed id rejects its own call only: {value}");
    assert_eq!(value["long"], "invalid_id", "{value}");
}

/// An engine that panics in its run, as a bug in a runner would.
struct Panicking;

#[cairn_core::async_trait]
impl cairn_core::ScriptEngine for Panicking {
    fn exports(&self, source: &str) -> cairn_core::Result<Vec<String>> {
        QuickJs::default().exports(source)
    }

    async fn run(&self, _: cairn_core::ToolContext, _: cairn_core::Module, _: String, _: Value) -> Outcome {
        let none: Vec<u8> = Vec::new();
        panic!("a bug: {}", none[usize::from(none.is_empty())]);
    }
}

/// A run that panics fails its process (`runtime`/`panicked`) instead of
/// leaving it running under a lease renewed forever, and the worker still
/// drains.
#[tokio::test]
async fn a_run_that_panics_fails_its_process_and_the_worker_drains() {
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(Panicking))
        .start();
    let m = put(&p, "export async function main() { return 1; }").await;
    let rec = run(&p, script("pn", &m, "main", json!({}))).await;
    let Some(Outcome::Failure {
        class, code, message, ..
    }) = &rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!((class.as_str(), code.as_str()), ("runtime", "panicked"), "{message}");
    assert!(message.contains("index out of bounds"), "{message}");
    assert!(rec.lease.is_none(), "{rec:?}");
    tokio::time::timeout(Duration::from_secs(10), p.shutdown())
        .await
        .expect("the worker drained");
}

/// A script cancelled while busy in synchronous code ends `cancelled`, not
/// with the CPU limit that stopped it.
#[tokio::test]
async fn a_script_cancelled_while_computing_ends_cancelled() {
    let p = runtime(Limits {
        cpu: Duration::from_millis(500),
        ..Limits::default()
    });
    let m = put(
        &p,
        r#"export async function main(ctx) { await ctx.emit("busy", {}); for (;;) {} }"#,
    )
    .await;
    let req = script("cb", &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("busy"));
    p.start(req).await.unwrap();
    p.await_event("cb", "busy", 0, Duration::from_secs(10)).await.unwrap();
    p.cancel("cb", Some("stop".into())).await.unwrap();
    let rec = p.await_output("cb", Duration::from_secs(20)).await.unwrap();
    assert_eq!(rec.outcome, Some(Outcome::cancelled("stop")));
}

/// Limits that cannot run a script are refused where the engine is
/// configured, and an engine made with them anyway says so rather than
/// crashing or blaming the module.
#[tokio::test]
async fn a_heap_too_small_is_refused_not_a_crash() {
    for heap_bytes in [0, 100, 20_000, 150_000, Limits::MIN_HEAP_BYTES - 1] {
        let limits = Limits {
            heap_bytes,
            ..Limits::default()
        };
        let e = QuickJs::try_new(limits.clone()).expect_err("refused");
        assert_eq!(e.code(), "invalid_request");
        assert!(e.to_string().contains("at least 1048576"), "{e}");
        let p = runtime(limits);
        let e = p
            .put_module("export async function f() { return 1; }".into(), None)
            .await
            .expect_err("no engine under that heap");
        assert_eq!(e.code(), "unavailable", "{e}");
    }
    for bad in [
        Limits {
            cpu: Duration::ZERO,
            ..Limits::default()
        },
        Limits {
            max_calls: 0,
            ..Limits::default()
        },
    ] {
        assert_eq!(QuickJs::try_new(bad).unwrap_err().code(), "invalid_request");
    }
    // The smallest heap runs a script.
    let engine = QuickJs::try_new(Limits {
        heap_bytes: Limits::MIN_HEAP_BYTES,
        ..Limits::default()
    })
    .unwrap();
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(engine))
        .start();
    let m = put(
        &p,
        "export async function f(ctx) { ctx.log('hi'); await ctx.sleep(1); return ctx.now() > 0; }",
    )
    .await;
    let rec = run(&p, script("small", &m, "f", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(true))));
}

/// `ctx.log` lines count against the journaled calls, and a line is never
/// lost: one too large to journal is cut to fit and marked `…[truncated]`
/// (its promise resolves), and a lone surrogate in one becomes U+FFFD. Each
/// is written once, the same across the replay.
#[tokio::test]
async fn log_lines_count_as_calls_and_an_oversized_one_is_cut() {
    let p = runtime(Limits {
        max_calls: 5,
        ..Limits::default()
    });
    let m = put(
        &p,
        r#"export async function chatty(ctx) { for (let i = 0; i < 20; i++) ctx.log("line", i); return "logged"; }
        export async function big(ctx) {
            let said = "resolved";
            try { await ctx.log("x".repeat(2 << 20)); } catch (e) { said = e.class + "/" + e.code; }
            ctx.log("\"\n".repeat(1 << 20));
            console.log("bad \ud800 and \udc00 half, whole \ud83d\ude00");
            ctx.log("small");
            await ctx.sleep(1);
            return said;
        }"#,
    )
    .await;
    let rec = run(&p, script("ch", &m, "chatty", json!({}))).await;
    let Some(Outcome::Failure { code, .. }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    assert_eq!(code, "journal_limit");
    assert!(events(&p, "ch", "script.log").await.len() <= 5);
    let rec = run(&p, script("bg", &m, "big", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("resolved"))), "{rec:?}");
    let logs = events(&p, "bg", "script.log").await;
    assert_eq!(logs.len(), 4, "written once, across the replay");
    let ordinals: Vec<Value> = logs.iter().map(|l| l["ordinal"].clone()).collect();
    assert_eq!(ordinals, [json!(1), json!(2), json!(3), json!(4)]);
    let limit = cairn_core::validate::MAX_PAYLOAD_BYTES;
    for (line, unit) in [(&logs[0], "x"), (&logs[1], "\"\n")] {
        let message = line["message"].as_str().expect("a message");
        let kept = message.strip_suffix("…[truncated]").expect("marked as cut");
        assert!(
            kept.len() > limit / 3 && kept.replace(unit, "").len() <= 1,
            "cut from the line's start"
        );
        let size = line.to_string().len();
        assert!(size <= limit && size > limit - 8, "cut to fit: {size} bytes");
    }
    assert_eq!(logs[2]["message"], "bad \u{fffd} and \u{fffd} half, whole \u{1f600}");
    assert_eq!(logs[3], json!({"message": "small", "ordinal": 4}));
}

/// A value nested too deep or too large to store fails the script with
/// `invalid_result` saying so: past the payload limits, and past what a
/// decoder reads. A value at the limits is the outcome.
#[tokio::test]
async fn a_value_nested_too_deep_fails_saying_so() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            let v = 1;
            for (let i = 0; i < ctx.args.depth; i++) v = [v];
            return v;
        }
        export async function wide(ctx) {
            return "x".repeat(ctx.args.n);
        }"#,
    )
    .await;
    let rec = run(&p, script("d64", &m, "main", json!({ "depth": 64 }))).await;
    assert_eq!(rec.status, ProcessStatus::Completed, "{:?}", rec.outcome);
    let limit = cairn_core::validate::MAX_PAYLOAD_BYTES;
    let rec = run(&p, script("w-at", &m, "wide", json!({ "n": limit - 2 }))).await;
    assert_eq!(
        rec.status,
        ProcessStatus::Completed,
        "{:?}",
        rec.outcome.map(|o| o.state())
    );
    for (id, name, args, says) in [
        (
            "d65",
            "main",
            json!({ "depth": 65 }),
            "the returned value, as its process's outcome, nests arrays and objects 65 levels deep, over the 64 \
             level limit",
        ),
        ("d80", "main", json!({ "depth": 80 }), "levels deep"),
        ("d300", "main", json!({ "depth": 300 }), "is not JSON cairn can store"),
        ("w-over", "wide", json!({ "n": 2 * limit }), "byte limit"),
    ] {
        let rec = run(&p, script(id, &m, name, args)).await;
        match &rec.outcome {
            Some(Outcome::Failure {
                class, code, message, ..
            }) => {
                assert_eq!(
                    (class.as_str(), code.as_str()),
                    ("script", "invalid_result"),
                    "{message}"
                );
                assert!(message.contains(says), "{id}: {message}");
                assert!(!message.starts_with("invalid request"), "{id}: {message}");
            }
            other => panic!("{id}: expected a failure, got {other:?}"),
        }
    }
}

/// What a script throws keeps its code when its message is cut inside an
/// emoji (a lone surrogate, no JSON a store reads) or runs to megabytes (a
/// command's whole output): the text is made storable, the code kept. A
/// returned lone surrogate is a result that is not JSON.
#[tokio::test]
async fn a_thrown_error_keeps_its_code_whatever_its_message() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function half() {
            throw Object.assign(new Error("reply: " + "😀".slice(0, 1)), {code: "mine"});
        }
        export async function big() {
            throw Object.assign(new Error("x".repeat(2 * 1024 * 1024)), {code: "big"});
        }
        export async function ret() {
            return {summary: "😀".slice(0, 1)};
        }"#,
    )
    .await;
    for (id, name, class, code) in [
        ("half", "half", "script", "mine"),
        ("big", "big", "script", "big"),
        ("ret", "ret", "script", "invalid_result"),
    ] {
        let rec = run(&p, script(id, &m, name, json!({}))).await;
        match &rec.outcome {
            Some(Outcome::Failure {
                class: c,
                code: k,
                message,
                ..
            }) => {
                assert_eq!((c.as_str(), k.as_str()), (class, code), "{id}: {message}");
                assert!(message.len() < 100_000, "{id}: the message is cut");
                if id == "ret" {
                    assert!(
                        message.contains("a string holds a lone UTF-16 surrogate") && !message.contains("column"),
                        "{id}: {message}"
                    );
                }
            }
            other => panic!("{id}: {other:?}"),
        }
    }
}

/// `ctx.cancelled` turns true while the script is busy in synchronous code,
/// not only at its next call: a loop that polls it ends, and the script, which
/// returned knowing, ends `cancelled`.
#[tokio::test]
async fn ctx_cancelled_is_live_in_a_synchronous_loop() {
    let p = runtime(Limits {
        cpu: Duration::from_secs(30),
        ..Limits::default()
    });
    let m = put(
        &p,
        r#"export async function main(ctx) {
            await ctx.emit("looping", {});
            let turns = 0;
            while (!ctx.cancelled) { turns++; }
            return turns;
        }"#,
    )
    .await;
    let looping = cairn_core::EventType::plain("looping");
    p.start(script("busy", &m, "main", json!({})).with_event_type(looping))
        .await
        .expect("started");
    p.await_event("busy", "looping", 0, Duration::from_secs(10))
        .await
        .expect("looping");
    p.cancel("busy", Some("enough".into())).await.expect("cancel");
    let rec = p.await_output("busy", Duration::from_secs(20)).await.expect("awaited");
    assert_eq!(rec.outcome, Some(Outcome::cancelled("enough")), "{rec:?}");
}

/// A cancellation seen while the script is busy in synchronous code lets its
/// cleanup append: the `ctx.emit` it then makes appends its event and
/// resolves, `ctx.log` writes, while a wait (`ctx.sleep`) rejects
/// `cancelled` at once; the script still ends `cancelled`.
#[tokio::test]
async fn a_cleanup_after_a_cancel_seen_while_busy_emits_and_its_waits_reject() {
    let p = runtime(Limits {
        cpu: Duration::from_secs(30),
        ..Limits::default()
    });
    let m = put(
        &p,
        r#"export async function poll2(ctx) {
            await ctx.emit("looping", {});
            while (!ctx.cancelled) {}
            try {
                await ctx.emit("progress", {cleanup: true});
                ctx.log("emit ok");
            } catch (e) {
                ctx.log("emit rejected:", e.code);
            }
            try {
                await ctx.sleep(60000);
                ctx.log("slept");
            } catch (e) {
                ctx.log("sleep rejected:", e.code);
            }
            return "after";
        }"#,
    )
    .await;
    let req = script("poll2", &m, "poll2", json!({}))
        .with_event_type(cairn_core::EventType::plain("looping"))
        .with_event_type(cairn_core::EventType::plain("progress"));
    p.start(req).await.expect("started");
    p.await_event("poll2", "looping", 0, Duration::from_secs(10))
        .await
        .expect("looping");
    p.cancel("poll2", Some("enough".into())).await.expect("cancel");
    let rec = p.await_output("poll2", Duration::from_secs(20)).await.expect("awaited");
    assert_eq!(rec.outcome, Some(Outcome::cancelled("enough")), "{rec:?}");
    assert_eq!(events(&p, "poll2", "progress").await, [json!({"cleanup": true})]);
    let logs: Vec<Value> = events(&p, "poll2", "script.log")
        .await
        .into_iter()
        .map(|l| l["message"].clone())
        .collect();
    assert_eq!(logs, [json!("emit ok"), json!("sleep rejected: cancelled")]);
}

/// Run `source`'s `name` as `id` (declaring `types`) on an engine whose
/// first activation (`args.first` set, `cpu` per activation) loses its lease
/// after `event` ([`LeaseLostAfterEvent`]); once the script wrote
/// `started_on`, cancel it ("enough") and check that it ended `cancelled`,
/// cut short once.
async fn cancel_across_a_lost_lease(
    source: &str,
    name: &str,
    id: &str,
    types: &[&str],
    started_on: &str,
    event: &'static str,
    cpu: Duration,
) -> Processes {
    let limits = Limits {
        cpu,
        ..Limits::default()
    };
    let engine = Arc::new(LeaseLostAfterEvent::new(QuickJs::new(limits), false, "first", event));
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(engine.clone())
        .start();
    engine.processes.set(p.clone()).ok().expect("set once");
    let m = put(&p, source).await;
    let mut req = script(id, &m, name, json!({}));
    for t in types {
        req = req.with_event_type(cairn_core::EventType::plain(*t));
    }
    p.start(req).await.expect("started");
    p.await_event(id, started_on, 0, Duration::from_secs(10))
        .await
        .expect("the script's first event");
    p.cancel(id, Some("enough".into())).await.expect("cancel");
    let rec = p.await_output(id, Duration::from_secs(20)).await.expect("awaited");
    assert_eq!(rec.outcome, Some(Outcome::cancelled("enough")), "{rec:?}");
    assert!(
        engine.crashed.load(std::sync::atomic::Ordering::SeqCst),
        "cut short once"
    );
    p
}

/// Busy until its cancellation in its first activation only (`args.first`,
/// which the engine below sets): a replay runs straight through from the
/// journal, as a script that never polled `ctx.cancelled` would. Then an
/// emit and a wait made together race, and the winner is emitted.
const TIDY: &str = r#"export async function tidy(ctx, args) {
    await ctx.emit("looping", {});
    if (args.first) while (!ctx.cancelled) {}
    const winner = await Promise.race([
        ctx.emit("progress", {cleanup: true}).then(() => "emitted"),
        ctx.sleep(60000).then(() => "slept", (e) => "sleep " + e.code),
    ]);
    await ctx.emit("done", {winner});
    if (args.first) for (;;) {}
    return winner;
}"#;

/// The calls a script makes together once it saw its cancellation are
/// answered together: the emit appends, the wait rejects `cancelled`, both
/// journaled, so a replay after a lost lease delivers them in the same order
/// (the race has the same winner, no `nondeterminism`), appends nothing
/// twice, and ends `cancelled` though the replay itself never saw the
/// cancellation.
#[tokio::test]
async fn a_cleanup_after_a_cancel_seen_while_busy_replays_the_same_after_a_lost_lease() {
    let p = cancel_across_a_lost_lease(
        TIDY,
        "tidy",
        "tidy",
        &["looping", "progress", "done"],
        "looping",
        "done",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(events(&p, "tidy", "progress").await, [json!({"cleanup": true})]);
    assert_eq!(events(&p, "tidy", "done").await, [json!({"winner": "emitted"})]);
    let results = events(&p, "tidy", "script.result").await;
    let slept = results.iter().find(|r| r["n"] == json!(3)).expect("the sleep's result");
    assert_eq!(slept["error"]["code"], json!("cancelled"), "{results:?}");
    assert_eq!(
        events(&p, "tidy", "process.started").await.len(),
        2,
        "the first run, cut short after its cleanup, and the replay"
    );
}

/// Reads `ctx.cancelled` before its cancellation, emits what it read, then
/// polls until it turns true; the first activation (`args.first`) then spins
/// and is cut short.
const BRANCHY: &str = r#"export async function branchy(ctx, args) {
    const before = ctx.cancelled;
    await ctx.emit("ready", {before});
    while (!ctx.cancelled) {}
    await ctx.emit("seen", {});
    if (args.first) for (;;) {}
    return "done";
}"#;

/// A replay (after a lost lease) answers `ctx.cancelled` as the run that
/// journaled it was answered, though the cancellation is in force from the
/// replay's start: the read before the cancel is `false` again, so the
/// replayed emit matches its journaled call (no `nondeterminism`), and the
/// process ends `cancelled`.
#[tokio::test]
async fn a_replay_reads_ctx_cancelled_as_the_journaling_run_did() {
    let p = cancel_across_a_lost_lease(
        BRANCHY,
        "branchy",
        "branchy",
        &["ready", "seen"],
        "ready",
        "seen",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(events(&p, "branchy", "ready").await, [json!({"before": false})]);
    assert_eq!(events(&p, "branchy", "seen").await.len(), 1);
    let calls = events(&p, "branchy", "script.call").await;
    let seen_at = calls[1]["cancel_seen"]
        .as_u64()
        .expect("the call after the true read says which read");
    assert!(seen_at >= 2, "{calls:?}");
    assert_eq!(events(&p, "branchy", "process.started").await.len(), 2);
}

/// Starts a long sleep, then polls `ctx.cancelled` with no call after its
/// first true read until it awaits the sleep (which rejects `cancelled`);
/// the first activation (`args.first`) spins after its `done`, and the
/// replay goes on to `after`.
const POLLER: &str = r#"export async function poller(ctx, args) {
    await ctx.emit("looping", {});
    const slept = ctx.sleep(60000).then(() => "slept", (e) => e.code);
    while (!ctx.cancelled) {}
    const r = await slept;
    await ctx.emit("done", {r});
    if (args.first) for (;;) {}
    await ctx.emit("after", {r});
    return r;
}"#;

/// A first true read of `ctx.cancelled` that no call or log line follows is
/// journaled on the results of that step, so a replay after a lost lease
/// answers that read `true` as the run did and runs straight to its end
/// (before, the replay read `false` forever and spun until the CPU limit).
/// The calls after those results replay as journaled, without the read on
/// them, and the cleanup goes on past where the run was cut short (before,
/// the replayed `done` carried it, differed from the journal, and `after`
/// was never made).
#[tokio::test]
async fn a_true_read_followed_by_no_call_is_journaled_on_the_steps_results() {
    let p = cancel_across_a_lost_lease(
        POLLER,
        "poller",
        "poller",
        &["looping", "done", "after"],
        "looping",
        "done",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(events(&p, "poller", "done").await, [json!({"r": "cancelled"})]);
    assert_eq!(events(&p, "poller", "after").await, [json!({"r": "cancelled"})]);
    let results = events(&p, "poller", "script.result").await;
    let slept = results.iter().find(|r| r["n"] == json!(2)).expect("the sleep's result");
    assert!(slept["cancel_seen"].as_u64().is_some(), "{results:?}");
    assert_eq!(events(&p, "poller", "process.started").await.len(), 2);
}

/// Reads `ctx.cancelled` before it suspends on a signal, and cleans up when
/// the wait rejects.
const CAREFUL: &str = r#"export async function careful(ctx) {
    const before = ctx.cancelled;
    await ctx.emit("ready", {before});
    try {
        await ctx.waitSignal("go");
        return "went";
    } catch (e) {
        await ctx.emit("cleanup", {code: e.code, now: ctx.cancelled});
        throw e;
    }
}"#;

/// A script cancelled while suspended is replayed with the cancellation in
/// force; its read of `ctx.cancelled` before the wait answers `false` as it
/// did, so the replay reaches the wait and the cleanup runs (before, the
/// replayed emit differed from the journal and the run ended at
/// `nondeterminism` without its cleanup).
#[tokio::test]
async fn a_script_that_read_ctx_cancelled_before_suspending_cleans_up_when_cancelled() {
    let p = runtime(Limits::default());
    let m = put(&p, CAREFUL).await;
    let mut req = script("careful", &m, "careful", json!({}));
    for t in ["ready", "cleanup"] {
        req = req.with_event_type(cairn_core::EventType::plain(t));
    }
    p.start(req).await.expect("started");
    p.await_event("careful", cairn_core::events::WAITING, 0, Duration::from_secs(10))
        .await
        .expect("suspended on the signal");
    p.cancel("careful", Some("not now".into())).await.expect("cancel");
    let rec = p
        .await_output("careful", Duration::from_secs(20))
        .await
        .expect("awaited");
    assert_eq!(rec.outcome, Some(Outcome::cancelled("not now")), "{rec:?}");
    assert_eq!(events(&p, "careful", "ready").await, [json!({"before": false})]);
    assert_eq!(
        events(&p, "careful", "cleanup").await,
        [json!({"code": "cancelled", "now": true})]
    );
}

/// A cancellation that lands while the script's wait is on its way to
/// suspending (the run has decided to suspend and not yet written it, so the
/// suspension is refused) rejects the wait `cancelled` in that same run and
/// its cleanup runs; before, the run sat until the stop grace ran out and
/// was cut off without its cleanup.
#[tokio::test]
async fn a_cancel_landing_as_a_wait_suspends_rejects_it_and_the_cleanup_runs() {
    let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(MemoryRegistry::new()));
    let p = Processes::builder(probe.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .worker_config(cairn_core::WorkerConfig {
            stop_grace: Duration::from_secs(60),
            ..Default::default()
        })
        .start();
    let canceller = p.clone();
    probe.before_next_wait(Box::new(move || {
        Box::pin(async move {
            canceller
                .cancel("landing", Some("not now".into()))
                .await
                .expect("cancel");
        })
    }));
    let m = put(&p, CAREFUL).await;
    let mut req = script("landing", &m, "careful", json!({}));
    for t in ["ready", "cleanup"] {
        req = req.with_event_type(cairn_core::EventType::plain(t));
    }
    p.start(req).await.expect("started");
    let rec = p
        .await_output("landing", Duration::from_secs(20))
        .await
        .expect("awaited");
    assert_eq!(rec.outcome, Some(Outcome::cancelled("not now")), "{rec:?}");
    assert_eq!(
        events(&p, "landing", "cleanup").await,
        [json!({"code": "cancelled", "now": true})]
    );
    assert_eq!(
        events(&p, "landing", "process.started").await.len(),
        1,
        "one run: it never suspended"
    );
}

/// A write whose answer the store lost (it landed, the run did not hear) is
/// tried again and answered by what landed: the journal, an emit and a
/// child's start each happen once, and the script ends as if nothing had
/// gone wrong (a lost answer is not an answer to journal, nor a failure).
#[tokio::test]
async fn writes_whose_answers_were_lost_happen_once() {
    let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(MemoryRegistry::new()));
    let p = Processes::builder(probe.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .start();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            await ctx.emit("progress", {step: 1});
            const child = await ctx.start({input: {type: "external"}, disposition: "externally_owned"});
            return child;
        }"#,
    )
    .await;
    probe.lose_next_append_answers(3);
    let rec = run(
        &p,
        script("lost", &m, "main", json!({})).with_event_type(cairn_core::EventType::plain("progress")),
    )
    .await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("lost/2"))), "{rec:?}");
    assert_eq!(events(&p, "lost", "progress").await, [json!({"step": 1})]);
    let kinds: Vec<_> = events(&p, "lost", "script.call")
        .await
        .iter()
        .map(|c| c["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("emit"), json!("start")]);
    assert_eq!(events(&p, "lost", "script.result").await.len(), 2);
    assert!(p.get("lost/2").await.is_ok(), "the child was started");
}

/// `console.log` and its kin write `script.log` lines as `ctx.log` does,
/// once across a replay.
#[tokio::test]
async fn console_writes_script_log_lines() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            console.log("hello", {a: 1});
            const answered = console.error("oops");
            await ctx.sleep(1);
            console.warn("after", 2);
            return answered === undefined;
        }"#,
    )
    .await;
    let rec = run(&p, script("con", &m, "main", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(true))), "{rec:?}");
    let messages: Vec<Value> = events(&p, "con", "script.log")
        .await
        .into_iter()
        .map(|l| l["message"].clone())
        .collect();
    assert_eq!(messages, [json!("hello {\"a\":1}"), json!("oops"), json!("after 2")]);
}

/// A returned function or Symbol is the script's error (`invalid_result`),
/// not the engine's.
#[tokio::test]
async fn returning_a_function_or_a_symbol_is_invalid_result() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function fn() { return function () {}; }
        export async function sym() { return Symbol("x"); }
        export async function undef() { return undefined; }"#,
    )
    .await;
    for (id, name, what) in [("fn", "fn", "a function"), ("sym", "sym", "a symbol")] {
        let rec = run(&p, script(id, &m, name, json!({}))).await;
        let Some(Outcome::Failure {
            class, code, message, ..
        }) = &rec.outcome
        else {
            panic!("{rec:?}")
        };
        assert_eq!((class.as_str(), code.as_str()), ("script", "invalid_result"), "{id}");
        assert_eq!(message, &format!("the returned value is not JSON: {what}"));
    }
    let rec = run(&p, script("undef", &m, "undef", json!({}))).await;
    assert_eq!(rec.outcome, Some(Outcome::success(Value::Null)));
}

struct Echo;

/// A script's `ctx.tool("shell")`, or its `ctx.start` of a `shell` call, on
/// a runtime without the `shell` tool is refused saying how a server offers
/// it, as an HTTP start of one is.
#[tokio::test]
async fn a_shell_call_without_the_shell_tool_says_how_a_server_offers_it() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const said = e => `${e.code}: ${e.message}`;
            const tool = await ctx.tool("shell", {command: "true"}).catch(said);
            const start = await ctx
                .start({input: {type: "tool_call", tool: "shell", args: {command: "true"}}, disposition: "rerunnable"})
                .catch(said);
            const other = await ctx.tool("nope", {}).catch(said);
            return {tool, start, other};
        }"#,
    )
    .await;
    let rec = run(&p, script("no-shell", &m, "main", json!({}))).await;
    let Some(Outcome::Success { value }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    let hint = "unknown_tool: unknown tool `shell`: this server runs no shell commands; \
                `cairn serve --allow-shell` offers the `shell` tool";
    assert_eq!(value["tool"], hint, "{value}");
    assert_eq!(value["start"], hint, "{value}");
    assert_eq!(value["other"], "unknown_tool: unknown tool `nope`", "{value}");
}

fn runtime_with_echo() -> Processes {
    Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::default()))
        .tools(cairn_core::ToolRegistry::new().with(Arc::new(Echo)))
        .start()
}

#[cairn_core::async_trait]
impl cairn_core::Tool for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    async fn run(&self, _ctx: cairn_core::ToolContext, args: Value) -> Outcome {
        Outcome::success(args["value"].clone())
    }
}

/// A call the function did not await before it returned or threw is still
/// made: the event is appended, the children start and run on their own; a
/// pending wait has nothing to make. A failing one has its error journaled
/// (the next test).
#[tokio::test]
async fn calls_left_pending_at_the_end_are_still_made() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        r#"export async function returns(ctx) {
            ctx.emit("note", {text: "not awaited"});
            ctx.tool("echo", {value: 7});
            ctx.start({input: {type: "tool_call", tool: "echo", args: {value: 8}}, disposition: "rerunnable"});
            ctx.emit("undeclared", {});
            ctx.sleep(60000);
            return "returned";
        }
        export async function throws(ctx) {
            ctx.emit("note", {text: "before the throw"});
            ctx.tool("echo", {value: 9});
            throw Object.assign(new Error("boom"), {code: "boom"});
        }"#,
    )
    .await;
    let note = cairn_core::EventType::plain("note");
    let rec = run(&p, script("r", &m, "returns", json!({})).with_event_type(note.clone())).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!("returned"))), "{rec:?}");
    assert_eq!(events(&p, "r", "note").await, [json!({"text": "not awaited"})]);
    for (child, value) in [("r/2", 7), ("r/3", 8)] {
        let c = p.await_output(child, Duration::from_secs(20)).await.expect("child");
        assert_eq!(c.outcome, Some(Outcome::success(json!(value))), "{c:?}");
    }
    assert!(p.get("r/5").await.is_err(), "a sleep starts nothing");

    let rec = run(&p, script("t", &m, "throws", json!({})).with_event_type(note)).await;
    assert!(
        matches!(&rec.outcome, Some(Outcome::Failure { code, .. }) if code == "boom"),
        "{rec:?}"
    );
    assert_eq!(events(&p, "t", "note").await, [json!({"text": "before the throw"})]);
    let c = p.await_output("t/2", Duration::from_secs(20)).await.expect("child");
    assert_eq!(c.outcome, Some(Outcome::success(json!(9))), "{c:?}");
}

/// A call the function did not await that fails once it returned (an
/// undeclared type, an unknown tool, a bad disposition, a call too large to
/// journal) has its error journaled as its `script.result`, the shape an
/// awaited call's failure has; the outcome stays what the function returned.
#[tokio::test]
async fn a_call_not_awaited_that_fails_journals_its_error() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        r#"export async function returns(ctx) {
            ctx.emit("nope", {});
            ctx.tool("nosuchtool", {});
            ctx.tool("echo", {value: 1}, {disposition: "bogus"});
            ctx.emit("note", {text: "x".repeat(1100000)});
            ctx.emit("note", {text: "fine"});
            return 1;
        }
        export async function awaits(ctx) {
            await ctx.emit("nope", {}).catch(() => {});
            await ctx.tool("nosuchtool", {}).catch(() => {});
            await ctx.tool("echo", {value: 1}, {disposition: "bogus"}).catch(() => {});
            await ctx.emit("note", {text: "x".repeat(1100000)}).catch(() => {});
            await ctx.emit("note", {text: "fine"});
            return 1;
        }"#,
    )
    .await;
    let note = cairn_core::EventType::plain("note");
    let rec = run(&p, script("un", &m, "returns", json!({})).with_event_type(note.clone())).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(1))), "{rec:?}");
    let rec = run(&p, script("aw", &m, "awaits", json!({})).with_event_type(note)).await;
    assert_eq!(rec.outcome, Some(Outcome::success(json!(1))), "{rec:?}");
    let unawaited = events(&p, "un", "script.result").await;
    let awaited = events(&p, "aw", "script.result").await;
    let codes: Vec<Value> = unawaited.iter().map(|r| r["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        [
            json!("undeclared_event_type"),
            json!("unknown_tool"),
            json!("invalid_request"),
            json!("payload_too_large")
        ],
        "the failures only: {unawaited:?}"
    );
    // An undeclared type's refusal says where a type is declared.
    assert_eq!(
        unawaited[0]["error"]["message"],
        json!(
            "event type `nope` is not declared by process `un`: a process declares its event types \
             when it starts (the start request's `event_types`)"
        ),
        "{unawaited:?}"
    );
    let ns: Vec<Value> = unawaited.iter().map(|r| r["n"].clone()).collect();
    assert_eq!(ns, [json!(1), json!(2), json!(3), json!(4)]);
    // Each failure is journaled as the awaited call's is (its `batch` aside,
    // one for the whole end here).
    let unbatched = |r: &Value| {
        let mut r = r.clone();
        r.as_object_mut().expect("an object").remove("batch").expect("a batch");
        r
    };
    for (u, a) in unawaited.iter().zip(&awaited) {
        let a = unbatched(a).to_string().replace("process `aw`", "process `un`");
        assert_eq!(unbatched(u).to_string(), a);
    }
    assert!(unawaited.iter().all(|r| r["batch"] == unawaited[0]["batch"]));
    assert_eq!(events(&p, "un", "note").await, [json!({"text": "fine"})]);
}

/// A script that returned with a call it did not await that failed, its
/// journal cut short (written into a fresh memory store under a claim that
/// went away) after the call (and again after its result), replays to the
/// same journal and the same outcome: the call is made once
/// its result is missing, and not again once it is there; a handler left on
/// the call runs in neither run (the first run ended before the answer).
#[tokio::test]
async fn a_failed_call_not_awaited_replays_from_a_journal_cut_short() {
    const SOURCE: &str = r#"export async function f(ctx) {
        ctx.emit("nope", {}).catch((e) => ctx.log("caught", e.code));
        ctx.tool("nosuchtool", {}).catch((e) => ctx.log("caught", e.code));
        return 1;
    }"#;
    // The run of `s` on a fresh store whose journal already holds `journal`
    // (written under an earlier claim that went away): its outcome and its
    // journal (the `script.*` events). Neither call can start a child (the
    // tool is unknown, the event type undeclared): a call made again shows in
    // the journal, as a second `script.call`.
    async fn replayed(journal: &[(String, Value)]) -> (Option<Outcome>, Vec<(String, Value)>) {
        let registry: Arc<dyn cairn_core::ProcessRegistry> = Arc::new(MemoryRegistry::new());
        let host = Processes::builder(registry.clone())
            .script_engine(Arc::new(QuickJs::default()))
            .without_worker()
            .start();
        let m = put(&host, SOURCE).await;
        host.start(script("s", &m, "f", json!({}))).await.unwrap();
        if !journal.is_empty() {
            let lease = registry.claim("s", "earlier", 60_000).await.unwrap();
            for (event_type, payload) in journal {
                let mut append = cairn_core::AppendRequest::new(event_type, payload.clone());
                append.lease = Some(lease.clone());
                append.replay_key = Some(format!("{event_type}:{}", payload["n"]));
                registry.append_event("s", append).await.expect("journaled");
            }
            assert!(registry.release(&lease).await.unwrap());
        }
        let p = Processes::builder(registry)
            .script_engine(Arc::new(QuickJs::default()))
            .tools(cairn_core::ToolRegistry::new().with(Arc::new(Echo)))
            .start();
        let rec = p.await_output("s", Duration::from_secs(20)).await.expect("awaited");
        let kept = p
            .events("s", 0, Some(1000))
            .await
            .expect("events")
            .events
            .into_iter()
            .filter(|e| e.event_type.starts_with("script."))
            .map(|e| (e.event_type, e.payload))
            .collect();
        (rec.outcome, kept)
    }
    let (outcome, fresh) = replayed(&[]).await;
    assert_eq!(outcome, Some(Outcome::success(json!(1))));
    let types: Vec<&str> = fresh.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["script.call", "script.call", "script.result", "script.result"],
        "no handler ran: {fresh:?}"
    );
    // Cut short after the calls, after the first result, after both.
    for upto in [2, 3, 4] {
        let (outcome, journal) = replayed(&fresh[..upto]).await;
        assert_eq!(outcome, Some(Outcome::success(json!(1))), "after {upto} events");
        assert_eq!(
            journal, fresh,
            "after {upto} events: the journal of the run not cut short"
        );
    }
}

/// A bad `ctx.tool` disposition is refused saying what a tool call takes,
/// the same words as a disposition of `null`: `externally_owned` is never
/// offered, and given, it is refused.
#[tokio::test]
async fn a_bad_tool_disposition_never_offers_externally_owned() {
    let p = runtime_with_echo();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const said = (e) => [e.code, e.message];
            const seen = [];
            for (const d of ["bogus", null, "externally_owned"]) {
                seen.push(await ctx.tool("echo", {value: 1}, {disposition: d}).catch(said));
            }
            return seen;
        }"#,
    )
    .await;
    let rec = run(&p, script("disp", &m, "main", json!({}))).await;
    let Some(Outcome::Success { value }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    let takes = |given: &str| {
        json!([
            "invalid_request",
            format!(
                "ctx.tool's disposition is `rerunnable` (the default, when it is left out) \
                 or `owner_bound` (a tool call is run here, so never `externally_owned`), not {given}"
            )
        ])
    };
    assert_eq!(value[0], takes("\"bogus\""), "{value}");
    assert_eq!(value[1], takes("null"), "{value}");
    assert_eq!(value[2][0], "invalid_disposition", "{value}");
}

/// A script ends by returning or throwing: a start that declares a type
/// with terminal semantics is refused (`ctx.emit` would refuse it, and a
/// host's append needs the run's lease), and nothing starts.
#[tokio::test]
async fn a_script_start_refuses_a_type_that_would_end_the_script() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const code = await ctx.emit("done", {result: 42}).then(() => "appended", e => e.code);
            return {code};
        }"#,
    )
    .await;
    let done: cairn_core::EventType = serde_json::from_value(json!({
        "name": "done",
        "semantics": {"terminal": {"state": "completed", "await_output": {"pointer": "/result"}}}
    }))
    .expect("a terminal type");
    let e = p
        .start(script("term", &m, "main", json!({})).with_event_type(done))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_semantics", "{e}");
    assert!(e.to_string().contains("a script ends by returning or throwing"), "{e}");
    assert_eq!(p.get("term").await.unwrap_err().code(), "unknown_process");
}

/// Local time is UTC, whatever the server's time zone (which no journal
/// holds: a replay in another zone would see other hours). The script runs
/// in a child of this test binary with `TZ` set nine hours east of UTC, and
/// in one with daylight saving time (a string read near its changes is read
/// as UTC all the same).
#[test]
fn local_time_is_utc_whatever_the_server_zone() {
    for zone in ["JST-9", "EST5EDT,M3.2.0,M11.1.0"] {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "local_time_in_a_zone_east_of_utc",
                "--ignored",
                "--test-threads=1",
            ])
            .env("TZ", zone)
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("1 passed"), "{zone}: {stdout}");
    }
}

#[tokio::test]
#[ignore = "run by local_time_is_utc_whatever_the_server_zone, with TZ set"]
async fn local_time_in_a_zone_east_of_utc() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const d = new Date(0);
            return {
                hours: d.getHours(), date: d.getDate(), offset: d.getTimezoneOffset(),
                text: String(d), dateText: d.toDateString(), call: typeof Date(),
                parts: new Date(2020, 0, 2, 3, 4, 5).getTime() === Date.UTC(2020, 0, 2, 3, 4, 5),
                local: new Date("2020-01-02T03:04:05").getTime() === Date.UTC(2020, 0, 2, 3, 4, 5),
                zoned: Date.parse("2020-01-02T03:04:05+09:00") === Date.UTC(2020, 0, 1, 18, 4, 5),
                dateOnly: Date.parse("2020-01-02") === Date.UTC(2020, 0, 2),
                nearChanges: [
                    ["2024-03-10T05:00:00", Date.UTC(2024, 2, 10, 5)],
                    ["2024-03-10T06:30:00", Date.UTC(2024, 2, 10, 6, 30)],
                    ["2024-03-10T02:30:00", Date.UTC(2024, 2, 10, 2, 30)],
                    ["2024-11-03T01:30:00", Date.UTC(2024, 10, 3, 1, 30)],
                    ["2024-11-03T05:30:00.250", Date.UTC(2024, 10, 3, 5, 30, 0, 250)],
                    ["2024-11-02T23:00", Date.UTC(2024, 10, 2, 23)],
                    ["Mar 10 2024 05:00:00", Date.UTC(2024, 2, 10, 5)],
                    ["Sun Nov 03 2024 05:30:00", Date.UTC(2024, 10, 3, 5, 30)],
                    ["Tue, 10 Mar 2024 10:00:00 PDT", Date.UTC(2024, 2, 10, 17)],
                    ["March 10, 2024 10:00 EST", Date.UTC(2024, 2, 10, 15)],
                    ["Mar 10 2024 10:00:00 CET", Date.UTC(2024, 2, 10, 9)],
                    ["Mar 10 2024 10:00:00 EET", Date.UTC(2024, 2, 10, 8)],
                    ["Jul 10 2024 10:00:00 CEST", Date.UTC(2024, 6, 10, 8)],
                    ["07-03-2024 10:00", Date.UTC(2024, 6, 3, 10)],
                    ["05-Mar-2024 10:00", Date.UTC(2024, 2, 5, 10)],
                    ["2024-03-10T10:00:00.5-02:30", Date.UTC(2024, 2, 10, 12, 30, 0, 500)],
                    ["Mar 10 2024 10:00 +0100", Date.UTC(2024, 2, 10, 9)],
                    ["Mar 10 2024 10:00 PM +0100", Date.UTC(2024, 2, 10, 21)],
                    ["10:00:00 Mar 10 2024 +0100", Date.UTC(2024, 2, 10, 9)],
                    ["Mar 10 2024 10:00 +01", Date.UTC(2024, 2, 10, 9)],
                    ["2021-03-07 10:00 (UTC)", Date.UTC(2021, 2, 7, 10)],
                    ["March 7, 2021 10:00 (CET)", Date.UTC(2021, 2, 7, 10)],
                    ["Sun Mar 10 2024 10:00:00 GMT+0100 (Central European Standard Time)", Date.UTC(2024, 2, 10, 9)],
                ].filter(([text, utc]) => Date.parse(text) !== utc || new Date(text).getTime() !== utc)
                    .map(([text]) => text),
                set: (() => { const x = new Date(0); x.setHours(5); return x.getTime(); })(),
                year: new Date(Date.UTC(2020, 11, 31, 20)).getYear(),
                setYear: (() => {
                    const x = new Date(Date.UTC(2020, 11, 31, 20));
                    x.setYear(99);
                    return x.getTime() === Date.UTC(1999, 11, 31, 20);
                })(),
            };
        }"#,
    )
    .await;
    let rec = run(&p, script("tz", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({
            "hours": 0, "date": 1, "offset": 0,
            "text": "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)",
            "dateText": "Thu Jan 01 1970", "call": "string",
            "parts": true, "local": true, "zoned": true, "dateOnly": true, "nearChanges": [],
            "set": 5 * 3_600_000,
            "year": 120, "setYear": true,
        }))),
        "{rec:?}"
    );
}

/// A thrown value whose fields throw when read is still an uncaught error.
#[tokio::test]
async fn a_thrown_value_that_cannot_be_read_is_uncaught() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function getter(ctx) {
            const e = new Error("g");
            Object.defineProperty(e, "code", {get() { throw new Error("boom"); }});
            throw e;
        }
        export async function proxy(ctx) { throw new Proxy({}, {get() { throw new Error("trap"); }}); }"#,
    )
    .await;
    for name in ["getter", "proxy"] {
        let rec = run(&p, script(name, &m, name, json!({}))).await;
        let Some(Outcome::Failure { class, code, .. }) = &rec.outcome else {
            panic!("{rec:?}")
        };
        assert_eq!(
            (class.as_str(), code.as_str()),
            ("script", "uncaught"),
            "{name}: {rec:?}"
        );
    }
}

/// A name that is not a string is refused saying what was given.
#[tokio::test]
async fn a_name_that_is_not_a_string_is_named_in_the_refusal() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const msg = (p) => p.then(() => "resolved", (e) => e.code + ": " + e.message);
            return [await msg(ctx.tool(5, {})), await msg(ctx.emit(5, {})), await msg(ctx.waitSignal(5)),
                await msg(ctx.emit(Symbol("t"), {})), await msg(ctx.sleep(-1)),
                await msg(ctx.tool(Symbol("x"), {})), await msg(ctx.wait(Symbol("w")))];
        }"#,
    )
    .await;
    let rec = run(&p, script("names", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!([
            "invalid_request: ctx.tool(name, args) takes a string, not 5",
            "invalid_request: ctx.emit(type, payload) takes a string, not 5",
            "invalid_request: ctx.waitSignal(name) takes a string, not 5",
            "invalid_request: ctx.emit(type, payload) takes a string, not Symbol(t)",
            "invalid_request: ctx.sleep(ms) takes a number of milliseconds from 0 up, not -1",
            "invalid_request: ctx.tool(name, args) takes a string, not Symbol(x)",
            "invalid_request: ctx.wait(id) takes the id of a child process (a string), not Symbol(w)",
        ]))),
        "{rec:?}"
    );
}

/// A failure's `raw.stack` shows the script's frames (and native ones it
/// called through), never the engine's own prelude; a context call's
/// rejection, answered by the engine, shows the frames where it was called.
#[tokio::test]
async fn a_failure_stack_shows_only_the_scripts_frames() {
    let p = runtime(Limits::default());
    let m = put(
        &p,
        "function inner() { throw new Error('boom'); }\n\
         export async function later(ctx) { await ctx.sleep(1); [1].map(() => inner()); }\n\
         export function now(ctx) { inner(); }\n\
         export async function tool(ctx) { await ctx.tool('nope', {}); }\n",
    )
    .await;
    let stack = |rec: &cairn_core::ProcessRecord| match &rec.outcome {
        Some(Outcome::Failure { raw, .. }) => raw.as_ref().map(|r| r["stack"].as_str().expect("a string").to_string()),
        other => panic!("expected a failure, got {other:?}"),
    };
    let rec = run(&p, script("st-later", &m, "later", json!({}))).await;
    let s = stack(&rec).expect("a stack");
    assert_eq!(
        s.lines().map(str::trim).collect::<Vec<_>>(),
        [
            "at inner (script.js:1:30)",
            "at <anonymous> (script.js:2:70)",
            "at map (native)",
            "at later (script.js:2:60)"
        ],
        "{s}"
    );
    let rec = run(&p, script("st-now", &m, "now", json!({}))).await;
    let s = stack(&rec).expect("a stack");
    assert_eq!(
        s.lines().map(str::trim).collect::<Vec<_>>(),
        ["at inner (script.js:1:30)", "at now (script.js:3:28)"],
        "{s}"
    );
    let rec = run(&p, script("st-tool", &m, "tool", json!({}))).await;
    assert!(
        matches!(&rec.outcome, Some(Outcome::Failure { code, .. }) if code == "unknown_tool"),
        "{rec:?}"
    );
    let s = stack(&rec).expect("a stack");
    assert_eq!(
        s.lines().map(str::trim).collect::<Vec<_>>(),
        ["at tool (script.js:4:45)"],
        "{s}"
    );
}

/// A failed child the script does not catch fails it with the child's code,
/// a message naming the child, and the stack of the call it awaited (the
/// engine answers it after the await, from no frame of the script); the
/// journaled answer names the child too, so a replay rejects alike. A
/// script that catches it sees the same.
#[tokio::test]
async fn an_uncaught_failed_child_names_it_and_the_call_in_its_stack() {
    let p = runtime_with_gate();
    let m = put(
        &p,
        "export async function main(ctx) {\n\
         \x20 await ctx.sleep(1);\n\
         \x20 await ctx.tool('gate', {fail: 'exit_status'});\n\
         \x20 return 1;\n\
         }\n\
         export async function caught(ctx) {\n\
         \x20 try { await ctx.tool('gate', {fail: 'exit_status'}); }\n\
         \x20 catch (e) { return [e.class, e.code, e.process_id, e.message, e.stack]; }\n\
         }\n",
    )
    .await;
    let rec = run(&p, script("uc", &m, "main", json!({}))).await;
    let Some(Outcome::Failure {
        class,
        code,
        message,
        raw,
    }) = &rec.outcome
    else {
        panic!("{rec:?}")
    };
    assert_eq!(
        (class.as_str(), code.as_str(), message.as_str()),
        ("script", "exit_status", "child `uc/2` failed: the gate refused")
    );
    let s = raw.as_ref().and_then(|r| r["stack"].as_str()).expect("a stack");
    assert_eq!(
        s.lines().map(str::trim).collect::<Vec<_>>(),
        ["at main (script.js:3:13)"],
        "{s}"
    );
    let results = events(&p, "uc", "script.result").await;
    let failed = results.iter().find(|r| r["n"] == 2).expect("call 2's result");
    assert_eq!(
        failed["error"],
        json!({
            "class": "tool",
            "code": "exit_status",
            "message": "child `uc/2` failed: the gate refused",
            "process_id": "uc/2"
        }),
        "{failed}"
    );

    let rec = run(&p, script("uc-caught", &m, "caught", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!([
            "tool",
            "exit_status",
            "uc-caught/1",
            "child `uc-caught/1` failed: the gate refused",
            "    at caught (script.js:7:19)\n"
        ]))),
        "{rec:?}"
    );
}

/// A script past its journaled calls ends `journal_limit`, whether the call
/// over the limit came from a synchronous function or after an await, and
/// whether the script then returned, kept computing (the limit interrupts
/// it) or caught the refusal.
#[tokio::test]
async fn the_call_limit_ends_a_script_whatever_it_does_next() {
    let p = runtime(Limits {
        max_calls: 5,
        cpu: Duration::from_secs(2),
        ..Limits::default()
    });
    let m = put(
        &p,
        "export function returns(ctx) { for (let i = 0; i < 10; i++) ctx.log('x' + i); return 1; }\n\
         export function spins(ctx) { for (let i = 0; i < 10; i++) ctx.log('x' + i); while (true) {} }\n\
         export function catches(ctx) { for (let i = 0; i < 10; i++) { try { ctx.log('x' + i); } catch (e) {} } return 1; }\n\
         export async function later(ctx) { await ctx.sleep(1); for (let i = 0; i < 10; i++) ctx.log('x' + i); while (true) {} }\n",
    )
    .await;
    for f in ["returns", "spins", "catches", "later"] {
        let rec = run(&p, script(&format!("limit-{f}"), &m, f, json!({}))).await;
        match &rec.outcome {
            Some(Outcome::Failure {
                class, code, message, ..
            }) => {
                assert_eq!(
                    (class.as_str(), code.as_str()),
                    ("script", "journal_limit"),
                    "{f}: {message}"
                );
                assert!(message.contains("more than 5 journaled calls"), "{f}: {message}");
            }
            other => panic!("{f}: expected journal_limit, got {other:?}"),
        }
    }
}

/// The clock and randomness builtins are journaled calls: a script that only
/// reads them past the limit ends `journal_limit`, and the message names
/// them as what counts (not only `ctx.log` lines).
#[tokio::test]
async fn clock_and_random_reads_count_and_the_limit_names_them() {
    let p = runtime(Limits {
        max_calls: 5,
        ..Limits::default()
    });
    let m = put(
        &p,
        "export async function shuffle() { const a = []; for (let i = 0; i < 10; i++) a.push(Math.random()); return a.length; }\n\
         export async function clock() { let s = 0; for (let i = 0; i < 10; i++) s += new Date().getSeconds(); return s; }\n",
    )
    .await;
    for f in ["shuffle", "clock"] {
        let rec = run(&p, script(&format!("reads-{f}"), &m, f, json!({}))).await;
        let Some(Outcome::Failure { code, message, .. }) = &rec.outcome else {
            panic!("{f}: expected journal_limit, got {rec:?}")
        };
        assert_eq!(code, "journal_limit", "{f}: {message}");
        for named in [
            "more than 5 journaled calls",
            "every context call",
            "`ctx.log` or `console` line",
            "`Date.now()`",
            "`new Date()`",
            "`Date()`",
            "`Math.random()`",
            "`ctx.now()`",
            "`ctx.random()`",
            "`ctx.uuid()`",
            "`cairn serve --script-max-calls`",
        ] {
            assert!(message.contains(named), "{f}: {named} in {message}");
        }
        // Each read journaled is a call and its result.
        let calls = events(&p, &format!("reads-{f}"), "script.call").await;
        assert_eq!(calls.len(), 5, "{f}: {calls:?}");
    }
}

/// A store fault while a script's wait is decided (its suspension refused
/// `unavailable`) is no answer of the awaited call: nothing is journaled
/// for it, the run is released, and a later claim replays the same wait,
/// which the signal then answers.
#[tokio::test]
async fn a_store_fault_while_waiting_is_not_the_waits_answer() {
    let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(MemoryRegistry::new()));
    let p = Processes::builder(probe.clone())
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .start();
    let m = put(
        &p,
        r#"export async function main(ctx) { return await ctx.waitSignal("go"); }"#,
    )
    .await;
    probe.fail_next_waits(1);
    p.start(script("faulted", &m, "main", json!({}))).await.expect("start");
    p.await_event("faulted", "process.waiting", 0, Duration::from_secs(20))
        .await
        .expect("the replay waits");
    p.signal("faulted", "go", "s1", json!({"ok": 1})).await.expect("signal");
    let rec = p.await_output("faulted", Duration::from_secs(20)).await.expect("await");
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"ok": 1}))), "{rec:?}");
    let results = events(&p, "faulted", "script.result").await;
    assert!(
        results.iter().all(|r| r.get("error").is_none()),
        "no fault was journaled as an answer: {results:?}"
    );
}

/// `limit`: succeeds with a value at the payload limits, as deep
/// (`{"deep": true}`) or as large as a payload may be.
struct AtTheLimits;

#[cairn_core::async_trait]
impl cairn_core::Tool for AtTheLimits {
    fn name(&self) -> &str {
        "limit"
    }
    async fn run(&self, _ctx: cairn_core::ToolContext, args: Value) -> Outcome {
        if args["deep"] == json!(true) {
            let mut v = json!(1);
            for _ in 0..cairn_core::validate::MAX_JSON_DEPTH {
                v = json!([v]);
            }
            return Outcome::success(v);
        }
        Outcome::success(json!("x".repeat(cairn_core::validate::MAX_PAYLOAD_BYTES - 2)))
    }
}

/// A child that ends with a value at the payload limits is a script's
/// answer too: `ctx.wait` (the child's whole outcome) and `ctx.tool` (its
/// value) journal it and resolve, rather than reject.
#[tokio::test]
async fn a_child_outcome_at_the_payload_limits_is_answered() {
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::default()))
        .tools(cairn_core::ToolRegistry::new().with(Arc::new(AtTheLimits)))
        .start();
    let m = put(
        &p,
        r#"export async function main(ctx) {
            const deep = await ctx.start({input: {type: "tool_call", tool: "limit", args: {deep: true}}, disposition: "rerunnable"});
            const waited = await ctx.wait(deep);
            const wide = await ctx.tool("limit", {});
            let depth = 0;
            for (let v = waited.value; Array.isArray(v); v = v[0]) depth++;
            return {waited: waited.type, depth, wide: wide.length};
        }"#,
    )
    .await;
    let rec = run(&p, script("lim", &m, "main", json!({}))).await;
    assert_eq!(
        rec.outcome,
        Some(Outcome::success(json!({
            "waited": "success",
            "depth": cairn_core::validate::MAX_JSON_DEPTH,
            "wide": cairn_core::validate::MAX_PAYLOAD_BYTES - 2
        })))
    );
}
