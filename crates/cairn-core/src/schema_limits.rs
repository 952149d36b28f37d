//! The limits the core enforces on request fields, as JSON Schema fragments:
//! one source for every document that describes a request (the server's
//! `/openapi.json` and the MCP tools' input schemas), so they cannot drift
//! apart. Each fragment states what [`crate::validate`] and its neighbours
//! check; the tests below hold them to those checks.
//!
//! `maxLength` counts characters, the core bytes: a limit is stated as
//! `maxLength` (every text within the byte limit fits) and in the
//! description, in bytes (a text of that many characters but more bytes is
//! still refused by the server).

use serde_json::{json, Map, Value};

use crate::validate::{
    FRAME_SEPARATOR, MAX_AUTHORITY_BYTES, MAX_GRANT_KIND_BYTES, MAX_GRANT_LABEL_BYTES, MAX_ID_BYTES,
};

/// Text without control characters (`char::is_control`: C0, DEL and C1), at
/// least one character long.
pub const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";

/// Text that is not blank: it holds a character that is not white space.
/// The core trims with `char::is_whitespace` (Unicode `White_Space`); the
/// class names those characters, as `\S` differs between regex dialects.
pub const NOT_BLANK: &str =
    "[^\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";

/// The longest signal name in bytes ([`crate::events::validate_signal_name`]).
pub const MAX_SIGNAL_NAME_BYTES: usize = 128;

/// A signal name's characters: ASCII letters, digits, `_` and `-`.
pub const SIGNAL_NAME_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// `description` and `said` as one text: `said` after it, as a sentence.
fn and_said(description: &str, said: &str) -> String {
    match description.trim_end_matches('.') {
        "" => said.to_string(),
        d => format!("{d}. {said}"),
    }
}

/// An id (process, session, frame, schedule, signal id, ...): 1 to
/// [`MAX_ID_BYTES`] bytes, no control characters, neither `.` nor `..`
/// ([`crate::validate::validate_id`]; `invalid_id` otherwise).
pub fn id(description: &str) -> Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": MAX_ID_BYTES,
        "pattern": NO_CONTROL,
        // A relative path segment, which no URL can name (`invalid_id`).
        "not": {"enum": [".", ".."]},
        "description": and_said(description, &format!("At most {MAX_ID_BYTES} bytes of UTF-8.")),
    })
}

/// [`id`], or `null` (the field's default).
pub fn nullable_id(description: &str) -> Value {
    let mut schema = id(description);
    schema["type"] = json!(["string", "null"]);
    schema
}

/// A session id: an id that does not hold [`FRAME_SEPARATOR`], which
/// separates a session from its frame in a scope id
/// ([`crate::validate::validate_session_id`]; `invalid_id` otherwise).
pub fn session_id(description: &str) -> Value {
    let mut schema = id(description);
    schema["not"] = json!({"anyOf": [{"enum": [".", ".."]}, {"type": "string", "pattern": FRAME_SEPARATOR}]});
    schema
}

/// A scope's agent frame id: an id, or `null` (the session itself).
pub fn agent_frame_id(description: &str) -> Value {
    json!({"oneOf": [{"type": "null"}, id(description)]})
}

/// A lens filter's scope: a session id, or one and a frame id joined by
/// [`FRAME_SEPARATOR`] (each at most [`MAX_ID_BYTES`]).
pub fn lens(description: &str) -> Value {
    json!({
        "type": "string", "minLength": 1,
        "maxLength": 2 * MAX_ID_BYTES + FRAME_SEPARATOR.len(),
        "pattern": NO_CONTROL,
        "not": {"enum": [".", ".."]},
        "description": format!(
            "{}. The session id and the frame id at most {MAX_ID_BYTES} bytes of UTF-8 each.",
            description.trim_end_matches('.')
        ),
    })
}

/// A signal name: 1 to [`MAX_SIGNAL_NAME_BYTES`] ASCII letters, digits, `_`
/// or `-` (`invalid_signal_name` otherwise). No description when
/// `description` is empty.
pub fn signal_name(description: &str) -> Value {
    let mut schema = json!({"type": "string", "minLength": 1, "maxLength": MAX_SIGNAL_NAME_BYTES,
                            "pattern": SIGNAL_NAME_PATTERN});
    if !description.is_empty() {
        schema["description"] = json!(description);
    }
    schema
}

/// A signal's idempotency key: an id, whose replay key
/// (`signal:{name}:{signal_id}`) is held to [`MAX_ID_BYTES`] too.
pub fn signal_id() -> Value {
    id(
        "Idempotency key of the signal. Its replay key, `signal:{name}:{signal_id}`, is held to 256 bytes \
         too: the id may take 248 bytes less the signal name's length (`invalid_id` past it).",
    )
}

/// Who a completion or an abandon request names as its author: held to an
/// id's form, up to [`MAX_AUTHORITY_BYTES`] (room for `session:` before a
/// session id), or null (the caller). No description.
pub fn authority() -> Value {
    let mut schema = nullable_id("");
    schema["maxLength"] = json!(MAX_AUTHORITY_BYTES);
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("description");
    }
    schema
}

/// State a byte limit the core enforces on the string schema `slot`: as
/// `maxLength` and in its description, in bytes (unless it says so already).
pub fn limit_bytes(slot: &mut Map<String, Value>, bytes: usize) {
    slot.insert("maxLength".into(), json!(bytes));
    let said = format!("At most {bytes} bytes of UTF-8.");
    let given = slot.get("description").and_then(Value::as_str).map(str::trim_end);
    if given.is_some_and(|d| d.to_lowercase().contains(&format!("at most {bytes} bytes"))) {
        return;
    }
    let description = match given {
        Some(d) if d.ends_with('.') => format!("{d} {said}"),
        Some(d) if !d.is_empty() => format!("{d}. {said}"),
        _ => said,
    };
    slot.insert("description".into(), json!(description));
}

/// Text of 1 to `bytes` bytes without control characters, in `slot` (a
/// field's derived schema, which keeps its type: an optional field stays
/// nullable).
fn short_text(slot: &mut Map<String, Value>, bytes: usize) {
    limit_bytes(slot, bytes);
    slot.insert("minLength".into(), json!(1));
    slot.insert("pattern".into(), json!(NO_CONTROL));
}

/// A module's name, in `slot`: 1 to [`crate::script::MAX_MODULE_NAME_BYTES`]
/// bytes without control characters, not all white space
/// ([`crate::script::check_module_name`]).
pub fn module_name(slot: &mut Map<String, Value>) {
    short_text(slot, crate::script::MAX_MODULE_NAME_BYTES);
    slot.insert("allOf".into(), json!([{"pattern": NOT_BLANK}]));
}

/// A module's source, in `slot`: not blank, and no NUL
/// ([`crate::script::check_source`]; `invalid_module` otherwise).
pub fn module_source(slot: &mut Map<String, Value>) {
    slot.insert("pattern".into(), json!(NOT_BLANK));
    slot.insert("not".into(), json!({"type": "string", "pattern": "\\u0000"}));
}

/// A grant descriptor's `kind`, in `slot`: 1 to [`MAX_GRANT_KIND_BYTES`]
/// bytes without control characters
/// ([`crate::validate::validate_grant_descriptor`]).
pub fn grant_kind(slot: &mut Map<String, Value>) {
    short_text(slot, MAX_GRANT_KIND_BYTES);
}

/// A grant descriptor's `label`, in `slot`: 1 to [`MAX_GRANT_LABEL_BYTES`]
/// bytes without control characters.
pub fn grant_label(slot: &mut Map<String, Value>) {
    short_text(slot, MAX_GRANT_LABEL_BYTES);
}

/// The schema at `pointer` in `schemas` replaced by `schema`, keeping the
/// description it had when `schema` gives none.
pub fn set(schemas: &mut Value, pointer: &str, schema: Value) {
    if let Some(slot) = schemas.pointer_mut(pointer) {
        let description = slot.get("description").cloned();
        *slot = schema;
        if let (Some(d), Some(obj)) = (description, slot.as_object_mut()) {
            obj.entry("description").or_insert(d);
        }
    }
}

/// State the limits on the core wire types' fields among `schemas` (schema
/// name to schema: the OpenAPI document's components, or a tool schema's
/// `$defs`): a start's id, a session scope's ids, a grant descriptor's
/// `kind` and `label`, an external ref's and a causal ref's ids. A schema
/// that is not there is left out.
pub fn constrain_wire_schemas(schemas: &mut Value) {
    set(
        schemas,
        "/StartRequest/properties/id",
        id("The process id (1-256 bytes, no control characters)."),
    );
    set(
        schemas,
        "/SessionScope/properties/session_id",
        session_id("The session (conversation) id."),
    );
    set(
        schemas,
        "/SessionScope/properties/agent_frame_id",
        agent_frame_id("The agent frame inside the session."),
    );
    set(
        schemas,
        "/ExternalRef/properties/backend",
        id("The other system's name."),
    );
    set(schemas, "/ExternalRef/properties/id", id("The work's id there."));
    set(
        schemas,
        "/CausalRef/properties/process_id",
        nullable_id("The parent process (alone, without `kind` and `id`)."),
    );
    set(
        schemas,
        "/CausalRef/properties/kind",
        nullable_id("What the cause is (`process`, `turn`, `tool_call`, ...)."),
    );
    set(
        schemas,
        "/CausalRef/properties/id",
        nullable_id("Its id in its own kind."),
    );
    for (field, constrain) in [
        ("kind", grant_kind as fn(&mut Map<String, Value>)),
        ("label", grant_label),
    ] {
        if let Some(slot) = schemas
            .pointer_mut(&format!("/GrantDescriptor/properties/{field}"))
            .and_then(Value::as_object_mut)
        {
            constrain(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GrantDescriptor;

    fn valid(schema: &Value, text: &str) -> bool {
        jsonschema::validator_for(schema)
            .expect("the fragment compiles")
            .is_valid(&json!(text))
    }

    /// What each fragment refuses, the core refuses, and what it takes at
    /// the byte limit the core takes.
    #[test]
    fn the_fragments_say_what_the_core_checks() {
        let long = "i".repeat(MAX_ID_BYTES);
        for (text, taken) in [
            ("a", true),
            (long.as_str(), true),
            (&format!("{long}i"), false),
            ("", false),
            (".", false),
            ("..", false),
            ("a\u{7}b", false),
            ("a\u{85}b", false),
        ] {
            let core = crate::validate::validate_id("id", text).is_ok();
            assert_eq!(core, taken, "the core, of {text:?}");
            assert_eq!(valid(&id("x"), text), taken, "the fragment, of {text:?}");
        }
        for (text, taken) in [("s", true), ("s/frame:f", false), ("..", false)] {
            assert_eq!(crate::validate::validate_session_id(text).is_ok(), taken, "{text}");
            assert_eq!(valid(&session_id(""), text), taken, "{text}");
        }
        let name = "n".repeat(MAX_SIGNAL_NAME_BYTES);
        for (text, taken) in [
            (name.as_str(), true),
            (&format!("{name}n"), false),
            ("a-b_C9", true),
            ("a.b", false),
            ("", false),
        ] {
            assert_eq!(crate::events::validate_signal_name(text).is_ok(), taken, "{text}");
            assert_eq!(valid(&signal_name(""), text), taken, "{text}");
        }
        let descriptor = |kind: &str| GrantDescriptor {
            kind: Some(kind.to_string()),
            label: Some(kind.to_string()),
        };
        let mut kind = Map::new();
        grant_kind(&mut kind);
        let mut label = Map::new();
        grant_label(&mut label);
        let (kind, label) = (Value::Object(kind), Value::Object(label));
        for (bytes, taken) in [(MAX_GRANT_KIND_BYTES, true), (MAX_GRANT_KIND_BYTES + 1, false)] {
            let text = "k".repeat(bytes);
            let core = crate::validate::validate_grant_descriptor(
                "d",
                &GrantDescriptor {
                    kind: Some(text.clone()),
                    label: None,
                },
            );
            assert_eq!(core.is_ok(), taken, "{bytes}");
            assert_eq!(valid(&kind, &text), taken, "{bytes}");
        }
        for (bytes, taken) in [(MAX_GRANT_LABEL_BYTES, true), (MAX_GRANT_LABEL_BYTES + 1, false)] {
            let text = "l".repeat(bytes);
            let core = crate::validate::validate_grant_descriptor(
                "d",
                &GrantDescriptor {
                    kind: None,
                    label: Some(text.clone()),
                },
            );
            assert_eq!(core.is_ok(), taken, "{bytes}");
            assert_eq!(valid(&label, &text), taken, "{bytes}");
        }
        for text in ["", "a\u{0}"] {
            assert!(crate::validate::validate_grant_descriptor("d", &descriptor(text)).is_err());
            assert!(!valid(&kind, text) && !valid(&label, text), "{text:?}");
        }
        let mut module = Map::new();
        module_name(&mut module);
        let module = Value::Object(module);
        let long = "m".repeat(crate::script::MAX_MODULE_NAME_BYTES);
        for (text, taken) in [
            (long.as_str(), true),
            (&format!("{long}m"), false),
            ("", false),
            ("   ", false),
            (" a ", true),
            ("a\tb", false),
        ] {
            assert_eq!(crate::script::check_module_name(Some(text)).is_ok(), taken, "{text:?}");
            assert_eq!(valid(&module, text), taken, "{text:?}");
        }
        let mut source = Map::new();
        module_source(&mut source);
        let source = Value::Object(source);
        for text in ["  \n", "export async function a() {}\u{0}"] {
            assert!(crate::script::check_source(text).is_err(), "{text:?}");
            assert!(!valid(&source, text), "{text:?}");
        }
        assert!(valid(&source, "export async function a() {}"));
    }

    /// A fragment states its byte limit in its description.
    #[test]
    fn limits_are_said_in_bytes() {
        assert_eq!(
            id("Process id.")["description"],
            "Process id. At most 256 bytes of UTF-8."
        );
        assert_eq!(id("")["description"], "At most 256 bytes of UTF-8.");
        let mut slot = Map::new();
        slot.insert("description".into(), json!("A label"));
        grant_label(&mut slot);
        assert_eq!(slot["description"], "A label. At most 1024 bytes of UTF-8.");
        let mut slot = Map::new();
        slot.insert("description".into(), json!("A kind: at most 64 bytes."));
        grant_kind(&mut slot);
        assert_eq!(slot["description"], "A kind: at most 64 bytes.", "said once");
        assert_eq!(slot["maxLength"], 64);
    }
}
