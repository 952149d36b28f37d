//! Retention (prune, tombstones, watermark), the change feed and the env store.

use cairn_core::{
    EnvSpec, Outcome, ProcessFilter, ProcessRecord, ProcessStatus, PruneFilter, StatusFilter, Tombstone, Watermark,
};
use serde_json::json;

use crate::builders::*;
use crate::harness::{feed_head, ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 1_000;

/// End `id` (externally owned) with a success now.
async fn finish(h: &Harness, id: &str) -> ProcessRecord {
    let rec = ok(
        h.registry()
            .complete_external(id, Outcome::success(json!(id)), "ci")
            .await,
        "complete_external",
    );
    h.check(id).await;
    rec.process
}

/// Prune deletes terminal processes before the cutoff with their events, grants
/// and wakes, reports the counts and leaves tombstones: reading or re-registering a
/// pruned id is `no_longer_retained`.
pub async fn prune_leaves_tombstones(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    h.register_granted(waking(external("a"), &s1), Some(start_grant(&s1, "k", "a")))
        .await;
    ok(h.registry().grant(&s2, "a", descriptor("k", "a2")).await, "grant");
    let w = h.append("a", notify("one")).await.wake.expect("wake");
    h.append("a", notify("two")).await;
    assert!(ok(h.registry().ack_wake("s1", &w.wake_id).await, "ack"));
    let a_done = finish(&h, "a").await;
    h.register(owner_bound("b")).await;
    ok(h.registry().request_cancel("b", None).await, "cancel b");
    let b_done = h.get("b").await;
    h.register_granted(waking(rerunnable("live"), &s1), Some(start_grant(&s1, "k", "live")))
        .await;
    h.append("live", notify("still here")).await;
    h.advance(100);
    let cutoff = h.now();
    h.advance(50);

    let report = ok(
        h.registry()
            .prune(cutoff, StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!(report.pruned, 2, "{report:?}");
    assert_eq!(
        report.events_deleted,
        a_done.last_sequence + b_done.last_sequence,
        "{report:?}"
    );
    assert_eq!(report.grants_deleted, 2, "{report:?}");
    assert_eq!(report.wakes_deleted, 2, "pending and acknowledged: {report:?}");
    assert_eq!(report.held_by_watermark, 0);

    for done in [&a_done, &b_done] {
        let id = done.id.as_str();
        let tomb = Tombstone {
            id: id.to_string(),
            status: done.status,
            terminal_at_ms: done.terminal_at_ms.expect("terminal"),
            pruned_at_ms: h.now(),
        };
        let err = h
            .rejects("no_longer_retained", "get pruned", h.registry().get(id))
            .await;
        assert_eq!(err, cairn_core::CairnError::NoLongerRetained(Box::new(tomb)));
        h.rejects(
            "no_longer_retained",
            "events of pruned",
            h.registry().events_after(id, 0, None),
        )
        .await;
        h.rejects(
            "no_longer_retained",
            "append to pruned",
            h.registry().append_event(id, note(json!({}))),
        )
        .await;
        h.rejects(
            "no_longer_retained",
            "re-register the same",
            h.registry().register(done.registration(), None),
        )
        .await;
        h.rejects(
            "no_longer_retained",
            "re-register another",
            h.registry().register(rerunnable(id), None),
        )
        .await;
    }
    h.rejects("unknown_process", "never existed", h.registry().get("never"))
        .await;
    let all: Vec<String> = ok(h.registry().list(&ProcessFilter::any()).await, "list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, vec!["live".to_string()]);
    let granted = ok(
        h.registry().list_granted_to(&s1, &ProcessFilter::any()).await,
        "granted",
    );
    assert_eq!(granted.len(), 1);
    assert!(ok(
        h.registry().list_granted_to(&s2, &ProcessFilter::any()).await,
        "granted s2"
    )
    .is_empty());
    let pending = ok(h.registry().pending_wakes("s1", None).await, "pending");
    assert_eq!(
        pending.iter().map(|w| w.process_id.as_str()).collect::<Vec<_>>(),
        ["live"]
    );
    h.rejects(
        "unknown_wake",
        "ack a pruned wake",
        h.registry().ack_wake("s1", &w.wake_id),
    )
    .await;
    let feed = ok(h.registry().changed_since(0, None).await, "changed_since");
    assert!(
        feed.changes.iter().all(|c| c.process.id == "live"),
        "pruned processes leave the change feed"
    );
}

/// Prune never touches a running process, however old; `Running` is `invalid_filter`.
pub async fn prune_never_touches_running(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in each_disposition("p") {
        h.register(reg).await;
    }
    h.claim_started("p-rerun", "w", TTL).await;
    ok(h.registry().request_abandon("p-bound", "op", "x").await, "abandon");
    h.advance(1_000_000);
    let report = h
        .no_change(
            "prune with only running processes",
            h.registry()
                .prune(u64::MAX, StatusFilter::Any.into(), Watermark::NoProjector),
        )
        .await;
    assert_eq!(report.pruned, 0);
    assert_eq!(report.events_deleted, 0);
    h.rejects(
        "invalid_filter",
        "prune running",
        h.registry()
            .prune(u64::MAX, StatusFilter::Running.into(), Watermark::NoProjector),
    )
    .await;
}

/// A prune's filter (SPEC §7 with §4): definition, originator, parent and
/// creation time narrow what goes; a value no process can have is refused
/// and prunes nothing.
pub async fn prune_by_filter(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    // e-old (external, host) | e-s1 (external, session s1) | t-1 (tool echo, host)
    h.register(external("e-old")).await;
    h.advance(10);
    let created_mid = h.now();
    h.register(originated_by(external("e-s1"), &s1)).await;
    h.register(rerunnable("t-1")).await;
    for id in ["e-old", "e-s1"] {
        finish(&h, id).await;
    }
    let lease = h.claim("t-1", "w", TTL).await;
    ok(
        h.registry().complete(&lease, Outcome::success(json!(1))).await,
        "complete t-1",
    );
    h.check("t-1").await;
    h.advance(10);
    let cutoff = h.now();
    let prune = |filter: PruneFilter| h.registry().prune(cutoff, filter, Watermark::NoProjector);

    for (what, bad) in [
        (
            "a definition no process has",
            PruneFilter {
                definition: Some("echo".into()),
                ..Default::default()
            },
        ),
        (
            "an originator no process has",
            PruneFilter {
                originator: Some("s1".into()),
                ..Default::default()
            },
        ),
        (
            "a bad parent id",
            PruneFilter {
                caused_by: Some(String::new()),
                ..Default::default()
            },
        ),
    ] {
        h.rejects("invalid_filter", what, prune(bad)).await;
    }
    for id in ["e-old", "e-s1", "t-1"] {
        h.check(id).await;
    }

    // Each step prunes what its filter admits of what is left, and nothing else.
    let any = PruneFilter::default;
    let steps: [(&str, PruneFilter, &[&str]); 5] = [
        (
            "tool:echo",
            PruneFilter {
                definition: Some("tool:echo".into()),
                ..any()
            },
            &["t-1"],
        ),
        (
            "session:s1",
            PruneFilter {
                originator: Some(s1.scope_id()),
                ..any()
            },
            &["e-s1"],
        ),
        (
            "created later",
            PruneFilter {
                created_from_ms: Some(created_mid),
                ..any()
            },
            &[],
        ),
        (
            "children of nobody",
            PruneFilter {
                caused_by: Some("nobody".into()),
                ..any()
            },
            &[],
        ),
        (
            "created before",
            PruneFilter {
                created_before_ms: Some(created_mid),
                ..any()
            },
            &["e-old"],
        ),
    ];
    for (what, filter, gone) in steps {
        let report = ok(prune(filter).await, what);
        assert_eq!(report.pruned, gone.len() as u64, "{what}: {report:?}");
        for id in gone {
            h.rejects("no_longer_retained", what, h.registry().get(id)).await;
        }
    }
}

/// Only terminal times strictly before the cutoff go, and only of the given status.
pub async fn prune_respects_cutoff_and_status(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("c1")).await;
    h.register(rerunnable("f1")).await;
    h.register(external("c2")).await;
    finish(&h, "c1").await;
    let lease = h.claim("f1", "w", TTL).await;
    ok(
        h.registry().complete(&lease, Outcome::failure("t", "x", "m")).await,
        "fail",
    );
    h.check("f1").await;
    h.advance(10);
    let t2 = h.now();
    finish(&h, "c2").await;
    h.advance(10);
    let report = ok(
        h.registry()
            .prune(t2, StatusFilter::Completed.into(), Watermark::NoProjector)
            .await,
        "prune completed",
    );
    assert_eq!(report.pruned, 1, "{report:?}");
    h.rejects("no_longer_retained", "c1 pruned", h.registry().get("c1"))
        .await;
    assert_eq!(
        h.get("c2").await.status,
        ProcessStatus::Completed,
        "terminal at the cutoff stays"
    );
    assert_eq!(h.get("f1").await.status, ProcessStatus::Failed, "another status stays");
    let report = ok(
        h.registry()
            .prune(t2 + 1, StatusFilter::Failed.into(), Watermark::NoProjector)
            .await,
        "prune failed",
    );
    assert_eq!(report.pruned, 1);
    h.rejects("no_longer_retained", "f1 pruned", h.registry().get("f1"))
        .await;
    assert_eq!(h.get("c2").await.status, ProcessStatus::Completed);
}

/// With a cursor watermark only processes whose last change the projector has seen
/// go; the rest are counted as `held_by_watermark`.
pub async fn prune_respects_watermark(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("seen")).await;
    h.register(external("unseen")).await;
    finish(&h, "seen").await;
    let projected = feed_head(h.registry()).await;
    finish(&h, "unseen").await;
    h.advance(10);
    let cutoff = h.now();
    let report = ok(
        h.registry()
            .prune(
                cutoff,
                StatusFilter::Any.into(),
                Watermark::Cursor { cursor: projected },
            )
            .await,
        "prune",
    );
    assert_eq!(report.pruned, 1, "{report:?}");
    assert_eq!(report.held_by_watermark, 1, "{report:?}");
    h.rejects("no_longer_retained", "seen", h.registry().get("seen")).await;
    h.get("unseen").await;
    let report = ok(
        h.registry()
            .prune(cutoff, StatusFilter::Any.into(), Watermark::Cursor { cursor: 0 })
            .await,
        "prune at 0",
    );
    assert_eq!((report.pruned, report.held_by_watermark), (0, 1));
    let head = feed_head(h.registry()).await;
    let report = ok(
        h.registry()
            .prune(cutoff, StatusFilter::Any.into(), Watermark::Cursor { cursor: head })
            .await,
        "prune at head",
    );
    assert_eq!((report.pruned, report.held_by_watermark), (1, 0));
}

/// The change feed returns every changed record once, in cursor order, one page at a
/// time, with the cursor to read on from.
pub async fn change_feed_order_and_paging(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let empty = ok(h.registry().changed_since(0, None).await, "empty feed");
    assert!(empty.changes.is_empty());
    assert_eq!(empty.next_cursor, 0, "nothing changed: the same cursor");
    for id in ["c", "a", "b"] {
        h.register(rerunnable(id)).await;
    }
    let page = ok(h.registry().changed_since(0, None).await, "feed");
    let ids: Vec<&str> = page.changes.iter().map(|c| c.process.id.as_str()).collect();
    assert_eq!(ids, ["c", "a", "b"], "cursor order is change order");
    assert!(page.changes.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(page.next_cursor, page.changes[2].cursor);
    for c in &page.changes {
        assert_eq!(
            c.process,
            h.get(&c.process.id).await,
            "a change carries the current record"
        );
    }
    let first = ok(h.registry().changed_since(0, Some(2)).await, "page 1");
    assert_eq!(first.changes.len(), 2);
    assert_eq!(first.next_cursor, first.changes[1].cursor);
    let second = ok(h.registry().changed_since(first.next_cursor, Some(2)).await, "page 2");
    assert_eq!(
        second.changes.iter().map(|c| c.process.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let third = ok(h.registry().changed_since(second.next_cursor, Some(2)).await, "page 3");
    assert!(third.changes.is_empty());
    assert_eq!(third.next_cursor, second.next_cursor);

    h.append("a", progress(1)).await;
    let next = ok(
        h.registry().changed_since(third.next_cursor, None).await,
        "after a change",
    );
    assert_eq!(next.changes.len(), 1);
    assert_eq!(next.changes[0].process.id, "a");
    assert_eq!(next.changes[0].process.last_sequence, 1);
    assert!(next.next_cursor > third.next_cursor);
}

/// A record changed several times appears once, at its latest cursor.
pub async fn change_feed_dedupes_to_latest(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("a")).await;
    h.register(external("b")).await;
    h.append("a", progress(1)).await;
    h.append("b", progress(1)).await;
    h.append("a", progress(2)).await;
    ok(h.registry().request_cancel("a", None).await, "cancel");
    h.check("a").await;
    let page = ok(h.registry().changed_since(0, None).await, "feed");
    let ids: Vec<&str> = page.changes.iter().map(|c| c.process.id.as_str()).collect();
    assert_eq!(ids, ["b", "a"], "each record once, at its latest change");
    assert_eq!(page.changes[1].process, h.get("a").await);
    assert_eq!(page.changes[1].process.last_sequence, 3);
    let from_b = ok(h.registry().changed_since(page.changes[0].cursor, None).await, "from b");
    assert_eq!(from_b.changes.len(), 1);
    assert_eq!(from_b.changes[0].process.id, "a");
    finish(&h, "b").await;
    let tail = ok(h.registry().changed_since(page.next_cursor, None).await, "tail");
    assert_eq!(
        tail.changes.iter().map(|c| c.process.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(tail.changes[0].process.status, ProcessStatus::Completed);
}

/// `change_head` skips no change a reader of the feed has not read; on a
/// store nobody writes to, nothing is read from it (PostgreSQL's waits for
/// transactions still running anywhere on its server, as its feed does);
/// and a change made after it is read from it.
pub async fn change_head_is_where_the_feed_ends(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let empty = ok(h.registry().change_head().await, "head of an empty feed");
    let none = ok(h.registry().changed_since(empty, None).await, "feed from its head");
    assert!(none.changes.is_empty(), "an empty feed's head skips nothing: {none:?}");
    h.register(external("a")).await;
    h.register(external("b")).await;
    h.append("a", progress(1)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let head = loop {
        let all = ok(h.registry().changed_since(0, None).await, "feed");
        let head = ok(h.registry().change_head().await, "head");
        let tail = ok(h.registry().changed_since(head, None).await, "feed from its head");
        let past: Vec<&str> = all
            .changes
            .iter()
            .filter(|c| c.cursor > head)
            .map(|c| c.process.id.as_str())
            .collect();
        let read: Vec<&str> = tail.changes.iter().map(|c| c.process.id.as_str()).collect();
        assert!(
            past.iter().all(|id| read.contains(id)),
            "what is past the head {head} is read from it: {past:?} of {read:?}"
        );
        if tail.changes.is_empty() || std::time::Instant::now() > deadline {
            break head;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let tail = ok(h.registry().changed_since(head, None).await, "feed from its head");
    assert!(
        tail.changes.is_empty(),
        "a quiet store's feed answers nothing from its head: {tail:?}"
    );
    h.register(external("c")).await;
    let after = ok(h.registry().changed_since(head, None).await, "feed from the head");
    let ids: Vec<&str> = after.changes.iter().map(|c| c.process.id.as_str()).collect();
    assert_eq!(ids, ["c"], "a change after the head is read from it");
}

/// `put_env` stores a spec under its content address, idempotently; `get_env` round-trips;
/// an unknown ref is `unknown_env`.
pub async fn env_store_round_trip(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let spec = EnvSpec {
        plugin_options: json!({"b": 1, "a": {"z": [1, 2], "y": null}}),
        policy: json!({"network": false}),
    };
    let env_ref = ok(h.registry().put_env(&spec).await, "put_env");
    let hex = env_ref
        .strip_prefix("process-env:sha256:")
        .unwrap_or_else(|| panic!("env refs are process-env:sha256:{{hex}}, got {env_ref}"));
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let (expected, _) = ok(cairn_core::validate::env_ref_and_bytes(&spec), "env_ref_and_bytes");
    assert_eq!(env_ref, expected, "the address is the sha256 of the canonical JSON");
    assert_eq!(ok(h.registry().put_env(&spec).await, "put_env again"), env_ref);
    assert_eq!(ok(h.registry().get_env(&env_ref).await, "get_env"), spec);
    let other = EnvSpec {
        plugin_options: json!({}),
        policy: json!({"network": true}),
    };
    let other_ref = ok(h.registry().put_env(&other).await, "put_env other");
    assert_ne!(other_ref, env_ref);
    assert_eq!(ok(h.registry().get_env(&other_ref).await, "get_env other"), other);
    let missing = format!("process-env:sha256:{}", "0".repeat(64));
    h.rejects("unknown_env", "missing env", h.registry().get_env(&missing))
        .await;
}

/// A terminal child stays while its parent runs (the parent may yet read how
/// it ended), counted as `held_by_running_parent`; once the parent has ended,
/// both go.
pub async fn prune_keeps_the_ended_children_of_a_running_parent(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("parent")).await;
    let mut child = external("parent/1");
    child.provenance.caused_by = Some(cairn_core::model::CausalRef::process("parent"));
    h.register(child).await;
    finish(&h, "parent/1").await;
    h.advance(10);
    let report = ok(
        h.registry()
            .prune(h.now(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!((report.pruned, report.held_by_running_parent), (0, 1), "{report:?}");
    assert_eq!(h.get("parent/1").await.status, ProcessStatus::Completed);
    finish(&h, "parent").await;
    h.advance(10);
    let report = ok(
        h.registry()
            .prune(h.now(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune after the parent ended",
    );
    assert_eq!((report.pruned, report.held_by_running_parent), (2, 0), "{report:?}");
    h.rejects("no_longer_retained", "the child pruned", h.registry().get("parent/1"))
        .await;
}

/// An ended process whose descendant still runs stays, however far down the
/// running one is (a cancel of the tree reaches it through them), counted
/// as `held_by_running_descendant`; once that descendant has ended, all go.
pub async fn prune_keeps_the_ancestors_of_a_running_process(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("root")).await;
    for (id, parent) in [("root/1", "root"), ("root/1/1", "root/1"), ("root/2", "root")] {
        let mut child = external(id);
        child.provenance.caused_by = Some(cairn_core::model::CausalRef::process(parent));
        h.register(child).await;
    }
    for id in ["root/2", "root/1", "root"] {
        finish(&h, id).await;
    }
    h.advance(10);
    let report = ok(
        h.registry()
            .prune(h.now(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!(
        (
            report.pruned,
            report.held_by_running_descendant,
            report.held_by_running_parent
        ),
        (1, 2, 0),
        "root/2 goes; root and root/1 stay above root/1/1: {report:?}"
    );
    h.rejects("no_longer_retained", "the ended leaf", h.registry().get("root/2"))
        .await;
    for id in ["root", "root/1"] {
        assert_eq!(h.get(id).await.status, ProcessStatus::Completed, "{id} kept");
    }
    finish(&h, "root/1/1").await;
    h.advance(10);
    let report = ok(
        h.registry()
            .prune(h.now(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune after the leaf ended",
    );
    assert_eq!((report.pruned, report.held_by_running_descendant), (3, 0), "{report:?}");
}

/// A prune goes a chunk at a time (a transaction each, so live work's writes
/// go on between them), in (terminal time, id) order: it walks past what it
/// keeps (children of a running parent spread through every chunk, ties of
/// one terminal time across a chunk's edge) and deletes every other row,
/// reporting the totals of all its chunks.
pub async fn a_prune_walks_every_chunk_past_what_it_keeps(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("parent")).await;
    let total = 2 * cairn_core::ops::admin::PRUNE_CHUNK + 7;
    let ids: Vec<String> = (0..total).map(|i| format!("p-{i:04}")).collect();
    let (kept, gone): (Vec<String>, Vec<String>) =
        ids.iter().cloned().partition(|id| id.ends_with(['0', '3', '6', '9']));
    // A hundred at a time, each hundred ending at one time: runs of ties, so
    // a chunk's edge falls inside one terminal time.
    for group in ids.chunks(100) {
        futures::future::join_all(group.iter().map(|id| {
            let mut rec = external(id);
            if kept.contains(id) {
                rec.provenance.caused_by = Some(cairn_core::model::CausalRef::process("parent"));
            }
            h.register(rec)
        }))
        .await;
        for done in futures::future::join_all(
            group
                .iter()
                .map(|id| h.registry().complete_external(id, Outcome::success(json!(id)), "ci")),
        )
        .await
        {
            ok(done, "complete_external");
        }
        h.advance(1);
    }
    h.advance(10);
    let report = ok(
        h.registry()
            .prune(h.now(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!(
        (report.pruned, report.held_by_running_parent),
        (gone.len() as u64, kept.len() as u64),
        "{report:?}"
    );
    for id in &gone {
        let e = h.registry().get(id).await.expect_err("pruned");
        assert_eq!(e.code(), "no_longer_retained", "{id}: {e}");
    }
    for id in &kept {
        let r = ok(h.registry().get(id).await, "get");
        assert_eq!(r.status, ProcessStatus::Completed, "{id} kept");
    }
    assert_eq!(h.get("parent").await.status, ProcessStatus::Running);
}

/// A prune keeps, beside each tombstone, which scopes held a grant on the
/// process as it was pruned: `pruned_grant` answers the tombstone to each of
/// them (a frame's scope too) and nothing to a scope that never held one, or
/// whose grant was revoked before the prune, or for a live or unknown id. A
/// session's deletion removes its kept grants as it removes its live ones
/// (keeping its frames' with `keep_frames`), and counts only the live ones.
pub async fn prune_keeps_the_scopes_that_held_a_grant(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2, s3) = (session("s1"), session("s2"), session("s3"));
    let frame = cairn_core::SessionScope::frame("s1", "f1");
    h.register_granted(external("a"), Some(start_grant(&s1, "k", "a")))
        .await;
    ok(
        h.registry().grant(&frame, "a", descriptor("k", "a")).await,
        "grant a to the frame",
    );
    ok(
        h.registry().grant(&s2, "a", descriptor("k", "a")).await,
        "grant a to s2",
    );
    h.register_granted(external("b"), Some(start_grant(&s2, "k", "b")))
        .await;
    h.register_granted(external("c"), Some(start_grant(&s1, "k", "c")))
        .await;
    assert!(ok(h.registry().revoke(&s1, "c").await, "revoke c"));
    h.register_granted(external("live"), Some(start_grant(&s1, "k", "live")))
        .await;
    assert_eq!(
        ok(
            h.registry().pruned_grant(&s1, "a").await,
            "pruned_grant before the prune"
        ),
        None,
        "a live process has no kept grant"
    );
    let done: Vec<ProcessRecord> = vec![finish(&h, "a").await, finish(&h, "b").await, finish(&h, "c").await];
    h.advance(100);
    let cutoff = h.now();
    h.advance(50);
    let report = ok(
        h.registry()
            .prune(cutoff, StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!(report.pruned, 3, "{report:?}");
    assert_eq!(report.grants_deleted, 4, "a's three and b's one: {report:?}");
    let tomb = |r: &ProcessRecord| Tombstone {
        id: r.id.clone(),
        status: r.status,
        terminal_at_ms: r.terminal_at_ms.expect("terminal"),
        pruned_at_ms: h.now(),
    };
    let (a, b) = (tomb(&done[0]), tomb(&done[1]));
    let held = |scope: cairn_core::SessionScope, id: &'static str| {
        let h = &h;
        async move {
            ok(
                h.registry().pruned_grant(&scope, id).await,
                &format!("pruned_grant {} {id}", scope.scope_id()),
            )
        }
    };
    assert_eq!(held(s1.clone(), "a").await, Some(a.clone()));
    assert_eq!(held(frame.clone(), "a").await, Some(a.clone()));
    assert_eq!(held(s2.clone(), "a").await, Some(a.clone()));
    assert_eq!(held(s3.clone(), "a").await, None, "s3 never held a");
    assert_eq!(held(s2.clone(), "b").await, Some(b.clone()));
    assert_eq!(held(s1.clone(), "b").await, None, "s1 never held b");
    assert_eq!(
        held(s1.clone(), "c").await,
        None,
        "c's grant was revoked before the prune"
    );
    assert_eq!(held(s1.clone(), "live").await, None, "live is not pruned");
    assert_eq!(held(s1.clone(), "never").await, None, "never existed");
    h.rejects("invalid_id", "a bad id", h.registry().pruned_grant(&s1, ""))
        .await;

    let kept = ok(
        h.registry().delete_session_with("s1", true).await,
        "delete s1 keeping frames",
    );
    assert_eq!(kept.revoked_grants, 1, "only live's grant is a live one: {kept:?}");
    assert_eq!(held(s1.clone(), "a").await, None, "the session's kept grant goes");
    assert_eq!(held(frame.clone(), "a").await, Some(a.clone()), "its frame's stays");
    assert_eq!(held(s2.clone(), "a").await, Some(a.clone()), "another session's stays");
    let full = ok(h.registry().delete_session("s1").await, "delete s1");
    assert_eq!(full.revoked_grants, 0, "{full:?}");
    assert_eq!(
        held(frame.clone(), "a").await,
        None,
        "the full delete takes the frame's"
    );
    assert_eq!(held(s2.clone(), "a").await, Some(a));
    assert_eq!(held(s2.clone(), "b").await, Some(b));
    h.rejects(
        "no_longer_retained",
        "the tombstone outlives the kept grants",
        h.registry().get("a"),
    )
    .await;
}

/// A prune collects the env specs and event-type lists no process names any
/// more (ADR 0034): with the default grace, an env put within the hour stays
/// (the pruned process's, and one put for a registration that comes after
/// the prune, which then succeeds); with none, the pruned process's env and
/// list go while a running process's stay, and a list collected is stored
/// again by the next registration that declares it. Collecting again finds
/// nothing more.
pub async fn prune_collects_what_no_process_names(factory: &dyn StoreFactory) {
    use cairn_core::EventType;
    let h = Harness::new(factory).await;
    let env = |task: &str| EnvSpec {
        plugin_options: json!({ "cwd": format!("/work/{task}") }),
        policy: json!({}),
    };
    let declaring = |mut reg: cairn_core::Registration, name: &str, env_ref: Option<&str>| {
        reg.event_types.push(EventType::plain(name));
        reg.env_ref = env_ref.map(str::to_string);
        reg
    };
    let dead_env = ok(h.registry().put_env(&env("dead")).await, "put dead's env");
    let live_env = ok(h.registry().put_env(&env("live")).await, "put live's env");
    // Registered and ended without reading it back: nothing in this OS
    // process decodes its list, so reading a process that declares it later
    // reads the store.
    ok(
        h.registry()
            .register(declaring(external("dead"), "collected.dead", Some(&dead_env)), None)
            .await,
        "register dead",
    );
    h.register(declaring(external("live"), "collected.live", Some(&live_env)))
        .await;
    ok(
        h.registry()
            .complete_external("dead", Outcome::success(json!(1)), "ci")
            .await,
        "complete dead",
    );
    h.advance(100);
    let cutoff = h.now();
    h.advance(50);
    // Put now, for a registration that comes after the prune.
    let next_env = ok(h.registry().put_env(&env("next")).await, "put next's env");

    let report = ok(
        h.registry()
            .prune(cutoff, StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!(report.pruned, 1, "{report:?}");
    for (env_ref, whose) in [(&dead_env, "dead's"), (&live_env, "live's"), (&next_env, "next's")] {
        ok(
            h.registry().get_env(env_ref).await,
            &format!("{whose} env, put within the default grace, after the prune"),
        );
    }
    let next = h
        .register(declaring(external("next"), "collected.next", Some(&next_env)))
        .await;
    assert_eq!(next.env_ref.as_deref(), Some(next_env.as_str()));

    let collected = ok(
        h.registry().collect_unreferenced(std::time::Duration::ZERO).await,
        "collect with no grace",
    );
    assert_eq!(
        collected.envs, 1,
        "only dead's env is named by no process: {collected:?}"
    );
    assert!(
        collected.type_lists <= 1,
        "only dead's list is named by no process (a store that keeps lists apart deletes it): {collected:?}"
    );
    h.rejects(
        "unknown_env",
        "the pruned process's env",
        h.registry().get_env(&dead_env),
    )
    .await;
    assert_eq!(ok(h.registry().get_env(&live_env).await, "live's env"), env("live"));
    assert_eq!(ok(h.registry().get_env(&next_env).await, "next's env"), env("next"));
    for (id, name) in [("live", "collected.live"), ("next", "collected.next")] {
        let record = h.check(id).await.record;
        assert!(record.event_types.find(name).is_some(), "{id} keeps its list");
    }

    // The list collected is declared again: stored again, read back whole.
    let again = h
        .register(declaring(external("again"), "collected.dead", Some(&live_env)))
        .await;
    assert!(again.event_types.find("collected.dead").is_some());
    let again = h.check("again").await.record;
    assert!(again.event_types.find("collected.dead").is_some(), "{again:?}");
    // Re-putting an env makes it fresh again, and a put after a collection stores it anew.
    let dead_again = ok(h.registry().put_env(&env("dead")).await, "put dead's env again");
    assert_eq!(dead_again, dead_env);
    assert_eq!(
        ok(h.registry().get_env(&dead_env).await, "dead's env put again"),
        env("dead")
    );
    let nothing = ok(
        h.registry()
            .collect_unreferenced(cairn_core::registry::DEFAULT_COLLECT_GRACE)
            .await,
        "collect again with the default grace",
    );
    assert_eq!(
        nothing,
        cairn_core::registry::Collected::default(),
        "everything left is named or put within the grace"
    );
}
