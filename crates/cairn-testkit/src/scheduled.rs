//! Schedules at run time (SPEC §18), on the injected clock: fires at the right
//! times and once each, `skip` while the last fire's process runs, pause and
//! resume, one catch-up after downtime, and bad input refused at creation.
//! These are execution contracts (listed in [`crate::execution_suite!`]).

use std::sync::Arc;

use cairn_core::{
    Clock, Disposition, Overlap, ProcessFilter, Processes, Schedule, ScheduleRequest, StartTemplate, WorkerConfig,
};
use cairn_tools::builtin_tools;
use serde_json::{json, Value};

use crate::{StoreFactory, TestStore};

fn runtime(store: &TestStore, owner: &str) -> Processes {
    Processes::builder(store.registry.clone())
        .tools(builtin_tools(false))
        .clock(Arc::new(store.clock.clone()))
        .worker_config(WorkerConfig {
            owner_id: owner.to_string(),
            sweep_interval: std::time::Duration::from_millis(200),
            ..WorkerConfig::default()
        })
        .start()
}

fn request(id: &str, every: &str, tool: &str, args: Value, overlap: Overlap) -> ScheduleRequest {
    ScheduleRequest {
        id: id.into(),
        cron: None,
        every: Some(every.into()),
        timezone: None,
        start: StartTemplate {
            input: cairn_core::ProcessInput::ToolCall {
                tool: tool.into(),
                args,
            },
            disposition: Disposition::Rerunnable,
            originator: cairn_core::Originator::host(),
            caused_by: None,
            grant: None,
            wake_target: None,
            event_types: Vec::new(),
            env_spec: None,
            external_ref: None,
        },
        overlap,
    }
}

fn echo_every(id: &str, every: &str) -> ScheduleRequest {
    request(id, every, "echo", json!({"value": id}), Overlap::Allow)
}

/// Ids of every process the schedule `id` started, in id order.
async fn fired(p: &Processes, id: &str) -> Vec<String> {
    let page = p.list(&ProcessFilter::any()).await.expect("list");
    page.items
        .into_iter()
        .map(|r| r.id)
        .filter(|pid| pid.starts_with(&format!("{id}@")))
        .collect()
}

fn fire_ids(id: &str, times: &[u64]) -> Vec<String> {
    let mut ids: Vec<String> = times.iter().map(|t| format!("{id}@{t}")).collect();
    ids.sort();
    ids
}

async fn create(p: &Processes, req: ScheduleRequest) -> Schedule {
    let (s, created) = p.create_schedule(req).await.expect("create the schedule");
    assert!(created);
    s
}

/// `every 10s` fires at creation + 10 s, + 20 s, ...: not a millisecond early,
/// one process per fire however often the fires are looked at, each run once.
pub async fn every_fires_on_time_once_per_fire(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let p = runtime(&store, "w1");
    let t0 = store.clock.now_ms();
    let s = create(&p, echo_every("tick", "10s")).await;
    assert_eq!(s.next_fire_ms, t0 + 10_000);
    assert_eq!(
        p.registry().next_due(t0).await.unwrap(),
        Some(t0 + 10_000),
        "the driver's due time"
    );

    store.clock.advance(9_999);
    p.fire_schedules().await.expect("fire");
    assert!(fired(&p, "tick").await.is_empty(), "not due a millisecond early");

    store.clock.advance(1);
    for _ in 0..3 {
        p.fire_schedules().await.expect("fire");
    }
    assert_eq!(
        fired(&p, "tick").await,
        fire_ids("tick", &[t0 + 10_000]),
        "one process for the fire"
    );
    store.clock.advance(10_000);
    p.fire_schedules().await.expect("fire");
    p.fire_schedules().await.expect("fire");
    let ids = fired(&p, "tick").await;
    assert_eq!(ids, fire_ids("tick", &[t0 + 10_000, t0 + 20_000]));
    for id in &ids {
        let done = p
            .await_output(id, std::time::Duration::from_secs(20))
            .await
            .expect("await");
        assert_eq!(done.status, cairn_core::ProcessStatus::Completed, "{done:?}");
        let log = p.events(id, 0, Some(1000)).await.expect("events");
        let starts = log.events.iter().filter(|e| e.event_type == "process.started").count();
        assert_eq!(starts, 1, "{id} ran once");
    }
    let s = p.get_schedule("tick").await.expect("get");
    assert_eq!(s.next_fire_ms, t0 + 30_000);
    assert_eq!(
        s.last_process_id.as_deref(),
        Some(format!("tick@{}", t0 + 20_000).as_str())
    );
    p.shutdown().await;
}

/// A fire whose start the start path refuses (here its id is taken by
/// another start) is skipped and recorded on the schedule as its
/// `last_refusal`, with the start's code; the next fire that starts a
/// process clears it.
pub async fn a_refused_fire_is_recorded_until_one_starts(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    // No worker: its driver's sweep would fire the schedule itself between
    // the clock's step and this test's fire, whose report is read here.
    let p = Processes::builder(store.registry.clone())
        .tools(builtin_tools(false))
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let t0 = store.clock.now_ms();
    create(&p, echo_every("held", "10s")).await;
    let taken = format!("held@{}", t0 + 10_000);
    p.start(cairn_core::StartRequest::external(&taken, json!({})))
        .await
        .expect("another start takes the fire's id");
    store.clock.advance(10_000);
    let report = p.fire_schedules().await.expect("fire");
    assert_eq!(report.refused, vec![taken.clone()], "{report:?}");
    let s = p.get_schedule("held").await.expect("get");
    let refusal = s.last_refusal.expect("the refusal is on the schedule");
    assert_eq!(
        (refusal.fire_ms, refusal.process_id.as_str(), refusal.code.as_str()),
        (t0 + 10_000, taken.as_str(), "registration_conflict")
    );
    assert!(refusal.message.contains(&taken), "{}", refusal.message);
    assert_eq!(s.last_process_id, None, "no fire started a process");
    assert_eq!(s.next_fire_ms, t0 + 20_000, "the refused fire is passed over");

    store.clock.advance(10_000);
    let report = p.fire_schedules().await.expect("fire");
    let next = format!("held@{}", t0 + 20_000);
    assert_eq!(report.started, vec![next.clone()], "{report:?}");
    let s = p.get_schedule("held").await.expect("get");
    assert_eq!(s.last_refusal, None, "a fire that started clears it");
    assert_eq!(s.last_process_id.as_deref(), Some(next.as_str()));

    // A start that takes a fire's id with the fire's own input, disposition
    // and provenance but another registration (a wake target, an external
    // ref, an event type) made no process of this schedule's: refused too.
    for (i, change) in ["wake_target", "external_ref", "event_types"].into_iter().enumerate() {
        let fire_ms = t0 + 30_000 + 10_000 * i as u64;
        let lookalike_id = format!("held@{fire_ms}");
        let mut lookalike = s.start.start_request(lookalike_id.clone());
        match change {
            "wake_target" => lookalike.wake_target = Some(crate::session("s1")),
            "external_ref" => {
                lookalike.external_ref = Some(cairn_core::ExternalRef {
                    backend: "other".into(),
                    id: "X-9".into(),
                    metadata: None,
                })
            }
            _ => lookalike.event_types.push(cairn_core::EventType::plain("app.extra")),
        }
        p.start(lookalike).await.expect("another start takes the fire's id");
        store.clock.advance(10_000);
        let report = p.fire_schedules().await.expect("fire");
        assert_eq!(report.refused, vec![lookalike_id.clone()], "{change}: {report:?}");
        let got = p.get_schedule("held").await.expect("get");
        assert_eq!(
            got.last_refusal.map(|r| r.code),
            Some("registration_conflict".to_string()),
            "{change}"
        );
    }
    p.shutdown().await;
}

/// `echo` as a later version declares it: with an event type more.
struct RedeclaredEcho;

#[cairn_core::async_trait]
impl cairn_core::Tool for RedeclaredEcho {
    fn name(&self) -> &str {
        "echo"
    }

    fn event_types(&self) -> Vec<cairn_core::EventType> {
        vec![cairn_core::EventType::plain("echo.note")]
    }

    async fn run(&self, _ctx: cairn_core::ToolContext, args: Value) -> cairn_core::Outcome {
        cairn_core::Outcome::success(args["value"].clone())
    }
}

/// A fire that started its process but did not advance its schedule (a
/// crash between the two) and is fired again on a node whose start checks
/// now refuse it (its tool redeclared) is the fire that started: the process
/// it made is its answer, not a refusal beside a process that runs.
pub async fn a_fire_made_before_a_crash_is_not_refused_again(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let before = Processes::builder(store.registry.clone())
        .tools(builtin_tools(false))
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let t0 = store.clock.now_ms();
    create(&before, echo_every("again", "10s")).await;
    let fire = format!("again@{}", t0 + 10_000);
    let template = before.get_schedule("again").await.expect("get").start;
    before
        .start(template.start_request(fire.clone()))
        .await
        .expect("the fire's start, before the crash");
    // After the restart, this node's `echo` declares an event type more:
    // the same start is a registration conflict now.
    let mut tools = cairn_core::ToolRegistry::new();
    tools.register(Arc::new(RedeclaredEcho));
    let after = Processes::builder(store.registry.clone())
        .tools(tools)
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let refused = after
        .start(template.start_request(fire.clone()))
        .await
        .expect_err("the start's checks refuse it now");
    assert!(refused.is_client_error(), "{refused}");
    store.clock.advance(10_000);
    let report = after.fire_schedules().await.expect("fire");
    assert_eq!(report.started, vec![fire.clone()], "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
    let s = after.get_schedule("again").await.expect("get");
    assert_eq!(s.last_refusal, None);
    assert_eq!(s.last_process_id.as_deref(), Some(fire.as_str()));
    assert_eq!(s.next_fire_ms, t0 + 20_000);
    before.shutdown().await;
    after.shutdown().await;
}

/// `overlap: skip`: no fire starts while the previous fire's process is
/// running (here suspended on a signal); the first fire after it ended does.
pub async fn skip_skips_while_the_last_run_is_running(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let p = runtime(&store, "w1");
    let t0 = store.clock.now_ms();
    create(
        &p,
        request("hold", "10s", "wait_signal", json!({"name": "go"}), Overlap::Skip),
    )
    .await;
    store.clock.advance(10_000);
    p.fire_schedules().await.expect("fire");
    let first = format!("hold@{}", t0 + 10_000);
    assert_eq!(fired(&p, "hold").await, std::slice::from_ref(&first));

    store.clock.advance(10_000);
    p.fire_schedules().await.expect("fire");
    assert_eq!(
        fired(&p, "hold").await,
        std::slice::from_ref(&first),
        "skipped while {first} runs"
    );
    let s = p.get_schedule("hold").await.expect("get");
    assert_eq!(s.next_fire_ms, t0 + 30_000, "the skipped fire is passed over");
    assert_eq!(s.last_process_id.as_deref(), Some(first.as_str()));

    p.signal(&first, "go", "g1", json!(1)).await.expect("signal");
    let done = p
        .await_output(&first, std::time::Duration::from_secs(20))
        .await
        .expect("await");
    assert!(done.is_terminal());
    store.clock.advance(10_000);
    p.fire_schedules().await.expect("fire");
    assert_eq!(
        fired(&p, "hold").await,
        fire_ids("hold", &[t0 + 10_000, t0 + 30_000]),
        "fires again once the last run ended"
    );
    p.shutdown().await;
}

/// A paused schedule does not fire; a resumed one fires from its first fire
/// time after the resume (what was missed while paused is not caught up).
pub async fn pause_and_resume(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let p = runtime(&store, "w1");
    let t0 = store.clock.now_ms();
    create(&p, echo_every("nap", "10s")).await;
    let paused = p.pause_schedule("nap").await.expect("pause");
    assert!(paused.paused);
    assert_eq!(
        p.registry().next_due(t0).await.unwrap(),
        None,
        "a paused schedule is no due time"
    );
    store.clock.advance(35_000);
    p.fire_schedules().await.expect("fire");
    assert!(fired(&p, "nap").await.is_empty(), "paused");
    let resumed = p.resume_schedule("nap").await.expect("resume");
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fire_ms, t0 + 40_000, "the first fire after now");
    p.fire_schedules().await.expect("fire");
    assert!(fired(&p, "nap").await.is_empty(), "nothing caught up from the pause");
    store.clock.advance(5_000);
    p.fire_schedules().await.expect("fire");
    assert_eq!(fired(&p, "nap").await, fire_ids("nap", &[t0 + 40_000]));
    let e = p.pause_schedule("none").await.expect_err("unknown");
    assert_eq!(e.code(), "unknown_schedule");
    p.delete_schedule("nap").await.expect("delete");
    assert_eq!(
        p.get_schedule("nap").await.expect_err("gone").code(),
        "unknown_schedule"
    );
    p.shutdown().await;
}

/// A pause or a delete that lands after a pass has read its due schedules
/// and before it fires them wins: the fire starts nothing, and a schedule
/// made again under the id does not take the old one's fire as its last.
pub async fn a_pause_landing_after_the_due_read_wins(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    // No worker: the pass below is the only one (a drive's own pass could
    // read the due schedules beside it).
    let p = Processes::builder(probe.clone())
        .tools(builtin_tools(false))
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let t0 = store.clock.now_ms();
    create(&p, echo_every("late", "10s")).await;
    create(&p, echo_every("gone", "10s")).await;
    let registry = store.registry.clone();
    probe.after_next_due_read(Box::new(move || {
        Box::pin(async move {
            registry
                .set_schedule_paused("late", true, None)
                .await
                .expect("pause")
                .expect("paused");
            assert!(registry.delete_schedule("gone").await.expect("delete"));
        })
    }));
    store.clock.advance(10_000);
    let report = p.fire_schedules().await.expect("fire");
    assert!(report.started.is_empty(), "{report:?}");
    assert!(fired(&p, "late").await.is_empty(), "paused before its fire");
    assert!(fired(&p, "gone").await.is_empty(), "deleted before its fire");
    let late = p.get_schedule("late").await.expect("late");
    assert!(late.paused);
    assert_eq!((late.last_fire_ms, late.last_process_id), (None, None));
    assert_eq!(late.next_fire_ms, t0 + 10_000, "the pause keeps the fire it stopped");
    p.shutdown().await;
}

/// Two nodes that both made a schedule's catch-up fire: the one whose
/// advance took counts the fire times passed over, the other counts none
/// (each logged the whole count), and one process is started for the fire.
pub async fn only_the_fire_that_advances_counts_what_it_passed_over(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    // No workers: the passes below are the only ones.
    let node = |registry: Arc<dyn cairn_core::ProcessRegistry>| {
        Processes::builder(registry)
            .tools(builtin_tools(false))
            .clock(Arc::new(store.clock.clone()))
            .without_worker()
            .start()
    };
    let a = Arc::new(node(store.registry.clone()));
    let b = node(probe.clone());
    let t0 = store.clock.now_ms();
    create(&a, echo_every("sync", "10s")).await;
    store.clock.advance(10_000);
    a.fire_schedules().await.expect("fire");
    store.clock.advance(3_600_000);
    let beside = a.clone();
    let a_report = Arc::new(parking_lot::Mutex::new(None));
    let a_said = a_report.clone();
    probe.before_next_schedule_advance(Box::new(move || {
        Box::pin(async move {
            *a_said.lock() = Some(beside.fire_schedules().await.expect("node a fires"));
        })
    }));
    let b_report = b.fire_schedules().await.expect("node b fires");
    let a_report = a_report.lock().take().expect("node a fired beside node b");
    assert_eq!(a_report.passed_over, 359, "{a_report:?}");
    assert_eq!(b_report.passed_over, 0, "{b_report:?}");
    assert_eq!(
        fired(&a, "sync").await,
        fire_ids("sync", &[t0 + 10_000, t0 + 20_000]),
        "one catch-up"
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// A runtime stopped for an hour and started again over the same store fires
/// exactly one catch-up (the first missed fire), counts the fire times it
/// passed over, then keeps time from now.
pub async fn one_catch_up_after_downtime(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let t0 = store.clock.now_ms();
    let before = runtime(&store, "node-a");
    create(&before, echo_every("sync", "10s")).await;
    store.clock.advance(10_000);
    before.fire_schedules().await.expect("fire");
    before.shutdown().await;
    drop(before);

    store.clock.advance(3_600_000);
    // No worker: a driver's pass beside this one could make the catch-up
    // and count it instead.
    let after = Processes::builder(store.registry.clone())
        .tools(builtin_tools(false))
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let report = after.fire_schedules().await.expect("fire");
    // The fire that catches up counts the fire times it passed over.
    assert_eq!(report.passed_over, 359, "{report:?}");
    let report = after.fire_schedules().await.expect("fire");
    assert_eq!(report.passed_over, 0, "{report:?}");
    assert_eq!(
        fired(&after, "sync").await,
        fire_ids("sync", &[t0 + 10_000, t0 + 20_000]),
        "one catch-up for the 360 missed fires"
    );
    let s = after.get_schedule("sync").await.expect("get");
    assert_eq!(s.next_fire_ms, t0 + 3_620_000, "the next fire is the first after now");
    store.clock.advance(10_000);
    after.fire_schedules().await.expect("fire");
    assert_eq!(fired(&after, "sync").await.len(), 3);
    after.shutdown().await;
}

/// Bad input is refused at creation with a clear error and stores nothing: a
/// template naming an unknown tool or carrying bad args or an id, an invalid
/// cron or timezone, an interval below 1 s; another definition under a taken
/// id is `schedule_conflict`, the same one is the same create.
pub async fn schedule_rejects_bad_input(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let p = runtime(&store, "w1");
    let unknown_tool = request("a", "10s", "nope", json!({}), Overlap::Skip);
    assert_eq!(
        p.create_schedule(unknown_tool).await.unwrap_err().code(),
        "unknown_tool"
    );
    let bad_args = request("b", "10s", "sleep", json!({"ms": "soon"}), Overlap::Skip);
    assert_eq!(p.create_schedule(bad_args).await.unwrap_err().code(), "invalid_request");
    let mut bad_disposition = serde_json::to_value(echo_every("c", "10s")).unwrap();
    bad_disposition["start"]["disposition"] = json!("sometimes");
    let e = ScheduleRequest::from_json(bad_disposition).unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    assert!(e.to_string().contains("sometimes"), "{e}");
    let mut fast = echo_every("d", "10s");
    fast.every = Some("999ms".into());
    assert_eq!(p.create_schedule(fast).await.unwrap_err().code(), "invalid_request");
    let mut cron = echo_every("e", "10s");
    cron.every = None;
    cron.cron = Some("0 25 * * *".into());
    assert_eq!(
        p.create_schedule(cron.clone()).await.unwrap_err().code(),
        "invalid_request"
    );
    cron.cron = Some("0 2 * * *".into());
    cron.timezone = Some("Europe/Nowhere".into());
    assert_eq!(p.create_schedule(cron).await.unwrap_err().code(), "invalid_request");
    let mut with_id = serde_json::to_value(echo_every("f", "10s")).unwrap();
    with_id["start"]["id"] = json!("f-1");
    assert_eq!(
        ScheduleRequest::from_json(with_id).unwrap_err().code(),
        "invalid_request"
    );
    let stored: Vec<String> = p
        .list_schedules(None, None)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(stored.is_empty(), "nothing refused was stored: {stored:?}");

    let (first, created) = p.create_schedule(echo_every("g", "10s")).await.expect("create");
    assert!(created);
    let (again, created) = p.create_schedule(echo_every("g", "10s")).await.expect("again");
    assert!(!created && again == first, "the same create");
    let e = p.create_schedule(echo_every("g", "20s")).await.unwrap_err();
    assert_eq!(e.code(), "schedule_conflict");
    assert!(
        e.to_string()
            .contains("it fires on every `10s`, this request on every `20s`"),
        "{e}"
    );
    // A schedule stored before a cron check was added (its `1,,2` read as
    // `1,2`), created again as it was, is the same create; another
    // definition with the same fault is refused for it.
    let mut old = echo_every("old", "10s");
    old.every = None;
    old.cron = Some("1,,2 9 * * *".into());
    assert_eq!(
        p.create_schedule(old.clone()).await.unwrap_err().code(),
        "invalid_request"
    );
    let spec = cairn_core::schedule::ScheduleSpec::parse(old.cron.as_deref(), None, None).expect("read as stored");
    let stored = Schedule::new(old.clone(), &spec, store.clock.now_ms()).expect("fires");
    assert!(store.registry.insert_schedule(&stored).await.expect("stored").is_none());
    let (again, created) = p.create_schedule(old.clone()).await.expect("the same create");
    assert!(!created && again == stored, "{again:?}");
    let mut other = old;
    other.cron = Some("1,,3 9 * * *".into());
    assert_eq!(p.create_schedule(other).await.unwrap_err().code(), "invalid_request");
    // So is one whose day of week was given a month's name (read as its
    // number), and one whose template's tool is gone from this server
    // since: its fires say they cannot start.
    let mut named = echo_every("named", "10s");
    named.every = None;
    named.cron = Some("0 9 * * JAN".into());
    let e = p.create_schedule(named.clone()).await.unwrap_err();
    assert!(e.to_string().contains("day of week `JAN`"), "{e}");
    let mut gone = echo_every("gone", "10s");
    gone.start.input = cairn_core::ProcessInput::ToolCall {
        tool: "gone".into(),
        args: json!({}),
    };
    assert_eq!(
        p.create_schedule(gone.clone()).await.unwrap_err().code(),
        "unknown_tool"
    );
    for req in [&named, &gone] {
        let spec = cairn_core::schedule::ScheduleSpec::parse(req.cron.as_deref(), req.every.as_deref(), None)
            .expect("read as stored");
        let stored = Schedule::new(req.clone(), &spec, store.clock.now_ms()).expect("fires");
        assert!(store.registry.insert_schedule(&stored).await.expect("stored").is_none());
        let (again, created) = p.create_schedule(req.clone()).await.expect("the same create");
        assert!(!created && again == stored, "{again:?}");
    }
    let mut elsewhere = gone;
    elsewhere.every = Some("20s".into());
    assert_eq!(p.create_schedule(elsewhere).await.unwrap_err().code(), "unknown_tool");
    // No schedule id holds a control character: the same answer on every
    // backend (PostgreSQL takes no NUL in text).
    for e in [
        p.get_schedule("a\0b").await.map(|_| ()).unwrap_err(),
        p.pause_schedule("a\0b").await.map(|_| ()).unwrap_err(),
        p.delete_schedule("a\0b").await.unwrap_err(),
        p.list_schedules(Some("\0"), None).await.map(|_| ()).unwrap_err(),
        // Its timing refused too, by a check a stored schedule may predate.
        p.create_schedule(ScheduleRequest {
            id: "a\0b".into(),
            ..named.clone()
        })
        .await
        .map(|_| ())
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), "invalid_id", "{e}");
    }

    // A template's parent that ended and was pruned is still a parent (its
    // tombstone stands, and a start under it is taken): a create, and the
    // same create retried, are answered as any other.
    p.start(cairn_core::StartRequest::external("parent", json!({})))
        .await
        .expect("parent");
    p.complete_external("parent", cairn_core::Outcome::success(json!(1)), "test")
        .await
        .expect("ended");
    let mut child = echo_every("h", "1h");
    child.start.caused_by = Some(cairn_core::model::CausalRef::process("parent"));
    let (first, created) = p.create_schedule(child.clone()).await.expect("create");
    assert!(created);
    store.clock.advance(1);
    let report = p
        .prune(
            store.clock.now_ms(),
            cairn_core::StatusFilter::Any,
            cairn_core::Watermark::NoProjector,
        )
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    let (again, created) = p.create_schedule(child).await.expect("the same create, retried");
    assert!(!created && again == first, "the same create");
    p.shutdown().await;
}

/// A fire whose start committed and whose advance the store failed does not
/// hold the pass's other fires back, and the next pass fires it again under
/// the same process id (SPEC §18: a crash between the start and the advance
/// re-fires the same id, never another), then advances it.
pub async fn a_fire_whose_advance_failed_refires_the_same_process(factory: &dyn StoreFactory) {
    let store = factory.create(cairn_core::ManualClock::new(1_000_000)).await;
    let probe = crate::probe::ReadProbe::new(store.registry.clone());
    let p = Processes::builder(probe.clone())
        .tools(builtin_tools(false))
        .clock(Arc::new(store.clock.clone()))
        .without_worker()
        .start();
    let a = create(&p, echo_every("a", "10s")).await;
    let b = create(&p, echo_every("b", "10s")).await;
    store.clock.advance(10_000);
    probe.fail_next_schedule_advances(1);
    let first = p.fire_schedules().await.expect("fire");
    assert_eq!(first.failed.len(), 1, "{first:?}");
    let failed = first.failed[0].clone();
    let other = if failed == "a" { &b } else { &a };
    assert!(
        first.started.contains(&other.fire_id(other.next_fire_ms)),
        "the other fired: {first:?}"
    );
    let held = p.get_schedule(&failed).await.expect("get");
    let moved = p.get_schedule(&other.id).await.expect("get");
    assert!(moved.next_fire_ms > other.next_fire_ms, "the other advanced");
    let second = p.fire_schedules().await.expect("fire again");
    let again = held.fire_id(held.next_fire_ms);
    assert_eq!(second.started, vec![again.clone()], "the same process id: {second:?}");
    assert!(second.failed.is_empty(), "{second:?}");
    assert_eq!(
        fired(&p, &failed).await,
        vec![again.clone()],
        "one process for the fire"
    );
    let now = p.get_schedule(&failed).await.expect("get");
    assert!(now.next_fire_ms > held.next_fire_ms, "advanced by the second pass");
    assert_eq!(now.last_process_id.as_deref(), Some(again.as_str()));
}
