//! The primitives of [`cairn_core::ops::admin::AdminTx`] over one admin
//! transaction: transfers, a session's deletion and retention run their
//! rules from cairn-core against these statements.
//!
//! Invariant: statements only; no rule about what a transfer, a deletion or a
//! prune means lives here.

use cairn_core::model::{Grant, ProcessStatus, SessionScope, StatusFilter};
use cairn_core::ops::admin::{AdminTx, Deleted, GrantState, PruneCandidate, PrunePosition};
use cairn_core::{CairnError, Result};
use tokio_postgres::Transaction;

use crate::rows::{from_sql, status_label, to_sql};
use crate::Fault;

/// One admin transaction at one time. It keeps the first server error it
/// met, so the caller can tell a transient fault (run the transaction again)
/// from a refusal.
pub(crate) struct Admin<'a> {
    tx: &'a Transaction<'a>,
    now: u64,
    fault: Option<tokio_postgres::Error>,
}

impl<'a> Admin<'a> {
    pub(crate) fn new(tx: &'a Transaction<'a>, now: u64) -> Self {
        Self { tx, now, fault: None }
    }

    /// The answer of the rules run on this transaction, with the server error
    /// behind a failure restored.
    pub(crate) fn finish<T>(self, out: Result<T>) -> std::result::Result<T, Fault> {
        match (out, self.fault) {
            (Ok(v), _) => Ok(v),
            (Err(_), Some(e)) => Err(Fault::Pg(e)),
            (Err(e), None) => Err(Fault::Cairn(e)),
        }
    }

    /// Keep the server error (for [`Admin::finish`]) and stand in for it
    /// until then.
    fn pg(&mut self, e: tokio_postgres::Error) -> CairnError {
        let err = CairnError::storage(format!("postgres: {}", crate::conn::describe(&e)));
        self.fault.get_or_insert(e);
        err
    }
}

/// How many ids one statement of a grant transfer names: a transfer of any
/// size runs in a few statements per chunk, each with bounded arrays.
const MOVE_CHUNK: usize = 10_000;

fn json(e: serde_json::Error) -> CairnError {
    Fault::Json(e).into()
}

impl AdminTx for Admin<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    async fn take_grant(&mut self, scope: &SessionScope, id: &str) -> Result<Option<Grant>> {
        let tx = self.tx;
        // The process row is locked already (`lock_for_transfer`).
        let taken = tx
            .query_opt(
                "DELETE FROM grants WHERE scope_id = $1::text AND process_id = $2::text RETURNING grant_json",
                &[&scope.scope_id(), &id],
            )
            .await
            .map_err(|e| self.pg(e))?;
        match taken {
            Some(row) => Ok(Some(
                serde_json::from_str(row.try_get::<_, &str>(0).map_err(|e| self.pg(e))?).map_err(json)?,
            )),
            None => Ok(None),
        }
    }

    async fn put_grant(&mut self, g: &Grant) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO grants (scope_id, session_id, process_id, grant_json) \
                 VALUES ($1::text, $2::text, $3::text, $4::text) \
                 ON CONFLICT (scope_id, process_id) DO UPDATE SET session_id = excluded.session_id, \
                 grant_json = excluded.grant_json",
                &[
                    &g.scope.scope_id(),
                    &g.scope.session_id,
                    &g.process_id,
                    &serde_json::to_string(g).map_err(json)?,
                ],
            )
            .await
            .map_err(|e| self.pg(e))?;
        Ok(())
    }

    async fn move_grants(
        &mut self,
        from: &SessionScope,
        to: &SessionScope,
        ids: &[&str],
        now: u64,
    ) -> Result<Vec<String>> {
        let tx = self.tx;
        let (from_id, to_id) = (from.scope_id(), to.scope_id());
        let mut moved = Vec::new();
        for chunk in ids.chunks(MOVE_CHUNK) {
            // The grants of both scopes on these processes, locked in
            // (process, scope) order before any is written: two transfers
            // touching the same grants, from either scope, lock them in the
            // same order. The process rows are locked already
            // (`lock_for_transfer`), so no grant of `from` appears meanwhile.
            let rows = tx
                .query(
                    "SELECT process_id, grant_json, scope_id = $1::text FROM grants \
                     WHERE scope_id IN ($1::text, $2::text) AND process_id = ANY($3::text[]) \
                     ORDER BY process_id, scope_id FOR UPDATE",
                    &[&from_id, &to_id, &chunk],
                )
                .await
                .map_err(|e| self.pg(e))?;
            let (mut taken, mut put) = (Vec::new(), Vec::new());
            for row in &rows {
                if !row.try_get::<_, bool>(2).map_err(|e| self.pg(e))? {
                    continue;
                }
                let grant: Grant =
                    serde_json::from_str(row.try_get::<_, &str>(1).map_err(|e| self.pg(e))?).map_err(json)?;
                put.push(serde_json::to_string(&grant.moved_to(to, now)).map_err(json)?);
                taken.push(row.try_get::<_, String>(0).map_err(|e| self.pg(e))?);
            }
            if taken.is_empty() {
                continue;
            }
            // Only the grants read above are deleted, and their moved copies
            // written in id order, each replacing the one `to` held.
            tx.execute(
                "WITH taken AS (DELETE FROM grants WHERE scope_id = $1::text AND process_id = ANY($3::text[])) \
                 INSERT INTO grants (scope_id, session_id, process_id, grant_json) \
                 SELECT $2::text, $4::text, u.id, u.grant_json \
                 FROM unnest($3::text[], $5::text[]) AS u(id, grant_json) ORDER BY u.id \
                 ON CONFLICT (scope_id, process_id) DO UPDATE SET session_id = excluded.session_id, \
                 grant_json = excluded.grant_json",
                &[&from_id, &to_id, &taken, &to.session_id, &put],
            )
            .await
            .map_err(|e| self.pg(e))?;
            moved.append(&mut taken);
        }
        Ok(moved)
    }

    async fn delete_session_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<Vec<String>> {
        let tx = self.tx;
        // Every scope of the session, or with `keep_frames` only the session
        // as a whole (its agent frames keep their grants).
        let (which, key) = if keep_frames {
            ("scope_id", SessionScope::session(session_id).scope_id())
        } else {
            ("session_id", session_id.to_string())
        };
        // The processes the session holds, locked first in id order as a
        // transfer locks them: a batch registering a child of one (which
        // holds the parent `FOR UPDATE` and gives the child its grants) is
        // wholly before the delete, whose next statement then sees the
        // child's grant too, or wholly after it. Deleting from a snapshot
        // taken while the batch ran would miss the child's grant, leaving
        // it granted to the deleted session.
        tx.execute(
            &format!(
                "SELECT 1 FROM processes WHERE id IN (SELECT process_id FROM grants WHERE {which} = $1::text) \
                 ORDER BY id FOR SHARE"
            ),
            &[&key],
        )
        .await
        .map_err(|e| self.pg(e))?;
        let removed = tx
            .query(
                &format!("DELETE FROM grants WHERE {which} = $1::text RETURNING process_id"),
                &[&key],
            )
            .await
            .map_err(|e| self.pg(e))?;
        removed
            .iter()
            .map(|r| r.try_get::<_, String>(0).map_err(|e| self.pg(e)))
            .collect()
    }

    async fn delete_session_pruned_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<u64> {
        let (which, key) = if keep_frames {
            ("scope_id", SessionScope::session(session_id).scope_id())
        } else {
            ("session_id", session_id.to_string())
        };
        self.tx
            .execute(
                &format!("DELETE FROM tombstone_grants WHERE {which} = $1::text"),
                &[&key],
            )
            .await
            .map_err(|e| self.pg(e))
    }

    async fn delete_pending_wakes(&mut self, session_id: &str) -> Result<u64> {
        self.tx
            .execute(
                "DELETE FROM wakes WHERE target_session_id = $1::text AND NOT acked",
                &[&session_id],
            )
            .await
            .map_err(|e| self.pg(e))
    }

    async fn grant_states(&mut self, ids: &[String]) -> Result<Vec<GrantState>> {
        let tx = self.tx;
        let rows = tx
            .query(
                "SELECT i.id, COALESCE(p.status = 'running', false), \
                 EXISTS (SELECT 1 FROM grants g WHERE g.process_id = i.id) \
                 FROM unnest($1::text[]) WITH ORDINALITY AS i(id, n) LEFT JOIN processes p ON p.id = i.id \
                 ORDER BY i.n",
                &[&ids],
            )
            .await
            .map_err(|e| self.pg(e))?;
        rows.iter()
            .map(|row| {
                Ok(GrantState {
                    id: row.try_get(0).map_err(|e| self.pg(e))?,
                    running: row.try_get(1).map_err(|e| self.pg(e))?,
                    granted: row.try_get(2).map_err(|e| self.pg(e))?,
                })
            })
            .collect()
    }

    async fn with_running_descendants(&mut self, ids: &[String]) -> Result<std::collections::HashSet<String>> {
        let tx = self.tx;
        let rows = tx
            .query(
                "WITH RECURSIVE d(root, id) AS (\
                 SELECT c.caused_by, c.id FROM processes c WHERE c.caused_by = ANY($1::text[]) \
                 UNION SELECT d.root, c.id FROM processes c JOIN d ON c.caused_by = d.id) \
                 SELECT DISTINCT d.root FROM d JOIN processes p ON p.id = d.id WHERE p.status = 'running'",
                &[&ids],
            )
            .await
            .map_err(|e| self.pg(e))?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).map_err(|e| self.pg(e)))
            .collect()
    }

    async fn prune_candidates(
        &mut self,
        cutoff_ms: u64,
        status: StatusFilter,
        after: Option<&PrunePosition>,
        limit: usize,
    ) -> Result<(Vec<PruneCandidate>, Option<PrunePosition>)> {
        let tx = self.tx;
        let after_at = after.map_or(i64::MIN, |a| to_sql(a.terminal_at_ms));
        let after_id = after.map_or("", |a| a.id.as_str());
        let asked = i64::try_from(limit).unwrap_or(i64::MAX);
        // The chunk is read in walk order without locks (where the walk goes
        // on comes from this read, whatever a concurrent prune deletes), then
        // locked in id order, as every batch locks rows, so a prune never
        // deadlocks with a lane's batch; a row deleted meanwhile is skipped.
        let read = tx
            .query(
                "SELECT id, terminal_at_ms FROM processes \
                 WHERE terminal_at_ms IS NOT NULL AND terminal_at_ms < $1::int8 AND status <> 'running' \
                 AND ($2::text IS NULL OR status = $2::text) \
                 AND (terminal_at_ms, id) > ($3::int8, $4::text) \
                 ORDER BY terminal_at_ms, id LIMIT $5::int8",
                &[&to_sql(cutoff_ms), &status_label(status), &after_at, &after_id, &asked],
            )
            .await
            .map_err(|e| self.pg(e))?;
        let next = match read.last() {
            Some(last) if read.len() >= limit => Some(PrunePosition {
                id: last.try_get(0).map_err(|e| self.pg(e))?,
                terminal_at_ms: from_sql(last.try_get(1).map_err(|e| self.pg(e))?),
            }),
            _ => None,
        };
        let ids: Vec<&str> = read
            .iter()
            .map(|r| r.try_get::<_, &str>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.pg(e))?;
        let rows = tx
            .query(
                "SELECT id, status, terminal_at_ms, change_cursor, caused_by, definition, originator, created_at_ms \
                 FROM processes WHERE id = ANY($1::text[]) AND terminal_at_ms IS NOT NULL \
                 ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await
            .map_err(|e| self.pg(e))?;
        let candidates = rows
            .iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(|e| self.pg(e))?;
                let s: &str = row.try_get(1).map_err(|e| self.pg(e))?;
                let status = ProcessStatus::parse(s)
                    .ok_or_else(|| CairnError::storage(format!("process `{id}` has an unknown status `{s}`")))?;
                Ok(PruneCandidate {
                    id,
                    status,
                    terminal_at_ms: from_sql(row.try_get(2).map_err(|e| self.pg(e))?),
                    change_cursor: from_sql(row.try_get(3).map_err(|e| self.pg(e))?),
                    parent: row.try_get(4).map_err(|e| self.pg(e))?,
                    definition: row.try_get(5).map_err(|e| self.pg(e))?,
                    originator: row.try_get(6).map_err(|e| self.pg(e))?,
                    created_at_ms: from_sql(row.try_get(7).map_err(|e| self.pg(e))?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((candidates, next))
    }

    async fn lock_for_transfer(&mut self, ids: &[&str]) -> Result<()> {
        // In id order, as every batch locks rows: a grant moved under the
        // lock and a prune on another node (which locks the row `FOR
        // UPDATE` and deletes its grants from a snapshot) are ordered, so no
        // moved grant outlives a pruned process.
        self.tx
            .execute(
                "SELECT 1 FROM processes WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE",
                &[&ids],
            )
            .await
            .map_err(|e| self.pg(e))?;
        Ok(())
    }

    async fn delete_pruned(&mut self, victims: &[PruneCandidate]) -> Result<Deleted> {
        let tx = self.tx;
        let ids: Vec<&str> = victims.iter().map(|v| v.id.as_str()).collect();
        let statuses: Vec<&str> = victims.iter().map(|v| v.status.label()).collect();
        let terminal: Vec<i64> = victims.iter().map(|v| to_sql(v.terminal_at_ms)).collect();
        // The grants go with the scopes they were to kept beside the
        // tombstones (`pruned_grant`), taken from what the delete removed.
        const GRANTS: &str = "WITH gone AS (DELETE FROM grants WHERE process_id = ANY($1::text[]) \
             RETURNING process_id, scope_id, session_id), \
             kept AS (INSERT INTO tombstone_grants (process_id, scope_id, session_id) \
             SELECT process_id, scope_id, session_id FROM gone ON CONFLICT (scope_id, process_id) DO NOTHING) \
             SELECT count(*) FROM gone";
        let mut counts = [0u64; 4];
        for (i, sql) in [
            "DELETE FROM events WHERE process_id = ANY($1::text[])",
            GRANTS,
            "DELETE FROM wakes WHERE process_id = ANY($1::text[])",
            "DELETE FROM processes WHERE id = ANY($1::text[])",
        ]
        .into_iter()
        .enumerate()
        {
            counts[i] = if sql == GRANTS {
                let row = tx.query_one(sql, &[&ids]).await.map_err(|e| self.pg(e))?;
                from_sql(row.try_get::<_, i64>(0).map_err(|e| self.pg(e))?)
            } else {
                tx.execute(sql, &[&ids]).await.map_err(|e| self.pg(e))?
            };
        }
        let deleted = Deleted {
            events: counts[0],
            grants: counts[1],
            wakes: counts[2],
        };
        tx.execute(
            "INSERT INTO tombstones (id, status, terminal_at_ms, pruned_at_ms) \
             SELECT u.id, u.status, u.terminal_at_ms, $4::int8 FROM unnest($1::text[], $2::text[], $3::int8[]) \
             AS u(id, status, terminal_at_ms) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, terminal_at_ms = excluded.terminal_at_ms, \
             pruned_at_ms = excluded.pruned_at_ms",
            &[&ids, &statuses, &terminal, &to_sql(self.now)],
        )
        .await
        .map_err(|e| self.pg(e))?;
        Ok(deleted)
    }
}
