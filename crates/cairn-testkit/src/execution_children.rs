//! The execution suite's runs beyond a plain tool: a tool that starts
//! children and suspends until they end (SPEC §13), and a runner of an input
//! kind other than `tool_call`, through the public API.

use std::sync::Arc;

use cairn_core::async_trait;
use cairn_core::model::ChildrenMode;
use cairn_core::{
    CairnError, Disposition, ManualClock, Outcome, ProcessFilter, ProcessInput, ProcessStatus, Processes, StartRequest,
    Tool, ToolContext, ToolRegistry, WorkerConfig,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::execution::{runtime, terminal, types_of, WAIT};
use crate::StoreFactory;

/// Starts `n` children `{id}/{k}`, each waiting for signal `go`, then waits
/// for all of them and succeeds with the sum of their values.
#[derive(Default, Clone)]
struct FanOut {
    runs: Arc<Mutex<u64>>,
}

#[async_trait]
impl Tool for FanOut {
    fn name(&self) -> &str {
        "fan_out"
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        *self.runs.lock() += 1;
        let n = args["n"].as_u64().unwrap_or(1);
        let mut ids = Vec::new();
        for k in 1..=n {
            let id = format!("{}/{k}", ctx.process_id());
            let child = StartRequest::tool(&id, "wait_signal", json!({"name": "go"}), Disposition::Rerunnable);
            if let Err(e) = ctx.start_child(child).await {
                return Outcome::failure("test", e.code(), e.to_string());
            }
            ids.push(id);
        }
        match ctx.wait_children(&ids, ChildrenMode::All, None).await {
            Ok(Some(children)) => {
                let sum: u64 = children
                    .iter()
                    .filter_map(|c| match &c.outcome {
                        Some(Outcome::Success { value }) => value["v"].as_u64(),
                        _ => None,
                    })
                    .sum();
                Outcome::success(json!({ "sum": sum }))
            }
            Ok(None) => Outcome::failure("test", "timeout", "no deadline was set"),
            // Suspended: what the run answers is not used.
            Err(e) => Outcome::failure("test", e.code(), e.to_string()),
        }
    }
}

/// A parent starts three children together and suspends until all have
/// ended, holding no lease meanwhile; the last child's end resumes it
/// (`reason: children`), the re-run finds the same children (each started
/// once) and the parent ends with their values.
pub async fn parent_suspends_until_its_children_end(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let tool = FanOut::default();
    let p = runtime(&store, "w1", vec![Arc::new(tool.clone())]);
    p.start(StartRequest::tool(
        "fan",
        "fan_out",
        json!({"n": 3}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("fan", "process.waiting", 0, WAIT).await.expect("waiting");
    let rec = p.get("fan").await.expect("get");
    assert!(rec.lease.is_none(), "a suspended parent holds no lease: {rec:?}");
    let wait = rec.wait.expect("a children wait");
    assert_eq!((wait.kind.as_str(), wait.mode), ("children", Some(ChildrenMode::All)));
    let kids = ["fan/1", "fan/2", "fan/3"];
    let listed = p
        .list(&ProcessFilter {
            caused_by: Some("fan".into()),
            ..ProcessFilter::running()
        })
        .await
        .expect("list");
    assert_eq!(listed.items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), kids);
    for (k, id) in kids.iter().enumerate() {
        p.await_event(id, "process.waiting", 0, WAIT)
            .await
            .expect("child waiting");
        assert_eq!(p.get("fan").await.expect("get").status, ProcessStatus::Running);
        p.signal(id, "go", "s", json!({"v": k + 1})).await.expect("signal");
        terminal(&p, id).await;
    }
    let r = terminal(&p, "fan").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"sum": 6}))));
    assert_eq!(*tool.runs.lock(), 2, "one run to start them, one after they ended");
    let events = p.events("fan", 0, Some(100)).await.expect("events").events;
    assert_eq!(
        types_of(&events),
        [
            "process.started",
            "process.waiting",
            "process.resumed",
            "process.started",
            "process.completed"
        ]
    );
    assert_eq!(events[2].payload["reason"], "children");
    for id in kids {
        let log = p.events(id, 0, Some(100)).await.expect("events").events;
        let starts = log.iter().filter(|e| e.event_type == "process.started").count();
        assert_eq!(starts, 2, "{id}: one start, one resume after its signal");
        crate::assert_fold(p.registry().as_ref(), id).await;
    }
    crate::assert_fold(p.registry().as_ref(), "fan").await;
    p.shutdown().await;
}

/// `cancel_all` requests the cancellation of every running process granted
/// to a scope, its running descendants in the same writes, and answers
/// counts: each process once (a child reached through its parent's request
/// is not counted again when the listing reaches it). A second call skips what already carries a request and
/// writes nothing; another session's work is untouched; a reason over its
/// limit is refused before any request is made.
pub async fn cancel_all_requests_each_running_process_once(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![Arc::new(FanOut::default())]);
    let s1 = cairn_core::SessionScope::session("s1");
    let granted = |req: StartRequest, to: &cairn_core::SessionScope| req.with_grant(to.clone(), Default::default());
    p.start(granted(
        StartRequest::tool("fan", "fan_out", json!({"n": 2}), Disposition::Rerunnable),
        &s1,
    ))
    .await
    .expect("start fan");
    p.start(granted(StartRequest::external("ext", json!({})), &s1))
        .await
        .expect("start ext");
    p.start(granted(
        StartRequest::tool("other", "wait_signal", json!({"name": "go"}), Disposition::Rerunnable),
        &cairn_core::SessionScope::session("s2"),
    ))
    .await
    .expect("start other");
    for id in ["fan", "fan/1", "fan/2", "other"] {
        p.await_event(id, "process.waiting", 0, WAIT).await.expect("waiting");
    }

    let long = "r".repeat(cairn_core::validate::MAX_REASON_BYTES + 1);
    let refused = p.cancel_all(&s1, Some(long)).await;
    assert!(
        matches!(refused, Err(CairnError::PayloadTooLarge { .. })),
        "{refused:?}"
    );
    assert!(
        p.get("fan").await.expect("get").cancel_request.is_none(),
        "nothing requested"
    );

    let report = p.cancel_all(&s1, Some("stop".into())).await.expect("cancel_all");
    // fan, its two children (reached by fan's request, listed after it) and
    // ext; none ended at once: the suspended three had begun, so each is
    // run again to end itself, and the external one only carries the
    // request.
    assert_eq!((report.requested, report.cancelled_now), (4, 0), "{report:?}");
    for id in ["fan", "fan/1", "fan/2"] {
        assert_eq!(terminal(&p, id).await.status, ProcessStatus::Cancelled, "{id}");
    }
    let ext = p.get("ext").await.expect("ext");
    assert_eq!(ext.status, ProcessStatus::Running);
    assert!(ext.cancel_request.is_some());
    let other = p.get("other").await.expect("other");
    assert!(other.cancel_request.is_none() && !other.is_terminal(), "{other:?}");

    let logged = p.events("ext", 0, Some(100)).await.expect("events").events.len();
    let again = p.cancel_all(&s1, Some("another reason".into())).await.expect("again");
    assert_eq!((again.requested, again.cancelled_now), (0, 0), "{again:?}");
    assert_eq!(
        p.events("ext", 0, Some(100)).await.expect("events").events.len(),
        logged,
        "a process already requested is not requested again"
    );
    p.shutdown().await;
}

/// Runs `session_turn` inputs: succeeds with the input it was given; a start
/// whose input is `refuse` is refused (what a turn runner does for an unknown
/// model), and so is one that is not rerunnable.
struct EchoRunner;

#[async_trait]
impl Tool for EchoRunner {
    fn name(&self) -> &str {
        "session_turn"
    }

    async fn check_start(&self, input: &Value, disposition: Disposition) -> cairn_core::Result<()> {
        if input["input"] == "refuse" {
            return Err(CairnError::InvalidRequest("refused by the runner".into()));
        }
        if disposition != Disposition::Rerunnable {
            return Err(CairnError::InvalidRequest("turns here are rerunnable".into()));
        }
        Ok(())
    }

    async fn run(&self, _ctx: ToolContext, input: Value) -> Outcome {
        Outcome::success(json!({ "ran": input["input"], "type": input["type"] }))
    }
}

/// A runner registered for an input kind runs processes of that kind with
/// the whole input as its args, and checks their starts; without one, the
/// worker ends such a process `unsupported_input`.
pub async fn input_runner_runs_its_kind(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let turn = |id: &str, text: &str, disposition| {
        let input = ProcessInput::SessionTurn {
            session: cairn_core::TurnSession::default(),
            input: json!(text),
            output_contract: Value::Null,
        };
        StartRequest::new(id, input, disposition)
    };
    let mut tools = ToolRegistry::new();
    tools.register_runner("session_turn", Arc::new(EchoRunner));
    let p = Processes::builder(store.registry.clone())
        .tools(tools)
        .clock(Arc::new(store.clock.clone()))
        .worker_config(WorkerConfig {
            owner_id: "w1".into(),
            sweep_interval: std::time::Duration::from_millis(200),
            ..WorkerConfig::default()
        })
        .start();
    p.start(turn("s1", "hello", Disposition::Rerunnable))
        .await
        .expect("start");
    let r = terminal(&p, "s1").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"ran": "hello", "type": "session_turn"})))
    );
    for (text, disposition) in [("refuse", Disposition::Rerunnable), ("hello", Disposition::OwnerBound)] {
        let e = p.start(turn("s2", text, disposition)).await.expect_err("refused");
        assert_eq!(e.code(), "invalid_request");
    }
    assert_eq!(p.get("s2").await.expect_err("nothing stored").code(), "unknown_process");
    p.shutdown().await;

    let bare = runtime(&store, "w2", vec![]);
    bare.start(turn("s3", "hello", Disposition::Rerunnable))
        .await
        .expect("start");
    let r = terminal(&bare, "s3").await;
    match r.outcome {
        Some(Outcome::Failure { code, .. }) => assert_eq!(code, "unsupported_input"),
        other => panic!("expected unsupported_input, got {other:?}"),
    }
    bare.shutdown().await;
}

/// Starts children as anyone and awaits processes that are not its
/// children: each entry of `WAITS` (alone, and the first of them raced
/// against a signal), answering what each wait was refused with.
struct Spoofer;

/// What [`Spoofer`] awaits, by name: a host's ended process, another
/// session's running one, ids nothing holds, and a mix, whose refusal names
/// the first id that is no child whichever read answered first.
const WAITS: [(&str, &[&str]); 5] = [
    ("foreign", &["foreign"]),
    ("elsewhere", &["elsewhere"]),
    ("nothing", &["nothing"]),
    ("elsewhere_then_nothing", &["elsewhere", "nothing"]),
    ("nothing_then_nothing", &["nothing-2", "nothing"]),
];

#[async_trait]
impl Tool for Spoofer {
    fn name(&self) -> &str {
        "spoofer"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        let child = |k: u32| {
            StartRequest::tool(
                format!("{}/{k}", ctx.process_id()),
                "echo",
                json!({"value": k}),
                Disposition::Rerunnable,
            )
        };
        let mut as_host = child(1);
        as_host.originator = cairn_core::Originator::host();
        if let Err(e) = ctx.start_child(as_host).await {
            return Outcome::failure("test", e.code(), e.to_string());
        }
        let code = |r: Result<_, CairnError>| r.err().map_or("ok", |e| e.code());
        let waking_another = ctx
            .start_child(child(2).with_wake_target(cairn_core::SessionScope::session("s2")))
            .await;
        let granting_another = ctx
            .start_child(child(3).with_grant(cairn_core::SessionScope::session("s2"), Default::default()))
            .await;
        let said = |r: Result<_, CairnError>| match r {
            Ok(_) => json!("ok"),
            Err(e) => json!([e.code(), e.to_string()]),
        };
        let mut waits = serde_json::Map::new();
        let mut raced = serde_json::Map::new();
        for (name, ids) in WAITS {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            let waited = ctx.wait_children(&ids, ChildrenMode::Any, None).await;
            waits.insert(name.into(), said(waited.map(|_| ())));
            let first = ctx
                .wait_first(&[("go".into(), 1)], Some((&ids, ChildrenMode::Any, 1)), None, false)
                .await;
            raced.insert(name.into(), said(first.map(|_| ())));
        }
        Outcome::success(json!({
            "wake": code(waking_another.map(|_| ())),
            "grant": code(granting_another.map(|_| ())),
            "waits": waits,
            "raced": raced,
        }))
    }
}

/// Starts [`Spoofer`] `id` as `originator` once `foreign` (a host's, ended)
/// and `elsewhere` (session s2's, running) exist; answers its outcome's value.
async fn spoof(p: &Processes, id: &str, originator: cairn_core::Originator) -> Value {
    let mut req = StartRequest::tool(id, "spoofer", json!({}), Disposition::Rerunnable);
    if let cairn_core::Originator::Session { scope } = &originator {
        // Granted to its session, as a session's own start is.
        req = req.with_grant(scope.clone(), Default::default());
    }
    req.originator = originator;
    p.start(req).await.expect("start");
    match terminal(p, id).await.outcome {
        Some(Outcome::Success { value }) => value,
        other => panic!("expected a success, got {other:?}"),
    }
}

/// Starts what [`Spoofer`] awaits: `foreign`, a host's process that ended,
/// and `elsewhere`, session s2's, running.
async fn others(p: &Processes) {
    p.start(StartRequest::tool(
        "foreign",
        "echo",
        json!({"value": "secret"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start foreign");
    terminal(p, "foreign").await;
    elsewhere(p).await;
}

/// Starts `elsewhere`, session s2's process, which never runs here.
async fn elsewhere(p: &Processes) {
    let s2 = cairn_core::SessionScope::session("s2");
    let mut elsewhere = StartRequest::external("elsewhere", json!({})).with_grant(s2.clone(), Default::default());
    elsewhere.originator = cairn_core::Originator::session(s2);
    p.start(elsewhere).await.expect("start elsewhere");
}

/// A process a session started acts for that session: its children are
/// started as the session and granted to it, may not be granted to or wake
/// another session, and it may not await (and so read the end of) a process
/// that is not its child, ended or not (SPEC §4, §13). Such a wait is
/// refused exactly as one for an id nothing holds is (`unknown_process`, the
/// same words, naming the same id of several), so the session's process
/// cannot tell another session's process, or the host's, from none, as the
/// session's token cannot.
pub async fn a_sessions_process_acts_only_for_that_session(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![Arc::new(Spoofer)]);
    others(&p).await;
    let value = spoof(
        &p,
        "sp",
        cairn_core::Originator::session(cairn_core::SessionScope::session("s1")),
    )
    .await;
    assert_eq!(
        (&value["wake"], &value["grant"]),
        (&json!("invalid_request"), &json!("invalid_request"))
    );
    let unknown = |id: &str| json!(["unknown_process", format!("unknown process `{id}`")]);
    for answers in [&value["waits"], &value["raced"]] {
        // What an id nothing holds is answered, and every other the same.
        assert_eq!(answers["nothing"], unknown("nothing"), "{value}");
        let as_nothing = |id: &str| {
            let said = answers["nothing"].to_string().replace("`nothing`", &format!("`{id}`"));
            serde_json::from_str::<Value>(&said).expect("json")
        };
        assert_eq!(answers["foreign"], as_nothing("foreign"), "{value}");
        assert_eq!(answers["elsewhere"], as_nothing("elsewhere"), "{value}");
        assert_eq!(answers["elsewhere_then_nothing"], as_nothing("elsewhere"), "{value}");
        assert_eq!(answers["nothing_then_nothing"], as_nothing("nothing-2"), "{value}");
    }
    let child = p.get("sp/1").await.expect("child");
    assert_eq!(
        child.provenance.originator,
        cairn_core::Originator::session(cairn_core::SessionScope::session("s1"))
    );
    let granted = |s: &'static str| {
        let p = &p;
        async move {
            let all = ProcessFilter::from_json(json!({"status": "any"})).expect("filter");
            let listed = p
                .list_granted_to(&cairn_core::SessionScope::session(s), &all)
                .await
                .expect("list");
            listed.items.into_iter().map(|g| g.process.id).collect::<Vec<_>>()
        }
    };
    assert!(
        granted("s1").await.contains(&"sp/1".to_string()),
        "granted to its session"
    );
    assert_eq!(
        granted("s2").await,
        vec!["elsewhere".to_string()],
        "nothing reached another session"
    );
    for (id, why) in [("sp/2", "wake"), ("sp/3", "be granted to")] {
        assert!(
            p.get(id).await.is_err(),
            "the child that would {why} another session was not started"
        );
    }
    p.shutdown().await;
}

/// A host's process, which may read every process as the host may, is told
/// that a process it awaits is not its child (`invalid_request`), and an id
/// nothing holds is `unknown_process`.
pub async fn a_hosts_process_is_told_what_it_awaits_is_not_its_child(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![Arc::new(Spoofer)]);
    others(&p).await;
    let value = spoof(&p, "hp", cairn_core::Originator::host()).await;
    assert_eq!((&value["wake"], &value["grant"]), (&json!("ok"), &json!("ok")));
    let not_a_child = |id: &str| {
        json!([
            "invalid_request",
            format!("invalid request: `{id}` is not a child of `hp`: only a process's own children can be awaited")
        ])
    };
    for answers in [&value["waits"], &value["raced"]] {
        assert_eq!(
            answers["nothing"],
            json!(["unknown_process", "unknown process `nothing`"]),
            "{value}"
        );
        assert_eq!(answers["foreign"], not_a_child("foreign"), "{value}");
        assert_eq!(answers["elsewhere"], not_a_child("elsewhere"), "{value}");
        assert_eq!(answers["elsewhere_then_nothing"], not_a_child("elsewhere"), "{value}");
        assert_eq!(
            answers["nothing_then_nothing"],
            json!(["unknown_process", "unknown process `nothing-2`"]),
            "{value}"
        );
    }
    p.shutdown().await;
}

/// The store's own check of a children wait (`ProcessRegistry::wait`)
/// refuses a session's process an id that is no child exactly as an id
/// nothing holds (`unknown_process`, the same words), and a host's process
/// with `invalid_request`, writing nothing either way.
pub async fn a_sessions_store_wait_refuses_a_non_child_as_unknown(factory: &dyn StoreFactory) {
    use cairn_core::WaitRequest;
    let store = factory.create(ManualClock::new(1_000)).await;
    let front = Processes::builder(store.registry.clone())
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    elsewhere(&front).await;
    let s1 = cairn_core::SessionScope::session("s1");
    let mut session = StartRequest::tool("sw", "echo", json!({"value": 1}), Disposition::Rerunnable)
        .with_grant(s1.clone(), Default::default());
    session.originator = cairn_core::Originator::session(s1);
    front.start(session).await.expect("start sw");
    front
        .start(StartRequest::tool(
            "hw",
            "echo",
            json!({"value": 1}),
            Disposition::Rerunnable,
        ))
        .await
        .expect("start hw");
    let registry = store.registry.clone();
    let mut refusals = std::collections::BTreeMap::new();
    for id in ["sw", "hw"] {
        let lease = registry.claim(id, "w1", 30_000).await.expect("claim");
        let rec = registry.record_started(&lease).await.expect("started");
        for of in ["elsewhere", "nothing"] {
            let wait = WaitRequest::children(vec![of.to_string()], ChildrenMode::Any, 1, None);
            let err = registry
                .wait(&lease, wait, rec.last_sequence)
                .await
                .expect_err("a wait for no child is refused");
            refusals.insert(format!("{id} {of}"), (err.code(), err.to_string()));
        }
        let after = registry.get(id).await.expect("get");
        assert_eq!(after.last_sequence, rec.last_sequence, "{id}: nothing written");
    }
    let unknown = |of: &str| ("unknown_process", format!("unknown process `{of}`"));
    assert_eq!(refusals["sw nothing"], unknown("nothing"));
    assert_eq!(refusals["sw elsewhere"], unknown("elsewhere"), "as an id nothing holds");
    assert_eq!(refusals["hw nothing"], unknown("nothing"));
    assert_eq!(
        refusals["hw elsewhere"],
        (
            "invalid_request",
            "invalid request: `elsewhere` is not a child of `hw`: only a process's own children can be awaited".into()
        )
    );
    front.shutdown().await;
}

/// A child of a session's process is granted to whoever holds the parent
/// when the child starts: a parent transferred to another session before it
/// ran has its children seen there, not by the session that gave it away.
pub async fn a_transferred_parents_children_go_to_its_new_holder(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (s1, s2) = (
        cairn_core::SessionScope::session("s1"),
        cairn_core::SessionScope::session("s2"),
    );
    let front = cairn_core::Processes::builder(store.registry.clone())
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let mut req = StartRequest::tool("moved", "fan_out", json!({"n": 1}), Disposition::Rerunnable)
        .with_grant(s1.clone(), Default::default());
    req.originator = cairn_core::Originator::session(s1.clone());
    front.start(req).await.expect("start");
    let report = front
        .transfer(&s1, &s2, &["moved".to_string()])
        .await
        .expect("transfer");
    assert_eq!(report.moved, vec!["moved".to_string()]);
    let frame = cairn_core::SessionScope::frame("s2", "f1");
    front
        .grant(&frame, "moved", Default::default())
        .await
        .expect("grant to a frame");
    let p = runtime(&store, "w1", vec![Arc::new(FanOut::default())]);
    p.await_event("moved", "process.waiting", 0, WAIT)
        .await
        .expect("waiting on its child");
    let holders = |p: &cairn_core::Processes| {
        let p = p.clone();
        async move {
            let grants = p.grants_of("moved/1").await.expect("grants");
            grants.into_iter().map(|g| g.scope).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        holders(&p).await,
        vec![s2.clone(), frame.clone()],
        "the child goes where the parent is held"
    );
    let child = p.get("moved/1").await.expect("child");
    assert_eq!(child.provenance.originator, cairn_core::Originator::session(s1));
    assert!(p.grants_of("nobody").await.expect("grants").is_empty());
    // A grant revoked from the child stays revoked through the parent's
    // re-run, whose start of the same child writes nothing.
    assert!(p.revoke(&frame, "moved/1").await.expect("revoke"));
    p.signal("moved/1", "go", "g1", json!({"v": 2})).await.expect("signal");
    let parent = terminal(&p, "moved").await;
    assert_eq!(parent.outcome, Some(Outcome::success(json!({"sum": 2}))));
    assert_eq!(holders(&p).await, vec![s2], "the revoked grant was not made again");
    p.shutdown().await;
    front.shutdown().await;
}

/// Starts a child `{id}/{k}` (an `echo`) per entry of `targets`, with that
/// entry as its wake target (`null`: none), and succeeds with what each start
/// answered: `ok` or the refusal's code and message.
struct Waker;

#[async_trait]
impl Tool for Waker {
    fn name(&self) -> &str {
        "waker"
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        let mut answers = Vec::new();
        for (k, target) in args["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let mut child = StartRequest::tool(
                format!("{}/{}", ctx.process_id(), k + 1),
                "echo",
                json!({"value": k}),
                Disposition::Rerunnable,
            );
            child.wake_target = serde_json::from_value(target).expect("a scope or null");
            answers.push(match ctx.start_child(child).await {
                Ok(_) => json!("ok"),
                Err(e) => json!([e.code(), e.to_string()]),
            });
        }
        Outcome::success(json!({ "answers": answers }))
    }
}

/// A child's wake target may only be in a session that holds its parent
/// when the child starts: a parent transferred from s1 to s2 may not start
/// a child that wakes s1 (s2, holding the child, would write s1's wakes),
/// and is refused as a direct start by s2 naming s1 is; s2 and its frames
/// may be named. A parent no session holds (its session deleted) names no
/// session. A child that names no wake target has none.
pub async fn a_childs_wake_target_is_confined_to_its_parents_holders(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (s1, s2) = (
        cairn_core::SessionScope::session("s1"),
        cairn_core::SessionScope::session("s2"),
    );
    let front = cairn_core::Processes::builder(store.registry.clone())
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let targets = json!([
        {"session_id": "s1"},
        {"session_id": "s2"},
        {"session_id": "s2", "agent_frame_id": "f1"},
        null,
        {"session_id": "s3"},
    ]);
    for id in ["moved", "kept", "orphan"] {
        let mut req = StartRequest::tool(id, "waker", json!({ "targets": targets }), Disposition::Rerunnable)
            .with_grant(s1.clone(), Default::default());
        req.originator = cairn_core::Originator::session(s1.clone());
        front.start(req).await.expect("start");
    }
    front
        .transfer(&s1, &s2, &["moved".to_string()])
        .await
        .expect("transfer");
    // Deleting s1 leaves "orphan" held by none; "kept" is granted to s1 again.
    front.delete_session("s1").await.expect("delete s1");
    front
        .grant(&s1, "kept", Default::default())
        .await
        .expect("hold kept again");
    let p = runtime(&store, "w1", vec![Arc::new(Waker)]);
    let answers = |r: cairn_core::ProcessRecord| match r.outcome {
        Some(Outcome::Success { value }) => value["answers"].as_array().cloned().expect("answers"),
        other => panic!("expected a success, got {other:?}"),
    };
    let refused = |named: &str, by: &str| {
        json!([
            "invalid_request",
            format!(
                "invalid request: a start for session `{by}` may only set a wake target in that session, not `{named}`"
            )
        ])
    };
    let moved = answers(terminal(&p, "moved").await);
    assert_eq!(
        moved,
        vec![
            refused("s1", "s2"),
            json!("ok"),
            json!("ok"),
            json!("ok"),
            refused("s3", "s2")
        ]
    );
    assert!(p.get("moved/1").await.is_err(), "the child waking s1 was not started");
    assert_eq!(p.get("moved/2").await.expect("child").wake_target, Some(s2.clone()));
    assert_eq!(
        p.get("moved/3").await.expect("child").wake_target,
        Some(cairn_core::SessionScope::frame("s2", "f1"))
    );
    assert_eq!(
        p.get("moved/4").await.expect("child").wake_target,
        None,
        "nothing inherited"
    );
    let kept = answers(terminal(&p, "kept").await);
    assert_eq!(
        kept,
        vec![
            json!("ok"),
            refused("s2", "s1"),
            refused("s2", "s1"),
            json!("ok"),
            refused("s3", "s1")
        ]
    );
    assert_eq!(p.get("kept/1").await.expect("child").wake_target, Some(s1.clone()));
    let orphan = answers(terminal(&p, "orphan").await);
    assert_eq!(orphan[3], json!("ok"));
    for k in [0, 1, 2, 4] {
        assert_eq!(orphan[k][0], json!("invalid_request"), "{k}: {orphan:?}");
        assert!(
            orphan[k][1].as_str().expect("message").contains("no session holds"),
            "{k}: {orphan:?}"
        );
    }
    p.shutdown().await;
    front.shutdown().await;
}

/// A deleted session's grants are not made again: a process it started,
/// orphaned by the delete, has its later children granted to none (not
/// back to the session).
pub async fn a_deleted_sessions_process_has_its_children_granted_to_none(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let s1 = cairn_core::SessionScope::session("s1");
    let front = cairn_core::Processes::builder(store.registry.clone())
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let mut req = StartRequest::tool("left", "fan_out", json!({"n": 1}), Disposition::Rerunnable)
        .with_grant(s1.clone(), Default::default());
    req.originator = cairn_core::Originator::session(s1.clone());
    front.start(req).await.expect("start");
    let report = front.delete_session("s1").await.expect("delete");
    assert_eq!(report.orphaned, vec!["left".to_string()]);
    let p = runtime(&store, "w1", vec![Arc::new(FanOut::default())]);
    p.await_event("left", "process.waiting", 0, WAIT)
        .await
        .expect("waiting on its child");
    let child = p.get("left/1").await.expect("child");
    assert_eq!(child.provenance.originator, cairn_core::Originator::session(s1.clone()));
    assert!(
        p.grants_of("left/1").await.expect("grants").is_empty(),
        "the deleted session was granted the child"
    );
    let all = ProcessFilter::from_json(json!({"status": "any"})).expect("filter");
    assert!(p.list_granted_to(&s1, &all).await.expect("list").items.is_empty());
    p.signal("left/1", "go", "g1", json!({"v": 3})).await.expect("signal");
    let parent = terminal(&p, "left").await;
    assert_eq!(parent.outcome, Some(Outcome::success(json!({"sum": 3}))));
    p.shutdown().await;
    front.shutdown().await;
}

/// A parent transferred while its run is starting a child (after the run
/// built the start, before the write) has the child granted to its new
/// holder: the holders are read in the transaction that writes the child.
pub async fn a_parent_transferred_as_its_child_starts_gives_the_child_to_its_new_holder(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (s1, s2) = (
        cairn_core::SessionScope::session("s1"),
        cairn_core::SessionScope::session("s2"),
    );
    let front = cairn_core::Processes::builder(store.registry.clone())
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let mut req = StartRequest::tool("moving", "fan_out", json!({"n": 1}), Disposition::Rerunnable)
        .with_grant(s1.clone(), Default::default());
    req.originator = cairn_core::Originator::session(s1.clone());
    front.start(req).await.expect("start");
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let (moved_tx, moved_rx) = tokio::sync::oneshot::channel();
    {
        let (front, s1, s2) = (front.clone(), s1.clone(), s2.clone());
        probe.before_next_child_registration(Box::new(move || {
            Box::pin(async move {
                let report = front
                    .transfer(&s1, &s2, &["moving".to_string()])
                    .await
                    .expect("transfer");
                let _ = moved_tx.send(report.moved);
            })
        }));
    }
    let p = Processes::builder(probe.clone())
        .tools(crate::execution::tools(vec![Arc::new(FanOut::default())]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(crate::execution::config("w1"))
        .start();
    let moved = tokio::time::timeout(WAIT, moved_rx)
        .await
        .expect("the child's start reached the store")
        .expect("transferred");
    assert_eq!(moved, vec!["moving".to_string()]);
    p.await_event("moving", "process.waiting", 0, WAIT)
        .await
        .expect("waiting on its child");
    let holders: Vec<_> = p
        .grants_of("moving/1")
        .await
        .expect("grants")
        .into_iter()
        .map(|g| g.scope)
        .collect();
    assert_eq!(
        holders,
        vec![s2],
        "the child goes where the parent is held when it is written"
    );
    p.shutdown().await;
    front.shutdown().await;
}

/// Starts a `child_tool` child `{id}/1`, then waits for the signal `go`.
struct StartThenWait;

#[async_trait]
impl Tool for StartThenWait {
    fn name(&self) -> &str {
        "start_then_wait"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        let id = format!("{}/1", ctx.process_id());
        let child = StartRequest::tool(&id, "child_tool", json!({}), Disposition::Rerunnable);
        if let Err(e) = ctx.start_child(child).await {
            return Outcome::failure("test", e.code(), e.to_string());
        }
        match ctx.wait_signal("go", None).await {
            Ok(_) => Outcome::success(json!(id)),
            Err(e) => Outcome::failure("test", e.code(), e.to_string()),
        }
    }
}

/// Runs until stopped.
struct ChildTool;

#[async_trait]
impl Tool for ChildTool {
    fn name(&self) -> &str {
        "child_tool"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        ctx.stopped().await;
        ctx.stopped_outcome()
    }
}

/// A re-run's start of a child its parent already started answers the
/// stored child, even when the start's checks would refuse it now (here: the
/// runtime that re-runs the parent no longer has the child's tool, as after
/// an upgrade): the child that may have run stands, and the parent goes on.
pub async fn a_rerun_finds_its_child_though_its_start_would_now_be_refused(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let before = Processes::builder(store.registry.clone())
        .tools(crate::execution::tools(vec![
            Arc::new(StartThenWait),
            Arc::new(ChildTool),
        ]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(crate::execution::config("w1"))
        .start();
    before
        .start(StartRequest::tool(
            "upgraded",
            "start_then_wait",
            json!({}),
            Disposition::Rerunnable,
        ))
        .await
        .expect("start");
    before
        .await_event("upgraded", "process.waiting", 0, WAIT)
        .await
        .expect("waiting for its signal");
    assert!(before.get("upgraded/1").await.is_ok(), "the child was started");
    before.shutdown().await;
    // The runtime after the upgrade has no `child_tool`.
    let after = Processes::builder(store.registry.clone())
        .tools(crate::execution::tools(vec![Arc::new(StartThenWait)]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(crate::execution::config("w2"))
        .start();
    after.signal("upgraded", "go", "g1", json!({})).await.expect("signal");
    let r = terminal(&after, "upgraded").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!("upgraded/1"))), "{r:?}");
    after.shutdown().await;
}

/// A child id another registration took (a host's start under it, naming
/// the parent) is refused to the parent's start of its own child: the
/// parent does not take that process's outcome for the work it asked for.
pub async fn a_child_id_another_registration_took_is_refused_to_the_parent(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let front = Processes::builder(store.registry.clone())
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    front
        .start(StartRequest::tool(
            "taken",
            "wait_one_child",
            json!({"timeout_ms": 60_000}),
            Disposition::Rerunnable,
        ))
        .await
        .expect("start the parent");
    let mut other = StartRequest::tool(
        "taken/1",
        "echo",
        json!({"value": "not the child"}),
        Disposition::Rerunnable,
    );
    other.caused_by = Some(cairn_core::CausalRef::process("taken"));
    front.start(other).await.expect("the host starts under the child's id");
    let p = Processes::builder(store.registry.clone())
        .tools(crate::execution::tools(vec![Arc::new(WaitOneChild)]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(crate::execution::config("w1"))
        .start();
    let r = terminal(&p, "taken").await;
    match &r.outcome {
        Some(Outcome::Failure { code, .. }) => assert_eq!(code, "registration_conflict", "{r:?}"),
        other => panic!("the parent's start of its child was refused: {other:?}"),
    }
    p.shutdown().await;
}

/// Starts an externally owned child `{id}/1` and waits for it at most
/// `timeout_ms`: succeeds `"children"` when the wait is answered with the
/// child, `"timed_out"` when it timed out.
struct WaitOneChild;

#[async_trait]
impl Tool for WaitOneChild {
    fn name(&self) -> &str {
        "wait_one_child"
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        let id = format!("{}/1", ctx.process_id());
        if let Err(e) = ctx.start_child(StartRequest::external(&id, json!({}))).await {
            return Outcome::failure("test", e.code(), e.to_string());
        }
        let timeout = std::time::Duration::from_millis(args["timeout_ms"].as_u64().unwrap_or(300));
        match ctx.wait_children(&[id], ChildrenMode::All, Some(timeout)).await {
            Ok(Some(_)) => Outcome::success(json!("children")),
            Ok(None) => Outcome::success(json!("timed_out")),
            Err(e) => Outcome::failure("test", e.code(), e.to_string()),
        }
    }
}

/// An owner-bound wait for a child that ends only after the wait's deadline
/// times out, even when the run reads the child's end before it records the
/// timeout (its store slow to answer): as a suspended parent's wait would,
/// whose deadline takes no later end.
pub async fn an_owner_bound_wait_for_a_child_that_ends_late_times_out(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let p = Processes::builder(probe.clone())
        .tools(crate::execution::tools(vec![Arc::new(WaitOneChild)]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(crate::execution::config("w1"))
        .start();
    p.start(StartRequest::tool(
        "late",
        "wait_one_child",
        json!({"timeout_ms": 300}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    p.await_event("late", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    let mut held = probe.held_log_reads();
    probe.hold_log_reads(true);
    store.clock.advance(301);
    // The run's read once its 300 ms have passed waits; then the child ends.
    tokio::time::timeout(WAIT, held.wait_for(|n| *n >= 1))
        .await
        .expect("the run read the log again")
        .expect("probe");
    p.complete_external("late/1", Outcome::success(json!(1)), "test")
        .await
        .expect("complete the child");
    probe.hold_log_reads(false);
    let r = terminal(&p, "late").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!("timed_out"))), "{r:?}");
    let resumed: Vec<Value> = p
        .events("late", 0, Some(1000))
        .await
        .expect("events")
        .events
        .into_iter()
        .filter(|e| e.event_type == "process.resumed")
        .map(|e| e.payload["reason"].clone())
        .collect();
    assert_eq!(resumed, [json!("timed_out")]);
    p.shutdown().await;
}

/// An event sink that writes down `id#sequence` of what it is given.
struct Sequences(Arc<Mutex<Vec<String>>>);

impl cairn_core::EventSink for Sequences {
    fn deliver(&self, event: &cairn_core::ProcessEvent) {
        self.0.lock().push(format!("{}#{}", event.process_id, event.sequence));
    }
}

/// The event sink receives the parent's `process.resumed` that its last
/// child's end wrote in the same write, once: a host projecting the sink sees
/// the parent's whole log, not `waiting` then `started` with a gap.
pub async fn the_sink_receives_the_wake_a_childs_end_wrote(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let p = Processes::builder(store.registry.clone())
        .tools(crate::execution::tools(vec![Arc::new(FanOut::default())]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(crate::execution::config("w1"))
        .event_sink(Arc::new(Sequences(seen.clone())))
        .start();
    p.start(StartRequest::tool(
        "fan",
        "fan_out",
        json!({"n": 2}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("fan", "process.waiting", 0, WAIT).await.expect("waiting");
    for k in 1..=2 {
        p.signal(&format!("fan/{k}"), "go", "g", json!({"v": k}))
            .await
            .expect("signal");
    }
    let r = terminal(&p, "fan").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"sum": 3}))), "{r:?}");
    let expected: Vec<String> = (1..=r.last_sequence).map(|s| format!("fan#{s}")).collect();
    let parents = || -> Vec<String> {
        let mut sunk: Vec<String> = seen.lock().iter().filter(|s| s.starts_with("fan#")).cloned().collect();
        sunk.sort_by_key(|s| s[4..].parse::<u64>().unwrap_or(0));
        sunk
    };
    tokio::time::timeout(WAIT, async {
        while parents() != expected {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the sink saw {:?}, expected {expected:?}", parents()));
    p.shutdown().await;
}

/// A cancel of a parent suspended on a child nobody started ends the child
/// at once, and the child's end wakes the parent in the same write: the sink
/// receives the parent's wake once, though the cancel's own events and the
/// child's end both bring it.
pub async fn a_wake_a_cancel_wrote_is_sunk_once(factory: &dyn StoreFactory) {
    let h = crate::Harness::new(factory).await;
    let registry = h.registry();
    registry
        .register(crate::builders::rerunnable("cp"), None)
        .await
        .expect("register the parent");
    let mut kid = crate::builders::rerunnable("cp/1");
    kid.provenance.caused_by = Some(cairn_core::CausalRef::process("cp"));
    registry.register(kid, None).await.expect("register the child");
    let (lease, rec) = h.claim_started("cp", "w1", 30_000).await;
    let wait = cairn_core::model::WaitRequest::children(vec!["cp/1".into()], ChildrenMode::All, 1, None);
    assert!(
        registry.wait(&lease, wait, rec.last_sequence).await.expect("wait"),
        "suspended on its child"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let p = Processes::builder(h.shared())
        .clock(Arc::new(h.clock().clone()))
        .without_worker()
        .event_sink(Arc::new(Sequences(seen.clone())))
        .start();
    p.cancel("cp", None).await.expect("cancel");
    let (parent, kid) = (p.get("cp").await.expect("get"), p.get("cp/1").await.expect("get"));
    assert!(kid.is_terminal(), "the child ended at once: {kid:?}");
    let last = [
        format!("cp#{}", parent.last_sequence),
        format!("cp/1#{}", kid.last_sequence),
    ];
    tokio::time::timeout(WAIT, async {
        while !last.iter().all(|l| seen.lock().contains(l)) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the sink saw {:?}", seen.lock()));
    let mut sunk = seen.lock().clone();
    let all = sunk.len();
    sunk.sort();
    sunk.dedup();
    assert_eq!(sunk.len(), all, "an event sunk twice: {:?}", seen.lock());
    p.shutdown().await;
}

/// Waits for signal `a` with no time at all (it times out), then suspends
/// for `b`; answers whether `a` timed out and what `b` carried.
struct TimedOutThenWaits;

#[async_trait]
impl Tool for TimedOutThenWaits {
    fn name(&self) -> &str {
        "timed_out_then_waits"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        let a = match ctx.wait_signal("a", Some(std::time::Duration::ZERO)).await {
            Ok(a) => a,
            Err(e) => return Outcome::failure("test", e.code(), e.to_string()),
        };
        match ctx.wait_signal("b", None).await {
            Ok(b) => Outcome::success(json!({"a_timed_out": a.is_none(), "b": b})),
            Err(e) => Outcome::failure("test", e.code(), e.to_string()),
        }
    }
}

/// A wait that timed out before it was ever recorded is recorded as timed
/// out all the same, so the run resumed later (after `a` came too) takes
/// the path the first run took.
pub async fn a_wait_that_timed_out_unrecorded_replays_as_timed_out(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![Arc::new(TimedOutThenWaits)]);
    p.start(StartRequest::tool(
        "tw",
        "timed_out_then_waits",
        json!({}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("tw", "process.waiting", 0, WAIT)
        .await
        .expect("waits for b");
    p.signal("tw", "a", "a1", json!("late")).await.expect("signal a");
    p.signal("tw", "b", "b1", json!("B")).await.expect("signal b");
    let r = terminal(&p, "tw").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::success(json!({"a_timed_out": true, "b": "B"}))),
        "{r:?}"
    );
    let log = p.events("tw", 0, Some(100)).await.expect("events").events;
    let timed_out = log
        .iter()
        .filter(|e| e.event_type == "process.resumed" && e.payload["reason"] == "timed_out")
        .count();
    assert_eq!(timed_out, 1, "{log:?}");
    p.shutdown().await;
}
