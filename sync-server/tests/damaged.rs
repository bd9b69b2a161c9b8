//! Damaged database files: a file in the data directory that is empty, not a
//! SQLite database, not a Synced database, truncated, or damaged inside is refused
//! when the server opens it, is answered with a typed error to every request that
//! names it, and is left as it is; the other databases are served as usual.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use std::path::Path;

use common::*;
use reqwest::{RequestBuilder, StatusCode};
use sync_runtime::protocol::{API_KEY_HEADER, ErrorBody, SCHEMA_HEADER, SITE_HEADER};
use sync_runtime::{Error, Remote, SyncDb, Synced};
use tokio::time::timeout;

#[tokio::test]
async fn an_empty_file_is_refused_and_the_other_databases_are_served() {
    let data = tempfile::tempdir().unwrap();
    replica_file(&data.path().join("a.db"), 3).await;
    let empty = data.path().join("b.db");
    std::fs::File::create(&empty).unwrap();
    let data_path = data.path().display().to_string();
    let server = TestServer::start_in(data, |_| {}).await;

    // `a` is served: a device gets its rows.
    let device = device_of(&server, "a").await;
    device.db.sync().await.unwrap();
    assert_eq!(device.todos().await.len(), 3);

    // `b` is not: every request gets the typed error, which names the database
    // and what to do, but not where the server keeps its files.
    for body in refusals(&server, &device, "b").await {
        assert!(
            body.message.contains("is empty (0 bytes)"),
            "{}",
            body.message
        );
        assert!(!body.message.contains(&data_path), "{}", body.message);
    }
    let error = device_of(&server, "b").await.db.sync().await.unwrap_err();
    assert!(
        matches!(&error, Error::DatabaseUnavailable { message } if message.contains("database `b`")),
        "{error}"
    );
    assert!(!error.is_transient(), "a retry cannot restore a file");

    // Not even the schema request, which creates missing databases, made it a
    // new database.
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    assert!(!server.data.path().join("b.db-wal").exists());
}

#[tokio::test]
async fn a_truncated_file_is_refused_with_or_without_the_quick_check() {
    for quick_check in [true, false] {
        let data = tempfile::tempdir().unwrap();
        // The database of the configuration: its start-up checks are skipped,
        // and the server starts all the same.
        let file = data.path().join(format!("{DB}.db"));
        replica_file(&file, 5_000).await;
        let half = std::fs::metadata(&file).unwrap().len() / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(half)
            .unwrap();
        let server =
            TestServer::start_in(data, |config| config.storage.quick_check = quick_check).await;

        let device = device_of(&server, DB).await;
        for body in refusals(&server, &device, DB).await {
            // SQLite compares the page count in the file's header with its size.
            assert!(
                body.message.contains("database disk image is malformed"),
                "quick_check = {quick_check}: {}",
                body.message
            );
        }
        assert_eq!(std::fs::metadata(&file).unwrap().len(), half);
    }
}

#[tokio::test]
async fn a_page_damaged_inside_the_file_is_found_by_the_quick_check() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("b.db");
    replica_file(&file, 5_000).await;
    zero_root_page(&file, "todos");
    let server = TestServer::start_in(data, |_| {}).await;

    let device = device_of(&server, "b").await;
    for body in refusals(&server, &device, "b").await {
        assert!(
            body.message.contains("quick_check found"),
            "{}",
            body.message
        );
    }
}

#[tokio::test]
async fn without_the_quick_check_a_page_damaged_inside_the_file_fails_only_when_read() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("b.db");
    replica_file(&file, 5_000).await;
    zero_root_page(&file, "todos");
    let server = TestServer::start_in(data, |config| config.storage.quick_check = false).await;

    // The file opens: its header and the runtime's own tables are intact.
    let device = device_of(&server, "b").await;
    let schema = server.as_admin(server.http.get(server.url("/v1/db/b/schema")));
    assert_eq!(schema.send().await.unwrap().status(), StatusCode::OK);
    // The first read of the damaged table fails.
    let pull = admin_request(
        &server,
        &device,
        server.http.get(server.url("/v1/db/b/pull")),
    )
    .await;
    let body = error_body(
        pull.send().await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    assert_eq!(body.code, "server_error");
}

/// A file a newer release wrote is not served (this release cannot know what
/// it holds), and is left as it is; the other databases are served.
#[tokio::test]
async fn a_file_of_a_newer_format_is_refused_and_left_as_it_is() {
    let data = tempfile::tempdir().unwrap();
    replica_file(&data.path().join("a.db"), 3).await;
    let newer = data.path().join("b.db");
    replica_file(&newer, 3).await;
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.execute("UPDATE _synced_format SET version = version + 1", [])
        .unwrap();
    drop(conn);
    let before = std::fs::read(&newer).unwrap();
    let server = TestServer::start_in(data, |_| {}).await;

    let device = device_of(&server, "a").await;
    device.db.sync().await.unwrap();
    assert_eq!(device.todos().await.len(), 3);
    for body in refusals(&server, &device, "b").await {
        assert!(
            body.message.contains("written by a newer release"),
            "{}",
            body.message
        );
    }
    assert_eq!(std::fs::read(&newer).unwrap(), before);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("b.db");
    let garbage = b"not a database, only text that happens to end in .db\n".repeat(100);
    std::fs::write(&file, &garbage).unwrap();
    let server = TestServer::start_in(data, |_| {}).await;

    let device = device_of(&server, "b").await;
    for body in refusals(&server, &device, "b").await {
        assert!(
            body.message.contains("not a SQLite database"),
            "{}",
            body.message
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), garbage);
}

#[tokio::test]
async fn a_sqlite_file_that_is_not_a_synced_database_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("b.db");
    let foreign = rusqlite::Connection::open(&file).unwrap();
    foreign
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    drop(foreign);
    let server = TestServer::start_in(data, |_| {}).await;

    let device = device_of(&server, "b").await;
    for body in refusals(&server, &device, "b").await {
        assert!(
            body.message.contains("not a Synced one"),
            "{}",
            body.message
        );
    }
    let tables: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "the runtime's tables were added");
}

#[tokio::test]
async fn the_refusal_is_logged_with_the_database_the_path_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    replica_file(&data.join("a.db"), 3).await;
    let empty = data.join("b.db");
    std::fs::File::create(&empty).unwrap();
    let config = dir.path().join("server.toml");
    let keys = format!(
        "[auth]\napi_keys = [\"{}\"]\n",
        sync_server::auth::hash_key(ADMIN_KEY)
    );
    std::fs::write(&config, keys).unwrap();

    let (_server, addr, mut log) = spawn_server_with_log(&[
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    let refused = timeout(PATIENCE, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("ERROR") {
                return line;
            }
        }
        panic!("the log ended without an error");
    })
    .await
    .expect("no error was logged");
    assert!(refused.contains("database file refused"), "{refused}");
    assert!(refused.contains(r#"database="b""#), "{refused}");
    assert!(refused.contains(&empty.display().to_string()), "{refused}");
    assert!(refused.contains("is empty (0 bytes)"), "{refused}");

    // The server went on: `a` is served, `b` answers the typed error.
    let schema = |name: &str| {
        reqwest::Client::new()
            .get(format!("http://{addr}/v1/db/{name}/schema"))
            .header(API_KEY_HEADER, ADMIN_KEY)
            .send()
    };
    assert_eq!(schema("a").await.unwrap().status(), StatusCode::OK);
    let b = error_body(schema("b").await.unwrap(), StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(b.code, ErrorBody::DATABASE_UNAVAILABLE);
}

/// A device with the [`Todo`] table, syncing database `name` with the admin key.
async fn device_of(server: &TestServer, name: &str) -> Device {
    let device = Device::new("admin").await;
    let url = server.url(&format!("/v1/db/{name}"));
    device.db.set_remote(Remote::new(url).api_key(ADMIN_KEY));
    device
}

/// A request as an admin from `device`, with its fingerprint and site.
async fn admin_request(
    server: &TestServer,
    device: &Device,
    request: RequestBuilder,
) -> RequestBuilder {
    server
        .as_admin(request)
        .header(SCHEMA_HEADER, device.fingerprint().await)
        .header(SITE_HEADER, device.db.site_id().to_string())
}

/// Sends a push, a pull, and a read and a write of the schema of database
/// `name`, as an admin from `device`; checks that each gets the typed error
/// (503, `database_unavailable`, naming the database and what to do) and returns
/// their bodies.
async fn refusals(server: &TestServer, device: &Device, name: &str) -> Vec<ErrorBody> {
    let url = |endpoint: &str| server.url(&format!("/v1/db/{name}/{endpoint}"));
    let schema = serde_json::to_vec(&[Todo::SCHEMA]).unwrap();
    let requests = [
        (
            "push",
            admin_request(server, device, server.http.post(url("push"))).await,
        ),
        (
            "pull",
            admin_request(server, device, server.http.get(url("pull"))).await,
        ),
        (
            "schema read",
            server.as_admin(server.http.get(url("schema"))),
        ),
        (
            "schema write",
            server.as_admin(server.http.put(url("schema")).body(schema)),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, request) in requests {
        let response = request.send().await.unwrap();
        let body = error_body(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(
            body.code,
            ErrorBody::DATABASE_UNAVAILABLE,
            "{what}: {}",
            body.message
        );
        assert!(
            body.message
                .contains(&format!("database `{name}` cannot be served"))
                && body.message.contains("restore it from a backup"),
            "{what}: {}",
            body.message
        );
        bodies.push(body);
    }
    bodies
}

/// Writes at `path` a server database of the [`Todo`] table with `rows` rows, as
/// one self-contained file (its write-ahead log moved into it).
async fn replica_file(path: &Path, rows: usize) {
    let scratch = tempfile::tempdir().unwrap();
    let built = scratch.path().join("replica.db");
    let db = SyncDb::open(&built).await.unwrap();
    db.register::<Todo>().await.unwrap();
    db.transaction(move |tx| {
        for i in 0..rows {
            tx.insert(&Todo::new(&format!("todo number {i}")))?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    db.vacuum().await.unwrap();
    std::fs::copy(&built, path).unwrap();
}

/// Overwrites the root page of `table` with zeros: the file keeps its size and
/// its header, and every read of the table fails.
fn zero_root_page(path: &Path, table: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(path).unwrap();
    let (root, page_size) = (root as usize, page_size as usize);
    let start = (root - 1) * page_size;
    bytes[start..start + page_size].fill(0);
    std::fs::write(path, bytes).unwrap();
}
