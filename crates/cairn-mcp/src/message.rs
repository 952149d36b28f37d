//! One JSON-RPC 2.0 message as MCP has it, checked before the protocol
//! library reads it: the library drops what it cannot parse without an
//! answer, and a client waiting for one would wait for ever. Both transports
//! answer these faults themselves, with the JSON-RPC error for each.

use cairn_core::validate::json_kind as kind;
use serde_json::Value;

/// The UTF-8 byte order mark, which RFC 8259 §8.1 lets a parser ignore at
/// the start of a text.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without the one byte order mark they may begin with, as the HTTP
/// API and the CLI read JSON (a second one is left, and is no JSON). The
/// transports take it off a message before [`parse`] reads it and before
/// they pass the message on.
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// `bytes` as one JSON value, as the HTTP API reads a body: an object that
/// gives a key twice is refused (`{"id":"mine","id":"other"}` must not quietly
/// mean the second), as invalid request `-32600` with the message's id when
/// a client could match it (`Err((id, code, text))`); bytes that are not
/// JSON are a parse error `-32700`.
pub fn parse(bytes: &[u8]) -> Result<Value, (Value, i64, String)> {
    match cairn_core::validate::parse_strict_json(bytes) {
        Ok(message) => Ok(message),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            let id = serde_json::from_slice::<Value>(bytes)
                .map(|m| answerable_id(&m))
                .unwrap_or(Value::Null);
            Err((id, -32600, format!("invalid request: {e}")))
        }
        // Valid JSON nested past the parser's 128 levels: a request whose id
        // its start shows is answered by that id.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => Err((
            leading_id(bytes),
            -32600,
            format!("invalid request: the message nests arrays and objects past 128 levels ({e})"),
        )),
        Err(e) => Err((Value::Null, -32700, format!("parse error: {e}"))),
    }
}

/// What is wrong inside the `arguments` of a `tools/call` request whose
/// message is otherwise sound JSON: a key given twice, an integer past what
/// 64 bits hold ([`cairn_core::validate::parse_strict_json`]'s refusals),
/// said as the HTTP API says it of a body of those bytes (the line and
/// column are the arguments' own). The call is answered as a tool error
/// (`invalid_request`, [`ArgumentsFault::failure`]), as SPEC §16 has a
/// cairn error answered, not as a protocol error: the protocol library
/// reads such arguments leniently (the last of two values, a rounded
/// integer), so the tool must never run them. Over streamable HTTP the
/// server puts it in the request's extensions, where the tool call finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgumentsFault(pub String);

impl ArgumentsFault {
    /// The tool error for a call of `tool` with these arguments.
    pub fn failure(&self, tool: &str) -> crate::Failure {
        crate::Failure::new("invalid_request", format!("arguments of `{tool}`: {}", self.0))
    }
}

/// `bytes` as one JSON value, as [`parse`] reads it, but for a `tools/call`
/// request whose one fault [`parse`] refuses lies inside its
/// `params.arguments` (an object): that message is read (leniently, as the
/// protocol library will read it) and comes with its [`ArgumentsFault`]. A
/// key given twice or an integer past 64 bits anywhere else in a message
/// stays a protocol error (`-32600`).
pub fn parse_call(bytes: &[u8]) -> Result<(Value, Option<ArgumentsFault>), (Value, i64, String)> {
    let refused = match parse(bytes) {
        Ok(message) => return Ok((message, None)),
        Err(refused) => refused,
    };
    if refused.1 != -32600 {
        return Err(refused);
    }
    arguments_fault(bytes).ok_or(refused)
}

/// The message and its [`ArgumentsFault`], when `bytes` (refused by
/// [`parse`]) are a `tools/call` request sound but for its arguments.
fn arguments_fault(bytes: &[u8]) -> Option<(Value, Option<ArgumentsFault>)> {
    let message: Value = serde_json::from_slice(bytes).ok()?;
    let is_call = message.get("method").and_then(Value::as_str) == Some("tools/call")
        && message.get("id").is_some()
        && message.pointer("/params/arguments").is_some_and(Value::is_object);
    if !is_call {
        return None;
    }
    let (start, end) = arguments_span(bytes)?;
    // The message with empty arguments must be sound: a fault elsewhere
    // (or a second `params` or `arguments`) is the message's own.
    let rest = [&bytes[..start], b"{}".as_slice(), &bytes[end..]].concat();
    cairn_core::validate::parse_strict_json(&rest).ok()?;
    let fault = cairn_core::validate::parse_strict_json(&bytes[start..end]).err()?;
    (fault.classify() == serde_json::error::Category::Data).then(|| (message, Some(ArgumentsFault(fault.to_string()))))
}

/// Where the text of `params.arguments` lies in `bytes` (the first one
/// given, read from the start): its start and end offsets.
fn arguments_span(bytes: &[u8]) -> Option<(usize, usize)> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;
    type Found<'a> = &'a std::cell::Cell<Option<(usize, usize)>>;
    /// Reads a map: the first value of `key` is read as the map `nested`
    /// names a key of, or (`None`) its span is found; the rest is skipped.
    struct Field<'a> {
        key: &'static str,
        found: Found<'a>,
        base: usize,
        nested: Option<&'static str>,
    }
    impl<'de> Visitor<'de> for Field<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key != self.key || self.found.get().is_some() {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                match self.nested {
                    Some(inner) => map.next_value_seed(Field {
                        key: inner,
                        found: self.found,
                        base: self.base,
                        nested: None,
                    })?,
                    None => {
                        let raw: &'de RawValue = map.next_value()?;
                        let text = raw.get();
                        let start = (text.as_ptr() as usize).checked_sub(self.base);
                        self.found.set(start.map(|s| (s, s + text.len())));
                    }
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Field<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    let found = std::cell::Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Field {
        key: "params",
        found: &found,
        base: bytes.as_ptr() as usize,
        nested: Some("arguments"),
    }
    .deserialize(&mut de)
    .ok()?;
    found.get().filter(|&(start, end)| start <= end && end <= bytes.len())
}

/// The id of a message read from its start alone (the rest may be cut off,
/// or nest past what a parser reads, and a byte order mark may lead it):
/// the top-level `id` when it comes before anything unreadable and a client
/// could match it, else `null`.
pub fn leading_id(bytes: &[u8]) -> Value {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    /// Reads top-level keys until `id`, keeps its value, and stops there
    /// (with an error, so nothing after it is read).
    struct Find<'a>(&'a std::cell::RefCell<Option<Value>>);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON-RPC message")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "id" {
                    *self.0.borrow_mut() = Some(map.next_value::<Value>()?);
                    return Err(serde::de::Error::custom("found"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let found = std::cell::RefCell::new(None);
    let _ = serde_json::Deserializer::from_slice(without_bom(bytes)).deserialize_map(Find(&found));
    found.into_inner().filter(id_ok).unwrap_or(Value::Null)
}

/// The id of a message of which only `prefix`, its start, was read (a body
/// refused for its size): [`leading_id`], taken only when the prefix goes
/// on past it. An id at the very end of the prefix may be cut (`12` of
/// `123`), so it is taken only when a byte less shows the same id.
pub fn id_of_start(prefix: &[u8]) -> Value {
    let id = leading_id(prefix);
    if id.is_null() || leading_id(&prefix[..prefix.len().saturating_sub(1)]) != id {
        return Value::Null;
    }
    id
}

/// Whether `bytes` hold a notification (see [`is_notification`]), read
/// leniently: one with a key given twice is dropped unanswered too.
pub fn is_notification_bytes(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|m| is_notification(&m))
}

/// What is wrong with `message` as one JSON-RPC 2.0 message, if anything: the
/// JSON-RPC error code and its message (`carrier` says what carries one
/// message: "each POST carries", "each line carries"). Requests need a string
/// method, an id (if any) that is a string or an integer (never `null`, as MCP
/// has it) and params (if any) that are an object; a message without a method
/// is a response and carries `result` or `error` (an error response's id may
/// be `null`, as JSON-RPC has one answering a request whose id was unread).
pub fn fault(message: &Value, carrier: &str) -> Option<(i64, String)> {
    let bad = |code: i64, text: &str| Some((code, text.to_string()));
    let Some(object) = message.as_object() else {
        return Some((
            -32600,
            format!("invalid request: {carrier} one JSON-RPC 2.0 message, an object with \"jsonrpc\": \"2.0\""),
        ));
    };
    if object.get("jsonrpc") != Some(&Value::from("2.0")) {
        return bad(-32600, "invalid request: the message must say \"jsonrpc\": \"2.0\"");
    }
    if let Some(id) = object.get("id") {
        // An error response's id is null when the request's could not be
        // read (JSON-RPC 2.0 §5): a response all the same, refused (or
        // dropped) as one, not for its id.
        let unmatched_error = id.is_null() && !object.contains_key("method") && object.contains_key("error");
        if !id_ok(id) && !unmatched_error {
            return Some((
                -32600,
                format!(
                    "invalid request: `id` must be a string or an integer (a signed 64-bit one), never null; \
                     it is {}",
                    id_kind(id)
                ),
            ));
        }
    }
    match object.get("method") {
        Some(Value::String(method)) => match object.get("params") {
            // The protocol library reads `_meta` as an object (or `null`, as
            // none), and one that is neither would be answered without the
            // request's id.
            Some(Value::Object(params)) if params.get("_meta").is_some_and(|m| !m.is_object() && !m.is_null()) => {
                Some((
                    -32602,
                    format!(
                        "invalid params: `_meta` must be an object, not {}",
                        kind(&params["_meta"])
                    ),
                ))
            }
            Some(Value::Object(params))
                if method == "tools/list" && params.get("cursor").is_some_and(|c| !c.is_string()) =>
            {
                Some((
                    -32602,
                    format!(
                        "invalid params: a `cursor` must be a string, not {}",
                        kind(&params["cursor"])
                    ),
                ))
            }
            // Said here, as for every method: over stdio the protocol
            // library's handshake would answer it with a message about
            // per-request `_meta` fields, which is not what is wrong.
            Some(Value::Object(params)) if method == "initialize" && !initialize_params_fit(params) => Some((
                -32602,
                format!("invalid params for `initialize`: it takes {INITIALIZE_PARAMS}"),
            )),
            None if method == "initialize" => Some((
                -32602,
                format!("invalid params for `initialize`: it takes {INITIALIZE_PARAMS}"),
            )),
            None | Some(Value::Object(_)) => None,
            Some(Value::Array(_)) => bad(-32602, "invalid params: MCP's params are an object, not an array"),
            Some(other) => Some((
                -32600,
                format!("invalid request: `params` must be an object, not {}", kind(other)),
            )),
        },
        Some(other) => Some((
            -32600,
            format!("invalid request: `method` must be a string, not {}", kind(other)),
        )),
        None if object.contains_key("result") || object.contains_key("error") => None,
        None => bad(
            -32600,
            "invalid request: a message names a `method` (a request or notification), or carries `result` or \
             `error` (a response)",
        ),
    }
}

/// What is wrong with `message` as a request before MCP's handshake over
/// stdio, if anything: a request (a method and an id) the protocol library
/// would answer with a message about per-request `_meta` fields. It serves
/// `initialize`, `ping` and `discover` before the handshake, and a request
/// that carries its protocol version in its `_meta`.
pub fn first_request_fault(message: &Value) -> Option<String> {
    let method = message.get("method").and_then(Value::as_str)?;
    let versioned = message
        .pointer("/params/_meta")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("io.modelcontextprotocol/protocolVersion"));
    let served = matches!(method, "initialize" | "ping" | "discover") || versioned;
    (message.get("id").is_some() && !served)
        .then(|| format!("invalid request: send `initialize` (MCP's handshake) before `{method}`"))
}

/// What `initialize` takes, said when its params do not fit.
pub const INITIALIZE_PARAMS: &str = "an object with `protocolVersion` (a string), `capabilities` (an object) and \
     `clientInfo` (`name` and `version`)";

fn initialize_params_fit(params: &serde_json::Map<String, Value>) -> bool {
    params.get("protocolVersion").is_some_and(Value::is_string)
        && params.get("capabilities").is_some_and(Value::is_object)
        && params.get("clientInfo").is_some_and(|c| {
            c.get("name").is_some_and(Value::is_string) && c.get("version").is_some_and(Value::is_string)
        })
}

/// A request id a client can match: a string, or an integer that fits a
/// signed 64-bit one; written with a fraction or exponent (`1e3`), one a
/// double holds exactly (below 2^53, as the protocol library takes it: it
/// drops a larger one unanswered).
fn id_ok(id: &Value) -> bool {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    id.is_string() || id.is_i64() || id.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < EXACT)
}

/// Whether `message` is a JSON-RPC 2.0 notification (a string `method` and no
/// `id`): one that is never answered, not even with an error, whatever is
/// wrong with its params.
pub fn is_notification(message: &Value) -> bool {
    message.get("jsonrpc") == Some(&Value::from("2.0"))
        && message.get("method").is_some_and(Value::is_string)
        && message.get("id").is_none()
}

/// The id to answer a faulty message with: its own when a client could match
/// it, else `null`.
pub fn answerable_id(message: &Value) -> Value {
    message.get("id").filter(|id| id_ok(id)).cloned().unwrap_or(Value::Null)
}

/// A JSON-RPC error answer, as one line of JSON.
pub fn error_line(id: Value, code: i64, message: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// What an id no client could match is: its kind, or for a number the
/// reason a number will not do.
fn id_kind(id: &Value) -> String {
    match id.as_f64() {
        Some(f) if f.fract() != 0.0 => format!("{id}, a number with a fraction"),
        Some(_) => {
            format!("{id}, an integer past what a signed 64-bit one (or, written as a float, a double exactly) holds")
        }
        None => kind(id).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An id is taken from a message's start only when the start shows it
    /// whole: an id the cut may have shortened is no id.
    #[test]
    fn the_id_of_a_cut_start_is_whole_or_null() {
        let message = br#"{"jsonrpc":"2.0","id":123,"method":"tools/call","params":{"name":"x"}}"#;
        let at = |needle: &str| {
            message
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("in the message")
                + needle.len()
        };
        assert_eq!(id_of_start(message), json!(123));
        assert_eq!(id_of_start(&message[..at(r#""id":123,"#)]), json!(123));
        assert_eq!(id_of_start(&message[..at(r#""id":123"#)]), Value::Null);
        assert_eq!(id_of_start(&message[..at(r#""id":12"#)]), Value::Null);
        assert_eq!(id_of_start(&message[..at(r#""jsonrpc":"2.0","#)]), Value::Null);
        let named = br#"{"id":"call-7","method":"ping"}"#;
        assert_eq!(id_of_start(&named[..10]), Value::Null);
        assert_eq!(id_of_start(&named[..16]), json!("call-7"));
        assert_eq!(id_of_start(b""), Value::Null);
    }

    /// One byte order mark at a message's start is taken off (RFC 8259
    /// §8.1), as the HTTP API takes one off; a second is no JSON.
    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let ping = br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
        let marked = [UTF8_BOM, ping.as_slice()].concat();
        assert_eq!(without_bom(&marked), ping);
        assert_eq!(leading_id(&marked), json!(7));
        assert_eq!(id_of_start(&marked[..marked.len() - 1]), json!(7));
        let twice = [UTF8_BOM, UTF8_BOM, ping.as_slice()].concat();
        assert_eq!(parse(without_bom(&twice)).map_err(|(_, code, _)| code), Err(-32700));
        assert_eq!(leading_id(&twice), Value::Null);
        assert_eq!(without_bom(UTF8_BOM), b"");
        assert_eq!(without_bom(b"{}"), b"{}");
    }

    /// A `tools/call` sound but for its arguments' JSON is read, with the
    /// fault said as the HTTP API says it of a body of those bytes (line and
    /// column the arguments' own); the same fault anywhere else in the
    /// message, or another fault beside it, is the message's own (`-32600`).
    #[test]
    fn a_fault_inside_a_calls_arguments_is_the_calls_own() {
        let call = |params: &str| format!(r#"{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{params}}}"#);
        let strict = |text: &str| {
            cairn_core::validate::parse_strict_json(text.as_bytes())
                .unwrap_err()
                .to_string()
        };
        for arguments in [
            r#"{"id":"a","id":"b"}"#,
            r#"{"limit":18446744073709551616}"#,
            "{\n  \"id\": \"a\",\n  \"input\": {\"args\": {\"k\": 1, \"k\": 2}}\n}",
        ] {
            let message = call(&format!(r#"{{"name":"process_get", "arguments": {arguments}}}"#));
            assert_eq!(parse(message.as_bytes()).map_err(|(_, code, _)| code), Err(-32600));
            let (read, fault) = parse_call(message.as_bytes()).expect("read");
            assert_eq!(read["params"]["name"], "process_get");
            let fault = fault.expect("its arguments' fault");
            assert_eq!(fault.0, strict(arguments), "{arguments}");
            assert_eq!(
                fault.failure("process_get"),
                crate::Failure::new(
                    "invalid_request",
                    format!("arguments of `process_get`: {}", strict(arguments))
                )
            );
        }
        assert!(strict(r#"{"id":"a","id":"b"}"#).contains("line 1 column"));
        // A sound message has no fault.
        let sound = call(r#"{"name":"process_get","arguments":{"id":"a"}}"#);
        assert_eq!(parse_call(sound.as_bytes()).expect("read").1, None);
        for message in [
            // Elsewhere in the message.
            call(r#"{"name":"process_get","name":"process_get","arguments":{"id":"a"}}"#),
            call(r#"{"name":"process_get","arguments":{"id":"a"},"_meta":{"n":18446744073709551616}}"#),
            r#"{"jsonrpc":"2.0","id":4,"id":4,"method":"tools/call","params":{"name":"process_get","arguments":{"id":"a"}}}"#.to_string(),
            // Beside one in the arguments, or a second `arguments`.
            call(r#"{"name":"process_get","name":"x","arguments":{"id":"a","id":"b"}}"#),
            call(r#"{"name":"process_get","arguments":{"id":"a","id":"b"},"arguments":{"id":"c"}}"#),
            call(r#"{"name":"process_get","arguments":{"id":"c"},"arguments":{"id":"a","id":"b"}}"#),
            // Not a call's arguments: another method, a notification, arguments no object.
            r#"{"jsonrpc":"2.0","id":4,"method":"ping","params":{"arguments":{"id":"a","id":"b"}}}"#.to_string(),
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"process_get","arguments":{"id":"a","id":"b"}}}"#.to_string(),
            call(r#"{"name":"process_get","arguments":[{"id":"a","id":"b"}]}"#),
        ] {
            let refused = parse_call(message.as_bytes()).map(|(_, fault)| fault);
            assert_eq!(refused.map_err(|(_, code, _)| code), Err(-32600), "{message}");
        }
    }

    /// An error response whose id is null (its request's id was unread)
    /// is a response, faulted for nothing; a result's id is never null,
    /// and a request's never.
    #[test]
    fn an_error_response_may_carry_a_null_id() {
        let error = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}});
        assert_eq!(fault(&error, "each POST carries"), None);
        for message in [
            json!({"jsonrpc": "2.0", "id": null, "result": {}}),
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": null, "method": "ping", "error": {"code": 1, "message": "m"}}),
        ] {
            let (code, text) = fault(&message, "each POST carries").expect("refused");
            assert_eq!(code, -32600, "{message}");
            assert!(text.contains("never null"), "{message}: {text}");
        }
    }
}
