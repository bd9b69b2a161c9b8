//! Bad input gets a clear, typed error and changes nothing.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::{
    Algorithm, ColumnSchema, Error, Options, SqlType, SyncDb, SyncId, Synced, TableSchema, params,
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

/// Another struct for the same table name, with another shape.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct TodoV2 {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    priority: i64,
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are notes, not a database ".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let err = SyncDb::open(&path).await.unwrap_err();
    assert!(
        matches!(err, Error::NotADatabase { ref path } if path.ends_with("notes.txt")),
        "{err}"
    );
    assert!(err.to_string().contains("not a SQLite database"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "file untouched"
    );
}

#[tokio::test]
async fn without_create_only_a_synced_database_opens_and_the_rest_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let existing = Options::default().create(false);

    let missing = dir.path().join("missing.db");
    let err = SyncDb::open_with(&missing, existing.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err}");
    assert!(!missing.exists(), "a missing file was created");

    let empty = dir.path().join("empty.db");
    std::fs::File::create(&empty).unwrap();
    let err = SyncDb::open_with(&empty, existing.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("empty (0 bytes)"), "{err}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT)")
        .unwrap();
    let err = SyncDb::open_with(&foreign, existing.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("not a Synced one"), "{err}");
    let tables: i64 = rusqlite::Connection::open(&foreign)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "the runtime's tables were added");

    let synced = dir.path().join("synced.db");
    SyncDb::open(&synced)
        .await
        .unwrap()
        .register::<Todo>()
        .await
        .unwrap();
    let db = SyncDb::open_with(&synced, existing).await.unwrap();
    assert_eq!(db.schemas().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_truncated_file_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("todos.db");
    filled_file(&path, 2_000).await;
    let half = std::fs::metadata(&path).unwrap().len() / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(half)
        .unwrap();
    let err = SyncDb::open(&path).await.unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), half);
}

#[tokio::test]
async fn the_quick_check_finds_a_page_damaged_inside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("todos.db");
    filled_file(&path, 2_000).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (page_size, root): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT page_size FROM pragma_page_size), rootpage \
             FROM sqlite_schema WHERE name = 'todos'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&path).unwrap();
    let start = ((root - 1) * page_size) as usize;
    bytes[start..start + page_size as usize].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    // Opening alone reads no page of the table.
    drop(SyncDb::open(&path).await.unwrap());
    let checked = Options::default().quick_check(true);
    let err = SyncDb::open_with(&path, checked).await.unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("quick_check found"), "{err}");
}

/// A database file with `rows` rows of [`Todo`], its write-ahead log moved into
/// it and closed.
async fn filled_file(path: &std::path::Path, rows: usize) {
    let db = SyncDb::open(path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.transaction(move |tx| {
        for i in 0..rows {
            tx.insert(&Todo {
                id: SyncId::new(),
                title: format!("todo number {i}"),
                done: false,
                note: None,
            })?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    db.vacuum().await.unwrap();
}

#[tokio::test]
async fn a_directory_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let err = SyncDb::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(err, Error::Open { .. } | Error::NotADatabase { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn registering_another_struct_for_a_table_evolves_it_and_the_first_struct_is_refused() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    // TodoV2 adds `priority` and retires `done` and `note`.
    db.register::<TodoV2>().await.unwrap();
    let id = SyncId::new();
    db.insert(&TodoV2 {
        id,
        title: "ok".into(),
        priority: 3,
    })
    .await
    .unwrap();
    assert_eq!(db.get::<TodoV2>(&id).await.unwrap().unwrap().priority, 3);
    // The struct registered first no longer describes the table here.
    let err = db
        .insert(&Todo {
            id: SyncId::new(),
            title: "old".into(),
            done: false,
            note: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SchemaMismatch { ref table, .. } if table == "todos"),
        "{err}"
    );
}

#[tokio::test]
async fn an_existing_table_of_another_shape_is_a_mismatch_and_stays_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER) STRICT;
             INSERT INTO todos VALUES ('a', 'legacy', 0);",
        )
        .unwrap();
    }
    let db = SyncDb::open(&path).await.unwrap();
    let err = db.register::<Todo>().await.unwrap_err();
    let Error::SchemaMismatch { table, details } = &err else {
        panic!("{err}");
    };
    assert_eq!(table, "todos");
    assert!(details.contains("3 columns"), "{details}");
    drop(db);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let synced: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '_synced_clock%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(synced, 0, "nothing was created");
}

#[tokio::test]
async fn a_non_strict_table_is_a_mismatch() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.execute_raw(
        "CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, note TEXT)",
        params![],
    )
    .await
    .unwrap();
    let err = db.register::<Todo>().await.unwrap_err();
    assert!(err.to_string().contains("STRICT"), "{err}");
}

#[tokio::test]
async fn an_existing_table_of_the_right_shape_is_adopted_with_its_rows() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.execute_raw(
        "CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, note TEXT) STRICT",
        params![],
    )
    .await
    .unwrap();
    let id = SyncId::new();
    db.execute_raw(
        "INSERT INTO todos (id, title) VALUES (?1, 'from before')",
        params![id],
    )
    .await
    .unwrap();
    db.register::<Todo>().await.unwrap();
    let changes = db.changes_since(0).await.unwrap();
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert_eq!(
        db.get::<Todo>(&id).await.unwrap().unwrap().title,
        "from before"
    );
}

#[tokio::test]
async fn writes_that_violate_the_schema_are_constraint_errors_and_change_nothing() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    // Keys a `SyncId` can read: only the constraints fail.
    let (x, y, z) = (
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a01",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a02",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a03",
    );
    for (sql, what) in [
        (
            format!("INSERT INTO todos (id, title, done) VALUES ('{x}', 'a', 'yes')"),
            "INTEGER",
        ),
        (
            format!("INSERT INTO todos (id, title) VALUES ('{y}', x'00ff')"),
            "TEXT",
        ),
        (
            format!("INSERT INTO todos (id, title) VALUES ('{z}', NULL)"),
            "NOT NULL",
        ),
        (
            "INSERT INTO todos (id, title) VALUES (NULL, 'no key')".to_owned(),
            "NOT NULL",
        ),
    ] {
        let err = db.execute_raw(&sql, params![]).await.unwrap_err();
        assert!(matches!(err, Error::Constraint { .. }), "{sql}: {err}");
        assert!(err.to_string().contains(what), "{sql}: {err}");
    }
    assert_eq!(db.db_version().await.unwrap(), 0);
    assert!(db.changes_since(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stored_value_the_struct_cannot_read_is_a_decode_error() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    let id = SyncId::new();
    db.execute_raw(
        "INSERT INTO todos (id, title, done) VALUES (?1, 't', 7)",
        params![id],
    )
    .await
    .unwrap();
    let err = db.get::<Todo>(&id).await.unwrap_err();
    assert!(
        matches!(err, Error::Decode { ref table, ref column, .. } if table == "todos" && column == "done"),
        "{err}"
    );
    assert!(err.to_string().contains("out of range for bool"), "{err}");
}

#[tokio::test]
async fn invalid_descriptors_are_refused_before_anything_is_created() {
    let db = SyncDb::open_in_memory().await.unwrap();
    let keyless = TableSchema::new(
        "keyless",
        Algorithm::Cls,
        vec![ColumnSchema::new("a", SqlType::Text).nullable(true)],
    );
    let err = db.register_schema(keyless).await.unwrap_err();
    assert!(matches!(err, Error::InvalidSchema(_)), "{err}");
    let err = db
        .execute_raw("SELECT * FROM keyless", params![])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
}

#[tokio::test]
async fn raw_sql_errors_are_typed() {
    let db = SyncDb::open_in_memory().await.unwrap();
    let err = db
        .execute_raw("THIS IS NOT SQL", params![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Sqlite(_)), "{err}");
    let err = db
        .execute_raw("BEGIN; COMMIT;", params![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Sqlite(_)), "{err}");
}

fn keyed(name: &'static str, algorithm: Algorithm, value: &'static str) -> TableSchema {
    TableSchema::new(
        name,
        algorithm,
        vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new(value, SqlType::Integer).default_sql("0"),
        ],
    )
}

#[tokio::test]
async fn tables_whose_names_extend_each_other_keep_separate_metadata() {
    let db = SyncDb::open_in_memory().await.unwrap();
    // `api` + `_key` and a grow-only `x` next to `x_guard`: generated names never meet.
    for (name, algorithm) in [
        ("api", Algorithm::Cls),
        ("api_key", Algorithm::Cls),
        ("x", Algorithm::Gos),
        ("x_guard", Algorithm::Cls),
    ] {
        db.register_schema(keyed(name, algorithm, "n"))
            .await
            .unwrap();
    }
    db.execute_raw("INSERT INTO x_guard (id) VALUES ('a')", params![])
        .await
        .unwrap();
    db.execute_raw("DELETE FROM x_guard", params![])
        .await
        .unwrap();
    let deletes = db
        .changes_since(1)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.table == "x_guard" && c.kind == sync_runtime::ChangeKind::Delete)
        .count();
    assert_eq!(deletes, 1);
    db.execute_raw("INSERT INTO x (id) VALUES ('a')", params![])
        .await
        .unwrap();
    let err = db
        .execute_raw("DELETE FROM x", params![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GrowOnly { .. }), "{err}");
}

#[tokio::test]
async fn a_column_named_like_the_runtimes_state_is_fine() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.execute_raw(
        "CREATE TABLE odd (id TEXT NOT NULL PRIMARY KEY, db_version INTEGER NOT NULL DEFAULT 0) STRICT",
        params![],
    )
    .await
    .unwrap();
    db.execute_raw(
        "INSERT INTO odd (id, db_version) VALUES ('a', 42)",
        params![],
    )
    .await
    .unwrap();
    db.register_schema(keyed("odd", Algorithm::Cls, "db_version"))
        .await
        .unwrap();
    assert_eq!(db.changes_since(0).await.unwrap().len(), 2);
}

#[tokio::test]
async fn rowid_names_are_refused_as_columns() {
    let db = SyncDb::open_in_memory().await.unwrap();
    let err = db
        .register_schema(keyed("r", Algorithm::Cls, "rowid"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSchema(_)), "{err}");
}

#[tokio::test]
async fn table_names_differing_in_case_are_the_same_table() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.execute_raw(
        "CREATE TABLE Todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, note TEXT)",
        params![],
    )
    .await
    .unwrap();
    let err = db.register::<Todo>().await.unwrap_err();
    assert!(err.to_string().contains("STRICT"), "{err}");
}

/// A second struct for the table `todos`, never registered.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct TodoTitle {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
}

#[tokio::test]
async fn a_struct_that_was_not_registered_is_refused_even_for_a_registered_table() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    let row = TodoTitle {
        id: SyncId::new(),
        title: "t".into(),
    };
    let err = db.insert(&row).await.unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
    let err = db.transaction(move |tx| tx.insert(&row)).await.unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "measures")]
struct Measure {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(default = 0.0)]
    value: f64,
    maybe: Option<f64>,
}

/// NaN cannot be stored (SQLite stores NULL in its place): every write path
/// refuses it with `Error::NotANumber`, naming where it was, and writes nothing.
#[tokio::test]
async fn nan_is_refused_on_every_write_path() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Measure>().await.unwrap();
    let not_a_number = |result: Result<(), Error>, place: &str| match result {
        Err(Error::NotANumber { place: found }) => assert_eq!(found, place),
        other => panic!("expected NotANumber at {place}, got {other:?}"),
    };
    let row = Measure {
        id: SyncId::new(),
        value: 1.0,
        maybe: Some(f64::NAN),
    };
    let maybe = "column `maybe` of table `measures`";
    let value = "column `value` of table `measures`";
    not_a_number(db.insert(&row).await, maybe);
    let nan_value = Measure {
        value: f64::NAN,
        maybe: None,
        ..row.clone()
    };
    not_a_number(db.insert(&nan_value).await, value);
    assert_eq!(db.db_version().await.unwrap(), 0);

    let stored = Measure {
        maybe: Some(2.0),
        ..row.clone()
    };
    db.insert(&stored).await.unwrap();
    not_a_number(db.update(&row).await, maybe);
    not_a_number(db.update(&nan_value).await, value);
    let raw = db
        .execute_raw(
            "UPDATE measures SET maybe = ?2 WHERE id = ?1",
            params![row.id, f64::NAN],
        )
        .await
        .map(drop);
    not_a_number(raw, "parameter ?2");
    assert_eq!(db.get::<Measure>(&row.id).await.unwrap(), Some(stored));

    // A payload from a replica that stored it anyway is refused whole.
    let other = SyncDb::open_in_memory().await.unwrap();
    other.register::<Measure>().await.unwrap();
    other
        .insert(&Measure {
            id: SyncId::new(),
            value: 0.5,
            maybe: Some(0.5),
        })
        .await
        .unwrap();
    let mut payload = sync_runtime::wire::decode(
        &other
            .export_changes(sync_runtime::Since::Beginning)
            .await
            .unwrap(),
    )
    .unwrap();
    for column in &mut payload.rows[0].columns {
        column.value = sync_runtime::Value::Real(f64::NAN);
    }
    let bytes = sync_runtime::wire::encode(&payload, sync_runtime::wire::Compression::None);
    not_a_number(db.apply_changes(&bytes).await.map(drop), value);
    assert_eq!(db.query::<Measure>("", params![]).await.unwrap().len(), 1);
}

/// SQLite stores `-0.0` as `0.0`: it reads back without its sign.
#[tokio::test]
async fn negative_zero_reads_back_as_zero() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Measure>().await.unwrap();
    let row = Measure {
        id: SyncId::new(),
        value: -0.0,
        maybe: Some(-0.0),
    };
    db.insert(&row).await.unwrap();
    let read = db.get::<Measure>(&row.id).await.unwrap().unwrap();
    assert!(read.value == 0.0 && read.value.is_sign_positive());
    assert!(read.maybe.is_some_and(|m| m == 0.0 && m.is_sign_positive()));
}

/// A key column of a `SyncId` takes only a `SyncId`'s canonical text from raw
/// SQL: any other key would make every typed read of the table fail.
#[tokio::test]
async fn a_raw_write_of_a_key_no_typed_read_can_decode_is_refused() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    let kept = Todo {
        id: SyncId::new(),
        title: "kept".into(),
        done: false,
        note: None,
    };
    db.insert(&kept).await.unwrap();
    let version = db.db_version().await.unwrap();
    let id = SyncId::new().to_string();
    let bad_keys = [
        "abc".to_owned(),
        String::new(),
        id.to_uppercase(),
        format!("{{{id}}}"),
        id.replace('-', ""),
        format!("{}g", &id[..35]),
        format!("{id} "),
    ];
    let invalid_key = |result: Result<usize, Error>, what: &str| match result {
        Err(Error::InvalidKey { table, column }) => {
            assert_eq!((table.as_str(), column.as_str()), ("todos", "id"), "{what}");
        }
        other => panic!("{what}: expected InvalidKey, got {other:?}"),
    };
    for key in &bad_keys {
        let inserted = db
            .execute_raw(
                "INSERT INTO todos (id, title) VALUES (?1, 'raw')",
                params![key.clone()],
            )
            .await;
        invalid_key(inserted, key);
        let rekeyed = db
            .execute_raw("UPDATE todos SET id = ?1", params![key.clone()])
            .await;
        invalid_key(rekeyed, key);
    }
    assert_eq!(db.db_version().await.unwrap(), version);
    assert_eq!(db.query::<Todo>("", params![]).await.unwrap(), [kept]);
    // The canonical text is a key like any other.
    db.execute_raw(
        "INSERT INTO todos (id, title) VALUES (?1, 'raw')",
        params![id.clone()],
    )
    .await
    .unwrap();
    let read: SyncId = id.parse().unwrap();
    assert_eq!(db.get::<Todo>(&read).await.unwrap().unwrap().title, "raw");
    // A table registered by a descriptor alone has no such check.
    let other = SyncDb::open_in_memory().await.unwrap();
    other.register_schema(Todo::SCHEMA.clone()).await.unwrap();
    other
        .execute_raw(
            "INSERT INTO todos (id, title) VALUES ('abc', 'raw')",
            params![],
        )
        .await
        .unwrap();
}

/// A server whose HTTP client cannot be built is reported by every sync, with
/// a typed error that lasts (not a panic, and not a retry).
#[cfg(feature = "http")]
#[tokio::test]
async fn a_remote_without_an_http_client_is_a_typed_error() {
    let db = SyncDb::open_in_memory().await.unwrap().with_remote(
        sync_runtime::Remote::new("https://127.0.0.1:9/v1/db/todo").root_certificate(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        ),
    );
    db.register::<Todo>().await.unwrap();
    for _ in 0..2 {
        let err = db.sync().await.unwrap_err();
        assert!(
            matches!(&err, Error::HttpClient { reason, .. } if reason.contains("certificate")),
            "{err}"
        );
        assert!(!err.is_transient());
    }
}

/// The key check looks at the rows a raw statement inserts, not only at the
/// clock rows tracking writes: with tracking off, a key no typed read can
/// decode is refused too (`enable_tracking` would record it for sync).
#[tokio::test]
async fn a_raw_key_no_typed_read_can_decode_is_refused_while_tracking_is_off() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.disable_tracking::<Todo>().await.unwrap();
    let inserted = db
        .execute_raw(
            "INSERT INTO todos (id, title) VALUES ('abc', 'raw')",
            params![],
        )
        .await;
    db.enable_tracking::<Todo>().await.unwrap();
    assert!(
        matches!(inserted, Err(Error::InvalidKey { .. })),
        "accepted: {inserted:?}; read back: {:?}",
        db.query::<Todo>("", params![]).await
    );
}

/// Statements that write keys only through triggers are checked too, and so
/// is a statement the app ran before it added a trigger that makes it write
/// keys: the statement is undone and nothing is recorded.
#[tokio::test]
async fn a_raw_key_written_through_a_trigger_is_refused() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.execute_raw("CREATE TABLE inbox (key TEXT, title TEXT)", params![])
        .await
        .unwrap();
    let deliver = "INSERT INTO inbox (key, title) VALUES (?1, 'from the inbox')";
    // Before any trigger, the statement writes no synced key.
    db.execute_raw(deliver, params!["not a key"]).await.unwrap();
    db.execute_raw(
        "CREATE TRIGGER inbox_to_todos AFTER INSERT ON inbox BEGIN \
         INSERT INTO todos (id, title) VALUES (NEW.key, NEW.title); END",
        params![],
    )
    .await
    .unwrap();
    // Inside a transaction that goes on after the error and commits, as an
    // app may.
    let id = SyncId::new();
    let delivered = db
        .transaction(move |tx| {
            let delivered = tx.execute_raw(deliver, params!["abc"]);
            tx.execute_raw(deliver, params![id.to_string()])
                .map(|_| delivered)
        })
        .await
        .unwrap();
    assert!(
        matches!(delivered, Err(Error::InvalidKey { .. })),
        "accepted: {delivered:?}"
    );
    // The refused statement is undone whole: the inbox has no row of it, and
    // the only synced row is the one with a key in its canonical form.
    let left = db
        .execute_raw("DELETE FROM inbox WHERE key = 'abc'", params![])
        .await
        .unwrap();
    assert_eq!(left, 0);
    let todos = db.query::<Todo>("", params![]).await.unwrap();
    assert_eq!(todos.len(), 1);
    assert_eq!(todos[0].id, id);
    assert_eq!(todos[0].title, "from the inbox");
}

/// A composite key of a `SyncId` and a `u8`.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "slots")]
struct Slot {
    #[synced(primary_key)]
    owner: SyncId,
    #[synced(primary_key)]
    index: u8,
    label: Option<String>,
}

/// A key column of a narrower integer type (or `bool`) takes only its type's
/// values from raw SQL: 300 in a `u8` would make every typed read fail.
#[tokio::test]
async fn a_raw_integer_key_out_of_its_types_range_is_refused() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Slot>().await.unwrap();
    let inserted = db
        .execute_raw(
            "INSERT INTO slots (owner, \"index\") VALUES (?1, 300)",
            params![SyncId::new().to_string()],
        )
        .await;
    assert!(
        matches!(inserted, Err(Error::InvalidKey { .. })),
        "accepted: {inserted:?}; read back: {:?}",
        db.query::<Slot>("", params![]).await
    );
}

/// A conflict clause `OR ROLLBACK` (or a trigger's `RAISE(ROLLBACK, ...)`)
/// ends the whole transaction, the key check's savepoint with it: the
/// statement's own error (`Error::Constraint`) is what comes back, as without
/// the check.
#[tokio::test]
async fn a_statement_that_rolls_back_reports_its_own_error_under_the_key_check() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    let id = SyncId::new();
    db.insert(&Todo {
        id,
        title: "kept".into(),
        done: false,
        note: None,
    })
    .await
    .unwrap();
    let duplicate = db
        .execute_raw(
            "INSERT OR ROLLBACK INTO todos (id, title) VALUES (?1, 'again')",
            params![id.to_string()],
        )
        .await;
    assert!(
        matches!(duplicate, Err(Error::Constraint { .. })),
        "{duplicate:?}"
    );
}

/// A table keyed by text, which the key check does not look at.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tags")]
struct Tag {
    #[synced(primary_key)]
    name: String,
}

/// `INSERT OR FAIL` keeps the rows it wrote before the conflict (SQLite's
/// documented behaviour), whether or not a table with a checked key is
/// registered: the key check's savepoint undoes a statement only for a key it
/// refuses.
#[tokio::test]
async fn insert_or_fail_keeps_its_earlier_rows_whether_or_not_a_syncid_key_is_registered() {
    let mut kept = Vec::new();
    for with_syncid_table in [false, true] {
        let db = SyncDb::open_in_memory().await.unwrap();
        db.register::<Tag>().await.unwrap();
        if with_syncid_table {
            db.register::<Todo>().await.unwrap();
        }
        db.execute_raw("INSERT INTO tags (name) VALUES ('c')", params![])
            .await
            .unwrap();
        db.transaction(|tx| {
            let failed = tx.execute_raw(
                "INSERT OR FAIL INTO tags VALUES ('a'), ('b'), ('c')",
                params![],
            );
            assert!(
                matches!(failed, Err(Error::Constraint { .. })),
                "{failed:?}"
            );
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let tags = db.query::<Tag>("ORDER BY name", params![]).await.unwrap();
        kept.push(tags.into_iter().map(|t| t.name).collect::<Vec<_>>());
    }
    assert_eq!(kept[0], ["a", "b", "c"]);
    assert_eq!(
        kept[1], kept[0],
        "the unrelated SyncId table changed what OR FAIL keeps"
    );
}

/// A text default is parsed and checked as a value, then written back as a
/// literal into the DDL; SQL text ends at a NUL, so a default holding one is
/// refused by the checks, naming its column, rather than by SQLite's tokenizer.
#[tokio::test]
async fn a_text_default_with_a_nul_is_refused_naming_its_column() {
    let schema = TableSchema::new(
        "notes",
        Algorithm::Cls,
        vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("body", SqlType::Text).default_sql("'a\0b'"),
        ],
    );
    let refused = schema.validate().unwrap_err();
    assert!(refused.reason.starts_with("column `body`: "), "{refused}");
    let db = SyncDb::open_in_memory().await.unwrap();
    let registered = db.register_schema(schema).await;
    assert!(
        matches!(registered, Err(Error::InvalidSchema(_))),
        "{registered:?}"
    );
}

/// The app's raw SQL reads the runtime's own tables but never changes them,
/// nor its triggers and indexes: that state is what syncs.
#[tokio::test]
async fn the_apps_sql_may_not_change_the_runtimes_own_objects() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Todo>().await.unwrap();
    for (sql, action) in [
        (
            "DELETE FROM _synced_versions",
            "deletes from `_synced_versions`",
        ),
        (
            "UPDATE _Synced_State SET db_version = 0",
            "writes `_synced_state`",
        ),
        (
            "INSERT INTO _synced_peers VALUES (7, 7)",
            "writes `_synced_peers`",
        ),
        (
            "DROP TABLE \"_synced_clock.todos\"",
            "drops `_synced_clock.todos`",
        ),
        (
            "DROP TRIGGER \"_synced_trigger.todos.update\"",
            "drops `_synced_trigger.todos.update`",
        ),
        (
            "ALTER TABLE _synced_sites ADD COLUMN x",
            "alters `_synced_sites`",
        ),
        ("CREATE TABLE _synced_mine (a)", "creates `_synced_mine`"),
        (
            "ALTER TABLE todos RENAME TO chores",
            "alters the synced table `todos`; change its struct instead",
        ),
        (
            "DROP TABLE todos",
            "drops the synced table `todos`; drop its tracking first (drop_tracking)",
        ),
        (
            "PRAGMA writable_schema = ON",
            "sets `PRAGMA writable_schema`, which edits the schema by hand",
        ),
        (
            "CREATE TEMP TABLE todos (id TEXT)",
            "creates a temporary `todos`, which would hide the synced table",
        ),
    ] {
        let err = db.execute_raw(sql, params![]).await.unwrap_err();
        match &err {
            Error::RuntimeObject { action: a } => assert_eq!(a, action, "{sql}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
    // An app trigger that writes them is refused whoever fires it: the app's
    // SQL, or the runtime's typed writes.
    db.execute_raw(
        "CREATE TRIGGER sneaky AFTER INSERT ON todos BEGIN DELETE FROM _synced_peers; END",
        params![],
    )
    .await
    .unwrap();
    let row = || Todo {
        id: SyncId::new(),
        title: "fires the trigger".into(),
        done: false,
        note: None,
    };
    assert!(db.insert(&row()).await.is_err());
    db.execute_raw("DROP TRIGGER sneaky", params![])
        .await
        .unwrap();
    // The app's own writes, which the runtime's triggers record, still run.
    db.insert(&row()).await.unwrap();
    assert_eq!(
        db.execute_raw("UPDATE todos SET title = 'edited'", params![])
            .await
            .unwrap(),
        1
    );
    assert!(db.changes_since(0).await.unwrap().len() > 1);
}
