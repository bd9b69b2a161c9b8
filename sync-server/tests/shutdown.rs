//! Graceful shutdown: requests in flight are answered, then the server stops.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use std::time::Duration;

use common::*;
use sync_runtime::Cursor;
use tokio::time::Instant;

#[tokio::test]
async fn a_shutdown_answers_the_pull_in_flight_then_stops() {
    let mut server = TestServer::with_todo_db().await;
    let phone = Device::new("alice").await;
    phone
        .db
        .insert(&Todo::new("before the shutdown"))
        .await
        .unwrap();
    phone.push(&server).await;
    let laptop = Device::new("alice").await;
    let cursor = laptop.pull(&server, &Cursor::BEGINNING, 0).await.next;

    let wait = Duration::from_secs(15);
    let started = Instant::now();
    let in_flight = tokio::spawn(
        laptop
            .pull_request(&server, &cursor, wait.as_millis() as u64)
            .await
            .send(),
    );
    server.until_waiting_pulls(1).await;

    server.begin_shutdown();
    let response = in_flight.await.unwrap().unwrap();
    let pulled = decode_pull(response).await;
    assert!(
        started.elapsed() < wait,
        "the pull was not woken by the shutdown"
    );
    assert!(pulled.complete);
    assert_eq!(pulled.next, cursor);

    let addr = server.addr;
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the server still accepts connections"
    );
}
