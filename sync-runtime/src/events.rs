//! Change events: after each commit, which tables it wrote and which rows of
//! each, so that a UI updates what it shows without reading it all again.

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::sql;
use crate::tracking;
use crate::value::Value;

/// The most keys a [`TableChanges`] lists; a commit that changed more rows of
/// a table lists none of them (`keys` is `None`).
pub const MAX_LISTED_KEYS: usize = 1_000;

/// Events kept for a subscriber that has not read them yet; one that falls
/// further behind gets one event with `complete: false` in their place. With
/// up to [`MAX_LISTED_KEYS`] keys per table in each, this bounds what a
/// subscriber that stopped reading holds.
pub(crate) const KEPT_EVENTS: usize = 256;

/// What one commit on this database handle changed: a local write (typed or
/// raw SQL), a migration, or a merge of another replica's changes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Changed {
    /// The database's version after the commit (see
    /// [`SyncDb::db_version`](crate::SyncDb::db_version)); the same as the
    /// one before for a commit that wrote only tables that are not synced.
    pub version: i64,
    /// The tables the commit wrote, each with the rows it changed where they
    /// are known.
    pub tables: Vec<TableChanges>,
    /// Whether `tables` names every table the commit may have changed. It is
    /// `false` when the commit ran the app's own SQL that may write, or wrote
    /// a table the app put triggers on (the app's triggers are its SQL too),
    /// or emptied tables whole (a logout): SQL can change a local table in
    /// ways SQLite does not report (a `DELETE` without `WHERE`, a `WITHOUT
    /// ROWID` table, DDL). It is `false` too for the event that stands in for
    /// those a subscriber missed by falling more than 256 events behind. Read
    /// again what may have changed.
    pub complete: bool,
}

/// The changes of one table in a commit.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TableChanges {
    /// The table's name, as registered.
    pub table: String,
    /// The rows changed, by key, in the order they were last changed; `None`
    /// for a table that is not synced (its rows are not tracked) and for more
    /// than [`MAX_LISTED_KEYS`] rows.
    pub keys: Option<Vec<KeyChange>>,
}

/// A row a commit changed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KeyChange {
    /// The row's key: one value per key column, in the key's order.
    pub key: Vec<Value>,
    /// Whether the row is deleted now (else it was inserted or updated: read
    /// it by its key).
    pub deleted: bool,
}

impl Changed {
    /// Whether the commit may have changed `table` (ASCII case ignored, as
    /// SQLite does): it is listed, or the event is not complete.
    pub fn may_have_changed(&self, table: &str) -> bool {
        !self.complete || self.table(table).is_some()
    }

    /// The changes of `table`, if the commit wrote it.
    pub fn table(&self, table: &str) -> Option<&TableChanges> {
        self.tables
            .iter()
            .find(|t| t.table.eq_ignore_ascii_case(table))
    }

    /// An event that says nothing of what changed: it stands in for those a
    /// subscriber missed, or for one whose changes could not be read.
    pub(crate) fn unknown(version: i64) -> Self {
        Self {
            version,
            tables: Vec::new(),
            complete: false,
        }
    }
}

/// A subscription to a database handle's [`Changed`] events (see
/// [`SyncDb::change_events`](crate::SyncDb::change_events)): every commit
/// after it was made, in order.
pub struct ChangeEvents {
    events: broadcast::Receiver<Arc<Changed>>,
    versions: tokio::sync::watch::Receiver<i64>,
}

impl ChangeEvents {
    pub(crate) fn new(
        events: broadcast::Receiver<Arc<Changed>>,
        versions: tokio::sync::watch::Receiver<i64>,
    ) -> Self {
        Self { events, versions }
    }

    /// The next commit's changes, waiting for one if none is left;
    /// [`Error::Closed`] once the database is closed.
    pub async fn next(&mut self) -> Result<Arc<Changed>> {
        match self.events.recv().await {
            Ok(event) => Ok(event),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Ok(Arc::new(Changed::unknown(*self.versions.borrow())))
            }
            Err(broadcast::error::RecvError::Closed) => Err(Error::Closed),
        }
    }

    /// The next commit's changes if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Arc<Changed>> {
        match self.events.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                Some(Arc::new(Changed::unknown(*self.versions.borrow())))
            }
            Err(_) => None,
        }
    }
}

/// Describes a commit that wrote `written` (table names as the update hook
/// reported them), evicted the rows `evicted` (table, key) and moved the
/// database from version `before` to `version`: the tracked tables get the
/// keys of their rows changed since `before`, and the evicted ones.
pub(crate) fn describe(
    conn: &Connection,
    mut written: Vec<String>,
    evicted: Vec<(String, Vec<Value>)>,
    before: i64,
    version: i64,
    complete: bool,
) -> Result<Changed> {
    for (table, _) in &evicted {
        if !written.iter().any(|t| t.eq_ignore_ascii_case(table)) {
            written.push(table.clone());
        }
    }
    let tracked = if version > before || !evicted.is_empty() {
        tracking::synced_tables(conn, true)?
    } else {
        Vec::new()
    };
    let mut tables = Vec::with_capacity(written.len());
    for table in written {
        let Some(schema) = tracked.iter().find(|s| s.name.eq_ignore_ascii_case(&table)) else {
            tables.push(TableChanges { table, keys: None });
            continue;
        };
        let mut keys = if version > before {
            changed_keys(conn, schema, before)?
        } else {
            Some(Vec::new())
        };
        if let Some(listed) = &mut keys {
            listed.extend(
                evicted
                    .iter()
                    .filter(|(t, _)| t.eq_ignore_ascii_case(&schema.name))
                    .map(|(_, key)| KeyChange {
                        key: key.clone(),
                        deleted: true,
                    }),
            );
            if listed.len() > MAX_LISTED_KEYS {
                keys = None;
            }
        }
        tables.push(TableChanges {
            table: schema.name.to_string(),
            keys,
        });
    }
    Ok(Changed {
        version,
        tables,
        complete,
    })
}

/// The tables (lowercase) that triggers of the app's own (not the runtime's)
/// are on.
pub(crate) fn tables_with_app_triggers(conn: &Connection) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare_cached(sql::APP_TRIGGER_TABLES)?;
    let tables = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|t| Ok(t?.to_ascii_lowercase()))
        .collect::<Result<_>>()?;
    Ok(tables)
}

/// The keys of `schema`'s rows changed after version `before`, if there are
/// at most [`MAX_LISTED_KEYS`].
fn changed_keys(
    conn: &Connection,
    schema: &TableSchema,
    before: i64,
) -> Result<Option<Vec<KeyChange>>> {
    let mut stmt = conn.prepare_cached(&sql::changed_keys(schema))?;
    let keys = schema.key_columns().count();
    let limit = i64::try_from(MAX_LISTED_KEYS + 1).unwrap_or(i64::MAX);
    let mut rows = stmt.query(rusqlite::params![before, limit])?;
    let mut changed = Vec::new();
    while let Some(row) = rows.next()? {
        if changed.len() == MAX_LISTED_KEYS {
            return Ok(None);
        }
        let key = (0..keys)
            .map(|i| crate::change::owned(row.get_ref(i)?))
            .collect::<Result<Vec<_>>>()?;
        let cl: i64 = row.get(keys)?;
        changed.push(KeyChange {
            key,
            deleted: cl % 2 == 0,
        });
    }
    Ok(Some(changed))
}

/// The tables `select` reads (lowercase names), found in the program SQLite
/// compiles it to; `None` when it reads something that is not a table of the
/// database (a virtual table), so that any commit may change its result.
pub(crate) fn tables_read(conn: &Connection, select: &str) -> Result<Option<HashSet<String>>> {
    let mut roots = Vec::new();
    {
        let mut stmt = conn.prepare(&format!("EXPLAIN {select}"))?;
        // Parameters left unbound: the program is the same whatever they are.
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            let opcode: String = row.get(1)?;
            match opcode.as_str() {
                "OpenRead" | "ReopenIdx" => {
                    let (root, db): (i64, i64) = (row.get(3)?, row.get(4)?);
                    roots.push((db, root));
                }
                "VOpen" => return Ok(None),
                _ => {}
            }
        }
    }
    let mut tables = HashSet::new();
    for (db, root) in roots {
        let schema = match db {
            0 => "main",
            1 => "temp",
            // An attached database: not this one's tables.
            _ => return Ok(None),
        };
        let name: Option<String> = conn
            .query_row(
                &format!("SELECT tbl_name FROM {schema}.sqlite_schema WHERE rootpage = ?1"),
                [root],
                |r| r.get(0),
            )
            .ok();
        match name {
            Some(name) => tables.insert(name.to_ascii_lowercase()),
            None => return Ok(None),
        };
    }
    Ok(Some(tables))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::tables_read;

    fn read(conn: &rusqlite::Connection, select: &str) -> Option<Vec<String>> {
        tables_read(conn, select).unwrap().map(|tables| {
            let mut tables: Vec<String> = tables.into_iter().collect();
            tables.sort();
            tables
        })
    }

    #[test]
    fn the_tables_a_query_reads_are_found_through_joins_views_and_indexes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE Lists (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE items (id TEXT PRIMARY KEY, list INTEGER, done INTEGER) WITHOUT ROWID;
             CREATE INDEX items_by_list ON items (list);
             CREATE TABLE other (id INTEGER PRIMARY KEY);
             CREATE VIEW open_items AS SELECT * FROM items WHERE NOT done;
             CREATE TEMP TABLE scratch (x);",
        )
        .unwrap();
        let both = Some(vec!["items".to_owned(), "lists".to_owned()]);
        assert_eq!(
            read(
                &conn,
                "SELECT l.name, count(*) FROM lists l JOIN items i ON i.list = l.id GROUP BY l.id"
            ),
            both
        );
        assert_eq!(
            read(
                &conn,
                "SELECT * FROM open_items WHERE list IN (SELECT id FROM Lists)"
            ),
            both
        );
        assert_eq!(
            read(
                &conn,
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT count(*) FROM items WHERE list = ?1"
            ),
            Some(vec!["items".to_owned()])
        );
        assert_eq!(read(&conn, "SELECT 1 + 1"), Some(vec![]));
        assert_eq!(
            read(&conn, "SELECT x FROM scratch"),
            Some(vec!["scratch".to_owned()])
        );
        // A table-valued function is not a table of the database.
        assert_eq!(
            read(&conn, "SELECT * FROM pragma_table_info('items')"),
            None
        );
    }
}
