//! Server-Sent Events for `GET /v1/processes/{id}/events`.
//!
//! Each SSE event is one process event: `id` is its sequence (so a reconnecting
//! client resumes with `Last-Event-ID`) and `data` its JSON. The stream sends
//! history after the resume point, then live events, and closes after the
//! terminal event. It pulls pages from the log only as the client reads, so a
//! slow client never holds back writers: it just reads the log later.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cairn_core::{CairnError, ProcessEvent};
use futures::Stream;

use super::api::status_of;
use super::auth::{visible, Caller};
use super::AppState;

/// How long one follow waits before re-checking the record (the stream stays
/// open). The follow itself wakes on every change of the process and on its
/// end (the hub), so this is only a bound, not a poll: an idle stream costs no
/// reads (keep-alive comments keep proxies from closing it).
const FOLLOW_WAIT: Duration = Duration::from_secs(3600);

struct Follow {
    state: Arc<AppState>,
    /// Asked again before each page: a session whose grant is revoked or
    /// moved while it follows stops reading the log then.
    caller: Caller,
    id: String,
    after: u64,
    limit: Option<usize>,
    /// Events read ahead of the client, as sent: at most [`FOLLOW_BYTES`]
    /// of them, or one larger event.
    pending: VecDeque<Ready>,
    /// How many events the next page asks for: fewer after a page of large
    /// events ([`FOLLOW_BYTES`] held only a few), back up to [`FOLLOW_CHUNK`].
    chunk: usize,
    done: bool,
}

/// An event read ahead, as it will be sent.
struct Ready {
    sequence: u64,
    terminal: bool,
    data: String,
}

/// The SSE response following process `id` from sequence `after`.
pub fn stream(state: Arc<AppState>, caller: Caller, id: String, after: u64, limit: Option<usize>) -> Response {
    let follow = Follow {
        state,
        caller,
        id,
        after,
        limit,
        pending: VecDeque::new(),
        chunk: FOLLOW_CHUNK,
        done: false,
    };
    Sse::new(events(follow))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn events(follow: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(ready) = f.pending.pop_front() {
                f.after = ready.sequence;
                if ready.terminal {
                    // Nothing follows a terminal event.
                    f.done = true;
                    f.pending.clear();
                }
                let event = Event::default().id(ready.sequence.to_string()).data(ready.data);
                return Some((Ok(event), f));
            }
            if f.done {
                return None;
            }
            let page = tokio::select! {
                r = f.state.processes.follow(&f.id, f.after, Some(f.limit.unwrap_or(FOLLOW_CHUNK).min(f.chunk)), FOLLOW_WAIT) => r,
                _ = f.state.shutdown.cancelled() => return None,
            };
            match page {
                Ok(page) if page.events.is_empty() => {
                    // Either the wait timed out or the process ended before `after`.
                    match f.state.processes.get(&f.id).await {
                        Ok(r) if r.is_terminal() && r.last_sequence <= f.after => return None,
                        Ok(_) => {}
                        Err(e) => {
                            f.done = true;
                            return Some((Ok(error_event(&e)), f));
                        }
                    }
                }
                Ok(page) => {
                    if let Err(e) = visible(&f.state.processes, &f.caller, &f.id).await {
                        f.done = true;
                        return Some((Ok(error_event(&e)), f));
                    }
                    let asked = page.events.len();
                    f.pending = within_budget(page.events, FOLLOW_BYTES);
                    // The rest of the page is read again once these are sent.
                    f.chunk = if f.pending.len() < asked {
                        f.pending.len().max(1)
                    } else {
                        (f.chunk * 2).min(FOLLOW_CHUNK)
                    };
                }
                Err(e) => {
                    f.done = true;
                    return Some((Ok(error_event(&e)), f));
                }
            }
        }
    })
}

/// The most events a stream reads in one page: events may be a mebibyte
/// each, and a slow client of a whole page (up to 1,000) would hold a
/// gibibyte.
const FOLLOW_CHUNK: usize = 16;

/// The most bytes of events a stream holds read ahead of its client (one
/// event larger than it is held alone): a client that stops reading holds
/// this and the event being written, not a page of mebibyte events.
const FOLLOW_BYTES: usize = 256 * 1024;

/// The first of `events`, as sent, that fit in `budget` bytes (at least
/// one): the rest are read again when these are sent.
fn within_budget(events: Vec<ProcessEvent>, budget: usize) -> VecDeque<Ready> {
    let mut kept = VecDeque::new();
    let mut bytes = 0usize;
    for event in events {
        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_string());
        if !kept.is_empty() && bytes + data.len() > budget {
            break;
        }
        bytes += data.len();
        kept.push_back(Ready {
            sequence: event.sequence,
            terminal: event.semantics.terminal.is_some(),
            data,
        });
    }
    kept
}

/// A failure mid-stream (for example the process was pruned): an `error` event
/// carrying the usual error body, after which the stream closes.
fn error_event(err: &CairnError) -> Event {
    Event::default().event("error").data(error_data(err).to_string())
}

/// The data of [`error_event`]: the error body a JSON route answers (with the
/// `tombstone` of a pruned process), and its HTTP status.
fn error_data(err: &CairnError) -> serde_json::Value {
    let mut body = serde_json::json!({
        "error": {"code": err.code(), "message": err.to_string(), "status": status_of(err).as_u16()}
    });
    if let CairnError::NoLongerRetained(tombstone) = err {
        body["error"]["tombstone"] = serde_json::to_value(tombstone).unwrap_or_default();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of large events is held only as far as the budget (one
    /// event at least), in order.
    #[test]
    fn a_page_is_held_within_its_budget() {
        let event = |sequence: u64, bytes: usize| ProcessEvent {
            process_id: "p".into(),
            sequence,
            event_type: "big".into(),
            payload: serde_json::json!("x".repeat(bytes)),
            semantics: Default::default(),
            occurred_at_ms: 1,
            replay_key: None,
        };
        let kept = within_budget((1..=16).map(|s| event(s, 100_000)).collect(), FOLLOW_BYTES);
        let seqs: Vec<u64> = kept.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, [1, 2]);
        assert!(kept.iter().map(|r| r.data.len()).sum::<usize>() <= FOLLOW_BYTES);
        let kept = within_budget(vec![event(7, 1_000_000), event(8, 10)], FOLLOW_BYTES);
        assert_eq!(
            kept.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            [7],
            "one larger event alone"
        );
        let kept = within_budget((1..=16).map(|s| event(s, 10)).collect(), FOLLOW_BYTES);
        assert_eq!(kept.len(), 16, "small events: the whole page");
        assert!(kept.iter().all(|r| !r.terminal));
    }

    #[test]
    fn a_pruned_process_error_carries_its_tombstone() {
        let tombstone = cairn_core::Tombstone {
            id: "gone".into(),
            status: cairn_core::ProcessStatus::Completed,
            terminal_at_ms: 5,
            pruned_at_ms: 9,
        };
        let data = error_data(&CairnError::NoLongerRetained(Box::new(tombstone)));
        assert_eq!(data["error"]["code"], "no_longer_retained");
        assert_eq!(data["error"]["status"], 410);
        assert_eq!(
            data["error"]["tombstone"],
            serde_json::json!({"id": "gone", "status": "completed", "terminal_at_ms": 5, "pruned_at_ms": 9})
        );
        let data = error_data(&CairnError::UnknownProcess("x".into()));
        assert!(data["error"].get("tombstone").is_none(), "{data}");
    }
}
