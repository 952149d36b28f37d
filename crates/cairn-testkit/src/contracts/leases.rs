//! Leases, fencing, claims and the worklist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_core::events as ev;
use cairn_core::{
    AbandonEvidence, AbandonWriter, Claim, Lease, Outcome, ProcessRegistry, ProcessStatus, StartedFact, WorkAction,
    WorkItem,
};
use serde_json::json;
use tokio::sync::Barrier;

use crate::builders::*;
use crate::harness::{expect_code, ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 1_000;

/// Many tasks race to claim one process: exactly one wins, the rest get `lease_held`.
pub async fn claim_is_exclusive_under_race(factory: &dyn StoreFactory) {
    const RACERS: usize = 32;
    let h = Harness::new(factory).await;
    for reg in [rerunnable("r"), owner_bound("b")] {
        let id = reg.id.clone();
        h.register(reg).await;
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            let registry: Arc<dyn ProcessRegistry> = h.shared();
            let barrier = barrier.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                registry.claim(&id, &format!("owner-{i}"), 60_000).await
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("claim task panicked") {
                Ok(lease) => winners.push(lease),
                Err(e) => assert_eq!(e.code(), "lease_held", "a losing claim is lease_held: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "`{id}`: exactly one claim wins: {winners:?}");
        let lease = &winners[0];
        assert_eq!(lease.fencing_token, 1);
        assert_eq!(ok(h.registry().fencing_token(&id).await, "fencing_token"), 1);
        let rec = h.get(&id).await;
        assert_eq!(rec.lease, Some(lease.view()));
        assert_eq!(rec.last_sequence, 0, "claims write no event");
    }
}

/// Concurrent `claim_batch` calls never hand one process to two owners.
pub async fn claim_batch_never_double_claims(factory: &dyn StoreFactory) {
    const WORKERS: usize = 8;
    let h = Harness::new(factory).await;
    let all: BTreeSet<String> = (0..24).map(|i| format!("p{i:02}")).collect();
    for id in &all {
        h.register(rerunnable(id)).await;
    }
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut tasks = Vec::new();
    for i in 0..WORKERS {
        let registry = h.shared();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            registry.claim_batch(&format!("w{i}"), 60_000, 5).await
        }));
    }
    let mut claimed: BTreeMap<String, Claim> = BTreeMap::new();
    for t in tasks {
        let claims = ok(t.await.expect("claim_batch task panicked"), "claim_batch");
        assert!(claims.len() <= 5, "a batch is bounded by its limit");
        for c in claims {
            assert_eq!(c.lease.process_id, c.process.id);
            assert_eq!(c.lease.fencing_token, 1, "one claim per process");
            let dup = claimed.insert(c.process.id.clone(), c);
            assert!(dup.is_none(), "a process was claimed twice: {dup:?}");
        }
    }
    let rest = ok(
        h.registry().claim_batch("sweeper", 60_000, 100).await,
        "claim_batch rest",
    );
    for c in rest {
        let dup = claimed.insert(c.process.id.clone(), c);
        assert!(dup.is_none(), "the sweeper claimed a leased process: {dup:?}");
    }
    assert_eq!(
        claimed.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "every process is claimed once"
    );
    for (id, c) in &claimed {
        let rec = h.get(id).await;
        assert_eq!(rec.lease, Some(c.lease.view()));
        assert_eq!(rec.started.as_ref().map(|s| s.attempt), Some(1));
    }
}

/// An unexpired lease of another owner is `lease_held` until the instant it expires.
pub async fn claim_held_by_other_owner(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let a = h.claim("p", "a", TTL).await;
    let err = h
        .rejects("lease_held", "claim by b", h.registry().claim("p", "b", TTL))
        .await;
    assert_eq!(
        err,
        cairn_core::CairnError::LeaseHeld {
            process_id: "p".into(),
            expires_at_ms: a.expires_at_ms
        }
    );
    h.advance(TTL - 1);
    h.rejects(
        "lease_held",
        "claim by b just before expiry",
        h.registry().claim("p", "b", TTL),
    )
    .await;
    h.advance(1);
    let b = h.claim("p", "b", TTL).await;
    assert_eq!(b.fencing_token, a.fencing_token + 1, "a lease expires at expires_at_ms");
}

/// A claim writes no event; the lease carries its owner, tokens and times.
pub async fn claim_writes_no_event(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.append("p", progress(1)).await;
    let before = h.check("p").await;
    let feed_before = crate::harness::feed_head(h.registry()).await;
    let lease = h.claim("p", "w1", TTL).await;
    assert_eq!(lease.process_id, "p");
    assert_eq!(lease.owner_id, "w1");
    assert_eq!(lease.fencing_token, 1);
    assert_eq!(lease.claimed_at_ms, h.now());
    assert_eq!(lease.expires_at_ms, h.now() + TTL);
    assert!(!lease.lease_token.is_empty());
    let after = h.check("p").await;
    assert_eq!(after.events, before.events, "a claim writes no event");
    assert_eq!(after.record.last_sequence, before.record.last_sequence);
    assert_eq!(after.record.lease, Some(lease.view()), "the record shows the lease");
    assert_eq!(after.record.started, None, "claiming is not starting");
    assert_eq!(feed_before, crate::harness::feed_head(h.registry()).await);
    // Bad claims are refused for what they are, on a process nobody holds
    // (where a held lease could not be the reason), and write nothing.
    h.register(rerunnable("free")).await;
    let r = h.registry();
    h.rejects("invalid_id", "empty owner", r.claim("free", "", TTL)).await;
    h.rejects("invalid_request", "zero ttl", r.claim("free", "w2", 0)).await;
    h.rejects("invalid_id", "batch: empty owner", r.claim_batch("", TTL, 8))
        .await;
    h.rejects("invalid_request", "batch: zero ttl", r.claim_batch("w2", 0, 8))
        .await;
    h.rejects("invalid_request", "renewal for 0 ms", r.renew(&lease, 0))
        .await;
    assert_eq!(h.check("free").await.record.lease, None);
}

/// Claiming again under one's own live lease succeeds with a new lease and a higher
/// fencing token; the previous lease is stale from then on.
pub async fn own_lease_reclaim(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(owner_bound("b")).await;
    for id in ["p", "b"] {
        let (first, _) = h.claim_started(id, "w1", TTL).await;
        h.advance(10);
        let second = h.claim(id, "w1", TTL).await;
        assert_eq!(second.fencing_token, first.fencing_token + 1);
        assert_ne!(
            second.lease_token, first.lease_token,
            "each claim has its own lease token"
        );
        assert_eq!(second.expires_at_ms, h.now() + TTL);
        h.rejects(
            "lease_fenced",
            "renew the replaced lease",
            h.registry().renew(&first, TTL),
        )
        .await;
        h.rejects(
            "lease_fenced",
            "complete with the replaced lease",
            h.registry().complete(&first, Outcome::success(json!(1))),
        )
        .await;
        let renewed = ok(h.registry().renew(&second, TTL).await, "renew");
        ok(
            h.registry().complete(&renewed, Outcome::success(json!(2))).await,
            "complete",
        );
        assert_eq!(h.get(id).await.status, ProcessStatus::Completed);
    }
}

/// An expired lease is reclaimed by anyone (its old owner too) with a higher fencing token.
pub async fn expired_lease_reclaimed_with_higher_fencing_token(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let a = h.claim("p", "a", TTL).await;
    h.advance(TTL);
    let b = h.claim("p", "b", TTL).await;
    assert!(b.fencing_token > a.fencing_token);
    assert_eq!(h.get("p").await.lease, Some(b.view()));
    h.advance(TTL + 5);
    let a2 = h.claim("p", "a", TTL).await;
    assert!(a2.fencing_token > b.fencing_token);
    assert_eq!(
        ok(h.registry().fencing_token("p").await, "fencing_token"),
        a2.fencing_token
    );
    // A claimed but never-started owner-bound process is reclaimable too.
    h.register(owner_bound("o")).await;
    let first = h.claim("o", "a", TTL).await;
    h.advance(TTL);
    let second = h.claim("o", "b", TTL).await;
    assert!(second.fencing_token > first.fencing_token);
}

/// After a new owner claimed, the stale lease can neither renew, complete, start
/// nor append fenced (`lease_fenced`, writing nothing), and its release is a no-op.
pub async fn stale_lease_is_fenced(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let (a, _) = h.claim_started("p", "a", TTL).await;
    h.advance(TTL + 1);
    let r = h.registry();
    // Expired, not yet superseded: already not the live lease.
    h.rejects("lease_fenced", "expired renew", r.renew(&a, TTL)).await;
    h.rejects(
        "lease_fenced",
        "expired fenced append",
        r.append_event("p", progress(1).with_lease(a.clone())),
    )
    .await;
    let (b, _) = h.claim_started("p", "b", TTL).await;
    assert!(b.fencing_token > a.fencing_token);
    h.rejects("lease_fenced", "stale renew", r.renew(&a, TTL)).await;
    h.rejects(
        "lease_fenced",
        "stale complete",
        r.complete(&a, Outcome::success(json!("stale"))),
    )
    .await;
    h.rejects(
        "lease_fenced",
        "stale fenced append",
        r.append_event("p", progress(2).with_lease(a.clone())),
    )
    .await;
    h.rejects(
        "lease_fenced",
        "stale fenced terminal append",
        r.append_event(
            "p",
            cairn_core::AppendRequest::new(FINISHED, json!({"result": 1})).with_lease(a.clone()),
        ),
    )
    .await;
    h.rejects("lease_fenced", "stale record_started", r.record_started(&a))
        .await;
    let released = h.no_change("stale release", r.release(&a)).await;
    assert!(!released, "releasing a stale lease answers false");
    // A forged lease with the live fencing token but another lease token is stale too.
    let forged = Lease {
        lease_token: format!("{}-forged", b.lease_token),
        ..b.clone()
    };
    h.rejects("lease_fenced", "forged renew", r.renew(&forged, TTL)).await;
    assert!(!h.no_change("forged release", r.release(&forged)).await);
    h.append("p", progress(3).with_lease(b.clone())).await;
    let done = ok(r.complete(&b, Outcome::success(json!("live"))).await, "complete");
    assert_eq!(done.outcome, Some(Outcome::success(json!("live"))));
    assert_eq!(h.get("p").await.status, ProcessStatus::Completed);
}

/// `renew` extends only the live lease, presented with all three tokens.
pub async fn renew_extends_live_lease_only(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let lease = h.claim("p", "w1", TTL).await;
    h.advance(TTL / 2);
    let renewed = ok(h.registry().renew(&lease, TTL).await, "renew");
    assert_eq!(renewed.expires_at_ms, h.now() + TTL);
    assert_eq!(renewed.lease_token, lease.lease_token);
    assert_eq!(renewed.fencing_token, lease.fencing_token);
    assert_eq!(renewed.owner_id, lease.owner_id);
    assert_eq!(h.get("p").await.lease, Some(renewed.view()));
    h.advance(TTL - 1);
    h.rejects("lease_held", "claim after renew", h.registry().claim("p", "w2", TTL))
        .await;
    let wrong_owner = Lease {
        owner_id: "w2".into(),
        ..renewed.clone()
    };
    let wrong_fence = Lease {
        fencing_token: renewed.fencing_token + 1,
        ..renewed.clone()
    };
    h.rejects(
        "lease_fenced",
        "renew wrong owner",
        h.registry().renew(&wrong_owner, TTL),
    )
    .await;
    h.rejects(
        "lease_fenced",
        "renew wrong fence",
        h.registry().renew(&wrong_fence, TTL),
    )
    .await;
    h.advance(1);
    h.rejects("lease_fenced", "renew after expiry", h.registry().renew(&renewed, TTL))
        .await;
}

/// `release` frees the live lease at once; releasing again answers false.
pub async fn release_frees_lease(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let a = h.claim("p", "a", TTL).await;
    assert!(ok(h.registry().release(&a).await, "release"));
    let rec = h.get("p").await;
    assert_eq!(rec.lease, None);
    assert_eq!(rec.last_sequence, 0, "release writes no event");
    assert!(!h.no_change("release again", h.registry().release(&a)).await);
    let b = h.claim("p", "b", TTL).await;
    assert!(b.fencing_token > a.fencing_token, "fencing tokens never go back");
    h.rejects(
        "lease_fenced",
        "complete with a released lease",
        h.registry().complete(&a, Outcome::success(json!(1))),
    )
    .await;
}

/// `claim_batch` claims run candidates and records `process.started` on each:
/// attempt 1, then 2 when a rerunnable is reclaimed after its lease lapsed.
pub async fn claim_batch_marks_started(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("r")).await;
    h.register(owner_bound("b")).await;
    h.register(external("e")).await;
    h.advance(3);
    let claims = ok(h.registry().claim_batch("w1", TTL, 10).await, "claim_batch");
    let mut ids: Vec<&str> = claims.iter().map(|c| c.process.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["b", "r"], "external processes are never claimed");
    for c in &claims {
        let folded = h.check(&c.process.id).await;
        assert_eq!(c.process, folded.record, "a claim answers the record as of the claim");
        assert_eq!(folded.types(), vec![ev::STARTED]);
        assert_eq!(c.lease.owner_id, "w1");
        assert_eq!(c.lease.expires_at_ms, h.now() + TTL);
        assert_eq!(
            folded.record.started,
            Some(StartedFact {
                owner_id: "w1".into(),
                fencing_token: c.lease.fencing_token,
                attempt: 1,
                at_ms: h.now(),
            })
        );
        assert_eq!(folded.record.lease, Some(c.lease.view()));
    }
    assert!(
        ok(h.registry().claim_batch("w2", TTL, 10).await, "claim_batch").is_empty(),
        "all leased"
    );
    h.advance(TTL);
    let again = ok(h.registry().claim_batch("w2", TTL, 10).await, "claim_batch again");
    assert_eq!(again.len(), 1, "only the rerunnable runs again: {again:?}");
    let c = &again[0];
    assert_eq!(c.process.id, "r");
    let started = c.process.started.clone().expect("started");
    assert_eq!(started.attempt, 2);
    assert_eq!(started.owner_id, "w2");
    assert_eq!(started.fencing_token, c.lease.fencing_token);
    assert_eq!(h.check("r").await.types(), vec![ev::STARTED, ev::STARTED]);
}

/// Once an owner-bound process started, nobody else may claim it (`not_claimable`),
/// even after its lease lapsed, and it is never on the worklist.
pub async fn owner_bound_started_is_not_claimable(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("b")).await;
    let (a, _) = h.claim_started("b", "a", TTL).await;
    h.rejects(
        "not_claimable",
        "claim by another owner",
        h.registry().claim("b", "x", TTL),
    )
    .await;
    let again = h.claim("b", "a", TTL).await;
    assert!(
        again.fencing_token > a.fencing_token,
        "the owner may re-claim under its live lease"
    );
    h.advance(TTL);
    assert!(ok(h.registry().worklist(100).await, "worklist").is_empty());
    assert!(ok(h.registry().claim_batch("x", TTL, 10).await, "claim_batch").is_empty());
    h.rejects("not_claimable", "claim after lapse", h.registry().claim("b", "x", TTL))
        .await;
    h.rejects(
        "not_claimable",
        "own claim after lapse",
        h.registry().claim("b", "a", TTL),
    )
    .await;
    assert_eq!(
        h.get("b").await.status,
        ProcessStatus::Running,
        "lapse alone never ends it"
    );
}

/// Externally owned and abandon-requested processes are `not_claimable`.
pub async fn not_claimable_dispositions(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("e")).await;
    h.register(rerunnable("r")).await;
    ok(
        h.registry().request_abandon("r", "op", "stuck").await,
        "request_abandon",
    );
    h.check("r").await;
    h.rejects("not_claimable", "external", h.registry().claim("e", "w", TTL))
        .await;
    h.rejects("not_claimable", "abandon requested", h.registry().claim("r", "w", TTL))
        .await;
    assert!(ok(h.registry().claim_batch("w", TTL, 10).await, "claim_batch").is_empty());
}

/// `record_started` is fenced and counts attempts.
pub async fn record_started_is_fenced(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let (a, rec) = h.claim_started("p", "a", TTL).await;
    assert_eq!(rec.started.as_ref().map(|s| s.attempt), Some(1));
    assert_eq!(rec.started.as_ref().map(|s| s.owner_id.as_str()), Some("a"));
    h.advance(TTL);
    h.rejects(
        "lease_fenced",
        "record_started on an expired lease",
        h.registry().record_started(&a),
    )
    .await;
    let (b, rec) = h.claim_started("p", "b", TTL).await;
    let started = rec.started.expect("started");
    assert_eq!(started.attempt, 2);
    assert_eq!(started.fencing_token, b.fencing_token);
    assert_eq!(h.check("p").await.types(), vec![ev::STARTED, ev::STARTED]);
}

/// `complete` writes each outcome through its core terminal type and releases the lease.
pub async fn complete_writes_each_outcome(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let drain = |lease: &Lease, at: u64| Outcome::Abandoned {
        evidence: AbandonEvidence {
            writer: AbandonWriter::OwnerDrain,
            owner: Some(lease.owner()),
            epoch_ms: at,
        },
    };
    let cases: Vec<(&str, ProcessStatus, &str)> = vec![
        ("ok", ProcessStatus::Completed, ev::COMPLETED),
        ("fail", ProcessStatus::Failed, ev::FAILED),
        ("cancel", ProcessStatus::Cancelled, ev::CANCELLED),
        ("drain", ProcessStatus::Abandoned, ev::ABANDONED),
    ];
    for (id, status, event_type) in cases {
        h.register(owner_bound(id)).await;
        let (lease, _) = h.claim_started(id, "w1", TTL).await;
        h.advance(1);
        let outcome = match status {
            ProcessStatus::Completed => Outcome::success(json!({"v": id})),
            ProcessStatus::Failed => Outcome::failure("tool", "exit_status", "exit 2"),
            ProcessStatus::Cancelled => Outcome::cancelled("cancelled by request"),
            _ => drain(&lease, h.now()),
        };
        let rec = ok(h.registry().complete(&lease, outcome.clone()).await, "complete");
        let folded = h.check(id).await;
        assert_eq!(rec, folded.record, "complete answers the stored record");
        assert_eq!(rec.status, status);
        assert_eq!(rec.outcome, Some(outcome.clone()));
        assert_eq!(rec.terminal_at_ms, Some(h.now()));
        assert_eq!(rec.lease, None, "completion releases the lease");
        let last = folded.events.last().expect("terminal event");
        assert_eq!(last.event_type, event_type);
        assert_eq!(last.semantics.terminal, Some(outcome.clone()));
        assert_eq!(
            last.payload.get("await_output"),
            Some(&serde_json::to_value(&outcome).expect("outcome serializes"))
        );
        assert_eq!(
            ok(h.registry().fencing_token(id).await, "fencing_token"),
            lease.fencing_token
        );
        expect_code(
            h.registry().claim(id, "w2", TTL).await,
            "process_terminal",
            "claim terminal",
        );
    }
}

/// The worklist lists free or expired run candidates and lapsed abandon requests,
/// and nothing else.
pub async fn worklist_contents(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    h.register(rerunnable("free-rerun")).await;
    h.register(owner_bound("free-bound")).await;
    h.register(external("ext")).await;
    h.register(rerunnable("done")).await;
    let l = h.claim("done", "w", TTL).await;
    ok(r.complete(&l, Outcome::success(json!(1))).await, "complete");
    h.register(rerunnable("expired-rerun")).await;
    h.claim_started("expired-rerun", "w", TTL).await;
    h.register(owner_bound("started-bound")).await;
    h.claim_started("started-bound", "w", TTL).await;
    h.register(owner_bound("expired-unstarted-bound")).await;
    h.claim("expired-unstarted-bound", "w", TTL).await;
    h.register(owner_bound("abandon-lapsed")).await;
    h.claim_started("abandon-lapsed", "w", TTL).await;
    ok(r.request_abandon("abandon-lapsed", "op", "x").await, "abandon");
    h.register(external("abandon-ext")).await;
    ok(r.request_abandon("abandon-ext", "op", "x").await, "abandon");
    h.register(rerunnable("cancel-requested")).await;
    h.claim_started("cancel-requested", "w", TTL).await;
    ok(r.request_cancel("cancel-requested", None).await, "cancel");
    h.advance(TTL);
    // Live leases from here on.
    h.register(rerunnable("live-rerun")).await;
    h.claim("live-rerun", "w", TTL).await;
    h.register(rerunnable("abandon-live")).await;
    h.claim_started("abandon-live", "w", TTL).await;
    ok(r.request_abandon("abandon-live", "op", "x").await, "abandon");
    h.check_all().await;

    let mut items: Vec<(String, WorkAction)> = ok(r.worklist(100).await, "worklist")
        .into_iter()
        .map(|WorkItem { process_id, action }| (process_id, action))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<(String, WorkAction)> = [
        ("free-rerun", WorkAction::Run),
        ("free-bound", WorkAction::Run),
        ("expired-rerun", WorkAction::Run),
        ("expired-unstarted-bound", WorkAction::Run),
        ("cancel-requested", WorkAction::Run),
        ("abandon-lapsed", WorkAction::ReconcileAbandon),
        ("abandon-ext", WorkAction::ReconcileAbandon),
    ]
    .into_iter()
    .map(|(id, a)| (id.to_string(), a))
    .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(items, expected);
    h.no_change("worklist", r.worklist(100)).await;

    // The abandon worklist is the worklist's reconcile items alone, bounded.
    let mut abandon = ok(r.abandon_worklist(100).await, "abandon_worklist");
    abandon.sort();
    assert_eq!(abandon, vec!["abandon-ext".to_string(), "abandon-lapsed".to_string()]);
    assert_eq!(ok(r.abandon_worklist(1).await, "abandon_worklist(1)").len(), 1);
    h.no_change("abandon_worklist", r.abandon_worklist(100)).await;
}

/// The worklist answers at most `limit` rows.
pub async fn worklist_is_bounded(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for i in 0..10 {
        h.register(rerunnable(&format!("p{i}"))).await;
    }
    let three = ok(h.registry().worklist(3).await, "worklist(3)");
    assert_eq!(three.len(), 3);
    let all = ok(h.registry().worklist(100).await, "worklist(100)");
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|w| w.action == WorkAction::Run));
    let ids: BTreeSet<&str> = all.iter().map(|w| w.process_id.as_str()).collect();
    assert_eq!(ids.len(), 10, "no row twice");
    for w in &three[..2] {
        h.claim(&w.process_id, "w", TTL).await;
    }
    assert_eq!(
        ok(h.registry().worklist(100).await, "worklist").len(),
        8,
        "leased rows leave the worklist"
    );
}

/// `register_claimed` registers and, for what it created that may run now,
/// claims it with `process.started` in the same write: the stored state is
/// what `register` then `claim_batch` would leave. An existing id and an
/// externally owned process are answered without a claim; a bad owner or ttl
/// changes nothing.
pub async fn register_claimed_claims_what_it_creates(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in [rerunnable("r"), owner_bound("b")] {
        let id = reg.id.clone();
        let (registered, claim) = ok(
            h.registry().register_claimed(reg.clone(), None, "w1", TTL).await,
            "register_claimed",
        );
        assert!(registered.created, "{id}");
        assert_eq!(registered.process.last_sequence, 0, "{id}: the record as registered");
        assert_eq!(registered.process.started, None, "{id}: the record as registered");
        assert_eq!(registered.process.lease, None, "{id}: the record as registered");
        let claim = claim.unwrap_or_else(|| panic!("{id}: a new run candidate is claimed"));
        let folded = h.check(&id).await;
        assert_eq!(
            claim.process, folded.record,
            "{id}: the claim answers the stored record"
        );
        assert_eq!(folded.types(), vec![ev::STARTED], "{id}");
        assert_eq!(claim.lease.owner_id, "w1");
        assert_eq!(claim.lease.fencing_token, 1);
        assert_eq!(claim.lease.expires_at_ms, h.now() + TTL);
        assert_eq!(folded.record.lease, Some(claim.lease.view()));
        assert_eq!(
            folded.record.started,
            Some(StartedFact {
                owner_id: "w1".into(),
                fencing_token: 1,
                attempt: 1,
                at_ms: h.now(),
            })
        );
        // The same registration again: the stored record, no second claim.
        let (again, none) = h
            .no_change(
                "register_claimed again",
                h.registry().register_claimed(reg, None, "w2", TTL),
            )
            .await;
        assert!(!again.created && none.is_none(), "{id}: {again:?} {none:?}");
        assert_eq!(again.process, folded.record);
        // The lease is live: the worklist hands it to nobody else.
        assert!(ok(h.registry().claim_batch("w2", TTL, 10).await, "claim_batch").is_empty());
        let lease = claim.lease.clone();
        let done = ok(
            h.registry()
                .complete(&lease, Outcome::success(json!({"ok": true})))
                .await,
            "complete under the claim's lease",
        );
        assert_eq!(done.status, ProcessStatus::Completed);
    }
    // Not run by a worker: registered, not claimed, left as `register` leaves it.
    let (registered, claim) = ok(
        h.registry().register_claimed(external("e"), None, "w1", TTL).await,
        "register_claimed external",
    );
    assert!(registered.created && claim.is_none(), "{claim:?}");
    assert!(h.check("e").await.types().is_empty());
    assert_eq!(h.get("e").await.lease, None);
    // A bad owner id or ttl is refused before anything is written.
    h.rejects(
        "invalid_id",
        "an empty owner id",
        h.registry().register_claimed(rerunnable("x"), None, "", TTL),
    )
    .await;
    h.rejects(
        "invalid_request",
        "a zero ttl",
        h.registry().register_claimed(rerunnable("x"), None, "w1", 0),
    )
    .await;
}
