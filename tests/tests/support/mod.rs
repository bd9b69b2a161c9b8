//! What the end-to-end tests share: a real server on an ephemeral loopback port,
//! devices with their own database files, and tokens.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part; shared by `mod support`

pub mod policy;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sync_runtime::{Remote, SyncDb, SyncId, Synced, params};
use sync_server::auth::{hash_key, sign_token};
use sync_server::{AuthConfig, Config, DatabaseConfig, Server, Serving};

pub const ADMIN_KEY: &str = "admin-key-for-tests";
pub const JWT_SECRET: &str = "a-test-secret-of-enough-length-for-hs256";

/// The model the tests sync.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
pub struct Todo {
    #[synced(primary_key)]
    pub id: SyncId,
    pub title: String,
    #[synced(default = false)]
    pub done: bool,
    pub note: Option<String>,
}

pub fn todo(title: &str) -> Todo {
    Todo {
        id: SyncId::new(),
        title: title.into(),
        done: false,
        note: None,
    }
}

/// The configuration of a test server on an ephemeral loopback port.
pub fn config(data: &Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: data.to_path_buf(),
        auth: AuthConfig {
            api_keys: vec![hash_key(ADMIN_KEY)],
            jwt_hs256_secret: Some(JWT_SECRET.into()),
            ..AuthConfig::default()
        },
        // Every table shared with users: these tests are about sync, not
        // row-level security.
        databases: [("todo".to_owned(), DatabaseConfig::shared())].into(),
        ..Config::default()
    }
}

/// A server running in this process until dropped.
pub struct TestServer {
    pub data: PathBuf,
    server: Serving,
    state: sync_server::AppState,
}

impl TestServer {
    pub async fn start(data: &Path) -> Self {
        Self::start_with(config(data)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let data = config.data.clone();
        let server = Server::bind(config).await.unwrap();
        let state = server.state().clone();
        let server = server.spawn();
        Self {
            data,
            server,
            state,
        }
    }

    /// How many pulls the server has received.
    pub fn pulls_received(&self) -> u64 {
        self.state.pulls_received()
    }

    /// The server's address.
    pub fn address(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The URL of a server database.
    pub fn url(&self, database: &str) -> String {
        self.server.url(database)
    }

    /// Stops gracefully and waits until it has.
    pub async fn stop(self) {
        self.server.stop().await.unwrap();
    }
}

/// A JWT for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    sign_token(JWT_SECRET, user, Duration::from_secs(3600)).unwrap()
}

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

/// Creates the server database `name` with the `Todo` schema, as an admin does.
pub async fn publish_schema(url: &str, dir: &Path) {
    let admin = SyncDb::open(dir.join("admin.db"))
        .await
        .unwrap()
        .with_remote(Remote::new(url).api_key(ADMIN_KEY));
    admin.register::<Todo>().await.unwrap();
    admin.publish_schema().await.unwrap();
}

/// A device: its own database file, synced as `user`.
pub async fn device(dir: &Path, name: &str, url: &str, user: &str) -> SyncDb {
    let db = SyncDb::open(dir.join(format!("{name}.db")))
        .await
        .unwrap()
        .with_remote(Remote::new(url).bearer_token(token(user)));
    db.register::<Todo>().await.unwrap();
    db
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
    /// See the type; `before_copy` runs on `a` after its sync, before the copy.
    pub async fn new(before_copy: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(&dir.path().join("server")).await;
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
