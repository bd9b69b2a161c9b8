//! Row-level security through a real server: each user receives only the rows its
//! policies let it read.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use support::Store;

use support::policy::{
    Item, admin_and, cast, item, items_config, items_schema, open, server_with, titles,
};
use support::{ADMIN_KEY, TestServer, config, token};
use sync_runtime::{Remote, SyncDb, Value, params};
use sync_server::{DatabaseConfig, TablePolicies};

async fn each_user_receives_only_what_its_policy_lets_it_read(store: Store) {
    let (_dir, server, [admin, ann, bob]) = cast(store).await;

    let shared = item("bob", true, "bob's shared");
    let private = item("bob", false, "bob's");
    for row in [item("ann", false, "ann's"), private.clone(), shared.clone()] {
        admin.insert(&row).await.unwrap();
    }
    admin.sync().await.unwrap();
    ann.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!(titles(&ann).await, ["ann's", "bob's shared"]);
    assert_eq!(titles(&bob).await, ["bob's", "bob's shared"]);
    // Nothing of bob's private row reached ann, not even its key.
    let known = ann.changes_since(0).await.unwrap();
    assert!(known.iter().all(|c| c.pk != [Value::from(private.id)]));
    assert_eq!(known.len(), 2 * 4);

    // Un-shared by its owner's admin: ann's replica drops it at the next sync.
    admin
        .execute_raw(
            "UPDATE items SET shared = 0 WHERE id = ?1",
            params![shared.id],
        )
        .await
        .unwrap();
    admin.sync().await.unwrap();
    ann.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!(titles(&ann).await, ["ann's"]);
    assert_eq!(titles(&bob).await, ["bob's", "bob's shared"]);
    assert!(!ann.has_unsent_changes().await.unwrap());

    server.stop().await;
}

async fn writes_a_user_may_not_make_are_rejected_and_undone(store: Store) {
    let (_dir, server, [admin, ann, bob]) = cast(store).await;
    let shared = item("bob", true, "bob's shared");
    admin.insert(&shared).await.unwrap();
    admin.sync().await.unwrap();
    ann.sync().await.unwrap();

    // Ann's own row goes through; her edit of bob's row and a row in bob's name
    // are refused, reported, and undone on her device at the same sync.
    let own = item("ann", false, "ann's own");
    ann.insert(&own).await.unwrap();
    ann.execute_raw(
        "UPDATE items SET title = 'vandalised' WHERE id = ?1",
        params![shared.id],
    )
    .await
    .unwrap();
    let forged = item("bob", false, "in bob's name");
    ann.insert(&forged).await.unwrap();
    let report = ann.sync().await.unwrap();
    let mut refused: Vec<Value> = report.rejected.iter().map(|r| r.pk[0].clone()).collect();
    refused.sort_by_key(|v| format!("{v:?}"));
    let mut expected = vec![Value::from(shared.id), Value::from(forged.id)];
    expected.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(refused, expected, "{report:?}");
    assert_eq!(titles(&ann).await, ["ann's own", "bob's shared"]);
    assert!(!ann.has_unsent_changes().await.unwrap());

    // Bob never sees the vandalism nor the forgery; he sees nothing of ann's.
    bob.sync().await.unwrap();
    assert_eq!(titles(&bob).await, ["bob's shared"]);
    admin.sync().await.unwrap();
    assert_eq!(titles(&admin).await, ["ann's own", "bob's shared"]);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_policy_stops_the_start_naming_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let policies = TablePolicies {
        read: Some("owner = $user_id".into()), // no such column
        write: None,
    };
    let config = items_config(dir.path(), policies);
    let error = sync_server::Server::bind(config).await.err().unwrap();
    let message = error.to_string();
    assert!(
        message.contains("[databases.items.tables.items] read"),
        "{message}"
    );
    assert!(message.contains("owner"), "{message}");
}

/// On PostgreSQL a policy may read only the row it judges (SQLite judges it
/// there, on the row's values): one that reads other rows stops the start,
/// naming its table and why; on SQLite it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reading_beyond_its_row_stops_a_start_on_postgresql() {
    let cluster = synced_testkit::postgres::Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let policies = TablePolicies {
        read: Some("owner_id IN (SELECT owner_id FROM items WHERE shared = 1)".into()),
        write: Some("owner_id = $user_id".into()),
    };
    let sqlite = items_config(dir.path(), policies.clone());
    let mut postgres = sqlite.clone();
    postgres.storage.postgres = Some(cluster.connection_string("postgres"));
    let error = sync_server::Server::bind(postgres).await.err().unwrap();
    let message = error.to_string();
    assert!(
        message.contains("[databases.items.tables.items] read") && message.contains("a subquery"),
        "{message}"
    );
    drop(sync_server::Server::bind(sqlite).await.unwrap());
}

async fn a_claim_the_token_lacks_matches_no_row(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    // Rows are read by team; the users' tokens carry no team claim.
    let server = server_with(store, dir.path(), "owner_id = $team").await;
    let [admin, ann] = admin_and(dir.path(), &server, "ann").await;
    // Not even a row whose team is NULL-like: a missing claim is NULL, and
    // `owner_id = NULL` is never true.
    for owner in ["ann", "", "null"] {
        admin.insert(&item(owner, true, owner)).await.unwrap();
    }
    admin.sync().await.unwrap();
    let report = ann.sync().await.unwrap();
    assert_eq!(report.changes_received, 0);
    assert!(titles(&ann).await.is_empty());
    assert!(ann.changes_since(0).await.unwrap().is_empty());
    server.stop().await;
}

async fn a_row_given_to_another_user_moves_with_it(store: Store) {
    let (_dir, server, [admin, ann, bob]) = cast(store).await;
    let row = item("bob", false, "bob's, then ann's");
    admin.insert(&row).await.unwrap();
    admin.sync().await.unwrap();
    ann.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert!(titles(&ann).await.is_empty());
    assert_eq!(titles(&bob).await, ["bob's, then ann's"]);

    // Bob gives it to ann: a write his policy allows (he owns the row before),
    // which the write policy then refuses (ann owns it after).
    let given = Item {
        owner_id: "ann".into(),
        ..row.clone()
    };
    bob.update(&given).await.unwrap();
    let report = bob.sync().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(bob.get::<Item>(&row.id).await.unwrap(), Some(row.clone()));

    // An admin gives it, without fetching first (the refusal raised no clock
    // here): it leaves bob's device and arrives whole on ann's.
    admin.update(&given).await.unwrap();
    admin.sync().await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    assert!(titles(&bob).await.is_empty());
    assert_eq!(ann.get::<Item>(&row.id).await.unwrap(), Some(given));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_database_opens_nothing() {
    use support::token_with;
    let dir = tempfile::tempdir().unwrap();
    let schema = items_schema(dir.path());
    let mut config = config(&dir.path().join("server"));
    // Two databases, each for the tokens of its own audience.
    config.databases = ["items", "other"]
        .map(|name| {
            let database = DatabaseConfig {
                schema: Some(schema.clone()),
                audience: Some(format!("{name}-app")),
                ..DatabaseConfig::shared()
            };
            (name.to_owned(), database)
        })
        .into();
    let server = TestServer::start_with(config).await;
    let admin = open(
        dir.path(),
        "admin",
        Remote::new(server.url("other")).api_key(ADMIN_KEY),
    )
    .await;
    admin.insert(&item("ann", false, "other's")).await.unwrap();
    admin.sync().await.unwrap();

    // Ann's token is for `items`: it syncs there, and opens nothing of `other`,
    // nor does a token that names no audience.
    let items_token = token_with("ann", serde_json::json!({ "aud": ["items-app"] }));
    let ann = open(
        dir.path(),
        "ann",
        Remote::new(server.url("items")).bearer_token(&items_token),
    )
    .await;
    ann.sync().await.unwrap();
    for (name, token) in [("a", items_token.clone()), ("b", token("ann"))] {
        let device = open(
            dir.path(),
            name,
            Remote::new(server.url("other")).bearer_token(token),
        )
        .await;
        let error = device.sync().await.unwrap_err();
        assert!(
            matches!(error, sync_runtime::Error::Forbidden { .. }),
            "{error:?}"
        );
        assert!(device.changes_since(0).await.unwrap().is_empty());
    }
    server.stop().await;
}

/// A copy of the database file at `from` (with its WAL), opened as a device
/// syncing with `remote`: a device presenting the same site id as `from`.
async fn impostor(from: &std::path::Path, to: &std::path::Path, remote: Remote) -> SyncDb {
    for suffix in ["", "-wal", "-shm"] {
        let source = format!("{}{suffix}", from.display());
        if std::path::Path::new(&source).exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display())).unwrap();
        }
    }
    let db = SyncDb::open(to).await.unwrap().with_remote(remote);
    db.register::<Item>().await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_can_present_the_site_id_of_an_api_key_device_or_of_the_server() {
    let (dir, server, [admin, ann, _bob]) = cast(Store::Sqlite).await;
    admin
        .insert(&item("ann", false, "by the admin"))
        .await
        .unwrap();
    admin.sync().await.unwrap();
    ann.sync().await.unwrap();
    let admin_site = admin.site_id();
    drop(admin);
    let url = server.url("items");
    let as_ann = || Remote::new(&url).bearer_token(token("ann"));

    let posing = impostor(
        &dir.path().join("admin.db"),
        &dir.path().join("posing-as-admin.db"),
        as_ann(),
    )
    .await;
    assert_eq!(posing.site_id(), admin_site);
    posing.insert(&item("ann", false, "sneaked")).await.unwrap();
    let error = posing.sync().await.unwrap_err();
    assert!(
        matches!(error, sync_runtime::Error::Forbidden { .. }),
        "{error:?}"
    );

    let server_file = server.data.join("items.db");
    let posing = impostor(
        &server_file,
        &dir.path().join("posing-as-server.db"),
        as_ann(),
    )
    .await;
    let error = posing.sync().await.unwrap_err();
    assert!(
        matches!(error, sync_runtime::Error::Forbidden { .. }),
        "{error:?}"
    );

    // Nothing sneaked in.
    ann.sync().await.unwrap();
    assert_eq!(titles(&ann).await, ["by the admin"]);
    server.stop().await;
}

/// A row a device wrote, was evicted from, and may read again comes back
/// whole, with the device's own change in it: the device takes it back as
/// its own, not as another file writing under its site id.
async fn a_row_the_device_wrote_moves_out_and_back_in_without_a_new_site_id(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let policies = TablePolicies {
        read: Some("owner_id = $user_id OR shared = 1".into()),
        write: Some("owner_id = $user_id OR shared = 1".into()),
    };
    let server = TestServer::start_on(store, items_config(dir.path(), policies)).await;
    let [admin, ann] = admin_and(dir.path(), &server, "ann").await;
    let bobs = item("bob", true, "bob's");
    admin.insert(&bobs).await.unwrap();
    admin.sync().await.unwrap();
    ann.sync().await.unwrap();
    let site = ann.site_id();

    // Ann edits bob's shared row; it is un-shared (ann's device forgets it),
    // then shared again.
    let edited = Item {
        title: "edited by ann".into(),
        ..bobs.clone()
    };
    ann.update(&edited).await.unwrap();
    ann.sync().await.unwrap();
    let reshare = |shared: i64| {
        let admin = admin.clone();
        async move {
            admin
                .execute_raw(
                    "UPDATE items SET shared = ?1 WHERE id = ?2",
                    params![shared, bobs.id],
                )
                .await
                .unwrap();
            admin.sync().await.unwrap();
        }
    };
    reshare(0).await;
    ann.sync().await.unwrap();
    assert!(titles(&ann).await.is_empty());
    reshare(1).await;
    let report = ann.sync().await.unwrap();
    assert!(!report.site_id_renewed, "{report:?}");
    assert_eq!(ann.site_id(), site);
    assert_eq!(titles(&ann).await, ["edited by ann"]);
    server.stop().await;
}

support::on_each_store!(
    each_user_receives_only_what_its_policy_lets_it_read,
    writes_a_user_may_not_make_are_rejected_and_undone,
    a_claim_the_token_lacks_matches_no_row,
    a_row_given_to_another_user_moves_with_it,
    a_row_the_device_wrote_moves_out_and_back_in_without_a_new_site_id,
);
