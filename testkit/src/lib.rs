//! What the tests and the benchmark share: the configuration of a server on an
//! ephemeral loopback port with an admin key and a token secret, tokens for
//! its users, a server running in this process, the model most tests sync,
//! and devices synced as a user; and a throwaway PostgreSQL cluster
//! ([`postgres`]).

pub mod busy;
pub mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sync_runtime::{Remote, SyncDb, SyncId, Synced};
use sync_server::auth::{hash_key, sign_token};
use sync_server::{AppState, AuthConfig, Config, DatabaseConfig, Server, Serving};

/// The admin API key of test servers.
pub const ADMIN_KEY: &str = "admin-key-for-tests";
/// The HS256 secret test servers check tokens with.
pub const JWT_SECRET: &str = "a-test-secret-of-enough-length-for-hs256";

/// The model the tests sync.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
pub struct Todo {
    /// The key.
    #[synced(primary_key)]
    pub id: SyncId,
    /// A text column.
    pub title: String,
    /// A column with a default.
    #[synced(default = false)]
    pub done: bool,
    /// A nullable column.
    pub note: Option<String>,
}

impl Todo {
    /// A new, open todo.
    pub fn new(title: &str) -> Self {
        Self {
            id: SyncId::new(),
            title: title.into(),
            done: false,
            note: None,
        }
    }
}

/// A new, open todo: [`Todo::new`].
pub fn todo(title: &str) -> Todo {
    Todo::new(title)
}

/// The configuration of a server on an ephemeral loopback port, storing its
/// databases in `data`, with [`ADMIN_KEY`] and [`JWT_SECRET`], and the
/// databases `shared` open to every user (no row-level security).
pub fn config_sharing(data: &Path, shared: &[&str]) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: data.to_path_buf(),
        auth: AuthConfig {
            api_keys: vec![hash_key(ADMIN_KEY)],
            jwt_hs256_secret: Some(JWT_SECRET.into()),
            ..AuthConfig::default()
        },
        databases: shared
            .iter()
            .map(|name| ((*name).to_owned(), DatabaseConfig::shared()))
            .collect(),
        ..Config::default()
    }
}

/// [`config_sharing`] with the database `todo` shared: for tests about sync,
/// not row-level security.
pub fn config(data: &Path) -> Config {
    config_sharing(data, &["todo"])
}

/// A token of `user` signed with [`JWT_SECRET`], valid for an hour.
pub fn token(user: &str) -> String {
    sign_token(JWT_SECRET, user, Duration::from_secs(3600))
        .expect("a token signed with a fixed secret")
}

/// A server running in this process until it is stopped or dropped.
pub struct TestServer {
    /// Where it stores its databases.
    pub data: PathBuf,
    server: Serving,
    state: AppState,
    /// The PostgreSQL cluster started for it, which stops after it.
    cluster: Option<postgres::Postgres>,
}

/// Where a test server keeps its databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// SQLite files in its data directory.
    Sqlite,
    /// A throwaway PostgreSQL cluster started for it.
    Postgres,
}

impl TestServer {
    /// A server with [`config`] storing its databases in `data`.
    pub async fn start(data: &Path) -> Self {
        Self::start_with(config(data)).await
    }

    /// A server with `config`.
    ///
    /// # Panics
    ///
    /// If the configuration is refused or the port cannot be bound.
    pub async fn start_with(config: Config) -> Self {
        let data = config.data.clone();
        let server = Server::bind(config)
            .await
            .expect("a test server binds a loopback port");
        let state = server.state().clone();
        Self {
            data,
            server: server.spawn(),
            state,
            cluster: None,
        }
    }

    /// A server with `config` keeping its databases on `store`: on
    /// PostgreSQL, in a cluster started for it, which stops after it.
    ///
    /// # Panics
    ///
    /// If the cluster does not start, or as [`start_with`](Self::start_with).
    pub async fn start_on(store: Store, config: Config) -> Self {
        match store {
            Store::Sqlite => Self::start_with(config).await,
            Store::Postgres => {
                let cluster = postgres::Postgres::start().expect("a PostgreSQL cluster starts");
                Self::start_on_cluster(cluster, config).await
            }
        }
    }

    /// A server with `config` keeping its databases in `cluster`, which it
    /// keeps until it stops (as [`start_on`](Self::start_on) does).
    pub async fn start_on_cluster(cluster: postgres::Postgres, mut config: Config) -> Self {
        config.storage.postgres = Some(cluster.connection_string("postgres"));
        Self {
            cluster: Some(cluster),
            ..Self::start_with(config).await
        }
    }

    /// Stops the server, and gives back the PostgreSQL cluster it kept its
    /// databases in, if it had one.
    ///
    /// # Panics
    ///
    /// If the server does not stop cleanly.
    pub async fn stop_keeping_cluster(self) -> Option<postgres::Postgres> {
        self.server.stop().await.expect("the server stops cleanly");
        self.cluster
    }

    /// The PostgreSQL cluster it keeps its databases in, if it was started
    /// on one by [`start_on`](Self::start_on).
    pub fn cluster(&self) -> Option<&postgres::Postgres> {
        self.cluster.as_ref()
    }

    /// The server's state, for what it counts.
    pub fn state(&self) -> &AppState {
        &self.state
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
    ///
    /// # Panics
    ///
    /// If the server failed while it ran.
    pub async fn stop(self) {
        self.server.stop().await.expect("the server stops cleanly");
    }
}

/// Creates the server database at `url` with `T`'s table, as an admin does.
pub async fn publish_schema<T: Synced>(url: &str) -> sync_runtime::Result<()> {
    let admin = SyncDb::open_in_memory()
        .await?
        .with_remote(Remote::new(url).api_key(ADMIN_KEY));
    admin.register::<T>().await?;
    admin.publish_schema().await
}

/// A device syncing with the server database at `url` as `user`, with `T`'s
/// table: its own file at `path`, or in memory.
pub async fn device<T: Synced>(
    path: Option<&Path>,
    url: &str,
    user: &str,
) -> sync_runtime::Result<SyncDb> {
    let db = match path {
        Some(path) => SyncDb::open(path).await?,
        None => SyncDb::open_in_memory().await?,
    };
    let db = db.with_remote(Remote::new(url).bearer_token(token(user)));
    db.register::<T>().await?;
    Ok(db)
}
