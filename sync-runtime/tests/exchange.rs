//! Exporting changes as payloads.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::wire::{self, Payload};
use sync_runtime::{Error, Since, SyncDb, SyncId, Synced, Value, params};

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
    let db = db().await;
    let mine = todo("mine");
    db.insert(&mine).await.unwrap();
    let theirs = todo("theirs");
    db.insert(&theirs).await.unwrap();
    // Version 2 stands for a transaction merged from another site.
    let elsewhere = [9u8; 16];
    db.transaction(move |tx| {
        tx.execute_raw(
            "INSERT INTO _synced_sites (ordinal, site_id) VALUES (1, ?1)",
            vec![Value::Blob(elsewhere.to_vec())],
        )?;
        tx.execute_raw(
            "INSERT INTO _synced_versions (db_version, site, origin_version) VALUES (2, 1, 77)",
            params![],
        )?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();

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
