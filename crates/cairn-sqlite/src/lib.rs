//! cairn-sqlite: the embedded default backend of cairn. One SQLite file, no
//! server to run.
//!
//! - **Durable**: WAL journaling with `synchronous=FULL`; a call that returned
//!   `Ok` survives `kill -9` and power loss.
//! - **Group commit**: one writer thread owns the write connection and commits
//!   every job queued behind the previous commit in one transaction, each job in
//!   its own savepoint (see [`WriteStats`]). Every writing method is one job, so
//!   it is atomic.
//! - **Reads** run on a small pool of read-only connections on the blocking
//!   thread pool; WAL lets them proceed while the writer commits.
//! - **Same behaviour as [`cairn_core::MemoryRegistry`]**: every rule comes from
//!   [`cairn_core::fold`]; this crate stores what it computes.
//!
//! ```no_run
//! # async fn demo() -> cairn_core::Result<()> {
//! use std::sync::Arc;
//! use cairn_core::{ProcessRegistry, SystemClock};
//! use cairn_sqlite::SqliteRegistry;
//!
//! let registry = SqliteRegistry::open("cairn.db", Arc::new(SystemClock))?;
//! let running = registry.list(&Default::default()).await?;
//! # let _ = running; Ok(()) }
//! ```

#![warn(missing_docs)]

mod schema;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::clock::SharedClock;
use cairn_core::events::{self, AppendRequest, AppendResult, EventPage};
use cairn_core::fold::{self, Authority};
use cairn_core::model::{
    page_limit, Change, ChangePage, Claim, Disposition, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease,
    Outcome, ProcessFilter, ProcessRecord, PruneReport, Registration, SessionDeleteReport, SessionScope, StartGrant,
    StatusFilter, TransferReport, WakeDelivery, Watermark, WorkAction, WorkItem,
};
use cairn_core::registry::{prune_status, CancelAnswer, ProcessRegistry, Registered};
use cairn_core::validate::{self, validate_id, validate_scope};
use cairn_core::{CairnError, Result};
use parking_lot::Mutex;
use rusqlite::{Connection, Transaction};
use serde_json::json;

pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use writer::WriteStats;

use store::Fault;

/// How to open a [`SqliteRegistry`].
#[derive(Clone)]
pub struct SqliteOptions {
    /// The clock every expiry and retention decision reads.
    pub clock: SharedClock,
    /// Most write jobs committed in one transaction (default 64).
    pub max_batch: usize,
    /// Idle read connections kept open (default 4). More may be opened under
    /// load; the extra ones are closed when they return.
    pub read_connections: usize,
    /// How long a connection waits for a lock held by another process on the
    /// same file before failing (default 5 s).
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    /// The defaults, on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            max_batch: 64,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("clock", &self.clock)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .field("busy_timeout", &self.busy_timeout)
            .finish()
    }
}

/// The read side: idle read-only connections, reused across reads.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    busy_timeout: Duration,
}

impl Readers {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        schema::open_reader(&self.path, self.busy_timeout)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Run `work` in one read transaction, so a multi-statement read sees one snapshot.
    fn read<T>(&self, work: impl FnOnce(&Transaction<'_>) -> std::result::Result<T, Fault>) -> Result<T> {
        let mut conn = self.take()?;
        let result = match conn.transaction() {
            Ok(tx) => work(&tx).map_err(CairnError::from),
            Err(e) => Err(CairnError::storage(format!("sqlite: cannot begin a read: {e}"))),
        };
        // The transaction only read; dropping it ended it, and the connection is reusable.
        self.give_back(conn);
        result
    }
}

/// The SQLite [`ProcessRegistry`]. Share it as `Arc<dyn ProcessRegistry>`.
///
/// Dropping it waits for queued writes to commit and closes the file.
pub struct SqliteRegistry {
    writer: writer::Writer,
    readers: Arc<Readers>,
    clock: SharedClock,
}

impl std::fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRegistry")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

impl SqliteRegistry {
    /// Open (or create) the database at `path` with default options.
    ///
    /// Fails with [`CairnError::Storage`], changing nothing, when the file is not
    /// an SQLite database, is corrupt, is another application's database, or was
    /// written by a newer schema version.
    pub fn open(path: impl AsRef<Path>, clock: SharedClock) -> Result<Self> {
        Self::open_with(path, SqliteOptions::new(clock))
    }

    /// Open (or create) the database at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_writer(&path, options.busy_timeout)?;
        let readers = Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle: options.read_connections.max(1),
            busy_timeout: options.busy_timeout,
        });
        // Open one reader now so a file that cannot be read fails at open, not later.
        let first = schema::open_reader(&readers.path, readers.busy_timeout)?;
        readers.give_back(first);
        let writer = writer::Writer::start(conn, options.max_batch)?;
        Ok(Self {
            writer,
            readers,
            clock: options.clock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.readers.path
    }

    /// Commits and jobs the writer has carried so far.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Overwrite stored env bytes (to exercise corruption detection in tests).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn corrupt_env_for_test(&self, env_ref: &str, bytes: Vec<u8>) -> Result<()> {
        let env_ref = env_ref.to_string();
        self.writer
            .run(move |tx| store::overwrite_env(tx, &env_ref, &bytes))
            .await
    }

    /// Run `work` as one write job; it receives the clock's time read when the job runs.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, u64) -> std::result::Result<T, Fault> + Send + 'static,
    {
        let clock = self.clock.clone();
        self.writer.run(move |tx| work(tx, clock.now_ms())).await
    }

    /// Run `work` on a read connection on the blocking pool; it receives the clock's time.
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, u64) -> std::result::Result<T, Fault> + Send + 'static,
    {
        let readers = self.readers.clone();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || readers.read(|tx| work(tx, now)))
            .await
            .map_err(|e| CairnError::storage(format!("sqlite read task failed: {e}")))?
    }
}

impl Drop for SqliteRegistry {
    fn drop(&mut self) {
        // Close idle readers before the writer (dropped after this) so the write
        // connection is the last one: closing it checkpoints the WAL into the
        // main file and removes it.
        self.readers.idle.lock().clear();
    }
}

#[async_trait]
impl ProcessRegistry for SqliteRegistry {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        let now = self.clock.now_ms();
        let record = fold::initial_record(&registration, now)?;
        if let Some(g) = &grant {
            validate_scope(&g.session_scope)?;
        }
        self.write(move |tx, _| {
            if let Some(gone) = store::tombstone(tx, &record.id)? {
                return Err(gone.into());
            }
            if let Some(existing) = store::load(tx, &record.id)? {
                if existing.record.registration_hash == record.registration_hash {
                    return Ok(Registered {
                        process: existing.record,
                        created: false,
                    });
                }
                return Err(CairnError::RegistrationConflict { id: record.id.clone() }.into());
            }
            if let Some(env) = &record.env_ref {
                if !store::env_exists(tx, env)? {
                    return Err(CairnError::UnknownEnv(env.clone()).into());
                }
            }
            let grant = grant.map(|g| Grant {
                scope: g.session_scope,
                process_id: record.id.clone(),
                descriptor: g.descriptor,
                granted_at_ms: now,
            });
            store::insert_new(tx, &record, grant.as_ref())?;
            Ok(Registered {
                process: record,
                created: true,
            })
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.read(move |tx, _| Ok(store::entry(tx, &id)?.record)).await
    }

    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        let limit = filter.page_size()?;
        let filter = filter.clone();
        self.read(move |tx, _| store::list(tx, &filter, limit)).await
    }

    async fn events_after(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage> {
        validate_id("process id", id)?;
        let limit = page_limit(limit)?;
        let id = id.to_string();
        self.read(move |tx, _| {
            let (events, last_sequence) = store::events_after(tx, &id, after, limit)?;
            let next_after = match events.last() {
                Some(last) if last.sequence < last_sequence => Some(last.sequence),
                _ => None,
            };
            Ok(EventPage { events, next_after })
        })
        .await
    }

    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.write(move |tx, now| Ok(store::append(tx, &id, &request, Authority::Caller, now)?.result))
            .await
    }

    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        validate_id("process id", id)?;
        let id = id.to_string();
        let req = AppendRequest::new(events::CANCEL_REQUESTED, json!({ "reason": reason }))
            .with_replay_key(fold::cancel_replay_key(reason.as_deref()));
        self.write(move |tx, now| {
            if store::entry(tx, &id)?.record.is_terminal() {
                return Err(CairnError::ProcessTerminal(id.clone()).into());
            }
            let mut record = store::append(tx, &id, &req, Authority::Cairn, now)?.record;
            let mut cancelled_now = false;
            if fold::cancels_at_once(&record, now) {
                let outcome =
                    Outcome::cancelled(reason.clone().unwrap_or_else(|| "cancelled before it started".into()));
                record = store::append(tx, &id, &fold::terminal_request(&outcome), Authority::Cairn, now)?.record;
                cancelled_now = true;
            }
            Ok(CancelAnswer {
                process: record,
                cancelled_now,
            })
        })
        .await
    }

    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        let scope = scope.clone();
        let id = id.to_string();
        self.write(move |tx, now| {
            store::entry(tx, &id)?;
            let grant = Grant {
                scope,
                process_id: id,
                descriptor,
                granted_at_ms: now,
            };
            store::upsert_grant(tx, &grant)?;
            Ok(grant)
        })
        .await
    }

    async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        let scope = scope.clone();
        let id = id.to_string();
        self.write(move |tx, _| Ok(store::take_grant(tx, &scope, &id)?.is_some()))
            .await
    }

    async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport> {
        validate_scope(from)?;
        validate_scope(to)?;
        for id in ids {
            validate_id("process id", id)?;
        }
        let (from, to, ids) = (from.clone(), to.clone(), ids.to_vec());
        self.write(move |tx, now| {
            let mut report = TransferReport::default();
            for id in ids {
                match store::take_grant(tx, &from, &id)? {
                    Some(g) => {
                        let moved = g.moved_to(&to, now);
                        store::upsert_grant(tx, &moved)?;
                        report.moved.push(id);
                    }
                    None => report.not_granted.push(id),
                }
            }
            Ok(report)
        })
        .await
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        validate_scope(scope)?;
        let limit = filter.page_size()?;
        let (scope, filter) = (scope.clone(), filter.clone());
        self.read(move |tx, _| store::list_granted_to(tx, &scope, &filter, limit))
            .await
    }

    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        validate_scope(scope)?;
        let limit = filter.page_size()?;
        let (scope, filter) = (scope.clone(), filter.clone());
        self.read(move |tx, _| store::list_originated_by(tx, &scope, &filter, limit))
            .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<SessionDeleteReport> {
        validate_id("session id", session_id)?;
        let session_id = session_id.to_string();
        self.write(move |tx, _| {
            let (revoked_grants, deleted_wakes, orphaned, preserved) = store::delete_session(tx, &session_id)?;
            Ok(SessionDeleteReport {
                session_id,
                revoked_grants,
                deleted_wakes,
                orphaned,
                preserved,
            })
        })
        .await
    }

    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        validate_id("session id", session_id)?;
        let limit = page_limit(limit)?;
        let session_id = session_id.to_string();
        self.read(move |tx, _| store::pending_wakes(tx, &session_id, limit))
            .await
    }

    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        validate_id("session id", session_id)?;
        validate_id("wake id", wake_id)?;
        let (session_id, wake_id) = (session_id.to_string(), wake_id.to_string());
        self.write(move |tx, _| store::ack_wake(tx, &session_id, &wake_id))
            .await
    }

    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease> {
        validate_id("process id", id)?;
        validate_id("owner id", owner_id)?;
        fold::check_ttl(ttl_ms)?;
        let (id, owner_id) = (id.to_string(), owner_id.to_string());
        self.write(move |tx, now| store::claim(tx, &id, &owner_id, ttl_ms, now))
            .await
    }

    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
        validate_id("owner id", owner_id)?;
        fold::check_ttl(ttl_ms)?;
        let owner_id = owner_id.to_string();
        self.write(move |tx, now| {
            let ids = store::run_candidates(tx, now, limit)?;
            let mut claims = Vec::with_capacity(ids.len());
            for id in ids {
                let lease = store::claim(tx, &id, &owner_id, ttl_ms, now)?;
                let record = store::entry(tx, &id)?.record;
                let req = fold::started_request(&record, &lease);
                let process = store::append(tx, &id, &req, Authority::Cairn, now)?.record;
                claims.push(Claim { lease, process });
            }
            Ok(claims)
        })
        .await
    }

    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        validate_id("process id", &lease.process_id)?;
        let lease = lease.clone();
        self.write(move |tx, now| {
            let record = store::entry(tx, &lease.process_id)?.record;
            let req = fold::started_request(&record, &lease);
            Ok(store::append(tx, &lease.process_id, &req, Authority::Cairn, now)?.record)
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        validate_id("process id", &lease.process_id)?;
        fold::check_ttl(ttl_ms)?;
        let lease = lease.clone();
        self.write(move |tx, now| store::renew(tx, &lease, ttl_ms, now)).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        validate_id("process id", &lease.process_id)?;
        let lease = lease.clone();
        self.write(move |tx, _| store::release(tx, &lease)).await
    }

    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        validate_id("process id", &lease.process_id)?;
        let req = fold::terminal_request(&outcome).with_lease(lease.clone());
        let id = lease.process_id.clone();
        self.write(move |tx, now| Ok(store::append(tx, &id, &req, Authority::Cairn, now)?.record))
            .await
    }

    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>> {
        self.read(move |tx, now| {
            Ok(store::worklist(tx, now, limit)?
                .into_iter()
                .map(|(process_id, abandon)| WorkItem {
                    process_id,
                    action: if abandon {
                        WorkAction::ReconcileAbandon
                    } else {
                        WorkAction::Run
                    },
                })
                .collect())
        })
        .await
    }

    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        validate_id("requested_by", requested_by)?;
        let id = id.to_string();
        let req = AppendRequest::new(
            events::ABANDON_REQUESTED,
            json!({"requested_by": requested_by, "reason": reason}),
        );
        self.write(move |tx, now| {
            let record = store::entry(tx, &id)?.record;
            if record.is_terminal() {
                return Err(CairnError::ProcessTerminal(id.clone()).into());
            }
            if record.abandon_request.is_some() {
                return Ok(record);
            }
            Ok(store::append(tx, &id, &req, Authority::Cairn, now)?.record)
        })
        .await
    }

    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.write(move |tx, now| {
            let entry = store::entry(tx, &id)?;
            let record = &entry.record;
            if !fold::abandon_reconcilable(record, entry.lease.as_ref(), now) {
                return Ok(None);
            }
            let outcome = fold::reconciled_abandon_outcome(record, now);
            let req = fold::terminal_request(&outcome);
            Ok(Some(store::append(tx, &id, &req, Authority::Cairn, now)?.record))
        })
        .await
    }

    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        validate_id("authority", authority)?;
        let req = fold::external_completion(id, &outcome, authority)?;
        let id = id.to_string();
        self.write(move |tx, now| {
            if store::entry(tx, &id)?.record.disposition != Disposition::ExternallyOwned {
                return Err(CairnError::NotExternallyOwned(id.clone()).into());
            }
            Ok(store::append(tx, &id, &req, Authority::Cairn, now)?.record)
        })
        .await
    }

    async fn prune(&self, cutoff_ms: u64, status: StatusFilter, watermark: Watermark) -> Result<PruneReport> {
        let status = prune_status(status)?;
        self.write(move |tx, now| {
            let mut report = PruneReport::default();
            for victim in store::prune_candidates(tx, cutoff_ms, status)? {
                if let Watermark::Cursor { cursor } = watermark {
                    if victim.change_cursor > cursor {
                        report.held_by_watermark += 1;
                        continue;
                    }
                }
                let (events, grants, wakes) = store::prune_one(tx, &victim, now)?;
                report.pruned += 1;
                report.events_deleted += events;
                report.grants_deleted += grants;
                report.wakes_deleted += wakes;
            }
            Ok(report)
        })
        .await
    }

    async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage> {
        let limit = page_limit(limit)?;
        self.read(move |tx, _| {
            let changes: Vec<Change> = store::changed_since(tx, cursor, limit)?
                .into_iter()
                .map(|(cursor, process)| Change { cursor, process })
                .collect();
            let next_cursor = changes.last().map_or(cursor, |c| c.cursor);
            Ok(ChangePage { changes, next_cursor })
        })
        .await
    }

    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef> {
        let (env_ref, bytes) = validate::env_ref_and_bytes(spec)?;
        self.write(move |tx, _| {
            store::put_env(tx, &env_ref, &bytes)?;
            Ok(env_ref)
        })
        .await
    }

    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec> {
        validate_id("env ref", env_ref)?;
        let env_ref = env_ref.to_string();
        let bytes = self
            .read({
                let env_ref = env_ref.clone();
                move |tx, _| store::env_bytes(tx, &env_ref)
            })
            .await?;
        match bytes {
            Some(b) => validate::decode_env(&env_ref, &b),
            None => Err(CairnError::UnknownEnv(env_ref)),
        }
    }

    async fn fencing_token(&self, id: &str) -> Result<u64> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.read(move |tx, _| store::fencing_token(tx, &id)).await
    }
}
