//! Abandon requests, their reconciliation, and external completion.

use cairn_core::events as ev;
use cairn_core::{
    AbandonEvidence, AbandonRequest, AbandonWriter, AppendRequest, Outcome, OwnerIdentity, ProcessStatus,
};
use serde_json::json;

use crate::builders::*;
use crate::harness::{ok, Harness};
use crate::StoreFactory;

const TTL: u64 = 5_000;

/// `request_abandon` appends `process.abandon_requested`; the first request wins and
/// repeats change nothing; it never ends the process by itself.
pub async fn request_abandon_is_an_event(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("p")).await;
    h.claim_started("p", "w1", TTL).await;
    h.advance(2);
    let rec = ok(
        h.registry().request_abandon("p", "operator", "stuck").await,
        "request_abandon",
    );
    let folded = h.check("p").await;
    assert_eq!(rec, folded.record);
    assert_eq!(
        rec.status,
        ProcessStatus::Running,
        "a request alone never ends a process"
    );
    assert_eq!(
        rec.abandon_request,
        Some(AbandonRequest {
            requested_by: "operator".into(),
            requested_at_ms: h.now(),
            reason: "stuck".into(),
        })
    );
    let last = folded.events.last().expect("event");
    assert_eq!(last.event_type, ev::ABANDON_REQUESTED);
    assert_eq!(last.payload.get("requested_by"), Some(&json!("operator")));
    assert_eq!(last.payload.get("reason"), Some(&json!("stuck")));
    h.advance(2);
    let again = h
        .no_change(
            "second abandon request",
            h.registry().request_abandon("p", "someone-else", "other"),
        )
        .await;
    assert_eq!(again, rec, "the first request wins");
    h.rejects(
        "invalid_request",
        "empty requested_by",
        h.registry().request_abandon("p", "", "x"),
    )
    .await;
    h.register(owner_bound("q")).await;
    for reason in ["", "  "] {
        h.rejects(
            "invalid_request",
            "an abandon request without a reason",
            h.registry().request_abandon("q", "host", reason),
        )
        .await;
    }
}

/// A pending abandon request whose lease lapsed is on the abandon worklist
/// behind any backlog of queued work: a page of it is never taken up by run
/// candidates that became claimable earlier.
pub async fn abandon_worklist_is_not_hidden_by_queued_work(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    for i in 0..5 {
        h.register(rerunnable(&format!("queued-{i}"))).await;
    }
    h.register(owner_bound("stuck")).await;
    h.claim_started("stuck", "w1", TTL).await;
    ok(
        h.registry().request_abandon("stuck", "operator", "stuck").await,
        "request_abandon",
    );
    h.advance(TTL);
    let items = h.no_change("abandon worklist", h.registry().abandon_worklist(2)).await;
    assert_eq!(items, ["stuck"], "found past the queued work");
}

/// `reconcile_abandon` answers `None` while the lease is live (or without a request),
/// and writes `abandoned {reconciled_request}` once the lease lapsed.
pub async fn reconcile_abandon_waits_for_lease(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("p")).await;
    h.register(rerunnable("no-request")).await;
    let (lease, _) = h.claim_started("p", "w1", TTL).await;
    let none = h
        .no_change(
            "reconcile without request",
            h.registry().reconcile_abandon("no-request"),
        )
        .await;
    assert!(none.is_none());
    ok(
        h.registry().request_abandon("p", "operator", "stuck").await,
        "request_abandon",
    );
    h.advance(TTL - 1);
    let live = h
        .no_change("reconcile under a live lease", h.registry().reconcile_abandon("p"))
        .await;
    assert!(live.is_none(), "a live lease holds the reconciliation off");
    h.advance(1);
    let rec = ok(h.registry().reconcile_abandon("p").await, "reconcile").expect("the lease lapsed");
    let folded = h.check("p").await;
    assert_eq!(rec, folded.record);
    assert_eq!(rec.status, ProcessStatus::Abandoned);
    assert_eq!(
        rec.outcome,
        Some(Outcome::Abandoned {
            evidence: AbandonEvidence {
                writer: AbandonWriter::ReconciledRequest,
                owner: Some(OwnerIdentity {
                    owner_id: "w1".into(),
                    fencing_token: lease.fencing_token,
                    node: None,
                    incarnation: None,
                }),
                epoch_ms: h.now(),
            }
        })
    );
    assert_eq!(folded.types().last().copied(), Some(ev::ABANDONED));
    assert!(h
        .no_change("reconcile again", h.registry().reconcile_abandon("p"))
        .await
        .is_none());
    // A retry of the request after it took effect reads the ended record.
    let again = h
        .no_change(
            "request again after it took effect",
            h.registry().request_abandon("p", "operator", "stuck"),
        )
        .await;
    assert_eq!(again, rec);
    h.rejects_any(
        &["process_terminal", "lease_fenced"],
        "the lapsed owner's completion",
        h.registry().complete(&lease, Outcome::success(json!(1))),
    )
    .await;

    // Free leases reconcile at once: a never-claimed rerunnable and an external process.
    for reg in [rerunnable("free"), external("ext")] {
        let id = reg.id.clone();
        h.register(reg).await;
        ok(h.registry().request_abandon(&id, "op", "gone").await, "request_abandon");
        let rec = ok(h.registry().reconcile_abandon(&id).await, "reconcile").expect("no lease");
        h.check(&id).await;
        assert_eq!(rec.status, ProcessStatus::Abandoned);
        match rec.outcome {
            Some(Outcome::Abandoned { evidence }) => assert_eq!(evidence.writer, AbandonWriter::ReconciledRequest),
            other => panic!("expected an abandoned outcome, got {other:?}"),
        }
    }
}

/// An abandon request does not fence the live owner: it may still finish its run,
/// after which there is nothing to reconcile.
pub async fn live_owner_may_finish_despite_abandon_request(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(owner_bound("p")).await;
    let (lease, _) = h.claim_started("p", "w1", TTL).await;
    ok(
        h.registry().request_abandon("p", "operator", "stuck").await,
        "request_abandon",
    );
    h.append("p", progress(1).with_lease(lease.clone())).await;
    let renewed = ok(h.registry().renew(&lease, TTL).await, "renew");
    let rec = ok(
        h.registry().complete(&renewed, Outcome::success(json!("done"))).await,
        "complete",
    );
    assert_eq!(rec.status, ProcessStatus::Completed);
    h.check("p").await;
    h.advance(TTL * 2);
    assert!(h
        .no_change("reconcile finished", h.registry().reconcile_abandon("p"))
        .await
        .is_none());
}

/// `complete_external` ends only externally owned processes (`not_externally_owned`
/// otherwise), records its authority, and never abandons (`invalid_outcome`).
pub async fn complete_external_only_for_externally_owned(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("e")).await;
    h.register(external("e2")).await;
    h.register(rerunnable("r")).await;
    h.register(owner_bound("b")).await;
    for id in ["r", "b"] {
        h.rejects(
            "not_externally_owned",
            id,
            h.registry().complete_external(id, Outcome::success(json!(1)), "ci"),
        )
        .await;
    }
    let abandoned = Outcome::Abandoned {
        evidence: AbandonEvidence {
            writer: AbandonWriter::Sweep,
            owner: None,
            epoch_ms: h.now(),
        },
    };
    h.rejects(
        "invalid_outcome",
        "external abandon",
        h.registry().complete_external("e", abandoned, "ci"),
    )
    .await;
    h.append("e", progress(1)).await;
    h.advance(9);
    let outcome = Outcome::success(json!({"url": "https://example.invalid/r/1"}));
    let answer = ok(
        h.registry().complete_external("e", outcome.clone(), "ci-bot").await,
        "complete_external",
    );
    assert!(answer.completed_now, "the first completion ends it");
    let rec = answer.process;
    let folded = h.check("e").await;
    assert_eq!(rec, folded.record);
    assert_eq!(rec.status, ProcessStatus::Completed);
    assert_eq!(rec.outcome, Some(outcome.clone()));
    assert_eq!(rec.terminal_at_ms, Some(h.now()));
    let last = folded.events.last().expect("terminal event");
    assert_eq!(last.event_type, ev::COMPLETED);
    assert_eq!(last.payload.get("completed_by"), Some(&json!("ci-bot")));

    let failure = Outcome::failure("remote", "E42", "remote failure");
    let failed = ok(
        h.registry().complete_external("e2", failure.clone(), "ci").await,
        "complete_external failure",
    );
    assert!(failed.completed_now);
    assert_eq!(failed.process.status, ProcessStatus::Failed);
    h.check("e2").await;
    // A repeated failure ended nothing either: its answer says so, so
    // nothing is told of an end again.
    let again = ok(
        h.registry().complete_external("e2", failure, "ci").await,
        "the same failure again",
    );
    assert_eq!((again.completed_now, &again.process), (false, &failed.process));
    h.register(external("blank")).await;
    for blank in [
        Outcome::failure("", "E1", "m"),
        Outcome::failure("remote", " ", "m"),
        Outcome::failure("remote", "E1", ""),
        Outcome::Cancelled {
            message: String::new(),
            raw: None,
        },
    ] {
        h.rejects(
            "invalid_outcome",
            "an outcome with an empty field",
            h.registry().complete_external("blank", blank, "ci"),
        )
        .await;
    }
    // The same completion again (a retry after a lost reply) answers the
    // record it made and writes nothing; another outcome is refused.
    let again = ok(
        h.registry().complete_external("e", outcome.clone(), "ci-bot").await,
        "the same complete_external again",
    );
    assert!(!again.completed_now, "a repeat ends nothing");
    assert_eq!(again.process, rec);
    assert_eq!(
        h.check("e").await.events.len() as u64,
        rec.last_sequence,
        "nothing appended"
    );
    h.rejects(
        "process_terminal",
        "another outcome",
        h.registry()
            .complete_external("e", Outcome::success(json!(2)), "ci-bot"),
    )
    .await;
    // The refusal names the outcome that stands: a failure's class and
    // code, the start of a success's value.
    for (id, stands) in [
        ("e2", "already ended failed (remote/E42)"),
        (
            "e",
            r#"already ended completed with {"url":"https://example.invalid/r/1"}"#,
        ),
    ] {
        let said = h
            .registry()
            .complete_external(id, Outcome::success(json!(2)), "ci")
            .await
            .expect_err("another outcome")
            .to_string();
        assert!(said.contains(stands), "{id}: the refusal names what stands: {said}");
    }
    // External owners may also append their own terminal types without a lease.
    h.register(external("e3")).await;
    h.append("e3", AppendRequest::new(FINISHED, json!({"result": 3}))).await;
    assert_eq!(h.get("e3").await.outcome, Some(Outcome::success(json!(3))));
}

/// A core terminal event appended by hand (`process.failed`,
/// `process.cancelled`) ends the process as an external completion does, so
/// its outcome is held to what `complete_external` takes: a blank field is
/// refused with the same code and message, and nothing is written; under a
/// lease as well as without one.
pub async fn appended_terminal_is_checked_as_a_completion(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("e")).await;
    h.register(rerunnable("r")).await;
    let (lease, _) = h.claim_started("r", "w1", TTL).await;
    let blanks = [
        Outcome::failure("", "E1", "m"),
        Outcome::failure("remote", " ", "m"),
        Outcome::failure("remote", "E1", ""),
        Outcome::failure("remote", "E1", " \n"),
        Outcome::Cancelled {
            message: String::new(),
            raw: None,
        },
    ];
    for outcome in blanks {
        let completion = h
            .registry()
            .complete_external("e", outcome.clone(), "ci")
            .await
            .expect_err("a completion with a blank field");
        let event_type = ev::terminal_event_type(outcome.state());
        let payload = json!({ "await_output": outcome });
        let appended = h
            .rejects(
                "invalid_outcome",
                "a core terminal appended with a blank field",
                h.registry()
                    .append_event("e", AppendRequest::new(event_type, payload.clone())),
            )
            .await;
        assert_eq!(
            appended.to_string(),
            completion.to_string(),
            "the append is refused as the completion is"
        );
        h.rejects(
            "invalid_outcome",
            "a core terminal appended under the lease with a blank field",
            h.registry()
                .append_event("r", AppendRequest::new(event_type, payload).with_lease(lease.clone())),
        )
        .await;
    }
    // What a completion takes is taken; the record says what was appended.
    let cancelled = Outcome::Cancelled {
        message: "superseded".into(),
        raw: None,
    };
    h.append(
        "e",
        AppendRequest::new(ev::CANCELLED, json!({ "await_output": cancelled })),
    )
    .await;
    let rec = h.get("e").await;
    assert_eq!(rec.status, ProcessStatus::Cancelled);
    assert_eq!(rec.outcome, Some(cancelled));
    h.append(
        "r",
        AppendRequest::new(
            ev::FAILED,
            json!({ "await_output": Outcome::failure("tool", "E2", "broke") }),
        )
        .with_lease(lease),
    )
    .await;
    assert_eq!(h.get("r").await.status, ProcessStatus::Failed);
}
