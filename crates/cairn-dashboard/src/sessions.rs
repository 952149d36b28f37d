//! Sessions: what a session may address, what it originated, its pending wakes.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{ProcessFilter, ProcessRecord, SessionScope, StatusFilter};
use maud::{html, Markup};
use serde::Deserialize;

use crate::auth::{Viewer, Visitor};
use crate::input::{ActionForm, NoFields, Params, Refusal, UiQuery};
use crate::list::encode_path;
use crate::pages::{self, Nav};
use crate::{time, Shared};

/// Rows shown per list on the session page.
const SHOWN: usize = 200;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SessionQuery {
    session: String,
}

impl Params for SessionQuery {
    const KEYS: &'static [&'static str] = &["session"];
}

/// A session token naming another session: 403, as the API answers.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        pages::error_fragment("forbidden", "a session token may only address its own session"),
    )
        .into_response()
}

/// `GET /ui/sessions?session=ID`.
pub(crate) async fn page(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    q: Result<UiQuery<SessionQuery>, Refusal>,
) -> Response {
    // A refusal is said in the page, as the other pages say theirs.
    let (asked, mut refused) = match q {
        // Taken as given: an id may begin or end with a space.
        Ok(UiQuery(q)) => (q.session, None),
        Err(refusal) => (String::new(), Some((refusal.status, refusal.fragment()))),
    };
    // A session viewer sees its own session, whatever it asks for.
    let session = match &visitor.viewer {
        Viewer::Session(own) if asked.is_empty() => own.clone(),
        _ => asked,
    };
    // A session, or one of its agent frames (`SESSION/frame:FRAME`), read
    // as the API reads a lens's scope; a value no scope can have is
    // refused as the API refuses it (`invalid_filter`).
    let scope = match session.as_str() {
        "" => None,
        given => match cairn_core::validate::filter_scope("session", given) {
            Ok(scope) => Some(scope),
            Err(e) => {
                refused.get_or_insert((
                    crate::process::status_for(&e),
                    pages::error_fragment(e.code(), &e.to_string()),
                ));
                None
            }
        },
    };
    if let (Viewer::Session(own), Some(scope)) = (&visitor.viewer, &scope) {
        if scope.session_id != *own {
            refused.get_or_insert((
                StatusCode::FORBIDDEN,
                pages::error_fragment("forbidden", "a session token may only address its own session"),
            ));
        }
    }
    let mut status = StatusCode::OK;
    let content = if let Some((refusal, said)) = refused {
        status = refusal;
        said
    } else if let Some(scope) = &scope {
        match section(&d, &visitor.viewer, scope, &session).await {
            Ok(m) => m,
            Err(e) => {
                status = crate::process::status_for(&e);
                pages::error_fragment(e.code(), &e.to_string())
            }
        }
    } else {
        html! { p.hint { "Name a session to see its processes and pending wakes." } }
    };
    let body = html! {
        h1 { "Sessions" }
        form.filters method="get" action="/ui/sessions" role="search" {
            label { span { "Session id" }
                input type="text" name="session" value=(session) required autofocus[session.is_empty()];
            }
            div.buttons { button type="submit" { "Show" } }
        }
        (content)
    };
    (status, pages::layout("Sessions", &visitor, Nav::Sessions, body)).into_response()
}

/// What `scope` (named `named` in the box) may address and originated, and
/// its session's pending wakes: a wake is its session's to read and
/// acknowledge, whichever of its frames it is for.
async fn section(d: &crate::Inner, viewer: &Viewer, scope: &SessionScope, named: &str) -> cairn_core::Result<Markup> {
    let session = scope.session_id.as_str();
    // One more than shown, to tell a full list from a longer one.
    let filter = ProcessFilter {
        status: StatusFilter::Any,
        limit: Some(SHOWN + 1),
        ..ProcessFilter::default()
    };
    // A page cut at its bytes names a next page too, shorter than asked.
    let listed = d.processes.list_granted_to(scope, &filter).await?;
    let granted_more = listed.items.len() > SHOWN || listed.next_after_id.is_some();
    let mut granted = listed.items;
    granted.truncate(SHOWN);
    let originated = match viewer {
        // As in the API, the provenance lens needs the host token.
        Viewer::Host => {
            let listed = d.processes.list_originated_by(scope, &filter).await?;
            let more = listed.items.len() > SHOWN || listed.next_after_id.is_some();
            let mut o = listed.items;
            o.truncate(SHOWN);
            Some((o, more))
        }
        Viewer::Session(_) => None,
    };
    let mut wakes = d.processes.wakes(session, Some(SHOWN + 1)).await?;
    // A page that reached its bytes was cut there (a later wake may wait).
    let wakes_more = more_wakes(&wakes);
    wakes.truncate(SHOWN);
    // A wake is the session's, but its process need not be: one aimed at the
    // session by a process not granted to it is shown without a link the
    // viewer could not open.
    let mut openable = std::collections::HashSet::new();
    let mut checked = std::collections::HashSet::new();
    for w in &wakes {
        if checked.insert(w.process_id.as_str()) && d.access.check_visible(viewer, &w.process_id).await.is_ok() {
            openable.insert(w.process_id.as_str());
        }
    }
    let sid = encode_path(session);
    let q = encode_path(named);
    // The whole list, newest first and paged, is the processes page's lens.
    let all = |lens: &str, n: usize, more: bool| {
        html! {
            @if more {
                p.hint.more { "The first " (n) " by id. "
                    a href={ "/ui/processes?status=any&lens=" (lens) "&session=" (q) } { "All of them, newest first" } }
            }
        }
    };
    let count = |n: usize, more: bool| if more { format!("(first {n})") } else { format!("({n})") };
    Ok(html! {
        h2 { "Pending wakes " span.count #wakes-count { (count(wakes.len(), wakes_more)) } }
        @if scope.agent_frame_id.is_some() {
            p.hint { "Those of session " code { (pages::id(session)) } ", for any of its frames." }
        }
        @if wakes_more { p.hint.more { "The oldest " (wakes.len()) "; acknowledging them shows the next." } }
        @if wakes.is_empty() { p.empty { "No pending wake." } } @else {
            div #wake-result aria-live="polite" {}
            div.tablewrap { table.wakes {
                thead { tr { th { "Wake" } th { "Frame" } th { "Process" } th { "Event" } th { "Input" } th { "Created" } th {} } }
                tbody {
                    @for w in &wakes {
                        tr data-wake=(w.wake_id) {
                            td { code { (pages::id(&w.wake_id)) } }
                            // A frame's wake is for that agent frame alone; the
                            // others are the whole session's.
                            td.frame {
                                @if let Some(f) = &w.target_scope.agent_frame_id { code { (pages::id(f)) } }
                                @else { span.hint { "session" } }
                            }
                            @let open = openable.contains(w.process_id.as_str());
                            td {
                                @if open { a href={ "/ui/processes/" (encode_path(&w.process_id)) } { (pages::id(&w.process_id)) } }
                                @else { code title="not granted to this session" { (pages::id(&w.process_id)) } }
                            }
                            td { "#" (w.sequence) " " code { (w.event_type) } }
                            // Its start, as the timeline shows a payload: an
                            // input may be a mebibyte, and two hundred of them
                            // made a page of hundreds of megabytes.
                            td.input { (clip(&w.input))
                                @if open { " " a href={ "/ui/processes/" (encode_path(&w.process_id)) "?from=" (w.sequence) "#ev-" (w.sequence) } { "event" } } }
                            td { (time::when(w.created_at_ms)) }
                            td { button hx-post={ "/ui/sessions/" (sid) "/wakes/" (encode_path(&w.wake_id)) "/ack" }
                                   hx-target="closest tr" hx-swap="outerHTML" { "Acknowledge" } }
                        }
                    }
                }
            } }
        }
        h2 { "Granted to " code { (pages::id(named)) } " " span.count { (count(granted.len(), granted_more)) } }
        p.hint { "What the session may address (the security lens)." }
        (all("granted_to", granted.len(), granted_more))
        (records(granted.iter().map(|g| (&g.process, g.grant.descriptor.label.as_deref()))))
        @if let Some((originated, more)) = &originated {
            h2 { "Originated by " code { (pages::id(named)) } " " span.count { (count(originated.len(), *more)) } }
            p.hint { "What the session created, even if its grant moved (the provenance lens)." }
            (all("originated_by", originated.len(), *more))
            (records(originated.iter().map(|r| (r, None))))
        }
    })
}

pub(crate) fn records<'a>(rows: impl Iterator<Item = (&'a ProcessRecord, Option<&'a str>)>) -> Markup {
    let rows: Vec<_> = rows.collect();
    html! {
        @if rows.is_empty() { p.empty { "None." } } @else {
            div.tablewrap { table.processes {
                thead { tr { th { "Status" } th.c-id { "Id" } th.c-def { "Definition" } th { "Created" } } }
                tbody {
                    @for (r, label) in &rows {
                        tr data-id=(r.id) {
                            td { (pages::status_of(r)) }
                            td.id { a href={ "/ui/processes/" (encode_path(&r.id)) } { (pages::id(&r.id)) }
                                @if let Some(l) = label { " " small.hint { (pages::id(l)) } } }
                            td.c-def { code { (pages::id(&r.input.definition())) } }
                            td { (time::when(r.created_at_ms)) }
                        }
                    }
                }
            } }
        }
    }
}

/// `POST /ui/sessions/{session_id}/wakes/{wake_id}/ack`: answers the row's replacement.
pub(crate) async fn ack(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    form: Result<ActionForm<NoFields>, Refusal>,
) -> Response {
    let Path((session_id, wake_id)) = match path {
        Ok(p) => p,
        Err(e) => return crate::process::bad_request(&e.body_text()),
    };
    if matches!(&visitor.viewer, Viewer::Session(own) if *own != session_id) {
        return forbidden();
    }
    // A button's request carries no field: anything else is refused above
    // the table, the row as it was.
    if let Err(refusal) = form {
        return crate::schedules::retarget(refusal.into_response(), "#wake-result");
    }
    match d.processes.ack_wake(&session_id, &wake_id).await {
        Ok(acked) => {
            // The heading's count, read again, goes with the row (out of
            // band: a `template` keeps it whole beside a table row).
            let left = d.processes.wakes(&session_id, Some(SHOWN + 1)).await.ok().map(|w| {
                let n = w.len().min(SHOWN);
                if more_wakes(&w) {
                    format!("(first {n})")
                } else {
                    format!("({n})")
                }
            });
            html! {
                tr.acked data-wake=(wake_id) {
                    td colspan="6" {
                        code { (pages::id(&wake_id)) } " "
                        @if acked { "acknowledged" } @else { "was already acknowledged" }
                    }
                }
                @if let Some(left) = left {
                    template { span.count #wakes-count hx-swap-oob="true" { (left) } }
                }
            }
            .into_response()
        }
        Err(e) => crate::schedules::refused_into(&e, "#wake-result"),
    }
}

/// Whether pending wakes past `wakes` (read as `SHOWN + 1`) may wait: more
/// than shown, or a page that reached its bytes (cut there).
fn more_wakes(wakes: &[cairn_core::WakeDelivery]) -> bool {
    let bytes: usize = wakes.iter().map(|w| serde_json::to_vec(w).map_or(0, |j| j.len())).sum();
    wakes.len() > SHOWN || bytes >= cairn_core::LIST_PAGE_BYTES
}

/// The start of a wake's input, as the timeline shows a payload's: a
/// control or invisible format character as its escape
/// ([`pages::hidden_char`]).
fn clip(input: &str) -> maud::Markup {
    let mut short: String = input.chars().take(200).collect();
    if input.chars().nth(200).is_some() {
        short.push('…');
    }
    pages::text(&short)
}
