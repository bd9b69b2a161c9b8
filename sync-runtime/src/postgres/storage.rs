//! The merge's storage in PostgreSQL (see [`Storage`]): each set of rows
//! read in one statement (arrays of keys, unnested), rows and clocks written
//! in sets at each flush, inside the transaction the caller opened on a
//! pooled connection.
//!
//! The merge runs on a blocking thread; each statement blocks on the
//! runtime's handle, one round trip per set. Statements are prepared once a
//! connection (see [`super::prepared`]): a merge runs a few dozen, and
//! preparing each again cost a round trip and a plan.
//!
//! A large set of new rows is copied in by a task of its own while the
//! merge goes on with the next rows (see [`PgStorage::settle`]): PostgreSQL
//! writes one set while the merge decides the next.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::SinkExt;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;

use super::sql::{self, TableSql};
use super::value::{self, Arrays};
use super::{Connection, Db, held, pg_error, policy};
use crate::error::{Error, Result};
use crate::filter::RowFilter;
use crate::id::SiteId;
use crate::merge::storage::{Clock, Storage};
use crate::schema::TableSchema;
use crate::value::{SqlType, Value};

/// A database on PostgreSQL as the merge's storage, inside a transaction
/// open on `client`.
pub(crate) struct PgStorage<'a> {
    client: &'a Connection,
    runtime: &'a Handle,
    db: &'a Db,
    tables: Vec<Table>,
    /// The site id of each site ordinal looked up.
    sites: HashMap<i64, SiteId>,
    /// The origin site ordinal of each local version looked up.
    origins: HashMap<i64, i64>,
    /// The versions this transaction took and keeps (those a savepoint
    /// rolled back left out), in order.
    taken: Vec<i64>,
    /// The number of each table (which names its clock), by lowercase name,
    /// as [`Storage::tables`] read them.
    numbers: HashMap<String, i64>,
    /// The origins of the versions given out, written at the next flush:
    /// (version, site ordinal, version there).
    new_origins: Vec<(i64, i64, i64)>,
    /// The evaluator of row filters, once one was needed.
    evaluator: Option<policy::Evaluator>,
    /// The readers whose marks' lock this transaction holds (see `held`).
    readers_locked: HashSet<i64>,
    /// The last set being copied in (see [`settle`](Self::settle)).
    copying: RefCell<Option<Copying>>,
}

/// A set being copied in by a task of its own, once the sets before it
/// are: its error, or the first of theirs.
type Copying = JoinHandle<Result<()>>;

/// What a copy's task came to: its error, or the first of the copies' before
/// it.
async fn copied(task: Copying) -> Result<()> {
    task.await.unwrap_or_else(|failed| {
        Err(Error::Postgres {
            code: None,
            message: format!("a copy's task failed: {failed}"),
        })
    })
}

/// A table prepared for the merge, with the rows and clocks gathered.
struct Table {
    schema: TableSchema,
    sql: TableSql,
    rows: Gathered<Vec<Value>>,
    clocks: Gathered<Clock>,
    /// The encoded keys whose app rows did not exist when the rows were
    /// locked: missing still if their clocks are, once their keys' locks are
    /// held (every writer of a row writes its clock in the same
    /// transaction).
    rows_not_found: HashSet<Vec<u8>>,
}

/// What is gathered of one kind (rows or clocks) of a table: those known to
/// be new apart, as inserting them costs PostgreSQL a third less than
/// writing them whatever is there.
struct Gathered<T> {
    /// The encoded keys locked or read and found missing, and not written
    /// since: their writes are inserts.
    missing: HashSet<Vec<u8>>,
    /// Keys and what to insert.
    new: Vec<(Vec<Value>, T)>,
    /// Keys and what to write, whatever is there.
    written: Vec<(Vec<Value>, T)>,
}

impl<T> Default for Gathered<T> {
    fn default() -> Self {
        Self {
            missing: HashSet::new(),
            new: Vec::new(),
            written: Vec::new(),
        }
    }
}

impl<T> Gathered<T> {
    /// Gathers `item` for `key`; whether it is time to write.
    fn push(&mut self, key: &[Value], item: T) -> bool {
        let new = !self.missing.is_empty() && self.missing.remove(&crate::wire::encode_key(key));
        let to = if new {
            &mut self.new
        } else {
            &mut self.written
        };
        to.push((key.to_vec(), item));
        self.new.len() + self.written.len() >= GATHERED
    }
}

/// The fewest new rows (or clocks) copied in rather than inserted: `COPY`
/// costs PostgreSQL less a row, and a round trip more.
const COPIED: usize = 64;

/// The most rows gathered before they are written: a statement's arrays stay
/// a few megabytes.
const GATHERED: usize = 4096;

/// The most rows whose clocks (and values) are read in one statement: a
/// payload of up to this many reads before it writes, so that what it
/// copies in goes on while the merge decides the rest.
const ROWS_READ_TOGETHER: usize = 16_384;

impl<'a> PgStorage<'a> {
    /// The storage of `db`, in the transaction open on `client`.
    pub(crate) fn new(client: &'a Connection, runtime: &'a Handle, db: &'a Db) -> Self {
        Self {
            client,
            runtime,
            db,
            tables: Vec::new(),
            sites: HashMap::new(),
            origins: HashMap::new(),
            taken: Vec::new(),
            numbers: HashMap::new(),
            new_origins: Vec::new(),
            evaluator: None,
            readers_locked: HashSet::new(),
            copying: RefCell::new(None),
        }
    }

    /// The connection, once the sets being copied in are written (see
    /// [`settle`](Self::settle)): every statement but a copy goes through
    /// it.
    fn connection(&self) -> Result<&'a Connection> {
        self.settle()?;
        Ok(self.client)
    }

    /// Runs `statement` (see [`connection`](Self::connection)).
    fn query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        super::query(self.connection()?, self.runtime, statement, params)
    }

    /// [`query`](Self::query) for a statement that returns no rows.
    fn execute(&self, statement: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        super::execute(self.connection()?, self.runtime, statement, params)
    }

    /// Waits for the sets being copied in: the first error of theirs.
    ///
    /// They are copied in one after the other, each once the one before
    /// it succeeded, and no other statement is sent while any is on its
    /// way: a statement sent on a transaction that failed would fail in
    /// turn, and a COPY that fails before it starts leaves the client
    /// waiting for answers that do not come in the order it expects. So
    /// every statement waits for them first, as the end of a merge does,
    /// and no transaction ends with a copy still on its way.
    pub(crate) fn settle(&self) -> Result<()> {
        let Some(task) = self.copying.borrow_mut().take() else {
            return Ok(());
        };
        self.runtime.block_on(copied(task))
    }

    /// The last version this transaction took, if it took any.
    pub(crate) fn last_version(&self) -> Option<i64> {
        self.taken.last().copied()
    }

    /// The version before this transaction's first, if it took every
    /// version from there to its last: no other transaction made a change
    /// between them.
    pub(crate) fn took_all_since(&self) -> Option<i64> {
        let (first, last) = (*self.taken.first()?, *self.taken.last()?);
        (usize::try_from(last - first + 1) == Ok(self.taken.len())).then_some(first - 1)
    }

    /// Writes the rows, then the clocks, gathered for `table`: the new ones
    /// inserted, the others written whatever is there.
    fn write_gathered(&mut self, table: usize) -> Result<()> {
        let t = &mut self.tables[table];
        let rows = [
            std::mem::take(&mut t.rows.new),
            std::mem::take(&mut t.rows.written),
        ];
        let clocks = [
            std::mem::take(&mut t.clocks.new),
            std::mem::take(&mut t.clocks.written),
        ];
        let t = &self.tables[table];
        for (new, rows) in [true, false].into_iter().zip(&rows) {
            if rows.is_empty() {
                continue;
            }
            let mut arrays = Arrays::new(t.schema.columns.iter().map(|c| c.sql_type));
            for (key, values) in rows {
                let (mut keys, mut rest) = (key.iter(), values.iter());
                for (i, column) in t.schema.columns.iter().enumerate() {
                    let value = if column.primary_key {
                        keys.next()
                    } else {
                        rest.next()
                    };
                    arrays.push(i, value.unwrap_or(&Value::Null))?;
                }
            }
            self.write_set(
                new,
                [&t.sql.insert_rows, &t.sql.copy_rows, &t.sql.write_rows],
                &arrays,
            )?;
        }
        let numbers = 3 + 2 * t.schema.value_columns().count();
        for (new, clocks) in [true, false].into_iter().zip(&clocks) {
            if clocks.is_empty() {
                continue;
            }
            let types = t.schema.key_columns().map(|c| c.sql_type);
            let mut arrays =
                Arrays::new(types.chain(std::iter::repeat_n(SqlType::Integer, numbers)));
            for (key, clock) in clocks {
                for (i, value) in key.iter().enumerate() {
                    arrays.push(i, value)?;
                }
                let numbers = [clock.cl, clock.dv, clock.created]
                    .into_iter()
                    .chain(clock.columns.iter().flat_map(|(v, dv)| [*v, *dv]));
                for (i, number) in numbers.enumerate() {
                    arrays.push_integer(key.len() + i, number)?;
                }
            }
            let statements = [
                &t.sql.insert_clocks,
                &t.sql.copy_clocks,
                &t.sql.write_clocks,
            ];
            self.write_set(new, statements, &arrays)?;
        }
        Ok(())
    }

    /// Writes the set of rows (or clocks) `arrays` holds: those that are
    /// `new` inserted (by `insert`, or by `copy` for a large set), the others
    /// by `write`.
    fn write_set(
        &self,
        new: bool,
        [insert, copy, write]: [&String; 3],
        arrays: &Arrays,
    ) -> Result<()> {
        if !new {
            self.execute(write, &arrays.params())?;
        } else if arrays.len() < COPIED {
            self.execute(insert, &arrays.params())?;
        } else {
            // Encoded here, sent by a task of its own while the merge goes
            // on, once the sets before it are written (see `settle`).
            let data = arrays.copy_data()?;
            let (client, copy) = (Arc::clone(self.client), copy.clone());
            let before = self.copying.borrow_mut().take();
            let task = self.runtime.spawn(async move {
                if let Some(before) = before {
                    copied(before).await?;
                }
                let copy_in = async {
                    let prepared = super::prepared(&client, &copy).await?;
                    let sink = client.copy_in(&prepared).await?;
                    let mut sink = std::pin::pin!(sink);
                    sink.send(data).await?;
                    sink.finish().await
                };
                copy_in.await.map(|_| ()).map_err(pg_error)
            });
            *self.copying.borrow_mut() = Some(task);
        }
        Ok(())
    }
}

impl Drop for PgStorage<'_> {
    fn drop(&mut self) {
        // A merge that failed before its end: its copies are done before its
        // transaction is rolled back. (One that succeeded settled them.)
        if let Err(error) = self.settle() {
            tracing::debug!(%error, "a copy failed in a merge that ended early");
        }
    }
}

impl Storage for PgStorage<'_> {
    fn rows_read_together(&self) -> usize {
        ROWS_READ_TOGETHER
    }

    fn tables(&mut self) -> Result<Vec<TableSchema>> {
        let tables = self.db.tables(self.connection()?, self.runtime)?;
        let schemas = tables.iter().map(|(_, schema)| schema.clone()).collect();
        self.numbers = tables
            .into_iter()
            .map(|(id, schema)| (schema.name.to_ascii_lowercase(), id))
            .collect();
        Ok(schemas)
    }

    fn prepare(&mut self, schema: &TableSchema, _rows: usize) -> Result<()> {
        // One of `tables`, read just before.
        let id = *self
            .numbers
            .get(&schema.name.to_ascii_lowercase())
            .ok_or_else(|| Error::NotRegistered {
                table: schema.name.to_string(),
            })?;
        let clock = sql::clock_table(&self.db.schema, id);
        self.tables.push(Table {
            sql: TableSql::new(&self.db.schema, schema, &clock),
            schema: schema.clone(),
            rows: Gathered::default(),
            clocks: Gathered::default(),
            rows_not_found: HashSet::new(),
        });
        Ok(())
    }

    fn current_version(&mut self) -> Result<i64> {
        let rows = self.query(&sql::last_version(&self.db.schema), &[])?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    fn new_version(&mut self) -> Result<i64> {
        let schema = &self.db.schema;
        if self.taken.is_empty() {
            // Its floor first, then its versions (see `sql::hold_floor`);
            // again after a savepoint that took the first ones rolled back,
            // which let go of the lock it took.
            self.query(&sql::hold_floor(schema), &[])?;
        }
        let rows = self.query(&sql::next_version(schema), &[])?;
        let version: i64 = rows
            .first()
            .map(|r| r.get(0))
            .ok_or_else(|| Error::Corrupt {
                details: "the version sequence gave no version".into(),
            })?;
        self.taken.push(version);
        Ok(version)
    }

    fn version_mark(&mut self) -> i64 {
        self.last_version().unwrap_or(0)
    }

    fn forget_versions_after(&mut self, mark: i64) {
        // A sequence gives a number once: the versions rolled back stay
        // unused, and their origins are not written; the push's version is
        // its last one kept.
        self.taken.retain(|version| *version <= mark);
        self.new_origins.retain(|(version, ..)| *version <= mark);
    }

    fn begin_applying(&mut self) -> Result<()> {
        self.execute("SELECT set_config('synced.applying', 'on', true)", &[])?;
        Ok(())
    }

    fn end_applying(&mut self) -> Result<()> {
        self.execute("SELECT set_config('synced.applying', 'off', true)", &[])?;
        if !self.taken.is_empty() {
            // Heard by every process's listener once this commits.
            let channel = super::listen::channel(self.db);
            self.execute("SELECT pg_notify($1, '')", &[&channel])?;
        }
        Ok(())
    }

    fn site_ordinals(&mut self, sites: &[SiteId]) -> Result<Vec<i64>> {
        let schema = &self.db.schema;
        let add = format!(
            "INSERT INTO {schema}._synced_sites (site_id) SELECT unnest($1::bytea[]) \
             ON CONFLICT (site_id) DO NOTHING"
        );
        let read = format!(
            "SELECT ordinal, site_id FROM {schema}._synced_sites WHERE site_id = ANY($1::bytea[])"
        );
        let bytes: Vec<&[u8]> = sites.iter().map(|s| s.as_bytes().as_slice()).collect();
        self.execute(&add, &[&bytes])?;
        let rows = self.query(&read, &[&bytes])?;
        let found: HashMap<Vec<u8>, i64> = rows
            .iter()
            .map(|r| (r.get::<_, Vec<u8>>(1), r.get::<_, i64>(0)))
            .collect();
        sites
            .iter()
            .map(|site| {
                found
                    .get(site.as_bytes().as_slice())
                    .copied()
                    .ok_or_else(|| Error::Corrupt {
                        details: format!("site {site} is not in the dictionary after it was added"),
                    })
            })
            .collect()
    }

    fn reused_site(&mut self, device: SiteId, claimed: Option<i64>) -> Result<Option<String>> {
        let schema = &self.db.schema;
        let site = device.as_bytes().as_slice();
        let reused =
            format!("SELECT EXISTS (SELECT 1 FROM {schema}._synced_reused WHERE site_id = $1)");
        if self.query(&reused, &[&site])?[0].get::<_, bool>(0) {
            return Ok(Some(format!(
                "site {device} was used by more than one file; the device needs a new site id"
            )));
        }
        let Some(version) = claimed else {
            return Ok(None);
        };
        let seen = format!(
            "SELECT p.seen FROM {schema}._synced_peers p JOIN {schema}._synced_sites s \
             ON s.ordinal = p.site WHERE s.site_id = $1"
        );
        let seen: i64 = self.query(&seen, &[&site])?.first().map_or(0, |r| r.get(0));
        Ok((version < seen).then(|| {
            format!(
                "it received versions of site {device} up to {seen}, and the device says it is \
                 at {version}: its file is a copy of another device's, or was restored from a \
                 backup; it needs a new site id"
            )
        }))
    }

    fn skipped(&mut self, site: i64, since: i64) -> Result<()> {
        let statement = format!(
            "INSERT INTO {}._synced_skipped (site, since) VALUES ($1, $2) \
             ON CONFLICT (site) DO UPDATE SET since = least(_synced_skipped.since, excluded.since)",
            self.db.schema
        );
        self.execute(&statement, &[&site, &since])?;
        Ok(())
    }

    fn peer_seen(&mut self, site: i64) -> Result<i64> {
        let statement = format!(
            "SELECT seen FROM {}._synced_peers WHERE site = $1",
            self.db.schema
        );
        Ok(self
            .query(&statement, &[&site])?
            .first()
            .map_or(0, |r| r.get(0)))
    }

    fn set_peer_seen(&mut self, site: i64, upto: i64) -> Result<()> {
        let statement = format!(
            "INSERT INTO {}._synced_peers (site, seen) VALUES ($1, $2) \
             ON CONFLICT (site) DO UPDATE SET seen = excluded.seen",
            self.db.schema
        );
        self.execute(&statement, &[&site, &upto])?;
        Ok(())
    }

    fn lock_rows(&mut self, rows: &[(usize, &[Value])]) -> Result<()> {
        // The app rows that exist, then the table's advisory lock shared and
        // one per key (see `sql::row_lock`), which a backend's write of the
        // row takes too, or for many rows the table's alone: table by table
        // in name order, each in key order, so that no two merges wait for
        // each other in a circle.
        let mut order: Vec<usize> = (0..self.tables.len()).collect();
        order.sort_by_cached_key(|&t| self.tables[t].schema.name.to_ascii_lowercase());
        let space = i32::try_from(self.db.space).map_err(|_| Error::Corrupt {
            details: format!("lock space {} is out of range", self.db.space),
        })?;
        for table in order {
            let keys: Vec<&[Value]> = rows
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, key)| *key)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let t = &self.tables[table];
            let arrays = value::key_arrays(&t.schema, &keys)?;
            let locked = self.query(&t.sql.lock_rows, &arrays.params())?;
            // The others may yet be written by a transaction holding their
            // keys' locks, which are taken next (see `read_clocks`).
            let mut found = vec![false; keys.len()];
            for row in &locked {
                found[position(row.get(0), keys.len())?] = true;
            }
            let missing = keys
                .iter()
                .zip(found)
                .filter(|(_, found)| !found)
                .map(|(key, _)| crate::wire::encode_key(key));
            self.tables[table].rows_not_found.extend(missing);
            let t = &self.tables[table];
            if keys.len() > sql::ROWS_LOCKED_ONE_BY_ONE {
                // One lock for the table rather than one per row: the lock
                // table has room for a few hundred a connection.
                self.query(&t.sql.lock_table, &[&space])?;
                continue;
            }
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&space];
            params.extend(arrays.params());
            self.query(&t.sql.lock_keys, &params)?;
        }
        Ok(())
    }

    fn read_clocks(&mut self, table: usize, keys: &[&[Value]]) -> Result<Vec<Option<Clock>>> {
        let t = &self.tables[table];
        let arrays = value::key_arrays(&t.schema, keys)?;
        let value_count = t.schema.value_columns().count();
        let rows = self.query(&t.sql.read_clocks, &arrays.params())?;
        let mut clocks = vec![None; keys.len()];
        for row in &rows {
            let i: i64 = row.get(0);
            let columns = (0..value_count)
                .map(|c| (row.get(4 + 2 * c), row.get(5 + 2 * c)))
                .collect();
            clocks[position(i, keys.len())?] = Some(Clock {
                cl: row.get(1),
                dv: row.get(2),
                created: row.get(3),
                columns,
            });
        }
        let t = &mut self.tables[table];
        for (key, _) in keys.iter().zip(&clocks).filter(|(_, c)| c.is_none()) {
            let key = crate::wire::encode_key(key);
            if t.rows_not_found.remove(&key) {
                t.rows.missing.insert(key.clone());
            }
            t.clocks.missing.insert(key);
        }
        Ok(clocks)
    }

    fn read_rows(&mut self, table: usize, keys: &[&[Value]]) -> Result<Vec<Option<Vec<Value>>>> {
        let t = &self.tables[table];
        let arrays = value::key_arrays(&t.schema, keys)?;
        let rows = self.query(&t.sql.read_rows, &arrays.params())?;
        let types: Vec<_> = t.schema.value_columns().map(|c| c.sql_type).collect();
        let mut values = vec![None; keys.len()];
        for row in rows {
            let i: i64 = row.get(0);
            let read = types
                .iter()
                .enumerate()
                // After the position and `found`.
                .map(|(c, ty)| value::get(&row, c + 2, *ty))
                .collect::<Result<Vec<_>>>()?;
            values[position(i, keys.len())?] = Some(read);
        }
        Ok(values)
    }

    fn write_row<V: Borrow<Value>>(
        &mut self,
        table: usize,
        key: &[Value],
        values: &[V],
    ) -> Result<()> {
        let values = values.iter().map(|v| v.borrow().clone()).collect();
        if self.tables[table].rows.push(key, values) {
            self.write_gathered(table)?;
        }
        Ok(())
    }

    fn write_clock(&mut self, table: usize, key: &[Value], clock: &Clock) -> Result<()> {
        if self.tables[table].clocks.push(key, clock.clone()) {
            self.write_gathered(table)?;
        }
        Ok(())
    }

    fn delete_row(&mut self, table: usize, key: &[Value]) -> Result<bool> {
        let statement = self.tables[table].sql.delete.clone();
        let params = value::params(key)?;
        Ok(self.execute(&statement, &value::refs(&params))? > 0)
    }

    fn delete_clock(&mut self, table: usize, key: &[Value]) -> Result<bool> {
        let statement = self.tables[table].sql.delete_clock.clone();
        let params = value::params(key)?;
        Ok(self.execute(&statement, &value::refs(&params))? > 0)
    }

    fn forgotten(&mut self, _table: usize, _key: &[Value]) {
        // No change events on a server.
    }

    fn flush(&mut self) -> Result<()> {
        for table in 0..self.tables.len() {
            self.write_gathered(table)?;
        }
        if !self.new_origins.is_empty() {
            let origins = std::mem::take(&mut self.new_origins);
            let column = |pick: fn(&(i64, i64, i64)) -> i64| -> Vec<i64> {
                origins.iter().map(pick).collect()
            };
            let (versions, sites, there) = (column(|o| o.0), column(|o| o.1), column(|o| o.2));
            let statement = format!(
                "INSERT INTO {}._synced_versions (db_version, site, origin_version) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])",
                self.db.schema
            );
            self.execute(&statement, &[&versions, &sites, &there])?;
        }
        self.settle()
    }

    fn site_of_version(&mut self, version: i64) -> Result<SiteId> {
        let ordinal = match self.origins.get(&version) {
            Some(&ordinal) => ordinal,
            None => {
                let statement = format!(
                    "SELECT site FROM {}._synced_versions WHERE db_version = $1",
                    self.db.schema
                );
                let ordinal = self
                    .query(&statement, &[&version])?
                    .first()
                    .map_or(0, |r| r.get(0));
                self.origins.insert(version, ordinal);
                ordinal
            }
        };
        if let Some(&site) = self.sites.get(&ordinal) {
            return Ok(site);
        }
        let site = self
            .db
            .site_of_ordinal(self.connection()?, self.runtime, ordinal)?;
        self.sites.insert(ordinal, site);
        Ok(site)
    }

    fn add_version_origin(&mut self, version: i64, site: i64, origin_version: i64) -> Result<()> {
        self.new_origins.push((version, site, origin_version));
        self.origins.insert(version, site);
        Ok(())
    }

    fn made_elsewhere(&mut self, version: i64) -> Result<bool> {
        if self.new_origins.iter().any(|(given, ..)| *given == version) {
            return Ok(true);
        }
        let statement = format!(
            "SELECT EXISTS (SELECT 1 FROM {}._synced_versions WHERE db_version = $1)",
            self.db.schema
        );
        Ok(self.query(&statement, &[&version])?[0].get(0))
    }

    fn earlier_identity_upto(&mut self) -> Result<Option<i64>> {
        // A server keeps its site id.
        Ok(None)
    }

    fn passes(&mut self, table: usize, filter: &RowFilter, key: &[Value]) -> Result<Option<bool>> {
        let Some(values) = self.read_rows(table, &[key])?.pop().flatten() else {
            return Ok(None);
        };
        let (sql, params) = match filter {
            RowFilter::All => return Ok(Some(true)),
            RowFilter::Nothing => return Ok(Some(false)),
            RowFilter::Where { sql, params } => (sql, params),
        };
        let schema = &self.tables[table].schema;
        let row = policy::whole_row(schema, key, &values);
        let evaluator = match &mut self.evaluator {
            Some(evaluator) => evaluator,
            empty => empty.insert(policy::Evaluator::new()?),
        };
        Ok(Some(evaluator.passes(schema, sql, params, &row)?))
    }

    fn savepoint(&mut self) -> Result<()> {
        self.execute("SAVEPOINT synced_row", &[])?;
        Ok(())
    }

    fn roll_back_savepoint(&mut self) -> Result<()> {
        self.runtime
            .block_on(
                self.connection()?.batch_execute(
                    "ROLLBACK TO SAVEPOINT synced_row; RELEASE SAVEPOINT synced_row",
                ),
            )
            .map_err(pg_error)
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.runtime
            .block_on(
                self.connection()?
                    .batch_execute("RELEASE SAVEPOINT synced_row"),
            )
            .map_err(pg_error)
    }

    fn mark_held(&mut self, reader: i64, table: usize, key: &[Value]) -> Result<()> {
        if self.readers_locked.insert(reader) {
            held::lock_reader(self.connection()?, self.runtime, self.db, reader)?;
        }
        let statement = format!(
            "INSERT INTO {}._synced_held (site, tbl, pk, evicted, at) VALUES ($1, $2, $3, 0, 0) \
             ON CONFLICT (site, tbl, pk) DO UPDATE SET evicted = 0, at = excluded.at",
            self.db.schema
        );
        let name = self.tables[table].schema.name.to_ascii_lowercase();
        let key = crate::wire::encode_key(key);
        self.execute(&statement, &[&reader, &name, &key])?;
        Ok(())
    }
}

/// The index in a set of `len` keys of the position PostgreSQL gave back.
fn position(ordinality: i64, len: usize) -> Result<usize> {
    usize::try_from(ordinality - 1)
        .ok()
        .filter(|&i| i < len)
        .ok_or_else(|| Error::Corrupt {
            details: format!("a set of {len} keys gave back position {ordinality}"),
        })
}
