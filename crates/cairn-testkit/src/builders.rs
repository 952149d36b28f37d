//! Registration, event type and request builders shared by the contracts.

use cairn_core::events::{DedupeKey, TerminalSpec, WakeSpec};
use cairn_core::{
    AppendRequest, Disposition, EventType, GrantDescriptor, Originator, ProcessInput, Provenance, Registration,
    Selector, SemanticsSpec, SessionScope, StartGrant, TerminalState,
};
use serde_json::{json, Value};

/// A plain type accepting any payload.
pub const NOTE: &str = "note";
/// A type whose payload must be `{"n": <integer>}`.
pub const PROGRESS: &str = "progress";
/// A type with wake semantics: input `/text`, one wake per event.
pub const NOTIFY: &str = "notify";
/// A producer terminal type: appending it completes the process with `/result`.
pub const FINISHED: &str = "finished";

/// The schema of [`PROGRESS`].
pub fn progress_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"]
    })
}

/// A wake type: `input` selects the wake text, `dedupe_key` makes its id.
pub fn wake_type(name: &str, input: Selector, dedupe_key: DedupeKey) -> EventType {
    EventType::plain(name).with_semantics(SemanticsSpec {
        terminal: None,
        wake: Some(WakeSpec {
            when: None,
            input,
            dedupe_key,
        }),
    })
}

/// A wake type that wakes only when `when` selects a truthy value.
pub fn conditional_wake_type(name: &str, when: Selector, input: Selector) -> EventType {
    EventType::plain(name).with_semantics(SemanticsSpec {
        terminal: None,
        wake: Some(WakeSpec {
            when: Some(when),
            input,
            dedupe_key: DedupeKey::EventIdentity,
        }),
    })
}

/// A producer terminal type ending the process in `state` with the value at `pointer`.
pub fn terminal_type(name: &str, state: TerminalState, pointer: &str) -> EventType {
    EventType::plain(name).with_semantics(SemanticsSpec {
        terminal: Some(TerminalSpec {
            state,
            await_output: Some(Selector::Pointer(pointer.to_string())),
        }),
        wake: None,
    })
}

/// The producer types every builder declares: [`NOTE`], [`PROGRESS`], [`NOTIFY`], [`FINISHED`].
pub fn standard_event_types() -> Vec<EventType> {
    vec![
        EventType::plain(NOTE),
        EventType::plain(PROGRESS).with_schema(progress_schema()),
        wake_type(NOTIFY, Selector::Pointer("/text".into()), DedupeKey::EventIdentity),
        terminal_type(FINISHED, TerminalState::Completed, "/result"),
    ]
}

/// An echo-like `tool_call` registration with the given disposition, originated by the host.
pub fn tool_call(id: &str, disposition: Disposition) -> Registration {
    Registration {
        id: id.to_string(),
        input: ProcessInput::ToolCall {
            tool: "echo".into(),
            args: json!({ "value": id }),
        },
        disposition,
        event_types: standard_event_types(),
        provenance: Provenance::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    }
}

/// `tool_call(id, Rerunnable)`.
pub fn rerunnable(id: &str) -> Registration {
    tool_call(id, Disposition::Rerunnable)
}

/// `tool_call(id, OwnerBound)`.
pub fn owner_bound(id: &str) -> Registration {
    tool_call(id, Disposition::OwnerBound)
}

/// An `external` registration (always `externally_owned`).
pub fn external(id: &str) -> Registration {
    Registration {
        id: id.to_string(),
        input: ProcessInput::External {
            metadata: json!({ "ticket": id }),
        },
        disposition: Disposition::ExternallyOwned,
        event_types: standard_event_types(),
        provenance: Provenance::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    }
}

/// A registration of each disposition for `id_prefix`: `-rerun`, `-bound`, `-ext`.
pub fn each_disposition(id_prefix: &str) -> Vec<Registration> {
    vec![
        rerunnable(&format!("{id_prefix}-rerun")),
        owner_bound(&format!("{id_prefix}-bound")),
        external(&format!("{id_prefix}-ext")),
    ]
}

/// Set the originator to a session scope.
pub fn originated_by(mut reg: Registration, scope: &SessionScope) -> Registration {
    reg.provenance.originator = Originator::session(scope.clone());
    reg
}

/// Set the wake target.
pub fn waking(mut reg: Registration, scope: &SessionScope) -> Registration {
    reg.wake_target = Some(scope.clone());
    reg
}

/// Add producer event types.
pub fn with_types(mut reg: Registration, types: impl IntoIterator<Item = EventType>) -> Registration {
    reg.event_types.extend(types);
    reg
}

/// A start grant for `scope` with a descriptor.
pub fn start_grant(scope: &SessionScope, kind: &str, label: &str) -> StartGrant {
    StartGrant {
        session_scope: scope.clone(),
        descriptor: descriptor(kind, label),
    }
}

/// A grant descriptor.
pub fn descriptor(kind: &str, label: &str) -> GrantDescriptor {
    GrantDescriptor {
        kind: Some(kind.to_string()),
        label: Some(label.to_string()),
    }
}

/// `{"n": n}` of type [`PROGRESS`].
pub fn progress(n: u64) -> AppendRequest {
    AppendRequest::new(PROGRESS, json!({ "n": n }))
}

/// A [`NOTE`] with any payload.
pub fn note(payload: Value) -> AppendRequest {
    AppendRequest::new(NOTE, payload)
}

/// A [`NOTIFY`] whose wake text is `text`.
pub fn notify(text: &str) -> AppendRequest {
    AppendRequest::new(NOTIFY, json!({ "text": text }))
}

/// A signal append: `signal.{name}` with the replay key of `signal_id`.
pub fn signal(name: &str, signal_id: &str, payload: Value) -> AppendRequest {
    AppendRequest::new(format!("signal.{name}"), payload)
        .with_replay_key(cairn_core::events::signal_replay_key(name, signal_id))
}

/// The session scope `session:{id}`.
pub fn session(id: &str) -> SessionScope {
    SessionScope::session(id)
}
