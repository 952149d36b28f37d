//! Durable scripts (SPEC §14) as far as the core knows them: content-addressed
//! modules, the reserved `script.*` event types of script processes, and the
//! [`ScriptEngine`] hook a runtime runs `script` inputs with.
//!
//! The engine itself (a JavaScript interpreter, a C build) lives in its own
//! crate above this one; the core never depends on it. The binary or an
//! embedder hands one to [`crate::RuntimeBuilder::script_engine`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::EventType;
use crate::model::Outcome;
use crate::tool::ToolContext;
use crate::{CairnError, Result};

/// The prefix of a module's content address: `module:sha256:{hex}`.
pub const MODULE_REF_PREFIX: &str = "module:sha256:";

/// The largest module source accepted, in bytes of UTF-8 (1 MiB). A workflow
/// is code, not data: anything larger is almost certainly a mistake, and every
/// activation compiles the whole source again.
pub const MAX_MODULE_SOURCE_BYTES: usize = 1 << 20;

/// The longest module name, in bytes.
pub const MAX_MODULE_NAME_BYTES: usize = 256;

/// The most journaled calls a script process may be given
/// (`--script-max-calls`): a call's child is `{id}/{n}`, so a script's id
/// leaves room for the largest `n` ([`MAX_SCRIPT_ID_BYTES`]).
pub const MAX_SCRIPT_CALLS: u64 = 1_000_000;
/// The longest script process id: its calls' children, `{id}/{n}`, are ids too.
pub const MAX_SCRIPT_ID_BYTES: usize = crate::validate::MAX_ID_BYTES - 8; // "/1000000"

/// A journaled context call (`{n, kind, ...}`).
pub const SCRIPT_CALL: &str = "script.call";
/// The answer of a journaled call (`{n, value}` or `{n, error}`).
pub const SCRIPT_RESULT: &str = "script.result";
/// A `ctx.log(...)` line (written once, never repeated on replay).
pub const SCRIPT_LOG: &str = "script.log";
/// The namespace of the script journal's event types.
pub const SCRIPT_PREFIX: &str = "script.";

/// The event types every script process has beside the core ones. They are
/// part of its core list (a producer cannot declare `script.*`), and only an
/// append under the run's lease may write them (see [`crate::fold`]), so the
/// journal is the script run's alone.
pub fn script_event_types() -> Vec<EventType> {
    let n = serde_json::json!({
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 1}}
    });
    let call = serde_json::json!({
        "type": "object",
        "required": ["n", "kind"],
        "properties": {"n": {"type": "integer", "minimum": 1}, "kind": {"type": "string"}}
    });
    vec![
        EventType::plain(SCRIPT_CALL).with_schema(call),
        EventType::plain(SCRIPT_RESULT).with_schema(n),
        EventType::plain(SCRIPT_LOG).with_schema(serde_json::json!({"type": "object"})),
    ]
}

static SCRIPT_CORE_TYPES: std::sync::LazyLock<crate::events::EventTypes> = std::sync::LazyLock::new(|| {
    let mut all = crate::events::core_event_types();
    all.extend(script_event_types());
    crate::events::EventTypes::new(all)
});

/// The core list of a script process that declares no types of its own
/// (shared, like [`crate::events::EventTypes::core`]).
pub fn script_core_types() -> crate::events::EventTypes {
    SCRIPT_CORE_TYPES.clone()
}

/// A stored module without its source (what listings answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleInfo {
    /// `module:sha256:{hex}` of the source's UTF-8 bytes.
    pub module_ref: String,
    /// The name given when it was first stored (`null` when none was: SPEC
    /// §14 lists the field in every answer).
    #[serde(default)]
    pub name: Option<String>,
    /// The names of its exported functions (not classes or generators): the
    /// process definitions it holds.
    pub exports: Vec<String>,
    /// When it was first stored, in epoch milliseconds.
    pub created_at_ms: u64,
}

/// A stored module with its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Module {
    /// Ref, name, exports and creation time.
    #[serde(flatten)]
    pub info: ModuleInfo,
    /// The JavaScript source.
    pub source: String,
}

/// The answer of storing a module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePut {
    /// The stored module (the one stored first when `created` is false).
    pub module: ModuleInfo,
    /// False when the same source was stored already (nothing was written).
    pub created: bool,
}

/// The content address of a source.
pub fn module_ref(source: &str) -> String {
    format!("{MODULE_REF_PREFIX}{}", crate::hash::sha256_hex(source.as_bytes()))
}

/// Check a module ref's shape (`module:sha256:` and 64 lowercase hex digits).
pub fn validate_module_ref(module_ref: &str) -> Result<()> {
    let ok = module_ref
        .strip_prefix(MODULE_REF_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if ok {
        Ok(())
    } else {
        Err(CairnError::InvalidId(format!(
            "module ref `{}`: expected `{MODULE_REF_PREFIX}` and 64 lowercase hex digits",
            module_ref.escape_debug()
        )))
    }
}

/// Check a module's name, when it has one: 1 to [`MAX_MODULE_NAME_BYTES`]
/// bytes without control characters.
pub fn check_module_name(name: Option<&str>) -> Result<()> {
    let refuse = |why: String| Err(CairnError::InvalidRequest(format!("module name {why}")));
    match name {
        Some(name) if name.trim().is_empty() => refuse(format!(
            "is blank: give 1 to {MAX_MODULE_NAME_BYTES} bytes that are not all spaces, or leave it out"
        )),
        Some(name) if name.len() > MAX_MODULE_NAME_BYTES => refuse(format!(
            "is {} bytes, over the {MAX_MODULE_NAME_BYTES} byte limit",
            name.len()
        )),
        Some(name) if name.chars().any(char::is_control) => {
            refuse(format!("`{}` contains a control character", name.escape_debug()))
        }
        _ => Ok(()),
    }
}

/// Check a module before it is stored: its source size, its name, that its ref
/// is the address of its source, and its export names.
pub fn validate_module(module: &Module) -> Result<()> {
    check_source(&module.source)?;
    check_module_name(module.info.name.as_deref())?;
    if module.info.module_ref != module_ref(&module.source) {
        return Err(CairnError::InvalidRequest(format!(
            "module ref `{}` is not the address of its source",
            module.info.module_ref
        )));
    }
    for e in &module.info.exports {
        check_export(e)?;
    }
    Ok(())
}

/// The most characters of a refused export's name a message quotes.
const QUOTED_EXPORT_CHARS: usize = 64;

/// Check an export's name: a start names it as its `process_name`, which
/// is held to an id's rules (1 to [`crate::validate::MAX_ID_BYTES`] bytes, no
/// control character, neither `.` nor `..`). A module exporting a function
/// under another name is refused as a module (`invalid_module`), naming the
/// export (its first [`QUOTED_EXPORT_CHARS`] characters when long).
fn check_export(name: &str) -> Result<()> {
    let limit = crate::validate::MAX_ID_BYTES;
    let why = if name.is_empty() {
        "its name is empty".to_string()
    } else if name == "." || name == ".." {
        "a relative path segment is no process name (no URL can name it)".to_string()
    } else if name.len() > limit {
        format!(
            "its name is {} bytes, over the {limit} byte limit of a process name",
            name.len()
        )
    } else if name.chars().any(char::is_control) {
        "its name contains a control character".to_string()
    } else {
        return Ok(());
    };
    let mut quoted: String = name.chars().take(QUOTED_EXPORT_CHARS).collect();
    if quoted.len() < name.len() {
        quoted.push_str("...");
    }
    Err(CairnError::InvalidModule(format!(
        "the export `{}` cannot be started as a process: {why}; export the function under a name of 1 to \
         {limit} bytes without control characters, other than `.` and `..`",
        quoted.escape_debug()
    )))
}

/// Check a source's size (a clear error before anything compiles it).
pub fn check_source(source: &str) -> Result<()> {
    if source.len() > MAX_MODULE_SOURCE_BYTES {
        return Err(CairnError::PayloadTooLarge {
            what: "module source".into(),
            size: source.len(),
            limit: MAX_MODULE_SOURCE_BYTES,
        });
    }
    // An empty file (or stdin that gave nothing) says so, not that the
    // module exports no function.
    if source.trim().is_empty() {
        return Err(CairnError::InvalidModule(
            "the module source is empty: a module exports at least one async function".into(),
        ));
    }
    // The engine reads a source only up to a NUL (a module holding one would
    // be judged on a part of itself), and PostgreSQL takes no NUL in text:
    // refused alike everywhere, where it is, before anything is stored.
    if let Some(i) = source.find('\0') {
        let before = &source[..i];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |n| n + 1);
        let column = before[start..].chars().count() + 1;
        return Err(CairnError::InvalidModule(format!(
            "the source holds a NUL character at line {line}, column {column}; write it as `\\0` inside a string"
        )));
    }
    Ok(())
}

/// What a runtime needs of a script engine: compile a module to learn its
/// exports, and run one activation of a `script` process.
#[async_trait]
pub trait ScriptEngine: Send + Sync + 'static {
    /// Compile `source` (no code of it runs with any effect) and answer the
    /// names of its exported functions, or `invalid_module` naming the line
    /// and column of a syntax error.
    fn exports(&self, source: &str) -> Result<Vec<String>>;

    /// Run one activation of the script process `ctx` belongs to: replay its
    /// journal, run until the function returns or nothing more can happen, and
    /// answer its outcome. When it must wait in a `rerunnable` process it
    /// suspends through `ctx` (the worker sees [`crate::StopReason::Suspended`]
    /// and writes nothing more); what it returns then is ignored.
    async fn run(&self, ctx: ToolContext, module: Module, process_name: String, args: Value) -> Outcome;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_module_name_says_which_rule_it_broke() {
        let said = |name: &str| check_module_name(Some(name)).expect_err(name).to_string();
        for blank in ["", "   ", "\u{3000}"] {
            assert!(said(blank).contains("is blank"), "{}", said(blank));
        }
        let long = "n".repeat(MAX_MODULE_NAME_BYTES + 1);
        assert!(
            said(&long).contains("is 257 bytes, over the 256 byte limit"),
            "{}",
            said(&long)
        );
        assert!(
            said("a\n").contains("`a\\n` contains a control character"),
            "{}",
            said("a\n")
        );
        assert!(check_module_name(Some("fine.js")).is_ok());
        assert!(check_module_name(None).is_ok());
    }

    #[test]
    fn a_module_exporting_a_name_no_process_can_have_is_an_invalid_module() {
        let module = |exports: Vec<String>| {
            let source = "export async function main() {}".to_string();
            Module {
                info: ModuleInfo {
                    module_ref: module_ref(&source),
                    name: None,
                    exports,
                    created_at_ms: 0,
                },
                source,
            }
        };
        let refused = |export: &str| match validate_module(&module(vec!["main".into(), export.into()])) {
            Err(CairnError::InvalidModule(message)) => message,
            other => panic!("{export:?} answered {other:?}"),
        };
        let long = format!("{}{}", "é".repeat(40), "x".repeat(200));
        assert_eq!(long.len(), 280);
        let said = refused(&long);
        assert!(
            said.starts_with(&format!(
                "the export `{}{}...` cannot be started",
                "é".repeat(40),
                "x".repeat(24)
            )),
            "{said}"
        );
        assert!(said.contains("is 280 bytes, over the 256 byte limit"), "{said}");
        assert!(refused(".").contains("the export `.` cannot be started as a process: a relative path"));
        assert!(refused("..").contains("the export `..`"));
        assert!(refused("").contains("its name is empty"));
        assert!(
            refused("a\nb").contains("the export `a\\nb` cannot be started as a process: its name contains a control")
        );
        // At the limit, and the names a process may have, are stored.
        assert!(validate_module(&module(vec!["m".repeat(256), "main".into(), "a.b".into()])).is_ok());
    }
}
