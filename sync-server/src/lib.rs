//! The Synced sync server: a replica that devices sync through over HTTP.
//!
//! The server holds named databases, each a full Synced replica that merges the
//! changes clients push with the same engine as the clients, gives every accepted
//! change a server version, and serves each client the changes it has not seen
//! (excluding its own). Clients authenticate with an API key (admins, services) or
//! a JWT (users); see [`config`] for the configuration and [`http`] for the API.
//!
//! The `sync-server` binary is a thin wrapper around [`Server`]; tests and demos
//! start the same server in-process, on a free port:
//!
//! ```
//! use sync_server::{Config, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = tempfile::tempdir()?;
//! let config = Config {
//!     listen: "127.0.0.1:0".parse()?,
//!     data: data.path().into(),
//!     ..Config::default()
//! };
//! let server = Server::bind(config).await?;
//! let health = format!("http://{}/health", server.local_addr());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! // `server.run()` would serve until Ctrl-C or SIGTERM instead.
//! let running = tokio::spawn(server.run_until(async {
//!     let _ = stopped.await;
//! }));
//!
//! assert!(reqwest::get(&health).await?.status().is_success());
//!
//! let _ = stop.send(()); // a graceful shutdown
//! running.await??;
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod config;
mod error;
pub mod fanout;
pub mod http;
pub mod policy;
pub mod postgres;
pub mod store;
mod takes;
pub mod views;
pub mod waiting;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use std::collections::HashMap;

use policy::Policies;
use sync_runtime::TableSchema;
use tokio::net::TcpListener;

pub use auth::{Authenticator, Principal};
pub use config::{
    Access, AuthConfig, Config, DatabaseConfig, Limits, StorageConfig, TablePolicies,
};
pub use error::{Error, Result};
pub use http::{AppState, router};
pub use store::{Database, SqliteStore, Store};

/// A server bound to its address, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
}

impl Server {
    /// Prepares a server from its configuration: reads the auth keys, opens the
    /// data directory (a [`SqliteStore`]), or the PostgreSQL database of
    /// `[storage] postgres` (a [`postgres::PgStore`]), and the configured
    /// databases with their schemas, and binds the listening socket. A damaged
    /// database file does not stop the start: that database is not served
    /// (see [`SqliteStore`]).
    pub async fn bind(config: Config) -> Result<Self> {
        let store: Arc<dyn Store> = match &config.storage.postgres {
            Some(postgres) => Arc::new(postgres::PgStore::open(postgres).await?),
            None => Arc::new(SqliteStore::open_with(&config.data, &config.storage).await?),
        };
        Self::bind_with_store(config, store).await
    }

    /// Like [`bind`](Self::bind), with another store (`config.data` and
    /// `config.storage` are not used).
    pub async fn bind_with_store(config: Config, store: Arc<dyn Store>) -> Result<Self> {
        config.validate()?;
        let auth = Authenticator::new(&config.auth)?;
        if !auth.accepts_anything() {
            tracing::warn!(
                "no API key and no JWT key configured: every request but /health gets 401"
            );
        }
        let mut policies = HashMap::new();
        for (name, database) in &config.databases {
            let compiled = Policies::new(database)
                .map_err(|e| Error::Config(format!("[databases.{name}]: {e}")))?;
            let db = match store.create(name).await {
                Ok(db) => db,
                // The store logged why; the others are served. Its policies
                // still apply: a token for another audience gets 403, as usual.
                Err(Error::DatabaseUnavailable { .. }) => {
                    tracing::warn!(
                        database = %name,
                        "configured database not served: its schema and policies are not checked"
                    );
                    policies.insert(name.clone(), compiled);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(path) = &database.schema {
                let schemas = read_schema_file(path)?;
                db.publish(schemas).await.map_err(|e| {
                    Error::Config(format!(
                        "cannot register the schema {} in database `{name}`: {e}",
                        path.display(),
                    ))
                })?;
            }
            check_policies(&*db, name, &compiled).await?;
            policies.insert(name.clone(), compiled);
        }
        tracing::info!(databases = ?store.names().await?, "serving");
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Io {
                what: format!("cannot listen on {}", config.listen),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            what: "cannot read the listening address".into(),
            source,
        })?;
        // Before the state is made: its caps on waiting pulls follow the limit.
        let open_files = waiting::raise_open_files_limit();
        let configured = config.limits.max_waiting_pulls;
        let state = AppState::new(store, auth, config.limits, policies);
        log_waiting_caps(state.waiting_caps(), configured, open_files);
        Ok(Self {
            listener,
            local_addr,
            state,
        })
    }

    /// The address the server listens on (with the actual port when the
    /// configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The state shared by the handlers (for example its [`Store`]).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves on a task of the current Tokio runtime until the returned handle
    /// is stopped or dropped: a server inside an app, a test or a demo.
    ///
    /// ```
    /// use sync_server::{Config, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_server::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let config = Config {
    ///     listen: "127.0.0.1:0".parse().unwrap(),
    ///     data: dir.path().join("data"),
    ///     ..Config::default()
    /// };
    /// let server = Server::bind(config).await?.spawn();
    /// assert!(server.url("todo").ends_with("/v1/db/todo"));
    /// server.stop().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn(self) -> Serving {
        let local_addr = self.local_addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async {
            let _ = stopped.await;
        }));
        Serving {
            local_addr,
            stop: Some(stop),
            task,
        }
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully (see
    /// [`run_until`](Self::run_until)).
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes; then it stops accepting connections,
    /// wakes the pulls that wait for changes (they answer with what they have) and
    /// returns once every request in flight has been answered.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let state = self.state.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing the requests in flight");
            state.shut_down();
        };
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Io {
                what: "the server stopped".into(),
                source,
            })
    }
}

/// A server serving on a task ([`Server::spawn`]); dropping it starts a graceful
/// shutdown.
pub struct Serving {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Serving {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL devices sync database `database` with
    /// (`http://<address>/v1/db/<database>`).
    pub fn url(&self, database: &str) -> String {
        format!("http://{}/v1/db/{database}", self.local_addr)
    }

    /// Shuts down gracefully (see [`Server::run_until`]) and waits until it has.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(|e| Error::Io {
            what: "the server's task failed".into(),
            source: std::io::Error::other(e),
        })?
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler could be installed: wait for the other signal only.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Logs the caps on waiting pulls in force, and warns when the open-file limit
/// lowered the configured ones.
fn log_waiting_caps(caps: waiting::WaitingCaps, configured: usize, open_files: u64) {
    tracing::info!(
        max_waiting_pulls = caps.per_server,
        max_waiting_pulls_per_user = caps.per_user,
        open_files,
        "long-polls capped"
    );
    if caps.per_server < configured {
        tracing::warn!(
            configured,
            effective = caps.per_server,
            open_files,
            reserved = waiting::reserved_files(open_files),
            "the open-file limit lowers max_waiting_pulls, to keep files for pushes; raise the \
             hard limit (`ulimit -Hn`, systemd's LimitNOFILE=) to let more devices wait"
        );
    }
}

/// Checks that every policy of a database runs on its table: a bad one stops the
/// start with a message naming the database and the table. The columns read
/// policies read are indexed, so that a user's first pull costs in proportion to
/// what it may read.
async fn check_policies(db: &dyn Database, name: &str, policies: &Policies) -> Result<()> {
    let schemas = db.schemas().await?;
    for (table, read, write) in policies.tables() {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::Config(format!("[databases.{name}.tables.{table}] {what}: {e}"))
        };
        if !schemas.iter().any(|s| s.name.eq_ignore_ascii_case(table)) {
            return Err(bad(
                "read",
                &"no such table is registered; policies need the table's schema (give \
                  `schema` or register it before)",
            ));
        }
        let indexed = db
            .index_filter(table, read.unbound())
            .await
            .map_err(|e| bad("read", &e))?;
        if !indexed.is_empty() {
            tracing::info!(database = name, table, columns = ?indexed, "read policy indexed");
        }
        db.check_filter(table, write.unbound())
            .await
            .map_err(|e| bad("write", &e))?;
    }
    Ok(())
}

/// Reads a JSON file holding an array of table schemas.
fn read_schema_file(path: &Path) -> Result<Vec<TableSchema>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("cannot read the schema file {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{} is not a JSON array of table schemas: {e}",
            path.display()
        ))
    })
}
