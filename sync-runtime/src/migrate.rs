//! The app's own schema migrations: indexes, views and local tables that are
//! not synced, applied once each, in order, and recorded in the file.
//!
//! A migration is an SQL script. [`run`] applies, in one write transaction,
//! the migrations the file has not recorded yet, statement by statement as the
//! app's raw SQL (so writes to synced tables are tracked, and transaction
//! control is refused), and records each with its text in
//! `_synced_migrations`. `PRAGMA user_version` is left to the app.
//!
//! The list of migrations is the app's history: a recorded migration whose text
//! changed, or a file that recorded more migrations than the app lists (a newer
//! app version ran), is refused before anything runs. A migration may not change
//! a synced table's columns (change its struct instead): one that does is
//! refused and the transaction rolls back.

use rusqlite::fallible_iterator::FallibleIterator;

use crate::error::{Error, Result};
use crate::sql;
use crate::tracking;
use crate::tx::Transaction;

/// Applies the migrations of `scripts` the file has not recorded, inside the
/// caller's write transaction; returns how many it applied.
pub(crate) fn run(tx: &mut Transaction<'_>, scripts: &[String]) -> Result<usize> {
    let conn = tx.conn();
    let applied: Vec<String> = conn
        .prepare(sql::APPLIED_MIGRATIONS)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if applied.len() > scripts.len() {
        return Err(Error::Migration {
            index: scripts.len(),
            reason: format!(
                "the file recorded {} migrations and the app lists {}: a newer version of the \
                 app migrated it",
                applied.len(),
                scripts.len()
            ),
        });
    }
    if let Some(index) = applied.iter().zip(scripts).position(|(a, s)| a != s) {
        return Err(Error::Migration {
            index,
            reason: "its text differs from the one applied to this file; add a new migration \
                     instead of editing an applied one"
                .into(),
        });
    }
    let synced = tracking::synced_tables(conn, false)?;
    for (index, script) in scripts.iter().enumerate().skip(applied.len()) {
        let failed = |e: Error| Error::Migration {
            index,
            reason: e.to_string(),
        };
        let mut statements = rusqlite::Batch::new(conn, script);
        while let Some(statement) = statements.next().map_err(|e| failed(e.into()))? {
            let text = statement.expanded_sql().unwrap_or_default();
            drop(statement);
            tx.execute_raw(&text, []).map_err(failed)?;
        }
        conn.execute(sql::RECORD_MIGRATION, (index as i64, script))?;
        for schema in &synced {
            tracking::check_shape(conn, schema).map_err(|e| Error::Migration {
                index,
                reason: format!(
                    "it changes the synced table `{}` ({e}); change the table's struct instead",
                    schema.name
                ),
            })?;
        }
    }
    Ok(scripts.len() - applied.len())
}
