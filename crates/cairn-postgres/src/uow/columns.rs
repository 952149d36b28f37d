//! Column arrays of process and event rows for the `unnest` writes.

use crate::rows::{derive, to_sql, Derived, Entry};
use crate::Fault;

use super::write::Params;

#[derive(Default)]
pub(super) struct EventColumns {
    pub(super) process_id: Vec<String>,
    pub(super) sequence: Vec<i64>,
    pub(super) event_type: Vec<String>,
    pub(super) replay_key: Vec<Option<String>>,
    pub(super) occurred_at: Vec<i64>,
    pub(super) json: Vec<String>,
}

/// Column arrays of process rows for the `unnest` insert and update.
#[derive(Default)]
pub(super) struct ProcessColumns {
    pub(super) id: Vec<String>,
    pub(super) record: Vec<String>,
    pub(super) status: Vec<&'static str>,
    pub(super) disposition: Vec<&'static str>,
    pub(super) definition: Vec<String>,
    pub(super) originator: Vec<String>,
    pub(super) originator_scope: Vec<Option<String>>,
    pub(super) waiting: Vec<bool>,
    pub(super) created_at: Vec<i64>,
    pub(super) terminal_at: Vec<Option<i64>>,
    pub(super) last_sequence: Vec<i64>,
    pub(super) ord: Vec<i64>,
    pub(super) run_candidate: Vec<bool>,
    pub(super) abandon_candidate: Vec<bool>,
    pub(super) fencing: Vec<i64>,
    pub(super) lease_owner: Vec<Option<String>>,
    pub(super) lease_token: Vec<Option<String>>,
    pub(super) lease_fencing: Vec<Option<i64>>,
    pub(super) lease_claimed: Vec<Option<i64>>,
    pub(super) lease_expires: Vec<Option<i64>>,
    pub(super) types_key: Vec<String>,
    pub(super) wake_at: Vec<Option<i64>>,
    pub(super) caused_by: Vec<Option<String>>,
    pub(super) sweep_node: Vec<Option<String>>,
    pub(super) sweep_incarnation: Vec<Option<i64>>,
}

impl ProcessColumns {
    pub(super) fn push(&mut self, id: &str, entry: &Entry, ord: i64) -> std::result::Result<(), Fault> {
        let Derived {
            json,
            types_key,
            columns: d,
        } = derive(&entry.record)?;
        self.id.push(id.to_string());
        self.record.push(json);
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
        self.types_key.push(types_key);
        self.wake_at.push(d.wake_at);
        self.caused_by.push(d.caused_by);
        self.sweep_node.push(d.sweep_node);
        self.sweep_incarnation.push(d.sweep_incarnation);
        Ok(())
    }

    pub(super) fn params_insert(&self) -> Params<'_> {
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
            &self.wake_at,
            &self.caused_by,
            &self.sweep_node,
            &self.sweep_incarnation,
        ]
    }

    pub(super) fn params_update(&self) -> Params<'_> {
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
            &self.wake_at,
            &self.sweep_node,
            &self.sweep_incarnation,
        ]
    }
}
