//! The worker (the only executor) and the work driver that keeps it busy.
//!
//! A drive reconciles lapsed abandon requests, then claims a bounded batch of
//! run candidates (free or expired leases only) and runs each on its own task
//! under a concurrency bound. A run renews its lease, watches for cancellation,
//! and ends with the fenced, atomic completion. A run that loses its lease stops
//! and writes nothing more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::awaiter::Awaiter;
use crate::clock::SharedClock;
use crate::model::{AbandonEvidence, AbandonWriter, Claim, Disposition, NodeIdentity, Outcome, ProcessInput};
use crate::registry::ProcessRegistry;
use crate::script::ScriptEngine;
use crate::tool::{StopReason, ToolContext, ToolRegistry};
use crate::watch::ChangeHub;
use crate::{CairnError, Result};

/// The most pages of the abandon worklist one drive reconciles (the next
/// drive goes on where it stopped).
const ABANDON_PAGES_PER_DRIVE: usize = 16;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This worker's owner identity on leases when it has no `node_id`.
    /// Unique per worker incarnation.
    pub owner_id: String,
    /// The stable id of the node this worker runs on (the same across
    /// restarts; see [`NodeIdentity`]). With one, the driver registers a new
    /// incarnation of the node before its first drive and claims as
    /// `{node}#{incarnation}`, so a restart sweeps what the dead incarnation
    /// left (SPEC §2, `sweep`). Without one, leases carry `owner_id` and what
    /// a crash leaves waits for an abandon request.
    pub node_id: Option<String>,
    /// Lease time-to-live; renewed every third of it while a run is alive.
    /// At least 1 ms (every claim under a shorter one is refused).
    pub lease_ttl: Duration,
    /// Most runs at once (0 is taken as 1).
    pub concurrency: usize,
    /// Most claims per drive round: at least 1.
    pub batch_size: usize,
    /// The longest the driver sleeps without a notice or a due time: a
    /// backstop, since due times (lease expiries, deadlines) wake it exactly.
    /// It is also how often the driver sweeps (after the sweep at start) and
    /// heartbeats its node's liveness row; a worker that claims heartbeats
    /// before its claims as well, at most once a second. `Duration::MAX` (or
    /// any span too long to come) means no periodic sweep: the driver sweeps
    /// at start only. Zero is refused (the driver would spin).
    pub sweep_interval: Duration,
    /// How long a stopped tool gets to return before its task is aborted.
    pub stop_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            owner_id: format!("worker-{}", uuid::Uuid::new_v4()),
            node_id: None,
            lease_ttl: Duration::from_secs(30),
            concurrency: 64,
            batch_size: 64,
            sweep_interval: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl WorkerConfig {
    /// Why a worker under this configuration could never run anything, in
    /// words naming the field; `None` when it could. Checked when a runtime
    /// is built ([`crate::RuntimeBuilder::start`]).
    pub(crate) fn unusable(&self) -> Option<String> {
        if self.batch_size == 0 {
            return Some(
                "`WorkerConfig::batch_size` is 0: a worker that claims no process a round never runs one; \
                 give it at least 1"
                    .into(),
            );
        }
        if self.sweep_interval.is_zero() {
            return Some(
                "`WorkerConfig::sweep_interval` is 0: the driver would sweep and drive without a pause, \
                 spinning a core; give it at least 1 ms (`Duration::MAX` for no periodic sweep)"
                    .into(),
            );
        }
        if self.lease_ttl < Duration::from_millis(1) {
            return Some(format!(
                "`WorkerConfig::lease_ttl` is {:?}: every claim under a lease shorter than 1 ms is refused, \
                 so the worker would never run a process",
                self.lease_ttl
            ));
        }
        // The checks the store makes of the node id it registers, or of the
        // owner id every claim names: refused there, nothing is ever claimed.
        let refused = match &self.node_id {
            Some(node) => NodeIdentity::validate_node_id(node).err().map(|e| ("node_id", e)),
            None => crate::validate::validate_id("owner id", &self.owner_id)
                .err()
                .map(|e| ("owner_id", e)),
        };
        refused.map(|(field, e)| {
            format!(
                "`WorkerConfig::{field}` would be refused by the store ({e}), so the worker would never run a process"
            )
        })
    }
}

/// What a caught panic says (its message, when it has one).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// `span` from now, or a time too far off to come when that is past what
/// an instant holds (a sweep interval of `Duration::MAX`).
fn from_now(span: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(span)
        .or_else(|| now.checked_add(FAR_OFF))
        .unwrap_or(now)
}

/// A span no wait of the driver outlasts (about 30 years, as tokio's own
/// far-off instant).
const FAR_OFF: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The longest the driver waits between tries to register its node while
/// the store refuses: a short sweep interval shortens it, a long one (or
/// `Duration::MAX`) does not stretch it past this.
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(5);

/// The wait before the next try to register the node, after `retry`:
/// doubling, but never past the sweep interval or [`REGISTER_RETRY_MAX`].
fn next_register_retry(retry: Duration, sweep_interval: Duration) -> Duration {
    retry.saturating_mul(2).min(sweep_interval).min(REGISTER_RETRY_MAX)
}

/// How long a run's guard trusts the record its claim carried before reading it
/// once (see `guard_run`).
const FIRST_CHECK: Duration = Duration::from_millis(100);

/// A worker with a node id heartbeats its liveness row before it claims when
/// it last did so this long ago (by its clock): a runtime whose node id a
/// newer incarnation took stops claiming within this much of its claiming,
/// not at its next sweep. A busy worker pays one write a second for it; an
/// idle one claims nothing and pays nothing.
const LIVENESS_EVERY_MS: u64 = 1_000;

/// Why a lease lapsed under its holder, as the reasons below say it: a
/// renewal that did not reach the store, or none sent (the node stopped,
/// paused or asleep past the lease); the owner cannot tell which.
macro_rules! lapse_cause {
    () => {
        "(no renewal reached the store in time: the store was out of reach, or this node was paused)"
    };
}

/// Why an owner files the abandon request of an owner-bound run whose
/// lease lapsed under it (`Worker::abandon_lost`).
const STOPPED_AT_LAPSE: &str = concat!(
    "its owner-bound run was stopped when its lease lapsed ",
    lapse_cause!(),
    "; its outcome is unknown"
);
/// The same, for a run that ended but whose outcome could not be written.
const UNWRITTEN_OUTCOME: &str = concat!(
    "its owner-bound run ended, but its outcome could not be written before its lease lapsed ",
    lapse_cause!(),
    "; the outcome is lost"
);

/// The same, for a claim whose lease lapsed while it waited for a slot.
const LAPSED_WAITING: &str = concat!(
    "its owner-bound claim's lease lapsed while it waited for a worker slot ",
    lapse_cause!(),
    ", so it never ran"
);

/// The same, for a claim whose lease lapsed while what it runs was read.
const LAPSED_LOADING: &str = concat!(
    "its owner-bound claim's lease lapsed while its module or env was read ",
    lapse_cause!(),
    ", so it never ran"
);

/// A guard's read or renewal not asked at all: the lease had lapsed before
/// it (`Worker::until_lapse`).
const LAPSED_BEFORE_CALL: &str = concat!("the lease had lapsed before the store could be asked ", lapse_cause!());

/// What the run guard logs when it stops a run at its lease's lapse, after
/// `what` ("read", "renewal") failed: the calls failed until the lapse, or
/// the lease had lapsed before the call was made (`lapsed_before`).
fn guard_stop_message(what: &str, lapsed_before: bool) -> String {
    if lapsed_before {
        format!(
            "the lease had lapsed before the run guard's {what} could be tried ({}); the run stops",
            lapse_cause!().trim_start_matches('(').trim_end_matches(')')
        )
    } else {
        format!("the run guard's {what}s failed until the lease lapsed; the run stops")
    }
}

/// The same, for a claim whose lease lapsed before its run began, with
/// nothing read in between (this node was paused, or its runtime starved).
const LAPSED_UNRUN: &str = concat!(
    "its owner-bound claim's lease lapsed before its run began ",
    lapse_cause!(),
    ", so it never ran"
);

/// The same, for a start whose claim was written but whose answer was lost.
const LOST_START: &str =
    "its owner-bound start claimed it for this node, but the answer was lost (the store was out of reach), so it never ran";

/// A worker slot a start reserved ([`Worker::slot_for_start`]): the owner and
/// lease time its claim takes; dropping it frees the slot.
pub(crate) struct StartSlot {
    held: Held,
    pub(crate) owner: String,
    pub(crate) ttl_ms: u64,
}

/// A claim counted in [`Worker::unplaced`]; dropping it uncounts it.
struct Unplaced(Arc<Worker>);

/// A run in flight: while it lives its guard renews the lease; dropped,
/// the guard stops and the run leaves the in-flight set.
struct Running<'a> {
    worker: &'a Worker,
    id: String,
    /// This run's context: the in-flight entry it removes, and no other.
    ctx: ToolContext,
    guard: tokio::task::JoinHandle<()>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.guard.abort();
        // A newer run of the same process (claimed again here while this
        // one wound down: it suspended and a signal came, or it lost its
        // lease and this worker took the process back) holds the entry now;
        // a drain must still find and stop it.
        let mut in_flight = self.worker.in_flight.lock();
        if in_flight.get(&self.id).is_some_and(|c| c.is_same_run(&self.ctx)) {
            in_flight.remove(&self.id);
        }
        // The slot is still held (the run's completion is written next):
        // the driver and `wait_idle` are told when it is released (`Held`).
    }
}

/// A run's slot, or one a start reserved: dropped (when the run's task
/// ends, by a panic too, or when the start claimed nothing), it releases the
/// permit and then tells the driver and `wait_idle`, in that order, so
/// whoever wakes finds the slot free.
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    worker: Arc<Worker>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.worker.slot_freed.notify_waiters();
        self.worker.idle.notify_waiters();
    }
}

impl Drop for Unplaced {
    fn drop(&mut self) {
        self.0.unplaced.fetch_sub(1, Ordering::SeqCst);
        self.0.idle.notify_waiters();
    }
}

/// Claims and runs processes. Share it as `Arc<Worker>`.
pub struct Worker {
    registry: Arc<dyn ProcessRegistry>,
    tools: ToolRegistry,
    scripts: Option<Arc<dyn ScriptEngine>>,
    awaiter: Awaiter,
    hub: Option<ChangeHub>,
    clock: SharedClock,
    config: WorkerConfig,
    slots: Arc<Semaphore>,
    in_flight: Mutex<HashMap<String, ToolContext>>,
    tasks: Mutex<JoinSet<()>>,
    draining: AtomicBool,
    /// Whether runs are stopped as they begin: set by a drain (and a
    /// superseded node), not by [`Worker::stop_claiming`], under which the
    /// claims already made still run.
    stopping_runs: AtomicBool,
    /// Whether the worklist may hold work this worker has not claimed: set
    /// until a drive finds fewer candidates than it had free slots. While it
    /// is set a start does not claim its own process (older work goes first).
    backlog: AtomicBool,
    /// The last drive stopped reconciling abandon requests at its page cap
    /// with more to do: the driver drives again at once.
    abandons_left: AtomicBool,
    idle: Notify,
    /// Told when a run releases its slot, and only then: the driver listens
    /// for it (from before each drive) while work may be waiting for a slot.
    slot_freed: Notify,
    /// Claims made, or being made, that hold no slot yet: a drive's claim
    /// before it is placed, and a claim waiting for a slot a start took. A
    /// drain waits for them as for runs (each is, or will be, started).
    unplaced: AtomicUsize,
    /// This start's node incarnation and its owner id, once registered.
    identity: std::sync::OnceLock<(NodeIdentity, String)>,
    /// Cancelled once a newer incarnation of this worker's node id is found
    /// registered: another runtime runs under the id ([`Self::superseded`]).
    superseded: tokio_util::sync::CancellationToken,
    /// Cancelled by [`Self::drain`]: the abandon requests still being filed
    /// (`abandon_lost`) stop asking.
    stopping: tokio_util::sync::CancellationToken,
    /// When (clock ms) a heartbeat last found this incarnation current.
    liveness_checked_ms: AtomicU64,
}

impl Worker {
    /// A worker over `registry`, running `tools`. With `hub`, a run's guard learns of
    /// changes to its process (a cancel request) from the hub before it reads the record.
    pub fn new(
        registry: Arc<dyn ProcessRegistry>,
        tools: ToolRegistry,
        awaiter: Awaiter,
        hub: Option<ChangeHub>,
        clock: SharedClock,
        config: WorkerConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            registry,
            tools,
            scripts: None,
            awaiter,
            hub,
            clock,
            config,
            in_flight: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            draining: AtomicBool::new(false),
            stopping_runs: AtomicBool::new(false),
            backlog: AtomicBool::new(true),
            abandons_left: AtomicBool::new(false),
            idle: Notify::new(),
            slot_freed: Notify::new(),
            unplaced: AtomicUsize::new(0),
            identity: std::sync::OnceLock::new(),
            superseded: tokio_util::sync::CancellationToken::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
            liveness_checked_ms: AtomicU64::new(0),
        })
    }

    /// The same worker running `script` inputs with `engine` (SPEC §14).
    /// Call before the worker is shared.
    pub fn with_script_engine(mut self: Arc<Self>, engine: Arc<dyn ScriptEngine>) -> Arc<Self> {
        match Arc::get_mut(&mut self) {
            Some(w) => w.scripts = Some(engine),
            None => tracing::error!("a script engine set on a shared worker is ignored"),
        }
        self
    }

    /// The owner id this worker claims as: its node incarnation's once
    /// registered, else the configured `owner_id`.
    pub fn owner_id(&self) -> &str {
        match self.identity.get() {
            Some((_, owner)) => owner,
            None => &self.config.owner_id,
        }
    }

    /// This start's node incarnation, once [`join_node`](Self::join_node) registered it.
    pub fn identity(&self) -> Option<&NodeIdentity> {
        self.identity.get().map(|(n, _)| n)
    }

    /// Register a new incarnation of the configured node (once; later calls
    /// answer the same). `None` without a `node_id`.
    pub async fn join_node(&self) -> Result<Option<NodeIdentity>> {
        let Some(node) = &self.config.node_id else {
            return Ok(None);
        };
        if let Some(id) = self.identity() {
            return Ok(Some(id.clone()));
        }
        let identity = self.registry.register_node(node).await?;
        tracing::info!(node = %identity.node, incarnation = identity.incarnation, "node registered");
        self.release_earlier_leases(&identity).await;
        let owner = identity.owner_id();
        let _ = self.identity.set((identity, owner));
        Ok(self.identity().cloned())
    }

    /// Release the leases earlier incarnations of this node hold on running
    /// rerunnable processes: their owner is gone (ADR 0017), so they are
    /// claimed now, not once each lease expires (a restart after a crash
    /// would otherwise wait out the lease before running them again). A
    /// store that fails here leaves them to lapse, as before.
    async fn release_earlier_leases(&self, identity: &NodeIdentity) {
        let limit = self.config.batch_size.max(1);
        let mut released = 0;
        loop {
            let leases = match self
                .registry
                .leases_of_earlier_incarnations(&identity.node, identity.incarnation, limit)
                .await
            {
                Ok(leases) => leases,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the leases an earlier incarnation held; they lapse instead");
                    break;
                }
            };
            let mut now = 0;
            for lease in &leases {
                match self.registry.release(lease).await {
                    Ok(true) => now += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(process_id = %lease.process_id, error = %e, "could not release an earlier incarnation's lease; it lapses instead")
                    }
                }
            }
            released += now;
            // A full page that released nothing would come back unchanged.
            if leases.len() < limit || now == 0 {
                break;
            }
        }
        if released > 0 {
            tracing::info!(released, node = %identity.node, "released the leases an earlier incarnation of this node held");
        }
    }

    /// One sweep: heartbeat this node's liveness row, then write
    /// `abandoned {sweep}` for every running `owner_bound` process an earlier
    /// incarnation of a node started, once that node registered a newer one
    /// (this node after a restart, or a peer that restarted). Answers how many
    /// it ended.
    pub async fn sweep(&self) -> Result<usize> {
        self.check_superseded().await?;
        let mut swept = 0;
        loop {
            let items = self.registry.sweep_worklist(self.config.batch_size.max(1)).await?;
            let n = items.len();
            let mut ended = 0;
            for item in items {
                match self
                    .registry
                    .sweep(&item.process_id, &item.node, item.incarnation)
                    .await
                {
                    Ok(Some(_)) => {
                        ended += 1;
                        tracing::info!(process_id = %item.process_id, node = %item.node, "swept: its owner's node restarted");
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(process_id = %item.process_id, error = %e, "sweep failed"),
                }
            }
            swept += ended;
            // A full page that ended nothing would come back unchanged.
            if n < self.config.batch_size.max(1) || ended == 0 {
                return Ok(swept);
            }
        }
    }

    /// Heartbeat this node's liveness row; when a newer incarnation of the
    /// node id has registered since this one, the worker is superseded: it
    /// stops claiming (as a drain does, leaving its runs to end as they
    /// will: a sweep by the newer one has fenced its `owner_bound` leases)
    /// and [`Self::superseded`] resolves, for the host to stop.
    async fn check_superseded(&self) -> Result<()> {
        let Some(identity) = self.identity() else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        if self.registry.heartbeat(identity).await? {
            self.liveness_checked_ms.fetch_max(now, Ordering::SeqCst);
            return Ok(());
        }
        if self.superseded.is_cancelled() {
            return Ok(());
        }
        tracing::error!(
            node = %identity.node,
            incarnation = identity.incarnation,
            "a newer incarnation of this node id registered: another runtime uses the same node id and \
             sweeps this one's owner_bound work; this worker claims nothing more"
        );
        self.draining.store(true, Ordering::SeqCst);
        self.stopping_runs.store(true, Ordering::SeqCst);
        self.superseded.cancel();
        self.idle.notify_waiters();
        Ok(())
    }

    /// Whether this worker has a node incarnation whose liveness it last
    /// checked [`LIVENESS_EVERY_MS`] ago or more: it checks before it claims.
    fn liveness_due(&self) -> bool {
        self.identity().is_some()
            && self
                .clock
                .now_ms()
                .saturating_sub(self.liveness_checked_ms.load(Ordering::SeqCst))
                >= LIVENESS_EVERY_MS
    }

    /// [`Self::check_superseded`] when a run lost its process to another
    /// writer; a failure to ask is left to the next sweep.
    async fn check_superseded_after_loss(&self) {
        if let Err(e) = self.check_superseded().await {
            tracing::warn!(error = %e, "could not heartbeat this node after a run lost its lease");
        }
    }

    /// Resolves once this worker found a newer incarnation of its node id
    /// registered (at a sweep, before a claim, or when a run's process was
    /// ended by another writer): two runtimes share the node id, and this one has stopped
    /// claiming. A host should stop this runtime (`cairn serve` exits).
    pub async fn superseded(&self) {
        self.superseded.cancelled().await;
    }

    /// Whether [`Self::superseded`] has resolved.
    pub fn is_superseded(&self) -> bool {
        self.superseded.is_cancelled()
    }

    /// The configuration this worker was built with.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Slots free now (of `config().concurrency`).
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Ids this worker is running now.
    pub fn running(&self) -> Vec<String> {
        self.in_flight.lock().keys().cloned().collect()
    }

    /// One drive: reconcile lapsed abandon requests, then claim and start runs
    /// until the worklist is empty or every slot is busy. Answers how many runs it started.
    pub async fn drive_once(self: &Arc<Self>) -> Result<usize> {
        if self.draining.load(Ordering::SeqCst) {
            // Nothing is left for a drive that claims nothing: the driver
            // must not come straight back for reconciliations it skips.
            self.abandons_left.store(false, Ordering::SeqCst);
            return Ok(0);
        }
        // Abandon requests are never run candidates, so reconciling them runs
        // beside the claims rather than ahead of them (a start waits for no
        // extra read).
        let (reconciled, claimed) = tokio::join!(self.reconcile_abandons(), self.claim_and_start());
        reconciled?;
        let started = claimed?;
        self.reap_finished();
        Ok(started)
    }

    /// Reconcile the abandon worklist page by page while pages come back
    /// full (a burst of requests is not left for the sweep, which no notice
    /// may wake), up to [`ABANDON_PAGES_PER_DRIVE`] pages, and not again
    /// after a page of which nothing was reconciled.
    async fn reconcile_abandons(&self) -> Result<()> {
        let page = self.config.batch_size.max(1);
        self.abandons_left.store(false, Ordering::SeqCst);
        for _ in 0..ABANDON_PAGES_PER_DRIVE {
            let ids = self.registry.abandon_worklist(page).await?;
            let mut reconciled = 0;
            for id in &ids {
                match self.registry.reconcile_abandon(id).await {
                    Ok(_) => reconciled += 1,
                    Err(e) => tracing::warn!(process_id = %id, error = %e, "abandon reconciliation failed"),
                }
            }
            if ids.len() < page || reconciled == 0 {
                return Ok(());
            }
        }
        // Full pages, each reconciled, up to the cap: the rest is for the
        // next drive, at once (no notice would come for it).
        self.abandons_left.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Claim and start runs until the worklist is empty or every slot is busy.
    async fn claim_and_start(self: &Arc<Self>) -> Result<usize> {
        let mut started = 0;
        loop {
            // Counted before draining is read: a drain that has begun either
            // stops this claim or waits for what it claims.
            let _unplaced = self.unplaced();
            if self.draining.load(Ordering::SeqCst) {
                break;
            }
            if self.liveness_due() {
                if let Err(e) = self.check_superseded().await {
                    self.backlog.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                if self.draining.load(Ordering::SeqCst) {
                    break;
                }
            }
            let free = self.slots.available_permits().min(self.config.batch_size);
            if free == 0 {
                // Every slot is busy: what the worklist holds is unknown.
                self.backlog.store(true, Ordering::SeqCst);
                break;
            }
            let claims = match self.registry.claim_batch(self.owner_id(), self.ttl_ms(), free).await {
                Ok(claims) => claims,
                Err(e) => {
                    self.backlog.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let n = claims.len();
            self.backlog.store(n >= free, Ordering::SeqCst);
            for claim in claims {
                match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => self.run_in(claim, self.hold(permit)),
                    // A start took the slot since it was counted
                    // (`slot_for_start`). The claim is made and, for an
                    // owner-bound process, started: it cannot be handed back,
                    // so it waits for the next free slot, keeping its lease.
                    Err(_) => self.run_when_a_slot_frees(claim),
                }
                started += 1;
            }
            if n < free {
                break;
            }
        }
        Ok(started)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn hold(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Held {
        Held {
            permit: Some(permit),
            worker: self.clone(),
        }
    }

    /// Run `claim` on its own task in the slot `held` holds.
    fn run_in(self: &Arc<Self>, claim: Claim, held: Held) {
        let this = self.clone();
        self.tasks.lock().spawn(async move {
            this.run_claim(claim).await;
            drop(held);
        });
    }

    /// Run `claim` once a slot frees, renewing its lease every third of its
    /// time to live meanwhile (a run renews it from then on). A fenced
    /// renewal means the lease is lost: nothing runs, and nothing more is
    /// written; one the store failed is tried again at the next third, as a
    /// run's guard does, until the lease has lapsed by this node's clock.
    fn run_when_a_slot_frees(self: &Arc<Self>, mut claim: Claim) {
        let this = self.clone();
        let unplaced = self.unplaced();
        self.tasks.lock().spawn(async move {
            let ttl = this.config.lease_ttl;
            let every = (ttl / 3).max(Duration::from_millis(10));
            let permit = loop {
                tokio::select! {
                    permit = this.slots.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => return,
                    },
                    _ = tokio::time::sleep(every) => {
                        match this.registry.renew(&claim.lease, this.ttl_ms()).await {
                            Ok(lease) => {
                                claim.process.lease = Some(lease.view());
                                claim.lease = lease;
                            }
                            Err(e) if e.is_client_error() || this.clock.now_ms() >= claim.lease.expires_at_ms => {
                                tracing::warn!(process_id = %claim.process.id, error = %e,
                                    "a claim waiting for a slot lost its lease");
                                this.lapsed_unrun(&claim);
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(process_id = %claim.process.id, error = %e,
                                    "a claim waiting for a slot could not renew its lease; will retry");
                            }
                        }
                    }
                }
            };
            // Held first: a slot given back unused is heard freed (by the
            // driver and a drain) as any other.
            let held = this.hold(permit);
            // The record as it stands now, not as the claim read it: a
            // cancellation requested while it waited ends it before anything
            // runs (its guard would hear of it only after the tool began).
            // A read the store fails (or that outlasts the lease) leaves the
            // claim's, and the guard.
            let left = claim.lease.expires_at_ms.saturating_sub(this.clock.now_ms());
            let read = tokio::time::timeout(Duration::from_millis(left), this.registry.get(&claim.process.id));
            if let Ok(Ok(mut record)) = read.await {
                record.lease = Some(claim.lease.view());
                claim.process = record;
            }
            // A lease whose renewals failed until it lapsed (or that lapsed
            // while the record was read) is not run on: a peer may hold the
            // process by now.
            if this.clock.now_ms() >= claim.lease.expires_at_ms {
                tracing::warn!(process_id = %claim.process.id,
                    "a claim waiting for a slot let its lease lapse; it does not run");
                this.lapsed_unrun(&claim);
                return;
            }
            drop(unplaced);
            this.run_claim(claim).await;
            drop(held);
        });
    }

    /// A claim that lost its lease before it ran: a rerunnable process is
    /// claimed again by whoever comes next, but an owner-bound one is started
    /// and can never run again, so its owner files the abandon request (it
    /// would otherwise stay `running` with nobody to end it).
    fn lapsed_unrun(&self, claim: &Claim) {
        if claim.process.disposition == Disposition::OwnerBound {
            self.abandon_lost(&claim.lease, LAPSED_WAITING);
        }
    }

    /// Count a claim that holds no slot yet until the guard drops.
    fn unplaced(self: &Arc<Self>) -> Unplaced {
        self.unplaced.fetch_add(1, Ordering::SeqCst);
        Unplaced(self.clone())
    }

    /// A free slot for a start to claim its own process into, in the
    /// registration's write ([`ProcessRegistry::register_claimed`]), when
    /// taking new work now passes over none: the worker is not draining, its
    /// node incarnation is registered (leases name it), and its last drive
    /// emptied the worklist. The caller runs the claim with [`Self::run_started`]
    /// or drops the slot.
    pub(crate) fn slot_for_start(self: &Arc<Self>) -> Option<StartSlot> {
        if self.draining.load(Ordering::SeqCst) || self.backlog.load(Ordering::SeqCst) {
            return None;
        }
        if self.config.node_id.is_some() && self.identity.get().is_none() {
            return None;
        }
        // A liveness check is due: the drive this start wakes makes it
        // before it claims, so the start does not wait for the heartbeat.
        if self.liveness_due() {
            return None;
        }
        let held = self.hold(self.slots.clone().try_acquire_owned().ok()?);
        // Read again with the slot held: a drain that began after the first
        // read may have counted every slot free and returned, and a start
        // must not claim after it (a drain that begins later waits for
        // this slot, and hears it freed when `held` drops).
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        Some(StartSlot {
            held,
            owner: self.owner_id().to_string(),
            ttl_ms: self.ttl_ms(),
        })
    }

    /// Run what a start claimed in the slot it reserved.
    pub(crate) fn run_started(self: &Arc<Self>, claim: Claim, slot: StartSlot) {
        self.run_in(claim, slot.held);
    }

    /// A start that claims for this worker whose answer was lost
    /// (`outcome_unknown`): the write may have registered the process and
    /// claimed it for this worker, which will never run it (the claim's
    /// lease never reached it). An owner-bound process so claimed (and so
    /// `started`) would stay `running` with nobody to end it: once the
    /// store answers, its owner files the abandon request. A rerunnable one
    /// is claimed again when the lease lapses; nothing is done for it.
    pub(crate) fn settle_lost_start(self: &Arc<Self>, id: String, asked_at_ms: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            // Read until the store answers. Unknown is no answer at once: a
            // commit whose answer was lost may still be finishing (a broken
            // connection's `COMMIT`), so it is asked again a few times over
            // some seconds before it is taken as "nothing was written".
            let mut delay = Duration::from_millis(100);
            let mut unknown_left = 6u32;
            let record = loop {
                let read = tokio::select! {
                    read = this.registry.get(&id) => read,
                    _ = this.stopping.cancelled() => return,
                };
                match read {
                    Ok(record) => break record,
                    Err(CairnError::UnknownProcess(_)) if unknown_left > 0 => unknown_left -= 1,
                    // Not registered, or not this start's to settle.
                    Err(e) if e.is_client_error() => return,
                    Err(_) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = this.stopping.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            };
            let owner = this.owner_id();
            let claimed_here = record.status == crate::model::ProcessStatus::Running
                && record.disposition == Disposition::OwnerBound
                && record.created_at_ms >= asked_at_ms
                && record.lease.as_ref().is_some_and(|l| l.owner_id == owner)
                && record
                    .started
                    .as_ref()
                    .is_some_and(|s| s.owner_id == owner && s.attempt == 1)
                && !this.in_flight.lock().contains_key(&id);
            if claimed_here {
                let lease = crate::model::Lease {
                    process_id: id.clone(),
                    owner_id: owner.to_string(),
                    lease_token: String::new(),
                    fencing_token: record.lease.as_ref().map_or(0, |l| l.fencing_token),
                    claimed_at_ms: 0,
                    expires_at_ms: 0,
                };
                this.abandon_lost(&lease, LOST_START);
            }
        });
    }

    fn reap_finished(&self) {
        let mut tasks = self.tasks.lock();
        while let Some(res) = tasks.try_join_next() {
            if let Err(e) = res {
                if e.is_panic() {
                    tracing::error!("a run task panicked: {e}");
                }
            }
        }
    }

    /// Wait until no run is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.lock().is_empty()
                && self.slots.available_permits() == self.config.concurrency.max(1)
                && self.unplaced.load(Ordering::SeqCst) == 0
            {
                return;
            }
            notified.await;
        }
    }

    /// Graceful drain: stop claiming, stop every run, abandon in-flight
    /// `owner_bound` work (`owner_drain`) and release `rerunnable` leases so a
    /// peer takes them over at once. Returns when every run has ended.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.stopping_runs.store(true, Ordering::SeqCst);
        let ctxs: Vec<ToolContext> = self.in_flight.lock().values().cloned().collect();
        for ctx in ctxs {
            ctx.stop(StopReason::Shutdown);
        }
        self.wait_idle().await;
        self.reap_finished();
        self.stopping.cancel();
    }

    /// Stop claiming (the drives, a start's own claim, schedule fires) but
    /// leave the runs in flight, and the claims already made (a claim
    /// waiting for a slot runs when one frees), to end as they would: the
    /// first half of a [`drain`](Self::drain), which stops them.
    pub fn stop_claiming(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`drain`](Self::drain) or [`stop_claiming`](Self::stop_claiming) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    async fn run_claim(self: &Arc<Self>, claim: Claim) {
        let Claim { lease, process } = claim;
        let id = process.id.clone();
        // A pause of this whole node (a stopped process, a host suspended)
        // between the claim's answer and here may have let the lease lapse:
        // nothing is run or written under it (a peer, or this worker's next
        // claim, may hold the process by now, and may have run it to its end
        // already).
        if self.clock.now_ms() >= lease.expires_at_ms {
            tracing::warn!(process_id = %id, "the claim's lease lapsed before its run began; it does not run");
            if process.disposition == Disposition::OwnerBound {
                self.abandon_lost(&lease, LAPSED_UNRUN);
            }
            return;
        }
        // A cancellation requested before this claim ends the process here,
        // before anything runs, except for a script an earlier claim began
        // (`attempt > 1`: it suspended, or lost its lease while it ran). That
        // one replays its journal with the cancellation already in force, so
        // the call it waits on rejects `cancelled` and its cleanup runs before
        // it ends `cancelled` (SPEC §14), bounded like any stopped run by
        // `stop_grace` and the script limits.
        let mut cancel_in_force = None;
        if let Some(cancel) = &process.cancel_request {
            let began_before = process.started.as_ref().is_some_and(|s| s.attempt > 1);
            if began_before && self.scripts.is_some() && matches!(process.input, ProcessInput::Script { .. }) {
                cancel_in_force = Some(cancel.reason.clone());
            } else {
                // Without a reason, say where the run was: not begun, or
                // (an earlier claim ran it) suspended or between claims.
                let message = cancel.reason.clone().unwrap_or_else(|| {
                    if began_before {
                        "cancelled while it was not running (suspended or between claims)".into()
                    } else {
                        "cancelled before it ran".into()
                    }
                });
                self.finish(&lease, process.disposition, Outcome::cancelled(message))
                    .await;
                return;
            }
        }
        let runner = match &process.input {
            ProcessInput::ToolCall { tool, args } => match self.tools.get(tool) {
                Some(t) => Runner::Tool(t, args.clone()),
                None => {
                    let e = CairnError::UnknownTool(tool.clone());
                    self.finish(
                        &lease,
                        process.disposition,
                        Outcome::failure("runtime", e.code(), e.to_string()),
                    )
                    .await;
                    return;
                }
            },
            ProcessInput::Script {
                module_ref,
                process_name,
                args,
            } if self.scripts.is_some() => match self
                .load(&lease, process.disposition, "reading the module", || {
                    self.registry.get_module(module_ref)
                })
                .await
            {
                Ok(module) => Runner::Script(module, process_name.clone(), args.clone()),
                Err(Some(e)) => {
                    self.finish(
                        &lease,
                        process.disposition,
                        Outcome::failure("runtime", e.code(), e.to_string()),
                    )
                    .await;
                    return;
                }
                Err(None) => return,
            },
            other => match self.tools.resolve(other) {
                Some((runner, input)) => Runner::Tool(runner, input),
                None => {
                    let message = format!("`{}` inputs are not executable by this runtime", other.kind());
                    self.finish(
                        &lease,
                        process.disposition,
                        Outcome::failure("runtime", "unsupported_input", message),
                    )
                    .await;
                    return;
                }
            },
        };
        let env = match &process.env_ref {
            Some(r) => match self
                .load(&lease, process.disposition, "reading the env", || {
                    self.registry.get_env(r)
                })
                .await
            {
                Ok(env) => Some(env),
                Err(Some(e)) => {
                    self.finish(
                        &lease,
                        process.disposition,
                        Outcome::failure("runtime", e.code(), e.to_string()),
                    )
                    .await;
                    return;
                }
                Err(None) => return,
            },
            None => None,
        };
        // Reads tried again while the store was out of reach may have used
        // up the lease: a run under a lapsed one is not started (a peer, or
        // this worker's next claim, may hold the process by now, and would
        // run it beside this one).
        if (process.env_ref.is_some() || matches!(runner, Runner::Script(..)))
            && self.clock.now_ms() >= lease.expires_at_ms
        {
            tracing::warn!(process_id = %id, "the claim's lease lapsed while what it runs was read; it does not run");
            if process.disposition == Disposition::OwnerBound {
                self.abandon_lost(&lease, LAPSED_LOADING);
            }
            return;
        }
        let disposition = process.disposition;
        let ctx = ToolContext::new(process, env, self.registry.clone(), self.awaiter.clone(), lease)
            .with_clock(self.clock.clone())
            .with_tools(self.tools.clone());
        if let Some(reason) = cancel_in_force {
            // Set before the runner starts: it is told at its first step.
            ctx.stop(StopReason::Cancelled { reason });
        }
        self.in_flight.lock().insert(id.clone(), ctx.clone());
        if self.stopping_runs.load(Ordering::SeqCst) {
            ctx.stop(StopReason::Shutdown);
        }

        // Dropped when the run ends, also by a panic: the lease is no longer
        // renewed and a drain does not wait for it.
        let running = Running {
            worker: self,
            id: id.clone(),
            ctx: ctx.clone(),
            guard: tokio::spawn(Self::guard_run(self.clone(), ctx.clone())),
        };
        let run: std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>> = match runner {
            Runner::Tool(tool, args) => {
                let ctx = ctx.clone();
                Box::pin(async move { tool.run(ctx, args).await })
            }
            Runner::Script(module, name, args) => {
                let engine = self.scripts.clone();
                let ctx = ctx.clone();
                Box::pin(async move {
                    match engine {
                        Some(e) => e.run(ctx, module, name, args).await,
                        None => Outcome::failure("runtime", "unsupported_input", "no script engine"),
                    }
                })
            }
        };
        // A runner that panics fails its process rather than leaving it
        // running under a lease nobody ends.
        let process_id = id.clone();
        let run: std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>> = Box::pin(async move {
            match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => {
                    let said = panic_message(panic.as_ref());
                    tracing::error!(%process_id, "a run panicked: {said}");
                    Outcome::failure("runtime", "panicked", format!("the run panicked: {said}"))
                }
            }
        });
        let outcome = self.run_tool(&ctx, run).await;
        drop(running);

        let lease = ctx.lease();
        match ctx.stop_reason() {
            Some(StopReason::LeaseLost) => {
                tracing::info!(process_id = %id, "lease lost; the run wrote nothing more");
                if disposition == Disposition::OwnerBound {
                    self.abandon_lost(&lease, STOPPED_AT_LAPSE);
                }
            }
            Some(StopReason::Suspended) => {
                tracing::debug!(process_id = %id, "suspended; the lease went with the wait");
            }
            Some(StopReason::Shutdown) => match disposition {
                Disposition::OwnerBound => {
                    let evidence = AbandonEvidence {
                        writer: AbandonWriter::OwnerDrain,
                        owner: Some(lease.owner()),
                        epoch_ms: self.clock.now_ms(),
                    };
                    self.finish(&lease, disposition, Outcome::Abandoned { evidence }).await;
                }
                _ => {
                    if let Err(e) = self.registry.release(&lease).await {
                        tracing::warn!(process_id = %id, error = %e, "lease release at drain failed");
                    }
                }
            },
            Some(StopReason::Cancelled { reason }) => {
                let outcome = match outcome {
                    Some(o @ (Outcome::Success { .. } | Outcome::Failure { .. } | Outcome::Cancelled { .. })) => o,
                    _ => Outcome::cancelled(reason.unwrap_or_else(|| "cancelled".into())),
                };
                self.finish(&lease, disposition, outcome).await;
            }
            None => {
                let outcome = match outcome {
                    Some(Outcome::Abandoned { .. }) => {
                        Outcome::failure("runtime", "invalid_outcome", "a tool cannot report abandonment")
                    }
                    Some(o) => o,
                    None => Outcome::failure("runtime", "tool_aborted", "the tool did not return"),
                };
                // A rerunnable run that failed only because the store could
                // not be reached (past the retries) is not failed for good:
                // what it wrote is in its log, and a later claim runs it again.
                if disposition == Disposition::Rerunnable && store_unreachable(&outcome) {
                    tracing::warn!(process_id = %id, outcome = ?outcome, "the run could not reach the store; the lease is released for a later claim");
                    if let Err(e) = self.registry.release(&lease).await {
                        tracing::warn!(process_id = %id, error = %e, "lease release failed");
                    }
                    return;
                }
                self.finish(&lease, disposition, outcome).await;
            }
        }
    }

    /// Run the tool; after a stop it gets `stop_grace` to return before it is dropped.
    async fn run_tool(
        &self,
        ctx: &ToolContext,
        mut run: std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>,
    ) -> Option<Outcome> {
        tokio::select! {
            o = run.as_mut() => return Some(o),
            _ = ctx.stopped() => {}
        }
        tokio::time::timeout(self.config.stop_grace, run).await.ok()
    }

    /// Keep the lease alive and watch for cancellation while a run is alive
    /// (a cancelled one included: it may be cleaning up).
    async fn guard_run(self: Arc<Self>, ctx: ToolContext) {
        let id = ctx.process_id().to_string();
        let ttl = self.config.lease_ttl;
        let every = (ttl / 3).max(Duration::from_millis(10));
        let mut changes = self.hub.as_ref().map(|h| h.subscribe(&id));
        // Another writer's commits (another OS process on the SQLite file,
        // a PostgreSQL listener that reconnected) reach the hub as a resync,
        // not as this process's change: a cancel among them is read then.
        let mut resyncs = self.hub.as_ref().map(|h| h.subscribe_resync());
        // The first renewal comes when two of the lease's thirds are left, as
        // every later one does: sooner when what the run reads before it
        // starts (its module, its env) took some of the lease.
        let left = Duration::from_millis(ctx.lease().expires_at_ms.saturating_sub(self.clock.now_ms()));
        let mut next_renew = tokio::time::Instant::now() + every.min(left.saturating_sub(2 * every));
        // The claim carried the record as it was when claimed (a cancel before
        // the claim is handled by `run_claim`: it ends the process, or starts
        // a script's cleanup already stopped), and every later change reaches
        // the hub subscription, except one committed between the claim and the
        // subscription. So with a hub the first read waits for a change or
        // FIRST_CHECK, whichever comes first: a run that ends at once never
        // reads its record, and that narrow window still ends in a read.
        if let Some(rx) = changes.as_mut() {
            tokio::select! {
                r = rx.changed() => if r.is_err() { changes = None; },
                _ = tokio::time::sleep(FIRST_CHECK) => {}
            }
        }
        let mut last_read;
        loop {
            last_read = tokio::time::Instant::now();
            let lapsed_before = self.clock.now_ms() >= ctx.lease().expires_at_ms;
            match self.until_lapse(&ctx, self.registry.get(&id)).await {
                Ok(r) => {
                    if let Some(c) = r.cancel_request {
                        // A cancelled run may still clean up (a script does,
                        // for up to `stop_grace`): its lease stays renewed
                        // until it returns, and the record is read again
                        // only at renewals.
                        ctx.stop(StopReason::Cancelled { reason: c.reason });
                        changes = None;
                        resyncs = None;
                    } else if r.is_terminal() {
                        // Ended by another writer while it ran: perhaps a
                        // sweep by a newer incarnation of this node id.
                        ctx.stop(StopReason::LeaseLost);
                        self.check_superseded_after_loss().await;
                        return;
                    }
                }
                // A read that failed until the lease lapsed (a store gone
                // silent) stops the run there, as a failed renewal does: a
                // peer may claim the process the moment it lapses.
                Err(e) if self.clock.now_ms() >= ctx.lease().expires_at_ms => {
                    tracing::warn!(process_id = %id, error = %e, "{}", guard_stop_message("read", lapsed_before));
                    ctx.stop(StopReason::LeaseLost);
                    return;
                }
                Err(e) => tracing::warn!(process_id = %id, error = %e, "run guard could not read the record"),
            }
            // A lease that lapsed unrenewed (renewals failed, or the guard
            // slept to the lapse) is renewed now, or the run stops below.
            if self.clock.now_ms() >= ctx.lease().expires_at_ms {
                next_renew = tokio::time::Instant::now();
            }
            if tokio::time::Instant::now() >= next_renew {
                next_renew = tokio::time::Instant::now() + every;
                let lapsed_before = self.clock.now_ms() >= ctx.lease().expires_at_ms;
                match self
                    .until_lapse(&ctx, self.registry.renew(&ctx.lease(), self.ttl_ms()))
                    .await
                {
                    Ok(l) => ctx.set_lease(l),
                    Err(CairnError::LeaseFenced(_)) => {
                        ctx.stop(StopReason::LeaseLost);
                        self.check_superseded_after_loss().await;
                        return;
                    }
                    // A lease nobody could renew lapses: past its expiry (by
                    // this node's clock) a peer may run the process, so this
                    // run stops, as after a fenced renewal (its writes are
                    // fenced either way).
                    Err(e) if self.clock.now_ms() >= ctx.lease().expires_at_ms => {
                        tracing::warn!(process_id = %id, error = %e, "{}", guard_stop_message("renewal", lapsed_before));
                        ctx.stop(StopReason::LeaseLost);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(process_id = %id, error = %e, "lease renewal failed; will retry");
                        // Tried again sooner, while half of what is left
                        // remains, so the tries fit before the lapse.
                        let left = ctx.lease().expires_at_ms.saturating_sub(self.clock.now_ms());
                        next_renew = tokio::time::Instant::now() + every.min(Duration::from_millis(left / 2));
                    }
                }
            }
            // Woken at the lapse at the latest, whatever the next renewal's
            // time: a run must not go on past its lease while a peer may
            // claim the process.
            let lapse = tokio::time::Instant::now()
                + Duration::from_millis(ctx.lease().expires_at_ms.saturating_sub(self.clock.now_ms()));
            let sleep = tokio::time::sleep_until(next_renew.min(lapse));
            let change = async {
                match changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let resync = async {
                match resyncs.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let mut resynced = false;
            tokio::select! {
                alive = change => if !alive { changes = None; },
                alive = resync => if alive { resynced = true } else { resyncs = None },
                _ = sleep => {}
            }
            // Another writer's steady commits resync the hub again and again:
            // a run reads its record for them at most every FIRST_CHECK
            // (those that come meanwhile are one).
            if resynced {
                tokio::time::sleep_until(last_read + FIRST_CHECK).await;
            }
        }
    }

    /// `call` (a guard's read or renewal), given up as `unavailable` once the
    /// run's lease has lapsed by this node's clock: a store that never
    /// answers (a connection gone silent) must not keep a run going past its
    /// lease, while a peer may already run the process (a grace of a second
    /// here once let the run go on beside a peer's for that second). A call
    /// that answers at once is taken even at the lapse; with no time left,
    /// the error says the lease had lapsed before the call (this node was
    /// paused past it, or earlier calls failed), not that the store was slow.
    async fn until_lapse<T>(&self, ctx: &ToolContext, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let left = ctx.lease().expires_at_ms.saturating_sub(self.clock.now_ms());
        let within = Duration::from_millis(left);
        match tokio::time::timeout(within, call).await {
            Ok(answer) => answer,
            Err(_) if left == 0 => Err(CairnError::Unavailable(LAPSED_BEFORE_CALL.into())),
            Err(_) => Err(CairnError::Unavailable(format!(
                "the store did not answer within {within:?}, by when the lease lapses"
            ))),
        }
    }

    /// An owner-bound run this worker stopped because its lease lapsed (the
    /// store out of reach): nobody may run it again and its outcome is lost,
    /// so the owner files the abandon request it alone can make with
    /// certainty (SPEC §2: the reconciled request, once the lease has
    /// lapsed), tried again for as long as the store stays out of reach
    /// (every 5 s once backed off). A process
    /// that ended meanwhile, or already carries a request, is left as it is.
    fn abandon_lost(&self, lease: &crate::model::Lease, reason: &'static str) {
        use backon::Retryable;
        let (registry, id, owner) = (self.registry.clone(), lease.process_id.clone(), lease.owner_id.clone());
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let request = || registry.request_abandon(&id, &owner, reason);
            let filed = request
                .retry(
                    backon::ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(100))
                        .with_max_delay(Duration::from_secs(5))
                        .without_max_times(),
                )
                .when(|e: &CairnError| !e.is_client_error());
            // A drained worker stops asking: the sweep of this node's next
            // incarnation abandons what it leaves (SPEC §5).
            let filed = tokio::select! {
                filed = filed => filed,
                _ = stopping.cancelled() => {
                    tracing::warn!(process_id = %id, "the worker stopped before the abandon request could be filed; the next incarnation's sweep ends it");
                    return;
                }
            };
            match filed {
                Ok(_) => tracing::warn!(process_id = %id, "abandon requested: {reason}"),
                // It ended meanwhile, and may have been pruned since.
                Err(CairnError::ProcessTerminal(_) | CairnError::NoLongerRetained(_)) => {}
                Err(e) => {
                    tracing::error!(process_id = %id, error = %e, "could not request the abandonment of a run whose outcome is lost")
                }
            }
        });
    }

    /// The fenced completion; a stale lease writes nothing.
    ///
    /// An outcome the registry refuses as such (over the size or depth limit, against
    /// the declared schema of its terminal event) could never be written: the
    /// run would be claimed again at every lease expiry, fail the same way, and
    /// not even a cancellation could end it. The process fails instead, with
    /// the refusal as its error.
    async fn finish(&self, lease: &crate::model::Lease, disposition: Disposition, outcome: Outcome) {
        let refused = match self.complete_retrying(lease, outcome).await {
            Ok(_) => return,
            Err(
                e @ (CairnError::PayloadTooLarge { .. }
                | CairnError::SchemaViolation { .. }
                | CairnError::InvalidRequest(_)),
            ) => e,
            Err(e) => return self.finish_failed(lease, disposition, e),
        };
        tracing::warn!(process_id = %lease.process_id, error = %refused, "outcome refused; the process fails instead");
        let failure = Outcome::failure("runtime", refused.code(), refused.to_string());
        if let Err(e) = self.complete_retrying(lease, failure).await {
            self.finish_failed(lease, disposition, e);
        }
    }

    /// `complete`, tried again while the store fails or its answer is lost
    /// and the lease has not lapsed: the run's outcome is known here and
    /// nowhere else (an owner-bound process is never run again). A retry of
    /// a completion that did commit finds the lease released and is fenced.
    async fn complete_retrying(
        &self,
        lease: &crate::model::Lease,
        outcome: Outcome,
    ) -> Result<crate::model::ProcessRecord> {
        crate::retry::while_lease_holds(&self.clock, lease, "the completion", || {
            self.registry.complete(lease, outcome.clone())
        })
        .await
    }

    /// Read what a run needs before it starts (its module, its env), a store
    /// fault tried again while the lease holds. `Err(Some)`: a client error
    /// (a missing or corrupt env) or a `storage` fault, which fails the run.
    /// `Err(None)`: the store stayed unreachable; a `rerunnable` lease is
    /// released for a later claim (nothing of the run has happened), an
    /// `owner_bound` run fails, as it cannot run again.
    async fn load<T, Fut, F>(
        &self,
        lease: &crate::model::Lease,
        disposition: Disposition,
        what: &str,
        read: F,
    ) -> std::result::Result<T, Option<CairnError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match crate::retry::while_lease_holds(&self.clock, lease, what, read).await {
            Ok(v) => Ok(v),
            // Only a store that could not be reached (or whose answer was
            // lost) may do better later; a `storage` fault (a row that does
            // not decode) would be claimed and released for ever.
            Err(e @ (CairnError::Unavailable(_) | CairnError::OutcomeUnknown(_)))
                if disposition == Disposition::Rerunnable =>
            {
                tracing::warn!(process_id = %lease.process_id, error = %e, "{what} could not be read; the lease is released for a later claim");
                if let Err(e) = self.registry.release(lease).await {
                    tracing::warn!(process_id = %lease.process_id, error = %e, "lease release failed");
                }
                Err(None)
            }
            Err(e) => Err(Some(e)),
        }
    }

    /// A completion that could not be written. A rerunnable process is
    /// claimed again once its lease lapses; an owner-bound one, which never
    /// runs again, has its owner file the abandon request (its outcome is
    /// lost), or it would stay `running` with nobody to end it. That holds
    /// for a fenced completion too: nobody else claims a started owner-bound
    /// process, so its lease lapsed (a host asleep past it, renewals that
    /// failed until then) and it is still running.
    fn finish_failed(&self, lease: &crate::model::Lease, disposition: Disposition, e: CairnError) {
        match e {
            CairnError::ProcessTerminal(_) => {
                tracing::info!(process_id = %lease.process_id, "completion fenced: the process had ended");
            }
            // Another owner ended it and a prune removed it meanwhile (this
            // run was paused past its lease): an end this run cannot write,
            // and nothing left to abandon.
            CairnError::NoLongerRetained(_) => {
                tracing::info!(process_id = %lease.process_id, "completion fenced: the process had ended and was pruned");
            }
            CairnError::LeaseFenced(_) if disposition == Disposition::OwnerBound => {
                tracing::warn!(process_id = %lease.process_id, "completion fenced: the lease lapsed before the outcome was written");
                // A process a retry of its own landed completion ended
                // answers the request `process_terminal`, which is ignored.
                self.abandon_lost(lease, UNWRITTEN_OUTCOME);
            }
            CairnError::LeaseFenced(_) => {
                tracing::info!(process_id = %lease.process_id, "completion fenced: another owner or a terminal got there first");
            }
            e => {
                tracing::error!(process_id = %lease.process_id, error = %e, "completion failed");
                if disposition == Disposition::OwnerBound {
                    self.abandon_lost(lease, UNWRITTEN_OUTCOME);
                }
            }
        }
    }
}

/// Work a driver does on every drive beside its claims, before them: firing
/// the due schedules (SPEC §18), whose next fire times `next_due` names.
#[async_trait::async_trait]
pub trait DueWork: Send + Sync + 'static {
    /// Do what is due now; failures are logged. What is left says when the
    /// driver comes back: at once for more already due, soon (backing off)
    /// after a failure, else at the next due time.
    async fn run_due(&self) -> DueLeft;
}

/// What a [`DueWork`] pass left due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueLeft {
    /// Nothing due now.
    Nothing,
    /// More is due now than one pass does.
    More,
    /// Something failed and is still due.
    Failed,
}

/// What a claimed run executes.
enum Runner {
    Tool(Arc<dyn crate::tool::Tool>, Value),
    Script(crate::script::Module, String, Value),
}

/// Drives a [`Worker`]: registers its node incarnation, then a sweep and a
/// drive at start (recovery), a drive on every nudge and hub work notice, when
/// a run ends, at the earliest due time the worklist holds (a lease expiry, a
/// suspension's deadline, a schedule's next fire: [`ProcessRegistry::next_due`]),
/// and a sweep and a drive at the latest after the sweep interval.
pub struct WorkDriver {
    worker: Arc<Worker>,
    nudge: Arc<Notify>,
    stop: tokio_util::sync::CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WorkDriver {
    /// Start the driver loop on the current tokio runtime.
    pub fn start(worker: Arc<Worker>, hub: Option<ChangeHub>) -> Arc<Self> {
        Self::start_with(worker, hub, None)
    }

    /// [`Self::start`], running `due` (the due schedules) before each drive's claims.
    pub fn start_with(worker: Arc<Worker>, hub: Option<ChangeHub>, due: Option<Arc<dyn DueWork>>) -> Arc<Self> {
        let nudge = Arc::new(Notify::new());
        let stop = tokio_util::sync::CancellationToken::new();
        let driver = Arc::new(Self {
            worker: worker.clone(),
            nudge: nudge.clone(),
            stop: stop.clone(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(async move {
            let interval = worker.config().sweep_interval;
            // Register this start's incarnation before claiming anything, so
            // every lease it takes names it; retried until the store answers.
            let mut retry = Duration::from_millis(100);
            while let Err(e) = worker.join_node().await {
                tracing::warn!(error = %e, "could not register this node; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = next_register_retry(retry, interval);
            }
            let mut next_sweep = tokio::time::Instant::now();
            // After a drive the store failed, the next comes after this
            // (doubling to 5 s while they keep failing): work already due is
            // before any due time the store will name, and may have no
            // notice coming for it.
            let mut after_failure: Option<Duration> = None;
            loop {
                if tokio::time::Instant::now() >= next_sweep {
                    if let Err(e) = worker.sweep().await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                    next_sweep = from_now(interval);
                }
                // Listening for a freed slot starts before the drive counts
                // the free ones: a run that ends while the loop drives or
                // reads the next due time is heard at the `select!` below.
                let slot_freed = worker.slot_freed.notified();
                tokio::pin!(slot_freed);
                let looked_at = worker.clock.now_ms();
                let mut due_left = DueLeft::Nothing;
                if let Some(due) = &due {
                    if !worker.is_draining() {
                        due_left = due.run_due().await;
                    }
                }
                let drove = worker.drive_once().await;
                if let Err(e) = &drove {
                    tracing::warn!(error = %e, "work drive failed");
                }
                // Work (or a fire) already due has no later due time to wake
                // the driver: a failure is tried again soon, backing off.
                after_failure = match (drove.is_err() || due_left == DueLeft::Failed, after_failure) {
                    (false, _) => None,
                    (true, None) => Some(Duration::from_millis(100)),
                    (true, Some(d)) => Some((d * 2).min(Duration::from_secs(5))),
                };
                // Sleep until the earliest due time, but no longer than the sweep
                // interval: a due time another node writes arrives by its notice.
                let until_sweep = next_sweep.saturating_duration_since(tokio::time::Instant::now());
                let pause = match worker.registry.next_due(looked_at).await {
                    Ok(Some(due)) => {
                        let now = worker.clock.now_ms();
                        until_sweep.min(Duration::from_millis(due.saturating_sub(now)))
                    }
                    Ok(None) => until_sweep,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the next due time");
                        until_sweep
                    }
                };
                let pause = match after_failure {
                    Some(retry) => pause.min(retry),
                    None if worker.abandons_left.load(Ordering::SeqCst) || due_left == DueLeft::More => Duration::ZERO,
                    None => pause,
                };
                let hub_work = async {
                    match &hub {
                        Some(h) => h.work_available().await,
                        None => std::future::pending().await,
                    }
                };
                // A freed slot is worth a drive only when work may be waiting
                // for one: with the worklist emptied by the last drive, new work
                // arrives by a nudge, the hub or a due time (only this loop
                // sets `backlog`, so it cannot change while the loop waits).
                // Without a hub, every run's end is also a look for work.
                let slot_wanted = hub.is_none() || worker.backlog.load(Ordering::SeqCst);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = nudge.notified() => {}
                    _ = hub_work => {}
                    _ = &mut slot_freed, if slot_wanted => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        });
        *driver.task.lock() = Some(task);
        driver
    }

    /// Ask for a drive now (after a start, for example).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The worker this driver drives.
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// Whether [`shutdown`](Self::shutdown) was called: the loop has
    /// stopped, or is stopping, for good.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Stop the loop, then drain the worker.
    pub async fn shutdown(&self) {
        // Nothing more is claimed from here: a claim made while the loop
        // winds down would only be stopped by the drain (an owner-bound one
        // abandoned) without having run.
        self.worker.stop_claiming();
        self.stop.cancel();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.worker.drain().await;
    }
}

/// Whether a run's outcome says only that the store could not be reached
/// (`runtime` class, `unavailable` or `outcome_unknown`): nothing the run
/// decided, so a rerunnable process may be run again rather than failed.
fn store_unreachable(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Failure { class, code, .. }
        if class == "runtime" && matches!(code.as_str(), "unavailable" | "outcome_unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryRegistry;

    /// Registration retries double from 100 ms up to 5 s, or up to a
    /// shorter sweep interval; a long (or endless) interval does not
    /// stretch them.
    #[test]
    fn registration_retries_are_capped() {
        let mut retry = Duration::from_millis(100);
        let mut waits = Vec::new();
        for _ in 0..10 {
            retry = next_register_retry(retry, Duration::MAX);
            waits.push(retry.as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000, 5_000, 5_000]);
        let hour = Duration::from_secs(3_600);
        assert_eq!(next_register_retry(Duration::from_secs(4), hour), REGISTER_RETRY_MAX);
        let short = Duration::from_millis(300);
        assert_eq!(next_register_retry(Duration::from_millis(200), short), short);
    }

    /// A memory registry holding one rerunnable `echo` process `p`, an
    /// awaiter on it and a worker over it.
    async fn one_process() -> (Arc<dyn ProcessRegistry>, Awaiter, Arc<Worker>) {
        let registry: Arc<dyn ProcessRegistry> = Arc::new(MemoryRegistry::new());
        let registration = crate::model::Registration {
            id: "p".into(),
            input: ProcessInput::ToolCall {
                tool: "echo".into(),
                args: serde_json::json!({}),
            },
            disposition: Disposition::Rerunnable,
            event_types: Vec::new(),
            provenance: Default::default(),
            wake_target: None,
            env_ref: None,
            external_ref: None,
        };
        registry.register(registration, None).await.expect("register");
        let awaiter = Awaiter::new(registry.clone(), None);
        let worker = Worker::new(
            registry.clone(),
            ToolRegistry::new(),
            awaiter.clone(),
            None,
            crate::clock::system_clock(),
            WorkerConfig::default(),
        );
        (registry, awaiter, worker)
    }

    /// A run that ends after the same process was claimed again here leaves
    /// the newer run in flight, where a drain finds it.
    #[tokio::test]
    async fn an_ending_run_leaves_a_newer_run_of_its_process_in_flight() {
        let (registry, awaiter, worker) = one_process().await;
        let context = |lease: crate::model::Lease| async {
            let record = registry.get("p").await.expect("get");
            ToolContext::new(record, None, registry.clone(), awaiter.clone(), lease)
        };
        let first = context(registry.claim("p", "w", 30_000).await.expect("claim")).await;
        worker.in_flight.lock().insert("p".into(), first.clone());
        let older = Running {
            worker: &worker,
            id: "p".into(),
            ctx: first,
            guard: tokio::spawn(async {}),
        };
        let second = context(registry.claim("p", "w", 30_000).await.expect("claim again")).await;
        worker.in_flight.lock().insert("p".into(), second.clone());
        drop(older);
        let left = worker
            .in_flight
            .lock()
            .get("p")
            .cloned()
            .expect("the newer run is in flight");
        assert!(left.is_same_run(&second));
    }

    /// A guard's call made after the lease had lapsed (this node paused past
    /// it) says so, not that the store failed to answer "within 0ns"; one
    /// that answers at once is still taken.
    #[tokio::test]
    async fn a_call_after_the_lapse_says_the_lease_had_lapsed() {
        let (registry, awaiter, worker) = one_process().await;
        let mut lease = registry.claim("p", "w", 30_000).await.expect("claim");
        lease.expires_at_ms = 0;
        let record = registry.get("p").await.expect("get");
        let ctx = ToolContext::new(record, None, registry.clone(), awaiter, lease);
        let err = worker
            .until_lapse(&ctx, std::future::pending::<Result<()>>())
            .await
            .expect_err("no answer");
        let said = err.to_string();
        assert!(
            said.contains("the lease had lapsed before the store could be asked")
                && said.contains("this node was paused")
                && !said.contains("0ns"),
            "{said}"
        );
        assert_eq!(worker.until_lapse(&ctx, async { Ok(7) }).await.expect("at once"), 7);
        let logged = guard_stop_message("read", true);
        assert!(
            logged.starts_with("the lease had lapsed before the run guard's read could be tried")
                && logged.contains("this node was paused")
                && !logged.contains("failed until"),
            "{logged}"
        );
        assert_eq!(
            guard_stop_message("renewal", false),
            "the run guard's renewals failed until the lease lapsed; the run stops"
        );
    }
}
