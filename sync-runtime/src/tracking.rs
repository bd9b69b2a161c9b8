//! Registering tables and turning their change tracking on and off.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::evolve;
use crate::schema::TableSchema;
use crate::sql::{self, TableSql};
use crate::tx::Registered;

/// Creates a synced table and its metadata, or evolves the one registered
/// before to the struct's descriptor (see [`crate::evolve`]), inside the
/// caller's write transaction; see `SyncDb::register`.
pub(crate) fn register(conn: &Connection, table: &Registered) -> Result<()> {
    let schema = &table.schema;
    match stored(conn, &schema.name)? {
        Some((stored, tracking)) => {
            check_shape(conn, &stored)?;
            let evolution = evolve::plan(&stored, schema)?;
            if evolution.changes(&stored) {
                evolve::apply(conn, &stored, &evolution)?;
            }
            create(conn, &TableSql::new(&evolution.stored), tracking)?;
        }
        None => {
            check_shape(conn, schema)?;
            create(conn, &table.sql, true)?;
            let descriptor = serde_json::to_string(schema).map_err(|e| Error::SchemaMismatch {
                table: schema.name.to_string(),
                details: e.to_string(),
            })?;
            conn.execute(
                sql::REGISTER_TABLE,
                (schema.name.as_ref(), schema.algorithm.as_str(), descriptor),
            )?;
            backfill(conn, &table.sql)?;
            evolve::ask_again(conn)?;
        }
    }
    Ok(())
}

/// Turns tracking of a registered table on (recording what changed while it was off)
/// or off, inside the caller's write transaction.
pub(crate) fn set_tracking(conn: &Connection, name: &str, on: bool) -> Result<()> {
    let (schema, tracking) = stored(conn, name)?.ok_or_else(|| not_registered(name))?;
    let sql = TableSql::new(&schema);
    if on && !tracking {
        conn.execute_batch(&sql.create_triggers)?;
        backfill(conn, &sql)?;
    } else if !on {
        conn.execute_batch(&sql.drop_triggers)?;
    }
    conn.execute(sql::SET_TRACKING, (name, on))?;
    Ok(())
}

/// Removes every trace of sync from a table, keeping its rows, inside the
/// caller's write transaction.
pub(crate) fn drop_tracking(conn: &Connection, name: &str) -> Result<()> {
    let (schema, _) = stored(conn, name)?.ok_or_else(|| not_registered(name))?;
    let sql = TableSql::new(&schema);
    conn.execute_batch(&sql.drop_triggers)?;
    conn.execute_batch(&sql.drop_guards)?;
    conn.execute_batch(&sql.drop_clock)?;
    // The indexes `#[synced(index)]` made are named as the runtime's objects,
    // which the app's SQL may not drop.
    let mut unindexed = schema.clone();
    for column in unindexed.columns.to_mut() {
        column.indexed = false;
    }
    conn.execute_batch(&TableSql::new(&unindexed).indexes)?;
    conn.execute(sql::UNREGISTER_TABLE, [name])?;
    // Refused writes kept in the table's shape (see `crate::quarantine`).
    conn.execute(sql::DISCARD_REJECTED_OF, [name.to_ascii_lowercase()])?;
    Ok(())
}

/// The descriptors of every synced table in the database (or only those whose
/// tracking is on), whether or not this handle registered it.
pub(crate) fn synced_tables(conn: &Connection, tracked_only: bool) -> Result<Vec<TableSchema>> {
    let mut stmt = conn.prepare_cached(if tracked_only {
        sql::TRACKED_TABLES
    } else {
        sql::SYNCED_TABLES
    })?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    rows.map(|row| {
        let (name, descriptor) = row?;
        parsed(&name, &descriptor)
    })
    .collect()
}

/// The most descriptors [`parsed`] keeps per thread.
const KEPT_DESCRIPTORS: usize = 64;

thread_local! {
    /// The descriptors this thread parsed last, by their stored text.
    static PARSED: std::cell::RefCell<Vec<(String, TableSchema)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// [`parse_descriptor`], kept for the thread's next read of the same text:
/// every export and merge reads the tables' descriptors, and parsing them
/// took more than a small export's reads.
pub(crate) fn parsed(name: &str, descriptor: &str) -> Result<TableSchema> {
    PARSED.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some((_, schema)) = kept.iter().find(|(text, _)| text == descriptor) {
            return Ok(schema.clone());
        }
        let schema = parse_descriptor(name, descriptor)?;
        if kept.len() >= KEPT_DESCRIPTORS {
            kept.clear();
        }
        kept.push((descriptor.to_owned(), schema.clone()));
        Ok(schema)
    })
}

fn not_registered(name: &str) -> Error {
    Error::NotRegistered {
        table: name.to_owned(),
    }
}

fn parse_descriptor(name: &str, descriptor: &str) -> Result<TableSchema> {
    serde_json::from_str(descriptor).map_err(|e| Error::SchemaMismatch {
        table: name.to_owned(),
        details: format!("its stored descriptor is unreadable ({e})"),
    })
}

/// The stored descriptor and tracking flag of a synced table.
fn stored(conn: &Connection, name: &str) -> Result<Option<(TableSchema, bool)>> {
    let row = conn
        .query_row(sql::STORED_TABLE, [name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })
        .optional()?;
    row.map(|(descriptor, tracking)| Ok((parse_descriptor(name, &descriptor)?, tracking)))
        .transpose()
}

fn create(conn: &Connection, sql: &TableSql, tracking: bool) -> Result<()> {
    conn.execute_batch(&sql.create_table)?;
    conn.execute_batch(&sql.create_clock)?;
    conn.execute_batch(&sql.create_guards)?;
    conn.execute_batch(&sql.indexes)?;
    if tracking {
        conn.execute_batch(&sql.create_triggers)?;
    }
    Ok(())
}

/// Records app rows without a live clock as inserted and live clocks without an app
/// row as deleted.
fn backfill(conn: &Connection, sql: &TableSql) -> Result<()> {
    // The clock writes mark the transaction as recording changes (update hook).
    conn.execute(&sql.backfill_live, [])?;
    conn.execute(&sql.backfill_deleted, [])?;
    Ok(())
}

/// Checks that an existing table has exactly the shape the descriptor creates.
pub(crate) fn check_shape(conn: &Connection, schema: &TableSchema) -> Result<()> {
    let name = schema.name.as_ref();
    let mismatch = |details: String| {
        Err(Error::SchemaMismatch {
            table: name.to_owned(),
            details,
        })
    };
    let strict: Option<bool> = conn
        .query_row(sql::IS_STRICT, [name], |r| r.get(0))
        .optional()?;
    match strict {
        None => return Ok(()),
        Some(false) => return mismatch("it is not a STRICT table".into()),
        Some(true) => {}
    }
    let mut stmt = conn.prepare(sql::TABLE_COLUMNS)?;
    let existing = stmt
        .query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if existing.len() != schema.columns.len() {
        let names: Vec<_> = existing.iter().map(|c| c.0.as_str()).collect();
        return mismatch(format!(
            "it has {} columns ({}), the struct describes {}",
            existing.len(),
            names.join(", "),
            schema.columns.len()
        ));
    }
    let mut key_position = 0i64;
    for (column, (name, sql_type, not_null, pk)) in schema.columns.iter().zip(&existing) {
        let expected_pk = if column.primary_key {
            key_position += 1;
            key_position
        } else {
            0
        };
        let problem = if *name != column.name {
            Some(format!("expected column `{}`, found `{name}`", column.name))
        } else if !sql_type.eq_ignore_ascii_case(column.sql_type.as_sql()) {
            Some(format!(
                "column `{name}` is {sql_type}, expected {}",
                column.sql_type
            ))
        } else if *not_null == column.nullable {
            Some(format!(
                "column `{name}` is {}, expected {}",
                if *not_null { "NOT NULL" } else { "nullable" },
                if column.nullable {
                    "nullable"
                } else {
                    "NOT NULL"
                }
            ))
        } else if *pk != expected_pk {
            Some(format!("column `{name}` differs in its primary-key role"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return mismatch(problem);
        }
    }
    Ok(())
}
