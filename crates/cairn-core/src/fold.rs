//! The sans-IO heart of every backend: building a record from a registration,
//! preparing an append (type, schema, authority, fencing, semantics, wake) and
//! folding events into the record.
//!
//! Backends only store and look up; every rule about what an append means lives
//! here, so all backends agree by construction and the conformance suite checks
//! they persist what this module computes.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::events::{
    self, AppendRequest, DedupeKey, EventType, ProcessEvent, ResolvedSemantics, ResolvedWake, Selector,
    RESERVED_FOR_CAIRN, SIGNAL_PREFIX,
};
use crate::model::{
    AbandonEvidence, AbandonRequest, AbandonWriter, CancelRequest, ChildrenMode, Disposition, Lease, NodeIdentity,
    Outcome, OwnerIdentity, ProcessRecord, ProcessStatus, Registration, SessionScope, StartedFact, WaitState,
    WakeDelivery,
};
use crate::select::{render_text, truthy};
use crate::validate::{self, sha256_hex};
use crate::{CairnError, Result};

/// Who is appending: a caller through the public API, or cairn's own operations
/// (claims, abandon requests, reconciliation), which may write reserved types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// A caller of the public API: reserved types are refused.
    Caller,
    /// cairn's own operations.
    Cairn,
}

/// Validate a registration and build the record it starts as.
pub fn initial_record(reg: &Registration, now_ms: u64) -> Result<ProcessRecord> {
    let event_types = validate::validate_registration(reg)?;
    let registration_hash = validate::registration_hash(reg)?;
    Ok(ProcessRecord {
        id: reg.id.clone(),
        registration_hash,
        status: ProcessStatus::Running,
        outcome: None,
        disposition: reg.disposition,
        input: reg.input.clone(),
        provenance: reg.provenance.clone(),
        wake_target: reg.wake_target.clone(),
        event_types,
        env_ref: reg.env_ref.clone(),
        external_ref: reg.external_ref.clone(),
        wait: None,
        lease: None,
        abandon_request: None,
        cancel_request: None,
        started: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        terminal_at_ms: None,
        last_sequence: 0,
    })
}

/// The record as it was at registration: every folded field reset.
pub fn registration_state(record: &ProcessRecord) -> ProcessRecord {
    ProcessRecord {
        status: ProcessStatus::Running,
        outcome: None,
        wait: None,
        lease: None,
        abandon_request: None,
        cancel_request: None,
        started: None,
        updated_at_ms: record.created_at_ms,
        terminal_at_ms: None,
        last_sequence: 0,
        ..record.clone()
    }
}

/// The declared fields in which a start's record (`new`) differs from the
/// stored one's, by their names in a start request: what a
/// `registration_conflict` names. Empty when none of them tells (the hashes
/// differ all the same, say in a form the fields compare equal).
pub fn registration_differences(stored: &ProcessRecord, new: &ProcessRecord) -> Vec<&'static str> {
    // In any order, as the registration hash reads them.
    let sorted = |types: &crate::events::EventTypes| {
        let mut v = types.to_vec();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    [
        ("input", stored.input != new.input),
        ("disposition", stored.disposition != new.disposition),
        ("event_types", sorted(&stored.event_types) != sorted(&new.event_types)),
        ("wake_target", stored.wake_target != new.wake_target),
        ("env", stored.env_ref != new.env_ref),
        ("external_ref", stored.external_ref != new.external_ref),
        ("caused_by or originator", stored.provenance != new.provenance),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

/// Fold one event into a record. The only way a record changes after registration.
pub fn apply_event(record: &mut ProcessRecord, event: &ProcessEvent) {
    record.last_sequence = event.sequence;
    record.updated_at_ms = event.occurred_at_ms;
    let p = &event.payload;
    let str_at = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let u64_at = |k: &str| p.get(k).and_then(Value::as_u64);
    match event.event_type.as_str() {
        events::CANCEL_REQUESTED if record.cancel_request.is_none() => {
            record.cancel_request = Some(CancelRequest {
                reason: str_at("reason"),
                requested_at_ms: event.occurred_at_ms,
            });
        }
        events::WAITING => {
            record.wait = Some(WaitState {
                kind: str_at("kind").unwrap_or_default(),
                name: str_at("name"),
                ordinal: u64_at("ordinal"),
                until_ms: u64_at("until_ms"),
                ids: p
                    .get("ids")
                    .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok()),
                mode: p
                    .get("mode")
                    .and_then(|v| serde_json::from_value::<ChildrenMode>(v.clone()).ok()),
                signals: p
                    .get("signals")
                    .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok()),
                due_timer: p.get("due_timer").and_then(Value::as_bool).unwrap_or(false),
                woken: None,
                since_ms: event.occurred_at_ms,
            });
        }
        events::RESUMED => record.wait = None,
        t if t.starts_with(events::SIGNAL_PREFIX) && is_suspended(record) => {
            // A suspension for this name saw every earlier signal of it (see
            // `ops::wait`), so the next one is the one it waits for, unless
            // it came after the wait's deadline: the wait timed out first
            // (its claim, however late, says `timed_out`, as its run answers).
            let name = &t[events::SIGNAL_PREFIX.len()..];
            if let Some(w) = record.wait.as_mut() {
                let named = (w.kind == "signal" && w.name.as_deref() == Some(name))
                    || w.signals.as_ref().is_some_and(|s| s.iter().any(|n| n == name));
                let in_time = w.until_ms.is_none_or(|until| event.occurred_at_ms <= until);
                if named && in_time && w.woken.is_none() {
                    w.woken = Some("signal".into());
                }
            }
        }
        events::STARTED => {
            record.started = Some(StartedFact {
                owner_id: str_at("owner_id").unwrap_or_default(),
                fencing_token: u64_at("fencing_token").unwrap_or_default(),
                attempt: u64_at("attempt").unwrap_or_default(),
                at_ms: event.occurred_at_ms,
            });
        }
        events::ABANDON_REQUESTED if record.abandon_request.is_none() => {
            record.abandon_request = Some(AbandonRequest {
                requested_by: str_at("requested_by").unwrap_or_default(),
                requested_at_ms: event.occurred_at_ms,
                reason: str_at("reason").unwrap_or_default(),
            });
        }
        _ => {}
    }
    if let Some(outcome) = &event.semantics.terminal {
        record.status = outcome.state().status();
        record.outcome = Some(outcome.clone());
        record.wait = None;
        record.lease = None;
        record.terminal_at_ms = Some(event.occurred_at_ms);
    }
}

/// Fold a whole log over the registration state of `record`.
pub fn fold<'a>(record: &ProcessRecord, events: impl IntoIterator<Item = &'a ProcessEvent>) -> ProcessRecord {
    let mut folded = registration_state(record);
    for e in events {
        apply_event(&mut folded, e);
    }
    folded
}

/// Compare a stored record with the fold of its log, ignoring the lease
/// (coordination state, not history). `Err` names the first difference.
pub fn check_fold<'a>(
    stored: &ProcessRecord,
    events: impl IntoIterator<Item = &'a ProcessEvent>,
) -> std::result::Result<(), String> {
    let mut folded = fold(stored, events);
    let mut stored = stored.clone();
    folded.lease = None;
    stored.lease = None;
    if folded == stored {
        return Ok(());
    }
    let a = serde_json::to_value(&stored).unwrap_or(Value::Null);
    let b = serde_json::to_value(&folded).unwrap_or(Value::Null);
    let mut diffs = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                diffs.push(format!(
                    "{k}: stored {v} vs folded {}",
                    b.get(k).unwrap_or(&Value::Null)
                ));
            }
        }
    }
    Err(format!(
        "record `{}` is not the fold of its log: {}",
        stored.id,
        diffs.join("; ")
    ))
}

/// Look up a declared type; `signal.{name}` is implicitly declared for every valid name.
pub fn declared_type<'r>(record: &'r ProcessRecord, name: &str) -> Result<Cow<'r, EventType>> {
    if let Some(t) = record.event_types.find(name) {
        return Ok(Cow::Borrowed(t));
    }
    if let Some(signal) = name.strip_prefix(SIGNAL_PREFIX) {
        events::validate_signal_name(signal)?;
        return Ok(Cow::Owned(EventType::plain(name)));
    }
    Err(CairnError::UndeclaredEventType {
        process_id: record.id.clone(),
        event_type: name.to_string(),
    })
}

/// Check that `presented` is the live lease `stored` at `now_ms`.
pub fn check_lease(process_id: &str, stored: Option<&Lease>, presented: &Lease, now_ms: u64) -> Result<()> {
    match stored {
        Some(live)
            if live.process_id == presented.process_id
                && live.owner_id == presented.owner_id
                && live.lease_token == presented.lease_token
                && live.fencing_token == presented.fencing_token
                && live.expires_at_ms > now_ms =>
        {
            Ok(())
        }
        _ => Err(CairnError::LeaseFenced(process_id.to_string())),
    }
}

/// Check a lease time-to-live: at least 1 ms.
pub fn check_ttl(ttl_ms: u64) -> Result<()> {
    if ttl_ms == 0 {
        return Err(CairnError::InvalidRequest("lease ttl must be at least 1 ms".into()));
    }
    Ok(())
}

/// Validate a replay key.
pub fn validate_replay_key(req: &AppendRequest) -> Result<()> {
    if let Some(key) = &req.replay_key {
        validate::validate_id("replay key", key)?;
    }
    Ok(())
}

/// Decide a replayed append: the same (type, payload) returns the original event,
/// anything else is a [`CairnError::ReplayConflict`].
pub fn check_replay(original: &ProcessEvent, req: &AppendRequest) -> Result<()> {
    let same = original.event_type == req.event_type
        && validate::event_hash(&original.event_type, &original.payload)?
            == validate::event_hash(&req.event_type, &req.payload)?;
    if same {
        Ok(())
    } else {
        Err(CairnError::ReplayConflict {
            process_id: original.process_id.clone(),
            key: req.replay_key.clone().unwrap_or_default(),
        })
    }
}

/// The outcome a terminal payload yields.
fn resolve_outcome(t: &EventType, payload: &Value) -> Result<Option<Outcome>> {
    let Some(spec) = &t.semantics.terminal else {
        return Ok(None);
    };
    let bad = |message: String| CairnError::InvalidOutcome {
        event_type: t.name.clone(),
        message,
    };
    let selected = spec
        .await_output
        .as_ref()
        .unwrap_or(&Selector::Payload)
        .select(payload)?
        .ok_or_else(|| bad("the await_output selector found nothing in the payload".into()))?;
    let parsed = serde_json::from_value::<Outcome>(selected.clone());
    let outcome = match parsed {
        Ok(o) if o.state() == spec.state => o,
        Ok(o) => {
            return Err(bad(format!(
                "outcome `{}` does not match the type's terminal state `{}`",
                o.state().status().label(),
                spec.state.status().label()
            )))
        }
        Err(e) if events::is_core_event_type(&t.name) => return Err(bad(e.to_string())),
        Err(_) => match spec.state {
            crate::model::TerminalState::Completed => Outcome::Success { value: selected },
            // A `null` is no raw value: stored records drop it (an absent
            // field), and the record a write answers must equal the stored one.
            crate::model::TerminalState::Failed => Outcome::Failure {
                class: "process".into(),
                code: "failed".into(),
                message: render_text(Some(&selected)),
                raw: Some(selected).filter(|v| !v.is_null()),
            },
            crate::model::TerminalState::Cancelled => Outcome::Cancelled {
                message: render_text(Some(&selected)),
                raw: Some(selected).filter(|v| !v.is_null()),
            },
            crate::model::TerminalState::Abandoned => return Err(bad("only cairn writes abandoned terminals".into())),
        },
    };
    Ok(Some(outcome))
}

/// The wake an event resolves, and whether its dedupe key is the event's
/// identity (`{process_id}:{sequence}`) rather than a key the producer's
/// selector or constant rendered: the two are told apart in the wake id
/// ([`wake_id_of`]), so a rendered key that reads like another event's
/// identity never swallows that event's wake.
fn resolve_wake(
    t: &EventType,
    process_id: &str,
    sequence: u64,
    payload: &Value,
) -> Result<Option<(ResolvedWake, bool)>> {
    let Some(spec) = t.semantics.wake.as_ref() else {
        return Ok(None);
    };
    if let Some(when) = &spec.when {
        if !truthy(when.select(payload)?.as_ref()) {
            return Ok(None);
        }
    }
    let identity = || (format!("{process_id}:{sequence}"), true);
    let (dedupe_key, by_identity) = match &spec.dedupe_key {
        DedupeKey::EventIdentity => identity(),
        // A key the payload does not hold (missing, null, or rendering as
        // "") dedupes nothing: the event wakes once by its identity, rather
        // than every such event sharing "".
        DedupeKey::Selector(sel) => match render_text(sel.select(payload)?.as_ref()) {
            key if key.is_empty() => identity(),
            key => (key, false),
        },
        DedupeKey::Const(s) => (s.clone(), false),
    };
    let wake = ResolvedWake {
        input: render_text(spec.input.select(payload)?.as_ref()),
        dedupe_key,
    };
    // Each rendering has a payload's room as text, but the wake is stored
    // (in its delivery and in the event) as JSON, where a control character
    // takes six bytes.
    crate::validate::check_wake_rendering("the input a wake renders, as JSON", &wake.input)?;
    crate::validate::check_wake_rendering("the dedupe key a wake renders, as JSON", &wake.dedupe_key)?;
    Ok(Some((wake, by_identity)))
}

/// The wake id for a (target scope, dedupe key) pair, where the key is one
/// a producer's selector or constant rendered.
pub fn wake_id(scope: &SessionScope, dedupe_key: &str) -> String {
    wake_id_of(scope, dedupe_key, false)
}

/// The wake id of an event woken by its identity (`{process_id}:{sequence}`).
pub fn event_wake_id(scope: &SessionScope, process_id: &str, sequence: u64) -> String {
    wake_id_of(scope, &format!("{process_id}:{sequence}"), true)
}

/// A wake id: a digest of the target scope and the dedupe key. A key that is
/// an event's identity is digested in a namespace of its own (a leading NUL,
/// which no scope id holds), so no rendered key, whatever its text, shares
/// an id with an event's identity: each event woken by identity wakes once,
/// as its type declares. Ids of rendered keys are as they always were, so
/// keys stored before still deduplicate what comes after.
fn wake_id_of(scope: &SessionScope, dedupe_key: &str, by_identity: bool) -> String {
    let input = if by_identity {
        format!("\0event\n{}\n{}", scope.scope_id(), dedupe_key)
    } else {
        format!("{}\n{}", scope.scope_id(), dedupe_key)
    };
    let digest = sha256_hex(input.as_bytes());
    format!("wake:{}", &digest[..32])
}

/// A fully prepared append: what the backend must persist in one transaction.
#[derive(Clone, Debug)]
pub struct PreparedAppend {
    /// The event to store.
    pub event: ProcessEvent,
    /// The record after the event (lease cleared when the event is terminal).
    pub record: ProcessRecord,
    /// A wake delivery to insert unless one with its id exists.
    pub wake: Option<WakeDelivery>,
}

/// A `signal.{name}` append carries its signal id as the replay key
/// `signal:{name}:{signal_id}` ([`events::signal_replay_key`]), so every
/// signal is idempotent (SPEC §3), whichever route wrote it.
fn check_signal_id(req: &AppendRequest) -> Result<()> {
    let Some(name) = req.event_type.strip_prefix("signal.") else {
        return Ok(());
    };
    let prefix = events::signal_replay_key(name, "");
    let carries_id = req
        .replay_key
        .as_deref()
        .is_some_and(|k| k.len() > prefix.len() && k.starts_with(&prefix));
    if carries_id {
        return Ok(());
    }
    Err(CairnError::InvalidRequest(format!(
        "`{}` is a signal: send it with a signal id (`POST /v1/processes/{{id}}/signals/{name}`), \
         or append it with the replay key `{prefix}{{signal_id}}`",
        req.event_type
    )))
}

/// The replay keys cairn's own appends use are refused on any other append:
/// an event that took one first would make that cancellation, signal or
/// journal entry a `replay_conflict` for good (a process nobody could cancel
/// without a reason, a signal id nobody could send, a script or turn that
/// could not journal its next step). A cancellation's key (`cancel:…`) is
/// `process.cancel_requested`'s; a signal's (`signal:{name}:…`) is a signal's
/// ([`check_signal_id`] holds `signal.{name}` to its own name); on a script
/// or a session turn, the journal's keys (`script.…`, `turn.…`) are its run's,
/// under the lease; a key `{type}/…` naming a declared type is that type's
/// appends' (a shell's output batches).
pub(crate) fn check_own_replay_key(record: &ProcessRecord, req: &AppendRequest) -> Result<()> {
    let Some(key) = req.replay_key.as_deref() else {
        return Ok(());
    };
    let journal = match record.input {
        crate::model::ProcessInput::Script { .. } => Some(crate::script::SCRIPT_PREFIX),
        crate::model::ProcessInput::SessionTurn { .. } => Some(events::TURN_PREFIX),
        _ => None,
    };
    let whose = if key.starts_with(CANCEL_KEY_PREFIX) {
        (req.event_type != events::CANCEL_REQUESTED).then_some("a cancellation's")
    } else if key.starts_with(SIGNAL_KEY_PREFIX) {
        (!req.event_type.starts_with(events::SIGNAL_PREFIX)).then_some("a signal's")
    } else if journal.is_some_and(|prefix| key.starts_with(prefix)) {
        req.lease.is_none().then_some("the run's journal")
    } else if key
        .split_once('/')
        .is_some_and(|(t, _)| t != req.event_type && record.event_types.iter().any(|e| e.name == t))
    {
        // `{type}/…` is that type's (a shell run's output batches take
        // `shell.output/{run}/{n}`): another type's append taking it first
        // would refuse that batch for good.
        Some("another declared type's")
    } else {
        None
    };
    match whose {
        Some(whose) => Err(CairnError::InvalidRequest(format!(
            "the replay key `{key}` is of the form {whose} appends use, and a `{}` event may not take it: \
             choose another key",
            req.event_type
        ))),
        None => Ok(()),
    }
}

/// Prepare an append against the current record and stored lease. Replay keys
/// are checked by the caller first ([`check_replay`]); this checks everything
/// else and writes nothing.
pub fn prepare_append(
    record: &ProcessRecord,
    stored_lease: Option<&Lease>,
    req: &AppendRequest,
    authority: Authority,
    now_ms: u64,
) -> Result<PreparedAppend> {
    validate_replay_key(req)?;
    let t = declared_type(record, &req.event_type)?;
    check_signal_id(req)?;
    check_own_replay_key(record, req)?;
    if authority == Authority::Caller && RESERVED_FOR_CAIRN.contains(&req.event_type.as_str()) {
        return Err(CairnError::ReservedEventType(format!(
            "`{}` is written only by cairn's own operations",
            req.event_type
        )));
    }
    if req.event_type.starts_with(crate::script::SCRIPT_PREFIX) && req.lease.is_none() {
        return Err(CairnError::ReservedEventType(format!(
            "`{}` is the script journal: only the script's run writes it, under its lease",
            req.event_type
        )));
    }
    // A turn replays its journaled model answers instead of asking again, so
    // an answer appended by anyone else would be taken as the model's.
    if matches!(record.input, crate::model::ProcessInput::SessionTurn { .. })
        && req.event_type.starts_with(crate::events::TURN_PREFIX)
        && req.lease.is_none()
    {
        return Err(CairnError::ReservedEventType(format!(
            "`{}` is the session turn's journal: only the turn's run writes it, under its lease",
            req.event_type
        )));
    }
    validate::check_payload(&t, &req.payload)?;
    if let Some(scope) = &req.wake_target {
        validate::validate_scope(scope)?;
        // An override that could never take effect is refused, not dropped.
        if t.semantics.wake.is_none() {
            return Err(CairnError::InvalidRequest(format!(
                "`wake_target` takes effect only on an event type with wake semantics; `{}` has none",
                req.event_type
            )));
        }
    }
    if record.is_terminal() {
        return Err(CairnError::ended(record));
    }
    if let Some(lease) = &req.lease {
        check_lease(&record.id, stored_lease, lease, now_ms)?;
    }
    let sequence = record.last_sequence + 1;
    let terminal = resolve_outcome(&t, &req.payload)?;
    // A core terminal appended by hand ends the process as a completion
    // does, and a terminal is written once: its outcome is held to what
    // `complete_external` takes.
    if let Some(outcome) = terminal.as_ref().filter(|_| authority == Authority::Caller) {
        if events::is_core_event_type(&t.name) {
            check_completion_outcome(&record.id, outcome)?;
        }
    }
    if terminal.is_some()
        && authority == Authority::Caller
        && req.lease.is_none()
        && record.disposition != Disposition::ExternallyOwned
    {
        return Err(CairnError::TerminalNeedsAuthority(record.id.clone()));
    }
    let wake_sem = resolve_wake(&t, &record.id, sequence, &req.payload)?;
    let event = ProcessEvent {
        process_id: record.id.clone(),
        sequence,
        event_type: req.event_type.clone(),
        payload: req.payload.clone(),
        semantics: ResolvedSemantics {
            terminal,
            wake: wake_sem.as_ref().map(|(w, _)| w.clone()),
        },
        occurred_at_ms: now_ms.max(record.updated_at_ms),
        replay_key: req.replay_key.clone(),
    };
    let mut next = record.clone();
    apply_event(&mut next, &event);
    if event.semantics.terminal.is_none() {
        next.lease = record.lease.clone();
    }
    let wake = wake_sem.and_then(|(w, by_identity)| {
        let target = req.wake_target.clone().or_else(|| record.wake_target.clone())?;
        Some(WakeDelivery {
            wake_id: wake_id_of(&target, &w.dedupe_key, by_identity),
            target_session_id: target.session_id.clone(),
            target_scope: target,
            process_id: record.id.clone(),
            sequence,
            event_type: req.event_type.clone(),
            dedupe_key: w.dedupe_key,
            input: w.input,
            created_at_ms: event.occurred_at_ms,
        })
    });
    Ok(PreparedAppend {
        event,
        record: next,
        wake,
    })
}

/// The payload of a core terminal event carrying `outcome`.
pub fn terminal_payload(outcome: &Outcome, extra: Option<(&str, Value)>) -> Value {
    let mut p = json!({ "await_output": outcome });
    if let (Some((k, v)), Some(map)) = (extra, p.as_object_mut()) {
        map.insert(k.to_string(), v);
    }
    p
}

/// The append that ends a process with `outcome` through the core terminal types.
pub fn terminal_request(outcome: &Outcome) -> AppendRequest {
    AppendRequest::new(
        events::terminal_event_type(outcome.state()),
        terminal_payload(outcome, None),
    )
}

/// The `process.started` append for a new lease.
pub fn started_request(record: &ProcessRecord, lease: &Lease) -> AppendRequest {
    let attempt = record.started.as_ref().map_or(0, |s| s.attempt) + 1;
    AppendRequest::new(
        events::STARTED,
        json!({"owner_id": lease.owner_id, "fencing_token": lease.fencing_token, "attempt": attempt}),
    )
    .with_lease(lease.clone())
}

/// The prefix of a cancellation request's replay key.
const CANCEL_KEY_PREFIX: &str = "cancel:";

/// The prefix of a signal's replay key ([`events::signal_replay_key`]).
const SIGNAL_KEY_PREFIX: &str = "signal:";

/// The replay key of a cancellation request: one request per distinct reason.
pub fn cancel_replay_key(reason: Option<&str>) -> String {
    format!(
        "{CANCEL_KEY_PREFIX}{}",
        &sha256_hex(reason.unwrap_or("").as_bytes())[..16]
    )
}

/// Whether a cancellation request ends the process at once: nobody holds a live
/// lease, no owner-bound run has begun (a started owner-bound process ends only
/// through its owner or an abandon request), it is not suspended (a
/// suspended run is resumed to observe the request, SPEC §13), and it is not
/// a script that began: one woken but not yet claimed again (its `children`
/// wait ended by a child's end) or whose lease lapsed replays its journal
/// with the request in force, so its cleanup runs before it ends (SPEC §14).
pub fn cancels_at_once(record: &ProcessRecord, now_ms: u64) -> bool {
    record.disposition != Disposition::ExternallyOwned
        && !record.has_live_lease(now_ms)
        && !is_suspended(record)
        && (record.started.is_none() || record.disposition == Disposition::Rerunnable)
        && !(record.started.is_some() && matches!(record.input, crate::model::ProcessInput::Script { .. }))
}

/// Whether the record is suspended: a `rerunnable` run that waits (SPEC §13).
/// Its lease was released with the wait; `owner_bound` waits hold theirs.
pub fn is_suspended(record: &ProcessRecord) -> bool {
    record.disposition == Disposition::Rerunnable && record.wait.is_some() && !record.is_terminal()
}

/// When a claim may take the record, as far as its wait goes: `Some(0)` at
/// once (not suspended, woken, or cancellation requested), `Some(t)` once the
/// deadline `t` passes, `None` not until a write wakes it.
pub fn resumable_at(record: &ProcessRecord) -> Option<u64> {
    if !is_suspended(record) || record.cancel_request.is_some() {
        return Some(0);
    }
    let wait = record.wait.as_ref()?;
    if wait.woken.is_some() {
        return Some(0);
    }
    wait.until_ms
}

/// When the worklist may take a record that holds no live lease: at once
/// for a pending abandon request (a suspension holds no lease that could
/// lapse later, SPEC §5), else when a claim may resume it ([`resumable_at`]);
/// `None`: not until a write wakes it.
pub fn due_at(record: &ProcessRecord) -> Option<u64> {
    if is_abandon_candidate(record) {
        return Some(0);
    }
    resumable_at(record)
}

/// Why a claim at `now_ms` resumes a suspended record (the `reason` of its
/// `process.resumed`); `None` when it is not suspended or not yet resumable.
pub fn resume_reason(record: &ProcessRecord, now_ms: u64) -> Option<&'static str> {
    if !is_suspended(record) {
        return None;
    }
    let wait = record.wait.as_ref()?;
    if record.cancel_request.is_some() {
        Some("cancel_requested")
    } else if wait.woken.is_some() {
        Some(if wait.kind == "children" && wait.woken.as_deref() != Some("signal") {
            "children"
        } else {
            "signal"
        })
    } else if wait.until_ms.is_some_and(|t| t <= now_ms) {
        // A timer's due time (a timer's own, or one a script raced against
        // this wait) is `timer`; the wait's own deadline is `timed_out`.
        Some(if wait.kind == "timer" || wait.due_timer {
            "timer"
        } else {
            "timed_out"
        })
    } else {
        None
    }
}

/// The `process.resumed` a claim at `now_ms` appends to a suspended record.
pub fn resumed_request(record: &ProcessRecord, now_ms: u64) -> Option<AppendRequest> {
    let reason = resume_reason(record, now_ms)?;
    Some(resumed_for(record.wait.as_ref()?, reason))
}

/// The `process.resumed` that ends `wait` for `reason`: the reason and what
/// names the wait (kind, name, ordinal, deadline, children).
pub fn resumed_for(wait: &WaitState, reason: &str) -> AppendRequest {
    let mut payload = json!({"reason": reason, "kind": wait.kind});
    if let Some(map) = payload.as_object_mut() {
        if let Some(n) = &wait.name {
            map.insert("name".into(), json!(n));
        }
        if let Some(o) = wait.ordinal {
            map.insert("ordinal".into(), json!(o));
        }
        if let Some(u) = wait.until_ms {
            map.insert("until_ms".into(), json!(u));
        }
        if let Some(ids) = &wait.ids {
            map.insert("ids".into(), json!(ids));
        }
        if let Some(m) = wait.mode {
            map.insert("mode".into(), json!(m));
        }
        if let Some(names) = &wait.signals {
            map.insert("signals".into(), json!(names));
        }
    }
    AppendRequest::new(events::RESUMED, payload)
}

/// The `children` wait `parent` is suspended on that the end of `child` may
/// satisfy: a wait not yet ended that names `child`.
pub fn children_wait_for<'a>(parent: &'a ProcessRecord, child: &str) -> Option<&'a WaitState> {
    let wait = parent.wait.as_ref()?;
    let names = wait.ids.as_ref().is_some_and(|ids| ids.iter().any(|i| i == child));
    (is_suspended(parent) && wait.kind == "children" && wait.woken.is_none() && names).then_some(wait)
}

/// Whether a `children` wait is satisfied, `ended` telling which children
/// have ended: all of them (`all`), or one (`any`).
pub fn children_satisfied(wait: &WaitState, ended: impl Fn(&str) -> bool) -> bool {
    let ids = wait.ids.as_deref().unwrap_or_default();
    match wait.mode {
        Some(ChildrenMode::Any) => ids.iter().any(|i| ended(i)),
        _ => ids.iter().all(|i| ended(i)),
    }
}

/// Why a record may not be claimed by `owner_id` at `now_ms`, if it may not.
pub fn claim_refusal(record: &ProcessRecord, owner_id: &str, now_ms: u64) -> Option<CairnError> {
    let id = record.id.clone();
    if record.is_terminal() {
        return Some(CairnError::ended(record));
    }
    let own_live = record
        .lease
        .as_ref()
        .is_some_and(|l| l.owner_id == owner_id && l.expires_at_ms > now_ms);
    match record.disposition {
        Disposition::ExternallyOwned => {
            return Some(CairnError::NotClaimable {
                process_id: id,
                reason: "externally owned processes are never claimed".into(),
            })
        }
        Disposition::OwnerBound if record.started.is_some() && !own_live => {
            return Some(CairnError::NotClaimable {
                process_id: id,
                reason: "owner-bound and already started".into(),
            })
        }
        _ => {}
    }
    if record.abandon_request.is_some() {
        return Some(CairnError::NotClaimable {
            process_id: id,
            reason: "an abandon request is pending".into(),
        });
    }
    match resumable_at(record) {
        Some(t) if t <= now_ms => {}
        Some(t) => {
            return Some(CairnError::NotClaimable {
                process_id: id,
                reason: format!("suspended until {t}"),
            })
        }
        None => {
            return Some(CairnError::NotClaimable {
                process_id: id,
                reason: "suspended until its wait is satisfied".into(),
            })
        }
    }
    if let Some(l) = &record.lease {
        if l.owner_id != owner_id && l.expires_at_ms > now_ms {
            return Some(CairnError::LeaseHeld {
                process_id: id,
                expires_at_ms: l.expires_at_ms,
            });
        }
    }
    None
}

/// Whether a record belongs on the worklist as a run candidate (ignoring its
/// lease): a suspension that only a write can wake does not.
pub fn is_run_candidate(record: &ProcessRecord) -> bool {
    !record.is_terminal()
        && record.abandon_request.is_none()
        && resumable_at(record).is_some()
        && match record.disposition {
            Disposition::Rerunnable => true,
            Disposition::OwnerBound => record.started.is_none(),
            Disposition::ExternallyOwned => false,
        }
}

/// Whether a write that left `record` so may have given a driver something to
/// do: the process may be claimed (to run or to reconcile an abandon
/// request), or it ended (its end may wake a parent). A running externally
/// owned process with no abandon request gives none: no worker ever runs it.
pub fn may_be_work(record: &ProcessRecord) -> bool {
    record.is_terminal() || is_run_candidate(record) || is_abandon_candidate(record)
}

/// Whether a record belongs on the worklist for abandon reconciliation (ignoring its lease).
pub fn is_abandon_candidate(record: &ProcessRecord) -> bool {
    !record.is_terminal() && record.abandon_request.is_some()
}

/// Whether a pending abandon request may be reconciled now: the process is
/// running, the request exists, and no lease is live.
pub fn abandon_reconcilable(record: &ProcessRecord, lease: Option<&Lease>, now_ms: u64) -> bool {
    !record.is_terminal() && record.abandon_request.is_some() && lease.is_none_or(|l| l.expires_at_ms <= now_ms)
}

/// The outcome of a reconciled abandon request.
pub fn reconciled_abandon_outcome(record: &ProcessRecord, now_ms: u64) -> Outcome {
    let owner = record
        .lease
        .as_ref()
        .map(|l| OwnerIdentity::of(&l.owner_id, l.fencing_token))
        .or_else(|| {
            record
                .started
                .as_ref()
                .map(|s| OwnerIdentity::of(&s.owner_id, s.fencing_token))
        });
    Outcome::Abandoned {
        evidence: AbandonEvidence {
            writer: AbandonWriter::ReconciledRequest,
            owner,
            epoch_ms: now_ms,
        },
    }
}

/// The owner a sweep would look for (ignoring the lease and any liveness):
/// the node incarnation that started a running `owner_bound` process, when its
/// owner id names one. Such a process never runs again after its start, so
/// only that owner, or an abandonment, can end it. SQL stores index it
/// (`sweep_node`, `sweep_incarnation`).
pub fn sweep_owner(record: &ProcessRecord) -> Option<NodeIdentity> {
    if record.is_terminal() || record.disposition != Disposition::OwnerBound {
        return None;
    }
    NodeIdentity::parse_owner(&record.started.as_ref()?.owner_id)
}

/// The `abandoned {sweep}` outcome of `record` at `now_ms`, given the evidence
/// that `node` has registered incarnation `incarnation`: `Some` only when the
/// process is a sweep candidate ([`sweep_owner`]) started by an earlier
/// incarnation of that node, and its stored lease, if one is left, is that
/// incarnation's (the write is fenced against it: the terminal releases the
/// lease, so the old owner's every later write is refused). No clock decides
/// it: an incarnation is gone because its node started again, never because
/// time passed.
pub fn sweep_outcome(
    record: &ProcessRecord,
    lease: Option<&Lease>,
    node: &str,
    incarnation: u64,
    now_ms: u64,
) -> Option<Outcome> {
    let owner = sweep_owner(record)?;
    if owner.node != node || owner.incarnation >= incarnation {
        return None;
    }
    let started = record.started.as_ref()?;
    let identity = match lease {
        Some(l) if l.owner_id != started.owner_id => return None,
        Some(l) => OwnerIdentity::of(&l.owner_id, l.fencing_token),
        None => OwnerIdentity::of(&started.owner_id, started.fencing_token),
    };
    Some(Outcome::Abandoned {
        evidence: AbandonEvidence {
            writer: AbandonWriter::Sweep,
            owner: Some(identity),
            epoch_ms: now_ms,
        },
    })
}

/// Check an outcome a caller ends a process with (an external completion,
/// or a core terminal event appended by hand): not `abandoned` (cairn's own
/// word, after an abandon request), and a failure's `class`, `code` and
/// `message` and a cancellation's `message` not blank.
pub fn check_completion_outcome(id: &str, outcome: &Outcome) -> Result<()> {
    let refuse = |message: String| CairnError::InvalidOutcome {
        event_type: events::terminal_event_type(outcome.state()).to_string(),
        message: format!("process `{id}`: {message}"),
    };
    if matches!(outcome, Outcome::Abandoned { .. }) {
        return Err(refuse(
            "external completion cannot abandon; use an abandon request".into(),
        ));
    }
    let blank = |field: &str, value: &str| {
        value
            .trim()
            .is_empty()
            .then(|| refuse(format!("the outcome's `{field}` must not be empty")))
    };
    let problem = match outcome {
        Outcome::Failure {
            class, code, message, ..
        } => blank("class", class)
            .or_else(|| blank("code", code))
            .or_else(|| blank("message", message)),
        Outcome::Cancelled { message, .. } => blank("message", message),
        _ => None,
    };
    problem.map_or(Ok(()), Err)
}

/// The terminal append of an external completion, validated.
pub fn external_completion(id: &str, outcome: &Outcome, authority: &str) -> Result<AppendRequest> {
    check_completion_outcome(id, outcome)?;
    Ok(AppendRequest::new(
        events::terminal_event_type(outcome.state()),
        terminal_payload(outcome, Some(("completed_by", json!(authority)))),
    ))
}

/// Whether `record` already ended with the outcome the external completion
/// `request` ([`external_completion`]) asks for.
pub fn completes_as(record: &ProcessRecord, request: &AppendRequest) -> bool {
    let Some(outcome) = record.outcome.as_ref().filter(|_| record.is_terminal()) else {
        return false;
    };
    request.event_type == events::terminal_event_type(outcome.state())
        && serde_json::to_value(outcome).is_ok_and(|o| request.payload.get("await_output") == Some(&o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Selector, SemanticsSpec, WakeSpec};

    /// A dedupe key read from the payload dedupes events that carry the same
    /// key; an event whose payload lacks it (missing, null, or rendering as
    /// "") wakes by its own identity, so such events never share one key.
    #[test]
    fn a_dedupe_key_the_payload_lacks_falls_back_to_the_event() {
        let t = EventType::plain("note").with_semantics(SemanticsSpec {
            terminal: None,
            wake: Some(WakeSpec {
                when: None,
                input: Selector::Const("hi".into()),
                dedupe_key: DedupeKey::Selector(Selector::Pointer("/key".into())),
            }),
        });
        let key = |seq, payload: Value| {
            resolve_wake(&t, "p", seq, &payload)
                .expect("resolved")
                .map(|(w, by_identity)| (w.dedupe_key, by_identity))
        };
        assert_eq!(key(3, json!({"key": "k1"})), Some(("k1".into(), false)));
        assert_eq!(key(4, json!({"key": "k1"})), Some(("k1".into(), false)));
        assert_eq!(key(5, json!({})), Some(("p:5".into(), true)));
        assert_eq!(key(6, json!({"other": 1})), Some(("p:6".into(), true)));
        assert_eq!(key(7, json!({"key": null})), Some(("p:7".into(), true)));
        assert_eq!(key(8, json!({"key": ""})), Some(("p:8".into(), true)));
        // A rendered key that reads like an identity is still a rendered key.
        assert_eq!(key(9, json!({"key": "p:5"})), Some(("p:5".into(), false)));
    }

    /// A wake whose template renders past the payload limit (templates of
    /// templates double their text at every level) refuses the append,
    /// without rendering it.
    #[test]
    fn a_template_that_renders_past_the_limit_is_refused() {
        let mut input = Selector::Pointer("/x".into());
        for _ in 0..24 {
            input = Selector::Template {
                template: "{a}{a}{a}{a}".into(),
                fields: [("a".to_string(), input)].into_iter().collect(),
            };
        }
        let t = EventType::plain("note").with_semantics(SemanticsSpec {
            terminal: None,
            wake: Some(WakeSpec {
                when: None,
                input,
                dedupe_key: DedupeKey::EventIdentity,
            }),
        });
        let err = resolve_wake(&t, "p", 1, &json!({"x": "y"})).expect_err("refused");
        assert_eq!(err.code(), "payload_too_large", "{err:?}");
        // Holes that render nothing cost no room, but are counted: the same
        // template over a payload without `/x` is refused, not rendered at
        // 4^24 steps.
        let err = resolve_wake(&t, "p", 1, &json!({})).expect_err("refused");
        assert_eq!(err.code(), "payload_too_large", "{err:?}");
        // What a rendering fills is fixed by the selector: such a template is
        // refused where it is declared, counted without rendering it.
        let declared = t.semantics.wake.as_ref().expect("wake").input.validate();
        assert!(declared.is_err_and(|e| e.contains("holes")));
        let flat = |n: usize| Selector::Template {
            template: "{a}".repeat(n),
            fields: [("a".to_string(), Selector::Pointer("/x".into()))]
                .into_iter()
                .collect(),
        };
        assert!(flat(crate::select::MAX_TEMPLATE_HOLES).validate().is_ok());
        assert!(flat(crate::select::MAX_TEMPLATE_HOLES + 1).validate().is_err());
        // Two levels around 600 KiB render 600 KiB: within the limit, each
        // byte counted once.
        let big = "b".repeat(600 * 1024);
        let mut twice = Selector::Pointer("/x".into());
        for _ in 0..2 {
            twice = Selector::Template {
                template: "{a}".into(),
                fields: [("a".to_string(), twice)].into_iter().collect(),
            };
        }
        let rendered = twice.select(&json!({"x": big})).expect("within the limit");
        assert_eq!(rendered.and_then(|v| v.as_str().map(str::len)), Some(600 * 1024));
    }

    /// A wake's renderings are held to twice a payload each as stored: one
    /// rendered by a template repeating a hole over control characters
    /// (within its room as text, its JSON six times that) is refused; one
    /// that is all of a payload at the limit, a string or a value of quotes
    /// (escaped again, twice its size), is written.
    #[test]
    fn a_wake_rendering_is_held_to_twice_a_payload_as_json() {
        let amplify = Selector::Template {
            template: "{a}".repeat(50),
            fields: [("a".to_string(), Selector::Pointer("/text".into()))]
                .into_iter()
                .collect(),
        };
        let typed = |input: Selector, dedupe_key: DedupeKey| {
            EventType::plain("note").with_semantics(SemanticsSpec {
                terminal: None,
                wake: Some(WakeSpec {
                    when: None,
                    input,
                    dedupe_key,
                }),
            })
        };
        let controls = json!({"text": "\u{1}".repeat(20_900)});
        for t in [
            typed(amplify.clone(), DedupeKey::Selector(amplify.clone())),
            typed(amplify.clone(), DedupeKey::EventIdentity),
            typed(Selector::Const("hi".into()), DedupeKey::Selector(amplify.clone())),
        ] {
            let err = resolve_wake(&t, "p", 1, &controls).expect_err("refused");
            assert_eq!(err.code(), "payload_too_large", "{err:?}");
        }
        let text = "t".repeat(crate::validate::MAX_PAYLOAD_BYTES - r#"{"text":""}"#.len());
        let full = json!({ "text": text });
        crate::validate::check_size("payload", &full).expect("a payload at the limit");
        let t = typed(Selector::Pointer("/text".into()), DedupeKey::EventIdentity);
        let (wake, _) = resolve_wake(&t, "p", 1, &full).expect("written").expect("a wake");
        assert_eq!(wake.input.len(), text.len());
        let quotes = json!({ "items": vec![""; (crate::validate::MAX_PAYLOAD_BYTES - 16) / 3] });
        crate::validate::check_size("payload", &quotes).expect("a payload at the limit");
        let t = typed(
            Selector::Pointer("/items".into()),
            DedupeKey::Selector(Selector::Pointer("/items".into())),
        );
        resolve_wake(&t, "p", 1, &quotes).expect("written").expect("a wake");
    }
}
