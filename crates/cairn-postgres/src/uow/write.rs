//! The write half of a batch: every change as multi-row `unnest` statements
//! and `pg_notify`, with `COMMIT` pipelined behind them.

use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_core::events::EventTypes;
use cairn_core::model::Grant;
use futures::future::try_join_all;
use tokio_postgres::types::ToSql;

use crate::conn::Conn;
use crate::rows::to_sql;
use crate::Fault;

use super::columns::{EventColumns, ProcessColumns};
use super::overlay::{Slot, Uow};
use super::SentAt;
use super::{BatchError, Target};

const INSERT_PROCESSES: &str = "INSERT INTO processes (id, record, status, disposition, definition, originator, \
    originator_scope, waiting, created_at_ms, terminal_at_ms, last_sequence, change_cursor, run_candidate, \
    abandon_candidate, fencing_counter, lease_owner, lease_token, lease_fencing, lease_claimed_at_ms, \
    lease_expires_at_ms, types_key, wake_at_ms, caused_by, sweep_node, sweep_incarnation) \
    SELECT u.id, u.record, u.status, u.disposition, u.definition, u.originator, u.originator_scope, u.waiting, \
    u.created_at_ms, u.terminal_at_ms, u.last_sequence, (pg_current_xact_id()::text::int8 << 20) | u.ord, \
    u.run_candidate, u.abandon_candidate, u.fencing_counter, u.lease_owner, u.lease_token, u.lease_fencing, \
    u.lease_claimed_at_ms, u.lease_expires_at_ms, u.types_key, u.wake_at_ms, u.caused_by, \
    u.sweep_node, u.sweep_incarnation \
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[], \
    $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::bool[], $14::bool[], $15::int8[], $16::text[], \
    $17::text[], $18::int8[], $19::int8[], $20::int8[], $21::text[], $22::int8[], $23::text[], $24::text[], $25::int8[]) \
    AS u(id, record, status, disposition, definition, originator, originator_scope, waiting, created_at_ms, \
    terminal_at_ms, last_sequence, ord, run_candidate, abandon_candidate, fencing_counter, lease_owner, \
    lease_token, lease_fencing, lease_claimed_at_ms, lease_expires_at_ms, types_key, wake_at_ms, caused_by, \
    sweep_node, sweep_incarnation)";

const UPDATE_PROCESSES: &str = "UPDATE processes p SET record = u.record, status = u.status, waiting = u.waiting, \
    terminal_at_ms = u.terminal_at_ms, last_sequence = u.last_sequence, \
    change_cursor = CASE WHEN u.ord >= 0 THEN (pg_current_xact_id()::text::int8 << 20) | u.ord \
    ELSE p.change_cursor END, \
    run_candidate = u.run_candidate, abandon_candidate = u.abandon_candidate, \
    fencing_counter = u.fencing_counter, lease_owner = u.lease_owner, lease_token = u.lease_token, \
    lease_fencing = u.lease_fencing, lease_claimed_at_ms = u.lease_claimed_at_ms, \
    lease_expires_at_ms = u.lease_expires_at_ms, types_key = u.types_key, wake_at_ms = u.wake_at_ms, \
    sweep_node = u.sweep_node, sweep_incarnation = u.sweep_incarnation \
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::int8[], $6::int8[], $7::int8[], $8::bool[], \
    $9::bool[], $10::int8[], $11::text[], $12::text[], $13::int8[], $14::int8[], $15::int8[], $16::text[], \
    $17::int8[], $18::text[], $19::int8[]) \
    AS u(id, record, status, waiting, terminal_at_ms, last_sequence, ord, run_candidate, abandon_candidate, \
    fencing_counter, lease_owner, lease_token, lease_fencing, lease_claimed_at_ms, lease_expires_at_ms, types_key, \
    wake_at_ms, sweep_node, sweep_incarnation) \
    WHERE p.id = u.id";

/// Type lists this node does not trust to be stored (new to it, or stored
/// more than [`super::TYPE_LIST_TRUST`] ago), content-addressed: a list
/// another batch stored first keeps its content (same key, same content) and
/// counts as stored now, by the server's clock, which a prune's collection
/// reads (ADR 0034). The time is taken as the statement runs, after the
/// batch's [`SentAt`] was, so the trust never outlasts the touch it rests on.
const INSERT_TYPE_LISTS: &str = "INSERT INTO type_lists (key, types, touched_at_ms) \
    SELECT u.key, u.types, (extract(epoch FROM clock_timestamp()) * 1000)::int8 \
    FROM unnest($1::text[], $2::text[]) AS u(key, types) \
    ON CONFLICT (key) DO UPDATE SET touched_at_ms = excluded.touched_at_ms";

const INSERT_EVENTS: &str = "INSERT INTO events (process_id, sequence, event_type, replay_key, occurred_at_ms, event) \
    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[])";

const INSERT_WAKES: &str = "INSERT INTO wakes (wake_id, target_session_id, process_id, delivery) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
    ON CONFLICT (wake_id) DO NOTHING RETURNING wake_id";

pub(crate) const UPSERT_GRANTS: &str = "INSERT INTO grants (scope_id, session_id, process_id, grant_json) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
    ON CONFLICT (scope_id, process_id) DO UPDATE SET session_id = excluded.session_id, \
    grant_json = excluded.grant_json";

/// Send a payload on a channel (see `listen::deliver` for the lines a payload holds).
pub(crate) const NOTIFY: &str = "SELECT pg_notify($1::text, $2::text)";

/// Most bytes of one notification payload (PostgreSQL's limit is 8000).
const NOTIFY_CHUNK: usize = 7000;

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

pub(super) type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Write the batch and commit it; answers the ids of the wakes actually
/// inserted, the type lists it stored and when it began sending its writes
/// (the lists' trust runs from then, on both clocks: [`Target::trusts_type_list`]).
pub(super) async fn write_and_commit(
    conn: &Conn,
    uow: &Uow,
    target: &Target,
) -> std::result::Result<(HashSet<String>, Vec<EventTypes>, SentAt), BatchError> {
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
    let trust_now = SentAt::now(target.clock.as_ref());
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
        if !new_lists.contains_key(list.key()) && !target.trusts_type_list(list.key(), trust_now) {
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
    // Taken before the first write goes out (a statement is sent when first
    // polled): the server's touch of each list stored comes after it.
    let sent_at = SentAt::now(target.clock.as_ref());
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
        // A write the server refused: the transaction aborted, and COMMIT
        // rolled it back (unless the refusal says the connection was lost,
        // with COMMIT sent behind it).
        (Err(e), _) if !crate::conn::connection_lost(&e) => return Err(e.into()),
        (_, Err(e)) if crate::conn::connection_lost(&e) => return Err(BatchError::Ambiguous(e)),
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
    Ok((inserted, new_lists.into_values().collect(), sent_at))
}

fn p_slice<'a>(p: &'a Params<'a>) -> &'a [&'a (dyn ToSql + Sync)] {
    p.as_slice()
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
