//! The file format's version, and the upgrade of files older releases wrote.
//!
//! The runtime's tables and the triggers it generates make up the file format.
//! Its version is kept in `_synced_format` (not in `PRAGMA user_version`, which
//! belongs to the app and its migration tools). Release 0.1.0 wrote no version:
//! a Synced file without the table is format 1.
//!
//! A file of an older format is upgraded when it is opened, in one write
//! transaction: each step from its format to [`FORMAT`] runs in order, then every
//! synced table's triggers and guards are generated again from its stored
//! descriptor, so that a file never keeps the triggers of the release that wrote
//! it. If any step fails, the file stays as it was. A file of a newer format
//! than this release knows is not opened ([`Error::NewerFormat`]).
//!
//! Schema descriptors are left as they are stored: their JSON, and so their
//! fingerprints, stay the same across an upgrade, and upgraded replicas keep
//! syncing with replicas not upgraded yet.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};
use crate::sql::{self, TableSql};
use crate::tracking;

/// The file format this release writes.
pub(crate) const FORMAT: i64 = 4;

/// The format of files that carry no version: those of release 0.1.0.
const UNVERSIONED: i64 = 1;

/// One upgrade step: the SQL that takes a file from the format before it.
struct Step {
    /// The format the step produces.
    to: i64,
    /// What it runs, in order, before the triggers are generated again.
    sql: &'static [&'static str],
}

/// Every upgrade step, oldest first.
const STEPS: &[Step] = &[
    // The version itself, and the count of vacuums that cursors carry.
    Step {
        to: 2,
        sql: &[sql::CREATE_META, sql::CREATE_FORMAT, sql::ADD_VACUUMS],
    },
    // Schema evolution: descriptors may name earlier names and retired columns
    // (which a format 2 runtime would misread), clock columns are named after
    // column ids, and what peers' payloads carried that the file lacked is
    // recorded (`_synced_skipped`).
    Step {
        to: 3,
        sql: &[sql::CREATE_META],
    },
    // The app versions a server published (`_synced_published`).
    Step {
        to: 4,
        sql: &[sql::CREATE_META],
    },
];

/// The format of an existing Synced file.
fn read(conn: &Connection) -> Result<i64> {
    let versioned: bool = conn.query_row(sql::HAS_FORMAT, [], |r| r.get(0))?;
    if !versioned {
        return Ok(UNVERSIONED);
    }
    Ok(conn.query_row(sql::READ_FORMAT, [], |r| r.get(0))?)
}

/// Checks the format of an existing Synced file, and upgrades it if it is older
/// than [`FORMAT`].
pub(crate) fn upgrade(conn: &mut Connection, path: &Path) -> Result<()> {
    let newer = |found| Error::NewerFormat {
        path: path.to_path_buf(),
        found,
        supported: FORMAT,
    };
    let found = read(conn)?;
    if found > FORMAT {
        return Err(newer(found));
    }
    if found == FORMAT {
        return Ok(());
    }
    // Another connection may be upgrading it: read again once it is ours.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = read(&tx)?;
    if found > FORMAT {
        return Err(newer(found));
    }
    if found < FORMAT {
        for step in STEPS.iter().filter(|step| step.to > found) {
            for statement in step.sql {
                tx.execute_batch(statement)?;
            }
        }
        regenerate(&tx)?;
        tx.execute(sql::WRITE_FORMAT, [FORMAT])?;
    }
    tx.commit()?;
    Ok(())
}

/// Creates the runtime's tables in a new file, marked with this release's
/// format, in one write transaction; or, if another connection made it a
/// Synced file first, checks and upgrades it as any existing one.
pub(crate) fn create(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let replica: bool = tx.query_row(sql::IS_REPLICA, [], |r| r.get(0))?;
    if replica {
        drop(tx);
        return upgrade(conn, path);
    }
    tx.execute_batch(sql::CREATE_META)?;
    tx.execute_batch(sql::CREATE_FORMAT)?;
    tx.execute(sql::WRITE_FORMAT, [FORMAT])?;
    tx.commit()?;
    Ok(())
}

/// Generates the triggers and guards of every synced table again, from its
/// stored descriptor (a table whose tracking is off gets its guards only).
fn regenerate(conn: &Connection) -> Result<()> {
    let tracked: Vec<String> = tracking::synced_tables(conn, true)?
        .into_iter()
        .map(|schema| schema.name.to_ascii_lowercase())
        .collect();
    for schema in tracking::synced_tables(conn, false)? {
        let sql = TableSql::new(&schema);
        conn.execute_batch(&sql.drop_triggers)?;
        conn.execute_batch(&sql.drop_guards)?;
        conn.execute_batch(&sql.create_guards)?;
        if tracked.contains(&schema.name.to_ascii_lowercase()) {
            conn.execute_batch(&sql.create_triggers)?;
        }
    }
    Ok(())
}
