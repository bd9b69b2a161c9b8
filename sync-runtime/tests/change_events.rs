//! Change events: each commit names the tables it wrote and the keys of the
//! synced rows it changed, whoever made the change.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::{
    Changed, Error, KeyChange, MAX_LISTED_KEYS, Since, SyncDb, SyncId, Synced, Value, params,
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
