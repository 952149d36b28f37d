//! Opening a storage backend from a database URL. Every backend the binary
//! supports is wired here and nowhere else.

use std::sync::Arc;

use cairn_core::{ChangeHub, MemoryRegistry, ProcessRegistry, SystemClock};
use cairn_sqlite::SqliteRegistry;

/// Why a database URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The backend refused to open the database (corrupt, foreign or newer file, I/O error).
    #[error("cannot open `{url}`: {source}")]
    Open {
        /// The URL as given.
        url: String,
        /// What the backend said.
        #[source]
        source: cairn_core::CairnError,
    },
    /// The URL is not one this binary understands.
    #[error("unsupported database URL `{0}`: use `memory` or `sqlite:PATH`")]
    Unsupported(String),
}

/// An opened backend: the registry and the change hub the runtime over it must
/// use. For a shared database the hub is also fed by changes other nodes make.
pub struct Backend {
    /// The registry.
    pub registry: Arc<dyn ProcessRegistry>,
    /// The hub to give [`cairn_core::RuntimeBuilder::hub`].
    pub hub: ChangeHub,
}

/// Open the backend a database URL names (see [`open_registry`]) with its hub.
pub async fn open_backend(url: &str) -> Result<Backend, OpenError> {
    let registry = open_registry(url)?;
    Ok(Backend {
        registry,
        hub: ChangeHub::new(),
    })
}

/// Open the registry a database URL names: `memory` (ephemeral) or `sqlite:PATH`.
pub fn open_registry(url: &str) -> Result<Arc<dyn ProcessRegistry>, OpenError> {
    if url == "memory" || url == "memory:" {
        return Ok(Arc::new(MemoryRegistry::new()));
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(OpenError::Unsupported(url.to_string()));
        }
        let registry = SqliteRegistry::open(path, Arc::new(SystemClock)).map_err(|source| OpenError::Open {
            url: url.to_string(),
            source,
        })?;
        return Ok(Arc::new(registry));
    }
    Err(OpenError::Unsupported(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_memory_and_sqlite_and_explains_the_rest() {
        assert!(open_registry("memory").is_ok());
        let dir = std::env::temp_dir().join(format!("cairn-db-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = dir.join("cairn.db");
        assert!(open_registry(&format!("sqlite:{}", db.display())).is_ok());
        let text = dir.join("not-a-db.txt");
        std::fs::write(
            &text,
            "hello, this is not a database, it is just some text that is long enough",
        )
        .expect("write text");
        let err = open_registry(&format!("sqlite:{}", text.display()))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("cannot open")));
        assert!(matches!(open_registry("sqlite:"), Err(OpenError::Unsupported(_))));
        assert!(matches!(open_registry("postgres://x"), Err(OpenError::Unsupported(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
