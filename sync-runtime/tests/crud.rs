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

/// A task, for the writes that save what a user changed.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tasks")]
struct Task {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(default = "open")]
    status: String,
    points: f64,
}

fn task(title: &str) -> Task {
    Task {
        id: SyncId::new(),
        title: title.into(),
        status: "open".into(),
        points: 1.0,
    }
}

/// The columns each change since `version` set.
async fn columns_set(db: &SyncDb, version: i64) -> Vec<String> {
    let mut set: Vec<String> = db
        .changes_since(version)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| match c.kind {
            sync_runtime::ChangeKind::Set { column, .. } => Some(column),
            _ => None,
        })
        .collect();
    set.sort();
    set
}

#[tokio::test]
async fn modify_writes_only_the_columns_the_change_changed() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Task>().await.unwrap();
    let mut row = task("draft");
    db.insert(&row).await.unwrap();
    // A form loaded now; another device's status arrives meanwhile.
    let form = db.get::<Task>(&row.id).await.unwrap().unwrap();
    db.execute_raw("UPDATE tasks SET status = 'done'", params![])
        .await
        .unwrap();
    let version = db.db_version().await.unwrap();
    let saved = db
        .modify::<Task, _>(&form.id, |t| t.title = "final".into())
        .await
        .unwrap();
    row.title = "final".into();
    row.status = "done".into();
    assert_eq!(saved.as_ref(), Some(&row));
    assert_eq!(db.get::<Task>(&row.id).await.unwrap(), Some(row.clone()));
    assert_eq!(columns_set(&db, version).await, ["title"]);

    // A change that changes nothing writes nothing.
    let version = db.db_version().await.unwrap();
    db.modify::<Task, _>(&row.id, |t| t.points = 1.0)
        .await
        .unwrap();
    assert_eq!(db.db_version().await.unwrap(), version);

    // No such row: nothing written, None.
    let missing = db
        .modify::<Task, _>(&SyncId::new(), |t| t.title = "x".into())
        .await
        .unwrap();
    assert_eq!(missing, None);

    // The key is not the change's to make; NaN is refused as everywhere.
    let err = db
        .modify::<Task, _>(&row.id, |t| t.id = SyncId::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::KeyChanged { ref table } if table == "tasks"),
        "{err}"
    );
    let err = db
        .modify::<Task, _>(&row.id, |t| t.points = f64::NAN)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotANumber { .. }), "{err}");
    assert_eq!(db.get::<Task>(&row.id).await.unwrap(), Some(row.clone()));

    // Inside a transaction, with other writes.
    let other = task("other");
    let id = row.id;
    let inserted = other.clone();
    db.transaction(move |tx| {
        tx.insert(&inserted)?;
        tx.modify::<Task>(&id, |t| t.points = 3.5)?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.get::<Task>(&row.id).await.unwrap().unwrap().points, 3.5);
}

#[tokio::test]
async fn upsert_inserts_or_replaces_and_insert_if_absent_never_overwrites() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Task>().await.unwrap();
    let mut row = task("first");
    assert!(db.upsert(&row).await.unwrap());
    row.title = "second".into();
    assert!(!db.upsert(&row).await.unwrap());
    assert_eq!(db.get::<Task>(&row.id).await.unwrap(), Some(row.clone()));

    let mut other = row.clone();
    other.title = "would overwrite".into();
    assert!(!db.insert_if_absent(&other).await.unwrap());
    assert_eq!(db.get::<Task>(&row.id).await.unwrap(), Some(row.clone()));
    let fresh = task("fresh");
    assert!(db.insert_if_absent(&fresh).await.unwrap());
    assert_eq!(db.get::<Task>(&fresh.id).await.unwrap(), Some(fresh));
}

#[derive(sync_runtime::SyncValue, Debug, Clone, Copy, PartialEq, Default)]
enum Stage {
    #[default]
    Todo,
    #[sync_value(rename = "in progress")]
    Doing,
    Done,
}

#[derive(sync_runtime::SyncValue, Debug, Clone, Copy, PartialEq)]
#[sync_value(integer)]
enum Size {
    Small = -1,
    Medium,
    Large = 10,
}

#[derive(sync_runtime::SyncValue, Debug, Clone, PartialEq)]
struct Label(String);

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "cards")]
struct Card {
    #[synced(primary_key)]
    id: SyncId,
    stage: Stage,
    #[synced(default = 0)]
    size: Size,
    label: Option<Label>,
}

#[tokio::test]
async fn enums_and_newtypes_round_trip_and_an_unknown_variant_is_a_named_error() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Card>().await.unwrap();
    let columns = &Card::SCHEMA.columns;
    assert_eq!(columns[1].default.as_deref(), Some("'Todo'"));
    assert_eq!(columns[2].default.as_deref(), Some("0"));
    let cards: Vec<Card> = [
        (Stage::Doing, Size::Small, None),
        (Stage::Done, Size::Medium, Some(Label("urgent".into()))),
        (Stage::Todo, Size::Large, None),
    ]
    .into_iter()
    .map(|(stage, size, label)| Card {
        id: SyncId::new(),
        stage,
        size,
        label,
    })
    .collect();
    for card in &cards {
        db.insert(card).await.unwrap();
    }
    // Stored as the names and numbers the app's SQL filters by.
    for card in &cards {
        let stage = match card.stage {
            Stage::Todo => "Todo",
            Stage::Doing => "in progress",
            Stage::Done => "Done",
        };
        let size = match card.size {
            Size::Small => -1,
            Size::Medium => 0,
            Size::Large => 10,
        };
        let rows: Vec<Card> = db
            .query(
                "id = ?1 AND stage = ?2 AND size = ?3",
                params![card.id, stage, size],
            )
            .await
            .unwrap();
        assert_eq!(rows, std::slice::from_ref(card));
    }
    // Defaults: a row written without the columns reads the natural ones.
    let id = SyncId::new();
    db.execute_raw("INSERT INTO cards (id) VALUES (?1)", params![id])
        .await
        .unwrap();
    let plain = db.get::<Card>(&id).await.unwrap().unwrap();
    assert_eq!(
        (plain.stage, plain.size, plain.label),
        (Stage::Todo, Size::Medium, None)
    );

    // A variant a newer app version wrote: that row fails, naming where.
    db.execute_raw(
        "UPDATE cards SET stage = 'archived' WHERE id = ?1",
        params![id],
    )
    .await
    .unwrap();
    let err = db.get::<Card>(&id).await.unwrap_err();
    match err {
        Error::Decode {
            table,
            key,
            column,
            source: sync_runtime::value::ValueError::UnknownVariant { value, target },
            ..
        } => {
            assert_eq!((table.as_str(), column.as_str()), ("cards", "stage"));
            assert_eq!(key, [Value::from(id)]);
            assert_eq!((value.as_str(), target), ("\"archived\"", "Stage"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_patch_writes_the_columns_it_sets_without_reading_the_row() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Task>().await.unwrap();
    let row = task("draft");
    db.insert(&row).await.unwrap();
    // Another device's status arrives; the app patches the title only.
    db.execute_raw("UPDATE tasks SET status = 'done'", params![])
        .await
        .unwrap();
    let version = db.db_version().await.unwrap();
    let title = TaskPatch {
        title: Some("final".into()),
        ..TaskPatch::default()
    };
    assert!(db.patch(&row.id, title).await.unwrap());
    assert_eq!(columns_set(&db, version).await, ["title"]);
    let now = db.get::<Task>(&row.id).await.unwrap().unwrap();
    assert_eq!((now.title.as_str(), now.status.as_str()), ("final", "done"));

    // No such row: false, nothing written; an empty patch says whether it exists.
    let missing = TaskPatch {
        points: Some(2.0),
        ..TaskPatch::default()
    };
    assert!(!db.patch(&SyncId::new(), missing).await.unwrap());
    assert!(db.patch(&row.id, TaskPatch::default()).await.unwrap());
    assert!(
        !db.patch(&SyncId::new(), TaskPatch::default())
            .await
            .unwrap()
    );
    let nan = TaskPatch {
        points: Some(f64::NAN),
        ..TaskPatch::default()
    };
    assert!(matches!(
        db.patch(&row.id, nan).await.unwrap_err(),
        Error::NotANumber { .. }
    ));
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "links")]
struct Link {
    #[synced(primary_key)]
    id: SyncId,
    external: Option<uuid::Uuid>,
    meta: Option<sync_runtime::Json<std::collections::BTreeMap<String, i64>>>,
}

#[tokio::test]
async fn uuid_and_json_fields_round_trip_and_bad_stored_values_are_named() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Link>().await.unwrap();
    let meta: std::collections::BTreeMap<String, i64> = [("clicks".to_owned(), 3)].into();
    let link = Link {
        id: SyncId::new(),
        external: Some(uuid::Uuid::from_u128(
            0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        )),
        meta: Some(sync_runtime::Json::new(meta).unwrap()),
    };
    db.insert(&link).await.unwrap();
    assert_eq!(db.get::<Link>(&link.id).await.unwrap(), Some(link.clone()));
    let by_blob: Vec<Link> = db
        .query(
            "external = ?1",
            params![Value::Blob(link.external.unwrap().as_bytes().to_vec())],
        )
        .await
        .unwrap();
    assert_eq!(by_blob.len(), 1);
    // JSON the app's SQL reads too.
    let clicks: Vec<Link> = db
        .query("json_extract(meta, '$.clicks') = 3", params![])
        .await
        .unwrap();
    assert_eq!(clicks.len(), 1);

    for (sql, expected) in [
        (
            "UPDATE links SET external = x'00ff'",
            "2 bytes is not a UUID",
        ),
        (
            "UPDATE links SET external = NULL, meta = '{\"clicks\": \"three\"}'",
            "JSON",
        ),
    ] {
        db.execute_raw(sql, params![]).await.unwrap();
        let err = db.get::<Link>(&link.id).await.unwrap_err();
        assert!(
            matches!(&err, Error::Decode { table, .. } if table == "links")
                && err.to_string().contains(expected),
            "{sql}: {err}"
        );
    }
}

#[derive(sync_runtime::FromRow, Debug, PartialEq)]
struct StatusCount {
    status: String,
    #[from_row(rename = "count(*)")]
    tasks: i64,
    total: Option<f64>,
}

#[tokio::test]
async fn reads_run_any_read_only_sql_and_refuse_writes() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Task>().await.unwrap();
    for (title, status, points) in [("a", "open", 1.0), ("b", "open", 2.5), ("c", "done", 4.0)] {
        let mut row = task(title);
        row.status = status.into();
        row.points = points;
        db.insert(&row).await.unwrap();
    }
    let counts: Vec<StatusCount> = db
        .read(
            "WITH s AS (SELECT status, points FROM tasks) \
             SELECT status, count(*), sum(points) AS total FROM s GROUP BY status ORDER BY status",
            params![],
        )
        .await
        .unwrap();
    assert_eq!(
        counts,
        [
            StatusCount {
                status: "done".into(),
                tasks: 1,
                total: Some(4.0)
            },
            StatusCount {
                status: "open".into(),
                tasks: 2,
                total: Some(3.5)
            },
        ]
    );
    // Inside a transaction, and the runtime's own tables too (reading them is fine).
    let tables = db
        .transaction(|tx| {
            tx.read_with("SELECT name FROM _synced_tables", params![], |row| {
                row.get::<String>("name")
            })
        })
        .await
        .unwrap();
    assert_eq!(tables, ["tasks"]);

    // Writes are refused before they run; a read through execute_raw says where to go.
    for sql in [
        "DELETE FROM tasks",
        "UPDATE tasks SET title = 'x' RETURNING id",
        "INSERT INTO tasks (id, title, points) VALUES ('x', 'y', 0) RETURNING id",
    ] {
        let err = db.read_with(sql, params![], |_| Ok(())).await.unwrap_err();
        assert!(matches!(err, Error::NotReadOnly), "{sql}: {err}");
    }
    assert_eq!(db.query::<Task>("", params![]).await.unwrap().len(), 3);
    let err = db
        .execute_raw("SELECT * FROM tasks", params![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReturnsRows), "{err}");

    // Columns that are not there, or not of the type asked for, are named.
    let err = db
        .read_with("SELECT title FROM tasks", params![], |row| {
            row.get::<String>("nope")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoSuchColumn { ref column } if column == "nope"),
        "{err}"
    );
    let err = db
        .read_with("SELECT title FROM tasks", params![], |row| {
            row.get::<i64>("title")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ReadColumn { ref column, .. } if column == "title"),
        "{err}"
    );
}

#[derive(sync_runtime::FromRow, Debug, Clone, PartialEq)]
struct OpenCount {
    open: i64,
}

#[tokio::test]
async fn a_watched_query_gives_a_new_result_after_each_commit_that_changes_it() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Task>().await.unwrap();
    db.register::<Card>().await.unwrap();
    let mut open = db.watch::<Task>("status = 'open' ORDER BY title", params![]);
    let mut count = db.watch_read::<OpenCount>(
        "SELECT count(*) AS open FROM tasks WHERE status = 'open'",
        params![],
    );
    assert!(open.next().await.unwrap().is_empty());
    assert_eq!(count.next().await.unwrap(), [OpenCount { open: 0 }]);

    // A burst of writes: one result, after the last.
    for title in ["a", "b", "c"] {
        db.insert(&task(title)).await.unwrap();
    }
    let titles = |rows: Vec<Task>| rows.into_iter().map(|t| t.title).collect::<Vec<_>>();
    assert_eq!(titles(open.next().await.unwrap()), ["a", "b", "c"]);
    assert_eq!(count.next().await.unwrap(), [OpenCount { open: 3 }]);

    // A commit that leaves the result as it is gives nothing: the next result
    // is the one after the raw SQL that changes it.
    db.insert(&Card {
        id: SyncId::new(),
        stage: Stage::Done,
        size: Size::Small,
        label: None,
    })
    .await
    .unwrap();
    db.execute_raw(
        "UPDATE tasks SET status = 'done' WHERE title = 'b'",
        params![],
    )
    .await
    .unwrap();
    assert_eq!(titles(open.next().await.unwrap()), ["a", "c"]);
    assert_eq!(count.next().await.unwrap(), [OpenCount { open: 2 }]);

    // Another device's change, merged here.
    let peer = SyncDb::open_in_memory().await.unwrap();
    peer.register::<Task>().await.unwrap();
    peer.insert(&task("from a peer")).await.unwrap();
    let payload = peer
        .export_changes(sync_runtime::Since::Beginning)
        .await
        .unwrap();
    db.apply_changes(&payload).await.unwrap();
    assert_eq!(
        titles(open.next().await.unwrap()),
        ["a", "c", "from a peer"]
    );
    assert_eq!(count.next().await.unwrap(), [OpenCount { open: 3 }]);
}

/// Discriminants at the ends of `i64` are stored as they are.
#[derive(sync_runtime::SyncValue, Debug, Clone, Copy, PartialEq)]
#[sync_value(integer)]
#[repr(i64)]
enum Extreme {
    Least = -9_223_372_036_854_775_808,
    Zero = 0,
    Most = 9_223_372_036_854_775_807,
}

#[test]
fn integer_enums_store_the_ends_of_i64() {
    use sync_runtime::{SyncValue, ValueRef};
    for (variant, stored) in [
        (Extreme::Least, i64::MIN),
        (Extreme::Zero, 0),
        (Extreme::Most, i64::MAX),
    ] {
        assert_eq!(variant.to_value_ref(), ValueRef::Integer(stored));
        assert_eq!(
            Extreme::from_value_ref(ValueRef::Integer(stored)),
            Ok(variant)
        );
    }
}
