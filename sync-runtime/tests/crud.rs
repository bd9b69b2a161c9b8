//! Typed reads and writes round-trip every supported field type.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::{Error, SyncDb, SyncId, Synced, Value, params};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "everything")]
struct Everything {
    #[synced(primary_key)]
    id: SyncId,
    flag: bool,
    tiny: i8,
    small: i16,
    medium: i32,
    big: i64,
    ubyte: u8,
    ushort: u16,
    uint: u32,
    single: f32,
    double: f64,
    text: String,
    bytes: Vec<u8>,
    other: Option<SyncId>,
    maybe_text: Option<String>,
    maybe_int: Option<i64>,
    maybe_real: Option<f64>,
    maybe_bytes: Option<Vec<u8>>,
    #[synced(rename = "label_text", default = "none")]
    label: String,
    #[synced(skip)]
    cache: Vec<String>,
}

fn extremes() -> Everything {
    Everything {
        id: SyncId::new(),
        flag: true,
        tiny: i8::MIN,
        small: i16::MAX,
        medium: i32::MIN,
        big: i64::MAX,
        ubyte: u8::MAX,
        ushort: u16::MAX,
        uint: u32::MAX,
        single: 1.5,
        double: -0.000_001,
        text: "héllo, 世界 \u{0} 'quoted' \"double\"".into(),
        bytes: vec![0, 1, 2, 255],
        other: Some(SyncId::new()),
        maybe_text: Some(String::new()),
        maybe_int: Some(i64::MIN),
        maybe_real: Some(f64::MAX),
        maybe_bytes: Some(vec![]),
        label: "label".into(),
        cache: Vec::new(),
    }
}

fn nulls() -> Everything {
    Everything {
        other: None,
        maybe_text: None,
        maybe_int: None,
        maybe_real: None,
        maybe_bytes: None,
        ..extremes()
    }
}

async fn db() -> SyncDb {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Everything>().await.unwrap();
    db
}

#[tokio::test]
async fn every_field_type_round_trips() {
    let db = db().await;
    for row in [extremes(), nulls()] {
        db.insert(&row).await.unwrap();
        assert_eq!(db.get::<Everything>(&row.id).await.unwrap(), Some(row));
    }
}

#[tokio::test]
async fn skipped_fields_are_not_stored() {
    let db = db().await;
    let mut row = extremes();
    row.cache = vec!["not stored".into()];
    db.insert(&row).await.unwrap();
    let read = db.get::<Everything>(&row.id).await.unwrap().unwrap();
    assert!(read.cache.is_empty());
    assert_eq!(read.label, "label");
}

#[tokio::test]
async fn update_writes_every_column_and_delete_removes_the_row() {
    let db = db().await;
    let mut row = extremes();
    db.insert(&row).await.unwrap();
    row.text = "changed".into();
    row.maybe_int = None;
    row.flag = false;
    db.update(&row).await.unwrap();
    assert_eq!(
        db.get::<Everything>(&row.id).await.unwrap(),
        Some(row.clone())
    );

    assert!(db.delete::<Everything>(&row.id).await.unwrap());
    assert!(!db.delete::<Everything>(&row.id).await.unwrap());
    assert_eq!(db.get::<Everything>(&row.id).await.unwrap(), None);
}

#[tokio::test]
async fn updating_a_missing_row_is_not_found() {
    let db = db().await;
    let err = db.update(&extremes()).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { ref table } if table == "everything"),
        "{err}"
    );
}

#[tokio::test]
async fn query_filters_with_parameters_and_order() {
    let db = db().await;
    for i in 0..10 {
        let mut row = nulls();
        row.id = SyncId::new();
        row.big = i;
        row.flag = i % 2 == 0;
        db.insert(&row).await.unwrap();
    }
    let even: Vec<Everything> = db
        .query("flag = ?1 ORDER BY big DESC", params![true])
        .await
        .unwrap();
    assert_eq!(
        even.iter().map(|r| r.big).collect::<Vec<_>>(),
        vec![8, 6, 4, 2, 0]
    );
    let all: Vec<Everything> = db.query("", params![]).await.unwrap();
    assert_eq!(all.len(), 10);
}

#[tokio::test]
async fn inserting_an_existing_key_is_a_constraint_error() {
    let db = db().await;
    let row = extremes();
    db.insert(&row).await.unwrap();
    let err = db.insert(&row).await.unwrap_err();
    assert!(matches!(err, Error::Constraint { .. }), "{err}");
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "positions")]
struct Position {
    #[synced(primary_key)]
    list: String,
    #[synced(primary_key)]
    index: i64,
    item: Option<String>,
}

#[tokio::test]
async fn composite_keys_round_trip() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Position>().await.unwrap();
    let a = Position {
        list: "groceries".into(),
        index: 0,
        item: Some("milk".into()),
    };
    let b = Position {
        index: 1,
        item: None,
        ..a.clone()
    };
    db.insert(&a).await.unwrap();
    db.insert(&b).await.unwrap();
    let key = ("groceries".to_owned(), 1);
    assert_eq!(db.get::<Position>(&key).await.unwrap(), Some(b));
    assert!(db.delete::<Position>(&key).await.unwrap());
    let rest: Vec<Position> = db.query("list = ?1", params!["groceries"]).await.unwrap();
    assert_eq!(rest, vec![a]);
}

#[tokio::test]
async fn typed_operations_need_registration() {
    let db = SyncDb::open_in_memory().await.unwrap();
    let err = db.insert(&extremes()).await.unwrap_err();
    assert!(
        matches!(err, Error::NotRegistered { ref table } if table == "everything"),
        "{err}"
    );
    assert!(err.to_string().contains("register"));
}

#[tokio::test]
async fn transactions_see_their_own_writes() {
    let db = db().await;
    let row = extremes();
    let id = row.id;
    let seen = db
        .transaction(move |tx| {
            tx.insert(&row)?;
            tx.execute_raw(
                "UPDATE everything SET big = ?1 WHERE id = ?2",
                params![7, id],
            )?;
            Ok::<_, Error>(tx.get::<Everything>(&id)?.map(|r| r.big))
        })
        .await
        .unwrap();
    assert_eq!(seen, Some(7));
    assert_eq!(
        db.query::<Everything>("big = ?1", vec![Value::Integer(7)])
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Raw SQL cannot store an id in another text form: no typed read could find
/// or decode it. A replica that registered the table by its descriptor alone
/// has no such check; such an id it sends is a decode error when read.
#[tokio::test]
async fn an_id_stored_in_another_text_form_is_refused_or_a_decode_error() {
    let db = db().await;
    let upper = SyncId::new().as_str().to_uppercase();
    let insert = "INSERT INTO everything (id) VALUES (?1)";
    let err = db
        .execute_raw(insert, params![upper.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidKey { ref column, .. } if column == "id"),
        "{err}"
    );
    let other = SyncDb::open_in_memory().await.unwrap();
    other
        .register_schema(Everything::SCHEMA.clone())
        .await
        .unwrap();
    other.execute_raw(insert, params![upper]).await.unwrap();
    let payload = other
        .export_changes(sync_runtime::Since::Beginning)
        .await
        .unwrap();
    db.apply_changes(&payload).await.unwrap();
    let err = db.query::<Everything>("", params![]).await.unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref column, .. } if column == "id"),
        "{err}"
    );
}
