//! The execution suite: worker, recovery, awaiter and built-in tools, through
//! the public API, against any backend. Each function takes a store factory.
//!
//! Why one file past 800 lines: each function is one self-contained scenario
//! sharing the few tools and helpers at the top, and the suite macro's
//! completeness test reads the scenarios from this one file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::async_trait;
use cairn_core::{
    AbandonWriter, AppendRequest, Awaiter, Backoff, CairnError, Disposition, EventType, ManualClock, Outcome,
    ProcessFilter, ProcessRecord, ProcessStatus, Processes, StartRequest, StatusFilter, Tool, ToolContext,
    ToolRegistry, Watermark, Worker, WorkerConfig,
};
use cairn_tools::{builtin_tools, stopped_outcome, ShellTool};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::{StoreFactory, TestStore};

pub use crate::execution_children::*;
pub use crate::scheduled::*;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Counts runs per process id; succeeds with the count.
#[derive(Default, Clone)]
pub struct CountingTool {
    pub runs: Arc<Mutex<HashMap<String, u64>>>,
}

#[async_trait]
impl Tool for CountingTool {
    fn name(&self) -> &str {
        "count"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        let n = {
            let mut runs = self.runs.lock();
            let n = runs.entry(ctx.process_id().to_string()).or_default();
            *n += 1;
            *n
        };
        Outcome::success(json!({ "runs": n }))
    }
}

/// A [`CountingTool`] named `count` whose runs each wait until runs of `owners`
/// distinct lease owners have begun: with one worker stalled, the processes
/// can only finish once the other worker runs some of them too.
#[derive(Clone)]
struct MeetingTool {
    counter: CountingTool,
    owners: usize,
    seen: Arc<Mutex<std::collections::BTreeSet<String>>>,
    met: Arc<tokio::sync::watch::Sender<bool>>,
}

impl MeetingTool {
    fn new(counter: CountingTool, owners: usize) -> Self {
        Self {
            counter,
            owners,
            seen: Arc::default(),
            met: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

#[async_trait]
impl Tool for MeetingTool {
    fn name(&self) -> &str {
        "count"
    }

    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome {
        let mut met = self.met.subscribe();
        let all_seen = {
            let mut seen = self.seen.lock();
            seen.insert(ctx.lease().owner_id.clone());
            seen.len() >= self.owners
        };
        if all_seen {
            self.met.send_replace(true);
        }
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = met.wait_for(|m| *m).await;
        self.counter.run(ctx, args).await
    }
}

/// Blocks until stopped (`finish: false`), or succeeds at once (`finish: true`).
pub struct BlockTool {
    pub finish: bool,
}

#[async_trait]
impl Tool for BlockTool {
    fn name(&self) -> &str {
        "block"
    }

    async fn run(&self, ctx: ToolContext, _args: Value) -> Outcome {
        if self.finish {
            return Outcome::success(json!({"attempt": ctx.attempt()}));
        }
        ctx.stopped().await;
        stopped_outcome(&ctx)
    }
}

pub(crate) fn tools(extra: Vec<Arc<dyn Tool>>) -> ToolRegistry {
    let mut t = builtin_tools(false);
    t.register(Arc::new(ShellTool::default()));
    for tool in extra {
        t.register(tool);
    }
    t
}

/// One slot, claim batches of one, owner `w1`.
fn one_slot() -> WorkerConfig {
    WorkerConfig {
        concurrency: 1,
        batch_size: 1,
        ..config("w1")
    }
}

pub(crate) fn config(owner: &str) -> WorkerConfig {
    WorkerConfig {
        owner_id: owner.to_string(),
        node_id: None,
        lease_ttl: Duration::from_secs(30),
        concurrency: 16,
        batch_size: 16,
        sweep_interval: Duration::from_millis(200),
        stop_grace: Duration::from_secs(5),
    }
}

pub(crate) fn runtime(store: &TestStore, owner: &str, extra: Vec<Arc<dyn Tool>>) -> Processes {
    Processes::builder(store.registry.clone())
        .tools(tools(extra))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config(owner))
        .start()
}

/// A runtime of the built-in tools whose worker runs with `config`.
fn runtime_with(store: &TestStore, config: WorkerConfig) -> Processes {
    Processes::builder(store.registry.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config)
        .start()
}

/// A runtime whose worker runs with `config`, over a [`crate::probe::ReadProbe`]
/// of the store's registry, so a test sees and steps into its claims.
fn probed_runtime(store: &TestStore, config: WorkerConfig) -> (Arc<crate::probe::ReadProbe>, Processes) {
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let p = Processes::builder(probe.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config)
        .start();
    (probe, p)
}

/// A worker without a driver loop, driven by hand.
fn manual_worker(store: &TestStore, owner: &str, extra: Vec<Arc<dyn Tool>>) -> Arc<Worker> {
    let awaiter = Awaiter::new(store.registry.clone(), None);
    Worker::new(
        store.registry.clone(),
        tools(extra),
        awaiter,
        None,
        Arc::new(store.clock.clone()),
        config(owner),
    )
}

pub(crate) async fn terminal(p: &Processes, id: &str) -> ProcessRecord {
    let r = p.await_output(id, WAIT).await.expect("await");
    assert!(r.is_terminal(), "process {id} did not end within {WAIT:?}: {r:?}");
    r
}

/// Every line of `id`'s `shell.output` events, in log order.
async fn output_lines(p: &Processes, id: &str) -> Vec<Value> {
    p.events(id, 0, Some(1000))
        .await
        .expect("events")
        .events
        .iter()
        .filter(|e| e.event_type == "shell.output")
        .flat_map(|e| e.payload["lines"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn shell(id: &str, args: Value) -> StartRequest {
    StartRequest::tool(id, "shell", args, Disposition::Rerunnable)
}

/// Output lines arrive in order as `shell.output` events; success carries exit code 0.
pub async fn shell_output_in_order_and_exit_code(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(shell(
        "sh-1",
        json!({"command": "for i in 1 2 3 4 5; do echo line$i; done"}),
    ))
    .await
    .expect("start");
    let r = terminal(&p, "sh-1").await;
    assert_eq!(r.status, ProcessStatus::Completed);
    match r.outcome {
        Some(Outcome::Success { value }) => assert_eq!(value["exit_code"], 0),
        other => panic!("unexpected outcome {other:?}"),
    }
    let events = p.events("sh-1", 0, Some(1000)).await.expect("events").events;
    let lines: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "shell.output" && e.payload["stream"] == "stdout")
        .flat_map(|e| e.payload["lines"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    assert_eq!(lines, vec!["line1", "line2", "line3", "line4", "line5"]);
    crate::assert_fold(p.registry().as_ref(), "sh-1").await;
    p.shutdown().await;
}

/// What a command wrote before it exited is read to its end even when the
/// store takes its time over each append: the end of a build log, where its
/// errors are, is not cut off (before, reading stopped 250 ms after the
/// exit, appends included).
pub async fn a_shell_commands_last_lines_survive_slow_appends(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    probe.slow_appends(Duration::from_millis(3));
    p.start(shell("sh-long", json!({"command": "seq 1 30000; echo END"})))
        .await
        .expect("start");
    let r = terminal(&p, "sh-long").await;
    let Some(Outcome::Success { value }) = &r.outcome else {
        panic!("{r:?}")
    };
    assert!(
        value["stdout_tail"]
            .as_str()
            .is_some_and(|t| t.ends_with("END") || t.ends_with("END\n")),
        "{value}"
    );
    let mut lines = Vec::new();
    let mut after = 0;
    loop {
        let page = p.events("sh-long", after, Some(1000)).await.expect("events");
        for e in &page.events {
            if e.event_type == "shell.output" && e.payload["stream"] == "stdout" {
                lines.extend(e.payload["lines"].as_array().cloned().unwrap_or_default());
            }
        }
        match page.next_after {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(lines.len(), 30_001, "every line, the last included");
    assert_eq!(lines.last(), Some(&json!("END")));
    p.shutdown().await;
}

/// A shell output batch whose append the store fails is tried again while
/// the lease holds: no line is lost to a passing fault.
pub async fn a_shell_output_append_the_store_fails_is_tried_again(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    probe.fail_next_appends(1);
    p.start(shell("sh-retried", json!({"command": "echo a; echo b"})))
        .await
        .expect("start");
    let r = terminal(&p, "sh-retried").await;
    assert!(matches!(r.outcome, Some(Outcome::Success { .. })), "{r:?}");
    let lines = output_lines(&p, "sh-retried").await;
    assert_eq!(lines, [json!("a"), json!("b")], "each line once");
    p.shutdown().await;
}

/// A shell output batch whose append is still in flight when the command's
/// timeout passes is appended all the same: the failed run's log holds every
/// line its tail shows (before, the cut-off append took its batch with it).
pub async fn a_shell_batch_cut_off_by_its_timeout_is_still_appended(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    // The first batch is handed to the store 50 ms in; its append answers
    // a second later, long after the 300 ms timeout.
    probe.slow_appends(Duration::from_secs(1));
    p.start(shell(
        "sh-cut",
        json!({"command": "echo a; exec sleep 30", "timeout_ms": 300}),
    ))
    .await
    .expect("start");
    let r = terminal(&p, "sh-cut").await;
    let Some(Outcome::Failure { code, raw, .. }) = &r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(code, "timeout", "{r:?}");
    assert_eq!(
        raw.as_ref().map(|v| v["stdout_tail"].clone()),
        Some(json!("a\n")),
        "{r:?}"
    );
    let lines = output_lines(&p, "sh-cut").await;
    assert_eq!(lines, [json!("a")], "the line is in the log, once");
    p.shutdown().await;
}

/// A failing command ends `failed` with code `exit_status`.
pub async fn shell_failure_is_exit_status(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(shell("sh-fail", json!({"argv": ["sh", "-c", "exit 7"]})))
        .await
        .expect("start");
    let r = terminal(&p, "sh-fail").await;
    assert_eq!(r.status, ProcessStatus::Failed);
    match r.outcome {
        Some(Outcome::Failure { code, raw, .. }) => {
            assert_eq!(code, "exit_status");
            assert_eq!(raw.expect("raw")["exit_code"], 7);
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    p.shutdown().await;
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Cancelling a running shell ends it `cancelled` and its child is gone.
pub async fn cancel_running_shell_kills_child(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(shell("sh-cancel", json!({"command": "echo pid $$; exec sleep 1000"})))
        .await
        .expect("start");
    let ev = p
        .await_event("sh-cancel", "shell.output", 0, WAIT)
        .await
        .expect("output");
    let line = ev.payload["lines"][0].as_str().expect("line").to_string();
    let pid: i32 = line.trim_start_matches("pid ").parse().expect("pid");
    assert!(pid_alive(pid), "child should be running before cancel");
    p.cancel("sh-cancel", Some("stop it".into())).await.expect("cancel");
    let r = terminal(&p, "sh-cancel").await;
    assert_eq!(r.status, ProcessStatus::Cancelled);
    let mut gone = false;
    for _ in 0..200 {
        if !pid_alive(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "child pid {pid} still exists after cancellation");
    p.shutdown().await;
}

/// A type a process's own tool declares is written by its run: an append of
/// `shell.output` to a shell call cairn runs, without the run's lease, is
/// refused and writes nothing (it would be taken for the command's output),
/// while a type its producer declared beside the tool's is appended.
pub async fn a_tools_own_event_types_are_written_only_by_its_run(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(shell("sh-own", json!({"command": "echo ready; exec sleep 1000"})))
        .await
        .expect("start");
    p.await_event("sh-own", "shell.output", 0, WAIT).await.expect("output");
    let before = p.get("sh-own").await.expect("get");
    let forged = AppendRequest::new("shell.output", json!({"stream": "stdout", "lines": ["all good"]}));
    let err = p.append_event("sh-own", forged.clone()).await.expect_err("refused");
    assert!(matches!(err, CairnError::ReservedEventType(_)), "{err:?}");
    assert_eq!(p.get("sh-own").await.expect("get").last_sequence, before.last_sequence);
    p.cancel("sh-own", None).await.expect("cancel");
    assert_eq!(terminal(&p, "sh-own").await.status, ProcessStatus::Cancelled);

    // A type the producer declares beside the tool's stays the producer's.
    p.start(
        shell("sh-note", json!({"command": "exec sleep 1000"}))
            .with_event_type(EventType::plain("note").with_schema(json!({"type": "object"}))),
    )
    .await
    .expect("start");
    let note = p
        .append_event("sh-note", AppendRequest::new("note", json!({"by": "host"})))
        .await
        .expect("the producer appends its own type");
    assert_eq!(note.event.event_type, "note");
    let err = p.append_event("sh-note", forged).await.expect_err("refused");
    assert!(matches!(err, CairnError::ReservedEventType(_)), "{err:?}");
    p.cancel("sh-note", None).await.expect("cancel");
    terminal(&p, "sh-note").await;
    p.shutdown().await;
}

/// A start whose caller goes once its claiming write is under way (a
/// timeout, a client that hung up) still runs what it claimed: an
/// owner-bound process claimed and `started` that nobody ran could never be
/// run again.
pub async fn a_start_whose_caller_goes_still_runs_what_it_claimed(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    let (entered_tx, mut entered) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    probe.after_next_register_claimed(Box::new(move || {
        Box::pin(async move {
            let _ = entered_tx.send(());
            held.notified().await;
        })
    }));
    // A start claims only into an idle slot with no drive under way: the
    // first starts may be registered for the driver instead.
    let mut left = None;
    for i in 0..10 {
        let id = format!("left-{i}");
        let starter = p.clone();
        let start = StartRequest::tool(&id, "echo", json!({"value": i}), Disposition::OwnerBound);
        let mut caller = tokio::spawn(async move { starter.start(start).await });
        tokio::select! {
            _ = &mut entered => {
                caller.abort();
                assert!((&mut caller).await.is_err_and(|e| e.is_cancelled()), "the caller went");
                left = Some((id, i));
                break;
            }
            done = &mut caller => {
                done.expect("join").expect("start");
                assert_eq!(terminal(&p, &id).await.status, ProcessStatus::Completed);
            }
        }
    }
    let (id, i) = left.expect("no start claimed its process in its own write in 10 attempts");
    release.notify_one();
    let r = terminal(&p, &id).await;
    assert_eq!(r.outcome, Some(Outcome::success(json!(i))), "{r:?}");
    p.shutdown().await;
}

/// An owner-bound start that claimed its process for this node in its own
/// write, and whose answer was lost, never runs it (the claim never reached
/// the worker): its owner files the abandon request once the store answers,
/// and the process ends `abandoned` when the lease lapses, instead of
/// staying `running` until the node restarts; a first read that finds
/// nothing (a commit still finishing) is asked again.
pub async fn an_owner_bound_start_whose_answer_was_lost_is_abandoned(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    probe.lose_next_claimed_start_answers(1);
    // Its first reads find nothing yet, as a commit still finishing.
    probe.hide_lost_starts_from_next_gets(2);
    // A start claims only into an idle slot with no drive under way: the
    // first starts may be registered for the driver instead.
    let mut lost = None;
    for i in 0..10 {
        let id = format!("lost-{i}");
        let start = StartRequest::tool(&id, "echo", json!({"value": i}), Disposition::OwnerBound);
        match p.start(start).await {
            Ok(_) => {
                assert_eq!(terminal(&p, &id).await.status, ProcessStatus::Completed);
            }
            Err(e) => {
                assert_eq!(e.code(), "outcome_unknown", "{e}");
                lost = Some(id);
                break;
            }
        }
    }
    let id = lost.expect("no start claimed its process in its own write in 10 attempts");
    let awaiter = Awaiter::new(store.registry.clone(), None);
    let request = tokio::time::timeout(WAIT, awaiter.await_event(&id, "process.abandon_requested", 0))
        .await
        .expect("the owner requested the abandonment in time")
        .expect("await");
    assert_eq!(request.payload["requested_by"], p.worker().expect("worker").owner_id());
    store.clock.advance(config("w1").lease_ttl.as_millis() as u64 + 1);
    p.worker().expect("worker").drive_once().await.expect("drive");
    let r = terminal(&p, &id).await;
    assert_eq!(r.status, ProcessStatus::Abandoned, "{r:?}");
    p.shutdown().await;
}

/// A start refused for its own content stores nothing, not even the env it
/// names (envs are content-addressed and never pruned).
pub async fn a_refused_start_stores_no_env(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone()).without_worker().start();
    let env = cairn_core::EnvSpec {
        plugin_options: json!({"image": "refused"}),
        policy: json!({}),
    };
    let (env_ref, _) = cairn_core::validate::env_ref_and_bytes(&env).expect("env ref");
    let refused = StartRequest::tool("env-refused", "sleep", json!({"ms": 1}), Disposition::Rerunnable)
        .with_env(env.clone())
        .with_event_type(EventType::plain("process.mine"));
    let err = p.start(refused).await.expect_err("a reserved type is refused");
    assert!(matches!(err, CairnError::ReservedEventType(_)), "{err:?}");
    // A grant to a scope that is no scope.
    let mut badly_granted =
        StartRequest::tool("env-refused", "sleep", json!({"ms": 1}), Disposition::Rerunnable).with_env(env.clone());
    badly_granted.grant = Some(cairn_core::StartGrant {
        session_scope: cairn_core::SessionScope::session(""),
        descriptor: cairn_core::GrantDescriptor::default(),
    });
    let err = p
        .start(badly_granted)
        .await
        .expect_err("an empty session id is refused");
    assert!(matches!(err, CairnError::InvalidId(_)), "{err:?}");
    let err = p.registry().get_env(&env_ref).await.expect_err("no env stored");
    assert_eq!(err.code(), "unknown_env", "{err:?}");
    let started = p
        .start(StartRequest::tool("env-ok", "sleep", json!({"ms": 1}), Disposition::Rerunnable).with_env(env))
        .await
        .expect("start");
    assert_eq!(started.process.env_ref.as_deref(), Some(env_ref.as_str()));
    p.shutdown().await;
}

/// Cancelling a process nobody started ends it `cancelled` at once.
pub async fn cancel_before_start_is_immediate(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone()).without_worker().start();
    p.start(StartRequest::tool(
        "never-run",
        "sleep",
        json!({"ms": 1}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    let r = p
        .cancel("never-run", Some("changed my mind".into()))
        .await
        .expect("cancel");
    assert_eq!(r.status, ProcessStatus::Cancelled);
    assert!(r.started.is_none());
    crate::assert_fold(p.registry().as_ref(), "never-run").await;
}

/// `wait_signal` shows `waiting`; a signal resumes it with the payload; a repeated signal id appends nothing.
pub async fn wait_signal_resumes_with_payload(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(StartRequest::tool(
        "ws",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("ws", "process.waiting", 0, WAIT).await.expect("waiting");
    let waiting = p
        .list(&ProcessFilter {
            waiting: Some(true),
            ..ProcessFilter::running()
        })
        .await
        .expect("list");
    assert!(waiting.items.iter().any(|r| r.id == "ws"), "record shows waiting");
    let rec = p.get("ws").await.expect("get");
    assert_eq!(rec.wait.as_ref().and_then(|w| w.name.clone()).as_deref(), Some("go"));
    let first = p
        .signal("ws", "go", "sig-1", json!({"answer": 42}))
        .await
        .expect("signal");
    let again = p
        .signal("ws", "go", "sig-1", json!({"answer": 42}))
        .await
        .expect("signal again");
    assert_eq!(first, again, "a repeated signal id returns the same event");
    // A signal id is at most 256 bytes less its name's share of the replay
    // key; the refusal names that bound and the signal id, not the key.
    let room = cairn_core::validate::MAX_ID_BYTES - "signal:go:".len();
    // So at any length past it, the id's own limit included.
    for len in [room + 1, cairn_core::validate::MAX_ID_BYTES + 44] {
        let err = p
            .signal("ws", "go", &"i".repeat(len), json!(1))
            .await
            .expect_err("too long");
        assert_eq!(err.code(), "invalid_id");
        assert_eq!(
            err.to_string(),
            format!("invalid id: signal id is {len} bytes, over the {room} bytes a signal named `go` leaves of 256")
        );
    }
    // The bound the API's description states: 248 less the name's length.
    assert_eq!(room, 248 - "go".len());
    let r = terminal(&p, "ws").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"answer": 42}))));
    assert!(r.wait.is_none());
    let events = p.events("ws", 0, Some(1000)).await.expect("events").events;
    assert_eq!(events.iter().filter(|e| e.event_type == "signal.go").count(), 1);
    crate::assert_fold(p.registry().as_ref(), "ws").await;
    p.shutdown().await;
}

/// A signal as large and as deep as a payload may be is what `wait_signal`
/// returns: the envelope its process's outcome puts around it is not counted
/// against the limits the signal met (it failed the process).
pub async fn a_signal_at_the_payload_limits_is_returned(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    let big = json!("x".repeat(cairn_core::validate::MAX_PAYLOAD_BYTES - 2));
    let mut deep = json!(1);
    for _ in 0..cairn_core::validate::MAX_JSON_DEPTH {
        deep = json!([deep]);
    }
    for (id, payload) in [("ws-big", big), ("ws-deep", deep)] {
        p.start(StartRequest::tool(
            id,
            "wait_signal",
            json!({"name": "go"}),
            Disposition::Rerunnable,
        ))
        .await
        .expect("start");
        p.await_event(id, "process.waiting", 0, WAIT).await.expect("waiting");
        p.signal(id, "go", "s1", payload.clone())
            .await
            .expect("a signal at the limits");
        let r = terminal(&p, id).await;
        assert_eq!(
            r.status,
            ProcessStatus::Completed,
            "{id}: {:?}",
            r.outcome.as_ref().map(|o| o.state())
        );
        assert!(
            r.outcome == Some(Outcome::success(payload)),
            "{id}: the signal is its value"
        );
    }
    p.shutdown().await;
}

/// Recovery: a rerunnable process whose owner vanished re-runs after the lease expires.
pub async fn rerunnable_reruns_after_lease_expiry(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let p = Processes::builder(reg.clone()).without_worker().start();
    p.start(StartRequest::tool("re", "block", json!({}), Disposition::Rerunnable))
        .await
        .expect("start");
    // An owner claims and starts it, then is never heard from again.
    let claims = reg.claim_batch("dead-owner", 10_000, 10).await.expect("claim");
    assert_eq!(claims.len(), 1);
    let worker = manual_worker(&store, "w2", vec![Arc::new(BlockTool { finish: true })]);
    assert_eq!(
        worker.drive_once().await.expect("drive"),
        0,
        "live lease is not reclaimed"
    );
    store.clock.advance(10_001);
    assert_eq!(worker.drive_once().await.expect("drive"), 1);
    worker.wait_idle().await;
    let r = reg.get("re").await.expect("get");
    assert_eq!(r.status, ProcessStatus::Completed);
    assert_eq!(r.outcome, Some(Outcome::success(json!({"attempt": 2}))));
    assert!(reg.fencing_token("re").await.expect("fence") >= 2);
    crate::assert_fold(reg.as_ref(), "re").await;
}

/// Recovery: a started owner_bound process never re-runs; it becomes
/// `abandoned {reconciled_request}` only after an abandon request and a lapsed lease.
pub async fn owner_bound_started_is_never_rerun(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let p = Processes::builder(reg.clone()).without_worker().start();
    // `ob` runs the counting tool, which the second worker has: a re-run would count.
    p.start(StartRequest::tool("ob", "count", json!({}), Disposition::OwnerBound))
        .await
        .expect("start");
    let claims = reg.claim_batch("dead-owner", 10_000, 10).await.expect("claim");
    assert_eq!(claims.len(), 1);
    let counter = CountingTool::default();
    let worker = manual_worker(
        &store,
        "w2",
        vec![Arc::new(BlockTool { finish: true }), Arc::new(counter.clone())],
    );
    store.clock.advance(20_000);
    assert_eq!(
        worker.drive_once().await.expect("drive"),
        0,
        "started owner_bound is never claimed"
    );
    worker.wait_idle().await;
    assert_eq!(reg.get("ob").await.expect("get").status, ProcessStatus::Running);
    assert!(
        counter.runs.lock().is_empty(),
        "the started owner_bound process ran again"
    );

    // An abandon request while the lease is still live waits for the lease to lapse.
    p.start(StartRequest::tool("ob2", "block", json!({}), Disposition::OwnerBound))
        .await
        .expect("start");
    reg.claim_batch("dead-owner-2", 10_000, 10).await.expect("claim");
    p.request_abandon("ob2", "operator", "owner is gone")
        .await
        .expect("abandon");
    worker.drive_once().await.expect("drive");
    assert_eq!(reg.get("ob2").await.expect("get").status, ProcessStatus::Running);
    store.clock.advance(10_001);
    worker.drive_once().await.expect("drive");
    let r = reg.get("ob2").await.expect("get");
    assert_eq!(r.status, ProcessStatus::Abandoned);
    match r.outcome {
        Some(Outcome::Abandoned { evidence }) => {
            assert_eq!(evidence.writer, AbandonWriter::ReconciledRequest);
            assert_eq!(evidence.owner.map(|o| o.owner_id).as_deref(), Some("dead-owner-2"));
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    // Without an abandon request the first one stays running.
    worker.drive_once().await.expect("drive");
    assert_eq!(reg.get("ob").await.expect("get").status, ProcessStatus::Running);
    crate::assert_fold(reg.as_ref(), "ob").await;
    crate::assert_fold(reg.as_ref(), "ob2").await;
}

/// A burst of abandon requests is reconciled by one drive, page after
/// page, not one page per drive (the rest would wait for the sweep: no
/// notice wakes a driver once the requests' notices have been taken).
pub async fn a_burst_of_abandon_requests_is_reconciled_in_one_drive(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let p = Processes::builder(reg.clone()).without_worker().start();
    let ids: Vec<String> = (0..5).map(|i| format!("burst-{i}")).collect();
    for id in &ids {
        p.start(StartRequest::tool(id, "block", json!({}), Disposition::OwnerBound))
            .await
            .expect("start");
    }
    assert_eq!(
        reg.claim_batch("gone-owner", 1_000, 10).await.expect("claim").len(),
        ids.len()
    );
    for id in &ids {
        p.request_abandon(id, "operator", "owner is gone")
            .await
            .expect("abandon");
    }
    store.clock.advance(1_001);
    let worker = Worker::new(
        reg.clone(),
        tools(vec![Arc::new(BlockTool { finish: true })]),
        Awaiter::new(reg.clone(), None),
        None,
        Arc::new(store.clock.clone()),
        WorkerConfig {
            batch_size: 2,
            ..config("w2")
        },
    );
    worker.drive_once().await.expect("drive");
    for id in &ids {
        assert_eq!(reg.get(id).await.expect("get").status, ProcessStatus::Abandoned, "{id}");
    }
}

/// Recovery: externally owned work is never claimed and ends through external completion.
pub async fn externally_owned_is_never_claimed(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let p = runtime(&store, "w1", vec![]);
    p.start(StartRequest::external("ext", json!({"system": "ci"})))
        .await
        .expect("start");
    let worker = manual_worker(&store, "w2", vec![]);
    store.clock.advance(100_000);
    assert_eq!(worker.drive_once().await.expect("drive"), 0);
    let r = reg.get("ext").await.expect("get");
    assert!(r.started.is_none() && r.lease.is_none());
    let done = p
        .complete_external("ext", Outcome::success(json!({"ok": true})), "ci-system")
        .await
        .expect("complete");
    assert_eq!(done.status, ProcessStatus::Completed);
    crate::assert_fold(reg.as_ref(), "ext").await;
    p.shutdown().await;
}

/// A revenant worker holding a stale lease cannot write anything.
pub async fn revenant_worker_cannot_write(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let p = Processes::builder(reg.clone()).without_worker().start();
    p.start(StartRequest::tool("rev", "block", json!({}), Disposition::Rerunnable))
        .await
        .expect("start");
    let old = reg
        .claim_batch("old-owner", 5_000, 1)
        .await
        .expect("claim")
        .remove(0)
        .lease;
    store.clock.advance(5_001);
    let new = reg
        .claim_batch("new-owner", 5_000, 1)
        .await
        .expect("claim")
        .remove(0)
        .lease;
    assert!(new.fencing_token > old.fencing_token);
    let before = reg.get("rev").await.expect("get");
    assert_eq!(
        reg.complete(&old, Outcome::success(json!(1)))
            .await
            .map_err(|e| e.code()),
        Err("lease_fenced")
    );
    assert_eq!(reg.renew(&old, 5_000).await.map_err(|e| e.code()), Err("lease_fenced"));
    let seen = reg.get("rev").await.expect("get").last_sequence;
    assert_eq!(
        reg.wait(&old, cairn_core::WaitRequest::signal("go", 1, None), seen)
            .await
            .map_err(|e| e.code()),
        Err("lease_fenced"),
        "a revenant cannot suspend"
    );
    assert!(!reg.release(&old).await.expect("release"));
    let after = reg.get("rev").await.expect("get");
    assert_eq!(before, after, "the revenant wrote nothing");
    reg.complete(&new, Outcome::success(json!("new")))
        .await
        .expect("live owner completes");
    crate::assert_fold(reg.as_ref(), "rev").await;
}

/// A runtime started again as the same node (`node_id`) sweeps the
/// `owner_bound` run its earlier incarnation left: `abandoned {sweep}` naming
/// that incarnation, answered to awaiters, at once (the old lease is still
/// live). The earlier runtime, still alive here, is a revenant: it finds
/// itself superseded and claims nothing more, its drain's `owner_drain`
/// completion is fenced, and the log stays as the sweep left it.
pub async fn restarted_node_sweeps_its_earlier_incarnation(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let node = |owner: &str| WorkerConfig {
        node_id: Some("node-1".into()),
        ..config(owner)
    };
    let start = |owner: &str| {
        Processes::builder(reg.clone())
            .tools(tools(vec![Arc::new(BlockTool { finish: false })]))
            .clock(Arc::new(store.clock.clone()))
            .worker_config(node(owner))
            .start()
    };
    let first = start("ignored-1");
    first
        .start(StartRequest::tool("ob", "block", json!({}), Disposition::OwnerBound))
        .await
        .expect("start");
    first
        .await_event("ob", cairn_core::events::STARTED, 0, Duration::from_secs(10))
        .await
        .expect("started");
    let started = reg.get("ob").await.expect("get");
    assert_eq!(started.started.as_ref().map(|s| s.owner_id.as_str()), Some("node-1#1"));

    let second = start("ignored-2");
    let ended = second.await_output("ob", Duration::from_secs(10)).await.expect("await");
    assert_eq!(ended.status, ProcessStatus::Abandoned, "{ended:?}");
    match &ended.outcome {
        Some(Outcome::Abandoned { evidence }) => {
            assert_eq!(evidence.writer, AbandonWriter::Sweep);
            let owner = evidence.owner.as_ref().expect("owner");
            assert_eq!(owner.owner_id, "node-1#1");
            assert_eq!((owner.node.as_deref(), owner.incarnation), (Some("node-1"), Some(1)));
        }
        other => panic!("expected abandoned, got {other:?}"),
    }
    assert_eq!(
        second.worker().and_then(|w| w.identity()).map(|i| i.incarnation),
        Some(2)
    );

    // At its next sweep the earlier runtime finds a newer incarnation of its
    // node id: it claims nothing more, and says so for its host to stop.
    tokio::time::timeout(Duration::from_secs(10), first.superseded())
        .await
        .expect("the earlier runtime finds itself superseded");
    assert!(first.worker().is_some_and(|w| w.is_superseded() && w.is_draining()));
    assert!(second.worker().is_some_and(|w| !w.is_superseded()));
    first
        .start(StartRequest::tool("later", "block", json!({}), Disposition::Rerunnable))
        .await
        .expect("start through the earlier runtime");
    second
        .await_event("later", cairn_core::events::STARTED, 0, Duration::from_secs(10))
        .await
        .expect("the live runtime runs new work");
    let later = reg.get("later").await.expect("get");
    assert_eq!(later.started.as_ref().map(|s| s.owner_id.as_str()), Some("node-1#2"));

    first.shutdown().await;
    let after = reg.get("ob").await.expect("get");
    assert_eq!(after, ended, "the earlier incarnation wrote nothing after the sweep");
    crate::assert_fold(reg.as_ref(), "ob").await;
    second.shutdown().await;
}

/// A runtime whose node id a newer incarnation took finds out before its next
/// claim, not at its next sweep: once its last liveness check is a second old
/// (by its clock) it heartbeats before it claims, finds itself superseded and
/// claims nothing, so a start through it is run by the newer incarnation. No
/// sweep runs here (an hour apart) and no run of it is swept.
pub async fn an_earlier_incarnation_stops_claiming_before_its_next_sweep(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let first = Processes::builder(reg.clone())
        .tools(tools(vec![Arc::new(BlockTool { finish: true })]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(WorkerConfig {
            node_id: Some("node-1".into()),
            sweep_interval: Duration::from_secs(3_600),
            ..config("ignored")
        })
        .start();
    // Run one process through it, so its incarnation is registered (and its
    // liveness checked) before another runtime registers the next one.
    first
        .start(StartRequest::tool("early", "block", json!({}), Disposition::Rerunnable))
        .await
        .expect("start");
    let early = first
        .await_output("early", Duration::from_secs(10))
        .await
        .expect("await");
    assert_eq!(early.started.as_ref().map(|s| s.owner_id.as_str()), Some("node-1#1"));

    let newer = reg.register_node("node-1").await.expect("register");
    assert_eq!(newer.incarnation, 2);
    assert!(
        first.worker().is_some_and(|w| !w.is_superseded()),
        "nothing told the first yet"
    );

    store.clock.advance(1_000);
    first
        .start(StartRequest::tool("later", "block", json!({}), Disposition::Rerunnable))
        .await
        .expect("start through the earlier runtime");
    tokio::time::timeout(Duration::from_secs(10), first.superseded())
        .await
        .expect("the earlier runtime finds itself superseded before claiming");
    assert!(first.worker().is_some_and(|w| w.is_superseded() && w.is_draining()));
    let later = reg.get("later").await.expect("get");
    assert_eq!(later.status, ProcessStatus::Running, "{later:?}");
    assert!(
        later.started.is_none() && later.lease.is_none(),
        "nothing claimed it: {later:?}"
    );
    first.shutdown().await;
    assert_eq!(
        reg.get("later").await.expect("get"),
        later,
        "it is left for the newer incarnation"
    );
}

/// A `block` process `id`, started by a runtime without a worker, being run
/// by a worker of `owner` with a 90 ms lease that reaches the store through
/// `registry` (the store's, or a probe of it).
async fn a_blocked_run(
    store: &TestStore,
    id: &str,
    owner: &str,
    registry: Arc<dyn cairn_core::ProcessRegistry>,
) -> Arc<Worker> {
    a_blocked_run_as(store, id, owner, registry, Disposition::Rerunnable).await
}

async fn a_blocked_run_as(
    store: &TestStore,
    id: &str,
    owner: &str,
    registry: Arc<dyn cairn_core::ProcessRegistry>,
    disposition: Disposition,
) -> Arc<Worker> {
    let reg = store.registry.clone();
    let p = Processes::builder(reg.clone()).without_worker().start();
    p.start(StartRequest::tool(id, "block", json!({}), disposition))
        .await
        .expect("start");
    let mut cfg = config(owner);
    cfg.lease_ttl = Duration::from_millis(90);
    let worker = Worker::new(
        registry,
        tools(vec![Arc::new(BlockTool { finish: false })]),
        Awaiter::new(reg, None),
        None,
        Arc::new(store.clock.clone()),
        cfg,
    );
    assert_eq!(worker.drive_once().await.expect("drive"), 1);
    // The run has begun before a test moves the clock: a claim whose lease
    // lapsed before its run began would run nothing, and a test of the
    // run's lapse would test that instead.
    let began = async {
        while !worker.running().iter().any(|r| r == id) {
            // A bounded re-check: the run begins on a task of its own.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(WAIT, began).await.expect("the run began");
    worker
}

/// A worker whose lease is taken over stops its run and writes nothing more.
pub async fn worker_losing_lease_stops_run(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let reg = store.registry.clone();
    let worker = a_blocked_run(&store, "lost", "slow-owner", reg.clone()).await;
    store.clock.advance(1_000);
    let taken = reg.claim("lost", "thief", 60_000).await.expect("takeover");
    worker.wait_idle().await;
    let r = reg.get("lost").await.expect("get");
    assert_eq!(r.status, ProcessStatus::Running, "the stopped run wrote no terminal");
    assert_eq!(r.lease.as_ref().map(|l| l.owner_id.as_str()), Some("thief"));
    assert_eq!(r.lease.map(|l| l.fencing_token), Some(taken.fencing_token));
}

/// A run whose lease renewals fail (the store is out of reach of this node)
/// stops once the lease has lapsed by this node's clock, when a peer may take
/// the process: it does not go on beside a peer's run. It writes nothing.
pub async fn a_run_whose_renewals_fail_stops_when_its_lease_lapses(factory: &dyn StoreFactory) {
    cut_off_run_stops(factory, "cut-off", |probe| probe.fail_renewals(true)).await;
}

/// A run whose lease renewals never answer (a store connection gone silent)
/// stops once its lease has lapsed, as one whose renewals fail: a peer may
/// run the process by then.
pub async fn a_run_whose_renewals_hang_stops_when_its_lease_lapses(factory: &dyn StoreFactory) {
    cut_off_run_stops(factory, "hung", |probe| probe.hang_renewals(true)).await;
}

/// A blocked run `id` whose renewals `cut` cuts off stops once its lease has
/// lapsed by the node's clock, writing nothing.
async fn cut_off_run_stops(factory: &dyn StoreFactory, id: &str, cut: impl FnOnce(&crate::probe::ReadProbe)) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let worker = a_blocked_run(&store, id, &format!("{id}-owner"), probe.clone()).await;
    cut(&probe);
    store.clock.advance(1_000);
    tokio::time::timeout(WAIT, worker.wait_idle())
        .await
        .expect("the run stopped once its lease lapsed unrenewed");
    let r = store.registry.get(id).await.expect("get");
    assert_eq!(r.status, ProcessStatus::Running, "the stopped run wrote no terminal");
}

/// An owner-bound run stopped because its lease lapsed (the store out of
/// reach) can never run again and its outcome is lost: its owner files the
/// abandon request, and the process ends `abandoned` as a reconciled request
/// once the store answers, instead of staying `running` with nobody to end it.
pub async fn an_owner_bound_run_cut_off_from_the_store_is_abandoned(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let worker = a_blocked_run_as(&store, "ob-cut", "ob-owner", probe.clone(), Disposition::OwnerBound).await;
    probe.fail_renewals(true);
    store.clock.advance(1_000);
    tokio::time::timeout(WAIT, worker.wait_idle())
        .await
        .expect("the run stopped once its lease lapsed unrenewed");
    probe.fail_renewals(false);
    // The worker writes past any hub here: an awaiter without one reads.
    let awaiter = Awaiter::new(store.registry.clone(), None);
    let request = tokio::time::timeout(WAIT, awaiter.await_event("ob-cut", "process.abandon_requested", 0))
        .await
        .expect("the owner requested the abandonment in time")
        .expect("await");
    assert_eq!(request.payload["requested_by"], "ob-owner");
    assert!(
        request.payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("was stopped when its lease lapsed")),
        "{request:?}"
    );
    worker.drive_once().await.expect("drive");
    let r = store.registry.get("ob-cut").await.expect("get");
    assert_eq!(r.status, ProcessStatus::Abandoned, "{r:?}");
    match &r.outcome {
        Some(Outcome::Abandoned { evidence }) => assert_eq!(evidence.writer, AbandonWriter::ReconciledRequest),
        other => panic!("{other:?}"),
    }
}

/// An owner-bound run whose outcome cannot be written before its lease
/// lapses (the store out of reach as it ends) has its owner file the abandon
/// request: it is never run again, and would otherwise stay `running` with
/// nobody to end it.
pub async fn an_owner_bound_outcome_that_cannot_be_written_is_abandoned(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    probe.fail_next_completes(u64::MAX);
    let front = Processes::builder(store.registry.clone()).without_worker().start();
    front
        .start(StartRequest::tool("ob-lost", "echo", json!(1), Disposition::OwnerBound))
        .await
        .expect("start");
    let mut cfg = config("ob-owner");
    cfg.lease_ttl = Duration::from_millis(90);
    let worker = Worker::new(
        probe.clone(),
        tools(vec![]),
        Awaiter::new(store.registry.clone(), None),
        None,
        Arc::new(store.clock.clone()),
        cfg,
    );
    let mut completes = probe.completes();
    assert_eq!(worker.drive_once().await.expect("drive"), 1);
    // The run has ended and tries its outcome before the lease lapses.
    tokio::time::timeout(WAIT, completes.wait_for(|n| *n >= 1))
        .await
        .expect("the run tried its completion")
        .expect("probe");
    store.clock.advance(1_000);
    tokio::time::timeout(WAIT, worker.wait_idle())
        .await
        .expect("the run gave up its completion once its lease lapsed");
    let awaiter = Awaiter::new(store.registry.clone(), None);
    let request = tokio::time::timeout(WAIT, awaiter.await_event("ob-lost", "process.abandon_requested", 0))
        .await
        .expect("the owner requested the abandonment in time")
        .expect("await");
    assert_eq!(request.payload["requested_by"], "ob-owner");
    assert!(
        request.payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("could not be written")),
        "{request:?}"
    );
    worker.drive_once().await.expect("drive");
    let r = store.registry.get("ob-lost").await.expect("get");
    assert_eq!(r.status, ProcessStatus::Abandoned, "{r:?}");
}

/// `gate`: a tool whose runs say they began, then succeed once opened.
#[derive(Clone, Default)]
struct GateTool {
    began: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Tool for GateTool {
    fn name(&self) -> &str {
        "gate"
    }

    async fn run(&self, _ctx: ToolContext, _args: Value) -> Outcome {
        self.began.notify_one();
        self.open.notified().await;
        Outcome::success(json!("through"))
    }
}

/// An owner-bound run that ends after its lease lapsed, before the renewal
/// that would have found it (a host asleep past its lease), has its
/// completion fenced: its owner files the abandon request, as for an
/// outcome it could not write, instead of leaving it `running` with nobody
/// to end it (nobody else may claim it).
pub async fn an_owner_bound_run_ending_past_its_lease_is_abandoned(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let front = Processes::builder(store.registry.clone()).without_worker().start();
    front
        .start(StartRequest::tool(
            "ob-late",
            "gate",
            json!({}),
            Disposition::OwnerBound,
        ))
        .await
        .expect("start");
    let gate = GateTool::default();
    let mut cfg = config("ob-owner");
    // Its first renewal is due 20 s from now, by the runtime's own timer.
    cfg.lease_ttl = Duration::from_secs(60);
    let worker = Worker::new(
        store.registry.clone(),
        tools(vec![Arc::new(gate.clone())]),
        Awaiter::new(store.registry.clone(), None),
        None,
        Arc::new(store.clock.clone()),
        cfg,
    );
    assert_eq!(worker.drive_once().await.expect("drive"), 1);
    tokio::time::timeout(WAIT, gate.began.notified())
        .await
        .expect("the run began");
    store.clock.advance(61_000);
    gate.open.notify_one();
    tokio::time::timeout(WAIT, worker.wait_idle())
        .await
        .expect("the run ended");
    let awaiter = Awaiter::new(store.registry.clone(), None);
    let request = tokio::time::timeout(WAIT, awaiter.await_event("ob-late", "process.abandon_requested", 0))
        .await
        .expect("the owner requested the abandonment in time")
        .expect("await");
    assert_eq!(request.payload["requested_by"], "ob-owner");
    worker.drive_once().await.expect("drive");
    let r = store.registry.get("ob-late").await.expect("get");
    assert_eq!(r.status, ProcessStatus::Abandoned, "{r:?}");
}

/// A drained worker stops asking for the abandonment of a run it lost: the
/// request's retries end with the worker (the next incarnation's sweep ends
/// the process), not with the host process.
pub async fn a_drained_worker_stops_filing_abandon_requests(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let worker = a_blocked_run_as(&store, "ob-drain", "ob-owner", probe.clone(), Disposition::OwnerBound).await;
    probe.fail_abandon_requests(true);
    let mut asked = probe.abandon_requests();
    probe.fail_renewals(true);
    store.clock.advance(1_000);
    tokio::time::timeout(WAIT, asked.wait_for(|n| *n >= 2))
        .await
        .expect("the owner asked, and asked again after a failure")
        .expect("probe");
    tokio::time::timeout(WAIT, worker.drain()).await.expect("drained");
    let after_drain = *asked.borrow_and_update();
    // The retries back off from 100 ms to 5 s: two seconds would see at
    // least one more unless they stopped.
    let more = tokio::time::timeout(Duration::from_secs(2), asked.wait_for(|n| *n > after_drain)).await;
    assert!(more.is_err(), "an abandon request was asked for after the drain");
}

/// A drive whose claim the store fails is tried again soon, not left for the
/// next sweep: work already due has no later due time to wake the driver,
/// and may have no notice coming (here: registered past the runtime, inside
/// the failed claim).
pub async fn a_failed_drive_is_tried_again_before_the_sweep(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let inner = store.registry.clone();
    let (registered, hook_ran) = tokio::sync::oneshot::channel();
    probe.before_next_claim_batch(Box::new(move || {
        Box::pin(async move {
            inner
                .register(crate::builders::rerunnable("due"), None)
                .await
                .expect("register");
            let _ = registered.send(());
        })
    }));
    probe.fail_next_claim_batches(1);
    let p = Processes::builder(probe.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(WorkerConfig {
            sweep_interval: Duration::from_secs(3_600),
            ..config("w1")
        })
        .start();
    hook_ran.await.expect("the first drive claimed");
    let r = terminal(&p, "due").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!("due"))), "{r:?}");
    assert!(probe.claim_batches() >= 2, "the failed claim was made again");
    p.shutdown().await;
}

/// An owner-bound wait whose signal came in time is answered with it even
/// when the run hears of the signal only after the deadline (its store slow
/// to answer the read the signal's notice set off): the run reads the log
/// again before it times the wait out, as a rerunnable process's wait
/// would be decided (a signal at or before the deadline is in time).
pub async fn an_owner_bound_signal_in_time_is_not_timed_out(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    p.start(StartRequest::tool(
        "ob-in-time",
        "wait_signal",
        json!({"name": "go", "timeout_ms": 300}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    p.await_event("ob-in-time", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    let mut held = probe.held_log_reads();
    probe.hold_log_reads(true);
    store.clock.advance(100);
    p.signal("ob-in-time", "go", "s1", json!({"ok": true}))
        .await
        .expect("signal");
    // The run's read set off by the signal's notice waits, and so does the
    // one it makes once its 300 ms have passed: then let them answer.
    tokio::time::timeout(WAIT, held.wait_for(|n| *n >= 2))
        .await
        .expect("the run read the log again")
        .expect("probe");
    probe.hold_log_reads(false);
    let r = terminal(&p, "ob-in-time").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"ok": true}))), "{r:?}");
    p.shutdown().await;
}

/// A run's completion that the store fails (a dropped connection, a lost
/// commit reply) is tried again while the lease holds: the outcome is known
/// only here, and an owner-bound process is never run again. However many
/// tries it takes: eleven failures outlast the fixed ten retries (some 11 s)
/// that once gave the outcome up with the lease still valid.
pub async fn a_completion_the_store_fails_is_tried_again(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    probe.fail_next_completes(11);
    p.start(StartRequest::tool(
        "retried",
        "echo",
        json!({"value": 5}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    // The twelfth try comes some 13 s in.
    let r = p.await_output("retried", 3 * WAIT).await.expect("await");
    assert_eq!(r.outcome, Some(Outcome::success(json!(5))), "{r:?}");
    p.shutdown().await;
}

/// A run whose env or log the store fails to give for a moment is not failed
/// for it: the reads are tried again while the lease holds, and the process
/// ends as its tool says.
pub async fn a_run_whose_reads_the_store_fails_runs(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    let env = cairn_core::EnvSpec {
        plugin_options: json!({"image": "any"}),
        policy: json!({}),
    };
    probe.fail_next_env_reads(2);
    p.start(StartRequest::tool("with-env", "echo", json!({"value": 3}), Disposition::Rerunnable).with_env(env))
        .await
        .expect("start");
    let r = terminal(&p, "with-env").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!(3))), "{r:?}");

    // A sleep reads its log before it waits.
    probe.fail_next_log_reads(2);
    p.start(StartRequest::tool(
        "reads-log",
        "sleep",
        json!({"ms": 0}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    let r = terminal(&p, "reads-log").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"slept_ms": 0}))), "{r:?}");
    p.shutdown().await;
}

/// A claim whose env read took the whole lease (a slow store) does not run:
/// a peer, or this worker's next claim, may hold the process by now. An
/// owner-bound one, which can never run again, has its owner file the
/// abandon request.
pub async fn a_claim_whose_reads_outlast_its_lease_does_not_run(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    let env = cairn_core::EnvSpec {
        plugin_options: json!({"image": "any"}),
        policy: json!({}),
    };
    let clock = store.clock.clone();
    probe.after_next_env_read(Box::new(move || {
        Box::pin(async move {
            clock.advance(120_000);
        })
    }));
    p.start(StartRequest::tool("slow-env", "echo", json!({"value": 3}), Disposition::OwnerBound).with_env(env))
        .await
        .expect("start");
    let request = p
        .await_event("slow-env", "process.abandon_requested", 0, WAIT)
        .await
        .expect("the owner requested the abandonment");
    assert!(
        request.payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("while its module or env was read")),
        "{request:?}"
    );
    let r = p.get("slow-env").await.expect("get");
    assert_ne!(r.outcome, Some(Outcome::success(json!(3))), "the echo did not run");
    p.shutdown().await;
}

/// A claim whose lease lapsed between its answer and its run, with nothing
/// read in between (this node was paused), does not run: a peer may have
/// claimed the process and run it to its end meanwhile. A rerunnable one is
/// run by the next claim; an owner-bound one, which can never run again, has
/// its owner file the abandon request.
pub async fn a_claim_whose_lease_lapsed_before_its_run_does_not_run(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let counter = CountingTool::default();
    let p = Processes::builder(probe.clone())
        .tools(tools(vec![Arc::new(counter.clone())]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config("w1"))
        .start();
    let pause = |clock: ManualClock| -> crate::probe::ClaimHook {
        Box::new(move || {
            Box::pin(async move {
                clock.advance(120_000);
            })
        })
    };
    probe.after_next_claim(pause(store.clock.clone()));
    p.start(StartRequest::tool(
        "paused-ob",
        "echo",
        json!({"value": 3}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    let request = p
        .await_event("paused-ob", "process.abandon_requested", 0, WAIT)
        .await
        .expect("the owner requested the abandonment");
    assert!(
        request.payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lapsed before its run began")),
        "{request:?}"
    );
    let r = p.get("paused-ob").await.expect("get");
    assert_ne!(r.outcome, Some(Outcome::success(json!(3))), "the echo did not run");

    probe.after_next_claim(pause(store.clock.clone()));
    p.start(StartRequest::tool(
        "paused-rr",
        "count",
        json!({}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    let r = terminal(&p, "paused-rr").await;
    // Run once, by the second claim: the lapsed one ran nothing.
    assert_eq!(r.outcome, Some(Outcome::success(json!({"runs": 1}))), "{r:?}");
    assert_eq!(r.started.as_ref().map(|s| s.attempt), Some(2), "{r:?}");
    assert_eq!(counter.runs.lock().get("paused-rr"), Some(&1));
    p.shutdown().await;
}

/// A rerunnable run that fails only because the store did not answer (the
/// wait it records as it suspends) is not failed for good: its lease is
/// released and a later claim runs it to its end. An owner-bound run, which
/// cannot run again, tries its store writes and reads again while its lease
/// holds.
pub async fn a_run_the_store_failed_is_run_again(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    probe.fail_next_waits(1);
    let go = json!({"name": "go"});
    p.start(StartRequest::tool(
        "again",
        "wait_signal",
        go.clone(),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("again", "process.waiting", 0, WAIT)
        .await
        .expect("the second run waits");
    p.signal("again", "go", "g1", json!({"n": 1})).await.expect("signal");
    let r = terminal(&p, "again").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"n": 1}))), "{r:?}");
    // The run the store failed, the run that suspended, the run the signal woke.
    assert_eq!(r.started.as_ref().map(|s| s.attempt), Some(3), "claimed again: {r:?}");

    // An owner-bound run cannot run again: its wait's write is tried again
    // while its lease holds, and a read failing while it holds its lease
    // sends it back to its log, not to a failure that would lose the signal.
    probe.fail_next_waits(1);
    p.start(StartRequest::tool("held", "wait_signal", go, Disposition::OwnerBound))
        .await
        .expect("start");
    p.await_event("held", "process.waiting", 0, WAIT)
        .await
        .expect("the wait was recorded on a second try");
    probe.fail_next_log_reads(1);
    p.signal("held", "go", "g1", json!({"n": 2})).await.expect("signal");
    let r = terminal(&p, "held").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"n": 2}))), "{r:?}");
    assert_eq!(r.started.as_ref().map(|s| s.attempt), Some(1), "one run: {r:?}");

    // A resumption whose answer was lost but that landed is not written twice.
    p.start(StartRequest::tool(
        "lost-answer",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    p.await_event("lost-answer", "process.waiting", 0, WAIT)
        .await
        .expect("waits");
    probe.lose_next_resume_answers(1);
    p.signal("lost-answer", "go", "g1", json!(3)).await.expect("signal");
    let r = terminal(&p, "lost-answer").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!(3))), "{r:?}");
    let log = p.events("lost-answer", 0, Some(100)).await.expect("events").events;
    let resumed = log.iter().filter(|e| e.event_type == "process.resumed").count();
    assert_eq!(resumed, 1, "{log:?}");

    // A wait that times out before it was recorded writes its `timed_out`
    // marker (what a re-run replays) though the first try failed: the
    // record, holding no wait either way, is no proof it landed.
    probe.fail_next_resumes(1);
    p.start(StartRequest::tool(
        "timed-out",
        "wait_signal",
        json!({"name": "go", "timeout_ms": 0}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    let r = terminal(&p, "timed-out").await;
    assert!(
        matches!(&r.outcome, Some(Outcome::Failure { code, .. }) if code == "timeout"),
        "{:?}",
        r.outcome
    );
    let log = p.events("timed-out", 0, Some(100)).await.expect("events").events;
    assert!(
        log.iter()
            .any(|e| e.event_type == "process.resumed" && e.payload["reason"] == "timed_out"),
        "{log:?}"
    );
    p.shutdown().await;
}

/// Two workers on one store race over 500 processes: both run some, and every
/// process runs exactly once. Runs wait until both workers have begun one, so a
/// worker that claims nothing hangs the test (and its time bound fails it)
/// rather than letting the other one do all the work unnoticed.
pub async fn two_workers_run_each_process_once(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let counter = CountingTool::default();
    let meeting = MeetingTool::new(counter.clone(), 2);
    // One hub for both, as LISTEN/NOTIFY gives every PostgreSQL node the
    // changes of the others: an awaiter on `a` hears of `b`'s completions.
    let hub = cairn_core::ChangeHub::new();
    let on_hub = |owner: &str, tool: MeetingTool| {
        Processes::builder(store.registry.clone())
            .tools(tools(vec![Arc::new(tool)]))
            .clock(Arc::new(store.clock.clone()))
            .worker_config(config(owner))
            .hub(hub.clone())
            .start()
    };
    let a = on_hub("worker-a", meeting.clone());
    let b = on_hub("worker-b", meeting);
    for i in 0..500 {
        let front = if i % 2 == 0 { &a } else { &b };
        front
            .start(StartRequest::tool(
                format!("race-{i:03}"),
                "count",
                json!({}),
                Disposition::Rerunnable,
            ))
            .await
            .expect("start");
    }
    for i in 0..500 {
        let r = terminal(&a, &format!("race-{i:03}")).await;
        assert_eq!(r.status, ProcessStatus::Completed);
    }
    let runs = counter.runs.lock().clone();
    assert_eq!(runs.len(), 500);
    assert!(runs.values().all(|n| *n == 1), "some process ran twice: {runs:?}");
    let owners: std::collections::BTreeSet<String> = {
        let mut set = std::collections::BTreeSet::new();
        for i in 0..500 {
            if let Some(s) = a.get(&format!("race-{i:03}")).await.expect("get").started {
                set.insert(s.owner_id);
            }
        }
        set
    };
    let both: std::collections::BTreeSet<String> = ["worker-a".to_string(), "worker-b".to_string()].into();
    assert_eq!(owners, both, "both workers ran processes");
    a.shutdown().await;
    b.shutdown().await;
}

/// Graceful drain abandons in-flight owner_bound work (`owner_drain`) and hands
/// rerunnable work to a peer.
pub async fn drain_abandons_owner_bound_and_hands_over_rerunnable(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let a = runtime(&store, "drainer", vec![Arc::new(BlockTool { finish: false })]);
    a.start(StartRequest::tool("d-ob", "block", json!({}), Disposition::OwnerBound))
        .await
        .expect("start");
    a.start(StartRequest::tool("d-re", "block", json!({}), Disposition::Rerunnable))
        .await
        .expect("start");
    a.await_event("d-ob", "process.started", 0, WAIT)
        .await
        .expect("started");
    a.await_event("d-re", "process.started", 0, WAIT)
        .await
        .expect("started");
    a.shutdown().await;
    let ob = a.get("d-ob").await.expect("get");
    assert_eq!(ob.status, ProcessStatus::Abandoned);
    match ob.outcome {
        Some(Outcome::Abandoned { evidence }) => {
            assert_eq!(evidence.writer, AbandonWriter::OwnerDrain);
            assert_eq!(evidence.owner.map(|o| o.owner_id).as_deref(), Some("drainer"));
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    let re = a.get("d-re").await.expect("get");
    assert_eq!(re.status, ProcessStatus::Running);
    assert!(re.lease.is_none(), "drain released the rerunnable lease");
    let peer = runtime(&store, "peer", vec![Arc::new(BlockTool { finish: true })]);
    let r = terminal(&peer, "d-re").await;
    assert_eq!(r.status, ProcessStatus::Completed);
    assert_eq!(
        r.started.map(|s| (s.owner_id, s.attempt)),
        Some(("peer".to_string(), 2))
    );
    crate::assert_fold(peer.registry().as_ref(), "d-ob").await;
    crate::assert_fold(peer.registry().as_ref(), "d-re").await;
    peer.shutdown().await;
}

/// An awaiter on the runtime's hub resolves through it even when the fallback
/// polling is an hour: the awaiter's first read has answered "running" before
/// the signal is sent, so only a hub notice can wake it within [`WAIT`].
pub async fn await_resolves_through_hub(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config("w1"))
        .start();
    p.start(StartRequest::tool(
        "hub",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("hub", "process.waiting", 0, WAIT).await.expect("waiting");
    // The awaiter reads through a probe (the worker does not), so the probe's
    // first answered `get` is the awaiter's first read.
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let hour = Duration::from_secs(3600);
    let awaiter = Awaiter::new(probe.clone(), Some(p.hub().clone())).with_backoff(Backoff { floor: hour, cap: hour });
    // Not `await_terminal_for`: on its timeout it reads the record once more,
    // which would find the process completed without any wake-up.
    let waiter = tokio::spawn(async move { tokio::time::timeout(WAIT, awaiter.await_terminal("hub")).await });
    probe.answered_gets(1).await;
    p.signal("hub", "go", "1", json!("done")).await.expect("signal");
    let r = waiter
        .await
        .expect("join")
        .unwrap_or_else(|_| panic!("the parked awaiter was not woken by the hub within {WAIT:?}"))
        .expect("await");
    assert_eq!(r.status, ProcessStatus::Completed);
    p.shutdown().await;
}

/// Awaiting an event after the last one of a process that has ended answers
/// `process_terminal` at once, not after the whole timeout: no page after
/// that cursor will ever hold the terminal event.
pub async fn await_event_past_an_ended_log_answers_terminal(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone()).without_worker().start();
    p.start(StartRequest::external("ended", json!({})))
        .await
        .expect("start");
    let ended = p
        .complete_external("ended", Outcome::success(json!(1)), "ci")
        .await
        .expect("complete");
    let hour = Duration::from_secs(3600);
    let answer = tokio::time::timeout(WAIT, p.await_event("ended", "note", ended.last_sequence, hour))
        .await
        .expect("answered before the timeout");
    assert!(matches!(answer, Err(CairnError::ProcessTerminal(_))), "{answer:?}");

    // A cursor past the end of a running log: the end comes below the
    // cursor, never on a page, and still ends the wait, told by the hub.
    let running = p
        .start(StartRequest::external("running", json!({})))
        .await
        .expect("start");
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let awaiter = Awaiter::new(probe.clone(), Some(p.hub().clone())).with_backoff(Backoff { floor: hour, cap: hour });
    let after = running.process.last_sequence + 5;
    let waiting =
        tokio::spawn(async move { tokio::time::timeout(WAIT, awaiter.await_event("running", "note", after)).await });
    probe.answered_gets(1).await;
    p.complete_external("running", Outcome::success(json!(2)), "ci")
        .await
        .expect("complete");
    let answer = waiting.await.expect("join").expect("answered before the timeout");
    assert!(matches!(answer, Err(CairnError::ProcessTerminal(_))), "{answer:?}");
    p.shutdown().await;
}

/// A write of this node that ends a process hands its awaiters the record it
/// answered: they resolve without reading the process again, with the record
/// a read would give. Two awaiters of one process both get it; an awaiter of
/// another process is not woken.
pub async fn await_resolves_from_the_ending_write(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone()).without_worker().start();
    for id in ["ends", "stays"] {
        p.start(StartRequest::external(id, json!({}))).await.expect("start");
    }
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let hour = Duration::from_secs(3600);
    let awaiter = Awaiter::new(probe.clone(), Some(p.hub().clone())).with_backoff(Backoff { floor: hour, cap: hour });
    let spawn = |id: &'static str| {
        let awaiter = awaiter.clone();
        tokio::spawn(async move { tokio::time::timeout(WAIT, awaiter.await_terminal(id)).await })
    };
    let (first, second, other) = (spawn("ends"), spawn("ends"), spawn("stays"));
    // Each awaiter's first read answered "running": from here on only the hub can end them.
    probe.answered_gets(3).await;
    p.complete_external("ends", Outcome::success(json!({"n": 7})), "test")
        .await
        .expect("complete");
    let read = store.registry.get("ends").await.expect("get");
    for waiter in [first, second] {
        let r = waiter
            .await
            .expect("join")
            .unwrap_or_else(|_| panic!("the awaiter was not woken by the ending write within {WAIT:?}"))
            .expect("await");
        assert_eq!(r, read, "the hub's record is the record a read gives");
    }
    assert_eq!(*probe.gets().borrow(), 3, "an awaiter read the ended process again");
    assert!(!other.is_finished(), "the awaiter of another process resolved");
    other.abort();
    p.shutdown().await;
}

/// Without the hub, `await_output` still resolves through backoff point
/// reads, and the worker still hears of the work writes make (a signal that
/// satisfies a suspended wait) at once, not at its next sweep.
pub async fn await_resolves_without_hub(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(WorkerConfig {
            sweep_interval: Duration::from_secs(3_600),
            ..config("w1")
        })
        .without_hub()
        .start();
    p.start(StartRequest::tool(
        "nohub",
        "echo",
        json!({"value": 5}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    let r = p.await_output("nohub", WAIT).await.expect("await");
    assert_eq!(r.outcome, Some(Outcome::success(json!(5))));

    p.start(StartRequest::tool(
        "nohub-wait",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("nohub-wait", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    p.signal("nohub-wait", "go", "s1", json!(7)).await.expect("signal");
    let r = terminal(&p, "nohub-wait").await;
    assert_eq!(r.status, ProcessStatus::Completed, "{r:?}");
    p.shutdown().await;
}

/// An already-terminal process answers at once; a running one answers the running record at the timeout.
pub async fn await_terminal_and_timeout(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = Processes::builder(store.registry.clone()).without_worker().start();
    p.start(StartRequest::external("ext-await", json!({})))
        .await
        .expect("start");
    let r = p
        .await_output("ext-await", Duration::from_millis(50))
        .await
        .expect("await");
    assert_eq!(r.status, ProcessStatus::Running);
    p.complete_external("ext-await", Outcome::success(json!(1)), "test")
        .await
        .expect("complete");
    let r = p
        .await_output("ext-await", Duration::from_secs(3600))
        .await
        .expect("await");
    assert_eq!(r.status, ProcessStatus::Completed);
    assert_eq!(
        p.await_output("nope", Duration::from_millis(10))
            .await
            .map_err(|e| e.code()),
        Err("unknown_process")
    );
}

/// Starting a tool_call with args its tool rejects, or an unknown tool, writes nothing.
pub async fn start_rejects_bad_tool_input(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    let bad = p
        .start(StartRequest::tool(
            "bad-args",
            "sleep",
            json!({"ms": "soon"}),
            Disposition::Rerunnable,
        ))
        .await;
    let bad = bad.expect_err("a string of ms");
    assert_eq!(bad.code(), "invalid_request");
    // The field is named, and no Rust type.
    assert!(
        bad.to_string()
            .starts_with("invalid request: `sleep` args: `ms`: invalid type: string"),
        "{bad}"
    );
    let scalar = p
        .start(StartRequest::tool(
            "bad-args",
            "echo",
            json!(5),
            Disposition::Rerunnable,
        ))
        .await
        .expect_err("a number of args");
    assert_eq!(
        scalar.to_string(),
        "invalid request: `echo` args must be a JSON object of named fields, not a number"
    );
    // Not read by position: `[5]` is not `{"ms": 5}`.
    let positional = p
        .start(StartRequest::tool(
            "bad-args",
            "sleep",
            json!([5]),
            Disposition::Rerunnable,
        ))
        .await
        .expect_err("an array of args");
    assert_eq!(
        (positional.code(), positional.to_string()),
        (
            "invalid_request",
            "invalid request: `sleep` args must be a JSON object of named fields, not an array".to_string()
        )
    );
    let unknown = p
        .start(StartRequest::tool(
            "bad-tool",
            "nope",
            json!({}),
            Disposition::Rerunnable,
        ))
        .await;
    assert_eq!(unknown.map_err(|e| e.code()).err(), Some("unknown_tool"));
    for id in ["bad-args", "bad-tool"] {
        assert_eq!(p.get(id).await.map_err(|e| e.code()).err(), Some("unknown_process"));
    }
    p.shutdown().await;
}

/// Succeeds with the result it was made with.
struct UnwritableTool {
    result: Value,
}

#[async_trait]
impl Tool for UnwritableTool {
    fn name(&self) -> &str {
        "unwritable"
    }

    async fn run(&self, _ctx: ToolContext, _args: Value) -> Outcome {
        Outcome::success(self.result.clone())
    }
}

/// A run whose outcome could never be written (over the payload size or depth
/// limit) fails the process with the refusal's code at once, instead of
/// leaving it running to be claimed and refused again at every lease expiry.
pub async fn an_outcome_over_the_size_limit_fails_the_process(factory: &dyn StoreFactory) {
    let depth = cairn_core::validate::MAX_JSON_DEPTH;
    let cases = [
        ("too-big", json!("x".repeat(2 << 20)), "payload_too_large", "byte limit"),
        (
            "too-deep",
            (0..=depth).fold(json!(1), |v, _| json!([v])),
            "invalid_request",
            "levels deep",
        ),
    ];
    for (id, result, expected, named) in cases {
        let store = factory.create(ManualClock::new(1_000)).await;
        let p = runtime(&store, "w1", vec![Arc::new(UnwritableTool { result })]);
        p.start(StartRequest::tool(id, "unwritable", json!({}), Disposition::Rerunnable))
            .await
            .expect("start");
        let r = terminal(&p, id).await;
        match r.outcome {
            Some(Outcome::Failure {
                class, code, message, ..
            }) => {
                assert_eq!((class.as_str(), code.as_str()), ("runtime", expected));
                assert!(message.contains(named), "the limit is named: {message}");
            }
            other => panic!("{id}: expected a {expected} failure, got {other:?}"),
        }
        let events = p.events(id, 0, Some(100)).await.expect("events").events;
        assert_eq!(
            types_of(&events),
            ["process.started", "process.failed"],
            "{id}: run once, then failed"
        );
        p.shutdown().await;
    }
}

/// An event sink that writes down what it is given, as `label` makes it.
struct Collect {
    seen: Arc<Mutex<Vec<String>>>,
    label: fn(&cairn_core::ProcessEvent) -> String,
    terminal_only: bool,
}

impl cairn_core::EventSink for Collect {
    fn deliver(&self, event: &cairn_core::ProcessEvent) {
        self.seen.lock().push((self.label)(event));
    }
    fn terminal_only(&self) -> bool {
        self.terminal_only
    }
}

/// A fresh store and a runtime over it feeding a [`Collect`] sink; the store
/// is answered so it lives as long as the test.
async fn sinking(
    factory: &dyn StoreFactory,
    label: fn(&cairn_core::ProcessEvent) -> String,
    terminal_only: bool,
) -> (TestStore, Processes, Arc<Mutex<Vec<String>>>) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Collect {
        seen: seen.clone(),
        label,
        terminal_only,
    };
    let p = Processes::builder(store.registry.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config("w1"))
        .event_sink(Arc::new(sink))
        .start();
    (store, p, seen)
}

/// The event sink sees appended events without being able to block them.
pub async fn event_sink_receives_events(factory: &dyn StoreFactory) {
    let (_store, p, seen) = sinking(factory, |e| format!("{}#{}", e.process_id, e.sequence), false).await;
    p.start(StartRequest::tool(
        "sunk",
        "echo",
        json!({"value": 1}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    let r = terminal(&p, "sunk").await;
    // Delivery is asynchronous: wait (bounded) for the sink to catch up with the log.
    let expected: Vec<String> = (1..=r.last_sequence).map(|s| format!("sunk#{s}")).collect();
    let mut ok = false;
    for _ in 0..500 {
        if *seen.lock() == expected {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ok, "sink saw {:?}, expected {:?}", seen.lock(), expected);
    p.shutdown().await;
}

/// Start an `echo` process `done` and a `wait_signal` process `waits`, and
/// return once `waits` is suspended.
async fn echo_and_suspended_waiter(p: &Processes, done: &str, waits: &str) {
    p.start(StartRequest::tool(
        done,
        "echo",
        json!({"value": 1}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start echo");
    p.start(StartRequest::tool(
        waits,
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start waiter");
    p.await_event(waits, "process.waiting", 0, WAIT)
        .await
        .expect("suspended");
}

/// A terminal-only sink gets each process's terminal event and nothing else:
/// not the start, not a wait, not a cancellation request.
pub async fn terminal_only_sink_receives_the_ends(factory: &dyn StoreFactory) {
    let (_store, p, seen) = sinking(factory, |e| format!("{}#{}", e.process_id, e.event_type), true).await;
    echo_and_suspended_waiter(&p, "done", "waits").await;
    p.cancel("waits", None).await.expect("cancel");
    terminal(&p, "done").await;
    terminal(&p, "waits").await;
    let expected = vec![
        "done#process.completed".to_string(),
        "waits#process.cancelled".to_string(),
    ];
    // Delivery is asynchronous: wait (bounded) until both ends arrived.
    let mut got = Vec::new();
    for _ in 0..500 {
        got = seen.lock().clone();
        got.sort();
        if got.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(got, expected, "a terminal-only sink got other events");
    p.shutdown().await;
}

/// An end sink hears of each end a write of the runtime made, once, with the
/// ended record, before the end's notice (whoever the notice wakes finds it
/// told): ends by the worker, by an external owner and by a cancel, and
/// not a refused second completion or a cancel of a process already ended.
pub async fn end_sink_hears_each_end_once(factory: &dyn StoreFactory) {
    struct Ends(Mutex<Vec<String>>);
    impl cairn_core::EndSink for Ends {
        fn ended(&self, record: &ProcessRecord) {
            assert!(record.is_terminal(), "told of a running process: {record:?}");
            self.0.lock().push(format!("{}#{}", record.id, record.status.label()));
        }
    }
    let store = factory.create(ManualClock::new(1_000)).await;
    let ends = Arc::new(Ends(Mutex::new(Vec::new())));
    let p = Processes::builder(store.registry.clone())
        .tools(tools(vec![]))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(config("w1"))
        .end_sink(ends.clone())
        .start();
    let told = |id: &str| {
        ends.0
            .lock()
            .iter()
            .filter(|e| e.starts_with(&format!("{id}#")))
            .count()
    };
    p.start(StartRequest::external("e-ext", json!({})))
        .await
        .expect("start external");
    // An awaiter may see an end by reading before its notice goes out; the
    // hub's copy of the ended record is set with the notice, after the sink.
    let mut notices: Vec<_> = ["e-done", "e-waits"].map(|id| p.hub().subscribe(id)).into();
    echo_and_suspended_waiter(&p, "e-done", "e-waits").await;
    assert_eq!(
        ends.0.lock().iter().filter(|e| !e.starts_with("e-done#")).count(),
        0,
        "told before any end"
    );
    p.cancel("e-waits", None).await.expect("cancel");
    p.complete_external("e-ext", Outcome::success(json!(2)), "test")
        .await
        .expect("complete");
    assert_eq!(
        told("e-ext"),
        1,
        "the external end was not told before its write answered"
    );
    for (id, notice) in ["e-done", "e-waits"].into_iter().zip(&mut notices) {
        let r = p.await_output(id, WAIT).await.expect("await");
        assert!(r.is_terminal(), "{id} did not end: {r:?}");
        tokio::time::timeout(WAIT, async {
            while notice.ended().is_none() {
                notice.changed().await.expect("hub alive");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id}: no notice of its end"));
        assert_eq!(told(id), 1, "{id}: its end was not told before its notice");
    }
    assert!(p
        .complete_external("e-ext", Outcome::success(json!(3)), "test")
        .await
        .is_err());
    let _ = p.cancel("e-done", None).await;
    let mut got = ends.0.lock().clone();
    got.sort();
    assert_eq!(
        got,
        vec!["e-done#completed", "e-ext#completed", "e-waits#cancelled"],
        "each end told once"
    );
    p.shutdown().await;
}

pub(crate) fn types_of(events: &[cairn_core::ProcessEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// A suspended `wait_signal` holds no worker slot: with one slot, a process
/// started after it runs at once; the signal has it claimed again, resumed
/// from its log, and completed with the payload (SPEC §13).
pub async fn suspended_wait_frees_its_worker_slot(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime_with(&store, one_slot());
    p.start(StartRequest::tool(
        "waits",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("waits", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    let rec = p.get("waits").await.expect("get");
    assert!(rec.lease.is_none(), "a suspension holds no lease: {rec:?}");
    p.start(StartRequest::tool(
        "next",
        "echo",
        json!({"value": 7}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start next");
    let next = terminal(&p, "next").await;
    assert_eq!(next.outcome, Some(Outcome::success(json!(7))), "the only slot was free");
    p.signal("waits", "go", "s1", json!({"ok": true}))
        .await
        .expect("signal");
    let r = terminal(&p, "waits").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"ok": true}))));
    assert_eq!(r.started.as_ref().map(|s| s.attempt), Some(2));
    let events = p.events("waits", 0, Some(100)).await.expect("events").events;
    assert_eq!(
        types_of(&events),
        [
            "process.started",
            "process.waiting",
            "signal.go",
            "process.started",
            "process.resumed",
            "process.completed"
        ]
    );
    assert_eq!(events[4].payload["reason"], "signal");
    crate::assert_fold(p.registry().as_ref(), "waits").await;
    p.shutdown().await;
}

/// A rerunnable `sleep` suspends on a durable timer and resumes once the
/// clock reaches its due time, with `reason: timer`, never before.
pub async fn durable_sleep_resumes_at_its_due_time(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(StartRequest::tool(
        "nap",
        "sleep",
        json!({"ms": 259_200_000}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("nap", "process.waiting", 0, WAIT).await.expect("waiting");
    let rec = p.get("nap").await.expect("get");
    let wait = rec.wait.clone().expect("a timer wait");
    assert_eq!(
        (wait.kind.as_str(), wait.until_ms),
        ("timer", Some(1_000 + 259_200_000))
    );
    assert!(rec.lease.is_none());
    store.clock.advance(259_200_000 - 1);
    p.nudge();
    let early = p.await_output("nap", Duration::from_millis(300)).await.expect("await");
    assert!(!early.is_terminal(), "not before its time: {early:?}");
    store.clock.advance(1);
    p.nudge();
    let r = terminal(&p, "nap").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"slept_ms": 259_200_000}))));
    let events = p.events("nap", 0, Some(100)).await.expect("events").events;
    let resumed: Vec<_> = events.iter().filter(|e| e.event_type == "process.resumed").collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].payload["reason"], "timer");
    crate::assert_fold(p.registry().as_ref(), "nap").await;
    p.shutdown().await;
}

/// A sleep whose suspension reached the store after its deadline (the write
/// queued behind a commit) is refused there, and ends on time: its deadline
/// stays the one it first fixed, rather than moving on at every attempt.
pub async fn a_sleep_whose_wait_came_late_ends_on_time(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    let clock = store.clock.clone();
    probe.before_next_wait(Box::new(move || {
        Box::pin(async move {
            clock.advance(10);
        })
    }));
    p.start(StartRequest::tool(
        "late",
        "sleep",
        json!({"ms": 5}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    // The clock stands still from here: a sleep that moved its deadline on
    // would suspend until a time that never comes.
    let r = terminal(&p, "late").await;
    assert_eq!(r.outcome, Some(Outcome::success(json!({"slept_ms": 5}))), "{r:?}");
    p.shutdown().await;
}

/// Cancelling a suspended run resumes it to observe the request: it ends
/// `cancelled`, and its log says why it resumed.
pub async fn cancel_resumes_a_suspended_run(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(StartRequest::tool(
        "stop-me",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("stop-me", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    let answer = p
        .cancel("stop-me", Some("no longer needed".into()))
        .await
        .expect("cancel");
    assert_eq!(
        answer.status,
        ProcessStatus::Running,
        "resumed to observe it, not ended at once"
    );
    let r = terminal(&p, "stop-me").await;
    assert_eq!(r.status, ProcessStatus::Cancelled);
    let events = p.events("stop-me", 0, Some(100)).await.expect("events").events;
    let resumed = events
        .iter()
        .find(|e| e.event_type == "process.resumed")
        .expect("a resumption");
    assert_eq!(resumed.payload["reason"], "cancel_requested");
    // Without a reason, the outcome says the run was stopped while suspended,
    // not that it never ran.
    p.start(StartRequest::tool(
        "stop-me-too",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("stop-me-too", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    p.cancel("stop-me-too", None).await.expect("cancel");
    let r = terminal(&p, "stop-me-too").await;
    assert_eq!(
        r.outcome,
        Some(Outcome::cancelled(
            "cancelled while it was not running (suspended or between claims)"
        ))
    );
    p.shutdown().await;
}

/// A hub-fed awaiter parked on a suspended process reads nothing while the
/// process is idle (no per-waiter polling), and wakes on the signal.
pub async fn hub_fed_await_does_not_poll(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    p.start(StartRequest::tool(
        "idle",
        "wait_signal",
        json!({"name": "go"}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    p.await_event("idle", "process.waiting", 0, WAIT)
        .await
        .expect("waiting");
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    // The default backoff: it must not matter with a hub.
    let awaiter = Awaiter::new(probe.clone(), Some(p.hub().clone()));
    let waiter = tokio::spawn(async move { tokio::time::timeout(WAIT, awaiter.await_terminal("idle")).await });
    probe.answered_gets(1).await;
    // A polling waiter (25 ms floor, doubling) would read four more times in this window.
    let polled = tokio::time::timeout(Duration::from_millis(500), probe.answered_gets(2)).await;
    assert!(polled.is_err(), "the parked awaiter read again without a change");
    p.signal("idle", "go", "1", json!("done")).await.expect("signal");
    let r = waiter.await.expect("join").expect("in time").expect("await");
    assert_eq!(r.status, ProcessStatus::Completed);
    p.shutdown().await;
}

/// An await of a process a write of this runtime ended a moment ago resolves
/// from the hub without a read (a host that starts, then awaits over HTTP a
/// round trip later); once the runtime prunes it, an await reads again and
/// answers `no_longer_retained`.
pub async fn an_await_of_an_end_just_written_here_reads_nothing(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    let mut watching = p.hub().subscribe("quick");
    p.start(StartRequest::tool(
        "quick",
        "echo",
        json!({"value": 7}),
        Disposition::Rerunnable,
    ))
    .await
    .expect("start");
    let first = terminal(&p, "quick").await;
    assert_eq!(first.status, ProcessStatus::Completed);
    // The hub hears of the end just after its commit, so the first await may
    // have read it from the store first: wait until the hub has it, as a
    // host's await a round trip later finds it, then stop watching.
    while watching.ended().is_none() {
        tokio::time::timeout(WAIT, watching.changed())
            .await
            .expect("the end reached the hub in time")
            .expect("hub open");
    }
    drop(watching);
    let before = *probe.gets().borrow();
    let again = p.await_output("quick", WAIT).await.expect("await again");
    assert_eq!(again, first, "the same terminal record");
    assert_eq!(*probe.gets().borrow(), before, "the second await read the store");

    store.clock.advance(10);
    let report = p
        .prune(
            cairn_core::clock::Clock::now_ms(&store.clock),
            StatusFilter::Any,
            Watermark::NoProjector,
        )
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    let gone = p.await_output("quick", WAIT).await.expect_err("pruned");
    assert_eq!(gone.code(), "no_longer_retained", "{gone}");
    assert!(*probe.gets().borrow() > before, "an await after the prune did not read");
    p.shutdown().await;
}

/// Cancelling a parent requests cancellation of its running children, and of
/// theirs (SPEC §13); a process that is not its descendant keeps running.
pub async fn cancel_reaches_running_children(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime(&store, "w1", vec![]);
    let waiter = |id: &str, parent: Option<&str>| {
        let mut req = StartRequest::tool(id, "wait_signal", json!({"name": "go"}), Disposition::Rerunnable);
        req.caused_by = parent.map(cairn_core::CausalRef::process);
        req
    };
    for (id, parent) in [
        ("tree", None),
        ("tree-a", Some("tree")),
        ("tree-b", Some("tree")),
        ("tree-a-1", Some("tree-a")),
        ("bystander", None),
    ] {
        p.start(waiter(id, parent)).await.expect("start");
        p.await_event(id, "process.waiting", 0, WAIT).await.expect("waiting");
    }
    let children = p
        .list(&ProcessFilter {
            caused_by: Some("tree".into()),
            ..ProcessFilter::running()
        })
        .await
        .expect("list");
    assert_eq!(
        children.items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["tree-a", "tree-b"]
    );
    p.cancel("tree", Some("the whole tree".into())).await.expect("cancel");
    for id in ["tree", "tree-a", "tree-b", "tree-a-1"] {
        let r = terminal(&p, id).await;
        assert_eq!(r.status, ProcessStatus::Cancelled, "{id}: {r:?}");
    }
    let bystander = p.get("bystander").await.expect("get");
    assert_eq!(bystander.status, ProcessStatus::Running);
    assert!(bystander.cancel_request.is_none());

    // A child that has ended leaves its own children the tree's: they are
    // reached through it.
    for (id, parent) in [
        ("root", None),
        ("root-done", Some("root")),
        ("root-done-1", Some("root-done")),
        ("root-done-1-x", Some("root-done-1")),
    ] {
        p.start(waiter(id, parent)).await.expect("start");
        p.await_event(id, "process.waiting", 0, WAIT).await.expect("waiting");
    }
    p.signal("root-done", "go", "g", json!({})).await.expect("signal");
    p.signal("root-done-1", "go", "g", json!({})).await.expect("signal");
    for id in ["root-done", "root-done-1"] {
        assert_eq!(terminal(&p, id).await.status, ProcessStatus::Completed, "{id}");
    }
    let answer = p
        .registry()
        .request_cancel("root", Some("all of it".into()))
        .await
        .expect("cancel");
    assert_eq!(
        answer.descendants.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["root-done-1-x"]
    );
    for id in ["root", "root-done-1-x"] {
        let r = terminal(&p, id).await;
        assert_eq!(r.status, ProcessStatus::Cancelled, "{id}: {r:?}");
    }
    p.shutdown().await;
}

/// A start on a runtime whose worker has a free slot and an emptied worklist
/// claims its process in the registration's own write (ADR 0022): the record
/// `start` answers is the registered one, and the stored one is already
/// started under this worker's lease, with no drive in between. (Until the
/// driver's first drive has found the worklist empty a start takes the plain
/// path, and a drive may claim a plainly registered process before it is read
/// back; so each attempt waits for the last process to end, and a few
/// attempts let the first drives finish.)
pub async fn a_start_claims_into_an_idle_slot(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, config("w1"));
    let mut claimed_by_its_start = None;
    for i in 0..10 {
        let id = format!("p{i}");
        let drives = probe.claim_batches();
        let registered = p
            .start(StartRequest::tool(
                &id,
                "echo",
                json!({"value": i}),
                Disposition::OwnerBound,
            ))
            .await
            .expect("start");
        assert!(registered.created);
        assert_eq!(registered.process.started, None, "start answers the registered record");
        let stored = store.registry.get(&id).await.expect("get");
        if stored.started.is_some() && probe.claim_batches() == drives {
            claimed_by_its_start = Some(stored);
        }
        assert_eq!(terminal(&p, &id).await.status, ProcessStatus::Completed);
        crate::assert_fold(store.registry.as_ref(), &id).await;
        if claimed_by_its_start.is_some() {
            break;
        }
    }
    let stored = claimed_by_its_start.expect("no start claimed its process in its own write in 10 attempts");
    let started = stored.started.clone().expect("started");
    assert_eq!(started.owner_id, "w1");
    assert_eq!(started.fencing_token, 1);
    p.shutdown().await;
}

/// A worker whose every slot is busy runs its queued work as slots free, not
/// at its next sweep: one slot, claim batches of one, a sweep an hour apart,
/// and forty starts at once, each of which must end. (A slot freed while the
/// driver was between listening for one was once heard by nobody, and the
/// queued work waited for the sweep.)
pub async fn a_full_worker_runs_queued_work_as_slots_free(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let p = runtime_with(
        &store,
        WorkerConfig {
            sweep_interval: Duration::from_secs(3_600),
            ..one_slot()
        },
    );
    let ids: Vec<String> = (0..40).map(|i| format!("q{i}")).collect();
    let starts = ids.iter().enumerate().map(|(i, id)| {
        p.start(StartRequest::tool(
            id,
            "echo",
            json!({"value": i}),
            Disposition::Rerunnable,
        ))
    });
    for started in futures::future::join_all(starts).await {
        started.expect("start");
    }
    let ends = ids.iter().map(|id| p.await_output(id, WAIT));
    for (id, ended) in ids.iter().zip(futures::future::join_all(ends).await) {
        let r = ended.expect("await");
        assert_eq!(
            r.status,
            ProcessStatus::Completed,
            "{id} did not end within {WAIT:?}: {r:?}"
        );
    }
    p.shutdown().await;
}

/// A runtime of one slot and claim batches of one, over a probe, whose first
/// drive found the worklist empty (so a start may claim for itself).
async fn one_slot_runtime(store: &TestStore) -> (Arc<crate::probe::ReadProbe>, Processes) {
    let (probe, p) = probed_runtime(store, one_slot());
    p.worker().expect("a worker").drive_once().await.expect("drive");
    (probe, p)
}

/// Inside a drive's claim: `a` joins the worklist (registered past the
/// runtime, so nothing claims it in its write), and a host starts `b`, an
/// owner-bound `tool` run that claims the only slot in its own write.
async fn register_a_then_start_b(
    inner: Arc<dyn cairn_core::ProcessRegistry>,
    starter: &Processes,
    tool: &str,
    args: Value,
) {
    inner
        .register(crate::builders::owner_bound("a"), None)
        .await
        .expect("register a");
    starter
        .start(StartRequest::tool("b", tool, args, Disposition::OwnerBound))
        .await
        .expect("start b");
}

/// With one slot: the next drive claims owner-bound `a` while a start of
/// `b` (a `wait_signal` for `go`) takes the slot, so `a`'s claim waits for it.
async fn a_waits_behind_b(store: &TestStore, probe: &crate::probe::ReadProbe, p: &Processes) {
    let (inner, starter) = (store.registry.clone(), p.clone());
    let (hooked, hook_ran) = tokio::sync::oneshot::channel();
    probe.before_next_claim_batch(Box::new(move || {
        Box::pin(async move {
            register_a_then_start_b(inner, &starter, "wait_signal", json!({"name": "go"})).await;
            let _ = hooked.send(());
        })
    }));
    p.hub().notify_work();
    hook_ran.await.expect("the next drive claimed");
    p.await_event("b", "process.waiting", 0, WAIT)
        .await
        .expect("b waits in its slot");
    p.await_event("a", "process.started", 0, WAIT).await.expect("a claimed");
}

/// `ids` ended, hold no lease, and their records fold from their logs.
async fn assert_ended_without_leases(p: &Processes, store: &TestStore, ids: &[&str]) {
    for &id in ids {
        let r = p.get(id).await.expect("get");
        assert!(r.is_terminal(), "{id} was left running: {r:?}");
        assert!(r.lease.is_none(), "{id} kept a lease: {r:?}");
        crate::assert_fold(store.registry.as_ref(), id).await;
    }
}

/// A drain waits for a claim that is waiting for a slot: with one slot, the
/// drive's claim of `a` waits behind a start's long run of `b`; draining stops
/// `b`, hands its slot to `a`'s claim, and returns only once `a` has ended too
/// (an owner-bound process left started with a live lease would strand until
/// its lease lapsed and a sweep wrote it off).
pub async fn a_drain_waits_for_a_claim_waiting_for_a_slot(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = one_slot_runtime(&store).await;
    let worker = p.worker().expect("a worker");
    let (inner, starter) = (store.registry.clone(), p.clone());
    let (hooked, hook_ran) = tokio::sync::oneshot::channel();
    probe.before_next_claim_batch(Box::new(move || {
        Box::pin(async move {
            register_a_then_start_b(inner, &starter, "sleep", json!({"ms": 600_000})).await;
            let _ = hooked.send(());
        })
    }));
    p.hub().notify_work();
    hook_ran.await.expect("the next drive claimed");
    p.await_event("b", "process.started", 0, WAIT).await.expect("b runs");
    // `a` is claimed (started: owner-bound) and waits for `b`'s slot.
    p.await_event("a", "process.started", 0, WAIT).await.expect("a claimed");
    let a = p.get("a").await.expect("get a");
    assert!(a.status == ProcessStatus::Running && a.lease.is_some(), "{a:?}");
    worker.drain().await;
    assert_ended_without_leases(&p, &store, &["a", "b"]).await;
    p.shutdown().await;
}

/// A claim waiting for a slot reads its process again once it has one: a
/// cancellation requested while it waited ends it before its tool runs (the
/// claim's own record, read before the request, would have run it).
pub async fn a_claim_waiting_for_a_slot_sees_a_cancel_before_it_runs(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = one_slot_runtime(&store).await;
    a_waits_behind_b(&store, &probe, &p).await;
    let a = p.cancel("a", Some("not now".into())).await.expect("cancel a");
    assert_eq!(
        a.status,
        ProcessStatus::Running,
        "a claim's live lease holds the end back: {a:?}"
    );
    p.signal("b", "go", "g", json!({})).await.expect("signal b");
    let a = p.await_output("a", WAIT).await.expect("await a");
    assert_eq!(
        a.outcome,
        Some(Outcome::cancelled("not now")),
        "its echo never ran: {a:?}"
    );
    p.await_output("b", WAIT).await.expect("await b");
    assert_ended_without_leases(&p, &store, &["a", "b"]).await;
    p.shutdown().await;
}

/// A claim waiting for a slot whose lease renewal the store fails keeps its
/// claim and tries again, as a run's guard does: once the slot frees it runs
/// (an owner-bound process left started with nobody to run it could never
/// run again).
pub async fn a_claim_waiting_for_a_slot_outlives_a_failed_renewal(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(
        &store,
        WorkerConfig {
            lease_ttl: Duration::from_millis(300),
            ..one_slot()
        },
    );
    p.worker().expect("a worker").drive_once().await.expect("drive");
    a_waits_behind_b(&store, &probe, &p).await;
    let mut failed = probe.failed_renewals();
    probe.fail_renewals(true);
    tokio::time::timeout(WAIT, failed.wait_for(|ids| ids.iter().any(|id| id == "a")))
        .await
        .expect("a's renewal was tried")
        .expect("probe");
    probe.fail_renewals(false);
    p.signal("b", "go", "g", json!({})).await.expect("signal b");
    let a = p.await_output("a", WAIT).await.expect("await a");
    assert_eq!(a.outcome, Some(Outcome::success(json!("a"))), "{a:?}");
    p.await_output("b", WAIT).await.expect("await b");
    assert_ended_without_leases(&p, &store, &["a", "b"]).await;
    p.shutdown().await;
}

/// A worker that stops claiming (a server's shutdown grace) still runs the
/// claims it made: a claim waiting for a slot runs when the slot frees,
/// rather than being stopped (an owner-bound one abandoned, never run).
pub async fn a_claim_made_before_claiming_stopped_still_runs(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(&store, one_slot());
    let worker = p.worker().expect("a worker").clone();
    worker.drive_once().await.expect("drive");
    a_waits_behind_b(&store, &probe, &p).await;
    worker.stop_claiming();
    p.signal("b", "go", "g", json!({})).await.expect("signal b");
    let a = p.await_output("a", WAIT).await.expect("await a");
    assert_eq!(a.outcome, Some(Outcome::success(json!("a"))), "{a:?}");
    p.shutdown().await;
}

/// An owner-bound claim whose lease lapses while it waits for a slot (its
/// renewals failing) never ran and can never run: its owner files the
/// abandon request, and it ends `abandoned` as a reconciled request instead
/// of staying `running` with nobody to end it.
pub async fn an_owner_bound_claim_lapsed_waiting_for_a_slot_is_abandoned(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = probed_runtime(
        &store,
        WorkerConfig {
            lease_ttl: Duration::from_millis(300),
            ..one_slot()
        },
    );
    let worker = p.worker().expect("a worker").clone();
    worker.drive_once().await.expect("drive");
    a_waits_behind_b(&store, &probe, &p).await;
    let mut failed = probe.failed_renewals();
    probe.fail_renewals(true);
    tokio::time::timeout(WAIT, failed.wait_for(|ids| ids.iter().any(|id| id == "a")))
        .await
        .expect("a's renewal was tried")
        .expect("probe");
    store.clock.advance(1_000);
    let request = p
        .await_event("a", "process.abandon_requested", 0, WAIT)
        .await
        .expect("the owner requested a's abandonment");
    assert!(
        request.payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("waited for a worker slot")),
        "{request:?}"
    );
    probe.fail_renewals(false);
    let a = tokio::time::timeout(WAIT, async {
        loop {
            worker.drive_once().await.expect("drive");
            let a = p.get("a").await.expect("get a");
            if a.is_terminal() {
                break a;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a ended");
    match &a.outcome {
        Some(Outcome::Abandoned { evidence }) => assert_eq!(evidence.writer, AbandonWriter::ReconciledRequest),
        other => panic!("{other:?}"),
    }
    p.shutdown().await;
}

/// A drain that begins while a drive is claiming waits for what the claim
/// brings back: the drive's claim of `a` returns after the drain began and
/// after the only other run (`b`) ended, so nothing is in flight and every
/// slot is free, yet the drain returns only once `a` has ended.
pub async fn a_drain_waits_for_a_drive_claiming(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    let (probe, p) = one_slot_runtime(&store).await;
    let draining = p.worker().expect("a worker").clone();
    let (inner, starter) = (store.registry.clone(), p.clone());
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let (hooked, hook_ran) = tokio::sync::oneshot::channel();
    probe.before_next_claim_batch(Box::new(move || {
        Box::pin(async move {
            register_a_then_start_b(inner, &starter, "sleep", json!({"ms": 600_000})).await;
            let drain = draining.clone();
            tokio::spawn(async move {
                drain.drain().await;
                let _ = drained_tx.send(());
            });
            // The drain stops `b`; once it has ended and given its slot
            // back, only this claim is left.
            let b = starter.await_output("b", WAIT).await.expect("await b");
            assert!(b.is_terminal(), "the drain did not stop b: {b:?}");
            tokio::time::timeout(WAIT, async {
                while draining.free_slots() < 1 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("b gave its slot back");
            let _ = hooked.send(());
        })
    }));
    p.hub().notify_work();
    hook_ran.await.expect("the next drive claimed");
    tokio::time::timeout(WAIT, drained_rx)
        .await
        .expect("the drain returned")
        .expect("drained");
    assert_ended_without_leases(&p, &store, &["a", "b"]).await;
    p.shutdown().await;
}

/// A start that claims for itself while a drive is claiming never leaves the
/// drive's claim without a run: with one slot, a start made after a drive
/// counted its free slot and before it claims takes that slot, and the
/// drive's claim runs when it frees; both processes run and end (a started
/// owner-bound process handed back for want of a slot could never run again).
pub async fn a_start_racing_a_drive_leaves_no_claim_without_a_slot(factory: &dyn StoreFactory) {
    let store = factory.create(ManualClock::new(1_000)).await;
    // A drive that found the worklist empty: the worker may take starts now.
    let (probe, p) = one_slot_runtime(&store).await;
    // At the next drive's claim, after it counted its free slot.
    let (inner, starter) = (store.registry.clone(), p.clone());
    let (hooked, hook_ran) = tokio::sync::oneshot::channel();
    probe.before_next_claim_batch(Box::new(move || {
        Box::pin(async move {
            register_a_then_start_b(inner, &starter, "echo", json!({"value": "b"})).await;
            let _ = hooked.send(());
        })
    }));
    p.hub().notify_work();
    hook_ran.await.expect("the next drive claimed");
    for id in ["a", "b"] {
        let r = terminal(&p, id).await;
        assert_eq!(r.status, ProcessStatus::Completed, "{id}: {r:?}");
        crate::assert_fold(store.registry.as_ref(), id).await;
    }
    p.shutdown().await;
}
