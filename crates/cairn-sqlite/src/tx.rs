//! The storage primitives of [`cairn_core::ops::WriteTx`] and
//! [`cairn_core::ops::admin::AdminTx`] over one write job's transaction: the
//! writer thread runs each operation through [`cairn_core::ops`] on a [`Tx`].
//!
//! Invariant: no rule about what an operation means lives here; these are
//! lookups and stores.

use std::collections::HashMap;

use cairn_core::events::ProcessEvent;
use cairn_core::model::{Grant, Lease, ProcessRecord, SessionScope, StatusFilter, Tombstone, WakeDelivery};
use cairn_core::ops::admin::{AdminTx, Deleted, GrantState, PruneCandidate};
use cairn_core::ops::{Row, WriteTx};
use cairn_core::{CairnError, Result};
use rusqlite::Connection;

use crate::store;

/// One operation's transaction: the connection, the job's time, and the rows
/// it has read or written (so an operation reads each row once).
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
    now: u64,
    rows: HashMap<String, Row>,
}

impl<'c> Tx<'c> {
    pub(crate) fn new(conn: &'c Connection, now: u64) -> Self {
        Self {
            conn,
            now,
            rows: HashMap::new(),
        }
    }

    fn cached(&mut self, id: &str) -> Result<&mut Row> {
        if !self.rows.contains_key(id) {
            let row = store::load(self.conn, id)?.ok_or_else(|| CairnError::UnknownProcess(id.to_string()))?;
            self.rows.insert(id.to_string(), row);
        }
        self.rows
            .get_mut(id)
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))
    }
}

impl WriteTx for Tx<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    fn row(&mut self, id: &str) -> Result<Option<&Row>> {
        if !self.rows.contains_key(id) {
            match store::load(self.conn, id)? {
                Some(row) => {
                    self.rows.insert(id.to_string(), row);
                }
                None => return Ok(None),
            }
        }
        Ok(self.rows.get(id))
    }

    fn tombstone(&mut self, id: &str) -> Result<Option<Tombstone>> {
        Ok(store::tombstone(self.conn, id)?)
    }

    fn replayed(&mut self, id: &str, replay_key: &str) -> Result<Option<ProcessEvent>> {
        Ok(store::replayed(self.conn, id, replay_key)?)
    }

    fn env_stored(&mut self, env_ref: &str) -> Result<bool> {
        Ok(store::env_exists(self.conn, env_ref)?)
    }

    fn run_candidates(&mut self, limit: usize) -> Result<Vec<String>> {
        Ok(store::run_candidates(self.conn, self.now, limit)?)
    }

    fn running_children(&mut self, parent: &str) -> Result<Vec<String>> {
        Ok(store::running_children(self.conn, parent)?)
    }

    fn insert_row(&mut self, record: ProcessRecord) -> Result<()> {
        store::insert_process(self.conn, &record)?;
        let id = record.id.clone();
        self.rows.insert(
            id,
            Row {
                record,
                lease: None,
                fencing: 0,
            },
        );
        Ok(())
    }

    fn update_record(&mut self, record: ProcessRecord, release_lease: bool) -> Result<()> {
        store::update_process(self.conn, &record, release_lease)?;
        let row = self.cached(&record.id)?;
        row.record = record;
        if release_lease {
            row.lease = None;
        }
        row.normalise();
        Ok(())
    }

    fn set_lease(&mut self, id: &str, lease: Option<Lease>, fencing: u64) -> Result<()> {
        store::store_lease(self.conn, id, lease.as_ref(), fencing)?;
        let row = self.cached(id)?;
        row.lease = lease;
        row.fencing = fencing;
        row.normalise();
        Ok(())
    }

    fn push_event(&mut self, event: &ProcessEvent) -> Result<()> {
        Ok(store::insert_event(self.conn, event)?)
    }

    fn insert_wake(&mut self, wake: &WakeDelivery) -> Result<bool> {
        Ok(store::insert_wake(self.conn, wake)?)
    }

    fn upsert_grant(&mut self, grant: &Grant) -> Result<()> {
        Ok(store::upsert_grant(self.conn, grant)?)
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

    async fn delete_session_grants(&mut self, session_id: &str) -> Result<Vec<String>> {
        Ok(store::delete_session_grants(self.conn, session_id)?)
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

    async fn prune_candidates(&mut self, cutoff_ms: u64, status: StatusFilter) -> Result<Vec<PruneCandidate>> {
        Ok(store::prune_candidates(self.conn, cutoff_ms, status)?)
    }

    async fn delete_pruned(&mut self, victims: &[PruneCandidate]) -> Result<Deleted> {
        let mut deleted = Deleted::default();
        for victim in victims {
            let (events, grants, wakes) = store::prune_one(self.conn, victim, self.now)?;
            deleted.events += events;
            deleted.grants += grants;
            deleted.wakes += wakes;
        }
        Ok(deleted)
    }
}
