//! The store on PostgreSQL: every database a schema of one PostgreSQL
//! database ([`sync_runtime::postgres::PgReplica`]), which several server
//! processes configured with the same connection string serve side by side.
//!
//! Row-level policies are judged by SQLite on the rows read from PostgreSQL,
//! so that one policy means the same on both stores; a policy that reads
//! more than the row it judges (another table, a subquery) stops the server's
//! start (see [`PgReplica::check_filter`]). Publishing an app version evolves
//! the tables as on SQLite.

use std::collections::HashMap;
use std::sync::Arc;

use sync_runtime::postgres::{self, PgReplica};
use sync_runtime::protocol::PushAck;
use sync_runtime::server::{RowFilter, RowFilters, SharedBatch, Versions, View};
use sync_runtime::wire::Payload;
use sync_runtime::{Batch, BatchLimits, Cursor, SiteId, TableSchema};
use tokio::sync::{Mutex, watch};

use crate::error::{Error, Result};
use crate::store::{
    BoxFuture, Database, PushAccess, Store, bad_database_name, lock, push_ack, valid_database_name,
};
use crate::takes::{TakeShared, Takes};

/// The databases of one PostgreSQL database (see the module's documentation).
pub struct PgStore {
    /// Where a database not open yet is looked up, and the connections the
    /// databases share.
    directory: postgres::Directory,
    databases: Mutex<HashMap<String, Arc<PgDatabase>>>,
}

impl PgStore {
    /// The store of the PostgreSQL database `config` names (a connection
    /// string); its databases are opened as they are asked for.
    pub async fn open(config: &str) -> Result<Self> {
        // Reachable, and readable, before the server starts.
        let directory = postgres::Directory::open(config).await?;
        Ok(Self {
            directory,
            databases: Mutex::new(HashMap::new()),
        })
    }

    async fn open_database(&self, name: &str, create: bool) -> Result<Option<Arc<PgDatabase>>> {
        if !valid_database_name(name) {
            return Err(Error::BadRequest(bad_database_name(name)));
        }
        if name.len() > postgres::MAX_DATABASE_NAME {
            return Err(Error::BadRequest(format!(
                "{name:?} is too long a name for a database on PostgreSQL: at most {} characters",
                postgres::MAX_DATABASE_NAME
            )));
        }
        if let Some(db) = self.databases.lock().await.get(name) {
            return Ok(Some(Arc::clone(db)));
        }
        // Looked up without holding the databases: a request naming one
        // that does not exist holds up no other.
        if !create && !self.directory.contains(name).await? {
            return Ok(None);
        }
        let mut databases = self.databases.lock().await;
        if let Some(db) = databases.get(name) {
            return Ok(Some(Arc::clone(db)));
        }
        let replica = self.directory.replica(name).await?;
        tracing::info!(database = name, "database opened on PostgreSQL");
        let db = Arc::new(PgDatabase {
            horizon: replica.subscribe(),
            publications: replica.publications(),
            db: replica,
            owners: std::sync::Mutex::default(),
            versions: std::sync::Mutex::default(),
            takes: Arc::default(),
        });
        databases.insert(name.to_owned(), Arc::clone(&db));
        Ok(Some(db))
    }
}

impl Store for PgStore {
    fn database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Arc<dyn Database>>>> {
        Box::pin(async move {
            let db = self.open_database(name, false).await?;
            Ok(db.map(|db| db as Arc<dyn Database>))
        })
    }

    fn create<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Database>>> {
        Box::pin(async move {
            match self.open_database(name, true).await? {
                Some(db) => Ok(db as Arc<dyn Database>),
                None => Err(Error::DatabaseNotFound(name.to_owned())),
            }
        })
    }

    fn names(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move { Ok(self.directory.names().await?) })
    }
}

/// One database of a [`PgStore`].
pub struct PgDatabase {
    db: PgReplica,
    /// The horizon, which waiting pulls watch.
    horizon: watch::Receiver<i64>,
    /// The owner of each device site claimed (an owner never changes).
    owners: std::sync::Mutex<HashMap<SiteId, String>>,
    /// Publications heard of, made through any process.
    publications: watch::Receiver<u64>,
    /// The app versions as last read, and how many publications had been
    /// heard of before: read again after the next one.
    versions: std::sync::Mutex<Option<(u64, Arc<Versions>)>>,
    /// Devices taking shared filtered answers, recorded together.
    takes: Arc<Takes>,
}

impl TakeShared for PgReplica {
    fn take_shared(
        &self,
        readers: Vec<(Arc<SharedBatch>, SiteId)>,
    ) -> BoxFuture<'static, sync_runtime::Result<Vec<bool>>> {
        let db = self.clone();
        Box::pin(async move { db.take_shared(readers).await })
    }
}

impl Database for PgDatabase {
    fn push(
        &self,
        payload: Payload,
        site: SiteId,
        access: Option<PushAccess>,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<(PushAck, i64)>> {
        Box::pin(async move {
            let db = self.db.serving(view);
            let reads_all = PushAccess::reads_all(access.as_ref());
            let pushed = match access {
                None => db.apply_push(payload, site).await,
                Some(PushAccess { write, read }) => {
                    db.apply_push_checked(payload, site, write, read).await
                }
            };
            let pushed = match pushed {
                Err(sync_runtime::Error::SiteReused { message }) => {
                    self.db.mark_reused(site).await?;
                    return Err(sync_runtime::Error::SiteReused { message }.into());
                }
                pushed => pushed?,
            };
            // Other processes' merges may take versions between the push's:
            // `before` is the version before its first only when they are
            // a range of its own.
            Ok((push_ack(&pushed, reads_all), pushed.seen))
        })
    }

    fn pull(
        &self,
        from: Cursor,
        site: SiteId,
        limits: BatchLimits,
        filter: Option<RowFilters>,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<(Batch, i64)>> {
        Box::pin(async move {
            Ok(self
                .db
                .serving(view)
                .export_for_device(site, from, limits, filter)
                .await?)
        })
    }

    fn schemas(&self) -> BoxFuture<'_, Result<Vec<TableSchema>>> {
        Box::pin(async move { Ok(self.db.schemas().await?) })
    }

    fn publish(&self, schemas: Vec<TableSchema>) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            let published = self.db.publish(schemas).await;
            // Read again by the next request, without waiting to hear of it.
            *lock(&self.versions) = None;
            Ok(published?)
        })
    }

    fn claim_site<'a>(&'a self, site: SiteId, user: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if let Some(known) = self.lock_owners().get(&site) {
                return Ok(known == user);
            }
            let claimed = self.db.claim_site(site, user).await?;
            if claimed {
                let mut owners = self.lock_owners();
                // Bounded like the SQLite store's: each is in the database too.
                if owners.len() >= 1 << 18 {
                    owners.clear();
                }
                owners.insert(site, user.to_owned());
            }
            Ok(claimed)
        })
    }

    fn check_filter<'a>(&'a self, table: &'a str, filter: RowFilter) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.db.check_filter(table, filter).await?) })
    }

    fn index_filter<'a>(
        &'a self,
        table: &'a str,
        filter: RowFilter,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            // Judged outside PostgreSQL: no index of PostgreSQL's serves it.
            self.db.check_filter(table, filter).await?;
            Ok(Vec::new())
        })
    }

    fn versions(&self) -> BoxFuture<'_, Result<Arc<Versions>>> {
        Box::pin(async move {
            // Read before the versions: a publication heard of meanwhile
            // makes the next request read them again.
            let heard = *self.publications.borrow();
            if let Some((read_at, versions)) = &*lock(&self.versions)
                && *read_at == heard
            {
                return Ok(Arc::clone(versions));
            }
            let versions = Arc::new(self.db.versions().await?);
            *lock(&self.versions) = Some((heard, Arc::clone(&versions)));
            Ok(versions)
        })
    }

    fn site_renewed<'a>(
        &'a self,
        from: SiteId,
        to: SiteId,
        owner: &'a str,
        reused: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.db.site_renewed(from, to, owner, reused).await?) })
    }

    fn pull_shared(
        &self,
        from: Cursor,
        limits: BatchLimits,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<Batch>> {
        Box::pin(async move { Ok(self.db.serving(view).export_shared(from, limits).await?) })
    }

    fn pull_shared_filtered(
        &self,
        from: Cursor,
        limits: BatchLimits,
        view: Arc<View>,
        filter: RowFilters,
    ) -> BoxFuture<'_, Result<Option<SharedBatch>>> {
        Box::pin(async move {
            let db = self.db.serving(view);
            Ok(db.export_shared_filtered(from, limits, filter).await?)
        })
    }

    fn take_shared(&self, shared: Arc<SharedBatch>, site: SiteId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.takes.take(&self.db, shared, site))
    }

    fn served_site(&self, site: SiteId) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move { Ok(self.db.served_site(site).await?) })
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.horizon.clone()
    }

    fn catch_up(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.db.catch_up().await?;
            Ok(())
        })
    }
}

impl PgDatabase {
    fn lock_owners(&self) -> std::sync::MutexGuard<'_, HashMap<SiteId, String>> {
        lock(&self.owners)
    }
}
