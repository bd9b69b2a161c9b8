//! App versions side by side through a real server: devices of the previous
//! version keep syncing with devices of the next one, each served the tables
//! and columns it knows.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use support::Store;

use std::path::Path;

use support::{ADMIN_KEY, TestServer, Todo, TodoV2, config, todo, token};
use sync_runtime::{Error, Remote, SyncDb, SyncId, Synced, params};

/// A table the next version adds.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tags")]
struct Tag {
    #[synced(primary_key)]
    name: String,
    color: Option<String>,
}

/// A version no one published: [`TodoV2`] with one more column.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct TodoV3 {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(renamed_from = "title")]
    label: String,
    #[synced(default = false)]
    done: bool,
    due: Option<i64>,
    #[synced(default = 3)]
    priority: i64,
    estimate: Option<f64>,
}

/// An app version: the tables it registers.
#[derive(Clone, Copy)]
enum App {
    V1,
    V2,
    /// A version no one published.
    V3,
    /// A device with the `tags` table only.
    TagsOnly,
}

impl App {
    async fn register(self, db: &SyncDb) {
        match self {
            App::V1 => db.register::<Todo>().await.unwrap(),
            App::V2 => {
                db.register::<TodoV2>().await.unwrap();
                db.register::<Tag>().await.unwrap();
            }
            App::V3 => db.register::<TodoV3>().await.unwrap(),
            App::TagsOnly => db.register::<Tag>().await.unwrap(),
        }
    }
}

/// A device of `user` with its own file, on app version `app`.
async fn device(path: &Path, url: &str, user: &str, app: App) -> SyncDb {
    let db = SyncDb::open(path)
        .await
        .unwrap()
        .with_remote(Remote::new(url).bearer_token(token(user)));
    app.register(&db).await;
    db
}

/// Publishes an app version, as its admin does.
async fn publish(url: &str, app: App) {
    let admin = SyncDb::open_in_memory()
        .await
        .unwrap()
        .with_remote(Remote::new(url).api_key(ADMIN_KEY));
    app.register(&admin).await;
    admin.publish_schema().await.unwrap();
}

async fn todos<T: Synced>(db: &SyncDb) -> Vec<T> {
    db.query("ORDER BY id", params![]).await.unwrap()
}

async fn devices_of_two_app_versions_sync_side_by_side_through_the_server(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(store, config(&dir.path().join("server"))).await;
    let url = server.url("todo");
    publish(&url, App::V1).await;
    let old = device(&dir.path().join("old.db"), &url, "ann", App::V1).await;
    let other_old = device(&dir.path().join("other-old.db"), &url, "bob", App::V1).await;
    let first = todo("first");
    old.insert(&first).await.unwrap();
    old.sync().await.unwrap();

    // The next version is published while the first one's devices sync on.
    publish(&url, App::V2).await;
    let new = device(&dir.path().join("new.db"), &url, "cy", App::V2).await;
    let only_tags = device(&dir.path().join("tags.db"), &url, "dee", App::TagsOnly).await;
    new.sync().await.unwrap();
    let mut edited = TodoV2 {
        id: first.id,
        label: "first".into(),
        done: false,
        due: None,
        priority: 3,
    };
    assert_eq!(todos::<TodoV2>(&new).await, [edited.clone()]);
    edited.label = "first, relabelled".into();
    edited.due = Some(5);
    new.update(&edited).await.unwrap();
    let made_by_new = TodoV2 {
        id: SyncId::new(),
        label: "made by the new version".into(),
        done: true,
        due: Some(7),
        priority: 1,
    };
    new.insert(&made_by_new).await.unwrap();
    new.insert(&Tag {
        name: "home".into(),
        color: Some("green".into()),
    })
    .await
    .unwrap();
    new.sync().await.unwrap();

    // The old version reads the renamed column under its old name, never
    // sees the new ones, and never fails on them.
    old.sync().await.unwrap();
    let seen: Vec<(String, bool)> = todos::<Todo>(&old)
        .await
        .into_iter()
        .map(|t| (t.title, t.done))
        .collect();
    let mut expected = vec![
        ("first, relabelled".to_owned(), false),
        ("made by the new version".to_owned(), true),
    ];
    expected.sort_by_key(|(title, _)| {
        if title.starts_with("first") {
            first.id
        } else {
            made_by_new.id
        }
    });
    assert_eq!(seen, expected);
    assert_eq!(old.schemas().await.unwrap().len(), 1);

    // An old device's edit keeps the new version's columns everywhere, and
    // the column the new version retired still reaches the old version.
    let mut old_edit = todos::<Todo>(&old)
        .await
        .into_iter()
        .find(|t| t.id == first.id)
        .unwrap();
    old_edit.title = "edited by the old version".into();
    old_edit.note = Some("a note only the old version has".into());
    old.update(&old_edit).await.unwrap();
    let made_by_old = todo("made by the old version");
    old.insert(&made_by_old).await.unwrap();
    old.sync().await.unwrap();
    new.sync().await.unwrap();
    other_old.sync().await.unwrap();
    let now = todos::<TodoV2>(&new).await;
    let first_now = now.iter().find(|t| t.id == first.id).unwrap();
    assert_eq!(first_now.label, "edited by the old version");
    assert_eq!(first_now.due, Some(5), "the old version's edit kept `due`");
    let from_old = now.iter().find(|t| t.id == made_by_old.id).unwrap();
    assert_eq!(
        (from_old.due, from_old.priority),
        (None, 3),
        "a row the old version made reads the new version's defaults"
    );
    let noted = todos::<Todo>(&other_old)
        .await
        .into_iter()
        .find(|t| t.id == first.id)
        .unwrap();
    assert_eq!(noted, old_edit);

    // Both edit the same row offline, then sync: they converge, and the old
    // version's edit of the shared column never resets the new one's column.
    let mut on_old = todos::<Todo>(&old)
        .await
        .into_iter()
        .find(|t| t.id == first.id)
        .unwrap();
    on_old.title = "offline on the old version".into();
    on_old.done = true;
    old.update(&on_old).await.unwrap();
    let mut on_new = todos::<TodoV2>(&new)
        .await
        .into_iter()
        .find(|t| t.id == first.id)
        .unwrap();
    on_new.label = "offline on the new version".into();
    on_new.due = Some(9);
    new.update(&on_new).await.unwrap();
    for db in [&old, &new, &old, &new] {
        db.sync().await.unwrap();
    }
    let old_now = todos::<Todo>(&old)
        .await
        .into_iter()
        .find(|t| t.id == first.id)
        .unwrap();
    let new_now = todos::<TodoV2>(&new)
        .await
        .into_iter()
        .find(|t| t.id == first.id)
        .unwrap();
    assert_eq!(old_now.title, new_now.label, "one title wins on both");
    assert_eq!((old_now.done, new_now.done), (true, true));
    assert_eq!(new_now.due, Some(9));

    // A device with some of the tables syncs those.
    only_tags.sync().await.unwrap();
    let tags: Vec<Tag> = only_tags.query("", params![]).await.unwrap();
    assert_eq!(tags.len(), 1);

    // The old device updates its app: it gets what it was not sent before.
    drop(old);
    let upgraded = device(&dir.path().join("old.db"), &url, "ann", App::V2).await;
    upgraded.sync().await.unwrap();
    new.sync().await.unwrap();
    assert_eq!(
        todos::<TodoV2>(&upgraded).await,
        todos::<TodoV2>(&new).await
    );
    let tags: Vec<Tag> = upgraded.query("", params![]).await.unwrap();
    assert_eq!(tags.len(), 1);
    for db in [&upgraded, &new, &other_old] {
        assert!(!db.has_unsent_changes().await.unwrap());
    }
}

async fn unpublished_and_unsupported_app_versions_are_refused_and_keep_their_changes(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("server"));
    if let Some(todo) = config.databases.get_mut("todo") {
        todo.oldest_supported_version = Some(2);
    }
    let server = TestServer::start_on(store, config).await;
    let url = server.url("todo");
    publish(&url, App::V1).await;
    let old = device(&dir.path().join("old.db"), &url, "ann", App::V1).await;
    old.insert(&todo("kept")).await.unwrap();
    publish(&url, App::V2).await;
    let newer = device(&dir.path().join("newer.db"), &url, "bob", App::V3).await;
    newer
        .insert(&TodoV3 {
            id: SyncId::new(),
            label: "kept too".into(),
            done: false,
            due: None,
            priority: 1,
            estimate: Some(1.5),
        })
        .await
        .unwrap();

    // Publishing the first version again (a configuration file not updated)
    // changes nothing: it stays older than the oldest supported.
    publish(&url, App::V1).await;

    let too_old = old.sync().await.unwrap_err();
    assert!(matches!(too_old, Error::SchemaTooOld { .. }), "{too_old}");
    assert!(too_old.to_string().contains("update the app"), "{too_old}");
    let unpublished = newer.sync().await.unwrap_err();
    assert!(
        matches!(unpublished, Error::SchemaNotPublished { .. }),
        "{unpublished}"
    );
    for db in [&old, &newer] {
        assert!(db.has_unsent_changes().await.unwrap());
    }

    // Once its version is published, the newer device syncs.
    publish(&url, App::V3).await;
    newer.sync().await.unwrap();
    assert!(!newer.has_unsent_changes().await.unwrap());
}

/// An app that registers more while a pull of the previous version waits on
/// the server does not keep that pull's cursor: it asks again from the
/// beginning, so a column it was never sent arrives.
async fn registering_more_while_a_pull_waits_loses_nothing(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(store, config(&dir.path().join("server"))).await;
    let url = server.url("todo");
    publish(&url, App::V1).await;
    publish(&url, App::V2).await;
    let new = device(&dir.path().join("new.db"), &url, "ann", App::V2).await;
    let row = TodoV2 {
        id: SyncId::new(),
        label: "due soon".into(),
        done: false,
        due: Some(5),
        priority: 1,
    };
    new.insert(&row).await.unwrap();
    new.sync().await.unwrap();
    let old = device(&dir.path().join("old.db"), &url, "bob", App::V1).await;
    old.sync().await.unwrap();

    // A pull of the old version waits; the app registers the new one.
    let waiting = {
        let old = old.clone();
        let options = sync_runtime::SyncOptions::default().wait(std::time::Duration::from_secs(30));
        tokio::spawn(async move { old.check_changes_with(&options).await })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.state().waiting_pulls() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pull never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    App::V2.register(&old).await;
    // Another change wakes the pull, which brings a batch of the old version.
    new.insert(&TodoV2 {
        id: SyncId::new(),
        label: "wakes the pull".into(),
        done: false,
        due: None,
        priority: 3,
    })
    .await
    .unwrap();
    new.sync().await.unwrap();
    waiting.await.unwrap().unwrap();

    old.sync().await.unwrap();
    let rows = todos::<TodoV2>(&old).await;
    assert_eq!(rows.iter().find(|t| t.id == row.id), Some(&row));
    assert_eq!(rows.len(), 2);
}

support::on_each_store!(
    devices_of_two_app_versions_sync_side_by_side_through_the_server,
    unpublished_and_unsupported_app_versions_are_refused_and_keep_their_changes,
    registering_more_while_a_pull_waits_loses_nothing,
);
