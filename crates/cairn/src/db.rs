//! Opening a storage backend from a database URL. Every backend the binary
//! supports is wired here and nowhere else.

use std::sync::Arc;

use cairn_core::{MemoryRegistry, ProcessRegistry};

/// Why a database URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names a backend this build does not include.
    #[error("{0}")]
    NotBuilt(String),
    /// The URL is not one this binary understands.
    #[error("unsupported database URL `{0}`: use `memory` or `sqlite:PATH`")]
    Unsupported(String),
}

/// Open the registry a database URL names: `memory` (ephemeral) or `sqlite:PATH`.
pub fn open_registry(url: &str) -> Result<Arc<dyn ProcessRegistry>, OpenError> {
    if url == "memory" || url == "memory:" {
        return Ok(Arc::new(MemoryRegistry::new()));
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Err(OpenError::NotBuilt(format!(
            "sqlite backend not built yet (asked for `{path}`); use --db memory"
        )));
    }
    Err(OpenError::Unsupported(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_memory_and_explains_the_rest() {
        assert!(open_registry("memory").is_ok());
        let err = open_registry("sqlite:x.db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("sqlite backend not built yet"), "{err}");
        assert!(matches!(open_registry("postgres://x"), Err(OpenError::Unsupported(_))));
    }
}
