//! Grants, transfer, the two session lenses and session deletion.

use std::collections::BTreeSet;

use cairn_core::{Outcome, ProcessFilter, ProcessStatus, SessionScope};
use serde_json::json;

use crate::builders::*;
use crate::harness::{ok, Folded, Harness};
use crate::StoreFactory;

async fn granted_ids(h: &Harness, scope: &SessionScope) -> Vec<String> {
    ok(
        h.registry().list_granted_to(scope, &ProcessFilter::any()).await,
        "list_granted_to",
    )
    .into_iter()
    .map(|g| g.process.id)
    .collect()
}

async fn originated_ids(h: &Harness, scope: &SessionScope) -> Vec<String> {
    ok(
        h.registry().list_originated_by(scope, &ProcessFilter::any()).await,
        "list_originated_by",
    )
    .into_iter()
    .map(|r| r.id)
    .collect()
}

async fn folds(h: &Harness, ids: &[&str]) -> Vec<Folded> {
    let mut out = Vec::new();
    for id in ids {
        out.push(h.check(id).await);
    }
    out
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `grant` upserts a descriptor, `revoke` removes one grant; neither changes the process.
pub async fn grant_and_revoke(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    let frame = SessionScope::frame("s1", "f1");
    h.register(rerunnable("p")).await;
    let before = h.check("p").await;
    h.advance(3);
    let g = ok(h.registry().grant(&s1, "p", descriptor("tool", "one")).await, "grant");
    assert_eq!(g.scope, s1);
    assert_eq!(g.process_id, "p");
    assert_eq!(g.descriptor, descriptor("tool", "one"));
    assert_eq!(g.granted_at_ms, h.now());
    ok(
        h.registry().grant(&s1, "p", descriptor("tool", "two")).await,
        "grant again",
    );
    let listed = ok(h.registry().list_granted_to(&s1, &ProcessFilter::any()).await, "list");
    assert_eq!(listed.len(), 1, "a grant is an upsert");
    assert_eq!(listed[0].grant.descriptor, descriptor("tool", "two"));
    assert!(granted_ids(&h, &frame).await.is_empty(), "scopes match exactly");
    // A process's own grants, one point read, in scope id order.
    ok(
        h.registry().grant(&frame, "p", descriptor("tool", "f")).await,
        "grant to a frame",
    );
    let held: Vec<_> = ok(h.registry().grants_of("p").await, "grants_of")
        .into_iter()
        .map(|g| (g.scope, g.descriptor))
        .collect();
    assert_eq!(
        held,
        vec![
            (s1.clone(), descriptor("tool", "two")),
            (frame.clone(), descriptor("tool", "f"))
        ]
    );
    assert!(ok(h.registry().revoke(&frame, "p").await, "revoke the frame's"));
    assert!(ok(h.registry().grants_of("nothing-here").await, "grants_of unknown").is_empty());
    assert_eq!(h.check("p").await, before, "grants never change the process");
    assert!(ok(h.registry().revoke(&s1, "p").await, "revoke"));
    assert!(
        !ok(h.registry().revoke(&s1, "p").await, "revoke again"),
        "nothing left to revoke"
    );
    assert!(granted_ids(&h, &s1).await.is_empty());
    assert!(ok(h.registry().grants_of("p").await, "grants_of after revoke").is_empty());
    h.rejects(
        "invalid_id",
        "grant to a bad scope",
        h.registry()
            .grant(&SessionScope::session(""), "p", descriptor("k", "l")),
    )
    .await;
    // A session id holding the frame separator would share its scope id
    // with frame `f1` of `s1`, and reach that frame's grants.
    let lookalike = SessionScope::session("s1/frame:f1");
    assert_eq!(lookalike.scope_id(), frame.scope_id());
    h.rejects(
        "invalid_id",
        "grant to a session named like a frame",
        h.registry().grant(&lookalike, "p", descriptor("k", "l")),
    )
    .await;
    ok(
        h.registry().grant(&frame, "p", descriptor("k", "l")).await,
        "grant to the frame",
    );
    h.rejects(
        "invalid_id",
        "list what a session named like a frame may address",
        h.registry().list_granted_to(&lookalike, &ProcessFilter::any()),
    )
    .await;
    h.rejects(
        "invalid_id",
        "pending wakes of a session named like a frame",
        h.registry().pending_wakes("s1/frame:f1", None),
    )
    .await;
    assert!(ok(h.registry().revoke(&frame, "p").await, "revoke the frame's grant"));
    assert_eq!(h.check("p").await, before);
}

/// A grant descriptor's `kind` (at most 64 bytes) and `label` (at most 1024)
/// are refused (`invalid_request`, naming the field) when empty, over their
/// limit or holding a control character, by every way a grant is made, and
/// the refusal writes nothing; a value at the limit is kept as given.
pub async fn grant_descriptors_are_checked(factory: &dyn StoreFactory) {
    use cairn_core::validate::{MAX_GRANT_KIND_BYTES, MAX_GRANT_LABEL_BYTES};
    use cairn_core::{GrantDescriptor, StartGrant};

    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    h.register_granted(rerunnable("p"), Some(start_grant(&s1, "tool", "one")))
        .await;
    h.register(rerunnable("parent")).await;
    let lease = h.claim("parent", "w1", 1_000).await;
    let held = ok(h.registry().grants_of("p").await, "grants_of");

    let with = |field: &str, value: &str| {
        let mut d = descriptor("tool", "ok");
        match field {
            "kind" => d.kind = Some(value.to_string()),
            _ => d.label = Some(value.to_string()),
        }
        d
    };
    for (field, limit) in [("kind", MAX_GRANT_KIND_BYTES), ("label", MAX_GRANT_LABEL_BYTES)] {
        let bad = [
            ("empty", String::new(), "must not be empty".to_string()),
            (
                "over the limit",
                "x".repeat(limit + 1),
                format!("over the {limit} byte limit"),
            ),
            // Multibyte characters count in bytes, not characters.
            (
                "over the limit in bytes",
                "é".repeat(limit / 2 + 1),
                format!("over the {limit} byte limit"),
            ),
            ("with a newline", "a\nb".to_string(), "U+000A".to_string()),
            ("with a NUL", "a\0b".to_string(), "U+0000".to_string()),
            ("with an ESC", "\u{1b}[31m".to_string(), "U+001B".to_string()),
            ("with a DEL", "a\u{7f}".to_string(), "U+007F".to_string()),
            ("with a C1 control", "a\u{85}".to_string(), "U+0085".to_string()),
        ];
        for (case, value, says) in bad {
            let d = with(field, &value);
            let what = format!("a start granted with a `{field}` {case}");
            let err = h
                .rejects(
                    "invalid_request",
                    &what,
                    h.registry().register(
                        rerunnable("q"),
                        Some(StartGrant {
                            session_scope: s2.clone(),
                            descriptor: d.clone(),
                        }),
                    ),
                )
                .await;
            let message = err.to_string();
            assert!(
                message.contains(&format!("`grant.descriptor.{field}`")) && message.contains(&says),
                "{what}: the refusal names the field and says `{says}`: {message}"
            );
            h.rejects(
                "unknown_process",
                &format!("{what}: the process"),
                h.registry().get("q"),
            )
            .await;

            let what = format!("a claimed start granted with a `{field}` {case}");
            h.rejects(
                "invalid_request",
                &what,
                h.registry().register_claimed(
                    rerunnable("q"),
                    Some(StartGrant {
                        session_scope: s2.clone(),
                        descriptor: d.clone(),
                    }),
                    "w1",
                    1_000,
                ),
            )
            .await;

            let what = format!("a child granted with a `{field}` {case}");
            let mut child = rerunnable("parent/1");
            child.provenance.caused_by = Some(cairn_core::CausalRef::process("parent"));
            let err = h
                .rejects(
                    "invalid_request",
                    &what,
                    h.registry().register_child(
                        child,
                        vec![
                            start_grant(&s1, "tool", "fine"),
                            StartGrant {
                                session_scope: s2.clone(),
                                descriptor: d.clone(),
                            },
                        ],
                        &lease,
                    ),
                )
                .await;
            let message = err.to_string();
            assert!(
                message.contains(&format!("`grants[1].descriptor.{field}`")),
                "{what}: the refusal names the grant and field: {message}"
            );
            h.rejects(
                "unknown_process",
                &format!("{what}: the process"),
                h.registry().get("parent/1"),
            )
            .await;

            let what = format!("a grant with a `{field}` {case}");
            let err = h
                .rejects("invalid_request", &what, h.registry().grant(&s1, "p", d.clone()))
                .await;
            let message = err.to_string();
            assert!(
                message.contains(&format!("`descriptor.{field}`")) && message.contains(&says),
                "{what}: the refusal names the field and says `{says}`: {message}"
            );
            h.rejects("invalid_request", &what, h.registry().grant(&s2, "p", d))
                .await;
            assert_eq!(
                ok(h.registry().grants_of("p").await, "grants_of"),
                held,
                "{what}: the grants are unchanged"
            );
        }
    }

    // At the limits, and in any script, a descriptor is kept as given; an
    // absent field stays absent.
    let at_limit = GrantDescriptor {
        kind: Some("k".repeat(MAX_GRANT_KIND_BYTES)),
        label: Some("l".repeat(MAX_GRANT_LABEL_BYTES)),
    };
    let wide = GrantDescriptor {
        kind: Some("é".repeat(MAX_GRANT_KIND_BYTES / 2)),
        label: Some(format!("Grüße, 世界 ✓ {}", "ü".repeat(500))),
    };
    let label_only = GrantDescriptor {
        kind: None,
        label: Some("just a label".into()),
    };
    for (id, d) in [("q1", &at_limit), ("q2", &wide), ("q3", &label_only)] {
        h.register_granted(
            rerunnable(id),
            Some(StartGrant {
                session_scope: s2.clone(),
                descriptor: d.clone(),
            }),
        )
        .await;
        let kept = ok(h.registry().grants_of(id).await, "grants_of");
        assert_eq!(kept.len(), 1);
        assert_eq!(&kept[0].descriptor, d, "a valid descriptor is kept as given");
    }
    let g = ok(
        h.registry().grant(&s1, "p", at_limit.clone()).await,
        "grant at the limits",
    );
    assert_eq!(g.descriptor, at_limit);
    let g = ok(
        h.registry().grant(&s1, "p", GrantDescriptor::default()).await,
        "grant without a descriptor",
    );
    assert_eq!(g.descriptor, GrantDescriptor::default());
    let made = ok(
        h.registry()
            .register_child(
                {
                    let mut child = rerunnable("parent/1");
                    child.provenance.caused_by = Some(cairn_core::CausalRef::process("parent"));
                    child
                },
                vec![StartGrant {
                    session_scope: s2.clone(),
                    descriptor: wide.clone(),
                }],
                &lease,
            )
            .await,
        "register_child at the limits",
    );
    assert!(made.created);
    assert_eq!(
        ok(h.registry().grants_of("parent/1").await, "grants_of")[0].descriptor,
        wide
    );
}

/// `transfer` moves grants between scopes and never changes a process.
pub async fn transfer_moves_grants_only(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    h.register_granted(
        originated_by(rerunnable("p1"), &s1),
        Some(start_grant(&s1, "shell", "one")),
    )
    .await;
    h.register_granted(rerunnable("p2"), Some(start_grant(&s1, "tool", "two")))
        .await;
    h.register(originated_by(rerunnable("p3"), &s1)).await;
    h.append("p1", progress(1)).await;
    let before = folds(&h, &["p1", "p2", "p3"]).await;
    h.advance(10);
    // An id named twice is moved, or reported, once.
    let report = ok(
        h.registry()
            .transfer(&s1, &s2, &ids(&["p1", "p2", "p3", "missing", "p1", "missing"]))
            .await,
        "transfer",
    );
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(report.moved.clone()), ids(&["p1", "p2"]), "{report:?}");
    assert_eq!(
        sorted(report.not_granted.clone()),
        ids(&["missing", "p3"]),
        "{report:?}"
    );
    assert_eq!(
        folds(&h, &["p1", "p2", "p3"]).await,
        before,
        "transfer never changes a process"
    );
    assert!(granted_ids(&h, &s1).await.is_empty());
    let moved = ok(
        h.registry().list_granted_to(&s2, &ProcessFilter::any()).await,
        "list s2",
    );
    assert_eq!(
        moved.iter().map(|g| g.process.id.as_str()).collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    assert_eq!(
        moved[0].grant.descriptor,
        descriptor("shell", "one"),
        "descriptors move along"
    );
    assert_eq!(moved[0].grant.scope, s2);
    assert_eq!(
        originated_ids(&h, &s1).await,
        ids(&["p1", "p3"]),
        "originator never changes"
    );
    assert!(originated_ids(&h, &s2).await.is_empty());
    let back = ok(h.registry().transfer(&s2, &s1, &ids(&["p2"])).await, "transfer back");
    assert_eq!(back.moved, ids(&["p2"]));
    assert_eq!(granted_ids(&h, &s1).await, ids(&["p2"]));
    h.rejects(
        "invalid_request",
        "a transfer to the scope it is from",
        h.registry().transfer(&s1, &s1, &ids(&["p2"])),
    )
    .await;
}

/// A transfer reports moved and not granted ids in the order named, each
/// once; a moved grant keeps its descriptor, is granted at the transfer's
/// time and replaces the grant the target scope held on that process; the
/// target's other grants stay as they were.
pub async fn transfer_replaces_and_reports_in_order(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    for (id, label) in [("p1", "one"), ("p2", "two"), ("p3", "three")] {
        h.register_granted(rerunnable(id), Some(start_grant(&s1, "tool", label)))
            .await;
    }
    h.register(rerunnable("p4")).await;
    h.register_granted(rerunnable("p5"), Some(start_grant(&s2, "tool", "five")))
        .await;
    let held_before = h.now();
    ok(
        h.registry().grant(&s2, "p2", descriptor("shell", "old")).await,
        "s2's own grant on p2",
    );
    h.advance(10);
    let report = ok(
        h.registry()
            .transfer(&s1, &s2, &ids(&["p3", "missing", "p1", "p4", "p3", "p2", "missing"]))
            .await,
        "transfer",
    );
    assert_eq!(report.moved, ids(&["p3", "p1", "p2"]), "{report:?}");
    assert_eq!(report.not_granted, ids(&["missing", "p4"]), "{report:?}");
    assert!(granted_ids(&h, &s1).await.is_empty());
    let held: Vec<_> = ok(
        h.registry().list_granted_to(&s2, &ProcessFilter::any()).await,
        "list s2",
    )
    .into_iter()
    .map(|g| (g.process.id, g.grant.descriptor, g.grant.granted_at_ms))
    .collect();
    assert_eq!(
        held,
        vec![
            ("p1".to_string(), descriptor("tool", "one"), h.now()),
            ("p2".to_string(), descriptor("tool", "two"), h.now()),
            ("p3".to_string(), descriptor("tool", "three"), h.now()),
            ("p5".to_string(), descriptor("tool", "five"), held_before),
        ],
        "moved grants replace s2's, at the transfer's time; s2's others stay"
    );
    let on_p2 = ok(h.registry().grants_of("p2").await, "grants_of p2");
    assert_eq!(on_p2.len(), 1, "one grant on p2 after the move: {on_p2:?}");
    assert_eq!(on_p2[0].scope, s2);
    assert!(ok(h.registry().grants_of("p4").await, "grants_of p4").is_empty());
}

/// `list_granted_to` is what a scope may address, `list_originated_by` what it created:
/// a transferred-away process stays in its creator's provenance lens, a merely granted
/// one is not in the grantee's.
pub async fn granted_and_originated_lenses(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    let frame = SessionScope::frame("s1", "f1");
    h.register_granted(originated_by(rerunnable("a"), &s1), Some(start_grant(&s1, "k", "a")))
        .await;
    h.register_granted(rerunnable("b"), Some(start_grant(&s1, "k", "b")))
        .await;
    h.register_granted(
        originated_by(rerunnable("c"), &frame),
        Some(start_grant(&frame, "k", "c")),
    )
    .await;
    h.register(originated_by(rerunnable("d"), &s2)).await;
    ok(h.registry().grant(&s1, "d", descriptor("k", "d")).await, "grant d");
    ok(h.registry().transfer(&s1, &s2, &ids(&["a"])).await, "transfer a");

    assert_eq!(granted_ids(&h, &s1).await, ids(&["b", "d"]));
    assert_eq!(
        originated_ids(&h, &s1).await,
        ids(&["a"]),
        "a transferred-away process stays"
    );
    assert_eq!(granted_ids(&h, &s2).await, ids(&["a"]));
    assert_eq!(
        originated_ids(&h, &s2).await,
        ids(&["d"]),
        "a merely granted process is not"
    );
    assert_eq!(granted_ids(&h, &frame).await, ids(&["c"]));
    assert_eq!(originated_ids(&h, &frame).await, ids(&["c"]), "scopes match exactly");
    assert!(granted_ids(&h, &session("s3")).await.is_empty());
    assert!(originated_ids(&h, &session("s3")).await.is_empty());
}

/// `delete_session` removes every grant of every scope of the session and its
/// pending wakes, reports them, and never cancels or changes a process.
pub async fn delete_session_reports_and_never_cancels(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    let frame = SessionScope::frame("s1", "f1");
    h.register_granted(
        waking(originated_by(rerunnable("a"), &s1), &s1),
        Some(start_grant(&s1, "k", "a")),
    )
    .await;
    h.register_granted(rerunnable("b"), Some(start_grant(&s1, "k", "b")))
        .await;
    ok(
        h.registry().grant(&s2, "b", descriptor("k", "b")).await,
        "grant b to s2",
    );
    h.register_granted(external("c"), Some(start_grant(&s1, "k", "c")))
        .await;
    ok(
        h.registry()
            .complete_external("c", Outcome::success(json!(1)), "ci")
            .await,
        "complete c",
    );
    h.register_granted(rerunnable("d"), Some(start_grant(&frame, "k", "d")))
        .await;
    h.register_granted(waking(rerunnable("e"), &s2), Some(start_grant(&s2, "k", "e")))
        .await;
    let lease = h.claim("a", "w1", 60_000).await;
    ok(h.registry().record_started(&lease).await, "record_started");
    let acked = h.append("a", notify("one")).await.wake.expect("wake");
    h.append("a", notify("two")).await;
    h.append("a", notify("three")).await;
    h.append("e", notify("for s2")).await;
    assert!(ok(h.registry().ack_wake("s1", &acked.wake_id).await, "ack"));
    let before = folds(&h, &["a", "b", "c", "d", "e"]).await;

    let report = ok(h.registry().delete_session("s1").await, "delete_session");
    assert_eq!(report.session_id, "s1");
    assert_eq!(report.revoked_grants, 4, "a, b, c and the frame's d: {report:?}");
    assert_eq!(report.deleted_wakes, 2, "the two pending wakes: {report:?}");
    let orphaned: BTreeSet<_> = report.orphaned.iter().cloned().collect();
    let preserved: BTreeSet<_> = report.preserved.iter().cloned().collect();
    assert_eq!(
        orphaned,
        ["a", "d"].iter().map(|s| s.to_string()).collect(),
        "{report:?}"
    );
    assert_eq!(
        preserved,
        ["b", "c"].iter().map(|s| s.to_string()).collect(),
        "{report:?}"
    );

    assert_eq!(
        folds(&h, &["a", "b", "c", "d", "e"]).await,
        before,
        "delete_session never changes a process"
    );
    let a = h.get("a").await;
    assert_eq!(a.status, ProcessStatus::Running);
    assert!(a.cancel_request.is_none(), "delete_session never cancels");
    assert_eq!(a.lease, Some(lease.view()));
    assert!(granted_ids(&h, &s1).await.is_empty());
    assert!(granted_ids(&h, &frame).await.is_empty());
    assert_eq!(granted_ids(&h, &s2).await, ids(&["b", "e"]));
    assert!(ok(h.registry().pending_wakes("s1", None).await, "pending s1").is_empty());
    assert_eq!(ok(h.registry().pending_wakes("s2", None).await, "pending s2").len(), 1);
    assert_eq!(
        originated_ids(&h, &s1).await,
        ids(&["a"]),
        "provenance outlives the session's grants"
    );

    let empty = ok(h.registry().delete_session("s1").await, "delete again");
    assert_eq!(empty.revoked_grants, 0);
    assert_eq!(empty.deleted_wakes, 0);
    assert!(empty.orphaned.is_empty() && empty.preserved.is_empty());
}

/// `delete_session_with(.., keep_frames)` (a session token's delete) removes
/// only the grants to the session as a whole and every pending wake of the
/// session (its frames' too, which the session reads and acknowledges);
/// its agent frames keep their grants, a process one of them holds is
/// preserved, not orphaned, and the report names only what was removed.
/// The full delete afterwards takes the frames' grants.
pub async fn delete_session_keeping_frames_keeps_the_frames_grants(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    let frame = SessionScope::frame("s1", "f1");
    h.register_granted(waking(rerunnable("a"), &s1), Some(start_grant(&s1, "k", "a")))
        .await;
    h.register_granted(rerunnable("b"), Some(start_grant(&s1, "k", "b")))
        .await;
    ok(
        h.registry().grant(&frame, "b", descriptor("k", "b")).await,
        "grant b to the frame",
    );
    h.register_granted(waking(rerunnable("d"), &frame), Some(start_grant(&frame, "k", "d")))
        .await;
    h.register_granted(waking(rerunnable("e"), &s2), Some(start_grant(&s2, "k", "e")))
        .await;
    h.append("a", notify("to the session")).await.wake.expect("wake");
    h.append("d", notify("to the frame")).await.wake.expect("wake");
    let acked = h.append("d", notify("acknowledged")).await.wake.expect("wake");
    assert!(ok(h.registry().ack_wake("s1", &acked.wake_id).await, "ack"));
    h.append("e", notify("for s2")).await.wake.expect("wake");
    let before = folds(&h, &["a", "b", "d", "e"]).await;

    let report = ok(
        h.registry().delete_session_with("s1", true).await,
        "delete_session keeping frames",
    );
    assert_eq!(report.session_id, "s1");
    assert_eq!(
        report.revoked_grants, 2,
        "the session's a and b, not the frame's: {report:?}"
    );
    assert_eq!(
        report.deleted_wakes, 2,
        "the session's pending wake and its frame's: {report:?}"
    );
    assert_eq!(report.orphaned, ids(&["a"]), "{report:?}");
    assert_eq!(report.preserved, ids(&["b"]), "the frame still holds b: {report:?}");
    assert_eq!(
        folds(&h, &["a", "b", "d", "e"]).await,
        before,
        "delete_session never changes a process"
    );
    assert!(granted_ids(&h, &s1).await.is_empty());
    assert_eq!(
        granted_ids(&h, &frame).await,
        ids(&["b", "d"]),
        "the frame keeps its grants"
    );
    assert_eq!(granted_ids(&h, &s2).await, ids(&["e"]));
    let held: Vec<SessionScope> = ok(h.registry().grants_of("b").await, "grants_of b")
        .into_iter()
        .map(|g| g.scope)
        .collect();
    assert_eq!(held, vec![frame.clone()]);
    assert!(ok(h.registry().pending_wakes("s1", None).await, "pending s1").is_empty());
    assert_eq!(ok(h.registry().pending_wakes("s2", None).await, "pending s2").len(), 1);

    let again = ok(h.registry().delete_session_with("s1", true).await, "again");
    assert_eq!(again.revoked_grants, 0);
    assert_eq!(again.deleted_wakes, 0);
    assert!(again.orphaned.is_empty() && again.preserved.is_empty(), "{again:?}");
    assert_eq!(granted_ids(&h, &frame).await, ids(&["b", "d"]));

    let full = ok(h.registry().delete_session("s1").await, "the full delete");
    assert_eq!(full.revoked_grants, 2, "the frame's b and d: {full:?}");
    let orphaned: BTreeSet<_> = full.orphaned.iter().cloned().collect();
    assert_eq!(orphaned, ["b", "d"].iter().map(|s| s.to_string()).collect(), "{full:?}");
    assert!(granted_ids(&h, &frame).await.is_empty());
}
