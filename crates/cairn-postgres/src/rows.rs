//! Row shapes shared by the batched writes and the reads: a process row and the
//! indexed columns derived from a record.

use std::collections::HashMap;
use std::sync::LazyLock;

use cairn_core::events::{EventType, EventTypes};
use cairn_core::model::{ProcessRecord, ProcessStatus, Tombstone};
use cairn_core::CairnError;
use parking_lot::RwLock;
use tokio_postgres::Row;

use crate::conn::Conn;
use crate::Fault;

pub(crate) use cairn_core::ops::columns::{
    from_i64 as from_sql, status_label, to_i64 as to_sql, usize_to_i64 as to_sql_usize,
};
use cairn_core::ops::columns::{lease_from_columns, IndexColumns};

/// A process row: the record (its lease view filled in from the lease
/// columns), the full lease and the fencing counter.
pub(crate) use cairn_core::ops::Row as Entry;

/// Type lists this OS process has read or written, by [`EventTypes::key`]. They
/// are content-addressed, so one cache serves every registry and schema.
static TYPE_LISTS: LazyLock<RwLock<HashMap<String, EventTypes>>> = LazyLock::new(Default::default);

/// Most type lists cached; past it the cache starts again (lists are re-read on demand).
const TYPE_LISTS_MAX: usize = 4096;

fn cached_types(key: &str) -> Option<EventTypes> {
    TYPE_LISTS.read().get(key).cloned()
}

/// Remember a list this process wrote or read.
pub(crate) fn remember_types(list: &EventTypes) {
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

/// Empty the type-list cache (tests of the read-through path).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn forget_type_lists() {
    TYPE_LISTS.write().clear();
}

const LOAD_TYPE_LISTS: &str = "SELECT key, types FROM type_lists WHERE key = ANY($1::text[])";

/// The columns [`entries_from_rows`] reads, in order, prefixed with the `p` alias.
pub(crate) const ENTRY_COLUMNS: &str = "p.record, p.lease_owner, p.lease_token, p.lease_fencing, \
                                        p.lease_claimed_at_ms, p.lease_expires_at_ms, p.fencing_counter, p.types_key";

/// Decode the [`ENTRY_COLUMNS`] of `rows` starting at column `at`. A record
/// names its type list by key (written since schema v3) or carries it inline
/// (older rows); lists not yet cached are read in one query on `conn`.
pub(crate) async fn entries_from_rows(conn: &Conn, rows: &[Row], at: usize) -> Result<Vec<Entry>, Fault> {
    let mut entries = Vec::with_capacity(rows.len());
    let mut missing: Vec<(usize, String)> = Vec::new();
    for row in rows {
        let (entry, key) = entry_from_row(row, at)?;
        if let Some(key) = key {
            missing.push((entries.len(), key));
        }
        entries.push(entry);
    }
    if missing.is_empty() {
        return Ok(entries);
    }
    let mut keys: Vec<&str> = missing.iter().map(|(_, k)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let stmt = conn.stmt(LOAD_TYPE_LISTS).await?;
    let mut found: HashMap<String, EventTypes> = HashMap::new();
    for row in conn.client.query(&stmt, &[&keys]).await? {
        let key: String = row.try_get(0)?;
        let json: &str = row.try_get(1)?;
        let list = EventTypes::new(serde_json::from_str::<Vec<EventType>>(json)?);
        if list.key() != key {
            return Err(CairnError::storage(format!("type list `{key}` does not match its content address")).into());
        }
        remember_types(&list);
        found.insert(key, list);
    }
    for (i, key) in missing {
        let list = found.get(&key).ok_or_else(|| {
            CairnError::storage(format!(
                "process `{}` names type list `{key}`, which is not stored",
                entries[i].record.id
            ))
        })?;
        entries[i].record.event_types = list.clone();
    }
    Ok(entries)
}

/// Decode one row's [`ENTRY_COLUMNS`] starting at column `at`; also answers the
/// key of a type list the cache does not hold (the record's list is then empty).
fn entry_from_row(row: &Row, at: usize) -> Result<(Entry, Option<String>), Fault> {
    let json: &str = row.try_get(at)?;
    let owner: Option<String> = row.try_get(at + 1)?;
    let token: Option<String> = row.try_get(at + 2)?;
    let fencing_token: Option<i64> = row.try_get(at + 3)?;
    let claimed: Option<i64> = row.try_get(at + 4)?;
    let expires: Option<i64> = row.try_get(at + 5)?;
    let fencing: i64 = row.try_get(at + 6)?;
    let types_key: Option<&str> = row.try_get(at + 7)?;
    let mut record: ProcessRecord = serde_json::from_str(json)?;
    let mut missing = None;
    match types_key {
        Some(key) => match cached_types(key) {
            Some(list) => record.event_types = list,
            None => missing = Some(key.to_string()),
        },
        None if record.event_types.is_empty() => {
            return Err(CairnError::storage(format!("process `{}` has no event types stored", record.id)).into());
        }
        None => {}
    }
    let lease = lease_from_columns(&record.id, owner, token, fencing_token, claimed, expires);
    let mut entry = Entry {
        record,
        lease,
        fencing: from_sql(fencing),
    };
    entry.normalise();
    Ok((entry, missing))
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

/// A record as a row stores it: every field but the declared event types,
/// which live once in `type_lists` under the row's `types_key` (ADR 0008) and
/// are written here as `[]` so the JSON still decodes as a record.
///
/// It borrows the record's fields, so encoding copies nothing. A unit test
/// checks it writes exactly the record's JSON but for `event_types`, so a
/// field added to the record cannot be left out here unnoticed.
#[derive(serde::Serialize)]
struct StoredRecord<'a> {
    id: &'a str,
    registration_hash: &'a str,
    status: &'a cairn_core::model::ProcessStatus,
    outcome: &'a Option<cairn_core::model::Outcome>,
    disposition: &'a cairn_core::model::Disposition,
    input: &'a cairn_core::model::ProcessInput,
    provenance: &'a cairn_core::model::Provenance,
    wake_target: &'a Option<cairn_core::model::SessionScope>,
    event_types: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    env_ref: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_ref: &'a Option<cairn_core::model::ExternalRef>,
    wait: &'a Option<cairn_core::model::WaitState>,
    lease: &'a Option<cairn_core::model::LeaseView>,
    abandon_request: &'a Option<cairn_core::model::AbandonRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_request: &'a Option<cairn_core::model::CancelRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: &'a Option<cairn_core::model::StartedFact>,
    created_at_ms: u64,
    updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal_at_ms: &'a Option<u64>,
    last_sequence: u64,
}

impl<'a> StoredRecord<'a> {
    fn of(r: &'a ProcessRecord) -> Self {
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

/// The stored JSON of a record (its type list stored apart, named by
/// `types_key`) and its indexed columns.
pub(crate) struct Derived {
    pub json: String,
    pub types_key: String,
    pub columns: IndexColumns,
}

/// The stored JSON keeps whatever lease view the record carries: every load
/// replaces it from the lease columns ([`Entry::normalise`](cairn_core::ops::Row::normalise)),
/// so encoding the record as it is saves cloning it.
pub(crate) fn derive(record: &ProcessRecord) -> Result<Derived, Fault> {
    Ok(Derived {
        json: serde_json::to_string(&StoredRecord::of(record))?,
        types_key: record.event_types.key().to_string(),
        columns: IndexColumns::of(record)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::model::{
        AbandonRequest, CancelRequest, Disposition, ExternalRef, LeaseView, Registration, StartedFact, WaitState,
    };

    /// A record with every optional field set, so each one is serialized.
    fn full_record() -> ProcessRecord {
        let reg = Registration {
            id: "p-1".into(),
            input: cairn_core::model::ProcessInput::External {
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
        let mut r = cairn_core::fold::initial_record(&reg, 5).expect("record");
        r.outcome = Some(cairn_core::model::Outcome::Success {
            value: serde_json::json!(1),
        });
        r.wake_target = Some(cairn_core::model::SessionScope {
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
