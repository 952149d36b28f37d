//! Wake deliveries: written with the event, deduplicated by (target, key),
//! pending until acknowledged.

use std::collections::BTreeMap;

use cairn_core::events::{DedupeKey, ResolvedWake};
use cairn_core::fold::{event_wake_id, wake_id};
use cairn_core::{AppendRequest, CairnError, Selector, SessionScope};
use serde_json::json;

use crate::builders::*;
use crate::harness::{ok, Harness};
use crate::StoreFactory;

async fn pending(h: &Harness, session_id: &str) -> Vec<cairn_core::WakeDelivery> {
    ok(h.registry().pending_wakes(session_id, None).await, "pending_wakes")
}

/// Appending a wake-typed event with a wake target writes a delivery in the same
/// transaction, with every field derived from the event.
pub async fn wake_delivery_is_written(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    let template = wake_type(
        "done",
        Selector::Template {
            template: "{who} finished with {code}".into(),
            fields: BTreeMap::from([
                ("who".to_string(), Selector::Pointer("/who".into())),
                ("code".to_string(), Selector::Pointer("/code".into())),
            ]),
        },
        DedupeKey::EventIdentity,
    );
    h.register(with_types(waking(rerunnable("p"), &s1), [template])).await;
    h.append("p", note(json!({}))).await;
    h.advance(7);
    let res = h.append("p", notify("hello")).await;
    let d = res.wake.clone().expect("a wake type with a target writes a delivery");
    assert_eq!(d.wake_id, event_wake_id(&s1, "p", 2));
    assert_eq!(d.target_session_id, "s1");
    assert_eq!(d.target_scope, s1);
    assert_eq!(d.process_id, "p");
    assert_eq!(d.sequence, 2);
    assert_eq!(d.event_type, NOTIFY);
    assert_eq!(d.dedupe_key, "p:2");
    assert_eq!(d.input, "hello");
    assert_eq!(d.created_at_ms, h.now());
    assert_eq!(
        res.event.semantics.wake,
        Some(ResolvedWake {
            input: "hello".into(),
            dedupe_key: "p:2".into()
        })
    );
    assert_eq!(pending(&h, "s1").await, vec![d.clone()]);
    assert!(pending(&h, "s2").await.is_empty(), "wakes go to their target only");

    let res = h
        .append("p", AppendRequest::new("done", json!({"who": "bob", "code": 0})))
        .await;
    assert_eq!(res.wake.map(|w| w.input), Some("bob finished with 0".to_string()));

    // A frame target is pending for its session.
    let frame = SessionScope::frame("s2", "f1");
    h.register(waking(rerunnable("q"), &frame)).await;
    let res = h.append("q", notify("to the frame")).await;
    let d = res.wake.expect("frame wake");
    assert_eq!(d.target_scope, frame);
    assert_eq!(d.target_session_id, "s2");
    assert_eq!(d.wake_id, event_wake_id(&frame, "q", 1));
    assert_eq!(pending(&h, "s2").await, vec![d]);
}

/// Deliveries are deduplicated by (target scope, dedupe key) across events and
/// processes; `ack_wake` stops one being pending while it keeps deduplicating.
pub async fn wake_dedupe_and_ack(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    let once = wake_type("once", Selector::Const(json!("ping")), DedupeKey::Const("only".into()));
    let keyed = wake_type(
        "keyed",
        Selector::Pointer("/k".into()),
        DedupeKey::Selector(Selector::Pointer("/k".into())),
    );
    let types = [once, keyed];
    h.register(with_types(waking(rerunnable("p"), &s1), types.clone()))
        .await;
    h.register(with_types(waking(rerunnable("q"), &s1), types.clone()))
        .await;
    h.register(with_types(waking(rerunnable("r"), &s2), types)).await;

    let first = h.append("p", AppendRequest::new("once", json!({}))).await;
    let d = first.wake.expect("the first event wakes");
    assert_eq!(d.wake_id, wake_id(&s1, "only"));
    let second = h.append("p", AppendRequest::new("once", json!({}))).await;
    assert!(second.wake.is_none(), "the same dedupe key writes no second delivery");
    assert!(
        second.event.semantics.wake.is_some(),
        "the event still resolves its wake"
    );
    let other_process = h.append("q", AppendRequest::new("once", json!({}))).await;
    assert!(
        other_process.wake.is_none(),
        "the id is (target, key): another process dedupes too"
    );
    let other_target = h.append("r", AppendRequest::new("once", json!({}))).await;
    assert!(other_target.wake.is_some(), "another target is another delivery");
    assert_eq!(pending(&h, "s1").await, vec![d.clone()]);

    for k in ["a", "a", "b"] {
        h.append("p", AppendRequest::new("keyed", json!({ "k": k }))).await;
    }
    let ids: Vec<String> = pending(&h, "s1").await.into_iter().map(|w| w.wake_id).collect();
    assert_eq!(ids, vec![d.wake_id.clone(), wake_id(&s1, "a"), wake_id(&s1, "b")]);

    h.rejects(
        "unknown_wake",
        "ack by another session",
        h.registry().ack_wake("s2", &d.wake_id),
    )
    .await;
    h.rejects("unknown_wake", "ack unknown", h.registry().ack_wake("s1", "wake:nope"))
        .await;
    assert!(
        ok(h.registry().ack_wake("s1", &d.wake_id).await, "ack"),
        "first ack answers true"
    );
    assert!(
        !ok(h.registry().ack_wake("s1", &d.wake_id).await, "ack again"),
        "a repeated ack answers false"
    );
    let ids: Vec<String> = pending(&h, "s1").await.into_iter().map(|w| w.wake_id).collect();
    assert_eq!(
        ids,
        vec![wake_id(&s1, "a"), wake_id(&s1, "b")],
        "an acked wake is no longer pending"
    );
    let after_ack = h.append("p", AppendRequest::new("once", json!({}))).await;
    assert!(after_ack.wake.is_none(), "an acked wake still deduplicates");
    assert_eq!(pending(&h, "s1").await.len(), 2);
    assert_eq!(pending(&h, "s2").await.len(), 1);
}

/// A `when` selector that selects nothing truthy writes no wake.
pub async fn wake_when_false_writes_no_wake(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let maybe = conditional_wake_type(
        "maybe",
        Selector::Pointer("/notify".into()),
        Selector::Pointer("/text".into()),
    );
    h.register(with_types(waking(rerunnable("p"), &session("s1")), [maybe]))
        .await;
    for payload in [
        json!({"notify": false, "text": "a"}),
        json!({"text": "b"}),
        json!({"notify": 0, "text": "c"}),
        json!({"notify": "", "text": "d"}),
        json!({"notify": null, "text": "e"}),
    ] {
        let res = h.append("p", AppendRequest::new("maybe", payload.clone())).await;
        assert!(res.wake.is_none(), "{payload}: no wake");
        assert!(res.event.semantics.wake.is_none(), "{payload}: no resolved wake");
    }
    assert!(pending(&h, "s1").await.is_empty());
    let res = h
        .append("p", AppendRequest::new("maybe", json!({"notify": true, "text": "yes"})))
        .await;
    assert_eq!(res.wake.map(|w| w.input), Some("yes".to_string()));
    assert_eq!(pending(&h, "s1").await.len(), 1);
}

/// Without a wake target no delivery is written; an append may name its own target,
/// which overrides the record's.
pub async fn wake_needs_a_target(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    h.register(rerunnable("p")).await;
    h.register(waking(rerunnable("q"), &s1)).await;
    let res = h.append("p", notify("nobody")).await;
    assert!(res.wake.is_none(), "no target, no delivery");
    assert!(res.event.semantics.wake.is_some());
    for s in ["s1", "s2", "s3"] {
        assert!(pending(&h, s).await.is_empty());
    }
    let res = h.append("p", notify("to s2").with_wake_target(s2.clone())).await;
    assert_eq!(res.wake.as_ref().map(|w| w.target_scope.clone()), Some(s2.clone()));
    let res = h.append("q", notify("override").with_wake_target(s2.clone())).await;
    assert_eq!(res.wake.as_ref().map(|w| w.target_scope.clone()), Some(s2));
    assert!(
        pending(&h, "s1").await.is_empty(),
        "the override replaces the record's target"
    );
    assert_eq!(pending(&h, "s2").await.len(), 2);
    h.rejects(
        "invalid_id",
        "bad override target",
        h.registry()
            .append_event("q", notify("x").with_wake_target(SessionScope::session(""))),
    )
    .await;
}

/// A wake target named on an append of a type without wake semantics could
/// never take effect: refused (`invalid_request`, naming the field and the
/// type), writing nothing, on a plain type and a terminal one alike.
pub async fn wake_target_needs_wake_semantics(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s2 = session("s2");
    h.register(waking(rerunnable("p"), &session("s1"))).await;
    for req in [note(json!({})), AppendRequest::new(FINISHED, json!({"result": 1}))] {
        let what = req.event_type.clone();
        let err = h
            .rejects(
                "invalid_request",
                &format!("a wake target on `{what}`"),
                h.registry().append_event("p", req.with_wake_target(s2.clone())),
            )
            .await;
        let said = format!("`wake_target` takes effect only on an event type with wake semantics; `{what}` has none");
        assert!(matches!(&err, CairnError::InvalidRequest(m) if *m == said), "{err}");
    }
    assert!(pending(&h, "s2").await.is_empty());
    let res = h.append("p", notify("still").with_wake_target(s2.clone())).await;
    assert_eq!(res.wake.map(|w| w.target_scope), Some(s2));
}

/// The default dedupe key is the event identity: every event wakes once, and a
/// replayed append writes no second delivery.
pub async fn wake_default_dedupe_is_per_event(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(waking(external("p"), &session("s1"))).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let res = h
            .append("p", notify(&format!("n{i}")).with_replay_key(format!("k{i}")))
            .await;
        ids.push(res.wake.expect("every event wakes").wake_id);
    }
    let replay = h
        .no_change(
            "replayed wake append",
            h.registry().append_event("p", notify("n1").with_replay_key("k1")),
        )
        .await;
    assert!(replay.replayed);
    assert!(replay.wake.is_none(), "a replay writes no delivery");
    let pending_ids: Vec<String> = pending(&h, "s1").await.into_iter().map(|w| w.wake_id).collect();
    assert_eq!(pending_ids, ids);
}

/// A key a producer renders never meets an event's identity: a rendered
/// key that reads `{process_id}:{sequence}` (payload data such as a `ref`
/// of `build-42:1`) dedupes with other rendered keys only, so the event
/// it names, woken by its identity, still wakes, in that process or another.
pub async fn rendered_keys_never_meet_event_identities(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    let keyed = wake_type(
        "keyed",
        Selector::Pointer("/ref".into()),
        DedupeKey::Selector(Selector::Pointer("/ref".into())),
    );
    h.register(with_types(waking(external("a"), &s1), [keyed.clone()]))
        .await;
    h.register(waking(external("b"), &s1)).await;
    // `a` renders the identity of `b`'s first event, and of its own second.
    let first = h.append("a", AppendRequest::new("keyed", json!({"ref": "b:1"}))).await;
    let first = first.wake.expect("a rendered key wakes");
    let second = h.append("a", AppendRequest::new("keyed", json!({"ref": "a:2"}))).await;
    let second = second.wake.expect("a rendered key wakes");
    let b = h.append("b", notify("b's first")).await;
    let b = b
        .wake
        .expect("an event woken by its identity wakes whatever keys were rendered");
    assert_eq!(b.dedupe_key, "b:1", "the key shown is the identity, as before");
    assert_eq!(b.wake_id, event_wake_id(&s1, "b", 1));
    assert_eq!(first.wake_id, wake_id(&s1, "b:1"));
    assert_ne!(b.wake_id, first.wake_id);
    // In one process: an event without a `ref` falls back to its identity.
    let own = h.append("a", AppendRequest::new("keyed", json!({}))).await;
    assert_eq!(own.event.sequence, 3);
    assert!(own.wake.is_some(), "an identity fallback wakes");
    let again = h.append("a", AppendRequest::new("keyed", json!({"ref": "b:1"}))).await;
    assert!(again.wake.is_none(), "a rendered key still dedupes with itself");
    let ids: Vec<String> = pending(&h, "s1").await.into_iter().map(|w| w.wake_id).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.contains(&second.wake_id) && ids.contains(&b.wake_id));
}

/// A page of pending wakes stops at `LIST_PAGE_BYTES`: with inputs of most
/// of a mebibyte, a page holds what brings it to the bound and no more, and
/// acknowledging them brings the rest.
pub async fn pending_wakes_stop_at_the_page_bytes(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(waking(rerunnable("p"), &session("s1"))).await;
    let big = 900 * 1024;
    let per_page = cairn_core::LIST_PAGE_BYTES.div_ceil(big);
    let mut expected = Vec::new();
    for i in 0..per_page + 2 {
        let text = format!("{i:x}").repeat(big / format!("{i:x}").len());
        let res = h.append("p", notify(&text)).await;
        expected.push(res.wake.expect("wake").wake_id);
    }
    let ids = |page: Vec<cairn_core::WakeDelivery>| page.into_iter().map(|w| w.wake_id).collect::<Vec<_>>();
    let first = ids(pending(&h, "s1").await);
    assert_eq!(
        first,
        expected[..per_page].to_vec(),
        "cut where the bytes reach the bound"
    );
    let small = ids(ok(h.registry().pending_wakes("s1", Some(2)).await, "page of 2"));
    assert_eq!(small, expected[..2].to_vec(), "a smaller limit still holds");
    for id in &first {
        assert!(ok(h.registry().ack_wake("s1", id).await, "ack"));
    }
    assert_eq!(ids(pending(&h, "s1").await), expected[per_page..].to_vec());
}

/// A frame's pending wakes are read past other frames' of the same session:
/// a page of a sibling frame's wakes (here cut at its bytes) does not hide
/// them; and one rendered from a payload holding NUL is no different.
pub async fn frame_wakes_are_read_past_other_frames(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (f1, f2) = (SessionScope::frame("s1", "f1"), SessionScope::frame("s1", "f2"));
    h.register(waking(rerunnable("busy"), &f2)).await;
    h.register(waking(rerunnable("quiet"), &f1)).await;
    let mut busy = Vec::new();
    for i in 0..6 {
        let res = h.append("busy", notify(&format!("{i}").repeat(900 * 1024))).await;
        busy.push(res.wake.expect("wake").wake_id);
    }
    let quiet = h.append("quiet", notify("here")).await.wake.expect("wake");
    let session_page = pending(&h, "s1").await;
    assert!(
        session_page.iter().all(|w| w.target_scope == f2),
        "the session's first page holds the busy frame's wakes alone"
    );
    // A wake rendered from a payload holding NUL is written and read like
    // any other (PostgreSQL's `jsonb` takes no `\u0000`), aimed at a frame
    // or at a whole session.
    let nul = h.append("quiet", notify("a\u{0}b")).await.wake.expect("wake");
    h.register(waking(rerunnable("plain"), &session("s3"))).await;
    let whole = h.append("plain", notify("\u{0}")).await.wake.expect("wake");
    assert_eq!(pending(&h, "s3").await, vec![whole]);
    let ids = |page: Vec<cairn_core::WakeDelivery>| page.into_iter().map(|w| w.wake_id).collect::<Vec<_>>();
    let of_f1 = ok(h.registry().pending_frame_wakes("s1", "f1", None).await, "f1");
    assert_eq!(of_f1, vec![quiet, nul]);
    let of_f2 = ok(h.registry().pending_frame_wakes("s1", "f2", Some(2)).await, "f2");
    assert_eq!(ids(of_f2), busy[..2].to_vec());
    assert!(ok(h.registry().pending_frame_wakes("s2", "f1", None).await, "s2").is_empty());
    h.rejects(
        "invalid_id",
        "an empty frame id",
        h.registry().pending_frame_wakes("s1", "", None),
    )
    .await;
}

/// Pending wakes come oldest first, one page at a time.
pub async fn pending_wakes_order_and_paging(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(waking(rerunnable("b"), &session("s1"))).await;
    h.register(waking(rerunnable("a"), &session("s1"))).await;
    let mut expected = Vec::new();
    for i in 0..6 {
        h.advance(10);
        let id = if i % 2 == 0 { "b" } else { "a" };
        let res = h.append(id, notify(&format!("m{i}"))).await;
        expected.push(res.wake.expect("wake"));
    }
    let all = pending(&h, "s1").await;
    assert_eq!(all, expected, "oldest first, across processes");
    let page = ok(h.registry().pending_wakes("s1", Some(2)).await, "page");
    assert_eq!(page, expected[..2].to_vec());
    for w in &page {
        assert!(ok(h.registry().ack_wake("s1", &w.wake_id).await, "ack"));
    }
    let page = ok(h.registry().pending_wakes("s1", Some(2)).await, "next page");
    assert_eq!(page, expected[2..4].to_vec());
    assert!(pending(&h, "nobody").await.is_empty());
}
