//! Children waits (SPEC §13): a rerunnable run suspends until the last (or,
//! for `any`, the first) of its awaited children ends, and that end makes it
//! claimable in the same write, recording `process.resumed` with reason
//! `children`.

use cairn_core::events::{self as ev};
use cairn_core::model::{CausalRef, ChildrenMode};
use cairn_core::{Outcome, ProcessEvent, ProcessStatus, Registration, WaitRequest};
use serde_json::{json, Value};

use crate::builders::*;
use crate::harness::{ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 30_000;

/// A rerunnable child of `parent`.
fn child_of(parent: &str, id: &str) -> Registration {
    let mut reg = rerunnable(id);
    reg.provenance.caused_by = Some(CausalRef::process(parent));
    reg
}

/// An externally owned child of `parent` (never claimable, so claims in these
/// contracts see only the parent).
fn external_child_of(parent: &str, id: &str) -> Registration {
    let mut reg = external(id);
    reg.provenance.caused_by = Some(CausalRef::process(parent));
    reg
}

fn ids(of: &[&str]) -> Vec<String> {
    of.iter().map(|s| s.to_string()).collect()
}

/// Claim `id`, start it, and suspend it on `wait`; answers whether the wait was recorded.
async fn try_suspend(h: &Harness, id: &str, wait: WaitRequest) -> bool {
    let (lease, rec) = h.claim_started(id, "w1", TTL).await;
    let recorded = ok(h.registry().wait(&lease, wait, rec.last_sequence).await, "wait");
    if !recorded {
        ok(h.registry().release(&lease).await, "release");
    }
    h.check(id).await;
    recorded
}

/// End the external child `id` with success.
async fn finish(h: &Harness, id: &str) {
    ok(
        h.registry()
            .complete_external(id, Outcome::success(json!(id)), "ci")
            .await,
        "complete_external",
    );
    h.check(id).await;
}

async fn claimed_ids(h: &Harness) -> Vec<String> {
    let claims = ok(h.registry().claim_batch("w2", TTL, 10).await, "claim_batch");
    for c in &claims {
        h.check(&c.process.id).await;
    }
    claims.into_iter().map(|c| c.process.id).collect()
}

async fn log(h: &Harness, id: &str) -> Vec<ProcessEvent> {
    ok(h.registry().events_after(id, 0, Some(1000)).await, "events").events
}

fn reason(e: &ProcessEvent) -> Option<&str> {
    e.payload.get("reason").and_then(Value::as_str)
}

/// `all`: only the last child's end wakes the parent, in the same write
/// (`process.resumed` reason `children`); the claim that follows resumes it
/// without a second `process.resumed`. A revenant's end of a child is fenced
/// and wakes nothing.
pub async fn children_all_wakes_on_the_last_end(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external_child_of("p", "p/1")).await;
    h.register(child_of("p", "p/2")).await;
    let (old, _) = h.claim_started("p/2", "w-old", TTL).await;
    let wait = WaitRequest::children(ids(&["p/1", "p/2"]), ChildrenMode::All, 1, None);
    assert!(try_suspend(&h, "p", wait).await, "the wait is recorded");
    let w = h.get("p").await.wait.expect("the wait");
    assert_eq!((w.kind.as_str(), w.mode), ("children", Some(ChildrenMode::All)));
    assert_eq!(w.ids, Some(ids(&["p/1", "p/2"])));

    finish(&h, "p/1").await;
    assert!(h.get("p").await.wait.is_some(), "one of two ended: still waiting");
    assert!(claimed_ids(&h).await.is_empty(), "the parent is not claimable yet");

    // p/2's lease lapses and another owner takes it; the revenant of the old
    // lease cannot end it.
    h.advance(TTL + 1);
    let (lease, _) = h.claim_started("p/2", "w-new", TTL).await;
    h.rejects(
        "lease_fenced",
        "a revenant's completion",
        h.registry().complete(&old, Outcome::success(json!(0))),
    )
    .await;
    assert!(h.get("p").await.wait.is_some(), "nothing fenced woke the parent");
    assert!(claimed_ids(&h).await.is_empty());

    ok(
        h.registry().complete(&lease, Outcome::success(json!(2))).await,
        "complete",
    );
    let events = log(&h, "p").await;
    let last = events.last().expect("a log");
    assert_eq!(last.event_type, ev::RESUMED, "the last end resumed the parent");
    assert_eq!(reason(last), Some("children"));
    assert_eq!(last.payload["ids"], json!(["p/1", "p/2"]));
    assert!(h.get("p").await.wait.is_none());
    h.check("p").await;
    assert_eq!(claimed_ids(&h).await, ["p"], "the parent is claimable at once");
    let events = log(&h, "p").await;
    assert_eq!(events.last().map(|e| e.event_type.as_str()), Some(ev::STARTED));
    let resumes = events.iter().filter(|e| e.event_type == ev::RESUMED).count();
    assert_eq!(resumes, 1, "one resumption");
}

/// `any`: the first child's end wakes the parent, whatever ended it (here a
/// cancellation of a child that never started).
pub async fn children_any_wakes_on_the_first_end(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external_child_of("p", "p/1")).await;
    h.register(child_of("p", "p/2")).await;
    let wait = WaitRequest::children(ids(&["p/1", "p/2"]), ChildrenMode::Any, 1, None);
    assert!(try_suspend(&h, "p", wait).await);
    let cancelled = ok(h.registry().request_cancel("p/2", None).await, "cancel");
    assert!(cancelled.cancelled_now);
    let last = log(&h, "p").await.last().cloned().expect("a log");
    assert_eq!(
        (last.event_type.as_str(), reason(&last)),
        (ev::RESUMED, Some("children"))
    );
    assert_eq!(claimed_ids(&h).await, ["p"]);
    h.check("p").await;
    // A later end of the other child finds no wait and writes nothing to p.
    let before = h.get("p").await.last_sequence;
    finish(&h, "p/1").await;
    assert_eq!(h.get("p").await.last_sequence, before);
}

/// A children wait names the waiter's own children, at least one, with a
/// mode; anything else is refused and writes nothing. A wait that is already
/// satisfied answers `false` and writes nothing: the run reads on.
pub async fn children_wait_checks_its_children(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external_child_of("p", "p/1")).await;
    h.register(external_child_of("p", "p/2")).await;
    h.register(external("stranger")).await;
    let (lease, rec) = h.claim_started("p", "w1", TTL).await;
    let seen = rec.last_sequence;
    let wait = |of: &[&str], mode| WaitRequest::children(ids(of), mode, 1, None);
    h.rejects(
        "invalid_request",
        "waiting on a process that is not a child",
        h.registry()
            .wait(&lease, wait(&["p/1", "stranger"], ChildrenMode::All), seen),
    )
    .await;
    h.rejects(
        "unknown_process",
        "waiting on an unknown child",
        h.registry().wait(&lease, wait(&["p/9"], ChildrenMode::All), seen),
    )
    .await;
    h.rejects(
        "invalid_request",
        "waiting on no children",
        h.registry().wait(&lease, wait(&[], ChildrenMode::Any), seen),
    )
    .await;
    let mut modeless = wait(&["p/1"], ChildrenMode::All);
    modeless.mode = None;
    h.rejects(
        "invalid_request",
        "a children wait without a mode",
        h.registry().wait(&lease, modeless, seen),
    )
    .await;
    assert_eq!(h.get("p").await.last_sequence, seen, "nothing was written");

    finish(&h, "p/1").await;
    let satisfied = ok(
        h.registry()
            .wait(&lease, wait(&["p/1", "p/2"], ChildrenMode::Any), seen)
            .await,
        "wait",
    );
    assert!(!satisfied, "an `any` wait with an ended child does not suspend");
    let rec = h.get("p").await;
    assert_eq!(rec.last_sequence, seen, "and writes nothing");
    assert!(rec.lease.is_some(), "the run keeps its lease");
    let recorded = ok(
        h.registry()
            .wait(&lease, wait(&["p/1", "p/2"], ChildrenMode::All), seen)
            .await,
        "wait",
    );
    assert!(recorded, "an `all` wait with one pending suspends");
    h.check("p").await;
}

/// A children wait's deadline is a due time like a timer's: past it the
/// parent is claimable and resumes with reason `timed_out`.
pub async fn children_wait_deadline_times_out(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external_child_of("p", "p/1")).await;
    let until = h.now() + 5_000;
    let wait = WaitRequest::children(ids(&["p/1"]), ChildrenMode::All, 1, Some(until));
    assert!(try_suspend(&h, "p", wait).await);
    assert_eq!(ok(h.registry().next_due(h.now()).await, "next_due"), Some(until));
    assert!(claimed_ids(&h).await.is_empty(), "not before its deadline");
    h.advance(5_000);
    assert_eq!(claimed_ids(&h).await, ["p"]);
    let last = log(&h, "p").await.last().cloned().expect("a log");
    assert_eq!(
        (last.event_type.as_str(), reason(&last)),
        (ev::RESUMED, Some("timed_out"))
    );

    // A child that ends after the deadline, before a late claim, does not
    // make the wait one its children ended: it timed out first.
    h.register(rerunnable("q")).await;
    h.register(external_child_of("q", "q/1")).await;
    let until = h.now() + 5_000;
    let wait = WaitRequest::children(ids(&["q/1"]), ChildrenMode::All, 1, Some(until));
    assert!(try_suspend(&h, "q", wait).await);
    h.advance(5_001);
    ok(
        h.registry()
            .complete_external("q/1", Outcome::success(json!(1)), "ci")
            .await,
        "end the child",
    );
    let last = log(&h, "q").await.last().cloned().expect("a log");
    assert_ne!(last.event_type, ev::RESUMED, "the child's end wrote no resumption");
    assert_eq!(claimed_ids(&h).await, ["q"]);
    let last = log(&h, "q").await.last().cloned().expect("a log");
    assert_eq!(
        (last.event_type.as_str(), reason(&last)),
        (ev::RESUMED, Some("timed_out"))
    );
}

fn cancel_reason(r: &cairn_core::ProcessRecord) -> Option<&str> {
    r.cancel_request.as_ref().and_then(|c| c.reason.as_deref())
}

/// One cancellation request reaches the whole tree in one write (SPEC §13):
/// every descendant that has not ended gets its own request, by the same rule
/// (a child nobody started ends `cancelled` at once, a running one and an
/// externally owned one get the request); an ended child and a bystander are
/// untouched; the answer names the descendants it reached; asking again
/// reaches nothing new.
pub async fn cancel_reaches_the_tree_in_one_write(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("t")).await;
    h.claim_started("t", "w1", TTL).await;
    h.register(child_of("t", "t/a")).await;
    h.claim_started("t/a", "w1", TTL).await;
    h.register(child_of("t", "t/b")).await;
    h.register(child_of("t/a", "t/a/1")).await;
    h.claim_started("t/a/1", "w1", TTL).await;
    h.register(external_child_of("t", "t/x")).await;
    h.register(child_of("t", "t/done")).await;
    let (done, _) = h.claim_started("t/done", "w1", TTL).await;
    ok(
        h.registry().complete(&done, Outcome::success(json!(1))).await,
        "complete",
    );
    h.register(rerunnable("bystander")).await;

    let answer = ok(
        h.registry().request_cancel("t", Some("stop".into())).await,
        "request_cancel",
    );
    assert!(!answer.cancelled_now, "the root is running: a request only");
    assert_eq!(cancel_reason(&answer.process), Some("stop"));
    let mut reached: Vec<&str> = answer.descendants.iter().map(|r| r.id.as_str()).collect();
    reached.sort_unstable();
    assert_eq!(reached, ["t/a", "t/a/1", "t/b", "t/x"]);
    for d in &answer.descendants {
        assert_eq!(d, &h.get(&d.id).await, "{}: the answer is the stored record", d.id);
    }
    let b = h.get("t/b").await;
    assert_eq!(b.status, ProcessStatus::Cancelled, "never started: cancelled at once");
    for id in ["t/a", "t/a/1", "t/x"] {
        let r = h.get(id).await;
        assert_eq!(r.status, ProcessStatus::Running, "{id}");
        assert_eq!(cancel_reason(&r), Some("stop"), "{id}: its own request");
    }
    assert_eq!(
        h.get("t/done").await.cancel_request,
        None,
        "an ended child is untouched"
    );
    assert_eq!(h.get("bystander").await.cancel_request, None);

    let before = h.get("t/a").await.last_sequence;
    let again = ok(
        h.registry().request_cancel("t", Some("stop".into())).await,
        "request_cancel again",
    );
    assert!(again.descendants.is_empty(), "nothing new to reach: {again:?}");
    assert_eq!(h.get("t/a").await.last_sequence, before, "no second request");
    h.check_all().await;
}

/// A child registered under a process whose cancellation was requested is
/// born cancelled (so none escapes a tree cancel that committed first); its
/// registration stays idempotent.
pub async fn a_child_of_a_cancelled_parent_is_born_cancelled(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.claim_started("p", "w1", TTL).await;
    ok(
        h.registry().request_cancel("p", Some("enough".into())).await,
        "request_cancel",
    );
    let born = ok(h.registry().register(child_of("p", "p/late"), None).await, "register");
    assert!(born.created);
    assert_eq!(born.process.status, ProcessStatus::Cancelled, "{born:?}");
    assert_eq!(cancel_reason(&born.process), Some("enough"));
    assert_eq!(born.process, h.get("p/late").await);
    let types: Vec<String> = log(&h, "p/late").await.into_iter().map(|e| e.event_type).collect();
    assert!(types.iter().any(|t| t == ev::CANCEL_REQUESTED), "{types:?}");
    let again = ok(
        h.registry().register(child_of("p", "p/late"), None).await,
        "register again",
    );
    assert!(!again.created);
    assert_eq!(again.process, born.process);
}

/// A `caused_by` process must exist: a start under an unknown parent is
/// `invalid_request` and stores nothing.
pub async fn a_child_names_an_existing_parent(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let err = h
        .rejects(
            "invalid_request",
            "a child of an unknown parent",
            h.registry().register(child_of("ghost", "ghost/1"), None),
        )
        .await;
    assert!(err.to_string().contains("ghost"), "the error names the parent: {err}");
    let mut by_kind = rerunnable("ghost/2");
    by_kind.provenance.caused_by = Some(CausalRef {
        kind: Some("process".into()),
        id: Some("ghost".into()),
        process_id: None,
    });
    h.rejects(
        "invalid_request",
        "a child of an unknown parent, by kind",
        h.registry().register(by_kind, None),
    )
    .await;
    h.rejects("unknown_process", "the refused child", h.registry().get("ghost/1"))
        .await;
}

/// Children registered while their parent's tree is cancelled, concurrently:
/// whichever commits first, every child ends up with a cancellation request.
pub async fn tree_cancel_races_child_starts(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("r")).await;
    h.claim_started("r", "w1", TTL).await;
    const KIDS: usize = 24;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(KIDS + 1));
    let mut tasks = Vec::new();
    for i in 0..KIDS {
        let (registry, barrier) = (h.shared(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            registry.register(child_of("r", &format!("r/{i:02}")), None).await
        }));
    }
    let (registry, b) = (h.shared(), barrier.clone());
    let cancel = tokio::spawn(async move {
        b.wait().await;
        registry.request_cancel("r", Some("race".into())).await
    });
    for t in tasks {
        ok(t.await.expect("join"), "register");
    }
    ok(cancel.await.expect("join"), "request_cancel");
    for i in 0..KIDS {
        let r = h.get(&format!("r/{i:02}")).await;
        assert_eq!(cancel_reason(&r), Some("race"), "{} escaped the cancel: {r:?}", r.id);
    }
}

/// A wait may also name other signals (`signals`): the next signal of any of
/// them wakes a signal wait or a children wait, and the claim records reason
/// `signal`; a child's end after that writes nothing more to the parent. A
/// timer wait may name none.
pub async fn a_wait_naming_other_signals_wakes_on_any_of_them(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let either = WaitRequest::signal("a", 1, None).or_signals(vec!["b".into()]);
    assert!(try_suspend(&h, "p", either).await);
    assert_eq!(
        h.get("p").await.wait.and_then(|w| w.signals),
        Some(vec!["b".to_string()])
    );
    h.append("p", signal("other", "s0", json!(0))).await;
    assert!(claimed_ids(&h).await.is_empty(), "another name wakes nothing");
    h.append("p", signal("b", "s1", json!("B"))).await;
    assert_eq!(claimed_ids(&h).await, ["p"]);
    let last = log(&h, "p").await.last().cloned().expect("a log");
    assert_eq!((last.event_type.as_str(), reason(&last)), (ev::RESUMED, Some("signal")));
    assert_eq!(last.payload["signals"], json!(["b"]));

    h.register(rerunnable("q")).await;
    h.register(external_child_of("q", "q/1")).await;
    let child_or_signal =
        WaitRequest::children(ids(&["q/1"]), ChildrenMode::Any, 1, None).or_signals(vec!["go".into()]);
    assert!(try_suspend(&h, "q", child_or_signal).await);
    h.append("q", signal("go", "g1", json!(1))).await;
    assert_eq!(claimed_ids(&h).await, ["q"]);
    let last = log(&h, "q").await.last().cloned().expect("a log");
    assert_eq!(
        (last.event_type.as_str(), reason(&last)),
        (ev::RESUMED, Some("signal")),
        "the children wait ended by its signal"
    );
    let before = h.get("q").await.last_sequence;
    finish(&h, "q/1").await;
    assert_eq!(h.get("q").await.last_sequence, before, "the child's end finds no wait");

    h.register(rerunnable("t")).await;
    let (lease, rec) = h.claim_started("t", "w1", TTL).await;
    let timer = WaitRequest::timer(1, h.now() + 1_000).or_signals(vec!["go".into()]);
    h.rejects(
        "invalid_request",
        "a timer naming signals",
        h.registry().wait(&lease, timer, rec.last_sequence),
    )
    .await;
    let bad = WaitRequest::signal("a", 1, None).or_signals(vec!["no spaces".into()]);
    h.rejects(
        "invalid_signal_name",
        "a wait naming a bad signal name",
        h.registry().wait(&lease, bad, rec.last_sequence),
    )
    .await;
}

/// A child the sweep ends (`abandoned {sweep}`: its node restarted) wakes a
/// parent waiting on it, in the same write, as any other end does.
pub async fn a_swept_child_wakes_its_parent(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    let old = ok(r.register_node("n1").await, "register n1");
    h.register(rerunnable("p")).await;
    let mut child = owner_bound("p/1");
    child.provenance.caused_by = Some(CausalRef::process("p"));
    h.register(child).await;
    h.claim_started("p/1", &old.owner_id(), TTL).await;
    let wait = WaitRequest::children(ids(&["p/1"]), ChildrenMode::All, 1, None);
    assert!(try_suspend(&h, "p", wait).await, "the wait is recorded");

    h.advance(3);
    ok(r.register_node("n1").await, "register n1 again");
    let swept = ok(r.sweep("p/1", "n1", 2).await, "sweep").expect("the child is swept");
    assert_eq!(swept.status, ProcessStatus::Abandoned);
    let events = log(&h, "p").await;
    let last = events.last().expect("a log");
    assert_eq!(last.event_type, ev::RESUMED, "the sweep resumed the parent");
    assert_eq!(reason(last), Some("children"));
    assert!(h.get("p").await.wait.is_none());
    h.check("p").await;
    assert_eq!(claimed_ids(&h).await, ["p"], "the parent is claimable at once");
}

/// A parent that has ended may leave children running (a script's children
/// it did not wait for): cancelling it reaches them, as cancelling its own
/// parent would through it. A retry of the same request while they run
/// answers the same end and reaches nothing new; one that reaches nothing is
/// `process_terminal`.
pub async fn cancel_of_an_ended_parent_reaches_its_running_children(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let (lease, _) = h.claim_started("p", "w1", TTL).await;
    h.register(child_of("p", "p/1")).await;
    h.claim_started("p/1", "w1", TTL).await;
    ok(h.registry().complete(&lease, Outcome::success(json!(1))).await, "end p");
    let answer = ok(h.registry().request_cancel("p", Some("stop".into())).await, "cancel p");
    assert_eq!(
        answer.process.status,
        ProcessStatus::Completed,
        "the parent's end stands"
    );
    assert!(!answer.cancelled_now);
    let reached: Vec<&str> = answer.descendants.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(reached, ["p/1"]);
    assert_eq!(cancel_reason(&h.check("p/1").await.record), Some("stop"));
    h.check("p").await;
    let again = ok(h.registry().request_cancel("p", Some("stop".into())).await, "retry");
    assert!(again.descendants.is_empty(), "{again:?}");
    h.rejects(
        "process_terminal",
        "another request reaching nothing",
        h.registry().request_cancel("p", Some("other".into())),
    )
    .await;
}

/// A resumption of a wait already resumed under the same lease (a retry of
/// one whose answer was lost) answers the record as it stands and writes no
/// second `process.resumed`; under another lease it is fenced.
pub async fn a_resumption_repeated_is_written_once(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("ob")).await;
    let (lease, rec) = h.claim_started("ob", "w1", TTL).await;
    let wait = WaitRequest::signal("go", 1, None);
    assert!(ok(h.registry().wait(&lease, wait, rec.last_sequence).await, "wait"));
    let payload = json!({"kind": "signal", "name": "go", "ordinal": 1, "reason": "timed_out"});
    let first = ok(h.registry().resume(&lease, payload.clone()).await, "resume");
    assert!(first.wait.is_none());
    let again = ok(h.registry().resume(&lease, payload).await, "resume again");
    assert_eq!(again.last_sequence, first.last_sequence, "nothing more was written");
    let log = ok(h.registry().events_after("ob", 0, Some(100)).await, "events").events;
    assert_eq!(log.iter().filter(|e| e.event_type == ev::RESUMED).count(), 1);
    h.check("ob").await;
}
