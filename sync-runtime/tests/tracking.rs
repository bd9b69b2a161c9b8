//! Change tracking: every local write, typed or raw, lands in the clock metadata.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::path::Path;

use sync_runtime::server::{Replica, RowFilter};
use sync_runtime::{Change, ChangeKind, Error, SyncDb, SyncId, Synced, Value, params};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(default = false)]
    done: bool,
    note: Option<String>,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events", algorithm = "gos")]
struct Event {
    #[synced(primary_key)]
    id: SyncId,
    body: String,
}

fn todo(title: &str) -> Todo {
    Todo {
        id: SyncId::new(),
        title: title.into(),
        done: false,
        note: None,
    }
}

async fn open(path: &Path) -> SyncDb {
    let db = SyncDb::open(path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.register::<Event>().await.unwrap();
    db
}

async fn memory() -> SyncDb {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.register::<Event>().await.unwrap();
    db
}

/// The changes of one row, as (kind, column, value, col_version, cl, db_version).
fn of_row(changes: &[Change], id: SyncId) -> Vec<(String, Option<Value>, i64, i64, i64)> {
    changes
        .iter()
        .filter(|c| c.pk == vec![Value::from(id)])
        .map(|c| match &c.kind {
            ChangeKind::Insert => ("insert".to_owned(), None, 0, c.cl, c.db_version),
            ChangeKind::Delete => ("delete".to_owned(), None, 0, c.cl, c.db_version),
            ChangeKind::Set {
                column,
                value,
                col_version,
            } => (
                column.clone(),
                Some(value.clone()),
                *col_version,
                c.cl,
                c.db_version,
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// Reads a table of the file directly, to check the metadata itself.
fn count(path: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn insert_records_the_row_and_every_column() {
    let db = memory().await;
    let t = todo("milk");
    db.insert(&t).await.unwrap();
    let changes = db.changes_since(0).await.unwrap();
    assert_eq!(
        of_row(&changes, t.id),
        vec![
            ("insert".into(), None, 0, 1, 1),
            ("title".into(), Some(Value::Text("milk".into())), 1, 1, 1),
            ("done".into(), Some(Value::Integer(0)), 1, 1, 1),
            ("note".into(), Some(Value::Null), 1, 1, 1),
        ]
    );
    assert!(changes.iter().all(|c| c.site_id == db.site_id()));
}

#[tokio::test]
async fn update_records_only_changed_columns() {
    let db = memory().await;
    let mut t = todo("milk");
    db.insert(&t).await.unwrap();
    t.done = true;
    db.update(&t).await.unwrap();
    db.update(&t).await.unwrap(); // nothing changed: nothing recorded, no version taken
    assert_eq!(db.db_version().await.unwrap(), 2);
    let changes = db.changes_since(1).await.unwrap();
    assert_eq!(
        of_row(&changes, t.id),
        vec![("done".into(), Some(Value::Integer(1)), 2, 1, 2)]
    );
}

#[tokio::test]
async fn raw_sql_is_tracked_like_typed_writes() {
    let (typed, raw) = (memory().await, memory().await);
    let mut t = todo("bread");

    typed.insert(&t).await.unwrap();
    raw.execute_raw(
        "INSERT INTO todos (id, title, done, note) VALUES (?1, ?2, ?3, ?4)",
        params![t.id, t.title.as_str(), t.done, t.note.clone()],
    )
    .await
    .unwrap();

    t.note = Some("whole grain".into());
    typed.update(&t).await.unwrap();
    raw.execute_raw(
        "UPDATE todos SET note = ?1 WHERE id = ?2",
        params!["whole grain", t.id],
    )
    .await
    .unwrap();

    let (a, b) = (
        typed.changes_since(0).await.unwrap(),
        raw.changes_since(0).await.unwrap(),
    );
    assert_eq!(of_row(&a, t.id), of_row(&b, t.id));
    assert!(!a.is_empty());

    typed.delete::<Todo>(&t.id).await.unwrap();
    raw.execute_raw("DELETE FROM todos WHERE id = ?1", params![t.id])
        .await
        .unwrap();
    let (a, b) = (
        typed.changes_since(2).await.unwrap(),
        raw.changes_since(2).await.unwrap(),
    );
    assert_eq!(of_row(&a, t.id), vec![("delete".into(), None, 0, 2, 3)]);
    assert_eq!(of_row(&a, t.id), of_row(&b, t.id));
}

#[tokio::test]
async fn one_db_version_per_transaction_with_increasing_seq() {
    let db = memory().await;
    let rows: Vec<Todo> = (0..5).map(|i| todo(&format!("t{i}"))).collect();
    let ids: Vec<SyncId> = rows.iter().map(|r| r.id).collect();
    db.transaction(move |tx| {
        for r in &rows {
            tx.insert(r)?;
        }
        tx.execute_raw("UPDATE todos SET done = 1 WHERE title = 't4'", params![])?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.db_version().await.unwrap(), 1);
    let changes = db.changes_since(0).await.unwrap();
    assert!(changes.iter().all(|c| c.db_version == 1));
    let inserts: Vec<&Change> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Insert)
        .collect();
    assert_eq!(inserts.len(), 5);
    let seqs: Vec<i64> = ids
        .iter()
        .map(|id| {
            inserts
                .iter()
                .find(|c| c.pk == vec![Value::from(*id)])
                .unwrap()
                .seq
        })
        .collect();
    // One seq per row, in the order the rows were created; every record of a row
    // (its insert and its columns) shares it.
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    for c in &changes {
        let row_seq = inserts.iter().find(|i| i.pk == c.pk).unwrap().seq;
        assert_eq!(c.seq, row_seq);
    }

    db.insert(&todo("next")).await.unwrap();
    let next = db.changes_since(1).await.unwrap();
    assert!(next.iter().all(|c| c.db_version == 2 && c.seq == 0));
}

#[tokio::test]
async fn rollback_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path).await;
    db.insert(&todo("kept")).await.unwrap();
    let before = db.changes_since(0).await.unwrap();

    // The closure fails after writing.
    let failing = todo("rolled back");
    let result = db
        .transaction(move |tx| {
            tx.insert(&failing)?;
            tx.execute_raw("UPDATE todos SET done = 1", params![])?;
            Err::<(), _>(Error::NotFound {
                table: "todos".into(),
            })
        })
        .await;
    assert!(result.is_err());

    // A statement fails halfway (the second row breaks the key constraint).
    let dup = SyncId::new();
    let err = db
        .execute_raw(
            "INSERT INTO todos (id, title) VALUES (?1, 'a'), (?1, 'b')",
            params![dup],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Constraint { .. }), "{err}");

    // The closure panics.
    let panicking = todo("panics");
    let handle = {
        let db = db.clone();
        tokio::spawn(async move {
            db.transaction(move |tx| {
                tx.insert(&panicking)?;
                if panicking.title == "panics" {
                    panic!("boom");
                }
                Ok::<_, Error>(())
            })
            .await
        })
    };
    assert!(handle.await.unwrap_err().is_panic());

    assert_eq!(db.changes_since(0).await.unwrap(), before);
    assert_eq!(db.db_version().await.unwrap(), 1);
    assert_eq!(db.query::<Todo>("", params![]).await.unwrap().len(), 1);
    drop(db);
    assert_eq!(
        count(&path, "SELECT count(*) FROM \"_synced_clock.todos\""),
        1
    );
}

#[tokio::test]
async fn causal_length_counts_deletes_and_reinserts() {
    let db = memory().await;
    let mut t = todo("again");
    db.insert(&t).await.unwrap();
    for expected_cl in 2..=5 {
        if expected_cl % 2 == 0 {
            db.delete::<Todo>(&t.id).await.unwrap();
        } else {
            t.title = format!("again {expected_cl}");
            db.insert(&t).await.unwrap();
        }
        let version = db.db_version().await.unwrap();
        let changes = db.changes_since(version - 1).await.unwrap();
        let row = of_row(&changes, t.id);
        assert!(row.iter().all(|c| c.3 == expected_cl), "{row:?}");
        if expected_cl % 2 == 0 {
            assert_eq!(row, vec![("delete".into(), None, 0, expected_cl, version)]);
        } else {
            // A resurrected row starts its column versions afresh.
            assert_eq!(row[0], ("insert".into(), None, 0, expected_cl, version));
            assert!(row[1..].iter().all(|c| c.2 == 1), "{row:?}");
        }
    }
}

#[tokio::test]
async fn grow_only_tables_refuse_deletes_and_key_changes() {
    let db = memory().await;
    let e = Event {
        id: SyncId::new(),
        body: "created".into(),
    };
    db.insert(&e).await.unwrap();

    let err = db.delete::<Event>(&e.id).await.unwrap_err();
    assert!(
        matches!(err, Error::GrowOnly { ref table } if table == "events"),
        "{err}"
    );
    let err = db
        .execute_raw("DELETE FROM events", params![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GrowOnly { .. }), "{err}");
    let err = db
        .execute_raw("UPDATE events SET id = ?1", params![SyncId::new()])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GrowOnly { .. }), "{err}");

    // Updates are allowed and tracked.
    db.update(&Event {
        body: "edited".into(),
        ..e.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        db.get::<Event>(&e.id).await.unwrap().unwrap().body,
        "edited"
    );
    let changes = db.changes_since(1).await.unwrap();
    assert_eq!(changes.len(), 1);
}

#[tokio::test]
async fn key_change_is_a_delete_and_an_insert_of_every_column() {
    let db = memory().await;
    let mut t = todo("move me");
    t.note = Some("n".into());
    db.insert(&t).await.unwrap();
    t.done = true;
    db.update(&t).await.unwrap();

    let new_id = SyncId::new();
    db.execute_raw(
        "UPDATE todos SET id = ?1 WHERE id = ?2",
        params![new_id, t.id],
    )
    .await
    .unwrap();
    let changes = db.changes_since(2).await.unwrap();
    assert_eq!(
        of_row(&changes, t.id),
        vec![("delete".into(), None, 0, 2, 3)]
    );
    assert_eq!(
        of_row(&changes, new_id),
        vec![
            ("insert".into(), None, 0, 1, 3),
            ("title".into(), Some(Value::Text("move me".into())), 1, 1, 3),
            ("done".into(), Some(Value::Integer(1)), 1, 1, 3),
            ("note".into(), Some(Value::Text("n".into())), 1, 1, 3),
        ]
    );
    // Moving back resurrects the old key with every current column.
    db.execute_raw(
        "UPDATE todos SET id = ?1 WHERE id = ?2",
        params![t.id, new_id],
    )
    .await
    .unwrap();
    let changes = db.changes_since(3).await.unwrap();
    assert_eq!(of_row(&changes, t.id)[0], ("insert".into(), None, 0, 3, 4));
    assert_eq!(
        of_row(&changes, new_id),
        vec![("delete".into(), None, 0, 2, 4)]
    );
}

#[tokio::test]
async fn tracking_can_be_disabled_enabled_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path).await;
    let kept = todo("tracked");
    let removed = todo("removed while off");
    db.insert(&kept).await.unwrap();
    db.insert(&removed).await.unwrap();
    let version = db.db_version().await.unwrap();

    db.disable_tracking::<Todo>().await.unwrap();
    let added = todo("added while off");
    db.insert(&added).await.unwrap();
    db.delete::<Todo>(&removed.id).await.unwrap();
    db.execute_raw("UPDATE todos SET title = 'edited while off'", params![])
        .await
        .unwrap();
    assert!(db.changes_since(version).await.unwrap().is_empty());
    assert_eq!(db.db_version().await.unwrap(), version);

    db.enable_tracking::<Todo>().await.unwrap();
    let changes = db.changes_since(version).await.unwrap();
    assert_eq!(of_row(&changes, added.id)[0].0, "insert");
    assert_eq!(
        of_row(&changes, removed.id),
        vec![("delete".into(), None, 0, 2, version + 1)]
    );
    assert!(
        of_row(&changes, kept.id).is_empty(),
        "updates made while off are not detected"
    );

    // Tracking is on again for new writes.
    db.delete::<Todo>(&kept.id).await.unwrap();
    assert_eq!(
        of_row(&db.changes_since(version + 1).await.unwrap(), kept.id)[0].0,
        "delete"
    );

    db.drop_tracking::<Todo>().await.unwrap();
    assert!(matches!(
        db.insert(&todo("x")).await.unwrap_err(),
        Error::NotRegistered { .. }
    ));
    drop(db);
    assert_eq!(count(&path, "SELECT count(*) FROM todos"), 1);
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_synced%todos%' ESCAPE '\\'"
        ),
        0
    );
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM _synced_tables WHERE name = 'todos'"
        ),
        0
    );
    // The events table is untouched.
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM _synced_tables WHERE name = 'events'"
        ),
        1
    );
}

#[tokio::test]
async fn reopening_keeps_site_versions_and_tracking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path).await;
    let site = db.site_id();
    let t = todo("persist");
    db.insert(&t).await.unwrap();
    db.disable_tracking::<Event>().await.unwrap();
    let changes = db.changes_since(0).await.unwrap();
    drop(db);

    let db = open(&path).await; // registering again is a no-op
    assert_eq!(db.site_id(), site);
    assert_eq!(db.db_version().await.unwrap(), 1);
    assert_eq!(db.changes_since(0).await.unwrap(), changes);
    db.delete::<Todo>(&t.id).await.unwrap();
    assert_eq!(db.db_version().await.unwrap(), 2);
    // Tracking of events stayed off across the reopen.
    db.insert(&Event {
        id: SyncId::new(),
        body: "untracked".into(),
    })
    .await
    .unwrap();
    assert_eq!(db.db_version().await.unwrap(), 2);
}

#[tokio::test]
async fn registering_twice_is_a_no_op() {
    let db = memory().await;
    db.insert(&todo("one")).await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.register::<Todo>().await.unwrap();
    assert_eq!(db.db_version().await.unwrap(), 1);
    assert_eq!(db.changes_since(0).await.unwrap().len(), 4);
}

#[tokio::test]
async fn writes_from_another_connection_are_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path).await;
    db.insert(&todo("mine")).await.unwrap();

    // A plain SQLite connection, e.g. a command-line tool, writes the file.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "INSERT INTO todos (id, title) VALUES (?1, 'theirs')",
            [SyncId::new().as_str()],
        )
        .unwrap();
    drop(other);

    // Its change gets its own version, before this connection's next write.
    db.insert(&todo("mine again")).await.unwrap();
    let changes = db.changes_since(1).await.unwrap();
    let versions: Vec<i64> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Insert)
        .map(|c| c.db_version)
        .collect();
    assert_eq!(versions, vec![2, 3]);
}

/// Runs `sql` on the file at `path` through a connection of its own: how
/// these tests set up the runtime's metadata, which the app's SQL may not
/// change.
fn tamper(path: &Path, sql: &str, params: impl rusqlite::Params) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute(sql, params)
        .unwrap();
}

/// A database file in `dir` with the `Todo` table.
async fn on_file(dir: &tempfile::TempDir) -> (SyncDb, std::path::PathBuf) {
    let path = dir.path().join("db.db");
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    (db, path)
}

#[tokio::test]
async fn the_writer_of_a_change_is_the_origin_of_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let (db, path) = on_file(&dir).await;
    let local = todo("written here");
    db.insert(&local).await.unwrap();
    // What a merge records for a version holding another replica's changes.
    let elsewhere = [7u8; 16];
    tamper(
        &path,
        "INSERT INTO _synced_sites (ordinal, site_id) VALUES (1, ?1)",
        [elsewhere.to_vec()],
    );
    tamper(
        &path,
        "INSERT INTO _synced_versions (db_version, site, origin_version) VALUES (3, 1, 40)",
        [],
    );
    let remote = todo("written elsewhere");
    db.insert(&remote).await.unwrap(); // version 2, here
    // Version 3 brought another replica's title.
    tamper(
        &path,
        "UPDATE \"_synced_clock.todos\" SET \"title.dv\" = 3, _synced_dv = 3 WHERE id = ?1",
        [remote.id.to_string()],
    );

    let changes = db.changes_since(0).await.unwrap();
    let site_of = |id: SyncId, column: &str| {
        changes
            .iter()
            .find(|c| {
                c.pk == vec![Value::from(id)]
                    && matches!(&c.kind, ChangeKind::Set { column: name, .. } if name == column)
            })
            .unwrap()
            .site_id
    };
    assert_eq!(site_of(local.id, "title"), db.site_id());
    assert_eq!(site_of(remote.id, "title").as_bytes(), &elsewhere);
    assert_eq!(site_of(remote.id, "done"), db.site_id());
}

#[tokio::test]
async fn writes_under_the_merge_flag_are_not_recorded_and_app_triggers_still_fire() {
    let dir = tempfile::tempdir().unwrap();
    let (db, path) = on_file(&dir).await;
    let kept = todo("existing");
    db.insert(&kept).await.unwrap();
    db.execute_raw("CREATE TABLE audit (what TEXT) STRICT", params![])
        .await
        .unwrap();
    db.execute_raw(
        "CREATE TRIGGER audit_todos AFTER INSERT ON todos BEGIN INSERT INTO audit VALUES (NEW.title); END",
        params![],
    )
    .await
    .unwrap();
    let before = db.changes_since(0).await.unwrap();

    // What the merge does around the rows it writes, in one transaction (of
    // a connection of its own: the app's SQL may not set the flag).
    let id = SyncId::new().to_string();
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute("UPDATE _synced_state SET applying = 1", [])
        .unwrap();
    tx.execute(
        "INSERT INTO todos (id, title) VALUES (?1, 'from a peer')",
        [id],
    )
    .unwrap();
    tx.execute("UPDATE todos SET done = 1", []).unwrap();
    tx.execute("UPDATE _synced_state SET applying = 0", [])
        .unwrap();
    tx.commit().unwrap();
    drop(conn);

    // The metadata is as before (the changes view reads current values, so
    // compare the clocks only): the merge writes its own metadata.
    let clocks = |changes: Vec<Change>| {
        changes
            .into_iter()
            .map(|c| match c.kind {
                ChangeKind::Set {
                    column,
                    col_version,
                    ..
                } => (c.pk, Some(column), col_version, c.cl, c.db_version),
                _ => (c.pk, None, 0, c.cl, c.db_version),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(clocks(db.changes_since(0).await.unwrap()), clocks(before));
    assert_eq!(db.db_version().await.unwrap(), 1);
    let audited = db
        .execute_raw(
            "UPDATE audit SET what = what WHERE what = 'from a peer'",
            params![],
        )
        .await
        .unwrap();
    assert_eq!(audited, 1, "the app's own trigger fired for the merged row");
}

#[tokio::test]
async fn a_row_created_after_the_cursor_is_reported_as_inserted_even_if_rewritten() {
    let db = memory().await;
    let mut t = todo("first");
    db.insert(&t).await.unwrap();
    t.title = "second".into();
    t.done = true;
    t.note = Some("n".into());
    db.update(&t).await.unwrap(); // every value column rewritten
    let row = of_row(&db.changes_since(0).await.unwrap(), t.id);
    assert_eq!(row[0], ("insert".into(), None, 0, 1, 1));
    assert!(row[1..].iter().all(|c| c.2 == 2 && c.4 == 2), "{row:?}");
    // After the insert, only the update.
    let row = of_row(&db.changes_since(1).await.unwrap(), t.id);
    assert!(row.iter().all(|c| c.0 != "insert"), "{row:?}");
}

/// Reads the changes after `cursor` the way a sync client would: collects the titles
/// written, moves the cursor to the highest version read and checks that it is the
/// database's version (every version reported is final).
async fn read_titles(db: &SyncDb, cursor: &mut i64, titles: &mut Vec<Value>) {
    let changes = db.changes_since(*cursor).await.unwrap();
    for c in &changes {
        if let ChangeKind::Set { column, value, .. } = &c.kind
            && column == "title"
        {
            titles.push(value.clone());
        }
    }
    *cursor = changes
        .iter()
        .map(|c| c.db_version)
        .max()
        .unwrap_or(*cursor);
    assert_eq!(*cursor, db.db_version().await.unwrap());
}

#[tokio::test]
async fn a_reader_keeping_its_cursor_never_misses_changes_from_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path).await;
    db.insert(&todo("mine")).await.unwrap();
    let foreign_insert = |title: &str| {
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute(
                "INSERT INTO todos (id, title) VALUES (?1, ?2)",
                [SyncId::new().as_str(), title],
            )
            .unwrap();
    };

    let mut cursor = db.db_version().await.unwrap();
    let mut seen = Vec::new();
    for title in ["theirs 1", "theirs 2", "theirs 3"] {
        foreign_insert(title);
        // The open version is closed by the read, so everything it reports is final.
        read_titles(&db, &mut cursor, &mut seen).await;
    }
    assert_eq!(
        seen,
        ["theirs 1", "theirs 2", "theirs 3"].map(|t| Value::Text(t.into()))
    );
}

#[tokio::test]
async fn a_failed_write_after_another_connection_committed_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path).await;
    let dup = todo("dup");
    db.insert(&dup).await.unwrap();
    let mut cursor = db.db_version().await.unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "INSERT INTO todos (id, title) VALUES (?1, 'theirs')",
            [SyncId::new().as_str()],
        )
        .unwrap();
    // This write closes their version, then fails and rolls the close back.
    assert!(db.insert(&dup).await.is_err());

    let mut titles = Vec::new();
    for write in ["mine", ""] {
        if !write.is_empty() {
            db.insert(&todo(write)).await.unwrap();
        }
        read_titles(&db, &mut cursor, &mut titles).await;
    }
    assert_eq!(titles, ["theirs", "mine"].map(|t| Value::Text(t.into())));
}

/// Checks that the app's SQL may not end the runtime's transaction.
async fn assert_transaction_control_refused(db: &SyncDb) {
    let version = db.db_version().await.unwrap();
    let t = todo("inside");
    for statement in ["COMMIT", "ROLLBACK", "BEGIN", "SAVEPOINT s", "RELEASE s"] {
        let t = t.clone();
        let err = db
            .transaction(move |tx| {
                tx.insert(&t)?;
                tx.execute_raw(statement, params![])?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not authorized"),
            "{statement}: {err}"
        );
    }
    assert!(db.get::<Todo>(&t.id).await.unwrap().is_none());
    assert_eq!(db.db_version().await.unwrap(), version);
    // The runtime's own transactions still work.
    db.insert(&t).await.unwrap();
}

#[tokio::test]
async fn transaction_control_in_the_apps_sql_is_refused() {
    assert_transaction_control_refused(&memory().await).await;
}

/// Indexing a filter's columns prepares the filter under an authorizer of its
/// own; the guard must come back after it.
#[tokio::test]
async fn transaction_control_stays_refused_after_a_filter_is_indexed() {
    let db = memory().await;
    let policy = RowFilter::Where {
        sql: "done = 1".into(),
        params: Vec::new(),
    };
    let replica = Replica::new(db.clone());
    assert_eq!(
        replica.index_filter("todos", policy).await.unwrap(),
        ["done"]
    );
    assert_transaction_control_refused(&db).await;
}

#[tokio::test]
async fn a_handled_statement_failure_takes_no_version() {
    let db = memory().await;
    let t = todo("one");
    db.insert(&t).await.unwrap();
    let id = t.id;
    db.transaction(move |tx| {
        // Aborts at the second row: the statement, clocks included, is undone.
        let failed = tx.execute_raw(
            "INSERT INTO todos (id, title) VALUES (?1, 'new'), (?2, 'dup')",
            params![SyncId::new(), id],
        );
        assert!(failed.is_err());
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.db_version().await.unwrap(), 1);
}

#[tokio::test]
async fn changes_of_a_table_whose_tracking_is_off_are_not_reported() {
    let db = memory().await;
    let mut t = todo("a");
    db.insert(&t).await.unwrap();
    db.disable_tracking::<Todo>().await.unwrap();
    t.title = "changed while off".into();
    db.update(&t).await.unwrap();
    assert!(db.changes_since(0).await.unwrap().is_empty());
}
