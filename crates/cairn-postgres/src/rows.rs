//! Row shapes shared by the batched writes and the reads: a process row and the
//! indexed columns derived from a record.

use std::collections::HashMap;
use std::sync::LazyLock;

use cairn_core::events::{to_json_without_types, EventType, EventTypes};
use cairn_core::fold;
use cairn_core::model::{Lease, Originator, ProcessRecord, ProcessStatus, StatusFilter, Tombstone};
use cairn_core::CairnError;
use parking_lot::RwLock;
use tokio_postgres::Row;

use crate::conn::Conn;
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

/// The indexed columns derived from a record, and its stored JSON (its type
/// list stored apart, named by `types_key`).
pub(crate) struct Derived {
    pub json: String,
    pub types_key: String,
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
        json: to_json_without_types(record)?,
        types_key: record.event_types.key().to_string(),
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
