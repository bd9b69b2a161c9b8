//! Change records: what the clock metadata says happened, one record per row event
//! or column value.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::error::Result;
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::sql::TableSql;
use crate::value::{self, Value};

/// One tracked change, as [`SyncDb::changes_since`](crate::SyncDb::changes_since)
/// reports it.
///
/// Like a "changes" view: for every row changed after the given version it holds the
/// row's current state: a record of its existence (inserted or deleted) if that
/// changed, and the current value of every column written since, with the clocks
/// that decide merges.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The table.
    pub table: String,
    /// The row's primary key, in key order.
    pub pk: Vec<Value>,
    /// What changed.
    pub kind: ChangeKind,
    /// The row's causal length at this change: odd while it exists, even once deleted.
    pub cl: i64,
    /// The version of the transaction that made the change (on the replica that
    /// made it: this database's version for local changes).
    pub db_version: i64,
    /// The position of the row's latest change within its transaction.
    pub seq: i64,
    /// The replica that made the change.
    pub site_id: SiteId,
}

/// What a [`Change`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The row was created (or re-created after a delete).
    Insert,
    /// The row was deleted.
    Delete,
    /// A column was written.
    Set {
        /// The column.
        column: String,
        /// Its value.
        value: Value,
        /// The column's version: 1 on insert, +1 per write.
        col_version: i64,
    },
}

/// Reads every change after `since` in the given tables, ordered by
/// (`db_version`, `seq`).
pub(crate) fn changes_since(
    conn: &Connection,
    tables: &[TableSchema],
    since: i64,
) -> Result<Vec<Change>> {
    let sites = site_dictionary(conn)?;
    let site = |ordinal: i64| {
        sites
            .get(&ordinal)
            .copied()
            .ok_or_else(|| corrupt(format!("site ordinal {ordinal} is not in _synced_sites")))
    };
    let mut changes = Vec::new();
    for schema in tables {
        let sql = TableSql::new(schema);
        let keys = schema.key_columns().count();
        let value_columns: Vec<_> = schema.value_columns().collect();
        let mut stmt = conn.prepare_cached(&sql.changes_since)?;
        let mut rows = stmt.query([since])?;
        while let Some(row) = rows.next()? {
            let pk = (0..keys)
                .map(|i| owned(row.get_ref(i)?))
                .collect::<Result<Vec<_>>>()?;
            let cl: i64 = row.get(keys)?;
            let cl_site: i64 = row.get(keys + 1)?;
            let row_version: i64 = row.get(keys + 2)?;
            let seq: i64 = row.get(keys + 3)?;
            let exists: bool = row.get(keys + 4 + 4 * value_columns.len())?;
            let change = |kind, db_version, site_id| Change {
                table: schema.name.to_string(),
                pk: pk.clone(),
                kind,
                cl,
                db_version,
                seq,
                site_id,
            };
            if cl % 2 == 0 {
                // A deleted row's last change is its delete.
                changes.push(change(ChangeKind::Delete, row_version, site(cl_site)?));
                continue;
            }
            let mut columns = Vec::new();
            // The (re)creation of a row writes every column at col_version 1: a column
            // still at version 1 carries the version of the row's creation.
            let mut created = value_columns.is_empty().then_some(row_version);
            for (i, column) in value_columns.iter().enumerate() {
                let base = keys + 4 + 4 * i;
                let (col_version, dv): (i64, i64) = (row.get(base)?, row.get(base + 1)?);
                if dv <= since {
                    continue;
                }
                if col_version == 1 {
                    created = Some(created.map_or(dv, |c: i64| c.min(dv)));
                }
                if exists {
                    let kind = ChangeKind::Set {
                        column: column.name.to_string(),
                        value: owned(row.get_ref(base + 3)?)?,
                        col_version,
                    };
                    columns.push(change(kind, dv, site(row.get(base + 2)?)?));
                }
            }
            if let Some(version) = created {
                changes.push(change(ChangeKind::Insert, version, site(cl_site)?));
            }
            changes.extend(columns);
        }
    }
    changes.sort_by_key(|c| (c.db_version, c.seq));
    Ok(changes)
}

fn owned(raw: rusqlite::types::ValueRef<'_>) -> Result<Value> {
    value::from_sqlite(raw)
        .map(|v| v.to_owned())
        .map_err(|e| corrupt(e.to_string()))
}

fn corrupt(details: String) -> crate::Error {
    crate::Error::Corrupt { details }
}

fn site_dictionary(conn: &Connection) -> Result<HashMap<i64, SiteId>> {
    let mut stmt = conn.prepare_cached("SELECT ordinal, site_id FROM _synced_sites")?;
    let rows = stmt.query_map([], |row| {
        let ordinal: i64 = row.get(0)?;
        let bytes: Vec<u8> = row.get(1)?;
        Ok((ordinal, bytes))
    })?;
    let mut sites = HashMap::new();
    for row in rows {
        let (ordinal, bytes) = row?;
        if let Ok(bytes) = <[u8; 16]>::try_from(bytes.as_slice()) {
            sites.insert(ordinal, SiteId::from_bytes(bytes));
        }
    }
    Ok(sites)
}
