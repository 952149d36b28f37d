//! Test support: the test server's URL and throwaway schemas.
//!
//! Tests that need PostgreSQL read `CAIRN_TEST_POSTGRES_URL`. When it is unset
//! at build time they are compiled `#[ignore]` (`cfg(cairn_no_postgres)`, set by
//! `build.rs`), so they are reported ignored, never passed; under `CI=true`
//! they are built to run and fail at once: CI must never pass by skipping.

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

/// Claim batches for `(owner, limit)` as one write batch (leases of a
/// minute), as a lane commits the claims queued together, and answer each.
pub async fn claim_together(
    registry: &PostgresRegistry,
    claims: &[(&str, usize)],
) -> Vec<Result<Vec<cairn_core::Claim>>> {
    registry.claim_together(claims).await
}

/// The hot indexed queries, each with the index its plan must use:
/// `(name, SQL taking $1 = now and $2 = limit as int8, index)`.
pub fn indexed_queries() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "claim candidates (ready half)",
            crate::uow::LOAD_CANDIDATES,
            "processes_ready",
        ),
        (
            "claim candidates (timed half)",
            crate::uow::LOAD_CANDIDATES,
            "processes_claimable",
        ),
        (
            "abandon worklist",
            crate::read::ABANDON_WORKLIST_SQL,
            "processes_abandon",
        ),
        ("worklist (ready half)", crate::read::WORKLIST_SQL, "processes_ready"),
        (
            "worklist (timed half)",
            crate::read::WORKLIST_SQL,
            "processes_claimable",
        ),
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

/// The statement that finds leases of a node's earlier incarnations (`$1`
/// node id, `$2` incarnation, `$3` limit).
pub const EARLIER_LEASES_SQL: &str = crate::read::EARLIER_LEASES_SQL;

/// The statement that reads a frame's pending wakes (`$1` session, `$2`
/// limit, `$3` bytes, `$4` frame).
pub const FRAME_WAKES_SQL: &str = crate::read::FRAME_WAKES_SQL;

/// The statement that loads a write batch's rows (ids in `$1` and `$2`).
pub const LOAD_ROWS: &str = crate::uow::LOAD_ROWS;

/// Run `sql` (taking the id arrays `$1` and `$2`) `times` times with one id,
/// as a lone write does, as a prepared statement on a connection opened as
/// cairn opens one for `role`; answer how many generic and custom plans that
/// connection made for it (`pg_prepared_statements`).
pub async fn plans_made(url: &str, schema: &str, role: &str, sql: &str, id: &str, times: usize) -> Result<(i64, i64)> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| cairn_core::CairnError::InvalidRequest(format!("bad postgres url: {e}")))?;
    let conn = crate::conn::open_retrying(&config, schema, role, 1).await?;
    let err = |e: tokio_postgres::Error| cairn_core::CairnError::storage_caused_by(crate::conn::describe(&e), e);
    let stmt = conn.stmt(sql).await.map_err(err)?;
    let ids = vec![id.to_string()];
    for _ in 0..times {
        conn.client.query(&stmt, &[&ids, &ids]).await.map_err(err)?;
    }
    let row = conn
        .client
        .query_one(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            &[&sql],
        )
        .await
        .map_err(err)?;
    Ok((row.get(0), row.get(1)))
}

/// `EXPLAIN` of the listing query of `filter` (one page of 100) on a read
/// connection, as a generic plan: the plan a cached statement settles on, which
/// knows none of its bound values (so a partial index serves it only if the
/// query states the index's term).
pub async fn listing_plan(url: &str, schema: &str, filter: &cairn_core::model::ProcessFilter) -> Result<String> {
    let (sql, args) = crate::read::list_query(filter, None, 100);
    generic_plan(url, schema, &sql, &args).await
}

/// [`listing_plan`] of the walk a newest-first listing by status tries
/// first (the newest processes, down the creation-time index).
pub async fn walk_plan(url: &str, schema: &str, filter: &cairn_core::model::ProcessFilter) -> Result<String> {
    let (sql, args) = crate::read::walk_query(filter, None, 100);
    generic_plan(url, schema, &sql, &args).await
}

/// `EXPLAIN` of `sql` with `args` as a generic plan on a read connection.
async fn generic_plan(
    url: &str,
    schema: &str,
    sql: &str,
    args: &[Box<dyn tokio_postgres::types::ToSql + Sync + Send>],
) -> Result<String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| cairn_core::CairnError::InvalidRequest(format!("bad postgres url: {e}")))?;
    let conn = crate::conn::open_retrying(&config, schema, "read", 1).await?;
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

    /// A database URL that opens this schema: the test server's URL with
    /// `schema=` added, as `cairn serve --db` takes it.
    pub fn db_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.url, self.name)
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

/// A connection of a test's own to the server at `url`.
pub async fn test_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    tokio::spawn(conn);
    client
}

/// The server's clock, in epoch milliseconds.
pub async fn server_now_ms(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8", &[])
        .await
        .expect("the server's time")
        .get(0)
}

/// Every line a test binary logs, for a test that reads what an operator
/// would be told (see [`captured_logs`]).
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The capture of every line this test binary logs, made on the first call
/// by `install`, which sets the global subscriber writing to the capture it
/// is given (the subscriber is the test's own: this crate does not depend
/// on one). One subscriber for every thread: a callsite's interest is
/// shared by all of them, and subscribers set per thread by tests running
/// at once can leave a line unseen.
pub fn captured_logs(install: impl FnOnce(Captured)) -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        install(logs.clone());
        logs
    })
}

/// The server process whose session holds node id `node` over `schema`
/// ([`PostgresRegistry::hold_node`]), if any.
pub async fn node_holder(client: &tokio_postgres::Client, schema: &str, node: &str) -> Option<i32> {
    client
        .query_opt(crate::node_hold::HOLDER, &[&crate::node_hold::key(schema, node)])
        .await
        .expect("the holder of a node id")
        .map(|r| r.get(0))
}

/// Wait (up to 20 s) until node id `node` over `schema` is held again by a
/// session other than `old`'s; answers its server process.
pub async fn retaken(client: &tokio_postgres::Client, schema: &str, node: &str, old: i32) -> i32 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match node_holder(client, schema, node).await {
            Some(pid) if pid != old => return pid,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "node id `{node}` was not taken again"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// End the session of server process `pid` (as a restarted server or a broken
/// network would); whether there was one.
pub async fn terminate(client: &tokio_postgres::Client, pid: i32) -> bool {
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend")
        .get(0)
}

/// Another runtime's session waiting for a node id's lock.
pub struct NodeRival {
    /// Its server process.
    pub pid: i32,
    waiting: tokio::task::JoinHandle<tokio_postgres::Client>,
}

/// A rival that holds the node id; it lets go when dropped.
pub struct HeldByRival {
    /// Its server process.
    pub pid: i32,
    _client: tokio_postgres::Client,
}

impl NodeRival {
    /// A session that asks for `node`'s lock over `schema` and waits for it;
    /// answers once the server has it queued, so it takes the lock the
    /// moment the holder's session ends.
    pub async fn queue(url: &str, schema: &str, node: &str) -> Self {
        let client = test_client(url).await;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let key = crate::node_hold::key(schema, node);
        let waiting = tokio::spawn(async move {
            client
                .execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0))", &[&key])
                .await
                .expect("the rival's lock");
            client
        });
        let watcher = test_client(url).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let queued: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
                    &[&pid],
                )
                .await
                .expect("pg_locks")
                .get(0);
            if queued == 1 {
                return Self { pid, waiting };
            }
            assert!(tokio::time::Instant::now() < deadline, "the rival never queued");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Wait until the rival holds the lock.
    pub async fn holds(self) -> HeldByRival {
        let client = self.waiting.await.expect("the rival's task");
        HeldByRival {
            pid: self.pid,
            _client: client,
        }
    }
}
