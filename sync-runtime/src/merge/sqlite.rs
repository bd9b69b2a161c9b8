//! The merge's storage in a SQLite database (see [`Storage`]): statements
//! prepared once per payload and table, rows read one by one through them
//! (a read costs a microsecond or two in-process, so sets bring nothing),
//! and writes gathered into multi-row upserts.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::sync::Arc;

use rusqlite::{CachedStatement, Connection, OptionalExtension};

use super::storage::{Clock, Storage};
use crate::change::Origins;
use crate::error::{Error, Result};
use crate::filter::{self, RowFilter};
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::site;
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::value::{self, Value};
use crate::wire;

thread_local! {
    /// The rows this thread's open transaction evicted (their row and clock
    /// deleted), which the commit's change event lists: no clock is left to
    /// list them from.
    static EVICTED: RefCell<Vec<(String, Vec<Value>)>> = const { RefCell::new(Vec::new()) };
}

/// Takes the rows this thread's transaction evicted (see [`EVICTED`]).
pub(crate) fn take_evicted() -> Vec<(String, Vec<Value>)> {
    EVICTED.with_borrow_mut(std::mem::take)
}

/// A SQLite database as the merge's storage, inside the caller's write
/// transaction on `conn`.
pub(crate) struct SqliteStorage<'c> {
    conn: &'c Connection,
    tables: Vec<Table<'c>>,
    origins: Origins<'c>,
    /// The version given out last: the database's version until the merge
    /// gives out one (read when first needed).
    last_version: Option<i64>,
}

impl<'c> SqliteStorage<'c> {
    /// The storage of the database open on `conn`.
    pub(crate) fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Self {
            conn,
            tables: Vec::new(),
            origins: Origins::new(conn)?,
            last_version: None,
        })
    }
}

/// A table prepared for the merge: its descriptor, and the statements the
/// merge of its rows runs, held for the whole payload (taken from the
/// connection's cache for each row, they cost a sixth of a large merge: the
/// cache finds a statement by its text).
struct Table<'c> {
    schema: TableSchema,
    sql: Arc<TableSql>,
    /// Lowercase, as `_synced_held` names tables.
    name: String,
    read_clock: CachedStatement<'c>,
    read_row: CachedStatement<'c>,
    write_row: Gathered<'c>,
    write_clock: Gathered<'c>,
}

impl Storage for SqliteStorage<'_> {
    fn tables(&mut self) -> Result<Vec<TableSchema>> {
        tracking::synced_tables(self.conn, false)
    }

    fn prepare(&mut self, schema: &TableSchema, rows: usize) -> Result<()> {
        let conn = self.conn;
        let sql = TableSql::of(schema);
        self.tables.push(Table {
            schema: schema.clone(),
            name: schema.name.to_ascii_lowercase(),
            read_clock: conn.prepare_cached(&sql.merge_read_clock)?,
            read_row: conn.prepare_cached(&sql.select_by_key)?,
            write_row: Gathered::new(conn, &sql.merge_write_row, rows)?,
            write_clock: Gathered::new(conn, &sql.merge_write_clock, rows)?,
            sql,
        });
        Ok(())
    }

    fn current_version(&mut self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?)
    }

    fn new_version(&mut self) -> Result<i64> {
        let last = match self.last_version {
            Some(last) => last,
            None => self.current_version()?,
        };
        // Local versions grow by one per transaction, far from i64::MAX.
        let next = last.checked_add(1).ok_or_else(|| Error::Corrupt {
            details: "the database version would overflow".into(),
        })?;
        self.last_version = Some(next);
        Ok(next)
    }

    fn version_mark(&mut self) -> i64 {
        // Before the first version, any mark below the next one does.
        self.last_version.unwrap_or(0)
    }

    fn forget_versions_after(&mut self, mark: i64) {
        // A mark of 0 was taken before any version was given out: the next
        // one is read again.
        self.last_version = self.last_version.filter(|_| mark > 0).map(|_| mark);
    }

    fn begin_applying(&mut self) -> Result<()> {
        self.conn.execute(sql::BEGIN_APPLYING, [])?;
        Ok(())
    }

    fn end_applying(&mut self) -> Result<()> {
        self.conn.execute(sql::END_APPLYING, [])?;
        if let Some(version) = self.last_version {
            self.conn.execute(sql::SET_VERSION, [version])?;
        }
        Ok(())
    }

    fn site_ordinals(&mut self, sites: &[SiteId]) -> Result<Vec<i64>> {
        site::local_sites(self.conn, sites)
    }

    fn reused_site(&mut self, device: SiteId, claimed: Option<i64>) -> Result<Option<String>> {
        site::reused_site(self.conn, device, claimed)
    }

    fn skipped(&mut self, site: i64, since: i64) -> Result<()> {
        self.conn
            .prepare_cached(sql::SKIPPED)?
            .execute((site, since))?;
        Ok(())
    }

    fn peer_seen(&mut self, site: i64) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(sql::PEER_SEEN)?
            .query_row([site], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn set_peer_seen(&mut self, site: i64, upto: i64) -> Result<()> {
        self.conn
            .prepare_cached(sql::SET_PEER_SEEN)?
            .execute((site, upto))?;
        Ok(())
    }

    fn lock_rows(&mut self, _rows: &[(usize, &[Value])]) -> Result<()> {
        // The write transaction holds the whole database.
        Ok(())
    }

    fn read_clocks(&mut self, table: usize, keys: &[&[Value]]) -> Result<Vec<Option<Clock>>> {
        let table = &mut self.tables[table];
        let layout = table.sql.merge_clock_layout;
        let value_count = table.schema.value_columns().count();
        keys.iter()
            .map(|key| {
                let mut rows = table.read_clock.query(rusqlite::params_from_iter(*key))?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let columns = (0..value_count)
                    .map(|i| Ok((row.get(layout.col_version(i))?, row.get(layout.col_dv(i))?)))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Some(Clock {
                    cl: row.get(layout.cl())?,
                    dv: row.get(layout.dv())?,
                    created: row.get(layout.created())?,
                    columns,
                }))
            })
            .collect()
    }

    fn read_rows(&mut self, table: usize, keys: &[&[Value]]) -> Result<Vec<Option<Vec<Value>>>> {
        let table = &mut self.tables[table];
        let schema = &table.schema;
        keys.iter()
            .map(|key| {
                let mut rows = table.read_row.query(rusqlite::params_from_iter(*key))?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let mut values = Vec::with_capacity(schema.columns.len());
                for (i, column) in schema.columns.iter().enumerate() {
                    if !column.primary_key {
                        let value = value::from_sqlite(row.get_ref(i)?).map_err(|source| {
                            Error::Decode {
                                table: schema.name.to_string(),
                                key: key.to_vec(),
                                column: column.name.to_string(),
                                source,
                            }
                        })?;
                        values.push(value.into_owned());
                    }
                }
                Ok(Some(values))
            })
            .collect()
    }

    fn write_row<V: Borrow<Value>>(
        &mut self,
        table: usize,
        key: &[Value],
        values: &[V],
    ) -> Result<()> {
        let table = &mut self.tables[table];
        // In the table's column order: no list is made per row.
        let (mut keys, mut rest) = (key.iter(), values.iter().map(Borrow::borrow));
        let columns = &table.schema.columns;
        table.write_row.row(|bind| {
            for column in columns.iter() {
                let value = if column.primary_key {
                    keys.next()
                } else {
                    rest.next()
                };
                bind(value.unwrap_or(&Value::Null))?;
            }
            Ok(())
        })
    }

    fn write_clock(&mut self, table: usize, key: &[Value], clock: &Clock) -> Result<()> {
        self.tables[table].write_clock.row(|bind| {
            for value in key {
                bind(value)?;
            }
            for number in [clock.cl, clock.dv, clock.created] {
                bind(&number)?;
            }
            for (col_version, version) in &clock.columns {
                bind(col_version)?;
                bind(version)?;
            }
            Ok(())
        })
    }

    fn delete_row(&mut self, table: usize, key: &[Value]) -> Result<bool> {
        let deleted = self
            .conn
            .prepare_cached(&self.tables[table].sql.delete)?
            .execute(rusqlite::params_from_iter(key))?;
        Ok(deleted > 0)
    }

    fn delete_clock(&mut self, table: usize, key: &[Value]) -> Result<bool> {
        let deleted = self
            .conn
            .prepare_cached(&self.tables[table].sql.delete_clock)?
            .execute(rusqlite::params_from_iter(key))?;
        Ok(deleted > 0)
    }

    fn forgotten(&mut self, table: usize, key: &[Value]) {
        let name = self.tables[table].schema.name.to_string();
        EVICTED.with_borrow_mut(|evicted| evicted.push((name, key.to_vec())));
    }

    fn flush(&mut self) -> Result<()> {
        for table in &mut self.tables {
            table.write_row.flush()?;
            table.write_clock.flush()?;
        }
        Ok(())
    }

    fn site_of_version(&mut self, version: i64) -> Result<SiteId> {
        self.origins.site_of(version)
    }

    fn add_version_origin(&mut self, version: i64, site: i64, origin_version: i64) -> Result<()> {
        self.conn
            .prepare_cached(sql::ADD_VERSION_ORIGIN)?
            .execute((version, site, origin_version))?;
        Ok(())
    }

    fn made_elsewhere(&mut self, version: i64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(sql::MADE_ELSEWHERE)?
            .query_row([version], |r| r.get(0))?)
    }

    fn earlier_identity_upto(&mut self) -> Result<Option<i64>> {
        Ok(site::identities(self.conn)?.last().map(|(upto, _)| *upto))
    }

    fn passes(&mut self, table: usize, filter: &RowFilter, key: &[Value]) -> Result<Option<bool>> {
        filter::passes(self.conn, &self.tables[table].schema, filter, key)
    }

    fn savepoint(&mut self) -> Result<()> {
        self.conn.prepare_cached(sql::ROW_SAVEPOINT)?.execute([])?;
        Ok(())
    }

    fn roll_back_savepoint(&mut self) -> Result<()> {
        self.conn.prepare_cached(sql::ROW_ROLLBACK)?.execute([])?;
        self.conn.prepare_cached(sql::ROW_RELEASE)?.execute([])?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.conn.prepare_cached(sql::ROW_RELEASE)?.execute([])?;
        Ok(())
    }

    fn mark_held(&mut self, reader: i64, table: usize, key: &[Value]) -> Result<()> {
        let name = &self.tables[table].name;
        filter::mark_held(self.conn, reader, name, &wire::encode_key(key), 0)
    }
}

/// The most rows one statement writes; more saved little in a measure of a
/// million rows (a statement per row: 3.3 s; 8 rows: 2.1 s; 64: 1.9 s;
/// 128: 1.9 s).
const ROWS_PER_STATEMENT: usize = 64;

/// The most parameters a statement of [`Gathered`] binds: SQLite's smallest
/// default limit.
const PARAMETERS_PER_STATEMENT: usize = 32_766;

/// Rows to write gathered in one multi-row upsert (see [`sql::RowsUpsert`]):
/// each row is bound into the next free row of the statement as the merge
/// decides it, and the statement runs when every row of it is bound, or when
/// what was gathered must be read ([`Storage::flush`]). Rows are written
/// later than the merge decides them, never in another order that matters:
/// a payload carries each row once.
struct Gathered<'c> {
    statement: CachedStatement<'c>,
    /// Parameters of a row, its marker not counted.
    columns: usize,
    /// Rows of the statement.
    rows: usize,
    /// Rows bound since it last ran.
    bound: usize,
}
impl<'c> Gathered<'c> {
    /// The statement of `upsert` for a table of `rows` rows in the payload:
    /// as many rows as it has, up to [`ROWS_PER_STATEMENT`], in one of a few
    /// sizes so that the connection's statement cache keeps them.
    fn new(conn: &'c Connection, upsert: &sql::RowsUpsert, rows: usize) -> Result<Self> {
        let most = (PARAMETERS_PER_STATEMENT / (upsert.columns + 1)).clamp(1, ROWS_PER_STATEMENT);
        let rows = match rows {
            0 | 1 => 1,
            2..=8 => 8,
            _ => ROWS_PER_STATEMENT,
        }
        .min(most);
        Ok(Self {
            statement: conn.prepare_cached(&upsert.sql(rows))?,
            columns: upsert.columns,
            rows,
            bound: 0,
        })
    }

    /// Binds one row, its parameters given in order to `bind`'s binder.
    fn row(
        &mut self,
        bind: impl FnOnce(&mut dyn FnMut(&dyn rusqlite::ToSql) -> Result<()>) -> Result<()>,
    ) -> Result<()> {
        let first = self.bound * (self.columns + 1) + 1;
        self.statement.raw_bind_parameter(first, 1)?;
        let mut next = first + 1;
        let statement = &mut self.statement;
        bind(&mut |value| {
            statement.raw_bind_parameter(next, value)?;
            next += 1;
            Ok(())
        })?;
        let given = next - first - 1;
        if given != self.columns {
            return Err(rusqlite::Error::InvalidParameterCount(given, self.columns).into());
        }
        self.bound += 1;
        if self.bound == self.rows {
            self.statement.raw_execute()?;
            self.bound = 0;
        }
        Ok(())
    }

    /// Writes the rows bound, if any: the rows of the statement left unbound
    /// are marked as none.
    fn flush(&mut self) -> Result<()> {
        if self.bound == 0 {
            return Ok(());
        }
        for row in self.bound..self.rows {
            let marker = row * (self.columns + 1) + 1;
            self.statement
                .raw_bind_parameter(marker, rusqlite::types::Null)?;
        }
        self.statement.raw_execute()?;
        self.bound = 0;
        Ok(())
    }
}
