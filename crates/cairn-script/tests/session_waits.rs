//! A script a session started cannot tell, through `ctx.wait`, another
//! session's process (or the host's) from an id nothing holds: each is
//! refused the same way, as the session's token is answered for them.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    Disposition, MemoryRegistry, Originator, Outcome, ProcessInput, Processes, SessionScope, StartRequest,
};
use cairn_script::QuickJs;
use serde_json::{json, Value};

/// `ctx.wait` of a running process of session s2, of a host's ended one and
/// of ids nothing holds, alone and mixed, from a script of session s1: every
/// refusal reads as the one for an id nothing holds.
#[tokio::test]
async fn a_sessions_script_cannot_tell_another_sessions_process_from_none() {
    let p = Processes::builder(Arc::new(MemoryRegistry::new()))
        .script_engine(Arc::new(QuickJs::default()))
        .start();
    let m = p
        .put_module(
            r#"export async function other() { return "secret"; }
            export async function main(ctx) {
                const bad = async (ids) => {
                    try { await Promise.all(ids.map((id) => ctx.wait(id))); return "awaited"; }
                    catch (e) { return e.code + ": " + e.message; }
                };
                return {
                    nothing: await bad(["does-not-exist"]),
                    elsewhere: await bad(["secret-of-s2"]),
                    host: await bad(["hosts"]),
                };
            }"#
            .to_string(),
            Some("w.js".into()),
        )
        .await
        .expect("module stored")
        .module
        .module_ref;
    let script = |id: &str, name: &str| {
        StartRequest::new(
            id,
            ProcessInput::Script {
                module_ref: m.clone(),
                process_name: name.into(),
                args: json!({}),
            },
            Disposition::Rerunnable,
        )
    };
    let as_session = |mut req: StartRequest, s: &str| {
        let scope = SessionScope::session(s);
        req = req.with_grant(scope.clone(), Default::default());
        req.originator = Originator::session(scope);
        req
    };
    let end = |id: &'static str| {
        let p = p.clone();
        async move {
            let rec = p.await_output(id, Duration::from_secs(20)).await.expect("awaited");
            assert!(rec.is_terminal(), "{rec:?}");
            rec
        }
    };
    p.start(script("hosts", "other")).await.expect("start hosts");
    end("hosts").await;
    p.start(as_session(StartRequest::external("secret-of-s2", json!({})), "s2"))
        .await
        .expect("start s2's");
    p.start(as_session(script("iso", "main"), "s1"))
        .await
        .expect("start iso");
    let rec = end("iso").await;
    let Some(Outcome::Success { value }) = &rec.outcome else {
        panic!("{rec:?}")
    };
    let nothing = value["nothing"].as_str().expect("a refusal");
    assert!(nothing.starts_with("unknown_process: "), "{nothing}");
    let as_nothing = |id: &str| Value::from(nothing.replace("does-not-exist", id));
    assert_eq!(value["elsewhere"], as_nothing("secret-of-s2"), "{value}");
    assert_eq!(value["host"], as_nothing("hosts"), "{value}");
    p.shutdown().await;
}
