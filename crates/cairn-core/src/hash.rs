//! Canonical JSON and SHA-256: the content addresses and hashes everything
//! else names (registration hashes, type lists, env refs, wake ids).
//!
//! Invariant: a leaf module; it depends on no other module of the crate but
//! the error type, so the model, events and validation may all use it.

use std::io;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{CairnError, Result};

/// Serialize with object keys sorted at every depth and no whitespace.
pub fn canonical_json(value: &impl Serialize) -> Result<String> {
    let v = json_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_canonical(&v, &mut out).expect("writing to memory cannot fail");
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// `value` as a JSON tree, the input of the canonical writer.
pub(crate) fn json_value(value: &impl Serialize) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| CairnError::InvalidRequest(e.to_string()))
}

/// Write `v` as canonical JSON: keys and scalars are written by serde_json's
/// compact serializer, object keys in byte order at every depth.
pub(crate) fn write_canonical<W: io::Write>(v: &Value, out: &mut W) -> io::Result<()> {
    match v {
        Value::Object(map) => {
            out.write_all(b"{")?;
            // Without serde_json's `preserve_order`, maps iterate in key order
            // already; sort only when they do not.
            let in_order = map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b);
            let mut entries: Vec<(&String, &Value)> = Vec::new();
            if !in_order {
                entries.extend(map.iter());
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            let mut write_entry = |i: usize, k: &String, item: &Value| -> io::Result<()> {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write_canonical(item, out)
            };
            if in_order {
                for (i, (k, item)) in map.iter().enumerate() {
                    write_entry(i, k, item)?;
                }
            } else {
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    write_entry(i, k, item)?;
                }
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        scalar => serde_json::to_writer(&mut *out, scalar).map_err(io::Error::from),
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
