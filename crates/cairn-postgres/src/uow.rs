//! Batched writes: many registry operations in one transaction.
//!
//! A batch runs in two round trips:
//!
//! 1. **Load**: `BEGIN`, then, pipelined, every process row the batch names
//!    (`FOR UPDATE`, in id order so batches on different nodes never deadlock on
//!    each other), their tombstones, the events their replay keys name, the envs
//!    registrations name, and claimable rows for claims (`FOR UPDATE SKIP LOCKED`
//!    over the claimable index: a claim never waits for another node's claim).
//! 2. **Decide** (no I/O): each operation runs in turn against the loaded rows,
//!    asking [`cairn_core::fold`] what it means. An operation that fails is
//!    undone from the overlay alone, so the others in the batch are unaffected.
//! 3. **Write**, pipelined: multi-row inserts and updates (`unnest` arrays) of
//!    processes, events, wakes and grants, and one `pg_notify` per 7 KiB of
//!    changed ids, with `COMMIT` behind them in the same round trip.
//!
//! Because every rule lives in fold and nothing is written before step 3, a
//! batch that meets a transient fault is simply run again from step 1.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use cairn_core::events::{EventTypes, ProcessEvent};
use cairn_core::fold;
use cairn_core::model::{Grant, Lease, ProcessRecord, Tombstone, WakeDelivery};
use cairn_core::ops::{self, Answer, Op, WriteTx};
use cairn_core::{CairnError, Result};
use futures::future::try_join_all;
use tokio_postgres::types::ToSql;

use crate::conn::Conn;
use crate::rows::{derive, entries_from_rows, remember_types, to_sql, tombstone_from_row, Entry};
use crate::Fault;

/// A loaded (or newly registered) process row in the overlay.
#[derive(Clone, Debug)]
struct Slot {
    entry: Option<Entry>,
    /// The row exists in the database (update rather than insert).
    stored: bool,
    /// The row must be written.
    dirty: bool,
    /// The record changed (the change-feed cursor moves).
    changed: bool,
}

/// What the running operation changed, to undo it if it fails.
#[derive(Default)]
struct Journal {
    /// Each slot the operation changed, as it was before its first change.
    slots: HashMap<String, Option<Slot>>,
    replays: Vec<(String, String)>,
    grants: Vec<((String, String), Option<Grant>)>,
    wake_ids: Vec<String>,
    events: usize,
    wakes: usize,
}

/// The overlay a batch decides against, and the writes it collects.
pub(crate) struct Uow {
    now: u64,
    slots: HashMap<String, Slot>,
    tombstones: HashMap<String, Tombstone>,
    replays: HashMap<(String, String), ProcessEvent>,
    envs: HashSet<String>,
    candidates: VecDeque<String>,
    events: Vec<ProcessEvent>,
    wakes: Vec<WakeDelivery>,
    wake_ids: HashSet<String>,
    grants: HashMap<(String, String), Grant>,
    /// Ids whose log moved, with their last sequence (for notifications).
    touched: HashMap<String, u64>,
    work: bool,
    journal: Journal,
}

const LOAD_ROWS: &str = "SELECT p.id, p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
    p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter, p.types_key \
    FROM processes p WHERE p.id = ANY($1::text[]) ORDER BY p.id FOR UPDATE";
const LOAD_TOMBSTONES: &str =
    "SELECT id, status, terminal_at_ms, pruned_at_ms FROM tombstones WHERE id = ANY($1::text[])";
const LOAD_REPLAYS: &str = "SELECT e.process_id, e.replay_key, e.event FROM events e \
    JOIN unnest($1::text[], $2::text[]) AS k(process_id, replay_key) \
    ON e.process_id = k.process_id AND e.replay_key = k.replay_key";
const LOAD_ENVS: &str = "SELECT env_ref FROM envs WHERE env_ref = ANY($1::text[])";
/// Claimable rows, from the partial claimable index, never waiting on a row
/// another transaction holds.
pub(crate) const LOAD_CANDIDATES: &str = "SELECT p.id, p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
    p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter, p.types_key \
    FROM processes p WHERE p.run_candidate AND p.claimable_at_ms <= $1::int8 \
    ORDER BY p.claimable_at_ms, p.id LIMIT $2::int8 FOR UPDATE SKIP LOCKED";

const INSERT_PROCESSES: &str = "INSERT INTO processes (id, record, status, disposition, definition, originator, \
    originator_scope, waiting, created_at_ms, terminal_at_ms, last_sequence, change_cursor, run_candidate, \
    abandon_candidate, fencing_counter, lease_owner, lease_token, lease_fencing, lease_claimed_at_ms, \
    lease_expires_at_ms, types_key) \
    SELECT u.id, u.record, u.status, u.disposition, u.definition, u.originator, u.originator_scope, u.waiting, \
    u.created_at_ms, u.terminal_at_ms, u.last_sequence, (pg_current_xact_id()::text::int8 << 20) | u.ord, \
    u.run_candidate, u.abandon_candidate, u.fencing_counter, u.lease_owner, u.lease_token, u.lease_fencing, \
    u.lease_claimed_at_ms, u.lease_expires_at_ms, u.types_key \
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[], \
    $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::bool[], $14::bool[], $15::int8[], $16::text[], \
    $17::text[], $18::int8[], $19::int8[], $20::int8[], $21::text[]) \
    AS u(id, record, status, disposition, definition, originator, originator_scope, waiting, created_at_ms, \
    terminal_at_ms, last_sequence, ord, run_candidate, abandon_candidate, fencing_counter, lease_owner, \
    lease_token, lease_fencing, lease_claimed_at_ms, lease_expires_at_ms, types_key)";

const UPDATE_PROCESSES: &str = "UPDATE processes p SET record = u.record, status = u.status, waiting = u.waiting, \
    terminal_at_ms = u.terminal_at_ms, last_sequence = u.last_sequence, \
    change_cursor = CASE WHEN u.ord >= 0 THEN (pg_current_xact_id()::text::int8 << 20) | u.ord \
    ELSE p.change_cursor END, \
    run_candidate = u.run_candidate, abandon_candidate = u.abandon_candidate, \
    fencing_counter = u.fencing_counter, lease_owner = u.lease_owner, lease_token = u.lease_token, \
    lease_fencing = u.lease_fencing, lease_claimed_at_ms = u.lease_claimed_at_ms, \
    lease_expires_at_ms = u.lease_expires_at_ms, types_key = u.types_key \
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::int8[], $6::int8[], $7::int8[], $8::bool[], \
    $9::bool[], $10::int8[], $11::text[], $12::text[], $13::int8[], $14::int8[], $15::int8[], $16::text[]) \
    AS u(id, record, status, waiting, terminal_at_ms, last_sequence, ord, run_candidate, abandon_candidate, \
    fencing_counter, lease_owner, lease_token, lease_fencing, lease_claimed_at_ms, lease_expires_at_ms, types_key) \
    WHERE p.id = u.id";

/// Type lists new to this schema, content-addressed: a list another batch
/// stored first is left as it is (same key, same content).
const INSERT_TYPE_LISTS: &str = "INSERT INTO type_lists (key, types) \
    SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (key) DO NOTHING";

const INSERT_EVENTS: &str = "INSERT INTO events (process_id, sequence, event_type, replay_key, occurred_at_ms, event) \
    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[])";

const INSERT_WAKES: &str = "INSERT INTO wakes (wake_id, target_session_id, process_id, delivery) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
    ON CONFLICT (wake_id) DO NOTHING RETURNING wake_id";

pub(crate) const UPSERT_GRANTS: &str = "INSERT INTO grants (scope_id, session_id, process_id, grant_json) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
    ON CONFLICT (scope_id, process_id) DO UPDATE SET session_id = excluded.session_id, \
    grant_json = excluded.grant_json";

const NOTIFY: &str = "SELECT pg_notify($1::text, $2::text)";

/// Most bytes of one notification payload (PostgreSQL's limit is 8000).
const NOTIFY_CHUNK: usize = 7000;

impl Uow {
    fn new(now: u64) -> Self {
        Self {
            now,
            slots: HashMap::new(),
            tombstones: HashMap::new(),
            replays: HashMap::new(),
            envs: HashSet::new(),
            candidates: VecDeque::new(),
            events: Vec::new(),
            wakes: Vec::new(),
            wake_ids: HashSet::new(),
            grants: HashMap::new(),
            touched: HashMap::new(),
            work: false,
            journal: Journal::default(),
        }
    }

    // ------------------------------------------------------------ the overlay

    /// Journal the slot of `id` as it was before the running operation's first
    /// change: the entry moves into the journal when `take` (the operation is
    /// about to replace it), else it is copied.
    fn journal_slot(&mut self, id: &str, take: bool) {
        if self.journal.slots.contains_key(id) {
            return;
        }
        let before = match self.slots.get_mut(id) {
            Some(slot) if take => Some(Slot {
                entry: slot.entry.take(),
                ..*slot
            }),
            Some(slot) => Some(slot.clone()),
            None => None,
        };
        self.journal.slots.insert(id.to_string(), before);
    }

    /// Store `entry` (journalled already); `changed` when its record changed.
    fn put(&mut self, mut entry: Entry, changed: bool) {
        entry.normalise();
        let claimable = entry.lease.as_ref().is_none_or(|l| l.expires_at_ms <= self.now);
        if claimable && (fold::is_run_candidate(&entry.record) || fold::is_abandon_candidate(&entry.record)) {
            self.work = true;
        }
        let id = entry.record.id.clone();
        if changed {
            self.touched.insert(id.clone(), entry.record.last_sequence);
        }
        let slot = self.slots.entry(id).or_insert(Slot {
            entry: None,
            stored: false,
            dirty: false,
            changed: false,
        });
        slot.entry = Some(entry);
        slot.dirty = true;
        slot.changed |= changed;
    }

    fn loaded(&mut self, id: &str) -> Result<&mut Entry> {
        self.slots
            .get_mut(id)
            .and_then(|s| s.entry.as_mut())
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))
    }

    fn begin(&mut self) {
        self.journal = Journal {
            events: self.events.len(),
            wakes: self.wakes.len(),
            ..Journal::default()
        };
    }

    fn undo(&mut self) {
        let journal = std::mem::take(&mut self.journal);
        for (id, before) in journal.slots {
            restore(&mut self.slots, id, before);
        }
        for key in journal.replays {
            self.replays.remove(&key);
        }
        for (key, before) in journal.grants.into_iter().rev() {
            restore(&mut self.grants, key, before);
        }
        for id in journal.wake_ids {
            self.wake_ids.remove(&id);
        }
        self.events.truncate(journal.events);
        self.wakes.truncate(journal.wakes);
    }

    /// Run one operation; on failure nothing it did remains in the overlay.
    fn run(&mut self, op: &Op) -> Result<Answer> {
        self.begin();
        let out = ops::run(self, op);
        if out.is_err() {
            self.undo();
        }
        out
    }
}

impl WriteTx for Uow {
    fn now(&self) -> u64 {
        self.now
    }

    fn row(&mut self, id: &str) -> Result<Option<&Entry>> {
        Ok(self.slots.get(id).and_then(|s| s.entry.as_ref()))
    }

    fn tombstone(&mut self, id: &str) -> Result<Option<Tombstone>> {
        Ok(self.tombstones.get(id).cloned())
    }

    fn replayed(&mut self, id: &str, replay_key: &str) -> Result<Option<ProcessEvent>> {
        Ok(self.replays.get(&(id.to_string(), replay_key.to_string())).cloned())
    }

    fn env_stored(&mut self, env_ref: &str) -> Result<bool> {
        Ok(self.envs.contains(env_ref))
    }

    /// Candidates locked by the load, skipping those an earlier operation of
    /// the batch took or changed.
    fn run_candidates(&mut self, limit: usize) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        while ids.len() < limit {
            let Some(id) = self.candidates.pop_front() else { break };
            let Some(entry) = self.slots.get(&id).and_then(|s| s.entry.as_ref()) else {
                continue;
            };
            let free = entry.lease.as_ref().is_none_or(|l| l.expires_at_ms <= self.now);
            if free && fold::is_run_candidate(&entry.record) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn insert_row(&mut self, record: ProcessRecord) -> Result<()> {
        self.journal_slot(&record.id, true);
        self.put(
            Entry {
                record,
                lease: None,
                fencing: 0,
            },
            true,
        );
        Ok(())
    }

    fn update_record(&mut self, record: ProcessRecord, release_lease: bool) -> Result<()> {
        let id = record.id.clone();
        // The entry being replaced moves into the journal (no copy of its
        // record) unless an earlier change of this operation journalled it.
        self.journal_slot(&id, true);
        let (lease, fencing) = match self.slots.get_mut(&id).and_then(|s| s.entry.take()) {
            Some(current) => (current.lease, current.fencing),
            None => {
                let before = self
                    .journal
                    .slots
                    .get(&id)
                    .and_then(Option::as_ref)
                    .and_then(|s| s.entry.as_ref())
                    .ok_or_else(|| CairnError::UnknownProcess(id.clone()))?;
                (before.lease.clone(), before.fencing)
            }
        };
        let lease = if release_lease { None } else { lease };
        self.put(Entry { record, lease, fencing }, true);
        Ok(())
    }

    fn set_lease(&mut self, id: &str, lease: Option<Lease>, fencing: u64) -> Result<()> {
        self.loaded(id)?;
        self.journal_slot(id, false);
        let mut entry = self
            .slots
            .get_mut(id)
            .and_then(|s| s.entry.take())
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))?;
        entry.lease = lease;
        entry.fencing = fencing;
        self.put(entry, false);
        Ok(())
    }

    fn push_event(&mut self, event: &ProcessEvent) -> Result<()> {
        if let Some(key) = &event.replay_key {
            let k = (event.process_id.clone(), key.clone());
            self.replays.insert(k.clone(), event.clone());
            self.journal.replays.push(k);
        }
        self.events.push(event.clone());
        Ok(())
    }

    fn insert_wake(&mut self, wake: &WakeDelivery) -> Result<bool> {
        if !self.wake_ids.insert(wake.wake_id.clone()) {
            return Ok(false);
        }
        self.journal.wake_ids.push(wake.wake_id.clone());
        self.wakes.push(wake.clone());
        Ok(true)
    }

    fn upsert_grant(&mut self, grant: &Grant) -> Result<()> {
        let key = (grant.scope.scope_id(), grant.process_id.clone());
        let before = self.grants.insert(key.clone(), grant.clone());
        self.journal.grants.push((key, before));
        Ok(())
    }
}

/// Put `key` back as the journal saw it: its earlier value, or absent.
fn restore<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, before: Option<V>) {
    match before {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}

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

/// The notifications of a batch: `w` first when claimable work may exist, then
/// `id\tsequence` lines, split into payloads under PostgreSQL's size limit.
pub(crate) fn notify_payloads(work: bool, touched: &HashMap<String, u64>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    if work {
        current.push('w');
    }
    for (id, seq) in touched {
        let line = format!("{id}\t{seq}");
        if !current.is_empty() && current.len() + 1 + line.len() > NOTIFY_CHUNK {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Where a batch writes beyond its rows: the notification channel, and the
/// type lists known to be stored in the schema (so each is inserted once).
pub(crate) struct Target {
    pub channel: String,
    pub stored_types: parking_lot::Mutex<HashSet<String>>,
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
    let mut ids: Vec<String> = ops.iter().filter_map(|o| o.process_id().map(String::from)).collect();
    ids.sort();
    ids.dedup();
    let (replay_ids, replay_keys): (Vec<String>, Vec<String>) = ops.iter().filter_map(Op::replay_key).unzip();
    let envs: Vec<String> = ops.iter().filter_map(|o| o.env_ref().map(String::from)).collect();
    let want: usize = ops.iter().map(Op::candidates_wanted).sum();
    let now_sql = to_sql(now);
    let want_sql = crate::rows::to_sql_usize(want);

    let result = load_decide_write(
        conn,
        ops,
        now,
        target,
        Loads {
            rows: (&s_rows, &ids),
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

struct Loads<'a> {
    rows: (&'a tokio_postgres::Statement, &'a Vec<String>),
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
            client.query(loads.rows.0, &[ids]).await
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
    for (row, entry) in rows.iter().zip(row_entries) {
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

    // 2. Decide.
    let mut outs: Vec<Result<Answer>> = ops.iter().map(|op| uow.run(op)).collect();

    // 3. Write and commit, pipelined.
    let (inserted_wakes, new_lists) = write_and_commit(conn, &uow, target).await?;
    if !new_lists.is_empty() {
        let mut stored = target.stored_types.lock();
        for list in new_lists {
            remember_types(&list);
            stored.insert(list.key().to_string());
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

/// Write the batch and commit it; answers the ids of the wakes actually
/// inserted and the type lists it stored.
async fn write_and_commit(
    conn: &Conn,
    uow: &Uow,
    target: &Target,
) -> std::result::Result<(HashSet<String>, Vec<EventTypes>), BatchError> {
    let client = &conn.client;
    let (s_insert, s_update, s_events, s_wakes, s_grants, s_notify, s_types) = futures::try_join!(
        conn.stmt(INSERT_PROCESSES),
        conn.stmt(UPDATE_PROCESSES),
        conn.stmt(INSERT_EVENTS),
        conn.stmt(INSERT_WAKES),
        conn.stmt(UPSERT_GRANTS),
        conn.stmt(NOTIFY),
        conn.stmt(INSERT_TYPE_LISTS),
    )?;

    // Processes: new rows and changed rows, with their change-feed ordinals.
    let mut ins = ProcessColumns::default();
    let mut upd = ProcessColumns::default();
    let mut ordinal: i64 = 0;
    let mut new_lists: BTreeMap<String, EventTypes> = BTreeMap::new();
    let mut dirty: Vec<(&String, &Slot)> = uow.slots.iter().filter(|(_, s)| s.dirty).collect();
    dirty.sort_by(|a, b| a.0.cmp(b.0));
    for (id, slot) in dirty {
        let Some(entry) = &slot.entry else { continue };
        let ord = if slot.changed || !slot.stored {
            ordinal += 1;
            ordinal - 1
        } else {
            -1
        };
        let columns = if slot.stored { &mut upd } else { &mut ins };
        columns.push(id, entry, ord)?;
        let list = &entry.record.event_types;
        if !new_lists.contains_key(list.key()) && !target.stored_types.lock().contains(list.key()) {
            new_lists.insert(list.key().to_string(), list.clone());
        }
    }
    // In key order, so two batches storing the same new lists never deadlock.
    let mut tl: [Vec<String>; 2] = Default::default();
    for (key, list) in &new_lists {
        tl[0].push(key.clone());
        tl[1].push(serde_json::to_string(&**list).map_err(Fault::Json)?);
    }

    let mut ev = EventColumns::default();
    for e in &uow.events {
        ev.process_id.push(e.process_id.clone());
        ev.sequence.push(to_sql(e.sequence));
        ev.event_type.push(e.event_type.clone());
        ev.replay_key.push(e.replay_key.clone());
        ev.occurred_at.push(to_sql(e.occurred_at_ms));
        ev.json.push(serde_json::to_string(e).map_err(Fault::Json)?);
    }
    let mut wk: [Vec<String>; 4] = Default::default();
    for w in &uow.wakes {
        wk[0].push(w.wake_id.clone());
        wk[1].push(w.target_session_id.clone());
        wk[2].push(w.process_id.clone());
        wk[3].push(serde_json::to_string(w).map_err(Fault::Json)?);
    }
    let mut gr: [Vec<String>; 4] = Default::default();
    let mut grants: Vec<&Grant> = uow.grants.values().collect();
    grants.sort_by(|a, b| (a.scope.scope_id(), &a.process_id).cmp(&(b.scope.scope_id(), &b.process_id)));
    for g in grants {
        gr[0].push(g.scope.scope_id());
        gr[1].push(g.scope.session_id.clone());
        gr[2].push(g.process_id.clone());
        gr[3].push(serde_json::to_string(g).map_err(Fault::Json)?);
    }
    let payloads = notify_payloads(uow.work, &uow.touched);
    let channel = target.channel.clone();

    // Parameters must outlive the futures: collect them before the futures.
    let ins_params: Params<'_> = ins.params_insert();
    let upd_params: Params<'_> = upd.params_update();
    let ev_params: Params<'_> = vec![
        &ev.process_id,
        &ev.sequence,
        &ev.event_type,
        &ev.replay_key,
        &ev.occurred_at,
        &ev.json,
    ];
    let wk_params: Params<'_> = vec![&wk[0], &wk[1], &wk[2], &wk[3]];
    let gr_params: Params<'_> = vec![&gr[0], &gr[1], &gr[2], &gr[3]];
    let tl_params: Params<'_> = vec![&tl[0], &tl[1]];
    let notify_params: Vec<[&(dyn ToSql + Sync); 2]> = payloads.iter().map(|p| [&channel as _, p as _]).collect();
    let mut statements: Vec<futures::future::BoxFuture<'_, std::result::Result<Vec<tokio_postgres::Row>, _>>> =
        Vec::new();
    if !tl[0].is_empty() {
        statements.push(Box::pin(client.query(&s_types, p_slice(&tl_params))));
    }
    if !ins.id.is_empty() {
        statements.push(Box::pin(client.query(&s_insert, p_slice(&ins_params))));
    }
    if !upd.id.is_empty() {
        statements.push(Box::pin(client.query(&s_update, p_slice(&upd_params))));
    }
    if !ev.process_id.is_empty() {
        statements.push(Box::pin(client.query(&s_events, p_slice(&ev_params))));
    }
    if !gr[0].is_empty() {
        statements.push(Box::pin(client.query(&s_grants, p_slice(&gr_params))));
    }
    for p in &notify_params {
        statements.push(Box::pin(client.query(&s_notify, p)));
    }
    // The wake insert goes last so its rows are the last answer.
    let has_wakes = !wk[0].is_empty();
    if has_wakes {
        statements.push(Box::pin(client.query(&s_wakes, p_slice(&wk_params))));
    }
    // Send every write, then COMMIT behind them in the same pipeline: one
    // round trip. A write the client could not even send fails on the first
    // poll, before COMMIT is sent; a write the server refused aborts the
    // transaction, and PostgreSQL answers the COMMIT that follows with a
    // rollback. So the batch committed exactly when every write succeeded and
    // COMMIT did; when the connection broke with COMMIT sent and no write
    // refused, nobody knows.
    let mut writes = std::pin::pin!(try_join_all(statements));
    let sent = match futures::poll!(writes.as_mut()) {
        std::task::Poll::Ready(Err(e)) => return Err(e.into()),
        std::task::Poll::Ready(Ok(answers)) => Some(answers),
        std::task::Poll::Pending => None,
    };
    let commit = client.batch_execute("COMMIT");
    let (answers, committed) = match sent {
        Some(answers) => (Ok(answers), commit.await),
        None => futures::join!(writes, commit),
    };
    let answers = match (answers, committed) {
        (Err(e), _) if e.as_db_error().is_some() => return Err(e.into()),
        (_, Err(e)) if e.is_closed() || e.as_db_error().is_none() => return Err(BatchError::Ambiguous(e)),
        (Err(e), _) => return Err(BatchError::Ambiguous(e)),
        (Ok(_), Err(e)) => return Err(e.into()),
        (Ok(answers), Ok(())) => answers,
    };
    let mut inserted = HashSet::new();
    if has_wakes {
        if let Some(rows) = answers.last() {
            for row in rows {
                inserted.insert(row.try_get::<_, String>(0).map_err(Fault::Pg)?);
            }
        }
    }
    Ok((inserted, new_lists.into_values().collect()))
}

fn p_slice<'a>(p: &'a Params<'a>) -> &'a [&'a (dyn ToSql + Sync)] {
    p.as_slice()
}

#[derive(Default)]
struct EventColumns {
    process_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    replay_key: Vec<Option<String>>,
    occurred_at: Vec<i64>,
    json: Vec<String>,
}

/// Column arrays of process rows for the `unnest` insert and update.
#[derive(Default)]
struct ProcessColumns {
    id: Vec<String>,
    record: Vec<String>,
    status: Vec<&'static str>,
    disposition: Vec<&'static str>,
    definition: Vec<String>,
    originator: Vec<String>,
    originator_scope: Vec<Option<String>>,
    waiting: Vec<bool>,
    created_at: Vec<i64>,
    terminal_at: Vec<Option<i64>>,
    last_sequence: Vec<i64>,
    ord: Vec<i64>,
    run_candidate: Vec<bool>,
    abandon_candidate: Vec<bool>,
    fencing: Vec<i64>,
    lease_owner: Vec<Option<String>>,
    lease_token: Vec<Option<String>>,
    lease_fencing: Vec<Option<i64>>,
    lease_claimed: Vec<Option<i64>>,
    lease_expires: Vec<Option<i64>>,
    types_key: Vec<String>,
}

impl ProcessColumns {
    fn push(&mut self, id: &str, entry: &Entry, ord: i64) -> std::result::Result<(), Fault> {
        let d = derive(&entry.record)?;
        self.id.push(id.to_string());
        self.record.push(d.json);
        self.status.push(d.status);
        self.disposition.push(d.disposition);
        self.definition.push(d.definition);
        self.originator.push(d.originator);
        self.originator_scope.push(d.originator_scope);
        self.waiting.push(d.waiting);
        self.created_at.push(d.created_at);
        self.terminal_at.push(d.terminal_at);
        self.last_sequence.push(d.last_sequence);
        self.ord.push(ord);
        self.run_candidate.push(d.run_candidate);
        self.abandon_candidate.push(d.abandon_candidate);
        self.fencing.push(to_sql(entry.fencing));
        let l = entry.lease.as_ref();
        self.lease_owner.push(l.map(|l| l.owner_id.clone()));
        self.lease_token.push(l.map(|l| l.lease_token.clone()));
        self.lease_fencing.push(l.map(|l| to_sql(l.fencing_token)));
        self.lease_claimed.push(l.map(|l| to_sql(l.claimed_at_ms)));
        self.lease_expires.push(l.map(|l| to_sql(l.expires_at_ms)));
        self.types_key.push(d.types_key);
        Ok(())
    }

    fn params_insert(&self) -> Params<'_> {
        vec![
            &self.id,
            &self.record,
            &self.status,
            &self.disposition,
            &self.definition,
            &self.originator,
            &self.originator_scope,
            &self.waiting,
            &self.created_at,
            &self.terminal_at,
            &self.last_sequence,
            &self.ord,
            &self.run_candidate,
            &self.abandon_candidate,
            &self.fencing,
            &self.lease_owner,
            &self.lease_token,
            &self.lease_fencing,
            &self.lease_claimed,
            &self.lease_expires,
            &self.types_key,
        ]
    }

    fn params_update(&self) -> Params<'_> {
        vec![
            &self.id,
            &self.record,
            &self.status,
            &self.waiting,
            &self.terminal_at,
            &self.last_sequence,
            &self.ord,
            &self.run_candidate,
            &self.abandon_candidate,
            &self.fencing,
            &self.lease_owner,
            &self.lease_token,
            &self.lease_fencing,
            &self.lease_claimed,
            &self.lease_expires,
            &self.types_key,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_payloads_stay_under_the_server_limit_and_flag_work_first() {
        let touched: HashMap<String, u64> = (0..2000).map(|i| (format!("process-{i:05}"), i)).collect();
        let payloads = notify_payloads(true, &touched);
        assert!(payloads.len() > 1);
        assert!(payloads[0].starts_with('w'));
        assert!(payloads.iter().all(|p| p.len() <= NOTIFY_CHUNK));
        let lines: usize = payloads
            .iter()
            .map(|p| p.lines().filter(|l| l.contains('\t')).count())
            .sum();
        assert_eq!(lines, 2000);
        assert!(notify_payloads(false, &HashMap::new()).is_empty());
        assert_eq!(notify_payloads(true, &HashMap::new()), vec!["w".to_string()]);
    }
}
