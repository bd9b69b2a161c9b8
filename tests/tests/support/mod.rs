//! What the end-to-end tests share: a real server on an ephemeral loopback port,
//! devices with their own database files, and tokens.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part; shared by `mod support`

pub mod differential;
pub mod policy;
pub mod proxy;

use std::path::Path;

use sync_runtime::{SyncDb, params};

pub use synced_testkit::{ADMIN_KEY, JWT_SECRET, Store, TestServer, Todo, config, todo, token};

/// Makes each named `async fn(Store)` two tests, in a module of its name:
/// `sqlite`, on a server keeping its databases in SQLite files, and
/// `postgres`, on one keeping them in a PostgreSQL cluster of its own.
#[allow(unused_macros, reason = "each test file uses its own part")]
macro_rules! on_each_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::support::Store::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::support::Store::Postgres).await;
            }
        }
    )*};
}
#[allow(unused_imports, reason = "each test file uses its own part")]
pub(crate) use on_each_store;

/// A JWT for `user` with more claims (`aud`, a team…), valid for an hour.
pub fn token_with(user: &str, claims: serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut all = serde_json::json!({ "sub": user, "iat": now, "exp": now + 3600 });
    if let (Some(all), serde_json::Value::Object(claims)) = (all.as_object_mut(), claims) {
        all.extend(claims);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &all, &key).unwrap()
}

/// The next version of [`Todo`]: `title` renamed to `label`, `note` retired, a
/// nullable `due` and a `priority` with a default added.
#[derive(sync_runtime::Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
pub struct TodoV2 {
    #[synced(primary_key)]
    pub id: sync_runtime::SyncId,
    #[synced(renamed_from = "title")]
    pub label: String,
    #[synced(default = false)]
    pub done: bool,
    pub due: Option<i64>,
    #[synced(default = 3)]
    pub priority: i64,
}

/// A connection to database `database` of `cluster`, to look at it (or
/// write to it) as an operator or a backend would.
pub async fn connect(
    cluster: &synced_testkit::postgres::Postgres,
    database: &str,
) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&cluster.connection_string(database), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

/// Creates the server database at `url` with the `Todo` schema, as an admin does.
pub async fn publish_schema(url: &str, _dir: &Path) {
    synced_testkit::publish_schema::<Todo>(url).await.unwrap();
}

/// A device: its own database file, synced as `user`.
pub async fn device(dir: &Path, name: &str, url: &str, user: &str) -> SyncDb {
    let path = dir.join(format!("{name}.db"));
    synced_testkit::device::<Todo>(Some(&path), url, user)
        .await
        .unwrap()
}

/// Every row, in key order.
pub async fn rows(db: &SyncDb) -> Vec<Todo> {
    db.query("ORDER BY id", params![]).await.unwrap()
}

/// The rows of a server database, read from its file.
pub async fn server_rows(data: &Path, database: &str) -> Vec<Todo> {
    let db = SyncDb::open(data.join(format!("{database}.db")))
        .await
        .unwrap();
    db.register::<Todo>().await.unwrap();
    rows(&db).await
}

/// The titles of every row, sorted.
pub async fn titles(db: &SyncDb) -> Vec<String> {
    let mut titles: Vec<String> = rows(db).await.into_iter().map(|t| t.title).collect();
    titles.sort();
    titles
}

/// A server with the `Todo` schema, and device `a` of user `ann` that synced
/// the row "synced" through it; then a copy of `a`'s file opened as device `b`
/// (same user, same site id).
pub struct Copied {
    pub dir: tempfile::TempDir,
    pub server: TestServer,
    pub url: String,
    pub a: SyncDb,
    pub b: SyncDb,
}

impl Copied {
    /// See the type, with the server on `store`; `before_copy` runs on `a`
    /// after its sync, before the copy.
    pub async fn new(before_copy: &[&str], store: Store) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start_on(store, config(&dir.path().join("server"))).await;
        let url = server.url("todo");
        publish_schema(&url, dir.path()).await;
        let a = device(dir.path(), "a", &url, "ann").await;
        a.insert(&todo("synced")).await.unwrap();
        a.sync().await.unwrap();
        for title in before_copy {
            a.insert(&todo(title)).await.unwrap();
        }
        // Everything in the main file, as a copy of a closed app's file has it.
        a.vacuum().await.unwrap();
        std::fs::copy(dir.path().join("a.db"), dir.path().join("b.db")).unwrap();
        let b = device(dir.path(), "b", &url, "ann").await;
        Copied {
            dir,
            server,
            url,
            a,
            b,
        }
    }
}

/// Waits until the server holds `n` waiting pulls.
pub async fn until_waiting(server: &TestServer, n: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.state().waiting_pulls() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pull never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
