//! The statements behind script modules (SPEC §14): content-addressed,
//! immutable rows of the `modules` table.

use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

use cairn_core::ops::columns::{from_i64 as from_sql, to_i64 as to_sql, usize_to_i64 as to_sql_usize};

use crate::store::R;

const MODULE_COLUMNS: &str = "module_ref, name, exports, created_at_ms";

fn module_info(row: &SqlRow<'_>) -> rusqlite::Result<(cairn_core::ModuleInfo, String)> {
    let exports: String = row.get(2)?;
    Ok((
        cairn_core::ModuleInfo {
            module_ref: row.get(0)?,
            name: row.get(1)?,
            exports: Vec::new(),
            created_at_ms: from_sql(row.get(3)?),
        },
        exports,
    ))
}

fn with_exports((mut info, exports): (cairn_core::ModuleInfo, String)) -> R<cairn_core::ModuleInfo> {
    info.exports = serde_json::from_str(&exports)?;
    Ok(info)
}

/// Store a module unless its ref is stored; whether this call stored it.
pub(crate) fn put_module(conn: &Connection, module: &cairn_core::Module) -> R<bool> {
    let exports = serde_json::to_string(&module.info.exports)?;
    let n = conn
        .prepare_cached(
            "INSERT INTO modules (module_ref, name, exports, source, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (module_ref) DO NOTHING",
        )?
        .execute(params![
            module.info.module_ref,
            module.info.name,
            exports,
            module.source,
            to_sql(module.info.created_at_ms)
        ])?;
    Ok(n == 1)
}

/// A stored module's info.
pub(crate) fn module_info_of(conn: &Connection, module_ref: &str) -> R<Option<cairn_core::ModuleInfo>> {
    let sql = format!("SELECT {MODULE_COLUMNS} FROM modules WHERE module_ref = ?1");
    conn.prepare_cached(&sql)?
        .query_row([module_ref], module_info)
        .optional()?
        .map(with_exports)
        .transpose()
}

/// One page of modules in ref order after `after`.
pub(crate) fn list_modules(conn: &Connection, after: Option<&str>, limit: usize) -> R<Vec<cairn_core::ModuleInfo>> {
    let sql = format!("SELECT {MODULE_COLUMNS} FROM modules WHERE module_ref > ?1 ORDER BY module_ref LIMIT ?2");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params![after.unwrap_or(""), to_sql_usize(limit)], module_info)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(with_exports).collect()
}

/// A stored module with its source.
pub(crate) fn get_module(conn: &Connection, module_ref: &str) -> R<Option<cairn_core::Module>> {
    let sql = format!("SELECT {MODULE_COLUMNS}, source FROM modules WHERE module_ref = ?1");
    conn.prepare_cached(&sql)?
        .query_row([module_ref], |row| Ok((module_info(row)?, row.get::<_, String>(4)?)))
        .optional()?
        .map(|(info, source)| {
            Ok(cairn_core::Module {
                info: with_exports(info)?,
                source,
            })
        })
        .transpose()
}
