//! Saving what a user changed never undoes what another device changed
//! meanwhile: the form flow, through a real server, with background sync.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use std::time::Duration;

use support::{TestServer, Todo, device, publish_schema, todo};
use sync_runtime::{AutoSync, SyncDb, Value};

/// Waits, reading `events`, until `db`'s copy of the row `id` satisfies `ok`.
async fn until(
    db: &SyncDb,
    events: &mut AutoSync,
    id: sync_runtime::SyncId,
    ok: impl Fn(&Todo) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if db.get::<Todo>(&id).await.unwrap().is_some_and(|t| ok(&t)) {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = tokio::time::timeout(left, events.next()).await;
        assert!(event.is_ok(), "the row never got there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_saved_with_modify_keeps_the_edit_another_device_made_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    let b = device(dir.path(), "b", &url, "ann").await;
    let mut a_events = a.auto_sync(Duration::from_millis(200));
    let mut b_events = b.auto_sync(Duration::from_millis(200));
    let row = todo("Buy milk");
    let id = row.id;
    a.insert(&row).await.unwrap();
    until(&b, &mut b_events, id, |_| true).await;

    // Device A opens the task in a form.
    let form = a.get::<Todo>(&id).await.unwrap().unwrap();
    // Device B marks it done; the change reaches A while the form is open.
    b.modify::<Todo, _>(&id, |t| t.done = true).await.unwrap();
    until(&a, &mut a_events, id, |t| t.done).await;
    // A's user changed the title only, and saves.
    let title = format!("{} (oat)", form.title);
    let saved = a
        .modify::<Todo, _>(&id, move |t| t.title = title)
        .await
        .unwrap()
        .unwrap();
    assert!(saved.done, "saving the title kept B's status");
    until(&b, &mut b_events, id, |t| t.title == "Buy milk (oat)").await;

    let expected = Todo {
        title: "Buy milk (oat)".into(),
        done: true,
        ..row
    };
    assert_eq!(a.get::<Todo>(&id).await.unwrap(), Some(expected.clone()));
    assert_eq!(b.get::<Todo>(&id).await.unwrap(), Some(expected));
    drop((a_events, b_events));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_counts_what_it_has_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let db = device(dir.path(), "a", &url, "ann").await;
    assert_eq!(db.unsent_changes().await.unwrap().rows, 0);
    let (first, second) = (todo("first"), todo("second"));
    db.insert(&first).await.unwrap();
    db.insert(&second).await.unwrap();
    db.modify::<Todo, _>(&first.id, |t| t.done = true)
        .await
        .unwrap();
    let unsent = db.unsent_changes().await.unwrap();
    assert_eq!(unsent.tables, [("todos".to_owned(), 2)]);
    assert_eq!(unsent.rows, 2);
    // Each row's creation and its three columns.
    assert_eq!(unsent.changes, 8);
    assert!(db.has_unsent_changes().await.unwrap());
    db.sync().await.unwrap();
    let unsent = db.unsent_changes().await.unwrap();
    assert_eq!((unsent.rows, unsent.changes), (0, 0));
    assert!(unsent.tables.is_empty());
    assert!(!db.has_unsent_changes().await.unwrap());

    // The typed list: each row as it is now, a deleted one as `None`.
    assert!(db.unsent_rows::<Todo>().await.unwrap().is_empty());
    db.modify::<Todo, _>(&second.id, |t| t.title = "second, edited".into())
        .await
        .unwrap();
    db.delete::<Todo>(&first.id).await.unwrap();
    let third = todo("third");
    db.insert(&third).await.unwrap();
    let unsent = db.unsent_rows::<Todo>().await.unwrap();
    let listed: Vec<(Vec<Value>, Option<String>, usize)> = unsent
        .into_iter()
        .map(|u| (u.key, u.row.map(|t| t.title), u.changes))
        .collect();
    assert_eq!(
        listed,
        [
            (
                vec![Value::from(second.id)],
                Some("second, edited".into()),
                1
            ),
            (vec![Value::from(first.id)], None, 0),
            (vec![Value::from(third.id)], Some("third".into()), 3),
        ]
    );
    db.sync().await.unwrap();
    assert!(db.unsent_rows::<Todo>().await.unwrap().is_empty());
    server.stop().await;
}
