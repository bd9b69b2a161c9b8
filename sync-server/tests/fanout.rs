//! Pulls waiting at the same place share one answer per commit, and each still
//! leaves out its own device's changes.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use common::*;
use reqwest::Response;
use sync_runtime::Cursor;
use tokio::task::JoinHandle;

/// The long-poll wait: far longer than any of these tests takes.
const WAIT_MS: u64 = 20_000;

/// Starts a long-poll of `device` after `cursor`.
async fn long_poll(
    server: &TestServer,
    device: &Device,
    cursor: &Cursor,
) -> JoinHandle<reqwest::Result<Response>> {
    let request = device.pull_request(server, cursor, WAIT_MS).await;
    tokio::spawn(request.send())
}

/// The titles of the rows a long-poll's answer carries, sorted; the answer is
/// applied on `device`.
async fn titles_received(
    device: &Device,
    waiting: JoinHandle<reqwest::Result<Response>>,
) -> Vec<String> {
    let pulled = decode_pull(waiting.await.unwrap().unwrap()).await;
    device.db.apply_changes(&pulled.payload).await.unwrap();
    let payload = sync_runtime::wire::decode(&pulled.payload).unwrap();
    let mut titles: Vec<String> = payload
        .rows
        .iter()
        .flat_map(|row| row.columns.iter())
        .filter_map(|column| match &column.value {
            sync_runtime::Value::Text(text) if text.starts_with("from ") => Some(text.clone()),
            _ => None,
        })
        .collect();
    titles.sort();
    titles
}

#[tokio::test]
async fn waiting_devices_receive_every_change_but_their_own() {
    let server = TestServer::with_todo_db().await;
    let readers = [
        Device::new("carol").await,
        Device::new("dave").await,
        Device::new("erin").await,
    ];
    let (alice, bob) = (Device::new("alice").await, Device::new("bob").await);
    let start = alice.pull(&server, &Cursor::BEGINNING, 0).await.next;

    let mut waiting = Vec::new();
    for reader in &readers {
        waiting.push(long_poll(&server, reader, &start).await);
    }
    let bob_waits = long_poll(&server, &bob, &start).await;
    server.until_waiting_pulls(readers.len() + 1).await;

    // Bob's own change wakes every pull: the readers get it, and Bob's pull,
    // which the change is all of, waits on.
    bob.db.insert(&Todo::new("from bob")).await.unwrap();
    bob.push(&server).await;
    for (reader, waiting) in readers.iter().zip(waiting) {
        assert_eq!(titles_received(reader, waiting).await, ["from bob"]);
    }
    server.until_waiting_pulls(1).await;
    assert!(!bob_waits.is_finished());

    // Alice's change reaches Bob alone: his own is still left out.
    alice.db.insert(&Todo::new("from alice")).await.unwrap();
    alice.push(&server).await;
    assert_eq!(titles_received(&bob, bob_waits).await, ["from alice"]);
}

#[tokio::test]
async fn a_device_whose_change_is_in_the_batch_gets_the_others_changes_alone() {
    let server = TestServer::with_todo_db().await;
    let (alice, bob, carol) = (
        Device::new("alice").await,
        Device::new("bob").await,
        Device::new("carol").await,
    );
    let start = carol.pull(&server, &Cursor::BEGINNING, 0).await.next;
    // Both write before anyone pulls: the changes after `start` are Alice's
    // and Bob's.
    for (device, title) in [(&alice, "from alice"), (&bob, "from bob")] {
        device.db.insert(&Todo::new(title)).await.unwrap();
        device.push(&server).await;
    }
    let answers = titles_pulled_at_once(&server, [&alice, &bob, &carol], &start).await;
    assert_eq!(answers[0], ["from bob"]);
    assert_eq!(answers[1], ["from alice"]);
    assert_eq!(answers[2], ["from alice", "from bob"]);
}

/// Each device's pull after `cursor`, sent at once: the titles each answer
/// carries, sorted.
async fn titles_pulled_at_once<const N: usize>(
    server: &TestServer,
    devices: [&Device; N],
    cursor: &Cursor,
) -> Vec<Vec<String>> {
    let mut pulls = Vec::new();
    for device in devices {
        pulls.push(long_poll(server, device, cursor).await);
    }
    let mut titles = Vec::new();
    for (device, pull) in devices.into_iter().zip(pulls) {
        titles.push(titles_received(device, pull).await);
    }
    titles
}
