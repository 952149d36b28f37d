//! Input validation, canonical JSON and content hashes.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::events::{core_event_types, is_core_event_type, validate_signal_name, EventType, EventTypes, SIGNAL_PREFIX};
use crate::model::{EnvRef, EnvSpec, GrantDescriptor, Registration, SessionScope};
use crate::{CairnError, Result};

pub use crate::hash::{canonical_json, sha256_hex};
use crate::hash::{json_value, write_canonical};

/// What kind of JSON value `v` is, for a message saying what was given
/// ("not a string").
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde's refusal of a value of the wrong JSON type or range (`invalid
/// type: string "5", expected u64`), said in wire terms: the Rust type it
/// was read into as the JSON it takes (`u64` as "a non-negative integer",
/// `struct X` as "an object"), and serde's name of what was given as JSON's
/// (`sequence` as "array", `floating point` as "number", `unit value` as
/// "null"). A type tag (`variant identifier`) is said to be a string; to
/// name the tags it takes as well, see [`refusal_in_wire_terms`]. The rest
/// of the message, and any other message, is kept as it is.
pub fn wire_terms(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, prefix)) = ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|p| rest.find(p).map(|at| (at, *p)))
        .min()
    {
        out.push_str(&rest[..at + prefix.len()]);
        rest = &rest[at + prefix.len()..];
        let Some((given, after)) = split_unexpected(rest) else {
            continue;
        };
        let Some(expected) = after.strip_prefix(", expected ") else {
            continue;
        };
        // What was expected runs to serde_json's position, or to the end.
        let end = expected.find(" at line ").unwrap_or(expected.len());
        out.push_str(&wire_given(given));
        out.push_str(", expected ");
        out.push_str(&wire_expected(&expected[..end]));
        rest = &expected[end..];
    }
    out.push_str(rest);
    out
}

/// serde's description of a refused value (`string "a, b"`, `integer `5``,
/// `sequence`) at the start of `text`, and what follows it. A string is
/// written escaped (`{:?}`), so its closing quote is the first unescaped one.
fn split_unexpected(text: &str) -> Option<(&str, &str)> {
    if let Some(quoted) = text.strip_prefix("string \"") {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    let end = "string \"".len() + i + 1;
                    return Some((&text[..end], &text[end..]));
                }
                _ => {}
            }
        }
        return None;
    }
    let end = text.find(", expected ")?;
    Some((&text[..end], &text[end..]))
}

/// What was given, in JSON's terms.
fn wire_given(given: &str) -> String {
    match given {
        "sequence" => "array".into(),
        "map" => "object".into(),
        "unit value" => "null".into(),
        _ => match given.strip_prefix("floating point ") {
            Some(number) => format!("number {number}"),
            None => given.into(),
        },
    }
}

/// What was expected, in JSON's terms: Rust's numeric types as the JSON
/// numbers they take, serde's kinds as JSON's; a description of cairn's own
/// (`a disposition: ...`) is kept.
fn wire_expected(expected: &str) -> String {
    let said = match expected {
        "u64" | "u128" | "usize" => "a non-negative integer",
        "u8" => "a non-negative integer up to 255",
        "u16" => "a non-negative integer up to 65535",
        "u32" => "a non-negative integer up to 4294967295",
        "i64" | "i128" | "isize" => "an integer",
        "i8" => "an integer from -128 to 127",
        "i16" => "an integer from -32768 to 32767",
        "i32" => "an integer from -2147483648 to 2147483647",
        "f32" | "f64" => "a number",
        "a borrowed string" => "a string",
        "a character" => "a string of one character",
        "a sequence" => "an array",
        "a map" => "an object",
        "unit" => "null",
        "variant identifier" => "a type name (a string)",
        "field identifier" => "a field name (a string)",
        _ if expected.starts_with("struct ") || expected.starts_with("struct variant ") => "an object",
        _ => match expected
            .strip_prefix("a tuple of size ")
            .or_else(|| expected.strip_prefix("tuple of size "))
        {
            Some(n) => return format!("an array of {n} items"),
            None => return expected.to_string(),
        },
    };
    said.to_string()
}

/// serde's refusal of `given` read as a `T`, at `path` (as
/// serde_path_to_error writes one: `a.b[0].c`), in wire terms
/// ([`wire_terms`]). A type tag of the wrong JSON type (`"type": 5`, which
/// serde refuses as "expected variant identifier") is said with the tags
/// the field takes, read from `T`'s own refusal of an unknown tag there.
pub fn refusal_in_wire_terms<T: serde::de::DeserializeOwned>(given: &Value, path: &str, message: &str) -> String {
    const UNTAGGED: &str = "expected variant identifier";
    if message.contains(UNTAGGED) {
        if let Some(tags) = tags_at::<T>(given, path) {
            return wire_terms(&message.replacen(UNTAGGED, &format!("expected a string, {tags}"), 1));
        }
    }
    wire_terms(message)
}

/// `value` read as a `T`, or why not in wire terms
/// ([`refusal_in_wire_terms`]), after the field it is about
/// (`` `start.input.session.max_steps`: ``). Inside a session turn's
/// `session`, where serde names no field, the field is found by
/// [`crate::model::ProcessInput::refused_at`].
pub fn read_in_wire_terms<T: serde::de::DeserializeOwned>(value: &Value) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        let input = (at == "input" || at.ends_with(".input"))
            .then(|| pointer_of(&at).and_then(|p| value.pointer(&p)))
            .flatten();
        if let Some((field, why)) = input.and_then(crate::model::ProcessInput::refused_at) {
            return format!("`{at}.{field}`: {}", wire_terms(&why));
        }
        let why = refusal_in_wire_terms::<T>(value, &at, &e.inner().to_string());
        match at.as_str() {
            "" | "." => why,
            _ => format!("`{at}`: {why}"),
        }
    })
}

/// The JSON Pointer of a path as serde_path_to_error writes one (`a.b[0].c`).
fn pointer_of(path: &str) -> Option<String> {
    let mut pointer = String::new();
    for part in path.split('.') {
        let (key, indices) = part.split_once('[').unwrap_or((part, ""));
        // A path that starts at an index (`[1].type`) has no key before it.
        if !key.is_empty() || indices.is_empty() {
            pointer.push('/');
            pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
        }
        for index in indices.split('[').filter(|i| !i.is_empty()) {
            pointer.push('/');
            pointer.push_str(index.strip_suffix(']')?);
        }
    }
    Some(pointer)
}

/// The tags the enum tag at `path` in `given` takes (`one of `a`, `b``),
/// as `T`'s reading says when that tag is one it does not know.
fn tags_at<T: serde::de::DeserializeOwned>(given: &Value, path: &str) -> Option<String> {
    let pointer = pointer_of(path)?;
    let mut probe = given.clone();
    // No tag of cairn's is empty.
    *probe.pointer_mut(&pointer)? = Value::String(String::new());
    let refused = serde_path_to_error::deserialize::<_, T>(&probe).err()?;
    if refused.path().to_string() != path {
        return None;
    }
    let said = refused.into_inner().to_string();
    let tags = said.strip_prefix("unknown variant ``, expected ")?;
    let tags = tags.split(" at line ").next().unwrap_or(tags);
    // serde says `a` or `b` when there are two.
    Some(if tags.starts_with("one of ") {
        tags.to_string()
    } else {
        format!("one of {tags}")
    })
}

/// Longest id (process, session, frame, owner, signal id, replay key) in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest event type name in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Largest event payload, process input or env spec, as serialized JSON.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Deepest nesting of arrays and objects in a payload, process input or env
/// spec. A stored record wraps a payload in a few levels of its own, and every
/// JSON decoder on the read path (serde_json's included) stops at 128 levels:
/// a value accepted near that limit could be written but never read back.
pub const MAX_JSON_DEPTH: usize = 64;

/// How deep a JSON text nests arrays and objects (`[[1]]` is 2), read by a
/// scan that builds nothing, for a text too deep for a parser (serde_json's
/// stops at 128 levels): the deepest nesting, and, when the text is an
/// object, its top-level field whose value nests deepest, with that value's
/// own depth (the field's name as written between its quotes).
pub fn json_text_depth(bytes: &[u8]) -> (usize, Option<(String, usize)>) {
    let (mut depth, mut deepest, mut field) = (0usize, 0usize, None);
    let mut key: Option<String> = None;
    let top_is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = i.min(bytes.len());
                // A string right inside the top object, followed by `:`, is a key.
                let colon = bytes[end.saturating_add(1).min(bytes.len())..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    == Some(&b':');
                if depth == 1 && colon {
                    key = Some(String::from_utf8_lossy(&bytes[start..end]).into_owned());
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    field = if depth > 1 && top_is_object { key.clone() } else { None };
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    (deepest, field.map(|f| (f, deepest - 1)))
}

/// The refusal of `what` (a body, a field, a flag) nested `depth` levels
/// deep, past what a parser reads: said as the [`MAX_JSON_DEPTH`] limit a
/// value nested less deep is refused with, not as where the parser stopped.
pub fn too_deep_message(what: &str, depth: usize) -> String {
    format!("{what} nests arrays and objects {depth} levels deep, over the {MAX_JSON_DEPTH} level limit")
}

/// Most event types one registration may declare.
pub const MAX_EVENT_TYPES: usize = 256;
/// Most children one `children` wait may name (its ids stay well inside
/// [`MAX_PAYLOAD_BYTES`]).
pub const MAX_AWAITED_CHILDREN: usize = 1000;
/// Longest durable sleep or wait timeout, in ms (a year: waits run for days,
/// SPEC §13; a due time far past it no longer fits the signed 64-bit integers
/// that store due times).
pub const LONGEST_WAIT_MS: u64 = 365 * 86_400_000;

/// Check an id: non-empty, at most [`MAX_ID_BYTES`], no control characters,
/// and neither `.` nor `..` (a URL path cannot carry those as a segment: every
/// HTTP client and server resolves them away, so the id could be created but
/// never addressed).
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(CairnError::InvalidId(format!("{what} must not be empty")));
    }
    if id == "." || id == ".." {
        return Err(CairnError::InvalidId(format!(
            "{what} `{id}` is a relative path segment, which no URL can name; choose another"
        )));
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

/// The most bytes of an `authority` or `requested_by`: an id, and room for
/// the `session:` a session's own label puts before its id (a session id may
/// be [`MAX_ID_BYTES`] long).
pub const MAX_AUTHORITY_BYTES: usize = MAX_ID_BYTES + "session:".len();

/// Check who a completion or an abandon request names as its author (the
/// JSON field `what`): not empty, at most [`MAX_AUTHORITY_BYTES`], no control
/// characters, and neither `.` nor `..`, as an id is checked. It is a label,
/// not an id, so it is refused as a request (`invalid_request`), naming its
/// field.
pub fn validate_authority(what: &str, label: &str) -> Result<()> {
    let refuse = |why: String| Err(CairnError::InvalidRequest(format!("`{what}` {why}")));
    if label.is_empty() {
        return refuse("must not be empty".into());
    }
    if label == "." || label == ".." {
        return refuse("may not be `.` or `..`".into());
    }
    if label.len() > MAX_AUTHORITY_BYTES {
        return refuse(format!(
            "is {} bytes, over the {MAX_AUTHORITY_BYTES} byte limit",
            label.len()
        ));
    }
    if label.chars().any(char::is_control) {
        return refuse(format!("`{}` contains a control character", label.escape_debug()));
    }
    Ok(())
}

/// The most bytes of a cancellation's or an abandon request's reason: it is
/// written into the request and again into the outcome that ends the process
/// (as its message), so it must leave an event room for both.
pub const MAX_REASON_BYTES: usize = 64 * 1024;

/// Check a reason against [`MAX_REASON_BYTES`].
pub fn validate_reason(what: &str, reason: &str) -> Result<()> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(CairnError::PayloadTooLarge {
            what: what.to_string(),
            size: reason.len(),
            limit: MAX_REASON_BYTES,
        });
    }
    Ok(())
}

/// What separates a session id from its frame in a scope id (SPEC §1:
/// `session:{session_id}/frame:{frame}`).
pub const FRAME_SEPARATOR: &str = "/frame:";

/// Check a session id: an id ([`validate_id`]) that does not hold
/// [`FRAME_SEPARATOR`]. Grants and wakes are keyed by scope id, so a session
/// named `s/frame:f` would share its key with frame `f` of session `s`, and
/// its token would reach that frame's processes.
pub fn validate_session_id(id: &str) -> Result<()> {
    validate_id("session id", id)?;
    if id.contains(FRAME_SEPARATOR) {
        return Err(CairnError::InvalidId(format!(
            "session id `{id}` contains `{FRAME_SEPARATOR}`, which separates a session from its frame in a \
             scope id (`session:{{session_id}}/frame:{{frame}}`); choose another"
        )));
    }
    Ok(())
}

/// Check a session scope's ids.
pub fn validate_scope(scope: &SessionScope) -> Result<()> {
    validate_session_id(&scope.session_id)?;
    if let Some(frame) = &scope.agent_frame_id {
        validate_id("agent frame id", frame)?;
    }
    Ok(())
}

/// The scope a listing filter `key` names (`granted_to`, `originated_by`):
/// `SESSION` (the session's own scope, not its frames') or
/// `SESSION/frame:FRAME` (that agent frame's), taken as given. A value no
/// scope can have is `invalid_filter` naming the filter. The API and the
/// dashboard read it alike.
pub fn filter_scope(key: &str, value: &str) -> Result<SessionScope> {
    let scope = match value.split_once(FRAME_SEPARATOR) {
        Some((session, frame)) => SessionScope::frame(session, frame),
        None => SessionScope::session(value),
    };
    validate_scope(&scope).map_err(|e| match e {
        CairnError::InvalidId(why) => CairnError::InvalidFilter(format!("`{key}`: {why}")),
        other => other,
    })?;
    Ok(scope)
}

/// The most bytes of a grant descriptor's `kind`.
pub const MAX_GRANT_KIND_BYTES: usize = 64;

/// The most bytes of a grant descriptor's `label`.
pub const MAX_GRANT_LABEL_BYTES: usize = 1024;

/// Check a grant descriptor, which every lens shows: a `kind` of at most
/// [`MAX_GRANT_KIND_BYTES`] and a `label` of at most [`MAX_GRANT_LABEL_BYTES`],
/// neither empty (an absent field is omitted, not blank) nor holding a control
/// character (Unicode category Cc). `at` is where the descriptor sits in the
/// request (`grant.descriptor`), for the message; a refusal is
/// `invalid_request` naming the field.
pub fn validate_grant_descriptor(at: &str, descriptor: &GrantDescriptor) -> Result<()> {
    let fields = [
        ("kind", &descriptor.kind, MAX_GRANT_KIND_BYTES),
        ("label", &descriptor.label, MAX_GRANT_LABEL_BYTES),
    ];
    for (name, value, limit) in fields {
        let Some(value) = value else { continue };
        let refuse = |why: String| Err(CairnError::InvalidRequest(format!("`{at}.{name}` {why}")));
        if value.is_empty() {
            return refuse("must not be empty: omit it instead".into());
        }
        if value.len() > limit {
            return refuse(format!("is {} bytes, over the {limit} byte limit", value.len()));
        }
        if let Some((at_byte, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
            return refuse(format!(
                "contains a control character (U+{:04X} at byte {at_byte})",
                u32::from(c)
            ));
        }
    }
    Ok(())
}

/// Check a serialized size against [`MAX_PAYLOAD_BYTES`].
pub fn check_size(what: &str, value: &impl Serialize) -> Result<()> {
    check_size_of(|| what.to_string(), value)
}

/// [`check_size`], naming the value only when it is refused. Also refuses a
/// value nested deeper than [`MAX_JSON_DEPTH`].
fn check_size_of(what: impl FnOnce() -> String, value: &impl Serialize) -> Result<()> {
    check_shape_within(what, value, MAX_PAYLOAD_BYTES, MAX_JSON_DEPTH)
}

/// What the payload of a core terminal event (`process.completed` and the
/// others) may hold beyond the limits, for its envelope around the outcome
/// (`{"await_output": {"type": "success", "value": …}}`, a `completed_by`
/// authority): an outcome whose value is as large or as deep as a payload
/// may be (a signal's, returned by the tool that waited for it) is written.
/// A script's `script.result` has the same room: it journals a child's
/// outcome as `{"n", "value": …}`; and so has its `script.call`, which
/// journals a value the script hands on (an emit's payload, a tool's args)
/// with the call's own fields.
pub const TERMINAL_ENVELOPE_BYTES: usize = 1024 + MAX_AUTHORITY_BYTES;
/// The levels of that envelope around an outcome's value.
pub const TERMINAL_ENVELOPE_DEPTH: usize = 2;

/// Check the payload of a core terminal event (`fold::terminal_payload`)
/// against the limits with [`TERMINAL_ENVELOPE_BYTES`] and
/// [`TERMINAL_ENVELOPE_DEPTH`] more: what a process's outcome may be.
pub fn check_terminal_payload(what: impl FnOnce() -> String, payload: &impl Serialize) -> Result<()> {
    let shape = serialized_shape(payload);
    let bytes = MAX_PAYLOAD_BYTES + TERMINAL_ENVELOPE_BYTES;
    if shape.len > bytes {
        return Err(CairnError::PayloadTooLarge {
            what: what(),
            size: shape.len,
            limit: bytes,
        });
    }
    if shape.depth > MAX_JSON_DEPTH + TERMINAL_ENVELOPE_DEPTH {
        // Said of the value, as the limit is documented: the envelope's
        // levels are not the caller's.
        return Err(CairnError::InvalidRequest(format!(
            "{} nests arrays and objects {} levels deep, over the {MAX_JSON_DEPTH} level limit",
            what(),
            shape.depth - TERMINAL_ENVELOPE_DEPTH
        )));
    }
    Ok(())
}

/// What one rendering of a wake (its input, or its dedupe key) may be as
/// stored, as a JSON string: twice a payload. A rendering of a payload's
/// value is at most its JSON as text, and that text escaped again is at most
/// twice it (every `"` and `\` doubled); a template repeating a hole over
/// control characters, six bytes each escaped, made one wake 12 MB.
pub const MAX_WAKE_RENDERING_BYTES: usize = 2 * MAX_PAYLOAD_BYTES;

/// Check one rendering of a wake as it is stored (`what` names it): its JSON
/// string within [`MAX_WAKE_RENDERING_BYTES`] (`payload_too_large`
/// otherwise). Each rendering is bounded as text as it is made; escaped, it
/// is bounded here.
pub fn check_wake_rendering(what: &str, text: &str) -> Result<()> {
    check_shape_within(|| what.to_string(), &text, MAX_WAKE_RENDERING_BYTES, MAX_JSON_DEPTH)
}

/// Check `value` as serialized JSON against limits of the caller's own: at
/// most `bytes` (`payload_too_large`) and `depth` levels of arrays and
/// objects (`invalid_request`); `what` names it when refused.
pub fn check_shape_within(
    what: impl FnOnce() -> String,
    value: &impl Serialize,
    bytes: usize,
    depth: usize,
) -> Result<()> {
    let shape = serialized_shape(value);
    if shape.len > bytes {
        return Err(CairnError::PayloadTooLarge {
            what: what(),
            size: shape.len,
            limit: bytes,
        });
    }
    if shape.depth > depth {
        return Err(CairnError::InvalidRequest(format!(
            "{} nests arrays and objects {} levels deep, over the {depth} level limit",
            what(),
            shape.depth
        )));
    }
    Ok(())
}

/// The length and deepest nesting of a value's compact JSON, counted as it is
/// written, without building it: the writer counts bytes, the formatter the
/// arrays and objects open (serde_json's default formatting is compact).
struct Shape {
    len: usize,
    depth: usize,
}

struct CountBytes(usize);

impl io::Write for CountBytes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct CountDepth<'a> {
    open: usize,
    deepest: &'a mut usize,
}

impl CountDepth<'_> {
    fn open<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.open += 1;
        *self.deepest = (*self.deepest).max(self.open);
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.open -= 1;
        writer.write_all(bracket)
    }
}

impl serde_json::ser::Formatter for CountDepth<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }
}

fn serialized_shape(value: &impl Serialize) -> Shape {
    let mut bytes = CountBytes(0);
    let mut depth = 0;
    let formatter = CountDepth {
        open: 0,
        deepest: &mut depth,
    };
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    let len = match value.serialize(&mut serializer) {
        Ok(()) => bytes.0,
        Err(_) => usize::MAX,
    };
    Shape { len, depth }
}

/// Check an event type name: 1..=128 bytes of `[A-Za-z0-9._-]`, or a
/// signal's type (`signal.` and a signal name of up to 128 bytes), so that
/// every signal a process can be sent can also be declared.
pub fn validate_event_type_name(name: &str) -> Result<()> {
    let ok = (!name.is_empty()
        && name.len() <= MAX_EVENT_TYPE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        || name
            .strip_prefix(crate::events::SIGNAL_PREFIX)
            .is_some_and(|signal| crate::events::validate_signal_name(signal).is_ok());
    if ok {
        Ok(())
    } else {
        Err(CairnError::InvalidEventTypeName(format!(
            "`{}`: names are 1-{MAX_EVENT_TYPE_BYTES} bytes of ASCII letters, digits, `.`, `_` or `-` \
             (a signal's type: `{}` and a signal name of up to 128)",
            name.escape_debug(),
            crate::events::SIGNAL_PREFIX
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
        crate::model::ProcessInput::SessionTurn { session, .. } => {
            if let Some(model) = &session.model {
                validate_id("turn model", model)?;
            }
            for tool in &session.tools {
                validate_id("turn tool", tool)?;
            }
            if session.max_steps == Some(0) {
                return Err(CairnError::InvalidRequest("a turn's `max_steps` is at least 1".into()));
            }
        }
        crate::model::ProcessInput::External { .. } => {}
    }
    if let crate::model::Originator::Session { scope } = &reg.provenance.originator {
        validate_scope(scope)?;
    }
    if let crate::model::Originator::Host { scope: Some(s) } = &reg.provenance.originator {
        validate_id("host scope", s)?;
    }
    if let Some(c) = &reg.provenance.caused_by {
        match (&c.process_id, &c.kind, &c.id) {
            (Some(p), None, None) => validate_id("caused_by.process_id", p)?,
            (None, Some(k), Some(i)) => {
                validate_id("caused_by.kind", k)?;
                validate_id("caused_by.id", i)?;
            }
            _ => {
                return Err(CairnError::InvalidRequest(
                    "`caused_by` is `{\"process_id\"}` or `{\"kind\", \"id\"}`".into(),
                ))
            }
        }
    }
    if let Some(target) = &reg.wake_target {
        validate_scope(target)?;
    }
    if let Some(ext) = &reg.external_ref {
        validate_id("external_ref.backend", &ext.backend)?;
        validate_id("external_ref.id", &ext.id)?;
        check_size("external_ref", ext)?;
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
                "`{}`: the `process.` and `script.` namespaces belong to cairn",
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
        // Selectors may carry constants: bounded like a payload, since the
        // record stores them and every read decodes them.
        check_size_of(|| format!("the semantics of `{}`", t.name), &t.semantics)?;
        compiled_schema(&t.name, &t.payload_schema)?;
        validate_semantics(t)?;
    }
    let script = matches!(reg.input, crate::model::ProcessInput::Script { .. });
    if reg.event_types.is_empty() {
        return Ok(if script {
            crate::script::script_core_types()
        } else {
            EventTypes::core()
        });
    }
    let mut all = core_event_types();
    if script {
        all.extend(crate::script::script_event_types());
    }
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

/// The stable registration hash: SHA-256 of the registration's canonical JSON.
/// Producer event types are hashed in name order, so declaration order does not matter.
pub fn registration_hash(reg: &Registration) -> Result<String> {
    let in_order = reg.event_types.windows(2).all(|w| w[0].name <= w[1].name);
    let sorted;
    let reg = if in_order {
        reg
    } else {
        let mut copy = reg.clone();
        copy.event_types.sort_by(|a, b| a.name.cmp(&b.name));
        sorted = copy;
        &sorted
    };
    let v = json_value(reg)?;
    // Hash the canonical form as it is written, without building it.
    let mut hasher = Sha256::new();
    write_canonical(&v, &mut hasher).expect("hashing cannot fail");
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
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

/// Compiled schemas by a structural hash of the schema value; equal hashes
/// are told apart by comparing the values, so a lookup neither allocates nor
/// serializes.
static SCHEMA_CACHE: Mutex<Option<SchemaCache>> = Mutex::new(None);
const SCHEMA_CACHE_MAX: usize = 4096;

#[derive(Default)]
struct SchemaCache {
    by_hash: HashMap<u64, Vec<(Value, CompiledSchema)>>,
    len: usize,
}

impl SchemaCache {
    fn get(&self, hash: u64, schema: &Value) -> Option<CompiledSchema> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|(s, _)| s == schema)
            .map(|(_, c)| c.clone())
    }
}

fn schema_hash(schema: &Value) -> u64 {
    fn feed(v: &Value, h: &mut impl Hasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => (1u8, b).hash(h),
            Value::Number(n) => (2u8, n).hash(h),
            Value::String(s) => (3u8, s).hash(h),
            Value::Array(items) => {
                (4u8, items.len()).hash(h);
                items.iter().for_each(|item| feed(item, h));
            }
            Value::Object(map) => {
                (5u8, map.len()).hash(h);
                for (k, item) in map {
                    k.hash(h);
                    feed(item, h);
                }
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    feed(schema, &mut h);
    h.finish()
}

/// Whether a schema accepts every value without compiling it (`{}` or `true`).
pub fn accepts_anything(schema: &Value) -> bool {
    matches!(schema, Value::Bool(true)) || schema.as_object().is_some_and(|m| m.is_empty())
}

/// Compile (or fetch from the cache) a payload schema.
pub fn compiled_schema(event_type: &str, schema: &Value) -> Result<CompiledSchema> {
    let hash = schema_hash(schema);
    if let Some(found) = SCHEMA_CACHE.lock().as_ref().and_then(|c| c.get(hash, schema)) {
        return Ok(found);
    }
    let validator = jsonschema::validator_for(schema).map_err(|e| CairnError::InvalidSchema {
        event_type: event_type.to_string(),
        message: e.to_string(),
    })?;
    let compiled = Arc::new(validator);
    let mut guard = SCHEMA_CACHE.lock();
    let cache = guard.get_or_insert_with(SchemaCache::default);
    if let Some(found) = cache.get(hash, schema) {
        // Compiled meanwhile by another caller: share theirs.
        return Ok(found);
    }
    if cache.len >= SCHEMA_CACHE_MAX {
        *cache = SchemaCache::default();
    }
    cache
        .by_hash
        .entry(hash)
        .or_default()
        .push((schema.clone(), compiled.clone()));
    cache.len += 1;
    Ok(compiled)
}

/// Check a payload against a declared type's schema.
pub fn check_payload(t: &EventType, payload: &Value) -> Result<()> {
    let what = || format!("payload of `{}`", t.name);
    // A core terminal event, a script's journaled answer (a child's whole
    // outcome for `ctx.wait`) and its journaled call (an emit's payload)
    // wrap a value that met the limits.
    let wraps = t.semantics.terminal.is_some()
        || t.name == crate::script::SCRIPT_RESULT
        || t.name == crate::script::SCRIPT_CALL;
    if wraps && crate::events::is_core_event_type(&t.name) {
        check_terminal_payload(what, payload)?;
    } else {
        check_size_of(what, payload)?;
    }
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

/// Where `given` (a body as sent) holds an array that was read as an
/// object (`read`, the value it was read into, serialized again): serde
/// reads a struct from an array, by position, which no client means. The
/// path is named as serde_path_to_error names one (`a.b[0].c`).
pub fn array_read_as_object(given: &Value, read: &Value) -> Option<String> {
    fn walk(given: &Value, read: &Value, path: &str) -> Option<String> {
        match (given, read) {
            (Value::Array(_), Value::Object(_)) => Some(path.to_string()),
            (Value::Object(g), Value::Object(r)) => g.iter().find_map(|(k, v)| {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                r.get(k).and_then(|read| walk(v, read, &at))
            }),
            (Value::Array(g), Value::Array(r)) if g.len() == r.len() => g
                .iter()
                .zip(r)
                .enumerate()
                .find_map(|(i, (g, r))| walk(g, r, &format!("{path}[{i}]"))),
            _ => None,
        }
    }
    walk(given, read, "")
}

/// `bytes` as a JSON value, refusing an object that gives a key twice
/// (serde_json keeps the last; a request must not quietly mean one of two
/// values: `{"id":"a","id":"b"}`). The refusal is a data error
/// (`serde_json::error::Category::Data`), any other a syntax error.
///
/// An integer written past what 64 bits hold (`18446744073709551617`) is
/// refused too, as a data error naming it and where it is: serde_json reads
/// it as the nearest double, so two different integers would be kept as one
/// value (and replay as the same payload). A float (`1e23`, `2.5`), and an
/// integer written as the shortest form of its double (JavaScript's
/// `18446744073709552000` for 2^64), are kept as the double they name.
pub fn parse_strict_json(bytes: &[u8]) -> std::result::Result<Value, serde_json::Error> {
    let value = serde_json::from_slice::<StrictJson>(bytes).map(|v| v.0)?;
    if let Some((at, digits)) = wide_integer(bytes) {
        let before = &bytes[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = at - before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
        return Err(<serde_json::Error as serde::de::Error>::custom(format_args!(
            "the integer {digits} at line {line} column {column} is past what 64 bits hold, and would be kept \
             rounded: a field of cairn's own (a time, a count, a cursor) takes at most 9223372036854775807, \
             and a payload or argument may carry a larger one as a string (or as a float, with a fraction or \
             an exponent, if rounding is meant)"
        )));
    }
    Ok(value)
}

/// The first integer literal of a JSON text (outside its strings) that no
/// signed or unsigned 64-bit integer holds: its byte offset and its text.
/// Written here (a scan of a few lines) because serde_json tells a visitor
/// only the double such a literal became.
fn wide_integer(bytes: &[u8]) -> Option<(usize, String)> {
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                i += 1;
            }
            let token = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
            let integral = !token.contains(['.', 'e', 'E']);
            // A literal that is the shortest form of the double it names (as
            // JavaScript writes every double below 1e21: `18446744073709552000`
            // for 2^64) loses nothing to it; any other would be rounded.
            let exact_double = || {
                token
                    .parse::<f64>()
                    .is_ok_and(|f| f.is_finite() && f.to_string() == token)
            };
            if integral && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() && !exact_double() {
                return Some((start, token.to_string()));
            }
            continue;
        }
        i += 1;
    }
    None
}

/// A JSON value whose objects hold each key once. Written here (some thirty
/// lines over serde's visitor) because serde_json has no strict mode and no
/// maintained crate adds one to a `Value`.
struct StrictJson(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<serde_json::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<serde_json::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<serde_json::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("the key `{key}` is given twice")));
            }
            let StrictJson(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The control characters a descriptor refuses are Unicode's Cc, C0, DEL
    /// and C1, and no more: the printable neighbours of each range pass.
    #[test]
    fn a_grant_descriptor_refuses_exactly_the_control_characters() {
        let label = |c: char| GrantDescriptor {
            kind: None,
            label: Some(format!("a{c}b")),
        };
        for c in ['\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'] {
            let err = validate_grant_descriptor("grant.descriptor", &label(c)).expect_err("a control character");
            assert_eq!(err.code(), "invalid_request");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid request: `grant.descriptor.label` contains a control character (U+{:04X} at byte 1)",
                    u32::from(c)
                )
            );
        }
        for c in [' ', '~', '\u{a0}', '\u{200b}', '\u{feff}'] {
            validate_grant_descriptor("grant.descriptor", &label(c)).expect("a printable or format character");
        }
        validate_grant_descriptor("descriptor", &GrantDescriptor::default()).expect("no fields");
    }

    /// serde's refusals of a value of the wrong type or range are said in
    /// JSON's terms, keeping where it was; other messages are kept.
    #[test]
    fn refusals_are_said_in_wire_terms() {
        for (said, meant) in [
            (
                "invalid type: string \"5\", expected u64 at line 1 column 9",
                "invalid type: string \"5\", expected a non-negative integer at line 1 column 9",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "invalid value: integer `-1`, expected a non-negative integer",
            ),
            (
                "invalid value: integer `5000000000`, expected u32",
                "invalid value: integer `5000000000`, expected a non-negative integer up to 4294967295",
            ),
            (
                "invalid type: floating point `1.5`, expected i64",
                "invalid type: number `1.5`, expected an integer",
            ),
            (
                "invalid type: sequence, expected a boolean",
                "invalid type: array, expected a boolean",
            ),
            (
                "invalid type: map, expected f64",
                "invalid type: object, expected a number",
            ),
            (
                "invalid type: unit value, expected a string",
                "invalid type: null, expected a string",
            ),
            (
                "invalid type: string \"a, expected u64\\\", b\", expected struct StartRequest",
                "invalid type: string \"a, expected u64\\\", b\", expected an object",
            ),
            (
                "invalid type: integer `5`, expected variant identifier",
                "invalid type: integer `5`, expected a type name (a string)",
            ),
            (
                "invalid type: integer `7`, expected a disposition: `rerunnable`",
                "invalid type: integer `7`, expected a disposition: `rerunnable`",
            ),
            ("missing field `id`", "missing field `id`"),
        ] {
            assert_eq!(wire_terms(said), meant, "{said}");
        }
    }

    /// A type tag of the wrong JSON type is said with the tags it takes,
    /// wherever the tagged object is.
    #[test]
    fn a_tag_of_the_wrong_type_names_the_tags() {
        for (given, path, tags) in [
            (
                json!({"id": "a", "disposition": "rerunnable", "input": {"type": 5}}),
                "input.type",
                "expected a string, one of `tool_call`, `script`, `session_turn`, `external`",
            ),
            (
                json!({"id": "a", "disposition": "rerunnable", "input": {"type": "external"}, "originator": {"type": []}}),
                "originator.type",
                "expected a string, one of `host` or `session`",
            ),
        ] {
            let e = serde_path_to_error::deserialize::<_, crate::StartRequest>(&given).expect_err("refused");
            assert_eq!(e.path().to_string(), path);
            let said = refusal_in_wire_terms::<crate::StartRequest>(&given, path, &e.into_inner().to_string());
            assert!(said.contains(tags), "{said}");
            assert!(
                !said.contains("variant identifier") && !said.contains("sequence"),
                "{said}"
            );
        }
        let given = json!([{"type": "success", "value": 1}, {"type": true}]);
        let e = serde_path_to_error::deserialize::<_, Vec<crate::Outcome>>(&given).expect_err("refused");
        assert_eq!(e.path().to_string(), "[1].type");
        let said = refusal_in_wire_terms::<Vec<crate::Outcome>>(&given, "[1].type", &e.into_inner().to_string());
        assert!(said.contains("one of `success`, `failure`"), "{said}");
    }

    /// An array read as an object is found at its path; arrays the value
    /// holds as arrays, and objects read as objects, are not.
    /// A start request read from JSON (`ctx.start` in a script) names the
    /// field it refuses, in wire terms: not `u32`, not "variant identifier".
    #[test]
    fn a_start_request_from_json_is_refused_in_wire_terms() {
        let turn = |session: Value| json!({"id": "t", "disposition": "rerunnable", "input": {"type": "session_turn", "session": session}});
        for (given, said) in [
            (
                turn(json!({"max_steps": "5"})),
                "invalid request: start request: `input.session.max_steps`: invalid type: string \"5\", expected an \
                 integer from 1 to 64",
            ),
            // Past what a record holds: said as the start's bounds, not as a `u32`.
            (
                turn(json!({"max_steps": 5_000_000_000u64})),
                "invalid request: start request: `input.session.max_steps`: a turn's `max_steps` is 1 to 64, not \
                 5000000000",
            ),
            (
                turn(json!({"max_steps": -1})),
                "invalid request: start request: `input.session.max_steps`: a turn's `max_steps` is 1 to 64, not -1",
            ),
            (
                json!({"id": "t", "disposition": "rerunnable", "input": {"type": 5}}),
                "invalid request: start request: `input.type`: invalid type: integer `5`, expected a string, one of \
                 `tool_call`, `script`, `session_turn`, `external`",
            ),
        ] {
            let refused = crate::StartRequest::from_json(given.clone()).expect_err("refused");
            assert_eq!(refused.to_string(), said, "{given}");
        }
    }

    /// A schedule read from JSON names the field it refuses, in wire terms,
    /// inside its start template's input too.
    #[test]
    fn a_schedule_from_json_is_refused_in_wire_terms() {
        let schedule = |start: Value| json!({"id": "s", "every": "1h", "start": start, "overlap": "skip"});
        for (given, said) in [
            (
                schedule(json!({
                    "disposition": "rerunnable",
                    "input": {"type": "session_turn", "session": {"max_steps": "5"}}
                })),
                "invalid request: schedule: `start.input.session.max_steps`: invalid type: string \"5\", expected an \
                 integer from 1 to 64",
            ),
            (
                schedule(json!({"disposition": "rerunnable", "input": {"type": 5}})),
                "invalid request: schedule: `start.input.type`: invalid type: integer `5`, expected a string, one of \
                 `tool_call`, `script`, `session_turn`, `external`",
            ),
        ] {
            let refused = crate::ScheduleRequest::from_json(given.clone()).expect_err("refused");
            assert!(refused.to_string().starts_with(said), "{given}: {refused}");
        }
    }

    /// A listing filter read from JSON names the field it refuses, in wire terms.
    #[test]
    fn a_filter_from_json_is_refused_in_wire_terms() {
        let refused = crate::ProcessFilter::from_json(json!({"limit": "5"})).expect_err("refused");
        assert_eq!(refused.code(), "invalid_filter");
        assert!(
            refused
                .to_string()
                .ends_with("`limit`: invalid type: string \"5\", expected a non-negative integer"),
            "{refused}"
        );
        let refused = crate::ProcessFilter::from_json(json!({"created_from_ms": -1})).expect_err("refused");
        assert!(refused.to_string().contains("`created_from_ms`"), "{refused}");
        assert!(!refused.to_string().contains("u64"), "{refused}");
    }

    #[test]
    fn an_array_read_as_an_object_is_found_where_it_is() {
        let given = json!({"a": [1, {"b": ["x"]}], "c": {"d": [1]}});
        let read = json!({"a": [1, {"b": {"k": "x"}}], "c": {"d": [1]}});
        assert_eq!(array_read_as_object(&given, &read).as_deref(), Some("a[1].b"));
        assert_eq!(array_read_as_object(&given, &given), None);
        let refused = crate::StartRequest::from_json(json!({
            "id": "x", "input": {"type": "external"}, "disposition": "externally_owned", "wake_target": ["s1"]
        }))
        .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("`wake_target`: expected a JSON object, not an array"),
            "{refused}"
        );
    }

    /// Every signal a process can be sent can be declared: `signal.` and a
    /// name of up to 128 bytes, past the 128 bytes of other type names.
    #[test]
    fn a_signal_of_any_valid_name_can_be_declared() {
        let longest = format!("signal.{}", "s".repeat(128));
        assert!(validate_event_type_name(&longest).is_ok(), "{longest}");
        assert!(crate::events::signal_event_type(&"s".repeat(128)).is_ok());
        for bad in [
            format!("signal.{}", "s".repeat(129)),
            format!("signal.{}!", "s".repeat(122)),
            "t".repeat(129),
            String::new(),
        ] {
            let e = validate_event_type_name(&bad).expect_err(&bad);
            assert_eq!(e.code(), "invalid_event_type_name", "{bad}");
        }
        // Names with dots under `signal.` are declared as before.
        assert!(validate_event_type_name("signal.a.b").is_ok());
    }

    /// An integer past 64 bits is refused (it would be kept as the nearest
    /// double), naming it and where it is; the widest integers 64 bits hold,
    /// floats of any size and digits inside strings are kept.
    #[test]
    fn integers_past_64_bits_are_refused() {
        for (text, digits, at) in [
            (
                "{\"a\": 18446744073709551616}",
                "18446744073709551616",
                "line 1 column 7",
            ),
            (
                "{\"s\": \"x\\\"\",\n \"b\": [1, -9223372036854775809]}",
                "-9223372036854775809",
                "line 2 column 11",
            ),
            (
                "100000000000000000000001",
                "100000000000000000000001",
                "line 1 column 1",
            ),
            (
                "{\"a\": 18446744073709552001}",
                "18446744073709552001",
                "line 1 column 7",
            ),
        ] {
            let e = parse_strict_json(text.as_bytes()).expect_err(text);
            assert_eq!(e.classify(), serde_json::error::Category::Data, "{text}");
            let said = e.to_string();
            assert!(said.contains(digits) && said.contains(at), "{text}: {said}");
        }
        for text in [
            "{\"a\": 18446744073709551615, \"b\": -9223372036854775808}",
            "{\"f\": 1e23, \"g\": 1.8446744073709552e19, \"h\": 123456789012345678901234.5}",
            "{\"s\": \"18446744073709551617\", \"t\": \"\\\\\", \"n\": 3}",
            // What JavaScript writes for 2^64, 1e20 and -1e19: each the
            // shortest form of the double it names.
            "{\"j\": 18446744073709552000, \"k\": 100000000000000000000, \"l\": -10000000000000000000}",
        ] {
            parse_strict_json(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }
    use crate::model::Registration;

    /// A registration with producer types declared out of name order, nested
    /// objects, escapes and every scalar kind.
    fn registration() -> Registration {
        serde_json::from_value(json!({
            "id": "job-\"1\"\n",
            "input": {"type": "tool_call", "tool": "echo", "args": {"z": [1, 2.5, -3, null, true], "a": {"é": "\u{1}"}}},
            "disposition": "rerunnable",
            "event_types": [
                {"name": "zeta.done", "payload_schema": {"type": "object", "required": ["b", "a"]}},
                {"name": "alpha.step", "payload_schema": {}}
            ],
            "wake_target": {"session_id": "s-1"}
        }))
        .expect("registration")
    }

    #[test]
    fn stored_hashes_stay_stable() {
        // Hashes are stored with every process: a changed canonical form would
        // make re-registering an existing process a conflict.
        let reg = registration();
        assert_eq!(
            registration_hash(&reg).unwrap(),
            "sha256:6b2956e357c04344ff03b279097334c78fb4bb7209eea88390add7fca2a49c6a"
        );
        assert_eq!(
            canonical_json(&reg.input).unwrap(),
            r#"{"args":{"a":{"é":"\u0001"},"z":[1,2.5,-3,null,true]},"tool":"echo","type":"tool_call"}"#
        );
        assert_eq!(
            event_hash("zeta.done", &json!({"b": [1, {"y": 1, "x": "\t"}], "a": 1.0})).unwrap(),
            "096cc891d8dfae21ecca9b92c20f0548ff6f12988fb78c90595051ee08bae75f"
        );
    }

    #[test]
    fn declaration_order_of_producer_types_does_not_change_the_hash() {
        let reg = registration();
        let mut sorted = reg.clone();
        sorted.event_types.reverse();
        assert_eq!(registration_hash(&reg).unwrap(), registration_hash(&sorted).unwrap());
    }

    #[test]
    fn equal_schemas_share_one_compiled_validator_and_different_ones_do_not() {
        let a = json!({"type": "object", "required": ["cache-test-a"]});
        let same = json!({"required": ["cache-test-a"], "type": "object"});
        let other = json!({"type": "object", "required": ["cache-test-b"]});
        let first = compiled_schema("t", &a).unwrap();
        assert!(Arc::ptr_eq(&first, &compiled_schema("t", &same).unwrap()));
        let second = compiled_schema("t", &other).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(second.validate(&json!({"cache-test-b": 1})).is_ok());
        assert!(second.validate(&json!({"cache-test-a": 1})).is_err());
        // 1 and 1.0 are different JSON values, so different schemas.
        let int = compiled_schema("t", &json!({"const": 1})).unwrap();
        let float = compiled_schema("t", &json!({"const": 1.0})).unwrap();
        assert!(!Arc::ptr_eq(&int, &float));
    }

    #[test]
    fn oversize_payloads_are_refused_with_their_size() {
        let big = json!({"s": "x".repeat(MAX_PAYLOAD_BYTES)});
        match check_size("payload", &big) {
            Err(CairnError::PayloadTooLarge { size, limit, .. }) => {
                assert_eq!(size, serde_json::to_vec(&big).unwrap().len());
                assert_eq!(limit, MAX_PAYLOAD_BYTES);
            }
            other => panic!("expected payload_too_large, got {other:?}"),
        }
        assert!(check_size("payload", &json!({"s": "x"})).is_ok());
    }

    /// `depth` arrays nested in one another around `inner`.
    fn nested(depth: usize, inner: Value) -> Value {
        (0..depth).fold(inner, |v, _| json!([v]))
    }

    #[test]
    fn payloads_nested_past_the_depth_limit_are_refused_with_their_depth() {
        assert!(check_size("payload", &nested(MAX_JSON_DEPTH, json!(1))).is_ok());
        match check_size("payload", &nested(MAX_JSON_DEPTH + 1, json!(1))) {
            Err(CairnError::InvalidRequest(m)) => {
                assert_eq!(
                    m,
                    format!("payload nests arrays and objects 65 levels deep, over the {MAX_JSON_DEPTH} level limit")
                );
            }
            other => panic!("expected invalid_request, got {other:?}"),
        }
        // Brackets, quotes and backslashes inside strings are text, not nesting.
        let text = json!({"s": "[[[[{{{{\\\"[[[[".repeat(100)});
        assert!(check_size("payload", &nested(MAX_JSON_DEPTH - 1, text.clone())).is_ok());
        assert!(check_size("payload", &nested(MAX_JSON_DEPTH, text)).is_err());
        // Objects count as arrays do.
        let objects = (0..=MAX_JSON_DEPTH).fold(json!(null), |v, _| json!({"k": v}));
        assert!(matches!(
            check_size("payload", &objects),
            Err(CairnError::InvalidRequest(_))
        ));
    }
}
