//! The one error type of cairn-core, with a stable machine code per variant.

use std::fmt;
use std::sync::Arc;

use crate::model::Tombstone;

/// Result alias used across cairn.
pub type Result<T, E = CairnError> = std::result::Result<T, E>;

/// Every error cairn reports. [`CairnError::code`] is the stable machine code
/// clients match on (the HTTP layer maps codes to statuses); the message is for
/// humans and may change. New variants (and codes) may be added, so a `match`
/// outside this crate needs a wildcard arm.
///
/// An error means the call changed nothing, except [`CairnError::OutcomeUnknown`]:
/// the write may or may not have been applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CairnError {
    /// A process, scope, signal or other id is empty, too long or holds control characters.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// A request could not be parsed or misses a required field (JSON shape errors).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An event type name is empty, too long or uses characters outside `[A-Za-z0-9._-]`.
    #[error("invalid event type name: {0}")]
    InvalidEventTypeName(String),
    /// Two declared event types share a name.
    #[error("duplicate event type: {0}")]
    DuplicateEventType(String),
    /// A producer declared or appended a type reserved for cairn itself.
    #[error("reserved event type: {0}")]
    ReservedEventType(String),
    /// A declared payload schema does not compile.
    #[error("invalid payload schema for `{event_type}`: {message}")]
    InvalidSchema {
        /// The type whose schema it is.
        event_type: String,
        /// Why it does not compile.
        message: String,
    },
    /// A signal name is empty or uses characters outside `[A-Za-z0-9_-]`.
    #[error("invalid signal name: {0}")]
    InvalidSignalName(String),
    /// A selector or semantics spec is malformed (for example a bad JSON Pointer).
    #[error("invalid semantics for `{event_type}`: {message}")]
    InvalidSemantics {
        /// The type whose semantics they are.
        event_type: String,
        /// What is wrong.
        message: String,
    },
    /// The id exists with a different registration.
    #[error("process `{id}` already exists with a different registration{}", differing(.differs))]
    RegistrationConflict {
        /// The process id.
        id: String,
        /// The fields of the start that differ from the stored one's
        /// (`input`, `disposition`, ...), when they could be told.
        differs: Vec<&'static str>,
    },
    /// No schedule with this id is stored.
    #[error("unknown schedule `{0}`")]
    UnknownSchedule(String),
    /// The schedule id exists with a different definition.
    #[error("schedule `{id}` already exists with a different definition: {differs} (delete it first to replace it)")]
    ScheduleConflict {
        /// The schedule id.
        id: String,
        /// What differs from the stored definition, in words.
        differs: String,
    },
    /// No process with this id was ever recorded (or it is not visible to the caller).
    #[error("unknown process `{0}`")]
    UnknownProcess(String),
    /// The process existed and was pruned; the tombstone says how it ended.
    #[error("process `{}` is no longer retained (ended {} at {}, pruned at {})", .0.id, .0.status.label(),
        utc(.0.terminal_at_ms), utc(.0.pruned_at_ms))]
    NoLongerRetained(Box<Tombstone>),
    /// The event type was not declared at registration.
    #[error(
        "event type `{event_type}` is not declared by process `{process_id}`: a process declares \
         its event types when it starts (the start request's `event_types`)"
    )]
    UndeclaredEventType {
        /// The process appended to.
        process_id: String,
        /// The type it does not declare.
        event_type: String,
    },
    /// The payload does not satisfy the declared schema.
    #[error("payload of `{event_type}` violates its schema: {message}")]
    SchemaViolation {
        /// The type whose schema the payload violates.
        event_type: String,
        /// How it violates it.
        message: String,
    },
    /// A payload, input or spec exceeds the size limit.
    #[error("{what} is {size} bytes, over the {limit} byte limit")]
    PayloadTooLarge {
        /// What is too large (a payload, an input, a spec).
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A replay key was reused with a different event (a signal's key,
    /// `signal:{name}:{signal_id}`, said as the signal id it is).
    #[error("{}", replay_conflict_message(process_id, key))]
    ReplayConflict {
        /// The process appended to.
        process_id: String,
        /// The replay key.
        key: String,
    },
    /// The process is terminal; nothing more can be appended or claimed.
    /// Holds the whole message: build it with [`CairnError::terminal`].
    #[error("{0}")]
    ProcessTerminal(String),
    /// Another owner holds an unexpired lease.
    #[error("process `{process_id}` is leased by another owner until {expires_at_ms}")]
    LeaseHeld {
        /// The leased process.
        process_id: String,
        /// When the other owner's lease expires unless renewed, in epoch milliseconds.
        expires_at_ms: u64,
    },
    /// The presented lease is not the live one (superseded, expired or released).
    #[error("lease on process `{0}` is not the live lease")]
    LeaseFenced(String),
    /// The process may not be claimed (externally owned, or owner-bound and already started).
    #[error("process `{process_id}` is not claimable: {reason}")]
    NotClaimable {
        /// The process.
        process_id: String,
        /// Why it may not be claimed.
        reason: String,
    },
    /// External completion was asked of a process cairn owns.
    #[error("process `{0}` is not externally owned")]
    NotExternallyOwned(String),
    /// A terminal event was appended without the authority to end the process.
    #[error("ending process `{0}` needs its live lease (or external ownership)")]
    TerminalNeedsAuthority(String),
    /// A terminal payload does not yield an outcome of the declared state.
    #[error("invalid outcome for `{event_type}`: {message}")]
    InvalidOutcome {
        /// The terminal event's type.
        event_type: String,
        /// What is wrong with the outcome.
        message: String,
    },
    /// A filter has an unknown key or a value of the wrong type.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// A page size or cursor is out of range.
    #[error("invalid page: {0}")]
    InvalidPage(String),
    /// No pending or acknowledged wake with this id for the session.
    #[error("unknown wake `{0}`")]
    UnknownWake(String),
    /// No environment artifact under this ref.
    #[error("unknown environment `{0}`")]
    UnknownEnv(String),
    /// The stored environment artifact does not match its content address.
    #[error("corrupt environment `{env_ref}`: {message}")]
    CorruptEnv {
        /// The environment's content address.
        env_ref: String,
        /// How it does not match.
        message: String,
    },
    /// The named tool is not in the tool registry. The one built-in tool a
    /// server may leave out, `shell`, is said with how a server offers it,
    /// wherever it is refused (an HTTP start, a script's `ctx.tool`, a worker).
    #[error("unknown tool `{0}`{hint}", hint = unknown_tool_hint(.0))]
    UnknownTool(String),
    /// A session turn names a model the server has not configured.
    #[error("unknown model `{0}`: configure it with `cairn serve --model NAME=BASE_URL`")]
    UnknownModel(String),
    /// No module is stored under this ref.
    #[error("unknown module `{0}`")]
    UnknownModule(String),
    /// A module source does not compile (the message names line and column).
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// A script start names a function its module does not export.
    #[error("module `{module_ref}` exports no function `{process_name}` ({})", exports_said(.exports))]
    UnknownExport {
        /// The module.
        module_ref: String,
        /// The name asked for.
        process_name: String,
        /// The functions the module does export (the message names the first few).
        exports: Vec<String>,
    },
    /// A start asked for a disposition its input cannot have (a script is `rerunnable`; only `external` input is `externally_owned`).
    #[error("invalid disposition: {0}")]
    InvalidDisposition(String),
    /// The wait ended by timeout (awaiter helpers that take a deadline).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The storage backend failed, or holds data cairn cannot read; nothing was
    /// changed. Build it with [`CairnError::storage`] or [`CairnError::storage_caused_by`].
    #[error("storage error: {message}")]
    Storage {
        /// What failed, complete on its own (clients see only this).
        message: String,
        /// The backend's own error, when there is one (for logs and downcasting).
        #[source]
        source: Option<ErrorSource>,
    },
    /// The operation was not done and may succeed if retried (for example the
    /// database is unreachable, or a runtime is shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied: the connection broke after the
    /// commit was sent, so its reply was lost. Read the state it changes to find
    /// out before retrying.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// The underlying error of a [`CairnError::Storage`]: shared, so the error
/// stays `Clone`. Two sources compare equal when their messages do.
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync>);

impl ErrorSource {
    /// Wrap `err`.
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// The wrapped error, to downcast (`source.get().downcast_ref::<T>()`).
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for ErrorSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

/// [`CairnError::ReplayConflict`] in words: a signal's key (only a signal
/// event may take one) as the signal id the caller gave, any other as the
/// replay key it is.
fn replay_conflict_message(process_id: &str, key: &str) -> String {
    match key.strip_prefix("signal:").and_then(|rest| rest.split_once(':')) {
        Some((name, signal_id)) => format!(
            "signal id `{signal_id}` of `{name}` was already sent to process `{process_id}` with another payload"
        ),
        None => format!("replay key `{key}` of process `{process_id}` was used with a different event"),
    }
}

impl CairnError {
    /// `process_terminal` for the process `id`.
    pub fn terminal(id: &str) -> Self {
        Self::ProcessTerminal(format!("process `{id}` is terminal"))
    }

    /// `process_terminal` for `record`, which has ended: says how
    /// (`process `x` already ended (cancelled)`), so a caller need not read
    /// the record again to learn it.
    pub fn ended(record: &crate::model::ProcessRecord) -> Self {
        Self::ProcessTerminal(format!(
            "process `{}` already ended ({})",
            record.id,
            record.status.label()
        ))
    }

    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidId(_) => "invalid_id",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidEventTypeName(_) => "invalid_event_type_name",
            Self::DuplicateEventType(_) => "duplicate_event_type",
            Self::ReservedEventType(_) => "reserved_event_type",
            Self::InvalidSchema { .. } => "invalid_schema",
            Self::InvalidSignalName(_) => "invalid_signal_name",
            Self::InvalidSemantics { .. } => "invalid_semantics",
            Self::RegistrationConflict { .. } => "registration_conflict",
            Self::UnknownProcess(_) => "unknown_process",
            Self::UnknownSchedule(_) => "unknown_schedule",
            Self::ScheduleConflict { .. } => "schedule_conflict",
            Self::NoLongerRetained(_) => "no_longer_retained",
            Self::UndeclaredEventType { .. } => "undeclared_event_type",
            Self::SchemaViolation { .. } => "schema_violation",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::ReplayConflict { .. } => "replay_conflict",
            Self::ProcessTerminal(_) => "process_terminal",
            Self::LeaseHeld { .. } => "lease_held",
            Self::LeaseFenced(_) => "lease_fenced",
            Self::NotClaimable { .. } => "not_claimable",
            Self::NotExternallyOwned(_) => "not_externally_owned",
            Self::TerminalNeedsAuthority(_) => "terminal_needs_authority",
            Self::InvalidOutcome { .. } => "invalid_outcome",
            Self::InvalidFilter(_) => "invalid_filter",
            Self::InvalidPage(_) => "invalid_page",
            Self::UnknownWake(_) => "unknown_wake",
            Self::UnknownEnv(_) => "unknown_env",
            Self::CorruptEnv { .. } => "corrupt_env",
            Self::UnknownTool(_) => "unknown_tool",
            Self::UnknownModel(_) => "unknown_model",
            Self::UnknownModule(_) => "unknown_module",
            Self::InvalidModule(_) => "invalid_module",
            Self::UnknownExport { .. } => "unknown_export",
            Self::InvalidDisposition(_) => "invalid_disposition",
            Self::Timeout(_) => "timeout",
            Self::Storage { .. } => "storage",
            Self::Unavailable(_) => "unavailable",
            Self::OutcomeUnknown(_) => "outcome_unknown",
        }
    }

    /// Whether the error is the caller's (bad input or a state conflict) rather
    /// than the system's. Client errors never changed anything.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::Storage { .. } | Self::Unavailable(_) | Self::OutcomeUnknown(_)
        )
    }

    /// A storage failure described by `message`, with no underlying error.
    pub fn storage(message: impl fmt::Display) -> Self {
        Self::Storage {
            message: message.to_string(),
            source: None,
        }
    }

    /// A storage failure described by `message` (which should say what `source`
    /// says: clients see only the message), keeping `source` as its cause.
    pub fn storage_caused_by(
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Storage {
            message: message.to_string(),
            source: Some(ErrorSource::new(source)),
        }
    }
}

/// Epoch milliseconds as people read them (`2026-12-05T18:40:12.345Z`); the
/// milliseconds themselves where they name no time chrono can show.
fn utc(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// What an unknown tool's message adds: for `shell`, the one built-in tool
/// a server may leave out, how a server offers it.
fn unknown_tool_hint(tool: &str) -> &'static str {
    if tool == "shell" {
        ": this server runs no shell commands; `cairn serve --allow-shell` offers the `shell` tool"
    } else {
        ""
    }
}

/// The most exports an `unknown_export` message names.
const EXPORTS_SAID: usize = 20;

/// A module's exports as an `unknown_export` message names them: the first
/// [`EXPORTS_SAID`], then how many more there are.
fn exports_said(exports: &[String]) -> String {
    if exports.is_empty() {
        return "it exports none".into();
    }
    let named: Vec<String> = exports.iter().take(EXPORTS_SAID).map(|e| format!("`{e}`")).collect();
    let more = exports.len().saturating_sub(EXPORTS_SAID);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("its exports: {}{tail}", named.join(", "))
}

/// `: its input and wake_target differ` for a registration conflict's message.
fn differing(fields: &[&str]) -> String {
    match fields {
        [] => String::new(),
        [one] => format!(": its {one} differs"),
        [init @ .., last] => format!(": its {} and {last} differ", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_signal_ids_conflict_is_said_as_a_signal_id() {
        let conflict = |key: &str| CairnError::ReplayConflict {
            process_id: "x1".into(),
            key: key.into(),
        };
        let signal = conflict("signal:go:s1");
        assert_eq!(signal.code(), "replay_conflict");
        assert_eq!(
            signal.to_string(),
            "signal id `s1` of `go` was already sent to process `x1` with another payload"
        );
        // A signal id may itself hold a colon: the name cannot.
        assert_eq!(
            conflict("signal:go:a:b").to_string(),
            "signal id `a:b` of `go` was already sent to process `x1` with another payload"
        );
        assert_eq!(
            conflict("step-3").to_string(),
            "replay key `step-3` of process `x1` was used with a different event"
        );
    }

    #[test]
    fn an_unknown_export_names_the_modules_exports_up_to_a_bound() {
        let unknown = |exports: Vec<String>| CairnError::UnknownExport {
            module_ref: "module:sha256:ab".into(),
            process_name: "Child".into(),
            exports,
        };
        let e = unknown(vec!["child".into(), "clocky".into()]);
        assert_eq!(e.code(), "unknown_export");
        assert_eq!(
            e.to_string(),
            "module `module:sha256:ab` exports no function `Child` (its exports: `child`, `clocky`)"
        );
        let many: Vec<String> = (0..23).map(|i| format!("f{i:02}")).collect();
        let said = unknown(many).to_string();
        assert!(said.ends_with("`f18`, `f19` and 3 more)"), "{said}");
        assert!(!said.contains("`f20`"), "{said}");
        assert_eq!(said.matches('`').count(), 2 * (2 + 20), "{said}");
        let exactly: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
        assert!(unknown(exactly).to_string().ends_with("`f19`)"));
    }

    #[test]
    fn an_undeclared_event_type_says_where_types_are_declared() {
        let e = CairnError::UndeclaredEventType {
            process_id: "p1".into(),
            event_type: "progress".into(),
        };
        assert_eq!(e.code(), "undeclared_event_type");
        assert_eq!(
            e.to_string(),
            "event type `progress` is not declared by process `p1`: a process declares its event types \
             when it starts (the start request's `event_types`)"
        );
    }

    #[test]
    fn storage_keeps_its_source_through_a_clone() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed");
        let err = CairnError::storage_caused_by("sqlite: pipe closed", io).clone();
        assert_eq!(err.code(), "storage");
        assert_eq!(err.to_string(), "storage error: sqlite: pipe closed");
        let source = err.source().expect("the source is kept");
        assert_eq!(source.to_string(), "pipe closed");
        let CairnError::Storage { source: Some(kept), .. } = &err else {
            panic!("a storage error with a source: {err:?}");
        };
        let io = kept
            .get()
            .downcast_ref::<std::io::Error>()
            .expect("downcasts to the original");
        assert_eq!(io.kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn storage_without_a_source_has_none() {
        let err = CairnError::storage("no such table");
        assert!(err.source().is_none());
        assert_eq!(err, CairnError::storage("no such table"));
        assert_ne!(err, CairnError::storage_caused_by("no such table", std::fmt::Error));
    }

    #[test]
    fn system_errors_have_their_own_codes() {
        let unknown = CairnError::OutcomeUnknown("commit reply lost".into());
        assert_eq!(unknown.code(), "outcome_unknown");
        assert!(!unknown.is_client_error());
        assert_eq!(CairnError::Unavailable("down".into()).code(), "unavailable");
        assert!(!CairnError::storage("x").is_client_error());
        assert!(CairnError::UnknownProcess("p".into()).is_client_error());
    }
}
