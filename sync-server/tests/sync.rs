//! Push and pull through a real server: changes travel between devices, a device
//! never gets its own changes back, bad input is refused with the documented status
//! and the server keeps serving.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use sync_runtime::Cursor;
use sync_runtime::protocol::{SCHEMA_HEADER, SITE_HEADER, fingerprint_hex};
use tokio::time::Instant;

#[tokio::test]
async fn a_push_then_a_pull_by_another_device_carries_the_changes() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;
    phone.db.insert(&Todo::new("buy milk")).await.unwrap();
    phone.db.insert(&Todo::new("call mum")).await.unwrap();

    let ack = phone.push(&server).await;
    assert!(ack.applied > 0);
    assert!(ack.version > 0);

    let pulled = laptop.pull(&server, &Cursor::BEGINNING, 0).await;
    assert!(pulled.complete);
    assert_eq!(laptop.todos().await, phone.todos().await);

    // From the cursor it got, there is nothing more.
    let again = laptop.pull(&server, &pulled.next, 0).await;
    assert!(again.complete);
    assert_eq!(laptop.todos().await.len(), 2);
}

#[tokio::test]
async fn each_push_raises_the_server_version() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let mut versions = Vec::new();
    for title in ["one", "two", "three"] {
        phone.db.insert(&Todo::new(title)).await.unwrap();
        versions.push(phone.push(&server).await.version);
    }
    assert!(versions.windows(2).all(|v| v[0] < v[1]), "{versions:?}");
}

#[tokio::test]
async fn a_pull_leaves_out_the_callers_own_changes() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;
    phone.db.insert(&Todo::new("from the phone")).await.unwrap();
    laptop
        .db
        .insert(&Todo::new("from the laptop"))
        .await
        .unwrap();
    phone.push(&server).await;
    laptop.push(&server).await;

    let response = phone.send_pull(&server, &Cursor::BEGINNING, 0).await;
    let pulled = decode_pull(response).await;
    assert_eq!(titles_in(&pulled.payload).await, ["from the laptop"]);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_another_device_pushes() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;
    let cursor = laptop.pull(&server, &Cursor::BEGINNING, 0).await.next;

    let wait = Duration::from_secs(15);
    let started = Instant::now();
    let waiting = laptop
        .pull_request(&server, &cursor, wait.as_millis() as u64)
        .await
        .send();
    let waiting = tokio::spawn(waiting);
    server.until_waiting_pulls(1).await;

    phone.db.insert(&Todo::new("urgent")).await.unwrap();
    phone.push(&server).await;

    let pulled = decode_pull(waiting.await.unwrap().unwrap()).await;
    assert!(
        started.elapsed() < wait,
        "the pull waited for its whole wait"
    );
    laptop.db.apply_changes(&pulled.payload).await.unwrap();
    assert_eq!(laptop.todos().await, phone.todos().await);
    assert_eq!(server.state.waiting_pulls(), 0);
}

#[tokio::test]
async fn a_long_poll_is_not_woken_by_the_callers_own_push() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;

    let waiting = tokio::spawn(
        phone
            .pull_request(&server, &Cursor::BEGINNING, 15_000)
            .await
            .send(),
    );
    server.until_waiting_pulls(1).await;
    // The phone's own push moves the server's version, but brings it nothing.
    phone.db.insert(&Todo::new("mine")).await.unwrap();
    phone.push(&server).await;
    // Another device's push ends the wait, with only that device's change.
    laptop.db.insert(&Todo::new("theirs")).await.unwrap();
    laptop.push(&server).await;

    let pulled = decode_pull(waiting.await.unwrap().unwrap()).await;
    assert_eq!(titles_in(&pulled.payload).await, ["theirs"]);
}

#[tokio::test]
async fn a_long_poll_without_changes_returns_when_its_wait_ends() {
    let server = TestServer::with_todo_db().await;
    let laptop = Device::new("alice").await;
    let pulled = laptop.pull(&server, &Cursor::BEGINNING, 50).await;
    assert!(pulled.complete);
    assert!(laptop.todos().await.is_empty());
}

#[tokio::test]
async fn a_wrong_schema_fingerprint_gets_409_and_nothing_is_applied() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    phone
        .db
        .insert(&Todo::new("kept on the phone"))
        .await
        .unwrap();
    let body = phone.local_changes().await;
    let other = fingerprint_hex(phone.db.schema_fingerprint().await.unwrap() ^ 1);

    let request = phone.push_request(&server, body).await;
    let response = send_with_header(&server, request, SCHEMA_HEADER, &other).await;
    let error = error_body(response, StatusCode::CONFLICT).await;
    assert_eq!(error.code, "schema_mismatch");

    let laptop = Device::new("alice").await;
    laptop.pull(&server, &Cursor::BEGINNING, 0).await;
    assert!(laptop.todos().await.is_empty());
}

#[tokio::test]
async fn a_pull_with_a_wrong_fingerprint_gets_409() {
    let server = TestServer::with_todo_db().await;
    let laptop = Device::new("alice").await;
    let request = laptop.pull_request(&server, &Cursor::BEGINNING, 0).await;
    let response = send_with_header(&server, request, SCHEMA_HEADER, "0000000000000000").await;
    error_body(response, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn a_garbage_push_gets_400_and_the_server_stays_healthy() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;

    let garbage = b"this is not a payload".to_vec();
    let response = phone.send_push(&server, garbage).await;
    let error = error_body(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(error.code, "bad_request");
    assert!(error.message.contains("payload"), "{}", error.message);

    // A real payload cut short.
    phone.db.insert(&Todo::new("whole")).await.unwrap();
    let mut truncated = phone.local_changes().await;
    truncated.truncate(truncated.len() / 2);
    let response = phone.send_push(&server, truncated).await;
    error_body(response, StatusCode::BAD_REQUEST).await;

    server.assert_healthy().await;
    phone.push(&server).await;
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let limit = 64 * 1024;
    let server = TestServer::start_with(|config| config.limits.max_body_bytes = limit).await;
    server.create_todo_db().await;
    let phone = Device::new("alice").await;
    let response = phone.send_push(&server, vec![0u8; limit + 1]).await;
    let error = error_body(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(error.code, "payload_too_large");
    server.assert_healthy().await;
}

#[tokio::test]
async fn malformed_pull_requests_get_400() {
    let server = TestServer::with_todo_db().await;
    let laptop = Device::new("alice").await;

    let bad_cursor = laptop
        .send_pull_with(&server, &[("cursor", "not-a-cursor".into())])
        .await;
    let error = error_body(bad_cursor, StatusCode::BAD_REQUEST).await;
    assert!(error.message.contains("cursor"), "{}", error.message);

    let bad_wait = laptop
        .send_pull_with(&server, &[("wait", "soon".into())])
        .await;
    error_body(bad_wait, StatusCode::BAD_REQUEST).await;

    let request = laptop.pull_request(&server, &Cursor::BEGINNING, 0).await;
    let bad_site = send_with_header(&server, request, SITE_HEADER, "xyz").await;
    error_body(bad_site, StatusCode::BAD_REQUEST).await;

    let no_schema = server
        .http
        .get(server.url(&format!("/v1/db/{DB}/pull")))
        .bearer_auth(&laptop.token)
        .header(SITE_HEADER, laptop.db.site_id().to_string())
        .send()
        .await
        .unwrap();
    let error = error_body(no_schema, StatusCode::BAD_REQUEST).await;
    assert!(error.message.contains(SCHEMA_HEADER), "{}", error.message);

    let twice = laptop
        .pull_request(&server, &Cursor::BEGINNING, 0)
        .await
        .header(SCHEMA_HEADER, laptop.fingerprint().await)
        .send()
        .await
        .unwrap();
    let error = error_body(twice, StatusCode::BAD_REQUEST).await;
    assert!(
        error.message.contains("more than once"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_pull_is_bounded_by_its_limit() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;
    for i in 0..5 {
        phone
            .db
            .insert(&Todo::new(&format!("todo {i}")))
            .await
            .unwrap();
    }
    phone.push(&server).await;

    let mut cursor = Cursor::BEGINNING;
    let mut batches = 0;
    loop {
        let query = [("cursor", cursor.to_string()), ("limit", "2".to_string())];
        let response = laptop.send_pull_with(&server, &query).await;
        let pulled = decode_pull(response).await;
        laptop.db.apply_changes(&pulled.payload).await.unwrap();
        cursor = pulled.next;
        batches += 1;
        if pulled.complete {
            break;
        }
        assert!(batches < 10, "the pulls never completed");
    }
    assert!(batches >= 3, "{batches} batches for 5 rows of at most 2");
    assert_eq!(laptop.todos().await, phone.todos().await);
}

#[tokio::test]
async fn databases_and_their_changes_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| config.data = data.path().into()).await;
    server.create_todo_db().await;
    let phone = Device::new("alice").await;
    phone.db.insert(&Todo::new("durable")).await.unwrap();
    phone.push(&server).await;
    server.stop().await.unwrap();

    let server = TestServer::start_with(|config| config.data = data.path().into()).await;
    let laptop = Device::new("alice").await;
    laptop.pull(&server, &Cursor::BEGINNING, 0).await;
    assert_eq!(laptop.todos().await, phone.todos().await);
}

/// A device may push only what it made itself: another device's payload (a
/// replay), a relay of others' changes, or a payload sent under another site id is
/// refused, and nothing of it is applied.
#[tokio::test]
async fn a_device_cannot_push_changes_it_did_not_make() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    let thief = Device::new("mallory").await;
    phone.db.insert(&Todo::new("alice's")).await.unwrap();

    // Alice's own payload, replayed by another device.
    let stolen = phone.local_changes().await;
    let response = thief.send_push(&server, stolen).await;
    let error = error_body(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error.message.contains("not by the sending device"),
        "{}",
        error.message
    );

    // A relay: the thief received alice's row and sends all it has, as its own.
    let relayed = phone
        .db
        .export_changes(sync_runtime::Since::Beginning)
        .await
        .unwrap();
    thief.db.apply_changes(&relayed).await.unwrap();
    let forged = thief
        .db
        .export_changes(sync_runtime::Since::Beginning)
        .await
        .unwrap();
    let response = thief.send_push(&server, forged).await;
    let error = error_body(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error.message.contains("only the changes it made"),
        "{}",
        error.message
    );

    let observer = Device::new("alice").await;
    observer.pull(&server, &Cursor::BEGINNING, 0).await;
    assert!(observer.todos().await.is_empty());
    server.assert_healthy().await;
}

/// A device's site id is bound to the first user that uses it: another user
/// presenting it (to pose as that device) gets 403, and the device goes on.
#[tokio::test]
async fn a_user_cannot_pose_as_another_users_device() {
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    phone.db.insert(&Todo::new("alice's")).await.unwrap();
    phone.push(&server).await;

    let mallory = Device::new("mallory").await;
    let response = server
        .http
        .get(server.url(&format!("/v1/db/{DB}/pull")))
        .bearer_auth(&mallory.token)
        .header(SCHEMA_HEADER, mallory.fingerprint().await)
        .header(SITE_HEADER, phone.db.site_id().to_string())
        .send()
        .await
        .unwrap();
    let error = error_body(response, StatusCode::FORBIDDEN).await;
    assert!(error.message.contains("another user"), "{}", error.message);

    let pulled = phone.pull(&server, &Cursor::BEGINNING, 0).await;
    assert!(pulled.complete);
}

/// The titles of the rows in `payload`, as a new device sees them.
async fn titles_in(payload: &[u8]) -> Vec<String> {
    let viewer = Device::new("viewer").await;
    viewer.db.apply_changes(payload).await.unwrap();
    viewer.todos().await.into_iter().map(|t| t.title).collect()
}

/// A column default is a value: one written as SQL to run statements of its
/// own is refused, naming its table and column, and runs nothing.
#[tokio::test]
async fn a_schema_whose_default_is_sql_is_refused_and_runs_nothing() {
    use sync_runtime::{Algorithm, ColumnSchema, SqlType, Synced, TableSchema};
    let server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    phone.db.insert(&Todo::new("kept")).await.unwrap();
    phone.push(&server).await;
    let evil = TableSchema::new(
        "evil",
        Algorithm::Cls,
        vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("a", SqlType::Text)
                .default_sql("''); DELETE FROM todos; CREATE TABLE x (a TEXT DEFAULT ''"),
        ],
    );
    let response = server
        .as_admin(server.http.put(server.url(&format!("/v1/db/{DB}/schema"))))
        .body(serde_json::to_vec(&(Todo::SCHEMA, evil)).unwrap())
        .send()
        .await
        .unwrap();
    let error = error_body(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error.message.contains("table `evil`: column `a`"),
        "{}",
        error.message
    );
    let laptop = Device::new("alice").await;
    laptop.pull(&server, &Cursor::BEGINNING, 0).await;
    assert_eq!(laptop.todos().await, phone.todos().await);
    assert_eq!(laptop.todos().await.len(), 1);
}

/// A server's own database keeps refusing transaction control in the app's
/// SQL after the columns of its read policies were indexed (which prepares the
/// policy under an authorizer of its own).
#[tokio::test]
async fn a_servers_database_keeps_its_transaction_guard_after_its_policies_are_indexed() {
    use sync_runtime::server::RowFilter;
    use sync_runtime::{Synced, params};
    use sync_server::store::{Database, SqliteDatabase};
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDatabase::open(&dir.path().join("todo.db"))
        .await
        .unwrap();
    db.publish(vec![Todo::SCHEMA.clone()]).await.unwrap();
    let policy = RowFilter::Where {
        sql: "done = 1".into(),
        params: Vec::new(),
    };
    assert_eq!(db.index_filter("todos", policy).await.unwrap(), ["done"]);
    let row = Todo::new("inside");
    let id = row.id;
    let refused = db
        .sync_db()
        .transaction(move |tx| {
            tx.insert(&row)?;
            tx.execute_raw("COMMIT", params![])?;
            Ok::<_, sync_runtime::Error>(())
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not authorized"), "{refused}");
    assert_eq!(db.sync_db().get::<Todo>(&id).await.unwrap(), None);
}

/// A server that holds no long-polls answers every pull at once: a device's
/// background sync paces its pulls (doubling up to its interval) instead of
/// asking again at once, forever.
#[tokio::test]
async fn a_server_that_holds_no_pulls_is_polled_at_a_pace() {
    let server = TestServer::start_with(|config| config.limits.max_wait = Duration::ZERO).await;
    server.create_todo_db().await;
    let device = Device::new("alice").await;
    device.db.set_remote(
        sync_runtime::Remote::new(server.url(&format!("/v1/db/{DB}"))).bearer_token(&device.token),
    );
    let background = device.db.auto_sync(Duration::from_millis(400));
    // The pace is what is tested: it takes a span of time to see.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(background);
    // Pauses of 50, 100, 200, then 400 ms: about 8 pulls in 2 s. A loop that
    // asks again at once makes thousands.
    let pulls = server.state.pulls_received();
    assert!((2..=20).contains(&pulls), "{pulls} pulls in 2 s");
}

/// Publishing a table the server has: a compatible change evolves it (here a
/// new nullable column), an incompatible one gets 409 naming the change, and
/// changes nothing.
#[tokio::test]
async fn a_published_change_to_a_table_is_applied_if_compatible_and_409_otherwise() {
    use sync_runtime::{ColumnSchema, SqlType, Synced, TableSchema};
    let server = TestServer::with_todo_db().await;
    let publish = |tables: Vec<TableSchema>| {
        server
            .as_admin(server.http.put(server.url(&format!("/v1/db/{DB}/schema"))))
            .body(serde_json::to_vec(&tables).unwrap())
            .send()
    };
    let get = || async {
        let body = server
            .as_admin(server.http.get(server.url(&format!("/v1/db/{DB}/schema"))))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice::<Vec<TableSchema>>(&body).unwrap()
    };
    let before = get().await;
    let mut retyped = Todo::SCHEMA.clone();
    retyped.columns.to_mut()[2] = ColumnSchema::new("done", SqlType::Text).default_sql("''");
    let error = error_body(publish(vec![retyped]).await.unwrap(), StatusCode::CONFLICT).await;
    assert!(
        error
            .message
            .contains("column `done` changes from INTEGER NOT NULL to TEXT NOT NULL"),
        "{}",
        error.message
    );
    assert_eq!(get().await, before);

    let mut widened = Todo::SCHEMA.clone();
    widened
        .columns
        .to_mut()
        .push(ColumnSchema::new("due", SqlType::Integer).nullable(true));
    assert_eq!(
        publish(vec![widened.clone()]).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(get().await, vec![widened.clone()]);

    // A changed default must keep the first one, or new installs of the
    // version would read another value for rows that never wrote the column.
    let done = |column: ColumnSchema| {
        let mut schema = widened.clone();
        schema.columns.to_mut()[2] = column;
        schema
    };
    let changed = ColumnSchema::new("done", SqlType::Integer).default_sql("1");
    let error = error_body(
        publish(vec![done(changed.clone())]).await.unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        error.message.contains("first_default = 0"),
        "{}",
        error.message
    );
    assert_eq!(get().await, vec![widened.clone()]);
    let kept = done(changed.first_default("0"));
    assert_eq!(
        publish(vec![kept.clone()]).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(get().await, vec![kept]);
}

/// Bad `synced-tables` headers get 400; a table as no version published it
/// gets 409 `schema_not_published`; and nothing is applied.
#[tokio::test]
async fn a_device_naming_unpublished_or_malformed_tables_is_refused() {
    use sync_runtime::protocol::{ErrorBody, TABLES_HEADER, tables_header};
    use sync_runtime::{ColumnSchema, SqlType, Synced};
    let server = TestServer::with_todo_db().await;
    let device = Device::new("ann").await;
    device.db.insert(&Todo::new("refused")).await.unwrap();
    let push = || async {
        device
            .push_request(&server, device.local_changes().await)
            .await
    };

    let mut newer = Todo::SCHEMA.clone();
    newer
        .columns
        .to_mut()
        .push(ColumnSchema::new("due", SqlType::Integer).nullable(true));
    let unpublished = tables_header(&[newer]);
    let too_many = vec!["t=0000000000000000"; 1025].join(",");
    let twice = format!("{0},{0}", tables_header(std::slice::from_ref(Todo::SCHEMA)));
    for (value, status) in [
        (unpublished.as_str(), StatusCode::CONFLICT),
        ("todos=xyz", StatusCode::BAD_REQUEST),
        ("todos", StatusCode::BAD_REQUEST),
        ("%FF%FE=0000000000000000", StatusCode::BAD_REQUEST),
        ("=0000000000000000", StatusCode::BAD_REQUEST),
        (too_many.as_str(), StatusCode::BAD_REQUEST),
        (twice.as_str(), StatusCode::BAD_REQUEST),
    ] {
        let response = send_with_header(&server, push().await, TABLES_HEADER, value).await;
        let error = error_body(response, status).await;
        if status == StatusCode::CONFLICT {
            assert_eq!(error.code, ErrorBody::SCHEMA_NOT_PUBLISHED, "{value}");
        }
    }
    // The header wins over the whole-schema fingerprint, which older devices send.
    let ok = tables_header(std::slice::from_ref(Todo::SCHEMA));
    let response = send_with_header(&server, push().await, TABLES_HEADER, &ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    // No tables at all: the device syncs nothing, and is served.
    let pull = device.pull_request(&server, &Cursor::BEGINNING, 0).await;
    let pulled = decode_pull(send_with_header(&server, pull, TABLES_HEADER, "").await).await;
    assert!(
        sync_runtime::wire::decode(&pulled.payload)
            .unwrap()
            .rows
            .is_empty()
    );
}

/// A publication that would make two columns one, rename a column onto
/// another's name, retire a key or list a table twice is refused, and leaves
/// the tables and the published versions as they were.
#[tokio::test]
async fn a_forged_or_incompatible_publication_changes_nothing() {
    use sync_runtime::{ColumnSchema, SqlType, Synced, TableSchema};
    let server = TestServer::with_todo_db().await;
    let publish = |body: String| {
        server
            .as_admin(server.http.put(server.url(&format!("/v1/db/{DB}/schema"))))
            .body(body)
            .send()
    };
    let get = || async {
        let response = server
            .as_admin(server.http.get(server.url(&format!("/v1/db/{DB}/schema"))))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    };
    let before = get().await;
    let with = |column: ColumnSchema| {
        let mut schema = Todo::SCHEMA.clone();
        schema.columns.to_mut().push(column);
        schema
    };
    let json = |tables: &[TableSchema]| serde_json::to_string(tables).unwrap();
    let collision = with(
        ColumnSchema::new("summary", SqlType::Text)
            .nullable(true)
            .renamed_from("title"),
    );
    let mut renamed_onto_other = Todo::SCHEMA.clone();
    renamed_onto_other.columns.to_mut()[1] = ColumnSchema::new("note", SqlType::Text)
        .renamed_from("title")
        .default_sql("''");
    let mut retired_key = serde_json::to_value(Todo::SCHEMA.clone()).unwrap();
    retired_key["columns"][0]["retired"] = serde_json::Value::Bool(true);
    let twice = json(&[Todo::SCHEMA.clone(), Todo::SCHEMA.clone()]);
    for (body, status) in [
        (json(&[collision]), StatusCode::BAD_REQUEST),
        (json(&[renamed_onto_other]), StatusCode::BAD_REQUEST),
        (format!("[{retired_key}]"), StatusCode::BAD_REQUEST),
        (twice, StatusCode::BAD_REQUEST),
        (
            json(&[with(ColumnSchema::new("due", SqlType::Integer))]),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = publish(body.clone()).await.unwrap();
        let error = error_body(response, status).await;
        assert!(!error.message.is_empty(), "{body}");
        assert_eq!(get().await, before, "{body}");
    }
    // The same tables again are no new version: devices keep being served.
    let device = Device::new("ann").await;
    assert_eq!(
        publish(json(std::slice::from_ref(Todo::SCHEMA)))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    device.db.insert(&Todo::new("served")).await.unwrap();
    device.push(&server).await;
}
