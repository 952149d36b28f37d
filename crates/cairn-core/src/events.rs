//! Event types, semantics, selectors and the event log entry (SPEC §3).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Lease, Outcome, ProcessId, SessionScope, TerminalState};
use crate::{CairnError, Result};

/// A declared event type: its name, payload schema and semantics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "an event type: an object with `name`, and optionally `payload_schema` and `semantics`",
    deny_unknown_fields
)]
pub struct EventType {
    /// The type name (`[A-Za-z0-9._-]`; `process.*` belongs to cairn, `signal.{name}` is a signal).
    pub name: String,
    /// A JSON Schema for the payload; `{}` (the default) accepts anything.
    #[serde(default = "any_schema")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::wire_schema::payload_schema))]
    pub payload_schema: Value,
    /// What appending an event of this type means beyond being logged.
    #[serde(default)]
    pub semantics: SemanticsSpec,
}

fn any_schema() -> Value {
    Value::Object(serde_json::Map::new())
}

impl EventType {
    /// A type with an accept-anything schema and no semantics.
    pub fn plain(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            payload_schema: any_schema(),
            semantics: SemanticsSpec::default(),
        }
    }

    /// Set the payload schema.
    pub fn with_schema(mut self, schema: Value) -> Self {
        self.payload_schema = schema;
        self
    }

    /// Set the semantics.
    pub fn with_semantics(mut self, semantics: SemanticsSpec) -> Self {
        self.semantics = semantics;
        self
    }
}

/// The full list of a process's declared event types (the core types included),
/// shared: a clone is a reference count, never a copy of the schemas.
///
/// On the wire it is a plain JSON array of [`EventType`]. Every process that
/// declares no types of its own shares one list ([`EventTypes::core`]), and a
/// decoded list equal to it becomes that shared list again.
#[derive(Clone)]
pub struct EventTypes(Arc<TypeList>);

struct TypeList {
    types: Vec<EventType>,
    key: OnceLock<String>,
}

static CORE_TYPES: LazyLock<EventTypes> = LazyLock::new(|| EventTypes::new_unshared(core_event_types()));

impl EventTypes {
    /// The core types alone: what a process that declares no types has.
    pub fn core() -> Self {
        CORE_TYPES.clone()
    }

    /// Share `types`; a list equal to the core list becomes the shared core list.
    pub fn new(types: Vec<EventType>) -> Self {
        let core = &*CORE_TYPES;
        if types.len() == core.len() && types[..] == core[..] {
            return core.clone();
        }
        Self::new_unshared(types)
    }

    fn new_unshared(types: Vec<EventType>) -> Self {
        Self(Arc::new(TypeList {
            types,
            key: OnceLock::new(),
        }))
    }

    /// The type named `name`, if declared.
    pub fn find(&self, name: &str) -> Option<&EventType> {
        self.0.types.iter().find(|t| t.name == name)
    }

    /// A stable content address of the list (`types:sha256:{hex}` of its
    /// canonical JSON, in list order), computed once per shared list. Stores
    /// that keep type lists apart from records key them by it.
    pub fn key(&self) -> &str {
        self.0.key.get_or_init(|| {
            let json = crate::hash::canonical_json(&self.0.types).expect("event types serialize");
            format!("types:sha256:{}", crate::hash::sha256_hex(json.as_bytes()))
        })
    }

    /// Whether both are the same shared list (not only equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// A copy of the list (to build another from it).
    pub fn to_vec(&self) -> Vec<EventType> {
        self.0.types.clone()
    }
}

impl Default for EventTypes {
    /// The core types alone.
    fn default() -> Self {
        Self::core()
    }
}

impl Deref for EventTypes {
    type Target = [EventType];
    fn deref(&self) -> &[EventType] {
        &self.0.types
    }
}

impl PartialEq for EventTypes {
    fn eq(&self, other: &Self) -> bool {
        Self::ptr_eq(self, other) || self.0.types == other.0.types
    }
}

impl std::fmt::Debug for EventTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.types.iter()).finish()
    }
}

impl From<Vec<EventType>> for EventTypes {
    fn from(types: Vec<EventType>) -> Self {
        Self::new(types)
    }
}

impl Serialize for EventTypes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.types.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventTypes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Vec::<EventType>::deserialize(d).map(Self::new)
    }
}

/// What appending an event of a type means beyond being logged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "semantics: an object with `terminal` or `wake`, or neither",
    deny_unknown_fields
)]
pub struct SemanticsSpec {
    /// Appending the event ends the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<TerminalSpec>,
    /// Appending the event wakes the process's wake target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<WakeSpec>,
}

/// Appending the event ends the process in `state`; the outcome is read by `await_output`.
///
/// The value `await_output` selects becomes the outcome as follows. A value that
/// reads as an outcome, with its fields and no others (`{"type": "success",
/// "value"}`, `{"type": "failure", "class", "code", "message", "raw"?}` or
/// `{"type": "cancelled", "message", "raw"?}`), is that outcome, and it must
/// end the process in `state` (else `invalid_outcome`). Any other value is
/// raw: `completed` succeeds with it as the value; `failed` fails with class
/// `process`, code `failed`, its text as the message (a string as it is,
/// anything else as JSON) and it as `raw`; `cancelled` is cancelled with its
/// text as the message and it as `raw` (a `null` gives an empty message and
/// no `raw`). Selecting nothing is `invalid_outcome`, as is a raw value on
/// cairn's own terminal types (`process.completed` and the rest take an
/// outcome only).
///
/// So `{"result": {"type": "success", "value": {"rows": 3}}}` read at
/// `/result` succeeds with `{"rows": 3}`, and a `failed` type's
/// `{"class": "ci", "code": "red", "message": "..."}` (no `type`) fails as
/// class `process`, code `failed`. A producer that wants its own failure
/// class and code selects a `{"type": "failure", ...}` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "terminal semantics: an object with `state` and `await_output`",
    deny_unknown_fields
)]
pub struct TerminalSpec {
    /// The terminal state the event ends the process in. A start may not
    /// declare `abandoned` (cairn's alone: `invalid_semantics`).
    pub state: TerminalState,
    /// Selects the value the outcome is read from (as `TerminalSpec` says);
    /// default: the whole payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub await_output: Option<Selector>,
}

/// Appending the event (when `when` selects a truthy value) wakes the wake target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "wake semantics: an object with `input`, and optionally `when` and `dedupe_key`",
    deny_unknown_fields
)]
pub struct WakeSpec {
    /// Wakes only when this selects a truthy value from the payload; default: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Selector>,
    /// Renders the wake's input text from the payload.
    pub input: Selector,
    /// How the wake's dedupe key is made.
    #[serde(default)]
    pub dedupe_key: DedupeKey,
}

/// How a wake's dedupe key is made.
// Read by hand (`crate::wire`), so that bad input is named in wire terms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DedupeKey {
    /// `{process_id}:{sequence}`: every event wakes once. Such a key is
    /// never the same key as one a selector or constant renders, whatever
    /// that one's text: its wake id is made in a namespace of its own.
    #[default]
    EventIdentity,
    /// Rendered from the payload; an event whose payload holds no value there
    /// (nothing, `null`, or a value that renders as `""`) wakes once by its
    /// identity, as [`DedupeKey::EventIdentity`]. A wake's id is made of its
    /// target scope and this key (SPEC §3): events of any process that render
    /// the same key wake that scope once.
    Selector(Selector),
    /// A literal: the target scope is woken once for this key, by the first
    /// event of any process that declares it (a wake's id is made of its
    /// target scope and its key, SPEC §3); acknowledging the wake does not
    /// free the key. Retention does: the key lives in the wake's row, which a
    /// prune of the process that wrote it (or, while pending, a delete of the
    /// target session) removes, so a later event wakes the scope again. For
    /// one wake per process, select a value that names it.
    Const(String),
}

/// Reads a value from a payload.
// Read by hand (`crate::wire`), so that bad input is named in wire terms.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Templates nest selectors: stop the schema walk from recursing forever.
#[cfg_attr(feature = "openapi", schema(no_recursion))]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// The whole payload.
    Payload,
    /// A JSON Pointer into the payload.
    Pointer(String),
    /// A literal.
    Const(Value),
    /// A string with `{field}` holes, each filled by a nested selector.
    Template {
        /// The text, with `{field}` holes.
        template: String,
        /// The selector that fills each hole.
        #[serde(default)]
        fields: BTreeMap<String, Selector>,
    },
    /// Whether a pointer resolves.
    Present(String),
}

const SELECTORS: &[&str] = &["payload", "pointer", "const", "template", "present"];

/// A template selector's body, as read.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a template: an object with `template` (text with `{field}` holes) and `fields` (a selector for each hole)"
)]
struct TemplateBody {
    template: String,
    #[serde(default)]
    fields: BTreeMap<String, Selector>,
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Read;
        impl<'de> serde::de::Visitor<'de> for Read {
            type Value = Selector;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a selector: `\"payload\"`, or an object of one key, one of `payload`, `pointer`, `const`, `template`, `present`",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Selector, E> {
                match v {
                    "payload" => Ok(Selector::Payload),
                    "pointer" | "const" | "template" | "present" => Err(E::custom(format!(
                        "the `{v}` selector takes a value: write it as {{\"{v}\": ...}}"
                    ))),
                    other => Err(E::unknown_variant(other, SELECTORS)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Selector, A::Error> {
                let key = crate::wire::variant_key(&mut map, "a selector", SELECTORS)?;
                let selector = match key.as_str() {
                    "payload" => {
                        map.next_value::<()>()?;
                        Selector::Payload
                    }
                    "pointer" => Selector::Pointer(map.next_value()?),
                    "const" => Selector::Const(map.next_value()?),
                    "template" => {
                        let body: TemplateBody = map.next_value()?;
                        Selector::Template {
                            template: body.template,
                            fields: body.fields,
                        }
                    }
                    "present" => Selector::Present(map.next_value()?),
                    other => return Err(serde::de::Error::unknown_variant(other, SELECTORS)),
                };
                crate::wire::no_second_key(map, "a selector", &key)?;
                Ok(selector)
            }
        }
        deserializer.deserialize_any(Read)
    }
}

const DEDUPE_KEYS: &[&str] = &["event_identity", "selector", "const"];

impl<'de> Deserialize<'de> for DedupeKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Read;
        impl<'de> serde::de::Visitor<'de> for Read {
            type Value = DedupeKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a dedupe key: `\"event_identity\"`, or an object of one key, one of `event_identity`, `selector`, `const`",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<DedupeKey, E> {
                match v {
                    "event_identity" => Ok(DedupeKey::EventIdentity),
                    "selector" | "const" => Err(E::custom(format!(
                        "the `{v}` dedupe key takes a value: write it as {{\"{v}\": ...}}"
                    ))),
                    other => Err(E::unknown_variant(other, DEDUPE_KEYS)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<DedupeKey, A::Error> {
                let key = crate::wire::variant_key(&mut map, "a dedupe key", DEDUPE_KEYS)?;
                let dedupe = match key.as_str() {
                    "event_identity" => {
                        map.next_value::<()>()?;
                        DedupeKey::EventIdentity
                    }
                    "selector" => DedupeKey::Selector(map.next_value()?),
                    "const" => DedupeKey::Const(map.next_value()?),
                    other => return Err(serde::de::Error::unknown_variant(other, DEDUPE_KEYS)),
                };
                crate::wire::no_second_key(map, "a dedupe key", &key)?;
                Ok(dedupe)
            }
        }
        deserializer.deserialize_any(Read)
    }
}

impl Selector {
    /// Check pointers are well formed and template fields exist.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Self::Payload | Self::Const(_) => Ok(()),
            Self::Pointer(p) | Self::Present(p) => {
                if p.is_empty() || p.starts_with('/') {
                    Ok(())
                } else {
                    Err(format!("JSON Pointer `{p}` must be empty or start with `/`"))
                }
            }
            Self::Template { template, fields } => {
                for sel in fields.values() {
                    sel.validate()?;
                }
                let mut rest = template.as_str();
                while let Some(open) = rest.find('{') {
                    let after = &rest[open + 1..];
                    let Some(close) = after.find('}') else { break };
                    let name = &after[..close];
                    if !fields.contains_key(name) {
                        return Err(format!("template hole `{{{name}}}` has no field selector"));
                    }
                    rest = &after[close + 1..];
                }
                // What a rendering would fill is fixed by the selector: past
                // the limit, every append of the type would be refused.
                let fills = self.fills();
                if fills > crate::select::MAX_TEMPLATE_HOLES {
                    return Err(format!(
                        "the template fills {fills} holes when it renders, nested ones included, over the limit of {}",
                        crate::select::MAX_TEMPLATE_HOLES
                    ));
                }
                Ok(())
            }
        }
    }

    /// How many holes one rendering fills, nested templates' included
    /// (saturating), counted without rendering: each field's count once.
    fn fills(&self) -> usize {
        let Self::Template { template, fields } = self else {
            return 0;
        };
        let each: BTreeMap<&str, usize> = fields.iter().map(|(k, v)| (k.as_str(), v.fills())).collect();
        let mut total = 0usize;
        let mut rest = template.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            if let Some(n) = each.get(&after[..close]) {
                total = total.saturating_add(1).saturating_add(*n);
            }
            rest = &after[close + 1..];
        }
        total
    }
}

/// Semantics resolved for one appended event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResolvedSemantics {
    /// The outcome, when the event ended the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Outcome>,
    /// The wake the event rendered, when it woke its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<ResolvedWake>,
}

/// A resolved wake: the rendered input and dedupe key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResolvedWake {
    /// The wake's input text.
    pub input: String,
    /// The key that makes a wake happen once per target.
    pub dedupe_key: String,
}

/// One entry of a process's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessEvent {
    /// The process the event belongs to.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub process_id: ProcessId,
    /// Starts at 1 and rises by one per process.
    pub sequence: u64,
    /// The declared event type.
    pub event_type: String,
    /// The payload, valid against the type's schema.
    pub payload: Value,
    /// What the event meant (its outcome, its wake), resolved when it was appended.
    #[serde(default, skip_serializing_if = "is_default_semantics")]
    pub semantics: ResolvedSemantics,
    /// When it was appended, in epoch milliseconds.
    pub occurred_at_ms: u64,
    /// The producer's replay key, when the append carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_key: Option<String>,
}

fn is_default_semantics(s: &ResolvedSemantics) -> bool {
    s.terminal.is_none() && s.wake.is_none()
}

/// A page of events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventPage {
    /// The events, in sequence order.
    pub events: Vec<ProcessEvent>,
    /// The sequence to pass as `after` for the next page; `None` at the end of the log.
    pub next_after: Option<u64>,
}

/// An append: a declared type, its payload, and optionally a replay key, a wake
/// target override and the lease that authorizes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// A type the process declared (or a core type).
    pub event_type: String,
    /// The payload, checked against the type's schema.
    #[serde(default)]
    pub payload: Value,
    /// A repeated append with the same key answers the first one and writes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_key: Option<String>,
    /// Overrides the record's wake target for this event's wake; on a type
    /// without wake semantics it is refused (`invalid_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_target: Option<SessionScope>,
    /// Fences the append: it commits only while this is the live lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

impl AppendRequest {
    /// An append of `payload` as `event_type`, with nothing optional set.
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        Self {
            event_type: event_type.into(),
            payload,
            replay_key: None,
            wake_target: None,
            lease: None,
        }
    }

    /// Make the append replay-safe under `key`.
    pub fn with_replay_key(mut self, key: impl Into<String>) -> Self {
        self.replay_key = Some(key.into());
        self
    }

    /// Wake `scope` instead of the record's wake target.
    pub fn with_wake_target(mut self, scope: SessionScope) -> Self {
        self.wake_target = Some(scope);
        self
    }

    /// Fence the append with `lease`.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// The answer of an append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendResult {
    /// The appended event (the original one on replay).
    pub event: ProcessEvent,
    /// True when a replay key matched an earlier append and nothing was written.
    pub replayed: bool,
    /// The wake delivery written with the event, if any (not repeated on replay or dedupe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<crate::model::WakeDelivery>,
}

/// Written when a cancellation is requested (the record keeps the request).
pub const CANCEL_REQUESTED: &str = "process.cancel_requested";
/// Written when a run starts waiting durably (for a signal or a timer).
pub const WAITING: &str = "process.waiting";
/// Written when a durable wait ends.
pub const RESUMED: &str = "process.resumed";
/// Written by a claim: a worker began (or began again) to run the process.
pub const STARTED: &str = "process.started";
/// Written when an abandon is requested.
pub const ABANDON_REQUESTED: &str = "process.abandon_requested";
/// The terminal event of a success.
pub const COMPLETED: &str = "process.completed";
/// The terminal event of a failure.
pub const FAILED: &str = "process.failed";
/// The terminal event of a cancellation.
pub const CANCELLED: &str = "process.cancelled";
/// The terminal event of an abandonment (written only by cairn).
pub const ABANDONED: &str = "process.abandoned";

/// The prefix of signal event types.
pub const SIGNAL_PREFIX: &str = "signal.";

/// The namespace of a session turn's journal (`turn.response`, `turn.delta`,
/// SPEC §15): on a `session_turn` process only the turn's run writes it,
/// under its lease (see [`crate::fold::prepare_append`]).
pub const TURN_PREFIX: &str = "turn.";

/// Core types only cairn's own operations write (claims, waits and resumptions,
/// cancellation and abandon requests, reconciliation); `append_event` refuses
/// them. A cancellation request appended as a plain event would be recorded
/// without what the cancel operation does beside it (waking a suspended run,
/// ending an unstarted process, reaching the children).
pub const RESERVED_FOR_CAIRN: &[&str] = &[
    STARTED,
    WAITING,
    RESUMED,
    CANCEL_REQUESTED,
    ABANDON_REQUESTED,
    ABANDONED,
];

/// Whether a name belongs to cairn's core namespaces: `process.*` (every
/// process) and `script.*` (the journal of script processes, SPEC §14).
/// Producers never declare them.
pub fn is_core_event_type(name: &str) -> bool {
    name.starts_with("process.") || name.starts_with(crate::script::SCRIPT_PREFIX)
}

/// The core event types every process has.
pub fn core_event_types() -> Vec<EventType> {
    let object = serde_json::json!({"type": "object"});
    let terminal = |name: &str, state: TerminalState| EventType {
        name: name.to_string(),
        payload_schema: serde_json::json!({"type": "object", "required": ["await_output"]}),
        semantics: SemanticsSpec {
            terminal: Some(TerminalSpec {
                state,
                await_output: Some(Selector::Pointer("/await_output".into())),
            }),
            wake: None,
        },
    };
    vec![
        EventType::plain(CANCEL_REQUESTED).with_schema(object.clone()),
        EventType::plain(WAITING).with_schema(serde_json::json!({"type": "object", "required": ["kind"]})),
        EventType::plain(RESUMED).with_schema(object.clone()),
        EventType::plain(STARTED).with_schema(object.clone()),
        EventType::plain(ABANDON_REQUESTED).with_schema(object),
        terminal(COMPLETED, TerminalState::Completed),
        terminal(FAILED, TerminalState::Failed),
        terminal(CANCELLED, TerminalState::Cancelled),
        terminal(ABANDONED, TerminalState::Abandoned),
    ]
}

/// The core terminal type that carries an outcome of this state.
pub fn terminal_event_type(state: TerminalState) -> &'static str {
    match state {
        TerminalState::Completed => COMPLETED,
        TerminalState::Failed => FAILED,
        TerminalState::Cancelled => CANCELLED,
        TerminalState::Abandoned => ABANDONED,
    }
}

/// Check a signal name: non-empty, ASCII letters, digits, `_` and `-`, at most 128 bytes.
pub fn validate_signal_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CairnError::InvalidSignalName(format!(
            "`{name}`: signal names are 1-128 ASCII letters, digits, `_` or `-`"
        )))
    }
}

/// `signal.{name}`, after checking the name.
pub fn signal_event_type(name: &str) -> Result<String> {
    validate_signal_name(name)?;
    Ok(format!("{SIGNAL_PREFIX}{name}"))
}

/// The replay key a signal id maps to.
pub fn signal_replay_key(name: &str, signal_id: &str) -> String {
    format!("signal:{name}:{signal_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_a_plain_array_on_the_wire_and_share_the_core_list() {
        let core = EventTypes::core();
        let json = serde_json::to_value(&core).unwrap();
        assert_eq!(json, serde_json::to_value(core_event_types()).unwrap());
        // A decoded core list is the shared one again; a longer list is its own.
        let back: EventTypes = serde_json::from_value(json).unwrap();
        assert!(EventTypes::ptr_eq(&back, &core));
        let mut more = core_event_types();
        more.push(EventType::plain("note"));
        let more = EventTypes::new(more);
        assert!(!EventTypes::ptr_eq(&more, &core));
        assert_ne!(more, core);
        assert_eq!(more.find("note").map(|t| t.name.as_str()), Some("note"));
        assert!(core.find("note").is_none());
    }

    #[test]
    fn the_key_is_a_content_address_of_the_list() {
        let a = EventTypes::new_unshared(core_event_types());
        let b = EventTypes::core();
        assert!(!EventTypes::ptr_eq(&a, &b));
        assert_eq!(a.key(), b.key());
        assert!(b.key().starts_with("types:sha256:"));
        let mut more = core_event_types();
        more.push(EventType::plain("note"));
        assert_ne!(EventTypes::new(more).key(), b.key());
    }
}
