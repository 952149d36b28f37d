//! Schedule rows (SPEC §18): the document as the runtime computed it, its
//! state (`paused`, `next_fire_ms`, the last fire) in columns, and the partial
//! index `schedules_due` over unpaused rows by next fire time. What a schedule
//! means and when it fires are `cairn_core::schedule`'s; the only decision
//! here is the compare-and-set of an advance.

use cairn_core::ops::columns::{from_i64, to_i64, usize_to_i64};
use cairn_core::{Schedule, ScheduleAdvance};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::store::R;

const COLUMNS: &str = "schedule, paused, next_fire_ms, last_fire_ms, last_process_id, last_refusal";

/// A row: the document, paused, next fire, last fire, last process, last refusal.
type Columns = (String, bool, i64, Option<i64>, Option<String>, Option<String>);

fn from_row(r: &Row<'_>) -> rusqlite::Result<Columns> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn assemble(row: Columns) -> R<Schedule> {
    let (doc, paused, next, last, last_pid, refusal) = row;
    let mut s: Schedule = serde_json::from_str(&doc)?;
    s.paused = paused;
    s.next_fire_ms = from_i64(next);
    s.last_fire_ms = last.map(from_i64);
    s.last_process_id = last_pid;
    s.last_refusal = refusal.map(|r| serde_json::from_str(&r)).transpose()?;
    Ok(s)
}

pub(crate) fn get(conn: &Connection, id: &str) -> R<Option<Schedule>> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE id = ?1"))?
        .query_row(params![id], from_row)
        .optional()?;
    row.map(assemble).transpose()
}

/// Insert `s` unless its id is taken; answers the stored one when it is.
pub(crate) fn insert(conn: &Connection, s: &Schedule) -> R<Option<Schedule>> {
    if let Some(existing) = get(conn, &s.id)? {
        return Ok(Some(existing));
    }
    conn.prepare_cached(
        "INSERT INTO schedules (id, schedule, paused, next_fire_ms, last_fire_ms, last_process_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        s.id,
        serde_json::to_string(s)?,
        s.paused,
        to_i64(s.next_fire_ms),
        s.last_fire_ms.map(to_i64),
        s.last_process_id
    ])?;
    Ok(None)
}

pub(crate) fn list(conn: &Connection, after_id: Option<&str>, limit: usize) -> R<Vec<Schedule>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![after_id, usize_to_i64(limit)], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(assemble).collect()
}

pub(crate) fn delete(conn: &Connection, id: &str) -> R<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM schedules WHERE id = ?1")?
        .execute(params![id])?
        > 0)
}

pub(crate) fn set_paused(conn: &Connection, id: &str, paused: bool, next: Option<u64>) -> R<Option<Schedule>> {
    conn.prepare_cached("UPDATE schedules SET paused = ?2, next_fire_ms = COALESCE(?3, next_fire_ms) WHERE id = ?1")?
        .execute(params![id, paused, next.map(to_i64)])?;
    get(conn, id)
}

/// The compare-and-set of a fire.
pub(crate) fn advance(conn: &Connection, id: &str, expected: u64, a: &ScheduleAdvance) -> R<bool> {
    let (fired_at, fired_pid) = match &a.fired {
        Some((at, pid)) => (Some(to_i64(*at)), Some(pid.as_str())),
        None => (None, None),
    };
    let refused = a.refused.as_ref().map(serde_json::to_string).transpose()?;
    let n = conn
        .prepare_cached(
            "UPDATE schedules SET
                 next_fire_ms = COALESCE(?3, next_fire_ms),
                 paused = ?3 IS NULL,
                 last_fire_ms = COALESCE(?4, last_fire_ms),
                 last_process_id = COALESCE(?5, last_process_id),
                 last_refusal = CASE WHEN ?4 IS NOT NULL THEN NULL ELSE COALESCE(?6, last_refusal) END
             WHERE id = ?1 AND paused = 0 AND next_fire_ms = ?2",
        )?
        .execute(params![
            id,
            to_i64(expected),
            a.next_fire_ms.map(to_i64),
            fired_at,
            fired_pid,
            refused
        ])?;
    if n == 0 && fired_at.is_some() {
        // Lost: a fire this node started is still the last one if it is the
        // latest (see `ProcessRegistry::advance_schedule`).
        conn.prepare_cached(
            "UPDATE schedules SET last_fire_ms = ?2, last_process_id = ?3,
                 last_refusal = CASE WHEN json_extract(last_refusal, '$.fire_ms') <= ?2 THEN NULL
                                     ELSE last_refusal END
             WHERE id = ?1 AND json_extract(schedule, '$.created_ms') = ?4
                   AND (last_fire_ms IS NULL OR last_fire_ms < ?2)",
        )?
        .execute(params![id, fired_at, fired_pid, to_i64(a.created_ms)])?;
    }
    Ok(n > 0)
}

/// Unpaused schedules due at `now`, earliest first, from `schedules_due`.
pub(crate) fn due(conn: &Connection, now: u64, limit: usize) -> R<Vec<Schedule>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE paused = 0 AND next_fire_ms <= ?1
         ORDER BY next_fire_ms, id LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![to_i64(now), usize_to_i64(limit)], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(assemble).collect()
}

/// The earliest unpaused next fire time after `after`, from `schedules_due`.
pub(crate) fn next_due(conn: &Connection, after: u64) -> R<Option<u64>> {
    let due: Option<i64> = conn
        .prepare_cached("SELECT MIN(next_fire_ms) FROM schedules WHERE paused = 0 AND next_fire_ms > ?1")?
        .query_row(params![to_i64(after)], |r| r.get(0))?;
    Ok(due.map(from_i64))
}
