//! The process model (SPEC §1–4, 7, 8) and its JSON wire shapes (SPEC §12).
//!
//! Every type here is also an HTTP API type: enum tags are `snake_case`,
//! optional fields are omitted when absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{EventType, EventTypes};

/// A process id: chosen by the caller, the idempotency key of its start.
pub type ProcessId = String;

/// One agent conversation, optionally narrowed to an agent frame inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionScope {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_frame_id: Option<String>,
}

impl SessionScope {
    /// The session scope of a whole session.
    pub fn session(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            agent_frame_id: None,
        }
    }

    /// The scope of one agent frame inside a session.
    pub fn frame(session_id: impl Into<String>, frame: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            agent_frame_id: Some(frame.into()),
        }
    }

    /// `session:{session_id}` or `session:{session_id}/frame:{frame}`.
    pub fn scope_id(&self) -> String {
        match &self.agent_frame_id {
            Some(frame) => format!("session:{}/frame:{}", self.session_id, frame),
            None => format!("session:{}", self.session_id),
        }
    }
}

/// Who started a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Originator {
    /// The host itself, optionally a named host scope.
    Host {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// A session scope.
    Session { scope: SessionScope },
}

impl Default for Originator {
    fn default() -> Self {
        Self::host()
    }
}

impl Originator {
    /// The host without a named scope.
    pub fn host() -> Self {
        Self::Host { scope: None }
    }

    /// A session scope.
    pub fn session(scope: SessionScope) -> Self {
        Self::Session { scope }
    }

    /// `host`, `host:{scope}` or the session scope id.
    pub fn scope_id(&self) -> String {
        match self {
            Self::Host { scope: None } => "host".to_string(),
            Self::Host { scope: Some(s) } => format!("host:{s}"),
            Self::Session { scope } => scope.scope_id(),
        }
    }
}

/// A reference to what caused a process (a parent process, a turn, a tool call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CausalRef {
    pub kind: String,
    pub id: String,
}

/// Where a process came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default)]
    pub originator: Originator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<CausalRef>,
}

/// What a process runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessInput {
    /// A tool from the host's tool registry, run in the background.
    ToolCall {
        tool: String,
        #[serde(default)]
        args: Value,
    },
    /// A durable scripted workflow (a later milestone: recorded, not yet run).
    Script {
        module_ref: String,
        process_name: String,
        #[serde(default)]
        args: Value,
    },
    /// A sub-agent turn (a later milestone: recorded, not yet run).
    SessionTurn {
        session: SessionScope,
        #[serde(default)]
        input: Value,
        #[serde(default)]
        output_contract: Value,
    },
    /// Work executed by another system; cairn never runs it.
    External {
        #[serde(default)]
        metadata: Value,
    },
}

impl ProcessInput {
    /// The definition name filters match: `tool:{tool}`, `script:{module_ref}#{process_name}`,
    /// `session_turn` or `external`.
    pub fn definition(&self) -> String {
        match self {
            Self::ToolCall { tool, .. } => format!("tool:{tool}"),
            Self::Script {
                module_ref,
                process_name,
                ..
            } => format!("script:{module_ref}#{process_name}"),
            Self::SessionTurn { .. } => "session_turn".to_string(),
            Self::External { .. } => "external".to_string(),
        }
    }
}

/// How a process is recovered after its owner is lost (SPEC §2). Required, no default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Any worker may run it again after owner loss.
    Rerunnable,
    /// Claimable until started; once started, no other owner ever runs it.
    OwnerBound,
    /// Never claimed or run by cairn.
    ExternallyOwned,
}

impl Disposition {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rerunnable => "rerunnable",
            Self::OwnerBound => "owner_bound",
            Self::ExternallyOwned => "externally_owned",
        }
    }
}

/// Lifecycle status. Everything but `running` is terminal and written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
    Abandoned,
}

impl ProcessStatus {
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "abandoned" => Self::Abandoned,
            _ => return None,
        })
    }
}

/// The terminal states an event's terminal semantics may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TerminalState {
    Completed,
    Failed,
    Cancelled,
    Abandoned,
}

impl TerminalState {
    pub fn status(self) -> ProcessStatus {
        match self {
            Self::Completed => ProcessStatus::Completed,
            Self::Failed => ProcessStatus::Failed,
            Self::Cancelled => ProcessStatus::Cancelled,
            Self::Abandoned => ProcessStatus::Abandoned,
        }
    }
}

/// Which path wrote an `abandoned` terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AbandonWriter {
    /// The owner gave up its own owner-bound work at graceful shutdown.
    OwnerDrain,
    /// Recovery saw the owner provably gone.
    Sweep,
    /// An abandon request, reconciled after the lease lapsed.
    ReconciledRequest,
}

/// The owner identity an abandonment was established against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OwnerIdentity {
    pub owner_id: String,
    pub fencing_token: u64,
}

/// Evidence carried by an `abandoned` outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AbandonEvidence {
    pub writer: AbandonWriter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerIdentity>,
    pub epoch_ms: u64,
}

/// What an awaiter receives when a process ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Success {
        value: Value,
    },
    Failure {
        class: String,
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    Cancelled {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    Abandoned {
        evidence: AbandonEvidence,
    },
}

impl Outcome {
    /// The terminal state this outcome ends a process in.
    pub fn state(&self) -> TerminalState {
        match self {
            Self::Success { .. } => TerminalState::Completed,
            Self::Failure { .. } => TerminalState::Failed,
            Self::Cancelled { .. } => TerminalState::Cancelled,
            Self::Abandoned { .. } => TerminalState::Abandoned,
        }
    }

    pub fn success(value: Value) -> Self {
        Self::Success { value }
    }

    pub fn failure(class: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Failure {
            class: class.into(),
            code: code.into(),
            message: message.into(),
            raw: None,
        }
    }

    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::Cancelled {
            message: message.into(),
            raw: None,
        }
    }
}

/// A durable wait, visible on the record while a process waits for a signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaitState {
    /// `signal` for signal waits; producers may record other kinds.
    pub kind: String,
    /// The signal name waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which signal of that name (1-based) the process waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u64>,
    pub since_ms: u64,
}

/// The lease view on a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseView {
    pub owner_id: String,
    pub expires_at_ms: u64,
    pub fencing_token: u64,
}

/// A durable request to abandon a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AbandonRequest {
    pub requested_by: String,
    pub requested_at_ms: u64,
    #[serde(default)]
    pub reason: String,
}

/// A recorded cancellation request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requested_at_ms: u64,
}

/// The first-started fact and attempt count: who ran the process last, and how often it began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartedFact {
    pub owner_id: String,
    pub fencing_token: u64,
    /// 1 for the first run, rising by one each time a worker begins the process again.
    pub attempt: u64,
    pub at_ms: u64,
}

/// A reference to the same work in another system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExternalRef {
    pub backend: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Content address of an execution environment spec: `process-env:sha256:{hex}`.
pub type EnvRef = String;

/// An execution environment spec (plugin options + policy), stored content-addressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    #[serde(default)]
    pub plugin_options: Value,
    #[serde(default)]
    pub policy: Value,
}

/// The immutable part of a process: what its start declared.
///
/// Its [`registration_hash`](crate::validate::registration_hash) decides whether a
/// repeated start is the same start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub id: ProcessId,
    pub input: ProcessInput,
    pub disposition: Disposition,
    /// Producer-declared event types; the core types are added by cairn.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    #[serde(default)]
    pub provenance: Provenance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_target: Option<SessionScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<EnvRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

/// A handle descriptor carried by a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GrantDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A grant requested at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartGrant {
    pub session_scope: SessionScope,
    #[serde(default)]
    pub descriptor: GrantDescriptor,
}

/// A session scope's handle on a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    pub scope: SessionScope,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub process_id: ProcessId,
    pub descriptor: GrantDescriptor,
    pub granted_at_ms: u64,
}

impl Grant {
    /// The same handle held by another scope, granted at `now_ms` (what `transfer` writes).
    pub fn moved_to(self, scope: &SessionScope, now_ms: u64) -> Self {
        Self {
            scope: scope.clone(),
            granted_at_ms: now_ms,
            ..self
        }
    }
}

/// A grant with the process it addresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantedProcess {
    pub grant: Grant,
    pub process: ProcessRecord,
}

/// The answer of `transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferReport {
    /// Ids whose grant moved from the source scope to the target scope.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub moved: Vec<ProcessId>,
    /// Ids the source scope held no grant for (nothing changed for them).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub not_granted: Vec<ProcessId>,
}

/// The answer of `delete_session`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionDeleteReport {
    pub session_id: String,
    /// Grants removed (in every scope of the session).
    pub revoked_grants: u64,
    /// Pending wakes removed.
    pub deleted_wakes: u64,
    /// Running processes whose last grant this removed. They keep running.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub orphaned: Vec<ProcessId>,
    /// Processes whose grants this removed that are terminal or still granted elsewhere.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub preserved: Vec<ProcessId>,
}

/// A durable wake delivery for a session (SPEC §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WakeDelivery {
    /// Derived from (target scope id, dedupe key).
    pub wake_id: String,
    pub target_session_id: String,
    pub target_scope: SessionScope,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub process_id: ProcessId,
    pub sequence: u64,
    pub event_type: String,
    pub dedupe_key: String,
    pub input: String,
    pub created_at_ms: u64,
}

/// A small record left behind by prune so a pruned id answers "no longer retained".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tombstone {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: ProcessId,
    pub status: ProcessStatus,
    pub terminal_at_ms: u64,
    pub pruned_at_ms: u64,
}

/// How far a host's projector has read the change feed; prune never deletes a
/// change the projector has not seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Watermark {
    /// No projector reads the change feed: prune by cutoff alone.
    NoProjector,
    /// Only prune processes whose last change is at or before this cursor.
    Cursor { cursor: u64 },
}

/// The answer of `prune`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PruneReport {
    /// Processes deleted (each leaves a tombstone).
    pub pruned: u64,
    pub events_deleted: u64,
    pub grants_deleted: u64,
    pub wakes_deleted: u64,
    /// Terminal processes older than the cutoff kept because the watermark has not passed them.
    pub held_by_watermark: u64,
}

/// One entry of the change feed: a record at the cursor of its latest change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    pub cursor: u64,
    pub process: ProcessRecord,
}

/// A page of the change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// Pass this back to read on; equal to the given cursor when nothing changed.
    pub next_cursor: u64,
}

/// The stored process record. Every field but `lease` is a fold of the event log
/// over the registration (see [`crate::fold`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: ProcessId,
    pub registration_hash: String,
    pub status: ProcessStatus,
    pub outcome: Option<Outcome>,
    pub disposition: Disposition,
    pub input: ProcessInput,
    pub provenance: Provenance,
    pub wake_target: Option<SessionScope>,
    /// Every declared type, the core types included (shared; a clone is cheap).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<EventType>))]
    pub event_types: EventTypes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub env_ref: Option<EnvRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
    pub wait: Option<WaitState>,
    /// Coordination state, not history: the only field outside the fold.
    pub lease: Option<LeaseView>,
    pub abandon_request: Option<AbandonRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_request: Option<CancelRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<StartedFact>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_at_ms: Option<u64>,
    pub last_sequence: u64,
}

impl ProcessRecord {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The registration this record was created from.
    pub fn registration(&self) -> Registration {
        Registration {
            id: self.id.clone(),
            input: self.input.clone(),
            disposition: self.disposition,
            event_types: self
                .event_types
                .iter()
                .filter(|t| !crate::events::is_core_event_type(&t.name))
                .cloned()
                .collect(),
            provenance: self.provenance.clone(),
            wake_target: self.wake_target.clone(),
            env_ref: self.env_ref.clone(),
            external_ref: self.external_ref.clone(),
        }
    }

    /// Whether a live (unexpired at `now_ms`) lease is held.
    pub fn has_live_lease(&self, now_ms: u64) -> bool {
        self.lease.as_ref().is_some_and(|l| l.expires_at_ms > now_ms)
    }
}

/// A lease held on a process (SPEC §5). Present all three tokens on renew and complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub process_id: ProcessId,
    pub owner_id: String,
    /// Unique per claim.
    pub lease_token: String,
    /// Monotonic per process, bumped on every claim.
    pub fencing_token: u64,
    pub claimed_at_ms: u64,
    pub expires_at_ms: u64,
}

impl Lease {
    pub fn view(&self) -> LeaseView {
        LeaseView {
            owner_id: self.owner_id.clone(),
            expires_at_ms: self.expires_at_ms,
            fencing_token: self.fencing_token,
        }
    }

    pub fn owner(&self) -> OwnerIdentity {
        OwnerIdentity {
            owner_id: self.owner_id.clone(),
            fencing_token: self.fencing_token,
        }
    }
}

/// A claim made by `claim_batch`: the lease and the record as of the claim
/// (its `started` fact already written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub lease: Lease,
    pub process: ProcessRecord,
}

/// What the worklist asks a worker to do with a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkAction {
    /// Claim and run it (free or expired lease, claimable by disposition).
    Run,
    /// Its abandon request is pending and its lease has lapsed: reconcile it.
    ReconcileAbandon,
}

/// One row of the bounded claimable worklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub process_id: ProcessId,
    pub action: WorkAction,
}

/// Which statuses a listing returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    #[default]
    Running,
    Completed,
    Failed,
    Cancelled,
    Abandoned,
    /// Every status.
    Any,
}

impl StatusFilter {
    pub fn matches(self, status: ProcessStatus) -> bool {
        match self {
            Self::Any => true,
            Self::Running => status == ProcessStatus::Running,
            Self::Completed => status == ProcessStatus::Completed,
            Self::Failed => status == ProcessStatus::Failed,
            Self::Cancelled => status == ProcessStatus::Cancelled,
            Self::Abandoned => status == ProcessStatus::Abandoned,
        }
    }
}

/// Default page size of listings, event reads and the change feed.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size a caller may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A listing filter (SPEC §4). Unknown keys and wrong value types are errors
/// ([`ProcessFilter::from_json`], [`ProcessFilter::from_query`]).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessFilter {
    #[serde(default)]
    pub status: StatusFilter,
    /// Matches [`ProcessInput::definition`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<bool>,
    /// Matches [`Originator::scope_id`] (`host`, `host:{scope}`, `session:{id}`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    /// Inclusive lower bound on `created_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from_ms: Option<u64>,
    /// Exclusive upper bound on `created_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before_ms: Option<u64>,
    /// Only ids greater than this (pagination; listings are in id order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<String>,
    /// Page size; default [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl ProcessFilter {
    /// Running processes (the default).
    pub fn running() -> Self {
        Self::default()
    }

    /// Every status.
    pub fn any() -> Self {
        Self {
            status: StatusFilter::Any,
            ..Self::default()
        }
    }

    /// Parse a JSON filter object; unknown keys and wrong types are [`CairnError::InvalidFilter`].
    pub fn from_json(value: Value) -> crate::Result<Self> {
        let filter: Self =
            serde_json::from_value(value).map_err(|e| crate::CairnError::InvalidFilter(e.to_string()))?;
        filter.validate()?;
        Ok(filter)
    }

    /// Parse query-string pairs (`status=any&waiting=true&…`), with the same errors.
    pub fn from_query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> crate::Result<Self> {
        let mut map = serde_json::Map::new();
        for (key, raw) in pairs {
            let value = match key {
                "status" | "definition" | "originator" | "after_id" => Value::String(raw.to_string()),
                "waiting" => match raw {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => {
                        return Err(crate::CairnError::InvalidFilter(format!(
                            "`waiting` must be true or false, got `{raw}`"
                        )))
                    }
                },
                "created_from_ms" | "created_before_ms" | "limit" => {
                    let n: u64 = raw.parse().map_err(|_| {
                        crate::CairnError::InvalidFilter(format!("`{key}` must be a non-negative integer, got `{raw}`"))
                    })?;
                    Value::from(n)
                }
                other => {
                    return Err(crate::CairnError::InvalidFilter(format!(
                        "unknown filter key `{other}`"
                    )))
                }
            };
            if map.insert(key.to_string(), value).is_some() {
                return Err(crate::CairnError::InvalidFilter(format!(
                    "filter key `{key}` given twice"
                )));
            }
        }
        Self::from_json(Value::Object(map))
    }

    /// Check the page size.
    pub fn validate(&self) -> crate::Result<()> {
        page_limit(self.limit).map(|_| ())
    }

    /// The effective page size.
    pub fn page_size(&self) -> crate::Result<usize> {
        page_limit(self.limit)
    }

    /// Whether a record passes every predicate but the id cursor and limit.
    pub fn matches(&self, record: &ProcessRecord) -> bool {
        self.status.matches(record.status)
            && self.definition.as_ref().is_none_or(|d| *d == record.input.definition())
            && self.waiting.is_none_or(|w| w == record.wait.is_some())
            && self
                .originator
                .as_ref()
                .is_none_or(|o| *o == record.provenance.originator.scope_id())
            && self.created_from_ms.is_none_or(|t| record.created_at_ms >= t)
            && self.created_before_ms.is_none_or(|t| record.created_at_ms < t)
            && self.after_id.as_ref().is_none_or(|a| record.id.as_str() > a.as_str())
    }
}

/// Resolve a requested page size: default when absent, error when 0 or over the maximum.
pub fn page_limit(limit: Option<usize>) -> crate::Result<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(0) => Err(crate::CairnError::InvalidPage("page size must be at least 1".into())),
        Some(n) if n > MAX_PAGE_SIZE => Err(crate::CairnError::InvalidPage(format!(
            "page size {n} is over the maximum {MAX_PAGE_SIZE}"
        ))),
        Some(n) => Ok(n),
    }
}

/// Free-form JSON metadata map.
pub type Metadata = BTreeMap<String, Value>;
