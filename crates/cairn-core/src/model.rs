//! The process model (SPEC §1–4, 7, 8) and its JSON wire shapes (SPEC §12).
//!
//! Every type here is also an HTTP API type: enum tags are `snake_case`,
//! optional fields are omitted when absent.
//!
//! Why one file past 800 lines: it is the wire contract, kept in one place so
//! a change to any shape clients see shows in one diff; its length is the
//! types' docs and serde attributes, not logic (the rules are `fold`/`ops`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{EventType, EventTypes};

/// A process id: chosen by the caller, the idempotency key of its start.
pub type ProcessId = String;

/// One agent conversation, optionally narrowed to an agent frame inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    deny_unknown_fields,
    expecting = "a session scope: an object with `session_id` and, optionally, `agent_frame_id`"
)]
pub struct SessionScope {
    /// The session (conversation) id.
    pub session_id: String,
    /// The agent frame inside the session, when the scope is narrower than the session.
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
#[serde(
    expecting = "an originator: an object with `type` (`host` or `session`)",
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Originator {
    /// The host itself, optionally a named host scope.
    Host {
        /// The host scope's name, when the host names its parts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// A session scope.
    Session {
        /// The scope that started it.
        scope: SessionScope,
    },
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

/// A reference to what caused a process: its parent process
/// (`{"process_id"}`, SPEC §13), or any other cause as `{"kind", "id"}` (a turn,
/// a tool call; `{"kind": "process", "id"}` names a parent too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    expecting = "a causal reference: an object, optionally with `process_id`, `kind` and `id`",
    deny_unknown_fields
)]
pub struct CausalRef {
    /// The parent process (SPEC §13); alone, without `kind` and `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_id: Option<String>,
    /// What the cause is (`process`, `turn`, `tool_call`, ...), with `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its id in its own kind, with `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Its schema says which fields go together, which the derive cannot.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for CausalRef {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::wire_schema::causal_ref()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for CausalRef {}

impl CausalRef {
    /// A parent process.
    pub fn process(id: impl Into<String>) -> Self {
        Self {
            process_id: Some(id.into()),
            ..Self::default()
        }
    }

    /// The parent process it names, if it names one.
    pub fn parent_process(&self) -> Option<&str> {
        match (&self.process_id, self.kind.as_deref(), &self.id) {
            (Some(p), _, _) => Some(p),
            (None, Some("process"), Some(id)) => Some(id),
            _ => None,
        }
    }
}

/// Where a process came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Who started the process.
    #[serde(default)]
    pub originator: Originator,
    /// What caused it, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<CausalRef>,
}

/// The agent a `session_turn` runs (SPEC §15): which configured model, its
/// instructions, the cairn tools it may call, and its bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "a turn session: an object, optionally with `model`, `system` and `tools`",
    deny_unknown_fields
)]
pub struct TurnSession {
    /// A model configured on the server (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The system message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The tools the model may call, by name; each call is a child process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Most model calls in the turn (default 8; 1 to 64 when a turn starts).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_max_steps"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_steps: Option<u32>,
    /// The sampling temperature passed to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// The most model calls a turn's `max_steps` allows when a turn starts (the
/// session-turn runner's `cairn_turn::MAX_STEPS` is this one).
pub const TURN_MAX_STEPS: u32 = 64;

/// The most repairs a turn's `json_schema` contract may allow
/// (`repair_attempts`), which a start checks and the schemas state.
pub const TURN_MAX_REPAIR_ATTEMPTS: u32 = 5;

/// A turn's `max_steps`: any integer that fits the record is read (a start
/// checks the bounds, so a turn started under looser ones still reads), and
/// one that does not (negative, or past `u32`) is refused as the start's
/// check refuses one out of bounds, not as a `u32`.
fn deserialize_max_steps<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct MaxSteps;
    impl<'v> serde::de::Visitor<'v> for MaxSteps {
        type Value = Option<u32>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an integer from 1 to {TURN_MAX_STEPS}")
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Option<u32>, E> {
            u32::try_from(n)
                .map(Some)
                .map_err(|_| E::custom(format_args!("a turn's `max_steps` is 1 to {TURN_MAX_STEPS}, not {n}")))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Option<u32>, E> {
            u64::try_from(n)
                .map_err(|_| E::custom(format_args!("a turn's `max_steps` is 1 to {TURN_MAX_STEPS}, not {n}")))
                .and_then(|n| self.visit_u64(n))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'v>>(self, d: D) -> Result<Option<u32>, D::Error> {
            d.deserialize_u64(self)
        }
    }
    d.deserialize_option(MaxSteps)
}

/// What a process runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "a process input: an object with `type` (`tool_call`, `script`, `session_turn` or `external`)",
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum ProcessInput {
    /// A tool from the host's tool registry, run in the background.
    ToolCall {
        /// The tool's name in the host's tool registry.
        tool: String,
        /// The tool's arguments.
        #[serde(default)]
        args: Value,
    },
    /// A durable scripted workflow (SPEC §14), run by the runner registered for `script`.
    Script {
        /// The script module.
        module_ref: String,
        /// The process defined in that module.
        process_name: String,
        /// The script's arguments.
        #[serde(default)]
        args: Value,
    },
    /// A sub-agent turn (SPEC §15), run by the runner registered for `session_turn`.
    SessionTurn {
        /// The model, instructions and tools of the turn.
        #[serde(default)]
        session: TurnSession,
        /// The turn's input.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::wire_schema::turn_input))]
        input: Value,
        /// What the turn's output must satisfy.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::wire_schema::output_contract))]
        output_contract: Value,
    },
    /// Work executed by another system; cairn never runs it.
    External {
        /// Whatever the other system wants to record with it.
        #[serde(default)]
        metadata: Value,
    },
}

impl ProcessInput {
    /// Where inside `input` (a value refused as a [`ProcessInput`]) the fault
    /// is, and what it is, when serde could not say: it reads an input's
    /// `type` before its fields and names no field inside it. A
    /// `session_turn`'s `session` is read again on its own, so a refusal
    /// names `session.temperature`, not just `input`.
    pub fn refused_at(input: &Value) -> Option<(String, String)> {
        if input.get("type")? != "session_turn" {
            return None;
        }
        let session = input.get("session")?;
        let e = serde_path_to_error::deserialize::<_, TurnSession>(session).err()?;
        let path = e.path().to_string();
        let at = if path == "." {
            "session".to_string()
        } else {
            format!("session.{path}")
        };
        Some((at, e.into_inner().to_string()))
    }

    /// The input's `type` on the wire: `tool_call`, `script`, `session_turn` or `external`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ToolCall { .. } => "tool_call",
            Self::Script { .. } => "script",
            Self::SessionTurn { .. } => "session_turn",
            Self::External { .. } => "external",
        }
    }

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
#[serde(rename_all = "snake_case", remote = "Self")]
pub enum Disposition {
    /// Any worker may run it again after owner loss.
    Rerunnable,
    /// Claimable until started; once started, no other owner ever runs it.
    OwnerBound,
    /// Never claimed or run by cairn.
    ExternallyOwned,
}

crate::wire::string_enum!(
    Disposition,
    "a disposition: `rerunnable`, `owner_bound` or `externally_owned`"
);

impl Disposition {
    /// The wire name (`rerunnable`, `owner_bound`, `externally_owned`).
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
    /// Not ended yet.
    Running,
    /// Ended with a success.
    Completed,
    /// Ended with a failure.
    Failed,
    /// Ended by cancellation.
    Cancelled,
    /// Ended with an unknowable result (its owner was lost, or gave the work up).
    Abandoned,
}

impl ProcessStatus {
    /// Everything but `running`.
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }

    /// The wire name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
        }
    }

    /// The status named `s` (its wire name), if any.
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
#[serde(rename_all = "snake_case", remote = "Self")]
pub enum TerminalState {
    /// Ends the process `completed`.
    Completed,
    /// Ends the process `failed`.
    Failed,
    /// Ends the process `cancelled`.
    Cancelled,
    /// Ends the process `abandoned` (only cairn writes it).
    Abandoned,
}

crate::wire::string_enum!(
    TerminalState,
    "a terminal state: `completed`, `failed`, `cancelled` or `abandoned`"
);

impl TerminalState {
    /// The status a process ends in.
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
    /// The owner whose lease it was.
    pub owner_id: String,
    /// That lease's fencing token.
    pub fencing_token: u64,
    /// The node the owner ran on, when its owner id names one ([`NodeIdentity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The owner's incarnation of that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

impl OwnerIdentity {
    /// The identity of `owner_id` under `fencing_token`, with the node and
    /// incarnation its owner id names, if it names them.
    pub fn of(owner_id: &str, fencing_token: u64) -> Self {
        let node = NodeIdentity::parse_owner(owner_id);
        Self {
            owner_id: owner_id.to_string(),
            fencing_token,
            incarnation: node.as_ref().map(|n| n.incarnation),
            node: node.map(|n| n.node),
        }
    }
}

/// Longest node id, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// One start of a runtime on a node: a stable node id (configured, the same
/// across restarts) and the incarnation the store handed out when this start
/// registered (one more than the node's previous one). Lease owner ids carry
/// both (`{node}#{incarnation}`), so a later incarnation of the same node
/// proves every earlier one's leases orphaned: the sweep (SPEC §2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The stable node id.
    pub node: String,
    /// This start's incarnation of the node (from 1, rising by one per start).
    pub incarnation: u64,
}

impl NodeIdentity {
    /// Check a node id: 1-64 ASCII letters, digits, `.`, `_` and `-` (a host
    /// name fits), so an owner id splits back into node and incarnation.
    pub fn validate_node_id(node: &str) -> crate::Result<()> {
        let ok = !node.is_empty()
            && node.len() <= MAX_NODE_ID_BYTES
            && node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(())
        } else {
            Err(crate::CairnError::InvalidId(format!(
                "node id `{}` must be 1-{MAX_NODE_ID_BYTES} ASCII letters, digits, `.`, `_` or `-`",
                node.escape_debug()
            )))
        }
    }

    /// The lease owner id of this incarnation: `{node}#{incarnation}`.
    pub fn owner_id(&self) -> String {
        format!("{}#{}", self.node, self.incarnation)
    }

    /// The node and incarnation an owner id names; `None` for an owner id of
    /// another shape (a host's own worker id, ids written before node identities).
    pub fn parse_owner(owner_id: &str) -> Option<Self> {
        let (node, incarnation) = owner_id.rsplit_once('#')?;
        if Self::validate_node_id(node).is_err() || !incarnation.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let incarnation = incarnation.parse().ok().filter(|i| *i > 0)?;
        Some(Self {
            node: node.to_string(),
            incarnation,
        })
    }
}

/// A node's liveness row ([`crate::ProcessRegistry::register_node`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLiveness {
    /// The node id.
    pub node: String,
    /// Its latest registered incarnation.
    pub incarnation: u64,
    /// When that incarnation registered, in epoch ms.
    pub started_at_ms: u64,
    /// Its latest heartbeat, in epoch ms (for operators; never evidence).
    pub heartbeat_at_ms: u64,
}

/// A row of the sweep worklist ([`crate::ProcessRegistry::sweep_worklist`]):
/// a running owner-bound process started by an incarnation of `node` earlier
/// than the `incarnation` that node has registered since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepItem {
    /// The process.
    pub process_id: ProcessId,
    /// The node whose earlier incarnation started it.
    pub node: String,
    /// The node's registered incarnation: the evidence that the earlier one is gone.
    pub incarnation: u64,
}

/// Evidence carried by an `abandoned` outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AbandonEvidence {
    /// Which path wrote it.
    pub writer: AbandonWriter,
    /// The lease the abandonment was established against, if the process had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerIdentity>,
    /// When it was written, in epoch milliseconds.
    pub epoch_ms: u64,
}

/// What an awaiter receives when a process ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "an outcome: an object with `type` (`success`, `failure`, `cancelled` or `abandoned`)",
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Outcome {
    /// The process completed with `value`.
    Success {
        /// The result.
        value: Value,
    },
    /// The process failed.
    Failure {
        /// Who failed: `tool`, `runtime`, `process`, ...
        class: String,
        /// A machine code within the class.
        code: String,
        /// For humans.
        message: String,
        /// The payload the failure was read from, when it was not an outcome itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    /// The process was cancelled.
    Cancelled {
        /// Why, for humans.
        message: String,
        /// The payload the cancellation was read from, when it was not an outcome itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<Value>,
    },
    /// The result is unknowable: the owner was lost or gave the work up.
    Abandoned {
        /// Who wrote the abandonment, against which lease, and when.
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

    /// A success with `value`.
    pub fn success(value: Value) -> Self {
        Self::Success { value }
    }

    /// A failure without a raw payload.
    pub fn failure(class: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Failure {
            class: class.into(),
            code: code.into(),
            message: message.into(),
            raw: None,
        }
    }

    /// A cancellation without a raw payload.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::Cancelled {
            message: message.into(),
            raw: None,
        }
    }
}

/// The `type`s an external completion's outcome takes: `abandoned` is cairn's
/// own word, after an abandon request.
pub const COMPLETION_TAGS: &[&str] = &["success", "failure", "cancelled"];

impl Outcome {
    /// Read the outcome an external completion gives (for
    /// `#[serde(deserialize_with)]`): an [`Outcome`], whose refusal of a
    /// `type` names the tags a completion takes ([`COMPLETION_TAGS`]), not
    /// `abandoned`. An `abandoned` outcome is read on its tag alone (its
    /// other fields, `evidence` included, unread) as an abandonment with
    /// placeholder evidence, for the completion to refuse with what to do
    /// instead ([`crate::fold::check_completion_outcome`]): what this reads
    /// is never recorded without that check.
    pub fn deserialize_completion<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CompletionOutcome)
    }
}

/// Reads a completion's outcome: its fields as given, the `type` checked
/// against [`COMPLETION_TAGS`] where it stands (so a refusal names
/// `outcome.type`), then the whole as an [`Outcome`].
struct CompletionOutcome;

impl<'de> serde::de::Visitor<'de> for CompletionOutcome {
    type Value = Outcome;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an outcome: an object with `type` (`success`, `failure` or `cancelled`)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Outcome, A::Error> {
        use serde::de::{Error, IgnoredAny};
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = if key == "type" {
                let tag = map.next_value_seed(CompletionTag)?;
                if tag == "abandoned" {
                    // Refused on the tag: what else it says is not read.
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    return Ok(Outcome::Abandoned {
                        evidence: AbandonEvidence {
                            writer: AbandonWriter::ReconciledRequest,
                            owner: None,
                            epoch_ms: 0,
                        },
                    });
                }
                Value::String(tag)
            } else {
                map.next_value()?
            };
            if fields.insert(key.clone(), value).is_some() {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
        }
        Outcome::deserialize(Value::Object(fields)).map_err(A::Error::custom)
    }
}

/// A completion outcome's `type`: one of [`COMPLETION_TAGS`], or `abandoned`.
struct CompletionTag;

impl<'de> serde::de::DeserializeSeed<'de> for CompletionTag {
    type Value = String;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for CompletionTag {
    type Value = String;

    /// As serde says of a tag: [`crate::validate::refusal_in_wire_terms`]
    /// says it in wire terms, with the tags taken.
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_str<E: serde::de::Error>(self, tag: &str) -> Result<String, E> {
        if COMPLETION_TAGS.contains(&tag) || tag == "abandoned" {
            Ok(tag.to_string())
        } else {
            Err(E::unknown_variant(tag, COMPLETION_TAGS))
        }
    }
}

/// A durable wait, visible on the record while a process waits (SPEC §13).
///
/// In a `rerunnable` process the wait is a suspension: the lease was released
/// with it, and the process is claimable again only once [`WaitState::woken`]
/// is set, its deadline passes or a cancellation is requested.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaitState {
    /// `signal`, `timer` or `children`.
    pub kind: String,
    /// The signal name waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which wait of its kind (for signals: which signal of that name, 1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u64>,
    /// The deadline (a timer's due time), in epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The children waited for (`children`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Whether all of them must end, or any one (`children`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ChildrenMode>,
    /// Other signal names that also end the wait: the next signal of any of
    /// them (a script racing a signal against another, or against children).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<Vec<String>>,
    /// Whether `until_ms` is a pending timer's due time rather than the
    /// wait's own deadline (a script racing a `ctx.sleep` against a signal
    /// or a child): reaching it resumes the run for `timer`, not `timed_out`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub due_timer: bool,
    /// Set by the write that satisfied the wait (`signal`): the process is
    /// claimable and the next claim resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woken: Option<String>,
    /// When the wait began, in epoch milliseconds.
    pub since_ms: u64,
}

/// What a run asks to wait for: the payload of its `process.waiting` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRequest {
    /// `signal`, `timer` or `children`.
    pub kind: String,
    /// The signal name, for a signal wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which wait of its kind this is in the run (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u64>,
    /// The deadline: a timer's due time, or a signal or children wait's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The children waited for (`children`): processes this one caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Whether all of them must end, or any one (`children`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ChildrenMode>,
    /// Other signal names that also end the wait: the next signal of any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<Vec<String>>,
    /// Whether `until_ms` is a pending timer's due time, not this wait's own
    /// deadline ([`WaitState::due_timer`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub due_timer: bool,
}

/// Which ends of the awaited children satisfy a `children` wait (SPEC §13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", remote = "Self")]
pub enum ChildrenMode {
    /// The wait ends when the last of them ends.
    All,
    /// The wait ends when the first of them ends.
    Any,
}

crate::wire::string_enum!(ChildrenMode, "a children mode: `all` or `any`");

impl WaitRequest {
    /// A wait for the `ordinal`-th signal `name`, until an optional deadline.
    pub fn signal(name: &str, ordinal: u64, until_ms: Option<u64>) -> Self {
        Self {
            kind: "signal".into(),
            name: Some(name.to_string()),
            ordinal: Some(ordinal),
            until_ms,
            ids: None,
            mode: None,
            signals: None,
            due_timer: false,
        }
    }

    /// The `ordinal`-th wait for children of a run: `ids`, all or any of them.
    pub fn children(ids: Vec<String>, mode: ChildrenMode, ordinal: u64, until_ms: Option<u64>) -> Self {
        Self {
            kind: "children".into(),
            name: None,
            ordinal: Some(ordinal),
            until_ms,
            ids: Some(ids),
            mode: Some(mode),
            signals: None,
            due_timer: false,
        }
    }

    /// The `ordinal`-th timer of a run, due at `until_ms`.
    pub fn timer(ordinal: u64, until_ms: u64) -> Self {
        Self {
            kind: "timer".into(),
            name: None,
            ordinal: Some(ordinal),
            until_ms: Some(until_ms),
            ids: None,
            mode: None,
            signals: None,
            due_timer: false,
        }
    }

    /// The same wait, also ended by the next signal of any of `names`.
    pub fn or_signals(mut self, names: Vec<String>) -> Self {
        self.signals = (!names.is_empty()).then_some(names);
        self
    }

    /// Whether a `process.waiting` or `process.resumed` payload names this wait.
    pub fn matches(&self, payload: &serde_json::Value) -> bool {
        let s = |k: &str| payload.get(k).and_then(serde_json::Value::as_str);
        s("kind") == Some(self.kind.as_str())
            && s("name") == self.name.as_deref()
            && payload.get("ordinal").and_then(serde_json::Value::as_u64) == self.ordinal
    }
}

/// The lease view on a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseView {
    /// The owner holding the lease.
    pub owner_id: String,
    /// When the lease expires unless renewed, in epoch milliseconds.
    pub expires_at_ms: u64,
    /// Monotonic per process, bumped on every claim.
    pub fencing_token: u64,
}

/// A durable request to abandon a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AbandonRequest {
    /// Who asked.
    pub requested_by: String,
    /// When, in epoch milliseconds.
    pub requested_at_ms: u64,
    /// Why, for humans.
    #[serde(default)]
    pub reason: String,
}

/// A recorded cancellation request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelRequest {
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, in epoch milliseconds.
    pub requested_at_ms: u64,
}

/// The first-started fact and attempt count: who ran the process last, and how often it began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartedFact {
    /// The owner that began the latest run.
    pub owner_id: String,
    /// The fencing token of the lease it ran under.
    pub fencing_token: u64,
    /// 1 for the first run, rising by one each time a worker begins the process again.
    pub attempt: u64,
    /// When the latest run began, in epoch milliseconds.
    pub at_ms: u64,
}

/// A reference to the same work in another system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "an external reference: an object with `backend` and `id`",
    deny_unknown_fields
)]
pub struct ExternalRef {
    /// The other system's name.
    pub backend: String,
    /// The work's id there.
    pub id: String,
    /// Anything else worth keeping about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Content address of an execution environment spec: `process-env:sha256:{hex}`.
pub type EnvRef = String;

/// An execution environment spec (plugin options + policy), stored content-addressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "an environment spec: an object with `plugin_options` and `policy`",
    deny_unknown_fields
)]
pub struct EnvSpec {
    /// Options for the environment plugin.
    #[serde(default)]
    pub plugin_options: Value,
    /// The policy the environment enforces.
    #[serde(default)]
    pub policy: Value,
}

/// The immutable part of a process: what its start declared.
///
/// Its [`registration_hash`](crate::validate::registration_hash) decides whether a
/// repeated start is the same start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The process id.
    pub id: ProcessId,
    /// What it runs.
    pub input: ProcessInput,
    /// How it is recovered after its owner is lost.
    pub disposition: Disposition,
    /// Producer-declared event types; the core types are added by cairn.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    /// Who started it and why.
    #[serde(default)]
    pub provenance: Provenance,
    /// The session scope its wakes go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_target: Option<SessionScope>,
    /// Its execution environment (a stored spec's content address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<EnvRef>,
    /// The same work in another system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

/// A handle descriptor carried by a grant: an optional `kind` (at most 64
/// bytes) and `label` (at most 1024 bytes), neither empty nor holding a
/// control character.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "a grant descriptor: an object, optionally with `kind` and `label`",
    deny_unknown_fields
)]
pub struct GrantDescriptor {
    /// What kind of handle this is, for the host: at most 64 bytes, not
    /// empty (omit it instead), no control characters (U+0000–U+001F,
    /// U+007F–U+009F).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A label for humans: at most 1024 bytes, not empty (omit it instead),
    /// no control characters (U+0000–U+001F, U+007F–U+009F).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A grant requested at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "a grant: an object with `session_scope` and, optionally, `descriptor`",
    deny_unknown_fields
)]
pub struct StartGrant {
    /// The scope to grant the process to.
    pub session_scope: SessionScope,
    /// The handle's descriptor.
    #[serde(default)]
    pub descriptor: GrantDescriptor,
}

/// A session scope's handle on a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    /// The scope holding the handle.
    pub scope: SessionScope,
    /// The process it addresses.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub process_id: ProcessId,
    /// The handle's descriptor.
    pub descriptor: GrantDescriptor,
    /// When it was granted (or moved here), in epoch milliseconds.
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
    /// The grant.
    pub grant: Grant,
    /// The process as of the listing.
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
    /// The session whose grants and wakes were removed.
    pub session_id: String,
    /// Grants removed: of every scope of the session, or only those to the
    /// session as a whole when its frames' grants were kept (a session
    /// token's delete).
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
    /// The session the wake is for.
    pub target_session_id: String,
    /// The scope the wake is for, inside that session.
    pub target_scope: SessionScope,
    /// The process whose event woke it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub process_id: ProcessId,
    /// That event's sequence.
    pub sequence: u64,
    /// That event's type.
    pub event_type: String,
    /// The key that makes the wake happen once per target.
    pub dedupe_key: String,
    /// The rendered input text.
    pub input: String,
    /// When it was written, in epoch milliseconds.
    pub created_at_ms: u64,
}

/// A small record left behind by prune so a pruned id answers "no longer retained".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tombstone {
    /// The pruned process's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: ProcessId,
    /// How it ended.
    pub status: ProcessStatus,
    /// When it ended, in epoch milliseconds.
    pub terminal_at_ms: u64,
    /// When it was pruned, in epoch milliseconds.
    pub pruned_at_ms: u64,
}

/// How far a host's projector has read the change feed; prune never deletes a
/// change the projector has not seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields,
    try_from = "WatermarkWire"
)]
pub enum Watermark {
    /// No projector reads the change feed: prune by cutoff alone.
    NoProjector,
    /// Only prune processes whose last change is at or before this cursor.
    Cursor {
        /// The change-feed cursor the projector has read up to.
        cursor: u64,
    },
}

/// What [`Watermark`] is read from: an object of its `type` and its
/// `cursor`, read as a plain struct so that a refused `cursor` is named
/// (`watermark.cursor`; serde reads a tagged enum's fields from a copy,
/// where no path is kept), and checked against its type after: a `cursor`
/// on `no_projector` (meant for a cursor watermark, say) is an error rather
/// than a prune by cutoff alone.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a watermark: `{\"type\": \"no_projector\"}` or `{\"type\": \"cursor\", \"cursor\": N}`"
)]
struct WatermarkWire {
    #[serde(rename = "type")]
    kind: WatermarkType,
    #[serde(default)]
    cursor: Option<u64>,
}

/// A watermark's `type`.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", remote = "Self")]
enum WatermarkType {
    NoProjector,
    Cursor,
}

crate::wire::string_enum!(WatermarkType, "a watermark type: `no_projector` or `cursor`");

impl TryFrom<WatermarkWire> for Watermark {
    type Error = &'static str;

    fn try_from(wire: WatermarkWire) -> std::result::Result<Self, Self::Error> {
        match (wire.kind, wire.cursor) {
            (WatermarkType::NoProjector, None) => Ok(Self::NoProjector),
            (WatermarkType::NoProjector, Some(_)) => {
                Err("a `no_projector` watermark takes no `cursor` (a cursor watermark is `{\"type\": \"cursor\", \"cursor\": N}`)")
            }
            (WatermarkType::Cursor, Some(cursor)) => Ok(Self::Cursor { cursor }),
            (WatermarkType::Cursor, None) => {
                Err("missing field `cursor`: a `cursor` watermark names the change-feed cursor its projector has read up to")
            }
        }
    }
}

/// The answer of `prune`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PruneReport {
    /// Processes deleted (each leaves a tombstone).
    pub pruned: u64,
    /// Events deleted with them.
    pub events_deleted: u64,
    /// Grants deleted with them.
    pub grants_deleted: u64,
    /// Wakes deleted with them.
    pub wakes_deleted: u64,
    /// Terminal processes older than the cutoff kept because the watermark has not passed them.
    pub held_by_watermark: u64,
    /// Terminal children older than the cutoff kept because their parent still
    /// runs: it may yet read how they ended (a script's `ctx.wait`).
    #[serde(default)]
    pub held_by_running_parent: u64,
    /// Terminal processes older than the cutoff kept because one of their
    /// descendants still runs: a cancel of the tree reaches it through them.
    #[serde(default)]
    pub held_by_running_descendant: u64,
}

impl PruneReport {
    /// Add what another chunk of the same prune did.
    pub fn add(&mut self, chunk: &PruneReport) {
        self.pruned += chunk.pruned;
        self.events_deleted += chunk.events_deleted;
        self.grants_deleted += chunk.grants_deleted;
        self.wakes_deleted += chunk.wakes_deleted;
        self.held_by_watermark += chunk.held_by_watermark;
        self.held_by_running_parent += chunk.held_by_running_parent;
        self.held_by_running_descendant += chunk.held_by_running_descendant;
    }

    /// What a prune made of chunks answers when a chunk fails after this
    /// much of it committed: the error as it is while nothing was removed
    /// (it changed nothing), else `outcome_unknown`, which says what was
    /// removed (a prune run again removes the rest).
    pub fn interrupted_by(&self, e: crate::CairnError) -> crate::CairnError {
        if self.pruned == 0 {
            return e;
        }
        crate::CairnError::OutcomeUnknown(format!(
            "the prune removed {} processes before the store failed ({e}); prune again to remove the rest",
            self.pruned
        ))
    }
}

/// One entry of the change feed: a record at the cursor of its latest change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// The cursor of the record's latest change; pass the largest seen to read on.
    pub cursor: u64,
    /// The record as of that change.
    pub process: ProcessRecord,
}

/// A page of the change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePage {
    /// The changes, in cursor order: at most `limit`, and none after the one
    /// that brings the page to 4 MiB as JSON, so a page shorter than `limit`
    /// is not the feed's end; an empty page is.
    pub changes: Vec<Change>,
    /// Pass this back to read on; equal to the given cursor when nothing changed.
    pub next_cursor: u64,
}

/// The stored process record. Every field but `lease` is a fold of the event log
/// over the registration (see [`crate::fold`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessRecord {
    /// The process id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: ProcessId,
    /// The hash of the registration (`validate::registration_hash`); a repeated start must match it.
    pub registration_hash: String,
    /// The lifecycle status.
    pub status: ProcessStatus,
    /// How it ended; `None` while running.
    pub outcome: Option<Outcome>,
    /// How it is recovered after its owner is lost.
    pub disposition: Disposition,
    /// What it runs.
    pub input: ProcessInput,
    /// Who started it and why.
    pub provenance: Provenance,
    /// The session scope its wakes go to.
    pub wake_target: Option<SessionScope>,
    /// Every declared type, the core types included (shared; a clone is cheap).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<EventType>))]
    pub event_types: EventTypes,
    /// Its execution environment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub env_ref: Option<EnvRef>,
    /// The same work in another system, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
    /// The durable wait it is in, if any.
    pub wait: Option<WaitState>,
    /// Coordination state, not history: the only field outside the fold.
    pub lease: Option<LeaseView>,
    /// A pending abandon request, if any.
    pub abandon_request: Option<AbandonRequest>,
    /// A recorded cancellation request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_request: Option<CancelRequest>,
    /// Who ran it last and how many times it began; `None` until a first claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<StartedFact>,
    /// When it was registered, in epoch milliseconds.
    pub created_at_ms: u64,
    /// When its last event was appended (or it was registered), in epoch milliseconds.
    pub updated_at_ms: u64,
    /// When it ended, in epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_at_ms: Option<u64>,
    /// The sequence of its last event.
    pub last_sequence: u64,
}

impl ProcessRecord {
    /// Whether it has ended.
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
    /// The leased process.
    pub process_id: ProcessId,
    /// The owner holding it.
    pub owner_id: String,
    /// Unique per claim.
    pub lease_token: String,
    /// Monotonic per process, bumped on every claim.
    pub fencing_token: u64,
    /// When it was claimed, in epoch milliseconds.
    pub claimed_at_ms: u64,
    /// When it expires unless renewed, in epoch milliseconds.
    pub expires_at_ms: u64,
}

impl Lease {
    /// What the record shows of this lease.
    pub fn view(&self) -> LeaseView {
        LeaseView {
            owner_id: self.owner_id.clone(),
            expires_at_ms: self.expires_at_ms,
            fencing_token: self.fencing_token,
        }
    }

    /// The owner identity an abandonment under this lease names.
    pub fn owner(&self) -> OwnerIdentity {
        OwnerIdentity::of(&self.owner_id, self.fencing_token)
    }
}

/// A claim made by `claim_batch`: the lease and the record as of the claim
/// (its `started` fact already written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The new lease.
    pub lease: Lease,
    /// The record as of the claim.
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

/// Counts of a store's live state, for metrics ([`crate::ProcessRegistry::gauges`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gauges {
    /// Running processes.
    pub running: u64,
    /// Running processes that show a wait (suspended or holding their run).
    pub waiting: u64,
    /// Processes with a lease stored (live or lapsed, not yet released).
    pub leased: u64,
    /// Of those, the ones whose lease has lapsed: work its owner left (a
    /// dead node's, say), until a claim, a sweep or an abandon takes it.
    #[serde(default)]
    pub lapsed: u64,
    /// Wake deliveries not acknowledged, over every session.
    pub pending_wakes: u64,
}

/// One row of the bounded claimable worklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The process.
    pub process_id: ProcessId,
    /// What to do with it.
    pub action: WorkAction,
}

/// Which statuses a listing returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Read from a string, so that a value of another JSON type is reported as
// such: of a unit enum given a number or an array, serde_json says only
// "expected value".
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum StatusFilter {
    /// Running processes (the default).
    #[default]
    Running,
    /// Completed processes.
    Completed,
    /// Failed processes.
    Failed,
    /// Cancelled processes.
    Cancelled,
    /// Abandoned processes.
    Abandoned,
    /// Every status.
    Any,
}

impl TryFrom<String> for StatusFilter {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        Ok(match text.as_str() {
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "abandoned" => Self::Abandoned,
            "any" => Self::Any,
            other => {
                return Err(format!(
                    "unknown status `{other}`: one of running, completed, failed, cancelled, abandoned, any"
                ))
            }
        })
    }
}

impl StatusFilter {
    /// Whether a process in `status` passes this filter.
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

/// The order of a listing's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Read from a string, as [`StatusFilter`] is, for the same reason.
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum ListOrder {
    /// Ascending id (the default): `after_id` is the last id read.
    #[default]
    Id,
    /// Newest first: descending `created_at_ms`, ties by descending id.
    /// `after_id` is the last id read; the next page holds what was
    /// created before it (by time, then id). A cursor naming a process
    /// that is gone (pruned since) is [`crate::CairnError::InvalidPage`].
    Newest,
}

impl TryFrom<String> for ListOrder {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        match text.as_str() {
            "id" => Ok(Self::Id),
            "newest" => Ok(Self::Newest),
            other => Err(format!("unknown order `{other}`: one of id, newest")),
        }
    }
}

impl ListOrder {
    /// Whether this is the default order (left out when serialized).
    pub fn is_id(&self) -> bool {
        *self == Self::Id
    }
}

/// A walk of the newest processes for a newest-first page by status
/// ([`ProcessFilter::newest_walk`]): a store reads the creation time
/// `budget` processes down its creation-time index from `top_ms` (the
/// floor; none when fewer are left), then the page among the processes
/// created from the floor on ([`NewestWalk::filter`]). A full page, or one
/// with no floor, is the page; else the store sorts the status's rows.
/// Sorting them always, as a planner would, costs every running process for
/// each page of a long backlog, while the newest processes mostly hold the
/// page; a page of rare ones (old processes still running among many newer
/// ended) is found by the sort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewestWalk {
    /// The newest creation time the walk starts at (inclusive).
    pub top_ms: u64,
    /// How many processes it walks at most.
    pub budget: usize,
}

impl NewestWalk {
    /// Processes walked per row asked.
    pub const PER_ROW: usize = 16;
    /// The fewest processes walked.
    pub const LEAST: usize = 1_000;

    /// `filter` bounded to what the walk reads: from `floor_ms` on.
    pub fn filter(&self, filter: &ProcessFilter, floor_ms: Option<u64>) -> ProcessFilter {
        ProcessFilter {
            created_from_ms: match (filter.created_from_ms, floor_ms) {
                (from, None) => from,
                (from, Some(floor)) => Some(from.unwrap_or(0).max(floor)),
            },
            ..filter.clone()
        }
    }

    /// Whether the `found` rows of a walk that reached `floor_ms` are the
    /// page of `limit`: full, or nothing older was left to walk.
    pub fn holds_page(found: usize, limit: usize, floor_ms: Option<u64>) -> bool {
        found >= limit || floor_ms.is_none()
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
    /// Which statuses to return (default: running).
    #[serde(default)]
    pub status: StatusFilter,
    /// Matches [`ProcessInput::definition`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// Only processes that are (or are not) in a durable wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<bool>,
    /// Matches [`Originator::scope_id`] (`host`, `host:{scope}`, `session:{id}`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    /// Only the children of this process ([`CausalRef::parent_process`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// Inclusive lower bound on `created_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from_ms: Option<u64>,
    /// Exclusive upper bound on `created_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before_ms: Option<u64>,
    /// The order of the pages: by id (the default) or newest first.
    #[serde(default, skip_serializing_if = "ListOrder::is_id")]
    pub order: ListOrder,
    /// Where the page starts: the last id of the previous page (its
    /// `next_after_id`). In id order, only ids greater than this; newest
    /// first, only what was created before it ([`ListOrder::Newest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<String>,
    /// Page size; default [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One page of a process listing (`GET /v1/processes`, MCP `process_list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListPage {
    /// Records in the order asked for: by id, or newest first.
    pub processes: Vec<ProcessRecord>,
    /// With `granted_to` (and always for session callers): the grant behind each listed process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
    /// Pass as `after_id` for the next page: set whenever the page is full
    /// or was cut once its records reached 4 MiB of JSON (the next page may
    /// then be empty), absent when it is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after_id: Option<String>,
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
        let filter: Self = crate::validate::read_in_wire_terms(&value).map_err(crate::CairnError::InvalidFilter)?;
        filter.validate()?;
        Ok(filter)
    }

    /// Parse query-string pairs (`status=any&waiting=true&…`), with the same errors.
    pub fn from_query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> crate::Result<Self> {
        let mut map = serde_json::Map::new();
        for (key, raw) in pairs {
            let value = match key {
                "status" | "definition" | "originator" | "caused_by" | "after_id" | "order" => {
                    Value::String(raw.to_string())
                }
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
                        if key == "limit" {
                            // A page size that is no number is as bad a page as 0 is.
                            crate::CairnError::InvalidPage(format!(
                                "`limit` must be a whole number from 1 to {MAX_PAGE_SIZE}, got `{raw}`"
                            ))
                        } else if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
                            crate::CairnError::InvalidFilter(format!(
                                "`{key}` is {raw}, over the largest accepted value {}",
                                i64::MAX
                            ))
                        } else {
                            crate::CairnError::InvalidFilter(format!(
                                "`{key}` must be a non-negative integer, got `{raw}`"
                            ))
                        }
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

    /// Check the page size, and that `definition` and `originator` have a
    /// shape some process can have (a value none can have would list nothing
    /// and say nothing: a typo, or one lens's form given to another).
    pub fn validate(&self) -> crate::Result<()> {
        page_limit(self.limit)?;
        // No id holds a control character (`validate_id`), so a cursor with
        // one is a mistake; and PostgreSQL takes no NUL in text at all.
        if let Some(after) = self.after_id.as_deref().filter(|a| a.chars().any(char::is_control)) {
            return Err(crate::CairnError::InvalidFilter(format!(
                "`after_id` `{}` contains a control character, which no id holds",
                after.escape_debug()
            )));
        }
        check_definition(self.definition.as_deref())?;
        check_originator(self.originator.as_deref())?;
        check_caused_by(self.caused_by.as_deref())?;
        check_created_range(self.created_from_ms, self.created_before_ms)
    }

    /// The effective page size.
    pub fn page_size(&self) -> crate::Result<usize> {
        page_limit(self.limit)
    }

    /// Whether a record passes every predicate and, in id order, the
    /// cursor (newest first, the cursor is a position [`Self::is_past`]
    /// tells); the limit aside.
    pub fn matches(&self, record: &ProcessRecord) -> bool {
        self.status.matches(record.status)
            && self.definition.as_ref().is_none_or(|d| *d == record.input.definition())
            && self.waiting.is_none_or(|w| w == record.wait.is_some())
            && self
                .originator
                .as_ref()
                .is_none_or(|o| *o == record.provenance.originator.scope_id())
            && self
                .caused_by
                .as_deref()
                .is_none_or(|p| record.provenance.caused_by.as_ref().and_then(CausalRef::parent_process) == Some(p))
            && self.created_from_ms.is_none_or(|t| record.created_at_ms >= t)
            && self.created_before_ms.is_none_or(|t| record.created_at_ms < t)
            && (self.order == ListOrder::Newest
                || self.after_id.as_ref().is_none_or(|a| record.id.as_str() > a.as_str()))
    }

    /// The cursor of a newest-first listing: `after_id` unless empty (an
    /// empty one starts at the top, as it does in id order); `None` in id
    /// order.
    pub fn newest_cursor(&self) -> Option<&str> {
        match self.order {
            ListOrder::Newest => self.after_id.as_deref().filter(|a| !a.is_empty()),
            ListOrder::Id => None,
        }
    }

    /// Newest first with a bound status other than `completed` (not
    /// waiting): the walk of the newest processes a store tries before it
    /// sorts the status's rows (ADR 0038), from its cursor's creation time
    /// (`cursor_created_ms`) or the top, for a page of `limit`. `None` for
    /// other listings.
    pub fn newest_walk(&self, cursor_created_ms: Option<u64>, limit: usize) -> Option<NewestWalk> {
        let walks = self.order == ListOrder::Newest
            && !matches!(self.status, StatusFilter::Any | StatusFilter::Completed)
            && self.waiting != Some(true);
        let most = i64::MAX as u64;
        let below = self.created_before_ms.map_or(most, |b| b.saturating_sub(1));
        walks.then(|| NewestWalk {
            top_ms: cursor_created_ms.unwrap_or(most).min(below).min(most),
            budget: limit.saturating_mul(NewestWalk::PER_ROW).max(NewestWalk::LEAST),
        })
    }

    /// The error of a newest-first cursor naming no process the listing
    /// holds (through its lens): its position is its creation time, which
    /// is gone with it.
    pub fn cursor_gone(&self) -> crate::CairnError {
        crate::CairnError::InvalidPage(format!(
            "`after_id` `{}` names no process this listing holds (pruned, or its grant gone, since the page \
             that named it?), and a newest-first page starts where it was created: list again from the first page",
            self.after_id.as_deref().unwrap_or_default()
        ))
    }

    /// Newest first: whether `record` comes after the cursor, the process
    /// `after_id` names, created at `cursor_created_ms` (older, or as old
    /// with a smaller id).
    pub fn is_past(&self, record: &ProcessRecord, cursor_created_ms: u64) -> bool {
        match self.newest_cursor() {
            None => true,
            Some(a) => (record.created_at_ms, record.id.as_str()) < (cursor_created_ms, a),
        }
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

/// Check a `caused_by` filter: a parent's id, which is never empty.
pub fn check_caused_by(parent: Option<&str>) -> crate::Result<()> {
    match parent {
        Some(parent) => crate::validate::validate_id("`caused_by`", parent)
            .map_err(|e| crate::CairnError::InvalidFilter(e.to_string())),
        None => Ok(()),
    }
}

/// Check a created range: one that holds no time (`created_from_ms` at or
/// after `created_before_ms`) would match nothing and say nothing.
pub fn check_created_range(from: Option<u64>, before: Option<u64>) -> crate::Result<()> {
    match (from, before) {
        (Some(from), Some(before)) if from >= before => Err(crate::CairnError::InvalidFilter(format!(
            "`created_from_ms` {from} is not before `created_before_ms` {before}: the range holds no time \
             (`created_from_ms` is inclusive, `created_before_ms` exclusive)"
        ))),
        _ => Ok(()),
    }
}

/// Check a `definition` filter: `tool:NAME`, `script:MODULE_REF#EXPORT`,
/// `session_turn` or `external` ([`ProcessInput::definition`]).
pub fn check_definition(definition: Option<&str>) -> crate::Result<()> {
    let Some(d) = definition else { return Ok(()) };
    let named = |rest: Option<&str>| rest.is_some_and(|r| !r.is_empty() && !r.chars().any(char::is_control));
    let ok = matches!(d, "session_turn" | "external")
        || named(d.strip_prefix("tool:"))
        || d.strip_prefix("script:")
            .and_then(|r| r.split_once('#'))
            .is_some_and(|(m, n)| crate::script::validate_module_ref(m).is_ok() && named(Some(n)));
    if ok {
        return Ok(());
    }
    // A script's definition names its module by content address: say so
    // when that part alone is wrong (a name, a short or upper-case hash).
    let why = match d.strip_prefix("script:").and_then(|r| r.split_once('#')) {
        Some((m, _)) => match crate::script::validate_module_ref(m) {
            Err(crate::CairnError::InvalidId(why)) => format!(": {why}"),
            _ => String::new(),
        },
        None => String::new(),
    };
    Err(crate::CairnError::InvalidFilter(format!(
        "`definition` `{}` is none of `tool:NAME`, `script:MODULE_REF#EXPORT`, `session_turn`, `external`{why}",
        d.escape_debug()
    )))
}

/// Check an `originator` filter: `host`, `host:SCOPE`, `session:ID` or
/// `session:ID/frame:FRAME` ([`Originator::scope_id`]).
pub fn check_originator(originator: Option<&str>) -> crate::Result<()> {
    use crate::validate::{validate_id, FRAME_SEPARATOR};
    let Some(o) = originator else { return Ok(()) };
    let valid = if o == "host" {
        Ok(())
    } else if let Some(scope) = o.strip_prefix("host:") {
        validate_id("host scope", scope)
    } else if let Some(rest) = o.strip_prefix("session:") {
        // The first separator ends the session id: a session id never holds one.
        match rest.split_once(FRAME_SEPARATOR) {
            Some((session, frame)) => {
                validate_id("session id", session).and_then(|()| validate_id("agent frame id", frame))
            }
            None => validate_id("session id", rest),
        }
    } else {
        Err(crate::CairnError::InvalidFilter(String::new()))
    };
    valid.map_err(|e| {
        let why = match e {
            crate::CairnError::InvalidId(why) => format!(": {why}"),
            _ => String::new(),
        };
        crate::CairnError::InvalidFilter(format!(
            "`originator` `{}` is none of `host`, `host:SCOPE`, `session:ID`, `session:ID/frame:FRAME`{why}",
            o.escape_debug()
        ))
    })
}

/// Which ended processes a prune deletes (SPEC §7, with the filters of §4
/// that describe how a process started): a terminal status (default every
/// one; `running` is refused) and, when set, its definition, originator
/// ([`Originator::scope_id`]), parent and creation time (from inclusive,
/// before exclusive). Unset parts match every process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneFilter {
    /// Which terminal statuses.
    pub status: StatusFilter,
    /// `tool:NAME`, `script:MODULE_REF#EXPORT`, `session_turn` or `external`.
    pub definition: Option<String>,
    /// `host`, `host:SCOPE`, `session:ID` or `session:ID/frame:FRAME`.
    pub originator: Option<String>,
    /// The parent's id.
    pub caused_by: Option<String>,
    /// Created at or after.
    pub created_from_ms: Option<u64>,
    /// Created before.
    pub created_before_ms: Option<u64>,
}

impl Default for PruneFilter {
    fn default() -> Self {
        Self::from(StatusFilter::Any)
    }
}

impl From<StatusFilter> for PruneFilter {
    fn from(status: StatusFilter) -> Self {
        Self {
            status,
            definition: None,
            originator: None,
            caused_by: None,
            created_from_ms: None,
            created_before_ms: None,
        }
    }
}

impl PruneFilter {
    /// Refuse `running` and values no process can have (`invalid_filter`).
    pub fn validate(&self) -> crate::Result<()> {
        if self.status == StatusFilter::Running {
            return Err(crate::CairnError::InvalidFilter(
                "`status` `running`: prune never touches running processes".into(),
            ));
        }
        check_definition(self.definition.as_deref())?;
        check_originator(self.originator.as_deref())?;
        check_caused_by(self.caused_by.as_deref())?;
        check_created_range(self.created_from_ms, self.created_before_ms)
    }

    /// Whether an ended process with these traits passes every part but the status.
    pub fn admits(&self, definition: &str, originator: &str, parent: Option<&str>, created_at_ms: u64) -> bool {
        self.definition.as_deref().is_none_or(|d| d == definition)
            && self.originator.as_deref().is_none_or(|o| o == originator)
            && self.caused_by.as_deref().is_none_or(|c| Some(c) == parent)
            && self.created_from_ms.is_none_or(|f| created_at_ms >= f)
            && self.created_before_ms.is_none_or(|b| created_at_ms < b)
    }
}

/// Free-form JSON metadata map.
pub type Metadata = BTreeMap<String, Value>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A newest-first page by a status other than completed (not waiting)
    /// walks the newest first, from below its cursor and its created bound,
    /// 16 a row asked and at least 1,000; other listings do not.
    #[test]
    fn a_newest_page_by_status_walks_first() {
        let by = |status, waiting, order| ProcessFilter {
            status,
            waiting,
            order,
            ..ProcessFilter::default()
        };
        let running = by(StatusFilter::Running, None, ListOrder::Newest);
        let walk = running.newest_walk(None, 20).expect("a walk");
        assert_eq!((walk.top_ms, walk.budget), (i64::MAX as u64, 1_000));
        assert_eq!(
            running.newest_walk(Some(500), 100).map(|w| (w.top_ms, w.budget)),
            Some((500, 1_600))
        );
        let bounded = ProcessFilter {
            created_before_ms: Some(300),
            ..running.clone()
        };
        assert_eq!(bounded.newest_walk(Some(500), 1).map(|w| w.top_ms), Some(299));
        for none in [
            by(StatusFilter::Any, None, ListOrder::Newest),
            by(StatusFilter::Completed, None, ListOrder::Newest),
            by(StatusFilter::Running, Some(true), ListOrder::Newest),
            by(StatusFilter::Running, None, ListOrder::Id),
        ] {
            assert_eq!(none.newest_walk(None, 20), None, "{none:?}");
        }
        assert_eq!(walk.filter(&running, Some(7)).created_from_ms, Some(7));
        let from = ProcessFilter {
            created_from_ms: Some(9),
            ..running.clone()
        };
        assert_eq!(walk.filter(&from, Some(7)).created_from_ms, Some(9));
        assert_eq!(walk.filter(&from, None).created_from_ms, Some(9));
        assert!(NewestWalk::holds_page(20, 20, Some(7)));
        assert!(NewestWalk::holds_page(3, 20, None));
        assert!(!NewestWalk::holds_page(3, 20, Some(7)));
    }

    /// A turn's `max_steps` that fits the record reads (and writes) as it
    /// is, out of the start's bounds or not, so a record keeps loading; one
    /// that does not fit is refused with the start's bounds.
    #[test]
    fn a_turns_max_steps_reads_what_a_record_holds() {
        for (given, read) in [
            (serde_json::json!({"max_steps": 100}), Some(100)),
            (serde_json::json!({"max_steps": 4_294_967_295u64}), Some(u32::MAX)),
            (serde_json::json!({"max_steps": null}), None),
            (serde_json::json!({}), None),
        ] {
            let session: TurnSession = serde_json::from_value(given.clone()).expect("read");
            assert_eq!(session.max_steps, read, "{given}");
            let written = serde_json::to_value(&session).expect("written");
            assert_eq!(
                written.get("max_steps").and_then(Value::as_u64),
                read.map(u64::from),
                "{given}"
            );
        }
        for (given, said) in [("4294967296", "not 4294967296"), ("-3", "not -3")] {
            let refused = serde_json::from_str::<TurnSession>(&format!("{{\"max_steps\": {given}}}")).expect_err(given);
            assert!(
                refused.to_string().starts_with("a turn's `max_steps` is 1 to 64"),
                "{refused}"
            );
            assert!(refused.to_string().contains(said), "{refused}");
        }
    }

    /// A prune's chunk that fails once an earlier one removed processes is
    /// not "nothing changed": it is `outcome_unknown`, saying how many went.
    #[test]
    fn a_prune_failing_part_way_says_what_it_removed() {
        let down = || crate::CairnError::Unavailable("the store did not answer".into());
        let nothing = PruneReport::default();
        assert_eq!(nothing.interrupted_by(down()).code(), "unavailable");
        let some = PruneReport {
            pruned: 256,
            ..PruneReport::default()
        };
        let e = some.interrupted_by(down());
        assert_eq!(e.code(), "outcome_unknown");
        assert!(e.to_string().contains("removed 256 processes"), "{e}");
    }

    #[test]
    fn a_watermark_refuses_fields_its_type_does_not_have() {
        let read = |text: &str| serde_json::from_str::<Watermark>(text);
        assert_eq!(read(r#"{"type": "no_projector"}"#).ok(), Some(Watermark::NoProjector));
        assert_eq!(
            read(r#"{"type": "cursor", "cursor": 7}"#).ok(),
            Some(Watermark::Cursor { cursor: 7 })
        );
        for bad in [
            r#"{"type": "no_projector", "cursor": 2}"#,
            r#"{"type": "cursor", "cursor": 2, "extra": 1}"#,
            r#"{"type": "cursor"}"#,
            r#"{"type": "other"}"#,
        ] {
            assert!(read(bad).is_err(), "{bad} is refused");
        }
        let written = serde_json::to_value(Watermark::NoProjector).expect("serialize");
        assert_eq!(written, serde_json::json!({"type": "no_projector"}));
        let written = serde_json::to_value(Watermark::Cursor { cursor: 7 }).expect("serialize");
        assert_eq!(written, serde_json::json!({"type": "cursor", "cursor": 7}));
    }

    /// A refused `cursor` or `type` is named by its field, in wire terms.
    #[test]
    fn a_watermark_names_the_field_it_refuses() {
        let refusal = |v: serde_json::Value| {
            let e = serde_path_to_error::deserialize::<_, Watermark>(v).expect_err("refused");
            (
                e.path().to_string(),
                crate::validate::wire_terms(&e.into_inner().to_string()),
            )
        };
        let (at, said) = refusal(serde_json::json!({"type": "cursor", "cursor": "x"}));
        assert_eq!(at, "cursor");
        assert_eq!(said, "invalid type: string \"x\", expected a non-negative integer");
        let (at, said) = refusal(serde_json::json!({"type": 5}));
        assert_eq!(at, "type");
        assert!(
            said.contains("expected a watermark type: `no_projector` or `cursor`"),
            "{said}"
        );
        let (_, said) = refusal(serde_json::json!({"type": "cursor"}));
        assert!(said.contains("missing field `cursor`"), "{said}");
        let (_, said) = refusal(serde_json::json!({"type": "no_projector", "cursor": 2}));
        assert!(said.contains("takes no `cursor`"), "{said}");
    }

    #[test]
    fn a_status_filter_says_what_it_takes() {
        let read = |v: serde_json::Value| serde_json::from_value::<StatusFilter>(v).map_err(|e| e.to_string());
        for status in ["running", "completed", "failed", "cancelled", "abandoned", "any"] {
            let parsed = read(serde_json::json!(status)).expect("a status");
            assert_eq!(serde_json::to_value(parsed).ok(), Some(serde_json::json!(status)));
        }
        let unknown = read(serde_json::json!("done")).expect_err("refused");
        assert!(unknown.contains("unknown status `done`: one of running"), "{unknown}");
        for other in [
            serde_json::json!(3),
            serde_json::json!(["completed"]),
            serde_json::Value::Null,
        ] {
            let e = read(other.clone()).expect_err("refused");
            assert!(e.contains("expected a string"), "{other}: {e}");
        }
    }
}
