//! Row shapes shared by the batched writes and the reads: a process row and the
//! indexed columns derived from a record.

use cairn_core::fold;
use cairn_core::model::{Lease, Originator, ProcessRecord, ProcessStatus, StatusFilter, Tombstone};
use cairn_core::CairnError;
use tokio_postgres::Row;

use crate::Fault;

/// PostgreSQL integers are signed: store `u64` times and counters saturated at
/// `i64::MAX` (292 million years in milliseconds), which keeps their order.
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_sql_usize(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A lease expiry that the database stores exactly (see [`to_sql`]).
pub(crate) fn expiry(now: u64, ttl_ms: u64) -> u64 {
    now.saturating_add(ttl_ms).min(i64::MAX as u64)
}

pub(crate) fn status_label(status: StatusFilter) -> Option<&'static str> {
    match status {
        StatusFilter::Any => None,
        StatusFilter::Running => Some(ProcessStatus::Running.label()),
        StatusFilter::Completed => Some(ProcessStatus::Completed.label()),
        StatusFilter::Failed => Some(ProcessStatus::Failed.label()),
        StatusFilter::Cancelled => Some(ProcessStatus::Cancelled.label()),
        StatusFilter::Abandoned => Some(ProcessStatus::Abandoned.label()),
    }
}

/// A process row: the record (lease view filled in from the lease columns), the
/// full lease and the fencing counter.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub record: ProcessRecord,
    pub lease: Option<Lease>,
    pub fencing: u64,
}

impl Entry {
    /// Make the record's lease view agree with the lease (the columns are the truth).
    pub fn normalise(&mut self) {
        self.record.lease = self.lease.as_ref().map(Lease::view);
    }
}

/// The columns [`entry_from_row`] reads, in order, prefixed with the `p` alias.
pub(crate) const ENTRY_COLUMNS: &str = "p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
                                        p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter";

/// Decode the [`ENTRY_COLUMNS`] starting at column `at`.
pub(crate) fn entry_from_row(row: &Row, at: usize) -> Result<Entry, Fault> {
    let json: &str = row.try_get(at)?;
    let owner: Option<String> = row.try_get(at + 1)?;
    let token: Option<String> = row.try_get(at + 2)?;
    let fencing_token: Option<i64> = row.try_get(at + 3)?;
    let claimed: Option<i64> = row.try_get(at + 4)?;
    let expires: Option<i64> = row.try_get(at + 5)?;
    let fencing: i64 = row.try_get(at + 6)?;
    let record: ProcessRecord = serde_json::from_str(json)?;
    let lease = match (owner, token, fencing_token, claimed, expires) {
        (Some(owner_id), Some(lease_token), Some(f), Some(c), Some(x)) => Some(Lease {
            process_id: record.id.clone(),
            owner_id,
            lease_token,
            fencing_token: from_sql(f),
            claimed_at_ms: from_sql(c),
            expires_at_ms: from_sql(x),
        }),
        _ => None,
    };
    let mut entry = Entry {
        record,
        lease,
        fencing: from_sql(fencing),
    };
    entry.normalise();
    Ok(entry)
}

/// A tombstone row: `id, status, terminal_at_ms, pruned_at_ms`.
pub(crate) fn tombstone_from_row(row: &Row) -> Result<Tombstone, Fault> {
    let id: String = row.try_get(0)?;
    let status: &str = row.try_get(1)?;
    let status = ProcessStatus::parse(status)
        .ok_or_else(|| CairnError::storage(format!("tombstone of `{id}` has an unknown status `{status}`")))?;
    Ok(Tombstone {
        id,
        status,
        terminal_at_ms: from_sql(row.try_get(2)?),
        pruned_at_ms: from_sql(row.try_get(3)?),
    })
}

/// The indexed columns derived from a record, and its stored JSON (without lease).
pub(crate) struct Derived {
    pub json: String,
    pub status: &'static str,
    pub disposition: &'static str,
    pub definition: String,
    pub originator: String,
    pub originator_scope: Option<String>,
    pub waiting: bool,
    pub created_at: i64,
    pub terminal_at: Option<i64>,
    pub last_sequence: i64,
    pub run_candidate: bool,
    pub abandon_candidate: bool,
}

/// The stored JSON keeps whatever lease view the record carries: every load
/// replaces it from the lease columns ([`Entry::normalise`]), so encoding the
/// record as it is saves cloning it.
pub(crate) fn derive(record: &ProcessRecord) -> Result<Derived, Fault> {
    Ok(Derived {
        json: serde_json::to_string(record)?,
        status: record.status.label(),
        disposition: record.disposition.label(),
        definition: record.input.definition(),
        originator: record.provenance.originator.scope_id(),
        // The scope id alone is ambiguous when ids contain `/frame:`; the
        // provenance lens compares whole scopes, as the memory registry does.
        originator_scope: match &record.provenance.originator {
            Originator::Session { scope } => Some(serde_json::to_string(scope)?),
            Originator::Host { .. } => None,
        },
        waiting: record.wait.is_some(),
        created_at: to_sql(record.created_at_ms),
        terminal_at: record.terminal_at_ms.map(to_sql),
        last_sequence: to_sql(record.last_sequence),
        run_candidate: fold::is_run_candidate(record),
        abandon_candidate: fold::is_abandon_candidate(record),
    })
}
