//! Schema evolution on devices: an app changes its struct and registers it
//! again; replicas on the old and the new struct sync with each other.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::path::{Path, PathBuf};

use sync_runtime::{Error, Since, SyncDb, SyncId, Synced, params};

mod v1 {
    use super::*;

    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        pub(crate) title: String,
        pub(crate) done: bool,
        pub(crate) notes: Option<String>,
    }
}

mod v2 {
    use super::*;

    /// v1 plus `due` (nullable) and `priority` (with a default), fields in
    /// another order.
    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        pub(crate) due: Option<i64>,
        pub(crate) title: String,
        #[synced(default = 2)]
        pub(crate) priority: i64,
        pub(crate) done: bool,
        pub(crate) notes: Option<String>,
    }
}

mod v3 {
    use super::*;

    /// v2 with `title` renamed to `name` and `notes` retired.
    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        #[synced(renamed_from = "title")]
        pub(crate) name: String,
        pub(crate) due: Option<i64>,
        #[synced(default = 2)]
        pub(crate) priority: i64,
        pub(crate) done: bool,
    }
}

/// A tag: a table only v3 has.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tags")]
struct Tag {
    #[synced(primary_key)]
    id: SyncId,
    label: String,
}

async fn open(path: &Path) -> SyncDb {
    SyncDb::open(path).await.unwrap()
}

fn file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Sends `from`'s changes that `to` has not seen to `to`, as two peers do.
async fn send(from: &SyncDb, to: &SyncDb) {
    let seen = to.seen_version(from.site_id()).await.unwrap();
    let payload = from.export_changes(Since::Version(seen)).await.unwrap();
    to.apply_changes(&payload).await.unwrap();
}

async fn both_ways(a: &SyncDb, b: &SyncDb) {
    send(a, b).await;
    send(b, a).await;
}

/// The database file's schema text and every row of the runtime's tables,
/// to compare a file before and after a refused change.
fn snapshot(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut out: Vec<String> = conn
        .prepare("SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let tables: Vec<String> = out
        .iter()
        .filter_map(|s| s.strip_prefix("table "))
        .map(|s| s.split(' ').next().unwrap().to_owned())
        .collect();
    for table in tables {
        let rows: Vec<String> = conn
            .prepare(&format!("SELECT * FROM \"{table}\""))
            .and_then(|mut stmt| {
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })?
                .collect()
            })
            .unwrap();
        out.push(format!("{table}: {rows:?}"));
    }
    out
}

/// The value of the column `notes` (which v3 retired) of a row, read from the
/// file.
fn notes(path: &Path, id: SyncId) -> Option<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT notes FROM todos WHERE id = ?1",
        [id.as_str()],
        |r| r.get(0),
    )
    .unwrap()
}

fn v1_todo(title: &str) -> v1::Todo {
    v1::Todo {
        id: SyncId::new(),
        title: title.into(),
        done: false,
        notes: Some(format!("notes of {title}")),
    }
}

#[tokio::test]
async fn adding_columns_records_no_change_and_rows_read_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    let db = open(&path).await;
    db.register::<v1::Todo>().await.unwrap();
    let milk = v1_todo("milk");
    db.insert(&milk).await.unwrap();
    let version = db.db_version().await.unwrap();
    drop(db);

    let db = open(&path).await;
    db.register::<v2::Todo>().await.unwrap();
    assert_eq!(db.db_version().await.unwrap(), version);
    assert!(
        db.changes_since(version).await.unwrap().is_empty(),
        "adding a column records nothing"
    );
    let row = db.get::<v2::Todo>(&milk.id).await.unwrap().unwrap();
    assert_eq!((row.due, row.priority), (None, 2));
    assert_eq!(row.title, "milk");
    assert_eq!(row.notes, milk.notes);
    // The new columns are tracked like the others.
    db.update(&v2::Todo {
        due: Some(5),
        ..row.clone()
    })
    .await
    .unwrap();
    let changes = db.changes_since(version).await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    // Registering the same struct again changes nothing.
    db.register::<v2::Todo>().await.unwrap();
    assert_eq!(
        db.get::<v2::Todo>(&milk.id).await.unwrap().unwrap().due,
        Some(5)
    );
}

#[tokio::test]
async fn a_retired_column_keeps_its_values_and_a_rename_keeps_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    let db = open(&path).await;
    db.register::<v1::Todo>().await.unwrap();
    let milk = v1_todo("milk");
    db.insert(&milk).await.unwrap();
    drop(db);

    let db = open(&path).await;
    db.register::<v3::Todo>().await.unwrap();
    let row = db.get::<v3::Todo>(&milk.id).await.unwrap().unwrap();
    assert_eq!(row.name, "milk");
    // The retired column is still in the table, with its value.
    assert_eq!(notes(&path, milk.id), milk.notes);
    // Rows created now leave it at its default.
    let bread = v3::Todo {
        id: SyncId::new(),
        name: "bread".into(),
        due: None,
        priority: 1,
        done: false,
    };
    db.insert(&bread).await.unwrap();
    let mut names: Vec<String> = db
        .query::<v3::Todo>("ORDER BY name", params![])
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    assert_eq!(names, ["bread", "milk"]);
    drop(db);

    // An app downgraded to v2 has `title` (the column's first name) and
    // `notes` again, with their values.
    let db = open(&path).await;
    db.register::<v2::Todo>().await.unwrap();
    let row = db.get::<v2::Todo>(&milk.id).await.unwrap().unwrap();
    assert_eq!((row.title.as_str(), &row.notes), ("milk", &milk.notes));
    let bread = db.get::<v2::Todo>(&bread.id).await.unwrap().unwrap();
    assert_eq!((bread.title.as_str(), bread.notes), ("bread", None));
}

#[tokio::test]
async fn old_and_new_versions_sync_side_by_side_peer_to_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        open(&file(&dir, "old.db")).await,
        open(&file(&dir, "new.db")).await,
    );
    old.register::<v1::Todo>().await.unwrap();
    new.register::<v1::Todo>().await.unwrap();
    let milk = v1_todo("milk");
    old.insert(&milk).await.unwrap();
    both_ways(&old, &new).await;

    // `new` moves to v3: a new column, a rename, a retired column, a new table.
    drop(new);
    let new = open(&file(&dir, "new.db")).await;
    new.register::<v3::Todo>().await.unwrap();
    new.register::<Tag>().await.unwrap();
    let mut row = new.get::<v3::Todo>(&milk.id).await.unwrap().unwrap();
    row.due = Some(7);
    row.name = "oat milk".into();
    new.update(&row).await.unwrap();
    new.insert(&Tag {
        id: SyncId::new(),
        label: "shopping".into(),
    })
    .await
    .unwrap();
    let eggs = v3::Todo {
        id: SyncId::new(),
        name: "eggs".into(),
        due: Some(1),
        priority: 9,
        done: false,
    };
    new.insert(&eggs).await.unwrap();

    // v1 takes what it knows and leaves the rest without failing.
    send(&new, &old).await;
    let seen = old.get::<v1::Todo>(&milk.id).await.unwrap().unwrap();
    assert_eq!(seen.title, "oat milk", "a rename is the same column");
    assert_eq!(
        old.get::<v1::Todo>(&eggs.id).await.unwrap().unwrap().title,
        "eggs"
    );

    // v1 edits the row: v3's column keeps its value everywhere.
    old.update(&v1::Todo {
        done: true,
        notes: Some("retired elsewhere".into()),
        ..seen
    })
    .await
    .unwrap();
    let butter = v1_todo("butter");
    old.insert(&butter).await.unwrap();
    send(&old, &new).await;
    let row = new.get::<v3::Todo>(&milk.id).await.unwrap().unwrap();
    assert_eq!(
        (row.done, row.due, row.name.as_str()),
        (true, Some(7), "oat milk")
    );
    assert_eq!(
        notes(&file(&dir, "new.db"), milk.id),
        Some("retired elsewhere".to_owned())
    );
    // Rows v1 creates read v3's defaults there.
    let butter_there = new.get::<v3::Todo>(&butter.id).await.unwrap().unwrap();
    assert_eq!((butter_there.due, butter_there.priority), (None, 2));

    // Once v1 upgrades, it asks again for what it had left out.
    drop(old);
    let old = open(&file(&dir, "old.db")).await;
    old.register::<v3::Todo>().await.unwrap();
    old.register::<Tag>().await.unwrap();
    both_ways(&old, &new).await;
    both_ways(&old, &new).await;
    for db in [&old, &new] {
        let row = db.get::<v3::Todo>(&milk.id).await.unwrap().unwrap();
        assert_eq!(row.due, Some(7));
        let eggs = db.get::<v3::Todo>(&eggs.id).await.unwrap().unwrap();
        assert_eq!(eggs.priority, 9);
        assert_eq!(db.query::<Tag>("", params![]).await.unwrap().len(), 1);
    }
    let rows = |db: &SyncDb| {
        let db = db.clone();
        async move {
            let mut rows = db.query::<v3::Todo>("", params![]).await.unwrap();
            rows.sort_by_key(|t| t.id);
            rows
        }
    };
    assert_eq!(rows(&old).await, rows(&new).await);
}

#[tokio::test]
async fn an_incompatible_change_is_refused_and_changes_nothing() {
    mod typed {
        use super::*;
        #[derive(Synced, Debug, Clone, PartialEq)]
        #[synced(table = "todos")]
        pub(crate) struct Todo {
            #[synced(primary_key)]
            pub(crate) id: SyncId,
            pub(crate) title: String,
            pub(crate) done: String,
            pub(crate) notes: Option<String>,
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    let db = open(&path).await;
    db.register::<v1::Todo>().await.unwrap();
    db.insert(&v1_todo("milk")).await.unwrap();
    drop(db);
    let before = snapshot(&path);
    let db = open(&path).await;
    let err = db.register::<typed::Todo>().await.unwrap_err();
    let Error::IncompatibleChange {
        table,
        change,
        remedy,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(table, "todos");
    assert!(
        change.contains("column `done` changes from INTEGER NOT NULL to TEXT NOT NULL"),
        "{change}"
    );
    assert!(remedy.contains("new column"), "{remedy}");
    drop(db);
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn an_evolution_that_fails_half_way_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    let db = open(&path).await;
    db.register::<v2::Todo>().await.unwrap();
    db.insert(&v2::Todo {
        id: SyncId::new(),
        due: None,
        title: "milk".into(),
        priority: 1,
        done: false,
        notes: None,
    })
    .await
    .unwrap();
    // An app view SQLite cannot read again once `title` is renamed: the
    // rename, which comes after the new columns, fails.
    db.execute_raw(
        "CREATE VIEW titles AS SELECT title FROM todos WHERE title IN (SELECT x FROM gone)",
        params![],
    )
    .await
    .unwrap();
    drop(db);
    let before = snapshot(&path);
    let db = open(&path).await;
    mod added {
        use super::*;
        #[derive(Synced, Debug, Clone, PartialEq)]
        #[synced(table = "todos")]
        pub(crate) struct Todo {
            #[synced(primary_key)]
            pub(crate) id: SyncId,
            #[synced(renamed_from = "title")]
            pub(crate) name: String,
            pub(crate) due: Option<i64>,
            #[synced(default = 2)]
            pub(crate) priority: i64,
            pub(crate) done: bool,
            pub(crate) notes: Option<String>,
            pub(crate) extra: Option<String>,
        }
    }
    let err = db.register::<added::Todo>().await.unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    drop(db);
    assert_eq!(snapshot(&path), before);
    // The file still works with the struct it had.
    let db = open(&path).await;
    db.register::<v2::Todo>().await.unwrap();
    assert_eq!(db.query::<v2::Todo>("", params![]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn what_a_payload_carries_for_tables_and_columns_here_unknown_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        open(&file(&dir, "old.db")).await,
        open(&file(&dir, "new.db")).await,
    );
    old.register::<v1::Todo>().await.unwrap();
    new.register::<v3::Todo>().await.unwrap();
    new.register::<Tag>().await.unwrap();
    new.insert(&Tag {
        id: SyncId::new(),
        label: "x".into(),
    })
    .await
    .unwrap();
    let payload = new.export_changes(Since::Beginning).await.unwrap();
    let report = old.apply_changes(&payload).await.unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.skipped, 2, "the tag's row and its label: {report:?}");
}

fn integrity(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn table_sql(path: &Path, table: &str) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn columns_added_to_a_composite_key_table_go_before_its_key_clause() {
    mod before {
        use super::*;
        #[derive(Synced, Debug, Clone, PartialEq)]
        #[synced(table = "cells")]
        pub(crate) struct Cell {
            #[synced(primary_key)]
            pub(crate) sheet: String,
            #[synced(primary_key)]
            pub(crate) pos: i64,
            pub(crate) text: String,
        }
    }
    mod after {
        use super::*;
        #[derive(Synced, Debug, Clone, PartialEq)]
        #[synced(table = "cells")]
        pub(crate) struct Cell {
            #[synced(primary_key)]
            pub(crate) sheet: String,
            #[synced(primary_key)]
            pub(crate) pos: i64,
            pub(crate) text: String,
            #[synced(default = "black")]
            pub(crate) color: String,
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    let db = open(&path).await;
    db.register::<before::Cell>().await.unwrap();
    db.insert(&before::Cell {
        sheet: "a".into(),
        pos: 1,
        text: "x".into(),
    })
    .await
    .unwrap();
    db.register::<after::Cell>().await.unwrap();
    let cell = db
        .get::<after::Cell>(&("a".to_owned(), 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cell.color, "black");
    db.insert(&after::Cell {
        sheet: "a".into(),
        pos: 2,
        text: "y".into(),
        color: "red".into(),
    })
    .await
    .unwrap();
    drop(db);
    // The runtime wrote the table's new text itself (SQLite's ADD COLUMN would
    // have appended the column after the key clause's text).
    let text = table_sql(&path, "cells");
    assert!(
        text.contains("\"color\" TEXT NOT NULL DEFAULT 'black',\n  PRIMARY KEY"),
        "{text}"
    );
    assert_eq!(integrity(&path), "ok");
}

#[tokio::test]
async fn a_table_the_app_created_keeps_its_own_constraints_when_it_gains_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '' \
             CHECK (length(title) < 100), done INTEGER NOT NULL DEFAULT 0, notes TEXT) STRICT;
             INSERT INTO todos VALUES ('00000000-0000-7000-8000-000000000001', 'milk', 0, NULL);",
        )
        .unwrap();
    }
    let db = open(&path).await;
    db.register::<v1::Todo>().await.unwrap();
    db.register::<v2::Todo>().await.unwrap();
    let rows = db.query::<v2::Todo>("", params![]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].priority, rows[0].due), (2, None));
    // Its CHECK constraint is still there.
    let long = v2::Todo {
        title: "x".repeat(200),
        ..rows[0].clone()
    };
    assert!(db.update(&long).await.is_err());
    drop(db);
    assert!(table_sql(&path, "todos").contains("CHECK"));
    assert_eq!(integrity(&path), "ok");
}

fn objects(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE '%synced%' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test]
async fn the_apps_migrations_apply_once_in_order_and_all_or_nothing() {
    const V1: &[&str] = &["CREATE INDEX todos_by_title ON todos (title)"];
    const V2: &[&str] = &[
        "CREATE INDEX todos_by_title ON todos (title)",
        "CREATE TABLE drafts (id INTEGER PRIMARY KEY, text TEXT);
         CREATE VIEW open_todos AS SELECT id, title FROM todos WHERE NOT done;
         UPDATE todos SET title = title || '!'",
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "app.db");
    let db = open(&path).await;
    db.register::<v1::Todo>().await.unwrap();
    let milk = v1_todo("milk");
    db.insert(&milk).await.unwrap();
    assert_eq!(db.migrate(V1).await.unwrap(), 1);
    assert_eq!(db.migrate(V1).await.unwrap(), 0);
    let version = db.db_version().await.unwrap();
    assert_eq!(db.migrate(V2).await.unwrap(), 1);
    // A migration's writes to a synced table are tracked.
    assert_eq!(db.changes_since(version).await.unwrap().len(), 1);
    assert_eq!(
        db.get::<v1::Todo>(&milk.id).await.unwrap().unwrap().title,
        "milk!"
    );
    let all = ["drafts", "open_todos", "todos", "todos_by_title"];
    drop(db);
    assert_eq!(objects(&path), all);
    let db = open(&path).await;

    // An older app on a file a newer one migrated, or an edited migration:
    // refused before anything runs.
    let err = db.migrate(V1).await.unwrap_err();
    assert!(
        matches!(err, Error::Migration { index: 1, ref reason } if reason.contains("newer")),
        "{err}"
    );
    let edited = ["CREATE INDEX todos_by_title ON todos (title, done)", V2[1]];
    let err = db.migrate(&edited).await.unwrap_err();
    assert!(
        matches!(err, Error::Migration { index: 0, ref reason } if reason.contains("differs")),
        "{err}"
    );

    // A migration that fails half way, one that changes a synced table's
    // columns, one that ends the transaction: nothing applied.
    for (bad, expected) in [
        (
            "CREATE INDEX drafts_by_text ON drafts (text); SELECT * FROM nowhere",
            "nowhere",
        ),
        (
            "ALTER TABLE todos ADD COLUMN extra TEXT",
            "synced table `todos`",
        ),
        ("CREATE TABLE x (a); COMMIT", ""),
        // The runtime's own objects: what syncs.
        (
            "DROP TRIGGER \"_synced_trigger.todos.insert\"",
            "drops `_synced_trigger.todos.insert`",
        ),
        (
            "DROP TABLE \"_synced_clock.todos\"",
            "drops `_synced_clock.todos`",
        ),
        (
            "DELETE FROM _synced_tables",
            "deletes from `_synced_tables`",
        ),
        (
            "UPDATE _synced_state SET db_version = 0",
            "writes `_synced_state`",
        ),
        (
            "CREATE INDEX mine ON \"_synced_clock.todos\" (\"title.v\")",
            "`_synced_clock.todos`",
        ),
    ] {
        let before = snapshot(&path);
        let list = [V2[0], V2[1], bad];
        let err = db.migrate(&list).await.unwrap_err();
        assert!(
            matches!(err, Error::Migration { index: 2, ref reason } if reason.contains(expected)),
            "{bad}: {err}"
        );
        assert_eq!(snapshot(&path), before, "{bad}");
    }
    db.register::<v1::Todo>().await.unwrap();
    db.insert(&v1_todo("still works")).await.unwrap();
}

#[tokio::test]
async fn a_table_registered_later_gets_the_rows_a_peer_sent_before() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        open(&file(&dir, "old.db")).await,
        open(&file(&dir, "new.db")).await,
    );
    old.register::<v1::Todo>().await.unwrap();
    new.register::<v1::Todo>().await.unwrap();
    new.register::<Tag>().await.unwrap();
    let tag = Tag {
        id: SyncId::new(),
        label: "shopping".into(),
    };
    new.insert(&tag).await.unwrap();
    new.insert(&v1_todo("milk")).await.unwrap();
    send(&new, &old).await;
    assert_eq!(old.query::<v1::Todo>("", params![]).await.unwrap().len(), 1);
    // Only a new table, no new column: the skipped rows are asked for again.
    old.register::<Tag>().await.unwrap();
    send(&new, &old).await;
    assert_eq!(old.query::<Tag>("", params![]).await.unwrap(), [tag]);
}

mod indexed {
    use super::*;

    /// v1 with `title` indexed.
    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        #[synced(index)]
        pub(crate) title: String,
        pub(crate) done: bool,
        pub(crate) notes: Option<String>,
    }

    /// The same, with `title` renamed to `name`, still indexed.
    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Renamed {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        #[synced(index, renamed_from = "title")]
        pub(crate) name: String,
        pub(crate) done: bool,
        pub(crate) notes: Option<String>,
    }
}

/// How SQLite finds the rows of `todos` whose column `column` is `'x'`.
fn plan(path: &Path, column: &str) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    let sql = format!("EXPLAIN QUERY PLAN SELECT * FROM todos WHERE {column} = 'x'");
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
}

#[tokio::test]
async fn a_field_marked_index_is_indexed_and_follows_the_struct() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir, "device.db");
    let db = open(&path).await;
    db.register::<v1::Todo>().await.unwrap();
    assert!(
        plan(&path, "title").contains("SCAN"),
        "{}",
        plan(&path, "title")
    );
    drop(db);

    // Indexed by a new version: an index, no change recorded.
    let db = open(&path).await;
    let version = db.db_version().await.unwrap();
    db.register::<indexed::Todo>().await.unwrap();
    assert!(
        plan(&path, "title").contains("USING INDEX"),
        "{}",
        plan(&path, "title")
    );
    assert!(db.changes_since(version).await.unwrap().is_empty());
    let sql = indexed::Todo::SCHEMA.sql();
    assert!(sql.contains("CREATE INDEX IF NOT EXISTS"), "{sql}");
    drop(db);

    // Renamed, it keeps its index; a version without the attribute drops it.
    let db = open(&path).await;
    db.register::<indexed::Renamed>().await.unwrap();
    assert!(
        plan(&path, "name").contains("USING INDEX"),
        "{}",
        plan(&path, "name")
    );
    drop(db);
    let db = open(&path).await;
    db.register::<v3::Todo>().await.unwrap();
    assert!(
        plan(&path, "name").contains("SCAN"),
        "{}",
        plan(&path, "name")
    );
    assert_eq!(integrity(&path), "ok");
}

mod v2_new_default {
    use super::*;

    /// v2 with `priority`'s default changed from 2 to 3.
    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        pub(crate) due: Option<i64>,
        pub(crate) title: String,
        #[synced(default = 3, first_default = 2)]
        pub(crate) priority: i64,
        pub(crate) done: bool,
        pub(crate) notes: Option<String>,
    }
}

/// `(title, priority)` of every row, by title.
async fn priorities(db: &SyncDb) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = db
        .query::<v2_new_default::Todo>("", params![])
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.title, t.priority))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_changed_default_is_for_new_rows_and_every_replica_reads_the_first_one_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (old, updated, installed) = (
        open(&file(&dir, "old.db")).await,
        open(&file(&dir, "updated.db")).await,
        open(&file(&dir, "installed.db")).await,
    );
    old.register::<v1::Todo>().await.unwrap();
    updated.register::<v1::Todo>().await.unwrap();
    old.insert(&v1_todo("before the column")).await.unwrap();
    both_ways(&old, &updated).await;
    // The updated device gets `priority` (default 2), then its default 3.
    updated.register::<v2::Todo>().await.unwrap();
    drop(updated);
    let updated = open(&file(&dir, "updated.db")).await;
    let version = updated.db_version().await.unwrap();
    updated.register::<v2_new_default::Todo>().await.unwrap();
    assert!(updated.changes_since(version).await.unwrap().is_empty());
    // A new install of the last version knows the column's first default.
    installed.register::<v2_new_default::Todo>().await.unwrap();
    old.insert(&v1_todo("by the old version")).await.unwrap();
    both_ways(&old, &updated).await;
    both_ways(&old, &installed).await;
    // New rows, written by raw SQL that leaves the column out, get the new
    // default on both; rows that never wrote it read the first on both.
    for (db, title) in [
        (&updated, "raw on updated"),
        (&installed, "raw on installed"),
    ] {
        db.execute_raw(
            "INSERT INTO todos (id, title, done) VALUES (?1, ?2, 0)",
            params![SyncId::new(), title],
        )
        .await
        .unwrap();
    }
    both_ways(&updated, &installed).await;
    both_ways(&updated, &old).await;
    let expected = [
        ("before the column".to_owned(), 2),
        ("by the old version".to_owned(), 2),
        ("raw on installed".to_owned(), 3),
        ("raw on updated".to_owned(), 3),
    ];
    assert_eq!(priorities(&updated).await, expected);
    assert_eq!(priorities(&installed).await, expected);
    drop(updated);
    assert_eq!(integrity(&file(&dir, "updated.db")), "ok");
}

mod v2_forgot_first {
    use super::*;

    /// v2 with `priority`'s default changed to 3, not saying it was 2.
    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        pub(crate) due: Option<i64>,
        pub(crate) title: String,
        #[synced(default = 3)]
        pub(crate) priority: i64,
        pub(crate) done: bool,
        pub(crate) notes: Option<String>,
    }
}

/// A version that did not say the first default, installed fresh, read its
/// new default for rows that never wrote the column; the version that says it
/// brings those rows back in line. Rows written while tracking was off keep
/// their values through a changed default.
#[tokio::test]
async fn a_first_default_said_late_realigns_and_untracked_rows_keep_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let (old, installed) = (
        open(&file(&dir, "old.db")).await,
        open(&file(&dir, "installed.db")).await,
    );
    old.register::<v1::Todo>().await.unwrap();
    old.insert(&v1_todo("by the old version")).await.unwrap();
    installed.register::<v2_forgot_first::Todo>().await.unwrap();
    send(&old, &installed).await;
    let read = |db: &SyncDb| {
        let db = db.clone();
        async move {
            let rows: Vec<v2_forgot_first::Todo> = db.query("", params![]).await.unwrap();
            rows.into_iter()
                .map(|t| (t.title, t.priority))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        read(&installed).await,
        [("by the old version".to_owned(), 3)]
    );
    drop(installed);
    let installed = open(&file(&dir, "installed.db")).await;
    installed.register::<v2_new_default::Todo>().await.unwrap();
    assert_eq!(
        priorities(&installed).await,
        [("by the old version".to_owned(), 2)]
    );

    // Rows the app wrote while tracking was off keep what they hold.
    let updated = open(&file(&dir, "updated.db")).await;
    updated.register::<v2::Todo>().await.unwrap();
    updated.disable_tracking::<v2::Todo>().await.unwrap();
    updated
        .execute_raw(
            "INSERT INTO todos (id, title, done, priority) VALUES (?1, 'untracked', 0, 9)",
            params![SyncId::new()],
        )
        .await
        .unwrap();
    drop(updated);
    let updated = open(&file(&dir, "updated.db")).await;
    updated.register::<v2_new_default::Todo>().await.unwrap();
    assert_eq!(priorities(&updated).await, [("untracked".to_owned(), 9)]);
}
