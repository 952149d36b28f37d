//! The tool calls in flight over streamable HTTP, so that a client's
//! `notifications/cancelled` ends the `process_await` it names.
//!
//! The endpoint is stateless: each POST stands alone, and the notification
//! comes on a POST of its own, which the protocol library answers 202 and
//! drops. The server hands it to [`CallsInFlight::cancel`] instead, which
//! finds the call by the caller (its `Authorization` header) and the
//! request id. A cancel ends a call only when exactly one call in flight
//! has that caller and id: clients sharing a token (or an open server)
//! number their requests alike. A late cancel (of a call already answered)
//! may still meet another client's call with that id, so a wait a cancel
//! ends is answered as one its bound ended: the record as it stands, with
//! word to call again, never an error. A cancel may also overtake its call
//! (a client's pooled connections race): one that meets no call is kept for
//! [`EARLY_CANCEL`] and ends the first call that comes with its key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

type Key = (String, String);

/// How long a cancel that met no call waits for one: a cancel overtakes its
/// call by the milliseconds two connections differ by.
pub const EARLY_CANCEL: Duration = Duration::from_secs(1);

/// Most early cancels kept at once (the oldest go first).
const EARLY_CANCELS_KEPT: usize = 1024;

/// Longest caller and id an early cancel is kept for, together: no client
/// numbers its requests with kilobytes, and a body-sized id would hold
/// megabytes.
const EARLY_KEY_BYTES: usize = 1024;

/// Calls in flight by caller and request id; see the module doc.
#[derive(Default)]
pub struct CallsInFlight {
    state: Mutex<State>,
    next: AtomicU64,
}

#[derive(Default)]
struct State {
    calls: HashMap<Key, Vec<(u64, CancellationToken)>>,
    /// Cancels that met no call, with when they came.
    early: HashMap<Key, Instant>,
}

/// A call registered with [`CallsInFlight::enter`]; dropping it takes the
/// call out.
pub(crate) struct InFlight {
    calls: Arc<CallsInFlight>,
    key: Key,
    serial: u64,
    /// Cancelled by the client's `notifications/cancelled`.
    pub(crate) cancelled: CancellationToken,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.calls.lock();
        if let Some(list) = state.calls.get_mut(&self.key) {
            list.retain(|(serial, _)| *serial != self.serial);
            if list.is_empty() {
                state.calls.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for CallsInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallsInFlight").finish_non_exhaustive()
    }
}

impl CallsInFlight {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call of `caller` with request id `id` (as JSON) begins: cancelled
    /// already when its cancel came first.
    pub(crate) fn enter(self: &Arc<Self>, caller: String, id: &Value) -> InFlight {
        let key = (caller, id_key(id));
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let cancelled = CancellationToken::new();
        let mut state = self.lock();
        if !state.early.is_empty() {
            if state.early.remove(&key).is_some_and(|at| at.elapsed() <= EARLY_CANCEL) {
                cancelled.cancel();
            }
            state.early.retain(|_, at| at.elapsed() <= EARLY_CANCEL);
        }
        state
            .calls
            .entry(key.clone())
            .or_default()
            .push((serial, cancelled.clone()));
        drop(state);
        InFlight {
            calls: self.clone(),
            key,
            serial,
            cancelled,
        }
    }

    /// `caller` cancelled its request `request_id`: the call ends if it is
    /// the only one in flight with that caller and id (whether the call
    /// heeds it is its own affair: only waits do). Whether one was told.
    pub fn cancel(&self, caller: &str, request_id: &Value) -> bool {
        let key = (caller.to_string(), id_key(request_id));
        let mut state = self.lock();
        match state.calls.get(&key).map(Vec::as_slice) {
            Some([(_, call)]) => {
                call.cancel();
                true
            }
            Some(many) => {
                tracing::debug!(
                    calls = many.len(),
                    "a cancel names a request id that calls of the same caller share; none is cancelled"
                );
                false
            }
            None if key.0.len() + key.1.len() > EARLY_KEY_BYTES => false,
            None => {
                // It may have overtaken its call: kept a moment for it.
                state.early.retain(|_, at| at.elapsed() <= EARLY_CANCEL);
                if state.early.len() >= EARLY_CANCELS_KEPT {
                    if let Some(oldest) = state.early.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                        state.early.remove(&oldest);
                    }
                }
                state.early.insert(key, Instant::now());
                false
            }
        }
    }

    /// How many calls are in flight (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().calls.values().map(Vec::len).sum()
    }
}

/// The caller a request speaks as, for matching a cancel with its call: its
/// bearer token, read as the server's auth reads it (`bearer  T` is
/// `Bearer T`), or its `Authorization` header as it is for any other scheme
/// (empty without one, on an open server).
pub fn caller_key(headers: &http::HeaderMap) -> String {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return String::new();
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    match value.trim_start().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => format!("Bearer {}", token.trim()),
        _ => value.into_owned(),
    }
}

/// A request id as the protocol library reads it: a number written `2.0` is
/// the integer 2; a string stays a string (`"2"` is not `2`). A float past
/// 2^53 names no id the library takes, and matches none.
fn id_key(id: &Value) -> String {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match id.as_f64() {
        Some(f) if id.is_number() && !id.is_i64() && !id.is_u64() && f.fract() == 0.0 && f.abs() <= EXACT => {
            (f as i64).to_string()
        }
        _ => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cancel_ends_the_one_call_of_its_caller_and_id() {
        let calls = Arc::new(CallsInFlight::default());
        let a = calls.enter("Bearer a".into(), &json!(7));
        let b = calls.enter("Bearer b".into(), &json!(7));
        let s = calls.enter("Bearer a".into(), &json!("7"));
        assert!(!calls.cancel("Bearer c", &json!(7)));
        assert!(!calls.cancel("Bearer a", &json!(8)));
        assert!(calls.cancel("Bearer a", &json!(7.0)));
        assert!(a.cancelled.is_cancelled());
        assert!(!b.cancelled.is_cancelled() && !s.cancelled.is_cancelled());
        assert!(calls.cancel("Bearer a", &json!("7")));
        assert!(s.cancelled.is_cancelled());
        drop((a, b, s));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn callers_and_ids_are_read_as_the_server_and_the_library_read_them() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(caller_key(&headers), "");
        for spelled in ["Bearer t1", "bearer t1", "BEARER   t1 ", "  Bearer t1"] {
            headers.insert(http::header::AUTHORIZATION, spelled.parse().unwrap());
            assert_eq!(caller_key(&headers), "Bearer t1", "{spelled}");
        }
        headers.insert(http::header::AUTHORIZATION, "Basic dTpw".parse().unwrap());
        assert_eq!(caller_key(&headers), "Basic dTpw");
        assert_eq!(id_key(&json!(2.0)), id_key(&json!(2)));
        assert_eq!(id_key(&json!(-0.0)), id_key(&json!(0)));
        assert_ne!(id_key(&json!("2")), id_key(&json!(2)));
        assert_ne!(id_key(&json!(1e300)), id_key(&json!(i64::MAX)));
        assert_ne!(id_key(&json!(9.3e18)), id_key(&json!(i64::MAX)));
    }

    #[test]
    fn a_cancel_that_overtakes_its_call_ends_it_once() {
        let calls = Arc::new(CallsInFlight::default());
        assert!(!calls.cancel("Bearer a", &json!(3)));
        let other = calls.enter("Bearer b".into(), &json!(3));
        assert!(!other.cancelled.is_cancelled(), "another caller's call");
        let first = calls.enter("Bearer a".into(), &json!(3));
        assert!(first.cancelled.is_cancelled());
        let second = calls.enter("Bearer a".into(), &json!(3));
        assert!(!second.cancelled.is_cancelled(), "an early cancel ends one call");
        // One naming a kilobytes-long id is not kept.
        let long = json!("x".repeat(EARLY_KEY_BYTES));
        assert!(!calls.cancel("Bearer a", &long));
        assert!(calls.lock().early.is_empty());
        assert!(!calls.enter("Bearer a".into(), &long).cancelled.is_cancelled());
    }

    #[test]
    fn a_cancel_that_could_mean_two_calls_ends_neither() {
        let calls = Arc::new(CallsInFlight::default());
        let one = calls.enter(String::new(), &json!(1));
        let two = calls.enter(String::new(), &json!(1));
        assert!(!calls.cancel("", &json!(1)));
        assert!(!one.cancelled.is_cancelled() && !two.cancelled.is_cancelled());
        drop(one);
        assert!(calls.cancel("", &json!(1)));
        assert!(two.cancelled.is_cancelled());
        drop(two);
        assert_eq!(calls.len(), 0);
    }
}
