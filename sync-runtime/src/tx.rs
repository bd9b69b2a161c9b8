//! Typed reads and writes inside one transaction.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::model::{RowReader, Synced};
use crate::schema::TableSchema;
use crate::sql::TableSql;
use crate::value::{Value, ValueRef};

/// A table registered with this database handle, with its statements.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) schema: TableSchema,
    pub(crate) sql: TableSql,
}

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
}

impl<'c> Transaction<'c> {
    pub(crate) fn new(conn: &'c Connection, registry: &'c Registry) -> Self {
        Self { conn, registry }
    }

    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    pub(crate) fn registry(&self) -> &'c Registry {
        self.registry
    }

    fn table<T: Synced>(&self) -> Result<&'c Registered> {
        table_of(self.registry, T::SCHEMA)
    }

    /// Inserts a row. Fails with [`Error::Constraint`] if the key exists.
    pub fn insert<T: Synced>(&mut self, row: &T) -> Result<()> {
        insert(self.conn, self.table::<T>()?, |i| row.column_value(i))
    }

    /// Writes every column of an existing row (the row with `row`'s key); only the
    /// columns whose value differs are recorded as changed. Fails with
    /// [`Error::NotFound`] if there is no such row.
    pub fn update<T: Synced>(&mut self, row: &T) -> Result<()> {
        update(self.conn, self.table::<T>()?, |i| row.column_value(i))
    }

    /// Deletes the row with this key; returns whether there was one.
    pub fn delete<T: Synced>(&mut self, key: &T::Key) -> Result<bool> {
        delete(self.conn, self.table::<T>()?, |i| T::key_value(key, i))
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
        query(self.conn, self.table::<T>()?, filter, params.as_ref())
    }

    /// Runs raw SQL (one statement) with parameters; returns the number of changed
    /// rows. Writes to synced tables are tracked like typed writes.
    pub fn execute_raw(&mut self, sql: &str, params: impl AsRef<[Value]>) -> Result<usize> {
        execute_raw(self.conn, sql, params.as_ref())
    }
}

pub(crate) fn table_of<'r>(registry: &'r Registry, schema: &TableSchema) -> Result<&'r Registered> {
    registry
        .get(schema.name.as_ref())
        .map(Arc::as_ref)
        .ok_or_else(|| Error::NotRegistered {
            table: schema.name.to_string(),
        })
}

fn bind<'v>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    count: usize,
    value: impl Fn(usize) -> ValueRef<'v>,
) -> Result<()> {
    for i in 0..count {
        stmt.raw_bind_parameter(i + 1, value(i))?;
    }
    Ok(())
}

pub(crate) fn insert<'v>(
    conn: &Connection,
    table: &Registered,
    value: impl Fn(usize) -> ValueRef<'v>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(&table.sql.insert)?;
    bind(&mut stmt, table.schema.columns.len(), value)?;
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
        let keys: Vec<ValueRef<'v>> = table
            .schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.primary_key)
            .map(|(i, _)| value(i))
            .collect();
        let exists = get_raw(conn, table, |i| keys[i], |_| Ok(()))?.is_some();
        return if exists { Ok(()) } else { Err(not_found()) };
    };
    let mut stmt = conn.prepare_cached(sql)?;
    bind(&mut stmt, table.schema.columns.len(), value)?;
    match stmt.raw_execute()? {
        0 => Err(not_found()),
        _ => Ok(()),
    }
}

pub(crate) fn delete<'v>(
    conn: &Connection,
    table: &Registered,
    key: impl Fn(usize) -> ValueRef<'v>,
) -> Result<bool> {
    let mut stmt = conn.prepare_cached(&table.sql.delete)?;
    bind(&mut stmt, table.schema.key_columns().count(), key)?;
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
    bind(&mut stmt, table.schema.key_columns().count(), key)?;
    let mut rows = stmt.raw_query();
    match rows.next()? {
        Some(row) => read(row).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn query<T: Synced>(
    conn: &Connection,
    table: &Registered,
    filter: &str,
    params: &[Value],
) -> Result<Vec<T>> {
    let sql = format!("{}{}", table.sql.select, where_clause(filter));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(T::from_row(&mut RowReader::new(row, &table.schema))?);
    }
    Ok(out)
}

/// What follows `SELECT … FROM t` for a user's filter: nothing, `WHERE filter`, or
/// the filter itself when it starts with `ORDER BY` or `LIMIT`.
fn where_clause(filter: &str) -> String {
    let trimmed = filter.trim_start();
    let starts_with = |keyword: &str| {
        trimmed
            .get(..keyword.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(keyword))
    };
    if trimmed.is_empty() {
        String::new()
    } else if starts_with("ORDER BY") || starts_with("LIMIT") {
        format!(" {trimmed}")
    } else {
        format!(" WHERE {filter}")
    }
}

pub(crate) fn execute_raw(conn: &Connection, sql: &str, params: &[Value]) -> Result<usize> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(params))?)
}

#[cfg(test)]
mod tests {
    use super::where_clause;

    #[test]
    fn filters_become_where_clauses_unless_they_only_order() {
        assert_eq!(where_clause(""), "");
        assert_eq!(where_clause("done = ?1"), " WHERE done = ?1");
        assert_eq!(where_clause(" order by title"), " order by title");
        assert_eq!(where_clause("LIMIT 3"), " LIMIT 3");
        assert_eq!(where_clause("ordering = 1"), " WHERE ordering = 1");
    }
}
