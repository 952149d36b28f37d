//! The operation layer: the rules of every per-process write, written once.
//!
//! A backend offers the storage primitives of one open write transaction
//! ([`WriteTx`]: look a row up, store a row, push an event, insert a wake, ...)
//! and runs each [`Op`] through [`run`] inside such a transaction: the memory
//! registry under its mutex, SQLite inside the writer thread's savepoint, and
//! PostgreSQL over a batch's preloaded overlay. What an operation *means*
//! (which checks come first, what it appends, when it releases a lease, when a
//! cancellation ends a process at once) lives here and in [`crate::fold`]; a
//! backend never decides it.
//!
//! Invariant: this module does no I/O, never blocks and never reads a clock: a
//! transaction answers [`WriteTx::now`], fixed for the whole operation.

pub mod admin;
pub mod columns;

use serde_json::json;

use crate::events::{self, AppendRequest, AppendResult, ProcessEvent};
use crate::fold::{self, Authority};
use crate::model::{
    CausalRef, ChildrenMode, Claim, Disposition, Grant, GrantDescriptor, Lease, Originator, Outcome, ProcessRecord,
    Registration, SessionScope, StartGrant, Tombstone, WaitRequest, WaitState, WakeDelivery,
};
use crate::registry::{CancelAnswer, CompleteAnswer, Registered};
use crate::validate::{validate_grant_descriptor, validate_id, validate_scope, MAX_AWAITED_CHILDREN};
use crate::{CairnError, Result};

/// Drive to its end a future over primitives that answer at once (the
/// memory registry's state, SQLite's connection): the admin rules are async
/// for networked stores, and such a store never makes them wait.
pub fn at_once<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    futures::FutureExt::now_or_never(std::pin::pin!(work)).unwrap_or_else(|| {
        Err(CairnError::storage(
            "a store that answers at once made an operation wait",
        ))
    })
}

/// A stored process row: the record, the full lease (the record carries only
/// its view) and the fencing counter (the token of the most recent claim).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The record; its `lease` is the view of [`Row::lease`].
    pub record: ProcessRecord,
    /// The live or lapsed lease, if any was claimed and not released.
    pub lease: Option<Lease>,
    /// The fencing token of the most recent claim (0 if never claimed).
    pub fencing: u64,
}

impl Row {
    /// Make the record's lease view agree with the lease (the lease is the truth).
    pub fn normalise(&mut self) {
        self.record.lease = self.lease.as_ref().map(Lease::view);
    }

    /// When a worklist row may be taken: its lease's expiry, else
    /// [`fold::due_at`] (a suspension's deadline), else 0 (the
    /// `claimable_at_ms` of SQL stores).
    pub fn claimable_at(&self) -> u64 {
        match &self.lease {
            Some(l) => l.expires_at_ms,
            None => fold::due_at(&self.record).unwrap_or(0),
        }
    }

    /// Where a claimable row stands in the worklist (ADR 0030): when it became
    /// claimable as far as the row tells, so work is served first come, first
    /// served: its lease's expiry or its deadline, else (claimable at once)
    /// its registration time. Ties go by id. A row claimable at once is
    /// claimable whatever this says (a clock set back never holds it).
    pub fn worklist_key(&self) -> u64 {
        match self.claimable_at() {
            0 => self.record.created_at_ms,
            at => at,
        }
    }

    /// Whether a driver may take this row at `now_ms`: a run or abandon
    /// candidate whose lease, if any, has lapsed and whose due time has come.
    pub fn due_by(&self, now_ms: u64) -> bool {
        (fold::is_run_candidate(&self.record) || fold::is_abandon_candidate(&self.record))
            && self.claimable_at() <= now_ms
    }
}

/// The storage primitives of one open write transaction.
///
/// Every method sees the writes made before it in the same transaction. A
/// method that fails leaves the transaction to be rolled back (or, for a
/// batching backend, the operation to be undone) by the caller of [`run`].
pub trait WriteTx {
    /// The time of this transaction, in epoch ms.
    fn now(&self) -> u64;

    /// The row of `id`, if one is stored. Its record's lease view agrees with its lease.
    fn row(&mut self, id: &str) -> Result<Option<&Row>>;

    /// The tombstone a prune left for `id`, if any.
    fn tombstone(&mut self, id: &str) -> Result<Option<Tombstone>>;

    /// The event of `id` appended with `replay_key`, if any.
    fn replayed(&mut self, id: &str, replay_key: &str) -> Result<Option<ProcessEvent>>;

    /// Whether an env spec is stored under `env_ref`.
    fn env_stored(&mut self, env_ref: &str) -> Result<bool>;

    /// Up to `limit` ids the store's worklist index holds as run candidates
    /// whose lease is free or expired now. [`run`] checks each again.
    fn run_candidates(&mut self, limit: usize) -> Result<Vec<String>>;

    /// The children of `parent` (rows whose `caused_by` names it) a tree
    /// cancel walks, as this transaction sees them, in id order: every one
    /// that has not ended, and every ended one that has children of its own
    /// (a running grandchild under an ended child is still the tree's); an
    /// answer may hold other ended children too. A batching backend loads
    /// (and locks) them before a cancellation of `parent` runs.
    fn tree_children(&mut self, parent: &str) -> Result<Vec<String>>;

    /// Store a new row: `record`, no lease, fencing counter 0. It enters the
    /// change feed.
    fn insert_row(&mut self, record: ProcessRecord) -> Result<()>;

    /// Replace the record of a stored row after an append (it moves in the
    /// change feed); with `release_lease` the lease is dropped too. The
    /// fencing counter stays.
    fn update_record(&mut self, record: ProcessRecord, release_lease: bool) -> Result<()>;

    /// Set the lease and the fencing counter of a stored row; the record is
    /// unchanged but for its lease view (it does not move in the change feed).
    fn set_lease(&mut self, id: &str, lease: Option<Lease>, fencing: u64) -> Result<()>;

    /// Store an event; [`WriteTx::replayed`] finds it by its replay key from now on.
    fn push_event(&mut self, event: &ProcessEvent) -> Result<()>;

    /// Store a wake delivery unless one with its id is stored; `true` when stored now.
    fn insert_wake(&mut self, wake: &WakeDelivery) -> Result<bool>;

    /// Insert or replace the grant of (scope, process).
    fn upsert_grant(&mut self, grant: &Grant) -> Result<()>;

    /// The grants held on `id`, as this transaction sees them, in scope id
    /// order. Asked only of the parent of a child a session's run registers
    /// ([`Op::inherits_grants_from`]): a batching backend loads those
    /// parents' grants with the batch.
    fn grants_of(&mut self, id: &str) -> Result<Vec<Grant>>;
}

/// Who a registration claims what it creates for, and for how long (see
/// [`Op::register_claimed`]).
#[derive(Clone, Debug)]
pub struct ClaimFor {
    /// The claiming worker's owner id.
    pub owner: String,
    /// The lease's time to live.
    pub ttl_ms: u64,
}

/// One registry write, validated and ready to run in a transaction.
///
/// Build it with the constructors ([`Op::append`], [`Op::claim`], ...): they
/// check everything that needs no stored state (ids, scopes, ttls, the
/// registration), so a backend that queues operations refuses bad input
/// before it queues anything. A variant built directly skips those checks.
// The variants' fields are the arguments of the registry method each names.
#[allow(missing_docs)]
#[derive(Debug)]
pub enum Op {
    /// See [`crate::ProcessRegistry::register`]; with `claim_for`,
    /// [`crate::ProcessRegistry::register_claimed`].
    Register {
        record: Box<ProcessRecord>,
        grants: Vec<Grant>,
        claim_for: Option<ClaimFor>,
        /// A child's registration by a run of its parent: that run's lease,
        /// checked against the parent's (see
        /// [`crate::ProcessRegistry::register_child`]).
        parent_lease: Option<Lease>,
    },
    /// See [`crate::ProcessRegistry::append_event`].
    Append { id: String, request: AppendRequest },
    /// See [`crate::ProcessRegistry::request_cancel`].
    Cancel { id: String, reason: Option<String> },
    /// See [`crate::ProcessRegistry::grant`].
    Grant { grant: Grant },
    /// See [`crate::ProcessRegistry::claim`].
    Claim { id: String, owner: String, ttl_ms: u64 },
    /// See [`crate::ProcessRegistry::claim_batch`].
    ClaimBatch { owner: String, ttl_ms: u64, limit: usize },
    /// See [`crate::ProcessRegistry::record_started`].
    RecordStarted { lease: Lease },
    /// See [`crate::ProcessRegistry::renew`].
    Renew { lease: Lease, ttl_ms: u64 },
    /// See [`crate::ProcessRegistry::release`].
    Release { lease: Lease },
    /// See [`crate::ProcessRegistry::complete`].
    Complete { lease: Lease, outcome: Outcome },
    /// See [`crate::ProcessRegistry::request_abandon`].
    RequestAbandon {
        id: String,
        requested_by: String,
        reason: String,
    },
    /// See [`crate::ProcessRegistry::reconcile_abandon`].
    ReconcileAbandon { id: String },
    /// See [`crate::ProcessRegistry::sweep`].
    Sweep { id: String, node: String, incarnation: u64 },
    /// See [`crate::ProcessRegistry::complete_external`]; the terminal append is built and checked.
    CompleteExternal { id: String, request: AppendRequest },
    /// See [`crate::ProcessRegistry::wait`].
    Wait {
        lease: Lease,
        wait: WaitRequest,
        seen_sequence: u64,
    },
    /// See [`crate::ProcessRegistry::resume`].
    Resume { lease: Lease, payload: serde_json::Value },
}

impl Op {
    /// A registration at `now_ms` with its optional initial grant.
    pub fn register(registration: &Registration, grant: Option<StartGrant>, now_ms: u64) -> Result<Self> {
        Self::register_with(registration, grant.into_iter().collect(), None, now_ms)
    }

    /// A child's registration at `now_ms` by the run of its parent holding
    /// `parent_lease`, with its initial grants (see
    /// [`crate::ProcessRegistry::register_child`]).
    pub fn register_child(
        registration: &Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
        now_ms: u64,
    ) -> Result<Self> {
        let parent = registration
            .provenance
            .caused_by
            .as_ref()
            .and_then(CausalRef::parent_process);
        if parent != Some(parent_lease.process_id.as_str()) {
            return Err(CairnError::InvalidRequest(format!(
                "a child registered under the lease of `{}` names that process as its `caused_by`",
                parent_lease.process_id
            )));
        }
        Self::register_with(registration, grants, Some(parent_lease.clone()), now_ms)
    }

    fn register_with(
        registration: &Registration,
        grants: Vec<StartGrant>,
        parent_lease: Option<Lease>,
        now_ms: u64,
    ) -> Result<Self> {
        let record = fold::initial_record(registration, now_ms)?;
        for (i, g) in grants.iter().enumerate() {
            validate_scope(&g.session_scope)?;
            // A start carries one grant (`grant`); a child's several are named by place.
            let at = match grants.len() {
                1 => "grant.descriptor".to_string(),
                _ => format!("grants[{i}].descriptor"),
            };
            validate_grant_descriptor(&at, &g.descriptor)?;
        }
        let grants = grants
            .into_iter()
            .map(|g| Grant {
                scope: g.session_scope,
                process_id: record.id.clone(),
                descriptor: g.descriptor,
                granted_at_ms: now_ms,
            })
            .collect();
        Ok(Self::Register {
            record: Box::new(record),
            grants,
            claim_for: None,
            parent_lease,
        })
    }

    /// A registration that also claims what it created for `owner` (see
    /// [`crate::ProcessRegistry::register_claimed`]).
    pub fn register_claimed(
        registration: &Registration,
        grant: Option<StartGrant>,
        now_ms: u64,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Self> {
        validate_id("owner id", owner)?;
        fold::check_ttl(ttl_ms)?;
        let Self::Register { record, grants, .. } = Self::register(registration, grant, now_ms)? else {
            unreachable!("Op::register builds a registration")
        };
        Ok(Self::Register {
            record,
            grants,
            parent_lease: None,
            claim_for: Some(ClaimFor {
                owner: owner.to_string(),
                ttl_ms,
            }),
        })
    }

    /// An append by a caller of the public API.
    pub fn append(id: &str, request: AppendRequest) -> Result<Self> {
        validate_id("process id", id)?;
        // A name no type could have is said as such (a signal's, as the
        // signal name it is), not as undeclared.
        match request.event_type.strip_prefix(crate::events::SIGNAL_PREFIX) {
            Some(name) => crate::events::validate_signal_name(name)?,
            None => crate::validate::validate_event_type_name(&request.event_type)?,
        }
        Ok(Self::Append {
            id: id.to_string(),
            request,
        })
    }

    /// A cancellation request.
    pub fn cancel(id: &str, reason: Option<String>) -> Result<Self> {
        validate_id("process id", id)?;
        if let Some(reason) = &reason {
            crate::validate::validate_reason("the cancel reason", reason)?;
        }
        Ok(Self::Cancel {
            id: id.to_string(),
            // A reason that is empty or only blanks is no reason (as a blank
            // abandon reason is none): one request, one replay key and one
            // payload (`{"reason": null}`) on every surface, not two that
            // conflict.
            reason: reason.filter(|r| !r.trim().is_empty()),
        })
    }

    /// A grant made at `now_ms`.
    pub fn grant(scope: &SessionScope, id: &str, descriptor: GrantDescriptor, now_ms: u64) -> Result<Self> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        validate_grant_descriptor("descriptor", &descriptor)?;
        Ok(Self::Grant {
            grant: Grant {
                scope: scope.clone(),
                process_id: id.to_string(),
                descriptor,
                granted_at_ms: now_ms,
            },
        })
    }

    /// A claim of one process.
    pub fn claim(id: &str, owner: &str, ttl_ms: u64) -> Result<Self> {
        validate_id("process id", id)?;
        validate_id("owner id", owner)?;
        fold::check_ttl(ttl_ms)?;
        Ok(Self::Claim {
            id: id.to_string(),
            owner: owner.to_string(),
            ttl_ms,
        })
    }

    /// A claim of up to `limit` run candidates.
    pub fn claim_batch(owner: &str, ttl_ms: u64, limit: usize) -> Result<Self> {
        validate_id("owner id", owner)?;
        fold::check_ttl(ttl_ms)?;
        Ok(Self::ClaimBatch {
            owner: owner.to_string(),
            ttl_ms,
            limit,
        })
    }

    /// `process.started` under `lease`.
    pub fn record_started(lease: &Lease) -> Result<Self> {
        validate_id("process id", &lease.process_id)?;
        Ok(Self::RecordStarted { lease: lease.clone() })
    }

    /// A lease renewal.
    pub fn renew(lease: &Lease, ttl_ms: u64) -> Result<Self> {
        validate_id("process id", &lease.process_id)?;
        fold::check_ttl(ttl_ms)?;
        Ok(Self::Renew {
            lease: lease.clone(),
            ttl_ms,
        })
    }

    /// A lease release.
    pub fn release(lease: &Lease) -> Result<Self> {
        validate_id("process id", &lease.process_id)?;
        Ok(Self::Release { lease: lease.clone() })
    }

    /// The fenced completion.
    pub fn complete(lease: &Lease, outcome: Outcome) -> Result<Self> {
        validate_id("process id", &lease.process_id)?;
        Ok(Self::Complete {
            lease: lease.clone(),
            outcome,
        })
    }

    /// An abandon request.
    pub fn request_abandon(id: &str, requested_by: &str, reason: &str) -> Result<Self> {
        validate_id("process id", id)?;
        crate::validate::validate_authority("requested_by", requested_by)?;
        crate::validate::validate_reason("the abandon reason", reason)?;
        if reason.trim().is_empty() {
            return Err(CairnError::InvalidRequest(format!(
                "the abandon request for `{id}` needs a reason: it is recorded as the evidence behind `abandoned`"
            )));
        }
        Ok(Self::RequestAbandon {
            id: id.to_string(),
            requested_by: requested_by.to_string(),
            reason: reason.to_string(),
        })
    }

    /// A reconciliation of a pending abandon request.
    pub fn reconcile_abandon(id: &str) -> Result<Self> {
        validate_id("process id", id)?;
        Ok(Self::ReconcileAbandon { id: id.to_string() })
    }

    /// A sweep of `id`, on the evidence that `node` has registered `incarnation`.
    pub fn sweep(id: &str, node: &str, incarnation: u64) -> Result<Self> {
        validate_id("process id", id)?;
        crate::model::NodeIdentity::validate_node_id(node)?;
        Ok(Self::Sweep {
            id: id.to_string(),
            node: node.to_string(),
            incarnation,
        })
    }

    /// An external completion on behalf of `authority`.
    pub fn complete_external(id: &str, outcome: &Outcome, authority: &str) -> Result<Self> {
        validate_id("process id", id)?;
        crate::validate::validate_authority("authority", authority)?;
        Ok(Self::CompleteExternal {
            id: id.to_string(),
            request: fold::external_completion(id, outcome, authority)?,
        })
    }

    /// A durable wait under `lease`, by a run that read the log up to `seen_sequence`.
    pub fn wait(lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<Self> {
        validate_id("process id", &lease.process_id)?;
        if !matches!(wait.kind.as_str(), "signal" | "timer" | "children") {
            return Err(CairnError::InvalidRequest(format!(
                "wait kind `{}` is not one of signal, timer, children",
                wait.kind
            )));
        }
        if wait.kind == "children" {
            let ids = wait.ids.as_deref().unwrap_or_default();
            if ids.is_empty() || ids.len() > MAX_AWAITED_CHILDREN {
                return Err(CairnError::InvalidRequest(format!(
                    "a children wait names 1 to {MAX_AWAITED_CHILDREN} children, not {}",
                    ids.len()
                )));
            }
            for child in ids {
                validate_id("child id", child)?;
            }
            if wait.mode.is_none() {
                return Err(CairnError::InvalidRequest(
                    "a children wait needs `mode` (all or any)".into(),
                ));
            }
        }
        if wait.kind == "signal" {
            events::validate_signal_name(wait.name.as_deref().unwrap_or_default())?;
        }
        if let Some(names) = &wait.signals {
            if wait.kind == "timer" || names.is_empty() || names.len() > MAX_AWAITED_CHILDREN {
                return Err(CairnError::InvalidRequest(format!(
                    "a signal or children wait may also name 1 to {MAX_AWAITED_CHILDREN} signals (`signals`); a timer none"
                )));
            }
            for name in names {
                events::validate_signal_name(name)?;
            }
        }
        if wait.kind == "timer" && wait.until_ms.is_none() {
            return Err(CairnError::InvalidRequest("a timer wait needs `until_ms`".into()));
        }
        Ok(Self::Wait {
            lease: lease.clone(),
            wait,
            seen_sequence,
        })
    }

    /// The end of a wait a run held its lease through (`payload` names the
    /// wait and the `reason`).
    pub fn resume(lease: &Lease, payload: serde_json::Value) -> Result<Self> {
        validate_id("process id", &lease.process_id)?;
        if payload.get("reason").and_then(serde_json::Value::as_str).is_none() {
            return Err(CairnError::InvalidRequest("a resumption needs a `reason`".into()));
        }
        Ok(Self::Resume {
            lease: lease.clone(),
            payload,
        })
    }

    /// The process the operation addresses (none for a batch claim): a
    /// batching backend loads its row (and tombstone) before running it.
    pub fn process_id(&self) -> Option<&str> {
        match self {
            Op::Register { record, .. } => Some(&record.id),
            Op::Append { id, .. }
            | Op::Cancel { id, .. }
            | Op::Claim { id, .. }
            | Op::RequestAbandon { id, .. }
            | Op::ReconcileAbandon { id }
            | Op::Sweep { id, .. }
            | Op::CompleteExternal { id, .. } => Some(id),
            Op::Grant { grant } => Some(&grant.process_id),
            Op::RecordStarted { lease }
            | Op::Renew { lease, .. }
            | Op::Release { lease }
            | Op::Complete { lease, .. }
            | Op::Wait { lease, .. }
            | Op::Resume { lease, .. } => Some(&lease.process_id),
            Op::ClaimBatch { .. } => None,
        }
    }

    /// The parent a registration names (`caused_by` a process): a batching
    /// backend loads (and locks) its row with the batch's, since a child is
    /// born cancelled under a parent whose cancellation was requested.
    pub fn parent_id(&self) -> Option<&str> {
        match self {
            Op::Register { record, .. } => record.provenance.caused_by.as_ref().and_then(CausalRef::parent_process),
            _ => None,
        }
    }

    /// The parent whose grant holders a registration may take as its own: a
    /// child a run registers for a session (see
    /// [`crate::ProcessRegistry::register_child`]) is granted to whoever holds
    /// its parent when it is written, so a batching backend loads the
    /// parent's grants with the batch (after the parent's lock, which a
    /// transfer takes too).
    pub fn inherits_grants_from(&self) -> Option<&str> {
        match self {
            Op::Register {
                record,
                parent_lease: Some(_),
                grants,
                ..
            } if !grants.is_empty() && matches!(record.provenance.originator, Originator::Session { .. }) => {
                self.parent_id()
            }
            _ => None,
        }
    }

    /// Whether the operation cancels a tree: a batching backend loads (and
    /// locks) what [`WriteTx::tree_children`] walks below its process
    /// before running it.
    pub fn cancels_tree(&self) -> bool {
        matches!(self, Op::Cancel { .. })
    }

    /// Whether the operation may end its process. A child's end may end its
    /// parent's `children` wait, so a batching backend loads (and locks) the
    /// parent's row with the child's: the parent's row serializes the ends of
    /// its children.
    pub fn may_end(&self) -> bool {
        matches!(
            self,
            Op::Append { .. }
                | Op::Cancel { .. }
                | Op::Complete { .. }
                | Op::RequestAbandon { .. }
                | Op::ReconcileAbandon { .. }
                | Op::Sweep { .. }
                | Op::CompleteExternal { .. }
        )
    }

    /// Processes the operation reads beside its own without changing them
    /// (the children a `children` wait names). A batching backend reads them
    /// after it holds the locks of the rows it writes, so it sees every end
    /// committed before.
    pub fn read_ids(&self) -> &[String] {
        match self {
            Op::Wait { wait, .. } => wait.ids.as_deref().unwrap_or_default(),
            _ => &[],
        }
    }

    /// The (process id, replay key) whose original event the operation may read.
    pub fn replay_key(&self) -> Option<(String, String)> {
        match self {
            Op::Append { id, request } => request.replay_key.clone().map(|k| (id.clone(), k)),
            Op::Cancel { id, reason } => Some((id.clone(), fold::cancel_replay_key(reason.as_deref()))),
            Op::Resume { lease, payload } => Some((lease.process_id.clone(), resume_replay_key(lease, payload))),
            _ => None,
        }
    }

    /// The env ref whose presence the operation checks.
    pub fn env_ref(&self) -> Option<&str> {
        match self {
            Op::Register { record, .. } => record.env_ref.as_deref(),
            _ => None,
        }
    }

    /// How many run candidates the operation may claim.
    pub fn candidates_wanted(&self) -> usize {
        match self {
            Op::ClaimBatch { limit, .. } => *limit,
            _ => 0,
        }
    }
}

/// What an operation answers; the `into_*` methods take the answer the
/// calling registry method expects.
#[derive(Debug)]
pub enum Answer {
    /// Of [`Op::Register`].
    Registered(Registered),
    /// Of [`Op::Register`] with `claim_for`: the claim when one was made.
    RegisteredClaimed(Box<(Registered, Option<Claim>)>),
    /// Of [`Op::Append`].
    Appended(AppendResult),
    /// Of [`Op::Cancel`].
    Cancel(CancelAnswer),
    /// Of [`Op::CompleteExternal`].
    Complete(CompleteAnswer),
    /// Of [`Op::Grant`].
    Grant(Grant),
    /// Of [`Op::Claim`] and [`Op::Renew`].
    Lease(Lease),
    /// Of [`Op::ClaimBatch`].
    Claims(Vec<Claim>),
    /// The record after the operation.
    Record(ProcessRecord),
    /// Of [`Op::ReconcileAbandon`]: the record when it reconciled.
    MaybeRecord(Option<ProcessRecord>),
    /// Of [`Op::Release`]: whether the lease was the stored one.
    Bool(bool),
}

macro_rules! answer_into {
    ($($name:ident => $variant:ident($t:ty)),* $(,)?) => {
        impl Answer {
            $(
                #[doc = concat!("The [`Answer::", stringify!($variant), "`] payload; any other answer is a storage error.")]
                pub fn $name(self) -> Result<$t> {
                    match self {
                        Answer::$variant(v) => Ok(v),
                        other => Err(CairnError::storage(format!(
                            "an operation answered {other:?} where {} was expected",
                            stringify!($variant)
                        ))),
                    }
                }
            )*
        }
    };
}

answer_into! {
    into_registered => Registered(Registered),
    into_registered_claimed => RegisteredClaimed(Box<(Registered, Option<Claim>)>),
    into_appended => Appended(AppendResult),
    into_cancel => Cancel(CancelAnswer),
    into_complete => Complete(CompleteAnswer),
    into_grant => Grant(Grant),
    into_lease => Lease(Lease),
    into_claims => Claims(Vec<Claim>),
    into_record => Record(ProcessRecord),
    into_maybe_record => MaybeRecord(Option<ProcessRecord>),
    into_bool => Bool(bool),
}

/// Run `op` in `tx`. On `Err` the caller must discard what the operation
/// wrote (roll the transaction or savepoint back, or undo it from an overlay).
pub fn run<T: WriteTx + ?Sized>(tx: &mut T, op: &Op) -> Result<Answer> {
    Ok(match op {
        Op::Register {
            record,
            grants,
            claim_for: None,
            parent_lease,
        } => Answer::Registered(register(tx, record, grants, parent_lease.as_ref())?),
        Op::Register {
            record,
            grants,
            claim_for: Some(c),
            parent_lease,
        } => {
            let registered = register(tx, record, grants, parent_lease.as_ref())?;
            // Only what this write created, and only when the worklist would
            // hand it out now (a child born cancelled is not a run candidate).
            let claim = if registered.created {
                claim_started(tx, &record.id, &c.owner, c.ttl_ms)?
            } else {
                None
            };
            Answer::RegisteredClaimed(Box::new((registered, claim)))
        }
        Op::Append { id, request } => Answer::Appended(append(tx, id, request, Authority::Caller)?),
        Op::Cancel { id, reason } => Answer::Cancel(cancel(tx, id, reason.as_deref())?),
        Op::Grant { grant } => {
            existing(tx, &grant.process_id)?;
            tx.upsert_grant(grant)?;
            Answer::Grant(grant.clone())
        }
        Op::Claim { id, owner, ttl_ms } => Answer::Lease(claim(tx, id, owner, *ttl_ms)?),
        Op::ClaimBatch { owner, ttl_ms, limit } => Answer::Claims(claim_batch(tx, owner, *ttl_ms, *limit)?),
        Op::RecordStarted { lease } => Answer::Record(record_started(tx, lease)?),
        Op::Renew { lease, ttl_ms } => Answer::Lease(renew(tx, lease, *ttl_ms)?),
        Op::Release { lease } => Answer::Bool(release(tx, lease)?),
        Op::Complete { lease, outcome } => {
            let request = fold::terminal_request(outcome).with_lease(lease.clone());
            Answer::Record(append_record(tx, &lease.process_id, &request)?)
        }
        Op::RequestAbandon {
            id,
            requested_by,
            reason,
        } => Answer::Record(request_abandon(tx, id, requested_by, reason)?),
        Op::ReconcileAbandon { id } => Answer::MaybeRecord(reconcile_abandon(tx, id)?),
        Op::Sweep { id, node, incarnation } => Answer::MaybeRecord(sweep(tx, id, node, *incarnation)?),
        Op::CompleteExternal { id, request } => {
            let record = &existing(tx, id)?.record;
            if record.disposition != Disposition::ExternallyOwned {
                return Err(CairnError::NotExternallyOwned(id.clone()));
            }
            // The same completion again (a retry after a lost reply) answers
            // the record it ended with and writes nothing.
            if fold::completes_as(record, request) {
                return Ok(Answer::Complete(CompleteAnswer {
                    process: record.clone(),
                    completed_now: false,
                }));
            }
            // Another outcome: say which one stands, so a caller that lost
            // a race (or its own earlier reply) learns it without a read.
            if let Some(stored) = record.outcome.as_ref().filter(|_| record.is_terminal()) {
                // Its start: a value or a message may be a mebibyte.
                let short = |text: String| match text.char_indices().nth(80) {
                    Some((at, _)) => format!("{}…", &text[..at]),
                    None => text,
                };
                let detail = match stored {
                    Outcome::Success { value } => format!(" with {}", short(value.to_string())),
                    Outcome::Failure { class, code, .. } => format!(" ({class}/{code})"),
                    Outcome::Cancelled { message, .. } => format!(" ({})", short(message.clone())),
                    Outcome::Abandoned { .. } => String::new(),
                };
                return Err(CairnError::ProcessTerminal(format!(
                    "process `{id}` already ended {}{detail}; a completion with another outcome is refused",
                    record.status.label()
                )));
            }
            Answer::Complete(CompleteAnswer {
                process: append_record(tx, id, request)?,
                completed_now: true,
            })
        }
        Op::Wait {
            lease,
            wait: w,
            seen_sequence,
        } => Answer::Bool(wait(tx, lease, w, *seen_sequence)?),
        Op::Resume { lease, payload } => {
            // Keyed by the claim and what it resumes: a retry of a
            // resumption whose answer was lost is answered by the one
            // written, not written twice (another resumption under the same
            // claim resumes another wait, and says so).
            // Fenced first: a stale lease is refused even where its key
            // would find the resumption written.
            let now = tx.now();
            let stored = existing(tx, &lease.process_id)?.lease.clone();
            fold::check_lease(&lease.process_id, stored.as_ref(), lease, now)?;
            let request = AppendRequest::new(events::RESUMED, payload.clone())
                .with_lease(lease.clone())
                .with_replay_key(resume_replay_key(lease, payload));
            Answer::Record(append_record(tx, &lease.process_id, &request)?)
        }
    })
}

/// The replay keys of resumptions (`resume:{fencing}:{digest}`).
pub const RESUME_KEY_PREFIX: &str = "resume:";

/// A resumption's replay key: its claim (fencing token) and what it
/// resumes (the payload's digest).
fn resume_replay_key(lease: &Lease, payload: &serde_json::Value) -> String {
    let digest = crate::validate::sha256_hex(payload.to_string().as_bytes());
    format!("{RESUME_KEY_PREFIX}{}:{}", lease.fencing_token, &digest[..16])
}

/// The error for an id with no row: `no_longer_retained` when it was pruned.
pub fn missing<T: WriteTx + ?Sized>(tx: &mut T, id: &str) -> CairnError {
    match tx.tombstone(id) {
        Ok(Some(t)) => CairnError::NoLongerRetained(Box::new(t)),
        Ok(None) => CairnError::UnknownProcess(id.to_string()),
        Err(e) => e,
    }
}

/// The row of `id`, or the error [`missing`] names.
fn existing<'t, T: WriteTx + ?Sized>(tx: &'t mut T, id: &str) -> Result<&'t Row> {
    if tx.row(id)?.is_none() {
        return Err(missing(tx, id));
    }
    tx.row(id)?.ok_or_else(|| CairnError::UnknownProcess(id.to_string()))
}

/// The record of `id` as it stands now in the transaction.
fn current<T: WriteTx + ?Sized>(tx: &mut T, id: &str) -> Result<ProcessRecord> {
    Ok(existing(tx, id)?.record.clone())
}

/// What a start whose `caused_by` names a process that does not exist is
/// answered (400 `invalid_request`).
pub fn missing_parent(parent: &str) -> CairnError {
    CairnError::InvalidRequest(format!(
        "`caused_by` names process `{parent}`, which does not exist: a child names an existing parent"
    ))
}

fn register<T: WriteTx + ?Sized>(
    tx: &mut T,
    record: &ProcessRecord,
    grants: &[Grant],
    parent_lease: Option<&Lease>,
) -> Result<Registered> {
    // A parent must exist (or have existed: a pruned one left its tombstone).
    // Under a parent whose cancellation was requested the child is born
    // cancelled, so no child escapes a tree cancel that committed before it.
    // Checked first, so that a surface which answers a parent its caller may
    // not address as missing (see [`missing_parent`]) answers exactly what a
    // missing parent gets, whatever else is wrong with the start.
    let mut cancelled_parent = None;
    let mut sessions_parent = false;
    if let Some(parent) = record.provenance.caused_by.as_ref().and_then(CausalRef::parent_process) {
        // A run that lost its parent's lease starts nothing more: its
        // writes are fenced (SPEC §5), its children's too.
        if let Some(lease) = parent_lease {
            let now = tx.now();
            let stored = tx.row(parent)?.and_then(|row| row.lease.clone());
            fold::check_lease(parent, stored.as_ref(), lease, now)?;
        }
        let found = tx.row(parent)?.map(|row| {
            sessions_parent = matches!(row.record.provenance.originator, Originator::Session { .. });
            row.record.cancel_request.as_ref().map(|c| c.reason.clone())
        });
        match found {
            Some(request) => cancelled_parent = request,
            None if tx.tombstone(parent)?.is_some() => {}
            None => return Err(missing_parent(parent)),
        }
    }
    if let Some(t) = tx.tombstone(&record.id)? {
        return Err(CairnError::NoLongerRetained(Box::new(t)));
    }
    if let Some(existing) = tx.row(&record.id)? {
        if existing.record.registration_hash == record.registration_hash {
            return Ok(Registered {
                process: existing.record.clone(),
                created: false,
            });
        }
        return Err(CairnError::RegistrationConflict {
            id: record.id.clone(),
            differs: fold::registration_differences(&existing.record, record),
        });
    }
    if let Some(env) = &record.env_ref {
        if !tx.env_stored(env)? {
            return Err(CairnError::UnknownEnv(env.clone()));
        }
    }
    // A child a session's run starts is granted to the scopes that hold its
    // parent now, read in this transaction (a transfer or revoke of the
    // parent is before it or after it, never between the read and the
    // write): when none does (its session was deleted), to none, an orphan
    // as its parent is, not back to the session its grants were taken from.
    // Its wake target, likewise, may only be in a session that holds the
    // parent now (none, when none does): a session the parent was
    // transferred away from is not woken by what its new holder appends.
    let inherited: Option<Vec<Grant>> = match (parent_lease, grants.first()) {
        (Some(lease), Some(asked))
            if sessions_parent && matches!(record.provenance.originator, Originator::Session { .. }) =>
        {
            let holders = tx.grants_of(&lease.process_id)?;
            if let Some(target) = &record.wake_target {
                check_child_wake_target(&holders, &target.session_id)?;
            }
            Some(
                holders
                    .into_iter()
                    .map(|h| Grant {
                        scope: h.scope,
                        process_id: record.id.clone(),
                        descriptor: asked.descriptor.clone(),
                        granted_at_ms: asked.granted_at_ms,
                    })
                    .collect(),
            )
        }
        _ => None,
    };
    tx.insert_row(record.clone())?;
    let grants = inherited.as_deref().unwrap_or(grants);
    for g in grants {
        tx.upsert_grant(g)?;
    }
    let process = match cancelled_parent {
        Some(reason) => cancel_one(tx, &record.id, reason.as_deref())?.0,
        None => record.clone(),
    };
    Ok(Registered { process, created: true })
}

/// Refuse (`invalid_request`, as a session's own start naming another
/// session is) a child's wake target in `named` when no scope of that session
/// is among `holders`, the grants on its parent as the child is written.
fn check_child_wake_target(holders: &[Grant], named: &str) -> Result<()> {
    let mut sessions: Vec<&str> = holders.iter().map(|g| g.scope.session_id.as_str()).collect();
    sessions.sort_unstable();
    sessions.dedup();
    if sessions.contains(&named) {
        return Ok(());
    }
    let quoted = sessions.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
    Err(CairnError::InvalidRequest(match sessions.len() {
        0 => format!("a start for a process no session holds may not set a wake target in a session, not `{named}`"),
        1 => format!("a start for session {quoted} may only set a wake target in that session, not `{named}`"),
        _ => format!("a start for sessions {quoted} may only set a wake target in those sessions, not `{named}`"),
    }))
}

/// The append pipeline: replay key, preparation by [`fold::prepare_append`],
/// the event, the record (releasing the lease on a terminal) and the wake
/// (unless one with its id is stored).
pub fn append<T: WriteTx + ?Sized>(
    tx: &mut T,
    id: &str,
    request: &AppendRequest,
    authority: Authority,
) -> Result<AppendResult> {
    let now = tx.now();
    existing(tx, id)?;
    fold::validate_replay_key(request)?;
    // A key of a form only others' appends take is refused as such, whether
    // or not it was taken yet (a conflict would read as "retry the same").
    fold::check_own_replay_key(&existing(tx, id)?.record, request)?;
    if let Some(key) = &request.replay_key {
        if let Some(original) = tx.replayed(id, key)? {
            fold::check_replay(&original, request)?;
            return Ok(AppendResult {
                event: original,
                replayed: true,
                wake: None,
            });
        }
    }
    let row = existing(tx, id)?;
    let prepared = fold::prepare_append(&row.record, row.lease.as_ref(), request, authority, now)?;
    let terminal = prepared.event.semantics.terminal.is_some();
    let parent = terminal
        .then(|| {
            prepared
                .record
                .provenance
                .caused_by
                .as_ref()
                .and_then(CausalRef::parent_process)
        })
        .flatten()
        .map(str::to_string);
    tx.push_event(&prepared.event)?;
    tx.update_record(prepared.record, terminal)?;
    let wake = match prepared.wake {
        Some(w) if tx.insert_wake(&w)? => Some(w),
        _ => None,
    };
    if let Some(parent) = parent {
        wake_parent(tx, id, &parent)?;
    }
    Ok(AppendResult {
        event: prepared.event,
        replayed: false,
        wake,
    })
}

/// A child ended: when its parent is suspended on a `children` wait that this
/// end satisfies, end the wait in the same transaction (`process.resumed`,
/// reason `children`), which makes the parent claimable (SPEC §13). The
/// parent's row serializes its children's ends, so exactly one of them sees
/// the wait satisfied.
fn wake_parent<T: WriteTx + ?Sized>(tx: &mut T, child: &str, parent: &str) -> Result<()> {
    let Some(row) = tx.row(parent)? else {
        return Ok(());
    };
    let Some(wait) = fold::children_wait_for(&row.record, child).cloned() else {
        return Ok(());
    };
    // Past its deadline the wait timed out first: its claim says so (an end
    // at the deadline itself is in time, as the run takes it).
    if wait.until_ms.is_some_and(|until| until < tx.now()) {
        return Ok(());
    }
    // An `any` wait that names `child` is satisfied by this end alone: its
    // other children are not read (a script racing a thousand children
    // would read them all at each end).
    let satisfied = if wait.mode == Some(ChildrenMode::Any) {
        true
    } else {
        let mut ended = std::collections::HashSet::new();
        for id in wait.ids.as_deref().unwrap_or_default() {
            if has_ended(tx, id)? {
                ended.insert(id.clone());
            }
        }
        fold::children_satisfied(&wait, |i| ended.contains(i))
    };
    if satisfied {
        append(tx, parent, &fold::resumed_for(&wait, "children"), Authority::Cairn)?;
    }
    Ok(())
}

/// Whether `id` has ended: its record is terminal, or a prune left its tombstone.
fn has_ended<T: WriteTx + ?Sized>(tx: &mut T, id: &str) -> Result<bool> {
    match tx.row(id)? {
        Some(row) => Ok(row.record.is_terminal()),
        None => Ok(tx.tombstone(id)?.is_some()),
    }
}

/// The refusal of a wait by `parent` for `id`, a process that is not its
/// child (`invalid_request`). Only a host's process is answered so: a
/// session's is answered as for an id nothing holds (`unknown_process`).
pub(crate) fn not_a_child(id: &str, parent: &str) -> CairnError {
    CairnError::InvalidRequest(format!(
        "`{id}` is not a child of `{parent}`: only a process's own children can be awaited"
    ))
}

/// The children of `parent` a wait names that have ended; an id that is not
/// a child of `parent` is refused (only a child's end can wake it). A
/// session's process (`session`) is refused an id that is no child exactly
/// as one nothing holds (`unknown_process`): it cannot tell another
/// session's process from none.
fn ended_children<T: WriteTx + ?Sized>(
    tx: &mut T,
    parent: &str,
    session: bool,
    ids: &[String],
) -> Result<std::collections::HashSet<String>> {
    let mut ended = std::collections::HashSet::new();
    for id in ids {
        let found = tx.row(id)?.map(|row| {
            let caused_by = row.record.provenance.caused_by.as_ref();
            let child = caused_by.and_then(CausalRef::parent_process) == Some(parent);
            (child, row.record.is_terminal())
        });
        match found {
            Some((false, _)) if session => return Err(CairnError::UnknownProcess(id.clone())),
            Some((false, _)) => return Err(not_a_child(id, parent)),
            Some((true, terminal)) => {
                if terminal {
                    ended.insert(id.clone());
                }
            }
            None if tx.tombstone(id)?.is_some() => {
                ended.insert(id.clone());
            }
            None => return Err(CairnError::UnknownProcess(id.clone())),
        }
    }
    Ok(ended)
}

/// An append by cairn itself, answering the record after it.
fn append_record<T: WriteTx + ?Sized>(tx: &mut T, id: &str, request: &AppendRequest) -> Result<ProcessRecord> {
    append(tx, id, request, Authority::Cairn)?;
    current(tx, id)
}

/// A cancellation request for `id` and, in the same write, for each of its
/// descendants that has not ended (SPEC §13): children (`caused_by` it),
/// theirs, and so on. Provenance is the producer's word, so it may loop: each
/// process is visited once.
fn cancel<T: WriteTx + ?Sized>(tx: &mut T, id: &str, reason: Option<&str>) -> Result<CancelAnswer> {
    // Idempotent per reason: the same request repeated after the process
    // ended (a retry whose first answer was lost) answers the record as it
    // stands and writes nothing.
    let record = &existing(tx, id)?.record;
    if record.is_terminal() {
        let record = record.clone();
        if tx.replayed(id, &fold::cancel_replay_key(reason))?.is_some() {
            return Ok(CancelAnswer {
                process: record,
                cancelled_now: false,
                appended: 0,
                descendants: Vec::new(),
            });
        }
        // An ended parent's children may still run (a script's children it
        // did not wait for): the request reaches them, as it would through
        // the parent's own parent. With nothing left to reach, the answer
        // is the parent's end, unless this request reached them before (a
        // retry: its descendants carry its reason).
        let (descendants, asked_before) = cancel_descendants(tx, id, reason)?;
        if descendants.is_empty() && !asked_before {
            return Err(CairnError::ended(&record));
        }
        return Ok(CancelAnswer {
            process: record,
            cancelled_now: false,
            appended: 0,
            descendants,
        });
    }
    let before = record.last_sequence;
    let (_, cancelled_now) = cancel_one(tx, id, reason)?;
    let (descendants, _) = cancel_descendants(tx, id, reason)?;
    let process = current(tx, id)?;
    Ok(CancelAnswer {
        appended: process.last_sequence.saturating_sub(before),
        process,
        cancelled_now,
        descendants,
    })
}

/// Request the cancellation of each descendant of `id` that has not ended
/// and has no request yet, in the same write; answers their records as they
/// stand at the end of it, and whether a descendant already carried a
/// request for `reason`.
fn cancel_descendants<T: WriteTx + ?Sized>(
    tx: &mut T,
    id: &str,
    reason: Option<&str>,
) -> Result<(Vec<ProcessRecord>, bool)> {
    let mut seen = std::collections::HashSet::from([id.to_string()]);
    let mut parents = vec![id.to_string()];
    let mut descendants = Vec::new();
    let mut asked_before = false;
    while let Some(parent) = parents.pop() {
        for child in tx.tree_children(&parent)? {
            if !seen.insert(child.clone()) {
                continue;
            }
            let record = &existing(tx, &child)?.record;
            match &record.cancel_request {
                None if !record.is_terminal() => {
                    cancel_one(tx, &child, reason)?;
                    descendants.push(child.clone());
                }
                Some(c) => asked_before |= c.reason.as_deref() == reason,
                None => {}
            }
            parents.push(child);
        }
    }
    // A descendant that ended at once may have woken its parent: answer the
    // records as they stand at the end of the write.
    let mut records = Vec::with_capacity(descendants.len());
    for d in &descendants {
        records.push(current(tx, d)?);
    }
    Ok((records, asked_before))
}

/// The cancellation request of one process: `process.cancel_requested`, then
/// the end `cancelled` when nobody has started it (answers the record and
/// whether it ended now).
fn cancel_one<T: WriteTx + ?Sized>(tx: &mut T, id: &str, reason: Option<&str>) -> Result<(ProcessRecord, bool)> {
    let now = tx.now();
    let row = existing(tx, id)?;
    if row.record.is_terminal() {
        return Err(CairnError::ended(&row.record));
    }
    let request = AppendRequest::new(events::CANCEL_REQUESTED, json!({ "reason": reason }))
        .with_replay_key(fold::cancel_replay_key(reason));
    let record = append_record(tx, id, &request)?;
    if fold::cancels_at_once(&record, now) {
        let unsaid = if record.started.is_some() {
            "cancelled while it was not running"
        } else {
            "cancelled before it started"
        };
        let outcome = Outcome::cancelled(reason.map_or_else(|| unsaid.into(), String::from));
        return Ok((append_record(tx, id, &fold::terminal_request(&outcome))?, true));
    }
    Ok((record, false))
}

/// A lease expiry every backend stores exactly: `now + ttl`, saturated at
/// `i64::MAX` (SQL integers are signed; 292 million years in ms).
pub fn expiry(now_ms: u64, ttl_ms: u64) -> u64 {
    now_ms.saturating_add(ttl_ms).min(i64::MAX as u64)
}

fn claim<T: WriteTx + ?Sized>(tx: &mut T, id: &str, owner: &str, ttl_ms: u64) -> Result<Lease> {
    let now = tx.now();
    let row = existing(tx, id)?;
    if let Some(err) = fold::claim_refusal(&row.record, owner, now) {
        return Err(err);
    }
    let fencing = row.fencing + 1;
    let lease = Lease {
        process_id: id.to_string(),
        owner_id: owner.to_string(),
        lease_token: uuid::Uuid::new_v4().to_string(),
        fencing_token: fencing,
        claimed_at_ms: now,
        expires_at_ms: expiry(now, ttl_ms),
    };
    tx.set_lease(id, Some(lease.clone()), fencing)?;
    Ok(lease)
}

fn claim_batch<T: WriteTx + ?Sized>(tx: &mut T, owner: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut claims = Vec::new();
    for id in tx.run_candidates(limit)? {
        if let Some(c) = claim_started(tx, &id, owner, ttl_ms)? {
            claims.push(c);
        }
    }
    Ok(claims)
}

/// Claim `id` for `owner` and record `process.started`, when it is a run
/// candidate with a free lease that `owner` may claim now; `None` otherwise.
fn claim_started<T: WriteTx + ?Sized>(tx: &mut T, id: &str, owner: &str, ttl_ms: u64) -> Result<Option<Claim>> {
    let now = tx.now();
    let Some(row) = tx.row(id)? else { return Ok(None) };
    let free = row.lease.as_ref().is_none_or(|l| l.expires_at_ms <= now);
    if !free || !fold::is_run_candidate(&row.record) || fold::claim_refusal(&row.record, owner, now).is_some() {
        // (claim_refusal also refuses a suspension that is not due yet.)
        return Ok(None);
    }
    let lease = claim(tx, id, owner, ttl_ms)?;
    let process = record_started(tx, &lease)?;
    Ok(Some(Claim { lease, process }))
}

/// `process.started`, then, when the claim resumes a suspended run,
/// `process.resumed` with the reason (SPEC §13).
fn record_started<T: WriteTx + ?Sized>(tx: &mut T, lease: &Lease) -> Result<ProcessRecord> {
    let now = tx.now();
    let request = fold::started_request(&existing(tx, &lease.process_id)?.record, lease);
    let record = append_record(tx, &lease.process_id, &request)?;
    match fold::resumed_request(&record, now) {
        Some(resumed) => append_record(tx, &lease.process_id, &resumed.with_lease(lease.clone())),
        None => Ok(record),
    }
}

/// Record a wait. A `rerunnable` run suspends: `process.waiting` and the
/// release of its lease, in one fenced write. An `owner_bound` run records the
/// wait and keeps its lease. Answers `false` (writing nothing) when the log moved
/// past `seen_sequence`, a cancellation is pending or the deadline has passed:
/// the run reads the log again and decides anew, so a signal that landed after
/// its read is never slept through.
fn wait<T: WriteTx + ?Sized>(tx: &mut T, lease: &Lease, wait: &WaitRequest, seen_sequence: u64) -> Result<bool> {
    let now = tx.now();
    let id = &lease.process_id;
    let row = existing(tx, id)?;
    if row.record.is_terminal() {
        return Err(CairnError::ended(&row.record));
    }
    fold::check_lease(id, row.lease.as_ref(), lease, now)?;
    let record = &row.record;
    if record.disposition == Disposition::ExternallyOwned {
        return Err(CairnError::NotClaimable {
            process_id: id.clone(),
            reason: "externally owned processes are never run".into(),
        });
    }
    if record.last_sequence != seen_sequence
        || record.cancel_request.is_some()
        || wait.until_ms.is_some_and(|t| t <= now)
    {
        return Ok(false);
    }
    let suspend = record.disposition == Disposition::Rerunnable;
    if wait.kind == "children" {
        let session = matches!(record.provenance.originator, Originator::Session { .. });
        let ids = wait.ids.as_deref().unwrap_or_default();
        let ended = ended_children(tx, id, session, ids)?;
        let state = WaitState {
            kind: wait.kind.clone(),
            name: None,
            ordinal: wait.ordinal,
            until_ms: wait.until_ms,
            ids: wait.ids.clone(),
            mode: wait.mode,
            signals: wait.signals.clone(),
            due_timer: wait.due_timer,
            woken: None,
            since_ms: now,
        };
        if fold::children_satisfied(&state, |i| ended.contains(i)) {
            // Nothing to wait for: the run reads its children and goes on.
            return Ok(false);
        }
    }
    let payload = serde_json::to_value(wait).map_err(|e| CairnError::storage(format!("wait payload: {e}")))?;
    let request = AppendRequest::new(events::WAITING, payload).with_lease(lease.clone());
    append(tx, id, &request, Authority::Cairn)?;
    if suspend {
        let fencing = existing(tx, id)?.fencing;
        tx.set_lease(id, None, fencing)?;
    }
    Ok(true)
}

fn renew<T: WriteTx + ?Sized>(tx: &mut T, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
    let now = tx.now();
    let id = &lease.process_id;
    let row = existing(tx, id)?;
    fold::check_lease(id, row.lease.as_ref(), lease, now)?;
    let fencing = row.fencing;
    let mut renewed = lease.clone();
    renewed.expires_at_ms = expiry(now, ttl_ms);
    tx.set_lease(id, Some(renewed.clone()), fencing)?;
    Ok(renewed)
}

fn release<T: WriteTx + ?Sized>(tx: &mut T, lease: &Lease) -> Result<bool> {
    let id = &lease.process_id;
    let row = existing(tx, id)?;
    let matches = row.lease.as_ref().is_some_and(|l| {
        l.owner_id == lease.owner_id && l.lease_token == lease.lease_token && l.fencing_token == lease.fencing_token
    });
    if matches {
        let fencing = row.fencing;
        tx.set_lease(id, None, fencing)?;
    }
    Ok(matches)
}

fn request_abandon<T: WriteTx + ?Sized>(
    tx: &mut T,
    id: &str,
    requested_by: &str,
    reason: &str,
) -> Result<ProcessRecord> {
    let record = &existing(tx, id)?.record;
    // The first request wins and a repeat changes nothing, also once the
    // request took effect: a retry whose first answer was lost reads it.
    if record.abandon_request.is_some() {
        return Ok(record.clone());
    }
    if record.is_terminal() {
        return Err(CairnError::ended(record));
    }
    let request = AppendRequest::new(
        events::ABANDON_REQUESTED,
        json!({"requested_by": requested_by, "reason": reason}),
    );
    append_record(tx, id, &request)
}

fn reconcile_abandon<T: WriteTx + ?Sized>(tx: &mut T, id: &str) -> Result<Option<ProcessRecord>> {
    let now = tx.now();
    let row = existing(tx, id)?;
    if !fold::abandon_reconcilable(&row.record, row.lease.as_ref(), now) {
        return Ok(None);
    }
    let outcome = fold::reconciled_abandon_outcome(&row.record, now);
    Ok(Some(append_record(tx, id, &fold::terminal_request(&outcome))?))
}

/// The sweep: `abandoned {sweep}` for a process an earlier incarnation of
/// `node` started, now that `node` registered `incarnation` (see
/// [`fold::sweep_outcome`]). `None`, writing nothing, when it is not such a
/// process (any more).
fn sweep<T: WriteTx + ?Sized>(tx: &mut T, id: &str, node: &str, incarnation: u64) -> Result<Option<ProcessRecord>> {
    let now = tx.now();
    let row = existing(tx, id)?;
    let Some(outcome) = fold::sweep_outcome(&row.record, row.lease.as_ref(), node, incarnation, now) else {
        return Ok(None);
    };
    Ok(Some(append_record(tx, id, &fold::terminal_request(&outcome))?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{MemoryRegistry, ProcessRegistry, Processes, StartRequest};

    /// A cancel reason of only blanks is no reason, on every surface that
    /// sends it: the same request as one without a reason (one event, a
    /// `null` reason), as a blank abandon reason is none.
    #[tokio::test]
    async fn a_blank_cancel_reason_is_no_reason() {
        let registry = Arc::new(MemoryRegistry::new());
        let p = Processes::builder(registry.clone()).without_worker().start();
        for (id, blank) in [("space", " "), ("blanks", " \t\n ")] {
            p.start(StartRequest::external(id, serde_json::json!({})))
                .await
                .expect("start");
            let first = registry.request_cancel(id, Some(blank.into())).await.expect("cancel");
            assert_eq!(first.appended, 1, "{blank:?}");
            let request = first.process.cancel_request.clone().expect("a cancel request");
            assert_eq!(request.reason, None, "{blank:?} is recorded as no reason");
            // Without a reason, and with the same blank again: the same
            // request, which records nothing more.
            for again in [None, Some(blank.to_string()), Some(String::new())] {
                let repeat = registry.request_cancel(id, again.clone()).await.expect("cancel again");
                assert_eq!(repeat.appended, 0, "{again:?} after {blank:?}");
                assert_eq!(repeat.process.last_sequence, first.process.last_sequence);
            }
            let events = p.events(id, 0, None).await.expect("events");
            assert_eq!(events.events.len(), 1, "{blank:?}");
            assert_eq!(events.events[0].payload, serde_json::json!({"reason": null}));
        }
        // A reason with words is kept as given.
        p.start(StartRequest::external("worded", serde_json::json!({})))
            .await
            .expect("start");
        let r = registry
            .request_cancel("worded", Some(" stop ".into()))
            .await
            .expect("cancel");
        assert_eq!(
            r.process.cancel_request.and_then(|c| c.reason).as_deref(),
            Some(" stop ")
        );
    }
}
