//! `GET /openapi.json`: the API description, generated from the handlers' path
//! annotations, the server's own body types and the cairn-core wire types
//! (which derive their schemas under cairn-core's `openapi` feature), so the
//! document cannot drift from what the server serializes.
//!
//! [`refine`] then adds what derives cannot say: the bearer scheme, the answers
//! every route may give (auth, malformed input, storage), the limits the core
//! enforces (id lengths, name patterns, page sizes, the int64 range of cursors),
//! the tools this server runs, and operation ids unique across the document.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
// The per-field limits are one source with the MCP tools' schemas.
use cairn_core::schema_limits::{
    self as limits, id as id_schema, lens as lens_schema, limit_bytes, nullable_id as nullable_id_schema, set,
    NOT_BLANK,
};
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use super::{api, routes, schedules, AppState};

/// The OpenAPI document as derived, before [`refine`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cairn",
        description = "Durable process runtime for AI agent hosts. Errors are always \
            `{\"error\":{\"code\",\"message\"}}`. Auth: `Authorization: Bearer TOKEN` (host or session token) \
            unless the server runs open on loopback."
    ),
    paths(
        routes::start,
        routes::list,
        routes::get,
        routes::events,
        routes::await_terminal,
        routes::append,
        routes::signal,
        routes::cancel,
        routes::complete,
        routes::abandon_request,
        super::modules::put,
        super::modules::list,
        super::modules::get,
        routes::transfer,
        routes::delete_session,
        routes::cancel_session,
        routes::wakes,
        routes::ack_wake,
        routes::prune,
        routes::changes,
        schedules::create,
        schedules::list,
        schedules::get,
        schedules::delete,
        schedules::pause,
        schedules::resume,
        routes::healthz,
        routes::metrics,
    ),
    components(schemas(api::ErrorSchema, api::ErrorDetailSchema))
)]
pub struct ApiDoc;

/// The largest cursor or sequence the API takes: signed 64-bit, like the stores.
pub const MAX_CURSOR: i64 = i64::MAX;

/// A module ref: `module:sha256:` and 64 lowercase hex digits (`invalid_id` otherwise).
const MODULE_REF: &str = "^module:sha256:[0-9a-f]{64}$";

/// A `definition` filter: `tool:NAME`, `script:MODULE_REF#EXPORT`,
/// `session_turn` or `external` (`invalid_filter` otherwise).
fn definition_schema(description: &str) -> Value {
    described(
        json!({
            "type": "string",
            "pattern": "^(session_turn|external|tool:[^\\u0000-\\u001F\\u007F-\\u009F]+|script:module:sha256:[0-9a-f]{64}#[^\\u0000-\\u001F\\u007F-\\u009F]+)$",
        }),
        description,
    )
}

/// An `originator` filter: `host`, `host:SCOPE`, `session:ID` or
/// `session:ID/frame:FRAME` (`invalid_filter` otherwise; the ids as ids are
/// checked).
fn originator_schema(description: &str) -> Value {
    described(
        json!({
            "type": "string",
            "pattern": "^(host|host:[^\\u0000-\\u001F\\u007F-\\u009F]+|session:[^\\u0000-\\u001F\\u007F-\\u009F]+)$",
        }),
        description,
    )
}

/// `schema` with `description`, when there is one.
fn described(mut schema: Value, description: &str) -> Value {
    if !description.is_empty() {
        schema["description"] = json!(description);
    }
    schema
}

fn cursor_schema(description: &str) -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_CURSOR, "description": description})
}

/// Operation ids by method and path: unique, and saying what they do.
const OPERATION_IDS: &[(&str, &str, &str)] = &[
    ("post", "/v1/processes", "start_process"),
    ("get", "/v1/processes", "list_processes"),
    ("get", "/v1/processes/{id}", "get_process"),
    ("get", "/v1/processes/{id}/events", "list_events"),
    ("post", "/v1/processes/{id}/events", "append_event"),
    ("get", "/v1/processes/{id}/await", "await_process"),
    ("post", "/v1/processes/{id}/signals/{name}", "signal_process"),
    ("post", "/v1/processes/{id}/cancel", "cancel_process"),
    ("post", "/v1/processes/{id}/complete", "complete_process"),
    ("post", "/v1/processes/{id}/abandon-request", "request_abandon"),
    ("post", "/v1/modules", "put_module"),
    ("get", "/v1/modules", "list_modules"),
    ("get", "/v1/modules/{module_ref}", "get_module"),
    ("post", "/v1/grants/transfer", "transfer_grants"),
    ("delete", "/v1/sessions/{session_id}", "delete_session"),
    ("post", "/v1/sessions/{session_id}/cancel", "cancel_session"),
    ("get", "/v1/sessions/{session_id}/wakes", "list_wakes"),
    ("post", "/v1/sessions/{session_id}/wakes/{wake_id}/ack", "ack_wake"),
    ("post", "/v1/prune", "prune"),
    ("get", "/v1/changes", "list_changes"),
    ("post", "/v1/schedules", "create_schedule"),
    ("get", "/v1/schedules", "list_schedules"),
    ("get", "/v1/schedules/{id}", "get_schedule"),
    ("delete", "/v1/schedules/{id}", "delete_schedule"),
    ("post", "/v1/schedules/{id}/pause", "pause_schedule"),
    ("post", "/v1/schedules/{id}/resume", "resume_schedule"),
    ("get", "/healthz", "health"),
    ("get", "/metrics", "metrics"),
];

/// The document this server serves: [`ApiDoc`] refined for a server running `tools`.
pub fn document_for(tools: &[String]) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    refine(&mut doc, tools);
    doc
}

/// Serve the document.
pub async fn document(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(document_for(&state.tools))
}

/// Add to the derived document what the derives cannot say (see the module docs).
pub fn refine(doc: &mut Value, tools: &[String]) {
    strip_doc_links(doc);
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A host token (full access) or a session token (that session's processes). \
                                   A server started without tokens is open, on loopback only."}
    });
    // Either a token, or none on an open server.
    doc["security"] = json!([{"bearer": []}, {}]);
    // Bodies whose fields are all optional may be left out: an empty body
    // reads as `{}` (`api::ApiJson`).
    let optional_bodies: Vec<String> = doc["components"]["schemas"]
        .as_object()
        .map(|all| {
            all.iter()
                .filter(|(_, s)| s["type"] == "object" && s["required"].as_array().is_none_or(|r| r.is_empty()))
                .map(|(name, _)| format!("#/components/schemas/{name}"))
                .collect()
        })
        .unwrap_or_default();
    let error = json!({"$ref": "#/components/schemas/Error"});
    let answer = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error.clone()}}});
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            if let Some((_, _, id)) = OPERATION_IDS.iter().find(|(m, p, _)| m == method && p == path) {
                op["operationId"] = json!(id);
            }
            let open = path == "/healthz";
            if open {
                op["security"] = json!([]);
            }
            let has_body = op.get("requestBody").is_some();
            let body_ref = op
                .pointer("/requestBody/content/application~1json/schema/$ref")
                .and_then(Value::as_str)
                .map(str::to_string);
            if body_ref.is_some_and(|r| optional_bodies.contains(&r)) {
                op["requestBody"]["required"] = json!(false);
                op["requestBody"]["description"] = json!("May be left out: an empty body reads as `{}`.");
            }
            let process_route = path.starts_with("/v1/processes/{id}");
            let mut add = |status: &str, description: &str| {
                let responses = &mut op["responses"];
                if responses.get(status).is_none() {
                    responses[status] = answer(description);
                }
            };
            if !open {
                add(
                    "400",
                    "invalid_request (malformed parameters or body) or another validation code",
                );
                add(
                    "401",
                    "unauthorized: a token is configured and none or an unknown one was given",
                );
            }
            // Any request may declare a body (`Content-Length`) over the limit.
            add("413", "payload_too_large: the body is over the server's limit");
            if has_body {
                add(
                    "408",
                    "request_timeout: the body did not arrive within the server's read timeout",
                );
                add(
                    "415",
                    "invalid_request: bodies must be `Content-Type: application/json`",
                );
            }
            if process_route {
                add("404", "unknown_process (or not visible to this session token)");
                add(
                    "410",
                    "no_longer_retained: the process was pruned (the body carries its tombstone)",
                );
            }
            // A server without tokens answers only loopback: any route.
            let mut forbidden = vec![
                "a server without tokens answers only requests addressed to a loopback name \
                 (and, from a browser, sent by a loopback page)",
            ];
            if method != "get" {
                forbidden.push("a write another site's page made a browser send (`Sec-Fetch-Site`)");
            }
            if path.starts_with("/v1/sessions/") {
                forbidden.push("a session token naming another session");
            }
            add("403", &format!("forbidden: {}", forbidden.join("; ")));
            if path.contains('{') {
                add(
                    "404",
                    "unknown_wake, or not_found: no such route (an empty id in the path is 400 invalid_id)",
                );
            }
            if method == "post" && (process_route || path == "/v1/processes") {
                add(
                    "409",
                    "a state conflict: process_terminal, replay_conflict, registration_conflict, ...",
                );
            }
            if path == "/v1/processes/{id}/await" {
                add("504", "timeout");
            }
            add("500", "storage or corrupt_env: the request changed nothing");
            add(
                "503",
                "unavailable (nothing was done; retry) or outcome_unknown (read before retrying)",
            );
            if method == "post" && path == "/v1/processes" {
                op["requestBody"]["content"]["application/json"]["example"] = json!({
                    "id": "build-42", "disposition": "rerunnable",
                    "input": {"type": "tool_call", "tool": "echo", "args": {"value": {"green": true}}},
                });
            }
            constrain_parameters(op, path);
        }
    }
    constrain_schemas(doc, tools);
}

/// Limits on path, query and header parameters.
fn constrain_parameters(op: &mut Value, path: &str) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for p in params {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let description = p["description"].as_str().unwrap_or_default().to_string();
        let schema = match name.as_str() {
            "id" | "session_id" | "wake_id" => id_schema(&description),
            "granted_to" | "originated_by" => lens_schema(&description),
            // A cursor compared with ids, not an id: any text without control
            // characters (empty lists from the first id).
            "after_id" => json!({
                "type": "string", "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
                "description": format!("{description}: ids after this text in byte order; any text without control \
                    characters (empty lists from the first)"),
            }),
            // Schedules page by id, not by cursor.
            "after" if path == "/v1/schedules" => id_schema(&description),
            // Modules page by module ref.
            "after" if path == "/v1/modules" => json!({
                "type": "string", "pattern": "^module:sha256:[0-9a-f]{64}$", "description": description,
            }),
            "name" => limits::signal_name(""),
            "caused_by" => id_schema(&description),
            "module_ref" => described(json!({"type": "string", "pattern": MODULE_REF}), &description),
            "definition" => definition_schema(&description),
            "originator" => originator_schema(&description),
            "limit" => json!({"type": "integer", "minimum": 1, "maximum": cairn_core::MAX_PAGE_SIZE}),
            "after" | "cursor" | "Last-Event-ID" | "timeout_ms" | "created_from_ms" | "created_before_ms" => {
                cursor_schema(&description)
            }
            "status" => {
                json!({"type": "string", "enum": ["running", "completed", "failed", "cancelled", "abandoned", "any"]})
            }
            "order" => json!({"type": "string", "enum": ["id", "newest"], "default": "id"}),
            _ => continue,
        };
        p["schema"] = schema;
    }
}

/// Limits inside the component schemas.
fn constrain_schemas(doc: &mut Value, tools: &[String]) {
    let schemas = &mut doc["components"]["schemas"];
    if let Some(all) = schemas.as_object_mut() {
        cairn_mcp::tools::close_tagged_variants(all);
    }
    // A start's id, a scope's ids, a grant descriptor's kind and label.
    limits::constrain_wire_schemas(schemas);
    set(schemas, "/SignalBody/properties/signal_id", limits::signal_id());
    set(
        schemas,
        "/AppendBody/properties/replay_key",
        json!({"oneOf": [{"type": "null"}, id_schema("Makes the append idempotent: a retry with the same payload returns the original event. Some keys are cairn's own and `invalid_request` here: `cancel:…` on any event but a cancellation, `signal:…` on any but a signal, `script.…` or `turn.…` on a script or session turn (its run's journal), and `{type}/…` naming another declared type of the process.")]}),
    );
    // `{"process_id"}` alone, or `{"kind", "id"}` (`invalid_request`
    // otherwise); a field given as null is a field left out.
    if let Some(slot) = schemas.pointer_mut("/CausalRef").and_then(Value::as_object_mut) {
        slot.insert(
            "oneOf".into(),
            json!([
                {"required": ["process_id"],
                 "properties": {"process_id": {"type": "string"}, "kind": {"type": "null"}, "id": {"type": "null"}}},
                {"required": ["kind", "id"],
                 "properties": {"kind": {"type": "string"}, "id": {"type": "string"}, "process_id": {"type": "null"}}},
            ]),
        );
    }
    set(
        schemas,
        "/EventType/properties/payload_schema",
        json!({"type": ["object", "boolean"],
               "description": "A JSON Schema (an object or a boolean) for the payload; `{}` (the default) accepts anything."}),
    );
    // Records list the core types too, `process.abandoned` among them: the
    // state a start may not declare is said, not left out of the schema
    // the records share.
    set(
        schemas,
        "/TerminalSpec/properties/state",
        json!({"type": "string", "enum": ["completed", "failed", "cancelled", "abandoned"],
               "description": "The terminal state the event ends the process in. A start may not declare `abandoned` (cairn's alone: `invalid_semantics`)."}),
    );
    if let Some(variants) = schemas.pointer_mut("/Selector/oneOf").and_then(Value::as_array_mut) {
        for v in variants {
            if v.pointer("/properties/pointer").is_some() {
                v["properties"]["pointer"] = json!({"type": "string", "pattern": "^(/.*)?$",
                    "description": "A JSON Pointer into the payload: empty or starting with `/`."});
            }
            if v.pointer("/properties/present").is_some() {
                v["properties"]["present"] = json!({"type": "string", "pattern": "^(/.*)?$",
                    "description": "Whether this JSON Pointer (empty or starting with `/`) resolves in the payload."});
            }
            // The template's own object refuses unknown keys, as the selector does.
            if let Some(template) = v.pointer_mut("/properties/template").and_then(Value::as_object_mut) {
                if template.contains_key("properties") {
                    template.insert("additionalProperties".into(), json!(false));
                }
            }
        }
    }
    // A type's name is up to 128 characters; a signal's type is `signal.`
    // and its name (up to 128 characters), declared or appended.
    let event_type = json!({"type": "string", "minLength": 1, "maxLength": 128 + "signal.".len(),
        "pattern": "^[A-Za-z0-9._-]+$",
        "description": "1-128 ASCII letters, digits, `.`, `_` or `-`; or `signal.` and a signal name of up to 128."});
    set(schemas, "/EventType/properties/name", event_type.clone());
    set(schemas, "/AppendBody/properties/event_type", event_type);
    set(
        schemas,
        "/TransferBody/properties/process_ids",
        json!({"type": "array", "items": id_schema("A process id.")}),
    );
    set(
        schemas,
        "/PruneBody/properties/cutoff_ms",
        cursor_schema("Prune processes that ended before this time (epoch ms)."),
    );
    for (field, description) in [
        (
            "created_from_ms",
            "Prune only processes created at or after this time (epoch ms).",
        ),
        (
            "created_before_ms",
            "Prune only processes created before this time (epoch ms).",
        ),
    ] {
        set(
            schemas,
            &format!("/PruneBody/properties/{field}"),
            json!({"oneOf": [{"type": "null"}, cursor_schema(description)]}),
        );
    }
    // Who completes or asks: in an id's form (else `invalid_request`), or null.
    set(schemas, "/AbandonBody/properties/requested_by", limits::authority());
    set(schemas, "/CompleteBody/properties/authority", limits::authority());
    // Byte limits the server enforces ([`limit_bytes`]).
    let reason = cairn_core::validate::MAX_REASON_BYTES;
    let authority = cairn_core::validate::MAX_AUTHORITY_BYTES;
    for (pointer, bytes) in [
        ("/CancelBody/properties/reason", reason),
        ("/AbandonBody/properties/reason", reason),
        ("/AbandonBody/properties/requested_by", authority),
        ("/CompleteBody/properties/authority", authority),
    ] {
        if let Some(slot) = schemas.pointer_mut(pointer).and_then(Value::as_object_mut) {
            limit_bytes(slot, bytes);
        }
    }
    // An abandon request's reason is its evidence: not blank.
    if let Some(slot) = schemas
        .pointer_mut("/AbandonBody/properties/reason")
        .and_then(Value::as_object_mut)
    {
        slot.insert("pattern".into(), json!(NOT_BLANK));
    }
    // What an external completion may send: not `abandoned` (an abandon
    // request's), and a failure's class, code and message, a cancellation's
    // message, not blank (`invalid_outcome`). Records keep `Outcome`.
    if let Some(mut outcome) = schemas.get("Outcome").cloned() {
        if let Some(variants) = outcome.get_mut("oneOf").and_then(Value::as_array_mut) {
            variants.retain(|v| v.pointer("/properties/type/enum/0") != Some(&json!("abandoned")));
            for v in variants.iter_mut() {
                for field in ["class", "code", "message"] {
                    if let Some(slot) = v
                        .pointer_mut(&format!("/properties/{field}"))
                        .and_then(Value::as_object_mut)
                    {
                        slot.insert("pattern".into(), json!(NOT_BLANK));
                    }
                }
            }
        }
        outcome["description"] = json!(
            "How an external completion ends the process: `success`, `failure` or `cancelled` (abandoning is an \
             abandon request's); a failure's `class`, `code` and `message` and a cancellation's `message` are not \
             blank."
        );
        schemas["CompletionOutcome"] = outcome;
        if let Some(slot) = schemas
            .pointer_mut("/CompleteBody/properties/outcome")
            .and_then(Value::as_object_mut)
        {
            slot.insert("$ref".into(), json!("#/components/schemas/CompletionOutcome"));
        }
    }
    // Pause, resume, a wake's acknowledgement and a session's delete take no fields.
    if let Some(slot) = schemas.pointer_mut("/AckBody").and_then(Value::as_object_mut) {
        slot.insert("additionalProperties".into(), json!(false));
    }
    if let Some(variants) = schemas.pointer_mut("/Originator/oneOf").and_then(Value::as_array_mut) {
        for v in variants {
            if v.pointer("/properties/type/enum/0") == Some(&json!("host")) {
                v["properties"]["scope"] = nullable_id_schema("The host scope's name, when the host names its parts.");
            }
        }
    }
    // Payloads are any JSON, whatever the derive guessed.
    let (payload_bytes, depth) = (
        cairn_core::validate::MAX_PAYLOAD_BYTES,
        cairn_core::validate::MAX_JSON_DEPTH,
    );
    set(
        schemas,
        "/SignalBody/properties/payload",
        json!({"description": format!("Any JSON, at most {payload_bytes} bytes serialized (`payload_too_large`) and \
            {depth} levels deep (`invalid_request`); the waiting process receives it.")}),
    );
    set(
        schemas,
        "/AppendBody/properties/payload",
        json!({"description": format!("Checked against the type's payload schema; at most {payload_bytes} bytes \
            serialized (`payload_too_large`) and {depth} levels deep (`invalid_request`).")}),
    );
    if let Some(slot) = schemas
        .pointer_mut("/StartRequest/properties/event_types")
        .and_then(Value::as_object_mut)
    {
        slot.insert("maxItems".into(), json!(cairn_core::validate::MAX_EVENT_TYPES));
    }
    for (field, limit) in [
        ("cron", cairn_core::schedule::MAX_CRON_BYTES),
        ("every", cairn_core::schedule::MAX_TIMING_WORD_BYTES),
        ("timezone", cairn_core::schedule::MAX_TIMING_WORD_BYTES),
    ] {
        if let Some(slot) = schemas
            .pointer_mut(&format!("/ScheduleRequest/properties/{field}"))
            .and_then(Value::as_object_mut)
        {
            limit_bytes(slot, limit);
        }
    }
    if let Some(slot) = schemas
        .pointer_mut("/ModuleBody/properties/name")
        .and_then(Value::as_object_mut)
    {
        limits::module_name(slot);
    }
    // A source is not blank and holds no NUL (`invalid_module`).
    if let Some(slot) = schemas
        .pointer_mut("/ModuleBody/properties/source")
        .and_then(Value::as_object_mut)
    {
        limits::module_source(slot);
    }
    // A schedule's id leaves room in an id for the `@` and the 20 digits of
    // each fire's time; exactly one of `cron` and `every`, neither empty (a
    // field given as null is a field left out).
    if let Some(slot) = schemas.pointer_mut("/ScheduleRequest/properties/id") {
        let description = slot["description"].clone();
        let mut id = id_schema("");
        id["maxLength"] = json!(cairn_core::validate::MAX_ID_BYTES - 1 - 20);
        id["description"] = description;
        *slot = id;
    }
    for field in ["cron", "every"] {
        if let Some(slot) = schemas
            .pointer_mut(&format!("/ScheduleRequest/properties/{field}"))
            .and_then(Value::as_object_mut)
        {
            slot.insert("minLength".into(), json!(1));
        }
    }
    if let Some(slot) = schemas.pointer_mut("/ScheduleRequest").and_then(Value::as_object_mut) {
        slot.insert(
            "oneOf".into(),
            json!([
                {"required": ["cron"], "properties": {"cron": {"type": "string"}, "every": {"type": "null"}}},
                {"required": ["every"], "properties": {"every": {"type": "string"}, "cron": {"type": "null"}}},
            ]),
        );
    }
    // Prune never touches running processes (`invalid_filter`).
    set(
        schemas,
        "/PruneBody/properties/status",
        json!({"type": "string", "enum": ["completed", "failed", "cancelled", "abandoned", "any"]}),
    );
    set(
        schemas,
        "/PruneBody/properties/caused_by",
        nullable_id_schema("Only the children of this process."),
    );
    for (field, schema) in [
        ("definition", definition_schema("")),
        ("originator", originator_schema("")),
    ] {
        if let Some(slot) = schemas
            .pointer_mut(&format!("/PruneBody/properties/{field}"))
            .and_then(Value::as_object_mut)
        {
            slot.insert("pattern".into(), schema["pattern"].clone());
        }
    }
    if let Some(slot) = schemas.pointer_mut("/StartRequest").and_then(Value::as_object_mut) {
        let said = slot
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        slot.insert(
            "description".into(),
            json!(format!(
                "{said}\n\nThe input and the env spec are each at most {payload_bytes} bytes serialized \
                 (`payload_too_large`) and {depth} levels deep (`invalid_request`)."
            )),
        );
    }
    if let Some(variants) = schemas.pointer_mut("/Watermark/oneOf").and_then(Value::as_array_mut) {
        for v in variants {
            if v.pointer("/properties/cursor").is_some() {
                v["properties"]["cursor"] = cursor_schema("The change-feed cursor the projector has read up to.");
            }
        }
    }
    // What a record says it runs stays as the derive has it, loosened to what
    // records hold (any tool, even one this server does not run; `args` and
    // `output_contract` null when the start left them out); what a start may
    // send is `StartInput`, refined below.
    let mut recorded = schemas.get("ProcessInput").cloned();
    if let Some(variants) = recorded
        .as_mut()
        .and_then(|r| r.get_mut("oneOf"))
        .and_then(Value::as_array_mut)
    {
        for v in variants {
            for (field, description) in [
                ("args", "The arguments the start gave (null when it gave none)."),
                (
                    "output_contract",
                    "The contract the start gave (null when it gave none: `text`).",
                ),
            ] {
                if v.pointer(&format!("/properties/{field}")).is_some() {
                    v["properties"][field] = json!({"description": description});
                }
            }
        }
    }
    // One `tool_call` variant per tool this server runs, with that tool's args;
    // any other name is 404 `unknown_tool`.
    if let Some(variants) = schemas.pointer_mut("/ProcessInput/oneOf").and_then(Value::as_array_mut) {
        let mut refined = Vec::new();
        for v in variants.drain(..) {
            let tag = v
                .pointer("/properties/type/enum/0")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match tag {
                "tool_call" => {
                    for tool in tools {
                        let args = cairn_tools::args_schema_as_taken(tool).unwrap_or_else(|| json!({}));
                        // A tool none of whose arguments is required takes
                        // its start without `args`, or with `null` (both
                        // stored as `null`): the document says so.
                        let optional = args
                            .get("required")
                            .and_then(Value::as_array)
                            .is_none_or(|r| r.is_empty());
                        let (required, args) = if optional {
                            (json!(["type", "tool"]), json!({"oneOf": [{"type": "null"}, args]}))
                        } else {
                            (json!(["type", "tool", "args"]), args)
                        };
                        refined.push(json!({
                            "type": "object", "additionalProperties": false,
                            "description": format!("The `{tool}` tool, run in the background."),
                            "required": required,
                            "properties": {
                                "type": {"type": "string", "enum": ["tool_call"]},
                                "tool": {"type": "string", "enum": [tool]},
                                "args": args,
                            },
                        }));
                    }
                }
                "session_turn" => {
                    // What a start accepts: the tools this server runs, a string
                    // or a message list, a `text` or `json_schema` contract. A
                    // field given as null is a field left out (its default).
                    let mut v = v;
                    v["properties"]["session"] = json!({
                        "type": "object", "additionalProperties": false,
                        "description": "The agent the turn runs: a model configured with `cairn serve --model` (`default` when absent), its system message, the tools it may call, its bounds.",
                        "properties": {
                            "model": nullable_id_schema("A model configured on the server (`unknown_model` otherwise)."),
                            "system": {"type": ["string", "null"]},
                            "tools": {"type": "array", "uniqueItems": true, "items": {"type": "string", "enum": tools}},
                            "max_steps": {"type": ["integer", "null"], "minimum": 1, "maximum": cairn_turn::MAX_STEPS,
                                          "description": format!("Most model calls in the turn (default 8; 1 to {}).", cairn_turn::MAX_STEPS)},
                            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2,
                                            "description": "The sampling temperature passed to the model (0 to 2)."},
                        },
                    });
                    // A turn needs its input (`invalid_request` without one,
                    // or with only whitespace). Each message is sent as it
                    // is: it takes the fields a chat message of its role
                    // does, and no other.
                    v["required"] = json!(["type", "input"]);
                    v["properties"]["input"] = json!({
                        "description": "The user's message, or the conversation so far.",
                        "oneOf": cairn_core::turn_start_input_forms(),
                    });
                    v["properties"]["output_contract"] = json!({
                        "description": "`text` (the default, also when null) or `json_schema`.",
                        "oneOf": cairn_core::turn_start_contract_forms(),
                    });
                    refined.push(v);
                }
                "script" => {
                    let mut v = v;
                    v["properties"]["module_ref"] = json!({
                        "type": "string", "pattern": MODULE_REF,
                        "description": "The script module: its ref, as `POST /v1/modules` answered it (`invalid_id` in another shape).",
                    });
                    v["properties"]["process_name"] = id_schema("The process defined in that module.");
                    v["properties"]["args"] = json!({
                        "type": ["object", "null"],
                        "description": "The function's arguments (`ctx.args`): a JSON object; absent or null is `{}` (`invalid_request` in another shape).",
                    });
                    refined.push(v);
                }
                _ => refined.push(v),
            }
        }
        *variants = refined;
    }
    if let (Some(recorded), Some(all)) = (recorded, schemas.as_object_mut()) {
        if let Some(mut start) = all.insert("ProcessInput".into(), recorded) {
            start["description"] = json!("What a start runs, as this server accepts it: a `tool_call` of a tool it runs (with that tool's args), a script, a session turn or external work.");
            all.insert("StartInput".into(), start);
        }
        // A schedule's record holds its template as stored (`StartTemplate`);
        // what a schedule's request may say is `ScheduleStart`.
        if let Some(mut template) = all.get("StartTemplate").cloned() {
            template["description"] =
                json!("A start request without an id, as a schedule's request gives it: what each fire starts.");
            if let Some(types) = template
                .pointer_mut("/properties/event_types")
                .and_then(Value::as_object_mut)
            {
                types.insert("maxItems".into(), json!(cairn_core::validate::MAX_EVENT_TYPES));
            }
            all.insert("ScheduleStart".into(), template);
        }
        if let Some(start) = all
            .get_mut("ScheduleRequest")
            .and_then(|o| o.pointer_mut("/properties/start"))
        {
            if let Some(obj) = start.as_object_mut() {
                obj.insert("$ref".into(), json!("#/components/schemas/ScheduleStart"));
            }
        }
        for owner in ["StartRequest", "ScheduleStart"] {
            if let Some(input) = all.get_mut(owner).and_then(|o| o.pointer_mut("/properties/input")) {
                if let Some(obj) = input.as_object_mut() {
                    obj.insert("$ref".into(), json!("#/components/schemas/StartInput"));
                }
            }
        }
    }
    // Internally tagged enums refuse unknown fields like the structs do.
    if let Some(all) = schemas.as_object_mut() {
        for schema in all.values_mut() {
            for v in schema
                .get_mut("oneOf")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                // (A variant's object: not a `oneOf` saying which fields go
                // together, as `CausalRef`'s and `ScheduleRequest`'s do.)
                if v.get("properties").is_some() && v["type"] == "object" && v.get("additionalProperties").is_none() {
                    v["additionalProperties"] = json!(false);
                }
            }
        }
    }
}

/// Rustdoc intra-doc links (`` [`Name`] ``, `` [`Name`](path) ``) read as plain code in the document.
fn strip_doc_links(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("[`") => *s = without_links(s),
        Value::Array(a) => a.iter_mut().for_each(strip_doc_links),
        Value::Object(m) => m.values_mut().for_each(strip_doc_links),
        _ => {}
    }
}

fn without_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("[`") {
        let Some(len) = rest[start + 2..].find("`]") else { break };
        out.push_str(&rest[..start]);
        let code = &rest[start + 1..start + 2 + len + 1];
        out.push_str(code);
        rest = &rest[start + 2 + len + 2..];
        // A link target after the brackets goes too.
        if rest.starts_with('(') {
            if let Some(end) = rest.find(')') {
                rest = &rest[end + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every operation of `doc` as (method, path, operation).
pub fn operations(doc: &Value) -> Vec<(String, String, Map<String, Value>)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if let Some(op) = op.as_object() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_become_code() {
        assert_eq!(
            without_links("the keys of [`ProcessFilter::from_query`] plus"),
            "the keys of `ProcessFilter::from_query` plus"
        );
        assert_eq!(without_links("see [`X`](crate::X) and [`Y`]."), "see `X` and `Y`.");
        assert_eq!(without_links("no [links] here"), "no [links] here");
    }

    #[test]
    fn the_document_is_refined() {
        let doc = document_for(&["echo".to_string()]);
        let ops = operations(&doc);
        assert_eq!(
            ops.len(),
            OPERATION_IDS.len(),
            "every operation has its id in the table"
        );
        let mut ids: Vec<&str> = ops.iter().filter_map(|(_, _, op)| op["operationId"].as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ops.len(), "operation ids are unique");
        let text = doc.to_string();
        assert!(!text.contains("[`"), "rustdoc link syntax left in the document");
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (method, path, op) in &ops {
            for status in ["500", "503"] {
                assert!(op["responses"].get(status).is_some(), "{method} {path} lacks {status}");
            }
            // Any route may be refused on an open server, and a body may stall.
            assert!(op["responses"].get("403").is_some(), "{method} {path} lacks 403");
            if op.get("requestBody").is_some() {
                assert!(op["responses"].get("408").is_some(), "{method} {path} lacks 408");
            }
        }
    }

    /// `maxLength` counts characters, the server bytes: a limit on text that
    /// may be other than ASCII says it is bytes of UTF-8 (a reason of 40,000
    /// `é` is 80,000 bytes, over a 65,536 limit).
    #[test]
    fn a_length_limit_on_text_says_it_counts_bytes() {
        fn walk(at: &str, v: &Value, unsaid: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    let ascii = o
                        .get("pattern")
                        .and_then(Value::as_str)
                        .is_some_and(|p| p.starts_with("^[A-Za-z0-9"));
                    let said = o
                        .get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.contains("bytes"));
                    if o.contains_key("maxLength") && !ascii && !said {
                        unsaid.push(at.to_string());
                    }
                    for (k, x) in o {
                        walk(&format!("{at}/{k}"), x, unsaid);
                    }
                }
                Value::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        walk(&format!("{at}/{i}"), x, unsaid);
                    }
                }
                _ => {}
            }
        }
        let doc = document_for(&["echo".to_string()]);
        let mut unsaid = Vec::new();
        walk("", &doc, &mut unsaid);
        assert!(unsaid.is_empty(), "maxLength not said in bytes at {unsaid:?}");
        let reason = &doc["components"]["schemas"]["CancelBody"]["properties"]["reason"]["description"];
        assert_eq!(
            reason,
            "Why (requests are idempotent per reason). At most 65536 bytes of UTF-8."
        );
    }

    #[test]
    fn the_byte_limits_the_server_enforces_are_stated() {
        let doc = document_for(&["echo".to_string()]);
        let schemas = &doc["components"]["schemas"];
        let limit = |pointer: &str| {
            schemas
                .pointer(pointer)
                .and_then(|s| s.get("maxLength"))
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("no maxLength at {pointer}"))
        };
        assert_eq!(limit("/CancelBody/properties/reason"), 64 * 1024);
        assert_eq!(limit("/AbandonBody/properties/reason"), 64 * 1024);
        assert_eq!(limit("/AbandonBody/properties/requested_by"), 264);
        assert_eq!(limit("/CompleteBody/properties/authority"), 264);
        assert_eq!(
            limit("/AppendBody/properties/event_type"),
            135,
            "signal.{{128 characters}}"
        );
        assert_eq!(
            limit("/EventType/properties/name"),
            135,
            "a signal's type is declared too"
        );
        assert_eq!(limit("/ModuleBody/properties/name"), 256);
        assert_eq!(limit("/GrantDescriptor/properties/kind"), 64);
        assert_eq!(limit("/GrantDescriptor/properties/label"), 1024);
        assert_eq!(limit("/ScheduleRequest/properties/cron"), 1024);
        assert_eq!(limit("/ScheduleRequest/properties/timezone"), 128);
        assert_eq!(
            schemas["StartRequest"]["properties"]["event_types"]["maxItems"],
            json!(256)
        );
        let created = &schemas["PruneBody"]["properties"]["created_before_ms"]["oneOf"][1];
        assert_eq!(created["maximum"], json!(MAX_CURSOR));
    }

    /// The MCP tools' input schemas state the limits this document states,
    /// from the same source (`cairn_core::schema_limits`): the same schema
    /// for a wire type's field, the same limits for a field each names in
    /// its own words (ADR 0011: tool schemas and OpenAPI do not drift apart).
    #[test]
    fn the_mcp_tools_state_the_same_limits() {
        use cairn_mcp::tools::ToolKind;
        let doc = document_for(&["echo".to_string()]);
        let schemas = &doc["components"]["schemas"];
        let tool = |name: &str| {
            let kind = ToolKind::from_name(name).expect("a tool");
            Value::Object((*kind.definition().input_schema).clone())
        };
        let start = tool("process_start");
        assert_eq!(start["properties"]["id"], schemas["StartRequest"]["properties"]["id"]);
        for name in ["SessionScope", "GrantDescriptor", "ExternalRef", "CausalRef"] {
            let fields = schemas[name]["properties"].as_object().expect("properties");
            assert!(!fields.is_empty(), "{name}");
            for (field, schema) in fields {
                assert_eq!(&start["$defs"][name]["properties"][field], schema, "{name}.{field}");
            }
        }
        let signal = tool("process_signal");
        assert_eq!(
            signal["properties"]["signal_id"],
            schemas["SignalBody"]["properties"]["signal_id"]
        );
        // The limits, without the words or whether null reads as left out.
        let limits = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("description");
                if o.get("type") == Some(&json!(["string", "null"])) {
                    o.insert("type".into(), json!("string"));
                }
            }
            assert!(
                v.get("maxLength").is_some() || v.get("pattern").is_some(),
                "no limits in {v}"
            );
            v
        };
        let param = |method: &str, path: &str, name: &str| {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .map(|p| p["schema"].clone())
                .unwrap_or_else(|| panic!("{method} {path} has no {name}"))
        };
        let body = |name: &str, field: &str| schemas[name]["properties"][field].clone();
        for (tool_name, field, documented) in [
            ("process_get", "id", param("get", "/v1/processes/{id}", "id")),
            (
                "process_signal",
                "id",
                param("post", "/v1/processes/{id}/signals/{name}", "id"),
            ),
            (
                "process_signal",
                "name",
                param("post", "/v1/processes/{id}/signals/{name}", "name"),
            ),
            ("process_cancel", "reason", body("CancelBody", "reason")),
            ("process_complete", "authority", body("CompleteBody", "authority")),
            ("module_put", "name", body("ModuleBody", "name")),
            ("module_put", "source", body("ModuleBody", "source")),
            (
                "process_list",
                "granted_to",
                param("get", "/v1/processes", "granted_to"),
            ),
            (
                "process_list",
                "originated_by",
                param("get", "/v1/processes", "originated_by"),
            ),
            ("process_list", "caused_by", param("get", "/v1/processes", "caused_by")),
            ("schedule_list", "after", param("get", "/v1/schedules", "after")),
            ("schedule_pause", "id", param("post", "/v1/schedules/{id}/pause", "id")),
        ] {
            assert_eq!(
                limits(&tool(tool_name)["properties"][field]),
                limits(&documented),
                "{tool_name}.{field}"
            );
        }
    }
}
