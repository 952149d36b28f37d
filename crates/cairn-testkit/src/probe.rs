//! [`ReadProbe`]: a registry decorator that announces every answered `get`, so
//! a test or bench can prove an awaiter has made its first read (and so is
//! parked on its hub) before the change it waits for is written.
//!
//! An awaiter subscribes to the hub before its first read. Once that read has
//! answered "not yet", the awaiter can only learn of a later change from the
//! hub (or from its backoff reads, which a test sets to an hour). Without this
//! barrier a test that writes the change right after spawning the awaiter may
//! have its first read land after the write, and then measures or tests a read,
//! not a wake-up.

use std::sync::Arc;

use cairn_core::async_trait;
use cairn_core::events::{AppendRequest, AppendResult, EventPage};
use cairn_core::registry::{CancelAnswer, CompleteAnswer, Registered};
use cairn_core::{
    ChangePage, Claim, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease, NodeIdentity, NodeLiveness,
    Outcome, ProcessFilter, ProcessRecord, ProcessRegistry, PruneReport, Registration, Result, SessionDeleteReport,
    SessionScope, StartGrant, SweepItem, TransferReport, WaitRequest, WakeDelivery, Watermark, WorkItem,
};
use tokio::sync::watch;

/// Work a test runs once, when the next `claim_batch` (or `wait`) call
/// arrives, before it reaches the inner registry
/// ([`ReadProbe::before_next_claim_batch`], [`ReadProbe::before_next_wait`]).
pub type ClaimHook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// Counts the `get` calls that have answered, per probe; every other method
/// passes straight through to the inner registry (after a [`ClaimHook`], for
/// `claim_batch`).
pub struct ReadProbe {
    inner: Arc<dyn ProcessRegistry>,
    gets: watch::Sender<u64>,
    claim_hook: parking_lot::Mutex<Option<ClaimHook>>,
    wait_hook: parking_lot::Mutex<Option<ClaimHook>>,
    registered_hook: parking_lot::Mutex<Option<ClaimHook>>,
    claimed_hook: parking_lot::Mutex<Option<ClaimHook>>,
    child_hook: parking_lot::Mutex<Option<ClaimHook>>,
    due_hook: parking_lot::Mutex<Option<ClaimHook>>,
    advance_hook: parking_lot::Mutex<Option<ClaimHook>>,
    env_hook: parking_lot::Mutex<Option<ClaimHook>>,
    changes_hook: parking_lot::Mutex<Option<ClaimHook>>,
    changes_read_from: parking_lot::Mutex<Vec<u64>>,
    claim_batches: std::sync::atomic::AtomicU64,
    failing_renewals: std::sync::atomic::AtomicBool,
    failed_renewals: watch::Sender<Vec<String>>,
    failing_completes: std::sync::atomic::AtomicU64,
    failing_abandon_requests: std::sync::atomic::AtomicBool,
    failing_gauges: std::sync::atomic::AtomicBool,
    hanging_gauges: std::sync::atomic::AtomicBool,
    abandon_requests: watch::Sender<u64>,
    completes: watch::Sender<u64>,
    failing_env_reads: std::sync::atomic::AtomicU64,
    failing_log_reads: std::sync::atomic::AtomicU64,
    failing_waits: std::sync::atomic::AtomicU64,
    lost_resumes: std::sync::atomic::AtomicU64,
    failing_resumes: std::sync::atomic::AtomicU64,
    failing_lists: std::sync::atomic::AtomicU64,
    hanging_lists: std::sync::atomic::AtomicBool,
    hanging_renewals: std::sync::atomic::AtomicBool,
    failing_claim_batches: std::sync::atomic::AtomicU64,
    failing_appends: std::sync::atomic::AtomicU64,
    unanswered_appends: std::sync::atomic::AtomicU64,
    unanswered_claimed_starts: std::sync::atomic::AtomicU64,
    hidden_after_lost_start: parking_lot::Mutex<(u64, Option<(String, u64)>)>,
    append_delay: parking_lot::Mutex<std::time::Duration>,
    failing_advances: std::sync::atomic::AtomicU64,
    log_gate: watch::Sender<bool>,
    held_log_reads: watch::Sender<u64>,
}

impl ReadProbe {
    /// The [`Self::after_next_claim`] hook, once.
    async fn run_claimed_hook(&self) {
        let hook = self.claimed_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
    }

    /// A probe over `inner`.
    pub fn new(inner: Arc<dyn ProcessRegistry>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            gets: watch::channel(0).0,
            claim_hook: parking_lot::Mutex::new(None),
            wait_hook: parking_lot::Mutex::new(None),
            registered_hook: parking_lot::Mutex::new(None),
            claimed_hook: parking_lot::Mutex::new(None),
            child_hook: parking_lot::Mutex::new(None),
            due_hook: parking_lot::Mutex::new(None),
            advance_hook: parking_lot::Mutex::new(None),
            env_hook: parking_lot::Mutex::new(None),
            changes_hook: parking_lot::Mutex::new(None),
            changes_read_from: parking_lot::Mutex::new(Vec::new()),
            claim_batches: std::sync::atomic::AtomicU64::new(0),
            failing_renewals: std::sync::atomic::AtomicBool::new(false),
            failed_renewals: watch::channel(Vec::new()).0,
            failing_completes: std::sync::atomic::AtomicU64::new(0),
            failing_abandon_requests: std::sync::atomic::AtomicBool::new(false),
            failing_gauges: std::sync::atomic::AtomicBool::new(false),
            hanging_gauges: std::sync::atomic::AtomicBool::new(false),
            abandon_requests: watch::channel(0).0,
            completes: watch::channel(0).0,
            failing_env_reads: std::sync::atomic::AtomicU64::new(0),
            failing_log_reads: std::sync::atomic::AtomicU64::new(0),
            failing_waits: std::sync::atomic::AtomicU64::new(0),
            lost_resumes: std::sync::atomic::AtomicU64::new(0),
            failing_resumes: std::sync::atomic::AtomicU64::new(0),
            failing_lists: std::sync::atomic::AtomicU64::new(0),
            hanging_lists: std::sync::atomic::AtomicBool::new(false),
            hanging_renewals: std::sync::atomic::AtomicBool::new(false),
            failing_claim_batches: std::sync::atomic::AtomicU64::new(0),
            failing_appends: std::sync::atomic::AtomicU64::new(0),
            unanswered_appends: std::sync::atomic::AtomicU64::new(0),
            unanswered_claimed_starts: std::sync::atomic::AtomicU64::new(0),
            hidden_after_lost_start: parking_lot::Mutex::new((0, None)),
            append_delay: parking_lot::Mutex::new(std::time::Duration::ZERO),
            failing_advances: std::sync::atomic::AtomicU64::new(0),
            log_gate: watch::channel(false).0,
            held_log_reads: watch::channel(0).0,
        })
    }

    /// How many `claim_batch` calls have arrived (counted before they run).
    pub fn claim_batches(&self) -> u64 {
        self.claim_batches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Run `hook` when the next `claim_batch` arrives, before passing it on:
    /// a test's way into the moment a drive has counted its free slots and
    /// not yet claimed.
    pub fn before_next_claim_batch(&self, hook: ClaimHook) {
        *self.claim_hook.lock() = Some(hook);
    }

    /// Run `hook` when the next `wait` (a run's suspension) arrives, before
    /// passing it on: a test's way into the moment a run has decided to
    /// suspend and not yet written it.
    pub fn before_next_wait(&self, hook: ClaimHook) {
        *self.wait_hook.lock() = Some(hook);
    }

    /// Run `hook` when the next `changed_since` has read its page, before
    /// it answers: a test's way between two reads of one page of the feed.
    pub fn after_next_changes(&self, hook: ClaimHook) {
        *self.changes_hook.lock() = Some(hook);
    }

    /// The cursor each `changed_since` so far read after, in order.
    pub fn changes_read_from(&self) -> Vec<u64> {
        self.changes_read_from.lock().clone()
    }

    /// Run `hook` when the next `get_env` has read the env, before it
    /// answers: a test's way into a read that took long.
    pub fn after_next_env_read(&self, hook: ClaimHook) {
        *self.env_hook.lock() = Some(hook);
    }

    /// Run `hook` when the next `due_schedules` that finds a due schedule
    /// has read it, before it answers: a test's way into the moment a fire
    /// has been decided on and not yet made.
    pub fn after_next_due_read(&self, hook: ClaimHook) {
        *self.due_hook.lock() = Some(hook);
    }

    /// From now on, every `renew` fails `unavailable` without reaching the
    /// inner registry (`false` lets them through again): a store a node
    /// cannot reach, while the rest of the test can.
    /// A receiver of the process ids of every renewal failed so far by
    /// [`fail_renewals`](Self::fail_renewals), in order.
    pub fn failed_renewals(&self) -> watch::Receiver<Vec<String>> {
        self.failed_renewals.subscribe()
    }

    pub fn fail_renewals(&self, failing: bool) {
        self.failing_renewals
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every `append_event` from now on waits `delay` before it is passed on:
    /// a store that takes its time over each append (a slow disk).
    pub fn slow_appends(&self, delay: std::time::Duration) {
        *self.append_delay.lock() = delay;
    }

    /// The next `n` calls of `complete` fail `unavailable` without reaching
    /// the inner registry: a store fault at the moment a run ends.
    pub fn fail_next_completes(&self, n: u64) {
        self.failing_completes.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on every `request_abandon` fails `unavailable` without
    /// reaching the inner registry (`false` lets them through again).
    pub fn fail_abandon_requests(&self, failing: bool) {
        self.failing_abandon_requests
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on every `gauges` fails `unavailable` without reaching the
    /// inner registry (`false` lets them through again).
    pub fn fail_gauges(&self, failing: bool) {
        self.failing_gauges.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on every `gauges` never answers (a stalled store; `false`
    /// lets later ones through again).
    pub fn hang_gauges(&self, hanging: bool) {
        self.hanging_gauges.store(hanging, std::sync::atomic::Ordering::SeqCst);
    }

    /// A receiver of the number of `request_abandon` calls that arrived.
    pub fn abandon_requests(&self) -> watch::Receiver<u64> {
        self.abandon_requests.subscribe()
    }

    /// How many `complete` calls have arrived (answered or failed), as it
    /// changes: a test's way to know a run has ended and tries its outcome.
    pub fn completes(&self) -> watch::Receiver<u64> {
        self.completes.subscribe()
    }

    /// The next `n` calls of `get_env` fail `unavailable` without reaching
    /// the inner registry: a store fault as a run reads its env.
    pub fn fail_next_env_reads(&self, n: u64) {
        self.failing_env_reads.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` calls of `events_after` fail `unavailable` without
    /// reaching the inner registry: a store fault as a run reads its log.
    pub fn fail_next_log_reads(&self, n: u64) {
        self.failing_log_reads.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` calls of `wait` fail `unavailable` without reaching the
    /// inner registry: a store fault as a run records its wait.
    pub fn fail_next_waits(&self, n: u64) {
        self.failing_waits.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` calls of `resume` are written, and then answer
    /// `outcome_unknown`: a resumption whose answer was lost.
    pub fn lose_next_resume_answers(&self, n: u64) {
        self.lost_resumes.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` calls of `resume` fail `unavailable` without reaching
    /// the inner registry: a resumption that was not written.
    pub fn fail_next_resumes(&self, n: u64) {
        self.failing_resumes.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` calls of `append_event` fail `unavailable` without
    /// reaching the inner registry: a store fault as a run writes its events.
    pub fn fail_next_appends(&self, n: u64) {
        self.failing_appends.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` calls of `claim_batch` fail `unavailable` without
    /// reaching the inner registry (after a hook set for the call runs).
    pub fn fail_next_claim_batches(&self, n: u64) {
        self.failing_claim_batches.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every `renew` from now on (while `hanging`) never answers: a store
    /// whose connection went silent.
    pub fn hang_renewals(&self, hanging: bool) {
        self.hanging_renewals
            .store(hanging, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run `hook` before the next schedule advance reaches the inner
    /// registry: a fire decided on and made, whose advance another node's
    /// may beat.
    pub fn before_next_schedule_advance(&self, hook: ClaimHook) {
        *self.advance_hook.lock() = Some(hook);
    }

    /// The next `n` schedule advances fail `unavailable` without reaching the
    /// inner registry: a fire whose start committed and whose advance did not.
    pub fn fail_next_schedule_advances(&self, n: u64) {
        self.failing_advances.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// While `held`, every log read (`events_after`) waits until it is not:
    /// a store slow to answer the reads made meanwhile.
    pub fn hold_log_reads(&self, held: bool) {
        self.log_gate.send_replace(held);
    }

    /// A receiver of the number of log reads that arrived while held.
    pub fn held_log_reads(&self) -> watch::Receiver<u64> {
        self.held_log_reads.subscribe()
    }

    /// The next `n` listings (`list`, `list_granted_to`) fail `unavailable`
    /// without reaching the inner registry.
    pub fn fail_next_lists(&self, n: u64) {
        self.failing_lists.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on every `list` never answers (a stalled store, as the
    /// readiness check reads it; `false` lets later ones through again).
    pub fn hang_lists(&self, hanging: bool) {
        self.hanging_lists.store(hanging, std::sync::atomic::Ordering::SeqCst);
    }

    /// Let the next `n` appends (`append_event`) be written and then answer
    /// `outcome_unknown`, as a commit whose answer was lost does.
    pub fn lose_next_append_answers(&self, n: u64) {
        self.unanswered_appends.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run `hook` when the next claim answers (a `claim_batch` that claimed
    /// something, or a `register_claimed` that claimed its process), before
    /// the worker hears of it: a test's way into a pause of the node between
    /// a claim and its run.
    pub fn after_next_claim(&self, hook: ClaimHook) {
        *self.claimed_hook.lock() = Some(hook);
    }

    /// Run `hook` when the next `register_claimed` has been written, before
    /// it answers: a test's way into the moment a start's claim is durable
    /// and its caller has not heard (and may have gone).
    pub fn after_next_register_claimed(&self, hook: ClaimHook) {
        *self.registered_hook.lock() = Some(hook);
    }

    /// Run `hook` when the next `register_child` arrives, before passing it
    /// on: a test's way into the moment a run has built its child's start
    /// and not yet written it.
    pub fn before_next_child_registration(&self, hook: ClaimHook) {
        *self.child_hook.lock() = Some(hook);
    }

    /// Let the next `n` claiming starts (`register_claimed`) be written and
    /// then answer `outcome_unknown`, as a commit whose answer was lost does.
    pub fn lose_next_claimed_start_answers(&self, n: u64) {
        self.unanswered_claimed_starts
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// After a claiming start whose answer [was lost](Self::lose_next_claimed_start_answers),
    /// the next `n` `get`s of its id answer `unknown_process` without reaching
    /// the inner registry: a commit still finishing when it is first read.
    pub fn hide_lost_starts_from_next_gets(&self, n: u64) {
        self.hidden_after_lost_start.lock().0 = n;
    }

    /// A receiver of the number of `get` calls answered so far.
    pub fn gets(&self) -> watch::Receiver<u64> {
        self.gets.subscribe()
    }

    /// Resolves once `n` `get` calls (counted since the probe was made) have answered.
    pub async fn answered_gets(&self, n: u64) {
        let mut gets = self.gets();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = gets.wait_for(|count| *count >= n).await;
    }
}

#[async_trait]
impl ProcessRegistry for ReadProbe {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        self.inner.register(registration, grant).await
    }
    async fn register_child(
        &self,
        registration: Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
    ) -> Result<Registered> {
        let hook = self.child_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        self.inner.register_child(registration, grants, parent_lease).await
    }
    async fn register_claimed(
        &self,
        registration: Registration,
        grant: Option<StartGrant>,
        owner_id: &str,
        ttl_ms: u64,
    ) -> Result<(Registered, Option<Claim>)> {
        let answer = self.inner.register_claimed(registration, grant, owner_id, ttl_ms).await;
        if answer.as_ref().is_ok_and(|(_, claim)| claim.is_some()) {
            self.run_claimed_hook().await;
        }
        let hook = self.registered_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        if answer.is_ok() && take_one(&self.unanswered_claimed_starts) {
            let mut hidden = self.hidden_after_lost_start.lock();
            if hidden.0 > 0 {
                let id = answer.as_ref().map(|(r, _)| r.process.id.clone()).unwrap_or_default();
                hidden.1 = Some((id, hidden.0));
            }
            drop(hidden);
            return Err(cairn_core::CairnError::OutcomeUnknown(
                "the probe lost this start's answer".into(),
            ));
        }
        answer
    }
    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        {
            let mut hidden = self.hidden_after_lost_start.lock();
            if let Some((hid, left)) = hidden.1.as_mut().filter(|(h, n)| h == id && *n > 0) {
                *left -= 1;
                let id = hid.clone();
                drop(hidden);
                return Err(cairn_core::CairnError::UnknownProcess(id));
            }
        }
        let answer = self.inner.get(id).await;
        self.gets.send_modify(|n| *n += 1);
        answer
    }
    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        if take_one(&self.failing_lists) {
            return Err(cairn_core::CairnError::Unavailable(
                "the store did not answer (probe)".into(),
            ));
        }
        if self.hanging_lists.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.list(filter).await
    }
    async fn events_after(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage> {
        let mut gate = self.log_gate.subscribe();
        if *gate.borrow_and_update() {
            self.held_log_reads.send_modify(|n| *n += 1);
            let _ = gate.wait_for(|held| !held).await;
        }
        if take_one(&self.failing_log_reads) {
            return Err(cairn_core::CairnError::Unavailable(
                "the probe fails this log read".into(),
            ));
        }
        self.inner.events_after(id, after, limit).await
    }
    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult> {
        let delay = *self.append_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if take_one(&self.failing_appends) {
            return Err(cairn_core::CairnError::Unavailable(
                "the store did not answer (probe)".into(),
            ));
        }
        let answer = self.inner.append_event(id, request).await?;
        if take_one(&self.unanswered_appends) {
            return Err(cairn_core::CairnError::OutcomeUnknown(
                "the probe loses this append's answer".into(),
            ));
        }
        Ok(answer)
    }
    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        self.inner.request_cancel(id, reason).await
    }
    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        self.inner.grant(scope, id, descriptor).await
    }
    async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool> {
        self.inner.revoke(scope, id).await
    }
    async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport> {
        self.inner.transfer(from, to, ids).await
    }
    async fn grants_of(&self, id: &str) -> Result<Vec<Grant>> {
        self.inner.grants_of(id).await
    }
    async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<cairn_core::model::Tombstone>> {
        self.inner.pruned_grant(scope, id).await
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        if take_one(&self.failing_lists) {
            return Err(cairn_core::CairnError::Unavailable(
                "the store did not answer (probe)".into(),
            ));
        }
        self.inner.list_granted_to(scope, filter).await
    }
    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        self.inner.list_originated_by(scope, filter).await
    }
    async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport> {
        self.inner.delete_session_with(session_id, keep_frames).await
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
        self.claim_batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let hook = self.claim_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        if take_one(&self.failing_claim_batches) {
            return Err(cairn_core::CairnError::Unavailable(
                "the store did not answer (probe)".into(),
            ));
        }
        let claims = self.inner.claim_batch(owner_id, ttl_ms, limit).await;
        if claims.as_ref().is_ok_and(|c| !c.is_empty()) {
            self.run_claimed_hook().await;
        }
        claims
    }
    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        self.inner.record_started(lease).await
    }
    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        if self.hanging_renewals.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.failing_renewals.load(std::sync::atomic::Ordering::SeqCst) {
            self.failed_renewals
                .send_modify(|ids| ids.push(lease.process_id.clone()));
            return Err(cairn_core::CairnError::Unavailable("the probe fails renewals".into()));
        }
        self.inner.renew(lease, ttl_ms).await
    }
    async fn leases_of_earlier_incarnations(&self, node: &str, incarnation: u64, limit: usize) -> Result<Vec<Lease>> {
        self.inner
            .leases_of_earlier_incarnations(node, incarnation, limit)
            .await
    }
    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        self.completes.send_modify(|n| *n += 1);
        let failing = self
            .failing_completes
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if failing {
            return Err(cairn_core::CairnError::Unavailable(
                "the probe fails this completion".into(),
            ));
        }
        self.inner.complete(lease, outcome).await
    }
    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>> {
        self.inner.worklist(limit).await
    }
    async fn abandon_worklist(&self, limit: usize) -> Result<Vec<String>> {
        self.inner.abandon_worklist(limit).await
    }
    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        self.abandon_requests.send_modify(|n| *n += 1);
        if self.failing_abandon_requests.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(cairn_core::CairnError::Unavailable(
                "the probe fails this abandon request".into(),
            ));
        }
        self.inner.request_abandon(id, requested_by, reason).await
    }
    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        self.inner.reconcile_abandon(id).await
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
        self.inner.sweep(id, node, incarnation).await
    }
    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<CompleteAnswer> {
        self.inner.complete_external(id, outcome, authority).await
    }
    async fn prune(
        &self,
        cutoff_ms: u64,
        filter: cairn_core::PruneFilter,
        watermark: Watermark,
    ) -> Result<PruneReport> {
        self.inner.prune(cutoff_ms, filter, watermark).await
    }
    async fn change_head(&self) -> Result<u64> {
        self.inner.change_head().await
    }
    async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage> {
        self.changes_read_from.lock().push(cursor);
        let page = self.inner.changed_since(cursor, limit).await;
        let hook = self.changes_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        page
    }
    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef> {
        self.inner.put_env(spec).await
    }
    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec> {
        if take_one(&self.failing_env_reads) {
            return Err(cairn_core::CairnError::Unavailable(
                "the probe fails this env read".into(),
            ));
        }
        let env = self.inner.get_env(env_ref).await;
        let hook = self.env_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        env
    }
    async fn put_module(&self, module: &cairn_core::Module) -> Result<cairn_core::ModulePut> {
        self.inner.put_module(module).await
    }
    async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<cairn_core::ModuleInfo>> {
        self.inner.list_modules(after, limit).await
    }
    async fn get_module(&self, module_ref: &str) -> Result<cairn_core::Module> {
        self.inner.get_module(module_ref).await
    }
    async fn fencing_token(&self, id: &str) -> Result<u64> {
        self.inner.fencing_token(id).await
    }

    async fn wait(&self, lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<bool> {
        let hook = self.wait_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        if take_one(&self.failing_waits) {
            return Err(cairn_core::CairnError::Unavailable(
                "the store did not answer (probe)".into(),
            ));
        }
        self.inner.wait(lease, wait, seen_sequence).await
    }

    async fn resume(&self, lease: &Lease, payload: serde_json::Value) -> Result<ProcessRecord> {
        if take_one(&self.failing_resumes) {
            return Err(cairn_core::CairnError::Unavailable(
                "the probe fails this resumption".into(),
            ));
        }
        let r = self.inner.resume(lease, payload).await?;
        if take_one(&self.lost_resumes) {
            return Err(cairn_core::CairnError::OutcomeUnknown(
                "the answer was lost (probe)".into(),
            ));
        }
        Ok(r)
    }

    async fn next_due(&self, after_ms: u64) -> Result<Option<u64>> {
        self.inner.next_due(after_ms).await
    }

    async fn gauges(&self) -> Result<cairn_core::Gauges> {
        if self.failing_gauges.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(cairn_core::CairnError::Unavailable("the probe fails this count".into()));
        }
        if self.hanging_gauges.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.gauges().await
    }

    async fn insert_schedule(&self, schedule: &cairn_core::Schedule) -> Result<Option<cairn_core::Schedule>> {
        self.inner.insert_schedule(schedule).await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<cairn_core::Schedule>> {
        self.inner.get_schedule(id).await
    }

    async fn list_schedules(&self, after_id: Option<&str>, limit: usize) -> Result<Vec<cairn_core::Schedule>> {
        self.inner.list_schedules(after_id, limit).await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        self.inner.delete_schedule(id).await
    }

    async fn set_schedule_paused(
        &self,
        id: &str,
        paused: bool,
        next_fire_ms: Option<u64>,
    ) -> Result<Option<cairn_core::Schedule>> {
        self.inner.set_schedule_paused(id, paused, next_fire_ms).await
    }

    async fn advance_schedule(
        &self,
        id: &str,
        expected_next_fire_ms: u64,
        advance: &cairn_core::ScheduleAdvance,
    ) -> Result<bool> {
        let hook = self.advance_hook.lock().take();
        if let Some(hook) = hook {
            hook().await;
        }
        if take_one(&self.failing_advances) {
            return Err(cairn_core::CairnError::Unavailable(
                "the probe fails this schedule advance".into(),
            ));
        }
        self.inner.advance_schedule(id, expected_next_fire_ms, advance).await
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<cairn_core::Schedule>> {
        let due = self.inner.due_schedules(now_ms, limit).await?;
        if !due.is_empty() {
            let hook = self.due_hook.lock().take();
            if let Some(hook) = hook {
                hook().await;
            }
        }
        Ok(due)
    }
}

/// Take one from `counter` unless it is zero: whether a failure was due.
fn take_one(counter: &std::sync::atomic::AtomicU64) -> bool {
    counter
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        )
        .is_ok()
}
