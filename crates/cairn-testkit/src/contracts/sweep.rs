//! Node identities, liveness rows and the sweep (SPEC §2 `sweep`, §5).

use cairn_core::events as ev;
use cairn_core::{AbandonEvidence, AbandonWriter, NodeIdentity, Outcome, OwnerIdentity, ProcessStatus, SweepItem};
use serde_json::json;

use crate::builders::*;
use crate::harness::{ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 5_000;

fn identity(node: &str, incarnation: u64) -> NodeIdentity {
    NodeIdentity {
        node: node.into(),
        incarnation,
    }
}

/// `register_node` hands out 1, 2, 3, ... per node id and keeps the liveness
/// row; a heartbeat lands only for the latest incarnation; a bad node id is
/// `invalid_id` and registers nothing.
pub async fn register_node_counts_incarnations(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    assert_eq!(ok(r.node("n1").await, "node of an unknown id"), None);
    assert_eq!(ok(r.register_node("n1").await, "register n1"), identity("n1", 1));
    let started = h.now();
    h.advance(5);
    assert_eq!(ok(r.register_node("n1").await, "register n1 again"), identity("n1", 2));
    assert_eq!(
        ok(r.register_node("host-2.local").await, "register another node"),
        identity("host-2.local", 1)
    );
    let row = ok(r.node("n1").await, "node n1").expect("n1 registered");
    assert_eq!(
        (row.incarnation, row.started_at_ms, row.heartbeat_at_ms),
        (2, started + 5, started + 5)
    );

    h.advance(7);
    assert!(ok(r.heartbeat(&identity("n1", 2)).await, "heartbeat of the latest"));
    let row = ok(r.node("n1").await, "node n1").expect("n1 registered");
    assert_eq!((row.incarnation, row.heartbeat_at_ms), (2, h.now()));
    h.advance(1);
    assert!(
        !ok(
            r.heartbeat(&identity("n1", 1)).await,
            "heartbeat of a superseded incarnation"
        ),
        "a superseded incarnation's heartbeat is refused"
    );
    assert_eq!(
        ok(r.node("n1").await, "node n1").expect("n1").heartbeat_at_ms,
        h.now() - 1,
        "a refused heartbeat writes nothing"
    );
    assert!(!ok(
        r.heartbeat(&identity("never", 1)).await,
        "heartbeat of an unknown node"
    ));
    assert_eq!(ok(r.node("never").await, "node never"), None);

    for bad in ["", "a#1", "has space", &"x".repeat(65)] {
        h.rejects("invalid_id", "register a bad node id", r.register_node(bad))
            .await;
        h.rejects("invalid_id", "read a bad node id", r.node(bad)).await;
        h.rejects("invalid_id", "heartbeat a bad node id", r.heartbeat(&identity(bad, 1)))
            .await;
        assert_eq!(ok(r.node("n1").await, "node n1").expect("n1").incarnation, 2);
    }
    h.rejects("invalid_id", "sweep naming a bad node id", r.sweep("p", "a b", 2))
        .await;
}

/// Once a node registers a newer incarnation, the sweep worklist names the
/// running `owner_bound` processes its earlier incarnation started (and
/// nothing else), and `sweep` ends each `abandoned {sweep}` at once, lease
/// live or not, with the old owner in the evidence. It writes once; the old
/// owner is fenced from then on.
pub async fn sweep_abandons_an_earlier_incarnations_work(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    let old = ok(r.register_node("n1").await, "register n1");
    ok(r.register_node("n2").await, "register n2");
    for reg in [
        owner_bound("p"),
        owner_bound("peer"),
        owner_bound("legacy"),
        owner_bound("never-started"),
        rerunnable("rerun"),
        external("ext"),
    ] {
        h.register(reg).await;
    }
    let (lease, _) = h.claim_started("p", &old.owner_id(), TTL).await;
    h.claim_started("peer", "n2#1", TTL).await;
    h.claim_started("legacy", "worker-1", TTL).await;
    h.claim_started("rerun", &old.owner_id(), TTL).await;
    h.append("p", progress(1).with_lease(lease.clone())).await;

    let empty = h
        .no_change("sweep worklist while n1#1 is the latest", r.sweep_worklist(100))
        .await;
    assert!(empty.is_empty(), "nothing is swept before its node restarts: {empty:?}");
    assert!(h
        .no_change("sweep before the node restarted", r.sweep("p", "n1", 1))
        .await
        .is_none());

    h.advance(3);
    let new = ok(r.register_node("n1").await, "register n1 again");
    assert_eq!(new.incarnation, 2);
    let items = h.no_change("sweep worklist", r.sweep_worklist(100)).await;
    assert_eq!(
        items,
        vec![SweepItem {
            process_id: "p".into(),
            node: "n1".into(),
            incarnation: 2,
        }],
        "only the owner_bound work the earlier incarnation started"
    );
    for id in ["peer", "legacy", "never-started", "rerun", "ext"] {
        assert!(
            h.no_change("sweep of a process that is not n1's", r.sweep(id, "n1", 2))
                .await
                .is_none(),
            "`{id}` is not swept"
        );
    }

    // The old lease is still live: the evidence is the restart, not its expiry.
    assert!(lease.expires_at_ms > h.now());
    let rec = ok(r.sweep("p", "n1", 2).await, "sweep").expect("swept");
    let folded = h.check("p").await;
    assert_eq!(rec, folded.record);
    assert_eq!(rec.status, ProcessStatus::Abandoned);
    assert_eq!(rec.lease, None, "the terminal released the old lease");
    assert_eq!(
        rec.outcome,
        Some(Outcome::Abandoned {
            evidence: AbandonEvidence {
                writer: AbandonWriter::Sweep,
                owner: Some(OwnerIdentity {
                    owner_id: "n1#1".into(),
                    fencing_token: lease.fencing_token,
                    node: Some("n1".into()),
                    incarnation: Some(1),
                }),
                epoch_ms: h.now(),
            }
        })
    );
    assert_eq!(folded.types().last().copied(), Some(ev::ABANDONED));
    let abandoned = folded.types().iter().filter(|t| **t == ev::ABANDONED).count();
    assert_eq!(abandoned, 1);

    assert!(h.no_change("sweep again", r.sweep("p", "n1", 2)).await.is_none());
    assert!(h
        .no_change("sweep worklist after", r.sweep_worklist(100))
        .await
        .is_empty());
    // The revenant of n1#1 is fenced.
    h.rejects_any(
        &["process_terminal", "lease_fenced"],
        "the old incarnation's completion",
        r.complete(&lease, Outcome::success(json!(1))),
    )
    .await;
    h.rejects("lease_fenced", "the old incarnation's renewal", r.renew(&lease, TTL))
        .await;
    h.rejects_any(
        &["process_terminal", "lease_fenced"],
        "the old incarnation's append",
        r.append_event("p", progress(2).with_lease(lease.clone())),
    )
    .await;
    h.rejects("unknown_process", "sweep of an unknown id", r.sweep("nope", "n1", 2))
        .await;
}

/// The sweep never takes the work of a node's latest incarnation, however long
/// its lease has lapsed (elapsed time alone never makes anything terminal),
/// nor a process claimed but never started (it is claimable again instead).
pub async fn sweep_never_takes_a_live_incarnations_work(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    let me = ok(r.register_node("n1").await, "register n1");
    h.register(owner_bound("mine")).await;
    h.claim_started("mine", &me.owner_id(), TTL).await;
    h.advance(TTL * 100);
    assert!(h.no_change("sweep worklist", r.sweep_worklist(100)).await.is_empty());
    assert!(
        h.no_change("sweep with the owner's own incarnation", r.sweep("mine", "n1", 1))
            .await
            .is_none(),
        "a lapsed lease of the latest incarnation is not evidence"
    );
    assert_eq!(h.get("mine").await.status, ProcessStatus::Running);

    h.register(owner_bound("claimed")).await;
    let lease = h.claim("claimed", &me.owner_id(), TTL).await;
    ok(r.register_node("n1").await, "register n1 again");
    assert!(
        h.no_change("sweep of a claimed, never started process", r.sweep("claimed", "n1", 2))
            .await
            .is_none(),
        "a process nobody started is claimable again, not swept"
    );
    assert_eq!(h.get("claimed").await.lease.map(|l| l.owner_id), Some(lease.owner_id));
    let items = h.no_change("sweep worklist", r.sweep_worklist(100)).await;
    assert_eq!(
        items.iter().map(|i| i.process_id.as_str()).collect::<Vec<_>>(),
        vec!["mine"]
    );
    let rec = ok(r.sweep("mine", "n1", 2).await, "sweep").expect("swept after the restart");
    assert_eq!(rec.status, ProcessStatus::Abandoned);
    h.check("mine").await;
}

/// `leases_of_earlier_incarnations` answers the leases earlier incarnations
/// of a node hold on running rerunnable processes, and nothing else (not
/// the latest incarnation's, another node's whose name it begins, an
/// owner-bound process's, an ended one's, an owner id that only looks like
/// a node's); each released, its process is claimable at once. A process
/// under an abandon request is found too: released, it is reconciled at once,
/// not when the dead incarnation's lease would have lapsed.
pub async fn the_leases_of_earlier_incarnations_are_found_and_released(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    let old = ok(r.register_node("n1").await, "register n1");
    for reg in [
        rerunnable("a"),
        rerunnable("asked"),
        rerunnable("b"),
        rerunnable("ended"),
        rerunnable("latest"),
        rerunnable("other"),
        rerunnable("lookalike"),
        owner_bound("ob"),
    ] {
        h.register(reg).await;
    }
    let (a, _) = h.claim_started("a", &old.owner_id(), TTL).await;
    let (b, _) = h.claim_started("b", &old.owner_id(), TTL).await;
    let (asked, _) = h.claim_started("asked", &old.owner_id(), TTL).await;
    ok(
        r.request_abandon("asked", "operator", "its node is gone").await,
        "abandon request",
    );
    let (ended, _) = h.claim_started("ended", &old.owner_id(), TTL).await;
    ok(r.complete(&ended, Outcome::success(json!(1))).await, "complete");
    h.claim_started("other", "n1x#1", TTL).await;
    h.claim_started("lookalike", "n1#x", TTL).await;
    h.claim_started("ob", &old.owner_id(), TTL).await;
    let new = ok(r.register_node("n1").await, "register n1 again");
    h.claim_started("latest", &new.owner_id(), TTL).await;

    let mut found = h
        .no_change(
            "leases of earlier incarnations",
            r.leases_of_earlier_incarnations("n1", new.incarnation, 100),
        )
        .await;
    found.sort_by(|x, y| x.process_id.cmp(&y.process_id));
    assert_eq!(
        found,
        vec![a.clone(), asked.clone(), b.clone()],
        "only n1#1's leases on running rerunnable work"
    );
    let one = h
        .no_change(
            "a page of one",
            r.leases_of_earlier_incarnations("n1", new.incarnation, 1),
        )
        .await;
    assert_eq!(one.len(), 1);
    assert!(h
        .no_change("none before n1#1", r.leases_of_earlier_incarnations("n1", 1, 100))
        .await
        .is_empty());

    for lease in [&a, &asked, &b] {
        assert!(ok(r.release(lease).await, "release"), "{} released", lease.process_id);
    }
    let work: Vec<String> = ok(r.worklist(100).await, "worklist")
        .into_iter()
        .map(|w| w.process_id)
        .collect();
    for id in ["a", "b"] {
        assert!(work.iter().any(|w| w == id), "{id} is claimable at once: {work:?}");
    }
    let reconcilable = ok(r.abandon_worklist(100).await, "abandon worklist");
    assert!(
        reconcilable.iter().any(|id| id == "asked"),
        "the abandon request is reconcilable at once: {reconcilable:?}"
    );
    assert!(ok(
        r.leases_of_earlier_incarnations("n1", new.incarnation, 100).await,
        "after the release"
    )
    .is_empty());
}
