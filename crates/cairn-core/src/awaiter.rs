//! Waiting above storage (SPEC §6, §13): a waiter reads once, then sleeps on
//! the change hub, which every write of this node (and, through LISTEN/NOTIFY,
//! of every PostgreSQL node) publishes into. With a hub nothing polls: a
//! waiter reads again only when its process changed, when the hub asks every
//! waiter to look again (a notification source reconnected), or after a rare
//! backstop interval. Without a hub, bounded-backoff point reads stand in.
//! Callers bound every wait with a timeout.

use std::sync::Arc;
use std::time::Duration;

use crate::events::ProcessEvent;
use crate::model::ProcessRecord;
use crate::registry::ProcessRegistry;
use crate::watch::{ChangeHub, Subscription};
use crate::Result;
use tokio::sync::watch;

/// How long a hub-fed waiter trusts the hub before it reads once anyway: a
/// backstop against a notice lost to a bug, never the way waits resolve (every
/// write of this process publishes, and a source that may have missed some
/// calls `ChangeHub::resync`), so it is long: idle waiters cost no reads.
pub const HUB_BACKSTOP: Duration = Duration::from_secs(300);

/// Polling bounds for an awaiter without a hub: start at the floor, double on
/// each quiet wait, stop at the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait between point reads.
    pub floor: Duration,
    /// The longest wait between point reads.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            floor: Duration::from_millis(25),
            cap: Duration::from_secs(1),
        }
    }
}

/// Waits for terminals and milestones of processes.
#[derive(Clone)]
pub struct Awaiter {
    registry: Arc<dyn ProcessRegistry>,
    hub: Option<ChangeHub>,
    backoff: Backoff,
}

impl Awaiter {
    /// An awaiter on `registry`, woken by `hub` when given (and by point reads always).
    pub fn new(registry: Arc<dyn ProcessRegistry>, hub: Option<ChangeHub>) -> Self {
        Self {
            registry,
            hub,
            backoff: Backoff::default(),
        }
    }

    /// Replace the fallback backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Resolve with the record once it is terminal; at once if it already is.
    /// Never returns on its own for a process that never ends: bound it with
    /// [`tokio::time::timeout`] or use [`Awaiter::await_terminal_for`].
    ///
    /// When a write of this node ends the process, the hub hands the waiter the
    /// record that write answered, and it resolves without reading it back.
    pub async fn await_terminal(&self, id: &str) -> Result<ProcessRecord> {
        let mut wait = self.watch(id);
        // Ended by a write of this node a moment ago: no read needed.
        if let Some(ended) = wait.ended() {
            return Ok(Arc::unwrap_or_clone(ended));
        }
        loop {
            let record = self.registry.get(id).await?;
            if record.is_terminal() {
                return Ok(record);
            }
            wait.next(record.last_sequence).await;
            if let Some(ended) = wait.ended() {
                return Ok(Arc::unwrap_or_clone(ended));
            }
        }
    }

    /// Like [`await_terminal`](Self::await_terminal), answering the still-running
    /// record when `timeout` passes first.
    pub async fn await_terminal_for(&self, id: &str, timeout: Duration) -> Result<ProcessRecord> {
        match tokio::time::timeout(timeout, self.await_terminal(id)).await {
            Ok(r) => r,
            Err(_) => self.registry.get(id).await,
        }
    }

    /// Resolve with the first event of `event_type` after `after_sequence`.
    /// When the process ends without one, resolves with
    /// [`crate::CairnError::ProcessTerminal`].
    pub async fn await_event(&self, id: &str, event_type: &str, after_sequence: u64) -> Result<ProcessEvent> {
        let mut wait = self.watch(id);
        let mut cursor = after_sequence;
        let mut first = true;
        loop {
            let page = self
                .registry
                .events_after(id, cursor, Some(crate::model::MAX_PAGE_SIZE))
                .await?;
            let more = page.next_after.is_some();
            let mut ended = false;
            for e in page.events {
                cursor = e.sequence;
                if e.event_type == event_type {
                    return Ok(e);
                }
                ended |= e.semantics.terminal.is_some();
            }
            if ended {
                return Err(crate::CairnError::terminal(id));
            }
            if !more {
                // A process that ended at or before the cursor never shows
                // its terminal event on a page: its record says so. Read it
                // once, and again after each change while the log ends below
                // the cursor (an `after_sequence` past the end): an end
                // there comes below the cursor too. Once the log reaches the
                // cursor, a later end shows up on a page.
                let mut seen = cursor;
                if first {
                    let record = self.registry.get(id).await?;
                    if record.is_terminal() && record.last_sequence <= cursor {
                        return Err(crate::CairnError::terminal(id));
                    }
                    first = record.last_sequence < cursor;
                    if first {
                        seen = record.last_sequence;
                    }
                }
                wait.next(seen).await;
            }
        }
    }

    /// The next page of events after `after`, waiting until there is at least one.
    /// An empty page means the process is terminal and its log ends at or before `after`.
    pub async fn await_events(&self, id: &str, after: u64, limit: Option<usize>) -> Result<crate::events::EventPage> {
        let mut wait = self.watch(id);
        loop {
            let page = self.registry.events_after(id, after, limit).await?;
            if !page.events.is_empty() {
                return Ok(page);
            }
            let record = self.registry.get(id).await?;
            if record.is_terminal() && record.last_sequence <= after {
                return Ok(page);
            }
            if record.last_sequence <= after {
                wait.next(record.last_sequence).await;
            }
        }
    }

    fn watch(&self, id: &str) -> ChangeWait {
        ChangeWait {
            // Subscribe before the first read so a change between read and wait is not missed.
            rx: self.hub.as_ref().map(|h| (h.subscribe(id), h.subscribe_resync())),
            delay: self.backoff.floor,
            cap: self.backoff.cap,
        }
    }
}

/// One waiter's view of a process's changes: a hub notice (or the hub's call
/// to look again, or the backstop), else the next backoff tick.
struct ChangeWait {
    rx: Option<(Subscription, watch::Receiver<u64>)>,
    delay: Duration,
    cap: Duration,
}

impl ChangeWait {
    /// The terminal record a write of this node published, if one did.
    fn ended(&self) -> Option<Arc<ProcessRecord>> {
        self.rx.as_ref().and_then(|(changes, _)| changes.ended())
    }

    /// Wait for a change past `seen`, the log sequence the waiter has read.
    /// A notice of a sequence it has read already (PostgreSQL's echo of this
    /// node's own write, which the hub announced at the commit) is passed over.
    async fn next(&mut self, seen: u64) {
        let delay = self.delay;
        match self.rx.as_mut() {
            Some((changes, resync)) => {
                let backstop = tokio::time::sleep(HUB_BACKSTOP);
                tokio::pin!(backstop);
                loop {
                    tokio::select! {
                        changed = changes.changed() => {
                            if changed.is_err() {
                                self.rx = None;
                                return;
                            }
                            if *changes.borrow_and_update() > seen {
                                return;
                            }
                        }
                        r = resync.changed() => {
                            if r.is_err() {
                                self.rx = None;
                            }
                            return;
                        }
                        _ = &mut backstop => return,
                    }
                }
            }
            None => tokio::time::sleep(delay).await,
        }
        self.delay = (delay * 2).min(self.cap);
    }
}
