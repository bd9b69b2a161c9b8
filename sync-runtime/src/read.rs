//! Reads of any read-only SQL (joins, aggregates, `GROUP BY`, CTEs), mapped to
//! the app's types: [`FromRow`] structs or a closure over [`ResultRow`]s.

use std::sync::atomic::Ordering;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::tx::{AppSql, Transaction, as_user};
use crate::value::{self, SyncValue, Value};

/// One row of a read's result: its columns by name or by position.
pub struct ResultRow<'r> {
    row: &'r rusqlite::Row<'r>,
}

impl ResultRow<'_> {
    /// The value of the column named `column` (as the statement names it:
    /// `AS` gives a name), read as `T`.
    pub fn get<T: SyncValue>(&self, column: &str) -> Result<T> {
        let stmt = self.row.as_ref();
        let index = (0..stmt.column_count())
            .find(|&i| {
                stmt.column_name(i)
                    .is_ok_and(|name| name.eq_ignore_ascii_case(column))
            })
            .ok_or_else(|| Error::NoSuchColumn {
                column: column.to_owned(),
            })?;
        self.read(index, column)
    }

    /// The value of the column at `index` (from 0), read as `T`.
    pub fn get_at<T: SyncValue>(&self, index: usize) -> Result<T> {
        if index >= self.len() {
            return Err(Error::NoSuchColumn {
                column: index.to_string(),
            });
        }
        self.read(index, &index.to_string())
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.row.as_ref().column_count()
    }

    /// Whether the row has no column.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T: SyncValue>(&self, index: usize, column: &str) -> Result<T> {
        let failed = |source| Error::ReadColumn {
            column: column.to_owned(),
            source,
        };
        let value = value::from_sqlite(self.row.get_ref(index)?).map_err(failed)?;
        T::from_value_ref(value).map_err(failed)
    }
}

/// A type a row of a read's result becomes: implement it with
/// [`#[derive(FromRow)]`](derive@crate::FromRow), which reads each field from
/// the column of its name.
pub trait FromRow: Sized + Send + 'static {
    /// Builds a value from a row.
    fn from_row(row: &ResultRow<'_>) -> Result<Self>;
}

impl Transaction<'_> {
    /// Runs read-only SQL and makes each row a `R`; see
    /// [`SyncDb::read`](crate::SyncDb::read).
    pub fn read<R: FromRow>(&mut self, sql: &str, params: impl AsRef<[Value]>) -> Result<Vec<R>> {
        read(
            self.conn(),
            self.user_sql(),
            sql,
            params.as_ref(),
            R::from_row,
        )
    }

    /// Runs read-only SQL and makes each row a value with `map`; see
    /// [`SyncDb::read_with`](crate::SyncDb::read_with).
    pub fn read_with<R>(
        &mut self,
        sql: &str,
        params: impl AsRef<[Value]>,
        map: impl FnMut(&ResultRow<'_>) -> Result<R>,
    ) -> Result<Vec<R>> {
        read(self.conn(), self.user_sql(), sql, params.as_ref(), map)
    }
}

/// Runs the read-only statement `sql` with `params` and maps each row with
/// `map`, as the app's SQL (see [`as_user`]). A statement that writes is
/// refused before it runs.
pub(crate) fn read<R>(
    conn: &Connection,
    user_sql: &AppSql,
    sql: &str,
    params: &[Value],
    mut map: impl FnMut(&ResultRow<'_>) -> Result<R>,
) -> Result<Vec<R>> {
    struct Reading<'a>(&'a AppSql);
    impl Drop for Reading<'_> {
        fn drop(&mut self) {
            self.0.reading.store(false, Ordering::Relaxed);
        }
    }
    user_sql.reading.store(true, Ordering::Relaxed);
    let _reading = Reading(user_sql);
    as_user(user_sql, || {
        let mut stmt = conn.prepare_cached(sql)?;
        if !stmt.readonly() {
            return Err(Error::NotReadOnly);
        }
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(&ResultRow { row })?);
        }
        Ok(out)
    })
}
