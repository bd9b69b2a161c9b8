//! A filtered reader's first export: what it may read now, not the whole history.
//!
//! An export from the beginning of the history walks every row ever changed,
//! most of which a reader under a row filter may not see. A reader's first
//! filtered export walks instead, per table in export order:
//!
//! 1. the rows it may read: the live rows that pass its filter, found from the
//!    app table (so that indexes on the columns the filter reads find them), in
//!    rowid order; in a table it may read whole, every clock row, deletes
//!    included;
//! 2. the other rows it holds (its marks, see [`crate::filter`]), in key order:
//!    they go as deletes or evictions.
//!
//! So its cost follows what the reader may read and holds, not the size of the
//! table. The snapshot starts at a version; once it is done, the reader goes on
//! from that version like any other: a row changed meanwhile has a later version
//! and goes again.

use rusqlite::Connection;

use super::{
    Batch, BatchLimits, Cursor, Done, Scope, SiteDictionary, SnapshotEnd, SnapshotPart, decided,
    export_order, finish, row_size,
};
use crate::change::{Reads, SqliteReads, clock_row};
use crate::error::{Error, Result};
use crate::filter::{Gate, NewMark, RowFilter, RowFilters};
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::sql;
use crate::value::Value;
use crate::wire::{self, RowChange};

/// Whether a snapshot can walk `tables`: each has a rowid, its order.
pub(crate) fn applies(conn: &Connection, tables: &[TableSchema]) -> Result<bool> {
    let mut stmt = conn.prepare_cached(sql::IS_WITHOUT_ROWID)?;
    for table in tables {
        let without_rowid: bool = stmt.query_row([&table.name], |r| r.get(0))?;
        if without_rowid {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The next batch of `reader`'s snapshot through `filter`, from its start or
/// after `from`, within `limits`.
pub(crate) fn export(
    conn: &Connection,
    tables: &[TableSchema],
    from: Option<&SnapshotEnd>,
    reader: SiteId,
    limits: BatchLimits,
    filter: &RowFilters,
) -> Result<(Batch, Vec<NewMark>)> {
    let reads = SqliteReads::new(conn)?;
    let upto = reads.upto()?;
    // A snapshot past this database's history came from another database: start
    // over.
    let from = from.filter(|end| end.at <= upto);
    let at = from.map_or(upto, |end| end.at);
    let (tables, names) = export_order(tables);
    let mut walk = Walk {
        gate: Gate::new(&reads, filter, reader, 0, upto)?,
        reads: &reads,
        sites: SiteDictionary::new(&reads),
        reader,
        at,
        rows: Vec::new(),
        marks: Vec::new(),
        bytes: 0,
        limits,
    };
    let first = from.map_or(0, |end| names.partition_point(|n| *n < end.table));
    for (index, schema) in tables.iter().enumerate().skip(first) {
        let resume = from
            .filter(|end| end.table == names[index])
            .map(|e| &e.part);
        let stop = walk.table(conn, schema, index, resume)?;
        if let Some(part) = stop {
            let next = Cursor::snapshot(SnapshotEnd {
                at,
                table: names[index].clone(),
                part,
            });
            return walk.finish(&tables, upto, false, next);
        }
    }
    walk.finish(&tables, upto, at == upto, Cursor::at(at))
}

/// One batch of a snapshot being gathered.
struct Walk<'c, 'f> {
    gate: Gate<'f>,
    reads: &'c SqliteReads<'c>,
    sites: SiteDictionary<'c>,
    reader: SiteId,
    /// The version the snapshot started at.
    at: i64,
    rows: Vec<(RowChange, bool)>,
    /// The marks of the rows walked.
    marks: Vec<NewMark>,
    bytes: usize,
    limits: BatchLimits,
}

impl Walk<'_, '_> {
    /// Walks one table (from `resume`, if the batch before stopped in it) until
    /// the batch is full; `Some` says where it stopped.
    fn table(
        &mut self,
        conn: &Connection,
        schema: &TableSchema,
        index: usize,
        resume: Option<&SnapshotPart>,
    ) -> Result<Option<SnapshotPart>> {
        let filter = self.gate.filter_of(schema);
        let (sql, params) = match filter {
            RowFilter::All => (None, &[][..]),
            RowFilter::Nothing => (Some("0"), &[][..]),
            RowFilter::Where { sql, params } => (Some(sql.as_str()), params.as_slice()),
        };
        if !matches!(resume, Some(SnapshotPart::Held(_))) && filter != &RowFilter::Nothing {
            let after = match resume {
                Some(SnapshotPart::Readable(rowid)) => *rowid,
                _ => i64::MIN,
            };
            let query = sql::snapshot_rows(schema, sql, params.len());
            let mut stmt = conn.prepare_cached(&query)?;
            let after = Value::Integer(after);
            let mut found =
                stmt.query(rusqlite::params_from_iter(params.iter().chain([&after])))?;
            let position =
                sql::ClockLayout::changes(schema).after(schema.value_columns().count()) + 3;
            while let Some(found) = found.next()? {
                let rowid: i64 = found.get(position)?;
                if self.add(schema, index, clock_row(found, schema, 0, true)?)? {
                    return Ok(Some(SnapshotPart::Readable(rowid)));
                }
            }
        }
        // Every row of the table went (deletes too) with the readable ones; a
        // reader the site dictionary does not know holds nothing.
        let (Some(sql), Some(reader)) = (sql, self.gate.reader()) else {
            return Ok(None);
        };
        let after = match resume {
            Some(SnapshotPart::Held(key)) => key.clone(),
            _ => Vec::new(),
        };
        // The rows this snapshot sent are left out: they were readable, and any of
        // them that changed since has a later version, so it goes after the
        // snapshot. (A row held since an export at the snapshot's version has not
        // changed since, so it is still readable, unless it was evicted then.)
        let mut held = conn.prepare_cached(sql::HELD_TO_CHECK)?;
        let table = schema.name.to_ascii_lowercase();
        let mut keys = held.query((reader, &table, after, self.at))?;
        let mut by_key =
            conn.prepare_cached(&sql::clock_row_filtered(schema, sql, params.len()))?;
        let key_columns = schema.key_columns().count();
        while let Some(key) = keys.next()? {
            let key: Vec<u8> = key.get(0)?;
            let pk = wire::decode_key(&key, key_columns).map_err(|e| Error::Corrupt {
                details: format!("a key held for a reader in {table}: {e}"),
            })?;
            let mut found = by_key.query(rusqlite::params_from_iter(params.iter().chain(&pk)))?;
            let Some(found) = found.next()? else {
                continue;
            };
            let row = clock_row(found, schema, 0, true)?;
            // A live row that passes went with the readable ones.
            if row.cl % 2 == 1 && row.exists && row.passes == Some(true) {
                continue;
            }
            if self.add(schema, index, row)? {
                return Ok(Some(SnapshotPart::Held(key)));
            }
        }
        Ok(None)
    }

    /// Adds what goes of `row` to the batch; true once the batch is full.
    fn add(
        &mut self,
        schema: &TableSchema,
        index: usize,
        row: crate::change::ClockRow,
    ) -> Result<bool> {
        let (decision, mark) = self.gate.decide(self.reads, schema, &row)?;
        self.marks.extend(mark);
        let scope = Scope::Except(self.reader);
        let Some((change, existence)) =
            decided(&mut self.sites, row, index as u32, decision, 0, scope)?
        else {
            return Ok(false);
        };
        self.bytes = self.bytes.saturating_add(row_size(&change));
        self.rows.push((change, existence));
        Ok(self.rows.len() >= self.limits.max_rows.max(1) || self.bytes >= self.limits.max_bytes)
    }

    fn finish(
        self,
        tables: &[&TableSchema],
        upto: i64,
        complete: bool,
        next: Cursor,
    ) -> Result<(Batch, Vec<NewMark>)> {
        let done = Done {
            base: 0,
            upto,
            complete,
            next,
        };
        let batch = finish(tables, self.reads, self.sites, self.rows.into_iter(), done)?;
        Ok((batch, self.marks))
    }
}
