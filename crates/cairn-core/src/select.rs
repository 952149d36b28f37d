//! Selector evaluation and the text a selected value renders as: what a
//! terminal's `await_output`, a wake's `when`, `input` and `dedupe_key` read
//! from a payload. [`crate::fold`] is their one caller; the selector shapes
//! and their validation are [`crate::events`].
//!
//! Invariant: pure functions of a payload.

use serde_json::Value;

use crate::events::Selector;
use crate::validate::MAX_PAYLOAD_BYTES;
use crate::{CairnError, Result};

impl Selector {
    /// Select from `payload`; `Ok(None)` when a pointer does not resolve. A
    /// template renders at most [`MAX_PAYLOAD_BYTES`] of text, and a template
    /// nested in it at most what is left of that: past it (a template of
    /// templates doubles its text at every level) the selection is refused,
    /// `payload_too_large`.
    ///
    /// A rendering also fills at most [`MAX_TEMPLATE_HOLES`] holes in all,
    /// nested templates' included: a hole that renders nothing costs no
    /// room, so without this a template of templates of empty holes would
    /// render nothing at an exponential cost, inside the write that appends.
    pub fn select(&self, payload: &Value) -> Result<Option<Value>> {
        let mut budget = MAX_PAYLOAD_BYTES;
        let mut holes = MAX_TEMPLATE_HOLES;
        self.select_within(payload, &mut budget, &mut holes)
    }

    fn select_within(&self, payload: &Value, budget: &mut usize, holes: &mut usize) -> Result<Option<Value>> {
        Ok(match self {
            Self::Payload => Some(payload.clone()),
            Self::Pointer(p) => payload.pointer(p).cloned(),
            Self::Const(v) => Some(v.clone()),
            Self::Present(p) => Some(Value::Bool(payload.pointer(p).is_some())),
            Self::Template { template, fields } => {
                let mut out = String::with_capacity(template.len().min(*budget));
                let mut rest = template.as_str();
                while let Some(open) = rest.find('{') {
                    push(&mut out, &rest[..open], budget)?;
                    let after = &rest[open + 1..];
                    match after.find('}') {
                        Some(close) => {
                            let name = &after[..close];
                            match fields.get(name) {
                                Some(sel) => {
                                    *holes = holes.checked_sub(1).ok_or_else(|| CairnError::PayloadTooLarge {
                                        what: "the holes a template selector fills".into(),
                                        size: MAX_TEMPLATE_HOLES + 1,
                                        limit: MAX_TEMPLATE_HOLES,
                                    })?;
                                    // A nested template may render what is
                                    // left of this one's room, counted once,
                                    // here, as it is pasted in.
                                    let mut room = *budget;
                                    let value = sel.select_within(payload, &mut room, holes)?;
                                    push(&mut out, &render_text(value.as_ref()), budget)?;
                                }
                                None => push(&mut out, &format!("{{{name}}}"), budget)?,
                            }
                            rest = &after[close + 1..];
                        }
                        None => {
                            push(&mut out, &rest[open..], budget)?;
                            rest = "";
                        }
                    }
                }
                push(&mut out, rest, budget)?;
                Some(Value::String(out))
            }
        })
    }
}

/// The holes one rendering of a selector fills at most, nested ones included.
pub const MAX_TEMPLATE_HOLES: usize = 10_000;

/// Append `text` to a template's output while the rendering budget holds.
fn push(out: &mut String, text: &str, budget: &mut usize) -> Result<()> {
    if text.len() > *budget {
        return Err(CairnError::PayloadTooLarge {
            what: "the text a template selector renders".into(),
            size: out.len() + text.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    *budget -= text.len();
    out.push_str(text);
    Ok(())
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
