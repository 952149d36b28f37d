//! Input validation, canonical JSON and content hashes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::events::{core_event_types, is_core_event_type, validate_signal_name, EventType, EventTypes, SIGNAL_PREFIX};
use crate::model::{EnvRef, EnvSpec, Registration, SessionScope};
use crate::{CairnError, Result};

/// Longest id (process, session, frame, owner, signal id, replay key) in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest event type name in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Largest event payload, process input or env spec, as serialized JSON.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most event types one registration may declare.
pub const MAX_EVENT_TYPES: usize = 256;

/// Check an id: non-empty, at most [`MAX_ID_BYTES`], no control characters.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(CairnError::InvalidId(format!("{what} must not be empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CairnError::InvalidId(format!(
            "{what} is {} bytes, over the {MAX_ID_BYTES} byte limit",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(CairnError::InvalidId(format!(
            "{what} `{}` contains a control character",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Check a session scope's ids.
pub fn validate_scope(scope: &SessionScope) -> Result<()> {
    validate_id("session id", &scope.session_id)?;
    if let Some(frame) = &scope.agent_frame_id {
        validate_id("agent frame id", frame)?;
    }
    Ok(())
}

/// Check a serialized size against [`MAX_PAYLOAD_BYTES`].
pub fn check_size(what: &str, value: &impl Serialize) -> Result<()> {
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD_BYTES {
        return Err(CairnError::PayloadTooLarge {
            what: what.to_string(),
            size,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

/// Check an event type name: 1..=128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_event_type_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_EVENT_TYPE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CairnError::InvalidEventTypeName(format!(
            "`{}`: names are 1-{MAX_EVENT_TYPE_BYTES} bytes of ASCII letters, digits, `.`, `_` or `-`",
            name.escape_debug()
        )))
    }
}

/// Validate a registration completely. On success the record's full type list
/// (core types first, then the producer's) is returned.
pub fn validate_registration(reg: &Registration) -> Result<EventTypes> {
    validate_id("process id", &reg.id)?;
    check_size("process input", &reg.input)?;
    match &reg.input {
        crate::model::ProcessInput::ToolCall { tool, .. } => validate_id("tool name", tool)?,
        crate::model::ProcessInput::Script {
            module_ref,
            process_name,
            ..
        } => {
            validate_id("script module_ref", module_ref)?;
            validate_id("script process_name", process_name)?;
        }
        crate::model::ProcessInput::SessionTurn { session, .. } => validate_scope(session)?,
        crate::model::ProcessInput::External { .. } => {}
    }
    if let crate::model::Originator::Session { scope } = &reg.provenance.originator {
        validate_scope(scope)?;
    }
    if let crate::model::Originator::Host { scope: Some(s) } = &reg.provenance.originator {
        validate_id("host scope", s)?;
    }
    if let Some(target) = &reg.wake_target {
        validate_scope(target)?;
    }
    if let Some(ext) = &reg.external_ref {
        validate_id("external_ref.backend", &ext.backend)?;
        validate_id("external_ref.id", &ext.id)?;
    }
    if reg.event_types.len() > MAX_EVENT_TYPES {
        return Err(CairnError::InvalidRequest(format!(
            "{} event types declared, at most {MAX_EVENT_TYPES} allowed",
            reg.event_types.len()
        )));
    }
    let mut seen = HashSet::new();
    for t in &reg.event_types {
        validate_event_type_name(&t.name)?;
        if is_core_event_type(&t.name) {
            return Err(CairnError::ReservedEventType(format!(
                "`{}`: the `process.` namespace belongs to cairn",
                t.name
            )));
        }
        if let Some(signal) = t.name.strip_prefix(SIGNAL_PREFIX) {
            validate_signal_name(signal)?;
            if t.semantics.terminal.is_some() {
                return Err(CairnError::InvalidSemantics {
                    event_type: t.name.clone(),
                    message: "signals cannot be terminal".into(),
                });
            }
        }
        if !seen.insert(t.name.as_str()) {
            return Err(CairnError::DuplicateEventType(t.name.clone()));
        }
        check_size("payload schema", &t.payload_schema)?;
        compiled_schema(&t.name, &t.payload_schema)?;
        validate_semantics(t)?;
    }
    if reg.event_types.is_empty() {
        return Ok(EventTypes::core());
    }
    let mut all = core_event_types();
    all.extend(reg.event_types.iter().cloned());
    Ok(EventTypes::new(all))
}

fn validate_semantics(t: &EventType) -> Result<()> {
    let bad = |message: String| CairnError::InvalidSemantics {
        event_type: t.name.clone(),
        message,
    };
    if let Some(term) = &t.semantics.terminal {
        if term.state == crate::model::TerminalState::Abandoned {
            return Err(bad("only cairn writes abandoned terminals".into()));
        }
        if let Some(sel) = &term.await_output {
            sel.validate().map_err(bad)?;
        }
    }
    if let Some(wake) = &t.semantics.wake {
        wake.input.validate().map_err(bad)?;
        if let Some(when) = &wake.when {
            when.validate().map_err(bad)?;
        }
        if let crate::events::DedupeKey::Selector(sel) = &wake.dedupe_key {
            sel.validate().map_err(bad)?;
        }
    }
    Ok(())
}

/// Serialize with object keys sorted at every depth and no whitespace.
pub fn canonical_json(value: &impl Serialize) -> Result<String> {
    let v = serde_json::to_value(value).map_err(|e| CairnError::InvalidRequest(e.to_string()))?;
    let mut out = String::new();
    write_canonical(&v, &mut out);
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The stable registration hash: SHA-256 of the registration's canonical JSON.
/// Producer event types are hashed in name order, so declaration order does not matter.
pub fn registration_hash(reg: &Registration) -> Result<String> {
    let mut reg = reg.clone();
    reg.event_types.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(format!("sha256:{}", sha256_hex(canonical_json(&reg)?.as_bytes())))
}

/// Hash of an (event type, payload) pair, used to compare replayed appends.
pub fn event_hash(event_type: &str, payload: &Value) -> Result<String> {
    let mut s = canonical_json(payload)?;
    s.push('\0');
    s.push_str(event_type);
    Ok(sha256_hex(s.as_bytes()))
}

/// The content address of an env spec and its stored bytes (canonical JSON).
pub fn env_ref_and_bytes(spec: &EnvSpec) -> Result<(EnvRef, Vec<u8>)> {
    check_size("env spec", spec)?;
    let json = canonical_json(spec)?;
    Ok((
        format!("process-env:sha256:{}", sha256_hex(json.as_bytes())),
        json.into_bytes(),
    ))
}

/// Decode stored env bytes, checking them against their address.
pub fn decode_env(env_ref: &str, bytes: &[u8]) -> Result<EnvSpec> {
    let expected = env_ref
        .strip_prefix("process-env:sha256:")
        .ok_or_else(|| CairnError::CorruptEnv {
            env_ref: env_ref.to_string(),
            message: "not a process-env:sha256 ref".into(),
        })?;
    if sha256_hex(bytes) != expected {
        return Err(CairnError::CorruptEnv {
            env_ref: env_ref.to_string(),
            message: "stored bytes do not match the content address".into(),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| CairnError::CorruptEnv {
        env_ref: env_ref.to_string(),
        message: e.to_string(),
    })
}

/// A compiled payload schema, shared by every process that declares the same schema.
pub type CompiledSchema = Arc<jsonschema::Validator>;

static SCHEMA_CACHE: Mutex<Option<HashMap<String, CompiledSchema>>> = Mutex::new(None);
const SCHEMA_CACHE_MAX: usize = 4096;

/// Whether a schema accepts every value without compiling it (`{}` or `true`).
pub fn accepts_anything(schema: &Value) -> bool {
    matches!(schema, Value::Bool(true)) || schema.as_object().is_some_and(|m| m.is_empty())
}

/// Compile (or fetch from the cache) a payload schema.
pub fn compiled_schema(event_type: &str, schema: &Value) -> Result<CompiledSchema> {
    let key = canonical_json(schema)?;
    if let Some(found) = SCHEMA_CACHE.lock().as_ref().and_then(|m| m.get(&key).cloned()) {
        return Ok(found);
    }
    let validator = jsonschema::validator_for(schema).map_err(|e| CairnError::InvalidSchema {
        event_type: event_type.to_string(),
        message: e.to_string(),
    })?;
    let compiled = Arc::new(validator);
    let mut guard = SCHEMA_CACHE.lock();
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= SCHEMA_CACHE_MAX {
        map.clear();
    }
    map.insert(key, compiled.clone());
    Ok(compiled)
}

/// Check a payload against a declared type's schema.
pub fn check_payload(t: &EventType, payload: &Value) -> Result<()> {
    check_size(&format!("payload of `{}`", t.name), payload)?;
    if accepts_anything(&t.payload_schema) {
        return Ok(());
    }
    let schema = compiled_schema(&t.name, &t.payload_schema)?;
    if let Err(err) = schema.validate(payload) {
        return Err(CairnError::SchemaViolation {
            event_type: t.name.clone(),
            message: err.to_string(),
        });
    }
    Ok(())
}
