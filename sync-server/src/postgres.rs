//! The store on PostgreSQL: every database a schema of one PostgreSQL
//! database ([`sync_runtime::postgres::PgReplica`]), which several server
//! processes configured with the same connection string serve side by side.
//!
//! What this store does not do yet is refused, never done halfway: row-level
//! policies (a server that has any does not start on it), and evolving a
//! published table.

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
    BoxFuture, Database, PushAccess, Store, bad_database_name, lock, valid_database_name,
};

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
            name: name.to_owned(),
            horizon: replica.subscribe(),
            publications: replica.publications(),
            db: replica,
            owners: std::sync::Mutex::default(),
            versions: std::sync::Mutex::default(),
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
    /// Its name.
    name: String,
    /// The horizon, which waiting pulls watch.
    horizon: watch::Receiver<i64>,
    /// The owner of each device site claimed (an owner never changes).
    owners: std::sync::Mutex<HashMap<SiteId, String>>,
    /// Publications heard of, made through any process.
    publications: watch::Receiver<u64>,
    /// The app versions as last read, and how many publications had been
    /// heard of before: read again after the next one.
    versions: std::sync::Mutex<Option<(u64, Arc<Versions>)>>,
}

/// Why what a policy asks is refused on PostgreSQL.
fn policies_not_supported(table: &str) -> Error {
    Error::Config(format!(
        "table `{table}`: row-level policies are not supported on PostgreSQL yet; \
         serve this database from SQLite, or allow every row"
    ))
}

/// Whether `filters` let every row through.
fn all(filters: Option<&RowFilters>) -> bool {
    filters.is_none_or(RowFilters::allows_everything)
}

impl Database for PgDatabase {
    fn push(
        &self,
        payload: Payload,
        site: SiteId,
        access: Option<PushAccess>,
        _view: Arc<View>,
    ) -> BoxFuture<'_, Result<(PushAck, i64)>> {
        Box::pin(async move {
            if let Some(access) = &access
                && !(all(Some(&access.write)) && all(Some(&access.read)))
            {
                return Err(self.filtered_not_served());
            }
            let pushed = match self.db.apply_push(payload, site).await {
                Err(sync_runtime::Error::SiteReused { message }) => {
                    self.db.mark_reused(site).await?;
                    return Err(sync_runtime::Error::SiteReused { message }.into());
                }
                pushed => pushed?,
            };
            let ack = PushAck {
                applied: pushed.applied.applied as u64,
                ignored: pushed.applied.ignored as u64,
                version: pushed.version,
                rejected: Vec::new(),
                restore: None,
                // Empty unless the push's versions are a range of its own:
                // other processes' merges may take versions between them.
                from: Some(pushed.before),
            };
            Ok((ack, pushed.seen))
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
            if !all(filter.as_ref()) {
                return Err(self.filtered_not_served());
            }
            Ok(self
                .db
                .export_for_device(site, from, limits, Some(view))
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
        Box::pin(async move {
            match filter {
                RowFilter::All => Ok(()),
                _ => Err(policies_not_supported(table)),
            }
        })
    }

    fn index_filter<'a>(
        &'a self,
        table: &'a str,
        filter: RowFilter,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            match filter {
                RowFilter::All => Ok(Vec::new()),
                _ => Err(policies_not_supported(table)),
            }
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
        Box::pin(async move { Ok(self.db.export_shared(from, limits, Some(view)).await?) })
    }

    fn pull_shared_filtered(
        &self,
        _from: Cursor,
        _limits: BatchLimits,
        _view: Arc<View>,
        _filter: RowFilters,
    ) -> BoxFuture<'_, Result<Option<SharedBatch>>> {
        // No filtered pull is served here (see `policies_not_supported`).
        Box::pin(async move { Ok(None) })
    }

    fn take_shared(&self, shared: Arc<SharedBatch>, _site: SiteId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { Ok(shared.taken_by_all()) })
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
    /// Why a user's request that policies filter (a database the
    /// configuration does not list is closed to users) is not served.
    fn filtered_not_served(&self) -> Error {
        Error::NotServedByStore {
            name: self.name.clone(),
            reason: "row-level policies, and the closed tables of a database the configuration \
                     does not list, are not served from PostgreSQL yet"
                .into(),
        }
    }

    fn lock_owners(&self) -> std::sync::MutexGuard<'_, HashMap<SiteId, String>> {
        lock(&self.owners)
    }
}
