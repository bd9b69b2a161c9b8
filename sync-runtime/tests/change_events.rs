//! Change events: each commit names the tables it wrote and the keys of the
//! synced rows it changed, whoever made the change; and live queries, which
//! run again on them. Then the edges: writes SQLite's update hook does not
//! report, app triggers, evictions, names that differ in case, two handles
//! on one file, a transaction ended early.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::time::Duration;

#[cfg(feature = "http")]
use sync_runtime::Remote;
use sync_runtime::server::{Replica, RowFilter, RowFilters};
use sync_runtime::{
    BatchLimits, Changed, Cursor, Error, FromRow, KeyChange, MAX_LISTED_KEYS, Since, SyncDb,
    SyncId, Synced, Value, Watch, params,
};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "Lists")]
struct List {
    #[synced(primary_key)]
    name: String,
    position: i64,
}

fn todo(title: &str) -> Todo {
    Todo {
        id: SyncId::new(),
        title: title.into(),
    }
}

async fn db() -> SyncDb {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.register::<List>().await.unwrap();
    db
}

#[derive(FromRow, Debug, Clone, PartialEq)]
struct Count {
    n: i64,
}

/// A live count, and its first result.
async fn count(db: &SyncDb, sql: &str) -> (Watch<Count>, i64) {
    let mut w = db.watch_read::<Count>(sql, params![]);
    let n = w.next().await.unwrap()[0].n;
    (w, n)
}

/// The watch's next result, which must come.
async fn next<R: PartialEq + Clone>(w: &mut Watch<R>) -> Vec<R> {
    tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .expect("watch never yields")
        .unwrap()
}

fn keys(event: &Changed, table: &str) -> Vec<KeyChange> {
    event.table(table).unwrap().keys.clone().unwrap()
}

fn change(key: impl Into<Value>, deleted: bool) -> (Vec<Value>, bool) {
    (vec![key.into()], deleted)
}

fn pairs(keys: &[KeyChange]) -> Vec<(Vec<Value>, bool)> {
    keys.iter().map(|k| (k.key.clone(), k.deleted)).collect()
}

#[tokio::test]
async fn typed_writes_name_their_rows() {
    let db = db().await;
    let mut events = db.change_events();
    let (a, b) = (todo("a"), todo("b"));
    db.transaction({
        let (a, b) = (a.clone(), b.clone());
        move |tx| {
            tx.insert(&a)?;
            tx.insert(&b)?;
            tx.insert(&List {
                name: "home".into(),
                position: 1,
            })
        }
    })
    .await
    .unwrap();
    let both = events.next().await.unwrap();
    assert!(both.complete);
    assert_eq!(both.version, db.db_version().await.unwrap());
    let names: Vec<&str> = both.tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(names, ["todos", "Lists"]);
    assert_eq!(
        pairs(&keys(&both, "todos")),
        [change(a.id, false), change(b.id, false)]
    );
    // Names compare as SQLite compares them.
    assert!(both.may_have_changed("lists"));
    assert_eq!(pairs(&keys(&both, "LISTS")), [change("home", false)]);

    db.modify::<Todo, _>(&a.id, |t| t.title = "A".into())
        .await
        .unwrap();
    let modified = events.next().await.unwrap();
    assert_eq!(pairs(&keys(&modified, "todos")), [change(a.id, false)]);
    assert!(!modified.may_have_changed("Lists"));

    db.delete::<Todo>(&b.id).await.unwrap();
    let deleted = events.next().await.unwrap();
    assert_eq!(pairs(&keys(&deleted, "todos")), [change(b.id, true)]);
    assert!(events.try_next().is_none());
}

#[tokio::test]
async fn raw_sql_names_its_tables_and_says_it_may_have_done_more() {
    let db = db().await;
    db.migrate(&["CREATE TABLE drafts (id INTEGER PRIMARY KEY, text TEXT)"])
        .await
        .unwrap();
    let mut events = db.change_events();
    let a = todo("a");
    db.execute_raw(
        "INSERT INTO todos (id, title) VALUES (?1, 'raw')",
        params![a.id],
    )
    .await
    .unwrap();
    let raw = events.next().await.unwrap();
    assert!(!raw.complete);
    assert_eq!(pairs(&keys(&raw, "todos")), [change(a.id, false)]);

    // A local table: listed, without keys (its rows are not tracked), at the
    // same version.
    let version = db.db_version().await.unwrap();
    db.execute_raw("INSERT INTO drafts (text) VALUES ('x')", params![])
        .await
        .unwrap();
    let local = events.next().await.unwrap();
    assert_eq!(local.version, version);
    assert_eq!(local.tables.len(), 1);
    assert_eq!(local.tables[0].table, "drafts");
    assert_eq!(local.tables[0].keys, None);
    // A statement that wrote nothing the hook saw may still have changed a
    // table (a `DELETE` without `WHERE`): an event says it may have.
    db.execute_raw("UPDATE drafts SET text = 'y' WHERE id = -1", params![])
        .await
        .unwrap();
    let nothing_seen = events.next().await.unwrap();
    assert!(!nothing_seen.complete && nothing_seen.tables.is_empty());
    assert!(nothing_seen.may_have_changed("drafts"));
    // Typed writes and reads do not run the app's SQL: nothing, no event.
    db.query::<Todo>("title = 'raw'", params![]).await.unwrap();
    assert!(events.try_next().is_none());
}

#[tokio::test]
async fn merges_name_the_rows_they_changed() {
    let (db, peer) = (db().await, db().await);
    let (kept, gone) = (todo("kept"), todo("gone"));
    peer.insert(&kept).await.unwrap();
    peer.insert(&gone).await.unwrap();
    peer.delete::<Todo>(&gone.id).await.unwrap();
    let mut events = db.change_events();
    let payload = peer.export_changes(Since::Beginning).await.unwrap();
    db.apply_changes(&payload).await.unwrap();
    let merged = events.next().await.unwrap();
    assert!(merged.complete);
    let mut got = pairs(&keys(&merged, "todos"));
    got.sort_by_key(|(_, deleted)| *deleted);
    assert_eq!(got, [change(kept.id, false), change(gone.id, true)]);
    // The same payload again changes nothing: no event.
    db.apply_changes(&payload).await.unwrap();
    assert!(events.try_next().is_none());
}

#[tokio::test]
async fn more_rows_than_listed_name_the_table_only() {
    let db = db().await;
    let mut events = db.change_events();
    for count in [MAX_LISTED_KEYS, MAX_LISTED_KEYS + 1] {
        let rows: Vec<Todo> = (0..count).map(|i| todo(&i.to_string())).collect();
        db.transaction(move |tx| {
            for row in &rows {
                tx.insert(row)?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let event = events.next().await.unwrap();
        let listed = event.table("todos").unwrap().keys.as_ref().map(Vec::len);
        let expected = (count == MAX_LISTED_KEYS).then_some(count);
        assert_eq!(listed, expected, "{count} rows");
    }
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_it_missed_events() {
    let db = db().await;
    let mut events = db.change_events();
    for i in 0..300 {
        db.insert(&todo(&i.to_string())).await.unwrap();
    }
    let first = events.next().await.unwrap();
    assert!(!first.complete, "the missed events are not stood in for");
    assert!(first.tables.is_empty());
    // Then the events it still has, in order.
    let mut last = 0;
    while let Some(event) = events.try_next() {
        assert!(event.complete && event.version > last);
        last = event.version;
    }
    assert_eq!(last, db.db_version().await.unwrap());
}

#[tokio::test]
async fn events_end_when_the_database_closes() {
    let db = db().await;
    let mut events = db.change_events();
    drop(db);
    assert!(matches!(events.next().await, Err(Error::Closed)));
}

// The edges.

#[tokio::test]
async fn emptying_a_local_table_wakes_its_watch() {
    let db = db().await;
    db.migrate(&["CREATE TABLE drafts (id INTEGER PRIMARY KEY, t TEXT)"])
        .await
        .unwrap();
    db.execute_raw("INSERT INTO drafts (t) VALUES ('a'), ('b')", params![])
        .await
        .unwrap();
    let (mut w, n) = count(&db, "SELECT count(*) AS n FROM drafts").await;
    assert_eq!(n, 2);
    let mut events = db.change_events();
    db.execute_raw("DELETE FROM drafts", params![])
        .await
        .unwrap();
    assert!(events.try_next().is_some(), "no event");
    assert_eq!(next(&mut w).await, [Count { n: 0 }]);
}

#[tokio::test]
async fn a_without_rowid_local_table_wakes_its_watch() {
    let db = db().await;
    db.migrate(&["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID"])
        .await
        .unwrap();
    let (mut w, _) = count(&db, "SELECT count(*) AS n FROM kv").await;
    db.execute_raw("INSERT INTO kv VALUES ('a', 'b')", params![])
        .await
        .unwrap();
    assert_eq!(next(&mut w).await, [Count { n: 1 }]);
}

#[tokio::test]
async fn a_redefined_view_is_read_again() {
    let db = db().await;
    let v1 = "CREATE VIEW shown AS SELECT id FROM todos";
    db.migrate(&[v1]).await.unwrap();
    db.insert(&todo("a")).await.unwrap();
    db.insert(&List {
        name: "l1".into(),
        position: 0,
    })
    .await
    .unwrap();
    db.insert(&List {
        name: "l2".into(),
        position: 0,
    })
    .await
    .unwrap();
    let (mut w, n) = count(&db, "SELECT count(*) AS n FROM shown").await;
    assert_eq!(n, 1);
    db.migrate(&[
        v1,
        "DROP VIEW shown; CREATE VIEW shown AS SELECT name AS id FROM lists",
    ])
    .await
    .unwrap();
    assert_eq!(next(&mut w).await, [Count { n: 2 }]);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn logout_wakes_watches_even_with_tracking_off() {
    let db = db().await;
    db.insert(&todo("a")).await.unwrap();
    db.disable_tracking::<Todo>().await.unwrap();
    let mut w = db.watch::<Todo>("", params![]);
    assert_eq!(w.next().await.unwrap().len(), 1);
    db.logout().await.unwrap();
    assert!(db.query::<Todo>("", params![]).await.unwrap().is_empty());
    assert!(next(&mut w).await.is_empty());
}

#[tokio::test]
async fn an_app_trigger_makes_the_event_incomplete() {
    let db = db().await;
    db.migrate(&["CREATE TABLE titles (title TEXT PRIMARY KEY) WITHOUT ROWID;
        CREATE TRIGGER keep AFTER INSERT ON todos BEGIN INSERT OR IGNORE INTO titles VALUES (NEW.title); END"])
        .await.unwrap();
    let (mut w, _) = count(&db, "SELECT count(*) AS n FROM titles").await;
    let mut events = db.change_events();
    db.insert(&todo("milk")).await.unwrap();
    let e = events.next().await.unwrap();
    assert!(e.may_have_changed("titles"), "{e:?}"); // fails: complete: true, only `todos`
    assert_eq!(next(&mut w).await, [Count { n: 1 }]);
}

#[tokio::test]
async fn an_untracked_table_lists_no_keys() {
    let db = db().await;
    db.disable_tracking::<Todo>().await.unwrap();
    let mut events = db.change_events();
    db.transaction(|tx| {
        tx.insert(&todo("x"))?;
        tx.insert(&List {
            name: "l".into(),
            position: 0,
        })
    })
    .await
    .unwrap();
    let e = events.next().await.unwrap();
    assert_eq!(e.table("todos").unwrap().keys, None); // Some([])
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "notes")]
struct Note {
    #[synced(primary_key)]
    id: SyncId,
    owner: String,
    #[synced(default = false)]
    shared: bool,
}

#[tokio::test]
async fn an_evicted_row_is_listed_as_deleted() {
    let server = SyncDb::open_in_memory().await.unwrap();
    let ann = SyncDb::open_in_memory().await.unwrap();
    for db in [&server, &ann] {
        db.register::<Note>().await.unwrap();
    }
    let filter = RowFilters::new(RowFilter::Nothing).table(
        "notes",
        RowFilter::Where {
            sql: "owner = ?1 OR shared = 1".into(),
            params: vec![Value::from("ann")],
        },
    );
    let pull = |cursor: Cursor| {
        let (server, ann, filter) = (server.clone(), ann.clone(), filter.clone());
        async move {
            let b = Replica::new(server)
                .export_filtered(cursor, ann.site_id(), BatchLimits::default(), filter)
                .await
                .unwrap();
            assert!(b.complete);
            ann.apply_changes(&b.payload).await.unwrap();
            b.next
        }
    };
    let row = Note {
        id: SyncId::new(),
        owner: "bob".into(),
        shared: true,
    };
    server.insert(&row).await.unwrap();
    let cursor = pull(Cursor::BEGINNING).await;
    server
        .execute_raw("UPDATE notes SET shared = 0", params![])
        .await
        .unwrap();
    server
        .insert(&Note {
            id: SyncId::new(),
            owner: "ann".into(),
            shared: false,
        })
        .await
        .unwrap();
    let mut events = ann.change_events();
    pull(cursor).await;
    assert!(ann.get::<Note>(&row.id).await.unwrap().is_none());
    let keys = events
        .next()
        .await
        .unwrap()
        .table("notes")
        .unwrap()
        .keys
        .clone()
        .unwrap();
    assert!(
        keys.iter()
            .any(|k| k.key == [Value::from(row.id)] && k.deleted),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_table_is_listed_once_whatever_its_case() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.migrate(&[
        "CREATE TABLE Todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '') STRICT",
    ])
    .await
    .unwrap();
    db.register::<Todo>().await.unwrap();
    let mut events = db.change_events();
    db.insert(&todo("a")).await.unwrap();
    let names: Vec<String> = events
        .next()
        .await
        .unwrap()
        .tables
        .iter()
        .map(|t| t.table.clone())
        .collect();
    assert_eq!(names, ["todos"]); // ["Todos", "todos"]
}

#[cfg(feature = "http")]
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "Memos")]
struct MemoV1 {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}
#[cfg(feature = "http")]
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "memos")]
struct MemoV2 {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}

#[cfg(feature = "http")]
#[tokio::test]
async fn unsent_rows_find_a_table_whatever_its_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    SyncDb::open(&path)
        .await
        .unwrap()
        .register::<MemoV1>()
        .await
        .unwrap();
    let db = SyncDb::open(&path)
        .await
        .unwrap()
        .with_remote(Remote::new("http://127.0.0.1:9/m"));
    db.register::<MemoV2>().await.unwrap();
    db.insert(&MemoV2 {
        id: SyncId::new(),
        text: "x".into(),
    })
    .await
    .unwrap();
    assert_eq!(db.unsent_changes().await.unwrap().rows, 1); // tables: [("Memos", 1)]
    assert_eq!(db.unsent_rows::<MemoV2>().await.unwrap().len(), 1); // 0
}

#[tokio::test]
async fn an_event_lists_this_commits_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.db");
    let (a, b) = (
        SyncDb::open(&path).await.unwrap(),
        SyncDb::open(&path).await.unwrap(),
    );
    for db in [&a, &b] {
        db.register::<Todo>().await.unwrap();
    }
    let mut events = a.change_events();
    b.insert(&todo("b")).await.unwrap();
    a.insert(&todo("a")).await.unwrap();
    let keys = events
        .next()
        .await
        .unwrap()
        .table("todos")
        .unwrap()
        .keys
        .clone()
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}"); // 2: b's row too
}

#[tokio::test]
async fn writes_after_a_transaction_ended_early_wake_watches() {
    let db = db().await;
    db.migrate(&["CREATE TABLE drafts (id INTEGER PRIMARY KEY, t TEXT)"])
        .await
        .unwrap();
    db.execute_raw("INSERT INTO drafts VALUES (1, 'a')", params![])
        .await
        .unwrap();
    let (mut w, _) = count(&db, "SELECT count(*) AS n FROM drafts").await;
    let r = db
        .transaction(|tx| {
            let _ = tx.execute_raw(
                "INSERT OR ROLLBACK INTO drafts VALUES (1, 'dup')",
                params![],
            );
            tx.execute_raw("INSERT INTO drafts VALUES (2, 'b')", params![])
        })
        .await;
    assert!(r.is_err()); // TransactionEnded, yet row 2 is committed
    assert_eq!(
        db.read::<Count>("SELECT count(*) AS n FROM drafts", params![])
            .await
            .unwrap(),
        [Count { n: 2 }]
    );
    assert_eq!(next(&mut w).await, [Count { n: 2 }]);
}
