//! Connections: opening one on cairn's schema, caching prepared statements,
//! telling transient errors from the rest, and the shared autocommit connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{CairnError, Result};
use parking_lot::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// How a PostgreSQL error reads in a cairn error: the server's message and code
/// when it sent one, else the client's description.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The driver's own words name the kind ("error connecting to
            // server"); its source says why (refused, a name not found).
            let text = e.to_string();
            match std::error::Error::source(e).map(ToString::to_string) {
                Some(why) if !text.contains(&why) => format!("{text}: {why}"),
                _ => text,
            }
        }
    }
}

/// Whether re-running the whole transaction may succeed: the connection broke
/// (before the commit was sent), or the server gave up on a serialisation
/// failure, a deadlock or a key another node inserted first.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::UNIQUE_VIOLATION
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                // The server's connection slots are full: nothing was done.
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08")
        }
        // No server code and not closed: an I/O error on the socket.
        None => e.as_db_error().is_none() && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Whether `e` says the connection was lost (closed, an I/O fault, or a
/// server error of the connection classes: `08…`, or the server shutting
/// down or crashed, as a pooler in between reports it): a statement in
/// flight then may or may not have run, and a `COMMIT` in flight may or may
/// not have landed.
pub(crate) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || e.as_db_error().is_none() {
        return true;
    }
    e.code().is_some_and(|code| {
        code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
    })
}

/// The cairn error for a PostgreSQL fault that was not retried (or ran out of retries).
pub(crate) fn storage(e: tokio_postgres::Error) -> CairnError {
    if is_transient(&e) {
        CairnError::Unavailable(format!("postgres: {}", describe(&e)))
    } else {
        CairnError::storage_caused_by(format!("postgres: {}", describe(&e)), e)
    }
}

/// One connection with its prepared statements. The connection task runs until
/// the client is dropped or the socket breaks.
pub(crate) struct Conn {
    pub client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    /// Set when a call on it went unanswered past the call timeout: it is
    /// replaced as a closed one is (a half-open flow after a failover would
    /// otherwise hold every later call until the kernel gives up on it).
    abandoned: std::sync::atomic::AtomicBool,
}

impl Conn {
    /// Connect, set `search_path` to cairn's schema and name the connection.
    pub async fn open(config: &Config, schema: &str, role: &str) -> std::result::Result<Self, tokio_postgres::Error> {
        let mut config = config.clone();
        config.application_name(format!("cairn-{role}-{schema}"));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        // Write lanes and reads run prepared statements that are index lookups
        // by construction. PostgreSQL keeps a prepared statement's generic plan
        // until the table's statistics change, and a plan made while a fresh
        // table was tiny may be a sequential scan that then reads every row of
        // the grown table on each batch. Scans are never what these statements
        // want, so they are priced out here (DDL and admin work keep them).
        //
        // They also always take the generic plan. Left to choose, PostgreSQL
        // plans a statement whose arrays hold one id again at every execution
        // (its custom plan looks cheaper than a generic plan sized for ten),
        // which cost a lone write 0.2..0.4 ms of planning for the same index
        // plan (docs/BENCHMARKS.md). Every statement these connections run is
        // an index lookup whose plan does not depend on the values bound.
        let planner = if role == "write" || role == "read" {
            "; SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan"
        } else {
            ""
        };
        // Transactions read what committed before each statement (READ
        // COMMITTED): a batch's reads after its locks, and a session's
        // deletion after the processes it holds, rely on it, whatever
        // default the server or the URL's `options` set.
        client
            .batch_execute(&format!(
                "SET search_path TO \"{schema}\"; SET default_transaction_isolation TO 'read committed'{planner}"
            ))
            .await?;
        Ok(Self {
            client,
            statements: Mutex::new(HashMap::new()),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The prepared statement for `sql`, preparing it on first use.
    pub async fn stmt(&self, sql: &str) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.lock().get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.lock().insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.abandoned.load(Ordering::Relaxed)
    }

    /// Stop using this connection: the next caller opens another.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

/// Connect with retries over a short backoff (the server may be restarting).
pub(crate) async fn open_retrying(config: &Config, schema: &str, role: &str, attempts: u32) -> Result<Conn> {
    let mut delay = Duration::from_millis(20);
    let mut last = None;
    for _ in 0..attempts.max(1) {
        match Conn::open(config, schema, role).await {
            Ok(c) => return Ok(c),
            Err(e) if is_transient(&e) || e.as_db_error().is_none() => {
                last = Some(e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(storage(e)),
        }
    }
    Err(match last {
        Some(e) => CairnError::Unavailable(format!("postgres: cannot connect: {}", describe(&e))),
        None => CairnError::Unavailable("postgres: cannot connect".into()),
    })
}

/// `, and no later attempt answered (...)` for a write whose attempt was
/// lost, unless the error is that same loss (the call timed out on it).
fn no_later_answer(e: &CairnError, cause: &str) -> String {
    let said = e.to_string();
    if said.contains(cause) {
        String::new()
    } else {
        format!(", and no later attempt answered ({said})")
    }
}

/// Shared autocommit connections for reads and single-statement writes. A
/// tokio-postgres client pipelines concurrent queries, so callers share
/// connections round robin instead of checking them out.
pub(crate) struct Shared {
    config: Config,
    schema: String,
    slots: Vec<Mutex<Arc<Conn>>>,
    next: AtomicUsize,
    /// Longest a call waits ([`crate::PostgresOptions::call_timeout`]).
    call_timeout: Duration,
}

impl Shared {
    pub async fn open(config: &Config, schema: &str, size: usize, call_timeout: Duration) -> Result<Self> {
        let mut slots = Vec::new();
        for _ in 0..size.max(1) {
            slots.push(Mutex::new(Arc::new(open_retrying(config, schema, "read", 3).await?)));
        }
        Ok(Self {
            config: config.clone(),
            schema: schema.to_string(),
            slots,
            next: AtomicUsize::new(0),
            call_timeout,
        })
    }

    /// A live connection; a broken one is replaced first.
    pub async fn get(&self) -> Result<Arc<Conn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let conn = self.slots[i].lock().clone();
        if !conn.is_closed() {
            return Ok(conn);
        }
        let fresh = Arc::new(open_retrying(&self.config, &self.schema, "read", 5).await?);
        *self.slots[i].lock() = fresh.clone();
        Ok(fresh)
    }

    /// Run a read on a shared connection, once more on a fresh one if the
    /// connection broke.
    pub async fn run<T, F, Fut>(&self, work: F) -> Result<T>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, crate::Fault>>,
    {
        self.attempts(work).await.0
    }

    /// Run an idempotent single-statement write (`what` it does), as
    /// [`Shared::run`] runs a read. When an attempt may have been applied
    /// without its answer arriving (the connection broke, or the server did
    /// not answer in time) and no later attempt answered, the answer is
    /// `outcome_unknown`, not `unavailable` ("nothing was done").
    pub async fn run_write<T, F, Fut>(&self, what: &str, work: F) -> Result<T>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, crate::Fault>>,
    {
        match self.attempts(work).await {
            (Err(e), Some(cause)) if !e.is_client_error() => Err(CairnError::OutcomeUnknown(format!(
                "postgres: {cause} while {what}{}: it may have been done; read before retrying",
                no_later_answer(&e, &cause)
            ))),
            (answer, _) => answer,
        }
    }

    /// Run an idempotent single-statement write that answers whether this call
    /// changed anything, as [`Shared::run`] does. When an attempt failed with
    /// the connection breaking rather than the server refusing, that attempt
    /// may have committed before its reply was lost; a retry that then finds
    /// nothing left to do cannot tell whether this call did it, so that answer
    /// is `outcome_unknown` (saying what holds now) instead of `false`.
    pub async fn run_flag<F, Fut>(&self, what: &str, now: &str, work: F) -> Result<bool>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<bool, crate::Fault>>,
    {
        match self.attempts(work).await {
            (Ok(false), Some(cause)) => Err(CairnError::OutcomeUnknown(format!(
                "postgres: {cause} while {what} and, run again, it found nothing left to do: the lost \
                 attempt may have done it, so whether this call did is unknown ({now})"
            ))),
            // A retry that could not be made (no connection), that failed in
            // turn or was not answered in time: the lost attempt may have
            // done it all the same, which `unavailable` ("nothing was done")
            // would deny.
            (Err(e), Some(cause)) if !e.is_client_error() => Err(CairnError::OutcomeUnknown(format!(
                "postgres: {cause} while {what}{}: the lost attempt may have done it; read before retrying",
                no_later_answer(&e, &cause)
            ))),
            (answer, _) => answer,
        }
    }

    /// The answer, and why an attempt broke with its statement possibly in
    /// flight, if one did. The call gives up once the server has not
    /// answered within the call timeout: its statement, if sent, may still run.
    async fn attempts<T, F, Fut>(&self, work: F) -> (Result<T>, Option<String>)
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, crate::Fault>>,
    {
        let mut broke = None;
        // The connection a statement is in flight on, if one is: what the
        // timeout abandons, and whether a write may have been sent.
        let mut in_flight: Option<Arc<Conn>> = None;
        let tries = async {
            let mut attempt = 0;
            loop {
                let conn = self.get().await?;
                in_flight = Some(conn.clone());
                let answer = work(conn).await;
                in_flight = None;
                match answer {
                    Err(crate::Fault::Pg(e)) => {
                        // Said whether or not it is tried again: a statement
                        // in flight when its connection broke may have run
                        // (a fault of the client's own, decoding a row, is
                        // no broken connection).
                        if connection_lost(&e) && (is_transient(&e) || e.as_db_error().is_some()) {
                            broke = Some(format!("the connection broke ({})", describe(&e)));
                        }
                        if attempt >= 2 || !is_transient(&e) {
                            return Err(crate::Fault::Pg(e).into());
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                    }
                    other => return other.map_err(CairnError::from),
                }
            }
        };
        let answer = tokio::time::timeout(self.call_timeout, tries).await;
        match answer {
            Ok(answer) => (answer, broke),
            Err(_) => {
                let silent = format!(
                    "the server did not answer within {} s (URL parameter `call_timeout`)",
                    self.call_timeout.as_secs()
                );
                // Only a statement in flight may have been applied: a call
                // still opening a connection, or waiting to try again, sent
                // nothing (unless an earlier attempt's connection broke).
                let sent = in_flight.map(|conn| {
                    conn.abandon();
                    silent.clone()
                });
                (
                    Err(CairnError::Unavailable(format!("postgres: {silent}"))),
                    broke.or(sent),
                )
            }
        }
    }
}
