//! Appends: declared types, schemas, sizes, reserved types, authority, replay
//! keys, sequences, paging, terminal write-once, wait state and signals.

use cairn_core::events::{self as ev, signal_replay_key};
use cairn_core::{
    AppendRequest, EventType, Outcome, ProcessFilter, ProcessStatus, TerminalState, WaitRequest, WaitState,
    MAX_PAGE_SIZE,
};
use serde_json::json;

use crate::builders::*;
use crate::harness::{expect_code, ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 30_000;

/// A declared append is stored as given, at the clock's time, as sequence `last + 1`.
pub async fn append_declared_event(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in each_disposition("p") {
        let id = reg.id.clone();
        h.register(reg).await;
        h.advance(5);
        let res = h.append(&id, progress(7)).await;
        assert!(!res.replayed);
        assert!(res.wake.is_none(), "no wake type, no wake");
        let e = &res.event;
        assert_eq!(e.process_id, id);
        assert_eq!(e.sequence, 1);
        assert_eq!(e.event_type, PROGRESS);
        assert_eq!(e.payload, json!({"n": 7}));
        assert_eq!(e.occurred_at_ms, h.now());
        assert_eq!(e.replay_key, None);
        let folded = h.check(&id).await;
        assert_eq!(
            folded.events,
            vec![e.clone()],
            "the log holds exactly the appended event"
        );
        assert_eq!(folded.record.last_sequence, 1);
        assert_eq!(folded.record.updated_at_ms, h.now());
        assert_eq!(folded.record.status, ProcessStatus::Running);

        let keyed = h
            .append(&id, note(json!({"free": ["form", 1, null]})).with_replay_key("k-1"))
            .await;
        assert_eq!(keyed.event.sequence, 2);
        assert_eq!(keyed.event.replay_key.as_deref(), Some("k-1"));
        assert_eq!(keyed.event.payload, json!({"free": ["form", 1, null]}));
    }
    // A fenced append under the live lease is accepted.
    let lease = h.claim("p-rerun", "w1", TTL).await;
    let fenced = h.append("p-rerun", progress(8).with_lease(lease)).await;
    assert_eq!(fenced.event.sequence, 3);
}

/// An undeclared type is `undeclared_event_type` and writes nothing.
pub async fn append_rejects_undeclared_type(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.append("p", progress(1)).await;
    for t in ["nope", "Progress", "progress.extra"] {
        h.rejects(
            "undeclared_event_type",
            t,
            h.registry().append_event("p", AppendRequest::new(t, json!({"n": 1}))),
        )
        .await;
    }
    // A name no type could have is said as such, not as undeclared.
    for t in ["a b".to_string(), String::new(), "x".repeat(129)] {
        h.rejects(
            "invalid_event_type_name",
            &t,
            h.registry()
                .append_event("p", AppendRequest::new(t.as_str(), json!({"n": 1}))),
        )
        .await;
    }
    h.register(rerunnable("q")).await;
    // Types are per process: a type only another process declares is undeclared.
    h.register(with_types(rerunnable("r"), [EventType::plain("only-r")]))
        .await;
    h.rejects(
        "undeclared_event_type",
        "type of another process",
        h.registry().append_event("q", AppendRequest::new("only-r", json!({}))),
    )
    .await;
}

/// A payload failing its schema is `schema_violation` and writes nothing.
pub async fn append_rejects_schema_violation(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external("e")).await;
    for payload in [json!({"n": "seven"}), json!({}), json!("text"), json!({"n": 1.5})] {
        h.rejects(
            "schema_violation",
            &format!("progress {payload}"),
            h.registry()
                .append_event("p", AppendRequest::new(PROGRESS, payload.clone())),
        )
        .await;
    }
    h.rejects(
        "schema_violation",
        "process.completed without await_output",
        h.registry()
            .append_event("e", AppendRequest::new(ev::COMPLETED, json!({"value": 1}))),
    )
    .await;
    h.append("p", progress(3)).await;
}

/// A payload over 1 MiB is `payload_too_large` and writes nothing; just under is fine.
pub async fn append_rejects_oversize_payload(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let limit = cairn_core::validate::MAX_PAYLOAD_BYTES;
    let big = json!({ "blob": "x".repeat(limit) });
    h.rejects(
        "payload_too_large",
        "1 MiB + overhead",
        h.registry().append_event("p", note(big)),
    )
    .await;
    let fits = json!({ "blob": "y".repeat(limit - 64) });
    let res = h.append("p", note(fits.clone())).await;
    assert_eq!(res.event.payload, fits, "a large payload round-trips intact");
}

/// A payload, result or input nested past [`MAX_JSON_DEPTH`] is
/// `invalid_request` and writes nothing; the deepest accepted ones are stored,
/// then read back by get, list and the event log.
///
/// [`MAX_JSON_DEPTH`]: cairn_core::validate::MAX_JSON_DEPTH
pub async fn append_rejects_over_deep_payload(factory: &dyn StoreFactory) {
    let max = cairn_core::validate::MAX_JSON_DEPTH;
    let nested = |depth: usize| (0..depth).fold(json!("leaf"), |v, _| json!([v]));
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external("e")).await;
    let err = h
        .rejects(
            "invalid_request",
            "a note one level too deep",
            h.registry().append_event("p", note(nested(max + 1))),
        )
        .await;
    assert!(err.to_string().contains("levels deep"), "{err}");
    // The completion's payload wraps the result in two objects of its own,
    // which the limit leaves room for: a result as deep as a payload may be
    // is written, one level deeper is refused.
    let too_deep = AppendRequest::new(
        ev::COMPLETED,
        json!({"await_output": Outcome::success(nested(max + 1))}),
    );
    h.rejects(
        "invalid_request",
        "a result one level too deep",
        h.registry().append_event("e", too_deep),
    )
    .await;
    // The input wraps its metadata in one object of its own.
    let deep_input = |depth: usize| {
        let mut reg = external("q");
        reg.input = cairn_core::ProcessInput::External {
            metadata: nested(depth),
        };
        reg
    };
    h.rejects(
        "invalid_request",
        "an input one level too deep",
        h.registry().register(deep_input(max), None),
    )
    .await;

    h.append("p", note(nested(max))).await;
    let result = nested(max - 2);
    h.append(
        "e",
        AppendRequest::new(ev::COMPLETED, json!({"await_output": Outcome::success(result.clone())})),
    )
    .await;
    h.register(deep_input(max - 1)).await;
    // Every read path decodes what was stored.
    assert_eq!(h.get("e").await.outcome, Some(Outcome::success(result)));
    assert_eq!(h.get("q").await.input, deep_input(max - 1).input);
    let events = h.check("p").await.events;
    assert_eq!(events.last().map(|e| &e.payload), Some(&nested(max)));
    assert_eq!(crate::harness::list_all(h.registry()).await.len(), 3);
}

/// `process.started`, `process.cancel_requested`, `process.abandon_requested`
/// and `process.abandoned` are written only by cairn's own operations (`reserved_event_type`), even under a lease.
pub async fn append_rejects_reserved_types(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external("e")).await;
    let lease = h.claim("p", "w1", TTL).await;
    let abandoned = Outcome::Abandoned {
        evidence: cairn_core::AbandonEvidence {
            writer: cairn_core::AbandonWriter::Sweep,
            owner: None,
            epoch_ms: h.now(),
        },
    };
    let requests = [
        AppendRequest::new(ev::STARTED, json!({"owner_id": "w1", "fencing_token": 1, "attempt": 1})),
        AppendRequest::new(ev::CANCEL_REQUESTED, json!({"reason": "by append"})),
        AppendRequest::new(ev::ABANDON_REQUESTED, json!({"requested_by": "x", "reason": "y"})),
        AppendRequest::new(ev::ABANDONED, json!({ "await_output": abandoned })),
    ];
    for req in requests {
        let what = req.event_type.clone();
        h.rejects(
            "reserved_event_type",
            &what,
            h.registry().append_event("p", req.clone()),
        )
        .await;
        h.rejects(
            "reserved_event_type",
            &format!("{what} under lease"),
            h.registry().append_event("p", req.clone().with_lease(lease.clone())),
        )
        .await;
        h.rejects(
            "reserved_event_type",
            &format!("{what} on external"),
            h.registry().append_event("e", req),
        )
        .await;
    }
}

/// A terminal append without the live lease on a non-external process is
/// `terminal_needs_authority`; with the lease, or on an external process, it ends it.
pub async fn terminal_append_needs_authority(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let completed = AppendRequest::new(ev::COMPLETED, json!({"await_output": Outcome::success(json!(1))}));
    let finished = AppendRequest::new(FINISHED, json!({"result": 2}));
    for reg in [rerunnable("r"), owner_bound("b")] {
        let id = reg.id.clone();
        h.register(reg).await;
        for req in [&completed, &finished] {
            h.rejects(
                "terminal_needs_authority",
                &format!("{} on {id} without lease", req.event_type),
                h.registry().append_event(&id, req.clone()),
            )
            .await;
        }
        let lease = h.claim(&id, "w1", TTL).await;
        // Not even while someone holds the lease, if it is not presented.
        h.rejects(
            "terminal_needs_authority",
            &format!("unfenced terminal on leased {id}"),
            h.registry().append_event(&id, finished.clone()),
        )
        .await;
        let res = h.append(&id, finished.clone().with_lease(lease)).await;
        assert_eq!(res.event.semantics.terminal, Some(Outcome::success(json!(2))));
        let rec = h.get(&id).await;
        assert_eq!(rec.status, ProcessStatus::Completed);
        assert!(rec.lease.is_none(), "a terminal append releases the lease");
    }
    h.register(external("e")).await;
    h.append("e", completed).await;
    let rec = h.get("e").await;
    assert_eq!(rec.status, ProcessStatus::Completed);
    assert_eq!(rec.outcome, Some(Outcome::success(json!(1))));
    assert_eq!(rec.terminal_at_ms, Some(h.now()));
}

/// A producer terminal type ends the process with the selected outcome; a selected
/// outcome of another state, or nothing selected, is `invalid_outcome`. A
/// selected value that is no outcome is raw: a `completed` type's value, a
/// `failed` type's failure of class `process`, code `failed`.
pub async fn producer_terminal_type_ends_process(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let gave_up = terminal_type("gave_up", TerminalState::Failed, "/why");
    h.register(with_types(external("e"), [gave_up.clone()])).await;
    h.register(with_types(external("f"), [gave_up])).await;
    h.rejects(
        "invalid_outcome",
        "outcome of another state",
        h.registry().append_event(
            "e",
            AppendRequest::new(FINISHED, json!({"result": Outcome::failure("c", "x", "m")})),
        ),
    )
    .await;
    h.rejects(
        "invalid_outcome",
        "selector finds nothing",
        h.registry()
            .append_event("e", AppendRequest::new(FINISHED, json!({"other": 1}))),
    )
    .await;
    let res = h
        .append("e", AppendRequest::new(FINISHED, json!({"result": {"answer": 42}})))
        .await;
    let rec = h.get("e").await;
    assert_eq!(rec.status, ProcessStatus::Completed);
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"answer": 42}))));
    assert_eq!(rec.outcome, res.event.semantics.terminal);

    let res = h
        .append("f", AppendRequest::new("gave_up", json!({"why": "boom"})))
        .await;
    let rec = h.get("f").await;
    assert_eq!(rec.status, ProcessStatus::Failed);
    // A raw value fails as class `process`, code `failed`, its text the message.
    assert_eq!(
        rec.outcome,
        Some(Outcome::Failure {
            class: "process".into(),
            code: "failed".into(),
            message: "boom".into(),
            raw: Some(json!("boom")),
        })
    );
    assert_eq!(rec.outcome, res.event.semantics.terminal);

    // A failure's fields without `type` are a raw value too: no class or code
    // of its own, the message its JSON text.
    let gave_up = terminal_type("gave_up", TerminalState::Failed, "/why");
    h.register(with_types(external("untagged"), [gave_up.clone()])).await;
    let untagged = json!({"class": "ci", "code": "red", "message": "tests failed"});
    let res = h
        .append("untagged", AppendRequest::new("gave_up", json!({ "why": untagged })))
        .await;
    let rec = h.get("untagged").await;
    assert_eq!(rec.status, ProcessStatus::Failed);
    assert_eq!(
        rec.outcome,
        Some(Outcome::Failure {
            class: "process".into(),
            code: "failed".into(),
            message: untagged.to_string(),
            raw: Some(untagged),
        })
    );
    assert_eq!(rec.outcome, res.event.semantics.terminal);

    // A tagged failure is that outcome, its class and code kept.
    h.register(with_types(external("tagged"), [gave_up])).await;
    let tagged = Outcome::failure("ci", "red", "tests failed");
    let res = h
        .append("tagged", AppendRequest::new("gave_up", json!({ "why": tagged })))
        .await;
    let rec = h.get("tagged").await;
    assert_eq!(rec.status, ProcessStatus::Failed);
    assert_eq!(rec.outcome, Some(tagged));
    assert_eq!(rec.outcome, res.event.semantics.terminal);

    // A tagged success is unwrapped: its value is the outcome's value.
    h.register(external("unwrapped")).await;
    let res = h
        .append(
            "unwrapped",
            AppendRequest::new(FINISHED, json!({"result": {"type": "success", "value": {"rows": 3}}})),
        )
        .await;
    let rec = h.get("unwrapped").await;
    assert_eq!(rec.status, ProcessStatus::Completed);
    assert_eq!(rec.outcome, Some(Outcome::success(json!({"rows": 3}))));
    assert_eq!(rec.outcome, res.event.semantics.terminal);

    // A selected `null` is an outcome without a raw value, the same in the
    // write's answer, the stored record and the stored event.
    let quit = terminal_type("quit", TerminalState::Cancelled, "/why");
    h.register(with_types(external("g"), [quit])).await;
    let res = h.append("g", AppendRequest::new("quit", json!({"why": null}))).await;
    let rec = h.get("g").await;
    assert_eq!(rec.status, ProcessStatus::Cancelled);
    assert!(
        matches!(&rec.outcome, Some(Outcome::Cancelled { raw: None, .. })),
        "{:?}",
        rec.outcome
    );
    assert_eq!(rec.outcome, res.event.semantics.terminal);
    let stored = ok(h.registry().events_after("g", 0, None).await, "events").events;
    assert_eq!(stored.last(), Some(&res.event));
}

/// A used replay key with the same type and payload returns the original event
/// (`replayed: true`) and writes nothing, also after later appends and after the
/// process ended.
pub async fn replay_key_is_idempotent(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("p")).await;
    let first = h.append("p", progress(1).with_replay_key("k1")).await;
    assert!(!first.replayed);
    h.advance(100);
    let again = h
        .no_change(
            "replay",
            h.registry().append_event("p", progress(1).with_replay_key("k1")),
        )
        .await;
    assert!(again.replayed, "a repeated key answers replayed: true");
    assert_eq!(again.event, first.event, "a replay answers the original event");
    assert!(again.wake.is_none());
    h.append("p", progress(2)).await;
    h.append("p", note(json!({"x": 1})).with_replay_key("k2")).await;
    let later = h
        .no_change(
            "replay after other appends",
            h.registry().append_event("p", progress(1).with_replay_key("k1")),
        )
        .await;
    assert_eq!(later.event, first.event);
    // Key order inside the payload does not matter.
    let a = h
        .append("p", note(json!({"a": 1, "b": {"c": 2, "d": 3}})).with_replay_key("k3"))
        .await;
    let b: serde_json::Value = serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).expect("parse a payload");
    let replay = h
        .no_change(
            "replay with reordered keys",
            h.registry().append_event("p", note(b).with_replay_key("k3")),
        )
        .await;
    assert_eq!(replay.event, a.event);
    // Floats are read back from the store as written (the last bit too), so
    // a retry of one compares equal and replays rather than conflicting.
    let floats = json!({"tiny": 1.000_000_000_000_000_2e-5, "third": 1.0 / 3.0, "big": 1.797_693_134_862_315_7e308});
    let f = h.append("p", note(floats.clone()).with_replay_key("k4")).await;
    let replay = h
        .no_change(
            "replay with floats",
            h.registry().append_event("p", note(floats).with_replay_key("k4")),
        )
        .await;
    assert!(replay.replayed);
    assert_eq!(replay.event, f.event);
    // A retried request after the end never creates a second event.
    ok(
        h.registry()
            .complete_external("p", Outcome::success(json!(null)), "ci")
            .await,
        "complete_external",
    );
    h.check("p").await;
    let after_end = h
        .no_change(
            "replay after terminal",
            h.registry().append_event("p", progress(1).with_replay_key("k1")),
        )
        .await;
    assert!(after_end.replayed);
    assert_eq!(after_end.event, first.event);
}

/// A replay key holding a control character, NUL too (which a PostgreSQL
/// `text` cannot hold), is `invalid_id` and changes nothing, on a running
/// process and an ended one; an unknown process is `unknown_process` first.
pub async fn a_replay_key_with_a_control_character_is_refused(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("p")).await;
    h.register(external("e")).await;
    ok(
        h.registry()
            .complete_external("e", Outcome::success(json!(null)), "ci")
            .await,
        "complete_external",
    );
    for key in ["k\u{0}", "\u{0}", "k\u{1}"] {
        for id in ["p", "e"] {
            let e = h
                .rejects(
                    "invalid_id",
                    "a control character in the key",
                    h.registry().append_event(id, progress(1).with_replay_key(key)),
                )
                .await;
            assert!(e.to_string().contains("replay key"), "{id}: {e}");
        }
        h.rejects(
            "unknown_process",
            "an unknown process",
            h.registry().append_event("nobody", progress(1).with_replay_key(key)),
        )
        .await;
    }
    // The same process takes a good key after them.
    let good = h.append("p", progress(1).with_replay_key("k")).await;
    assert!(!good.replayed);
}

/// A used replay key with another payload or type is `replay_conflict`; keys are per process.
pub async fn replay_key_conflict(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(rerunnable("q")).await;
    h.append("p", progress(1).with_replay_key("k")).await;
    h.rejects(
        "replay_conflict",
        "other payload",
        h.registry().append_event("p", progress(2).with_replay_key("k")),
    )
    .await;
    h.rejects(
        "replay_conflict",
        "other type",
        h.registry()
            .append_event("p", note(json!({"n": 1})).with_replay_key("k")),
    )
    .await;
    h.rejects(
        "invalid_id",
        "empty replay key",
        h.registry().append_event("p", progress(1).with_replay_key("")),
    )
    .await;
    let other = h.append("q", progress(2).with_replay_key("k")).await;
    assert!(!other.replayed, "replay keys are scoped to their process");
    assert_eq!(other.event.process_id, "q");
}

/// The replay keys cairn's own cancel, signal and journal appends use are
/// refused on any other append, so no event can take one first and make that
/// cancellation or signal a `replay_conflict` for good.
pub async fn cairns_own_replay_keys_are_refused_on_other_appends(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    let taken = [
        cairn_core::fold::cancel_replay_key(None),
        cairn_core::fold::cancel_replay_key(Some("stop")),
        signal_replay_key("go", "s1"),
    ];
    for key in taken {
        h.rejects(
            "invalid_request",
            "a key of cairn's own on another type",
            h.registry().append_event("p", progress(1).with_replay_key(key.clone())),
        )
        .await;
    }
    h.rejects(
        "invalid_request",
        "another signal's key",
        h.registry().append_event(
            "p",
            AppendRequest::new("signal.go-on", json!({})).with_replay_key(signal_replay_key("go", "s1")),
        ),
    )
    .await;
    // A key `{type}/…` naming another declared type is that type's (a
    // shell's output batches take `shell.output/{run}/{n}`).
    h.rejects(
        "invalid_request",
        "a key of another declared type's form",
        h.registry()
            .append_event("p", note(json!({})).with_replay_key("progress/1/1")),
    )
    .await;
    h.append("p", progress(5).with_replay_key("progress/1/1")).await;
    // Keys that merely look alike stay the producer's, and a journal's keys
    // are free where there is no journal.
    h.append("p", progress(1).with_replay_key("cancelled:1")).await;
    h.append("p", progress(2).with_replay_key("signals:go:s1")).await;
    h.append("p", progress(3).with_replay_key("script.call:1")).await;
    h.append("p", progress(4).with_replay_key("turn.response/1")).await;
    // A script's journal keys are its run's: refused without the lease,
    // taken under it.
    let mut script = rerunnable("s");
    script.input = cairn_core::ProcessInput::Script {
        module_ref: format!("module:sha256:{}", "0".repeat(64)),
        process_name: "main".into(),
        args: json!({}),
    };
    h.register(script).await;
    h.rejects(
        "invalid_request",
        "a journal key without the lease",
        h.registry()
            .append_event("s", progress(1).with_replay_key("script.call:1")),
    )
    .await;
    let lease = ok(h.registry().claim("s", "w1", TTL).await, "claim");
    h.append("s", progress(1).with_replay_key("script.call:1").with_lease(lease))
        .await;
    // The signal and the cancellation those keys belong to go through.
    let signal = AppendRequest::new("signal.go", json!({})).with_replay_key(signal_replay_key("go", "s1"));
    assert!(!h.append("p", signal).await.replayed);
    let answer = ok(h.registry().request_cancel("p", None).await, "cancel");
    assert_eq!(answer.process.status, ProcessStatus::Cancelled);
    // Taken now, they are refused on another append the same way (not a
    // conflict, which would read as "retry with the same payload").
    for key in [cairn_core::fold::cancel_replay_key(None), signal_replay_key("go", "s1")] {
        h.rejects(
            "invalid_request",
            "a used key of cairn's own on another type",
            h.registry().append_event("p", progress(9).with_replay_key(key)),
        )
        .await;
    }
}

/// Sequences start at 1 and rise by one per process, whatever fails in between.
pub async fn sequences_are_gap_free_and_ordered(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("a")).await;
    h.register(external("b")).await;
    let mut expected = [0u64, 0u64];
    for i in 0..24u64 {
        let (id, slot) = if i % 3 == 0 { ("b", 1) } else { ("a", 0) };
        let req = match i % 4 {
            0 => progress(i),
            1 => note(json!({"i": i})),
            2 => signal("tick", &format!("t{i}"), json!(i)),
            _ => note(json!([i])).with_replay_key(format!("r{i}")),
        };
        if i % 5 == 0 {
            expect_code(
                h.registry()
                    .append_event(id, AppendRequest::new(PROGRESS, json!({})))
                    .await,
                "schema_violation",
                "a failed append in between",
            );
        }
        h.advance(1);
        let res = h.append(id, req).await;
        expected[slot] += 1;
        assert_eq!(
            res.event.sequence, expected[slot],
            "sequence of `{id}` after {i} appends"
        );
    }
    let cancel = ok(
        h.registry().request_cancel("b", Some("stop".into())).await,
        "request_cancel",
    );
    expected[1] += 1;
    assert_eq!(cancel.process.last_sequence, expected[1]);
    for (id, n) in [("a", expected[0]), ("b", expected[1])] {
        let folded = h.check(id).await;
        let seqs: Vec<u64> = folded.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        let times: Vec<u64> = folded.events.iter().map(|e| e.occurred_at_ms).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "event times never go back: {times:?}"
        );
    }
}

/// `events_after` pages: `next_after` is the last sequence of a full page and `None` at the end.
pub async fn events_after_pages(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    for i in 0..25 {
        h.append("p", progress(i)).await;
    }
    let r = h.registry();
    let page = ok(r.events_after("p", 0, Some(10)).await, "page 1");
    assert_eq!(
        page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(page.next_after, Some(10));
    let page = ok(r.events_after("p", 10, Some(10)).await, "page 2");
    assert_eq!(page.events.first().map(|e| e.sequence), Some(11));
    assert_eq!(page.next_after, Some(20));
    let page = ok(r.events_after("p", 20, Some(10)).await, "page 3");
    assert_eq!(
        page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (21..=25).collect::<Vec<_>>()
    );
    assert_eq!(page.next_after, None, "the last page ends the log");
    let exact = ok(r.events_after("p", 15, Some(10)).await, "exact fit");
    assert_eq!(exact.events.len(), 10);
    assert_eq!(exact.next_after, None, "a page ending at the last event ends the log");
    let all = ok(r.events_after("p", 0, None).await, "default page");
    assert_eq!(all.events.len(), 25);
    assert_eq!(all.next_after, None);
    for after in [25, 26, 1000] {
        let page = ok(r.events_after("p", after, Some(5)).await, "past the end");
        assert!(page.events.is_empty());
        assert_eq!(page.next_after, None);
    }
    let mid = ok(r.events_after("p", 24, Some(1)).await, "one");
    assert_eq!(mid.events.len(), 1);
    assert_eq!(mid.events[0].payload, json!({"n": 24}));
}

/// Page sizes of 0 or over 1000 are `invalid_page` everywhere; 1000 is fine.
pub async fn events_after_rejects_bad_page_sizes(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.append("p", progress(1)).await;
    let r = h.registry();
    for bad in [0, MAX_PAGE_SIZE + 1] {
        h.rejects("invalid_page", "events_after", r.events_after("p", 0, Some(bad)))
            .await;
        let filter = ProcessFilter {
            limit: Some(bad),
            ..ProcessFilter::any()
        };
        h.rejects("invalid_page", "list", r.list(&filter)).await;
        h.rejects(
            "invalid_page",
            "list_granted_to",
            r.list_granted_to(&session("s1"), &filter),
        )
        .await;
        h.rejects(
            "invalid_page",
            "list_originated_by",
            r.list_originated_by(&session("s1"), &filter),
        )
        .await;
        h.rejects("invalid_page", "pending_wakes", r.pending_wakes("s1", Some(bad)))
            .await;
        h.rejects("invalid_page", "changed_since", r.changed_since(0, Some(bad)))
            .await;
    }
    let page = ok(r.events_after("p", 0, Some(MAX_PAGE_SIZE)).await, "max page");
    assert_eq!(page.events.len(), 1);
}

/// A terminal is written once: afterwards nothing is appended, cancelled,
/// abandoned, claimed or completed again (`process_terminal`), and it never changes.
pub async fn terminal_is_write_once(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("p")).await;
    h.register(external("e")).await;
    let lease = h.claim("p", "w1", TTL).await;
    let done = ok(
        h.registry().complete(&lease, Outcome::success(json!("first"))).await,
        "complete",
    );
    assert_eq!(done.status, ProcessStatus::Completed);
    ok(
        h.registry()
            .complete_external("e", Outcome::failure("c", "x", "first"), "ci")
            .await,
        "complete_external",
    );
    let r = h.registry();
    for (id, status) in [("p", "completed"), ("e", "failed")] {
        // The refusal says how the process ended: a caller need not read it again.
        let said = format!("process `{id}` already ended ({status})");
        let e = h
            .rejects("process_terminal", "append", r.append_event(id, note(json!({}))))
            .await;
        assert!(e.to_string().contains(&said), "{e}");
        h.rejects(
            "process_terminal",
            "signal",
            r.append_event(id, signal("go", "s1", json!(null))),
        )
        .await;
        h.rejects(
            "process_terminal",
            "terminal append",
            r.append_event(
                id,
                AppendRequest::new(
                    ev::COMPLETED,
                    json!({"await_output": Outcome::success(json!("second"))}),
                ),
            ),
        )
        .await;
        let e = h
            .rejects("process_terminal", "request_cancel", r.request_cancel(id, None))
            .await;
        assert!(e.to_string().contains(&said), "{e}");
        let e = h
            .rejects(
                "process_terminal",
                "request_abandon",
                r.request_abandon(id, "op", "why"),
            )
            .await;
        assert!(e.to_string().contains(&said), "{e}");
        let e = h.rejects("process_terminal", "claim", r.claim(id, "w2", TTL)).await;
        assert!(e.to_string().contains(&said), "{e}");
        let none = h.no_change("reconcile terminal", r.reconcile_abandon(id)).await;
        assert!(none.is_none());
    }
    h.rejects(
        "process_terminal",
        "complete_external again",
        r.complete_external("e", Outcome::success(json!("second")), "ci"),
    )
    .await;
    h.rejects_any(
        &["process_terminal", "lease_fenced"],
        "completing twice",
        r.complete(&lease, Outcome::success(json!("second"))),
    )
    .await;
    assert_eq!(h.get("p").await.outcome, Some(Outcome::success(json!("first"))));
}

/// `process.waiting` / `process.resumed` fold into the record's wait state;
/// only cairn writes them (through `wait` and `resume`), never a caller.
pub async fn wait_state_is_folded(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("p")).await;
    h.register(owner_bound("q")).await;
    let (lease, rec) = h.claim_started("p", "w1", TTL).await;
    h.advance(3);
    for t in [ev::WAITING, ev::RESUMED] {
        h.rejects(
            "reserved_event_type",
            "a caller appending a wait event",
            h.registry().append_event(
                "p",
                AppendRequest::new(t, json!({"kind": "signal"})).with_lease(lease.clone()),
            ),
        )
        .await;
    }
    let recorded = ok(
        h.registry()
            .wait(&lease, WaitRequest::signal("go", 2, None), rec.last_sequence)
            .await,
        "wait",
    );
    assert!(recorded, "the wait is recorded");
    let rec = h.check("p").await.record;
    assert_eq!(
        rec.wait,
        Some(WaitState {
            kind: "signal".into(),
            name: Some("go".into()),
            ordinal: Some(2),
            until_ms: None,
            ids: None,
            mode: None,
            signals: None,
            due_timer: false,
            woken: None,
            since_ms: h.now(),
        })
    );
    assert!(rec.lease.is_some(), "an owner-bound wait keeps its lease");
    let waiting = ProcessFilter {
        waiting: Some(true),
        ..ProcessFilter::default()
    };
    let ids: Vec<String> = ok(h.registry().list(&waiting).await, "list waiting")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec!["p".to_string()]);
    h.append("p", signal("go", "a", json!(1))).await;
    assert_eq!(
        h.get("p").await.wait.and_then(|w| w.woken),
        None,
        "only a suspension is woken by the write"
    );
    ok(
        h.registry()
            .resume(
                &lease,
                json!({"reason": "signal", "kind": "signal", "name": "go", "ordinal": 2}),
            )
            .await,
        "resume",
    );
    assert_eq!(h.check("p").await.record.wait, None);
    let rec = h.get("p").await;
    ok(
        h.registry()
            .wait(&lease, WaitRequest::timer(1, h.now() + 1_000), rec.last_sequence)
            .await,
        "timer wait",
    );
    let w = h.check("p").await.record.wait.expect("a timer wait");
    assert_eq!((w.kind.as_str(), w.until_ms), ("timer", Some(h.now() + 1_000)));
    ok(
        h.registry().complete(&lease, Outcome::success(json!(1))).await,
        "complete",
    );
    assert_eq!(h.get("p").await.wait, None, "a terminal clears the wait state");
}

/// `signal.{name}` is implicitly declared for valid names; the signal id makes it
/// idempotent; bad names are `invalid_signal_name`; a declared signal type keeps its schema.
pub async fn signals_are_implicitly_declared(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let approve = EventType::plain("signal.approve").with_schema(json!({"type": "object", "required": ["ok"]}));
    h.register(with_types(owner_bound("p"), [approve])).await;
    let first = h.append("p", signal("go", "sig-1", json!({"x": 1}))).await;
    assert_eq!(first.event.event_type, "signal.go");
    assert_eq!(first.event.replay_key, Some(signal_replay_key("go", "sig-1")));
    let again = h
        .no_change(
            "repeat signal id",
            h.registry().append_event("p", signal("go", "sig-1", json!({"x": 1}))),
        )
        .await;
    assert!(again.replayed);
    assert_eq!(again.event, first.event);
    let second = h.append("p", signal("go", "sig-2", json!({"x": 2}))).await;
    assert_eq!(second.event.sequence, 2);
    let long = format!("signal.{}", "s".repeat(129));
    for t in ["signal.", "signal.a.b", "signal.with space", "signal.ü", long.as_str()] {
        h.rejects(
            "invalid_signal_name",
            t,
            h.registry().append_event("p", AppendRequest::new(t, json!({}))),
        )
        .await;
    }
    h.rejects(
        "schema_violation",
        "declared signal schema",
        h.registry()
            .append_event("p", signal("approve", "a1", json!({"nope": true}))),
    )
    .await;
    h.append("p", signal("approve", "a1", json!({"ok": true}))).await;
    // A signal carries its signal id: appended without one (or under another
    // replay key) it is refused, so every signal stays idempotent.
    for key in [None, Some("mine"), Some("signal:approve:"), Some("signal:go:a2")] {
        let mut req = AppendRequest::new("signal.approve", json!({"ok": true}));
        req.replay_key = key.map(String::from);
        h.rejects(
            "invalid_request",
            "a signal without its signal id",
            h.registry().append_event("p", req),
        )
        .await;
    }
}
