//! Row plumbing every SQL store shares: the indexed columns a record derives,
//! the lease kept in columns, and integers in SQL's signed range.
//!
//! Invariant: plain conversions; no SQL dialect and no rule lives here.

use crate::fold;
use crate::model::{Lease, Originator, ProcessRecord, ProcessStatus, StatusFilter};

/// A `u64` time or counter as a signed SQL integer, saturated at `i64::MAX`
/// (292 million years in ms), which keeps the order.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A signed SQL integer back as a `u64` (negative values, never written, read as 0).
pub fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A count or limit as a signed SQL integer, saturated.
pub fn usize_to_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The stored status a filter selects; `None` for `any`.
pub fn status_label(status: StatusFilter) -> Option<&'static str> {
    match status {
        StatusFilter::Any => None,
        StatusFilter::Running => Some(ProcessStatus::Running.label()),
        StatusFilter::Completed => Some(ProcessStatus::Completed.label()),
        StatusFilter::Failed => Some(ProcessStatus::Failed.label()),
        StatusFilter::Cancelled => Some(ProcessStatus::Cancelled.label()),
        StatusFilter::Abandoned => Some(ProcessStatus::Abandoned.label()),
    }
}

/// The indexed columns a process row derives from its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexColumns {
    /// [`ProcessStatus::label`].
    pub status: &'static str,
    /// [`crate::model::Disposition::label`].
    pub disposition: &'static str,
    /// [`crate::model::ProcessInput::definition`], for the `definition` filter.
    pub definition: String,
    /// The originator's scope id, for the `originator` filter.
    pub originator: String,
    /// The originating session scope as JSON: the scope id alone is ambiguous
    /// when ids contain `/frame:`, so the provenance lens compares whole scopes.
    pub originator_scope: Option<String>,
    /// Whether the record shows a wait.
    pub waiting: bool,
    /// The parent process, for the `caused_by` filter.
    pub caused_by: Option<String>,
    /// Registration time, for the created range.
    pub created_at: i64,
    /// Terminal time, for retention.
    pub terminal_at: Option<i64>,
    /// The last event's sequence.
    pub last_sequence: i64,
    /// [`fold::is_run_candidate`]: the worklist index holds the row.
    pub run_candidate: bool,
    /// [`fold::is_abandon_candidate`].
    pub abandon_candidate: bool,
    /// [`fold::resumable_at`] when it is a time: a suspension's deadline. The
    /// claimable time of a row is its lease expiry, else this, else 0.
    pub wake_at: Option<i64>,
    /// [`fold::sweep_owner`]'s node: the sweep worklist index holds the row.
    pub sweep_node: Option<String>,
    /// [`fold::sweep_owner`]'s incarnation.
    pub sweep_incarnation: Option<i64>,
}

impl IndexColumns {
    /// The columns of `record`.
    pub fn of(record: &ProcessRecord) -> serde_json::Result<Self> {
        let sweep = fold::sweep_owner(record);
        Ok(Self {
            status: record.status.label(),
            disposition: record.disposition.label(),
            definition: record.input.definition(),
            originator: record.provenance.originator.scope_id(),
            originator_scope: match &record.provenance.originator {
                Originator::Session { scope } => Some(serde_json::to_string(scope)?),
                Originator::Host { .. } => None,
            },
            waiting: record.wait.is_some(),
            caused_by: record
                .provenance
                .caused_by
                .as_ref()
                .and_then(crate::model::CausalRef::parent_process)
                .map(str::to_string),
            created_at: to_i64(record.created_at_ms),
            terminal_at: record.terminal_at_ms.map(to_i64),
            last_sequence: to_i64(record.last_sequence),
            run_candidate: fold::is_run_candidate(record),
            abandon_candidate: fold::is_abandon_candidate(record),
            wake_at: fold::resumable_at(record).filter(|t| *t > 0).map(to_i64),
            sweep_node: sweep.as_ref().map(|o| o.node.clone()),
            sweep_incarnation: sweep.map(|o| to_i64(o.incarnation)),
        })
    }
}

/// The lease stored in the lease columns of a row; `None` unless every column is set.
pub fn lease_from_columns(
    process_id: &str,
    owner_id: Option<String>,
    lease_token: Option<String>,
    fencing_token: Option<i64>,
    claimed_at: Option<i64>,
    expires_at: Option<i64>,
) -> Option<Lease> {
    Some(Lease {
        process_id: process_id.to_string(),
        owner_id: owner_id?,
        lease_token: lease_token?,
        fencing_token: from_i64(fencing_token?),
        claimed_at_ms: from_i64(claimed_at?),
        expires_at_ms: from_i64(expires_at?),
    })
}
