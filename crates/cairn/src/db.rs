//! Opening a storage backend from a database URL. Every backend the binary
//! supports is wired here and nowhere else.

use std::sync::Arc;

use cairn_core::clock::{system_clock, SharedClock};
use cairn_core::{ChangeHub, MemoryRegistry, ProcessRegistry, SystemClock};
use cairn_postgres::{PostgresOptions, PostgresRegistry};
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
    /// `sqlite://NAME`: the form other tools read as a relative path names
    /// `/NAME` here (a path is taken as given), so it is refused.
    #[error(
        "`{0}` would name `/{1}` at the file system's root: write `sqlite:{1}` for a path from this directory, or `sqlite:/{1}` for that one"
    )]
    RootedName(String, String),
    /// A SQLite path SQLite would read as a URI (`file:...`) or that carries
    /// parameters (`?mode=ro`): a path is a path here (the node id's lock
    /// file is named from it).
    #[error(
        "`{0}` is not a plain path: `sqlite:` takes a file path alone (no `file:` URI, no `?` parameters), as in `sqlite:cairn.db`"
    )]
    NotAPath(String),
    /// The URL is not one this binary understands.
    #[error(
        "unsupported database URL `{0}`: use `memory`, `sqlite:PATH` or `postgres://USER@HOST:PORT/DB[?schema=NAME]`"
    )]
    Unsupported(String),
}

/// An opened backend: the registry and the change hub the runtime over it must
/// use. For a shared database the hub is also fed by changes other nodes make.
pub struct Backend {
    /// The registry.
    pub registry: Arc<dyn ProcessRegistry>,
    /// The hub to give [`cairn_core::RuntimeBuilder::hub`].
    pub hub: ChangeHub,
    /// The clock the registry decides expiries and deadlines by, to give
    /// [`cairn_core::RuntimeBuilder::clock`]: the two must tell the same
    /// time. On PostgreSQL it follows the database server's clock, which
    /// every node on the database then shares (ADR 0035); the system clock
    /// elsewhere.
    pub clock: SharedClock,
    /// Who keeps node ids unique among live runtimes on this database.
    node_ids: NodeIds,
}

enum NodeIds {
    /// A memory database: no other runtime can see it.
    Private,
    Sqlite(Arc<SqliteRegistry>),
    Postgres(Arc<PostgresRegistry>),
}

/// A node id held on a backend's database ([`Backend::hold_node`]); the hold
/// ends when this is dropped or the OS process ends.
#[derive(Debug)]
pub enum NodeHold {
    /// Nothing to hold: the database is this process's own.
    Private,
    /// A lock file beside the SQLite file.
    Sqlite(cairn_sqlite::NodeHold),
    /// A session advisory lock on a connection of its own.
    Postgres(cairn_postgres::NodeHold),
}

impl NodeHold {
    /// Resolves when another runtime took the node id from this one (a
    /// PostgreSQL hold whose connection ended and could not be taken again,
    /// ADR 0027): the runtime must stop. Never on SQLite (the kernel keeps a
    /// lock file's lock as long as the process) or a memory database.
    pub async fn lost(&self) {
        match self {
            Self::Postgres(hold) => hold.lost().await,
            Self::Private | Self::Sqlite(_) => std::future::pending().await,
        }
    }
}

/// How long a PostgreSQL node id that another connection holds is asked for
/// again before giving up: a killed holder's connection ends within moments,
/// a vanished host's once the server's keepalives give up on it (ADR 0027).
pub const NODE_HOLD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Backend {
    /// Hold `node` as the node id of this OS process's runtime on the database
    /// (ADR 0027): a second live runtime under the same id would sweep this
    /// one's `owner_bound` work as if it had died. Refused with
    /// [`cairn_core::CairnError::Unavailable`] while another live runtime
    /// holds it (on PostgreSQL, after asking again for [`NODE_HOLD_WAIT`]).
    pub async fn hold_node(&self, node: &str) -> cairn_core::Result<NodeHold> {
        match &self.node_ids {
            NodeIds::Private => {
                cairn_core::NodeIdentity::validate_node_id(node)?;
                Ok(NodeHold::Private)
            }
            NodeIds::Sqlite(r) => r.hold_node(node).map(NodeHold::Sqlite),
            NodeIds::Postgres(r) => r.hold_node(node, NODE_HOLD_WAIT).await.map(NodeHold::Postgres),
        }
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Open the backend a database URL names with its hub: `memory`, `sqlite:PATH`
/// (see [`open_registry`]) or `postgres://...`, whose hub is also fed by the
/// changes other nodes make on the same database (LISTEN/NOTIFY).
pub async fn open_backend(url: &str) -> Result<Backend, OpenError> {
    open_backend_over(url, system_clock()).await
}

/// [`open_backend`], with `base` as the clock a PostgreSQL backend measures
/// its offset to the server's from (the system clock, except in tests).
async fn open_backend_over(url: &str, base: SharedClock) -> Result<Backend, OpenError> {
    let hub = ChangeHub::new();
    if is_postgres(url) {
        let options = PostgresOptions::new(url, base).following_server_clock(true);
        let registry = PostgresRegistry::connect_with(options)
            .await
            .map_err(|source| OpenError::Open {
                url: cairn_postgres::redact(url),
                source,
            })?;
        registry.listen(hub.clone());
        let registry = Arc::new(registry);
        return Ok(Backend {
            registry: registry.clone(),
            hub,
            clock: registry.clock(),
            node_ids: NodeIds::Postgres(registry),
        });
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        let registry = open_sqlite(url, path)?;
        // Another OS process on the same file (a second server, a tool) writes
        // behind this one's back: its commits reach the hub through the watcher.
        registry
            .watch_other_writers(hub.clone())
            .map_err(|source| OpenError::Open {
                url: url.to_string(),
                source,
            })?;
        let registry = Arc::new(registry);
        return Ok(Backend {
            registry: registry.clone(),
            hub,
            clock: system_clock(),
            node_ids: NodeIds::Sqlite(registry),
        });
    }
    let registry = open_registry(url)?;
    Ok(Backend {
        registry,
        hub,
        clock: system_clock(),
        node_ids: NodeIds::Private,
    })
}

/// Open an embedded registry a database URL names: `memory` (ephemeral) or
/// `sqlite:PATH`. PostgreSQL needs [`open_backend`] (it connects asynchronously).
pub fn open_registry(url: &str) -> Result<Arc<dyn ProcessRegistry>, OpenError> {
    if url == "memory" || url == "memory:" {
        return Ok(Arc::new(MemoryRegistry::new()));
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Ok(Arc::new(open_sqlite(url, path)?));
    }
    // Said back redacted: a mistyped scheme may still carry a password.
    Err(OpenError::Unsupported(cairn_postgres::redact(url)))
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
        assert!(matches!(open_registry("mysql://x"), Err(OpenError::Unsupported(_))));
        for not_a_path in ["sqlite:file:cairn-uri.db", "sqlite:cairn-q.db?mode=ro"] {
            assert!(
                matches!(open_registry(not_a_path), Err(OpenError::NotAPath(_))),
                "{not_a_path}"
            );
        }
        assert!(!std::path::Path::new("cairn-q.db?mode=ro").exists());
        let err = open_registry("postgress://u:hunter2@h/db").err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| !e.contains("hunter2")), "{err:?}");
        // `sqlite://NAME` would be `/NAME`: refused, saying what to write.
        let err = open_registry("sqlite://cairn-rooted.db").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("`/cairn-rooted.db`") && e.contains("`sqlite:cairn-rooted.db`")),
            "{err:?}"
        );
        assert!(
            !std::path::Path::new("/cairn-rooted.db").exists(),
            "nothing made at the root"
        );
        // A directory that is not there is named.
        let missing = dir.join("no-such-dir").join("x.db");
        let err = open_registry(&format!("sqlite:{}", missing.display()))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("no-such-dir` does not exist")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    /// A URL refused for its form is refused before anything is opened, in
    /// the words opening it would say; one that may open makes nothing.
    #[test]
    fn a_urls_form_is_checked_without_touching_anything() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("unmade.db");
        for ok in [
            "memory".to_string(),
            "postgres://u@127.0.0.1:1/db".to_string(),
            format!("sqlite:{}", path.display()),
        ] {
            assert!(check_url(&ok).is_ok(), "{ok}");
        }
        assert!(!path.exists(), "checking a URL makes no file");
        assert!(matches!(check_url("sqlite:"), Err(OpenError::Unsupported(_))));
        assert!(matches!(check_url("my.db"), Err(OpenError::Unsupported(_))));
        assert!(matches!(check_url("sqlite://x.db"), Err(OpenError::RootedName(..))));
        assert!(matches!(check_url("sqlite:file:x.db"), Err(OpenError::NotAPath(_))));
        let said = check_url("mysql://u:hunter2@h/db").err().map(|e| e.to_string());
        assert!(said.as_deref().is_some_and(|e| !e.contains("hunter2")), "{said:?}");
    }
}

#[cfg(test)]
mod postgres_tests {
    use super::*;
    use cairn_core::Clock;

    #[tokio::test]
    #[cfg_attr(
        cairn_no_postgres,
        ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
    )]
    async fn postgres_urls_open_with_a_fed_hub_and_bad_ones_say_why() {
        if !cairn_postgres::testing::enabled() {
            return;
        }
        let schema = cairn_postgres::testing::TestSchema::new("cairn_db");
        let backend = open_backend(&schema.db_url()).await.expect("open postgres");
        assert!(backend
            .registry
            .list(&Default::default())
            .await
            .expect("list")
            .is_empty());
        drop(backend);
        // Its clock is the server's, whatever the host's says (ADR 0035):
        // here the host's runs a minute ahead.
        let ahead: SharedClock = Arc::new(cairn_core::ManualClock::new(SystemClock.now_ms() + 60_000));
        let backend = open_backend_over(&schema.db_url(), ahead).await.expect("open postgres");
        let client = cairn_postgres::testing::test_client(&schema.url).await;
        let server: i64 = client
            .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8", &[])
            .await
            .expect("the server's time")
            .get(0);
        let now = backend.clock.now_ms();
        assert!(
            now.abs_diff(u64::try_from(server).expect("after the epoch")) < 2_000,
            "the backend reads {now}, the server {server}"
        );
        let err = open_backend("postgres://nobody:secret@127.0.0.1:1/none")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cannot open") && !err.contains("secret"), "{err}");
    }
}

/// Refuse a database URL this binary cannot open for its form alone
/// (an unknown scheme, a SQLite path that is no plain path), touching
/// nothing: `cairn serve` asks this before it binds its address, so a bad
/// URL is said as one (exit 2) whatever else is wrong. A URL this passes may
/// still fail to open (a PostgreSQL URL is read as it connects).
pub fn check_url(url: &str) -> Result<(), OpenError> {
    if url == "memory" || url == "memory:" || is_postgres(url) {
        return Ok(());
    }
    match url.strip_prefix("sqlite:") {
        Some(path) => check_sqlite_path(url, path),
        // Said back redacted: a mistyped scheme may still carry a password.
        None => Err(OpenError::Unsupported(cairn_postgres::redact(url))),
    }
}

/// The checks of a `sqlite:PATH` URL that need no file system.
fn check_sqlite_path(url: &str, path: &str) -> Result<(), OpenError> {
    if path.is_empty() {
        return Err(OpenError::Unsupported(url.to_string()));
    }
    if let Some(name) = path.strip_prefix("//").filter(|n| !n.starts_with('/')) {
        return Err(OpenError::RootedName(url.to_string(), name.to_string()));
    }
    // SQLite reads a name beginning `file:` as a URI (its build enables
    // them), so `sqlite:file:d.db` and `sqlite:d.db` would open one file
    // under two node-id locks.
    if path.starts_with("file:") || path.contains('?') {
        return Err(OpenError::NotAPath(url.to_string()));
    }
    Ok(())
}

fn open_sqlite(url: &str, path: &str) -> Result<SqliteRegistry, OpenError> {
    check_sqlite_path(url, path)?;
    SqliteRegistry::open(path, Arc::new(SystemClock)).map_err(|source| OpenError::Open {
        url: url.to_string(),
        source,
    })
}
