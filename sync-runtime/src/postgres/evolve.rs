//! Schema evolution on PostgreSQL: the plan SQLite's replicas follow (see
//! `crate::evolve`), carried out with PostgreSQL's `ALTER TABLE`.
//!
//! - A column added gets, in every row that exists, what a row that never
//!   wrote it reads (PostgreSQL stores a constant default without rewriting
//!   the table), and its clock columns at 0, "never written".
//! - A column renamed keeps its values and its clock, which is named by the
//!   column's first name.
//! - A changed default: rows that never wrote a column whose first default
//!   the descriptor corrects take the one it says; rows inserted from then on
//!   get the new default.
//! - The tracking triggers of backend writes are made again from the new
//!   descriptor.
//!
//! It all happens in the publication's transaction, which holds the
//! database's schema lock (see [`sql::begin_publishing`]): merges and
//! exports, which hold it shared, never read a descriptor that their
//! statements' tables no longer match.

use tokio::runtime::Handle;
use tokio_postgres::Client;

use super::sql::{self, column_type, ident, literal};
use super::{Db, pg_error};
use crate::error::{Error, Result};
use crate::evolve::Evolution;
use crate::schema::{ColumnSchema, TableSchema};

/// Changes table number `number` of `db`, whose descriptor is `before`, as
/// `evolution` says, and stores the new descriptor.
pub(crate) fn apply(
    client: &Client,
    runtime: &Handle,
    db: &Db,
    number: i64,
    before: &TableSchema,
    evolution: &Evolution,
) -> Result<()> {
    let after = &evolution.stored;
    let app = format!("{}.{}", db.schema, ident(&before.name));
    let clock = sql::clock_table(&db.schema, number);
    let mut statements = String::new();
    for column in &evolution.added {
        statements.push_str(&add_column(&app, &clock, column));
    }
    for (from, to) in &evolution.renamed {
        statements.push_str(&format!(
            "ALTER TABLE {app} RENAME COLUMN {} TO {};\n",
            ident(from),
            ident(to)
        ));
    }
    let mut realigned = false;
    for change in &evolution.defaults {
        let column = after
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&change.column))
            .ok_or_else(|| Error::Corrupt {
                details: format!("column `{}` is not in its new descriptor", change.column),
            })?;
        if change.realign {
            realigned = true;
            statements.push_str(&realign_never_written(&app, &clock, after, column));
        }
        let default = match column.default_value() {
            Ok(Some(value)) => format!("SET DEFAULT {}", literal(&value)),
            _ => "DROP DEFAULT".to_owned(),
        };
        statements.push_str(&format!(
            "ALTER TABLE {app} ALTER COLUMN {} {default};\n",
            ident(&column.name)
        ));
    }
    if evolution.widens {
        // What devices sent before it had a column it has now lacked it:
        // they are asked for it again.
        let schema = &db.schema;
        statements.push_str(&format!(
            "UPDATE {schema}._synced_peers p SET seen = LEAST(p.seen, s.since) \
             FROM {schema}._synced_skipped s WHERE s.site = p.site;\n\
             DELETE FROM {schema}._synced_skipped;\n"
        ));
    }
    // The rows realigned are the merge's writes, which no trigger records.
    let applying = |on: &str| format!("SELECT set_config('synced.applying', '{on}', true);\n");
    if realigned {
        statements = format!("{}{statements}{}", applying("on"), applying("off"));
    }
    statements.push_str(&sql::triggers(&db.schema, after, &clock));
    runtime
        .block_on(client.batch_execute(&statements))
        .map_err(pg_error)?;
    let descriptor = serde_json::to_string(after).map_err(|e| {
        Error::InvalidSchema(crate::schema::SchemaError {
            table: after.name.to_string(),
            reason: e.to_string(),
        })
    })?;
    runtime
        .block_on(client.execute(
            &format!(
                "UPDATE {}._synced_tables SET descriptor = $1 WHERE id = $2",
                db.schema
            ),
            &[&descriptor, &number],
        ))
        .map_err(pg_error)?;
    Ok(())
}

/// Adds `column` at the end of table `app`, and its clock columns to `clock`:
/// the rows that exist take what a row that never wrote it reads.
fn add_column(app: &str, clock: &str, column: &ColumnSchema) -> String {
    let mut add = format!(
        "ALTER TABLE {app} ADD COLUMN {} {}",
        ident(&column.name),
        column_type(column.sql_type)
    );
    if !column.nullable {
        add.push_str(" NOT NULL");
    }
    if let Ok(Some(value)) = column.never_written() {
        add.push_str(&format!(" DEFAULT {}", literal(&value)));
    }
    add.push_str(";\n");
    add.push_str(&format!(
        "ALTER TABLE {clock} ADD COLUMN {} bigint NOT NULL DEFAULT 0, \
         ADD COLUMN {} bigint NOT NULL DEFAULT 0;\n",
        ident(&format!("{}.v", column.id())),
        ident(&format!("{}.dv", column.id()))
    ));
    add
}

/// Gives every live row of `app` (of descriptor `schema`) that never wrote
/// `column` (its clock of the column at 0) the value such a row reads.
fn realign_never_written(
    app: &str,
    clock: &str,
    schema: &TableSchema,
    column: &ColumnSchema,
) -> String {
    let value = column
        .never_written()
        .ok()
        .flatten()
        .map_or_else(|| "NULL".to_owned(), |v| literal(&v));
    let keys = schema
        .key_columns()
        .map(|k| format!("c.{0} = t.{0}", ident(&k.name)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "UPDATE {app} AS t SET {} = {value} FROM {clock} AS c \
         WHERE {keys} AND c._synced_cl % 2 = 1 AND c.{} = 0;\n",
        ident(&column.name),
        ident(&format!("{}.v", column.id()))
    )
}
