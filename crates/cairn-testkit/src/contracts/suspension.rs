//! Suspension (SPEC §13): a rerunnable run's wait releases its lease in the
//! same fenced write, the process is claimable only once the wait is satisfied
//! (the signal's append, the deadline, a cancellation request), and the claim
//! that resumes it records why.

use cairn_core::events::{self as ev};
use cairn_core::{Lease, ProcessEvent, ProcessFilter, ProcessStatus, WaitRequest};
use serde_json::{json, Value};

use crate::builders::*;
use crate::harness::{ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 30_000;

/// Claim `id`, start it, and suspend it on `wait`; answers the lease it held.
async fn suspended(h: &Harness, id: &str, wait: WaitRequest) -> Lease {
    let (lease, rec) = h.claim_started(id, "w1", TTL).await;
    let done = ok(h.registry().wait(&lease, wait, rec.last_sequence).await, "wait");
    assert!(done, "`{id}`: the wait is recorded");
    h.check(id).await;
    lease
}

async fn claimed_ids(h: &Harness, owner: &str) -> Vec<String> {
    let claims = ok(h.registry().claim_batch(owner, TTL, 10).await, "claim_batch");
    for c in &claims {
        h.check(&c.process.id).await;
    }
    claims.into_iter().map(|c| c.process.id).collect()
}

async fn last_event(h: &Harness, id: &str) -> ProcessEvent {
    let page = ok(h.registry().events_after(id, 0, Some(1000)).await, "events");
    page.events.last().cloned().expect("a log")
}

fn reason(e: &ProcessEvent) -> Option<&str> {
    e.payload.get("reason").and_then(Value::as_str)
}

/// A rerunnable run's wait releases its lease: the record shows the wait, the
/// `waiting` filter lists it, and no claim takes it; its old lease is fenced.
pub async fn suspension_releases_the_lease(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let lease = suspended(&h, "p", WaitRequest::signal("go", 1, None)).await;
    let rec = h.get("p").await;
    assert!(rec.lease.is_none(), "a suspension holds no lease");
    assert_eq!(rec.status, ProcessStatus::Running);
    let w = rec.wait.expect("the wait");
    assert_eq!(
        (w.kind.as_str(), w.name.as_deref(), w.ordinal),
        ("signal", Some("go"), Some(1))
    );
    let waiting = ProcessFilter {
        waiting: Some(true),
        ..ProcessFilter::default()
    };
    let listed: Vec<String> = ok(h.registry().list(&waiting).await, "list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, ["p"]);
    h.rejects(
        "not_claimable",
        "claiming a suspension",
        h.registry().claim("p", "w2", TTL),
    )
    .await;
    assert!(claimed_ids(&h, "w2").await.is_empty(), "a batch claim skips it");
    let work = ok(h.registry().worklist(10).await, "worklist");
    assert!(work.is_empty(), "the worklist does not hold it: {work:?}");
    assert_eq!(ok(h.registry().next_due(h.now()).await, "next_due"), None);
    h.advance(10 * TTL);
    assert!(
        claimed_ids(&h, "w2").await.is_empty(),
        "time alone never wakes a signal wait"
    );
    h.rejects(
        "lease_fenced",
        "the suspended run's lease writing",
        h.registry().append_event("p", progress(1).with_lease(lease.clone())),
    )
    .await;
    h.rejects(
        "lease_fenced",
        "the suspended run's lease waiting again",
        h.registry()
            .wait(&lease, WaitRequest::signal("go", 1, None), rec.last_sequence),
    )
    .await;
}

/// The awaited signal's append wakes the suspension in the same write; the
/// next claim appends `process.resumed {reason: signal}` after its start.
pub async fn signal_wakes_a_suspension(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(rerunnable("q")).await;
    suspended(&h, "p", WaitRequest::signal("go", 1, None)).await;
    suspended(&h, "q", WaitRequest::signal("go", 1, None)).await;
    h.append("p", signal("other", "s0", json!(0))).await;
    assert!(claimed_ids(&h, "w2").await.is_empty(), "another name wakes nothing");
    h.append("p", signal("go", "s1", json!({"ok": true}))).await;
    let w = h.get("p").await.wait.expect("still shown until resumed");
    assert_eq!(w.woken.as_deref(), Some("signal"));
    assert_eq!(
        claimed_ids(&h, "w2").await,
        ["p"],
        "only the signalled one is claimable"
    );
    let rec = h.get("p").await;
    assert!(rec.wait.is_none(), "the claim resumed it");
    assert_eq!(rec.lease.as_ref().map(|l| l.owner_id.as_str()), Some("w2"));
    let resumed = last_event(&h, "p").await;
    assert_eq!(resumed.event_type, ev::RESUMED);
    assert_eq!(reason(&resumed), Some("signal"));
    assert_eq!(resumed.payload["name"], "go");
    let page = ok(h.registry().events_after("p", 0, Some(100)).await, "events");
    let n = page.events.len();
    assert_eq!(
        page.events[n - 2].event_type,
        ev::STARTED,
        "resumed follows the claim's start"
    );
}

/// A wait by a run that did not see the whole log, or with a cancellation
/// pending, or past its deadline, writes nothing and answers `false`.
pub async fn wait_refuses_a_stale_view(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let (lease, rec) = h.claim_started("p", "w1", TTL).await;
    h.append("p", signal("go", "s1", json!(1))).await;
    let stale = h
        .no_change(
            "a wait that did not see the signal",
            h.registry()
                .wait(&lease, WaitRequest::signal("go", 1, None), rec.last_sequence),
        )
        .await;
    assert!(!stale);
    let seen = h.get("p").await.last_sequence;
    let past = h
        .no_change(
            "a wait whose deadline has passed",
            h.registry()
                .wait(&lease, WaitRequest::signal("go", 2, Some(h.now())), seen),
        )
        .await;
    assert!(!past);
    ok(h.registry().request_cancel("p", None).await, "cancel");
    let seen = h.get("p").await.last_sequence;
    let cancelled = h
        .no_change(
            "a wait with a cancellation pending",
            h.registry().wait(&lease, WaitRequest::signal("go", 2, None), seen),
        )
        .await;
    assert!(!cancelled);
    h.rejects(
        "invalid_request",
        "a wait of an unknown kind",
        h.registry().wait(
            &lease,
            WaitRequest {
                kind: "someday".into(),
                name: None,
                ordinal: None,
                until_ms: None,
                ids: None,
                mode: None,
                signals: None,
                due_timer: false,
            },
            seen,
        ),
    )
    .await;
}

/// A timer is a claimable time in the worklist index: `next_due` names it, and
/// a claim after it resumes the run with `reason: timer`.
pub async fn timer_is_due_at_its_deadline(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("t")).await;
    let until = h.now() + 5_000;
    suspended(&h, "t", WaitRequest::timer(1, until)).await;
    assert_eq!(ok(h.registry().next_due(h.now()).await, "next_due"), Some(until));
    assert_eq!(ok(h.registry().next_due(until).await, "next_due after it"), None);
    h.advance(4_999);
    assert!(claimed_ids(&h, "w2").await.is_empty(), "not before its time");
    h.rejects(
        "not_claimable",
        "claiming before the deadline",
        h.registry().claim("t", "w2", TTL),
    )
    .await;
    h.advance(1);
    assert_eq!(claimed_ids(&h, "w2").await, ["t"]);
    let resumed = last_event(&h, "t").await;
    assert_eq!(
        (resumed.event_type.as_str(), reason(&resumed)),
        (ev::RESUMED, Some("timer"))
    );
    assert_eq!(resumed.payload["until_ms"], json!(until));
}

/// Work is served in the order it became claimable (ADR 0030): a due timer
/// and a lapsed lease come before starts registered after them, and starts
/// come first come, first served, not by id. (Starts sorted first, by id:
/// under a backlog a due timer waited for all of it.)
pub async fn work_is_served_in_the_order_it_became_claimable(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("timer")).await;
    suspended(&h, "timer", WaitRequest::timer(1, h.now() + 1_000)).await;
    h.register(rerunnable("lapsed")).await;
    h.claim_started("lapsed", "w1", 2_000).await;
    h.advance(2_500);
    h.register(rerunnable("z-first")).await;
    h.advance(1);
    h.register(rerunnable("a-second")).await;
    let order = ["timer", "lapsed", "z-first", "a-second"];
    let work: Vec<String> = ok(h.registry().worklist(10).await, "worklist")
        .into_iter()
        .map(|w| w.process_id)
        .collect();
    assert_eq!(work, order);
    let first_two: Vec<String> = ok(h.registry().worklist(2).await, "worklist")
        .into_iter()
        .map(|w| w.process_id)
        .collect();
    assert_eq!(first_two, order[..2]);
    for id in order {
        let claims = ok(h.registry().claim_batch("w2", TTL, 1).await, "claim_batch");
        let ids: Vec<&str> = claims.iter().map(|c| c.process.id.as_str()).collect();
        assert_eq!(ids, [id], "claims go in worklist order");
        h.check(id).await;
    }
}

/// Abandon requests come on the worklist in the order they became due too:
/// two free of any lease by registration time, whatever their ids.
pub async fn abandon_requests_are_listed_in_the_order_they_became_due(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("z-old")).await;
    h.advance(1);
    h.register(external("a-new")).await;
    for id in ["z-old", "a-new"] {
        ok(h.registry().request_abandon(id, "op", "gone").await, "request_abandon");
        h.check(id).await;
    }
    let first: Vec<String> = ok(h.registry().worklist(1).await, "worklist")
        .into_iter()
        .map(|w| w.process_id)
        .collect();
    assert_eq!(first, ["z-old"]);
}

/// An abandon request on a suspension is on the worklist at once, whatever
/// its wait's deadline: a suspension holds no lease that could lapse later
/// (SPEC §5), so nothing holds the reconciliation off; no claim runs it.
pub async fn abandon_request_on_a_suspension_is_due_at_once(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let day = 86_400_000;
    h.register(rerunnable("timer")).await;
    h.register(rerunnable("deadline")).await;
    suspended(&h, "timer", WaitRequest::timer(1, h.now() + day)).await;
    suspended(&h, "deadline", WaitRequest::signal("go", 1, Some(h.now() + day))).await;
    for id in ["timer", "deadline"] {
        ok(h.registry().request_abandon(id, "op", "gone").await, "request_abandon");
        h.check(id).await;
    }
    let work = ok(h.registry().worklist(10).await, "worklist");
    let mut due: Vec<_> = work
        .iter()
        .filter(|w| w.action == cairn_core::WorkAction::ReconcileAbandon)
        .map(|w| w.process_id.as_str())
        .collect();
    due.sort_unstable();
    assert_eq!(due, ["deadline", "timer"], "{work:?}");
    assert!(claimed_ids(&h, "w2").await.is_empty(), "no claim resumes them");
    for id in ["timer", "deadline"] {
        let rec = ok(h.registry().reconcile_abandon(id).await, "reconcile").expect("no lease holds it off");
        h.check(id).await;
        assert_eq!(rec.status, ProcessStatus::Abandoned, "{id}");
    }
    assert!(ok(h.registry().worklist(10).await, "worklist").is_empty());
}

/// A signal wait with a deadline resumes `timed_out` once it passes; a signal
/// before it resumes it `signal`.
pub async fn signal_wait_deadline_times_out(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("late")).await;
    h.register(rerunnable("early")).await;
    let until = h.now() + 1_000;
    suspended(&h, "late", WaitRequest::signal("go", 1, Some(until))).await;
    suspended(&h, "early", WaitRequest::signal("go", 1, Some(until))).await;
    h.append("early", signal("go", "s1", json!(1))).await;
    assert_eq!(claimed_ids(&h, "w2").await, ["early"]);
    h.advance(1_000);
    assert_eq!(claimed_ids(&h, "w2").await, ["late"]);
    assert_eq!(reason(&last_event(&h, "early").await), Some("signal"));
    assert_eq!(reason(&last_event(&h, "late").await), Some("timed_out"));

    // A signal that comes after the deadline, before a late claim, does not
    // make the wait one a signal ended: it timed out first.
    h.register(rerunnable("after")).await;
    let until = h.now() + 1_000;
    suspended(&h, "after", WaitRequest::signal("go", 1, Some(until))).await;
    h.advance(1_001);
    h.append("after", signal("go", "s2", json!(2))).await;
    assert_eq!(claimed_ids(&h, "w2").await, ["after"]);
    assert_eq!(reason(&last_event(&h, "after").await), Some("timed_out"));

    // One at the deadline itself is in time, as a run takes it.
    h.register(rerunnable("at")).await;
    let until = h.now() + 1_000;
    suspended(&h, "at", WaitRequest::signal("go", 1, Some(until))).await;
    h.advance(1_000);
    h.append("at", signal("go", "s3", json!(3))).await;
    assert_eq!(claimed_ids(&h, "w2").await, ["at"]);
    assert_eq!(reason(&last_event(&h, "at").await), Some("signal"));
}

/// A cancellation request on a suspension does not end it at once: it makes it
/// claimable, and the resumed run observes the request.
pub async fn cancel_wakes_a_suspension(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    suspended(&h, "p", WaitRequest::signal("go", 1, None)).await;
    let answer = ok(h.registry().request_cancel("p", Some("stop".into())).await, "cancel");
    assert!(!answer.cancelled_now, "a suspended run is resumed to observe it");
    assert_eq!(answer.process.status, ProcessStatus::Running);
    h.check("p").await;
    assert_eq!(claimed_ids(&h, "w2").await, ["p"]);
    let resumed = last_event(&h, "p").await;
    assert_eq!(reason(&resumed), Some("cancel_requested"));
    assert!(h.get("p").await.cancel_request.is_some());
}

/// Owner-bound and externally owned processes never suspend: an owner-bound
/// wait keeps its lease (and the process stays claimable by nobody else).
pub async fn only_rerunnable_processes_suspend(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("o")).await;
    let (lease, rec) = h.claim_started("o", "w1", TTL).await;
    let recorded = ok(
        h.registry()
            .wait(&lease, WaitRequest::signal("go", 1, None), rec.last_sequence)
            .await,
        "owner-bound wait",
    );
    assert!(recorded);
    let rec = h.check("o").await.record;
    assert!(rec.wait.is_some() && rec.lease.is_some(), "the wait holds the lease");
    h.append("o", signal("go", "s1", json!(1))).await;
    assert!(
        claimed_ids(&h, "w2").await.is_empty(),
        "no one else runs an owner-bound process"
    );
    h.register(rerunnable("done")).await;
    let (lease, rec) = h.claim_started("done", "w1", TTL).await;
    ok(
        h.registry()
            .complete(&lease, cairn_core::Outcome::success(json!(1)))
            .await,
        "complete",
    );
    h.rejects(
        "process_terminal",
        "a terminal process waiting",
        h.registry()
            .wait(&lease, WaitRequest::signal("go", 1, None), rec.last_sequence),
    )
    .await;
}

/// `next_due` names the earliest lease expiry too: a driver wakes exactly
/// when a dead worker's lease lapses.
pub async fn next_due_names_lease_expiry(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("a")).await;
    h.register(rerunnable("b")).await;
    let la = h.claim("a", "w1", 1_000).await;
    h.advance(10);
    h.claim("b", "w1", 1_000).await;
    assert_eq!(
        ok(h.registry().next_due(h.now()).await, "next_due"),
        Some(la.expires_at_ms)
    );
    assert_eq!(
        ok(h.registry().next_due(la.expires_at_ms).await, "next_due"),
        Some(la.expires_at_ms + 10)
    );
}

/// `gauges` counts the live state: running, waiting (suspended or holding
/// their run), leased processes (and of them, those whose lease lapsed) and
/// unacknowledged wakes; terminal processes and acknowledged wakes are not
/// counted.
pub async fn gauges_count_the_live_state(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let count = || async { ok(h.registry().gauges().await, "gauges") };
    assert_eq!(count().await, cairn_core::Gauges::default(), "an empty store");
    let s1 = session("s1");
    h.register(waking(rerunnable("notifier"), &s1)).await;
    h.register(rerunnable("suspended")).await;
    h.register(owner_bound("holding")).await;
    h.register(rerunnable("done")).await;
    h.register(external("ext")).await;
    suspended(&h, "suspended", WaitRequest::signal("go", 1, None)).await;
    let (lease, rec) = h.claim_started("holding", "w1", TTL).await;
    ok(
        h.registry()
            .wait(&lease, WaitRequest::signal("go", 1, None), rec.last_sequence)
            .await,
        "owner-bound wait",
    );
    let (done, _) = h.claim_started("done", "w1", TTL).await;
    ok(
        h.registry()
            .complete(&done, cairn_core::Outcome::success(json!(1)))
            .await,
        "complete",
    );
    h.append("notifier", notify("one")).await;
    let second = h.append("notifier", notify("two")).await.wake.expect("a wake");
    ok(h.registry().ack_wake("s1", &second.wake_id).await, "ack");
    assert_eq!(
        count().await,
        cairn_core::Gauges {
            running: 4,
            waiting: 2,
            leased: 1,
            lapsed: 0,
            pending_wakes: 1,
        }
    );
    // The owner-bound run's lease lapses (its owner died, say): still
    // stored, and counted as lapsed.
    h.advance(TTL);
    assert_eq!(
        count().await,
        cairn_core::Gauges {
            running: 4,
            waiting: 2,
            leased: 1,
            lapsed: 1,
            pending_wakes: 1,
        }
    );
}
