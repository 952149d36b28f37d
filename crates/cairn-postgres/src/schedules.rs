//! Schedule rows (SPEC §18): the document as the runtime computed it, its
//! state (`paused`, `next_fire_ms`, the last fire) in columns, and the partial
//! index `schedules_due` over unpaused rows by next fire time. What a schedule
//! means and when it fires are `cairn_core::schedule`'s; the only decision
//! here is the compare-and-set of an advance, one `UPDATE ... WHERE
//! next_fire_ms = expected`, so of two nodes firing the same schedule one
//! advances it. A new or resumed schedule notifies every node's driver (`w`,
//! the work notice) in the same statement.

use cairn_core::{Schedule, ScheduleAdvance};
use tokio_postgres::Row;

use crate::conn::Conn;
use crate::read::R;
use crate::rows::{from_sql, to_sql, to_sql_usize};

const COLUMNS: &str = "schedule, paused, next_fire_ms, last_fire_ms, last_process_id, last_refusal";

fn assemble(row: &Row) -> R<Schedule> {
    let mut s: Schedule = serde_json::from_str(row.try_get::<_, &str>(0)?)?;
    s.paused = row.try_get(1)?;
    s.next_fire_ms = from_sql(row.try_get(2)?);
    s.last_fire_ms = row.try_get::<_, Option<i64>>(3)?.map(from_sql);
    s.last_process_id = row.try_get(4)?;
    s.last_refusal = row
        .try_get::<_, Option<&str>>(5)?
        .map(serde_json::from_str)
        .transpose()?;
    Ok(s)
}

pub(crate) async fn get(conn: &Conn, id: &str) -> R<Option<Schedule>> {
    let stmt = conn
        .stmt(&format!("SELECT {COLUMNS} FROM schedules WHERE id = $1::text"))
        .await?;
    conn.client
        .query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(assemble)
        .transpose()
}

/// Insert `s` unless its id is taken (answering the stored one then). A
/// schedule deleted between the refused insert and the read of the stored
/// one is no answer: the insert is made again (`None` means `s` is stored).
pub(crate) async fn insert(conn: &Conn, channel: &str, s: &Schedule) -> R<Option<Schedule>> {
    loop {
        if let Some(stored) = insert_once(conn, channel, s).await? {
            return Ok(stored);
        }
    }
}

/// One try of [`insert`]: `Some(answer)`, or `None` when the id's holder
/// went between the two statements.
async fn insert_once(conn: &Conn, channel: &str, s: &Schedule) -> R<Option<Option<Schedule>>> {
    let stmt = conn
        .stmt(
            "INSERT INTO schedules (id, schedule, paused, next_fire_ms, last_fire_ms, last_process_id) \
             VALUES ($1::text, $2::text, $3::bool, $4::int8, $5::int8, $6::text) \
             ON CONFLICT (id) DO NOTHING RETURNING pg_notify($7::text, 'w')::text",
        )
        .await?;
    let doc = serde_json::to_string(s)?;
    let inserted = conn
        .client
        .query(
            &stmt,
            &[
                &s.id,
                &doc,
                &s.paused,
                &to_sql(s.next_fire_ms),
                &s.last_fire_ms.map(to_sql),
                &s.last_process_id,
                &channel,
            ],
        )
        .await?;
    if inserted.is_empty() {
        return Ok(get(conn, &s.id).await?.map(Some));
    }
    Ok(Some(None))
}

pub(crate) async fn list(conn: &Conn, after_id: Option<&str>, limit: usize) -> R<Vec<Schedule>> {
    let stmt = conn
        .stmt(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE id > COALESCE($1::text, '') ORDER BY id LIMIT $2::int8"
        ))
        .await?;
    let rows = conn.client.query(&stmt, &[&after_id, &to_sql_usize(limit)]).await?;
    rows.iter().map(assemble).collect()
}

pub(crate) async fn delete(conn: &Conn, id: &str) -> R<bool> {
    let stmt = conn.stmt("DELETE FROM schedules WHERE id = $1::text").await?;
    Ok(conn.client.execute(&stmt, &[&id]).await? > 0)
}

pub(crate) async fn set_paused(
    conn: &Conn,
    channel: &str,
    id: &str,
    paused: bool,
    next: Option<u64>,
) -> R<Option<Schedule>> {
    let stmt = conn
        .stmt(&format!(
            "UPDATE schedules SET paused = $2::bool, next_fire_ms = COALESCE($3::int8, next_fire_ms) \
             WHERE id = $1::text RETURNING {COLUMNS}, pg_notify($4::text, 'w')::text"
        ))
        .await?;
    let row = conn
        .client
        .query_opt(&stmt, &[&id, &paused, &next.map(to_sql), &channel])
        .await?;
    row.as_ref().map(assemble).transpose()
}

/// The compare-and-set of a fire.
pub(crate) async fn advance(conn: &Conn, id: &str, expected: u64, a: &ScheduleAdvance) -> R<bool> {
    let stmt = conn
        .stmt(
            "UPDATE schedules SET \
                 next_fire_ms = COALESCE($3::int8, next_fire_ms), \
                 paused = $3::int8 IS NULL, \
                 last_fire_ms = COALESCE($4::int8, last_fire_ms), \
                 last_process_id = COALESCE($5::text, last_process_id), \
                 last_refusal = CASE WHEN $4::int8 IS NOT NULL THEN NULL ELSE COALESCE($6::text, last_refusal) END \
             WHERE id = $1::text AND NOT paused AND next_fire_ms = $2::int8",
        )
        .await?;
    let (at, pid) = match &a.fired {
        Some((at, pid)) => (Some(to_sql(*at)), Some(pid.as_str())),
        None => (None, None),
    };
    let refused = a.refused.as_ref().map(serde_json::to_string).transpose()?;
    let n = conn
        .client
        .execute(
            &stmt,
            &[&id, &to_sql(expected), &a.next_fire_ms.map(to_sql), &at, &pid, &refused],
        )
        .await?;
    if n == 0 && at.is_some() {
        // Lost: a fire this node started is still the last one if it is the
        // latest (see `ProcessRegistry::advance_schedule`).
        let stmt = conn
            .stmt(
                "UPDATE schedules SET last_fire_ms = $2::int8, last_process_id = $3::text, \
                     last_refusal = CASE WHEN (last_refusal::jsonb ->> 'fire_ms')::int8 <= $2::int8 THEN NULL \
                                         ELSE last_refusal END \
                 WHERE id = $1::text AND (schedule::jsonb ->> 'created_ms')::int8 = $4::int8 \
                   AND (last_fire_ms IS NULL OR last_fire_ms < $2::int8)",
            )
            .await?;
        conn.client
            .execute(&stmt, &[&id, &at, &pid, &to_sql(a.created_ms)])
            .await?;
    }
    Ok(n > 0)
}

/// Unpaused schedules due at `now`, earliest first, from `schedules_due`.
pub(crate) async fn due(conn: &Conn, now: u64, limit: usize) -> R<Vec<Schedule>> {
    let stmt = conn
        .stmt(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE NOT paused AND next_fire_ms <= $1::int8 \
             ORDER BY next_fire_ms, id LIMIT $2::int8"
        ))
        .await?;
    let rows = conn.client.query(&stmt, &[&to_sql(now), &to_sql_usize(limit)]).await?;
    rows.iter().map(assemble).collect()
}
