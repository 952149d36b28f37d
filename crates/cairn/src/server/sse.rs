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
    pending: VecDeque<ProcessEvent>,
    done: bool,
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
        done: false,
    };
    Sse::new(events(follow))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn events(follow: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(event) = f.pending.pop_front() {
                f.after = event.sequence;
                if event.semantics.terminal.is_some() {
                    // Nothing follows a terminal event.
                    f.done = true;
                    f.pending.clear();
                }
                return Some((Ok(to_sse(&event)), f));
            }
            if f.done {
                return None;
            }
            let page = tokio::select! {
                r = f.state.processes.follow(&f.id, f.after, Some(f.limit.unwrap_or(FOLLOW_CHUNK).min(FOLLOW_CHUNK)), FOLLOW_WAIT) => r,
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
                    f.pending.extend(page.events);
                }
                Err(e) => {
                    f.done = true;
                    return Some((Ok(error_event(&e)), f));
                }
            }
        }
    })
}

/// The most events a stream holds read ahead of its client: events may be
/// a mebibyte each, and a slow client of a whole page (up to 1,000) would
/// hold a gibibyte.
const FOLLOW_CHUNK: usize = 16;

fn to_sse(event: &ProcessEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_string());
    Event::default().id(event.sequence.to_string()).data(data)
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
