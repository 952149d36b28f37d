//! Live updates over SSE: the list follows the change feed, a process page
//! follows its log. Nothing in the browser re-fetches on a timer: a list
//! re-renders when the server says something it may see changed, a timeline
//! grows by the events the server pushes, and a record re-renders when the
//! server says so (after its events, and after a quiet [`FOLLOW_WAIT`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::{ChangeHub, EventSink, ProcessEvent, Processes, MAX_PAGE_SIZE};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::auth::{Viewer, Visitor};
use crate::{pages, process, Inner, Shared};

/// How long the change follower waits for a notice before reading the feed
/// anyway. Changes committed on another node (PostgreSQL) reach this node's
/// hub but not an event sink, and a notification source may miss some; this
/// bounded read is what finds them, the same fallback the awaiter keeps. It runs only while some list page is open.
/// (The hub's "work available" notice is not an option: it wakes one waiter,
/// and that waiter must be the worker's driver.)
const FALLBACK_READ: Duration = Duration::from_secs(5);
/// How long one follow of a process log waits before checking the record.
/// While the process runs, a follow that hears nothing in this time sends a
/// `record` notice anyway: a lease renewal, or a child started or ended,
/// changes what the page shows without appending to this process's log.
/// One record read (and one fragment render) per open page per wait.
const FOLLOW_WAIT: Duration = Duration::from_secs(15);
/// The least time between two `record` events of a process page's stream.
/// The page reads its record a moment after each (`delay:`, shorter than
/// this), and a steady stream of events restarting that delay would keep it
/// from ever reading while they flow.
const RECORD_SPACING: Duration = Duration::from_millis(300);
/// Most changed ids a session viewer's stream checks for visibility per batch.
const VISIBILITY_CHECKS: usize = 64;

/// Told of every committed change. Either follow the runtime's hub
/// ([`ChangeNotice::from_hub`]) or build one, give [`ChangeNotice::sink`] to
/// the runtime builder; then give the same notice to [`crate::Dashboard::new`].
#[derive(Clone, Default)]
pub struct ChangeNotice {
    notify: Arc<Notify>,
    hub: Option<watch::Receiver<u64>>,
    /// Rung by changes no record shows (grants moved, sessions deleted, prunes).
    listings: Option<watch::Receiver<u64>>,
}

impl ChangeNotice {
    /// A fresh notice.
    pub fn new() -> Self {
        Self::default()
    }

    /// A notice rung by every change `hub` publishes: this node's writes and
    /// what its notification source hears from other writers. Unlike
    /// [`sink`](Self::sink) it asks the runtime for no event, so no write reads
    /// its events back for it.
    pub fn from_hub(hub: &ChangeHub) -> Self {
        Self {
            notify: Arc::default(),
            hub: Some(hub.subscribe_all()),
            listings: Some(hub.subscribe_listings()),
        }
    }

    /// The event sink that rings this notice (it never blocks: a pending ring
    /// absorbs any number of events until the follower reads the feed).
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(NoticeSink(self.notify.clone()))
    }
}

struct NoticeSink(Arc<Notify>);

impl EventSink for NoticeSink {
    fn deliver(&self, _event: &ProcessEvent) {
        self.0.notify_one();
    }
}

/// The server-wide change follower and its fan-out.
pub(crate) struct Feed {
    tx: broadcast::Sender<Arc<Vec<String>>>,
    subscribed: Arc<Notify>,
}

impl Feed {
    /// Start the follower task: while any list stream is open it reads
    /// `changed_since` after every notice (or [`FALLBACK_READ`]) and broadcasts
    /// the changed ids; while none is, it reads nothing.
    pub fn start(processes: Processes, notice: ChangeNotice, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(64);
        let subscribed = Arc::new(Notify::new());
        tokio::spawn(follow(processes, notice, tx.clone(), subscribed.clone(), shutdown));
        Self { tx, subscribed }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<String>>> {
        let rx = self.tx.subscribe();
        self.subscribed.notify_one();
        rx
    }
}

/// While catching up on a feed that keeps filling pages, open lists are
/// told "anything" once every this many pages.
const CATCH_UP_PAGES: u32 = 16;

async fn follow(
    processes: Processes,
    notice: ChangeNotice,
    tx: broadcast::Sender<Arc<Vec<String>>>,
    subscribed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    // Where the feed was last read. While nobody listens nothing is read;
    // the first stream after a start or a quiet spell starts at the feed's
    // head, since its list renders on connecting anyway: what changed
    // meanwhile (100,000 records after a busy night) is not read a page at
    // a time. Lists are told "anything" once the head is read, for a change
    // between a list's own read and the head. A read that still takes more
    // than one page (a burst of changes) broadcasts one "anything" at its
    // end rather than each page's ids, so open lists render once, not once
    // a page.
    let ChangeNotice {
        notify,
        mut hub,
        mut listings,
    } = notice;
    let mut cursor = 0u64;
    let mut listened = false;
    loop {
        if tx.receiver_count() == 0 {
            listened = false;
        }
        while tx.receiver_count() == 0 {
            tokio::select! {
                _ = subscribed.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        if !listened {
            match processes.change_head().await {
                Ok(head) => {
                    cursor = cursor.max(head);
                    listened = true;
                    let _ = tx.send(Arc::new(Vec::new()));
                }
                // Read on from where the feed was: slower, and as correct.
                Err(e) => tracing::warn!(error = %e, "dashboard: reading the change feed's head failed"),
            }
        }
        let mut caught_up = false;
        let mut pages = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match processes.changed_since_more(cursor, Some(MAX_PAGE_SIZE)).await {
                // A page cut at its bytes is as full as one of MAX_PAGE_SIZE.
                Ok((page, full)) => {
                    cursor = page.next_cursor;
                    if full {
                        caught_up = true;
                        // A feed that keeps filling pages (more than a page of
                        // changes between reads) still refreshes open lists
                        // now and then.
                        pages += 1;
                        if pages.is_multiple_of(CATCH_UP_PAGES) {
                            let _ = tx.send(Arc::new(Vec::new()));
                        }
                        continue;
                    }
                    // No receiver left is fine: the next one re-renders on connect.
                    if caught_up {
                        let _ = tx.send(Arc::new(Vec::new()));
                    } else if !page.changes.is_empty() {
                        let ids = page.changes.into_iter().map(|c| c.process.id).collect();
                        let _ = tx.send(Arc::new(ids));
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: reading the change feed failed");
                    if caught_up {
                        let _ = tx.send(Arc::new(Vec::new()));
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = rang(hub.as_mut()) => {}
            _ = rang(listings.as_mut()) => {
                // No record changed, so the feed names none: every list
                // renders again (an empty batch means "anything").
                let _ = tx.send(Arc::new(Vec::new()));
            }
            _ = tokio::time::sleep(FALLBACK_READ) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Resolves when `rx` changes; never when there is none, or its sender is
/// gone (only the other rings remain).
async fn rang(rx: Option<&mut watch::Receiver<u64>>) {
    let changed = match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// `GET /ui/list/live`: SSE `changed` events, one when the stream opens and
/// one per batch of changes the viewer may see, at most one per
/// [`CHANGED_SPACING`]. The list element re-renders itself a moment after
/// each (`hx-trigger="sse:changed delay:150ms"`).
pub(crate) async fn list_stream(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    query: Result<crate::input::UiQuery<crate::input::NoParams>, crate::input::Refusal>,
) -> Response {
    // The list opens its stream by a bare address: a query is no filter of
    // the stream's, so it is refused rather than ignored.
    if let Err(refusal) = query {
        return refusal.into_response();
    }
    let rx = d.feed.subscribe();
    // `login`: the login the stream was opened with (none on an open
    // server), asked before each `changed`; `ended`: the `login` event
    // that ends the stream once that login ended was sent.
    let start = (
        d,
        visitor.viewer,
        visitor.login,
        rx,
        None::<tokio::time::Instant>,
        false,
    );
    let stream = futures::stream::unfold(start, |(d, viewer, login, mut rx, sent, ended)| async move {
        if ended {
            return None;
        }
        let Some(sent) = sent else {
            let now = tokio::time::Instant::now();
            return Some((Ok::<_, Infallible>(changed()), (d, viewer, login, rx, Some(now), false)));
        };
        // At most one `changed` per [`CHANGED_SPACING`], the last change of
        // a burst told at its end: the list re-renders a moment after each
        // (`delay:`, shorter than the spacing), and a steady stream of
        // changes (a process printing) restarting that delay would keep it
        // from ever re-rendering.
        let since = sent.elapsed();
        if since < CHANGED_SPACING {
            tokio::select! {
                () = tokio::time::sleep(CHANGED_SPACING - since) => {}
                _ = d.shutdown.cancelled() => return None,
            }
        }
        loop {
            let ids = tokio::select! {
                r = rx.recv() => r,
                _ = d.shutdown.cancelled() => return None,
            };
            let show = match ids {
                // Grants or sessions changed, or processes were pruned.
                Ok(ids) if ids.is_empty() => true,
                Ok(ids) => visible_any(&d, &viewer, &ids).await,
                // Fell behind: something changed, say so.
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if show {
                // A login ended (logged out, replaced, lapsed) since the
                // stream opened ends it, as a process page's does.
                if login.as_deref().is_some_and(|id| !d.logins.holds(id)) {
                    return Some((Ok(login_ended()), (d, viewer, login, rx, Some(sent), true)));
                }
                // What else queued meanwhile is told by this one too.
                while matches!(rx.try_recv(), Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_))) {}
                let now = tokio::time::Instant::now();
                return Some((Ok(changed()), (d, viewer, login, rx, Some(now), false)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The least time between two `changed` events of a list stream; the
/// list's own `delay:` is shorter.
const CHANGED_SPACING: Duration = Duration::from_millis(300);

fn changed() -> Event {
    Event::default().event("changed").data("changed")
}

/// Whether any of `ids` is the viewer's to see, so a session's page does not
/// even learn when other sessions' processes change (in batches small enough
/// to check in full).
async fn visible_any(d: &Inner, viewer: &Viewer, ids: &[String]) -> bool {
    if *viewer == Viewer::Host {
        return true;
    }
    for id in ids.iter().take(VISIBILITY_CHECKS) {
        if d.access.check_visible(viewer, id).await.is_ok() {
            return true;
        }
    }
    // A batch too large to check in full may hold one of the viewer's past
    // the checked ones: the page refreshes rather than miss it (a busy
    // moment says little about any one session).
    ids.len() > VISIBILITY_CHECKS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LiveQuery {
    after: Option<u64>,
}

impl crate::input::Params for LiveQuery {
    const KEYS: &'static [&'static str] = &["after"];
}

struct Follow {
    d: Arc<Inner>,
    /// Asked again before each page: a session whose grant is revoked or
    /// moved while it follows stops reading the log then.
    viewer: Viewer,
    /// The login the stream was opened with (none on an open server): asked
    /// before each event and each read of the log, so a logout (or the
    /// login replaced, or lapsed) ends the stream with `login`.
    login: Option<String>,
    id: String,
    after: u64,
    pending: VecDeque<ProcessEvent>,
    /// A page of events was sent, or a quiet [`FOLLOW_WAIT`] passed: send
    /// `record` once the events are out.
    record_due: bool,
    /// When the last `record` was sent: the next waits [`RECORD_SPACING`].
    record_sent: Option<tokio::time::Instant>,
    /// After the terminal event: send `end`, then stop.
    ending: bool,
    done: bool,
    /// Send `cleared` first: a failure an earlier connection of the page
    /// showed (a store's fault of the moment) is over once this one opens.
    clear: bool,
}

/// `GET /ui/processes/{id}/live`: the log as SSE, history first, then live.
/// Each event is a `timeline` event whose data is the rendered entry and whose
/// id is its sequence (so a reconnect resumes with `Last-Event-ID`); each page
/// of events is followed by a `record` event (the record panel re-renders), as
/// is every [`FOLLOW_WAIT`] without events while the process runs (its lease
/// and children change without an event of its own); after the terminal event
/// an `end` event tells the page to close the stream. Each connection opens
/// with `cleared`, which empties a failure an earlier one showed.
pub(crate) async fn process_stream(
    axum::extract::State(d): Shared,
    Extension(visitor): Extension<Visitor>,
    crate::process::IdPath(id): crate::process::IdPath,
    query: Result<crate::input::UiQuery<LiveQuery>, crate::input::Refusal>,
    headers: HeaderMap,
) -> Response {
    let crate::input::UiQuery(q) = match query {
        Ok(q) => q,
        Err(refusal) => return refusal.into_response(),
    };
    let found = match d.access.check_visible(&visitor.viewer, &id).await {
        Ok(()) => d.processes.get(&id).await.map(drop),
        Err(e) => Err(e),
    };
    match found {
        // A page's stream opened again (a reconnect, a hidden tab shown)
        // for a process since pruned or no longer visible: told as a
        // failure mid-stream is, then `end`, so the page says why and stops
        // reconnecting (an `EventSource` reads no error page, and the
        // extension would retry for ever).
        Err(e) if e.is_client_error() => {
            let told = [
                Ok::<_, Infallible>(failed(&e)),
                Ok(Event::default().event("end").data("end")),
            ];
            return Sse::new(futures::stream::iter(told)).into_response();
        }
        Err(e) => return process::refused(&e),
        Ok(()) => {}
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(q.after)
        .unwrap_or(0);
    let follow = Follow {
        d,
        viewer: visitor.viewer.clone(),
        login: visitor.login.clone(),
        id,
        after,
        pending: VecDeque::new(),
        record_due: false,
        record_sent: None,
        ending: false,
        done: false,
        clear: true,
    };
    Sse::new(timeline(follow))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn timeline(follow: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(follow, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            if f.clear {
                f.clear = false;
                return Some((Ok(Event::default().event("cleared").data("<span></span>")), f));
            }
            if f.login.as_deref().is_some_and(|id| !f.d.logins.holds(id)) {
                f.done = true;
                return Some((Ok(login_ended()), f));
            }
            if let Some(event) = f.pending.pop_front() {
                f.after = event.sequence;
                if event.semantics.terminal.is_some() {
                    // Nothing follows a terminal event.
                    f.pending.clear();
                    f.ending = true;
                }
                let html = pages::timeline_entry(&event).into_string();
                let sse = Event::default()
                    .event("timeline")
                    .id(event.sequence.to_string())
                    .data(html);
                return Some((Ok(sse), f));
            }
            // The record changed with the events just sent: re-render it, at
            // most once per [`RECORD_SPACING`] (the last of an end at once).
            let mut wait = FOLLOW_WAIT;
            if f.record_due {
                let since = f.record_sent.map_or(RECORD_SPACING, |at| at.elapsed());
                if since >= RECORD_SPACING || f.ending {
                    f.record_due = false;
                    f.record_sent = Some(tokio::time::Instant::now());
                    return Some((Ok(Event::default().event("record").data("changed")), f));
                }
                wait = RECORD_SPACING - since;
            }
            if f.ending {
                f.done = true;
                return Some((Ok(Event::default().event("end").data("end")), f));
            }
            let page = tokio::select! {
                // A few events read ahead of the browser at most: events may
                // be a mebibyte each.
                r = f.d.processes.follow(&f.id, f.after, Some(16), wait) => r,
                _ = f.d.shutdown.cancelled() => return None,
            };
            match page {
                // A `record` held back is due now.
                Ok(page) if page.events.is_empty() && f.record_due => {}
                Ok(page) if page.events.is_empty() => match f.d.processes.get(&f.id).await {
                    // Ended at or before `after` (a reconnect after the end): nothing more comes.
                    Ok(r) if r.is_terminal() && r.last_sequence <= f.after => f.ending = true,
                    // Quiet, still running: its lease may have been renewed and its
                    // children started or ended, none of which appends here.
                    Ok(r) if !r.is_terminal() => f.record_due = true,
                    // Ended past `after`: the next follow reads those events.
                    Ok(_) => {}
                    Err(e) => return Some((Ok(failed(&e)), f.failed(&e))),
                },
                Ok(page) => {
                    if let Err(e) = f.d.access.check_visible(&f.viewer, &f.id).await {
                        return Some((Ok(failed(&e)), f.failed(&e)));
                    }
                    f.pending.extend(page.events);
                    f.record_due = true;
                }
                Err(e) => return Some((Ok(failed(&e)), f.failed(&e))),
            }
        }
    })
}

impl Follow {
    /// After a failure: one the process's state answers (pruned, no longer
    /// visible) sends `end` next, so the page stops reconnecting to a stream
    /// that would only fail again; a store's fault of the moment ends the
    /// stream, and the page reconnects and resumes.
    fn failed(mut self, e: &cairn_core::CairnError) -> Self {
        if e.is_client_error() {
            self.ending = true;
        } else {
            self.done = true;
        }
        self
    }
}

/// The last event of a stream whose login ended: the page goes to log in
/// again, as it does for a stream opened without one.
fn login_ended() -> Event {
    Event::default().event("login").data(crate::auth::LOGIN_AGAIN)
}

/// A failure mid-stream (the process was pruned, the store is down): shown in
/// place of the timeline's tail, after which the stream ends.
fn failed(e: &cairn_core::CairnError) -> Event {
    let html = pages::error_fragment(e.code(), &e.to_string()).into_string();
    Event::default().event("failed").data(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut broadcast::Receiver<Arc<Vec<String>>>) -> Arc<Vec<String>> {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a broadcast in time")
            .expect("broadcast")
    }

    /// Start `n` external processes named `{prefix}{i}`: more than a page
    /// of changes.
    async fn start_many(p: &Processes, prefix: &str, n: usize) {
        for i in 0..n {
            let start = cairn_core::StartRequest::external(format!("{prefix}{i:05}"), serde_json::json!({}));
            p.start(start).await.expect("start");
        }
    }

    /// The first stream after a start (or a quiet spell) starts at the
    /// feed's head: the changes before it are not read a page at a time (its
    /// list renders on connecting anyway). Lists are told "anything" once
    /// the head is read, and a change after it by its id.
    #[tokio::test]
    async fn a_first_stream_starts_at_the_head() {
        let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(cairn_core::MemoryRegistry::new()));
        let p = Processes::builder(probe.clone()).without_worker().start();
        start_many(&p, "e", MAX_PAGE_SIZE + 5).await;
        let head = p.change_head().await.expect("head");
        assert!(head >= MAX_PAGE_SIZE as u64, "{head}");
        let notice = ChangeNotice::new();
        let feed = Feed::start(p.clone(), notice.clone(), CancellationToken::new());
        let mut rx = feed.subscribe();
        assert!(next(&mut rx).await.is_empty(), "one \"anything\" first");
        p.start(cairn_core::StartRequest::external("late", serde_json::json!({})))
            .await
            .expect("start");
        notice.notify.notify_one();
        assert_eq!(next(&mut rx).await.as_slice(), ["late".to_string()]);
        // A burst of more than a page is told as one "anything", not a page
        // of ids at a time.
        start_many(&p, "burst", MAX_PAGE_SIZE + 5).await;
        notice.notify.notify_one();
        let told = next(&mut rx).await;
        assert!(told.is_empty(), "one \"anything\", not a page of {} ids", told.len());
        let reads = probe.changes_read_from();
        assert!(
            !reads.is_empty() && reads.iter().all(|c| *c >= head),
            "{reads:?} from {head}"
        );
    }
}
