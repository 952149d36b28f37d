//! Row plumbing every SQL store shares: the indexed columns a record derives,
//! the lease kept in columns, integers in SQL's signed range, and a record
//! stored without its type list, which lives once per list (ADR 0008).
//!
//! Invariant: plain conversions; no SQL dialect and no rule lives here.

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::RwLock;

use crate::events::{EventType, EventTypes};
use crate::fold;
use crate::model::{Lease, Originator, ProcessRecord, ProcessStatus, StatusFilter};
use crate::CairnError;

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
    /// [`fold::due_at`] when it is a time: a suspension's deadline. The
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
            wake_at: fold::due_at(record).filter(|t| *t > 0).map(to_i64),
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

/// A record as a row stores it: every field but the declared event types,
/// which live once in `type_lists` under the row's `types_key` (ADR 0008) and
/// are written here as `[]` so the JSON still decodes as a record.
///
/// It borrows the record's fields, so encoding copies nothing. A unit test
/// checks it writes exactly the record's JSON but for `event_types`, so a
/// field added to the record cannot be left out here unnoticed.
#[derive(serde::Serialize)]
pub struct StoredRecord<'a> {
    id: &'a str,
    registration_hash: &'a str,
    status: &'a crate::model::ProcessStatus,
    outcome: &'a Option<crate::model::Outcome>,
    disposition: &'a crate::model::Disposition,
    input: &'a crate::model::ProcessInput,
    provenance: &'a crate::model::Provenance,
    wake_target: &'a Option<crate::model::SessionScope>,
    event_types: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    env_ref: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_ref: &'a Option<crate::model::ExternalRef>,
    wait: &'a Option<crate::model::WaitState>,
    lease: &'a Option<crate::model::LeaseView>,
    abandon_request: &'a Option<crate::model::AbandonRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_request: &'a Option<crate::model::CancelRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: &'a Option<crate::model::StartedFact>,
    created_at_ms: u64,
    updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal_at_ms: &'a Option<u64>,
    last_sequence: u64,
}

impl<'a> StoredRecord<'a> {
    /// The stored form of `r`, borrowing its fields.
    pub fn of(r: &'a ProcessRecord) -> Self {
        Self {
            id: &r.id,
            registration_hash: &r.registration_hash,
            status: &r.status,
            outcome: &r.outcome,
            disposition: &r.disposition,
            input: &r.input,
            provenance: &r.provenance,
            wake_target: &r.wake_target,
            event_types: [],
            env_ref: &r.env_ref,
            external_ref: &r.external_ref,
            wait: &r.wait,
            lease: &r.lease,
            abandon_request: &r.abandon_request,
            cancel_request: &r.cancel_request,
            started: &r.started,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            terminal_at_ms: &r.terminal_at_ms,
            last_sequence: r.last_sequence,
        }
    }
}

/// Type lists this OS process has read or written, by [`EventTypes::key`].
/// They are content-addressed, so one cache serves every store and schema.
static TYPE_LISTS: LazyLock<RwLock<HashMap<String, EventTypes>>> = LazyLock::new(Default::default);

/// Most type lists cached; past it the cache starts again (lists are re-read on demand).
const TYPE_LISTS_MAX: usize = 4096;

/// The list stored under `key`, when this OS process has read or written it.
pub fn cached_type_list(key: &str) -> Option<EventTypes> {
    TYPE_LISTS.read().get(key).cloned()
}

/// Remember a list this OS process wrote or read.
pub fn remember_type_list(list: &EventTypes) {
    let key = list.key();
    if TYPE_LISTS.read().contains_key(key) {
        return;
    }
    let mut cache = TYPE_LISTS.write();
    if cache.len() >= TYPE_LISTS_MAX {
        cache.clear();
    }
    cache.insert(key.to_string(), list.clone());
}

/// Forget every cached list (tests of a store's read-through path).
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub fn forget_type_lists() {
    TYPE_LISTS.write().clear();
}

/// Decode the stored list `json` named `key`, check that its content has that
/// address, and remember it. A list that does not match is a `storage` error.
pub fn type_list_from_json(key: &str, json: &str) -> Result<EventTypes, CairnError> {
    let types: Vec<EventType> = serde_json::from_str(json)
        .map_err(|e| CairnError::storage(format!("type list `{key}` is not a stored type list: {e}")))?;
    let list = EventTypes::new(types);
    if list.key() != key {
        return Err(CairnError::storage(format!(
            "type list `{key}` does not match its content address"
        )));
    }
    remember_type_list(&list);
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        AbandonRequest, CancelRequest, Disposition, ExternalRef, LeaseView, Registration, StartedFact, WaitState,
    };

    /// A record with every optional field set, so each one is serialized.
    fn full_record() -> ProcessRecord {
        let reg = Registration {
            id: "p-1".into(),
            input: crate::model::ProcessInput::External {
                metadata: serde_json::json!({"k": 1}),
            },
            disposition: Disposition::ExternallyOwned,
            event_types: vec![EventType::plain("note")],
            provenance: Default::default(),
            wake_target: None,
            env_ref: Some(format!("process-env:sha256:{}", "0".repeat(64))),
            external_ref: Some(ExternalRef {
                backend: "ci".into(),
                id: "7".into(),
                metadata: Some(serde_json::json!({"k": 1})),
            }),
        };
        let mut r = crate::fold::initial_record(&reg, 5).expect("record");
        r.outcome = Some(crate::model::Outcome::Success {
            value: serde_json::json!(1),
        });
        r.wake_target = Some(crate::model::SessionScope {
            session_id: "s".into(),
            agent_frame_id: None,
        });
        r.wait = Some(WaitState {
            kind: "signal".into(),
            name: Some("go".into()),
            ordinal: Some(1),
            until_ms: Some(7),
            ids: None,
            mode: None,
            signals: None,
            due_timer: false,
            woken: Some("signal".into()),
            since_ms: 6,
        });
        r.lease = Some(LeaseView {
            owner_id: "w".into(),
            expires_at_ms: 9,
            fencing_token: 2,
        });
        r.abandon_request = Some(AbandonRequest {
            requested_by: "h".into(),
            requested_at_ms: 7,
            reason: "r".into(),
        });
        r.cancel_request = Some(CancelRequest {
            reason: Some("c".into()),
            requested_at_ms: 7,
        });
        r.started = Some(StartedFact {
            owner_id: "w".into(),
            fencing_token: 2,
            attempt: 1,
            at_ms: 6,
        });
        r.terminal_at_ms = Some(8);
        r
    }

    #[test]
    fn a_stored_record_is_the_record_without_its_types() {
        let record = full_record();
        let mut expected = serde_json::to_value(&record).expect("record json");
        expected["event_types"] = serde_json::json!([]);
        let stored = serde_json::to_value(StoredRecord::of(&record)).expect("stored json");
        assert_eq!(stored, expected);
        // It decodes as the record with an empty list, which a load replaces.
        let back: ProcessRecord = serde_json::from_value(stored).expect("decodes");
        assert_eq!(back.id, record.id);
        assert!(back.event_types.is_empty());
    }
}
