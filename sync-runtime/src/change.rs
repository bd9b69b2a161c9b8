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
    /// The position of the row among the rows changed by the transaction
    /// `db_version`: rows are ordered by table, then by when they were first
    /// created on this replica. Like the changes view it belongs to, it describes
    /// the current state, not the order of individual statements.
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

/// Reads every change after `since` in the given tables, ordered by `db_version`,
/// then by row (table order, then the row's creation order), with `seq` numbering
/// the rows of each version.
pub(crate) fn changes_since(
    conn: &Connection,
    tables: &[TableSchema],
    since: i64,
) -> Result<Vec<Change>> {
    let sites = site_dictionary(conn)?;
    let origins = version_origins(conn, since)?;
    // The writer of a change is the origin of its version (local unless listed).
    let site = |version: i64| {
        let ordinal = origins.get(&version).copied().unwrap_or(0);
        sites
            .get(&ordinal)
            .copied()
            .ok_or_else(|| corrupt(format!("site ordinal {ordinal} is not in _synced_sites")))
    };
    // (db_version, table, clock rowid) orders the records; seq is assigned after.
    let mut records: Vec<((i64, usize, i64), Change)> = Vec::new();
    for (table_index, schema) in tables.iter().enumerate() {
        let sql = TableSql::new(schema);
        let keys = schema.key_columns().count();
        let value_columns: Vec<_> = schema.value_columns().collect();
        let after_columns = keys + 3 + 3 * value_columns.len();
        let mut stmt = conn.prepare_cached(&sql.changes_since)?;
        let mut rows = stmt.query([since])?;
        while let Some(row) = rows.next()? {
            let pk = (0..keys)
                .map(|i| owned(row.get_ref(i)?))
                .collect::<Result<Vec<_>>>()?;
            let cl: i64 = row.get(keys)?;
            let row_version: i64 = row.get(keys + 1)?;
            let created: i64 = row.get(keys + 2)?;
            let exists: bool = row.get(after_columns)?;
            let rowid: i64 = row.get(after_columns + 1)?;
            let mut record = |kind, db_version, site_id| {
                let change = Change {
                    table: schema.name.to_string(),
                    pk: pk.clone(),
                    kind,
                    cl,
                    db_version,
                    seq: 0,
                    site_id,
                };
                records.push(((db_version, table_index, rowid), change));
            };
            if cl % 2 == 0 {
                // A deleted row's last change is its delete.
                record(ChangeKind::Delete, row_version, site(row_version)?);
                continue;
            }
            if !exists {
                // A live clock without its row: the row went while tracking was
                // off; it is recorded as deleted when tracking comes back.
                continue;
            }
            if created > since {
                record(ChangeKind::Insert, created, site(created)?);
            }
            for (i, column) in value_columns.iter().enumerate() {
                let base = keys + 3 + 3 * i;
                let (col_version, dv): (i64, i64) = (row.get(base)?, row.get(base + 1)?);
                if dv <= since {
                    continue;
                }
                let kind = ChangeKind::Set {
                    column: column.name.to_string(),
                    value: owned(row.get_ref(base + 2)?)?,
                    col_version,
                };
                record(kind, dv, site(dv)?);
            }
        }
    }
    records.sort_by_key(|(key, _)| *key);
    let mut seq = 0;
    let mut previous: Option<(i64, usize, i64)> = None;
    Ok(records
        .into_iter()
        .map(|(key, mut change)| {
            match previous {
                Some(p) if p == key => {}
                Some(p) if p.0 == key.0 => seq += 1,
                _ => seq = 0,
            }
            previous = Some(key);
            change.seq = seq;
            change
        })
        .collect())
}

fn owned(raw: rusqlite::types::ValueRef<'_>) -> Result<Value> {
    value::from_sqlite(raw)
        .map(|v| v.to_owned())
        .map_err(|e| corrupt(e.to_string()))
}

fn corrupt(details: String) -> crate::Error {
    crate::Error::Corrupt { details }
}

/// The origin site ordinal of the versions after `since` that were made elsewhere.
fn version_origins(conn: &Connection, since: i64) -> Result<HashMap<i64, i64>> {
    let mut stmt =
        conn.prepare_cached("SELECT db_version, site FROM _synced_versions WHERE db_version > ?1")?;
    let rows = stmt.query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
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
