//! Statements against one SQLite transaction: the lookups and stores behind
//! [`crate::tx::Tx`] (the write primitives of the operation layer) and the
//! reads. No rule about what an operation or an event means lives here: the
//! rules are [`cairn_core::ops`] and [`cairn_core::fold`].

use cairn_core::events::ProcessEvent;
use cairn_core::model::{
    Grant, GrantedProcess, Lease, ListOrder, NewestWalk, ProcessFilter, ProcessRecord, ProcessStatus, SessionScope,
    StatusFilter, Tombstone, WakeDelivery,
};
use cairn_core::ops::admin::{PruneCandidate, PrunePosition};
use cairn_core::ops::Row;
use cairn_core::CairnError;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row as SqlRow};

/// An error inside a store operation: a cairn answer, or a fault of the storage.
/// It exists so `?` works on all three sources; callers see a [`CairnError`].
#[derive(Debug)]
pub(crate) enum Fault {
    Cairn(CairnError),
    Sql(rusqlite::Error),
    Json(serde_json::Error),
}

impl From<CairnError> for Fault {
    fn from(e: CairnError) -> Self {
        Self::Cairn(e)
    }
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<serde_json::Error> for Fault {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

/// Whether `e` is SQLite giving up on a lock another connection held past
/// the busy timeout: nothing was done, and the same call may be made again.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Whether `e` is SQLite finding the disk full: the statement or commit
/// that met it was rolled back, and room made later lets it through.
pub(crate) fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

impl From<Fault> for CairnError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Cairn(e) => e,
            Fault::Sql(e) if is_busy(&e) => CairnError::Unavailable(format!(
                "sqlite: the database is locked by another connection; nothing was written, try again ({e})"
            )),
            // A full disk passes when room is made, and the write that met it
            // was rolled back: as a lock held elsewhere, it is the moment's.
            Fault::Sql(e) if is_disk_full(&e) => CairnError::Unavailable(format!(
                "sqlite: the disk is full; nothing was written, try again once there is room ({e})"
            )),
            Fault::Sql(e) => CairnError::storage_caused_by(format!("sqlite: {e}"), e),
            Fault::Json(e) => CairnError::storage(format!("stored data does not decode: {e}")),
        }
    }
}

pub(crate) type R<T> = std::result::Result<T, Fault>;

use cairn_core::events::EventTypes;
use cairn_core::ops::columns::{
    cached_type_list, from_i64 as from_sql, lease_from_columns, status_label, to_i64 as to_sql, type_list_from_json,
    usize_to_i64 as to_sql_usize, IndexColumns, StoredRecord,
};

/// The columns [`entry_from_row`] reads, prefixed with the `p` alias.
const ENTRY_COLUMNS: &str = "p.record, p.lease_owner, p.lease_token, p.lease_fencing, p.lease_claimed_at_ms, \
                             p.lease_expires_at_ms, p.fencing_counter, p.types_key";
/// How many columns [`ENTRY_COLUMNS`] names.
const ENTRY_WIDTH: usize = 8;

/// A decoded row, and the key of its type list when the cache does not hold
/// that list yet (the record's list is then empty until [`with_types`] fills it).
type Decoded = (Row, Option<String>);

/// Decode the [`ENTRY_COLUMNS`] starting at column `at`. A record names its
/// type list by key (schema v6 on, ADR 0008) or carries it inline (rows
/// written before, until their next write).
fn entry_from_row(row: &SqlRow<'_>, at: usize) -> rusqlite::Result<R<Decoded>> {
    let json: String = row.get(at)?;
    let owner: Option<String> = row.get(at + 1)?;
    let token: Option<String> = row.get(at + 2)?;
    let fencing_token: Option<i64> = row.get(at + 3)?;
    let claimed: Option<i64> = row.get(at + 4)?;
    let expires: Option<i64> = row.get(at + 5)?;
    let fencing: i64 = row.get(at + 6)?;
    let types_key: Option<String> = row.get(at + 7)?;
    let mut record: ProcessRecord = match serde_json::from_str(&json) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.into())),
    };
    let mut missing = None;
    match types_key {
        Some(key) => match cached_type_list(&key) {
            Some(list) => record.event_types = list,
            None => missing = Some(key),
        },
        None if record.event_types.is_empty() => {
            return Ok(Err(CairnError::storage(format!(
                "process `{}` has no event types stored",
                record.id
            ))
            .into()));
        }
        None => {}
    }
    let lease = lease_from_columns(&record.id, owner, token, fencing_token, claimed, expires);
    // The stored JSON carries no lease: the columns are the only truth for it.
    record.lease = lease.as_ref().map(Lease::view);
    Ok(Ok((
        Row {
            record,
            lease,
            fencing: from_sql(fencing),
        },
        missing,
    )))
}

/// Fill in the type list a decoded row names, reading it (once per OS
/// process and list) when the cache does not hold it.
fn with_types(conn: &Connection, (mut row, missing): Decoded) -> R<Row> {
    if let Some(key) = missing {
        let json = conn
            .prepare_cached("SELECT types FROM type_lists WHERE key = ?1")?
            .query_row([&key], |r| r.get::<_, String>(0))
            .optional()?
            .ok_or_else(|| {
                CairnError::storage(format!(
                    "process `{}` names type list `{key}`, which is not stored",
                    row.record.id
                ))
            })?;
        row.record.event_types = type_list_from_json(&key, &json)?;
    }
    Ok(row)
}

/// Load a process row.
pub(crate) fn load(conn: &Connection, id: &str) -> R<Option<Row>> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM processes p WHERE p.id = ?1");
    let found = conn
        .prepare_cached(&sql)?
        .query_row([id], |row| entry_from_row(row, 0))
        .optional()?;
    found.transpose()?.map(|d| with_types(conn, d)).transpose()
}

/// The error for an id with no row: `no_longer_retained` when it was pruned.
pub(crate) fn missing(conn: &Connection, id: &str) -> R<CairnError> {
    let tombstone = conn
        .prepare_cached("SELECT status, terminal_at_ms, pruned_at_ms FROM tombstones WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
        .optional()?;
    Ok(match tombstone {
        Some((status, terminal_at, pruned_at)) => {
            let status = ProcessStatus::parse(&status)
                .ok_or_else(|| CairnError::storage(format!("tombstone of `{id}` has an unknown status `{status}`")))?;
            CairnError::NoLongerRetained(Box::new(Tombstone {
                id: id.to_string(),
                status,
                terminal_at_ms: from_sql(terminal_at),
                pruned_at_ms: from_sql(pruned_at),
            }))
        }
        None => CairnError::UnknownProcess(id.to_string()),
    })
}

/// Load a process row or fail with [`missing`].
pub(crate) fn entry(conn: &Connection, id: &str) -> R<Row> {
    match load(conn, id)? {
        Some(e) => Ok(e),
        None => Err(missing(conn, id)?.into()),
    }
}

/// The pruned tombstone of `id`, if any.
pub(crate) fn tombstone(conn: &Connection, id: &str) -> R<Option<Tombstone>> {
    Ok(match missing(conn, id)? {
        CairnError::NoLongerRetained(t) => Some(*t),
        _ => None,
    })
}

thread_local! {
    /// The change cursor of the write transaction open on this thread (the
    /// writer's): the last value handed out and the value stored in
    /// `counters`. Handing cursors out of memory and storing the last once
    /// per transaction, instead of an `UPDATE ... RETURNING` per changed row,
    /// spares the writer a row update (and its savepoint's copy of the page)
    /// per job.
    static CURSOR: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// The stored change cursor, read outside any transaction.
pub(crate) fn cursor_stored(conn: &Connection) -> rusqlite::Result<u64> {
    let v: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'change_cursor'")?
        .query_row([], |r| r.get(0))?;
    Ok(from_sql(v))
}

/// Read the stored change cursor at the start of a write transaction (which
/// holds the write lock, so no other connection moves it until it ends), and
/// answer it.
pub(crate) fn cursor_begin(conn: &Connection) -> rusqlite::Result<u64> {
    let v = cursor_stored(conn)?;
    CURSOR.set(Some((v, v)));
    Ok(v)
}

/// Store the last change cursor handed out, before the transaction commits;
/// answers how far the stored cursor moved. Cursors handed to a job that
/// rolled back to its savepoint are skipped, never reused: the feed's
/// cursors only grow.
pub(crate) fn cursor_flush(conn: &Connection) -> rusqlite::Result<u64> {
    if let Some((last, stored)) = CURSOR.get() {
        if last != stored {
            conn.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'change_cursor'")?
                .execute([to_sql(last)])?;
            CURSOR.set(Some((last, last)));
            return Ok(last - stored);
        }
    }
    Ok(0)
}

/// The write transaction ended (committed or not): the next one reads the
/// stored cursor again.
pub(crate) fn cursor_end() {
    CURSOR.set(None);
}

/// The next change cursor: from the open write transaction's, or (outside
/// one) straight from `counters`.
fn next_cursor(conn: &Connection) -> R<u64> {
    match CURSOR.get() {
        Some((last, stored)) => {
            CURSOR.set(Some((last + 1, stored)));
            Ok(last + 1)
        }
        None => next_counter(conn, "change_cursor"),
    }
}

/// Bump a global counter and return its new value.
fn next_counter(conn: &Connection, name: &str) -> R<u64> {
    let v: i64 = conn
        .prepare_cached("UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value")?
        .query_row([name], |r| r.get(0))?;
    Ok(from_sql(v))
}

/// The stored JSON and the indexed columns of a record. The JSON keeps
/// whatever lease view the record carries (every load replaces it from the
/// lease columns, so encoding the record as it is saves cloning it) and not
/// its type list, which is stored once in `type_lists` under the row's
/// `types_key` (ADR 0008): three quarters of a record's JSON for a process
/// that declares no types.
fn derive(conn: &Connection, record: &ProcessRecord, now: u64) -> R<(String, IndexColumns)> {
    store_type_list(conn, &record.event_types, now)?;
    Ok((
        serde_json::to_string(&StoredRecord::of(record))?,
        IndexColumns::of(record)?,
    ))
}

/// Store a type list unless it is stored, as stored at `now` (the job's
/// time). Once the list is there this is one
/// lookup in a small table: nothing is encoded or written; and once the
/// writer thread knows it is there (see [`crate::tx::type_list_known`]), not
/// even that. A prune's collection may delete a list no row names and
/// nobody stored within its grace ([`collect_unreferenced`]); the writer
/// that collects forgets what it knew, and another writer on the file
/// forgets at its next `BEGIN`, so a list gone is looked up and stored
/// again. The grace is for writers of an older build, which forget nothing
/// (ADR 0034).
fn store_type_list(conn: &Connection, list: &EventTypes, now: u64) -> R<()> {
    if crate::tx::type_list_known(list.key()) {
        return Ok(());
    }
    let stored = conn
        .prepare_cached("SELECT 1 FROM type_lists WHERE key = ?1")?
        .exists([list.key()])?;
    if !stored {
        conn.prepare_cached("INSERT INTO type_lists (key, types, touched_at_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![list.key(), serde_json::to_string(&**list)?, to_sql(now)])?;
    }
    crate::tx::type_list_stored(list.key());
    Ok(())
}

/// The JSON a session scope is stored as in `originator_scope`.
fn originator_scope(scope: &SessionScope) -> R<String> {
    Ok(serde_json::to_string(scope)?)
}

/// Move the change cursor for a change no row's cursor records (a lease
/// let go, a process pruned): another OS process's watcher tells a foreign
/// commit beside its own by the cursor (see `others`).
pub(crate) fn cursor_skip(conn: &Connection) -> R<()> {
    next_cursor(conn).map(|_| ())
}

/// The change cursor of a write to a row not stored yet (see
/// [`insert_process`]): its registration's is also its `log_key` (ADR 0021),
/// so its events can be stored before the row.
pub(crate) fn cursor_for_new_row(conn: &Connection) -> R<u64> {
    next_cursor(conn)
}

/// Insert a new row as its registration's job left it (with a lease and a
/// fencing counter when the job claimed it), under the change cursor of the
/// job's last write to it; `log_key` is its registration's cursor. Cursors
/// come from [`cursor_for_new_row`], one for each write, as if each were
/// stored, so the feed's cursors do not depend on when a row is stored.
/// `now` is the job's time, which a type list it stores is stored at.
pub(crate) fn insert_process(
    conn: &Connection,
    record: &ProcessRecord,
    lease: Option<&Lease>,
    fencing_counter: u64,
    log_key: u64,
    cursor: u64,
    now: u64,
) -> R<()> {
    let (json, d) = derive(conn, record, now)?;
    conn.prepare_cached(
        "INSERT INTO processes (id, record, status, disposition, definition, originator, originator_scope, waiting,
             created_at_ms, terminal_at_ms, last_sequence, change_cursor, run_candidate, abandon_candidate,
             wake_at_ms, caused_by, sweep_node, sweep_incarnation, types_key, fencing_counter, log_key,
             lease_owner, lease_token, lease_fencing, lease_claimed_at_ms, lease_expires_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
             ?22, ?23, ?24, ?25, ?26)",
    )?
    .execute(params![
        record.id,
        json,
        d.status,
        d.disposition,
        d.definition,
        d.originator,
        d.originator_scope,
        d.waiting,
        d.created_at,
        d.terminal_at,
        d.last_sequence,
        to_sql(cursor),
        d.run_candidate,
        d.abandon_candidate,
        d.wake_at,
        d.caused_by,
        d.sweep_node,
        d.sweep_incarnation,
        record.event_types.key(),
        to_sql(fencing_counter),
        to_sql(log_key),
        lease.map(|l| l.owner_id.as_str()),
        lease.map(|l| l.lease_token.as_str()),
        lease.map(|l| to_sql(l.fencing_token)),
        lease.map(|l| to_sql(l.claimed_at_ms)),
        lease.map(|l| to_sql(l.expires_at_ms)),
    ])?;
    Ok(())
}

/// Which indexed columns an update of a row changes. SQLite rewrites a row's
/// entry in every index over a column the `UPDATE` sets, even to the value it
/// holds: an append that leaves the status alone would dirty a random page of
/// `(status, id)` (and the worklist's and the sweep's pages) for nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Changes {
    /// `status` and `terminal_at_ms`.
    pub status: bool,
    /// The worklist's: `run_candidate`, `abandon_candidate`, `wake_at_ms`
    /// and, with `release_lease`, the lease columns.
    pub worklist: bool,
    /// The sweep's: `sweep_node` and `sweep_incarnation`.
    pub sweep: bool,
}

impl Changes {
    /// What storing `new` over the row that holds `old` changes.
    pub(crate) fn between(old: &ProcessRecord, new: &ProcessRecord, release_lease: bool) -> Self {
        use cairn_core::fold;
        Self {
            status: old.status != new.status || old.terminal_at_ms != new.terminal_at_ms,
            worklist: release_lease
                || fold::is_run_candidate(old) != fold::is_run_candidate(new)
                || fold::is_abandon_candidate(old) != fold::is_abandon_candidate(new)
                || fold::due_at(old) != fold::due_at(new),
            sweep: fold::sweep_owner(old) != fold::sweep_owner(new),
        }
    }

    /// Every indexed column (when the stored row is not known).
    pub(crate) const ALL: Self = Self {
        status: true,
        worklist: true,
        sweep: true,
    };
}

/// The `UPDATE` of [`update_process`] that sets what `changes` names beside
/// the columns every append changes. Parameters keep their numbers in every
/// variant (an unused one is bound and ignored).
fn update_sql(changes: Changes, release_lease: bool) -> String {
    let mut sql = String::from(
        "UPDATE processes SET record = ?2, waiting = ?4, last_sequence = ?6, change_cursor = ?7, types_key = ?14",
    );
    if changes.status {
        sql.push_str(", status = ?3, terminal_at_ms = ?5");
    }
    if changes.worklist {
        sql.push_str(", run_candidate = ?8, abandon_candidate = ?9, wake_at_ms = ?11");
    }
    if changes.worklist && release_lease {
        sql.push_str(
            ", lease_owner = NULL, lease_token = NULL, lease_fencing = NULL, lease_claimed_at_ms = NULL, \
             lease_expires_at_ms = NULL",
        );
    }
    if changes.sweep {
        sql.push_str(", sweep_node = ?12, sweep_incarnation = ?13");
    }
    sql.push_str(" WHERE id = ?1");
    sql
}

/// Store a record after an append, moving it to the head of the change feed;
/// with `release_lease` the lease columns are cleared too. Only the indexed
/// columns `changes` names are set (see [`Changes`]). `now` is the job's
/// time, which a type list it stores is stored at.
pub(crate) fn update_process(
    conn: &Connection,
    record: &ProcessRecord,
    release_lease: bool,
    changes: Changes,
    now: u64,
) -> R<()> {
    let cursor = next_cursor(conn)?;
    let (json, d) = derive(conn, record, now)?;
    let changes = Changes {
        worklist: changes.worklist || release_lease,
        ..changes
    };
    conn.prepare_cached(&update_sql(changes, release_lease))?
        .execute(params![
            record.id,
            json,
            d.status,
            d.waiting,
            d.terminal_at,
            d.last_sequence,
            to_sql(cursor),
            d.run_candidate,
            d.abandon_candidate,
            release_lease,
            d.wake_at,
            d.sweep_node,
            d.sweep_incarnation,
            record.event_types.key(),
        ])?;
    Ok(())
}

/// Write (or clear) the lease columns and the fencing counter of a row.
pub(crate) fn store_lease(conn: &Connection, id: &str, lease: Option<&Lease>, fencing_counter: u64) -> R<()> {
    conn.prepare_cached(
        "UPDATE processes SET lease_owner = ?2, lease_token = ?3, lease_fencing = ?4, lease_claimed_at_ms = ?5,
             lease_expires_at_ms = ?6, fencing_counter = ?7
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        lease.map(|l| l.owner_id.as_str()),
        lease.map(|l| l.lease_token.as_str()),
        lease.map(|l| to_sql(l.fencing_token)),
        lease.map(|l| to_sql(l.claimed_at_ms)),
        lease.map(|l| to_sql(l.expires_at_ms)),
        to_sql(fencing_counter),
    ])?;
    Ok(())
}

// A process's events are keyed by its row's `log_key` (schema V_LOG_KEYS,
// ADR 0021), found through the primary key.
const INSERT_EVENT_SQL: &str = "INSERT INTO events (log_key, sequence, event_type, replay_key, occurred_at_ms, event)
     VALUES ((SELECT log_key FROM processes WHERE id = ?1), ?2, ?3, ?4, ?5, ?6)";
const INSERT_EVENT_KEYED_SQL: &str =
    "INSERT INTO events (log_key, sequence, event_type, replay_key, occurred_at_ms, event) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const REPLAYED_SQL: &str = "SELECT event FROM events
     WHERE log_key = (SELECT log_key FROM processes WHERE id = ?1) AND replay_key = ?2";
const EVENTS_AFTER_SQL: &str =
    "SELECT event FROM events WHERE log_key = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3";
const DELETE_EVENTS_SQL: &str = "DELETE FROM events WHERE log_key = (SELECT log_key FROM processes WHERE id = ?1)";

/// The event of `id` appended with `replay_key`, if any.
pub(crate) fn replayed(conn: &Connection, id: &str, replay_key: &str) -> R<Option<ProcessEvent>> {
    let json = conn
        .prepare_cached(REPLAYED_SQL)?
        .query_row(params![id, replay_key], |r| r.get::<_, String>(0))
        .optional()?;
    Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
}

/// Insert an event into its process's log (the process's row must exist:
/// its `log_key` keys the log, and a missing row fails the NOT NULL).
pub(crate) fn insert_event(conn: &Connection, event: &ProcessEvent) -> R<()> {
    conn.prepare_cached(INSERT_EVENT_SQL)?.execute(params![
        event.process_id,
        to_sql(event.sequence),
        event.event_type,
        event.replay_key,
        to_sql(event.occurred_at_ms),
        serde_json::to_string(event)?,
    ])?;
    Ok(())
}

/// [`insert_event`] into the log `log_key` names, for a row its job has not
/// stored yet.
pub(crate) fn insert_event_keyed(conn: &Connection, log_key: u64, event: &ProcessEvent) -> R<()> {
    conn.prepare_cached(INSERT_EVENT_KEYED_SQL)?.execute(params![
        to_sql(log_key),
        to_sql(event.sequence),
        event.event_type,
        event.replay_key,
        to_sql(event.occurred_at_ms),
        serde_json::to_string(event)?,
    ])?;
    Ok(())
}

/// Insert a wake delivery unless its id is stored; `true` when inserted.
pub(crate) fn insert_wake(conn: &Connection, wake: &WakeDelivery) -> R<bool> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM wakes WHERE wake_id = ?1")?
        .query_row([&wake.wake_id], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        return Ok(false);
    }
    let order = next_counter(conn, "wake_order")?;
    conn.prepare_cached(
        "INSERT INTO wakes (wake_id, target_session_id, process_id, acked, wake_order, delivery)
         VALUES (?1, ?2, ?3, 0, ?4, ?5)",
    )?
    .execute(params![
        wake.wake_id,
        wake.target_session_id,
        wake.process_id,
        to_sql(order),
        serde_json::to_string(wake)?,
    ])?;
    Ok(true)
}

/// Run candidates claimable at ?1, in the order they became claimable (ADR
/// 0030): those claimable at once by registration time (`processes_ready`)
/// merged with those whose lease lapsed or deadline came by that time
/// (`processes_worklist`). Each half states its index's WHERE terms, which is
/// what lets SQLite use it (see the plan tests); the merge sorts at most twice
/// the limit.
const RUN_CANDIDATES_SQL: &str = "SELECT id FROM (
     SELECT * FROM (SELECT id, created_at_ms AS k FROM processes
         WHERE run_candidate = 1 AND claimable_at_ms = 0 ORDER BY created_at_ms, id LIMIT ?2)
     UNION ALL
     SELECT * FROM (SELECT id, claimable_at_ms AS k FROM processes
         WHERE run_candidate = 1 AND claimable_at_ms > 0 AND claimable_at_ms <= ?1
         ORDER BY claimable_at_ms, id LIMIT ?2)
     ) ORDER BY k, id LIMIT ?2";

/// Abandon requests whose lease is free or lapsed at ?1, from their own
/// partial index.
const ABANDON_CANDIDATES_SQL: &str = "SELECT id FROM processes
     WHERE abandon_candidate = 1 AND claimable_at_ms <= ?1
     ORDER BY claimable_at_ms, id LIMIT ?2";

/// Worklist rows claimable at ?1, in the order they became claimable, as
/// [`RUN_CANDIDATES_SQL`] merges them.
const WORKLIST_SQL: &str = "SELECT id, a FROM (
     SELECT * FROM (SELECT id, abandon_candidate AS a, created_at_ms AS k FROM processes
         WHERE (run_candidate = 1 OR abandon_candidate = 1) AND claimable_at_ms = 0
         ORDER BY created_at_ms, id LIMIT ?2)
     UNION ALL
     SELECT * FROM (SELECT id, abandon_candidate AS a, claimable_at_ms AS k FROM processes
         WHERE (run_candidate = 1 OR abandon_candidate = 1) AND claimable_at_ms > 0 AND claimable_at_ms <= ?1
         ORDER BY claimable_at_ms, id LIMIT ?2)
     ) ORDER BY k, id LIMIT ?2";

/// Counts of running rows, by the status index (its term stated, see [`NOT_COMPLETED`]).
const RUNNING_GAUGES_SQL: &str =
    "SELECT count(*), coalesce(sum(waiting), 0), coalesce(sum(lease_owner IS NOT NULL), 0),
     coalesce(sum(lease_owner IS NOT NULL AND lease_expires_at_ms <= ?1), 0)
     FROM processes WHERE status = 'running' AND status <> 'completed'";

/// The wakes not acknowledged, by their partial index (`wakes_unacked`).
const PENDING_WAKES_SQL: &str = "SELECT count(*) FROM wakes WHERE acked = 0";

/// Counts of the live state (running rows by the status index; wakes by theirs).
pub(crate) fn gauges(conn: &Connection, now: u64) -> R<cairn_core::Gauges> {
    let (running, waiting, leased, lapsed): (i64, i64, i64, i64) = conn
        .prepare_cached(RUNNING_GAUGES_SQL)?
        .query_row(params![to_sql(now)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let pending: i64 = conn.prepare_cached(PENDING_WAKES_SQL)?.query_row([], |r| r.get(0))?;
    let n = cairn_core::ops::columns::from_i64;
    Ok(cairn_core::Gauges {
        running: n(running),
        waiting: n(waiting),
        leased: n(leased),
        lapsed: n(lapsed),
        pending_wakes: n(pending),
    })
}

/// The earliest claimable time after ?1 on the worklist index (rows
/// claimable at once are never after: `claimable_at_ms > 0` is the index's term).
const NEXT_DUE_SQL: &str = "SELECT MIN(claimable_at_ms) FROM processes
     WHERE (run_candidate = 1 OR abandon_candidate = 1) AND claimable_at_ms > 0 AND claimable_at_ms > ?1";

/// The earliest claimable time after `after` (a lease expiry or a deadline).
pub(crate) fn next_due(conn: &Connection, after: u64) -> R<Option<u64>> {
    let due: Option<i64> = conn
        .prepare_cached(NEXT_DUE_SQL)?
        .query_row(params![to_sql(after)], |r| r.get(0))?;
    Ok(due.map(cairn_core::ops::columns::from_i64))
}

/// Ids of run candidates whose lease is free or expired at `now`, from the worklist index.
pub(crate) fn run_candidates(conn: &Connection, now: u64, limit: usize) -> R<Vec<String>> {
    let mut stmt = conn.prepare_cached(RUN_CANDIDATES_SQL)?;
    let ids = stmt
        .query_map(params![to_sql(now), to_sql_usize(limit)], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

/// The children of `parent` a tree cancel walks, in id order: those that
/// have not ended, and ended ones with children of their own (the
/// `processes_caused_by` index, both times).
pub(crate) fn tree_children(conn: &Connection, parent: &str) -> R<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.id FROM processes p WHERE p.caused_by = ?1 AND (p.status = 'running' \
         OR EXISTS (SELECT 1 FROM processes c WHERE c.caused_by = p.id)) ORDER BY p.id",
    )?;
    let ids = stmt
        .query_map(params![parent], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

/// Worklist rows at `now`: (id, is an abandon candidate).
pub(crate) fn worklist(conn: &Connection, now: u64, limit: usize) -> R<Vec<(String, bool)>> {
    let mut stmt = conn.prepare_cached(WORKLIST_SQL)?;
    let rows = stmt
        .query_map(params![to_sql(now), to_sql_usize(limit)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<(String, bool)>>>()?;
    Ok(rows)
}

/// [`ABANDON_CANDIDATES_SQL`]: the ids, earliest first.
pub(crate) fn abandon_worklist(conn: &Connection, now: u64, limit: usize) -> R<Vec<String>> {
    let mut stmt = conn.prepare_cached(ABANDON_CANDIDATES_SQL)?;
    let rows = stmt
        .query_map(params![to_sql(now), to_sql_usize(limit)], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

// ---------------------------------------------------------------- grants

fn grant_from_json(json: &str) -> R<Grant> {
    Ok(serde_json::from_str(json)?)
}

/// Insert or replace the grant of (scope, process).
pub(crate) fn upsert_grant(conn: &Connection, grant: &Grant) -> R<()> {
    conn.prepare_cached(
        "INSERT INTO grants (scope_id, session_id, process_id, grant_json) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (scope_id, process_id) DO UPDATE SET session_id = excluded.session_id,
             grant_json = excluded.grant_json",
    )?
    .execute(params![
        grant.scope.scope_id(),
        grant.scope.session_id,
        grant.process_id,
        serde_json::to_string(grant)?,
    ])?;
    Ok(())
}

/// Remove one grant, returning it.
pub(crate) fn take_grant(conn: &Connection, scope: &SessionScope, id: &str) -> R<Option<Grant>> {
    let json = conn
        .prepare_cached("DELETE FROM grants WHERE scope_id = ?1 AND process_id = ?2 RETURNING grant_json")?
        .query_row(params![scope.scope_id(), id], |r| r.get::<_, String>(0))
        .optional()?;
    json.map(|j| grant_from_json(&j)).transpose()
}

/// The grants held on (existing) process `id`, in scope id order.
pub(crate) fn grants_of(conn: &Connection, id: &str) -> R<Vec<Grant>> {
    let json = conn
        .prepare_cached(
            "SELECT g.grant_json FROM grants g JOIN processes p ON p.id = g.process_id
             WHERE g.process_id = ?1 ORDER BY g.scope_id",
        )?
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    json.iter().map(|j| grant_from_json(j)).collect()
}

/// The tombstone of pruned `id` when `scope` held a grant on it as it was pruned.
pub(crate) fn pruned_grant(conn: &Connection, scope: &SessionScope, id: &str) -> R<Option<Tombstone>> {
    let held = conn
        .prepare_cached("SELECT 1 FROM tombstone_grants WHERE process_id = ?1 AND scope_id = ?2")?
        .query_row(params![id, scope.scope_id()], |_| Ok(()))
        .optional()?
        .is_some();
    if held {
        tombstone(conn, id)
    } else {
        Ok(None)
    }
}

// ---------------------------------------------------------------- listings

/// The WHERE term of the partial status index (schema `V_PARTIAL_LISTING_INDEXES`):
/// SQLite uses a partial index only for a query that states its term.
const NOT_COMPLETED: &str = " AND p.status <> 'completed'";

/// Append the SQL predicates of `filter` over the `p` alias. `by_waiting`:
/// the listing walks the processes (not a session's grants), so one of
/// waiting processes may walk the waiting index.
fn filter_sql(
    filter: &ProcessFilter,
    cursor: Option<i64>,
    by_waiting: bool,
    sql: &mut String,
    args: &mut Vec<SqlValue>,
) {
    if let Some(status) = status_label(filter.status) {
        sql.push_str(" AND p.status = ?");
        args.push(SqlValue::Text(status.into()));
        // With `waiting = true` the waiting index serves the listing (a
        // waiting process runs, and fewer wait than run): leaving out the
        // term keeps SQLite from walking every row of the status instead.
        // A session's listing walks its grants or the status index, as before.
        let waiting_index = by_waiting && filter.waiting == Some(true);
        if filter.status != StatusFilter::Completed && !waiting_index {
            // The status index leaves out completed rows; this term, which
            // the bound status implies, is what lets SQLite use it.
            sql.push_str(NOT_COMPLETED);
        }
    }
    if let Some(d) = &filter.definition {
        sql.push_str(" AND p.definition = ?");
        args.push(SqlValue::Text(d.clone()));
    }
    if let Some(w) = filter.waiting {
        sql.push_str(" AND p.waiting = ?");
        args.push(SqlValue::Integer(i64::from(w)));
        if w {
            // The term of the partial waiting index (schema `V_LISTING_WINDOWS`), see NOT_COMPLETED.
            sql.push_str(" AND p.waiting = 1");
        }
    }
    if let Some(o) = &filter.originator {
        sql.push_str(" AND p.originator = ?");
        args.push(SqlValue::Text(o.clone()));
        if o.starts_with("session:") {
            // A session's scope id: the originator index holds its rows (see NOT_COMPLETED).
            sql.push_str(" AND p.originator_scope IS NOT NULL");
        }
    }
    if let Some(c) = &filter.caused_by {
        sql.push_str(" AND p.caused_by = ?");
        args.push(SqlValue::Text(c.clone()));
    }
    if filter.created_from_ms.is_some() || filter.created_before_ms.is_some() {
        // Both bounds, the missing one open: with one bound alone SQLite
        // guesses a quarter of the table matches and walks the id order,
        // reading every row to find the few of a recent window; a range
        // takes the creation-time index (schema `V_LISTING_WINDOWS`), which
        // reads only the rows in the window. A listing of waiting processes
        // walks the waiting index instead (`+` keeps the bounds off the
        // creation-time index): those are few, where a wide window is not.
        let column = if by_waiting && filter.waiting == Some(true) {
            "+p.created_at_ms"
        } else {
            "p.created_at_ms"
        };
        sql.push_str(&format!(" AND {column} >= ? AND {column} < ?"));
        args.push(SqlValue::Integer(filter.created_from_ms.map_or(i64::MIN, to_sql)));
        args.push(SqlValue::Integer(filter.created_before_ms.map_or(i64::MAX, to_sql)));
    }
    match (&filter.after_id, filter.newest_cursor()) {
        (Some(a), None) if filter.order == ListOrder::Id => {
            sql.push_str(" AND p.id > ?");
            args.push(SqlValue::Text(a.clone()));
        }
        (_, Some(a)) => {
            // The row value reads the creation-time index from the cursor down.
            sql.push_str(" AND (p.created_at_ms, p.id) < (?, ?)");
            args.push(SqlValue::Integer(cursor.unwrap_or(i64::MIN)));
            args.push(SqlValue::Text(a.to_string()));
        }
        _ => {}
    }
}

/// The `ORDER BY … LIMIT ?` of a listing whose process id column is `id`.
fn order_sql(filter: &ProcessFilter, id: &str, limit: usize, sql: &mut String, args: &mut Vec<SqlValue>) {
    match filter.order {
        ListOrder::Id => sql.push_str(&format!(" ORDER BY {id} LIMIT ?")),
        ListOrder::Newest => sql.push_str(&format!(" ORDER BY p.created_at_ms DESC, {id} DESC LIMIT ?")),
    }
    args.push(SqlValue::Integer(to_sql_usize(limit)));
}

/// Which processes a listing holds: its cursor is looked up among them only.
enum Lens<'a> {
    /// Every process (the host's listing).
    All,
    /// Those granted to the scope.
    GrantedTo(&'a SessionScope),
    /// Those the scope started.
    OriginatedBy(&'a SessionScope),
}

/// A newest-first listing's cursor: the creation time of the process
/// `after_id` names, among those `lens` holds ([`ProcessFilter::cursor_gone`]
/// when none does: a session's lens tells nothing of other processes).
fn cursor(conn: &Connection, filter: &ProcessFilter, lens: Lens<'_>) -> R<Option<i64>> {
    let Some(a) = filter.newest_cursor() else {
        return Ok(None);
    };
    let created = |r: &rusqlite::Row<'_>| r.get::<_, i64>(0);
    let found = match lens {
        Lens::All => conn
            .prepare_cached("SELECT created_at_ms FROM processes WHERE id = ?1")?
            .query_row([a], created)
            .optional()?,
        Lens::GrantedTo(scope) => conn
            .prepare_cached(
                "SELECT p.created_at_ms FROM grants g JOIN processes p ON p.id = g.process_id
                 WHERE g.scope_id = ?2 AND g.process_id = ?1",
            )?
            .query_row(params![a, scope.scope_id()], created)
            .optional()?,
        Lens::OriginatedBy(scope) => conn
            .prepare_cached(
                "SELECT created_at_ms FROM processes WHERE id = ?1 AND originator = ?2 AND originator_scope = ?3",
            )?
            .query_row(params![a, scope.scope_id(), originator_scope(scope)?], created)
            .optional()?,
    };
    found.map(Some).ok_or_else(|| filter.cursor_gone().into())
}

fn collect_entries(
    conn: &Connection,
    sql: &str,
    args: Vec<SqlValue>,
    extra_columns: usize,
) -> R<Vec<(Vec<String>, Row)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), |row| {
            let mut extra = Vec::with_capacity(extra_columns);
            for i in 0..extra_columns {
                extra.push(row.get::<_, String>(i)?);
            }
            Ok((extra, entry_from_row(row, extra_columns)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(extra, entry)| Ok((extra, with_types(conn, entry?)?)))
        .collect()
}

/// The query of `list`: with a status it walks the (status, id) index in id
/// order, so terminal rows never slow a listing of running ones.
fn list_query(filter: &ProcessFilter, cursor: Option<i64>, limit: usize) -> (String, Vec<SqlValue>) {
    // Newest first, the waiting processes are read from their own index and
    // sorted (they are few, ADR 0037): left to itself the planner walks the
    // creation-time index for its order, past every ended process.
    let from = if filter.order == ListOrder::Newest && filter.waiting == Some(true) {
        "processes p INDEXED BY processes_waiting"
    } else {
        "processes p"
    };
    listing_query(from, filter, cursor, limit)
}

/// A listing's query over `from` (the table, and the index it names).
fn listing_query(from: &str, filter: &ProcessFilter, cursor: Option<i64>, limit: usize) -> (String, Vec<SqlValue>) {
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM {from} WHERE 1 = 1");
    let mut args = Vec::new();
    filter_sql(filter, cursor, true, &mut sql, &mut args);
    order_sql(filter, "p.id", limit, &mut sql, &mut args);
    (sql, args)
}

/// The creation time `?2` rows down the creation-time index from `?1`
/// (read from the index alone): where a walk of that many stops.
const WALK_FLOOR_SQL: &str = "SELECT created_at_ms FROM processes INDEXED BY processes_created \
     WHERE created_at_ms <= ?1 ORDER BY created_at_ms DESC LIMIT 1 OFFSET ?2";

/// The page of the walk core plans for a newest-first listing by status
/// ([`ProcessFilter::newest_walk`], [`NewestWalk`], which say why): `None`
/// when the walk does not hold it, and the status's rows are to be read and
/// sorted ([`list_query`]), as the planner would always do.
fn newest_by_walk(
    conn: &Connection,
    filter: &ProcessFilter,
    cursor: Option<i64>,
    limit: usize,
) -> R<Option<Vec<ProcessRecord>>> {
    let Some(walk) = filter.newest_walk(cursor.map(from_sql), limit) else {
        return Ok(None);
    };
    let floor = conn
        .prepare_cached(WALK_FLOOR_SQL)?
        .query_row(params![to_sql(walk.top_ms), to_sql_usize(walk.budget)], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map(from_sql);
    let walked = walk.filter(filter, floor);
    let (sql, args) = listing_query("processes p INDEXED BY processes_created", &walked, cursor, limit);
    let records: Vec<ProcessRecord> = collect_entries(conn, &sql, args, 0)?
        .into_iter()
        .map(|(_, e)| e.record)
        .collect();
    Ok(NewestWalk::holds_page(records.len(), limit, floor).then_some(records))
}

/// `list`: records matching the filter in the filter's order, one page.
pub(crate) fn list(conn: &Connection, filter: &ProcessFilter, limit: usize) -> R<Vec<ProcessRecord>> {
    let cursor = cursor(conn, filter, Lens::All)?;
    if let Some(records) = newest_by_walk(conn, filter, cursor, limit)? {
        return Ok(records);
    }
    let (sql, args) = list_query(filter, cursor, limit);
    Ok(collect_entries(conn, &sql, args, 0)?
        .into_iter()
        .map(|(_, e)| e.record)
        .collect())
}

/// The query of `list_originated_by`, on the (partial) originator index.
fn originated_by_query(
    scope: &SessionScope,
    filter: &ProcessFilter,
    cursor: Option<i64>,
    limit: usize,
) -> R<(String, Vec<SqlValue>)> {
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM processes p WHERE p.originator = ? AND p.originator_scope = ?");
    let mut args = vec![
        SqlValue::Text(scope.scope_id()),
        SqlValue::Text(originator_scope(scope)?),
    ];
    filter_sql(filter, cursor, true, &mut sql, &mut args);
    order_sql(filter, "p.id", limit, &mut sql, &mut args);
    Ok((sql, args))
}

/// `list_originated_by`: records whose originator is exactly `scope`.
pub(crate) fn list_originated_by(
    conn: &Connection,
    scope: &SessionScope,
    filter: &ProcessFilter,
    limit: usize,
) -> R<Vec<ProcessRecord>> {
    let (sql, args) = originated_by_query(scope, filter, cursor(conn, filter, Lens::OriginatedBy(scope))?, limit)?;
    Ok(collect_entries(conn, &sql, args, 0)?
        .into_iter()
        .map(|(_, e)| e.record)
        .collect())
}

/// `list_granted_to`: the scope's grants with their records, in the filter's order.
pub(crate) fn list_granted_to(
    conn: &Connection,
    scope: &SessionScope,
    filter: &ProcessFilter,
    limit: usize,
) -> R<Vec<GrantedProcess>> {
    let mut sql = format!(
        "SELECT g.grant_json, {ENTRY_COLUMNS} FROM grants g JOIN processes p ON p.id = g.process_id
         WHERE g.scope_id = ?"
    );
    let mut args = vec![SqlValue::Text(scope.scope_id())];
    filter_sql(
        filter,
        cursor(conn, filter, Lens::GrantedTo(scope))?,
        false,
        &mut sql,
        &mut args,
    );
    order_sql(filter, "g.process_id", limit, &mut sql, &mut args);
    collect_entries(conn, &sql, args, 1)?
        .into_iter()
        .map(|(extra, e)| {
            let json = extra.first().map(String::as_str).unwrap_or_default();
            Ok(GrantedProcess {
                grant: grant_from_json(json)?,
                process: e.record,
            })
        })
        .collect()
}

/// Events after `after`, at most `limit`, and the process's last sequence.
pub(crate) fn events_after(conn: &Connection, id: &str, after: u64, limit: usize) -> R<(Vec<ProcessEvent>, u64)> {
    let found = conn
        .prepare_cached("SELECT last_sequence, log_key FROM processes WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .optional()?;
    let Some((last, log_key)) = found else {
        return Err(missing(conn, id)?.into());
    };
    let mut stmt = conn.prepare_cached(EVENTS_AFTER_SQL)?;
    let jsons = stmt
        .query_map(params![log_key, to_sql(after), to_sql_usize(limit)], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let events = jsons
        .iter()
        .map(|j| serde_json::from_str(j))
        .collect::<std::result::Result<Vec<ProcessEvent>, _>>()?;
    Ok((events, from_sql(last)))
}

// ---------------------------------------------------------------- sessions and wakes

/// A session's pending wakes, oldest first (through `wakes_pending`).
const SESSION_WAKES_SQL: &str =
    "SELECT delivery FROM wakes WHERE target_session_id = ?1 AND acked = 0 ORDER BY wake_order LIMIT ?2";

/// A frame's pending wakes, oldest first: the frame compared exactly as
/// `wakes_frame_pending` holds it, so the read walks that index.
const FRAME_WAKES_SQL: &str = "SELECT delivery FROM wakes WHERE target_session_id = ?1 AND acked = 0
     AND json_extract(delivery, '$.target_scope.agent_frame_id') = ?3 ORDER BY wake_order LIMIT ?2";

/// Pending wakes of a session (of one of its agent frames, given one), oldest
/// first: at most `limit`, and none after the one that brings the page to
/// [`cairn_core::LIST_PAGE_BYTES`] as stored. A frame's are read through
/// their own index, past other frames'.
pub(crate) fn pending_wakes(
    conn: &Connection,
    session_id: &str,
    frame_id: Option<&str>,
    limit: usize,
) -> R<Vec<WakeDelivery>> {
    let mut stmt = match frame_id {
        None => conn.prepare_cached(SESSION_WAKES_SQL)?,
        Some(_) => conn.prepare_cached(FRAME_WAKES_SQL)?,
    };
    let mut rows = match frame_id {
        None => stmt.query(params![session_id, to_sql_usize(limit)])?,
        Some(frame) => stmt.query(params![session_id, to_sql_usize(limit), frame])?,
    };
    let mut wakes = Vec::new();
    let mut bytes = 0usize;
    while bytes < cairn_core::LIST_PAGE_BYTES {
        let Some(row) = rows.next()? else { break };
        let json = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        bytes = bytes.saturating_add(json.len());
        wakes.push(serde_json::from_str(json)?);
    }
    Ok(wakes)
}

/// Acknowledge a wake; `true` when this call did.
pub(crate) fn ack_wake(conn: &Connection, session_id: &str, wake_id: &str) -> R<bool> {
    let row = conn
        .prepare_cached("SELECT target_session_id, acked FROM wakes WHERE wake_id = ?1")?
        .query_row([wake_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))
        .optional()?;
    match row {
        Some((target, acked)) if target == session_id => {
            if !acked {
                conn.prepare_cached("UPDATE wakes SET acked = 1 WHERE wake_id = ?1")?
                    .execute([wake_id])?;
            }
            Ok(!acked)
        }
        _ => Err(CairnError::UnknownWake(wake_id.to_string()).into()),
    }
}

/// Remove every grant of the session's scopes, or with `keep_frames` only
/// those to the session as a whole; one process id per removed grant.
pub(crate) fn delete_session_grants(conn: &Connection, session_id: &str, keep_frames: bool) -> R<Vec<String>> {
    let (sql, key) = if keep_frames {
        (
            "DELETE FROM grants WHERE scope_id = ?1 RETURNING process_id",
            SessionScope::session(session_id).scope_id(),
        )
    } else {
        (
            "DELETE FROM grants WHERE session_id = ?1 RETURNING process_id",
            session_id.to_string(),
        )
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_map([key], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?)
}

/// Remove the rows of pruned processes' grants kept for the session's
/// scopes, or with `keep_frames` only for the session as a whole; how many.
pub(crate) fn delete_session_tombstone_grants(conn: &Connection, session_id: &str, keep_frames: bool) -> R<u64> {
    let (sql, key) = if keep_frames {
        (
            "DELETE FROM tombstone_grants WHERE scope_id = ?1",
            SessionScope::session(session_id).scope_id(),
        )
    } else {
        (
            "DELETE FROM tombstone_grants WHERE session_id = ?1",
            session_id.to_string(),
        )
    };
    Ok(conn.prepare_cached(sql)?.execute([key])? as u64)
}

/// Remove the session's pending wakes; how many.
pub(crate) fn delete_pending_wakes(conn: &Connection, session_id: &str) -> R<u64> {
    Ok(conn
        .prepare_cached("DELETE FROM wakes WHERE target_session_id = ?1 AND acked = 0")?
        .execute([session_id])? as u64)
}

/// Whether `id` is a running process, and whether any scope holds a grant on it.
pub(crate) fn grant_state(conn: &Connection, id: &str) -> R<(bool, bool)> {
    let running = conn
        .prepare_cached("SELECT status = 'running' FROM processes WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false);
    let granted = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM grants WHERE process_id = ?1)")?
        .query_row([id], |r| r.get::<_, bool>(0))?;
    Ok((running, granted))
}

// ---------------------------------------------------------------- retention and the change feed

/// The descendants of `?1` (through ended children too) with their status,
/// walked down the `processes_caused_by` index level by level; the first
/// running one ends the walk. The status is carried down the walk, not
/// joined to it afterwards: joined, SQLite's planner put the processes table
/// in the outer loop (a bloom filter on the walk) and read every row of it
/// for each id asked about, so a prune of thousands read the table thousands
/// of times, more slowly the more processes were live.
const RUNNING_DESCENDANT_SQL: &str =
    "WITH RECURSIVE d(id, status) AS (SELECT id, status FROM processes WHERE caused_by = ?1 \
     UNION SELECT p.id, p.status FROM processes p JOIN d ON p.caused_by = d.id) \
     SELECT EXISTS (SELECT 1 FROM d WHERE status = 'running')";

/// Whether a descendant of `id` (through ended children too) has not ended;
/// it reads `id`'s tree only, however many other processes there are.
pub(crate) fn has_running_descendant(conn: &Connection, id: &str) -> R<bool> {
    Ok(conn
        .prepare_cached(RUNNING_DESCENDANT_SQL)?
        .query_row([id], |r| r.get::<_, bool>(0))?)
}

/// At most `limit` terminal processes whose terminal time is before
/// `cutoff_ms`, after `after` in (terminal time, id) order, from the prune
/// index (its range, then the ids of one terminal time sorted).
pub(crate) fn prune_candidates(
    conn: &Connection,
    cutoff_ms: u64,
    status: StatusFilter,
    after: Option<&PrunePosition>,
    limit: usize,
) -> R<Vec<PruneCandidate>> {
    const SQL: &str =
        "SELECT id, status, terminal_at_ms, change_cursor, caused_by, definition, originator, created_at_ms
         FROM processes WHERE terminal_at_ms IS NOT NULL AND terminal_at_ms < ?1 AND status <> 'running'
         AND terminal_at_ms >= ?2 AND (terminal_at_ms > ?2 OR id > ?3) AND (?4 IS NULL OR status = ?4)
         ORDER BY terminal_at_ms, id LIMIT ?5";
    let args = vec![
        SqlValue::Integer(to_sql(cutoff_ms)),
        SqlValue::Integer(after.map_or(i64::MIN, |a| to_sql(a.terminal_at_ms))),
        SqlValue::Text(after.map_or_else(String::new, |a| a.id.clone())),
        status_label(status).map_or(SqlValue::Null, |s| SqlValue::Text(s.into())),
        SqlValue::Integer(to_sql_usize(limit)),
    ];
    let mut stmt = conn.prepare_cached(SQL)?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(
            |(id, status, terminal_at, cursor, parent, definition, originator, created_at)| {
                let status = ProcessStatus::parse(&status)
                    .ok_or_else(|| CairnError::storage(format!("process `{id}` has an unknown status `{status}`")))?;
                Ok(PruneCandidate {
                    id,
                    status,
                    terminal_at_ms: from_sql(terminal_at),
                    change_cursor: from_sql(cursor),
                    parent,
                    definition,
                    originator,
                    created_at_ms: from_sql(created_at),
                })
            },
        )
        .collect()
}

/// Delete one process with its events, grants and wakes and leave its tombstone
/// and the scopes its grants were to; (events, grants, wakes) deleted. The deletion moves the change cursor, as
/// every change to a process does: another OS process's watcher tells a
/// prune committed beside its own commits by it (see `others`).
pub(crate) fn prune_one(conn: &Connection, victim: &PruneCandidate, now: u64) -> R<(u64, u64, u64)> {
    let id = victim.id.as_str();
    cursor_skip(conn)?;
    let events = conn.prepare_cached(DELETE_EVENTS_SQL)?.execute([id])? as u64;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO tombstone_grants (process_id, scope_id, session_id)
         SELECT process_id, scope_id, session_id FROM grants WHERE process_id = ?1",
    )?
    .execute([id])?;
    let grants = conn
        .prepare_cached("DELETE FROM grants WHERE process_id = ?1")?
        .execute([id])? as u64;
    let wakes = conn
        .prepare_cached("DELETE FROM wakes WHERE process_id = ?1")?
        .execute([id])? as u64;
    conn.prepare_cached("DELETE FROM processes WHERE id = ?1")?
        .execute([id])?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO tombstones (id, status, terminal_at_ms, pruned_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        id,
        victim.status.label(),
        to_sql(victim.terminal_at_ms),
        to_sql(now)
    ])?;
    Ok((events, grants, wakes))
}

/// The last change cursor given out, as committed.
pub(crate) fn change_head(conn: &Connection) -> R<u64> {
    let value: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'change_cursor'")?
        .query_row([], |r| r.get(0))?;
    Ok(from_sql(value))
}

/// Records changed after `cursor`, in cursor order: (cursor, record).
pub(crate) fn changed_since(conn: &Connection, cursor: u64, limit: usize) -> R<Vec<(u64, ProcessRecord)>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS}, p.change_cursor FROM processes p WHERE p.change_cursor > ?1
         ORDER BY p.change_cursor LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params![to_sql(cursor), to_sql_usize(limit)], |row| {
            Ok((row.get::<_, i64>(ENTRY_WIDTH)?, entry_from_row(row, 0)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(c, e)| Ok((from_sql(c), with_types(conn, e?)?.record)))
        .collect()
}

// ---------------------------------------------------------------- envs

/// Store env bytes unless the ref is already stored, and count it as put at
/// `now` either way: a prune's collection keeps an env put within its grace,
/// so the registration that names it next finds it (ADR 0034).
pub(crate) fn put_env(conn: &Connection, env_ref: &str, bytes: &[u8], now: u64) -> R<()> {
    conn.prepare_cached(
        "INSERT INTO envs (env_ref, bytes, touched_at_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (env_ref) DO UPDATE SET touched_at_ms = max(touched_at_ms, excluded.touched_at_ms)",
    )?
    .execute(params![env_ref, bytes, to_sql(now)])?;
    Ok(())
}

/// Overwrite env bytes (tests of corruption detection).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn overwrite_env(conn: &Connection, env_ref: &str, bytes: &[u8]) -> R<()> {
    conn.prepare_cached(
        "INSERT INTO envs (env_ref, bytes) VALUES (?1, ?2) ON CONFLICT (env_ref) DO UPDATE SET bytes = excluded.bytes",
    )?
    .execute(params![env_ref, bytes])?;
    Ok(())
}

/// Delete the envs no process names, of those put at or before
/// `touched_before` (the collection's cutoff), and the type lists no process
/// row names, of those stored at or before it; answers how many of each. One statement per table, each
/// reading the process rows once (`NOT IN` a subquery SQLite builds as one
/// temporary index), never a lookup per candidate. A row's env is its
/// record's `env_ref`; `instr` spares decoding the records that name none.
pub(crate) fn collect_unreferenced(conn: &Connection, touched_before: u64) -> R<(u64, u64)> {
    let envs = conn
        .prepare_cached(COLLECT_ENVS_SQL)?
        .execute([to_sql(touched_before)])?;
    let lists = conn
        .prepare_cached(COLLECT_TYPE_LISTS_SQL)?
        .execute([to_sql(touched_before)])?;
    Ok((envs as u64, lists as u64))
}

/// See [`collect_unreferenced`].
const COLLECT_ENVS_SQL: &str = "DELETE FROM envs WHERE touched_at_ms <= ?1 AND env_ref NOT IN \
    (SELECT json_extract(record, '$.env_ref') FROM processes \
     WHERE instr(record, '\"env_ref\":\"') > 0 AND json_extract(record, '$.env_ref') IS NOT NULL)";

/// See [`collect_unreferenced`].
const COLLECT_TYPE_LISTS_SQL: &str = "DELETE FROM type_lists WHERE touched_at_ms <= ?1 AND key NOT IN \
    (SELECT types_key FROM processes WHERE types_key IS NOT NULL)";

/// Stored env bytes.
pub(crate) fn env_bytes(conn: &Connection, env_ref: &str) -> R<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT bytes FROM envs WHERE env_ref = ?1")?
        .query_row([env_ref], |r| r.get::<_, Vec<u8>>(0))
        .optional()?)
}

/// Whether an env is stored.
pub(crate) fn env_exists(conn: &Connection, env_ref: &str) -> R<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM envs WHERE env_ref = ?1")?
        .query_row([env_ref], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The fencing counter of a process.
pub(crate) fn fencing_token(conn: &Connection, id: &str) -> R<u64> {
    let v = conn
        .prepare_cached("SELECT fencing_counter FROM processes WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, i64>(0))
        .optional()?;
    match v {
        Some(v) => Ok(from_sql(v)),
        None => Err(missing(conn, id)?.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql` as one string of its detail lines.
    fn plan(conn: &Connection, sql: &str, args: Vec<SqlValue>) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
        let rows = stmt
            .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .expect("plan rows")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("plan");
        rows.join(" | ")
    }

    /// A write that finds the disk full (here: the file at its page bound)
    /// is `unavailable`, the moment's, as a lock held elsewhere is: it was
    /// rolled back, and room made later lets it through.
    #[test]
    fn a_full_disk_is_unavailable_not_a_storage_fault() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (b BLOB); PRAGMA max_page_count = 8;")
            .expect("setup");
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(1000000))", [])
            .expect_err("past the bound");
        assert!(is_disk_full(&full), "{full:?}");
        let err = CairnError::from(Fault::Sql(full));
        assert_eq!(err.code(), "unavailable", "{err}");
        assert!(err.to_string().contains("the disk is full"), "{err}");
        let other = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .expect_err("no table");
        assert_eq!(CairnError::from(Fault::Sql(other)).code(), "storage");
    }

    fn fresh() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn =
            crate::schema::open_writer(&dir.path().join("plan.db"), std::time::Duration::from_secs(1)).expect("open");
        (dir, conn)
    }

    #[test]
    fn worklist_and_claims_use_the_partial_indexes() {
        let (_dir, conn) = fresh();
        let args = || vec![SqlValue::Integer(0), SqlValue::Integer(10)];
        for sql in [WORKLIST_SQL, RUN_CANDIDATES_SQL] {
            let p = plan(&conn, sql, args());
            assert!(p.contains("SCAN processes USING INDEX processes_ready"), "{sql}: {p}");
            assert!(
                p.contains("SEARCH processes USING INDEX processes_worklist"),
                "{sql}: {p}"
            );
            // Only the merge of the two halves (at most twice the limit) is sorted.
            assert_eq!(p.matches("TEMP B-TREE").count(), 1, "{sql}: {p}");
        }
        let p = plan(&conn, NEXT_DUE_SQL, vec![SqlValue::Integer(0)]);
        assert!(p.contains("SEARCH processes USING INDEX processes_worklist"), "{p}");
    }

    #[test]
    fn a_frames_pending_wakes_are_read_through_their_own_index() {
        let (_dir, conn) = fresh();
        let args = vec![
            SqlValue::Text("s".into()),
            SqlValue::Integer(10),
            SqlValue::Text("f".into()),
        ];
        let p = plan(&conn, FRAME_WAKES_SQL, args);
        assert!(p.contains("USING INDEX wakes_frame_pending"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let p = plan(
            &conn,
            SESSION_WAKES_SQL,
            vec![SqlValue::Text("s".into()), SqlValue::Integer(10)],
        );
        assert!(p.contains("USING INDEX wakes_pending"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }

    #[test]
    fn the_abandon_worklist_uses_its_own_index() {
        let (_dir, conn) = fresh();
        let p = plan(
            &conn,
            ABANDON_CANDIDATES_SQL,
            vec![SqlValue::Integer(0), SqlValue::Integer(10)],
        );
        assert!(p.contains("processes_abandon"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }

    #[test]
    fn status_listing_walks_the_status_index_in_id_order() {
        let (_dir, conn) = fresh();
        for status in [StatusFilter::Running, StatusFilter::Failed, StatusFilter::Abandoned] {
            let filter = ProcessFilter {
                status,
                after_id: Some("a".into()),
                ..ProcessFilter::default()
            };
            let (sql, args) = list_query(&filter, None, 100);
            let p = plan(&conn, &sql, args);
            assert!(p.contains("processes_status_id"), "{p}");
            assert!(!p.contains("TEMP B-TREE"), "{p}");
        }
        // Completed rows are not in the (partial) status index: their listing
        // walks the id index, still without sorting.
        let filter = ProcessFilter {
            status: StatusFilter::Completed,
            after_id: Some("a".into()),
            ..ProcessFilter::default()
        };
        let (sql, args) = list_query(&filter, None, 100);
        let p = plan(&conn, &sql, args);
        assert!(p.contains("sqlite_autoindex_processes_1"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }

    /// A listing bounded by creation time (one bound or both, any status)
    /// reads the creation-time index, not every row in id order; one of the
    /// waiting processes reads the waiting index. As the server's readers
    /// plan them: whatever the values bound.
    #[test]
    fn creation_windows_and_waiting_listings_have_their_indexes() {
        let (_dir, conn) = fresh();
        crate::schema::stable_plans(&conn).expect("stable plans");
        let bounds = [(Some(5), None), (None, Some(9)), (Some(5), Some(9))];
        for status in [StatusFilter::Any, StatusFilter::Completed] {
            for (from, before) in bounds {
                for after_id in [None, Some("a".to_string())] {
                    let filter = ProcessFilter {
                        status,
                        created_from_ms: from,
                        created_before_ms: before,
                        after_id,
                        ..ProcessFilter::default()
                    };
                    let (sql, args) = list_query(&filter, None, 100);
                    let p = plan(&conn, &sql, args);
                    assert!(p.contains("USING INDEX processes_created"), "{filter:?}: {p}");
                }
            }
        }
        for (status, from) in [
            (StatusFilter::Any, None),
            (StatusFilter::Running, None),
            (StatusFilter::Completed, None),
            (StatusFilter::Any, Some(5)),
            (StatusFilter::Running, Some(5)),
        ] {
            let filter = ProcessFilter {
                status,
                waiting: Some(true),
                created_from_ms: from,
                after_id: Some("a".into()),
                ..ProcessFilter::default()
            };
            let (sql, args) = list_query(&filter, None, 100);
            let p = plan(&conn, &sql, args);
            assert!(p.contains("USING INDEX processes_waiting"), "{filter:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{filter:?}: {p}");
        }
    }

    /// A newest-first listing of every status or of completed ones (with a
    /// cursor or without, bounded by creation time or not) walks the
    /// creation-time index backward: the first page of the newest rows reads
    /// those rows, never sorts the table. As the server's readers plan them.
    #[test]
    fn a_newest_first_listing_walks_the_creation_time_index() {
        let (_dir, conn) = fresh();
        crate::schema::stable_plans(&conn).expect("stable plans");
        let bounds = [(None, None), (Some(5), None), (None, Some(9)), (Some(5), Some(9))];
        for status in [StatusFilter::Any, StatusFilter::Completed] {
            for (from, before) in bounds {
                for (after_id, cursor) in [(None, None), (Some("a".to_string()), Some(7))] {
                    let filter = ProcessFilter {
                        status,
                        created_from_ms: from,
                        created_before_ms: before,
                        order: ListOrder::Newest,
                        after_id,
                        ..ProcessFilter::default()
                    };
                    let (sql, args) = list_query(&filter, cursor, 100);
                    let p = plan(&conn, &sql, args);
                    assert!(p.contains("USING INDEX processes_created"), "{filter:?}: {p}");
                    assert!(!p.contains("TEMP B-TREE"), "{filter:?}: {p}");
                }
            }
        }
        // Waiting processes are read from their own index and sorted, not
        // found by walking every process newest first; a bound status reads
        // its own (both hold only processes that have not completed).
        for (status, waiting, index) in [
            (StatusFilter::Any, Some(true), "processes_waiting"),
            (StatusFilter::Running, Some(true), "processes_waiting"),
            (StatusFilter::Running, None, "processes_status_id"),
            (StatusFilter::Failed, None, "processes_status_id"),
        ] {
            for (after_id, cursor) in [(None, None), (Some("a".to_string()), Some(7))] {
                let filter = ProcessFilter {
                    status,
                    waiting,
                    order: ListOrder::Newest,
                    after_id,
                    ..ProcessFilter::default()
                };
                let (sql, args) = list_query(&filter, cursor, 100);
                let p = plan(&conn, &sql, args);
                assert!(p.contains(&format!("USING INDEX {index}")), "{filter:?}: {p}");
            }
        }
    }

    /// A newest-first listing by status first walks the newest processes
    /// down the creation-time index: from the floor its walk stops at, and
    /// the cursor, without sorting; the floor is read from the index alone.
    #[test]
    fn a_newest_first_walk_by_status_reads_the_creation_time_index() {
        let (_dir, conn) = fresh();
        crate::schema::stable_plans(&conn).expect("stable plans");
        for (after_id, cursor) in [(None, None), (Some("a".to_string()), Some(7))] {
            let filter = ProcessFilter {
                status: StatusFilter::Running,
                created_from_ms: Some(5),
                order: ListOrder::Newest,
                after_id,
                ..ProcessFilter::default()
            };
            let (sql, args) = listing_query("processes p INDEXED BY processes_created", &filter, cursor, 100);
            let p = plan(&conn, &sql, args);
            assert!(p.contains("USING INDEX processes_created"), "{filter:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{filter:?}: {p}");
        }
        let p = plan(
            &conn,
            WALK_FLOOR_SQL,
            vec![SqlValue::Integer(i64::MAX), SqlValue::Integer(1_000)],
        );
        assert!(p.contains("USING COVERING INDEX processes_created"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }

    #[test]
    fn a_session_originator_listing_walks_the_partial_originator_index() {
        let (_dir, conn) = fresh();
        let filter = |originator: &str| ProcessFilter {
            status: StatusFilter::Any,
            originator: Some(originator.into()),
            after_id: Some("a".into()),
            ..ProcessFilter::default()
        };
        let (sql, args) = list_query(&filter("session:s1"), None, 100);
        let p = plan(&conn, &sql, args);
        assert!(p.contains("processes_originator_id"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        // The host's processes are not in it: their listing walks the id index.
        let (sql, args) = list_query(&filter("host"), None, 100);
        let p = plan(&conn, &sql, args);
        assert!(!p.contains("processes_originator_id"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let scope = SessionScope {
            session_id: "s1".into(),
            agent_frame_id: None,
        };
        let any = ProcessFilter {
            status: StatusFilter::Any,
            ..ProcessFilter::default()
        };
        let (sql, args) = originated_by_query(&scope, &any, None, 10).expect("query");
        let p = plan(&conn, &sql, args);
        assert!(p.contains("processes_originator_id"), "{p}");
    }

    #[test]
    fn gauges_count_running_rows_by_the_status_index() {
        let (_dir, conn) = fresh();
        let p = plan(&conn, RUNNING_GAUGES_SQL, vec![SqlValue::Integer(0)]);
        assert!(p.contains("processes_status_id"), "{p}");
        // Only the wakes not acknowledged, not every wake ever stored.
        let p = plan(&conn, PENDING_WAKES_SQL, Vec::new());
        assert!(p.contains("wakes_unacked"), "{p}");
        assert!(gauges(&conn, 0).is_ok());
    }

    #[test]
    fn event_logs_are_found_by_log_key() {
        let (_dir, conn) = fresh();
        let text = |s: &str| SqlValue::Text(s.into());
        let int = SqlValue::Integer;
        for (sql, args, index) in [
            (EVENTS_AFTER_SQL, vec![int(1), int(0), int(10)], "events_log"),
            (REPLAYED_SQL, vec![text("p"), text("k")], "events_replay_key"),
            (DELETE_EVENTS_SQL, vec![text("p")], "events_log"),
        ] {
            let p = plan(&conn, sql, args);
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("SCAN") && !p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        for sql in [REPLAYED_SQL, DELETE_EVENTS_SQL, INSERT_EVENT_SQL] {
            let args = (1..=conn.prepare(sql).expect("prepare").parameter_count())
                .map(|_| text("p"))
                .collect();
            let p = plan(&conn, sql, args);
            assert!(p.contains("sqlite_autoindex_processes_1"), "{sql}: {p}");
        }
    }

    /// A prune's collection reads the process rows once per table (one
    /// subquery SQLite builds a list of), never once per env or list.
    #[test]
    fn the_collection_reads_the_processes_once() {
        let (_dir, conn) = fresh();
        for sql in [COLLECT_ENVS_SQL, COLLECT_TYPE_LISTS_SQL] {
            let args = (1..=conn.prepare(sql).expect("prepare").parameter_count())
                .map(|_| SqlValue::Integer(0))
                .collect();
            let p = plan(&conn, sql, args);
            assert!(p.contains("LIST SUBQUERY") && !p.contains("CORRELATED"), "{sql}: {p}");
        }
        assert_eq!(collect_unreferenced(&conn, 0).expect("collect"), (0, 0));
    }

    #[test]
    fn change_feed_prune_and_wakes_use_their_indexes() {
        let (_dir, conn) = fresh();
        let p = plan(
            &conn,
            "SELECT p.change_cursor FROM processes p WHERE p.change_cursor > ?1 ORDER BY p.change_cursor LIMIT ?2",
            vec![SqlValue::Integer(0), SqlValue::Integer(10)],
        );
        assert!(p.contains("processes_change_cursor"), "{p}");
        let p = plan(
            &conn,
            "SELECT id FROM processes WHERE terminal_at_ms IS NOT NULL AND terminal_at_ms < ?1 AND status <> 'running'",
            vec![SqlValue::Integer(0)],
        );
        assert!(p.contains("processes_terminal_at"), "{p}");
        let p = plan(
            &conn,
            "SELECT delivery FROM wakes WHERE target_session_id = ?1 AND acked = 0 ORDER BY wake_order LIMIT ?2",
            vec![SqlValue::Text("s".into()), SqlValue::Integer(10)],
        );
        assert!(p.contains("wakes_pending") && !p.contains("TEMP B-TREE"), "{p}");
    }

    /// Prune asks, for each process it would delete, whether a descendant
    /// still runs: the question walks the process's tree down the
    /// `processes_caused_by` index and never reads the processes table
    /// through (a scan per candidate made a prune read the table thousands of
    /// times, the slower the more processes were live).
    #[test]
    fn the_running_descendant_check_walks_only_the_tree() {
        let (_dir, conn) = fresh();
        let p = plan(&conn, RUNNING_DESCENDANT_SQL, vec![SqlValue::Text("p".into())]);
        assert_eq!(p.matches("processes_caused_by").count(), 2, "{p}");
        // Only the walk itself (`d`) is scanned, never a table.
        let scans: Vec<&str> = p
            .split(" | ")
            .filter(|step| step.starts_with("SCAN") && !matches!(*step, "SCAN d" | "SCAN CONSTANT ROW"))
            .collect();
        assert!(scans.is_empty(), "{p}");
        assert!(!p.contains("AUTOMATIC"), "{p}");
    }

    /// The kept grants of pruned processes are read by one point lookup and
    /// deleted by a session's deletion through an index, whatever else is kept.
    #[test]
    fn tombstone_grants_are_read_and_deleted_through_indexes() {
        let (_dir, conn) = fresh();
        for (sql, args, index) in [
            (
                "SELECT 1 FROM tombstone_grants WHERE process_id = ?1 AND scope_id = ?2",
                vec![SqlValue::Text("p".into()), SqlValue::Text("session:s".into())],
                "sqlite_autoindex_tombstone_grants",
            ),
            (
                "DELETE FROM tombstone_grants WHERE scope_id = ?1",
                vec![SqlValue::Text("session:s".into())],
                "sqlite_autoindex_tombstone_grants",
            ),
            (
                "DELETE FROM tombstone_grants WHERE session_id = ?1",
                vec![SqlValue::Text("s".into())],
                "tombstone_grants_session",
            ),
        ] {
            let p = plan(&conn, sql, args);
            assert!(p.contains(index), "{sql}: {p}");
        }
    }

    #[test]
    fn cached_statements_with_a_bound_limit_are_not_prepared_again() {
        let (dir, writer) = fresh();
        let reader =
            crate::schema::open_reader(&dir.path().join("plan.db"), std::time::Duration::from_secs(1)).expect("reader");
        for (conn, sql) in [(&reader, EVENTS_AFTER_SQL), (&writer, WORKLIST_SQL)] {
            let mut stmt = conn.prepare_cached(sql).expect("prepare");
            let n = stmt.parameter_count();
            for limit in 1..4_i64 {
                let args: Vec<SqlValue> = (1..=n)
                    .map(|i| {
                        if i == n {
                            SqlValue::Integer(limit)
                        } else {
                            SqlValue::Integer(0)
                        }
                    })
                    .collect();
                stmt.query(params_from_iter(args)).expect("query").next().expect("step");
            }
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}: prepared again when its LIMIT was bound"
            );
        }
    }
}
