//! Cancellation requests.

use cairn_core::events as ev;
use cairn_core::{Outcome, ProcessStatus};

use crate::builders::*;
use crate::harness::{ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 10_000;

/// A process nobody has started ends `cancelled` at once: the request and the
/// terminal are both in the log.
pub async fn cancel_never_claimed_ends_at_once(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in [rerunnable("r"), owner_bound("b")] {
        let id = reg.id.clone();
        h.register(reg).await;
        h.advance(5);
        let answer = ok(
            h.registry().request_cancel(&id, Some("stop".into())).await,
            "request_cancel",
        );
        let folded = h.check(&id).await;
        assert!(answer.cancelled_now, "`{id}`: never claimed, so cancelled at once");
        assert_eq!(answer.appended, 2, "`{id}`: the request and the end");
        assert_eq!(answer.process, folded.record);
        assert_eq!(folded.record.status, ProcessStatus::Cancelled);
        assert!(matches!(folded.record.outcome, Some(Outcome::Cancelled { .. })));
        assert_eq!(folded.types(), vec![ev::CANCEL_REQUESTED, ev::CANCELLED]);
        let req = folded.record.cancel_request.expect("the request is on the record");
        assert_eq!(req.reason.as_deref(), Some("stop"));
        assert_eq!(req.requested_at_ms, h.now());
        assert_eq!(folded.record.terminal_at_ms, Some(h.now()));
    }
    // Claimed and released without starting: still nobody started it.
    h.register(owner_bound("c")).await;
    let lease = h.claim("c", "w1", TTL).await;
    assert!(ok(h.registry().release(&lease).await, "release"));
    let answer = ok(h.registry().request_cancel("c", None).await, "request_cancel");
    assert!(answer.cancelled_now);
    assert_eq!(h.get("c").await.status, ProcessStatus::Cancelled);
    // The same request again (a retry whose answer was lost) answers the
    // record and writes nothing; another reason is a new request, too late.
    let again = h
        .no_change("cancel again", h.registry().request_cancel("c", None))
        .await;
    assert!(!again.cancelled_now && again.descendants.is_empty());
    assert_eq!(again.appended, 0, "a repeat appends nothing");
    assert_eq!(again.process, h.get("c").await);
    h.rejects(
        "process_terminal",
        "cancel again with a reason",
        h.registry().request_cancel("c", Some("late".into())),
    )
    .await;
    h.no_change(
        "cancel `r` again",
        h.registry().request_cancel("r", Some("stop".into())),
    )
    .await;
    h.rejects(
        "process_terminal",
        "cancel `r` without its reason",
        h.registry().request_cancel("r", None),
    )
    .await;
}

/// A process under a live lease only records the request; the owner ends it.
pub async fn cancel_started_records_request_only(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in [rerunnable("r"), owner_bound("b"), rerunnable("claimed-only")] {
        let id = reg.id.clone();
        h.register(reg).await;
        let lease = if id == "claimed-only" {
            h.claim(&id, "w1", TTL).await
        } else {
            h.claim_started(&id, "w1", TTL).await.0
        };
        let before = h.get(&id).await;
        let answer = ok(
            h.registry().request_cancel(&id, Some("user".into())).await,
            "request_cancel",
        );
        let folded = h.check(&id).await;
        assert!(!answer.cancelled_now, "`{id}`: a live owner ends it, not the request");
        assert_eq!(answer.appended, 1, "`{id}`: the request alone");
        assert_eq!(answer.process, folded.record);
        assert_eq!(folded.record.status, ProcessStatus::Running);
        assert_eq!(folded.record.last_sequence, before.last_sequence + 1);
        assert_eq!(folded.types().last().copied(), Some(ev::CANCEL_REQUESTED));
        assert!(folded.record.cancel_request.is_some());
        assert_eq!(
            folded.record.lease,
            Some(lease.view()),
            "the request leaves the lease alone"
        );
        let done = ok(
            h.registry()
                .complete(&lease, Outcome::cancelled("stopped by owner"))
                .await,
            "complete",
        );
        assert_eq!(done.status, ProcessStatus::Cancelled);
        h.check(&id).await;
    }
}

/// Cancellation requests are idempotent per reason.
pub async fn cancel_is_idempotent_per_reason(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.claim_started("p", "w1", TTL).await;
    let first = ok(h.registry().request_cancel("p", Some("a".into())).await, "cancel a");
    let seq = first.process.last_sequence;
    let same = h
        .no_change("cancel a again", h.registry().request_cancel("p", Some("a".into())))
        .await;
    assert!(!same.cancelled_now);
    assert_eq!(same.process.last_sequence, seq);
    let other = ok(h.registry().request_cancel("p", Some("b".into())).await, "cancel b");
    assert_eq!(
        other.process.last_sequence,
        seq + 1,
        "another reason is another request"
    );
    let none = ok(h.registry().request_cancel("p", None).await, "cancel without reason");
    assert_eq!(none.process.last_sequence, seq + 2);
    h.no_change("cancel without reason again", h.registry().request_cancel("p", None))
        .await;
    // An empty reason is no reason: the same request, not a conflicting one.
    h.no_change(
        "cancel with an empty reason",
        h.registry().request_cancel("p", Some(String::new())),
    )
    .await;
    let rec = h.get("p").await;
    assert_eq!(
        rec.cancel_request.and_then(|c| c.reason).as_deref(),
        Some("a"),
        "the first request stays on the record"
    );
    assert_eq!(rec.status, ProcessStatus::Running);
}

/// Externally owned processes only get the request; their owner ends them.
pub async fn cancel_externally_owned_records_request_only(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("e")).await;
    let answer = ok(
        h.registry().request_cancel("e", Some("no longer needed".into())).await,
        "cancel",
    );
    assert!(!answer.cancelled_now);
    assert_eq!(answer.process.status, ProcessStatus::Running);
    assert!(answer.process.cancel_request.is_some());
    assert_eq!(h.check("e").await.types(), vec![ev::CANCEL_REQUESTED]);
    let done = ok(
        h.registry()
            .complete_external("e", Outcome::cancelled("withdrawn"), "ext")
            .await,
        "complete_external",
    );
    assert!(done.completed_now);
    assert_eq!(done.process.status, ProcessStatus::Cancelled);
    h.check("e").await;
}

/// After the lease lapsed: a started rerunnable process is cancelled at once (any
/// worker could rerun it), a started owner-bound one only records the request.
pub async fn cancel_after_lease_lapse_follows_disposition(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("r")).await;
    h.register(owner_bound("b")).await;
    h.claim_started("r", "w1", TTL).await;
    h.claim_started("b", "w1", TTL).await;
    h.advance(TTL);
    let r = ok(h.registry().request_cancel("r", None).await, "cancel r");
    assert!(
        r.cancelled_now,
        "a started rerunnable without a live lease is cancelled at once"
    );
    assert_eq!(h.get("r").await.status, ProcessStatus::Cancelled);
    let b = ok(h.registry().request_cancel("b", None).await, "cancel b");
    assert!(
        !b.cancelled_now,
        "a started owner-bound process is never ended by a request"
    );
    let rec = h.get("b").await;
    assert_eq!(rec.status, ProcessStatus::Running);
    assert!(rec.cancel_request.is_some());
}

/// A reason is written twice when a cancellation ends a process at once (in
/// the request and in the outcome): one past the reason limit is refused
/// before anything is written, one at it ends the process with it whole.
pub async fn a_cancel_reason_past_the_limit_changes_nothing(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("r")).await;
    let limit = cairn_core::validate::MAX_REASON_BYTES;
    h.rejects(
        "payload_too_large",
        "a reason over the limit",
        h.registry().request_cancel("r", Some("x".repeat(limit + 1))),
    )
    .await;
    h.rejects(
        "payload_too_large",
        "an abandon reason over the limit",
        h.registry().request_abandon("r", "ops", &"x".repeat(limit + 1)),
    )
    .await;
    let at_limit = "y".repeat(limit);
    let answer = ok(
        h.registry().request_cancel("r", Some(at_limit.clone())).await,
        "request_cancel",
    );
    assert!(answer.cancelled_now);
    assert_eq!(h.check("r").await.record.outcome, Some(Outcome::cancelled(at_limit)));
}
