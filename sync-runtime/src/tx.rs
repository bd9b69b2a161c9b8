//! Typed reads and writes inside one transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::model::{Patch, RowReader, Synced};
use crate::schema::TableSchema;
use crate::sql::{self, TableSql};
use crate::value::{Domain, Value, ValueRef};

/// A table registered with this database handle, with its statements.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) schema: TableSchema,
    pub(crate) sql: TableSql,
    /// The address of the static descriptor it was registered from, if any: a
    /// typed call with the same descriptor skips comparing the columns.
    pub(crate) source: Option<usize>,
    /// The domains of its key columns' types, in key order (none for a table
    /// registered by descriptor): the keys the app's raw SQL writes are checked
    /// against them.
    pub(crate) key_domains: &'static [Domain],
}

/// The app's own SQL while it runs, as the connection's hooks see it.
#[derive(Debug, Default)]
pub(crate) struct AppSql {
    /// Set while it runs: the authorizer then refuses transaction control.
    pub(crate) running: AtomicBool,
    /// Set when the app's SQL that may write ran in the transaction (or the
    /// runtime emptied tables whole): what the transaction changed may include
    /// what the update hook does not report (see
    /// [`Changed::complete`](crate::Changed::complete)).
    pub(crate) ran: AtomicBool,
    /// Set while a read runs ([`crate::read::read`]): the authorizer then
    /// also refuses what would change the connection (see
    /// [`crate::guard::changes_connection`]).
    pub(crate) reading: AtomicBool,
    /// Set once the app's SQL created a temporary object, which only this
    /// connection sees: reads stay on it from then on.
    pub(crate) temp: AtomicBool,
    /// Set while a statement whose keys are checked runs: the update hook then
    /// records the rows it inserts.
    pub(crate) checking: AtomicBool,
    /// The rows it inserted (table or clock table, rowid): the new keys it
    /// wrote, a clock row for a key change too.
    pub(crate) new_keys: Mutex<Vec<(String, i64)>>,
    /// What the statement being compiled while it runs writes, as the
    /// authorizer sees it (its triggers' writes included); `None` until the
    /// authorizer is called.
    pub(crate) compiled: Mutex<Option<Vec<Write>>>,
    /// What the authorizer refused of the app's statement being compiled: a
    /// change to the runtime's own objects (see [`Error::RuntimeObject`]).
    pub(crate) refused: Mutex<Option<String>>,
    /// The synced tables (lowercase), which the app's SQL may not alter,
    /// rename or drop (see [`note_synced_tables`]).
    pub(crate) synced: Mutex<Vec<String>>,
    /// Moves whenever the app's SQL changes the schema: the write sets of
    /// [`writes`](Self::writes) recorded before then are read again.
    pub(crate) epoch: AtomicU64,
    /// The write set of each statement text the app ran, and the epoch it was
    /// read at.
    pub(crate) writes: Mutex<WriteSets>,
}

/// Per statement text: the epoch its write set was read at, and the set.
pub(crate) type WriteSets = HashMap<String, (u64, Arc<[Write]>)>;

/// A write a statement can make: an insert into a table, or an update of one
/// of its columns (names in lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    Insert(String),
    Update(String, String),
}

/// The most statement texts whose write sets are kept; beyond, they are
/// forgotten and read again when run.
const KEPT_WRITE_SETS: usize = 256;

/// Tables registered with a database handle, by name.
pub(crate) type Registry = HashMap<String, Arc<Registered>>;

/// A transaction on a synced database, handed to the closure of
/// [`SyncDb::transaction`](crate::SyncDb::transaction).
///
/// Every write inside it, typed or raw, is tracked and gets the same `db_version`;
/// it commits when the closure returns `Ok` and rolls back (leaving no trace in the
/// change metadata) when it returns `Err` or panics.
///
/// ```
/// # use sync_runtime::{Synced, SyncDb, SyncId, params};
/// # #[derive(Synced, Debug, Clone, PartialEq)]
/// # #[synced(table = "todos")]
/// # struct Todo { #[synced(primary_key)] id: SyncId, title: String, done: bool }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sync_runtime::Result<()> {
/// let db = SyncDb::open_in_memory().await?;
/// db.register::<Todo>().await?;
/// let id = SyncId::new();
/// db.transaction(move |tx| {
///     tx.insert(&Todo { id, title: "milk".into(), done: false })?;
///     tx.execute_raw("UPDATE todos SET done = 1 WHERE id = ?1", params![id])?;
///     Ok::<_, sync_runtime::Error>(())
/// })
/// .await?;
/// assert!(db.get::<Todo>(&id).await?.unwrap().done);
/// # Ok(())
/// # }
/// ```
pub struct Transaction<'c> {
    conn: &'c Connection,
    registry: &'c Registry,
    user_sql: &'c AppSql,
    failed: bool,
    versions_set: bool,
}

impl Registered {
    pub(crate) fn new(
        schema: TableSchema,
        source: Option<usize>,
        key_domains: &'static [Domain],
    ) -> Arc<Self> {
        let sql = TableSql::new(&schema);
        Arc::new(Self {
            schema,
            sql,
            source,
            key_domains,
        })
    }
}

impl<'c> Transaction<'c> {
    pub(crate) fn new(conn: &'c Connection, registry: &'c Registry, user_sql: &'c AppSql) -> Self {
        Self {
            conn,
            registry,
            user_sql,
            failed: false,
            versions_set: false,
        }
    }

    /// The merge sets the database's version itself: the transaction then takes
    /// no version of its own.
    pub(crate) fn set_versions(&mut self) {
        self.versions_set = true;
    }

    pub(crate) fn versions_set(&self) -> bool {
        self.versions_set
    }

    /// Whether a statement of this transaction failed (its error may have been
    /// handled by the caller).
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    fn track<R>(&mut self, result: Result<R>) -> Result<R> {
        self.failed |= result.is_err();
        result
    }

    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    pub(crate) fn user_sql(&self) -> &'c AppSql {
        self.user_sql
    }

    pub(crate) fn registry(&self) -> &'c Registry {
        self.registry
    }

    fn table<T: Synced>(&self) -> Result<&'c Registered> {
        table_of(self.registry, T::SCHEMA)
    }

    /// Inserts a row. Fails with [`Error::Constraint`] if the key exists.
    pub fn insert<T: Synced>(&mut self, row: &T) -> Result<()> {
        let result = self
            .table::<T>()
            .and_then(|table| insert(self.conn, table, |i| row.column_value(i)));
        self.track(result)
    }

    /// Writes every column of an existing row (the row with `row`'s key); only the
    /// columns whose value differs are recorded as changed. Fails with
    /// [`Error::NotFound`] if there is no such row.
    ///
    /// Every column gets `row`'s value: read the row in the same transaction
    /// (with [`get`](Self::get)), so that it holds every edit merged so far (see
    /// [`SyncDb::update`](crate::SyncDb::update)).
    pub fn update<T: Synced>(&mut self, row: &T) -> Result<()> {
        let result = self
            .table::<T>()
            .and_then(|table| update(self.conn, table, |i| row.column_value(i)));
        self.track(result)
    }

    /// Changes the row with this key as `change` says, writing only the columns
    /// it changed (see [`SyncDb::modify`](crate::SyncDb::modify)); the row as
    /// changed, or `None` if there is no such row.
    pub fn modify<T: Synced>(
        &mut self,
        key: &T::Key,
        change: impl FnOnce(&mut T),
    ) -> Result<Option<T>> {
        let result = self
            .table::<T>()
            .and_then(|table| modify(self.conn, table, |i| T::key_value(key, i), change));
        self.track(result)
    }

    /// Writes the columns `patch` sets of the row with this key, and only
    /// those (see [`SyncDb::patch`](crate::SyncDb::patch)); whether there is
    /// such a row.
    pub fn patch<P: Patch>(&mut self, key: &<P::Row as Synced>::Key, patch: &P) -> Result<bool> {
        let result = table_of(self.registry, P::Row::SCHEMA).and_then(|table| {
            write_columns(
                self.conn,
                table,
                |i| P::Row::key_value(key, i),
                &patch.values(),
            )
        });
        self.track(result)
    }

    /// Inserts `row`, or writes every column of the row with its key if there
    /// is one (see [`SyncDb::upsert`](crate::SyncDb::upsert)); whether it
    /// inserted.
    pub fn upsert<T: Synced>(&mut self, row: &T) -> Result<bool> {
        let result = self
            .table::<T>()
            .and_then(|table| upsert(self.conn, table, |i| row.column_value(i)));
        self.track(result)
    }

    /// Inserts `row` unless a row with its key exists, which stays as it is;
    /// whether it inserted.
    pub fn insert_if_absent<T: Synced>(&mut self, row: &T) -> Result<bool> {
        let result = self
            .table::<T>()
            .and_then(|table| insert_if_absent(self.conn, table, |i| row.column_value(i)));
        self.track(result)
    }

    /// Deletes the row with this key; returns whether there was one.
    pub fn delete<T: Synced>(&mut self, key: &T::Key) -> Result<bool> {
        let result = self
            .table::<T>()
            .and_then(|table| delete(self.conn, table, |i| T::key_value(key, i)));
        self.track(result)
    }

    /// The row with this key, if any.
    pub fn get<T: Synced>(&mut self, key: &T::Key) -> Result<Option<T>> {
        get(self.conn, self.table::<T>()?, |i| T::key_value(key, i))
    }

    /// The rows matching an SQL filter, with `?N` parameters; see
    /// [`SyncDb::query`](crate::SyncDb::query).
    pub fn query<T: Synced>(
        &mut self,
        filter: &str,
        params: impl AsRef<[Value]>,
    ) -> Result<Vec<T>> {
        let table = self.table::<T>()?;
        query(self.conn, self.user_sql, table, filter, params.as_ref())
    }

    /// [`query`](Self::query) that sets aside the rows the struct cannot read;
    /// see [`SyncDb::query_readable`](crate::SyncDb::query_readable).
    pub fn query_readable<T: Synced>(
        &mut self,
        filter: &str,
        params: impl AsRef<[Value]>,
    ) -> Result<Readable<T>> {
        let table = self.table::<T>()?;
        query_rows(
            self.conn,
            self.user_sql,
            table,
            filter,
            params.as_ref(),
            true,
        )
    }

    /// Runs raw SQL (one statement) with parameters; returns the number of changed
    /// rows. Writes to synced tables are tracked like typed writes.
    pub fn execute_raw(&mut self, sql: &str, params: impl AsRef<[Value]>) -> Result<usize> {
        let result = execute_raw(
            self.conn,
            self.registry,
            self.user_sql,
            sql,
            params.as_ref(),
        );
        self.track(result)
    }
}

/// The registration of `schema`'s table, if it was registered with this very
/// descriptor (another struct for the same table name does not match).
pub(crate) fn table_of<'r>(registry: &'r Registry, schema: &TableSchema) -> Result<&'r Registered> {
    let not_registered = || Error::NotRegistered {
        table: schema.name.to_string(),
    };
    let table = registry
        .get(schema.name.as_ref())
        .map(Arc::as_ref)
        .ok_or_else(not_registered)?;
    let same =
        table.source == Some(schema as *const TableSchema as usize) || table.schema == *schema;
    if same {
        Ok(table)
    } else {
        Err(Error::SchemaMismatch {
            table: schema.name.to_string(),
            details: "it was registered with another struct or descriptor".into(),
        })
    }
}

/// Binds the values of a table's columns (or of its key's, `key_only`) to
/// `stmt`, refusing NaN, which SQLite would store as NULL.
fn bind<'v>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    table: &Registered,
    key_only: bool,
    value: impl Fn(usize) -> ValueRef<'v>,
) -> Result<()> {
    let columns = table
        .schema
        .columns
        .iter()
        .filter(|c| c.primary_key || !key_only);
    for (i, column) in columns.enumerate() {
        let value = value(i);
        if matches!(value, ValueRef::Real(r) if r.is_nan()) {
            return Err(Error::NotANumber {
                place: format!("column `{}` of table `{}`", column.name, table.schema.name),
            });
        }
        stmt.raw_bind_parameter(i + 1, value)?;
    }
    Ok(())
}

/// Refuses NaN among the parameters of the app's SQL.
fn check_params(params: &[Value]) -> Result<()> {
    match params
        .iter()
        .position(|p| matches!(p, Value::Real(r) if r.is_nan()))
    {
        Some(i) => Err(Error::NotANumber {
            place: format!("parameter ?{}", i + 1),
        }),
        None => Ok(()),
    }
}

pub(crate) fn insert<'v>(
    conn: &Connection,
    table: &Registered,
    value: impl Fn(usize) -> ValueRef<'v>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(&table.sql.insert)?;
    bind(&mut stmt, table, false, value)?;
    stmt.raw_execute()?;
    Ok(())
}

pub(crate) fn update<'v>(
    conn: &Connection,
    table: &Registered,
    value: impl Fn(usize) -> ValueRef<'v>,
) -> Result<()> {
    let not_found = || Error::NotFound {
        table: table.schema.name.to_string(),
    };
    let Some(sql) = &table.sql.update else {
        // A key-only table has nothing to update; the row must exist all the same.
        return if row_exists(conn, table, value)? {
            Ok(())
        } else {
            Err(not_found())
        };
    };
    let mut stmt = conn.prepare_cached(sql)?;
    bind(&mut stmt, table, false, value)?;
    match stmt.raw_execute()? {
        0 => Err(not_found()),
        _ => Ok(()),
    }
}

/// Reads the row with a key, lets `change` change it, and writes the columns
/// whose value it changed, and only those; the row as changed.
pub(crate) fn modify<'v, T: Synced>(
    conn: &Connection,
    table: &Registered,
    key: impl Fn(usize) -> ValueRef<'v>,
    change: impl FnOnce(&mut T),
) -> Result<Option<T>> {
    let Some(mut row) = get::<T>(conn, table, key)? else {
        return Ok(None);
    };
    let count = table.schema.columns.len();
    let before: Vec<Value> = (0..count)
        .map(|i| row.column_value(i).into_owned())
        .collect();
    change(&mut row);
    let changed: Vec<usize> = (0..count)
        .filter(|&i| row.column_value(i) != before[i].as_ref())
        .collect();
    if changed.iter().any(|&i| table.schema.columns[i].primary_key) {
        return Err(Error::KeyChanged {
            table: table.schema.name.to_string(),
        });
    }
    if changed.is_empty() {
        return Ok(Some(row));
    }
    let keys: Vec<usize> = (0..count)
        .filter(|&i| table.schema.columns[i].primary_key)
        .collect();
    let values: Vec<(usize, ValueRef<'_>)> =
        changed.iter().map(|&i| (i, row.column_value(i))).collect();
    write_columns(conn, table, |k| row.column_value(keys[k]), &values)?;
    Ok(Some(row))
}

/// Writes `values` (column index in table order, value) into the row with a
/// key, and only them; whether there is such a row.
pub(crate) fn write_columns<'v>(
    conn: &Connection,
    table: &Registered,
    key: impl Fn(usize) -> ValueRef<'v>,
    values: &[(usize, ValueRef<'_>)],
) -> Result<bool> {
    if values.is_empty() {
        return Ok(get_raw(conn, table, key, |_| Ok(()))?.is_some());
    }
    let columns: Vec<usize> = values.iter().map(|(i, _)| *i).collect();
    let mut stmt = conn.prepare_cached(&sql::update_columns(&table.schema, &columns))?;
    let keys = table.schema.key_columns().count();
    let key_values = (0..keys).map(|k| (usize::MAX, key(k)));
    let all = values.iter().copied().chain(key_values);
    for (p, (i, value)) in all.enumerate() {
        if matches!(value, ValueRef::Real(r) if r.is_nan()) {
            let column = table.schema.columns.get(i).map_or("", |c| &c.name);
            return Err(Error::NotANumber {
                place: format!("column `{column}` of table `{}`", table.schema.name),
            });
        }
        stmt.raw_bind_parameter(p + 1, value)?;
    }
    Ok(stmt.raw_execute()? > 0)
}

/// Whether the row whose columns `value` gives (in table order) exists, by
/// its key.
fn row_exists<'v>(
    conn: &Connection,
    table: &Registered,
    value: impl Fn(usize) -> ValueRef<'v>,
) -> Result<bool> {
    let keys: Vec<ValueRef<'v>> = table
        .schema
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.primary_key)
        .map(|(i, _)| value(i))
        .collect();
    Ok(get_raw(conn, table, |i| keys[i], |_| Ok(()))?.is_some())
}

/// Inserts a row, or writes every column of the row with its key; whether it
/// inserted.
pub(crate) fn upsert<'v>(
    conn: &Connection,
    table: &Registered,
    value: impl Fn(usize) -> ValueRef<'v> + Copy,
) -> Result<bool> {
    match update(conn, table, value) {
        Ok(()) => Ok(false),
        Err(Error::NotFound { .. }) => insert(conn, table, value).map(|()| true),
        Err(e) => Err(e),
    }
}

/// Inserts a row unless one with its key exists; whether it inserted.
pub(crate) fn insert_if_absent<'v>(
    conn: &Connection,
    table: &Registered,
    value: impl Fn(usize) -> ValueRef<'v> + Copy,
) -> Result<bool> {
    if row_exists(conn, table, value)? {
        return Ok(false);
    }
    insert(conn, table, value).map(|()| true)
}

pub(crate) fn delete<'v>(
    conn: &Connection,
    table: &Registered,
    key: impl Fn(usize) -> ValueRef<'v>,
) -> Result<bool> {
    let mut stmt = conn.prepare_cached(&table.sql.delete)?;
    bind(&mut stmt, table, true, key)?;
    Ok(stmt.raw_execute()? > 0)
}

pub(crate) fn get<'v, T: Synced>(
    conn: &Connection,
    table: &Registered,
    key: impl Fn(usize) -> ValueRef<'v>,
) -> Result<Option<T>> {
    get_raw(conn, table, key, |row| {
        T::from_row(&mut RowReader::new(row, &table.schema))
    })
}

fn get_raw<'v, R>(
    conn: &Connection,
    table: &Registered,
    key: impl Fn(usize) -> ValueRef<'v>,
    read: impl FnOnce(&rusqlite::Row<'_>) -> Result<R>,
) -> Result<Option<R>> {
    let mut stmt = conn.prepare_cached(&table.sql.select_by_key)?;
    bind(&mut stmt, table, true, key)?;
    let mut rows = stmt.raw_query();
    match rows.next()? {
        Some(row) => read(row).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn query<T: Synced>(
    conn: &Connection,
    user_sql: &AppSql,
    table: &Registered,
    filter: &str,
    params: &[Value],
) -> Result<Vec<T>> {
    query_rows(conn, user_sql, table, filter, params, false).map(|read| read.rows)
}

/// What [`SyncDb::query_readable`](crate::SyncDb::query_readable) read: the
/// rows the struct can read, and why each of the others cannot be.
#[derive(Debug)]
#[non_exhaustive]
pub struct Readable<T> {
    /// The rows read, in the query's order.
    pub rows: Vec<T>,
    /// One [`Error::Decode`] per row left out (naming its table, key and
    /// column), in the query's order.
    pub unreadable: Vec<Error>,
}

/// The rows of `table` matching `filter`; with `keep_going`, a row the
/// struct cannot read is set aside instead of failing the query.
pub(crate) fn query_rows<T: Synced>(
    conn: &Connection,
    user_sql: &AppSql,
    table: &Registered,
    filter: &str,
    params: &[Value],
    keep_going: bool,
) -> Result<Readable<T>> {
    let sql = sql::filtered_select(&table.sql.select, filter);
    as_user(user_sql, || {
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut read = Readable {
            rows: Vec::new(),
            unreadable: Vec::new(),
        };
        while let Some(row) = rows.next()? {
            match T::from_row(&mut RowReader::new(row, &table.schema)) {
                Ok(row) => read.rows.push(row),
                Err(e @ Error::Decode { .. }) if keep_going => read.unreadable.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok(read)
    })
}

/// Runs the app's SQL. Where a statement can write a key of a registered table
/// whose keys have a narrower domain than their storage type (it inserts into
/// the table, or updates one of its key columns, itself or through triggers),
/// it runs inside a savepoint, and the keys it inserted are checked after it:
/// one outside its domain undoes the statement and fails with
/// [`Error::InvalidKey`]. Other statements run without the savepoint. A
/// statement that fails on its own keeps SQLite's behaviour (what `OR FAIL`
/// keeps stays, `OR ROLLBACK` ends the transaction).
pub(crate) fn execute_raw(
    conn: &Connection,
    registry: &Registry,
    user_sql: &AppSql,
    sql: &str,
    params: &[Value],
) -> Result<usize> {
    check_params(params)?;
    user_sql.ran.store(true, Ordering::Relaxed);
    let run = || {
        as_user(user_sql, || {
            let mut stmt = conn.prepare_cached(sql)?;
            Ok(stmt.execute(rusqlite::params_from_iter(params))?)
        })
    };
    let checked = registry
        .values()
        .any(|t| t.key_domains.iter().any(|d| *d != Domain::Any));
    if !checked {
        return run();
    }
    let new_keys = || user_sql.new_keys.lock().unwrap_or_else(|e| e.into_inner());
    new_keys().clear();
    if !writes_checked_keys(&writes_of(conn, user_sql, sql)?, registry) {
        // The schema may have changed under the statement since its writes were
        // read (another connection's DDL): the rows it inserted say so.
        user_sql.checking.store(true, Ordering::Relaxed);
        let ran = run();
        user_sql.checking.store(false, Ordering::Relaxed);
        let mut inserted = std::mem::take(&mut *new_keys());
        let changed = ran?;
        inserted.retain(|(table, _)| {
            let table = table.strip_prefix(sql::CLOCK_PREFIX).unwrap_or(table);
            writes_checked_keys(&[Write::Insert(table.to_ascii_lowercase())], registry)
        });
        if !inserted.is_empty() {
            user_sql.writes_mut().remove(sql);
            check_keys(conn, registry, &inserted)?;
        }
        return Ok(changed);
    }
    conn.prepare_cached(sql::RAW_SAVEPOINT)?.execute([])?;
    user_sql.checking.store(true, Ordering::Relaxed);
    let ran = run();
    user_sql.checking.store(false, Ordering::Relaxed);
    let inserted = std::mem::take(&mut *new_keys());
    // A statement that ended the transaction took the savepoint with it.
    let open = !conn.is_autocommit();
    let changed = match ran {
        Ok(changed) => changed,
        Err(e) => {
            if open {
                conn.prepare_cached(sql::RAW_RELEASE)?.execute([])?;
            }
            return Err(e);
        }
    };
    let checked = check_keys(conn, registry, &inserted);
    if checked.is_err() {
        conn.prepare_cached(sql::RAW_ROLLBACK)?.execute([])?;
    }
    conn.prepare_cached(sql::RAW_RELEASE)?.execute([])?;
    checked.map(|()| changed)
}

impl AppSql {
    pub(crate) fn writes_mut(&self) -> std::sync::MutexGuard<'_, WriteSets> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `table` is a synced table.
    pub(crate) fn is_synced(&self, table: &str) -> bool {
        let synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        synced.iter().any(|t| t.eq_ignore_ascii_case(table))
    }
}

/// Reads which tables are synced, for the authorizer: when a file is opened
/// and whenever this handle registers or drops a table.
pub(crate) fn note_synced_tables(conn: &Connection, app: &AppSql) -> Result<()> {
    let names = conn
        .prepare_cached(sql::SYNCED_TABLE_NAMES)?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    *app.synced.lock().unwrap_or_else(|e| e.into_inner()) = names;
    Ok(())
}

/// What statement `sql` writes: read by compiling it once more under the
/// authorizer when it was not read since the app last changed the schema.
fn writes_of(conn: &Connection, user_sql: &AppSql, sql: &str) -> Result<Arc<[Write]>> {
    let epoch = user_sql.epoch.load(Ordering::Relaxed);
    if let Some((at, writes)) = user_sql.writes_mut().get(sql)
        && *at == epoch
    {
        return Ok(Arc::clone(writes));
    }
    let compiled = || user_sql.compiled.lock().unwrap_or_else(|e| e.into_inner());
    *compiled() = Some(Vec::new());
    let prepared = as_user(user_sql, || Ok(conn.prepare(sql).map(drop)?));
    let writes: Arc<[Write]> = compiled().take().unwrap_or_default().into();
    prepared?;
    let mut kept = user_sql.writes_mut();
    if kept.len() >= KEPT_WRITE_SETS {
        kept.clear();
    }
    kept.insert(sql.to_owned(), (epoch, Arc::clone(&writes)));
    Ok(writes)
}

/// Whether `writes` can write a key of a registered table whose keys are
/// checked.
fn writes_checked_keys(writes: &[Write], registry: &Registry) -> bool {
    let checked = |table: &str| {
        registry.values().find(|t| {
            t.schema.name.eq_ignore_ascii_case(table)
                && t.key_domains.iter().any(|d| *d != Domain::Any)
        })
    };
    writes.iter().any(|write| match write {
        Write::Insert(table) => checked(table).is_some(),
        Write::Update(table, column) => checked(table).is_some_and(|t| {
            t.schema
                .key_columns()
                .any(|c| c.name.eq_ignore_ascii_case(column))
        }),
    })
}

/// Where a written row's key is read from.
enum Lookup {
    Clock,
    Table,
}

/// Checks the keys of the rows `inserted` (table or clock table, rowid)
/// against their tables' key domains.
fn check_keys(conn: &Connection, registry: &Registry, inserted: &[(String, i64)]) -> Result<()> {
    for (written, rowid) in inserted {
        // A clock row (a new key, with tracking on, or a key change) or a row
        // of the table itself (tracking on or off).
        let (name, lookup) = match written.strip_prefix(sql::CLOCK_PREFIX) {
            Some(name) => (name, Lookup::Clock),
            None => (written.as_str(), Lookup::Table),
        };
        let Some(table) = registry
            .values()
            .find(|t| t.schema.name.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        if table.key_domains.iter().all(|d| *d == Domain::Any) {
            continue;
        }
        let by_rowid = match lookup {
            Lookup::Clock => &table.sql.clock_key_by_rowid,
            Lookup::Table => &table.sql.key_by_rowid,
        };
        let Some(key) = conn
            .prepare_cached(by_rowid)?
            .query_row([rowid], |row| {
                (0..table.key_domains.len())
                    .map(|i| row.get::<_, rusqlite::types::Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .optional()?
        else {
            // Deleted again by the same statement.
            continue;
        };
        let key = key.into_iter().map(|value| match value {
            rusqlite::types::Value::Null => Value::Null,
            rusqlite::types::Value::Integer(i) => Value::Integer(i),
            rusqlite::types::Value::Real(r) => Value::Real(r),
            rusqlite::types::Value::Text(t) => Value::Text(t),
            rusqlite::types::Value::Blob(b) => Value::Blob(b),
        });
        let columns = table.schema.key_columns();
        for ((column, domain), value) in columns.zip(table.key_domains).zip(key) {
            if !domain.admits(&value) {
                return Err(Error::InvalidKey {
                    table: table.schema.name.to_string(),
                    column: column.name.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Runs `f` with the app's SQL flag set: the connection's authorizer then refuses
/// transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints), which would
/// end the runtime's transaction halfway.
pub(crate) fn as_user<T>(user_sql: &AppSql, f: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Reset<'a>(&'a AtomicBool);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    let refused = || user_sql.refused.lock().unwrap_or_else(|e| e.into_inner());
    refused().take();
    user_sql.running.store(true, Ordering::Relaxed);
    let _reset = Reset(&user_sql.running);
    let result = f();
    user_sql.running.store(false, Ordering::Relaxed);
    match refused().take() {
        Some(action) if result.is_err() => Err(Error::RuntimeObject { action }),
        _ => result,
    }
}

#[cfg(test)]
mod tests {

    /// The update hook records the rows the app's SQL inserts only while a
    /// checked statement runs, which takes them: with no checked key
    /// registered, a raw statement's rows never pile up in `AppSql::new_keys`.
    #[tokio::test]
    async fn new_keys_do_not_pile_up_when_nothing_is_checked() {
        use crate::schema::{Algorithm, ColumnSchema, TableSchema};
        use crate::value::SqlType;
        let db = crate::SyncDb::open_in_memory().await.unwrap();
        let schema = TableSchema::new(
            "tags",
            Algorithm::Cls,
            vec![ColumnSchema::new("name", SqlType::Text).primary_key()],
        );
        db.register_schema(schema).await.unwrap();
        db.execute_raw(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO tags (name) SELECT 'tag ' || i FROM n",
            Vec::new(),
        )
        .await
        .unwrap();
        let left = db
            .call(|w| Ok(w.user_sql.new_keys.lock().unwrap().len()))
            .await
            .unwrap();
        assert_eq!(left, 0, "keys kept after the statement");
    }
}
