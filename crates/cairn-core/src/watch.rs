//! The in-process change hub, the watched-registry decorator that feeds it, and
//! the best-effort event sink.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};

use crate::events::{AppendRequest, AppendResult, EventPage, ProcessEvent};
use crate::model::{
    CausalRef, ChangePage, Claim, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease, NodeIdentity,
    NodeLiveness, Outcome, ProcessFilter, ProcessRecord, PruneFilter, PruneReport, Registration, SessionDeleteReport,
    SessionScope, StartGrant, SweepItem, TransferReport, WaitRequest, WakeDelivery, Watermark, WorkItem,
};
use crate::registry::{CancelAnswer, CompleteAnswer, ProcessRegistry, Registered};
use crate::schedule::{Schedule, ScheduleAdvance};
use crate::Result;

/// In-process fan-out of "process X changed" notices.
///
/// Awaiters subscribe per process id and get the latest known sequence; the
/// driver waits on [`ChangeHub::work_available`]. A cross-node notification source
/// (PostgreSQL LISTEN/NOTIFY) plugs in by calling [`ChangeHub::publish`] and
/// [`ChangeHub::notify_work`] for changes made on other nodes.
#[derive(Clone, Default)]
pub struct ChangeHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    watchers: Mutex<HashMap<String, Watched>>,
    work: Notify,
    /// Bumped when every waiter should read again (see [`ChangeHub::resync`]).
    resync: watch::Sender<u64>,
    /// Bumped on every publish (see [`ChangeHub::subscribe_all`]).
    any: watch::Sender<u64>,
    /// Bumped on a change no record shows (see [`ChangeHub::listings_changed`]).
    listings: watch::Sender<u64>,
    /// The terminal records the latest ends written by this node answered,
    /// watched or not (see [`Subscription::ended`]).
    recent_ends: Mutex<RecentEnds>,
}

/// How many recent ends the hub keeps, and for how long: enough for a caller
/// that starts a process and then asks for its end (over HTTP, a round trip
/// later) to be answered without a read.
const RECENT_ENDS: usize = 256;
const RECENT_ENDS_AGE: std::time::Duration = std::time::Duration::from_secs(10);
/// Only an end whose input and outcome serialize within this many bytes is
/// kept, so the recent ends hold a few MiB at most (a payload may be 1 MiB).
const RECENT_END_BYTES: usize = 64 << 10;

/// Whether `record`'s input and outcome, its parts of a process's own size,
/// serialize within [`RECENT_END_BYTES`] (stops writing once past it).
fn small_enough(record: &ProcessRecord) -> bool {
    struct Budget(usize);
    impl std::io::Write for Budget {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(bytes.len())
                .ok_or_else(|| std::io::Error::other("over budget"))?;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut budget = Budget(RECENT_END_BYTES);
    serde_json::to_writer(&mut budget, &record.input).is_ok()
        && serde_json::to_writer(&mut budget, &record.outcome).is_ok()
}

/// A bounded, first-in-first-out map of recently ended records.
#[derive(Default)]
struct RecentEnds {
    order: std::collections::VecDeque<(String, std::time::Instant)>,
    records: HashMap<String, Arc<ProcessRecord>>,
}

impl RecentEnds {
    fn insert(&mut self, record: Arc<ProcessRecord>) {
        if self.records.insert(record.id.clone(), record.clone()).is_none() {
            self.order.push_back((record.id.clone(), std::time::Instant::now()));
        }
        while self.order.len() > RECENT_ENDS {
            if let Some((id, _)) = self.order.pop_front() {
                self.records.remove(&id);
            }
        }
    }

    fn get(&mut self, id: &str) -> Option<Arc<ProcessRecord>> {
        while let Some((old, at)) = self.order.front() {
            if at.elapsed() < RECENT_ENDS_AGE {
                break;
            }
            self.records.remove(old.as_str());
            self.order.pop_front();
        }
        self.records.get(id).cloned()
    }
}

/// One watched process: its notice channel and, once a write of this node has
/// ended it while watched, the terminal record that write answered.
struct Watched {
    tx: watch::Sender<u64>,
    ended: Option<Arc<ProcessRecord>>,
}

impl Watched {
    fn new() -> Self {
        Self {
            tx: watch::channel(0).0,
            ended: None,
        }
    }
}

impl Default for HubInner {
    fn default() -> Self {
        Self {
            watchers: Mutex::default(),
            work: Notify::new(),
            resync: watch::channel(0).0,
            any: watch::channel(0).0,
            listings: watch::channel(0).0,
            recent_ends: Mutex::default(),
        }
    }
}

impl ChangeHub {
    /// A hub with no watchers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribe to changes of one process. The receiver's value is the latest
    /// published sequence; `changed()` resolves on every publish after
    /// subscribing. Dropping the last subscription of a process frees its entry.
    pub fn subscribe(&self, process_id: &str) -> Subscription {
        let mut map = self.inner.watchers.lock();
        let rx = match map.get(process_id) {
            Some(w) => w.tx.subscribe(),
            None => {
                let w = Watched::new();
                let rx = w.tx.subscribe();
                map.insert(process_id.to_string(), w);
                rx
            }
        };
        Subscription {
            rx: Some(rx),
            hub: self.clone(),
            process_id: process_id.to_string(),
        }
    }

    /// Announce that `process_id` changed (its log reached `sequence`).
    pub fn publish(&self, process_id: &str, sequence: u64) {
        self.announce(process_id, sequence, None);
    }

    /// Announce a record a write of this node answered. When the write ended
    /// the process, its watchers also get the terminal record itself
    /// ([`Subscription::ended`]), so an awaiter resolves without reading it
    /// back. A terminal record never changes again (SPEC §2: the terminal
    /// event is write-once and the log's last), so the copy cannot go stale;
    /// it is kept while someone watches the process, and among the hub's
    /// latest 256 ends for up to 10 s when its input and outcome are under
    /// 64 KiB (a prune through this node forgets them).
    pub fn publish_record(&self, record: &ProcessRecord) {
        let ended = record.is_terminal().then_some(record);
        self.announce(&record.id, record.last_sequence, ended);
    }

    fn announce(&self, process_id: &str, sequence: u64, ended: Option<&ProcessRecord>) {
        if self.inner.any.receiver_count() > 0 {
            self.inner.any.send_modify(|n| *n = n.wrapping_add(1));
        }
        let ended = ended.map(|record| Arc::new(record.clone()));
        if let Some(record) = ended.as_ref().filter(|r| small_enough(r)) {
            self.inner.recent_ends.lock().insert(record.clone());
        }
        let mut map = self.inner.watchers.lock();
        if let Some(w) = map.get_mut(process_id) {
            if w.tx.receiver_count() == 0 {
                map.remove(process_id);
            } else {
                if let Some(record) = ended {
                    // Set before the notice goes out: a woken waiter finds it.
                    w.ended = Some(record);
                }
                // Every publish is a notice, but the sequence it carries
                // never goes back: a late echo of an earlier write (a
                // PostgreSQL notification of this node's own commit) must not
                // hide a later one from a waiter that skips what it has read.
                w.tx.send_modify(|seen| *seen = (*seen).max(sequence));
            }
        }
    }

    /// Forget the recent ends (a prune may have removed their processes).
    pub fn forget_ends(&self) {
        *self.inner.recent_ends.lock() = RecentEnds::default();
    }

    /// Ask every waiter to read again: a notification source that was
    /// disconnected may have missed changes (PostgreSQL's listener calls this
    /// when it reconnects; SQLite's watcher when another OS process
    /// committed). The recent ends are forgotten too: what was missed may be
    /// a prune of their processes.
    pub fn resync(&self) {
        self.forget_ends();
        self.inner.resync.send_modify(|g| *g += 1);
        self.notify_work();
    }

    /// A receiver that changes on every [`publish`](Self::publish), of any
    /// process: "something changed", for a follower that reads a change feed
    /// (its value is a counter, nothing more).
    pub fn subscribe_all(&self) -> watch::Receiver<u64> {
        self.inner.any.subscribe()
    }

    /// Say that listings may differ by a change no record's cursor shows:
    /// grants given, moved or revoked, a session deleted, processes pruned. A
    /// follower of the change feed (the dashboard's lists) renders again.
    pub fn listings_changed(&self) {
        self.inner.listings.send_modify(|g| *g += 1);
    }

    /// A receiver that changes on every [`listings_changed`](Self::listings_changed).
    pub fn subscribe_listings(&self) -> watch::Receiver<u64> {
        self.inner.listings.subscribe()
    }

    /// A receiver that changes on every [`resync`](Self::resync).
    pub fn subscribe_resync(&self) -> watch::Receiver<u64> {
        self.inner.resync.subscribe()
    }

    /// Announce that claimable work may exist.
    pub fn notify_work(&self) {
        self.inner.work.notify_one();
    }

    /// Resolves after the next [`notify_work`](Self::notify_work) (or at once if one is pending).
    pub async fn work_available(&self) {
        self.inner.work.notified().await;
    }

    /// Number of processes with live subscribers (diagnostics).
    pub fn watched(&self) -> usize {
        let mut map = self.inner.watchers.lock();
        map.retain(|_, w| w.tx.receiver_count() > 0);
        map.len()
    }
}

/// A subscription to one process's changes ([`ChangeHub::subscribe`]): a
/// `watch::Receiver` (it derefs to one) whose drop, when it is the last of its
/// process, removes the process from the hub, so a closed stream or a resolved
/// await leaves nothing behind.
pub struct Subscription {
    rx: Option<watch::Receiver<u64>>,
    hub: ChangeHub,
    process_id: String,
}

impl Subscription {
    /// The terminal record a write of this node published for the process
    /// ([`ChangeHub::publish_record`]), if one ended it since this
    /// subscription's process was first watched or among the hub's recent ends.
    pub fn ended(&self) -> Option<Arc<ProcessRecord>> {
        let watched = self
            .hub
            .inner
            .watchers
            .lock()
            .get(&self.process_id)
            .and_then(|w| w.ended.clone());
        watched.or_else(|| self.hub.inner.recent_ends.lock().get(&self.process_id))
    }
}

impl std::ops::Deref for Subscription {
    type Target = watch::Receiver<u64>;

    fn deref(&self) -> &Self::Target {
        // Taken only in `drop`.
        self.rx
            .as_ref()
            .unwrap_or_else(|| unreachable!("a live subscription has its receiver"))
    }
}

impl std::ops::DerefMut for Subscription {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.rx
            .as_mut()
            .unwrap_or_else(|| unreachable!("a live subscription has its receiver"))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut map = self.hub.inner.watchers.lock();
        if map.get(&self.process_id).is_some_and(|w| w.tx.receiver_count() == 0) {
            map.remove(&self.process_id);
        }
    }
}

/// A best-effort consumer of every appended event, called after the durable
/// write. It can neither fail nor block the write: deliveries go through a
/// bounded queue and are dropped (with a warning) when the sink falls behind.
/// The event log stays the truth.
pub trait EventSink: Send + Sync + 'static {
    /// Receive one appended event, after its write committed, on the sink's own task.
    fn deliver(&self, event: &ProcessEvent);

    /// Whether this sink takes only terminal events (default: every event).
    /// A write's events are read back for the sink after the write; for a
    /// terminal-only sink that read happens only when the write ended its
    /// process, so writes that do not end one cost no read.
    fn terminal_only(&self) -> bool {
        false
    }
}

/// A consumer of process ends (and starts) that needs only the record: it gets the
/// record a write of this runtime answered when that write ended its process,
/// after the write committed, once per end. Unlike a `terminal_only`
/// [`EventSink`], whose terminal event is read back from the store, it costs
/// no read. It is called inline on the writing task, so it must be quick and
/// must not block (count, set a flag, `try_send`); a panic in it is caught.
/// Ends written by other nodes or OS processes do not reach it.
pub trait EndSink: Send + Sync + 'static {
    /// `record` (terminal) was just ended by a write of this runtime.
    fn ended(&self, record: &ProcessRecord);

    /// `record` was just created by a write of this runtime, whatever made
    /// it (a start through any surface, a schedule's fire, a script's child).
    fn created(&self, _record: &ProcessRecord) {}
}

const SINK_QUEUE: usize = 4096;

struct SinkQueue {
    tx: mpsc::Sender<ProcessEvent>,
    terminal_only: bool,
    /// The parents' wakes lately sunk (`id`, sequence): two children that
    /// ended together may each find the one wake, which is sunk once.
    wakes: Mutex<std::collections::VecDeque<(String, u64)>>,
}

/// How far back a parent's log is read for the wake a child's end wrote
/// (the parent may have been claimed and gone on since), and how many
/// wakes sunk are remembered.
const WAKE_LOOKBACK: u64 = 8;
const WAKES_REMEMBERED: usize = 1024;

impl SinkQueue {
    fn start(sink: Arc<dyn EventSink>) -> Self {
        let terminal_only = sink.terminal_only();
        let (tx, mut rx) = mpsc::channel::<ProcessEvent>(SINK_QUEUE);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let sink = sink.clone();
                // A panicking sink must not take the queue down with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.deliver(&event))).is_err() {
                    tracing::warn!(process_id = %event.process_id, "event sink panicked; event skipped");
                }
            }
        });
        Self {
            tx,
            terminal_only,
            wakes: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Whether the wake `(id, sequence)` is sunk for the first time now.
    fn first_wake(&self, id: &str, sequence: u64) -> bool {
        let mut wakes = self.wakes.lock();
        if wakes.iter().any(|(i, s)| *s == sequence && i == id) {
            return false;
        }
        if wakes.len() == WAKES_REMEMBERED {
            wakes.pop_front();
        }
        wakes.push_back((id.to_string(), sequence));
        true
    }

    fn push(&self, event: ProcessEvent) {
        if self.terminal_only && event.semantics.terminal.is_none() {
            return;
        }
        // A parent's wake by its children may reach the sink twice: with the
        // write that appended it (a cancel ending a child at once) and read
        // back for the child's end (`sink_wake`). It goes once.
        let a_wake = event.event_type == crate::events::RESUMED
            && event.payload.get("reason").and_then(serde_json::Value::as_str) == Some("children");
        if a_wake && !self.first_wake(&event.process_id, event.sequence) {
            return;
        }
        if self.tx.try_send(event).is_err() {
            tracing::warn!("event sink is behind; an event was not delivered to it");
        }
    }
}

/// A registry decorator that publishes every successful write to a [`ChangeHub`]
/// and, optionally, an [`EventSink`]. Reads pass straight through.
pub struct WatchedRegistry {
    inner: Arc<dyn ProcessRegistry>,
    hub: ChangeHub,
    sink: Option<SinkQueue>,
    ends: Option<Arc<dyn EndSink>>,
}

impl WatchedRegistry {
    /// What a registration this registry made tells the hub.
    async fn registered(&self, r: &Registered) {
        if r.created {
            // Born cancelled under a cancelled parent: ended by this write.
            self.created(&r.process);
            self.changed(&r.process);
            if r.process.is_terminal() {
                self.sink_cancelled_tail(&r.process).await;
            }
            if crate::fold::may_be_work(&r.process) {
                self.hub.notify_work();
            }
        }
    }

    /// Wrap `inner`; must be called inside a tokio runtime when a sink is given.
    pub fn new(inner: Arc<dyn ProcessRegistry>, hub: ChangeHub, sink: Option<Arc<dyn EventSink>>) -> Self {
        Self {
            inner,
            hub,
            sink: sink.map(SinkQueue::start),
            ends: None,
        }
    }

    /// Also tell `ends` of every process a write through this registry ends.
    pub fn with_end_sink(mut self, ends: Arc<dyn EndSink>) -> Self {
        self.ends = Some(ends);
        self
    }

    /// The hub this registry publishes into.
    pub fn hub(&self) -> &ChangeHub {
        &self.hub
    }

    fn changed(&self, record: &ProcessRecord) {
        self.hub.publish_record(record);
    }

    /// Tell the end sink of a process a write of this runtime created (and,
    /// when it was born ended, of its end).
    fn created(&self, record: &ProcessRecord) {
        if let Some(ends) = &self.ends {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ends.created(record))).is_err() {
                tracing::warn!(process_id = %record.id, "end sink panicked; a start was not counted");
            }
        }
        self.ended(record);
    }

    /// Tell the end sink, when `record` is terminal: callers pass only a
    /// record the write they made changed (a write that appended nothing, or
    /// to a process already ended, never reaches here).
    fn ended(&self, record: &ProcessRecord) {
        if let (Some(ends), true) = (&self.ends, record.is_terminal()) {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ends.ended(record))).is_err() {
                tracing::warn!(process_id = %record.id, "end sink panicked; an end was not counted");
            }
        }
    }

    /// Feed the sink the last `count` events of a record that just changed
    /// (for a claim, `count` 2 reads back to its `process.started`).
    async fn sink_tail(&self, record: &ProcessRecord, count: u64) {
        let Some(sink) = &self.sink else { return };
        if sink.terminal_only {
            self.sink_terminal(sink, record).await;
            return;
        }
        let after = record.last_sequence.saturating_sub(count);
        if let Ok(page) = self
            .inner
            .events_after(&record.id, after, Some(count.max(1) as usize))
            .await
        {
            let claim_tail = count == 2
                && page
                    .events
                    .last()
                    .is_some_and(|e| e.event_type == crate::events::RESUMED);
            let skip = usize::from(count == 2 && !claim_tail && page.events.len() == 2);
            for e in page.events.into_iter().skip(skip) {
                sink.push(e);
            }
        }
    }

    /// Feed the sink what a tree cancel appended to a descendant: its log from
    /// its last `process.cancel_requested` on (the request, and the end when
    /// it ended at once; a wake of a waiting descendant may sit between).
    async fn sink_cancelled_tail(&self, record: &ProcessRecord) {
        let Some(sink) = &self.sink else { return };
        if sink.terminal_only {
            self.sink_terminal(sink, record).await;
            return;
        }
        let after = record.last_sequence.saturating_sub(4);
        if let Ok(page) = self.inner.events_after(&record.id, after, Some(4)).await {
            let from = page
                .events
                .iter()
                .rposition(|e| e.event_type == crate::events::CANCEL_REQUESTED);
            for e in page.events.into_iter().skip(from.unwrap_or(usize::MAX)) {
                sink.push(e);
            }
        }
    }

    /// Feed a terminal-only sink the event that ended `record`, when the write
    /// just made left it terminal: a terminal event is always its log's last.
    async fn sink_terminal(&self, sink: &SinkQueue, record: &ProcessRecord) {
        if !record.is_terminal() {
            return;
        }
        let after = record.last_sequence.saturating_sub(1);
        if let Ok(page) = self.inner.events_after(&record.id, after, Some(1)).await {
            for e in page.events {
                sink.push(e);
            }
        }
    }

    /// The current sequence, read only when a sink needs to know what a write appended.
    async fn sequence_if_sinking(&self, id: &str) -> u64 {
        if self.sink.is_none() && self.ends.is_none() {
            return 0;
        }
        self.inner.get(id).await.map(|r| r.last_sequence).unwrap_or(0)
    }

    async fn after_write(&self, record: &ProcessRecord, appended: u64) {
        if appended > 0 {
            // Nothing is appended after a terminal event: a terminal record
            // this write appended to was ended by it. Told before the notice,
            // so whoever sees the end sees it counted.
            self.ended(record);
        }
        self.changed(record);
        if appended > 0 {
            self.sink_tail(record, appended).await;
        }
        self.after_end(record).await;
    }

    /// A child that ended may have ended its parent's `children` wait in the
    /// same write (SPEC §13): the parent's watchers read again and drivers
    /// look for work.
    async fn after_end(&self, record: &ProcessRecord) {
        if !record.is_terminal() {
            return;
        }
        let Some(parent) = record.provenance.caused_by.as_ref().and_then(CausalRef::parent_process) else {
            return;
        };
        if let Ok(p) = self.inner.get(parent).await {
            // Sunk before the notices: a claim they bring must not reach the
            // sink before the wake it follows. Looked for whatever the
            // parent's state now (a peer may have claimed it already).
            self.sink_wake(record, &p).await;
            if p.last_sequence > 0 {
                self.hub.publish(parent, p.last_sequence);
            }
            if p.wait.is_none() && !p.is_terminal() {
                self.hub.notify_work();
            }
        }
    }

    /// Feed the sink the parent's `process.resumed` (reason `children`) that
    /// the end of `child` wrote in its own transaction: stamped with the
    /// child's end, naming it among the children it waited for (or waiting
    /// for any), found among the parent's last events.
    async fn sink_wake(&self, child: &ProcessRecord, parent: &ProcessRecord) {
        let Some(sink) = self.sink.as_ref().filter(|s| !s.terminal_only) else {
            return;
        };
        let after = parent.last_sequence.saturating_sub(WAKE_LOOKBACK);
        let Ok(page) = self
            .inner
            .events_after(&parent.id, after, Some(WAKE_LOOKBACK as usize))
            .await
        else {
            return;
        };
        let woke = page.events.into_iter().find(|e| {
            e.event_type == crate::events::RESUMED
                && e.payload.get("reason").and_then(serde_json::Value::as_str) == Some("children")
                && Some(e.occurred_at_ms) == child.terminal_at_ms
                && e.payload
                    .get("ids")
                    .and_then(serde_json::Value::as_array)
                    .is_none_or(|ids| ids.iter().any(|i| i.as_str() == Some(child.id.as_str())))
        });
        if let Some(e) = woke {
            sink.push(e);
        }
    }
}

#[async_trait]
impl ProcessRegistry for WatchedRegistry {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        let r = self.inner.register(registration, grant).await?;
        self.registered(&r).await;
        Ok(r)
    }

    async fn register_child(
        &self,
        registration: Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
    ) -> Result<Registered> {
        let r = self.inner.register_child(registration, grants, parent_lease).await?;
        self.registered(&r).await;
        Ok(r)
    }

    async fn register_claimed(
        &self,
        registration: Registration,
        grant: Option<StartGrant>,
        owner_id: &str,
        ttl_ms: u64,
    ) -> Result<(Registered, Option<Claim>)> {
        let (r, claim) = self
            .inner
            .register_claimed(registration, grant, owner_id, ttl_ms)
            .await?;
        if r.created {
            self.created(&r.process);
            self.changed(&r.process);
            if r.process.is_terminal() {
                self.sink_cancelled_tail(&r.process).await;
            }
            match &claim {
                // As `claim_batch` tells of its claims; the work is taken.
                Some(c) => self.after_write(&c.process, 2).await,
                None if crate::fold::may_be_work(&r.process) => self.hub.notify_work(),
                None => {}
            }
        }
        Ok((r, claim))
    }

    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        self.inner.list(filter).await
    }

    async fn events_after(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage> {
        self.inner.events_after(id, after, limit).await
    }

    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult> {
        let r = self.inner.append_event(id, request).await?;
        if !r.replayed {
            let ended = if r.event.semantics.terminal.is_some() {
                self.inner.get(id).await.ok()
            } else {
                None
            };
            if let Some(record) = &ended {
                self.ended(record);
            }
            match &ended {
                // The terminal event is the log's last: the record read after it is the ended one.
                Some(record) if record.is_terminal() => self.hub.publish_record(record),
                _ => self.hub.publish(id, r.event.sequence),
            }
            if r.event.event_type.starts_with(crate::events::SIGNAL_PREFIX) {
                // A signal may have woken a suspended process (SPEC §13).
                self.hub.notify_work();
            }
            if let Some(record) = &ended {
                self.after_end(record).await;
            }
            if let Some(sink) = &self.sink {
                sink.push(r.event.clone());
            }
        }
        Ok(r)
    }

    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        // What this write appended, as the write counted it: a read before
        // it would count other writers' events too (a run's output, an end
        // that raced a repeated request), sinking them twice.
        let r = self.inner.request_cancel(id, reason).await?;
        // A request that wrote nothing to the process (a repeat, or one
        // that reached only an ended process's children) changed nothing
        // its watchers could see: told, they would read a change that did
        // not happen.
        if r.appended > 0 {
            self.after_write(&r.process, r.appended).await;
        }
        for d in &r.descendants {
            // A running descendant's run observes its request through the hub;
            // a suspended one became claimable.
            self.ended(d);
            self.changed(d);
            self.sink_cancelled_tail(d).await;
            self.after_end(d).await;
        }
        if (r.appended > 0 && !r.cancelled_now) || r.descendants.iter().any(|d| !d.is_terminal()) {
            // A suspended process is claimable once a cancellation is requested.
            self.hub.notify_work();
        }
        Ok(r)
    }

    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        let g = self.inner.grant(scope, id, descriptor).await?;
        self.hub.listings_changed();
        Ok(g)
    }

    async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool> {
        let revoked = self.inner.revoke(scope, id).await?;
        if revoked {
            self.hub.listings_changed();
        }
        Ok(revoked)
    }

    async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport> {
        let r = self.inner.transfer(from, to, ids).await?;
        if !r.moved.is_empty() {
            self.hub.listings_changed();
        }
        Ok(r)
    }

    async fn grants_of(&self, id: &str) -> Result<Vec<Grant>> {
        self.inner.grants_of(id).await
    }

    async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<crate::model::Tombstone>> {
        self.inner.pruned_grant(scope, id).await
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        self.inner.list_granted_to(scope, filter).await
    }

    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        self.inner.list_originated_by(scope, filter).await
    }

    async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport> {
        let r = self.inner.delete_session_with(session_id, keep_frames).await?;
        // It cancels and revokes across processes: every waiter reads again.
        self.hub.resync();
        self.hub.listings_changed();
        Ok(r)
    }

    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        self.inner.pending_wakes(session_id, limit).await
    }

    async fn pending_frame_wakes(
        &self,
        session_id: &str,
        frame_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<WakeDelivery>> {
        self.inner.pending_frame_wakes(session_id, frame_id, limit).await
    }

    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        self.inner.ack_wake(session_id, wake_id).await
    }

    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease> {
        self.inner.claim(id, owner_id, ttl_ms).await
    }

    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
        let claims = self.inner.claim_batch(owner_id, ttl_ms, limit).await?;
        for c in &claims {
            // A claim that resumes a suspension appends `process.resumed` after
            // `process.started`; the sink reads back to the started event.
            self.after_write(&c.process, 2).await;
        }
        Ok(claims)
    }

    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        let r = self.inner.record_started(lease).await?;
        self.after_write(&r, 2).await;
        Ok(r)
    }

    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        self.inner.renew(lease, ttl_ms).await
    }

    async fn leases_of_earlier_incarnations(&self, node: &str, incarnation: u64, limit: usize) -> Result<Vec<Lease>> {
        self.inner
            .leases_of_earlier_incarnations(node, incarnation, limit)
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let released = self.inner.release(lease).await?;
        if released {
            self.hub.notify_work();
        }
        Ok(released)
    }

    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        let r = self.inner.complete(lease, outcome).await?;
        self.after_write(&r, 1).await;
        Ok(r)
    }

    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>> {
        self.inner.worklist(limit).await
    }

    async fn abandon_worklist(&self, limit: usize) -> Result<Vec<String>> {
        self.inner.abandon_worklist(limit).await
    }

    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        let before = self.sequence_if_sinking(id).await;
        let r = self.inner.request_abandon(id, requested_by, reason).await?;
        // A request never ends its process (a reconcile does, and is told
        // there): a terminal record here is a repeat, whatever else landed
        // since the read before it.
        let appended = if r.is_terminal() {
            0
        } else {
            r.last_sequence.saturating_sub(before)
        };
        self.after_write(&r, appended).await;
        self.hub.notify_work();
        Ok(r)
    }

    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        let r = self.inner.reconcile_abandon(id).await?;
        if let Some(rec) = &r {
            self.after_write(rec, 1).await;
        }
        Ok(r)
    }

    async fn register_node(&self, node: &str) -> Result<NodeIdentity> {
        self.inner.register_node(node).await
    }

    async fn heartbeat(&self, identity: &NodeIdentity) -> Result<bool> {
        self.inner.heartbeat(identity).await
    }

    async fn node(&self, node: &str) -> Result<Option<NodeLiveness>> {
        self.inner.node(node).await
    }

    async fn sweep_worklist(&self, limit: usize) -> Result<Vec<SweepItem>> {
        self.inner.sweep_worklist(limit).await
    }

    async fn sweep(&self, id: &str, node: &str, incarnation: u64) -> Result<Option<ProcessRecord>> {
        let r = self.inner.sweep(id, node, incarnation).await?;
        if let Some(rec) = &r {
            self.after_write(rec, 1).await;
        }
        Ok(r)
    }

    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<CompleteAnswer> {
        let r = self.inner.complete_external(id, outcome, authority).await?;
        // A repeat only answered an end told when it was written: no sink,
        // counter or watcher hears of it again.
        if r.completed_now {
            self.after_write(&r.process, 1).await;
        }
        Ok(r)
    }

    async fn prune(&self, cutoff_ms: u64, filter: PruneFilter, watermark: Watermark) -> Result<PruneReport> {
        let r = self.inner.prune(cutoff_ms, filter, watermark).await;
        // A prune that failed on the store may have committed chunks before
        // it failed: told as one that pruned. One refused (a bad filter)
        // changed nothing.
        if r.as_ref().map_or_else(|e| !e.is_client_error(), |r| r.pruned > 0) {
            // Waiters on a pruned process learn it is gone by reading again.
            self.hub.forget_ends();
            self.hub.resync();
            self.hub.listings_changed();
        }
        r
    }

    async fn collect_unreferenced(&self, grace: std::time::Duration) -> Result<crate::registry::Collected> {
        // Collects no process: nothing a waiter or a listing shows changes.
        self.inner.collect_unreferenced(grace).await
    }

    async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage> {
        self.inner.changed_since(cursor, limit).await
    }

    async fn change_head(&self) -> Result<u64> {
        self.inner.change_head().await
    }

    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef> {
        self.inner.put_env(spec).await
    }

    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec> {
        self.inner.get_env(env_ref).await
    }

    async fn put_module(&self, module: &crate::script::Module) -> Result<crate::script::ModulePut> {
        self.inner.put_module(module).await
    }

    async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<crate::script::ModuleInfo>> {
        self.inner.list_modules(after, limit).await
    }

    async fn get_module(&self, module_ref: &str) -> Result<crate::script::Module> {
        self.inner.get_module(module_ref).await
    }

    async fn fencing_token(&self, id: &str) -> Result<u64> {
        self.inner.fencing_token(id).await
    }

    async fn wait(&self, lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<bool> {
        let due = wait.until_ms.is_some();
        let recorded = self.inner.wait(lease, wait, seen_sequence).await?;
        if recorded {
            // The wait appended one event right after the log the run had read.
            self.hub.publish(&lease.process_id, seen_sequence + 1);
            // A wait never ends its process: nothing for a terminal-only sink.
            if self.sink.as_ref().is_some_and(|s| !s.terminal_only) {
                if let Ok(record) = self.inner.get(&lease.process_id).await {
                    self.sink_tail(&record, 1).await;
                }
            }
            if due {
                // A new deadline: drivers look again for the earliest due time.
                self.hub.notify_work();
            }
        }
        Ok(recorded)
    }

    async fn resume(&self, lease: &Lease, payload: serde_json::Value) -> Result<ProcessRecord> {
        let before = self.sequence_if_sinking(&lease.process_id).await;
        let r = self.inner.resume(lease, payload).await?;
        // A repeated resumption is answered by the one written: nothing new
        // for the sink then.
        let appended = if self.sink.is_some() {
            r.last_sequence.saturating_sub(before).min(1)
        } else {
            1
        };
        self.after_write(&r, appended).await;
        Ok(r)
    }

    async fn next_due(&self, after_ms: u64) -> Result<Option<u64>> {
        self.inner.next_due(after_ms).await
    }

    async fn gauges(&self) -> Result<crate::model::Gauges> {
        self.inner.gauges().await
    }

    async fn insert_schedule(&self, schedule: &Schedule) -> Result<Option<Schedule>> {
        let r = self.inner.insert_schedule(schedule).await?;
        if r.is_none() {
            // A new due time: the driver looks at it before its current sleep ends.
            self.hub.notify_work();
        }
        Ok(r)
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>> {
        self.inner.get_schedule(id).await
    }

    async fn list_schedules(&self, after_id: Option<&str>, limit: usize) -> Result<Vec<Schedule>> {
        self.inner.list_schedules(after_id, limit).await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        self.inner.delete_schedule(id).await
    }

    async fn set_schedule_paused(&self, id: &str, paused: bool, next_fire_ms: Option<u64>) -> Result<Option<Schedule>> {
        let r = self.inner.set_schedule_paused(id, paused, next_fire_ms).await?;
        if r.is_some() && !paused {
            self.hub.notify_work();
        }
        Ok(r)
    }

    async fn advance_schedule(&self, id: &str, expected_next_fire_ms: u64, advance: &ScheduleAdvance) -> Result<bool> {
        self.inner.advance_schedule(id, expected_next_fire_ms, advance).await
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<Schedule>> {
        self.inner.due_schedules(now_ms, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::{ChangeHub, RECENT_ENDS};
    use crate::model::{Disposition, ProcessInput, ProcessRecord, ProcessStatus, Registration};

    fn ended(id: &str) -> ProcessRecord {
        let reg = registration(id, Disposition::ExternallyOwned);
        let mut r = crate::fold::initial_record(&reg, 5).expect("record");
        r.status = ProcessStatus::Completed;
        r.last_sequence = 1;
        assert!(r.is_terminal());
        r
    }

    /// Ends are kept for a later subscriber, unwatched, up to the bound and
    /// first in first out; a prune's `forget_ends` drops them all.
    #[test]
    fn recent_ends_answer_a_later_subscriber_within_their_bound() {
        let hub = ChangeHub::new();
        hub.publish_record(&ended("first"));
        assert_eq!(
            hub.subscribe("first").ended().map(|r| r.id.clone()).as_deref(),
            Some("first")
        );
        assert!(hub.subscribe("other").ended().is_none());
        for i in 0..RECENT_ENDS {
            hub.publish_record(&ended(&format!("p{i}")));
        }
        assert!(
            hub.subscribe("first").ended().is_none(),
            "the oldest end was not let go"
        );
        let last = format!("p{}", RECENT_ENDS - 1);
        assert!(hub.subscribe(&last).ended().is_some());
        assert_eq!(hub.inner.recent_ends.lock().records.len(), RECENT_ENDS);
        hub.forget_ends();
        assert!(hub.subscribe(&last).ended().is_none());
        hub.publish_record(&ended("again"));
        hub.resync();
        assert!(
            hub.subscribe("again").ended().is_none(),
            "a resync kept the recent ends"
        );
        let mut big = ended("big");
        big.outcome = Some(crate::model::Outcome::success(serde_json::json!(
            "x".repeat(super::RECENT_END_BYTES)
        )));
        hub.publish_record(&big);
        assert!(hub.subscribe("big").ended().is_none(), "a large end was kept");
        let watched = hub.subscribe("big");
        hub.publish_record(&big);
        assert!(watched.ended().is_some(), "a watcher gets it all the same");
    }

    #[test]
    fn the_last_dropped_subscription_frees_its_process() {
        let hub = ChangeHub::new();
        let a = hub.subscribe("p");
        let b = hub.subscribe("p");
        let _c = hub.subscribe("q");
        assert_eq!(hub.inner.watchers.lock().len(), 2);
        drop(a);
        assert!(hub.inner.watchers.lock().contains_key("p"), "b still listens");
        hub.publish("p", 1);
        assert_eq!(*b.borrow(), 1);
        drop(b);
        assert!(!hub.inner.watchers.lock().contains_key("p"), "nothing left of p");
        assert_eq!(hub.inner.watchers.lock().len(), 1);
    }

    fn registration(id: &str, disposition: Disposition) -> Registration {
        Registration {
            id: id.into(),
            input: ProcessInput::External {
                metadata: serde_json::json!({}),
            },
            disposition,
            event_types: Vec::new(),
            provenance: Default::default(),
            wake_target: None,
            env_ref: None,
            external_ref: None,
        }
    }

    /// Whether the hub holds a work notice (a driver waiting now would wake).
    fn work_noticed(hub: &ChangeHub) -> bool {
        use futures::FutureExt;
        hub.work_available().now_or_never().is_some()
    }

    /// A registration a worker may claim tells the drivers of work; an
    /// externally owned one, which no worker ever runs, does not (each notice
    /// costs every driver a claim that finds nothing).
    #[tokio::test]
    async fn only_a_registration_a_worker_may_claim_tells_of_work() {
        use crate::registry::ProcessRegistry;
        let hub = ChangeHub::default();
        let watched = super::WatchedRegistry::new(std::sync::Arc::new(crate::MemoryRegistry::new()), hub.clone(), None);
        assert!(!work_noticed(&hub), "a fresh hub holds no notice");
        let r = watched
            .register(registration("ext", Disposition::ExternallyOwned), None)
            .await
            .expect("register");
        assert!(r.created);
        assert!(!work_noticed(&hub), "an externally owned registration told of work");
        for d in [Disposition::Rerunnable, Disposition::OwnerBound] {
            let id = format!("{d:?}");
            watched.register(registration(&id, d), None).await.expect("register");
            assert!(work_noticed(&hub), "{id}: a claimable registration told of no work");
            assert!(!work_noticed(&hub), "the notice was taken");
        }
    }

    /// A cancellation request that wrote nothing (repeated while the first
    /// is on record, or after the process ended) tells its watchers nothing:
    /// no notice, no "something changed", no work.
    #[tokio::test]
    async fn a_cancel_that_wrote_nothing_publishes_nothing() {
        use crate::registry::ProcessRegistry;
        let hub = ChangeHub::default();
        let watched = super::WatchedRegistry::new(std::sync::Arc::new(crate::MemoryRegistry::new()), hub.clone(), None);
        let mut all = hub.subscribe_all();
        let heard = |sub: &mut super::Subscription, all: &mut tokio::sync::watch::Receiver<u64>| {
            let one = sub.has_changed().expect("hub alive");
            let any = all.has_changed().expect("hub alive");
            sub.mark_unchanged();
            all.mark_unchanged();
            one || any
        };
        // Externally owned: the request stays on record while it runs.
        watched
            .register(registration("ext", Disposition::ExternallyOwned), None)
            .await
            .expect("register");
        let mut sub = hub.subscribe("ext");
        let reason = || Some("superseded".to_string());
        let first = watched.request_cancel("ext", reason()).await.expect("cancel");
        assert_eq!(first.appended, 1);
        assert!(heard(&mut sub, &mut all), "the first request is a change");
        let _ = work_noticed(&hub);
        let again = watched.request_cancel("ext", reason()).await.expect("repeat");
        assert_eq!(again.appended, 0);
        assert!(
            !heard(&mut sub, &mut all),
            "a repeat while running was heard as a change"
        );
        assert!(!work_noticed(&hub), "a repeat while running told of work");
        watched
            .complete_external("ext", crate::model::Outcome::success(serde_json::json!(1)), "owner")
            .await
            .expect("complete");
        assert!(heard(&mut sub, &mut all), "the end is a change");
        let after_end = watched
            .request_cancel("ext", reason())
            .await
            .expect("repeat after the end");
        assert_eq!(after_end.appended, 0);
        assert!(after_end.process.is_terminal());
        assert!(
            !heard(&mut sub, &mut all),
            "a repeat after the end was heard as a change"
        );
        assert!(!work_noticed(&hub), "a repeat after the end told of work");
        // Cancelled at once (never started), then repeated.
        watched
            .register(registration("queued", Disposition::Rerunnable), None)
            .await
            .expect("register");
        let _ = work_noticed(&hub);
        let mut queued = hub.subscribe("queued");
        let ended = watched.request_cancel("queued", reason()).await.expect("cancel");
        assert!(ended.cancelled_now);
        assert!(heard(&mut queued, &mut all), "the cancellation is a change");
        let repeat = watched.request_cancel("queued", reason()).await.expect("repeat");
        assert_eq!(repeat.appended, 0);
        assert!(
            !heard(&mut queued, &mut all),
            "a repeat after a cancellation was heard as a change"
        );
        assert!(!work_noticed(&hub), "a repeat after a cancellation told of work");
    }
}
