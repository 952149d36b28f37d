//! The storage primitives of [`cairn_core::ops::WriteTx`] and
//! [`cairn_core::ops::admin::AdminTx`] over one write job's transaction: the
//! writer thread runs each operation through [`cairn_core::ops`] on a [`Tx`].
//!
//! Invariant: no rule about what an operation means lives here; these are
//! lookups and stores.

use std::cell::RefCell;

// Not std's SipHash: hashing ids was 8% of the writer's instructions
// (docs/BENCHMARKS.md, 2026-12-06). foldhash is seeded per process, and
// every map here is bounded or lives for one transaction.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use cairn_core::events::ProcessEvent;
use cairn_core::model::{Grant, Lease, ProcessRecord, SessionScope, StatusFilter, Tombstone, WakeDelivery};
use cairn_core::ops::admin::{AdminTx, Deleted, GrantState, PruneCandidate, PrunePosition};
use cairn_core::ops::{Row, WriteTx};
use cairn_core::{CairnError, Result};
use rusqlite::Connection;

use crate::store;

/// Rows the writer thread keeps decoded between jobs, so the claim and the
/// completion of a process do not read and decode the row its registration
/// just wrote (a tenth of the writer's time when they did).
///
/// It lives in the writer thread (the only one that writes, so the only one
/// that runs a [`Tx`]) and holds three layers: the rows of the job running
/// now, of the jobs of the open transaction that succeeded, and of committed
/// transactions. A job that fails (rolled back to its savepoint) loses its
/// layer, a transaction that does not commit loses its own, and the
/// committed layer is emptied when another connection committed to the file
/// (`PRAGMA data_version` at `BEGIN`). It holds at most [`CACHED_ROWS`] rows
/// and never a terminal one: waiting processes cost it nothing for long.
///
/// It also keeps the keys of the event type lists known to be stored, in the
/// same three layers, so storing a record looks its list up once a key and
/// not at every write. A prune's collection deletes the lists no row names
/// (ADR 0034): the job that collects forgets every layer
/// ([`forget_type_lists`]), and another connection's commit (which may have
/// been one) empties the committed layer as it empties the rows. Write
/// transactions on the file run one at a time, so a list known here is
/// stored until this writer's next `BEGIN` finds another connection's commit.
struct RowCache {
    job: HashMap<String, Option<Row>>,
    open: HashMap<String, Option<Row>>,
    committed: HashMap<String, Row>,
    data_version: Option<i64>,
    lists_job: Vec<String>,
    lists_open: Vec<String>,
    lists: HashSet<String>,
}

/// The most rows the writer keeps decoded; past it the committed layer is emptied.
const CACHED_ROWS: usize = 4096;

thread_local! {
    static CACHE: RefCell<RowCache> = RefCell::new(RowCache {
        job: HashMap::new(),
        open: HashMap::new(),
        committed: HashMap::new(),
        data_version: None,
        lists_job: Vec::new(),
        lists_open: Vec::new(),
        lists: HashSet::new(),
    });
}

/// Whether the type list `key` is stored, as the open transaction sees it,
/// to this thread's knowledge (`false`: look it up).
pub(crate) fn type_list_known(key: &str) -> bool {
    CACHE.with_borrow(|c| c.lists.contains(key) || c.lists_open.iter().chain(&c.lists_job).any(|k| k == key))
}

/// The running job found the type list `key` stored, or stored it.
pub(crate) fn type_list_stored(key: &str) {
    CACHE.with_borrow_mut(|c| c.lists_job.push(key.to_string()));
}

/// A write transaction began: forget the committed rows and the type lists
/// known to be stored if another connection committed since this one last
/// looked (its commit may have been a prune's collection of lists).
pub(crate) fn cache_begin(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?;
    CACHE.with_borrow_mut(|c| {
        if c.data_version != Some(version) {
            c.committed.clear();
            c.lists.clear();
            c.data_version = Some(version);
        }
    });
    Ok(())
}

/// The running job deletes type lists (a prune's collection): forget every
/// list this thread knows to be stored, in all layers, so a later write
/// looks its list up again and stores it when it is gone. Layers of the open
/// transaction's earlier jobs go too: this job may delete their lists when
/// no row names them any more.
pub(crate) fn forget_type_lists() {
    CACHE.with_borrow_mut(|c| {
        c.lists.clear();
        c.lists_open.clear();
        c.lists_job.clear();
    });
}

/// The job that just ran succeeded (`true`, its savepoint released) or not.
pub(crate) fn cache_job_done(ok: bool) {
    CACHE.with_borrow_mut(|c| {
        let job = std::mem::take(&mut c.job);
        let lists = std::mem::take(&mut c.lists_job);
        if ok {
            c.open.extend(job);
            c.lists_open.extend(lists);
        }
    });
}

/// The transaction ended: its rows become committed ones, or are forgotten.
pub(crate) fn cache_end(committed: bool) {
    CACHE.with_borrow_mut(|c| {
        c.job.clear();
        c.lists_job.clear();
        let open = std::mem::take(&mut c.open);
        let lists = std::mem::take(&mut c.lists_open);
        if !committed {
            return;
        }
        for key in lists {
            if c.lists.len() >= CACHED_ROWS {
                c.lists.clear();
            }
            c.lists.insert(key);
        }
        for (id, row) in open {
            match row {
                Some(row) if !row.record.status.is_terminal() => {
                    if c.committed.len() >= CACHED_ROWS && !c.committed.contains_key(&id) {
                        c.committed.clear();
                    }
                    c.committed.insert(id, row);
                }
                _ => {
                    c.committed.remove(&id);
                }
            }
        }
    });
}

/// The row of `id` as the open transaction sees it: `Some(None)` when a job
/// of it deleted the row, `None` when the cache does not know.
fn cache_lookup(id: &str) -> Option<Option<Row>> {
    CACHE.with_borrow(|c| {
        c.job
            .get(id)
            .or_else(|| c.open.get(id))
            .cloned()
            .or_else(|| c.committed.get(id).cloned().map(Some))
    })
}

/// One operation's transaction: the connection, the job's time, and the rows
/// it has read or written (so an operation reads each row once). When it is
/// dropped its rows go to the writer's [`RowCache`], as the running job's.
///
/// A row the operation registers is stored once, when the operation is done
/// ([`Tx::finish`]), as the operation left it: a start that claims its own
/// process (`register_claimed`) inserts the claimed row, not a row and then
/// two updates of it. Its events are stored as they come, under the log key
/// handed out at registration.
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
    now: u64,
    rows: HashMap<String, Row>,
    deleted: Vec<String>,
    /// Rows registered by this operation and not stored yet: their log keys
    /// and the change cursors of their last writes.
    fresh: HashMap<String, (u64, u64)>,
}

impl<'c> Tx<'c> {
    pub(crate) fn new(conn: &'c Connection, now: u64) -> Self {
        Self {
            conn,
            now,
            rows: HashMap::new(),
            deleted: Vec::new(),
            fresh: HashMap::new(),
        }
    }

    /// Store the rows this operation registered. Call it when the operation
    /// succeeded, before the job ends; SQL that reads `processes` calls it first.
    pub(crate) fn finish(&mut self) -> Result<()> {
        for (id, (log_key, cursor)) in std::mem::take(&mut self.fresh) {
            let row = self.rows.get(&id).ok_or_else(|| {
                CairnError::storage(format!("registered row `{id}` went missing before it was stored"))
            })?;
            store::insert_process(
                self.conn,
                &row.record,
                row.lease.as_ref(),
                row.fencing,
                log_key,
                cursor,
                self.now,
            )?;
        }
        Ok(())
    }

    /// Bring the row of `id` into this transaction's rows; `false` when there is none.
    fn fetch(&mut self, id: &str) -> Result<bool> {
        if self.rows.contains_key(id) {
            return Ok(true);
        }
        let row = match cache_lookup(id) {
            Some(known) => known,
            None => store::load(self.conn, id)?,
        };
        Ok(match row {
            Some(row) => {
                self.rows.insert(id.to_string(), row);
                true
            }
            None => false,
        })
    }

    fn cached(&mut self, id: &str) -> Result<&mut Row> {
        self.fetch(id)?;
        self.rows
            .get_mut(id)
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        let rows = std::mem::take(&mut self.rows);
        let deleted = std::mem::take(&mut self.deleted);
        CACHE.with_borrow_mut(|c| {
            c.job.extend(rows.into_iter().map(|(id, row)| (id, Some(row))));
            c.job.extend(deleted.into_iter().map(|id| (id, None)));
        });
    }
}

impl WriteTx for Tx<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    fn row(&mut self, id: &str) -> Result<Option<&Row>> {
        if !self.fetch(id)? {
            return Ok(None);
        }
        Ok(self.rows.get(id))
    }

    fn tombstone(&mut self, id: &str) -> Result<Option<Tombstone>> {
        Ok(store::tombstone(self.conn, id)?)
    }

    fn replayed(&mut self, id: &str, replay_key: &str) -> Result<Option<ProcessEvent>> {
        self.finish()?;
        Ok(store::replayed(self.conn, id, replay_key)?)
    }

    fn env_stored(&mut self, env_ref: &str) -> Result<bool> {
        Ok(store::env_exists(self.conn, env_ref)?)
    }

    fn run_candidates(&mut self, limit: usize) -> Result<Vec<String>> {
        self.finish()?;
        Ok(store::run_candidates(self.conn, self.now, limit)?)
    }

    fn tree_children(&mut self, parent: &str) -> Result<Vec<String>> {
        self.finish()?;
        Ok(store::tree_children(self.conn, parent)?)
    }

    fn insert_row(&mut self, record: ProcessRecord) -> Result<()> {
        let log_key = store::cursor_for_new_row(self.conn)?;
        let id = record.id.clone();
        let mut row = Row {
            record,
            lease: None,
            fencing: 0,
        };
        // As a load would see it: a new row has no lease.
        row.normalise();
        self.rows.insert(id.clone(), row);
        self.fresh.insert(id, (log_key, log_key));
        Ok(())
    }

    fn update_record(&mut self, record: ProcessRecord, release_lease: bool) -> Result<()> {
        match self.fresh.get_mut(&record.id) {
            Some((_, cursor)) => *cursor = store::cursor_for_new_row(self.conn)?,
            None => {
                let changes = match self.rows.get(&record.id) {
                    Some(old) => store::Changes::between(&old.record, &record, release_lease),
                    None => store::Changes::ALL,
                };
                store::update_process(self.conn, &record, release_lease, changes, self.now)?;
            }
        }
        let row = self.cached(&record.id)?;
        row.record = record;
        if release_lease {
            row.lease = None;
        }
        row.normalise();
        Ok(())
    }

    fn set_lease(&mut self, id: &str, lease: Option<Lease>, fencing: u64) -> Result<()> {
        if !self.fresh.contains_key(id) {
            store::store_lease(self.conn, id, lease.as_ref(), fencing)?;
            if lease.is_none() {
                // A lease let go may make work (a release hands the process
                // to the next claim): the change cursor moves, as for a
                // change of the record, so another OS process's watcher tells
                // this commit from its own (`others`).
                store::cursor_skip(self.conn)?;
            }
        }
        let row = self.cached(id)?;
        row.lease = lease;
        row.fencing = fencing;
        row.normalise();
        Ok(())
    }

    fn push_event(&mut self, event: &ProcessEvent) -> Result<()> {
        match self.fresh.get(&event.process_id) {
            Some(&(log_key, _)) => Ok(store::insert_event_keyed(self.conn, log_key, event)?),
            None => Ok(store::insert_event(self.conn, event)?),
        }
    }

    fn insert_wake(&mut self, wake: &WakeDelivery) -> Result<bool> {
        Ok(store::insert_wake(self.conn, wake)?)
    }

    fn upsert_grant(&mut self, grant: &Grant) -> Result<()> {
        Ok(store::upsert_grant(self.conn, grant)?)
    }

    fn grants_of(&mut self, id: &str) -> Result<Vec<Grant>> {
        self.finish()?;
        Ok(store::grants_of(self.conn, id)?)
    }
}

impl AdminTx for Tx<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    async fn take_grant(&mut self, scope: &SessionScope, id: &str) -> Result<Option<Grant>> {
        Ok(store::take_grant(self.conn, scope, id)?)
    }

    async fn put_grant(&mut self, grant: &Grant) -> Result<()> {
        Ok(store::upsert_grant(self.conn, grant)?)
    }

    async fn delete_session_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<Vec<String>> {
        Ok(store::delete_session_grants(self.conn, session_id, keep_frames)?)
    }

    async fn delete_session_pruned_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<u64> {
        Ok(store::delete_session_tombstone_grants(
            self.conn,
            session_id,
            keep_frames,
        )?)
    }

    async fn delete_pending_wakes(&mut self, session_id: &str) -> Result<u64> {
        Ok(store::delete_pending_wakes(self.conn, session_id)?)
    }

    async fn grant_states(&mut self, ids: &[String]) -> Result<Vec<GrantState>> {
        ids.iter()
            .map(|id| {
                let (running, granted) = store::grant_state(self.conn, id)?;
                Ok(GrantState {
                    id: id.clone(),
                    running,
                    granted,
                })
            })
            .collect()
    }

    async fn with_running_descendants(&mut self, ids: &[String]) -> Result<std::collections::HashSet<String>> {
        let mut above = std::collections::HashSet::new();
        for id in ids {
            if store::has_running_descendant(self.conn, id)? {
                above.insert(id.clone());
            }
        }
        Ok(above)
    }

    async fn prune_candidates(
        &mut self,
        cutoff_ms: u64,
        status: StatusFilter,
        after: Option<&PrunePosition>,
        limit: usize,
    ) -> Result<(Vec<PruneCandidate>, Option<PrunePosition>)> {
        let chunk = store::prune_candidates(self.conn, cutoff_ms, status, after, limit)?;
        let next = cairn_core::ops::admin::next_position(&chunk, limit);
        Ok((chunk, next))
    }

    async fn delete_pruned(&mut self, victims: &[PruneCandidate]) -> Result<Deleted> {
        let mut deleted = Deleted::default();
        for victim in victims {
            let (events, grants, wakes) = store::prune_one(self.conn, victim, self.now)?;
            self.rows.remove(&victim.id);
            self.deleted.push(victim.id.clone());
            deleted.events += events;
            deleted.grants += grants;
            deleted.wakes += wakes;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::ops::{self, Op};

    use super::*;

    /// A start that claims its own process stores its row once, claimed:
    /// one row insert and one event, where a registration and a claim made
    /// apart insert the row and then update it twice.
    #[test]
    fn a_registration_that_claims_inserts_the_claimed_row_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn =
            crate::schema::open_writer(&dir.path().join("tx.db"), std::time::Duration::from_secs(1)).expect("open");
        // As the writer runs jobs: in a write transaction, cursors from memory.
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        store::cursor_begin(&conn).expect("cursor");
        let run = |op: Op| {
            let before = conn.total_changes();
            let mut tx = Tx::new(&conn, 1_000);
            let answer = ops::run(&mut tx, &op).expect("op");
            tx.finish().expect("finish");
            drop(tx);
            cache_job_done(true);
            (answer, conn.total_changes() - before)
        };
        // The first registration also stores the shared type list.
        let (_, _) = run(Op::register(&cairn_testkit::builders::rerunnable("warm"), None, 1_000).expect("op"));
        let (answer, changes) =
            run(Op::register_claimed(&cairn_testkit::builders::rerunnable("p"), None, 1_000, "w1", 5_000).expect("op"));
        let (registered, claim) = *answer.into_registered_claimed().expect("answer");
        let claim = claim.expect("claimed");
        assert!(registered.created);
        assert_eq!(changes, 2, "the claimed row and its `process.started`");
        let stored = store::load(&conn, "p").expect("load").expect("row");
        assert_eq!(stored.lease.as_ref(), Some(&claim.lease));
        assert_eq!(stored.fencing, 1);
        assert_eq!(stored.record, claim.process);
        let (events, _) = store::events_after(&conn, "p", 0, 10).expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, cairn_core::events::STARTED);
        // Apart: the row, then the claim's lease and its started update and event.
        let (_, changes) = run(Op::register(&cairn_testkit::builders::rerunnable("q"), None, 1_000).expect("op"));
        assert_eq!(changes, 1);
        // (`q` sorts before `warm` in the worklist.)
        let (claims, changes) = run(Op::claim_batch("w1", 5_000, 1).expect("op"));
        assert_eq!(claims.into_claims().expect("claims")[0].process.id, "q");
        assert_eq!(changes, 3);
        store::cursor_flush(&conn).expect("flush");
        store::cursor_end();
        conn.execute_batch("COMMIT").expect("commit");
    }

    /// A type list stored by a job that failed is gone with the job's
    /// savepoint: the next registration of the same list stores it again, so
    /// the writer's knowledge of stored lists never outlives a rollback.
    #[test]
    fn a_type_list_a_failed_job_stored_is_stored_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn =
            crate::schema::open_writer(&dir.path().join("tx.db"), std::time::Duration::from_secs(1)).expect("open");
        let listed = |id: &str| {
            let mut reg = cairn_testkit::builders::rerunnable(id);
            reg.event_types
                .push(cairn_core::events::EventType::plain("rolled.back"));
            Op::register(&reg, None, 1_000).expect("op")
        };
        let run = |op: Op, ok: bool| {
            conn.execute_batch("SAVEPOINT job").expect("savepoint");
            let mut tx = Tx::new(&conn, 1_000);
            ops::run(&mut tx, &op).expect("op");
            tx.finish().expect("finish");
            drop(tx);
            if !ok {
                conn.execute_batch("ROLLBACK TO job").expect("rollback");
            }
            conn.execute_batch("RELEASE job").expect("release");
            cache_job_done(ok);
        };
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        store::cursor_begin(&conn).expect("cursor");
        run(listed("failed"), false);
        run(listed("kept"), true);
        store::cursor_flush(&conn).expect("flush");
        store::cursor_end();
        conn.execute_batch("COMMIT").expect("commit");
        cache_end(true);
        assert!(store::load(&conn, "failed").expect("load").is_none());
        let kept = store::load(&conn, "kept").expect("load kept").expect("row");
        assert!(kept.record.event_types.iter().any(|t| t.name == "rolled.back"));
        let stored: i64 = conn
            .query_row(
                "SELECT count(*) FROM type_lists WHERE key = ?1",
                [kept.record.event_types.key()],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(stored, 1, "the list is stored once, by the job that succeeded");
    }

    /// An update sets only the indexed columns it changes: storing a record
    /// whose status, worklist and sweep columns are as they were writes fewer
    /// pages than setting every column, and leaves the same row.
    #[test]
    fn an_update_leaves_the_indexes_it_does_not_change_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The same rows in two files: 2,000 claimed processes with scattered ids.
        let open = |name: &str| {
            let conn =
                crate::schema::open_writer(&dir.path().join(name), std::time::Duration::from_secs(1)).expect("open");
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            store::cursor_begin(&conn).expect("cursor");
            for i in 0..2_000u64 {
                let id = format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let op = Op::register_claimed(&cairn_testkit::builders::owner_bound(&id), None, 1_000, "n#1", 5_000)
                    .expect("op");
                let mut tx = Tx::new(&conn, 1_000);
                ops::run(&mut tx, &op).expect("register");
                tx.finish().expect("finish");
                drop(tx);
                cache_job_done(true);
            }
            store::cursor_flush(&conn).expect("flush");
            store::cursor_end();
            conn.execute_batch("COMMIT").expect("commit");
            cache_end(true);
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .expect("checkpoint");
            conn
        };
        // Each on a thread of its own: the writer's row cache is per thread.
        let (lean, full) = std::thread::scope(|s| {
            let lean = s.spawn(|| open("lean.db"));
            let full = s.spawn(|| open("full.db"));
            (lean.join().expect("lean"), full.join().expect("full"))
        });
        let frames = |conn: &Connection, name: &str, changes: Option<store::Changes>| {
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            store::cursor_begin(conn).expect("cursor");
            for i in (0..2_000u64).step_by(10) {
                let id = format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let old = store::load(conn, &id).expect("load").expect("row").record;
                let mut new = old.clone();
                new.updated_at_ms += 1;
                let changes = changes.unwrap_or_else(|| store::Changes::between(&old, &new, false));
                store::update_process(conn, &new, false, changes, 1_000).expect("update");
            }
            store::cursor_flush(conn).expect("flush");
            store::cursor_end();
            conn.execute_batch("COMMIT").expect("commit");
            let wal = std::fs::metadata(dir.path().join(format!("{name}-wal")))
                .expect("wal")
                .len();
            wal / (4096 + 24)
        };
        let lean_frames = frames(&lean, "lean.db", None);
        let full_frames = frames(&full, "full.db", Some(store::Changes::ALL));
        assert!(
            lean_frames < full_frames,
            "a lean update wrote {lean_frames} pages, a full one {full_frames}"
        );
        let rows = |conn: &Connection| -> Vec<Vec<rusqlite::types::Value>> {
            let mut stmt = conn.prepare("SELECT * FROM processes ORDER BY id").expect("select");
            // Every column but the leases' random tokens.
            let columns: Vec<usize> = (0..stmt.column_count())
                .filter(|&i| stmt.column_name(i).expect("name") != "lease_token")
                .collect();
            stmt.query_map([], |r| columns.iter().map(|&i| r.get(i)).collect())
                .expect("rows")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        assert_eq!(rows(&lean), rows(&full), "both store the same rows");
    }

    /// Pages of the database the connection has read (from its cache or the
    /// file) since the last call.
    fn pages_read(conn: &Connection) -> i64 {
        let mut pages = 0;
        for counter in [
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_HIT,
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_MISS,
        ] {
            let (mut current, mut highest) = (0, 0);
            // SAFETY: the handle is the open connection's, used on its own
            // thread for this call only; the out pointers are valid.
            let rc = unsafe { rusqlite::ffi::sqlite3_db_status(conn.handle(), counter, &mut current, &mut highest, 1) };
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK, "sqlite3_db_status");
            pages += i64::from(current);
        }
        pages
    }

    /// What a prune reads does not grow with the processes that are live:
    /// one chunk of 200 ended processes, beside none or 3,000 running ones
    /// (the processes table then ten times as large), reads about as many
    /// pages. It read the whole table once per ended process (its check for
    /// a running descendant), so the prune slowed down as work piled up.
    #[test]
    fn a_prune_reads_no_more_pages_when_many_processes_are_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let measure = |name: &str, live: usize| -> (cairn_core::PruneReport, i64) {
            let conn =
                crate::schema::open_writer(&dir.path().join(name), std::time::Duration::from_secs(1)).expect("open");
            let run = |op: Op| {
                let mut tx = Tx::new(&conn, 1_000);
                ops::run(&mut tx, &op).expect("op");
                tx.finish().expect("finish");
                drop(tx);
                cache_job_done(true);
            };
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            store::cursor_begin(&conn).expect("cursor");
            for i in 0..live {
                run(
                    Op::register(&cairn_testkit::builders::external(&format!("live-{i:05}")), None, 1_000).expect("op"),
                );
            }
            for i in 0..200 {
                let id = format!("ended-{i:05}");
                run(Op::register(&cairn_testkit::builders::rerunnable(&id), None, 1_000).expect("op"));
                run(Op::cancel(&id, None).expect("op"));
            }
            store::cursor_flush(&conn).expect("flush");
            store::cursor_end();
            conn.execute_batch("COMMIT").expect("commit");
            cache_end(true);

            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            store::cursor_begin(&conn).expect("cursor");
            pages_read(&conn);
            let (report, _) = ops::at_once(ops::admin::prune(
                &mut Tx::new(&conn, 5_000),
                2_000,
                &cairn_core::PruneFilter::default(),
                cairn_core::Watermark::NoProjector,
                None,
            ))
            .expect("prune");
            let pages = pages_read(&conn);
            cache_job_done(true);
            store::cursor_flush(&conn).expect("flush");
            store::cursor_end();
            conn.execute_batch("COMMIT").expect("commit");
            cache_end(true);
            (report, pages)
        };
        // Each on a thread of its own: the writer's row cache is per thread.
        let (quiet, busy) = std::thread::scope(|s| {
            let quiet = s.spawn(|| measure("quiet.db", 0));
            let busy = s.spawn(|| measure("busy.db", 3_000));
            (quiet.join().expect("quiet"), busy.join().expect("busy"))
        });
        assert_eq!(quiet.0.pruned, 200, "{:?}", quiet.0);
        assert_eq!(busy.0.pruned, 200, "{:?}", busy.0);
        // A B-tree of ten times the rows may be a level deeper: a few more
        // pages for each lookup, never a walk of the live rows.
        assert!(
            busy.1 < quiet.1 * 3 / 2,
            "beside 3,000 live processes the prune read {} pages, beside none {}",
            busy.1,
            quiet.1
        );
    }
}
