//! cairn-sqlite: the embedded default backend of cairn. One SQLite file, no
//! server to run.
//!
//! - **Durable**: WAL journaling with `synchronous=FULL`; a call that returned
//!   `Ok` survives `kill -9` and power loss.
//! - **Group commit**: one writer thread owns the write connection and commits
//!   every job queued behind the previous commit in one transaction; a job that
//!   fails leaves nothing behind while the others commit (see [`WriteStats`]).
//!   Every writing method is one job, so it is atomic.
//! - **Reads** run on a small pool of read-only connections on the blocking
//!   thread pool; WAL lets them proceed while the writer commits.
//! - **Same behaviour as [`cairn_core::MemoryRegistry`]**: every write runs
//!   through [`cairn_core::ops`] (the operation layer) over this crate's
//!   storage primitives; no rule lives here.
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

mod modules;
mod node_hold;
mod nodes;
mod others;
mod schedules;
mod schema;
mod store;
mod tx;
mod vfs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::clock::SharedClock;
use cairn_core::events::{AppendRequest, AppendResult, EventPage};
use cairn_core::model::{
    page_limit, Change, ChangePage, Claim, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease,
    NodeIdentity, NodeLiveness, Outcome, ProcessFilter, ProcessRecord, PruneFilter, PruneReport, Registration,
    SessionDeleteReport, SessionScope, StartGrant, SweepItem, Tombstone, TransferReport, WaitRequest, WakeDelivery,
    Watermark, WorkAction, WorkItem,
};
use cairn_core::ops::{self, admin, at_once, Answer, Op};
use cairn_core::registry::{CancelAnswer, CompleteAnswer, ProcessRegistry, Registered};
use cairn_core::validate::{self, validate_id, validate_scope, validate_session_id};
use cairn_core::{CairnError, ChangeHub, Result};
use parking_lot::Mutex;
use rusqlite::{Connection, Transaction};

pub use node_hold::NodeHold;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
#[cfg(any(test, feature = "test-util"))]
pub use writer::CommitUnderWay;
pub use writer::WriteStats;

use store::Fault;

/// How to open a [`SqliteRegistry`].
#[derive(Clone)]
pub struct SqliteOptions {
    /// The clock every expiry and retention decision reads.
    pub clock: SharedClock,
    /// Most write jobs committed in one transaction (default 256: a commit
    /// writes each page its jobs changed once, so more jobs to a commit write
    /// fewer pages each).
    pub max_batch: usize,
    /// Read connections (default 4): reads run at most this many at once, each
    /// on a blocking thread with a pooled connection; more callers wait their
    /// turn. A burst of readers (500 streams opening together) then costs a
    /// queue, not 500 threads and 500 connections with their page caches.
    pub read_connections: usize,
    /// How long a connection waits for a lock held by another process on the
    /// same file before failing (default 5 s).
    pub busy_timeout: Duration,
    /// How long opening the file waits for locks another process holds on
    /// it (default 5 min): another cairn migrating the file holds its write
    /// lock until the migration commits, tens of seconds for millions of
    /// processes. The wait is logged once; past it the open fails saying
    /// another cairn may be migrating or writing the file. Writes after the
    /// open wait `busy_timeout`.
    pub open_lock_wait: Duration,
    /// How long a prune's collection keeps an env spec or type list no
    /// process names after it was last put or stored (default
    /// [`cairn_core::registry::DEFAULT_COLLECT_GRACE`], an hour): a put
    /// and the registration naming its env are two writes, and a writer of
    /// an older build on the same file names lists from a cache it never
    /// empties (ADR 0034).
    pub collect_grace: Duration,
}

impl SqliteOptions {
    /// The defaults, on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            max_batch: 256,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            open_lock_wait: schema::OPEN_LOCK_WAIT,
            collect_grace: cairn_core::registry::DEFAULT_COLLECT_GRACE,
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
            .field("open_lock_wait", &self.open_lock_wait)
            .field("collect_grace", &self.collect_grace)
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
    watcher: Mutex<Option<others::Watcher>>,
    /// One permit per read connection (see `SqliteOptions::read_connections`).
    read_slots: tokio::sync::Semaphore,
    /// See [`SqliteOptions::collect_grace`].
    collect_grace: Duration,
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
    /// written by a newer schema version. Waits (up to
    /// [`SqliteOptions::open_lock_wait`]) while another process holds the
    /// file's write lock, as another cairn migrating it does.
    pub fn open(path: impl AsRef<Path>, clock: SharedClock) -> Result<Self> {
        Self::open_with(path, SqliteOptions::new(clock))
    }

    /// Open (or create) the database at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_writer_waiting(&path, options.busy_timeout, options.open_lock_wait)?;
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
            watcher: Mutex::new(None),
            read_slots: tokio::sync::Semaphore::new(options.read_connections.max(1)),
            collect_grace: options.collect_grace,
        })
    }

    /// Hold `node` as the node id of one live runtime over this file, until
    /// the answer is dropped or this OS process ends (ADR 0027). Fails with
    /// [`CairnError::Unavailable`], naming the holder's pid, while another
    /// live process holds it: a runtime that registers a node id it does not
    /// hold could sweep a live runtime's `owner_bound` work.
    pub fn hold_node(&self, node: &str) -> Result<NodeHold> {
        node_hold::hold(&self.readers.path, node)
    }

    /// Feed `hub` with what other OS processes commit to this file (a second
    /// server, a tool), until this registry is dropped; this process's own
    /// writes reach the hub through `WatchedRegistry`. One thread reads
    /// `PRAGMA data_version` when the operating system says the database's
    /// files changed (every 50 ms where it cannot say); see the `others`
    /// module. Replaces an earlier watcher.
    pub fn watch_other_writers(&self, hub: ChangeHub) -> Result<()> {
        let conn = schema::open_reader(&self.readers.path, self.readers.busy_timeout)?;
        let watcher = others::Watcher::start(conn, &self.readers.path, self.writer.own_commits(), hub)?;
        *self.watcher.lock() = Some(watcher);
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.readers.path
    }

    /// Commits and jobs the writer has carried so far.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Count a commit of this registry's writer as under way until the answer
    /// drops: every reading the watcher of other writers takes meanwhile
    /// meets it, as under a writer that commits without pause (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn commit_under_way_for_test(&self) -> CommitUnderWay {
        self.writer.own_commits().under_way()
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

    /// Run one operation of the operation layer as one write job. It decides
    /// on what it reads in the transaction that runs it, so it may run again
    /// (the writer runs such jobs without a savepoint of their own).
    async fn submit(&self, op: Result<Op>) -> Result<Answer> {
        let op = op?;
        let clock = self.clock.clone();
        self.writer
            .run_rerunnable(move |conn| {
                let mut tx = tx::Tx::new(conn, clock.now_ms());
                let answer = ops::run(&mut tx, &op)?;
                tx.finish()?;
                Ok(answer)
            })
            .await
    }

    /// Run `work` on a read connection on the blocking pool; it receives the clock's time.
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, u64) -> std::result::Result<T, Fault> + Send + 'static,
    {
        // Never closed, so acquiring fails only if it were; then read anyway.
        let _slot = self.read_slots.acquire().await.ok();
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
        self.watcher.lock().take();
    }
}

#[async_trait]
impl ProcessRegistry for SqliteRegistry {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        self.submit(Op::register(&registration, grant, self.clock.now_ms()))
            .await?
            .into_registered()
    }

    async fn register_child(
        &self,
        registration: Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
    ) -> Result<Registered> {
        self.submit(Op::register_child(
            &registration,
            grants,
            parent_lease,
            self.clock.now_ms(),
        ))
        .await?
        .into_registered()
    }

    async fn register_claimed(
        &self,
        registration: Registration,
        grant: Option<StartGrant>,
        owner_id: &str,
        ttl_ms: u64,
    ) -> Result<(Registered, Option<Claim>)> {
        self.submit(Op::register_claimed(
            &registration,
            grant,
            self.clock.now_ms(),
            owner_id,
            ttl_ms,
        ))
        .await?
        .into_registered_claimed()
        .map(|b| *b)
    }

    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.read(move |tx, _| Ok(store::entry(tx, &id)?.record)).await
    }

    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        filter.validate()?;
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
        self.submit(Op::append(id, request)).await?.into_appended()
    }

    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        self.submit(Op::cancel(id, reason)).await?.into_cancel()
    }

    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        self.submit(Op::grant(scope, id, descriptor, self.clock.now_ms()))
            .await?
            .into_grant()
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
        admin::check_transfer(from, to, ids)?;
        let (from, to, ids) = (from.clone(), to.clone(), ids.to_vec());
        self.write(move |conn, now| Ok(at_once(admin::transfer(&mut tx::Tx::new(conn, now), &from, &to, &ids))?))
            .await
    }

    async fn grants_of(&self, id: &str) -> Result<Vec<Grant>> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.read(move |tx, _| store::grants_of(tx, &id)).await
    }

    async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<Tombstone>> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        let (scope, id) = (scope.clone(), id.to_string());
        self.read(move |tx, _| store::pruned_grant(tx, &scope, &id)).await
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        validate_scope(scope)?;
        filter.validate()?;
        let limit = filter.page_size()?;
        let (scope, filter) = (scope.clone(), filter.clone());
        self.read(move |tx, _| store::list_granted_to(tx, &scope, &filter, limit))
            .await
    }

    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        validate_scope(scope)?;
        filter.validate()?;
        let limit = filter.page_size()?;
        let (scope, filter) = (scope.clone(), filter.clone());
        self.read(move |tx, _| store::list_originated_by(tx, &scope, &filter, limit))
            .await
    }

    async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport> {
        validate_session_id(session_id)?;
        let session_id = session_id.to_string();
        self.write(move |conn, now| {
            Ok(at_once(admin::delete_session(
                &mut tx::Tx::new(conn, now),
                &session_id,
                keep_frames,
            ))?)
        })
        .await
    }

    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        validate_session_id(session_id)?;
        let limit = page_limit(limit)?;
        let session_id = session_id.to_string();
        self.read(move |tx, _| store::pending_wakes(tx, &session_id, None, limit))
            .await
    }

    async fn pending_frame_wakes(
        &self,
        session_id: &str,
        frame_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<WakeDelivery>> {
        validate_session_id(session_id)?;
        validate_id("agent frame id", frame_id)?;
        let limit = page_limit(limit)?;
        let (session_id, frame_id) = (session_id.to_string(), frame_id.to_string());
        self.read(move |tx, _| store::pending_wakes(tx, &session_id, Some(&frame_id), limit))
            .await
    }

    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        validate_session_id(session_id)?;
        validate_id("wake id", wake_id)?;
        let (session_id, wake_id) = (session_id.to_string(), wake_id.to_string());
        self.write(move |tx, _| store::ack_wake(tx, &session_id, &wake_id))
            .await
    }

    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease> {
        self.submit(Op::claim(id, owner_id, ttl_ms)).await?.into_lease()
    }

    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
        self.submit(Op::claim_batch(owner_id, ttl_ms, limit))
            .await?
            .into_claims()
    }

    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        self.submit(Op::record_started(lease)).await?.into_record()
    }

    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        self.submit(Op::renew(lease, ttl_ms)).await?.into_lease()
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.submit(Op::release(lease)).await?.into_bool()
    }

    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        self.submit(Op::complete(lease, outcome)).await?.into_record()
    }

    async fn abandon_worklist(&self, limit: usize) -> Result<Vec<String>> {
        self.read(move |tx, now| store::abandon_worklist(tx, now, limit)).await
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
        self.submit(Op::request_abandon(id, requested_by, reason))
            .await?
            .into_record()
    }

    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        self.submit(Op::reconcile_abandon(id)).await?.into_maybe_record()
    }

    async fn register_node(&self, node: &str) -> Result<NodeIdentity> {
        NodeIdentity::validate_node_id(node)?;
        let node = node.to_string();
        self.write(move |conn, now| {
            let incarnation = nodes::register_node(conn, &node, now)?;
            Ok(NodeIdentity { node, incarnation })
        })
        .await
    }

    async fn heartbeat(&self, identity: &NodeIdentity) -> Result<bool> {
        NodeIdentity::validate_node_id(&identity.node)?;
        let identity = identity.clone();
        self.write(move |conn, now| nodes::heartbeat(conn, &identity.node, identity.incarnation, now))
            .await
    }

    async fn node(&self, node: &str) -> Result<Option<NodeLiveness>> {
        NodeIdentity::validate_node_id(node)?;
        let node = node.to_string();
        self.read(move |tx, _| nodes::node(tx, &node)).await
    }

    async fn leases_of_earlier_incarnations(&self, node: &str, incarnation: u64, limit: usize) -> Result<Vec<Lease>> {
        let node = node.to_string();
        self.read(move |tx, _| nodes::leases_of_earlier_incarnations(tx, &node, incarnation, limit))
            .await
    }

    async fn sweep_worklist(&self, limit: usize) -> Result<Vec<SweepItem>> {
        self.read(move |tx, _| nodes::sweep_worklist(tx, limit)).await
    }

    async fn sweep(&self, id: &str, node: &str, incarnation: u64) -> Result<Option<ProcessRecord>> {
        self.submit(Op::sweep(id, node, incarnation)).await?.into_maybe_record()
    }

    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<CompleteAnswer> {
        self.submit(Op::complete_external(id, &outcome, authority))
            .await?
            .into_complete()
    }

    async fn prune(&self, cutoff_ms: u64, filter: PruneFilter, watermark: Watermark) -> Result<PruneReport> {
        filter.validate()?;
        let mut report = PruneReport::default();
        let mut after = None;
        loop {
            // One write job per chunk: the writes of live work (renewals,
            // completions) queue behind one chunk, never behind the whole prune.
            let filter = filter.clone();
            let (chunk, next) = self
                .write(move |conn, now| {
                    Ok(at_once(admin::prune(
                        &mut tx::Tx::new(conn, now),
                        cutoff_ms,
                        &filter,
                        watermark,
                        after.as_ref(),
                    ))?)
                })
                .await
                .map_err(|e| report.interrupted_by(e))?;
            report.add(&chunk);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        cairn_core::registry::collect_after_prune(self, &report, self.collect_grace).await;
        Ok(report)
    }

    async fn collect_unreferenced(&self, grace: Duration) -> Result<cairn_core::registry::Collected> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        // One job on the writer thread: its two statements, and the writer
        // forgets the type lists it knew were stored (ADR 0034).
        let (envs, type_lists) = self
            .write(move |tx, now| {
                tx::forget_type_lists();
                store::collect_unreferenced(tx, now.saturating_sub(grace_ms))
            })
            .await?;
        Ok(cairn_core::registry::Collected { envs, type_lists })
    }

    async fn change_head(&self) -> Result<u64> {
        // The writer stores its cursor with each commit's rows.
        self.read(|tx, _| store::change_head(tx)).await
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
        self.write(move |tx, now| {
            store::put_env(tx, &env_ref, &bytes, now)?;
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

    async fn put_module(&self, module: &cairn_core::Module) -> Result<cairn_core::ModulePut> {
        cairn_core::script::validate_module(module)?;
        let module = module.clone();
        self.write(move |tx, _| {
            let created = modules::put_module(tx, &module)?;
            let stored = modules::module_info_of(tx, &module.info.module_ref)?
                .ok_or_else(|| CairnError::storage("a stored module vanished in its own transaction"))?;
            Ok(cairn_core::ModulePut {
                module: stored,
                created,
            })
        })
        .await
    }

    async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<cairn_core::ModuleInfo>> {
        let limit = page_limit(limit)?;
        let after = after.map(str::to_string);
        self.read(move |tx, _| modules::list_modules(tx, after.as_deref(), limit))
            .await
    }

    async fn get_module(&self, module_ref: &str) -> Result<cairn_core::Module> {
        cairn_core::script::validate_module_ref(module_ref)?;
        let r = module_ref.to_string();
        self.read(move |tx, _| modules::get_module(tx, &r))
            .await?
            .ok_or_else(|| CairnError::UnknownModule(module_ref.to_string()))
    }

    async fn fencing_token(&self, id: &str) -> Result<u64> {
        validate_id("process id", id)?;
        let id = id.to_string();
        self.read(move |tx, _| store::fencing_token(tx, &id)).await
    }

    async fn wait(&self, lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<bool> {
        self.submit(Op::wait(lease, wait, seen_sequence)).await?.into_bool()
    }

    async fn resume(&self, lease: &Lease, payload: serde_json::Value) -> Result<ProcessRecord> {
        self.submit(Op::resume(lease, payload)).await?.into_record()
    }

    async fn gauges(&self) -> Result<cairn_core::Gauges> {
        self.read(move |tx, now| store::gauges(tx, now)).await
    }

    async fn next_due(&self, after_ms: u64) -> Result<Option<u64>> {
        self.read(move |tx, _| {
            let work = store::next_due(tx, after_ms)?;
            let fire = schedules::next_due(tx, after_ms)?;
            Ok(work.into_iter().chain(fire).min())
        })
        .await
    }

    async fn insert_schedule(&self, schedule: &cairn_core::Schedule) -> Result<Option<cairn_core::Schedule>> {
        let s = schedule.clone();
        self.write(move |tx, _| schedules::insert(tx, &s)).await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<cairn_core::Schedule>> {
        let id = id.to_string();
        self.read(move |tx, _| schedules::get(tx, &id)).await
    }

    async fn list_schedules(&self, after_id: Option<&str>, limit: usize) -> Result<Vec<cairn_core::Schedule>> {
        let after = after_id.map(str::to_string);
        self.read(move |tx, _| schedules::list(tx, after.as_deref(), limit))
            .await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.write(move |tx, _| schedules::delete(tx, &id)).await
    }

    async fn set_schedule_paused(
        &self,
        id: &str,
        paused: bool,
        next_fire_ms: Option<u64>,
    ) -> Result<Option<cairn_core::Schedule>> {
        let id = id.to_string();
        self.write(move |tx, _| schedules::set_paused(tx, &id, paused, next_fire_ms))
            .await
    }

    async fn advance_schedule(
        &self,
        id: &str,
        expected_next_fire_ms: u64,
        advance: &cairn_core::ScheduleAdvance,
    ) -> Result<bool> {
        let (id, advance) = (id.to_string(), advance.clone());
        self.write(move |tx, _| schedules::advance(tx, &id, expected_next_fire_ms, &advance))
            .await
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<cairn_core::Schedule>> {
        self.read(move |tx, _| schedules::due(tx, now_ms, limit)).await
    }
}
