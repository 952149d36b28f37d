//! Row shapes shared by the batched writes and the reads: a process row and the
//! indexed columns derived from a record.

use std::collections::HashMap;

use cairn_core::events::EventTypes;
use cairn_core::model::{ProcessRecord, ProcessStatus, Tombstone};
use cairn_core::CairnError;
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

pub(crate) use cairn_core::ops::columns::remember_type_list as remember_types;
use cairn_core::ops::columns::{cached_type_list as cached_types, type_list_from_json, StoredRecord};

/// Empty the type-list cache (tests of the read-through path).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn forget_type_lists() {
    cairn_core::ops::columns::forget_type_lists();
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
        let list = type_list_from_json(&key, json)?;
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
