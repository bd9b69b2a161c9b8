//! Files written by release 0.1.0 (`tests/fixtures/0.1.0`), opened by this one:
//! upgraded in place, then edited and synced with current replicas.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use support::{TestServer, Todo, device, rows, server_rows, todo};
use sync_runtime::{Error, SyncDb};

/// The format this release writes (see the runtime's `format` module).
const FORMAT: i64 = 4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/0.1.0")
        .join(name)
}

/// Copies of the fixtures: the server's data directory and the phone's file.
fn copies(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("server");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(fixture("server/todo.db"), data.join("todo.db")).unwrap();
    std::fs::copy(fixture("phone.db"), dir.join("phone.db")).unwrap();
    (data, dir.join("phone.db"))
}

fn read_only(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// The file's format, `None` for a file that records none (0.1.0's).
fn format_of(path: &Path) -> Option<i64> {
    let conn = read_only(path);
    let versioned: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_synced_format')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    versioned.then(|| {
        conn.query_row("SELECT version FROM _synced_format", [], |r| r.get(0))
            .unwrap()
    })
}

/// Every trigger of the file, by name, with its SQL.
fn triggers(path: &Path) -> Vec<(String, String)> {
    let conn = read_only(path);
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn titles(rows: &[Todo]) -> Vec<&str> {
    let mut titles: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
    titles.sort_unstable();
    titles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_0_1_0_are_upgraded_and_keep_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, phone_file) = copies(dir.path());
    assert_eq!(format_of(&phone_file), None);
    assert_eq!(format_of(&data.join("todo.db")), None);

    let server = TestServer::start(&data).await;
    let url = server.url("todo");
    // The server moved to a new port: its devices are pointed at it, with the
    // cursors they had.
    read_write(&phone_file)
        .execute("UPDATE _synced_remote SET url = ?1", [&url])
        .unwrap();
    let phone = device(dir.path(), "phone", &url, "ann").await;
    assert_eq!(format_of(&phone_file), Some(FORMAT));
    assert_eq!(
        titles(&rows(&phone).await),
        [
            "buy milk",
            "from the laptop",
            "write report",
            "written offline"
        ]
    );

    // Its changes made offline under 0.1.0 go with its first sync, with one made
    // now.
    phone.insert(&todo("after the upgrade")).await.unwrap();
    phone.sync().await.unwrap();
    let fresh = device(dir.path(), "fresh", &url, "ann").await;
    fresh.sync().await.unwrap();
    let seen = rows(&fresh).await;
    assert_eq!(rows(&phone).await, seen);
    assert_eq!(
        titles(&seen),
        [
            "after the upgrade",
            "buy milk",
            "from the laptop",
            "write report",
            "written offline"
        ]
    );
    let by_title = |title: &str| seen.iter().find(|r| r.title == title).unwrap().clone();
    assert!(by_title("buy milk").done);
    assert_eq!(
        by_title("write report").note.as_deref(),
        Some("edited offline")
    );

    // And the other way: an edit made on a current replica reaches it.
    let mut milk = by_title("buy milk");
    milk.note = Some("oat".into());
    fresh.update(&milk).await.unwrap();
    fresh.sync().await.unwrap();
    phone.sync().await.unwrap();
    assert_eq!(rows(&phone).await, rows(&fresh).await);

    // The upgraded file has the triggers this release makes, as a new one does.
    assert_eq!(
        triggers(&phone_file),
        triggers(&dir.path().join("fresh.db"))
    );
    server.stop().await;
    assert_eq!(format_of(&data.join("todo.db")), Some(FORMAT));
    assert_eq!(server_rows(&data, "todo").await, rows(&fresh).await);
}

fn read_write(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

#[tokio::test]
async fn a_file_of_a_newer_format_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Todo>().await.unwrap();
    drop(db);
    read_write(&path)
        .execute("UPDATE _synced_format SET version = ?1", [FORMAT + 1])
        .unwrap();
    match SyncDb::open(&path).await {
        Err(Error::NewerFormat {
            found, supported, ..
        }) => assert_eq!((found, supported), (FORMAT + 1, FORMAT)),
        other => panic!("expected NewerFormat, got {:?}", other.map(|_| ())),
    }
    assert_eq!(format_of(&path), Some(FORMAT + 1));
}

#[tokio::test]
async fn an_upgrade_that_fails_leaves_the_file_as_0_1_0_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, phone_file) = copies(dir.path());
    // A stored descriptor the upgrade cannot read, to generate triggers from.
    read_write(&phone_file)
        .execute("UPDATE _synced_tables SET descriptor = '{'", [])
        .unwrap();
    let before = triggers(&phone_file);
    let failed = SyncDb::open(&phone_file).await;
    assert!(
        matches!(failed, Err(Error::SchemaMismatch { .. })),
        "{:?}",
        failed.map(|_| ())
    );
    assert_eq!(format_of(&phone_file), None);
    assert_eq!(triggers(&phone_file), before);
}

/// Release 0.1.0 took a column default as SQL (the merge ran `SELECT
/// <default>`), so a hand-built descriptor could say `CURRENT_TIMESTAMP` (the
/// derive never wrote one). A default is a value now: after the upgrade, which
/// keeps descriptors as they are stored, such a table is refused loudly, with
/// an error naming its column, when it is registered or merged into, and the
/// file's other tables go on syncing. The file is emulated from a current one
/// brought back to format 1 (no `_synced_format`, no `vacuums`, no
/// `_synced_rejected`), with the default 0.1.0 accepted in its stored
/// descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_table_whose_default_is_sql_is_refused_by_name_and_the_rest_syncs() {
    use sync_runtime::{Algorithm, ColumnSchema, Since, SqlType, TableSchema, params};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let schema = |default: &'static str| {
        TableSchema::new(
            "notes",
            Algorithm::Cls,
            vec![
                ColumnSchema::new("id", SqlType::Text).primary_key(),
                ColumnSchema::new("created", SqlType::Text).default_sql(default),
            ],
        )
    };
    {
        let db = SyncDb::open(&path).await.unwrap();
        db.register_schema(schema("''")).await.unwrap();
        db.register::<Todo>().await.unwrap();
        db.execute_raw("INSERT INTO notes (id) VALUES ('n1')", params![])
            .await
            .unwrap();
        db.insert(&todo("kept")).await.unwrap();
    }
    let old = serde_json::to_string(&schema("CURRENT_TIMESTAMP")).unwrap();
    let conn = read_write(&path);
    conn.execute_batch(
        "DROP TABLE _synced_format; DROP TABLE _synced_rejected; \
         ALTER TABLE _synced_state DROP COLUMN vacuums;",
    )
    .unwrap();
    conn.execute(
        "UPDATE _synced_tables SET descriptor = ?1 WHERE name = 'notes'",
        [old],
    )
    .unwrap();
    drop(conn);
    assert_eq!(format_of(&path), None);

    let db = SyncDb::open(&path).await.unwrap();
    assert_eq!(format_of(&path), Some(FORMAT));
    match db.register_schema(schema("CURRENT_TIMESTAMP")).await {
        Err(Error::InvalidSchema(e)) => {
            assert_eq!(e.table, "notes");
            assert!(e.reason.starts_with("column `created`: "), "{e}");
        }
        other => panic!("expected InvalidSchema, got {:?}", other.map(|_| ())),
    }
    // The other table syncs with a current replica.
    db.register::<Todo>().await.unwrap();
    let fresh = SyncDb::open(dir.path().join("fresh.db")).await.unwrap();
    fresh.register::<Todo>().await.unwrap();
    fresh.insert(&todo("from fresh")).await.unwrap();
    let sent = fresh.export_changes(Since::Beginning).await.unwrap();
    db.apply_changes(&sent).await.unwrap();
    assert_eq!(titles(&rows(&db).await), ["from fresh", "kept"]);
}
