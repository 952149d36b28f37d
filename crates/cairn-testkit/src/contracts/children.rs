//! Children waits (SPEC §13): a rerunnable run suspends until the last (or,
//! for `any`, the first) of its awaited children ends, and that end makes it
//! claimable in the same write, recording `process.resumed` with reason
//! `children`.

use cairn_core::events::{self as ev};
use cairn_core::model::{CausalRef, ChildrenMode};
use cairn_core::{Outcome, ProcessEvent, Registration, WaitRequest};
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
}
