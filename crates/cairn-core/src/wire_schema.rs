//! Schemas of wire fields the derive cannot say (a field held as a JSON
//! `Value`, a struct whose fields go together): what the server takes and
//! what records hold, for the OpenAPI document and the MCP tools alike.

use serde_json::{json, Value};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{Object, Schema, SchemaType};
use utoipa::openapi::RefOr;

/// Text that is not blank: it holds a character that is not white space
/// (`char::is_whitespace`, Unicode `White_Space`, named one by one: `\S`
/// differs between regex dialects).
const NOT_BLANK: &str =
    "[^\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";

/// `schema`, a JSON Schema object, carried whole: utoipa's model has no
/// room for some of it (a `oneOf` beside `properties`), so its keys ride
/// as the schema object's own, which it writes out as they are.
fn raw(schema: Value) -> RefOr<Schema> {
    let mut object = Object::with_type(SchemaType::AnyValue);
    if let Value::Object(fields) = schema {
        object.extensions = Some(Extensions::from_iter(fields));
    }
    RefOr::T(Schema::Object(object))
}

/// A `session_turn`'s `input`: the user's message, or the conversation so
/// far. A start gives a non-blank string or at least one message with a
/// `role` (`system`, `user` or `assistant`) and a string `content`; a record
/// keeps what its start gave (a turn started earlier may hold other roles).
pub(crate) fn turn_input() -> RefOr<Schema> {
    raw(json!({
        "description": "The user's message (a string), or the conversation so far (an array of messages, \
                        each with a `role` and a `content`; a start gives the roles `system`, `user` and \
                        `assistant`, and a string `content`).",
        "oneOf": [
            {"type": "string", "pattern": NOT_BLANK},
            {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role"],
                "properties": {"role": {"type": "string"}},
            }},
        ],
    }))
}

/// A `session_turn`'s `output_contract`: `{"type": "text"}` (the default,
/// also when null) or `{"type": "json_schema", "schema", "repair_attempts"?}`.
pub(crate) fn output_contract() -> RefOr<Schema> {
    raw(json!({
        "description": "What the turn's output must satisfy: `{\"type\": \"text\"}` (the default, also when \
                        null or left out) or `{\"type\": \"json_schema\", \"schema\": {...}}`, a JSON Schema \
                        the answer is checked against, with `repair_attempts` (default 2) asks to fix an \
                        answer that fails it.",
        "oneOf": [
            {"type": "null"},
            {"type": "object", "additionalProperties": false, "required": ["type"],
             "properties": {"type": {"type": "string", "enum": ["text"]}}},
            {"type": "object", "additionalProperties": false, "required": ["type", "schema"],
             "properties": {
                 "type": {"type": "string", "enum": ["json_schema"]},
                 "schema": {"type": ["object", "boolean"]},
                 "repair_attempts": {"type": "integer", "minimum": 0},
             }},
        ],
    }))
}

/// The forms a start takes of a turn's `input` (its `oneOf`): a non-blank
/// string, or at least one message of a role a start gives, with a string
/// `content` and, beside it, only a string `name` (each is sent as it is).
/// One copy for the OpenAPI document's `StartInput` and MCP's `process_start`.
pub fn turn_start_input_forms() -> Value {
    json!([
        {"type": "string", "pattern": NOT_BLANK},
        {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"],
         "additionalProperties": false,
         "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"},
                        "name": {"type": "string", "description": "The participant's name, sent with the message."}}}},
    ])
}

/// The forms a start takes of a turn's `output_contract` (its `oneOf`):
/// none (`text`), `text`, or `json_schema` with an object schema and at
/// most [`crate::TURN_MAX_REPAIR_ATTEMPTS`] repairs. One copy, as
/// [`turn_start_input_forms`].
pub fn turn_start_contract_forms() -> Value {
    let most = crate::TURN_MAX_REPAIR_ATTEMPTS;
    json!([
        {"type": "null"},
        {"type": "object", "additionalProperties": false, "required": ["type"],
         "properties": {"type": {"type": "string", "enum": ["text"]}}},
        {"type": "object", "additionalProperties": false, "required": ["type", "schema"],
         "properties": {"type": {"type": "string", "enum": ["json_schema"]},
                        "schema": {"type": "object"},
                        "repair_attempts": {"type": "integer", "minimum": 0, "maximum": most,
                                            "description": format!("How many times a violation goes back to the model (default 2; 0 to {most}).")}}},
    ])
}

/// A declared type's `payload_schema`: a JSON Schema, an object or a
/// boolean (`invalid_schema` otherwise, `null` included).
pub(crate) fn payload_schema() -> RefOr<Schema> {
    raw(json!({
        "type": ["object", "boolean"],
        "description": "A JSON Schema (an object or a boolean) for the payload; `{}` (the default) accepts \
                        anything.",
    }))
}

/// A [`crate::model::CausalRef`]: `{"process_id"}` alone or `{"kind", "id"}`
/// (`invalid_request` otherwise, `{}` included); a field given as null is
/// a field left out.
pub(crate) fn causal_ref() -> RefOr<Schema> {
    raw(json!({
        "type": "object",
        "additionalProperties": false,
        "description": "What caused a process: its parent process (`{\"process_id\"}`, SPEC §13), or any \
                        other cause as `{\"kind\", \"id\"}` (a turn, a tool call; `{\"kind\": \"process\", \
                        \"id\"}` names a parent too). One form or the other: `{}`, or fields of both, is \
                        refused; a field given as null is one left out.",
        "properties": {
            "process_id": {"type": ["string", "null"], "description": "The parent process (SPEC §13); alone, without `kind` and `id`."},
            "kind": {"type": ["string", "null"], "description": "What the cause is (`process`, `turn`, `tool_call`, ...), with `id`."},
            "id": {"type": ["string", "null"], "description": "Its id in its own kind, with `kind`."},
        },
        "oneOf": [
            {"required": ["process_id"],
             "properties": {"process_id": {"type": "string"}, "kind": {"type": "null"}, "id": {"type": "null"}}},
            {"required": ["kind", "id"],
             "properties": {"kind": {"type": "string"}, "id": {"type": "string"}, "process_id": {"type": "null"}}},
        ],
    }))
}
