//! The processes list: the filters of SPEC §4, newest first, paged, live.
//!
//! Each page is one newest-first read of the registry ([`ListOrder::Newest`]),
//! from the process the `before` cursor names (the last row of the page
//! before): with every status, a page costs about its rows however long the
//! history; with a status, about that status's processes (ADR 0038).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{CairnError, Grant, ListOrder, ProcessFilter, ProcessRecord, Processes, SessionScope, MAX_PAGE_SIZE};
use maud::{html, Markup};
use serde::{Deserialize, Serialize};

use crate::auth::{Viewer, Visitor};
use crate::input::{Params, Refusal, UiQuery};
use crate::pages::{self, Nav};
use crate::{time, Shared};

/// Rows per page unless `size` says otherwise.
const PAGE: usize = 50;

/// The list's query string (the filter form's fields). Empty fields mean "not set".
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ListQuery {
    status: String,
    waiting: String,
    /// `all`, `granted_to` or `originated_by`.
    lens: String,
    session: String,
    definition: String,
    originator: String,
    /// A parent process: only the processes it started.
    caused_by: String,
    created_from: String,
    created_before: String,
    /// Paging: `{created_at_ms}:{id}` of the last row of the previous page.
    before: String,
    size: String,
}

impl Params for ListQuery {
    // As the filter form and the pages' links write them.
    const KEYS: &'static [&'static str] = &[
        "status",
        "waiting",
        "lens",
        "session",
        "definition",
        "originator",
        "caused_by",
        "created_from",
        "created_before",
        "before",
        "size",
    ];
    const FILTERS: bool = true;
}

impl ListQuery {
    /// Every process of `definition`, in any status.
    fn of_definition(definition: &str, size: Option<usize>) -> Self {
        Self {
            status: "any".into(),
            definition: definition.into(),
            size: size.map(|n| n.to_string()).unwrap_or_default(),
            ..Self::default()
        }
    }

    /// Every process `parent` started, in any status.
    fn children_of(parent: &str) -> Self {
        Self {
            status: "any".into(),
            caused_by: parent.into(),
            ..Self::default()
        }
    }
}

/// Which records a listing reads: every one, or one session's through a lens.
enum Lens {
    All,
    GrantedTo(SessionScope),
    OriginatedBy(SessionScope),
}

/// A listed process, with the grant behind it when listed through `granted_to`.
pub(crate) struct Row {
    pub record: ProcessRecord,
    pub grant: Option<Grant>,
}

/// Paging cursor: the last row of the previous page, as `{created_ms}:{id}`;
/// the next page holds the rows older than that process (created time, then
/// id). Its id is the registry's newest-first cursor (`after_id`); its time
/// stays in the link, as older links have it, and pages nothing.
#[derive(Clone, Debug, PartialEq)]
struct Cursor {
    ms: u64,
    id: String,
}

impl Cursor {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        if raw.is_empty() {
            return Ok(None);
        }
        let (ms, id) = raw
            .split_once(':')
            .ok_or_else(|| format!("`before` must be MS:ID, got `{raw}`"))?;
        let ms = ms.parse().map_err(|_| format!("`before` must be MS:ID, got `{raw}`"))?;
        if id.is_empty() {
            return Err(format!("`before` must be MS:ID, got `{raw}`, with no id"));
        }
        Ok(Some(Self { ms, id: id.to_string() }))
    }

    fn of(r: &ProcessRecord) -> Self {
        Self {
            ms: r.created_at_ms,
            id: r.id.clone(),
        }
    }

    fn render(&self) -> String {
        format!("{}:{}", self.ms, self.id)
    }
}

/// A parsed query: what to read and how to page.
struct Plan {
    lens: Lens,
    filter: ProcessFilter,
    before: Option<Cursor>,
    size: usize,
    /// Why a session viewer may not have this list (another session's
    /// grants, the provenance lens): the list answers 403 with it, as the
    /// API does; a definition's page shows none.
    forbidden: Option<&'static str>,
}

fn plan(q: &ListQuery, viewer: &Viewer) -> Result<Plan, CairnError> {
    let bad = CairnError::InvalidFilter;
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (key, value) in [("status", &q.status), ("waiting", &q.waiting)] {
        if !value.trim().is_empty() {
            pairs.push((key, value.trim().to_string()));
        }
    }
    // Taken as given, as the API takes them: `session:s1 ` names another
    // session than `session:s1`.
    for (key, value) in [("definition", &q.definition), ("originator", &q.originator)] {
        if !value.is_empty() {
            pairs.push((key, value.clone()));
        }
    }
    let bound = |value: &str| match value.trim() {
        "" => Ok(None),
        _ => time::parse_bound(value).map(Some).map_err(bad),
    };
    let (from, before) = (bound(&q.created_from)?, bound(&q.created_before)?);
    // Said of the form's fields, with the times as its pickers show them
    // (the API's check would name `created_from_ms` and milliseconds).
    if let (Some(from), Some(before)) = (from, before) {
        if from >= before {
            return Err(bad(format!(
                "`created_from` {} is not before `created_before` {}: the range holds no time \
                 (`created_from` is inclusive, `created_before` exclusive)",
                shown_bound(from),
                shown_bound(before)
            )));
        }
    }
    for (key, value) in [("created_from_ms", from), ("created_before_ms", before)] {
        if let Some(ms) = value {
            pairs.push((key, ms.to_string()));
        }
    }
    // Taken as given, as a session id is: an id may begin or end with a space.
    if !q.caused_by.is_empty() {
        pairs.push(("caused_by", q.caused_by.clone()));
    }
    // The same parser and checks as `GET /v1/processes`.
    let filter = ProcessFilter::from_query(pairs.iter().map(|(k, v)| (*k, v.as_str())))?;
    // Taken as given: an id may begin or end with a space. A session
    // viewer's form offers `granted_to` with the session box empty: its own.
    let session = match viewer {
        Viewer::Session(own) if q.session.is_empty() => own.as_str(),
        _ => q.session.as_str(),
    };
    let mut lens = match (q.lens.as_str(), session) {
        // A session id with no lens to read it through would be ignored
        // while the box still shows it: refused, as the API refuses a lens
        // it cannot tell.
        ("" | "all", _) if !q.session.is_empty() => {
            return Err(bad(
                "a session id needs a lens: granted_to (what it may act on) or originated_by (what it started)".into(),
            ))
        }
        ("" | "all", _) => Lens::All,
        ("granted_to" | "originated_by", "") => return Err(bad(format!("the `{}` lens needs a session id", q.lens))),
        ("granted_to", s) => Lens::GrantedTo(cairn_core::validate::filter_scope("granted_to", s)?),
        ("originated_by", s) => Lens::OriginatedBy(cairn_core::validate::filter_scope("originated_by", s)?),
        (other, _) => return Err(bad(format!("unknown lens `{other}`: all, granted_to or originated_by"))),
    };
    let mut forbidden = None;
    if let Viewer::Session(own) = viewer {
        // Session tokens list through the security lens only, as in the API:
        // their own session's grants, or one of its frames'.
        match &lens {
            Lens::OriginatedBy(_) => {
                forbidden = Some("`originated_by` needs the host token; session tokens list what is granted to them")
            }
            Lens::GrantedTo(s) if s.session_id != *own => {
                forbidden = Some("a session token may only address its own session")
            }
            _ => {}
        }
        if forbidden.is_some() || !matches!(lens, Lens::GrantedTo(_)) {
            lens = Lens::GrantedTo(SessionScope::session(own.clone()));
        }
    }
    let size = if q.size.trim().is_empty() {
        PAGE
    } else {
        let n: usize = q
            .size
            .trim()
            .parse()
            .map_err(|_| bad(format!("`size` must be a number, got `{}`", q.size)))?;
        cairn_core::page_limit(Some(n))?
    };
    Ok(Plan {
        lens,
        filter,
        // A cursor's id is taken as given (it may end with a space).
        before: Cursor::parse(if q.before.trim().is_empty() { "" } else { &q.before }).map_err(bad)?,
        size,
        forbidden,
    })
}

/// A created bound as the form's picker shows it (`2026-12-07T04:00 UTC`);
/// a time past what a date shows, in milliseconds.
fn shown_bound(ms: u64) -> String {
    match time::input_value(ms) {
        v if v.is_empty() => format!("{ms} ms"),
        v => format!("{v} UTC"),
    }
}

/// One page of rows, and where the next starts (`None`: the last page).
async fn read(p: &Processes, lens: &Lens, f: &ProcessFilter) -> cairn_core::Result<(Vec<Row>, Option<String>)> {
    Ok(match lens {
        Lens::All => {
            let page = p.list(f).await?;
            let rows = page.items.into_iter().map(|record| Row { record, grant: None });
            (rows.collect(), page.next_after_id)
        }
        Lens::GrantedTo(s) => {
            let page = p.list_granted_to(s, f).await?;
            let rows = page.items.into_iter().map(|g| Row {
                record: g.process,
                grant: Some(g.grant),
            });
            (rows.collect(), page.next_after_id)
        }
        Lens::OriginatedBy(s) => {
            let page = p.list_originated_by(s, f).await?;
            let rows = page.items.into_iter().map(|record| Row { record, grant: None });
            (rows.collect(), page.next_after_id)
        }
    })
}

/// One page, newest first, and the cursor of the next (`None`: the last page).
///
/// The registry reads it newest first from the cursor's process on
/// ([`ListOrder::Newest`]): one read of a page and one row more, to tell
/// whether an older page exists (a page of [`MAX_PAGE_SIZE`] rows asks for
/// that row in a read of its own). A cursor naming a process since pruned
/// is [`CairnError::InvalidPage`].
async fn newest_page(p: &Processes, plan: &Plan) -> cairn_core::Result<(Vec<Row>, Option<Cursor>)> {
    let mut rows: Vec<Row> = Vec::new();
    let mut after = plan.before.as_ref().map(|c| c.id.clone());
    loop {
        let want = plan.size + 1 - rows.len();
        let f = ProcessFilter {
            order: ListOrder::Newest,
            after_id: after,
            limit: Some(want.min(MAX_PAGE_SIZE)),
            ..plan.filter.clone()
        };
        let (page, next) = read(p, &plan.lens, &f).await?;
        rows.extend(page);
        // A registry page may stop short of the rows asked for (it is cut
        // at its bytes): read on from its last row.
        match next {
            Some(next) if rows.len() <= plan.size => after = Some(next),
            _ => break,
        }
    }
    let more = rows.len() > plan.size;
    rows.truncate(plan.size);
    let next = more.then(|| rows.last().map(|r| Cursor::of(&r.record))).flatten();
    Ok((rows, next))
}

/// The newest `size` processes of `definition`, in any status, that `viewer`
/// may list (the list page's own rules: a session viewer reads through its
/// grants), and whether older ones exist.
pub(crate) async fn newest_of_definition(
    p: &Processes,
    viewer: &Viewer,
    definition: &str,
    size: usize,
) -> cairn_core::Result<(Vec<Row>, bool)> {
    let plan = plan(&ListQuery::of_definition(definition, Some(size)), viewer)?;
    if plan.forbidden.is_some() {
        return Ok((Vec::new(), false));
    }
    let (rows, next) = newest_page(p, &plan).await?;
    Ok((rows, next.is_some()))
}

/// The list page of every process of `definition`, in any status.
pub(crate) fn definition_href(definition: &str) -> String {
    format!(
        "/ui/processes?{}",
        serde_urlencoded_query(&ListQuery::of_definition(definition, None))
    )
}

/// The list page of every process `parent` started, in any status.
pub(crate) fn children_href(parent: &str) -> String {
    format!(
        "/ui/processes?{}",
        serde_urlencoded_query(&ListQuery::children_of(parent))
    )
}

/// `GET /ui/processes`: the whole page.
pub(crate) async fn page(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    q: Result<UiQuery<ListQuery>, Refusal>,
) -> Response {
    let (q, body, refused) = match q {
        Ok(UiQuery(q)) => {
            let rows = rows_markup(&d.processes, &visitor, &q).await;
            // A filter or page refused (400, 403) is refused again on every
            // re-read; a store's failure (5xx) may pass.
            let refused = rows.0.is_client_error();
            (q, rows, refused)
        }
        Err(refusal) => (ListQuery::default(), (refusal.status, refusal.fragment()), true),
    };
    let live_query = serde_urlencoded_query(&q);
    let markup = pages::layout(
        "Processes",
        &visitor,
        Nav::Processes,
        html! {
            h1 { "Processes" }
            (filters(&q, &visitor.viewer))
            // A query that could not be read, or was refused, has no rows to
            // keep live: the error stays, not a refresh of another list under
            // its address, nor a re-read refused again at every change.
            @if refused {
                div #live { div #rows { (body.1) } }
            } @else {
                div #live hx-ext="sse" sse-connect="/ui/list/live" {
                    (crate::pages::login_listener())
                    div #rows hx-get={ "/ui/list/rows?" (live_query) } hx-trigger="sse:changed delay:150ms" hx-swap="innerHTML" {
                        (body.1)
                    }
                }
            }
        },
    );
    (body.0, markup).into_response()
}

fn serde_urlencoded_query(q: &ListQuery) -> String {
    let mut out = form_urlencoded_serializer();
    for (k, v) in [
        ("status", &q.status),
        ("waiting", &q.waiting),
        ("lens", &q.lens),
        ("session", &q.session),
        ("definition", &q.definition),
        ("originator", &q.originator),
        ("caused_by", &q.caused_by),
        ("created_from", &q.created_from),
        ("created_before", &q.created_before),
        ("before", &q.before),
        ("size", &q.size),
    ] {
        if !v.is_empty() {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

fn form_urlencoded_serializer() -> form_urlencoded::Serializer<'static, String> {
    form_urlencoded::Serializer::new(String::new())
}

/// `GET /ui/list/rows`: the table fragment (what a live update swaps in).
pub(crate) async fn rows(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    q: Result<UiQuery<ListQuery>, Refusal>,
) -> Response {
    match q {
        Ok(UiQuery(q)) => rows_markup(&d.processes, &visitor, &q).await.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn rows_markup(p: &Processes, visitor: &Visitor, q: &ListQuery) -> (StatusCode, Markup) {
    let plan = match plan(q, &visitor.viewer) {
        Ok(plan) => plan,
        Err(e) => return (StatusCode::BAD_REQUEST, pages::error_fragment(e.code(), &e.to_string())),
    };
    // Another session's grants are its state: 403, as the API answers (a
    // definition's page, which lists through the same plan, shows none).
    if let Some(why) = plan.forbidden {
        return (StatusCode::FORBIDDEN, pages::error_fragment("forbidden", why));
    }
    let (rows, next) = match (newest_page(p, &plan).await, &plan.before) {
        (Ok(x), _) => x,
        // The cursor's process is gone: refused, as other bad input is.
        (Err(CairnError::InvalidPage(_)), Some(c)) => return cursor_gone(q, &c.id),
        // A read the store failed is the server's fault, not the query's.
        (Err(e), _) => {
            return (
                crate::process::status_for(&e),
                pages::error_fragment(e.code(), &e.to_string()),
            )
        }
    };
    let newest = ListQuery {
        before: String::new(),
        ..q.clone()
    };
    let older = next.map(|c| ListQuery {
        before: c.render(),
        ..q.clone()
    });
    let markup = html! {
        div.tablewrap {
            table.processes {
                thead { tr {
                    th { "Status" } th.c-id { "Id" } th.c-def { "Definition" } th.c-orig { "Originator" }
                    th { "Created" } th.c-upd { "Updated" }
                } }
                tbody {
                    @for row in &rows {
                        @let r = &row.record;
                        tr data-id=(r.id) data-status=(r.status.label()) {
                            td { (pages::status_of(r)) }
                            td.id {
                                // An id, so the link that had focus has it
                                // again after a live re-render (htmx
                                // restores focus by id).
                                a id={ "row-" (r.id) } href={ "/ui/processes/" (encode_path(&r.id)) } { (pages::id(&r.id)) }
                                @if let Some(label) = row.grant.as_ref().and_then(|g| g.descriptor.label.as_ref()) {
                                    " " small.hint { (pages::id(label)) }
                                }
                            }
                            td.c-def { code { (pages::id(&r.input.definition())) } }
                            td.c-orig { (pages::id(&r.provenance.originator.scope_id())) }
                            td { (time::when(r.created_at_ms)) }
                            td.c-upd { (time::when(r.updated_at_ms)) }
                        }
                    }
                }
            }
            @if rows.is_empty() { p.empty { "No process matches these filters." } }
        }
        nav.pager {
            span.count { (rows.len()) " shown, newest first" }
            @if !q.before.is_empty() {
                a #newest href={ "/ui/processes?" (serde_urlencoded_query(&newest)) } { "← Newest" }
            }
            @if let Some(o) = &older {
                a #older rel="next" href={ "/ui/processes?" (serde_urlencoded_query(o)) } { "Older →" }
            }
        }
    };
    (StatusCode::OK, markup)
}

/// The refusal of a page whose cursor names process `id`, gone (pruned
/// since the page that linked here) and with it where the page starts: a bad
/// query, with the way back to the first page.
fn cursor_gone(q: &ListQuery, id: &str) -> (StatusCode, Markup) {
    let newest = ListQuery {
        before: String::new(),
        ..q.clone()
    };
    let why = format!(
        "`before` names process `{id}`, which this list does not hold (pruned since the page that linked \
         here, or never one of it), so this page has nowhere to start: go back to the first page"
    );
    let markup = html! {
        (pages::error_fragment("invalid_page", &why))
        nav.pager {
            a #newest href={ "/ui/processes?" (serde_urlencoded_query(&newest)) } { "← Newest" }
        }
    };
    (StatusCode::BAD_REQUEST, markup)
}

/// A path segment for an id (ids may hold characters a URL path must escape).
pub(crate) fn encode_path(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn filters(q: &ListQuery, viewer: &Viewer) -> Markup {
    let statuses = ["running", "completed", "failed", "cancelled", "abandoned", "any"];
    let is_host = *viewer == Viewer::Host;
    let bound = |raw: &str| match time::parse_bound(raw) {
        Ok(ms) if !raw.is_empty() => time::input_value(ms),
        _ => raw.to_string(),
    };
    // A bound finer than a minute asks the picker for seconds (or
    // milliseconds), or the browser would refuse the value it was given.
    let step = |value: &str| match value.len() {
        0..=16 => None,
        19 => Some("1"),
        _ => Some("0.001"),
    };
    let (from, before) = (bound(&q.created_from), bound(&q.created_before));
    html! {
        form.filters method="get" action="/ui/processes" role="search" {
            label { span { "Status" }
                select name="status" accesskey="s" {
                    @for s in statuses {
                        option value=(s) selected[q.status == s || (q.status.is_empty() && s == "running")] { (s) }
                    }
                }
            }
            label { span { "Waiting" }
                select name="waiting" accesskey="w" {
                    option value="" selected[q.waiting.is_empty()] { "either" }
                    option value="true" selected[q.waiting == "true"] { "waiting" }
                    option value="false" selected[q.waiting == "false"] { "not waiting" }
                }
            }
            label { span { "Session scope" }
                select name="lens" {
                    @if is_host { option value="all" selected[q.lens.is_empty() || q.lens == "all"] { "all processes" } }
                    option value="granted_to" selected[q.lens == "granted_to"] { "granted to" }
                    @if is_host { option value="originated_by" selected[q.lens == "originated_by"] { "originated by" } }
                }
            }
            label { span { "Session id" }
                input type="text" name="session" value=(q.session) placeholder="s1" size="10";
            }
            label { span { "Definition" }
                input type="text" name="definition" value=(q.definition) placeholder="tool:wait_signal" size="16";
            }
            label { span { "Originator" }
                input type="text" name="originator" value=(q.originator) placeholder="host, session:s1" size="14";
            }
            label { span { "Parent process" }
                input type="text" name="caused_by" value=(q.caused_by) placeholder="a process id" size="14";
            }
            label { span { "Created from (UTC)" }
                input type="datetime-local" step=[step(&from)] name="created_from" value=(from);
            }
            label { span { "Created before (UTC)" }
                input type="datetime-local" step=[step(&before)] name="created_before" value=(before);
            }
            // The page size in use goes with a new filter (the pager's
            // links keep it too).
            @if !q.size.is_empty() { input type="hidden" name="size" value=(q.size); }
            div.buttons {
                button type="submit" accesskey="f" { "Filter" }
                a href="/ui/processes" { "Reset" }
            }
        }
        p.hint { "Press " kbd { "/" } " to jump to the filters; Enter applies them." }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest `n` ids of `p`, read whole and sorted: what a page must show.
    async fn newest_ids(p: &Processes, n: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut f = ProcessFilter {
            limit: Some(MAX_PAGE_SIZE),
            ..Default::default()
        };
        loop {
            let page = p.list(&f).await.expect("list");
            all.extend(page.items);
            match page.next_after_id {
                Some(next) => f.after_id = Some(next),
                None => break,
            }
        }
        all.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        all.into_iter().take(n).map(|r| r.id).collect()
    }

    /// A page of the largest size says whether an older one exists: the row
    /// past it is a read of its own, as the registry reads no more than
    /// [`MAX_PAGE_SIZE`] at once.
    #[tokio::test]
    async fn a_page_of_the_largest_size_tells_whether_more_follow() {
        let clock = std::sync::Arc::new(cairn_core::ManualClock::new(time::now_ms() - 60_000));
        let p = Processes::builder(std::sync::Arc::new(cairn_core::MemoryRegistry::with_clock(
            clock.clone(),
        )))
        .clock(clock.clone())
        .without_worker()
        .start();
        let page_ids = |rows: Vec<Row>| rows.into_iter().map(|r| r.record.id).collect::<Vec<_>>();
        let plan = plan(
            &ListQuery {
                size: MAX_PAGE_SIZE.to_string(),
                ..ListQuery::default()
            },
            &Viewer::Host,
        )
        .expect("plan");
        // Ids against creation order: the newest has the smallest.
        let start = |i: usize| cairn_core::StartRequest::external(format!("p{:05}", 5_000 - i), serde_json::json!({}));
        for i in 0..MAX_PAGE_SIZE {
            clock.advance(i as u64 % 2);
            p.start(start(i)).await.expect("start");
        }
        let (rows, next) = newest_page(&p, &plan).await.expect("page");
        assert_eq!(page_ids(rows), newest_ids(&p, MAX_PAGE_SIZE).await);
        assert_eq!(next, None, "exactly a page: no older one");
        clock.advance(1);
        p.start(start(MAX_PAGE_SIZE)).await.expect("start");
        let (rows, next) = newest_page(&p, &plan).await.expect("page");
        let newest = newest_ids(&p, MAX_PAGE_SIZE + 1).await;
        assert_eq!(page_ids(rows), newest[..MAX_PAGE_SIZE].to_vec());
        let next = next.expect("one more: an older page");
        let (rows, last) = newest_page(
            &p,
            &Plan {
                before: Some(next),
                ..plan
            },
        )
        .await
        .expect("page");
        assert_eq!(page_ids(rows), newest[MAX_PAGE_SIZE..].to_vec());
        assert_eq!(last, None);
        p.shutdown().await;
    }

    #[tokio::test]
    async fn a_crowded_millisecond_is_read_whole() {
        let clock = std::sync::Arc::new(cairn_core::ManualClock::new(time::now_ms() - 5_000));
        let p = Processes::builder(std::sync::Arc::new(cairn_core::MemoryRegistry::with_clock(
            clock.clone(),
        )))
        .clock(clock.clone())
        .without_worker()
        .start();
        p.start(cairn_core::StartRequest::external("older", serde_json::json!({})))
            .await
            .expect("start");
        clock.advance(1);
        for i in 0..(MAX_PAGE_SIZE * 2 + 100) {
            p.start(cairn_core::StartRequest::external(
                format!("c{i:04}"),
                serde_json::json!({}),
            ))
            .await
            .expect("start");
        }
        let plan = plan(&ListQuery::default(), &Viewer::Host).expect("plan");
        let (rows, next) = newest_page(&p, &plan).await.expect("page");
        assert_eq!(rows.len(), plan.size, "a full page of the crowded millisecond");
        assert!(rows.iter().all(|r| r.record.id.starts_with('c')));
        assert!(next.is_some(), "and older ones after it");
        p.shutdown().await;
    }

    #[test]
    fn a_time_bound_is_shown_as_finely_as_it_was_given() {
        let q = ListQuery {
            created_before: "1700000045123".into(),
            created_from: "1700000040000".into(),
            ..ListQuery::default()
        };
        let html = filters(&q, &Viewer::Host).into_string();
        assert!(
            html.contains(r#"step="0.001" name="created_before" value="2023-11-14T22:14:05.123""#),
            "{html}"
        );
        assert!(
            html.contains(r#"name="created_from" value="2023-11-14T22:14""#),
            "{html}"
        );
    }

    #[test]
    fn a_session_viewer_lists_only_its_grants() {
        let v = Viewer::Session("s1".into());
        let p = plan(&ListQuery::default(), &v).unwrap();
        assert!(matches!(p.lens, Lens::GrantedTo(s) if s.session_id == "s1"));
        let other = ListQuery {
            lens: "granted_to".into(),
            session: "s2".into(),
            ..ListQuery::default()
        };
        assert!(plan(&other, &v).unwrap().forbidden.is_some());
        let orig = ListQuery {
            lens: "originated_by".into(),
            session: "s1".into(),
            ..ListQuery::default()
        };
        let refused = plan(&orig, &v).unwrap().forbidden.expect("forbidden");
        assert!(refused.contains("host token"), "{refused}");
    }

    #[test]
    fn bad_filters_are_errors() {
        let q = ListQuery {
            waiting: "maybe".into(),
            ..ListQuery::default()
        };
        assert_eq!(plan(&q, &Viewer::Host).err().map(|e| e.code()), Some("invalid_filter"));
        let q = ListQuery {
            created_from: "soon".into(),
            ..ListQuery::default()
        };
        assert!(plan(&q, &Viewer::Host).is_err());
        let q = ListQuery {
            before: "nope".into(),
            ..ListQuery::default()
        };
        assert!(plan(&q, &Viewer::Host).is_err());
    }
}
