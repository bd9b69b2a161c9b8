//! Storage behind the HTTP layer: a [`Store`] of named [`Database`]s.
//!
//! The handlers only see these two traits, so another store (PostgreSQL, for
//! several server processes behind a load balancer) can be added without touching
//! them. The embedded default is [`SqliteStore`]: one SQLite file per database,
//! each a full replica that merges pushes with the same engine as the clients.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};

use sync_runtime::protocol::{PushAck, RejectedRow};
use sync_runtime::server::{Replica, RowFilter, RowFilters, SharedBatch, Versions, View};
use sync_runtime::wire::Payload;
use sync_runtime::{Batch, BatchLimits, Cursor, Options, SiteId, SyncDb, Synchronous, TableSchema};
use tokio::sync::{Mutex, watch};

use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::takes::Takes;

/// A boxed future, so that [`Store`] and [`Database`] can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest database name.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` can name a database: 1 to 64 characters among `a-z`, `0-9`, `_`
/// and `-` (so it is safe as a file name and in a URL).
///
/// ```
/// use sync_server::store::valid_database_name;
///
/// assert!(valid_database_name("todo-2"));
/// assert!(!valid_database_name("../etc"));
/// assert!(!valid_database_name("Todo"));
/// ```
pub fn valid_database_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Why `name` cannot name a database (for a caller that checked it cannot).
pub(crate) fn bad_database_name(name: &str) -> String {
    format!(
        "{name:?} is not a database name: use 1 to {MAX_NAME_LEN} characters among a-z, 0-9, _ and -"
    )
}

/// The named databases of a server.
///
/// A database the store holds but cannot serve (its storage is damaged) is
/// neither absent nor replaced: [`database`](Self::database) and
/// [`create`](Self::create) give [`Error::DatabaseUnavailable`] for it until an
/// operator repairs it.
pub trait Store: Send + Sync + 'static {
    /// The database called `name`, or `None` if there is none.
    fn database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Arc<dyn Database>>>>;

    /// The database called `name`, created empty if there is none.
    fn create<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn Database>>>;

    /// The names of the databases this store can serve now, sorted.
    fn names(&self) -> BoxFuture<'_, Result<Vec<String>>>;
}

/// What a user's push may do: the rows it may write, and those it may read (which
/// decide what it is told of the rows it was refused).
#[derive(Debug, Clone, PartialEq)]
pub struct PushAccess {
    /// The rows the user may write.
    pub write: RowFilters,
    /// The rows the user may read.
    pub read: RowFilters,
}

impl PushAccess {
    /// Whether a push with `access` (none: an API key's) comes from a device
    /// that reads every row: it holds every change of its push's versions;
    /// one that does not may have written rows it may not read, which its
    /// pulls take away.
    pub fn reads_all(access: Option<&Self>) -> bool {
        access.is_none_or(|access| access.read.allows_everything())
    }
}

/// One database: a replica that accepts pushes and serves pulls.
pub trait Database: Send + Sync + 'static {
    /// Merges a payload that device `site` pushed, decoded (only its own changes; see
    /// [`Replica::apply_push`]). Returns only once the merge is committed
    /// (durable), with the database's version after it. With `access` (a user's
    /// push), each row must pass its table's write filter (see
    /// [`Replica::apply_push_checked`]). The ack lists the rows refused, with the
    /// state of each the device takes back, as its user may read it; with it
    /// comes how far the database has received `site` after the merge (see
    /// [`sync_runtime::protocol::SEEN_HEADER`]). A site id that more than one
    /// file uses is refused (see [`Replica::apply_push`]). The state of refused
    /// rows has the tables and columns of the device's `view` only.
    fn push(
        &self,
        payload: Payload,
        site: SiteId,
        access: Option<PushAccess>,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<(PushAck, i64)>>;

    /// The changes after `from` not made by `site`, bounded by `limits`; with
    /// `filter` (a user's pull), only those of rows it lets the device read
    /// (see [`Replica::export_filtered`]); and how far the database has
    /// received `site` (see [`sync_runtime::protocol::SEEN_HEADER`]). A site
    /// id that more than one file uses is refused (see
    /// [`Replica::export_for_device`]). Only the tables and columns of the
    /// device's `view` travel (see [`Replica::serving`]).
    fn pull(
        &self,
        from: Cursor,
        site: SiteId,
        limits: BatchLimits,
        filter: Option<RowFilters>,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<(Batch, i64)>>;

    /// The registered tables.
    fn schemas(&self) -> BoxFuture<'_, Result<Vec<TableSchema>>>;

    /// Publishes an app version with these tables (see [`Replica::publish`]):
    /// each is created or evolved to its descriptor, all or none (an
    /// incompatible change is an error); returns the newest version's number.
    /// Publishing the same tables again changes nothing.
    fn publish(&self, schemas: Vec<TableSchema>) -> BoxFuture<'_, Result<i64>>;

    /// Binds a device's site to its user the first time it is seen; whether `user`
    /// is that site's user.
    fn claim_site<'a>(&'a self, site: SiteId, user: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Checks that a row filter can run on a table (start-up checks of policies).
    fn check_filter<'a>(&'a self, table: &'a str, filter: RowFilter) -> BoxFuture<'a, Result<()>>;

    /// Checks a read policy's filter and indexes the columns it reads, so that a
    /// user's first pull finds its rows through them; returns those columns.
    fn index_filter<'a>(
        &'a self,
        table: &'a str,
        filter: RowFilter,
    ) -> BoxFuture<'a, Result<Vec<String>>>;

    /// The app versions published, which devices are matched against (see
    /// [`Versions::resolve`]).
    fn versions(&self) -> BoxFuture<'_, Result<Arc<Versions>>>;

    /// A device of `owner`'s left site id `from` for `to`, because another
    /// file used it too if `reused` (see [`Replica::site_renewed`]).
    fn site_renewed<'a>(
        &'a self,
        from: SiteId,
        to: SiteId,
        owner: &'a str,
        reused: bool,
    ) -> BoxFuture<'a, Result<()>>;

    /// The changes after `from` as every device that made none of them gets
    /// them without a filter, bounded by `limits`, of the tables and columns of
    /// `view` (see [`Replica::export_shared`]): one export that the pulls
    /// waiting at the same place share; the batch's `sites` say which devices
    /// it does not serve (those whose changes it carries).
    fn pull_shared(
        &self,
        from: Cursor,
        limits: BatchLimits,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<Batch>>;

    /// The changes after `from` that `filter` lets through, as a device that
    /// holds none of them gets them, bounded by `limits`, of the tables and
    /// columns of `view` (see [`Replica::export_shared_filtered`]): one export
    /// that the pulls of one filter waiting at the same place share, each
    /// [taking](Self::take_shared) it. `None` from the beginning, where each
    /// device's first pull is its own.
    fn pull_shared_filtered(
        &self,
        from: Cursor,
        limits: BatchLimits,
        view: Arc<View>,
        filter: RowFilters,
    ) -> BoxFuture<'_, Result<Option<SharedBatch>>>;

    /// Whether device site `site` takes `shared` (see
    /// [`Replica::take_shared`]); if so, what it then holds is recorded before
    /// this returns. The takes of many devices at once go in one write.
    fn take_shared(&self, shared: Arc<SharedBatch>, site: SiteId) -> BoxFuture<'_, Result<bool>>;

    /// How far the database has received device site `site` (see
    /// [`sync_runtime::protocol::SEEN_HEADER`]); a site id that more than one
    /// file uses is refused (see [`Replica::served_site`]).
    fn served_site(&self, site: SiteId) -> BoxFuture<'_, Result<i64>>;

    /// The database's version, updated after every commit that created one: a
    /// pull that found nothing waits on it for new changes.
    fn subscribe(&self) -> watch::Receiver<i64>;

    /// Brings [`subscribe`](Self::subscribe)'s version up to every commit
    /// acknowledged before now, by this process or any other: a pull calls it
    /// first, so that it never takes an answer kept from before a push whose
    /// acknowledgement came before the pull. The embedded store's version is
    /// published before each commit returns.
    fn catch_up(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The embedded store: a directory with one SQLite file per database,
/// `<dir>/<name>.db`, each opened once and kept open.
///
/// A file that is damaged (empty, not a SQLite database, malformed, failing
/// SQLite's quick check when [`StorageConfig::quick_check`] is on) or that is not
/// a Synced database is refused when opened: logged as an error with its path,
/// never written to, and answered with [`Error::DatabaseUnavailable`] until the
/// server restarts (after an operator restored it from a backup). The other
/// databases are served as usual.
///
/// ```
/// use sync_server::store::{SqliteStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sync_server::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::File::create(dir.path().join("lost.db")).unwrap(); // 0 bytes
/// let store = SqliteStore::open(dir.path()).await?;
/// assert!(store.database("todo").await?.is_none());
/// store.create("todo").await?;
/// assert_eq!(store.names().await?, ["todo"]);
/// assert!(dir.path().join("todo.db").exists());
///
/// let lost = store.create("lost").await.err().unwrap();
/// assert!(matches!(lost, sync_server::Error::DatabaseUnavailable { .. }));
/// # Ok(())
/// # }
/// ```
pub struct SqliteStore {
    dir: PathBuf,
    quick_check: bool,
    databases: Mutex<HashMap<String, Slot>>,
    /// The databases open, for every request to find its own without
    /// waiting on `databases`, which an opening holds.
    open: std::sync::RwLock<HashMap<String, Arc<SqliteDatabase>>>,
}

/// What became of a database file the store opened.
enum Slot {
    /// Served.
    Open(Arc<SqliteDatabase>),
    /// Refused, for this reason, until the server restarts.
    Refused(String),
}

/// The file extension of database files.
const EXTENSION: &str = "db";

impl SqliteStore {
    /// Opens a data directory (created if missing) and every database file in it,
    /// with the default [`StorageConfig`] (every file quick-checked).
    /// Files whose names are not valid database names are left alone.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, &StorageConfig::default()).await
    }

    /// Opens a data directory (created if missing) and every database file in it;
    /// a damaged file is refused (see [`SqliteStore`]), and the start goes on.
    pub async fn open_with(dir: impl AsRef<Path>, storage: &StorageConfig) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: format!("cannot create the data directory {}", dir.display()),
            source,
        })?;
        let store = Self {
            dir,
            quick_check: storage.quick_check,
            databases: Mutex::new(HashMap::new()),
            open: std::sync::RwLock::default(),
        };
        for name in store.names_on_disk()? {
            match store.open_database(&name, false).await {
                Ok(_) | Err(Error::DatabaseUnavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{EXTENSION}"))
    }

    fn names_on_disk(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io {
            what: format!("cannot list the data directory {}", self.dir.display()),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                continue;
            }
            if let Some(name) = path.file_stem().and_then(|s| s.to_str())
                && valid_database_name(name)
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    /// The open database `name`; opens its file first if it exists (or if
    /// `create`). `None` when there is no such database.
    async fn open_database(&self, name: &str, create: bool) -> Result<Option<Arc<SqliteDatabase>>> {
        if !valid_database_name(name) {
            return Err(Error::BadRequest(bad_database_name(name)));
        }
        let found = self
            .open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        if found.is_some() {
            return Ok(found);
        }
        // Held across the open, so that a database is opened once.
        let mut databases = self.databases.lock().await;
        match databases.get(name) {
            Some(Slot::Open(db)) => return Ok(Some(Arc::clone(db))),
            Some(Slot::Refused(reason)) => return Err(unavailable(name, reason)),
            None => {}
        }
        let path = self.path_of(name);
        let exists = path.exists();
        if !create && !exists {
            return Ok(None);
        }
        let opened = if exists {
            SqliteDatabase::open_existing(&path, self.quick_check).await
        } else {
            SqliteDatabase::open(&path).await
        };
        let db = match opened {
            Ok(db) => Arc::new(db),
            Err(e) => {
                let Some(reason) = damage(&e) else {
                    return Err(e);
                };
                tracing::error!(
                    database = name,
                    path = %path.display(),
                    reason = %reason,
                    "database file refused: it is not served until it is restored from a \
                     backup and the server restarted; the file is left as it is"
                );
                databases.insert(name.to_owned(), Slot::Refused(reason.clone()));
                return Err(unavailable(name, &reason));
            }
        };
        tracing::info!(database = name, path = %path.display(), "database opened");
        databases.insert(name.to_owned(), Slot::Open(Arc::clone(&db)));
        self.open
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), Arc::clone(&db));
        Ok(Some(db))
    }
}

/// What is wrong with a database file, if `error` says that it cannot be served
/// as it is (rather than that it could not be opened at all: permissions, a full
/// disk): it is damaged, or a newer release wrote it.
fn damage(error: &Error) -> Option<String> {
    match error {
        Error::Runtime(sync_runtime::Error::Damaged { reason, .. }) => Some(reason.clone()),
        Error::Runtime(newer @ sync_runtime::Error::NewerFormat { .. }) => Some(newer.to_string()),
        Error::Runtime(sync_runtime::Error::NotADatabase { .. }) => {
            Some("it is not a SQLite database".to_owned())
        }
        _ => None,
    }
}

fn unavailable(name: &str, reason: &str) -> Error {
    Error::DatabaseUnavailable {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

impl Store for SqliteStore {
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
        Box::pin(async move {
            let mut names = self.names_on_disk()?;
            let databases = self.databases.lock().await;
            names.extend(databases.keys().cloned());
            names.retain(|name| !matches!(databases.get(name), Some(Slot::Refused(_))));
            names.sort();
            names.dedup();
            Ok(names)
        })
    }
}

/// One database of a [`SqliteStore`]: a [`SyncDb`] replica.
pub struct SqliteDatabase {
    db: Replica,
    /// What every push and pull checks, kept here rather than read from the
    /// replica each time: the app versions published (which only
    /// [`publish`](Database::publish) changes) and the sites whose owner
    /// was confirmed (which never changes).
    versions: std::sync::Mutex<Option<Arc<Versions>>>,
    /// Held by a publication until its versions are cached: the last one cached
    /// is the last one committed.
    publishing: Mutex<()>,
    /// The user of each device site claimed, as far as remembered (the
    /// database has them all).
    owners: std::sync::Mutex<Remembered<String>>,
    /// How far the database has received each device site that pushed or
    /// pulled, known not to be reused (see [`Seen`]).
    seen: std::sync::Mutex<Seen>,
    /// Devices taking shared filtered answers, recorded together.
    takes: Arc<Takes>,
}

/// How far a database has received each device site known not to be reused:
/// what every pull answers with, kept here so that a long-poll costs no read.
/// Pushes, which all go through this process, keep it up to date; a site found
/// reused, or left for a new one, is forgotten.
#[derive(Default)]
struct Seen {
    sites: Remembered<i64>,
    /// How many times a site was forgotten: a value read from the database
    /// before one was is not kept, as it may be of a site found reused since.
    forgotten: u64,
}

impl Seen {
    fn forget(&mut self, site: SiteId) {
        self.sites.0.remove(&site);
        self.forgotten += 1;
    }

    /// Keeps `seen` for `site` if it is later than the one kept. A full map
    /// is emptied first, and counts as every site forgotten.
    fn keep_later(&mut self, site: SiteId, seen: i64) {
        if self.sites.make_room(site) {
            self.forgotten += 1;
        }
        self.sites
            .0
            .entry(site)
            .and_modify(|kept| *kept = seen.max(*kept))
            .or_insert(seen);
    }
}

/// The most device sites a database remembers a value of in memory (how far
/// it received each, who owns each): a client that claims ever new site ids
/// makes the map start over, not grow.
const REMEMBERED_SITES: usize = 1 << 18;

/// A value per device site, at most [`REMEMBERED_SITES`] of them: each is in
/// the database too, and read from there when it is not here.
struct Remembered<T>(std::collections::HashMap<SiteId, T>);

impl<T> Default for Remembered<T> {
    fn default() -> Self {
        Self(std::collections::HashMap::new())
    }
}

impl<T> Remembered<T> {
    /// Empties the map if it is full and does not hold `site`; whether it did.
    fn make_room(&mut self, site: SiteId) -> bool {
        let full = self.0.len() >= REMEMBERED_SITES && !self.0.contains_key(&site);
        if full {
            self.0.clear();
        }
        full
    }

    fn insert(&mut self, site: SiteId, value: T) {
        self.make_room(site);
        self.0.insert(site, value);
    }
}

impl SqliteDatabase {
    /// Opens (or creates) the database file at `path`. Every commit reaches the
    /// disk before the push that made it is acknowledged, so an acknowledged change
    /// survives a crash of the process and a power loss alike.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Self::options()).await
    }

    /// Opens the existing database file at `path`, refusing (with
    /// [`sync_runtime::Error::Damaged`] or [`sync_runtime::Error::NotADatabase`])
    /// a file that is empty, not a Synced database, malformed, or (with
    /// `quick_check`) that SQLite's quick check finds damaged. A refused file is
    /// left as it is.
    pub async fn open_existing(path: &Path, quick_check: bool) -> Result<Self> {
        let options = Self::options().create(false).quick_check(quick_check);
        Self::open_with(path, options).await
    }

    /// The settings of every server database: every commit on disk before it is
    /// acknowledged.
    fn options() -> Options {
        Options::default().synchronous(Synchronous::Full)
    }

    async fn open_with(path: &Path, options: Options) -> Result<Self> {
        Ok(Self {
            db: Replica::new(SyncDb::open_with(path, options).await?),
            versions: std::sync::Mutex::default(),
            publishing: Mutex::new(()),
            owners: std::sync::Mutex::default(),
            seen: std::sync::Mutex::default(),
            takes: Arc::default(),
        })
    }

    /// The replica itself.
    pub fn sync_db(&self) -> &SyncDb {
        self.db.db()
    }
}

impl Database for SqliteDatabase {
    fn push(
        &self,
        payload: Payload,
        site: SiteId,
        access: Option<PushAccess>,
        view: Arc<View>,
    ) -> BoxFuture<'_, Result<(PushAck, i64)>> {
        Box::pin(async move {
            let db = self.db.serving(view);
            let forgotten = lock(&self.seen).forgotten;
            let reads_all = PushAccess::reads_all(access.as_ref());
            let pushed = match access {
                None => db.apply_push(payload, site).await,
                Some(PushAccess { write, read }) => {
                    db.apply_push_checked(payload, site, write, read).await
                }
            };
            let pushed = match pushed {
                Ok(pushed) => pushed,
                Err(e) => {
                    if matches!(e, sync_runtime::Error::SiteReused { .. }) {
                        lock(&self.seen).forget(site);
                    }
                    return Err(e.into());
                }
            };
            // Accepted, so not reused (unless a site was found reused since
            // the push started); a pull that read the database before this
            // push committed does not bring back the value it read.
            let mut known = lock(&self.seen);
            if known.forgotten == forgotten {
                known.keep_later(site, pushed.seen);
            } else {
                // A pull that read the database before this push committed
                // must not bring back what it read either.
                known.forget(site);
            }
            drop(known);
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
        Box::pin(async move { Ok(self.db.db().schemas().await?) })
    }

    fn publish(&self, schemas: Vec<TableSchema>) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            let _one_at_a_time = self.publishing.lock().await;
            let published = self.db.publish(schemas).await;
            // Read again by the next request if it cannot be read now.
            *lock(&self.versions) = self.db.versions().await.ok().map(Arc::new);
            Ok(published?)
        })
    }

    fn versions(&self) -> BoxFuture<'_, Result<Arc<Versions>>> {
        Box::pin(async move {
            if let Some(versions) = &*lock(&self.versions) {
                return Ok(Arc::clone(versions));
            }
            let versions = Arc::new(self.db.versions().await?);
            // A publication that finished meanwhile stored its own.
            Ok(Arc::clone(lock(&self.versions).get_or_insert(versions)))
        })
    }

    fn site_renewed<'a>(
        &'a self,
        from: SiteId,
        to: SiteId,
        owner: &'a str,
        reused: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let renewed = self.db.site_renewed(from, to, owner, reused).await;
            // A renewed device names its previous site id with every request:
            // only one found reused is forgotten (the new one's pushes keep
            // its own entry up to date).
            if reused {
                lock(&self.seen).forget(from);
            }
            Ok(renewed?)
        })
    }

    fn claim_site<'a>(&'a self, site: SiteId, owner: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if let Some(known) = lock(&self.owners).0.get(&site) {
                return Ok(known == owner);
            }
            let claimed = self.db.claim_site(site, owner).await?;
            if claimed {
                lock(&self.owners).insert(site, owner.to_owned());
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
        Box::pin(async move { Ok(self.db.index_filter(table, filter).await?) })
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
        Box::pin(async move {
            let forgotten = {
                let known = lock(&self.seen);
                if let Some(&seen) = known.sites.0.get(&site) {
                    return Ok(seen);
                }
                known.forgotten
            };
            let seen = self.db.served_site(site).await?;
            let mut known = lock(&self.seen);
            if known.forgotten != forgotten {
                return Ok(seen);
            }
            // A push that committed meanwhile stored a later one.
            if let Some(&later) = known.sites.0.get(&site) {
                return Ok(later);
            }
            known.keep_later(site, seen);
            Ok(seen)
        })
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.db.db().subscribe()
    }
}

/// A cache's lock; a panic while it was held leaves nothing half-written in it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The answer to a push that `pushed` reports: what was applied, ignored and
/// rejected (with the device's restore), the database's version after it
/// (read after the commit: at or above the versions the merge took), and
/// the version before it when the device, which reads every row
/// (`reads_all`), may go on from there.
pub(crate) fn push_ack(pushed: &sync_runtime::server::PushReport, reads_all: bool) -> PushAck {
    PushAck {
        applied: pushed.applied.applied as u64,
        ignored: pushed.applied.ignored as u64,
        version: pushed.version,
        rejected: pushed.rejected.iter().map(RejectedRow::new).collect(),
        restore: (!pushed.restore.is_empty()).then(|| hex::encode(&pushed.restore)),
        from: reads_all.then_some(pushed.before),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(i: usize) -> SiteId {
        SiteId::from_bytes((i as u128 + 1).to_le_bytes())
    }

    /// A client claiming ever new site ids makes the map start over: it never
    /// holds more than its bound, and a value read before it started over is
    /// not kept (it counts as every site forgotten).
    #[test]
    fn the_sites_remembered_are_bounded() {
        let mut seen = Seen::default();
        for i in 0..REMEMBERED_SITES {
            seen.keep_later(site(i), 7);
        }
        assert_eq!(seen.sites.0.len(), REMEMBERED_SITES);
        assert_eq!(seen.forgotten, 0);
        // A site remembered already takes its later value without a clear.
        seen.keep_later(site(0), 9);
        seen.keep_later(site(0), 8);
        assert_eq!((seen.sites.0[&site(0)], seen.forgotten), (9, 0));
        seen.keep_later(site(REMEMBERED_SITES), 1);
        assert_eq!(seen.sites.0.len(), 1);
        assert_eq!(seen.forgotten, 1);

        let mut owners = Remembered::default();
        for i in 0..=REMEMBERED_SITES {
            owners.insert(site(i), "ann".to_owned());
        }
        assert_eq!(owners.0.len(), 1);
    }
}
