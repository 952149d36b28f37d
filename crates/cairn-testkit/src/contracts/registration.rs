//! Registration: idempotent start, conflicts, validation errors, unknown ids.

use cairn_core::events::{DedupeKey, TerminalSpec};
use cairn_core::validate::{registration_hash, validate_registration};
use cairn_core::{
    AppendRequest, EnvSpec, EventType, Lease, Outcome, ProcessFilter, ProcessInput, ProcessStatus, SemanticsSpec,
    SessionScope, TerminalState,
};
use serde_json::json;

use crate::builders::*;
use crate::harness::{ok, Harness, START_MS};
use crate::StoreFactory;

/// A new id is recorded as a running record equal to the registration, with an empty log.
pub async fn register_creates_running_record(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in each_disposition("p") {
        let rec = h.register(reg.clone()).await;
        assert_eq!(rec.id, reg.id);
        assert_eq!(rec.status, ProcessStatus::Running);
        assert_eq!(rec.outcome, None);
        assert_eq!(rec.disposition, reg.disposition);
        assert_eq!(rec.input, reg.input);
        assert_eq!(rec.provenance, reg.provenance);
        assert_eq!(rec.wake_target, reg.wake_target);
        assert_eq!(
            rec.event_types,
            ok(validate_registration(&reg), "validate_registration"),
            "the record declares the core types followed by the producer's"
        );
        assert_eq!(rec.registration(), reg, "the record must give back its registration");
        assert_eq!(rec.registration_hash, ok(registration_hash(&reg), "registration_hash"));
        assert_eq!(rec.created_at_ms, START_MS);
        assert_eq!(rec.updated_at_ms, START_MS);
        assert_eq!(rec.last_sequence, 0);
        assert!(rec.lease.is_none() && rec.wait.is_none() && rec.started.is_none());
        assert!(rec.cancel_request.is_none() && rec.abandon_request.is_none() && rec.terminal_at_ms.is_none());
        assert!(h.check(&reg.id).await.events.is_empty(), "start writes no event");
    }
    let listed = ok(h.registry().list(&ProcessFilter::running()).await, "list");
    assert_eq!(listed.len(), 3, "every new process is running");
}

/// A child registered by a run of its parent is fenced by that run's lease:
/// a run that lost it starts nothing (`lease_fenced`, nothing written); the
/// run holding it does, with every grant it names; a lease of another
/// process is bad input.
pub async fn register_child_is_fenced_by_the_parents_lease(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("parent")).await;
    let first = h.claim("parent", "w1", 1_000).await;
    let child = |id: &str| {
        let mut reg = rerunnable(id);
        reg.provenance.caused_by = Some(cairn_core::CausalRef::process("parent"));
        reg
    };
    let (s1, s2) = (SessionScope::session("s1"), SessionScope::session("s2"));
    let grants = vec![start_grant(&s1, "tool", "one"), start_grant(&s2, "tool", "two")];
    let made = ok(
        h.registry()
            .register_child(child("parent/1"), grants.clone(), &first)
            .await,
        "register_child",
    );
    assert!(made.created);
    let holders: Vec<_> = ok(h.registry().grants_of("parent/1").await, "grants_of")
        .into_iter()
        .map(|g| g.scope)
        .collect();
    assert_eq!(holders, vec![s1, s2]);
    h.advance(1_001);
    let second = h.claim("parent", "w2", 1_000).await;
    h.rejects(
        "lease_fenced",
        "a child of a run that lost its lease",
        h.registry().register_child(child("parent/2"), grants.clone(), &first),
    )
    .await;
    h.rejects(
        "invalid_request",
        "a child under another process's lease",
        h.registry().register_child(rerunnable("stray"), Vec::new(), &second),
    )
    .await;
    let made = ok(
        h.registry()
            .register_child(child("parent/2"), Vec::new(), &second)
            .await,
        "register_child under the live lease",
    );
    assert!(made.created);
}

/// Starting the same id with the same registration answers `created: false` with the
/// stored record and writes nothing, for every disposition and after events.
pub async fn register_is_idempotent(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for reg in each_disposition("p") {
        let first = h.register(reg.clone()).await;
        h.advance(10);
        let again = h
            .no_change("repeat register", h.registry().register(reg.clone(), None))
            .await;
        assert!(!again.created, "a repeated start answers created: false");
        assert_eq!(again.process, first, "a repeated start answers the stored record");
        h.append(&reg.id, progress(1)).await;
        let current = h.get(&reg.id).await;
        let later = h
            .no_change("repeat register after events", h.registry().register(reg.clone(), None))
            .await;
        assert!(!later.created);
        assert_eq!(later.process, current, "a repeated start answers the current record");
    }
}

/// A repeated start does not re-apply its grant: not to another scope, not
/// with another descriptor, not after the first grant was revoked.
pub async fn register_does_not_reapply_grant(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    let reg = rerunnable("p");
    h.register_granted(reg.clone(), Some(start_grant(&s1, "tool", "first")))
        .await;
    for (what, grant) in [
        (
            "repeat register with another descriptor",
            start_grant(&s1, "other", "second"),
        ),
        ("repeat register with another scope", start_grant(&s2, "tool", "first")),
    ] {
        let again = h.no_change(what, h.registry().register(reg.clone(), Some(grant))).await;
        assert!(!again.created, "{what}");
    }
    let held = ok(h.registry().grants_of("p").await, "grants_of");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (&held[0].scope, &held[0].descriptor),
        (&s1, &descriptor("tool", "first"))
    );
    assert!(ok(h.registry().revoke(&s1, "p").await, "revoke"));
    let again = h
        .no_change(
            "repeat register with a grant",
            h.registry()
                .register(reg.clone(), Some(start_grant(&s2, "tool", "second"))),
        )
        .await;
    assert!(!again.created);
    for s in [&s1, &s2] {
        let granted = ok(
            h.registry().list_granted_to(s, &ProcessFilter::any()).await,
            "list_granted_to",
        );
        assert!(granted.is_empty(), "a repeated start must not grant {s:?}");
    }
}

/// The same id with a different registration is `registration_conflict` and changes nothing.
pub async fn register_conflict_changes_nothing(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let reg = rerunnable("p");
    h.register(reg.clone()).await;
    h.append("p", note(json!({"a": 1}))).await;
    let mut variants = Vec::new();
    let mut v = reg.clone();
    v.input = ProcessInput::ToolCall {
        tool: "echo".into(),
        args: json!({"value": "other"}),
    };
    variants.push(("other input", v, "input"));
    variants.push(("other disposition", owner_bound("p"), "disposition"));
    variants.push((
        "extra event type",
        with_types(reg.clone(), [EventType::plain("extra")]),
        "event_types",
    ));
    variants.push(("a wake target", waking(reg.clone(), &session("s1")), "wake_target"));
    variants.push((
        "another originator",
        originated_by(reg.clone(), &session("s1")),
        "caused_by or originator",
    ));
    let mut v = reg.clone();
    v.event_types.retain(|t| t.name != NOTE);
    variants.push(("fewer event types", v, "event_types"));
    for (what, variant, field) in variants {
        let said = h
            .rejects(
                "registration_conflict",
                what,
                h.registry()
                    .register(variant, Some(start_grant(&session("s1"), "k", "l"))),
            )
            .await
            .to_string();
        // The refusal names what differs.
        assert!(said.ends_with(&format!("its {field} differs")), "{what}: {said}");
    }
}

/// The registration hash is stable: declaration order of event types does not
/// matter, two stores agree, and it is the hash `cairn_core::validate` computes.
pub async fn registration_hash_is_stable(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let reg = rerunnable("p");
    let mut reordered = reg.clone();
    reordered.event_types.reverse();
    assert_ne!(reordered.event_types, reg.event_types);
    let expected = ok(registration_hash(&reg), "registration_hash");
    assert_eq!(expected, ok(registration_hash(&reordered), "registration_hash"));
    assert!(
        expected.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64),
        "hash is sha256:{{64 hex}}: {expected}"
    );
    let rec = h.register(reg.clone()).await;
    assert_eq!(rec.registration_hash, expected);
    let again = h
        .no_change("register reordered", h.registry().register(reordered, None))
        .await;
    assert!(!again.created, "a reordered declaration is the same start");

    // Through JSON and in another store: the same hash.
    let wire = serde_json::to_value(&reg).expect("serialize a registration");
    let back = serde_json::from_value(wire).expect("deserialize a registration");
    let other = Harness::new(factory).await;
    let rec2 = other.register(back).await;
    assert_eq!(rec2.registration_hash, expected, "two stores must agree on the hash");

    let different = h.register(rerunnable("q")).await;
    assert_ne!(
        different.registration_hash, expected,
        "different registrations hash differently"
    );
}

/// Bad ids anywhere in a registration are `invalid_id` and create nothing
/// (`.` and `..` included: no URL path can name them); 256 bytes is fine, and
/// so are ids that merely contain dots.
pub async fn register_rejects_bad_ids(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let too_long = "x".repeat(257);
    let multibyte = "é".repeat(129);
    for id in [
        "",
        too_long.as_str(),
        multibyte.as_str(),
        "a\nb",
        "tab\there",
        "del\u{7f}",
        ".",
        "..",
    ] {
        h.rejects(
            "invalid_id",
            &format!("register id {id:?}"),
            h.registry().register(rerunnable(id), None),
        )
        .await;
    }
    let bad_scope = SessionScope::session("");
    h.rejects(
        "invalid_id",
        "empty originator session",
        h.registry().register(originated_by(rerunnable("p"), &bad_scope), None),
    )
    .await;
    h.rejects(
        "invalid_id",
        "control char in wake target",
        h.registry()
            .register(waking(rerunnable("p"), &SessionScope::session("s\u{0}")), None),
    )
    .await;
    h.rejects(
        "invalid_id",
        "empty grant scope",
        h.registry()
            .register(rerunnable("p"), Some(start_grant(&bad_scope, "k", "l"))),
    )
    .await;
    h.rejects(
        "invalid_id",
        "empty frame",
        h.registry()
            .register(originated_by(rerunnable("p"), &SessionScope::frame("s1", "")), None),
    )
    .await;
    let max = "x".repeat(256);
    h.register(rerunnable(&max)).await;
    assert_eq!(h.get(&max).await.id, max);
    for dotted in ["...", ".a", "a..b"] {
        h.register(rerunnable(dotted)).await;
        assert_eq!(h.get(dotted).await.id, dotted);
    }
}

/// Two producer types with one name are `duplicate_event_type`.
pub async fn register_rejects_duplicate_event_types(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let reg = with_types(
        rerunnable("p"),
        [EventType::plain(NOTE).with_schema(json!({"type": "object"}))],
    );
    h.rejects("duplicate_event_type", "note twice", h.registry().register(reg, None))
        .await;
    let reg = with_types(
        external("e"),
        [EventType::plain("x"), EventType::plain("y"), EventType::plain("x")],
    );
    h.rejects("duplicate_event_type", "x twice", h.registry().register(reg, None))
        .await;
}

/// Declaring a type in the `process.` namespace is `reserved_event_type`.
pub async fn register_rejects_reserved_event_types(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for name in ["process.completed", "process.started", "process.custom"] {
        let reg = with_types(rerunnable("p"), [EventType::plain(name)]);
        h.rejects("reserved_event_type", name, h.registry().register(reg, None))
            .await;
    }
}

/// Event type names are 1-128 bytes of `[A-Za-z0-9._-]`, else `invalid_event_type_name`.
pub async fn register_rejects_bad_event_type_names(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let long = "a".repeat(129);
    for name in ["", "has space", "ümlaut", "a/b", "semi;colon", long.as_str()] {
        let reg = with_types(rerunnable("p"), [EventType::plain(name)]);
        h.rejects(
            "invalid_event_type_name",
            &format!("type name {name:?}"),
            h.registry().register(reg, None),
        )
        .await;
    }
    let ok_name = "a".repeat(128);
    let reg = with_types(
        rerunnable("p"),
        [EventType::plain(ok_name.as_str()), EventType::plain("A-b_c.9")],
    );
    h.register(reg).await;
    h.append("p", AppendRequest::new(ok_name, json!(null))).await;
}

/// A payload schema that does not compile is `invalid_schema`.
pub async fn register_rejects_uncompilable_schema(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for schema in [json!({"type": 12}), json!({"type": "no-such-type"}), json!(12)] {
        let reg = with_types(rerunnable("p"), [EventType::plain("bad").with_schema(schema.clone())]);
        h.rejects(
            "invalid_schema",
            &format!("schema {schema}"),
            h.registry().register(reg, None),
        )
        .await;
    }
}

/// Malformed semantics are `invalid_semantics`: producer `abandoned` terminals, bad
/// pointers, template holes without a field, terminal signals.
pub async fn register_rejects_bad_semantics(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let abandoned = EventType::plain("gone").with_semantics(SemanticsSpec {
        terminal: Some(TerminalSpec {
            state: TerminalState::Abandoned,
            await_output: None,
        }),
        wake: None,
    });
    let bad_pointer = wake_type(
        "w",
        cairn_core::Selector::Pointer("no-slash".into()),
        DedupeKey::EventIdentity,
    );
    let bad_template = wake_type(
        "w",
        cairn_core::Selector::Template {
            template: "{missing}".into(),
            fields: Default::default(),
        },
        DedupeKey::EventIdentity,
    );
    let terminal_signal = terminal_type("signal.done", TerminalState::Completed, "/x");
    for (what, t) in [
        ("abandoned terminal", abandoned),
        ("pointer without slash", bad_pointer),
        ("template hole", bad_template),
        ("terminal signal", terminal_signal),
    ] {
        h.rejects(
            "invalid_semantics",
            what,
            h.registry().register(with_types(rerunnable("p"), [t]), None),
        )
        .await;
    }
}

/// A selector constant or an `external_ref`'s metadata nested past
/// [`MAX_JSON_DEPTH`] is `invalid_request` and registers nothing: the record
/// stores them, and one that could not be read back would break every list
/// that holds it.
///
/// [`MAX_JSON_DEPTH`]: cairn_core::validate::MAX_JSON_DEPTH
pub async fn register_rejects_over_deep_declarations(factory: &dyn StoreFactory) {
    let max = cairn_core::validate::MAX_JSON_DEPTH;
    let nested = |depth: usize| (0..depth).fold(json!("leaf"), |v, _| json!([v]));
    let h = Harness::new(factory).await;
    let deep_const = |depth: usize| {
        with_types(
            rerunnable("c"),
            [wake_type(
                "w",
                cairn_core::Selector::Const(nested(depth)),
                DedupeKey::EventIdentity,
            )],
        )
    };
    let deep_metadata = |depth: usize| {
        let mut reg = external("m");
        reg.external_ref = Some(cairn_core::ExternalRef {
            backend: "ci".into(),
            id: "7".into(),
            metadata: Some(nested(depth)),
        });
        reg
    };
    for (what, reg) in [
        ("a wake input constant too deep", deep_const(max + 1)),
        ("external_ref metadata too deep", deep_metadata(max + 1)),
    ] {
        let err = h
            .rejects("invalid_request", what, h.registry().register(reg, None))
            .await;
        assert!(err.to_string().contains("levels deep"), "{what}: {err}");
    }
    assert!(
        crate::harness::list_all(h.registry()).await.is_empty(),
        "nothing registered"
    );
    // Within the limit both are stored and read back by get and list.
    h.register(deep_const(max - 4)).await;
    h.register(deep_metadata(max - 2)).await;
    assert_eq!(h.get("m").await.external_ref, deep_metadata(max - 2).external_ref);
    assert_eq!(crate::harness::list_all(h.registry()).await.len(), 2);
}

/// Declared `signal.{name}` types need a valid signal name (`invalid_signal_name`).
pub async fn register_rejects_bad_signal_declarations(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for name in ["signal.", "signal.a.b"] {
        h.rejects(
            "invalid_signal_name",
            name,
            h.registry()
                .register(with_types(rerunnable("p"), [EventType::plain(name)]), None),
        )
        .await;
    }
    h.register(with_types(rerunnable("p"), [EventType::plain("signal.go-on_1")]))
        .await;
}

/// An `env_ref` must name a stored env (`unknown_env`).
pub async fn register_requires_stored_env(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let spec = EnvSpec {
        plugin_options: json!({"image": "alpine"}),
        policy: json!({"network": false}),
    };
    let (env_ref, _) = ok(cairn_core::validate::env_ref_and_bytes(&spec), "env_ref_and_bytes");
    let mut reg = rerunnable("p");
    reg.env_ref = Some(env_ref.clone());
    h.rejects(
        "unknown_env",
        "env not stored",
        h.registry().register(reg.clone(), None),
    )
    .await;
    let stored = ok(h.registry().put_env(&spec).await, "put_env");
    assert_eq!(stored, env_ref);
    let rec = h.register(reg).await;
    assert_eq!(rec.env_ref.as_deref(), Some(env_ref.as_str()));
}

/// A start grant commits with the record.
pub async fn register_with_grant(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    let frame = SessionScope::frame("s1", "f1");
    let rec = h
        .register_granted(
            originated_by(rerunnable("p"), &s1),
            Some(start_grant(&s1, "shell", "tests")),
        )
        .await;
    h.register_granted(rerunnable("q"), Some(start_grant(&frame, "tool", "q")))
        .await;
    let granted = ok(
        h.registry().list_granted_to(&s1, &ProcessFilter::any()).await,
        "list_granted_to",
    );
    assert_eq!(granted.len(), 1, "only the exact scope's grants: {granted:?}");
    assert_eq!(granted[0].process, rec);
    assert_eq!(granted[0].grant.scope, s1);
    assert_eq!(granted[0].grant.process_id, "p");
    assert_eq!(granted[0].grant.descriptor, descriptor("shell", "tests"));
    assert_eq!(granted[0].grant.granted_at_ms, START_MS);
    let in_frame = ok(
        h.registry().list_granted_to(&frame, &ProcessFilter::any()).await,
        "list_granted_to frame",
    );
    assert_eq!(in_frame.len(), 1);
    assert_eq!(in_frame[0].process.id, "q");
}

/// Every operation on an id never recorded is `unknown_process` and changes nothing.
pub async fn unknown_ids_are_unknown_process(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(rerunnable("known")).await;
    let r = h.registry();
    let lease = Lease {
        process_id: "nope".into(),
        owner_id: "w".into(),
        lease_token: "t".into(),
        fencing_token: 1,
        claimed_at_ms: START_MS,
        expires_at_ms: START_MS + 1000,
    };
    let code = "unknown_process";
    h.rejects(code, "get", r.get("nope")).await;
    h.rejects(code, "events_after", r.events_after("nope", 0, None)).await;
    h.rejects(code, "append_event", r.append_event("nope", note(json!({}))))
        .await;
    h.rejects(code, "request_cancel", r.request_cancel("nope", None)).await;
    h.rejects(code, "grant", r.grant(&session("s1"), "nope", descriptor("k", "l")))
        .await;
    h.rejects(code, "claim", r.claim("nope", "w", 1000)).await;
    h.rejects(code, "record_started", r.record_started(&lease)).await;
    h.rejects(code, "renew", r.renew(&lease, 1000)).await;
    h.rejects(code, "release", r.release(&lease)).await;
    h.rejects(code, "complete", r.complete(&lease, Outcome::success(json!(1))))
        .await;
    h.rejects(code, "request_abandon", r.request_abandon("nope", "op", "why"))
        .await;
    h.rejects(code, "reconcile_abandon", r.reconcile_abandon("nope")).await;
    h.rejects(
        code,
        "complete_external",
        r.complete_external("nope", Outcome::success(json!(1)), "ci"),
    )
    .await;
    h.rejects(code, "fencing_token", r.fencing_token("nope")).await;
    let listed = ok(r.list(&ProcessFilter::any()).await, "list");
    assert_eq!(listed.len(), 1, "nothing was created on the way");
}
