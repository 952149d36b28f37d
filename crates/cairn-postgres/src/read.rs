//! Reads and the few writes that are single statements or rare transactions
//! (grants moved, sessions deleted, pruning). Reads are single statements on
//! the shared autocommit connections, so each sees one snapshot.

use std::time::Duration;

use cairn_core::events::ProcessEvent;
use cairn_core::model::{
    GrantedProcess, ListOrder, NewestWalk, NodeLiveness, ProcessFilter, ProcessRecord, SessionScope, StatusFilter,
    SweepItem, Tombstone, WakeDelivery,
};
use cairn_core::CairnError;
use tokio_postgres::types::ToSql;

use crate::conn::Conn;
use crate::rows::{entries_from_rows, from_sql, status_label, to_sql, to_sql_usize, tombstone_from_row, ENTRY_COLUMNS};
use crate::Fault;

pub(crate) type R<T> = std::result::Result<T, Fault>;

type Param = Box<dyn ToSql + Sync + Send>;

pub(crate) fn params(args: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// The error for an id with no row: `no_longer_retained` when it was pruned.
pub(crate) async fn missing(conn: &Conn, id: &str) -> R<CairnError> {
    let stmt = conn
        .stmt("SELECT id, status, terminal_at_ms, pruned_at_ms FROM tombstones WHERE id = $1::text")
        .await?;
    Ok(match conn.client.query_opt(&stmt, &[&id]).await? {
        Some(row) => CairnError::NoLongerRetained(Box::new(tombstone_from_row(&row)?)),
        None => CairnError::UnknownProcess(id.to_string()),
    })
}

/// The current record of `id`.
pub(crate) async fn get(conn: &Conn, id: &str) -> R<ProcessRecord> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM processes p WHERE p.id = $1::text");
    let stmt = conn.stmt(&sql).await?;
    match conn.client.query_opt(&stmt, &[&id]).await? {
        Some(row) => {
            let mut entries = entries_from_rows(conn, std::slice::from_ref(&row), 0).await?;
            Ok(entries.swap_remove(0).record)
        }
        None => Err(missing(conn, id).await?.into()),
    }
}

/// Append the SQL predicates of `filter` over the `p` alias.
fn filter_sql(filter: &ProcessFilter, cursor: Option<i64>, sql: &mut String, args: &mut Vec<Param>) {
    predicates(filter, cursor, false, sql, args);
}

/// [`filter_sql`]; with `walk`, a bound status is a test of each row the
/// walk of the creation-time index reads, which no index serves
/// ([`newest_by_walk`]).
fn predicates(filter: &ProcessFilter, cursor: Option<i64>, walk: bool, sql: &mut String, args: &mut Vec<Param>) {
    let mut push = |sql: &mut String, clause: &str, arg: Param| {
        args.push(arg);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let (Some(status), true) = (status_label(filter.status), walk) {
        // An expression: a generic plan has no index of it to prefer to the walk.
        push(sql, " AND (p.status || '') = ?::text", Box::new(status));
    } else if let Some(status) = status_label(filter.status) {
        push(sql, " AND p.status = ?::text", Box::new(status));
        if filter.status != StatusFilter::Completed {
            // The status index leaves out completed rows (ADR 0026); a plan
            // for any bound status may use it only if the query says so.
            sql.push_str(" AND p.status <> 'completed'");
        }
    }
    if let Some(d) = &filter.definition {
        push(sql, " AND p.definition = ?::text", Box::new(d.clone()));
    }
    if let Some(w) = filter.waiting {
        push(sql, " AND p.waiting = ?::bool", Box::new(w));
        if w {
            // The term of the partial waiting index (ADR 0037), as for the status index.
            sql.push_str(" AND p.waiting");
        }
    }
    if let Some(o) = &filter.originator {
        push(sql, " AND p.originator = ?::text", Box::new(o.clone()));
        if o.starts_with("session:") {
            // The originator index holds only the processes sessions started (ADR 0026).
            sql.push_str(" AND p.originator_scope IS NOT NULL");
        }
    }
    if let Some(c) = &filter.caused_by {
        push(sql, " AND p.caused_by = ?::text", Box::new(c.clone()));
    }
    if filter.created_from_ms.is_some() || filter.created_before_ms.is_some() {
        // Both bounds, the missing one open: a generic plan guesses a third
        // of the table matches one bound and walks the id order, reading
        // every row to find the few of a recent window; it takes a range to
        // the creation-time index (ADR 0037), which reads only the window.
        push(
            sql,
            " AND p.created_at_ms >= ?::int8",
            Box::new(filter.created_from_ms.map_or(i64::MIN, to_sql)),
        );
        push(
            sql,
            " AND p.created_at_ms < ?::int8",
            Box::new(filter.created_before_ms.map_or(i64::MAX, to_sql)),
        );
    }
    match (&filter.after_id, filter.newest_cursor()) {
        (Some(a), None) if filter.order == ListOrder::Id => push(sql, " AND p.id > ?::text", Box::new(a.clone())),
        (_, Some(a)) => {
            // Spelled out rather than as a row value: the creation-time
            // index holds the time alone (ADR 0037), and takes the first
            // term as its range.
            let at = cursor.unwrap_or(i64::MIN);
            push(sql, " AND p.created_at_ms <= ?::int8", Box::new(at));
            push(sql, " AND (p.created_at_ms < ?::int8", Box::new(at));
            push(sql, " OR p.id < ?::text)", Box::new(a.to_string()));
        }
        _ => {}
    }
}

/// The `ORDER BY … LIMIT` of a listing in `filter`'s order, whose process
/// id column is `id`.
fn limit_sql(sql: &mut String, args: &mut Vec<Param>, filter: &ProcessFilter, id: &str, limit: usize) {
    args.push(Box::new(to_sql_usize(limit)));
    let order = match filter.order {
        ListOrder::Id => id.to_string(),
        ListOrder::Newest => format!("p.created_at_ms DESC, {id} DESC"),
    };
    sql.push_str(&format!(" ORDER BY {order} LIMIT ${}::int8", args.len()));
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
async fn cursor(conn: &Conn, filter: &ProcessFilter, lens: Lens<'_>) -> R<Option<i64>> {
    let Some(a) = filter.newest_cursor() else {
        return Ok(None);
    };
    let found = match lens {
        Lens::All => {
            let stmt = conn
                .stmt("SELECT created_at_ms FROM processes WHERE id = $1::text")
                .await?;
            conn.client.query_opt(&stmt, &[&a]).await?
        }
        Lens::GrantedTo(scope) => {
            let stmt = conn
                .stmt(
                    "SELECT p.created_at_ms FROM grants g JOIN processes p ON p.id = g.process_id \
                     WHERE g.scope_id = $2::text AND g.process_id = $1::text",
                )
                .await?;
            conn.client.query_opt(&stmt, &[&a, &scope.scope_id()]).await?
        }
        Lens::OriginatedBy(scope) => {
            let stmt = conn
                .stmt(
                    "SELECT created_at_ms FROM processes \
                     WHERE id = $1::text AND originator = $2::text AND originator_scope = $3::text",
                )
                .await?;
            let originator_scope = serde_json::to_string(scope)?;
            conn.client
                .query_opt(&stmt, &[&a, &scope.scope_id(), &originator_scope])
                .await?
        }
    };
    match found {
        Some(row) => Ok(Some(row.try_get(0)?)),
        None => Err(filter.cursor_gone().into()),
    }
}

/// The query of `list`: with a status it walks the (status, id) index in id order.
pub(crate) fn list_query(filter: &ProcessFilter, cursor: Option<i64>, limit: usize) -> (String, Vec<Param>) {
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM processes p WHERE true");
    let mut args = Vec::new();
    filter_sql(filter, cursor, &mut sql, &mut args);
    limit_sql(&mut sql, &mut args, filter, "p.id", limit);
    (sql, args)
}

async fn records(conn: &Conn, sql: &str, args: &[Param], at: usize) -> R<Vec<(tokio_postgres::Row, ProcessRecord)>> {
    let stmt = conn.stmt(sql).await?;
    let rows = conn.client.query(&stmt, &params(args)).await?;
    let entries = entries_from_rows(conn, &rows, at).await?;
    Ok(rows.into_iter().zip(entries.into_iter().map(|e| e.record)).collect())
}

/// The creation time `$2` rows down the creation-time index from `$1`:
/// where a walk of that many stops.
const WALK_FLOOR_SQL: &str = "SELECT created_at_ms FROM processes WHERE created_at_ms <= $1::int8 \
     ORDER BY created_at_ms DESC LIMIT 1 OFFSET $2::int8";

/// The query of a newest-first walk by status ([`newest_by_walk`]).
pub(crate) fn walk_query(filter: &ProcessFilter, cursor: Option<i64>, limit: usize) -> (String, Vec<Param>) {
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM processes p WHERE true");
    let mut args = Vec::new();
    predicates(filter, cursor, true, &mut sql, &mut args);
    limit_sql(&mut sql, &mut args, filter, "p.id", limit);
    (sql, args)
}

/// The page of the walk core plans for a newest-first listing by status
/// ([`ProcessFilter::newest_walk`], [`NewestWalk`], which say why): `None`
/// when the walk does not hold it, and the status's rows are to be read and
/// sorted ([`list_query`]), as a generic plan would always do.
async fn newest_by_walk(
    conn: &Conn,
    filter: &ProcessFilter,
    cursor: Option<i64>,
    limit: usize,
) -> R<Option<Vec<ProcessRecord>>> {
    let Some(walk) = filter.newest_walk(cursor.map(from_sql), limit) else {
        return Ok(None);
    };
    let stmt = conn.stmt(WALK_FLOOR_SQL).await?;
    let floor = match conn
        .client
        .query_opt(&stmt, &[&to_sql(walk.top_ms), &to_sql_usize(walk.budget)])
        .await?
    {
        Some(row) => Some(from_sql(row.try_get(0)?)),
        None => None,
    };
    let (sql, args) = walk_query(&walk.filter(filter, floor), cursor, limit);
    let found: Vec<ProcessRecord> = records(conn, &sql, &args, 0)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    Ok(NewestWalk::holds_page(found.len(), limit, floor).then_some(found))
}

pub(crate) async fn list(conn: &Conn, filter: &ProcessFilter, limit: usize) -> R<Vec<ProcessRecord>> {
    let cursor = cursor(conn, filter, Lens::All).await?;
    if let Some(found) = newest_by_walk(conn, filter, cursor, limit).await? {
        return Ok(found);
    }
    let (sql, args) = list_query(filter, cursor, limit);
    Ok(records(conn, &sql, &args, 0)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

pub(crate) async fn list_originated_by(
    conn: &Conn,
    scope: &SessionScope,
    filter: &ProcessFilter,
    limit: usize,
) -> R<Vec<ProcessRecord>> {
    let mut sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM processes p WHERE p.originator = $1::text AND p.originator_scope = $2::text"
    );
    let mut args: Vec<Param> = vec![Box::new(scope.scope_id()), Box::new(serde_json::to_string(scope)?)];
    filter_sql(
        filter,
        cursor(conn, filter, Lens::OriginatedBy(scope)).await?,
        &mut sql,
        &mut args,
    );
    limit_sql(&mut sql, &mut args, filter, "p.id", limit);
    Ok(records(conn, &sql, &args, 0)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The grants held on (existing) process `id`, in scope id order.
pub(crate) async fn grants_of(conn: &Conn, id: &str) -> R<Vec<cairn_core::model::Grant>> {
    let stmt = conn
        .stmt(
            "SELECT g.grant_json FROM grants g JOIN processes p ON p.id = g.process_id \
             WHERE g.process_id = $1::text ORDER BY g.scope_id",
        )
        .await?;
    let rows = conn.client.query(&stmt, &[&id]).await?;
    let mut grants = Vec::with_capacity(rows.len());
    for row in &rows {
        grants.push(serde_json::from_str(row.try_get::<_, &str>(0)?)?);
    }
    Ok(grants)
}

/// The tombstone of pruned `id` when `scope` held a grant on it as it was
/// pruned: one statement, so one snapshot.
pub(crate) async fn pruned_grant(conn: &Conn, scope: &SessionScope, id: &str) -> R<Option<Tombstone>> {
    let stmt = conn
        .stmt(
            "SELECT t.id, t.status, t.terminal_at_ms, t.pruned_at_ms FROM tombstones t \
             JOIN tombstone_grants g ON g.process_id = t.id WHERE t.id = $1::text AND g.scope_id = $2::text",
        )
        .await?;
    match conn.client.query_opt(&stmt, &[&id, &scope.scope_id()]).await? {
        Some(row) => Ok(Some(tombstone_from_row(&row)?)),
        None => Ok(None),
    }
}

pub(crate) async fn list_granted_to(
    conn: &Conn,
    scope: &SessionScope,
    filter: &ProcessFilter,
    limit: usize,
) -> R<Vec<GrantedProcess>> {
    let mut sql = format!(
        "SELECT g.grant_json, {ENTRY_COLUMNS} FROM grants g JOIN processes p ON p.id = g.process_id \
         WHERE g.scope_id = $1::text"
    );
    let mut args: Vec<Param> = vec![Box::new(scope.scope_id())];
    filter_sql(
        filter,
        cursor(conn, filter, Lens::GrantedTo(scope)).await?,
        &mut sql,
        &mut args,
    );
    limit_sql(&mut sql, &mut args, filter, "g.process_id", limit);
    records(conn, &sql, &args, 1)
        .await?
        .into_iter()
        .map(|(row, process)| {
            let json: &str = row.try_get(0)?;
            Ok(GrantedProcess {
                grant: serde_json::from_str(json)?,
                process,
            })
        })
        .collect()
}

/// Events after `after`, at most `limit`, and the process's last sequence, in
/// one statement (one snapshot).
pub(crate) async fn events_after(conn: &Conn, id: &str, after: u64, limit: usize) -> R<(Vec<ProcessEvent>, u64)> {
    let stmt = conn
        .stmt(
            "SELECT p.last_sequence, e.event FROM processes p LEFT JOIN LATERAL \
             (SELECT event, sequence FROM events WHERE process_id = p.id AND sequence > $2::int8 \
              ORDER BY sequence LIMIT $3::int8) e ON true \
             WHERE p.id = $1::text ORDER BY e.sequence",
        )
        .await?;
    let rows = conn
        .client
        .query(&stmt, &[&id, &to_sql(after), &to_sql_usize(limit)])
        .await?;
    let Some(first) = rows.first() else {
        return Err(missing(conn, id).await?.into());
    };
    let last = from_sql(first.try_get(0)?);
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(json) = row.try_get::<_, Option<&str>>(1)? {
            events.push(serde_json::from_str(json)?);
        }
    }
    Ok((events, last))
}

/// A page of pending wakes, oldest first (`$1` session, `$2` limit, and the
/// terms `$and` adds), none after the one that brings the page to `$3` bytes
/// as stored.
macro_rules! wakes_page_sql {
    ($and:literal) => {
        concat!(
            "SELECT delivery FROM (SELECT delivery, wake_order, COALESCE(sum(octet_length(delivery)) \
             OVER (ORDER BY wake_order ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
             FROM wakes WHERE target_session_id = $1::text AND NOT acked ",
            $and,
            " ORDER BY wake_order LIMIT $2::int8) w WHERE before < $3::int8 ORDER BY wake_order"
        )
    };
}

/// A session's pending wakes (through `wakes_pending`).
const SESSION_WAKES_SQL: &str = wakes_page_sql!("");

/// A frame's pending wakes (`$4`): the frame compared exactly as
/// `wakes_frame_pending` holds it (`\u0000` made `\u0020` first, which
/// `jsonb` would refuse), so the read walks that index.
pub(crate) const FRAME_WAKES_SQL: &str = wakes_page_sql!(
    "AND (replace(delivery, E'\\\\u0000', E'\\\\u0020')::jsonb #>> '{target_scope,agent_frame_id}') = $4::text"
);

/// Pending wakes of a session, oldest first: at most `limit`, and none after
/// those that bring the page to [`cairn_core::LIST_PAGE_BYTES`] as stored
/// (the sizes are summed by the server, so what is left out is never sent).
/// Given a frame, its wakes alone, read through their own index past other
/// frames'.
pub(crate) async fn pending_wakes(
    conn: &Conn,
    session_id: &str,
    frame_id: Option<&str>,
    limit: usize,
) -> R<Vec<WakeDelivery>> {
    let (limit, bytes) = (to_sql_usize(limit), to_sql_usize(cairn_core::LIST_PAGE_BYTES));
    let rows = match frame_id {
        None => {
            let stmt = conn.stmt(SESSION_WAKES_SQL).await?;
            conn.client.query(&stmt, &[&session_id, &limit, &bytes]).await?
        }
        Some(frame_id) => {
            let stmt = conn.stmt(FRAME_WAKES_SQL).await?;
            conn.client
                .query(&stmt, &[&session_id, &limit, &bytes, &frame_id])
                .await?
        }
    };
    rows.iter()
        .map(|r| Ok(serde_json::from_str(r.try_get::<_, &str>(0)?)?))
        .collect()
}

/// Acknowledge a wake in one statement; `true` when this call did.
pub(crate) async fn ack_wake(conn: &Conn, session_id: &str, wake_id: &str) -> R<bool> {
    let stmt = conn
        .stmt(
            "WITH old AS (SELECT wake_id, acked FROM wakes WHERE wake_id = $1::text AND target_session_id = $2::text \
             FOR UPDATE), upd AS (UPDATE wakes w SET acked = true FROM old WHERE w.wake_id = old.wake_id) \
             SELECT acked FROM old",
        )
        .await?;
    match conn.client.query_opt(&stmt, &[&wake_id, &session_id]).await? {
        Some(row) => Ok(!row.try_get::<_, bool>(0)?),
        None => Err(CairnError::UnknownWake(wake_id.to_string()).into()),
    }
}

/// Worklist rows at `now`: (id, is an abandon candidate), in the order they
/// became claimable (ADR 0030), merged from the ready, claimable and abandon
/// indexes (a row is in one of them at most).
pub(crate) const WORKLIST_SQL: &str = "SELECT id, abandon FROM (\
    (SELECT id, false AS abandon, created_at_ms AS k FROM processes \
     WHERE run_candidate AND claimable_at_ms = 0 ORDER BY created_at_ms, id LIMIT $2::int8) \
    UNION ALL \
    (SELECT id, false AS abandon, claimable_at_ms AS k FROM processes \
     WHERE run_candidate AND claimable_at_ms > 0 AND claimable_at_ms <= $1::int8 \
     ORDER BY claimable_at_ms, id LIMIT $2::int8) \
    UNION ALL \
    (SELECT id, true AS abandon, CASE claimable_at_ms WHEN 0 THEN created_at_ms ELSE claimable_at_ms END AS k \
     FROM processes WHERE abandon_candidate AND claimable_at_ms <= $1::int8 ORDER BY k, id LIMIT $2::int8)\
    ) w ORDER BY k, id LIMIT $2::int8";

/// The earliest claimable time or schedule fire after $1, from the claimable,
/// abandon and schedule due indexes.
pub(crate) const NEXT_DUE_SQL: &str = "SELECT LEAST(\
    (SELECT min(claimable_at_ms) FROM processes WHERE run_candidate AND claimable_at_ms > 0 AND claimable_at_ms > $1::int8), \
    (SELECT min(claimable_at_ms) FROM processes WHERE abandon_candidate AND claimable_at_ms > $1::int8), \
    (SELECT min(next_fire_ms) FROM schedules WHERE NOT paused AND next_fire_ms > $1::int8))";

pub(crate) async fn next_due(conn: &Conn, after: u64) -> R<Option<u64>> {
    let stmt = conn.stmt(NEXT_DUE_SQL).await?;
    let row = conn.client.query_one(&stmt, &[&to_sql(after)]).await?;
    let due: Option<i64> = row.try_get(0)?;
    Ok(due.map(cairn_core::ops::columns::from_i64))
}

/// Counts of the live state.
pub(crate) async fn gauges(conn: &Conn, now: u64) -> R<cairn_core::Gauges> {
    let stmt = conn
        .stmt(
            "SELECT count(*), count(*) FILTER (WHERE waiting), count(*) FILTER (WHERE lease_owner IS NOT NULL), \
             (SELECT count(*) FROM wakes WHERE NOT acked), \
             count(*) FILTER (WHERE lease_owner IS NOT NULL AND lease_expires_at_ms <= $1::int8) \
             FROM processes WHERE status = 'running'",
        )
        .await?;
    let now = cairn_core::ops::columns::to_i64(now);
    let row = conn.client.query_one(&stmt, &[&now]).await?;
    let n = |i: usize| -> R<u64> { Ok(cairn_core::ops::columns::from_i64(row.try_get::<_, i64>(i)?)) };
    Ok(cairn_core::Gauges {
        running: n(0)?,
        waiting: n(1)?,
        leased: n(2)?,
        lapsed: n(4)?,
        pending_wakes: n(3)?,
    })
}

/// Lapsed abandon requests at `now`, from the abandon index alone.
pub(crate) const ABANDON_WORKLIST_SQL: &str = "SELECT id FROM processes \
    WHERE abandon_candidate AND claimable_at_ms <= $1::int8 ORDER BY claimable_at_ms, id LIMIT $2::int8";

pub(crate) async fn abandon_worklist(conn: &Conn, now: u64, limit: usize) -> R<Vec<String>> {
    let stmt = conn.stmt(ABANDON_WORKLIST_SQL).await?;
    let rows = conn.client.query(&stmt, &[&to_sql(now), &to_sql_usize(limit)]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

pub(crate) async fn worklist(conn: &Conn, now: u64, limit: usize) -> R<Vec<(String, bool)>> {
    let stmt = conn.stmt(WORKLIST_SQL).await?;
    let rows = conn.client.query(&stmt, &[&to_sql(now), &to_sql_usize(limit)]).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Records changed after `cursor`, in cursor order: (cursor, record).
///
/// A cursor is (writing transaction id << 20 | ordinal). Transactions commit in
/// any order, so a row whose transaction id is at or above the oldest
/// transaction still running (the snapshot's xmin) may yet be joined by rows
/// with lower cursors: the page stops below that horizon and the rest is read
/// next time. Each read waits briefly for the horizon to pass rows already
/// committed, so a quiet database answers at once.
pub(crate) async fn changed_since(conn: &Conn, cursor: u64, limit: usize) -> R<Vec<(u64, ProcessRecord)>> {
    let sql = format!(
        "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::int8 << 20) AS horizon, p.change_cursor, \
         {ENTRY_COLUMNS} FROM processes p WHERE p.change_cursor > $1::int8 ORDER BY p.change_cursor LIMIT $2::int8"
    );
    let horizon_only = "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::int8 << 20)";
    let stmt = conn.stmt(&sql).await?;
    let mut waited = Duration::ZERO;
    loop {
        let rows = conn
            .client
            .query(&stmt, &[&to_sql(cursor), &to_sql_usize(limit)])
            .await?;
        let horizon: i64 = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => conn.client.query_one(horizon_only, &[]).await?.try_get(0)?,
        };
        let mut cursors = Vec::with_capacity(rows.len());
        let mut held = false;
        for row in &rows {
            let c: i64 = row.try_get(1)?;
            if c >= horizon {
                held = true;
                break;
            }
            cursors.push(from_sql(c));
        }
        if !held || waited >= Duration::from_millis(500) {
            let entries = entries_from_rows(conn, &rows[..cursors.len()], 2).await?;
            return Ok(cursors.into_iter().zip(entries.into_iter().map(|e| e.record)).collect());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        waited += Duration::from_millis(2);
    }
}

/// The head of the change feed: the highest cursor stored, or just below
/// the horizon of [`changed_since`] when rows at or above it are stored (a
/// transaction still running may yet commit rows below them).
pub(crate) async fn change_head(conn: &Conn) -> R<u64> {
    let stmt = conn
        .stmt(
            "SELECT LEAST(COALESCE((SELECT MAX(change_cursor) FROM processes), 0), \
             (pg_snapshot_xmin(pg_current_snapshot())::text::int8 << 20) - 1)",
        )
        .await?;
    let head: i64 = conn.client.query_one(&stmt, &[]).await?.try_get(0)?;
    Ok(from_sql(head.max(0)))
}

/// A new incarnation of `node` in its liveness row (1 for a new node). A
/// re-run after a lost reply skips an incarnation, which nothing relies on.
pub(crate) async fn register_node(conn: &Conn, node: &str, now: u64) -> R<u64> {
    let stmt = conn
        .stmt(
            "INSERT INTO nodes (node_id, incarnation, started_at_ms, heartbeat_at_ms) \
             VALUES ($1::text, 1, $2::int8, $2::int8) \
             ON CONFLICT (node_id) DO UPDATE SET incarnation = nodes.incarnation + 1, \
             started_at_ms = $2::int8, heartbeat_at_ms = $2::int8 RETURNING incarnation",
        )
        .await?;
    let row = conn.client.query_one(&stmt, &[&node, &to_sql(now)]).await?;
    Ok(from_sql(row.try_get(0)?))
}

/// Set the heartbeat of `node` if `incarnation` is its latest; whether it was.
pub(crate) async fn heartbeat(conn: &Conn, node: &str, incarnation: u64, now: u64) -> R<bool> {
    let stmt = conn
        .stmt("UPDATE nodes SET heartbeat_at_ms = $3::int8 WHERE node_id = $1::text AND incarnation = $2::int8")
        .await?;
    Ok(conn
        .client
        .execute(&stmt, &[&node, &to_sql(incarnation), &to_sql(now)])
        .await?
        == 1)
}

/// The liveness row of `node`.
pub(crate) async fn node(conn: &Conn, node: &str) -> R<Option<NodeLiveness>> {
    let stmt = conn
        .stmt("SELECT incarnation, started_at_ms, heartbeat_at_ms FROM nodes WHERE node_id = $1::text")
        .await?;
    match conn.client.query_opt(&stmt, &[&node]).await? {
        Some(row) => Ok(Some(NodeLiveness {
            node: node.to_string(),
            incarnation: from_sql(row.try_get(0)?),
            started_at_ms: from_sql(row.try_get(1)?),
            heartbeat_at_ms: from_sql(row.try_get(2)?),
        })),
        None => Ok(None),
    }
}

/// Rows an earlier incarnation of a node started, once the node registered a
/// newer one: per node, a range of the partial sweep index.
pub(crate) const SWEEP_WORKLIST_SQL: &str = "SELECT p.id, n.node_id, n.incarnation FROM nodes n \
    JOIN processes p ON p.sweep_node = n.node_id AND p.sweep_incarnation < n.incarnation LIMIT $1::int8";

pub(crate) async fn sweep_worklist(conn: &Conn, limit: usize) -> R<Vec<SweepItem>> {
    let stmt = conn.stmt(SWEEP_WORKLIST_SQL).await?;
    let rows = conn.client.query(&stmt, &[&to_sql_usize(limit)]).await?;
    rows.iter()
        .map(|r| {
            Ok(SweepItem {
                process_id: r.try_get(0)?,
                node: r.try_get(1)?,
                incarnation: from_sql(r.try_get(2)?),
            })
        })
        .collect()
}

/// Leases held by earlier incarnations of a node on running rerunnable
/// processes, to be run again or, under an abandon request, reconciled (the
/// claimable and abandon indexes: a leased row is claimable at its lease's
/// expiry, never at once): the owner is `{node}#` and digits below the given
/// incarnation.
pub(crate) const EARLIER_LEASES_SQL: &str = "SELECT p.id, p.lease_owner, p.lease_token, p.lease_fencing, \
    p.lease_claimed_at_ms, p.lease_expires_at_ms FROM processes p \
    WHERE (p.run_candidate AND p.claimable_at_ms > 0 OR p.abandon_candidate AND p.claimable_at_ms > 0) AND p.disposition = 'rerunnable' AND p.status = 'running' \
      AND left(p.lease_owner, length($1::text) + 1) = $1::text || '#' \
      AND CASE WHEN substr(p.lease_owner, length($1::text) + 2) ~ '^[0-9]{1,18}$' \
               THEN substr(p.lease_owner, length($1::text) + 2)::int8 END < $2::int8 \
    LIMIT $3::int8";

pub(crate) async fn leases_of_earlier_incarnations(
    conn: &Conn,
    node: &str,
    incarnation: u64,
    limit: usize,
) -> R<Vec<cairn_core::model::Lease>> {
    let stmt = conn.stmt(EARLIER_LEASES_SQL).await?;
    let rows = conn
        .client
        .query(&stmt, &[&node, &to_sql(incarnation), &to_sql_usize(limit)])
        .await?;
    let mut leases = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get(0)?;
        if let Some(l) = cairn_core::ops::columns::lease_from_columns(
            &id,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
        ) {
            leases.push(l);
        }
    }
    Ok(leases)
}

pub(crate) async fn fencing_token(conn: &Conn, id: &str) -> R<u64> {
    let stmt = conn
        .stmt("SELECT fencing_counter FROM processes WHERE id = $1::text")
        .await?;
    match conn.client.query_opt(&stmt, &[&id]).await? {
        Some(row) => Ok(from_sql(row.try_get(0)?)),
        None => Err(missing(conn, id).await?.into()),
    }
}

/// Store env bytes unless the ref is stored (or, `overwrite`, replace them:
/// tests of corruption), and count the env as put now by the server's clock
/// either way: a prune's collection keeps an env put within its grace, so the
/// registration naming it next finds it (ADR 0034).
pub(crate) async fn put_env(conn: &Conn, env_ref: &str, bytes: &[u8], overwrite: bool) -> R<()> {
    let sql = if overwrite {
        "INSERT INTO envs (env_ref, bytes, touched_at_ms) \
         VALUES ($1::text, $2::bytea, (extract(epoch FROM clock_timestamp()) * 1000)::int8) \
         ON CONFLICT (env_ref) DO UPDATE SET bytes = excluded.bytes, touched_at_ms = excluded.touched_at_ms"
    } else {
        "INSERT INTO envs (env_ref, bytes, touched_at_ms) \
         VALUES ($1::text, $2::bytea, (extract(epoch FROM clock_timestamp()) * 1000)::int8) \
         ON CONFLICT (env_ref) DO UPDATE SET touched_at_ms = excluded.touched_at_ms"
    };
    let stmt = conn.stmt(sql).await?;
    conn.client.execute(&stmt, &[&env_ref, &bytes]).await?;
    Ok(())
}

/// Delete, in the caller's transaction, the envs and type lists no process
/// row names of those last stored at least `grace_ms` before the server's
/// `now()`; answers how many of each. Each statement is one anti-join over
/// the process rows (a hash of what they name), never a lookup per
/// candidate. A row's env is its record's `env_ref` (`record` is text: a
/// `\u0000` escape, which `jsonb` refuses, becomes `\u0020` first, leaving
/// the ref as it was); `strpos` spares decoding the records that name none.
/// A list a lane stored meanwhile is locked by its upsert, and one touched
/// since this statement's snapshot is found touched when its lock is
/// released, so it stays.
pub(crate) async fn collect_unreferenced<C: tokio_postgres::GenericClient>(client: &C, grace_ms: i64) -> R<(u64, u64)> {
    let envs = client
        .execute(
            "DELETE FROM envs e \
             WHERE e.touched_at_ms <= (extract(epoch FROM now()) * 1000)::int8 - $1::int8 \
             AND NOT EXISTS (SELECT 1 FROM processes p WHERE strpos(p.record, '\"env_ref\":\"') > 0 \
             AND (replace(p.record, E'\\\\u0000', E'\\\\u0020')::jsonb ->> 'env_ref') = e.env_ref)",
            &[&grace_ms],
        )
        .await?;
    let lists = client
        .execute(
            "DELETE FROM type_lists t \
             WHERE t.touched_at_ms <= (extract(epoch FROM now()) * 1000)::int8 - $1::int8 \
             AND NOT EXISTS (SELECT 1 FROM processes p WHERE p.types_key = t.key)",
            &[&grace_ms],
        )
        .await?;
    Ok((envs, lists))
}

pub(crate) async fn env_bytes(conn: &Conn, env_ref: &str) -> R<Option<Vec<u8>>> {
    let stmt = conn.stmt("SELECT bytes FROM envs WHERE env_ref = $1::text").await?;
    Ok(match conn.client.query_opt(&stmt, &[&env_ref]).await? {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

pub(crate) async fn revoke(conn: &Conn, scope: &SessionScope, id: &str) -> R<bool> {
    let stmt = conn
        .stmt("DELETE FROM grants WHERE scope_id = $1::text AND process_id = $2::text")
        .await?;
    Ok(conn.client.execute(&stmt, &[&scope.scope_id(), &id]).await? > 0)
}

fn module_info(row: &tokio_postgres::Row) -> R<cairn_core::ModuleInfo> {
    let exports: String = row.try_get(2)?;
    Ok(cairn_core::ModuleInfo {
        module_ref: row.try_get(0)?,
        name: row.try_get(1)?,
        exports: serde_json::from_str(&exports)?,
        created_at_ms: from_sql(row.try_get(3)?),
    })
}

/// Store a module unless its ref is stored, in one statement: the stored
/// module and whether this statement stored it. (A re-run after a lost reply
/// answers `created: false` for the row the lost attempt stored.)
pub(crate) async fn put_module(conn: &Conn, module: &cairn_core::Module) -> R<cairn_core::ModulePut> {
    let exports = serde_json::to_string(&module.info.exports)?;
    let stmt = conn
        .stmt(
            "WITH ins AS (\
               INSERT INTO modules (module_ref, name, exports, source, created_at_ms) \
               VALUES ($1::text, $2::text, $3::text, $4::text, $5::bigint) \
               ON CONFLICT (module_ref) DO NOTHING \
               RETURNING module_ref, name, exports, created_at_ms) \
             SELECT module_ref, name, exports, created_at_ms, true FROM ins \
             UNION ALL \
             SELECT module_ref, name, exports, created_at_ms, false FROM modules \
             WHERE module_ref = $1::text AND NOT EXISTS (SELECT 1 FROM ins)",
        )
        .await?;
    let row = conn
        .client
        .query_opt(
            &stmt,
            &[
                &module.info.module_ref,
                &module.info.name,
                &exports,
                &module.source,
                &to_sql(module.info.created_at_ms),
            ],
        )
        .await?;
    if let Some(row) = row {
        return Ok(cairn_core::ModulePut {
            module: module_info(&row)?,
            created: row.try_get(4)?,
        });
    }
    // The same module stored by another statement while this one waited on
    // it: the statement's snapshot predates that commit, so its row is read
    // by a statement of its own.
    let stmt = conn
        .stmt("SELECT module_ref, name, exports, created_at_ms FROM modules WHERE module_ref = $1::text")
        .await?;
    let row = conn.client.query_one(&stmt, &[&module.info.module_ref]).await?;
    Ok(cairn_core::ModulePut {
        module: module_info(&row)?,
        created: false,
    })
}

/// One page of modules in ref order after `after`.
pub(crate) async fn list_modules(conn: &Conn, after: Option<&str>, limit: usize) -> R<Vec<cairn_core::ModuleInfo>> {
    let stmt = conn
        .stmt(
            "SELECT module_ref, name, exports, created_at_ms FROM modules \
             WHERE module_ref > $1::text ORDER BY module_ref LIMIT $2::bigint",
        )
        .await?;
    let rows = conn
        .client
        .query(&stmt, &[&after.unwrap_or(""), &to_sql_usize(limit)])
        .await?;
    rows.iter().map(module_info).collect()
}

/// A stored module with its source.
pub(crate) async fn get_module(conn: &Conn, module_ref: &str) -> R<Option<cairn_core::Module>> {
    let stmt = conn
        .stmt("SELECT module_ref, name, exports, created_at_ms, source FROM modules WHERE module_ref = $1::text")
        .await?;
    match conn.client.query_opt(&stmt, &[&module_ref]).await? {
        Some(row) => Ok(Some(cairn_core::Module {
            info: module_info(&row)?,
            source: row.try_get(4)?,
        })),
        None => Ok(None),
    }
}
