//! Schedules (SPEC §18): each one's spec, overlap, state, next and last fire
//! and the last process it started, with pause and resume. Schedules belong to
//! the host, as on the API: a session token is refused (403).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{Overlap, Schedule};
use maud::{html, Markup};
use serde::Deserialize;

use crate::auth::{Viewer, Visitor};
use crate::input::{ActionForm, NoFields, Params, Refusal, UiQuery};
use crate::list::encode_path;
use crate::pages::{self, Nav};
use crate::process::{refused, IdPath};
use crate::{time, Shared};

/// Schedules shown per page.
const PAGE: usize = 100;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ScheduleQuery {
    /// Only schedules with a greater id (the previous page's last).
    after: Option<String>,
}

impl Params for ScheduleQuery {
    const KEYS: &'static [&'static str] = &["after"];
}

/// A session token: 403, as the API answers.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        pages::error_fragment("forbidden", "the host token is needed for schedules"),
    )
        .into_response()
}

/// `GET /ui/schedules?after=ID`.
pub(crate) async fn page(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    q: Result<UiQuery<ScheduleQuery>, Refusal>,
) -> Response {
    let mut status = StatusCode::OK;
    let content = match (&visitor.viewer, q) {
        (Viewer::Session(_), _) => {
            status = StatusCode::FORBIDDEN;
            pages::error_fragment("forbidden", "the host token is needed for schedules")
        }
        (_, Err(refusal)) => {
            status = refusal.status;
            refusal.fragment()
        }
        (Viewer::Host, Ok(UiQuery(q))) => {
            let after = q.after.filter(|a| !a.is_empty());
            match d.processes.list_schedules(after.as_deref(), Some(PAGE)).await {
                Ok(listed) => table(&listed.items, listed.next_after_id, after.is_some()),
                Err(e) => {
                    status = crate::process::status_for(&e);
                    pages::error_fragment(e.code(), &e.to_string())
                }
            }
        }
    };
    let body = html! {
        h1 { "Schedules" }
        p.hint { "Each fire starts process " code { "{schedule}@{fire time ms}" } " once, however many nodes run." }
        div #schedule-result aria-live="polite" {}
        (content)
    };
    (status, pages::layout("Schedules", &visitor, Nav::Schedules, body)).into_response()
}

/// A page of schedules; `next` is where the next starts (the page was
/// full, or stopped at `LIST_PAGE_BYTES` of schedules).
fn table(schedules: &[Schedule], next: Option<String>, paged: bool) -> Markup {
    html! {
        @if schedules.is_empty() {
            p.empty { @if paged { "No more schedules." } @else { "No schedule." } }
        } @else {
            div.tablewrap { table.schedules {
                thead { tr {
                    th { "Id" } th { "When" } th { "Overlap" } th { "State" } th { "Next fire" }
                    th { "Last fire" } th { "Last process" } th {}
                } }
                tbody { @for s in schedules { (row(s)) } }
            } }
        }
        nav.pager {
            @if paged { a href="/ui/schedules" { "First" } " " }
            @if let Some(after) = next {
                a rel="next" href={ "/ui/schedules?after=" (encode_path(&after)) } { "More" }
            }
        }
    }
}

/// `cron */5 * * * * (Europe/Paris)` or `every 30s`.
fn spec(s: &Schedule) -> Markup {
    html! {
        @if let Some(cron) = &s.cron {
            "cron " code { (pages::text(cron)) }
            @if let Some(tz) = &s.timezone { " " span.tz { "(" (pages::text(tz)) ")" } }
        } @else if let Some(every) = &s.every {
            "every " code { (pages::text(every)) }
        }
    }
}

/// The `id` of a schedule's row: what removes it once the schedule is gone.
fn row_id(schedule: &str) -> String {
    format!("schedule-row-{schedule}")
}

fn row(s: &Schedule) -> Markup {
    let path = encode_path(&s.id);
    let overlap = match s.overlap {
        Overlap::Skip => "skip",
        Overlap::Allow => "allow",
    };
    html! {
        tr data-schedule=(s.id) data-state=(if s.paused { "paused" } else { "active" }) id=(row_id(&s.id)) {
            td.id { code { (pages::id(&s.id)) } }
            td.spec { (spec(s)) }
            td { (overlap) }
            td { @if s.paused { span.status.s-paused { "paused" } } @else { span.status.s-active { "active" } } }
            td { @if s.paused { span.hint { "none while paused" } } @else { (time::when(s.next_fire_ms)) } }
            td { @match s.last_fire_ms { Some(ms) => (time::when(ms)), None => span.hint { "never" } } }
            td {
                @match &s.last_process_id {
                    Some(p) => a href={ "/ui/processes/" (encode_path(p)) } { (pages::id(p)) },
                    None => span.hint { "none" },
                }
                // A refused fire is skipped: the row says so until one starts.
                @if let Some(r) = &s.last_refusal {
                    div.refused title=(pages::plain(&r.message)) {
                        span.status.s-failed { "refused" } " " (time::when(r.fire_ms)) ": " code { (pages::text(&r.code)) }
                    }
                }
            }
            td {
                @if s.paused {
                    button hx-post={ "/ui/schedules/" (path) "/resume" } hx-target="closest tr" hx-swap="outerHTML" {
                        "Resume"
                    }
                } @else {
                    button hx-post={ "/ui/schedules/" (path) "/pause" } hx-target="closest tr" hx-swap="outerHTML" {
                        "Pause"
                    }
                }
            }
        }
    }
}

/// A refusal, shown above the table (the row stays as it was, but for a
/// schedule gone).
fn refused_above(e: &cairn_core::CairnError) -> Response {
    refused_into(e, "#schedule-result")
}

/// A refusal of a row's action, shown in `target` above its table instead
/// of replacing the row (an error `div` is no table row, and the row would
/// be gone).
pub(crate) fn refused_into(e: &cairn_core::CairnError, target: &'static str) -> Response {
    retarget(refused(e), target)
}

/// `r` swapped into `target`, in place of what the request named.
pub(crate) fn retarget(mut r: Response, target: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert("hx-retarget", HeaderValue::from_static(target));
    h.insert("hx-reswap", HeaderValue::from_static("innerHTML"));
    r
}

/// A button's request (no fields): anything else is refused above the
/// table, the row as it was.
type ButtonForm = Result<ActionForm<NoFields>, Refusal>;

/// `POST /ui/schedules/{id}/pause`: answers the row's replacement.
pub(crate) async fn pause(state: Shared, visitor: Extension<Visitor>, id: IdPath, form: ButtonForm) -> Response {
    set_paused(state, visitor, id, form, true).await
}

/// `POST /ui/schedules/{id}/resume`: answers the row's replacement.
pub(crate) async fn resume(state: Shared, visitor: Extension<Visitor>, id: IdPath, form: ButtonForm) -> Response {
    set_paused(state, visitor, id, form, false).await
}

async fn set_paused(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    IdPath(id): IdPath,
    form: ButtonForm,
    paused: bool,
) -> Response {
    if matches!(visitor.viewer, Viewer::Session(_)) {
        return forbidden();
    }
    if let Err(refusal) = form {
        return retarget(refusal.into_response(), "#schedule-result");
    }
    let changed = if paused {
        d.processes.pause_schedule(&id).await
    } else {
        d.processes.resume_schedule(&id).await
    };
    match changed {
        Ok(s) => row(&s).into_response(),
        // Deleted since the page loaded: its row goes with the error (out of
        // band; a `template` carries a table row).
        Err(e) if e.code() == "unknown_schedule" => {
            let body = html! {
                (pages::error_fragment(e.code(), &e.to_string()))
                template { tr id=(row_id(&id)) hx-swap-oob="delete" {} }
            };
            retarget(
                (crate::process::status_for(&e), body).into_response(),
                "#schedule-result",
            )
        }
        Err(e) => refused_above(&e),
    }
}
