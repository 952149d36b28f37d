//! The process page's actions. Each answers a fragment for `#action-result`: a
//! note when it landed, or the server's error (code and message) verbatim. A
//! form that is not the page's (a field it does not have, one given twice,
//! another content type) is refused before anything is done ([`ActionForm`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{AbandonRequest, Outcome, ProcessRecord, ProcessStatus};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Viewer, Visitor};
use crate::input::{ActionForm, Fields};
use crate::pages;
use crate::process::{refused, IdPath};
use crate::{time, Shared};

fn invalid(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        pages::error_fragment("invalid_request", &message),
    )
        .into_response()
}

/// Whether the parser stopped at its own nesting limit (128 levels).
fn too_deep(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

/// Why the form's field `what` (its text `text`) is not a JSON value it
/// takes. Nested past the parser's own limit, it is said as the 64 level
/// limit a value just under that is refused with (as the API says it), not
/// as where the parser stopped.
fn not_json(what: &str, text: &str, e: &serde_json::Error) -> String {
    if too_deep(e) {
        cairn_core::validate::too_deep_message(what, cairn_core::validate::json_text_depth(text.as_bytes()).0)
    } else {
        format!("{what} is not JSON: {e}")
    }
}

/// Who a write is recorded as: what the API records for the same caller.
fn acting_as(viewer: &Viewer) -> String {
    match viewer {
        Viewer::Host => "host".to_string(),
        Viewer::Session(id) => format!("session:{id}"),
    }
}

/// The signal form's fields (`process::actions`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalForm {
    name: String,
    signal_id: String,
    #[serde(default)]
    payload: String,
}

impl Fields for SignalForm {
    const FIELDS: &'static [&'static str] = &["name", "signal_id", "payload"];
}

/// `POST /ui/processes/{id}/signal`.
pub(crate) async fn signal(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    ActionForm(form): ActionForm<SignalForm>,
) -> Response {
    let payload: Value = if form.payload.trim().is_empty() {
        Value::Null
    } else {
        // Strict, as the API reads a body: a key given twice is refused, not
        // taken at its last value.
        match cairn_core::validate::parse_strict_json(form.payload.as_bytes()) {
            Ok(v) => v,
            Err(e) => return invalid(not_json("payload", &form.payload, &e)),
        }
    };
    if let Err(e) = d.access.check_visible(&visitor.viewer, &id).await {
        return refused(&e);
    }
    match d
        .processes
        .signal(&id, form.name.trim(), &form.signal_id, payload)
        .await
    {
        Ok(event) => pages::ok_fragment(&format!(
            "signal sent: event #{} ({})",
            event.sequence, event.event_type
        ))
        .into_response(),
        Err(e) => refused(&e),
    }
}

/// The cancel and abandon forms' one field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonForm {
    #[serde(default)]
    reason: String,
}

impl Fields for ReasonForm {
    const FIELDS: &'static [&'static str] = &["reason"];
}

/// `POST /ui/processes/{id}/cancel`.
pub(crate) async fn cancel(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    ActionForm(form): ActionForm<ReasonForm>,
) -> Response {
    if let Err(e) = d.access.check_visible(&visitor.viewer, &id).await {
        return refused(&e);
    }
    let reason = Some(form.reason.trim().to_string()).filter(|r| !r.is_empty());
    // Whether it had ended before this request (a process this request
    // cancels at once ends `cancelled` too): read first, for the words only,
    // as `cairn cancel` reads it.
    let ended_before = d.processes.get(&id).await.is_ok_and(|r| r.is_terminal());
    match d.processes.cancel(&id, reason.clone()).await {
        Ok(r) => pages::ok_fragment(&cancel_note(&r, ended_before, reason.as_deref())).into_response(),
        Err(e) => refused(&e),
    }
}

/// What a cancel's answer `r` shows, in `cairn cancel`'s words: a request
/// for a process that had ended (`ended_before`, read just ahead of it) is
/// a repeat of the one recorded before it ended (`reason` again), which
/// wrote nothing, or went to its running children; else it was requested.
fn cancel_note(r: &ProcessRecord, ended_before: bool, reason: Option<&str>) -> String {
    let status = r.status.label();
    let repeats = r
        .cancel_request
        .as_ref()
        .is_some_and(|c| c.reason.as_deref().filter(|r| !r.trim().is_empty()) == reason);
    if ended_before && repeats {
        // The server answers the record and writes nothing, whether that
        // request cancelled it or it ended otherwise first.
        if r.status == ProcessStatus::Cancelled {
            "the process was already cancelled: this repeats the request that cancelled it".into()
        } else {
            format!(
                "the process had already ended ({status}); this repeats the cancellation requested before it ended, \
                 and changed nothing"
            )
        }
    } else if ended_before
        || matches!(
            r.status,
            ProcessStatus::Completed | ProcessStatus::Failed | ProcessStatus::Abandoned
        )
    {
        // Answered for a process that had ended: the request went to its
        // running children (SPEC §13).
        format!("the process had already ended ({status}); the cancellation went to its running children")
    } else {
        format!("cancellation requested; the process is {status}")
    }
}

/// `POST /ui/processes/{id}/abandon`.
pub(crate) async fn abandon(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    ActionForm(form): ActionForm<ReasonForm>,
) -> Response {
    if let Err(e) = d.access.check_visible(&visitor.viewer, &id).await {
        return refused(&e);
    }
    let by = acting_as(&visitor.viewer);
    let reason = form.reason.trim();
    // The first request stands: a later one answers the record as it is and
    // records nothing. What was there before says which this one was.
    let before = match d.processes.get(&id).await {
        Ok(r) => r.abandon_request,
        Err(e) => return refused(&e),
    };
    match d.processes.request_abandon(&id, &by, reason).await {
        Ok(r) => pages::ok_fragment(&abandon_note(&r, before.as_ref(), &by, reason)).into_response(),
        Err(e) => refused(&e),
    }
}

/// What an abandon request's answer `r` shows: whether this request
/// (`by`, `reason`) was recorded, an earlier one stands (`before`, read just
/// ahead of it), or the process has ended.
fn abandon_note(r: &ProcessRecord, before: Option<&AbandonRequest>, by: &str, reason: &str) -> String {
    if r.is_terminal() {
        return format!(
            "nothing new was recorded: the process has ended; the process is {}",
            r.status.label()
        );
    }
    // A process without a live lease (externally owned, suspended in a
    // durable wait, or its owner gone: lapsed by the time of the record's
    // last write) is reconciled at the worker's next pass.
    let when = if r.lease.as_ref().is_some_and(|l| l.expires_at_ms > r.updated_at_ms) {
        "once the lease lapses"
    } else {
        "shortly"
    };
    match &r.abandon_request {
        Some(req) if before.is_none() && req.requested_by == by && req.reason == reason => {
            format!("abandon request recorded; it is reconciled {when}")
        }
        Some(req) => format!(
            "an abandon request by {} ({}) was already recorded and stands; nothing new was recorded; it is reconciled {when}",
            req.requested_by,
            time::absolute(req.requested_at_ms)
        ),
        None => format!(
            "no abandon request was recorded; the process is {}",
            r.status.label()
        ),
    }
}

/// The complete form's one field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteForm {
    outcome: String,
}

impl Fields for CompleteForm {
    const FIELDS: &'static [&'static str] = &["outcome"];
}

/// `POST /ui/processes/{id}/complete` (externally owned processes).
pub(crate) async fn complete(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    ActionForm(form): ActionForm<CompleteForm>,
) -> Response {
    // Read as the API and MCP read a completion's outcome: `success`,
    // `failure` or `cancelled` (abandoning is an abandon request's).
    let outcome: Outcome = match cairn_core::validate::parse_strict_json(form.outcome.as_bytes())
        .and_then(Outcome::deserialize_completion)
    {
        Ok(o) => o,
        Err(e) if too_deep(&e) => return invalid(not_json("outcome", &form.outcome, &e)),
        Err(e) => return invalid(format!("outcome: {e}")),
    };
    if let Err(e) = d.access.check_visible(&visitor.viewer, &id).await {
        return refused(&e);
    }
    match d
        .processes
        .complete_external(&id, outcome, &acting_as(&visitor.viewer))
        .await
    {
        Ok(r) => pages::ok_fragment(&format!("completed: the process is {}", r.status.label())).into_response(),
        Err(e) => refused(&e),
    }
}
