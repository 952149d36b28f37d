//! Node liveness rows and the sweep worklist (ADR 0017).

use cairn_core::model::{NodeLiveness, SweepItem};
use cairn_core::ops::columns::{to_i64 as to_sql, usize_to_i64 as to_sql_usize};
use rusqlite::{params, Connection, OptionalExtension};

use crate::store::R;

/// A new incarnation of `node` in its liveness row (1 for a new node).
pub(crate) fn register_node(conn: &Connection, node: &str, now: u64) -> R<u64> {
    let incarnation: i64 = conn
        .prepare_cached(
            "INSERT INTO nodes (node_id, incarnation, started_at_ms, heartbeat_at_ms) VALUES (?1, 1, ?2, ?2)
             ON CONFLICT (node_id) DO UPDATE
                 SET incarnation = incarnation + 1, started_at_ms = ?2, heartbeat_at_ms = ?2
             RETURNING incarnation",
        )?
        .query_row(params![node, to_sql(now)], |r| r.get(0))?;
    Ok(cairn_core::ops::columns::from_i64(incarnation))
}

/// Set the heartbeat of `node` if `incarnation` is its latest; whether it was.
pub(crate) fn heartbeat(conn: &Connection, node: &str, incarnation: u64, now: u64) -> R<bool> {
    let n = conn
        .prepare_cached("UPDATE nodes SET heartbeat_at_ms = ?3 WHERE node_id = ?1 AND incarnation = ?2")?
        .execute(params![node, to_sql(incarnation), to_sql(now)])?;
    Ok(n == 1)
}

/// The liveness row of `node`.
pub(crate) fn node(conn: &Connection, node: &str) -> R<Option<NodeLiveness>> {
    let from = cairn_core::ops::columns::from_i64;
    Ok(conn
        .prepare_cached("SELECT incarnation, started_at_ms, heartbeat_at_ms FROM nodes WHERE node_id = ?1")?
        .query_row(params![node], |r| {
            Ok(NodeLiveness {
                node: node.to_string(),
                incarnation: from(r.get(0)?),
                started_at_ms: from(r.get(1)?),
                heartbeat_at_ms: from(r.get(2)?),
            })
        })
        .optional()?)
}

/// Rows an earlier incarnation of a node started, once the node registered a
/// newer one: per node, a range of the partial sweep index (`CROSS JOIN`
/// keeps SQLite's join order: the few node rows outside, the index inside).
pub(crate) const SWEEP_WORKLIST_SQL: &str = "SELECT p.id, n.node_id, n.incarnation FROM nodes n
     CROSS JOIN processes p ON p.sweep_node = n.node_id AND p.sweep_incarnation < n.incarnation
     LIMIT ?1";

/// The sweep worklist: (id, node, the node's latest incarnation).
pub(crate) fn sweep_worklist(conn: &Connection, limit: usize) -> R<Vec<SweepItem>> {
    let mut stmt = conn.prepare_cached(SWEEP_WORKLIST_SQL)?;
    let rows = stmt
        .query_map(params![to_sql_usize(limit)], |r| {
            Ok(SweepItem {
                process_id: r.get(0)?,
                node: r.get(1)?,
                incarnation: cairn_core::ops::columns::from_i64(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<SweepItem>>>()?;
    Ok(rows)
}

/// Leases held by earlier incarnations of a node on running rerunnable
/// processes, to be run again or, under an abandon request, reconciled
/// (the timed worklist index: a leased row is claimable at its lease's
/// expiry, never at once): the owner is `{node}#` and digits below the
/// given incarnation.
const EARLIER_LEASES_SQL: &str = "SELECT p.id, p.lease_owner, p.lease_token, p.lease_fencing,
     p.lease_claimed_at_ms, p.lease_expires_at_ms FROM processes p
     WHERE (p.run_candidate = 1 OR p.abandon_candidate = 1) AND p.claimable_at_ms > 0 AND p.disposition = 'rerunnable' AND p.status = 'running'
       AND substr(p.lease_owner, 1, length(?1) + 1) = ?1 || '#'
       AND substr(p.lease_owner, length(?1) + 2) != ''
       AND NOT substr(p.lease_owner, length(?1) + 2) GLOB '*[^0-9]*'
       AND CAST(substr(p.lease_owner, length(?1) + 2) AS INTEGER) < ?2
     LIMIT ?3";

/// [`cairn_core::ProcessRegistry::leases_of_earlier_incarnations`].
pub(crate) fn leases_of_earlier_incarnations(
    conn: &Connection,
    node: &str,
    incarnation: u64,
    limit: usize,
) -> R<Vec<cairn_core::model::Lease>> {
    let mut stmt = conn.prepare_cached(EARLIER_LEASES_SQL)?;
    let rows = stmt
        .query_map(params![node, to_sql(incarnation), to_sql_usize(limit)], |r| {
            let id: String = r.get(0)?;
            Ok(cairn_core::ops::columns::lease_from_columns(
                &id,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_worklist_walks_the_partial_sweep_index_per_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn =
            crate::schema::open_writer(&dir.path().join("plan.db"), std::time::Duration::from_secs(1)).expect("open");
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {SWEEP_WORKLIST_SQL}"))
            .expect("explain");
        let plan = stmt
            .query_map(params![10], |r| r.get::<_, String>(3))
            .expect("plan rows")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("plan")
            .join(" | ");
        assert!(plan.contains("SEARCH p USING INDEX processes_sweep"), "{plan}");
    }

    #[test]
    fn earlier_leases_walk_the_timed_worklist_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn =
            crate::schema::open_writer(&dir.path().join("plan.db"), std::time::Duration::from_secs(1)).expect("open");
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {EARLIER_LEASES_SQL}"))
            .expect("explain");
        let plan = stmt
            .query_map(params!["node", 2, 10], |r| r.get::<_, String>(3))
            .expect("plan rows")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("plan")
            .join(" | ");
        assert!(plan.contains("USING INDEX processes_worklist"), "{plan}");
    }
}
