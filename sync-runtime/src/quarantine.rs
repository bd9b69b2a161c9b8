//! Writes the server refused, kept on the device until the app re-submits or
//! discards them.
//!
//! When a server refuses rows of a push (row-level security, see
//! [`PushReport::rejected`](crate::PushReport::rejected)), the device takes the
//! server's state of them back, so that it converges with what it may see. The
//! values its user wrote would be gone; they are kept first, in
//! `_synced_rejected`, one entry per row: its table, its key, its values as this
//! device held them (none for a delete), the server's reason and when. The app
//! lists them typed ([`SyncDb::rejected`](crate::SyncDb::rejected)), writes one
//! again as a new change ([`SyncDb::resubmit`](crate::SyncDb::resubmit)) or
//! drops it ([`SyncDb::discard`](crate::SyncDb::discard)). An entry stays until
//! then, across syncs and reopenings; a row refused again replaces its entry.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::merge::Rejection;
use crate::model::{RowReader, Synced};
use crate::schema::TableSchema;
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::tx::{self, Registered};
use crate::value::{self, Value};
use crate::wire;

/// A write of this device that its server refused, with the values it wrote.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Rejected<T> {
    /// The row as this device held it when the server refused it; `None` when
    /// what was refused is its delete.
    pub row: Option<T>,
    /// The row's key, in key order.
    pub key: Vec<Value>,
    /// The server's reason.
    pub reason: String,
    /// When the refusal arrived, in milliseconds since the Unix epoch.
    pub refused_at: i64,
}

/// Keeps this device's state of each refused row, before the server's state
/// replaces it; returns how many rows were kept. Rows of tables this database
/// does not sync are left out, and so are rows it never held (it can have
/// sent nothing of them; a server that names them is not believed).
#[cfg_attr(
    not(feature = "http"),
    allow(dead_code, reason = "used by the sync client")
)]
pub(crate) fn keep(conn: &Connection, rejections: &[Rejection], now_ms: i64) -> Result<usize> {
    if rejections.is_empty() {
        return Ok(0);
    }
    let tables = tracking::synced_tables(conn, false)?;
    let mut kept = 0;
    for rejection in rejections {
        let Some(schema) = tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&rejection.table))
        else {
            continue;
        };
        if rejection.pk.len() != schema.key_columns().count() {
            continue;
        }
        let sql = TableSql::new(schema);
        let held = conn
            .prepare_cached(&sql.merge_read_clock)?
            .query(rusqlite::params_from_iter(&rejection.pk))?
            .next()?
            .is_some();
        if !held {
            continue;
        }
        let row = read_row(conn, schema, &sql, &rejection.pk)?;
        conn.prepare_cached(sql::KEEP_REJECTED)?.execute((
            schema.name.to_ascii_lowercase(),
            wire::encode_key(&rejection.pk),
            row.as_deref().map(wire::encode_key),
            &rejection.reason,
            now_ms,
        ))?;
        kept += 1;
    }
    Ok(kept)
}

/// Every column of the row with key `pk`, in table order, if it exists here.
#[cfg_attr(
    not(feature = "http"),
    allow(dead_code, reason = "used by the sync client")
)]
fn read_row(
    conn: &Connection,
    schema: &TableSchema,
    sql: &TableSql,
    pk: &[Value],
) -> Result<Option<Vec<Value>>> {
    let mut stmt = conn.prepare_cached(&sql.select_by_key)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(pk))?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    (0..schema.columns.len())
        .map(|i| {
            let value = value::from_sqlite(row.get_ref(i)?).map_err(|e| Error::Corrupt {
                details: format!("a value of `{}` cannot be read: {e}", schema.name),
            })?;
            Ok(value.into_owned())
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The refused writes to `T`'s table, oldest first.
pub(crate) fn list<T: Synced>(conn: &Connection) -> Result<Vec<Rejected<T>>> {
    let schema = T::SCHEMA;
    let keys = schema.key_columns().count();
    let mut stmt = conn.prepare_cached(sql::LIST_REJECTED)?;
    let mut rows = stmt.query([schema.name.to_ascii_lowercase()])?;
    let mut out = Vec::new();
    while let Some(entry) = rows.next()? {
        let key = wire::decode_key(&entry.get::<_, Vec<u8>>(0)?, keys)?;
        let row = match entry.get::<_, Option<Vec<u8>>>(1)? {
            Some(bytes) => Some(typed::<T>(
                conn,
                &wire::decode_key(&bytes, schema.columns.len())?,
            )?),
            None => None,
        };
        out.push(Rejected {
            row,
            key,
            reason: entry.get(2)?,
            refused_at: entry.get(3)?,
        });
    }
    Ok(out)
}

/// Reads `values` (every column, in table order) as a `T`.
fn typed<T: Synced>(conn: &Connection, values: &[Value]) -> Result<T> {
    let mut stmt = conn.prepare_cached(&sql::select_params(values.len()))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let row = rows.next()?.ok_or_else(|| Error::Corrupt {
        details: "a SELECT of values returned no row".into(),
    })?;
    T::from_row(&mut RowReader::new(row, T::SCHEMA))
}

/// Removes the entry of the row of `table` with key `pk`; returns its values
/// (`Some(None)` for a delete), `None` if there was none.
pub(crate) fn take(
    conn: &Connection,
    schema: &TableSchema,
    pk: &[Value],
) -> Result<Option<Option<Vec<Value>>>> {
    let row: Option<Option<Vec<u8>>> = conn
        .prepare_cached(sql::TAKE_REJECTED)?
        .query_row(
            (schema.name.to_ascii_lowercase(), wire::encode_key(pk)),
            |r| r.get(0),
        )
        .optional()?;
    row.map(|row| {
        row.map(|bytes| wire::decode_key(&bytes, schema.columns.len()))
            .transpose()
    })
    .transpose()
    .map_err(Error::from)
}

/// Writes a refused row again as a new change (see
/// [`SyncDb::resubmit`](crate::SyncDb::resubmit)); whether there was an entry
/// for `pk`.
pub(crate) fn resubmit(conn: &Connection, table: &Registered, pk: &[Value]) -> Result<bool> {
    let Some(row) = take(conn, &table.schema, pk)? else {
        return Ok(false);
    };
    match row {
        Some(values) => match tx::update(conn, table, |i| values[i].as_ref()) {
            Err(Error::NotFound { .. }) => {
                tx::insert(conn, table, |i| values[i].as_ref())?;
            }
            other => other?,
        },
        None => {
            tx::delete(conn, table, |i| pk[i].as_ref())?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Algorithm, ColumnSchema};
    use crate::value::SqlType;

    /// A server's answer may name any row; only rows this database holds can
    /// have been sent, and only they are kept.
    #[tokio::test]
    async fn only_rows_held_here_are_kept() {
        let db = crate::SyncDb::open_in_memory().await.unwrap();
        let tags = TableSchema::new(
            "tags",
            Algorithm::Cls,
            vec![
                ColumnSchema::new("name", SqlType::Text).primary_key(),
                ColumnSchema::new("note", SqlType::Text).nullable(true),
            ],
        );
        db.register_schema(tags).await.unwrap();
        db.execute_raw("INSERT INTO tags (name) VALUES ('held')", Vec::new())
            .await
            .unwrap();
        let refused = |name: &str| Rejection::new("tags", vec![Value::from(name)], "refused");
        let rejections = [refused("held"), refused("never held"), refused("held")];
        let kept = db
            .call(move |w| keep(&w.conn, &rejections, 1))
            .await
            .unwrap();
        // The same row twice is one entry, kept twice.
        assert_eq!(kept, 2);
        let entries: i64 = db
            .call(|w| {
                Ok(w.conn
                    .query_row("SELECT count(*) FROM _synced_rejected", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(entries, 1);
    }
}
