//! Selector evaluation and the text a selected value renders as: what a
//! terminal's `await_output`, a wake's `when`, `input` and `dedupe_key` read
//! from a payload. [`crate::fold`] is their one caller; the selector shapes
//! and their validation are [`crate::events`].
//!
//! Invariant: pure functions of a payload.

use serde_json::Value;

use crate::events::Selector;

impl Selector {
    /// Select from `payload`; `None` when a pointer does not resolve.
    pub fn select(&self, payload: &Value) -> Option<Value> {
        match self {
            Self::Payload => Some(payload.clone()),
            Self::Pointer(p) => payload.pointer(p).cloned(),
            Self::Const(v) => Some(v.clone()),
            Self::Present(p) => Some(Value::Bool(payload.pointer(p).is_some())),
            Self::Template { template, fields } => {
                let mut out = String::with_capacity(template.len());
                let mut rest = template.as_str();
                while let Some(open) = rest.find('{') {
                    out.push_str(&rest[..open]);
                    let after = &rest[open + 1..];
                    match after.find('}') {
                        Some(close) => {
                            let name = &after[..close];
                            match fields.get(name) {
                                Some(sel) => out.push_str(&render_text(sel.select(payload).as_ref())),
                                None => {
                                    out.push('{');
                                    out.push_str(name);
                                    out.push('}');
                                }
                            }
                            rest = &after[close + 1..];
                        }
                        None => {
                            out.push_str(&rest[open..]);
                            rest = "";
                        }
                    }
                }
                out.push_str(rest);
                Some(Value::String(out))
            }
        }
    }
}

/// Render a selected value as wake text: strings as they are, other JSON compactly, nothing as "".
pub fn render_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Whether a selected value counts as true for `when`.
pub fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        _ => true,
    }
}
