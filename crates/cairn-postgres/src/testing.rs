//! Test support: the test server's URL and throwaway schemas.
//!
//! Tests that need PostgreSQL read `CAIRN_TEST_POSTGRES_URL`. When it is unset
//! they print a loud SKIPPED line and pass, unless `CI=true`, where an unset URL
//! is a failure: CI must never pass by skipping.

use std::sync::Arc;

use cairn_core::clock::SharedClock;
use cairn_core::Result;

use crate::{PostgresOptions, PostgresRegistry};

/// The variable naming the test server.
pub const URL_VAR: &str = "CAIRN_TEST_POSTGRES_URL";

/// The test server's URL, or `None` after printing why the test is skipped.
///
/// # Panics
/// When the variable is unset and `CI=true`.
pub fn test_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{URL_VAR} is unset but CI=true: the PostgreSQL tests must run in CI, not skip");
            }
            eprintln!(
                "\n*** SKIPPED: PostgreSQL test ({URL_VAR} is unset; set it, e.g. \
                 postgres://postgres@127.0.0.1:5432/test, to run it) ***\n"
            );
            None
        }
    }
}

/// Whether PostgreSQL tests run (see [`test_url`]).
pub fn enabled() -> bool {
    test_url().is_some()
}

/// Forget the type lists this OS process has cached, so the next read of a
/// record fetches its list from the server (tests of that path).
pub fn forget_type_lists() {
    crate::rows::forget_type_lists();
}

/// Register `registrations` as one write batch, as a lane commits the
/// registrations that were queued together, and answer each: a test can then
/// mix new ids with existing, pruned and repeated ones in a single batch.
pub async fn register_together(
    registry: &PostgresRegistry,
    registrations: &[cairn_core::Registration],
) -> Vec<Result<cairn_core::registry::Registered>> {
    registry.register_together(registrations).await
}

/// The hot indexed queries, each with the index its plan must use:
/// `(name, SQL taking $1 = now and $2 = limit as int8, index)`.
pub fn indexed_queries() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("claim candidates", crate::uow::LOAD_CANDIDATES, "processes_claimable"),
        (
            "abandon worklist",
            crate::read::ABANDON_WORKLIST_SQL,
            "processes_abandon",
        ),
        ("worklist (run half)", crate::read::WORKLIST_SQL, "processes_claimable"),
        (
            "worklist (abandon half)",
            crate::read::WORKLIST_SQL,
            "processes_abandon",
        ),
    ]
}

/// `EXPLAIN` of `sql` (taking `$1` = now and `$2` = limit as int8, as
/// [`indexed_queries`] do) on a connection opened as cairn opens one for
/// `role` (`"write"` for lanes, `"read"`, `"admin"`), so a test sees the plan
/// that connection's session settings give.
pub async fn plan_on(url: &str, schema: &str, role: &str, sql: &str) -> Result<String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| cairn_core::CairnError::InvalidRequest(format!("bad postgres url: {e}")))?;
    let conn = crate::conn::open_retrying(&config, schema, role, 1).await?;
    let rows = conn
        .client
        .query(&format!("EXPLAIN {sql}"), &[&i64::MAX, &256i64])
        .await
        .map_err(|e| cairn_core::CairnError::storage_caused_by(crate::conn::describe(&e), e))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `EXPLAIN` of the listing query of `filter` (one page of 100) on a read
/// connection, as a generic plan: the plan a cached statement settles on, which
/// knows none of its bound values (so a partial index serves it only if the
/// query states the index's term).
pub async fn listing_plan(url: &str, schema: &str, filter: &cairn_core::model::ProcessFilter) -> Result<String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| cairn_core::CairnError::InvalidRequest(format!("bad postgres url: {e}")))?;
    let conn = crate::conn::open_retrying(&config, schema, "read", 1).await?;
    let (sql, args) = crate::read::list_query(filter, 100);
    // The values as SQL literals (texts and integers are all a listing binds).
    let values = args
        .iter()
        .map(|a| {
            let shown = format!("{a:?}");
            match serde_json::from_str::<String>(&shown) {
                Ok(text) => format!("'{}'", text.replace('\'', "''")),
                Err(_) => shown,
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let err = |e: tokio_postgres::Error| cairn_core::CairnError::storage_caused_by(crate::conn::describe(&e), e);
    conn.client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE listing AS {sql}"
        ))
        .await
        .map_err(err)?;
    let rows = conn
        .client
        .query(&format!("EXPLAIN EXECUTE listing({values})"), &[])
        .await
        .map_err(err)?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A uniquely named schema, dropped (with everything in it) when this is dropped.
pub struct TestSchema {
    /// The server URL.
    pub url: String,
    /// The schema's name.
    pub name: String,
}

impl TestSchema {
    /// A fresh name on the test server. Panics without a URL (call [`enabled`] first).
    pub fn new(prefix: &str) -> Self {
        let url = test_url().expect("CAIRN_TEST_POSTGRES_URL");
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            url,
            name: format!("{prefix}_{}", &id[..16]),
        }
    }

    /// Options for a registry on this schema.
    pub fn options(&self, clock: SharedClock) -> PostgresOptions {
        PostgresOptions::new(&self.url, clock).with_schema(self.name.clone())
    }

    /// Connect a registry on this schema (creating it).
    pub async fn connect(&self, clock: SharedClock) -> Result<PostgresRegistry> {
        PostgresRegistry::connect_with(self.options(clock)).await
    }

    /// Run `sql` on the test server in a fresh connection (setup and inspection).
    pub async fn execute(&self, sql: &str) -> std::result::Result<(), tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        client.batch_execute(sql).await?;
        drop(client);
        let _ = task.await;
        Ok(())
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside or outside a runtime: use a thread with its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                let task = tokio::spawn(conn);
                let r = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
                drop(client);
                let _ = task.await;
                r.ok()
            })
        });
        let _ = done.join();
    }
}

/// A registry on a fresh schema, with the schema guard to keep alive.
pub async fn fresh(clock: SharedClock) -> (Arc<PostgresRegistry>, TestSchema) {
    let schema = TestSchema::new("cairn_t");
    let registry = schema
        .connect(clock)
        .await
        .expect("connect to the test PostgreSQL server");
    (Arc::new(registry), schema)
}
