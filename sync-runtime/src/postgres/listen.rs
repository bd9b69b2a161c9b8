//! The horizon of a database on PostgreSQL as it moves (see [`Db::horizon`]),
//! for the long-polls of this process: every transaction that takes versions
//! notifies the database's channel as it commits, whatever process ran it,
//! and a connection of this process listening there reads the horizon again.
//!
//! While a transaction that took versions is still open, the horizon stays
//! below the versions committed after it; if it ends without a commit (rolled
//! back, or its process gone), nothing is notified, so a held horizon is read
//! again every [`HELD_RECHECK`] until it reaches the last version.

use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::Db;

/// How often a horizon held below the last version is read again.
pub(crate) const HELD_RECHECK: Duration = Duration::from_millis(50);

/// How long a listener whose connection failed waits before it connects again.
const RECONNECT: Duration = Duration::from_secs(1);

/// The channel a database's commits notify.
pub(crate) fn channel(db: &Db) -> String {
    format!("synced_{}", db.space)
}

/// What a publication's commit notifies (any other notification is a
/// commit that took versions).
pub(crate) const PUBLISHED: &str = "published";

/// What this process hears of a database's commits.
#[derive(Debug)]
pub(crate) struct Heard {
    /// The horizon (see [`Db::horizon`]).
    pub(crate) horizon: watch::Sender<i64>,
    /// How many publications were heard of since the listener started: the
    /// app versions read before the last one may be out of date.
    pub(crate) publications: watch::Sender<u64>,
    /// Dropped with it, which stops the listener at once (with its
    /// connection, and the pool it holds).
    pub(crate) _alive: oneshot::Sender<()>,
}

impl Heard {
    /// Publishes `horizon` if it is later than the one published.
    pub(crate) fn reached(&self, horizon: i64) {
        crate::worker::publish_later(&self.horizon, horizon);
    }
}

/// What `shared` is told, by a task that runs as long as it lives: until
/// `gone` hears that its `_alive` was dropped.
pub(crate) fn spawn(
    config: tokio_postgres::Config,
    pool: Pool,
    db: Arc<Db>,
    shared: Weak<Heard>,
    gone: oneshot::Receiver<()>,
) {
    tokio::spawn(async move {
        let listening = async {
            while shared.strong_count() > 0 {
                if let Err(error) = listen(&config, &pool, &db, &shared).await {
                    tracing::warn!(database = %db.schema, "listening for commits failed: {error}");
                }
                tokio::time::sleep(RECONNECT).await;
            }
        };
        tokio::select! {
            () = listening => {}
            _ = gone => {}
        }
    });
}

/// Listens on one connection until it fails or `shared` is gone.
async fn listen(
    config: &tokio_postgres::Config,
    pool: &Pool,
    db: &Db,
    shared: &Weak<Heard>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let (notified, mut notifications) = mpsc::unbounded_channel();
    // The connection's messages: driving it also runs the client's requests.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if notified.send(notification.payload() == PUBLISHED).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let listened = async {
        client
            .batch_execute(&format!("LISTEN {}", channel(db)))
            .await
            .map_err(|e| e.to_string())?;
        // A publication while no connection listened went unheard.
        if let Some(heard) = shared.upgrade() {
            heard.publications.send_modify(|count| *count += 1);
        }
        loop {
            // Read after LISTEN: no commit between the two goes unseen.
            let pooled = pool.get().await.map_err(|e| e.to_string())?;
            let (horizon, last) = db.horizon_async(&pooled).await.map_err(|e| e.to_string())?;
            drop(pooled);
            let Some(heard) = shared.upgrade() else {
                return Ok(());
            };
            heard.reached(horizon);
            drop(heard);
            let wait = notifications.recv();
            let mut published = false;
            if horizon < last {
                // Held by a transaction still open, which may end without a
                // commit: read again soon, or when notified.
                match tokio::time::timeout(HELD_RECHECK, wait).await {
                    Ok(None) => return Err("the connection closed".into()),
                    Ok(Some(publication)) => published |= publication,
                    Err(_) => {}
                }
            } else {
                match wait.await {
                    None => return Err("the connection closed".into()),
                    Some(publication) => published |= publication,
                }
            }
            // Every notification queued meanwhile is answered by one read.
            while let Ok(publication) = notifications.try_recv() {
                published |= publication;
            }
            if published {
                let Some(heard) = shared.upgrade() else {
                    return Ok(());
                };
                heard.publications.send_modify(|count| *count += 1);
            }
        }
    };
    let result = listened.await;
    driver.abort();
    result
}
