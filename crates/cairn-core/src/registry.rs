//! The storage contract every backend implements (SPEC §3–5, 7, 8).
//!
//! Each method states its contract; `cairn-testkit` pins every clause. Every
//! rule about what an append *means* lives in [`crate::fold`]; a backend
//! persists what that module computes, atomically. Waiting is not a registry
//! method: waits live above storage (see [`crate::awaiter`]).

use std::time::Duration;

use async_trait::async_trait;

use crate::events::{AppendRequest, AppendResult, EventPage};
use crate::model::{
    ChangePage, Claim, EnvRef, EnvSpec, Gauges, Grant, GrantDescriptor, GrantedProcess, Lease, NodeIdentity,
    NodeLiveness, Outcome, ProcessFilter, ProcessRecord, PruneFilter, PruneReport, Registration, SessionDeleteReport,
    SessionScope, StartGrant, SweepItem, Tombstone, TransferReport, WaitRequest, WakeDelivery, Watermark, WorkItem,
};
use crate::schedule::{Schedule, ScheduleAdvance};
use crate::script::{Module, ModuleInfo, ModulePut};
use crate::Result;

/// The answer of [`ProcessRegistry::register`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    /// The stored record (the existing one when `created` is false).
    pub process: ProcessRecord,
    /// False when the same registration already existed (nothing was written).
    pub created: bool,
}

/// The answer of [`ProcessRegistry::complete_external`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompleteAnswer {
    /// The record after the completion: the ended one.
    pub process: ProcessRecord,
    /// True when this call ended the process; false for the same completion
    /// again (a retry after a lost reply), which wrote nothing.
    pub completed_now: bool,
}

/// The answer of [`ProcessRegistry::request_cancel`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CancelAnswer {
    /// The record after the request.
    pub process: ProcessRecord,
    /// True when the request ended the process at once (nobody had started
    /// it, and it is not externally owned: that one's owner ends it).
    pub cancelled_now: bool,
    /// How many events this write appended to the process itself (its
    /// request, and its end when `cancelled_now`): none for a repeat.
    #[serde(default)]
    pub appended: u64,
    /// The descendants whose cancellation the same write requested (those
    /// that had not ended and had no request yet), as they stand after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descendants: Vec<ProcessRecord>,
}

/// How long an env spec or an event-type list nobody has stored or put again
/// is kept after no process names it any more (ADR 0034): a
/// [`ProcessRegistry::put_env`] and the registration naming its env are two
/// writes, and a PostgreSQL lane names a list it stored up to 10 minutes
/// earlier without writing it again; neither may find it collected between.
pub const DEFAULT_COLLECT_GRACE: Duration = Duration::from_secs(3600);

/// The answer of [`ProcessRegistry::collect_unreferenced`]: what it deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Collected {
    /// Env specs deleted.
    pub envs: u64,
    /// Event-type lists deleted (always 0 on a store that keeps each
    /// record's list with the record, as the memory registry does).
    pub type_lists: u64,
}

/// What a backend's [`ProcessRegistry::prune`] does once its chunks are done:
/// when it removed a process, collect what no process names any more
/// ([`ProcessRegistry::collect_unreferenced`] with `grace`) and log the
/// counts. A failed collection fails nothing: the prune stands, and its
/// report (SPEC §12) says what it removed; the next prune that removes a
/// process collects again.
pub async fn collect_after_prune<R: ProcessRegistry + ?Sized>(registry: &R, report: &PruneReport, grace: Duration) {
    if report.pruned == 0 {
        return;
    }
    match registry.collect_unreferenced(grace).await {
        Ok(collected) => tracing::info!(
            pruned = report.pruned,
            envs = collected.envs,
            type_lists = collected.type_lists,
            "prune collected the env specs and event-type lists no process names"
        ),
        Err(e) => tracing::warn!(
            pruned = report.pruned,
            error = %e,
            "prune could not collect the env specs and event-type lists no process names; the next prune tries again"
        ),
    }
}

/// Durable process storage. Object safe; share it as `Arc<dyn ProcessRegistry>`.
///
/// Errors are [`crate::CairnError`] with stable codes. A method that returns an
/// error changed nothing, with one exception: `outcome_unknown`
/// ([`crate::CairnError::OutcomeUnknown`]) means the write may or may not have
/// been applied (a backend lost the reply to a commit it sent), and the caller
/// reads the state to find out.
#[async_trait]
pub trait ProcessRegistry: Send + Sync + 'static {
    /// Record a new process with its optional initial grant, or return the
    /// existing one.
    ///
    /// - The registration is validated ([`crate::validate::validate_registration`]);
    ///   an `env_ref` must name a stored env (`unknown_env`).
    /// - Same id, same registration hash: returns the stored record, `created: false`,
    ///   writes nothing (the grant is not re-applied).
    /// - Same id, different hash: `registration_conflict`.
    /// - A pruned id: `no_longer_retained` (ids are never reused).
    /// - A `caused_by` process must exist or have been pruned (`invalid_request`);
    ///   when its cancellation was requested, the child is recorded and
    ///   cancelled in the same transaction (it answers `cancelled`).
    /// - The record, its grant and its change-feed entry commit together.
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered>;

    /// A child's registration by a run of its parent (`caused_by` names the
    /// process `parent_lease` is of; `invalid_request` otherwise):
    /// [`register`](Self::register), fenced by the run's lease
    /// (`lease_fenced`, and nothing written, unless it is the parent's live
    /// lease: a run that lost its lease starts no children), with several
    /// grants written with the record in one transaction (each an upsert of
    /// its scope's grant). As for `register`, an existing id writes nothing:
    /// a grant revoked since the first start stays revoked. A child of a
    /// session's process started for a session (its originator one) is
    /// granted, with the first grant's descriptor, to every scope that holds
    /// its parent as the same transaction reads them; `grants` are written
    /// as given only when none does.
    async fn register_child(
        &self,
        registration: Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
    ) -> Result<Registered>;

    /// [`register`](Self::register), and when the write created a process
    /// the worklist would hand out now (a run candidate with a free lease),
    /// its claim for `owner_id` for `ttl_ms` with `process.started` recorded,
    /// in the same transaction, as [`claim_batch`](Self::claim_batch) would
    /// claim it: a start on a node with an idle worker slot then writes the
    /// row once, not twice. Answers the registration (its record as
    /// registered, before the claim) and the claim when one was made; an
    /// existing id, or a process that may not run now (externally owned, born
    /// cancelled), is answered without one. An error changed nothing, as for
    /// `register`. `owner_id` and `ttl_ms` are checked as a claim's.
    ///
    /// The default registers and claims nothing: the worklist hands the
    /// process out on the next drive.
    async fn register_claimed(
        &self,
        registration: Registration,
        grant: Option<StartGrant>,
        owner_id: &str,
        ttl_ms: u64,
    ) -> Result<(Registered, Option<Claim>)> {
        let _ = (owner_id, ttl_ms);
        Ok((self.register(registration, grant).await?, None))
    }

    /// The current record. Unknown ids are `unknown_process`; pruned ids are
    /// `no_longer_retained` carrying the tombstone.
    async fn get(&self, id: &str) -> Result<ProcessRecord>;

    /// Records matching `filter`, one page (`filter.limit`), in the filter's
    /// order ([`crate::model::ListOrder`]): by id, or newest first (a cursor
    /// naming no process is then `invalid_page`).
    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>>;

    /// Events with sequence greater than `after`, in order, at most `limit`
    /// (default 100, at most 1000; 0 or more than 1000 is `invalid_page`).
    async fn events_after(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage>;

    /// Append one event, atomically with its record update and wake delivery.
    ///
    /// In order: a used replay key returns the original event (`replayed: true`)
    /// when type and payload match, else `replay_conflict`; then the type must be
    /// declared (`undeclared_event_type`; `signal.{name}` is implicit), not
    /// reserved for cairn (`reserved_event_type`), and the payload must satisfy
    /// its schema and size (`schema_violation`, `payload_too_large`). A terminal
    /// process accepts nothing (`process_terminal`). A presented lease must be the
    /// live one (`lease_fenced`). A terminal event needs the live lease or an
    /// externally owned process (`terminal_needs_authority`); it ends the process
    /// once and releases the lease. A wake delivery is written when the type has
    /// wake semantics and there is a target, unless one with the same id exists.
    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult>;

    /// Record `process.cancel_requested` (idempotent per reason). When nobody holds
    /// a live lease and no owner-bound run has begun, the process also ends
    /// `cancelled` in the same transaction. Externally owned processes only get
    /// the request. Terminal processes: `process_terminal`.
    ///
    /// The same transaction requests the cancellation of every descendant that
    /// has not ended (SPEC §13: children, `caused_by` it, theirs, and so on),
    /// each by the same rule, and a child registered later under a process
    /// whose cancellation was requested is born cancelled: no child escapes.
    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer>;

    /// Grant `scope` a handle on a process (upsert of the descriptor).
    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant>;

    /// Remove one grant; `false` when there was none.
    async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool>;

    /// Move grants from one scope to another. Processes never change.
    async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport>;

    /// The grants held on process `id`, in scope id order: none for an id
    /// no process has (a pruned one's went with it). One point read.
    async fn grants_of(&self, id: &str) -> Result<Vec<Grant>>;

    /// The tombstone of pruned process `id` when `scope` (exact scope match)
    /// held a grant on it as it was pruned: the prune keeps, beside the
    /// tombstone, which scopes held one, so the session that owned the work
    /// learns how it ended. `None` for a live or unknown id, one pruned
    /// without that scope's grant, and one whose kept grant the scope's
    /// session deletion removed. One point read.
    async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<Tombstone>>;

    /// What `scope` may address (exact scope match), filtered, in the filter's order.
    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>>;

    /// What `scope` created (originator equals the scope), whether or not it is
    /// still granted to it, filtered, in the filter's order.
    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>>;

    /// Remove every grant of every scope of the session and its pending wakes, and
    /// report; the grants its scopes held on pruned processes
    /// ([`Self::pruned_grant`]) go too. Never cancels or otherwise changes a process.
    async fn delete_session(&self, session_id: &str) -> Result<SessionDeleteReport> {
        self.delete_session_with(session_id, false).await
    }

    /// [`Self::delete_session`], or with `keep_frames` (a session token's
    /// delete: it may neither see nor move its agent frames' grants) only
    /// the grants to the session as a whole (`session:{id}`), keeping those
    /// to its agent frames; every pending wake of the session goes either
    /// way (all of them are the session's to read and acknowledge). The
    /// grants kept of pruned processes go as the live ones do (with
    /// `keep_frames`, only the session's own). The report names only what
    /// was removed: a process a frame still holds is preserved, not orphaned.
    async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport>;

    /// Pending (unacknowledged) wakes for a session, oldest first, one page:
    /// at most `limit`, and none after the one that brings the page to
    /// [`crate::LIST_PAGE_BYTES`] as JSON (a wake may be a mebibyte;
    /// acknowledged ones make room for the next).
    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>>;

    /// Pending wakes aimed at agent frame `frame_id` of a session (their
    /// `target_scope` names that frame), oldest first, one page bounded as
    /// [`Self::pending_wakes`] bounds it: other frames' wakes never hide
    /// them. The default filters the session's first page (a page of other
    /// frames' wakes may hide them); backends read past them.
    async fn pending_frame_wakes(
        &self,
        session_id: &str,
        frame_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<WakeDelivery>> {
        let mut wakes = self.pending_wakes(session_id, limit).await?;
        wakes.retain(|w| w.target_scope.agent_frame_id.as_deref() == Some(frame_id));
        Ok(wakes)
    }

    /// Acknowledge a wake: it stops being pending but keeps deduplicating.
    /// `true` when this call acknowledged it, `false` when it already was;
    /// `unknown_wake` when the session has no such wake.
    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool>;

    /// Claim the lease of one process for `ttl_ms`. Succeeds on a free, expired or
    /// own lease, bumping the fencing token; an unexpired lease of another owner is
    /// `lease_held`; externally owned, started owner-bound (unless the caller holds
    /// its live lease) and abandon-requested processes are `not_claimable`.
    /// A claim writes no event.
    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease>;

    /// Claim up to `limit` run candidates from the worklist for `owner_id` and
    /// record `process.started` on each, in one transaction per backend's
    /// batching. Rows another owner claims concurrently are skipped, never waited on.
    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>>;

    /// Append `process.started` under `lease` (fenced), marking a run's beginning.
    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord>;

    /// Extend a live lease. The presented lease must match the stored owner, lease
    /// token and fencing token and be unexpired, else `lease_fenced`.
    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease>;

    /// Release a lease. A stale lease is a no-op answering `false`.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Fenced, atomic completion: the terminal event, the record update and the
    /// lease release commit together, only while `lease` is live (`lease_fenced`
    /// otherwise, and nothing is written).
    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord>;

    /// The bounded worklist: at most `limit` rows whose lease is free or expired and
    /// that either may be run (not terminal, not externally owned, not a started
    /// owner-bound row, no abandon request) or have a pending abandon request.
    /// Backends answer from an index of such rows, never a scan of every running row.
    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>>;

    /// The worklist's `reconcile_abandon` items alone: at most `limit` ids with a
    /// pending abandon request whose lease is free or expired. A worker's driver
    /// asks this on every drive, so backends with an index of such rows answer
    /// from it; the default filters the first worklist page.
    async fn abandon_worklist(&self, limit: usize) -> Result<Vec<String>> {
        Ok(self
            .worklist(limit)
            .await?
            .into_iter()
            .filter(|item| item.action == crate::model::WorkAction::ReconcileAbandon)
            .map(|item| item.process_id)
            .collect())
    }

    /// Record an abandon request as a `process.abandon_requested` event (first
    /// request wins; repeats return the record unchanged, also after it ended).
    /// Ended without a request: `process_terminal`.
    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord>;

    /// Turn a pending abandon request into `abandoned {reconciled_request}` if the
    /// lease has lapsed (expired or free). `None` when there is no request or the
    /// lease is still live.
    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>>;

    /// Register a new incarnation of `node` in its liveness row: one more than
    /// the node's latest (1 for a node never seen), started and heartbeat now.
    /// From then on every earlier incarnation of `node` is provably gone (SPEC
    /// §2, `sweep`). A bad node id is `invalid_id`.
    async fn register_node(&self, node: &str) -> Result<NodeIdentity>;

    /// Record a heartbeat of `identity` in its node's liveness row: `true` when
    /// it is still the node's latest incarnation, `false` (writing nothing) when
    /// a newer one has registered since. A heartbeat is for operators; no
    /// rule reads its age.
    async fn heartbeat(&self, identity: &NodeIdentity) -> Result<bool>;

    /// The liveness row of `node`, if it ever registered.
    async fn node(&self, node: &str) -> Result<Option<NodeLiveness>>;

    /// The sweep worklist: at most `limit` running `owner_bound` processes
    /// started by an incarnation of a node earlier than the incarnation that
    /// node has registered since ([`crate::fold::sweep_owner`]), each with that
    /// newer incarnation. Backends answer from an index of such rows.
    async fn sweep_worklist(&self, limit: usize) -> Result<Vec<SweepItem>>;

    /// At most `limit` leases that incarnations of `node` earlier than
    /// `incarnation` hold on running `rerunnable` processes. Their owner is
    /// gone (a newer incarnation of its node registered, ADR 0017), so the
    /// newer one releases them ([`Self::release`], fenced by each lease's
    /// token) for a claim at once, instead of waiting out their expiry.
    async fn leases_of_earlier_incarnations(&self, node: &str, incarnation: u64, limit: usize) -> Result<Vec<Lease>>;

    /// Write `abandoned {sweep}` for `id` on the evidence that `node` has
    /// registered `incarnation` (from [`Self::register_node`] or a
    /// [`Self::sweep_worklist`] item): only when an earlier incarnation of
    /// `node` started it and its stored lease, if any, is that incarnation's;
    /// the terminal releases the lease, so that owner's later writes are
    /// fenced. `None` (nothing written) otherwise. Lease expiry plays no part.
    async fn sweep(&self, id: &str, node: &str, incarnation: u64) -> Result<Option<ProcessRecord>>;

    /// End an externally owned process with `outcome` on behalf of `authority`
    /// (recorded in the terminal payload). Other dispositions are
    /// `not_externally_owned`; an abandoned outcome is `invalid_outcome`.
    /// The same completion again answers the ended record with
    /// `completed_now` false and writes nothing; another outcome on an ended
    /// process is `process_terminal`.
    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<CompleteAnswer>;

    /// Delete terminal processes whose terminal time is before `cutoff_ms` and
    /// that pass `filter` (checked by [`PruneFilter::validate`]: `running` is
    /// `invalid_filter`), with their events, grants, wakes and lease, leaving
    /// tombstones and which scopes held a grant on each ([`Self::pruned_grant`]).
    /// With a cursor watermark only processes whose last change is
    /// at or before it go. Never touches a running process. It commits a
    /// chunk at a time ([`crate::ops::admin::prune`]): on an error, the
    /// chunks before it stand. A prune that removed a process then collects
    /// the env specs and type lists no process names any more
    /// ([`collect_after_prune`], with the backend's configured grace,
    /// [`DEFAULT_COLLECT_GRACE`] unless set).
    async fn prune(&self, cutoff_ms: u64, filter: PruneFilter, watermark: Watermark) -> Result<PruneReport>;

    /// Delete the stored env specs no process names (its record's `env_ref`)
    /// and the event-type lists no process row names (ADR 0008), of those
    /// nobody stored or put again in the last `grace` (ADR 0034), by the
    /// store's clock (PostgreSQL's: the server's). A tombstone names neither.
    ///
    /// - An env put within `grace` stays, named or not: a registration that
    ///   names an env must come within `grace` of its [`Self::put_env`]
    ///   (the [`crate::Processes`] facade puts it just before).
    /// - No write that names a list is left naming a deleted one: a writer
    ///   that knows a list is stored either stored it within `grace`
    ///   (PostgreSQL: its lanes trust a list for 10 minutes, so `grace` must
    ///   exceed that by far when several nodes write) or finds it gone (the
    ///   same registry, SQLite's writers) and stores it again.
    /// - Set-based: one pass over the process rows per kind, never a
    ///   lookup per candidate.
    ///
    /// The default collects nothing: for a wrapper whose inner registry's
    /// prune collects. Every backend that stores envs implements it.
    async fn collect_unreferenced(&self, grace: Duration) -> Result<Collected> {
        let _ = grace;
        Ok(Collected::default())
    }

    /// Records changed after `cursor`, each once at its latest change, in cursor
    /// order, at most `limit`, with the cursor to read on from.
    async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage>;

    /// The head of the change feed: a cursor at or below which no change can
    /// appear any more, so every change `changed_since` answers from it is
    /// newer than this read; on a store nobody writes to, it answers none.
    /// It may stand past the last change answered (a change rolled back or
    /// pruned, PostgreSQL's horizon). A reader that only wants what changes
    /// from now on (it has just read the state it shows) starts here
    /// instead of at 0.
    async fn change_head(&self) -> Result<u64>;

    /// Store an env spec content-addressed; idempotent.
    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef>;

    /// Load an env spec: `unknown_env` when missing, `corrupt_env` when the stored
    /// bytes do not match their address.
    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec>;

    /// Store a script module under its content address (SPEC §14), checked by
    /// [`crate::script::validate_module`]. Idempotent: when the ref is stored
    /// already nothing is written and the stored module is answered (its first
    /// name and creation time) with `created: false`. Modules are immutable.
    async fn put_module(&self, module: &Module) -> Result<ModulePut>;

    /// Stored modules without their sources, in ref order, after `after`,
    /// one page (`limit`: default 100, at most 1000, else `invalid_page`).
    async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<ModuleInfo>>;

    /// One module with its source; `unknown_module` when none is stored
    /// under the ref (a malformed ref is `invalid_id`).
    async fn get_module(&self, module_ref: &str) -> Result<Module>;

    /// The fencing token of the most recent claim (0 if never claimed). For
    /// tests and diagnostics.
    async fn fencing_token(&self, id: &str) -> Result<u64>;

    /// Record a durable wait under `lease` (SPEC §13), by a run that read the
    /// log up to `seen_sequence`. A `rerunnable` process suspends: the
    /// `process.waiting` event and the release of the lease are one fenced
    /// write, and the process is not claimable until the wait is satisfied (a
    /// signal of the name, the deadline, a cancellation request). An
    /// `owner_bound` process records the wait and keeps its lease. Answers
    /// `false` and writes nothing when the log moved past `seen_sequence`, a
    /// cancellation is pending or the deadline has passed (read again and
    /// decide anew). A stale lease is `lease_fenced`; a terminal process
    /// `process_terminal`; a bad wait `invalid_request`.
    async fn wait(&self, lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<bool>;

    /// Append `process.resumed` with `payload` (which names the wait and the
    /// `reason`) under `lease`: the end of a wait the run held its lease
    /// through. A suspended run's resumption is written by the claim instead.
    /// The same resumption again under the same lease (a retry of one whose
    /// answer was lost) is answered by the one written, writing nothing.
    async fn resume(&self, lease: &Lease, payload: serde_json::Value) -> Result<ProcessRecord>;

    /// The earliest claimable time after `after_ms` among worklist rows (a
    /// lease expiry or a suspension's deadline), if any: a driver that looked
    /// for work at `after_ms` sleeps until then. Answered from the worklist index.
    /// An unpaused schedule's next fire time counts as a due time too.
    async fn next_due(&self, after_ms: u64) -> Result<Option<u64>>;

    /// Counts of the live state: running, waiting and leased processes, and
    /// pending wakes. Answered by counting in the store (an index range), never
    /// by shipping the rows.
    async fn gauges(&self) -> Result<Gauges>;

    /// Store a new schedule (SPEC §18), computed and checked by the runtime.
    /// Answers `None` when it was stored, or the stored schedule when the id
    /// is taken (nothing is written). [`ProcessRegistry::next_due`] considers
    /// its `next_fire_ms` from the commit on.
    async fn insert_schedule(&self, schedule: &Schedule) -> Result<Option<Schedule>>;

    /// The schedule `id`, if stored.
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>>;

    /// Schedules with ids after `after_id` (byte order), in id order, at most `limit`.
    async fn list_schedules(&self, after_id: Option<&str>, limit: usize) -> Result<Vec<Schedule>>;

    /// Remove a schedule; `false` when there was none. Processes it started stay.
    async fn delete_schedule(&self, id: &str) -> Result<bool>;

    /// Set a schedule's `paused` flag and, when given, its next fire time.
    /// `None` when there is no such schedule.
    async fn set_schedule_paused(&self, id: &str, paused: bool, next_fire_ms: Option<u64>) -> Result<Option<Schedule>>;

    /// The compare-and-set of a fire: only while schedule `id` is unpaused and
    /// its `next_fire_ms` is still `expected_next_fire_ms`, write `advance`
    /// (the new next fire time, or paused when there is none; the last fire
    /// when it started one) and answer `true`; otherwise write nothing and
    /// answer `false` (another node advanced it, or it was paused, resumed or
    /// deleted meanwhile). A losing advance that started a process still
    /// records that fire as the last one when it is later than the recorded
    /// last fire and the schedule is the one the fire is of (its
    /// `created_ms` is `advance.created_ms`: not one made again under the
    /// id after a delete), clearing a refusal of that fire or an earlier one (and changes nothing
    /// else): the process exists and runs, and
    /// the next fire's `overlap: skip` check must see it, whichever node won.
    async fn advance_schedule(&self, id: &str, expected_next_fire_ms: u64, advance: &ScheduleAdvance) -> Result<bool>;

    /// Unpaused schedules whose `next_fire_ms` is at or before `now_ms`,
    /// earliest first, at most `limit`. Answered from an index on the next
    /// fire time, never a scan of every schedule.
    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<Schedule>>;
}
