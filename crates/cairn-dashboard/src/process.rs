//! A process: its record, its live timeline and its actions.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{CairnError, Disposition, Originator, ProcessFilter, ProcessRecord, SessionScope, StatusFilter};
use maud::{html, Markup};

use crate::auth::{Viewer, Visitor};
use crate::list::encode_path;
use crate::pages::{self, Nav};
use crate::{time, Shared};

/// The `{id}` path segment.
pub(crate) struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(e) => {
                let e: PathRejection = e;
                Err(bad_address(parts, &e.body_text()))
            }
        }
    }
}

/// A path segment that cannot be read (not UTF-8): a page saying so, with the
/// navigation, to a browser navigating to it; the fragment to htmx (and to a
/// live stream or an action), which shows it in place.
fn bad_address(parts: &Parts, message: &str) -> Response {
    let navigated = !parts.headers.contains_key("hx-request")
        && matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD)
        && !parts
            .headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let visitor = parts.extensions.get::<Visitor>();
    let (Some(visitor), true) = (visitor, navigated) else {
        return bad_request(message);
    };
    let path = parts.uri.path();
    let (nav, back, label) = if path.starts_with("/ui/modules/") {
        (Nav::Modules, "/ui/modules", "← Modules")
    } else if path.starts_with("/ui/schedules/") {
        (Nav::Schedules, "/ui/schedules", "← Schedules")
    } else if path.starts_with("/ui/sessions/") {
        (Nav::Sessions, "/ui/sessions", "← Sessions")
    } else {
        (Nav::Processes, "/ui/processes", "← Processes")
    };
    let body = html! {
        h1 { "Bad address" }
        (pages::error_fragment("invalid_request", message))
        p { a href=(back) { (label) } }
    };
    (
        StatusCode::BAD_REQUEST,
        pages::layout("Bad address", visitor, nav, body),
    )
        .into_response()
}

/// A request the dashboard cannot read (a path or query that does not
/// parse): 400 with the `invalid_request` fragment htmx shows in place.
pub(crate) fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        pages::error_fragment("invalid_request", message),
    )
        .into_response()
}

/// The HTTP status the dashboard answers a refused call with: the request's
/// fault (4xx) or the store's (5xx).
pub(crate) fn status_for(e: &CairnError) -> StatusCode {
    match e.code() {
        "unknown_process" | "unknown_wake" | "unknown_tool" | "unknown_env" | "unknown_schedule" | "unknown_module"
        | "unknown_export" | "unknown_model" => StatusCode::NOT_FOUND,
        "no_longer_retained" => StatusCode::GONE,
        "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "storage" | "corrupt_env" => StatusCode::INTERNAL_SERVER_ERROR,
        "unavailable" | "outcome_unknown" => StatusCode::SERVICE_UNAVAILABLE,
        "registration_conflict"
        | "replay_conflict"
        | "process_terminal"
        | "lease_held"
        | "lease_fenced"
        | "not_claimable"
        | "not_externally_owned"
        | "schedule_conflict" => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A refused call as a fragment carrying the server's error verbatim.
pub(crate) fn refused(e: &CairnError) -> Response {
    (status_for(e), pages::error_fragment(e.code(), &e.to_string())).into_response()
}

/// The latest events a process page's timeline starts with; the earlier
/// ones on asking (`?all=true`). A long shell run or script logs thousands,
/// each up to a mebibyte, and a tab holding them all slows to a crawl.
pub(crate) const TIMELINE_SHOWN: u64 = 500;

/// Query of `GET /ui/processes/{id}`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PageQuery {
    /// The whole timeline, not its latest [`TIMELINE_SHOWN`] events.
    all: bool,
    /// The timeline from this event on (or its latest [`TIMELINE_SHOWN`],
    /// when it is among them), however many follow it, none dropped as more
    /// arrive: a link to one event, such as a wake's, lands on it.
    from: Option<u64>,
}

impl crate::input::Params for PageQuery {
    const KEYS: &'static [&'static str] = &["all", "from"];
}

/// The page of process `id` when it cannot be shown: its id is not one
/// (`invalid_id`), no such process is visible, or it was pruned (what its
/// tombstone says).
pub(crate) fn failed_page(visitor: &Visitor, id: &str, e: &CairnError) -> Response {
    let body = html! {
        h1 { "Process " code { (pages::id(id)) } }
        @if let CairnError::NoLongerRetained(gone) = e {
            // What the tombstone says, with its times as people read them.
            div.result.err role="alert" {
                code.code { (e.code()) } ": it ended " (pages::status(gone.status)) " "
                (time::when(gone.terminal_at_ms)) " and was pruned "
                (time::when(gone.pruned_at_ms)) "; its record and events are gone."
            }
        } @else {
            (pages::error_fragment(e.code(), &e.to_string()))
        }
        p { a href="/ui/processes" { "← Processes" } }
    };
    (status_for(e), pages::layout(id, visitor, Nav::Processes, body)).into_response()
}

/// `GET /ui/processes/{id}`.
pub(crate) async fn page(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    query: Result<crate::input::UiQuery<PageQuery>, crate::input::Refusal>,
) -> Response {
    let (all, from) = match query {
        Ok(crate::input::UiQuery(q)) => (q.all, q.from),
        Err(refusal) => {
            let body = html! {
                h1 { "Process " code { (pages::id(&id)) } }
                (refusal.fragment())
                p { a href="/ui/processes" { "← Processes" } }
            };
            return (refusal.status, pages::layout(&id, &visitor, Nav::Processes, body)).into_response();
        }
    };
    let record = match d.access.check_visible(&visitor.viewer, &id).await {
        Ok(()) => d.processes.get(&id).await,
        Err(e) => Err(e),
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => return failed_page(&visitor, &id, &e),
    };
    let path = encode_path(&record.id);
    let children = children_of(&d, &visitor, &record.id).await;
    let parent = parent_openable(&d, &visitor, &record).await;
    // Events before this one are left out unless asked for.
    let left_out = if all {
        0
    } else {
        let latest = record.last_sequence.saturating_sub(TIMELINE_SHOWN);
        from.map_or(latest, |from| latest.min(from.saturating_sub(1)))
    };
    // A timeline shown from an event keeps all it shows as more arrive: that
    // event would be the first dropped.
    let keep = (!all && from.is_none()).then_some(TIMELINE_SHOWN);
    let body = html! {
        p.crumbs { a href="/ui/processes" { "← Processes" } }
        h1.pid { code { (pages::id(&record.id)) } }
        div.process hx-ext="sse" sse-connect={ "/ui/processes/" (path) "/live?after=" (left_out) } sse-close="end" {
            (crate::pages::login_listener())
            section #record hx-get={ "/ui/processes/" (path) "/record" } hx-trigger="sse:record delay:100ms" hx-swap="innerHTML" {
                (record_panel(&record, parent))
            }
            (children_section(&record, &children, false))
            section.actions {
                h2 { "Actions" }
                div #action-result aria-live="polite" {}
                div #action-forms { (actions(&record, &path)) }
            }
            section.timeline-box {
                h2 { "Timeline" }
                @if left_out > 0 {
                    p.hint.more { "The earliest " (left_out) " events are left out. "
                        a href={ "/ui/processes/" (path) "?all=true" } { "Show them all" } }
                }
                // Without `all`, the page keeps its latest events as more
                // arrive (`app.js`). A link to an event left out goes to the
                // timeline from it (`app.js`).
                ol #timeline sse-swap="timeline" hx-swap="beforeend" data-keep=[keep]
                    data-left-out=[(left_out > 0).then_some(left_out)] {}
                div #timeline-failed sse-swap="failed,cleared" {}
            }
        }
    };
    pages::layout(&record.id, &visitor, Nav::Processes, body).into_response()
}

/// Most children a process page lists; past that it links to the list of all.
const CHILDREN_SHOWN: usize = 100;

/// The children a process page lists.
struct Children {
    /// The first [`CHILDREN_SHOWN`] by id, those the visitor may see.
    shown: Vec<ProcessRecord>,
    /// More exist past the first [`CHILDREN_SHOWN`].
    more: bool,
    /// The store failed to list them: said in the section, not shown as none.
    failed: Option<cairn_core::CairnError>,
}

/// The first [`CHILDREN_SHOWN`] processes whose provenance names `id` as their
/// parent, in any status, that the visitor may see, and whether there are more.
async fn children_of(d: &crate::Inner, visitor: &Visitor, id: &str) -> Children {
    let filter = ProcessFilter {
        status: StatusFilter::Any,
        caused_by: Some(id.to_string()),
        limit: Some(CHILDREN_SHOWN + 1),
        ..ProcessFilter::default()
    };
    // A session viewer reads through its grants, the lens `GET
    // /v1/processes?caused_by=` gives it: what it may not see is neither
    // shown nor counted.
    // A page cut at its bytes names a next page too, shorter than asked.
    let listed: cairn_core::Result<(Vec<ProcessRecord>, bool)> = match &visitor.viewer {
        Viewer::Session(own) => d
            .processes
            .list_granted_to(&SessionScope::session(own.as_str()), &filter)
            .await
            .map(|page| {
                let cut = page.next_after_id.is_some();
                (page.items.into_iter().map(|g| g.process).collect(), cut)
            }),
        Viewer::Host => d.processes.list(&filter).await.map(|page| {
            let cut = page.next_after_id.is_some();
            (page.items, cut)
        }),
    };
    let (mut shown, cut, failed) = match listed {
        Ok((shown, cut)) => (shown, cut, None),
        Err(e) => (Vec::new(), false, Some(e)),
    };
    let more = shown.len() > CHILDREN_SHOWN || cut;
    shown.truncate(CHILDREN_SHOWN);
    Children { shown, more, failed }
}

/// The children section, `#children`: on the page, and out of band in every
/// record fragment, so children started or ended since the page loaded show
/// (a child's start appends nothing to its parent; the live stream's periodic
/// `record` notice covers it). Hidden while there is nothing to list, so the
/// fragment always has a target. The live stream ends with the parent: a
/// child still running then is said to be shown as it was, with a reload.
fn children_section(parent: &ProcessRecord, children: &Children, oob: bool) -> Markup {
    let Children { shown, more, failed } = children;
    let id = parent.id.as_str();
    let empty = shown.is_empty() && !more && failed.is_none();
    let stale = parent.is_terminal() && shown.iter().any(|c| !c.is_terminal());
    let count = if *more {
        format!("(first {})", shown.len())
    } else {
        format!("({})", shown.len())
    };
    html! {
        section #children .children hidden[empty] hx-swap-oob=[oob.then_some("true")] {
            @if let Some(e) = failed {
                h2 { "Children" }
                (pages::error_fragment(e.code(), &e.to_string()))
            } @else if !empty {
                h2 { "Children " span.count { (count) } }
                @if *more {
                    p.hint.more { "The first " (CHILDREN_SHOWN) " by id, as text sorts them. "
                        a href=(crate::list::children_href(id)) { "All of them, newest first" } }
                }
                @if stale {
                    p.hint.stale { "This process has ended, so this list no longer updates: "
                        "it shows its children as they were when it was read. "
                        a href={ "/ui/processes/" (encode_path(id)) } { "Reload" } " to see them now." }
                }
                ul {
                    @for c in shown {
                        li data-child=(c.id) {
                            (pages::status_of(c)) " "
                            a href={ "/ui/processes/" (encode_path(&c.id)) } { code { (pages::id(&c.id)) } }
                            " " code { (pages::id(&c.input.definition())) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/processes/{id}/record`: the record panel (re-rendered live), and
/// the children section out of band.
pub(crate) async fn record(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    query: Result<crate::input::UiQuery<crate::input::NoParams>, crate::input::Refusal>,
) -> Response {
    // The page asks for it by a bare address (`hx-get`, no form around it).
    if let Err(refusal) = query {
        return refusal.into_response();
    }
    let record = match d.access.check_visible(&visitor.viewer, &id).await {
        Ok(()) => d.processes.get(&id).await,
        Err(e) => Err(e),
    };
    let r = match record {
        Ok(r) => r,
        Err(e) => return refused(&e),
    };
    let children = children_of(&d, &visitor, &r.id).await;
    let parent = parent_openable(&d, &visitor, &r).await;
    html! {
        (record_panel(&r, parent))
        (children_section(&r, &children, true))
        // Once the process has ended, its action forms go too (out of band:
        // `#action-result` keeps what the last action said).
        @if r.is_terminal() {
            div #action-forms hx-swap-oob="true" { (ended()) }
        }
    }
    .into_response()
}

/// The sessions page's `session` for `scope`: `SESSION`, or
/// `SESSION/frame:FRAME` for an agent frame's (whose processes list there).
fn lens_of(scope: &SessionScope) -> String {
    match &scope.agent_frame_id {
        Some(frame) => format!("{}{}{frame}", scope.session_id, cairn_core::validate::FRAME_SEPARATOR),
        None => scope.session_id.clone(),
    }
}

fn disposition_label(d: Disposition) -> String {
    serde_json::to_value(d)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{d:?}"))
}

/// Whether the visitor may open the parent process `r` names: a session
/// viewer is not linked to a parent not granted to it (its page answers
/// 404). A pruned parent the session held keeps its link: its page says so.
async fn parent_openable(d: &crate::Inner, visitor: &Visitor, r: &ProcessRecord) -> bool {
    let Some(parent) = r.provenance.caused_by.as_ref().and_then(|c| c.parent_process()) else {
        return false;
    };
    !matches!(
        d.access.check_visible(&visitor.viewer, parent).await,
        Err(CairnError::UnknownProcess(_))
    )
}

/// The record panel; `parent_open`: the visitor may open the parent process.
fn record_panel(r: &ProcessRecord, parent_open: bool) -> Markup {
    html! {
        // The signal the process waits for, if any: the signal form's
        // proposal follows it as the panel re-renders (`app.js`).
        div.summary data-status=(r.status.label()) data-signal=(waiting_for(r)) {
            (pages::status_of(r))
            " " code { (pages::id(&r.input.definition())) }
            " · " span.disp title="recovery disposition" { (disposition_label(r.disposition)) }
        }
        dl.facts {
            dt { "Created" } dd { (time::when(r.created_at_ms)) }
            dt { "Updated" } dd { (time::when(r.updated_at_ms)) }
            @if let Some(t) = r.terminal_at_ms { dt { "Ended" } dd { (time::when(t)) } }
            dt { "Last sequence" } dd { (r.last_sequence) }
            dt { "Originator" } dd {
                @match &r.provenance.originator {
                    // The scope shown: a frame's processes list on its own page.
                    Originator::Session { scope } => a href={ "/ui/sessions?session=" (encode_path(&lens_of(scope))) } { (pages::id(&scope.scope_id())) },
                    other => (pages::id(&other.scope_id())),
                }
            }
            @if let Some(c) = &r.provenance.caused_by {
                dt { "Caused by" } dd {
                    @if let Some(parent) = c.parent_process() {
                        "parent process "
                        @if parent_open { a.parent href={ "/ui/processes/" (encode_path(parent)) } { (pages::id(parent)) } }
                        @else { code.parent title="not granted to this session" { (pages::id(parent)) } }
                    } @else {
                        (pages::text(c.kind.as_deref().unwrap_or_default())) " " code { (pages::id(c.id.as_deref().unwrap_or_default())) }
                    }
                }
            }
            @if let Some(w) = &r.wake_target { dt { "Wake target" } dd { (pages::id(&w.scope_id())) } }
            @if let Some(x) = &r.external_ref {
                dt { "External" } dd.external { (pages::id(&x.backend)) " " code { (pages::id(&x.id)) } }
            }
            @if let Some(e) = &r.env_ref { dt { "Environment" } dd { code { (pages::id(e)) } } }
        }
        div.panels {
            @if let Some(o) = &r.outcome {
                div.panel.outcome { h3 { "Outcome" } (pages::json_of(o)) }
            }
            @if let Some(w) = &r.wait {
                div.panel.wait {
                    h3 { "Waiting" }
                    p { "for " (pages::text(&w.kind)) @if let Some(n) = &w.name { " " code { (pages::text(n)) } }
                        @if let Some(k) = w.ordinal { " (#" (k) ")" }
                        " since " (time::when(w.since_ms))
                        @if let Some(until) = w.until_ms {
                            @if w.due_timer { ", until a timer's due time " (time::when(until)) }
                            @else { ", until " (time::when(until)) }
                        } }
                    @if let Some(ids) = &w.ids {
                        p.wait-children {
                            @match w.mode { Some(cairn_core::model::ChildrenMode::Any) => "any of ", _ => "all of " }
                            @for (i, id) in ids.iter().enumerate() {
                                @if i > 0 { ", " }
                                a href={ "/ui/processes/" (encode_path(id)) } { code { (pages::id(id)) } }
                            }
                        }
                    }
                    @if let Some(names) = &w.signals {
                        p.wait-signals {
                            "or a signal "
                            @for (i, name) in names.iter().enumerate() {
                                @if i > 0 { ", " }
                                code { (pages::text(name)) }
                            }
                        }
                    }
                }
            }
            @if let Some(l) = &r.lease {
                div.panel.lease {
                    h3 { "Lease" }
                    p { "held by " code { (pages::id(&l.owner_id)) } ", fencing token " (l.fencing_token) ", expires " (time::when(l.expires_at_ms)) }
                }
            }
            @if let Some(a) = &r.abandon_request {
                div.panel.abandon {
                    h3 { "Abandon requested" }
                    p { "by " code { (pages::id(&a.requested_by)) } " " (time::when(a.requested_at_ms)) ": " (pages::text(&a.reason)) }
                }
            }
            @if let Some(c) = &r.cancel_request {
                div.panel.cancel {
                    h3 { "Cancel requested" }
                    p { (time::when(c.requested_at_ms)) @if let Some(reason) = &c.reason { ": " (pages::text(reason)) } }
                }
            }
            // A process's input never changes: the live re-render keeps the
            // element on the page as it is, open if it was opened.
            details.panel.input #record-input hx-preserve="true" {
                summary { "Input" }
                (pages::json_of(&input_shown(&r.input)))
            }
        }
    }
}

/// A process's input as the page shows it: a shell call's forwarded
/// environment named, its values (secrets, often) not shown.
fn input_shown(input: &cairn_core::ProcessInput) -> serde_json::Value {
    let mut shown = serde_json::to_value(input).unwrap_or(serde_json::Value::Null);
    cairn_core::tool::hide_shell_env(&mut shown);
    shown
}

/// What the actions say for a process that has ended: none of them can change
/// it any more (the runtime refuses a new signal, cancel, abandon or completion).
fn ended() -> Markup {
    html! { p.empty.ended { "This process has ended; there is nothing left to act on." } }
}

/// The name of what the process waits for (a signal's), or empty.
fn waiting_for(r: &ProcessRecord) -> &str {
    r.wait.as_ref().and_then(|w| w.name.as_deref()).unwrap_or_default()
}

/// The action forms of a process; none once it has ended.
fn actions(r: &ProcessRecord, path: &str) -> Markup {
    if r.is_terminal() {
        return ended();
    }
    let waiting_for = waiting_for(r);
    let signal_id = uuid::Uuid::new_v4().to_string();
    let external = r.disposition == Disposition::ExternallyOwned;
    html! {
        // A signal may be an approval a process waits for: asked first, as
        // cancel, abandon and complete are, naming the signal and the process
        // (`app.js` names the signal as the form holds it now). A window
        // another site opened gets no action from one click.
        form.action #signal-form hx-post={ "/ui/processes/" (path) "/signal" } hx-target="#action-result"
            hx-confirm={ "Send signal \u{201c}" (pages::plain(waiting_for)) "\u{201d} to process \u{201c}" (pages::plain(&r.id)) "\u{201d}?" }
            data-process=(pages::plain(&r.id)) {
            h3 { "Signal" }
            label { span { "Name" } input type="text" name="name" value=(waiting_for) data-proposed=(waiting_for) required
                // Browsers compile `pattern` with the `v` flag, where a `-`
                // in a class must be escaped, or the pattern is ignored.
                pattern=r"[A-Za-z0-9_\-]+"; }
            label { span { "Signal id" } input type="text" name="signal_id" value=(signal_id) required; }
            label.wide { span { "Payload (JSON)" } textarea name="payload" rows="3" spellcheck="false" { "{}" } }
            button type="submit" { "Send signal" }
        }
        form.action #cancel-form hx-post={ "/ui/processes/" (path) "/cancel" } hx-target="#action-result"
            hx-confirm="Request cancellation of this process?" {
            h3 { "Cancel" }
            label { span { "Reason" } input type="text" name="reason"; }
            button.danger type="submit" { "Request cancel" }
        }
        form.action #abandon-form hx-post={ "/ui/processes/" (path) "/abandon" } hx-target="#action-result"
            hx-confirm="Request that this process be abandoned?" {
            h3 { "Abandon request" }
            label { span { "Reason" } input type="text" name="reason" required; }
            button.danger type="submit" { "Request abandon" }
        }
        @if external {
            // It ends the process for good: asked first, as cancel and
            // abandon are (`app.js` names the outcome's type in the question).
            form.action #complete-form hx-post={ "/ui/processes/" (path) "/complete" } hx-target="#action-result"
                hx-confirm="Complete this process with this outcome? It ends the process for good." {
                h3 { "Complete (externally owned)" }
                label.wide { span { "Outcome (JSON)" }
                    textarea name="outcome" rows="3" spellcheck="false" { r#"{"type": "success", "value": null}"# }
                }
                button type="submit" { "Complete" }
            }
        }
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    /// The dashboard answers an error with the status the API gives it.
    #[test]
    fn statuses_are_the_apis() {
        let cases = [
            (
                CairnError::PayloadTooLarge {
                    what: "reason".into(),
                    size: 2,
                    limit: 1,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                CairnError::UnknownExport {
                    module_ref: "m".into(),
                    process_name: "f".into(),
                    exports: vec![],
                },
                StatusCode::NOT_FOUND,
            ),
            (CairnError::UnknownModel("m".into()), StatusCode::NOT_FOUND),
            (CairnError::UnknownProcess("p".into()), StatusCode::NOT_FOUND),
            (CairnError::InvalidRequest("x".into()), StatusCode::BAD_REQUEST),
        ];
        for (e, want) in cases {
            assert_eq!(status_for(&e), want, "{e}");
        }
    }
}
