//! Caps on the pulls that wait for changes (long-polls): a pull that would wait
//! beyond them is answered 429 at once, with `Retry-After`, and pushes still get in.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, Response, StatusCode};
use sync_runtime::protocol::ErrorBody;
use sync_runtime::{Cursor, Synced};
use sync_server::DatabaseConfig;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The long-poll wait of these tests: a pull answered well before it was not held.
const WAIT: Duration = Duration::from_secs(15);
/// A second database, so that a push can end the waits on one database only.
const NOTES: &str = "notes";

/// A server that lets 4 pulls wait at once, 2 of them per user.
async fn capped_server() -> TestServer {
    let server = TestServer::start_with(|config| {
        config.limits.max_waiting_pulls = 4;
        config.limits.max_waiting_pulls_per_user = 2;
        config
            .databases
            .insert(NOTES.to_owned(), DatabaseConfig::shared());
    })
    .await;
    server.create_todo_db().await;
    let body = serde_json::to_vec(&[Todo::SCHEMA]).unwrap();
    let response = server
        .as_admin(
            server
                .http
                .put(server.url(&format!("/v1/db/{NOTES}/schema"))),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server
}

fn wait_ms() -> String {
    WAIT.as_millis().to_string()
}

/// Starts a long-poll of `device` in database `database` after `cursor`.
async fn long_poll_in(
    server: &TestServer,
    device: &Device,
    database: &str,
    cursor: &Cursor,
) -> JoinHandle<reqwest::Result<Response>> {
    let request = device
        .request_to(server, Method::GET, database, "pull")
        .await
        .query(&[("cursor", cursor.to_string()), ("wait", wait_ms())]);
    tokio::spawn(request.send())
}

/// Starts a long-poll of `device` in the test database after `cursor`, and
/// returns once the server counts `then_waiting` waiting pulls.
async fn long_poll(
    server: &TestServer,
    device: &Device,
    cursor: &Cursor,
    then_waiting: usize,
) -> JoinHandle<reqwest::Result<Response>> {
    let waiting = long_poll_in(server, device, DB, cursor).await;
    server.until_waiting_pulls(then_waiting).await;
    waiting
}

/// Sends a long-poll that must be refused at once, and returns its error body.
async fn refused_long_poll(server: &TestServer, device: &Device, cursor: &Cursor) -> ErrorBody {
    let started = Instant::now();
    let response = device
        .send_pull(server, cursor, WAIT.as_millis() as u64)
        .await;
    assert!(
        started.elapsed() < WAIT / 3,
        "the pull was held ({:?}) instead of refused",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = response.headers()["retry-after"].to_str().unwrap();
    let retry_after: u64 = retry_after.parse().unwrap();
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    // The refused device's connection is not kept open for it.
    assert_eq!(response.headers()["connection"], "close");
    let body = error_body(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body.code, "too_many_requests");
    body
}

/// A long-poll's answer, applied on `device`; returns the titles the device
/// then holds.
async fn titles_pulled(
    device: &Device,
    waiting: JoinHandle<reqwest::Result<Response>>,
) -> Vec<String> {
    let pulled = decode_pull(waiting.await.unwrap().unwrap()).await;
    let before = device.todos().await.len();
    device.db.apply_changes(&pulled.payload).await.unwrap();
    let todos = device.todos().await;
    assert!(todos.len() > before, "the pull brought nothing");
    todos.into_iter().map(|todo| todo.title).collect()
}

#[tokio::test]
async fn a_users_long_poll_beyond_its_cap_is_refused_at_once() {
    let server = capped_server().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;
    let tablet = Device::new("alice").await;
    let bob = Device::new("bob").await;
    let start = Cursor::BEGINNING;
    let phone_waits = long_poll(&server, &phone, &start, 1).await;
    let laptop_waits = long_poll(&server, &laptop, &start, 2).await;

    let refused = refused_long_poll(&server, &tablet, &start).await;
    assert!(refused.message.contains("user"), "{}", refused.message);
    assert_eq!(server.state.waiting_pulls(), 2);
    // Another user's pull still waits: the server's cap is not reached.
    let bob_waits = long_poll(&server, &bob, &start, 3).await;

    // The refused device's push gets in and ends every wait.
    tablet
        .db
        .insert(&Todo::new("from the tablet"))
        .await
        .unwrap();
    tablet.push(&server).await;
    for (device, waiting) in [
        (&phone, phone_waits),
        (&laptop, laptop_waits),
        (&bob, bob_waits),
    ] {
        assert_eq!(titles_pulled(device, waiting).await, ["from the tablet"]);
    }
    server.until_waiting_pulls(0).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_beyond_the_servers_cap_is_refused_and_pushes_still_get_in() {
    let server = capped_server().await;
    let dave = Device::new("dave").await;
    dave.db.insert(&Todo::new("before")).await.unwrap();
    dave.push(&server).await;
    let mut waiters = Vec::new();
    for user in ["alice", "alice", "bob", "bob"] {
        let device = Device::new(user).await;
        let cursor = device.pull(&server, &Cursor::BEGINNING, 0).await.next;
        let waiting = long_poll(&server, &device, &cursor, waiters.len() + 1).await;
        waiters.push((device, waiting));
    }

    // A pull with changes to return needs no waiting slot: it is answered.
    let carol = Device::new("carol").await;
    let started = Instant::now();
    let pulled = carol
        .pull(&server, &Cursor::BEGINNING, WAIT.as_millis() as u64)
        .await;
    assert!(started.elapsed() < WAIT / 3);
    assert_eq!(carol.todos().await.len(), 1);
    // Once it would have to wait, it is refused.
    let refused = refused_long_poll(&server, &carol, &pulled.next).await;
    assert!(refused.message.contains("server"), "{}", refused.message);
    assert_eq!(server.state.waiting_pulls(), 4);

    // A push by yet another device succeeds and wakes the waiting pulls.
    let erin = Device::new("erin").await;
    erin.db.insert(&Todo::new("after")).await.unwrap();
    let ack = erin.push(&server).await;
    assert!(ack.applied > 0);
    for (device, waiting) in waiters {
        assert_eq!(titles_pulled(&device, waiting).await, ["after", "before"]);
    }
    server.until_waiting_pulls(0).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_finished_wait_frees_its_slot() {
    let server = capped_server().await;
    let phone = Device::new("alice").await;
    let laptop = Device::new("alice").await;
    let tablet = Device::new("alice").await;
    let bob = Device::new("bob").await;
    let start = Cursor::BEGINNING;
    let _phone_waits = long_poll(&server, &phone, &start, 1).await;
    let laptop_waits = long_poll_in(&server, &laptop, NOTES, &start).await;
    server.until_waiting_pulls(2).await;
    refused_long_poll(&server, &tablet, &start).await;

    // A change in the other database ends the laptop's wait only.
    bob.db.insert(&Todo::new("a note")).await.unwrap();
    let body = bob.local_changes().await;
    let pushed = bob
        .request_to(&server, Method::POST, NOTES, "push")
        .await
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::OK);
    decode_pull(laptop_waits.await.unwrap().unwrap()).await;
    server.until_waiting_pulls(1).await;

    // Its slot is free again: the tablet's long-poll now waits.
    let _tablet_waits = long_poll(&server, &tablet, &start, 2).await;
    // The shutdown answers the waits still running.
    server.stop().await.unwrap();
}
