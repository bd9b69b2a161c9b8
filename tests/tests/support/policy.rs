//! Row-level security: a server whose `items` table users read and write by
//! owner, and devices of an admin and two users on it.

use std::collections::BTreeMap;

use sync_runtime::{Remote, SyncDb, SyncId, Synced, params};
use sync_server::{DatabaseConfig, TablePolicies};

use super::{ADMIN_KEY, Store, TestServer, config, token};

/// A row with an owner, which may be shared with everyone.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "items")]
pub struct Item {
    #[synced(primary_key)]
    pub id: SyncId,
    pub owner_id: String,
    #[synced(default = false)]
    pub shared: bool,
    pub title: String,
}

pub fn item(owner: &str, shared: bool, title: &str) -> Item {
    Item {
        id: SyncId::new(),
        owner_id: owner.into(),
        shared,
        title: title.into(),
    }
}

/// What users read of the `items` table: the rows they own or share.
pub const READ: &str = "owner_id = $user_id OR shared = 1";

/// A server on `store` whose `items` table users read by owner or sharing.
pub async fn server(store: Store, dir: &std::path::Path) -> TestServer {
    server_with(store, dir, READ).await
}

/// A server on `store` whose `items` table users read through `read` and
/// write when they own the row.
pub async fn server_with(store: Store, dir: &std::path::Path, read: &str) -> TestServer {
    TestServer::start_on(store, reading(dir, read)).await
}

/// The configuration of a server (data in `dir/server`) whose `items`
/// table users read through `read` and write when they own the row.
pub fn reading(dir: &std::path::Path, read: &str) -> sync_server::Config {
    let policies = TablePolicies {
        read: Some(read.into()),
        write: Some("owner_id = $user_id".into()),
    };
    items_config(dir, policies)
}

/// The configuration of a server (data in `dir/server`) whose `items` table has
/// `policies`.
pub fn items_config(dir: &std::path::Path, policies: TablePolicies) -> sync_server::Config {
    let mut config = config(&dir.join("server"));
    config.databases = BTreeMap::from([(
        "items".to_owned(),
        DatabaseConfig {
            schema: Some(items_schema(dir)),
            tables: BTreeMap::from([("items".to_owned(), policies)]),
            ..DatabaseConfig::default()
        },
    )]);
    config
}

/// The server's `items` table, as a schema file in `dir`.
pub fn items_schema(dir: &std::path::Path) -> std::path::PathBuf {
    let schema = dir.join("items.json");
    std::fs::write(&schema, serde_json::to_string(&[Item::SCHEMA]).unwrap()).unwrap();
    schema
}

pub async fn open(dir: &std::path::Path, name: &str, remote: Remote) -> SyncDb {
    let db = SyncDb::open(dir.join(format!("{name}.db")))
        .await
        .unwrap()
        .with_remote(remote);
    db.register::<Item>().await.unwrap();
    db
}

/// A policy server on `store` and three devices on it: an admin's, ann's
/// and bob's.
pub async fn cast(store: Store) -> (tempfile::TempDir, TestServer, [SyncDb; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let server = server(store, dir.path()).await;
    let [admin, ann] = admin_and(dir.path(), &server, "ann").await;
    let url = server.url("items");
    let bob = open(
        dir.path(),
        "bob",
        Remote::new(&url).bearer_token(token("bob")),
    )
    .await;
    (dir, server, [admin, ann, bob])
}

/// An admin's device and `user`'s on `server`'s `items` database.
pub async fn admin_and(dir: &std::path::Path, server: &TestServer, user: &str) -> [SyncDb; 2] {
    let url = server.url("items");
    let admin = open(dir, "admin", Remote::new(&url).api_key(ADMIN_KEY)).await;
    let user = open(dir, user, Remote::new(&url).bearer_token(token(user))).await;
    [admin, user]
}

pub async fn titles(db: &SyncDb) -> Vec<String> {
    let items: Vec<Item> = db.query("ORDER BY title", params![]).await.unwrap();
    items.into_iter().map(|i| i.title).collect()
}
