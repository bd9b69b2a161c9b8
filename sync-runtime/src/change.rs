//! Change records: what the clock metadata says happened, one record per row event
//! or column value.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::error::Result;
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::site;
use crate::sql::{self, ClockLayout, TableSql};
use crate::value::{self, Value, ValueRef};

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

/// One clock row changed after some version, with its app row's current values.
pub(crate) struct ClockRow {
    pub(crate) pk: Vec<Value>,
    pub(crate) cl: i64,
    /// The version of the row's last change.
    pub(crate) version: i64,
    /// The version of the row's (re)creation.
    pub(crate) created: i64,
    /// Whether the app row exists (a live clock without it: the row went while
    /// tracking was off).
    pub(crate) exists: bool,
    /// The clock row's rowid: the order in which rows were first created here.
    pub(crate) rowid: i64,
    /// Whether the app row passes the row filter the scan evaluated (`None`
    /// without one).
    pub(crate) passes: Option<bool>,
    /// The value columns written after the version asked for.
    pub(crate) columns: Vec<ClockColumn>,
}

/// One value column of a [`ClockRow`].
pub(crate) struct ClockColumn {
    /// Index among the table's value columns.
    pub(crate) index: usize,
    pub(crate) col_version: i64,
    /// The version of the write.
    pub(crate) version: i64,
    pub(crate) value: Value,
}

/// Which clock rows a [`scan`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Range<'f> {
    /// Every row changed after a version.
    Since(i64),
    /// The rows whose `(version of the last change, rowid)` lies after `after` and
    /// up to `upto`, with the columns written after `base`: a page of a batched
    /// export.
    Page {
        base: i64,
        after: (i64, i64),
        upto: (i64, i64),
        /// A row filter (SQL and parameters) to evaluate on each row, in the same
        /// query: see [`ClockRow::passes`].
        filter: Option<PageFilter<'f>>,
    },
}

/// A row filter a page scan evaluates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageFilter<'f> {
    pub(crate) sql: &'f str,
    pub(crate) params: &'f [Value],
    /// Leave out the rows that fail, but those this site ordinal created.
    pub(crate) only_passing_for: Option<i64>,
}

/// Calls `each` for every clock row of `schema` in `range` (final versions only),
/// with the value columns written after the range's base version.
pub(crate) fn scan(
    conn: &Connection,
    schema: &TableSchema,
    range: Range<'_>,
    mut each: impl FnMut(ClockRow) -> Result<()>,
) -> Result<()> {
    // Each query is built only for its kind of range (a scan runs per page).
    let (mut stmt, since) = match range {
        Range::Since(since) => (
            conn.prepare_cached(&TableSql::of(schema).changes_since)?,
            since,
        ),
        Range::Page {
            base,
            filter: Some(filter),
            ..
        } => {
            let only_passing = filter.only_passing_for.is_some();
            let query = sql::changes_between_filtered(
                schema,
                filter.sql,
                filter.params.len(),
                only_passing,
            );
            (conn.prepare_cached(&query)?, base)
        }
        Range::Page { base, .. } => (
            conn.prepare_cached(&TableSql::of(schema).changes_between)?,
            base,
        ),
    };
    let filtered = matches!(
        range,
        Range::Page {
            filter: Some(_),
            ..
        }
    );
    let mut rows = match range {
        Range::Since(since) => stmt.query([since])?,
        Range::Page {
            after,
            upto,
            filter,
            ..
        } => {
            let bounds = [after.0, after.1, upto.0, upto.1].map(Value::Integer);
            let params = filter.map_or(&[][..], |f| f.params);
            let reader = filter.and_then(|f| f.only_passing_for).map(Value::Integer);
            let bound = params.iter().chain(&bounds).chain(reader.as_ref());
            stmt.query(rusqlite::params_from_iter(bound))?
        }
    };
    while let Some(row) = rows.next()? {
        each(clock_row(row, schema, since, filtered)?)?;
    }
    Ok(())
}

/// Reads a [`ClockRow`] from a result laid out as [`ClockLayout::changes`] says
/// (with whether it passes a row filter after the rowid, if `filtered`), with the
/// value columns written after `since`.
pub(crate) fn clock_row(
    row: &rusqlite::Row<'_>,
    schema: &TableSchema,
    since: i64,
    filtered: bool,
) -> Result<ClockRow> {
    let layout = ClockLayout::changes(schema);
    let keys = schema.key_columns().count();
    let values = schema.value_columns().count();
    let mut columns = Vec::new();
    for index in 0..values {
        let version: i64 = row.get(layout.col_dv(index))?;
        if version > since {
            columns.push(ClockColumn {
                index,
                col_version: row.get(layout.col_version(index))?,
                version,
                value: owned(row.get_ref(layout.value(index))?)?,
            });
        }
    }
    Ok(ClockRow {
        pk: (0..keys)
            .map(|i| owned(row.get_ref(i)?))
            .collect::<Result<Vec<_>>>()?,
        cl: row.get(layout.cl())?,
        version: row.get(layout.dv())?,
        created: row.get(layout.created())?,
        exists: row.get(layout.after(values))?,
        rowid: row.get(layout.after(values) + 1)?,
        passes: if filtered {
            Some(row.get(layout.after(values) + 2)?)
        } else {
            None
        },
        columns,
    })
}

/// Where the changes of each local version came from: the site that made them and
/// their version there. A version not listed in `_synced_versions` was made here.
/// Versions are looked up as needed and remembered.
pub(crate) struct Origins<'c> {
    conn: &'c Connection,
    /// The site ids looked up, by ordinal (the dictionary holds one per device
    /// a server ever heard of: it is not read whole).
    sites: RefCell<HashMap<i64, SiteId>>,
    /// The site ids this database had before (see [`crate::identity`]): up to
    /// which version each was its own, in version order.
    identities: Vec<(i64, i64)>,
    known: RefCell<HashMap<i64, (i64, i64)>>,
    /// The version looked up last, and its origin: rows come in version order,
    /// most of a version's after one another.
    last: Cell<Option<(i64, (i64, i64))>>,
}

impl<'c> Origins<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Self {
            conn,
            sites: RefCell::new(HashMap::new()),
            identities: site::identities(conn)?,
            known: RefCell::new(HashMap::new()),
            last: Cell::new(None),
        })
    }

    /// The site ordinal and the version there of local version `version`.
    pub(crate) fn of(&self, version: i64) -> Result<(i64, i64)> {
        if let Some((last, origin)) = self.last.get()
            && last == version
        {
            return Ok(origin);
        }
        if let Some(&origin) = self.known.borrow().get(&version) {
            self.last.set(Some((version, origin)));
            return Ok(origin);
        }
        let origin = self
            .conn
            .prepare_cached(sql::VERSION_ORIGIN)?
            .query_row([version], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?
            .unwrap_or_else(|| (self.made_under(version), version));
        self.known.borrow_mut().insert(version, origin);
        self.last.set(Some((version, origin)));
        Ok(origin)
    }

    /// The ordinal of the site id this database had when it made `version`: 0
    /// unless it has had another since.
    fn made_under(&self, version: i64) -> i64 {
        self.identities
            .iter()
            .find(|(upto, _)| version <= *upto)
            .map_or(0, |(_, site)| *site)
    }

    /// The site id of a site ordinal.
    pub(crate) fn site(&self, ordinal: i64) -> Result<SiteId> {
        if let Some(&site) = self.sites.borrow().get(&ordinal) {
            return Ok(site);
        }
        let site = site::of_ordinal(self.conn, ordinal)?
            .ok_or_else(|| corrupt(format!("site ordinal {ordinal} is not in _synced_sites")))?;
        self.sites.borrow_mut().insert(ordinal, site);
        Ok(site)
    }

    /// The site id that made local version `version`.
    pub(crate) fn site_of(&self, version: i64) -> Result<SiteId> {
        self.site(self.of(version)?.0)
    }
}

/// Reads every change after `since` in the given tables, ordered by `db_version`,
/// then by row (table order, then the row's creation order), with `seq` numbering
/// the rows of each version.
pub(crate) fn changes_since(
    conn: &Connection,
    tables: &[TableSchema],
    since: i64,
) -> Result<Vec<Change>> {
    let origins = Origins::new(conn)?;
    // The writer of a change is the origin of its version.
    let site = |version: i64| origins.site_of(version);
    // (db_version, table, clock rowid) orders the records; seq is assigned after.
    let mut records: Vec<((i64, usize, i64), Change)> = Vec::new();
    for (table_index, schema) in tables.iter().enumerate() {
        let names: Vec<_> = schema.value_columns().map(|c| c.name.to_string()).collect();
        scan(conn, schema, Range::Since(since), |row| {
            let mut record = |kind, db_version, site_id| {
                let change = Change {
                    table: schema.name.to_string(),
                    pk: row.pk.clone(),
                    kind,
                    cl: row.cl,
                    db_version,
                    seq: 0,
                    site_id,
                };
                records.push(((db_version, table_index, row.rowid), change));
            };
            if row.cl % 2 == 0 {
                // A deleted row's last change is its delete.
                record(ChangeKind::Delete, row.version, site(row.version)?);
                return Ok(());
            }
            if !row.exists {
                // The row went while tracking was off; it is recorded as deleted
                // when tracking comes back.
                return Ok(());
            }
            if row.created > since {
                record(ChangeKind::Insert, row.created, site(row.created)?);
            }
            for column in row.columns {
                let kind = ChangeKind::Set {
                    column: names[column.index].clone(),
                    value: column.value,
                    col_version: column.col_version,
                };
                record(kind, column.version, site(column.version)?);
            }
            Ok(())
        })?;
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

pub(crate) fn owned(raw: rusqlite::types::ValueRef<'_>) -> Result<Value> {
    value::from_sqlite(raw)
        .map(ValueRef::into_owned)
        .map_err(|e| corrupt(e.to_string()))
}

fn corrupt(details: String) -> crate::Error {
    crate::Error::Corrupt { details }
}

/// What an export reads, from whichever store holds the replica: the clock
/// rows changed in a range, where the pages of a batched export end, the
/// origins of local versions, and what a filtered reader holds. Every read of
/// one export sees one snapshot.
pub(crate) trait Reads {
    /// The version the export reads at: every change at or below it is final
    /// (committed, and no transaction still open will take a version below it).
    fn upto(&self) -> Result<i64>;

    /// How many times the database was vacuumed (see `Cursor::resumed`).
    fn vacuums(&self) -> Result<i64>;

    /// The site ordinal and the version there of local version `version`.
    fn origin(&self, version: i64) -> Result<(i64, i64)>;

    /// The site id of a site ordinal.
    fn site(&self, ordinal: i64) -> Result<SiteId>;

    /// The site id that made local version `version`.
    fn site_of(&self, version: i64) -> Result<SiteId> {
        self.site(self.origin(version)?.0)
    }

    /// The ordinal of `site`, if the dictionary has it.
    fn ordinal(&self, site: SiteId) -> Result<Option<i64>>;

    /// The `(version of the last change, creation order)` of up to `limit`
    /// clock rows of `schema` after `after`, at or below `upto` (at most
    /// [`upto`](Self::upto)), in that order: where the pages of a batched
    /// export end.
    fn page_keys(
        &self,
        schema: &TableSchema,
        after: (i64, i64),
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>>;

    /// Calls `each` for every clock row of `schema` in `range`, at or below
    /// [`upto`](Self::upto).
    fn scan(
        &self,
        schema: &TableSchema,
        range: Range<'_>,
        each: &mut dyn FnMut(ClockRow) -> Result<()>,
    ) -> Result<()>;

    /// The lowest version after `base` and at or below `end` (at most
    /// [`upto`](Self::upto)) of a change (a creation or a column's write) of
    /// a row of `schema` whose last change is above `end`: such a row is
    /// left out of an export that ends at `end`, and so is that change, so
    /// the export must end before it. `None` if there is none, as always
    /// where versions commit in order and `end` is [`upto`](Self::upto).
    fn hidden(&self, schema: &TableSchema, base: i64, end: i64) -> Result<Option<i64>>;

    /// Whether reader `reader` (a site ordinal) has any mark in `table`
    /// (lowercase).
    fn holds_in_table(&self, reader: i64, table: &str) -> Result<bool>;

    /// Reader `reader`'s mark on the row of `table` with key `key` (encoded):
    /// whether it is an eviction, and its version.
    fn held_mark(&self, reader: i64, table: &str, key: &[u8]) -> Result<Option<(bool, i64)>>;

    /// Whether the row of `schema` with key `pk` passes the row filter `sql`
    /// (with `params`), if the row exists.
    fn passes(
        &self,
        schema: &TableSchema,
        sql: &str,
        params: &[Value],
        pk: &[Value],
    ) -> Result<Option<bool>>;

    /// The clock row of `schema` with key `pk`, with every value column (as
    /// after version 0) and whether it passes the row filter `sql` (with
    /// `params`); `None` if the row has no clock.
    fn clock_row(
        &self,
        schema: &TableSchema,
        pk: &[Value],
        sql: &str,
        params: &[Value],
    ) -> Result<Option<ClockRow>>;
}

/// A SQLite database's [`Reads`], on the read transaction open on `conn`.
pub(crate) struct SqliteReads<'c> {
    conn: &'c Connection,
    origins: Origins<'c>,
}

impl<'c> SqliteReads<'c> {
    /// The reads of the database open on `conn`.
    pub(crate) fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Self {
            conn,
            origins: Origins::new(conn)?,
        })
    }
}

impl Reads for SqliteReads<'_> {
    fn upto(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?)
    }

    fn vacuums(&self) -> Result<i64> {
        Ok(self.conn.query_row(sql::VACUUMS, [], |r| r.get(0))?)
    }

    fn origin(&self, version: i64) -> Result<(i64, i64)> {
        self.origins.of(version)
    }

    fn site(&self, ordinal: i64) -> Result<SiteId> {
        self.origins.site(ordinal)
    }

    fn ordinal(&self, site: SiteId) -> Result<Option<i64>> {
        site::ordinal(self.conn, site)
    }

    fn page_keys(
        &self,
        schema: &TableSchema,
        after: (i64, i64),
        _upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>> {
        // Bounded by the database's version, which is `upto`: nothing above
        // it is hidden here (see `hidden`).
        let sql = TableSql::of(schema);
        let mut stmt = self.conn.prepare_cached(&sql.batch_keys)?;
        let rows = stmt.query_map((after.0, after.1, limit), |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn scan(
        &self,
        schema: &TableSchema,
        range: Range<'_>,
        each: &mut dyn FnMut(ClockRow) -> Result<()>,
    ) -> Result<()> {
        scan(self.conn, schema, range, each)
    }

    fn hidden(&self, _schema: &TableSchema, _base: i64, _end: i64) -> Result<Option<i64>> {
        // One writer at a time: no row's last change is above the version.
        Ok(None)
    }

    fn holds_in_table(&self, reader: i64, table: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(sql::HOLDS_IN_TABLE)?
            .query_row((reader, table), |r| r.get(0))?)
    }

    fn held_mark(&self, reader: i64, table: &str, key: &[u8]) -> Result<Option<(bool, i64)>> {
        Ok(self
            .conn
            .prepare_cached(sql::HELD_MARK)?
            .query_row((reader, table, key), |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn passes(
        &self,
        schema: &TableSchema,
        sql: &str,
        params: &[Value],
        pk: &[Value],
    ) -> Result<Option<bool>> {
        let query = sql::row_passes(schema, sql, params.len());
        let mut stmt = self.conn.prepare_cached(&query)?;
        let bound = params.iter().chain(pk);
        Ok(stmt
            .query_row(rusqlite::params_from_iter(bound), |r| r.get(0))
            .optional()?)
    }

    fn clock_row(
        &self,
        schema: &TableSchema,
        pk: &[Value],
        sql: &str,
        params: &[Value],
    ) -> Result<Option<ClockRow>> {
        let query = sql::clock_row_filtered(schema, sql, params.len());
        let mut stmt = self.conn.prepare_cached(&query)?;
        let mut found = stmt.query(rusqlite::params_from_iter(params.iter().chain(pk)))?;
        match found.next()? {
            Some(found) => Ok(Some(clock_row(found, schema, 0, true)?)),
            None => Ok(None),
        }
    }
}
