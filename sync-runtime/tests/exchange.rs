//! Exporting changes as payloads.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::server::Replica;
use sync_runtime::wire::{self, Payload};
use sync_runtime::{
    BatchLimits, Cursor, Error, Scope, Since, SyncDb, SyncId, Synced, Value, params,
};

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

fn todo(title: &str) -> Todo {
    Todo {
        id: SyncId::new(),
        title: title.into(),
        done: false,
        note: None,
    }
}

async fn db() -> SyncDb {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    db
}

fn decode(bytes: &[u8]) -> Payload {
    wire::decode(bytes).unwrap()
}

#[tokio::test]
async fn an_export_carries_every_row_column_and_delete() {
    let db = db().await;
    let (a, b) = (todo("a"), todo("b"));
    db.insert(&a).await.unwrap();
    db.insert(&b).await.unwrap();
    db.delete::<Todo>(&b.id).await.unwrap();

    let payload = decode(&db.export_changes(Since::Beginning).await.unwrap());
    assert_eq!(payload.sites, vec![db.site_id()]);
    assert_eq!(payload.tables.len(), 1);
    assert_eq!(payload.tables[0].name, "todos");
    assert_eq!(payload.tables[0].keys, vec!["id"]);
    assert_eq!(payload.tables[0].values, vec!["title", "done", "note"]);
    assert_eq!(payload.rows.len(), 2);
    let live = payload
        .rows
        .iter()
        .find(|r| r.pk == vec![Value::from(a.id)])
        .unwrap();
    assert_eq!((live.cl, live.origin.version), (1, 1));
    assert_eq!(
        live.columns
            .iter()
            .map(|c| (c.column, c.col_version, c.value.clone()))
            .collect::<Vec<_>>(),
        vec![
            (0, 1, Value::Text("a".into())),
            (1, 1, Value::Integer(0)),
            (2, 1, Value::Null)
        ]
    );
    let deleted = payload
        .rows
        .iter()
        .find(|r| r.pk == vec![Value::from(b.id)])
        .unwrap();
    assert_eq!((deleted.cl, deleted.origin.version), (2, 3));
    assert!(deleted.columns.is_empty());
}

#[tokio::test]
async fn an_export_since_a_version_carries_only_later_changes() {
    let db = db().await;
    let mut a = todo("a");
    db.insert(&a).await.unwrap();
    a.done = true;
    db.update(&a).await.unwrap();
    let payload = decode(&db.export_changes(Since::Version(1)).await.unwrap());
    assert_eq!(payload.rows.len(), 1);
    let row = &payload.rows[0];
    // The row's creation travels as the context of its column.
    assert_eq!((row.cl, row.origin.version), (1, 1));
    assert_eq!(row.columns.len(), 1);
    assert_eq!((row.columns[0].column, row.columns[0].col_version), (1, 2));
    assert_eq!(row.columns[0].origin.version, 2);

    let empty = decode(&db.export_changes(Since::Version(2)).await.unwrap());
    assert!(empty.rows.is_empty() && empty.tables.is_empty());
}

#[tokio::test]
async fn a_local_export_leaves_out_what_came_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.db");
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    let mine = todo("mine");
    db.insert(&mine).await.unwrap();
    let theirs = todo("theirs");
    db.insert(&theirs).await.unwrap();
    // Version 2 stands for a transaction merged from another site (written
    // through a connection of its own: the app's SQL may not).
    let elsewhere = [9u8; 16];
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO _synced_sites (ordinal, site_id) VALUES (1, ?1)",
        [elsewhere.to_vec()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO _synced_versions (db_version, site, origin_version) VALUES (2, 1, 77)",
        [],
    )
    .unwrap();
    drop(conn);

    let all = decode(&db.export_changes(Since::Beginning).await.unwrap());
    assert_eq!(all.rows.len(), 2);
    let relayed = all
        .rows
        .iter()
        .find(|r| r.pk == vec![Value::from(theirs.id)])
        .unwrap();
    assert_eq!(
        all.sites[relayed.origin.site as usize].as_bytes(),
        &elsewhere
    );
    assert_eq!(relayed.origin.version, 77);

    let local = decode(&db.export_local_changes(Since::Beginning).await.unwrap());
    assert_eq!(local.rows.len(), 1);
    assert_eq!(local.rows[0].pk, vec![Value::from(mine.id)]);
    assert_eq!(local.sites, vec![db.site_id()]);
}

#[tokio::test]
async fn exports_of_the_same_schema_share_a_fingerprint() {
    let (a, b) = (db().await, db().await);
    a.insert(&todo("a")).await.unwrap();
    b.insert(&todo("b")).await.unwrap();
    let fa = decode(&a.export_changes(Since::Beginning).await.unwrap()).schema_fingerprint;
    let fb = decode(&b.export_changes(Since::Beginning).await.unwrap()).schema_fingerprint;
    assert_eq!(fa, fb);
    assert_ne!(fa, 0);
}

/// Sends everything `from` has to `to`.
async fn sync(from: &SyncDb, to: &SyncDb) -> sync_runtime::ApplyReport {
    let payload = from.export_changes(Since::Beginning).await.unwrap();
    to.apply_changes(&payload).await.unwrap()
}

async fn rows(db: &SyncDb) -> Vec<Todo> {
    db.query::<Todo>("ORDER BY id", params![]).await.unwrap()
}

/// (pk, column, col_version, site) of every column change: the clocks that must
/// agree on every replica (local versions differ, by design).
async fn clocks(db: &SyncDb) -> Vec<(Vec<Value>, String, i64, i64, sync_runtime::SiteId)> {
    let mut out: Vec<_> = db
        .changes_since(0)
        .await
        .unwrap()
        .into_iter()
        .map(|c| match c.kind {
            sync_runtime::ChangeKind::Set {
                column,
                col_version,
                ..
            } => (c.pk, column, col_version, c.cl, c.site_id),
            _ => (c.pk, String::new(), 0, c.cl, c.site_id),
        })
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

async fn converged(dbs: &[&SyncDb]) {
    for pair in dbs.windows(2) {
        assert_eq!(rows(pair[0]).await, rows(pair[1]).await);
        assert_eq!(clocks(pair[0]).await, clocks(pair[1]).await);
    }
}

#[tokio::test]
async fn two_databases_exchange_and_become_equal() {
    let (a, b) = (db().await, db().await);
    a.insert(&todo("from a")).await.unwrap();
    b.insert(&todo("from b")).await.unwrap();
    let report = sync(&a, &b).await;
    assert_eq!((report.rows, report.ignored), (1, 0));
    sync(&b, &a).await;
    assert_eq!(rows(&a).await.len(), 2);
    converged(&[&a, &b]).await;
    // Applying again changes nothing.
    let again = sync(&a, &b).await;
    assert_eq!((again.applied, again.rows), (0, 0));
}

#[tokio::test]
async fn merged_changes_are_not_local_yet_are_relayed() {
    let (a, b, c) = (db().await, db().await, db().await);
    a.insert(&todo("from a")).await.unwrap();
    sync(&a, &b).await;
    let local = decode(&b.export_local_changes(Since::Beginning).await.unwrap());
    assert!(local.rows.is_empty());
    // b relays a's row to c, with a as its origin.
    sync(&b, &c).await;
    converged(&[&a, &b, &c]).await;
    // c holds everything b had up to its version, but a's changes only by relay.
    assert_eq!(c.seen_version(a.site_id()).await.unwrap(), 0);
    assert_eq!(
        c.seen_version(b.site_id()).await.unwrap(),
        b.db_version().await.unwrap()
    );
}

#[tokio::test]
async fn a_merge_takes_the_next_local_version_per_remote_transaction() {
    let (a, b) = (db().await, db().await);
    for _ in 0..20 {
        a.insert(&todo("a's")).await.unwrap();
    }
    for i in 0..5 {
        b.insert(&todo(&format!("b{i}"))).await.unwrap();
    }
    let before = b.db_version().await.unwrap();
    sync(&a, &b).await;
    // a's versions (up to 20) are a's: b counts on from its own.
    assert_eq!(b.db_version().await.unwrap(), before + 20);
    assert_eq!(b.seen_version(a.site_id()).await.unwrap(), 20);
    b.insert(&todo("after")).await.unwrap();
    let fresh = b.db_version().await.unwrap();
    // The local write after the merge has a version of its own, after the merge's.
    let changes = b.changes_since(fresh - 1).await.unwrap();
    assert!(changes.iter().all(|c| c.site_id == b.site_id()));
}

#[tokio::test]
async fn higher_col_version_wins() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    t.title = "a once".into();
    a.update(&t).await.unwrap();
    t.title = "a twice".into();
    a.update(&t).await.unwrap();
    t.title = "b once".into();
    b.update(&t).await.unwrap();
    sync(&a, &b).await;
    sync(&b, &a).await;
    assert_eq!(
        b.get::<Todo>(&t.id).await.unwrap().unwrap().title,
        "a twice"
    );
    converged(&[&a, &b]).await;
}

#[tokio::test]
async fn equal_col_version_greater_value_wins() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    t.title = "apple".into();
    a.update(&t).await.unwrap();
    t.title = "banana".into();
    b.update(&t).await.unwrap();
    sync(&a, &b).await;
    sync(&b, &a).await;
    assert_eq!(a.get::<Todo>(&t.id).await.unwrap().unwrap().title, "banana");
    converged(&[&a, &b]).await;
}

#[tokio::test]
async fn equal_value_greater_site_id_wins() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    t.title = "same".into();
    a.update(&t).await.unwrap();
    b.update(&t).await.unwrap();
    sync(&a, &b).await;
    sync(&b, &a).await;
    converged(&[&a, &b]).await;
    let winner = a.site_id().max(b.site_id());
    let title_site = clocks(&a)
        .await
        .into_iter()
        .find(|c| c.1 == "title")
        .unwrap()
        .4;
    assert_eq!(title_site, winner);
}

#[tokio::test]
async fn a_delete_beats_the_concurrent_update_of_the_row_it_saw() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    a.delete::<Todo>(&t.id).await.unwrap();
    t.title = "edited".into();
    b.update(&t).await.unwrap();
    sync(&a, &b).await;
    sync(&b, &a).await;
    assert!(rows(&a).await.is_empty());
    converged(&[&a, &b]).await;
}

#[tokio::test]
async fn a_reinsert_beats_a_concurrent_delete() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    a.delete::<Todo>(&t.id).await.unwrap();
    sync(&a, &b).await; // both at cl 2
    t.title = "back".into();
    a.insert(&t).await.unwrap(); // cl 3
    // b deletes concurrently? It already saw the delete; a second replica c deletes.
    let c = db().await;
    sync(&b, &c).await;
    sync(&a, &b).await;
    sync(&b, &a).await;
    sync(&a, &c).await;
    sync(&c, &a).await;
    assert_eq!(rows(&a).await.len(), 1);
    assert_eq!(rows(&a).await[0].title, "back");
    converged(&[&a, &b, &c]).await;
}

/// Sends `from`'s changes after `since` to `to` one row per payload.
async fn sync_row_by_row(from: &SyncDb, to: &SyncDb) {
    let limits = BatchLimits::default().max_rows(1);
    let mut cursor = Cursor::BEGINNING;
    loop {
        let batch = from.export_batch(cursor, Scope::All, limits).await.unwrap();
        to.apply_changes(&batch.payload).await.unwrap();
        if batch.complete {
            return;
        }
        cursor = batch.next;
    }
}

/// The merge writes a payload's rows in sets of up to 64: a payload of
/// hundreds of rows, new, changed, deleted and re-created, leaves what the
/// same rows merged one payload each leave, however the sets fall.
#[tokio::test]
async fn a_large_payload_merges_as_its_rows_do_one_by_one() {
    let (a, b) = (db().await, db().await);
    let todos: Vec<Todo> = (0..200).map(|i| todo(&format!("row {i}"))).collect();
    for row in &todos[..150] {
        a.insert(row).await.unwrap();
    }
    // b holds some of them, and changes a few of those too.
    sync(&a, &b).await;
    for row in &todos[..20] {
        let changed = Todo {
            note: Some("b's note".into()),
            ..row.clone()
        };
        b.update(&changed).await.unwrap();
    }
    for row in &todos[150..] {
        a.insert(row).await.unwrap();
    }
    for (i, row) in todos.iter().enumerate().step_by(3) {
        let changed = Todo {
            title: format!("changed {i}"),
            done: true,
            ..row.clone()
        };
        a.update(&changed).await.unwrap();
    }
    for row in todos.iter().skip(1).step_by(7) {
        a.delete::<Todo>(&row.id).await.unwrap();
    }
    for row in todos.iter().skip(1).step_by(14) {
        a.insert(row).await.unwrap();
    }
    let (whole, one_by_one) = (db().await, db().await);
    let report = sync(&a, &whole).await;
    assert_eq!(report.rows, 200, "{report:?}");
    sync_row_by_row(&a, &one_by_one).await;
    converged(&[&whole, &one_by_one]).await;
    // Then what b changed, rows that exist there now.
    for to in [&whole, &one_by_one] {
        sync(&b, to).await;
    }
    converged(&[&whole, &one_by_one]).await;
    sync(&b, &a).await;
    sync(&a, &b).await;
    converged(&[&a, &b, &whole, &one_by_one]).await;
    assert_eq!(rows(&a).await.len(), 200 - 29 + 15);
}

#[tokio::test]
async fn a_change_with_a_lower_causal_length_is_ignored() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    let stale = a.export_changes(Since::Beginning).await.unwrap();
    t.title = "later".into();
    a.update(&t).await.unwrap();
    a.delete::<Todo>(&t.id).await.unwrap();
    sync(&a, &b).await;
    let report = b.apply_changes(&stale).await.unwrap();
    assert_eq!(report.applied, 0);
    assert!(rows(&b).await.is_empty());
}

#[tokio::test]
async fn concurrent_inserts_of_one_key_merge_column_by_column() {
    let (a, b) = (db().await, db().await);
    let id = SyncId::new();
    a.insert(&Todo {
        id,
        title: "from a".into(),
        done: false,
        note: Some("a's note".into()),
    })
    .await
    .unwrap();
    b.insert(&Todo {
        id,
        title: "from b".into(),
        done: true,
        note: None,
    })
    .await
    .unwrap();
    sync(&a, &b).await;
    sync(&b, &a).await;
    converged(&[&a, &b]).await;
    let merged = a.get::<Todo>(&id).await.unwrap().unwrap();
    // Equal versions everywhere: the greater value of each column.
    assert_eq!(merged.title, "from b");
    assert!(merged.done);
    assert_eq!(merged.note.as_deref(), Some("a's note"));
}

#[tokio::test]
async fn a_key_change_keeps_the_value_another_replica_wrote() {
    let (a, b) = (db().await, db().await);
    let mut t = todo("x");
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    t.note = Some("b's note".into());
    b.update(&t).await.unwrap();
    sync(&b, &a).await;
    let new_id = SyncId::new();
    a.execute_raw(
        "UPDATE todos SET id = ?1 WHERE id = ?2",
        params![new_id, t.id],
    )
    .await
    .unwrap();
    sync(&a, &b).await;
    sync(&b, &a).await;
    for db in [&a, &b] {
        let all = rows(db).await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, new_id);
        assert_eq!(all[0].note.as_deref(), Some("b's note"));
    }
    converged(&[&a, &b]).await;
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "log", algorithm = "gos")]
struct Entry {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}

#[tokio::test]
async fn a_payload_deleting_from_a_grow_only_table_is_rejected() {
    let (a, b) = (
        SyncDb::open_in_memory().await.unwrap(),
        SyncDb::open_in_memory().await.unwrap(),
    );
    a.register::<Entry>().await.unwrap();
    b.register::<Entry>().await.unwrap();
    let kept = Entry {
        id: SyncId::new(),
        text: "kept".into(),
    };
    b.insert(&kept).await.unwrap();
    sync_entries(&b, &a).await;
    // A payload that claims the row was deleted elsewhere.
    let mut payload = decode(&a.export_changes(Since::Beginning).await.unwrap());
    payload.rows[0].cl = 2;
    payload.rows[0].columns.clear();
    let err = b
        .apply_changes(&wire::encode(&payload, wire::Compression::Zstd))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::GrowOnly { ref table } if table == "log"),
        "{err}"
    );
    assert_eq!(b.get::<Entry>(&kept.id).await.unwrap(), Some(kept));
}

async fn sync_entries(from: &SyncDb, to: &SyncDb) {
    let payload = from.export_changes(Since::Beginning).await.unwrap();
    to.apply_changes(&payload).await.unwrap();
}

#[tokio::test]
async fn a_payload_applies_whole_or_not_at_all() {
    let (a, b) = (db().await, db().await);
    a.insert(&todo("fine")).await.unwrap();
    a.insert(&todo("bad")).await.unwrap();
    let mut payload = decode(&a.export_changes(Since::Beginning).await.unwrap());
    // The second row's title becomes an integer, which the STRICT column refuses.
    payload.rows[1].columns[0].value = Value::Integer(7);
    let err = b
        .apply_changes(&wire::encode(&payload, wire::Compression::Zstd))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref column, found: "INTEGER", .. } if column == "title"),
        "{err}"
    );
    // NULL for a NOT NULL column.
    payload.rows[1].columns[0].value = Value::Null;
    let err = b
        .apply_changes(&wire::encode(&payload, wire::Compression::Zstd))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongType { found: "NULL", .. }),
        "{err}"
    );
    assert!(rows(&b).await.is_empty());
    assert_eq!(b.db_version().await.unwrap(), 0);
}

#[tokio::test]
async fn damaged_payloads_are_rejected_and_change_nothing() {
    let (a, b) = (db().await, db().await);
    a.insert(&todo("x")).await.unwrap();
    let good = a.export_changes(Since::Beginning).await.unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    for bad in [&good[..good.len() - 1], &flipped[..], b"not a payload"] {
        let err = b.apply_changes(bad).await.unwrap_err();
        assert!(matches!(err, Error::Payload(_)), "{err}");
    }
    assert!(rows(&b).await.is_empty());
    assert_eq!(b.db_version().await.unwrap(), 0);
}

#[tokio::test]
async fn two_deletes_of_one_row_agree_on_their_site() {
    let (a, b) = (db().await, db().await);
    let t = todo("x");
    a.insert(&t).await.unwrap();
    b.insert(&t).await.unwrap();
    a.delete::<Todo>(&t.id).await.unwrap();
    b.delete::<Todo>(&t.id).await.unwrap();
    for _ in 0..2 {
        sync(&a, &b).await;
        sync(&b, &a).await;
    }
    converged(&[&a, &b]).await;
}

#[tokio::test]
async fn a_payload_of_another_app_version_applies_what_this_database_has() {
    let (a, b) = (db().await, db().await);
    let t = todo("x");
    a.insert(&t).await.unwrap();
    let mut payload = decode(&a.export_changes(Since::Beginning).await.unwrap());
    // Another fingerprint: another app version's schema, whose columns are
    // matched by their ids.
    payload.schema_fingerprint ^= 1;
    let report = b
        .apply_changes(&wire::encode(&payload, wire::Compression::None))
        .await
        .unwrap();
    assert_eq!((report.applied, report.skipped), (4, 0));
    assert_eq!(rows(&b).await, vec![t.clone()]);
    // A column this database does not have is left out, the rest applies.
    let c = db().await;
    payload.tables[0].values[1] = "elsewhere".into();
    let report = c
        .apply_changes(&wire::encode(&payload, wire::Compression::None))
        .await
        .unwrap();
    assert_eq!((report.applied, report.skipped), (3, 1));
    assert_eq!(rows(&c).await, vec![t]);
    // So is a table this database does not sync.
    let d = db().await;
    payload.tables[0].name = "elsewhere".into();
    let report = d
        .apply_changes(&wire::encode(&payload, wire::Compression::None))
        .await
        .unwrap();
    assert_eq!((report.applied, report.skipped), (0, 4));
    assert!(rows(&d).await.is_empty());
    // A payload that names one column twice is malformed.
    payload.tables[0].name = "todos".into();
    payload.tables[0].values[1] = "title".into();
    let err = d
        .apply_changes(&wire::encode(&payload, wire::Compression::None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[tokio::test]
async fn a_resurrected_row_starts_afresh_and_unsent_columns_agree() {
    let (a, b, c) = (db().await, db().await, db().await);
    let mut t = todo("first life");
    t.note = Some("old note".into());
    a.insert(&t).await.unwrap();
    sync(&a, &b).await;
    sync(&a, &c).await;
    a.delete::<Todo>(&t.id).await.unwrap();
    t.title = "second life".into();
    a.insert(&t).await.unwrap(); // cl 3, every column at version 1
    // The resurrection reaches b and c with its title only.
    let mut payload = decode(&a.export_changes(Since::Beginning).await.unwrap());
    payload.rows[0].columns.retain(|c| c.column == 0);
    let partial = wire::encode(&payload, wire::Compression::None);
    for db in [&b, &c] {
        db.apply_changes(&partial).await.unwrap();
        let row = db.get::<Todo>(&t.id).await.unwrap().unwrap();
        assert_eq!(row.title, "second life");
        // Columns not sent start at their defaults, not at the first life's values.
        assert_eq!(row.note, None);
        assert!(!row.done);
    }
    converged(&[&b, &c]).await;
    // The rest arrives later; everyone agrees.
    sync(&a, &b).await;
    sync(&a, &c).await;
    converged(&[&a, &b, &c]).await;
    assert_eq!(
        b.get::<Todo>(&t.id).await.unwrap().unwrap().note.as_deref(),
        Some("old note")
    );
}

#[tokio::test]
async fn relayed_changes_do_not_count_as_seen_from_their_origin() {
    let (a, b, c) = (db().await, db().await, db().await);
    let (q, mut r) = (todo("q"), todo("r"));
    r.done = true;
    r.note = Some("n".into());
    a.insert(&q).await.unwrap();
    a.insert(&r).await.unwrap();
    sync(&a, &b).await;
    r.title = "r, edited on b".into();
    b.update(&r).await.unwrap();
    // b relays only what changed since a's payload: r's creation comes along as
    // context, yet c has not seen all of a.
    let cursor = b.db_version().await.unwrap() - 1;
    c.apply_changes(&b.export_changes(Since::Version(cursor)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(c.seen_version(a.site_id()).await.unwrap(), 0);
    // Every device asks every other for what it has not seen of it.
    for _ in 0..2 {
        for (from, to) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
            let seen = to.seen_version(from.site_id()).await.unwrap();
            let payload = from
                .export_local_changes(Since::Version(seen))
                .await
                .unwrap();
            to.apply_changes(&payload).await.unwrap();
        }
    }
    assert_eq!(
        c.seen_version(a.site_id()).await.unwrap(),
        a.db_version().await.unwrap()
    );
    converged(&[&a, &b, &c]).await;
    let on_c = c.get::<Todo>(&r.id).await.unwrap().unwrap();
    assert_eq!((on_c.done, on_c.note.as_deref()), (true, Some("n")));
    assert!(c.get::<Todo>(&q.id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_relay_leaves_out_what_the_receiver_made() {
    let (a, b, relay) = (db().await, db().await, db().await);
    let (from_a, from_b) = (todo("from a"), todo("from b"));
    a.insert(&from_a).await.unwrap();
    b.insert(&from_b).await.unwrap();
    sync(&a, &relay).await;
    sync(&b, &relay).await;
    let relay = Replica::new(relay);
    let for_a = decode(
        &relay
            .export_changes_except(Since::Beginning, a.site_id())
            .await
            .unwrap(),
    );
    assert_eq!(for_a.rows.len(), 1);
    assert_eq!(for_a.rows[0].pk, vec![Value::from(from_b.id)]);
    a.apply_changes(
        &relay
            .export_changes_except(Since::Beginning, a.site_id())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rows(&a).await.len(), 2);
}

#[tokio::test]
async fn batches_stay_within_their_byte_limit_and_carry_everything() {
    let (a, b) = (db().await, db().await);
    // One transaction of 20 rows, each with a 1 KiB note: one version to split.
    a.transaction(|tx| {
        for i in 0..20 {
            let mut row = todo(&format!("row {i}"));
            row.note = Some("x".repeat(1024));
            tx.insert(&row)?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let limits = BatchLimits::default().max_rows(100).max_bytes(3000);
    let mut cursor = Cursor::BEGINNING;
    let mut batches = 0;
    loop {
        let batch = a
            .export_batch(cursor.clone(), Scope::Local, limits)
            .await
            .unwrap();
        assert!(batch.rows <= 3, "{} rows in a 3000-byte batch", batch.rows);
        assert!(batch.next != cursor, "a batch must move its cursor");
        b.apply_changes(&batch.payload).await.unwrap();
        cursor = batch.next;
        batches += 1;
        if batch.complete {
            break;
        }
    }
    assert!(batches >= 7, "{batches} batches");
    assert_eq!(cursor, Cursor::at(a.db_version().await.unwrap()));
    converged(&[&a, &b]).await;
    // Nothing after the last cursor.
    let rest = a.export_batch(cursor, Scope::Local, limits).await.unwrap();
    assert!(rest.complete);
    assert_eq!(rest.rows, 0);
}

/// The rows a batched export carries from `from` on, batch by batch, with
/// `between` run after the first batch.
async fn keys_from(
    db: &SyncDb,
    from: Cursor,
    max_rows: usize,
    between: impl AsyncFnOnce(),
) -> Vec<Vec<Value>> {
    let limits = BatchLimits::default().max_rows(max_rows);
    let mut keys = Vec::new();
    let mut cursor = from;
    let mut between = Some(between);
    loop {
        let batch = db.export_batch(cursor, Scope::All, limits).await.unwrap();
        keys.extend(decode(&batch.payload).rows.into_iter().map(|r| r.pk));
        if batch.complete {
            return keys;
        }
        // The text form, as a server hands it out and gets it back.
        cursor = batch.next.to_string().parse().unwrap();
        if let Some(between) = between.take() {
            between().await;
        }
    }
}

/// SQLite may renumber the rowids of a table without an `INTEGER PRIMARY KEY`
/// when it vacuums, and the clocks are such tables: a cursor inside a version,
/// made before a vacuum that moved the rows it had not reached yet below its
/// rowid, still reaches them.
#[tokio::test]
async fn a_cursor_resumed_across_a_vacuum_skips_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.db");
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    let rows: Vec<Todo> = (0..10).map(|i| todo(&format!("row {i}"))).collect();
    let written = rows.clone();
    db.transaction(move |tx| {
        for row in &written {
            tx.insert(row)?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let renumbering_vacuum = async || {
        // What SQLite allows a vacuum to do, done by hand: the rowids are
        // numbered again, the other way round, so that the rows the first batch
        // did not reach come before its cursor.
        renumber_clock(&path);
        db.vacuum().await.unwrap();
    };
    let mut keys = keys_from(&db, Cursor::BEGINNING, 4, renumbering_vacuum).await;
    keys.sort_by(|a, b| a[0].sqlite_cmp(&b[0]));
    keys.dedup();
    let mut expected: Vec<Vec<Value>> = rows.iter().map(|r| vec![Value::from(r.id)]).collect();
    expected.sort_by(|a, b| a[0].sqlite_cmp(&b[0]));
    assert_eq!(keys, expected);
}

#[test]
fn a_cursor_carries_the_count_of_vacuums_after_its_table() {
    for text in [
        "0.5.3.todos.2",
        "s.7.r12.todos.1",
        "s.7.h0a0b.todos.3",
        "4.6.1.todos",
    ] {
        let cursor: Cursor = text.parse().unwrap();
        assert_eq!(cursor.to_string(), text);
    }
    for bad in [
        "0.5.3.todos.",
        "0.5.3.todos.x",
        "0.5.3..2",
        "0.5.3.todos.2.1",
    ] {
        assert!(bad.parse::<Cursor>().is_err(), "{bad}");
    }
}

/// `SyncDb::vacuum` counts the vacuum before it runs `VACUUM` and again after.
/// An export made by another handle of the same file in between (or while the
/// `VACUUM` runs, which takes a while on a large file: a WAL reader keeps the
/// snapshot from before it) reads the first count with the old rowids; its
/// cursor carries a count that is neither the one before nor the one after,
/// so it is not trusted afterwards. Here the other handle's steps are run one
/// at a time (the count, the renumbering a vacuum may do and the `VACUUM`, the
/// second count), with the export between the first two.
#[tokio::test]
async fn a_cursor_made_during_another_handles_vacuum_skips_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.db");
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    let rows: Vec<Todo> = (0..10).map(|i| todo(&format!("row {i}"))).collect();
    let written = rows.clone();
    db.transaction(move |tx| {
        for row in &written {
            tx.insert(row)?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let limits = BatchLimits::default().max_rows(4);
    // Another handle's `vacuum`: first its count...
    let count_vacuum = || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE _synced_state SET vacuums = vacuums + 1", [])
            .unwrap()
    };
    count_vacuum();
    // ...this handle's export, before the VACUUM commits...
    let first = db
        .export_batch(Cursor::BEGINNING, Scope::All, limits)
        .await
        .unwrap();
    assert!(!first.complete);
    // ...then the VACUUM, which may renumber the clock's rowids (done by hand,
    // as in `a_cursor_resumed_across_a_vacuum_skips_no_row`).
    renumber_clock(&path);
    let vacuum = plain_vacuum(&path);
    assert!(vacuum, "VACUUM ran");
    count_vacuum();
    let mut keys: Vec<Vec<Value>> = decode(&first.payload)
        .rows
        .into_iter()
        .map(|r| r.pk)
        .collect();
    let mut cursor: Cursor = first.next.to_string().parse().unwrap();
    loop {
        let batch = db.export_batch(cursor, Scope::All, limits).await.unwrap();
        keys.extend(decode(&batch.payload).rows.into_iter().map(|r| r.pk));
        if batch.complete {
            break;
        }
        cursor = batch.next;
    }
    keys.sort_by(|a, b| a[0].sqlite_cmp(&b[0]));
    keys.dedup();
    assert_eq!(keys.len(), rows.len(), "rows were skipped");
}

/// Numbers the rowids of the file's `todos` clock again, the other way
/// round, as a vacuum may (through a connection of its own: the app's SQL may
/// not change the runtime's tables).
fn renumber_clock(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    for renumber in ["rowid + 1000", "1011 - rowid"] {
        conn.execute(
            &format!("UPDATE \"_synced_clock.todos\" SET rowid = {renumber}"),
            [],
        )
        .unwrap();
    }
}

/// Runs a plain `VACUUM` on the file, as the middle step of `SyncDb::vacuum`
/// does (without counting).
fn plain_vacuum(path: &std::path::Path) -> bool {
    rusqlite::Connection::open(path)
        .and_then(|conn| conn.execute_batch("VACUUM"))
        .is_ok()
}

/// Database `a` in `dir` with the row `first`, and a byte copy of its file
/// opened as `b`: the same site id.
async fn copied(dir: &std::path::Path, first: &Todo) -> (SyncDb, SyncDb) {
    let a = SyncDb::open(dir.join("a.db")).await.unwrap();
    a.register::<Todo>().await.unwrap();
    a.insert(first).await.unwrap();
    // The log moved into the file, so that the file alone is a whole copy.
    a.vacuum().await.unwrap();
    std::fs::copy(dir.join("a.db"), dir.join("b.db")).unwrap();
    let b = SyncDb::open(dir.join("b.db")).await.unwrap();
    b.register::<Todo>().await.unwrap();
    assert_eq!(b.site_id(), a.site_id());
    (a, b)
}

/// Sends everything each has to the other, twice round.
async fn exchange(a: &SyncDb, b: &SyncDb) {
    for _ in 0..2 {
        sync(a, b).await;
        sync(b, a).await;
    }
}

/// A byte copy of a file shares its site id: each would take the other's
/// changes for its own. The copy takes a new site id, and the two converge,
/// peer to peer, with what each made before and after the copy.
#[tokio::test]
async fn a_copy_with_a_new_site_id_converges_with_its_original() {
    let dir = tempfile::tempdir().unwrap();
    let shared = todo("shared");
    let (a, b) = copied(dir.path(), &shared).await;
    let new = b.new_site_id().await.unwrap();
    assert_ne!(new, a.site_id());
    assert_eq!(b.site_id(), new);

    a.insert(&todo("from a")).await.unwrap();
    b.insert(&todo("from b")).await.unwrap();
    for (db, title) in [(&a, "a's title"), (&b, "b's title")] {
        let mut row = shared.clone();
        row.title = title.into();
        db.update(&row).await.unwrap();
    }
    exchange(&a, &b).await;
    let on_a = rows(&a).await;
    let mut titles: Vec<&str> = on_a.iter().map(|t| t.title.as_str()).collect();
    titles.sort_unstable();
    assert_eq!(titles, ["b's title", "from a", "from b"]);
    converged(&[&a, &b]).await;
}

/// Two copies that never took a new site id notice each other when they meet:
/// the one that gets a change in its own name that it did not make takes a new
/// site id, and they converge.
#[tokio::test]
async fn copies_that_meet_peer_to_peer_notice_it_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = copied(dir.path(), &todo("shared")).await;
    a.insert(&todo("from a")).await.unwrap();
    b.insert(&todo("from b")).await.unwrap();
    b.insert(&todo("from b again")).await.unwrap();
    let site = a.site_id();
    exchange(&a, &b).await;
    assert!(a.site_id() != site || b.site_id() != site);
    assert_ne!(a.site_id(), b.site_id());
    assert_eq!(rows(&a).await.len(), 4);
    converged(&[&a, &b]).await;
}
