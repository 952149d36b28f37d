//! Batched writes: many registry operations in one transaction.
//!
//! A batch runs in two round trips:
//!
//! 1. **Load**: `BEGIN`, then, pipelined, every process row the batch names
//!    and the parents of registrations and of ending processes (`FOR UPDATE`,
//!    in id order so batches on different nodes never deadlock on each other),
//!    their tombstones, the events their replay keys name, the envs
//!    registrations name, and claimable rows for claims (`FOR UPDATE SKIP LOCKED`
//!    over the ready and claimable indexes: a claim never waits for another node's claim).
//!    A batch that cancels loads the running descendants of what it cancels
//!    (through ended children that have children of their own), level by level (`FOR UPDATE`: a deadlock with a batch that locked in id
//!    order is a transient fault, and the batch runs again).
//!    A batch that registers a child for a session's process reads the
//!    parent's grants after the locks (the child takes its holders).
//! 2. **Decide** (no I/O): each operation runs in turn against the loaded rows,
//!    asking [`cairn_core::fold`] what it means. An operation that fails is
//!    undone from the overlay alone, so the others in the batch are unaffected.
//! 3. **Write**, pipelined: multi-row inserts and updates (`unnest` arrays) of
//!    processes, events, wakes and grants, and one `pg_notify` per 7 KiB of
//!    changed ids, with `COMMIT` behind them in the same round trip.
//!
//! Because every rule lives in fold and nothing is written before step 3, a
//! batch that meets a transient fault is simply run again from step 1.

//!
//! The module is split by concern: `overlay` (the rows a batch decides
//! against, and the operation layer's primitives over them), `write` (the
//! pipelined writes and `COMMIT`), `columns` (the `unnest` arrays).

mod columns;
mod overlay;
mod write;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cairn_core::clock::{Clock, SharedClock};
use cairn_core::ops::{Answer, Op};
use cairn_core::Result;

use crate::conn::Conn;
use crate::rows::{entries_from_rows, remember_types, to_sql, tombstone_from_row};
use crate::Fault;

use overlay::{Slot, Uow};
use write::write_and_commit;
pub(crate) use write::NOTIFY;

/// The rows a batch names, and the parents of those whose operation may end
/// them (a child's end may end its parent's `children` wait), locked in id order.
pub(crate) const LOAD_ROWS: &str = "SELECT p.id, p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
    p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter, p.types_key \
    FROM processes p WHERE p.id = ANY($1::text[] || ARRAY(SELECT c.caused_by FROM processes c \
    WHERE c.id = ANY($2::text[]) AND c.caused_by IS NOT NULL)) ORDER BY p.id FOR UPDATE";
/// The children a tree cancel walks of a batch's cancelled processes (unended
/// ones, and ended ones with children of their own), locked in id order.
const LOAD_CHILDREN: &str = "SELECT p.id, p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
    p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter, p.types_key \
    FROM processes p WHERE p.caused_by = ANY($1::text[]) AND (p.status = 'running' \
    OR EXISTS (SELECT 1 FROM processes c WHERE c.caused_by = p.id)) ORDER BY p.id FOR UPDATE";
/// Rows read, not written: the children a wait names. Run after the locks
/// are held, so (read committed) it sees every end committed before.
const PEEK_ROWS: &str = "SELECT p.id, p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
    p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter, p.types_key \
    FROM processes p WHERE p.id = ANY($1::text[])";
const LOAD_TOMBSTONES: &str =
    "SELECT id, status, terminal_at_ms, pruned_at_ms FROM tombstones WHERE id = ANY($1::text[])";
const LOAD_REPLAYS: &str = "SELECT e.process_id, e.replay_key, e.event FROM events e \
    JOIN unnest($1::text[], $2::text[]) AS k(process_id, replay_key) \
    ON e.process_id = k.process_id AND e.replay_key = k.replay_key";
/// The grants of parents ([`load_parent_grants`]), in scope order, locked
/// (`FOR SHARE`): a revoke or a session's deletion that would remove one
/// waits for the batch, or went before it.
const LOAD_GRANTS: &str =
    "SELECT process_id, grant_json FROM grants WHERE process_id = ANY($1::text[]) ORDER BY process_id, scope_id FOR SHARE";
const LOAD_ENVS: &str = "SELECT env_ref FROM envs WHERE env_ref = ANY($1::text[])";
/// Claimable rows in the order they became claimable (ADR 0030), never
/// waiting on a row another transaction holds: those claimable at once by
/// registration time (`processes_ready`) merged with those whose lease lapsed
/// or deadline came by that time (`processes_claimable`). Each half locks up
/// to the limit and reads the row as it locked it (a row changed since the
/// statement's snapshot is read as changed); the last column counts the rows
/// locked, which may be more than the limit: those the merge leaves out stay
/// locked until the batch ends, and the batch then tells the drivers to look
/// for work (another node's claim passed over them meanwhile).
pub(crate) const LOAD_CANDIDATES: &str = "WITH ready AS (SELECT id, record, lease_owner, lease_token, lease_fencing, \
    lease_claimed_at_ms, lease_expires_at_ms, fencing_counter, types_key, created_at_ms AS k FROM processes \
    WHERE run_candidate AND claimable_at_ms = 0 ORDER BY created_at_ms, id LIMIT $2::int8 FOR UPDATE SKIP LOCKED), \
    timed AS (SELECT id, record, lease_owner, lease_token, lease_fencing, \
    lease_claimed_at_ms, lease_expires_at_ms, fencing_counter, types_key, claimable_at_ms AS k FROM processes \
    WHERE run_candidate AND claimable_at_ms > 0 AND claimable_at_ms <= $1::int8 \
    ORDER BY claimable_at_ms, id LIMIT $2::int8 FOR UPDATE SKIP LOCKED) \
    SELECT id, record, lease_owner, lease_token, lease_fencing, lease_claimed_at_ms, lease_expires_at_ms, \
    fencing_counter, types_key, k, count(*) OVER () AS locked \
    FROM (SELECT * FROM ready UNION ALL SELECT * FROM timed) w ORDER BY k, id LIMIT $2::int8";

/// The column of [`LOAD_CANDIDATES`] that counts the rows it locked.
const CANDIDATES_LOCKED: usize = 10;

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// Nothing was committed: run the batch again (the fault may be transient).
    NotCommitted(Fault),
    /// The connection broke while `COMMIT` was in flight: the outcome is unknown.
    Ambiguous(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::NotCommitted(Fault::Pg(e))
    }
}

impl From<Fault> for BatchError {
    fn from(f: Fault) -> Self {
        Self::NotCommitted(f)
    }
}

/// How long a lane names a type list it stored without storing it again
/// (ADR 0034). A prune's collection deletes only lists nobody stored in its
/// grace (an hour by default, far longer), by the server's clock: a batch
/// that names a list on the strength of a store at most this long ago finds
/// it there, whatever node collects.
pub(crate) const TYPE_LIST_TRUST: Duration = Duration::from_secs(600);

/// When a batch began sending its writes, on two clocks: this host's
/// monotonic clock, and the registry's (the wall clock, or the one that
/// follows the server's: ADR 0035). A list's trust is timed on both, and
/// ends when either says [`TYPE_LIST_TRUST`] passed. On Linux an `Instant`
/// stops while the host is suspended, while the server and other nodes'
/// collections go on: the registry's clock counts that time. The registry's
/// clock may be set either way, and the `Instant` never jumps, so a clock
/// set back a little stretches nothing; one set back to before the store
/// ends the trust, since the time since the store is then unknown.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SentAt {
    pub instant: Instant,
    pub clock_ms: u64,
}

impl SentAt {
    /// Now, on both clocks.
    pub(crate) fn now(clock: &dyn Clock) -> Self {
        Self {
            instant: Instant::now(),
            clock_ms: clock.now_ms(),
        }
    }

    /// Whether a list stored by a batch that began sending at `self` is
    /// still trusted at `now`.
    fn trusted_at(&self, now: SentAt) -> bool {
        let trust_ms = TYPE_LIST_TRUST.as_millis() as u64;
        now.instant.saturating_duration_since(self.instant) < TYPE_LIST_TRUST
            && now.clock_ms >= self.clock_ms
            && now.clock_ms - self.clock_ms < trust_ms
    }
}

/// Where a batch writes beyond its rows: the notification channel, and the
/// type lists known to be stored in the schema, each with when a batch that
/// stored it began sending its writes (so each is stored once per
/// [`TYPE_LIST_TRUST`], not at every write), timed on `clock`, the
/// registry's.
pub(crate) struct Target {
    pub channel: String,
    pub stored_types: parking_lot::Mutex<HashMap<String, SentAt>>,
    pub clock: SharedClock,
}

impl Target {
    /// Whether a batch may name the list `key` without storing it at `now`:
    /// this node stored it within [`TYPE_LIST_TRUST`], by both clocks.
    pub(crate) fn trusts_type_list(&self, key: &str, now: SentAt) -> bool {
        self.stored_types
            .lock()
            .get(key)
            .is_some_and(|stored| stored.trusted_at(now))
    }
}

/// Run `ops` as one transaction on `conn` at time `now`. Answers one result per
/// operation, in order.
pub(crate) async fn run_batch(
    conn: &Conn,
    ops: &[Op],
    now: u64,
    target: &Target,
) -> std::result::Result<Vec<Result<Answer>>, BatchError> {
    // Prepare first (cached after the first batch) so that pipelined statements
    // go out in the order they are listed, after BEGIN.
    let (s_rows, s_tombs, s_replays, s_envs, s_cands) = futures::future::try_join5(
        conn.stmt(LOAD_ROWS),
        conn.stmt(LOAD_TOMBSTONES),
        conn.stmt(LOAD_REPLAYS),
        conn.stmt(LOAD_ENVS),
        conn.stmt(LOAD_CANDIDATES),
    )
    .await?;
    // A registration's parent is loaded (and locked) with the batch: its
    // existence and its cancellation decide the child's start.
    let mut ids: Vec<String> = ops
        .iter()
        .flat_map(|o| o.process_id().into_iter().chain(o.parent_id()))
        .map(String::from)
        .collect();
    ids.sort();
    ids.dedup();
    let mut ending: Vec<String> = ops
        .iter()
        .filter(|o| o.may_end())
        .filter_map(|o| o.process_id().map(String::from))
        .collect();
    ending.sort();
    ending.dedup();
    // A key holding NUL is never stored (the operation refuses it as
    // `invalid_id`), and PostgreSQL's `text` cannot even be asked for one:
    // left out of the load, not failing the whole batch as a storage error.
    let (replay_ids, replay_keys): (Vec<String>, Vec<String>) = ops
        .iter()
        .filter_map(Op::replay_key)
        .filter(|(_, key)| !key.contains('\0'))
        .unzip();
    let envs: Vec<String> = ops.iter().filter_map(|o| o.env_ref().map(String::from)).collect();
    // Saturating: a claim of "everything" (`usize::MAX`) beside another.
    let want = ops.iter().map(Op::candidates_wanted).fold(0, usize::saturating_add);
    let now_sql = to_sql(now);
    let want_sql = crate::rows::to_sql_usize(want);

    let result = load_decide_write(
        conn,
        ops,
        now,
        target,
        Loads {
            rows: (&s_rows, &ids, &ending),
            tombs: &s_tombs,
            replays: (&s_replays, &replay_ids, &replay_keys),
            envs: (&s_envs, &envs),
            candidates: (&s_cands, &now_sql, &want_sql, want),
        },
    )
    .await;
    match result {
        Ok(outs) => Ok(outs),
        Err(e) => {
            // Best effort: a broken connection is replaced by the lane anyway.
            let _ = conn.client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Load, unlocked, the rows the batch only reads: the children its `children`
/// waits name, and those of loaded parents suspended on one (a child's end
/// checks its siblings). They are read after the locks are held, and every
/// end of a child locks its parent first, so none of them is stale. Costs a
/// round trip only when such a wait is in play.
async fn peek(conn: &Conn, ops: &[Op], uow: &mut Uow) -> std::result::Result<(), BatchError> {
    let mut wanted: Vec<String> = ops.iter().flat_map(|o| o.read_ids().iter().cloned()).collect();
    for slot in uow.slots.values() {
        if let Some(entry) = &slot.entry {
            let waits_on_children = cairn_core::fold::is_suspended(&entry.record)
                && entry.record.wait.as_ref().is_some_and(|w| w.kind == "children");
            if waits_on_children {
                wanted.extend(entry.record.wait.iter().flat_map(|w| w.ids.iter().flatten().cloned()));
            }
        }
    }
    wanted.retain(|id| !uow.slots.contains_key(id));
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(());
    }
    let (s_peek, s_tombs) = futures::future::try_join(conn.stmt(PEEK_ROWS), conn.stmt(LOAD_TOMBSTONES)).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&wanted];
    let (rows, tombs) = futures::try_join!(
        conn.client.query(&s_peek, &params),
        conn.client.query(&s_tombs, &params)
    )?;
    let entries = entries_from_rows(conn, &rows, 1).await?;
    for (row, entry) in rows.iter().zip(entries) {
        let id: String = row.try_get(0).map_err(Fault::Pg)?;
        uow.slots.insert(
            id,
            Slot {
                entry: Some(entry),
                stored: true,
                dirty: false,
                changed: false,
            },
        );
    }
    for row in &tombs {
        let t = tombstone_from_row(row)?;
        uow.tombstones.insert(t.id.clone(), t);
    }
    Ok(())
}

/// Load the grants of the parents whose holders a child registered in the
/// batch takes ([`Op::inherits_grants_from`]). Read after the parents' rows
/// are locked (a transfer locks them too) and locked themselves, so no
/// transfer, revoke or session deletion lands between this read and the
/// child's grants. Costs a round trip only when such a child is in
/// the batch.
async fn load_parent_grants(conn: &Conn, ops: &[Op], uow: &mut Uow) -> std::result::Result<(), BatchError> {
    let mut parents: Vec<String> = ops
        .iter()
        .filter_map(Op::inherits_grants_from)
        .map(String::from)
        .collect();
    if parents.is_empty() {
        return Ok(());
    }
    parents.sort();
    parents.dedup();
    let stmt = conn.stmt(LOAD_GRANTS).await?;
    let rows = conn.client.query(&stmt, &[&parents]).await?;
    for id in parents {
        uow.parent_grants.insert(id, Vec::new());
    }
    for row in &rows {
        let id: String = row.try_get(0).map_err(Fault::Pg)?;
        let grant = serde_json::from_str(row.try_get::<_, &str>(1).map_err(Fault::Pg)?).map_err(Fault::Json)?;
        uow.parent_grants.entry(id).or_default().push(grant);
    }
    Ok(())
}

/// Load and lock, level by level, the running descendants of every process
/// the batch cancels (and the ended children on the way to them): a cancellation requests theirs in the same write. Each
/// level is read after the level above is locked, and a child's registration
/// locks its parent, so a child registered concurrently is either found here
/// or finds its parent's request and is born cancelled. Costs a round trip
/// per level, only when the batch cancels something.
async fn load_descendants(conn: &Conn, ops: &[Op], uow: &mut Uow) -> std::result::Result<Vec<String>, BatchError> {
    let mut frontier: Vec<String> = ops
        .iter()
        .filter(|o| o.cancels_tree())
        .filter_map(|o| o.process_id().map(String::from))
        .filter(|id| uow.slots.contains_key(id))
        .collect();
    let mut locked = Vec::new();
    if frontier.is_empty() {
        return Ok(locked);
    }
    let s_children = conn.stmt(LOAD_CHILDREN).await?;
    let mut seen: HashSet<String> = frontier.iter().cloned().collect();
    while !frontier.is_empty() {
        frontier.sort();
        frontier.dedup();
        let rows = conn.client.query(&s_children, &[&frontier]).await?;
        let entries = entries_from_rows(conn, &rows, 1).await?;
        frontier = Vec::new();
        for (row, entry) in rows.iter().zip(entries) {
            let id: String = row.try_get(0).map_err(Fault::Pg)?;
            if !seen.insert(id.clone()) {
                continue;
            }
            frontier.push(id.clone());
            locked.push(id.clone());
            uow.slots.entry(id).or_insert(Slot {
                entry: Some(entry),
                stored: true,
                dirty: false,
                changed: false,
            });
        }
    }
    Ok(locked)
}

struct Loads<'a> {
    rows: (&'a tokio_postgres::Statement, &'a Vec<String>, &'a Vec<String>),
    tombs: &'a tokio_postgres::Statement,
    replays: (&'a tokio_postgres::Statement, &'a Vec<String>, &'a Vec<String>),
    envs: (&'a tokio_postgres::Statement, &'a Vec<String>),
    candidates: (&'a tokio_postgres::Statement, &'a i64, &'a i64, usize),
}

async fn load_decide_write(
    conn: &Conn,
    ops: &[Op],
    now: u64,
    target: &Target,
    loads: Loads<'_>,
) -> std::result::Result<Vec<Result<Answer>>, BatchError> {
    let client = &conn.client;
    let none: Vec<tokio_postgres::Row> = Vec::new();
    // 1. Load, pipelined behind BEGIN.
    let begin = client.batch_execute("BEGIN");
    let (ids, tombs_stmt) = (loads.rows.1, loads.tombs);
    let load_rows = async {
        if ids.is_empty() {
            Ok(none.clone())
        } else {
            client.query(loads.rows.0, &[ids, loads.rows.2]).await
        }
    };
    let load_tombs = async {
        if ids.is_empty() {
            Ok(none.clone())
        } else {
            client.query(tombs_stmt, &[ids]).await
        }
    };
    let load_replays = async {
        if loads.replays.1.is_empty() {
            Ok(none.clone())
        } else {
            client.query(loads.replays.0, &[loads.replays.1, loads.replays.2]).await
        }
    };
    let load_envs = async {
        if loads.envs.1.is_empty() {
            Ok(none.clone())
        } else {
            client.query(loads.envs.0, &[loads.envs.1]).await
        }
    };
    let load_candidates = async {
        if loads.candidates.3 == 0 {
            Ok(none.clone())
        } else {
            client
                .query(loads.candidates.0, &[loads.candidates.1, loads.candidates.2])
                .await
        }
    };
    let ((), rows, tombs, replays, envs, candidates) =
        futures::try_join!(begin, load_rows, load_tombs, load_replays, load_envs, load_candidates)?;

    let mut uow = Uow::new(now);
    // Rows, candidates and new registrations: sized once, never rehashed.
    uow.slots.reserve(rows.len() + candidates.len() + ops.len());
    let row_entries = entries_from_rows(conn, &rows, 1).await?;
    let mut locked = Vec::with_capacity(rows.len());
    for (row, entry) in rows.iter().zip(row_entries) {
        let id: String = row.try_get(0).map_err(Fault::Pg)?;
        locked.push(id.clone());
        uow.slots.insert(
            id,
            Slot {
                entry: Some(entry),
                stored: true,
                dirty: false,
                changed: false,
            },
        );
    }
    for row in &tombs {
        let t = tombstone_from_row(row)?;
        uow.tombstones.insert(t.id.clone(), t);
    }
    for row in &replays {
        let id: String = row.try_get(0).map_err(Fault::Pg)?;
        let key: String = row.try_get(1).map_err(Fault::Pg)?;
        let event: &str = row.try_get(2).map_err(Fault::Pg)?;
        uow.replays
            .insert((id, key), serde_json::from_str(event).map_err(Fault::Json)?);
    }
    for row in &envs {
        uow.envs.insert(row.try_get(0).map_err(Fault::Pg)?);
    }
    // Candidates locked beyond those answered: passed over by any claim meanwhile.
    let locked_beyond = match candidates.first() {
        Some(row) => row.try_get::<_, i64>(CANDIDATES_LOCKED).map_err(Fault::Pg)? > candidates.len() as i64,
        None => false,
    };
    let candidate_entries = entries_from_rows(conn, &candidates, 1).await?;
    for (row, entry) in candidates.iter().zip(candidate_entries) {
        let id: String = row.try_get(0).map_err(Fault::Pg)?;
        if !uow.slots.contains_key(&id) {
            uow.slots.insert(
                id.clone(),
                Slot {
                    entry: Some(entry),
                    stored: true,
                    dirty: false,
                    changed: false,
                },
            );
        }
        uow.candidates.push_back(id);
    }

    locked.extend(load_descendants(conn, ops, &mut uow).await?);
    peek(conn, ops, &mut uow).await?;
    load_parent_grants(conn, ops, &mut uow).await?;

    // 2. Decide.
    let mut outs: Vec<Result<Answer>> = ops.iter().map(|op| uow.run(op)).collect();
    // A row locked here and left as it was may be due now: a driver's claim
    // meanwhile passed over it (SKIP LOCKED), and no write of it will tell
    // the drivers. The work notice sends them to look again once the lock
    // is gone.
    // (Only the rows the batch names, their parents and the descendants a
    // cancel locks: an unclaimed candidate of a claim must not send every
    // driver to claim again. Candidates locked and left out of the answer
    // are another matter: no claim of this batch saw them.)
    if !uow.work {
        uow.work = locked_beyond
            || locked.iter().any(|id| {
                uow.slots
                    .get(id)
                    .is_some_and(|slot| !slot.dirty && slot.entry.as_ref().is_some_and(|e| e.due_by(now)))
            });
    }

    // 3. Write and commit, pipelined.
    let (inserted_wakes, new_lists, sent_at) = write_and_commit(conn, &uow, target).await?;
    if !new_lists.is_empty() {
        let mut stored = target.stored_types.lock();
        for list in new_lists {
            remember_types(&list);
            stored.insert(list.key().to_string(), sent_at);
        }
    }
    // A wake whose id was already stored (by an earlier batch) was not delivered again.
    for out in &mut outs {
        if let Ok(Answer::Appended(result)) = out {
            if result
                .wake
                .as_ref()
                .is_some_and(|w| !inserted_wakes.contains(&w.wake_id))
            {
                result.wake = None;
            }
        }
    }
    Ok(outs)
}
