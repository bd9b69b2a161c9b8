//! Devices syncing through a real server on a loopback port.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use support::Store;

use support::proxy::HoldingProxy;
use support::{
    Copied, TestServer, Todo, device, publish_schema, rows, server_rows, titles, todo,
    until_waiting,
};
use sync_runtime::{Error, SyncDb};

/// Syncs every device, twice round, so that each has what the others sent.
async fn sync_all(devices: &[&SyncDb]) {
    for _ in 0..2 {
        for db in devices {
            db.sync().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    let b = device(dir.path(), "b", &url, "bob").await;
    let c = device(dir.path(), "c", &url, "cy").await;

    // Shared rows first.
    let shared = todo("shared");
    let doomed = todo("doomed");
    let reborn = todo("reborn");
    for row in [&shared, &doomed, &reborn] {
        a.insert(row).await.unwrap();
    }
    sync_all(&[&a, &b, &c]).await;
    assert_eq!(rows(&b).await.len(), 3);

    // Offline on all three: new rows, conflicting edits, deletes, a re-insert.
    a.insert(&todo("from a")).await.unwrap();
    b.insert(&todo("from b")).await.unwrap();
    c.insert(&todo("from c")).await.unwrap();
    for (db, title) in [(&a, "a's title"), (&b, "b's title"), (&c, "c's title")] {
        let mut row = shared.clone();
        row.title = title.into();
        db.update(&row).await.unwrap();
    }
    let mut done = shared.clone();
    done.done = true;
    c.update(&Todo {
        title: "c's title".into(),
        ..done
    })
    .await
    .unwrap();
    b.delete::<Todo>(&doomed.id).await.unwrap();
    let mut edited = doomed.clone();
    edited.note = Some("edited while deleted elsewhere".into());
    c.update(&edited).await.unwrap();
    a.delete::<Todo>(&reborn.id).await.unwrap();
    a.insert(&Todo {
        note: Some("again".into()),
        ..reborn.clone()
    })
    .await
    .unwrap();
    assert!(a.has_unsent_changes().await.unwrap());

    sync_all(&[&a, &b, &c]).await;

    let expected = rows(&a).await;
    assert_eq!(rows(&b).await, expected);
    assert_eq!(rows(&c).await, expected);
    assert_eq!(server_rows(&server.data, "todo").await, expected);
    assert_eq!(expected.len(), 5, "{expected:#?}"); // 3 new + shared + reborn
    assert!(expected.iter().all(|t| t.id != doomed.id));
    for db in [&a, &b, &c] {
        assert!(!db.has_unsent_changes().await.unwrap());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_change_sets_go_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let limits = sync_runtime::BatchLimits::default().max_rows(100);
    let open = |name: &'static str, user: &'static str| {
        let (dir, url) = (dir.path().to_path_buf(), url.clone());
        async move {
            let db = device(&dir, name, &url, user).await;
            db.set_remote(
                sync_runtime::Remote::new(&url)
                    .bearer_token(support::token(user))
                    .batch_limits(limits),
            );
            db
        }
    };
    let a = open("a", "ann").await;
    let b = open("b", "bob").await;
    a.transaction(|tx| {
        for i in 0..1_000 {
            tx.insert(&todo(&format!("row {i}")))?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let options = sync_runtime::SyncOptions::default()
        .progress(move |r| seen.lock().unwrap().push(r.clone()));
    let sent = a.send_changes_with(&options).await.unwrap();
    assert_eq!(sent.batches, 10);
    let steps: Vec<_> = progress.lock().unwrap().drain(..).collect();
    assert_eq!(steps.len(), 10);
    assert!(
        steps
            .windows(2)
            .all(|w| w[0].changes_sent < w[1].changes_sent)
    );
    assert_eq!(steps.last(), Some(&sent));
    assert_eq!(sent.changes_sent, 1_000 * 4);
    // Device a fetches nothing back: its own changes are left out, page by page.
    let echo = a.check_changes().await.unwrap();
    assert_eq!((echo.batches, echo.changes_received), (1, 0));
    let received = b.sync_with(options).await.unwrap();
    assert_eq!(received.batches, 10);
    assert_eq!(received.applied, 1_000 * 4);
    assert_eq!(rows(&b).await, rows(&a).await);
    let steps = progress.lock().unwrap().clone();
    assert!(
        steps
            .windows(2)
            .all(|w| w[0].changes_received < w[1].changes_received)
    );
    assert_eq!(steps.last(), Some(&received));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_mismatch_keeps_the_unsent_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;

    #[derive(sync_runtime::Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    struct OtherTodo {
        #[synced(primary_key)]
        id: sync_runtime::SyncId,
        title: String,
        priority: i64,
    }
    let db = SyncDb::open(dir.path().join("other.db"))
        .await
        .unwrap()
        .with_remote(sync_runtime::Remote::new(&url).bearer_token(support::token("ann")));
    db.register::<OtherTodo>().await.unwrap();
    db.insert(&OtherTodo {
        id: sync_runtime::SyncId::new(),
        title: "kept".into(),
        priority: 1,
    })
    .await
    .unwrap();
    let error = db.sync().await.unwrap_err();
    assert!(
        matches!(error, Error::SchemaNotPublished { .. }),
        "{error:?}"
    );
    assert!(db.has_unsent_changes().await.unwrap());
    assert!(server_rows(&server.data, "todo").await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_wipes_rows_and_the_next_user_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    a.insert(&todo("mine")).await.unwrap();
    a.sync().await.unwrap();
    let site = a.site_id();

    a.logout().await.unwrap();
    assert!(rows(&a).await.is_empty());
    assert_ne!(a.site_id(), site);
    assert!(!a.has_unsent_changes().await.unwrap());
    // Signing in again fetches everything, including what this device wrote
    // under its former identity.
    a.sync().await.unwrap();
    assert_eq!(rows(&a).await.len(), 1);

    // reset_sync_version: the next sync fetches everything again, harmlessly.
    a.reset_sync_version().await.unwrap();
    let report = a.sync().await.unwrap();
    assert!(report.changes_received > 0);
    assert_eq!(report.applied, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_is_a_typed_error_and_keeps_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/v1/db/todo");
    let db = device(dir.path(), "a", &url, "ann").await;
    db.insert(&todo("offline")).await.unwrap();
    let options = sync_runtime::SyncOptions::default()
        .max_retries(2)
        .backoff(std::time::Duration::from_millis(1));
    let error = db.sync_with(options).await.unwrap_err();
    assert!(matches!(error, Error::Offline { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(db.has_unsent_changes().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_is_received_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let mut devices = Vec::new();
    for name in ["a", "b", "c"] {
        devices.push(device(dir.path(), name, &url, name).await);
    }
    let mut received = [0; 3];
    for round in 0..3 {
        for (i, db) in devices.iter().enumerate() {
            for n in 0..5 {
                db.insert(&todo(&format!("{i}/{round}/{n}"))).await.unwrap();
            }
            received[i] += db.sync().await.unwrap().changes_received;
        }
    }
    for (i, db) in devices.iter().enumerate() {
        received[i] += db.sync().await.unwrap().changes_received;
    }
    // Each device receives the 2 × 3 × 5 rows of the others once: 4 changes each
    // (the row's creation and its three columns).
    assert_eq!(received, [2 * 3 * 5 * 4; 3]);

    // One column written: one change sent, one received, by each side's count.
    let mut row = rows(&devices[0]).await.remove(0);
    row.done = true;
    devices[0].update(&row).await.unwrap();
    assert_eq!(devices[0].sync().await.unwrap().changes_sent, 1);
    let report = devices[1].sync().await.unwrap();
    assert_eq!((report.changes_received, report.applied), (1, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;

    let db = device(dir.path(), "a", &url, "ann").await;
    db.insert(&todo("kept")).await.unwrap();
    db.set_remote(sync_runtime::Remote::new(&url).bearer_token("not.a.jwt"));
    let error = db.sync().await.unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(db.has_unsent_changes().await.unwrap());

    // A user may sync but not change the server's schema.
    db.set_remote(sync_runtime::Remote::new(&url).bearer_token(support::token("ann")));
    let error = db.publish_schema().await.unwrap_err();
    assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");
    db.sync().await.unwrap();
    assert!(!db.has_unsent_changes().await.unwrap());

    // No such server database.
    db.set_remote(
        sync_runtime::Remote::new(server.url("nothing")).bearer_token(support::token("ann")),
    );
    let error = db.sync().await.unwrap_err();
    assert!(
        matches!(error, Error::Rejected { status: 404, .. }),
        "{error:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sync_delivers_a_write_to_the_other_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    let b = device(dir.path(), "b", &url, "ann").await;
    let mut a_events = a.auto_sync(std::time::Duration::from_secs(1));
    let mut b_events = b.auto_sync(std::time::Duration::from_secs(1));

    let row = todo("written on a");
    a.insert(&row).await.unwrap();
    let deadline = std::time::Duration::from_secs(20);
    let sent = tokio::time::timeout(deadline, a_events.next())
        .await
        .unwrap();
    assert!(
        matches!(&sent, Some(sync_runtime::SyncEvent::Sent(r)) if r.changes_sent == 4),
        "{sent:?}"
    );
    let received = tokio::time::timeout(deadline, b_events.next())
        .await
        .unwrap();
    assert!(
        matches!(&received, Some(sync_runtime::SyncEvent::Received(r)) if r.applied == 4),
        "{received:?}"
    );
    assert_eq!(b.get::<Todo>(&row.id).await.unwrap(), Some(row));
    drop((a_events, b_events));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_may_wait_longer_than_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let db = device(dir.path(), "a", &url, "ann").await;
    db.set_remote(
        sync_runtime::Remote::new(&url)
            .bearer_token(support::token("ann"))
            .timeout(std::time::Duration::from_millis(300)),
    );
    let options = sync_runtime::SyncOptions::default()
        .wait(std::time::Duration::from_millis(600))
        .max_retries(0);
    let started = std::time::Instant::now();
    let report = db.check_changes_with(&options).await.unwrap();
    assert_eq!(report.changes_received, 0);
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_long_poll_is_a_transient_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(&dir.path().join("server"));
    // No user may wait: every long-poll that finds nothing is refused (429).
    config.limits.max_waiting_pulls_per_user = 0;
    let server = TestServer::start_with(config).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let db = device(dir.path(), "a", &url, "ann").await;
    // A pull that does not wait needs no slot.
    db.sync().await.unwrap();

    let options = sync_runtime::SyncOptions::default()
        .wait(std::time::Duration::from_secs(10))
        .max_retries(0);
    let started = std::time::Instant::now();
    let error = db.check_changes_with(&options).await.unwrap_err();
    assert!(
        matches!(error, Error::Server { status: 429, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(started.elapsed() < options.wait, "the pull was held");
    server.stop().await;
}

/// A device's file copied to another device: the copy takes a new site id,
/// and both sync as devices of their own, including what the original had not
/// sent yet when it was copied.
async fn a_copied_file_with_a_new_site_id_syncs_as_a_device_of_its_own(store: Store) {
    let Copied {
        dir,
        server,
        url,
        a,
        b,
    } = Copied::new(&["not sent when copied"], store).await;
    b.new_site_id().await.unwrap();

    a.insert(&todo("from a")).await.unwrap();
    b.insert(&todo("from b")).await.unwrap();
    // B syncs first, then A: each gets the other's.
    sync_all(&[&b, &a]).await;
    let c = device(dir.path(), "c", &url, "ann").await;
    c.sync().await.unwrap();
    assert_eq!(
        titles(&c).await,
        ["from a", "from b", "not sent when copied", "synced"]
    );
    assert_eq!(rows(&a).await, rows(&c).await);
    assert_eq!(rows(&b).await, rows(&c).await);
    server.stop().await;
}

/// A device restored from a backup taken before it sent some changes: its
/// server has versions of its site id beyond its own, so it takes a new site
/// id at its next sync, and gets back every change it had sent after the
/// backup, with what it writes now.
async fn a_device_restored_from_a_backup_gets_back_what_it_sent_after_it(store: Store) {
    // `b` is a backup of `a`'s file, put back in place of it later.
    let Copied {
        dir,
        server,
        url,
        a: phone,
        b: restored,
    } = Copied::new(&[], store).await;
    phone.insert(&todo("after the backup")).await.unwrap();
    phone.insert(&todo("also after")).await.unwrap();
    phone.sync().await.unwrap();
    let site = phone.site_id();
    drop(phone);

    assert_eq!(restored.site_id(), site);
    restored.insert(&todo("after the restore")).await.unwrap();
    let report = restored.sync().await.unwrap();
    assert!(report.site_id_renewed, "{report:?}");
    assert_ne!(restored.site_id(), site);
    assert_eq!(
        titles(&restored).await,
        [
            "after the backup",
            "after the restore",
            "also after",
            "synced"
        ]
    );
    let other = device(dir.path(), "other", &url, "ann").await;
    other.sync().await.unwrap();
    assert_eq!(rows(&other).await, rows(&restored).await);
    // Later syncs are ordinary ones.
    assert!(!restored.sync().await.unwrap().site_id_renewed);
    server.stop().await;
}

/// A copy that syncs after its original went further is noticed the same way.
async fn a_copied_file_behind_its_original_takes_a_new_site_id_on_its_own(store: Store) {
    let Copied { server, a, b, .. } = Copied::new(&[], store).await;
    for title in ["from a", "from a again"] {
        a.insert(&todo(title)).await.unwrap();
    }
    a.sync().await.unwrap();
    b.insert(&todo("from b")).await.unwrap();
    assert!(b.sync().await.unwrap().site_id_renewed);
    a.sync().await.unwrap();
    assert_eq!(
        titles(&a).await,
        ["from a", "from a again", "from b", "synced"]
    );
    assert_eq!(rows(&a).await, rows(&b).await);
    server.stop().await;
}

/// A server on `store`, device `a` (ann) and device `b` (of `user`) both
/// holding a row, and a backup of the server's database taken then, as
/// SQLite takes one (`VACUUM INTO`) or PostgreSQL's `pg_dump`.
struct BackedUp {
    server: TestServer,
    store: Store,
    config: sync_server::Config,
    url: String,
    a: SyncDb,
    b: SyncDb,
    backup: std::path::PathBuf,
}

impl BackedUp {
    async fn new(dir: &std::path::Path, user: &str, store: Store) -> Self {
        let config = support::config(&dir.join("server"));
        let server = TestServer::start_on(store, config.clone()).await;
        let url = server.url("todo");
        publish_schema(&url, dir).await;
        let a = device(dir, "a", &url, "ann").await;
        let b = device(dir, "b", &url, user).await;
        a.insert(&todo("before the backup")).await.unwrap();
        sync_all(&[&a, &b]).await;
        let backup = dir.join("restored");
        std::fs::create_dir(&backup).unwrap();
        match server.cluster() {
            Some(cluster) => cluster.back_up("postgres", "backup").unwrap(),
            None => {
                rusqlite::Connection::open(dir.join("server/todo.db"))
                    .unwrap()
                    .execute("VACUUM INTO ?1", [backup.join("todo.db").to_str().unwrap()])
                    .unwrap();
            }
        }
        Self {
            server,
            store,
            config,
            url,
            a,
            b,
            backup,
        }
    }

    /// Stops the server and starts it again on the same address with the
    /// backup as its data; the new server, its url and the two devices.
    async fn restore(self) -> (TestServer, String, SyncDb, SyncDb) {
        let mut config = self.config;
        config.listen = self.server.address();
        let server = match self.store {
            Store::Sqlite => {
                config.data = self.backup;
                self.server.stop().await;
                TestServer::start_with(config).await
            }
            Store::Postgres => {
                let cluster = self.server.stop_keeping_cluster().await.unwrap();
                cluster.restore("postgres", "backup").unwrap();
                TestServer::start_on_cluster(cluster, config).await
            }
        };
        (server, self.url, self.a, self.b)
    }
}

/// A server whose database file is replaced by an older copy (restored from a
/// backup) has lost changes it had acknowledged: the devices that made them
/// send them again at their next sync, and nothing any device holds is lost.
async fn devices_send_again_what_a_server_restored_from_a_backup_lost(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let backed_up = BackedUp::new(dir.path(), "bob", store).await;
    backed_up
        .a
        .insert(&todo("after the backup, from a"))
        .await
        .unwrap();
    backed_up
        .b
        .insert(&todo("after the backup, from b"))
        .await
        .unwrap();
    sync_all(&[&backed_up.a, &backed_up.b]).await;

    // The server comes back on the same address with the backup.
    let (server, url, a, b) = backed_up.restore().await;
    let report = a.sync().await.unwrap();
    assert!(report.server_lost_changes, "{report:?}");
    assert!(b.sync().await.unwrap().server_lost_changes);
    sync_all(&[&a, &b]).await;
    let c = device(dir.path(), "c", &url, "cy").await;
    c.sync().await.unwrap();
    assert_eq!(
        titles(&c).await,
        [
            "after the backup, from a",
            "after the backup, from b",
            "before the backup"
        ]
    );
    assert_eq!(rows(&a).await, rows(&c).await);
    assert_eq!(rows(&b).await, rows(&c).await);
    server.stop().await;
}

/// Two copies of one file that both wrote before either synced: whichever
/// syncs first, the server notices the second one under the same site id,
/// remembers the id as reused, and both copies take new ones; they converge.
async fn copies_that_both_wrote_before_syncing_converge_through_the_server(store: Store) {
    for copy_first in [true, false] {
        let Copied {
            dir,
            server,
            url,
            a,
            b,
        } = Copied::new(&[], store).await;
        a.insert(&todo("from a")).await.unwrap();
        // The copy goes further than its original.
        for title in ["from b", "from b again", "and again"] {
            b.insert(&todo(title)).await.unwrap();
        }
        let (first, second) = if copy_first { (&b, &a) } else { (&a, &b) };
        sync_all(&[first, second]).await;
        let c = device(dir.path(), "c", &url, "ann").await;
        c.sync().await.unwrap();
        assert_eq!(
            titles(&c).await,
            ["and again", "from a", "from b", "from b again", "synced"],
            "copy first: {copy_first}"
        );
        assert_eq!(rows(&a).await, rows(&c).await, "copy first: {copy_first}");
        assert_eq!(rows(&b).await, rows(&c).await, "copy first: {copy_first}");
        assert_ne!(a.site_id(), b.site_id());
        server.stop().await;
    }
}

/// A device's fetch and send run side by side, and their requests can reach
/// the server in another order than they left: a push of versions made after
/// the fetch started, that overtakes it, is no sign of a copy. The device keeps
/// its site id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_overtakes_a_fetch_is_no_sign_of_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    publish_schema(&server.url("todo"), dir.path()).await;
    let mut proxy = HoldingProxy::start(server.address()).await;
    let a = device(dir.path(), "a", &proxy.url("todo"), "ann").await;
    a.insert(&todo("before the fetch")).await.unwrap();
    let site = a.site_id();
    let fetch = tokio::spawn({
        let a = a.clone();
        async move { a.check_changes().await }
    });
    proxy.holding(1).await;
    a.insert(&todo("after the fetch started")).await.unwrap();
    let sent = a.send_changes().await.unwrap();
    assert!(!sent.site_id_renewed, "{sent:?}");
    proxy.release();
    let fetched = fetch.await.unwrap().unwrap();
    assert!(!fetched.site_id_renewed, "{fetched:?}");
    let again = a.sync().await.unwrap();
    assert!(!again.site_id_renewed, "{again:?}");
    assert_eq!(a.site_id(), site);
    let b = device(dir.path(), "b", &server.url("todo"), "ann").await;
    b.sync().await.unwrap();
    assert_eq!(rows(&a).await, rows(&b).await);
    server.stop().await;
}

/// The site id of each change a database holds, by key.
async fn origins(db: &SyncDb) -> Vec<(Vec<sync_runtime::Value>, sync_runtime::SiteId)> {
    let mut origins: Vec<_> = db
        .changes_since(0)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.pk, c.site_id))
        .collect();
    origins.sort_by_key(|o| format!("{o:?}"));
    origins
}

/// A device that takes a new site id twice, with nothing its server has not
/// acknowledged, still labels what it made before with the id it made it
/// under, as every other replica does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_new_site_ids_in_a_row_keep_the_first_ones_changes_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    a.insert(&todo("made under the first id")).await.unwrap();
    a.sync().await.unwrap();
    a.new_site_id().await.unwrap();
    a.new_site_id().await.unwrap();
    let b = device(dir.path(), "b", &url, "ann").await;
    sync_all(&[&a, &b]).await;
    assert_eq!(origins(&a).await, origins(&b).await);
    server.stop().await;
}

/// A device's send acknowledged while its fetch waits at the server for
/// changes (a long-poll) moves its send cursor past what the fetch's answer
/// says the server had received when the fetch arrived: no sign that the
/// server lost anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_during_a_long_poll_is_no_sign_of_lost_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    a.insert(&todo("first")).await.unwrap();
    a.sync().await.unwrap();
    let before = server.state().pulls_received();
    let fetch = tokio::spawn({
        let a = a.clone();
        async move {
            let wait =
                sync_runtime::SyncOptions::default().wait(std::time::Duration::from_millis(500));
            a.check_changes_with(&wait).await
        }
    });
    while server.state().pulls_received() == before {
        tokio::task::yield_now().await;
    }
    a.insert(&todo("sent while the fetch waits")).await.unwrap();
    let sent = a.send_changes().await.unwrap();
    assert!(sent.changes_sent > 0);
    let fetched = fetch.await.unwrap().unwrap();
    assert!(!fetched.server_lost_changes, "{fetched:?}");
    assert!(!a.has_unsent_changes().await.unwrap());
    server.stop().await;
}

/// The receive cursor device `name` keeps for its server, read from its file.
fn received(dir: &std::path::Path, name: &str) -> String {
    let conn = rusqlite::Connection::open(dir.join(format!("{name}.db"))).unwrap();
    conn.query_row("SELECT received FROM _synced_remote", [], |r| r.get(0))
        .unwrap()
}

/// A device whose pulls had reached the server's version when it pushed does
/// not read its own changes back: its receive cursor moves past the versions
/// its push made. One that had not keeps its cursor, and receives what others
/// sent before; what others send after is received either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_up_to_date_moves_its_pulls_past_its_own_push() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    let b = device(dir.path(), "b", &url, "bob").await;
    b.insert(&todo("b's first")).await.unwrap();
    b.sync().await.unwrap();

    // Behind: its cursor stays, and its next pull brings b's row.
    a.insert(&todo("a's first")).await.unwrap();
    a.send_changes().await.unwrap();
    assert_eq!(received(dir.path(), "a"), "0");
    a.check_changes().await.unwrap();
    assert_eq!(titles(&a).await, ["a's first", "b's first"]);
    let caught_up = received(dir.path(), "a");

    // Up to date: past its own push, in every batch of it.
    for i in 0..25 {
        a.insert(&todo(&format!("a's {i}"))).await.unwrap();
    }
    a.set_remote(
        sync_runtime::Remote::new(&url)
            .bearer_token(support::token("ann"))
            .batch_limits(sync_runtime::BatchLimits::default().max_rows(10)),
    );
    let sent = a.send_changes().await.unwrap();
    assert_eq!(sent.batches, 3, "{sent:?}");
    let skipped: i64 = received(dir.path(), "a").parse().unwrap();
    assert!(skipped > caught_up.parse().unwrap());
    let fetched = a.check_changes().await.unwrap();
    assert_eq!(fetched.applied, 0, "{fetched:?}");

    // What b sends next still arrives.
    b.insert(&todo("b's second")).await.unwrap();
    b.sync().await.unwrap();
    a.check_changes().await.unwrap();
    assert_eq!(titles(&a).await.len(), 2 + 25 + 1);
    b.sync().await.unwrap();
    assert_eq!(rows(&a).await, rows(&b).await);
    server.stop().await;
}

/// A server and two devices of one user, both holding the row one wrote.
async fn two_devices_with_a_row(dir: &std::path::Path) -> (TestServer, SyncDb, SyncDb) {
    let server = TestServer::start(&dir.join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir).await;
    let a = device(dir, "a", &url, "ann").await;
    let b = device(dir, "b", &url, "ann").await;
    b.insert(&todo("before")).await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    (server, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_or_a_logout_does_not_wait_for_a_long_poll_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = two_devices_with_a_row(dir.path()).await;
    let other = server.url("other");
    publish_schema(&other, dir.path()).await;

    // A long-poll waits far longer than any step below may take.
    let waiting = long_poll(&server, &a).await;
    let bound = std::time::Duration::from_secs(20);

    // A sync meanwhile sends and fetches at once (the device's own change
    // does not wake its long-poll).
    a.insert(&todo("written meanwhile")).await.unwrap();
    let report = tokio::time::timeout(bound, a.sync()).await;
    assert!(report.is_ok(), "the sync waited for the long-poll");
    assert_eq!(report.unwrap().unwrap().changes_sent, 4);
    assert_eq!(server.state().waiting_pulls(), 1);
    b.sync().await.unwrap();
    assert_eq!(rows(&b).await.len(), 2);

    // A logout does not wait either, and what the long-poll brings back for the
    // database left is not applied to the one the device moves to.
    let logout = tokio::time::timeout(bound, a.logout()).await;
    assert!(logout.is_ok(), "the logout waited for the long-poll");
    logout.unwrap().unwrap();
    a.set_remote(sync_runtime::Remote::new(&other).bearer_token(support::token("bob")));
    b.insert(&todo("after the logout")).await.unwrap();
    b.sync().await.unwrap();
    let answered = tokio::time::timeout(bound, waiting).await;
    assert!(answered.is_ok(), "the long-poll never came back");
    let report = answered.unwrap().unwrap().unwrap();
    assert_eq!(report.applied, 0, "{report:?}");
    assert!(rows(&a).await.is_empty());
    a.sync().await.unwrap();
    assert!(rows(&a).await.is_empty());
    server.stop().await;
}

/// A long-poll on `db` that waits up to a minute, once the server holds it.
async fn long_poll(
    server: &TestServer,
    db: &SyncDb,
) -> tokio::task::JoinHandle<sync_runtime::Result<sync_runtime::SyncReport>> {
    let waiting = server.state().waiting_pulls();
    let db = db.clone();
    let options = sync_runtime::SyncOptions::default().wait(std::time::Duration::from_secs(60));
    let task = tokio::spawn(async move { db.check_changes_with(&options).await });
    until_waiting(server, waiting + 1).await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answer_is_applied_after_a_push_and_asked_again_after_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = two_devices_with_a_row(dir.path()).await;

    // The device pushes while its long-poll waits: the acknowledgement moves
    // its receive cursor past its own change, and the long-poll's answer is
    // applied as it comes, without asking again.
    let waiting = long_poll(&server, &a).await;
    a.insert(&todo("pushed meanwhile")).await.unwrap();
    assert_eq!(a.send_changes().await.unwrap().changes_sent, 4);
    let pulls = server.state().pulls_received();
    b.insert(&todo("wakes the long-poll")).await.unwrap();
    b.send_changes().await.unwrap();
    let report = waiting.await.unwrap().unwrap();
    assert_eq!((report.applied, report.batches), (4, 1), "{report:?}");
    assert_eq!(server.state().pulls_received(), pulls, "asked again");
    assert_eq!(rows(&a).await.len(), 3);

    // A reset while the long-poll waits: its answer is not applied but asked
    // again from the beginning, as the reset wants.
    let waiting = long_poll(&server, &a).await;
    a.reset_sync_version().await.unwrap();
    b.insert(&todo("wakes it again")).await.unwrap();
    b.sync().await.unwrap();
    let report = waiting.await.unwrap().unwrap();
    // The new row applied, and b's older rows received again.
    assert_eq!(report.applied, 4, "{report:?}");
    assert!(report.changes_received > 4, "{report:?}");
    assert_eq!(rows(&a).await.len(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_in_flight_at_a_logout_does_not_bring_the_old_users_rows_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = two_devices_with_a_row(dir.path()).await;
    let waiting = long_poll(&server, &a).await;
    // The app signs out; the next user's credentials come later (a login
    // screen), so the remote is still the old user's meanwhile.
    a.logout().await.unwrap();
    assert!(rows(&a).await.is_empty());
    b.insert(&todo("wakes the long-poll")).await.unwrap();
    b.sync().await.unwrap();
    let report = waiting.await.unwrap().unwrap();
    assert_eq!(report.applied, 0, "{report:?}");
    assert!(rows(&a).await.is_empty());
    server.stop().await;
}

async fn a_device_past_a_server_restored_from_a_backup_misses_nothing_written_after(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let backed_up = BackedUp::new(dir.path(), "dee", store).await;
    // d's receive cursor goes past what the backup holds.
    for i in 0..20 {
        let a = &backed_up.a;
        a.insert(&todo(&format!("after the backup {i}")))
            .await
            .unwrap();
        a.sync().await.unwrap();
    }
    backed_up.b.sync().await.unwrap();
    let (server, url, _a, d) = backed_up.restore().await;
    // d asks from a cursor past the restored server's history; then another
    // device writes until the server's versions pass d's old cursor.
    d.sync().await.unwrap();
    let c = device(dir.path(), "c", &url, "cy").await;
    c.insert(&todo("written after the restore")).await.unwrap();
    c.sync().await.unwrap();
    for i in 0..40 {
        c.insert(&todo(&format!("more {i}"))).await.unwrap();
        c.sync().await.unwrap();
    }
    d.sync().await.unwrap();
    let titles = titles(&d).await;
    assert!(
        titles.iter().any(|t| t == "written after the restore"),
        "d missed it: {titles:?}"
    );
    server.stop().await;
}

support::on_each_store!(
    a_copied_file_with_a_new_site_id_syncs_as_a_device_of_its_own,
    a_device_restored_from_a_backup_gets_back_what_it_sent_after_it,
    a_copied_file_behind_its_original_takes_a_new_site_id_on_its_own,
    copies_that_both_wrote_before_syncing_converge_through_the_server,
    devices_send_again_what_a_server_restored_from_a_backup_lost,
    a_device_past_a_server_restored_from_a_backup_misses_nothing_written_after,
);
