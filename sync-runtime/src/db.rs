//! [`SyncDb`]: the handle apps use, and the thread that owns the connection.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{oneshot, watch};

use crate::change::{self, Change};
use crate::error::{Error, Result};
use crate::export::{self, Batch, BatchLimits, Cursor, Scope, Since};
use crate::filter::{RowFilter, RowFilters};
use crate::format;
use crate::id::SiteId;
use crate::merge::{self, ApplyReport, PushReport};
use crate::model::Synced;
use crate::remote::RemoteState;
use crate::schema::TableSchema;
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::tx::{self, Registry, Transaction};
use crate::value::Value;
use crate::wire::Payload;

/// How a database is opened. `Options::default()` is what [`SyncDb::open`] uses.
///
/// ```
/// use sync_runtime::Options;
///
/// let options = Options::default().cache_size_kib(16 * 1024);
/// assert_eq!(options.cache_size(), 16 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    cache_size_kib: u32,
    busy_timeout_ms: u32,
    synchronous: Synchronous,
    create: bool,
    quick_check: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cache_size_kib: 64 * 1024,
            busy_timeout_ms: 5_000,
            synchronous: Synchronous::Normal,
            create: true,
            quick_check: false,
        }
    }
}

/// When a commit reaches the disk (SQLite's `synchronous` setting, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// A committed transaction survives a crash of the app (even `kill -9`); on a
    /// power loss or an operating-system crash the last ones may be lost. The
    /// default: right for devices, whose changes stay unsent until acknowledged.
    #[default]
    Normal,
    /// A committed transaction survives a power loss too, at the cost of a sync to
    /// disk at every commit. What a server needs before it acknowledges a change.
    Full,
}

impl Options {
    /// The most memory SQLite may use to cache pages, in KiB (default 65,536: 64 MiB).
    /// Pages are only allocated when used, so a small database uses little; a larger
    /// cache makes writes to large tables markedly faster (see the book's
    /// performance page).
    pub fn cache_size_kib(mut self, kib: u32) -> Self {
        // SQLite takes the size as a signed 32-bit number.
        self.cache_size_kib = kib.min(i32::MAX as u32);
        self
    }

    /// When a commit reaches the disk (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// The page-cache limit in KiB.
    pub fn cache_size(&self) -> u32 {
        self.cache_size_kib
    }

    /// Whether a path without a Synced database may become a new one (default
    /// `true`). With `false`, only an existing Synced database opens: a missing
    /// file gives [`Error::Open`], and an empty (0-byte) file or a SQLite database
    /// without the runtime's tables gives [`Error::Damaged`] and is left as it is,
    /// where SQLite and the default would quietly turn it into a new, empty
    /// database. For a file that must hold data, such as a server's.
    ///
    /// ```
    /// use sync_runtime::{Error, Options, SyncDb};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("lost.db");
    /// std::fs::File::create(&path).unwrap(); // 0 bytes
    /// let opened = SyncDb::open_with(&path, Options::default().create(false)).await;
    /// assert!(matches!(opened, Err(Error::Damaged { .. })));
    /// assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Whether opening runs SQLite's `PRAGMA quick_check` before anything else
    /// touches the file (default `false`); a file it finds damaged gives
    /// [`Error::Damaged`]. It catches damage that opening alone does not see
    /// (pages overwritten or lost inside the file), at the cost of reading every
    /// page: 40 to 60 ms for a table of 100,000 rows (a 23 MB file) and 0.5 s for
    /// 1,000,000 rows (233 MB), read from the operating system's cache
    /// (`cargo run --release -p synced-bench --bin quick-check`); from disk, about
    /// the time it takes to read the file.
    ///
    /// Without it, opening still refuses a file that is not a SQLite database
    /// ([`Error::NotADatabase`]) or whose header does not match its size, such as
    /// a truncated file ([`Error::Damaged`]): SQLite checks both when it reads the
    /// first page.
    pub fn quick_check(mut self, quick_check: bool) -> Self {
        self.quick_check = quick_check;
        self
    }

    /// How long a write waits for another connection's lock before failing
    /// (default 5 s).
    pub fn busy_timeout(mut self, timeout: std::time::Duration) -> Self {
        // SQLite takes the timeout as a signed 32-bit number of milliseconds.
        self.busy_timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .min(i32::MAX as u32);
        self
    }
}

/// A synced SQLite database: the handle an app keeps for its whole life.
///
/// Cheap to clone and `Send + Sync`: every clone talks to the same connection, which
/// lives on a dedicated thread so that SQLite never blocks the async runtime. The
/// connection closes when the last clone is dropped.
///
/// ```
/// use sync_runtime::{Synced, SyncDb, SyncId, params};
///
/// #[derive(Synced, Debug, Clone, PartialEq)]
/// #[synced(table = "todos")]
/// struct Todo {
///     #[synced(primary_key)]
///     id: SyncId,
///     title: String,
///     #[synced(default = false)]
///     done: bool,
///     note: Option<String>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sync_runtime::Result<()> {
/// let db = SyncDb::open_in_memory().await?;
/// db.register::<Todo>().await?;
///
/// let mut todo = Todo { id: SyncId::new(), title: "Buy milk".into(), done: false, note: None };
/// db.insert(&todo).await?;
/// todo.done = true;
/// db.update(&todo).await?;
///
/// assert_eq!(db.get::<Todo>(&todo.id).await?, Some(todo.clone()));
/// let open: Vec<Todo> = db.query("done = ?1", params![false]).await?;
/// assert!(open.is_empty());
///
/// // Two transactions so far: the insert and the update.
/// assert_eq!(db.db_version().await?, 2);
/// let changes = db.changes_since(0).await?;
/// assert_eq!(changes.len(), 4); // the insert, then title, done and note
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SyncDb {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    /// This database's site id and the one it had before (and whether it left
    /// that one because another file used it too), kept here so that a request
    /// to a server reads them without waiting on the connection's thread.
    /// Change only at [`SyncDb::logout`] and [`SyncDb::new_site_id`].
    site_ids: RwLock<SiteIds>,
    path: Option<PathBuf>,
    versions: Arc<watch::Sender<i64>>,
    /// The sync server, once set.
    remote: RwLock<Option<Arc<RemoteState>>>,
}

impl std::fmt::Debug for SyncDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncDb")
            .field("path", &self.inner.path)
            .field("site_id", &self.site_id())
            .finish_non_exhaustive()
    }
}

/// The connection and what this handle registered, owned by the worker thread.
pub(crate) struct Worker {
    pub(crate) conn: Connection,
    pub(crate) registry: Registry,
    /// Set by the connection's update hook whenever a trigger writes a clock row:
    /// the open transaction recorded changes and takes a version.
    recorded: Arc<AtomicBool>,
    /// The app's own SQL while it runs (see [`tx::AppSql`]).
    pub(crate) user_sql: Arc<tx::AppSql>,
    /// `PRAGMA data_version` when this handle last looked for changes that other
    /// connections recorded; `None` before the first look.
    seen_data_version: Option<i64>,
    /// The database's version, published after every commit that moved it.
    versions: Arc<watch::Sender<i64>>,
}

impl Worker {
    /// Tells subscribers the database's current version.
    fn publish_version(&self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
        self.versions.send_if_modified(|seen| {
            let moved = *seen != version;
            *seen = version;
            moved
        });
        Ok(())
    }
}

/// See `Inner::site_ids`.
#[derive(Clone, Copy)]
pub(crate) struct SiteIds {
    pub(crate) current: SiteId,
    pub(crate) previous: Option<(SiteId, bool)>,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;
type Reply<R> = std::thread::Result<R>;

impl SyncDb {
    /// Opens (or creates) a database file with default [`Options`].
    ///
    /// A new file gets a fresh site id; an existing one keeps its site id, versions,
    /// registered tables and tracking. A file that is not a SQLite database gives
    /// [`Error::NotADatabase`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Options::default()).await
    }

    /// Opens (or, unless [`Options::create`] says not to, creates) a database
    /// file. A file that SQLite finds damaged gives [`Error::Damaged`].
    pub async fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Self::start(Some(path), options).await
    }

    /// Opens a private in-memory database (gone when the last handle is dropped).
    pub async fn open_in_memory() -> Result<Self> {
        Self::start(None, Options::default()).await
    }

    async fn start(path: Option<PathBuf>, options: Options) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = oneshot::channel();
        let thread_path = path.clone();
        let versions = Arc::new(watch::Sender::new(0));
        let thread_versions = Arc::clone(&versions);
        thread::Builder::new()
            .name("synced-sqlite".into())
            .spawn(move || {
                let opened = open_connection(thread_path.as_deref(), &options, thread_versions);
                let mut worker = match opened {
                    Ok((worker, site_id)) => {
                        let _ = ready.send(worker.publish_version().map(|()| site_id));
                        worker
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    job(&mut worker);
                }
            })
            .map_err(|_| Error::Closed)?;
        let site_id = opened.await.map_err(|_| Error::Closed)??;
        let db = Self {
            inner: Arc::new(Inner {
                jobs,
                site_ids: RwLock::new(SiteIds {
                    current: site_id,
                    previous: None,
                }),
                path,
                versions,
                remote: RwLock::new(None),
            }),
        };
        let previous = db.previous_site_id().await?;
        db.set_site_ids(SiteIds {
            current: site_id,
            previous,
        });
        Ok(db)
    }

    /// Runs `f` on the connection's thread and returns its result. A panic in `f`
    /// is resumed in the caller.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Worker) -> Result<R> + Send + 'static,
    {
        self.call_raw(f).await.map_err(|()| Error::Closed)?
    }

    async fn call_raw<R, F>(&self, f: F) -> Result<R, ()>
    where
        R: Send + 'static,
        F: FnOnce(&mut Worker) -> R + Send + 'static,
    {
        let (reply, result) = oneshot::channel::<Reply<R>>();
        let job: Job = Box::new(move |worker| {
            let _ = reply.send(panic::catch_unwind(AssertUnwindSafe(|| f(worker))));
        });
        self.inner.jobs.send(job).map_err(|_| ())?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => panic::resume_unwind(panic),
            Err(_) => Err(()),
        }
    }

    /// This database's site id: created with the file, kept for its whole life
    /// (only [`logout`](Self::logout) gives it a new one).
    pub fn site_id(&self) -> SiteId {
        self.site_ids().current
    }

    /// See `Inner::site_ids`.
    pub(crate) fn site_ids(&self) -> SiteIds {
        *self
            .inner
            .site_ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_site_ids(&self, ids: SiteIds) {
        *self
            .inner
            .site_ids
            .write()
            .unwrap_or_else(|e| e.into_inner()) = ids;
    }

    pub(crate) fn remote_state(&self) -> Option<Arc<RemoteState>> {
        self.inner
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_remote_state(&self, state: Arc<RemoteState>) {
        *self.inner.remote.write().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// The file this database lives in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The database's logical clock: the version of its last transaction that changed
    /// a synced table (0 for a new database). Every version up to it is final: its
    /// changes are all in [`changes_since`](Self::changes_since). Changes written
    /// by other connections to the file get their version when this handle next
    /// writes or reads changes.
    pub async fn db_version(&self) -> Result<i64> {
        self.call(|w| Ok(w.conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?))
            .await
    }

    /// Creates `T`'s table (`STRICT`), its clock table and its change-tracking
    /// triggers; idempotent. A table that already exists must have the shape `T`
    /// describes ([`Error::SchemaMismatch`] otherwise); rows it holds that were not
    /// tracked yet are recorded as inserted.
    pub async fn register<T: Synced>(&self) -> Result<()> {
        let source = T::SCHEMA as *const TableSchema as usize;
        let schema = T::SCHEMA.clone();
        self.call(move |w| tracking::register(w, schema, Some(source), T::KEY_DOMAINS))
            .await
    }

    /// [`register`](Self::register) for a descriptor built at run time.
    pub async fn register_schema(&self, schema: TableSchema) -> Result<()> {
        self.call(move |w| tracking::register(w, schema, None, &[]))
            .await
    }

    /// Stops recording changes to `T`'s table (its rows stay). Writes made while
    /// tracking is off are not synced, except that
    /// [`enable_tracking`](Self::enable_tracking) records rows that appeared or
    /// disappeared meanwhile.
    pub async fn disable_tracking<T: Synced>(&self) -> Result<()> {
        let name = T::SCHEMA.name.to_string();
        self.call(move |w| tracking::set_tracking(w, &name, false))
            .await
    }

    /// Resumes recording changes to `T`'s table. Rows inserted while tracking was off
    /// are recorded as inserted, rows deleted meanwhile as deleted; updates made
    /// meanwhile to rows that existed before are not detected.
    pub async fn enable_tracking<T: Synced>(&self) -> Result<()> {
        let name = T::SCHEMA.name.to_string();
        self.call(move |w| tracking::set_tracking(w, &name, true))
            .await
    }

    /// Removes all sync metadata of `T`'s table (triggers, clock table, registration)
    /// and leaves the table and its rows as plain SQLite data.
    pub async fn drop_tracking<T: Synced>(&self) -> Result<()> {
        let name = T::SCHEMA.name.to_string();
        self.call(move |w| tracking::drop_tracking(w, &name)).await
    }

    /// Runs `f` in one write transaction: it commits if `f` returns `Ok`, and rolls
    /// back if `f` returns `Err` or panics. All its changes share one `db_version`.
    ///
    /// `f` runs on the database's thread: keep it to database work.
    pub async fn transaction<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, E> + Send + 'static,
    {
        self.call_raw(move |w| write(w, f))
            .await
            .map_err(|()| E::from(Error::Closed))?
    }

    /// Inserts a row in its own transaction. Fails with [`Error::Constraint`] if a
    /// row with the same key exists.
    pub async fn insert<T: Synced>(&self, row: &T) -> Result<()> {
        let values = row_values(row);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                tx::insert(tx.conn(), table, |i| values[i].as_ref())
            })
        })
        .await
    }

    /// Writes every column of the row with `row`'s key, in its own transaction; only
    /// columns whose value changed are recorded. [`Error::NotFound`] if no such row.
    ///
    /// Every column gets `row`'s value, including columns the app did not mean to
    /// change. A `row` read before another device's edit was merged here still
    /// holds the old value of the column that edit changed: writing it back
    /// records a new change that undoes that edit, and the undo wins everywhere.
    /// Read, change and write in one [`transaction`](Self::transaction), so that
    /// no merge can land in between:
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String, done: bool }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<Todo>().await?;
    /// # let id = SyncId::new();
    /// # db.insert(&Todo { id, title: "milk".into(), done: false }).await?;
    /// db.transaction(move |tx| {
    ///     if let Some(mut todo) = tx.get::<Todo>(&id)? {
    ///         todo.done = true;
    ///         tx.update(&todo)?;
    ///     }
    ///     Ok::<_, sync_runtime::Error>(())
    /// })
    /// .await?;
    /// # assert!(db.get::<Todo>(&id).await?.unwrap().done);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn update<T: Synced>(&self, row: &T) -> Result<()> {
        let values = row_values(row);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                tx::update(tx.conn(), table, |i| values[i].as_ref())
            })
        })
        .await
    }

    /// Deletes the row with this key in its own transaction; returns whether there
    /// was one. [`Error::GrowOnly`] for a `gos` table.
    pub async fn delete<T: Synced>(&self, key: &T::Key) -> Result<bool> {
        let key = key_values::<T>(key);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                tx::delete(tx.conn(), table, |i| key[i].as_ref())
            })
        })
        .await
    }

    /// The row with this key, if any.
    pub async fn get<T: Synced>(&self, key: &T::Key) -> Result<Option<T>> {
        let key = key_values::<T>(key);
        self.call(move |w| {
            let table = tx::table_of(&w.registry, T::SCHEMA)?;
            tx::get(&w.conn, table, |i| key[i].as_ref())
        })
        .await
    }

    /// The rows matching an SQL filter: what follows `WHERE` (optionally with
    /// `ORDER BY` and `LIMIT`), with `?N` parameters from [`params!`](crate::params).
    /// A filter that starts with `ORDER BY` or `LIMIT` applies to every row, and an
    /// empty filter returns every row.
    pub async fn query<T: Synced>(
        &self,
        filter: &str,
        params: impl Into<Vec<Value>>,
    ) -> Result<Vec<T>> {
        let (filter, params) = (filter.to_owned(), params.into());
        self.call(move |w| {
            let table = tx::table_of(&w.registry, T::SCHEMA)?;
            tx::query(&w.conn, &w.user_sql.running, table, &filter, &params)
        })
        .await
    }

    /// Runs one raw SQL statement in its own transaction; returns the number of
    /// changed rows. Writes to synced tables are tracked exactly like typed writes.
    pub async fn execute_raw(&self, sql: &str, params: impl Into<Vec<Value>>) -> Result<usize> {
        let (sql, params) = (sql.to_owned(), params.into());
        self.call(move |w| write(w, |tx| tx.execute_raw(&sql, &params)))
            .await
    }

    /// Rebuilds the database file to its smallest size (SQLite's `VACUUM`), then
    /// moves the write-ahead log into the file and truncates the log.
    ///
    /// A vacuum may renumber rowids, which cursors inside a version name: those
    /// made before it resume at the start of their version, carrying again what
    /// they may have carried already (see [`Cursor`]).
    pub async fn vacuum(&self) -> Result<()> {
        self.call(|w| {
            // Counted before and after: a cursor another handle makes while
            // the vacuum runs carries the count between, which is neither; a
            // count without its vacuum costs a few rows sent twice.
            w.conn.execute(sql::COUNT_VACUUM, [])?;
            w.conn.execute_batch("VACUUM;")?;
            w.conn.execute(sql::COUNT_VACUUM, [])?;
            Ok(w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?)
        })
        .await
    }

    /// Every change recorded after `db_version` (0: all), in every tracked table,
    /// ordered by version and sequence. Only final versions are reported, so a
    /// reader that keeps the highest version it has seen as its cursor never misses
    /// a change.
    pub async fn changes_since(&self, db_version: i64) -> Result<Vec<Change>> {
        self.call(move |w| {
            read_final(w, |conn, tables| {
                change::changes_since(conn, tables, db_version)
            })
        })
        .await
    }

    /// Every change after `since`, whoever made it, as a payload for another
    /// replica's [`apply_changes`](Self::apply_changes): a replica relays what it
    /// received. The payload format is described in [`wire`](crate::wire).
    pub async fn export_changes(&self, since: Since) -> Result<Vec<u8>> {
        self.call(move |w| {
            read_final(w, |conn, tables| {
                export::export(conn, tables, since.version(), Scope::All)
            })
        })
        .await
    }

    /// Like [`export_changes`](Self::export_changes), without the changes `site`
    /// made: what a relay (a server) sends back to `site`, which has them already.
    pub async fn export_changes_except(&self, since: Since, site: SiteId) -> Result<Vec<u8>> {
        self.call(move |w| {
            read_final(w, |conn, tables| {
                export::export(conn, tables, since.version(), Scope::Except(site))
            })
        })
        .await
    }

    /// Merges a payload from another replica (made by
    /// [`export_changes`](Self::export_changes)) into this database, in one
    /// transaction: all of it or, on any error, nothing. The merge rules are in
    /// the book's "Offline and conflicts" chapter; the changes it takes are not
    /// recorded as local changes, yet they are exported again by
    /// `export_changes`, so a replica can relay them.
    ///
    /// A payload that carries a change in this database's own name that it did
    /// not make shows that another file writes under its site id (a copy of
    /// this one): this database takes a new site id
    /// ([`new_site_id`](Self::new_site_id)) and merges the payload again, the
    /// change then taken as the other file's.
    pub async fn apply_changes(&self, payload: &[u8]) -> Result<ApplyReport> {
        let payload = std::sync::Arc::new(payload.to_vec());
        let merge = |payload: std::sync::Arc<Vec<u8>>| {
            self.call(move |w| {
                write(w, |tx| {
                    tx.set_versions();
                    merge::apply(tx.conn(), &payload, merge::Source::Peer)
                })
            })
        };
        match merge(std::sync::Arc::clone(&payload)).await {
            Err(Error::SiteReused { .. }) => {
                self.leave_reused_site_id().await?;
                merge(payload).await
            }
            other => other,
        }
    }

    /// Merges what a device pushed, as a server does: like
    /// [`apply_changes`](Self::apply_changes) of a payload decoded beforehand
    /// (with [`wire::decode_within`](crate::wire::decode_within), so that a
    /// server bounds what a request inflates to and decodes off this database's
    /// thread), after checking that the payload
    /// holds only changes `device` made itself (exported by it with
    /// [`Scope::Local`]) and no evictions; anything else is [`Error::Refused`],
    /// and nothing is applied. A row whose clocks leap beyond what any replica
    /// can have counted to ([`wire::CLOCK_STEP`](crate::wire::CLOCK_STEP)), or
    /// whose existence would change here by another site's record (a peer's
    /// creation or delete, which the device received and cannot make for it), is
    /// rejected alone: the report lists it, and its
    /// [`restore`](PushReport::restore) gives the device this database's state
    /// of it.
    ///
    /// A device's version only grows, and its pushes go one at a time: a push
    /// whose range ends below what this replica received from `device` comes
    /// from another file using the same site id (a copy, a restored backup).
    /// It is refused with [`Error::SiteReused`], and the site id is remembered
    /// as reused, so that every later push or pull presenting it is refused the
    /// same way (see [`export_for_device`](Self::export_for_device)) and every
    /// file using it takes a new one.
    pub async fn apply_push(&self, payload: Payload, device: SiteId) -> Result<PushReport> {
        self.call(move |w| {
            let pushed = write(w, |tx| {
                tx.set_versions();
                merge::apply_push(tx.conn(), &payload, device, None)
            });
            remember_reused(w, device, pushed)
        })
        .await
    }

    /// [`apply_push`](Self::apply_push) with row-level security: each pushed row
    /// must pass its table's filter in `may_write` before its change (if the row
    /// exists here) and after it (if it still exists). A row that does not is
    /// rejected: nothing of it is applied, the rest of the push is, and nothing
    /// here changes for it. The report lists the rejected rows, and its
    /// [`restore`](PushReport::restore) gives the device its state of each as
    /// `may_read` lets it see them, so that the device alone takes them back.
    pub async fn apply_push_checked(
        &self,
        payload: Payload,
        device: SiteId,
        may_write: RowFilters,
        may_read: RowFilters,
    ) -> Result<PushReport> {
        self.call(move |w| {
            let pushed = write(w, |tx| {
                tx.set_versions();
                let access = merge::Access {
                    write: &may_write,
                    read: &may_read,
                };
                merge::apply_push(tx.conn(), &payload, device, Some(access))
            });
            remember_reused(w, device, pushed)
        })
        .await
    }

    /// Takes back a server's state of rows it refused from a push of this
    /// database's (a [`PushReport::restore`], as [`sync`](Self::sync) does with
    /// a server's answer): each such row not changed here since `exported_at`
    /// (this database's version when it exported the push, [`Batch::version`])
    /// becomes the server's, clocks included, or is forgotten if this user may
    /// not read it; a row changed since keeps what changed, which goes with the
    /// next push.
    ///
    /// [`Batch::version`]: crate::Batch::version
    pub async fn apply_restore(&self, restore: &[u8], exported_at: i64) -> Result<ApplyReport> {
        let restore = restore.to_vec();
        self.call(move |w| {
            write(w, |tx| {
                tx.set_versions();
                merge::restore(tx.conn(), &restore, exported_at)
            })
        })
        .await
    }

    /// The version up to which this database holds every change `site` made (0 if
    /// none); for this database's own site, its current version. It rises when a
    /// payload exported by `site` since a version at or below it is applied, never
    /// through changes relayed by others, so a peer can ask `site` for exactly what
    /// is missing: `export_local_changes(Since::Version(seen))`.
    pub async fn seen_version(&self, site: SiteId) -> Result<i64> {
        let local = self.site_id();
        self.call(move |w| {
            if site == local {
                return Ok(w.conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?);
            }
            merge::seen_version(&w.conn, site)
        })
        .await
    }

    /// Like [`export_changes`](Self::export_changes), with only the changes made
    /// on this database.
    pub async fn export_local_changes(&self, since: Since) -> Result<Vec<u8>> {
        self.call(move |w| {
            read_final(w, |conn, tables| {
                export::export(conn, tables, since.version(), Scope::Local)
            })
        })
        .await
    }

    /// The next bounded part of an export: the changes in `scope` after `from`, at
    /// most `limits` of them. Keep [`Batch::next`] once the batch is delivered and
    /// ask again from it until a batch is [`complete`](Batch::complete); however
    /// many changes there are, each batch (and the memory it takes) stays bounded.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, Cursor, Scope, BatchLimits};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # struct Note { #[synced(primary_key)] id: SyncId, text: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let a = SyncDb::open_in_memory().await?;
    /// let b = SyncDb::open_in_memory().await?;
    /// for db in [&a, &b] {
    ///     db.register::<Note>().await?;
    /// }
    /// for i in 0..5 {
    ///     a.insert(&Note { id: SyncId::new(), text: format!("note {i}") }).await?;
    /// }
    /// let limits = BatchLimits { max_rows: 2, ..BatchLimits::default() };
    /// let mut cursor = Cursor::BEGINNING;
    /// loop {
    ///     let batch = a.export_batch(cursor, Scope::Local, limits).await?;
    ///     assert!(batch.rows <= 2);
    ///     b.apply_changes(&batch.payload).await?;
    ///     cursor = batch.next; // once delivered
    ///     if batch.complete {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(b.query::<Note>("", []).await?.len(), 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn export_batch(
        &self,
        from: Cursor,
        scope: Scope,
        limits: BatchLimits,
    ) -> Result<Batch> {
        self.call(move |w| {
            read_final(w, |conn, tables| {
                export::export_batch(conn, tables, &from, scope, limits)
            })
        })
        .await
    }

    /// Like [`export_batch`](Self::export_batch) for one reader (a device of a
    /// user), with row-level security: only the changes of rows `filter` lets it
    /// read, whole for rows it does not hold yet, evictions for rows it holds but
    /// may no longer read, and nothing of other rows; never the reader's own
    /// changes. What each reader holds is kept in this database (an export is
    /// a write).
    ///
    /// From [`Cursor::BEGINNING`], the export is a snapshot: it walks the rows
    /// the reader may read now (through indexes of the columns the filter reads,
    /// see [`index_filter`](Self::index_filter)) and the rows it holds, not the
    /// history, so its cost follows what the reader may read. Once the snapshot
    /// is done, the reader goes on from the version it started at; a batch is
    /// [`complete`](Batch::complete) only if nothing changed meanwhile.
    pub async fn export_filtered(
        &self,
        from: Cursor,
        reader: SiteId,
        limits: BatchLimits,
        filter: RowFilters,
    ) -> Result<Batch> {
        self.call(move |w| {
            write(w, |tx| {
                tx.set_versions();
                let tables = tracking::synced_tables(tx.conn(), true)?;
                export::export_filtered(tx.conn(), &tables, &from, reader, limits, &filter)
            })
        })
        .await
    }

    /// On a server: what a pull of device site `device` returns, in one call
    /// on the connection's thread: the changes after `from` not made by the
    /// device ([`export_batch`](Self::export_batch)), or with `filter` only
    /// those it may read ([`export_filtered`](Self::export_filtered)); and how
    /// far this replica has received the device's site id. A site id
    /// remembered as used by more than one file (a push showed it, see
    /// [`apply_push`](Self::apply_push), or a device that left it said so, see
    /// [`site_renewed`](Self::site_renewed)) is refused with
    /// [`Error::SiteReused`], so that every file using it takes a new one.
    pub async fn export_for_device(
        &self,
        device: SiteId,
        from: Cursor,
        limits: BatchLimits,
        filter: Option<RowFilters>,
    ) -> Result<(Batch, i64)> {
        self.call(move |w| {
            if let Some(message) = merge::reused_site(&w.conn, device, None)? {
                return Err(Error::SiteReused { message });
            }
            let seen = merge::seen_version(&w.conn, device)?;
            let batch = match &filter {
                None => read_final(w, |conn, tables| {
                    export::export_batch(conn, tables, &from, Scope::Except(device), limits)
                })?,
                Some(filter) => write(w, |tx| {
                    tx.set_versions();
                    let tables = tracking::synced_tables(tx.conn(), true)?;
                    export::export_filtered(tx.conn(), &tables, &from, device, limits, filter)
                })?,
            };
            Ok((batch, seen))
        })
        .await
    }

    /// Binds a device's site id to its owner (a user) the first time it is seen,
    /// and tells whether `owner` is that site's owner: a server refuses a device
    /// that presents another user's site id, which would let it pose as that
    /// user's device. This database's own site id belongs to no one.
    pub async fn claim_site(&self, site: SiteId, owner: &str) -> Result<bool> {
        if site == self.site_id() {
            return Ok(false);
        }
        let owner = owner.to_owned();
        self.call(move |w| {
            let site = site.as_bytes().as_slice();
            w.conn
                .prepare_cached(
                    "INSERT INTO _synced_site_owners (site_id, owner) VALUES (?1, ?2) \
                     ON CONFLICT DO NOTHING",
                )?
                .execute((site, &owner))?;
            let bound: String = w
                .conn
                .prepare_cached("SELECT owner FROM _synced_site_owners WHERE site_id = ?1")?
                .query_row([site], |r| r.get(0))?;
            Ok(bound == owner)
        })
        .await
    }

    /// Checks that `filter` can run on `table`: the table is registered here and
    /// the filter's SQL prepares against it (known columns, valid syntax, one
    /// expression). Anything else is [`Error::InvalidFilter`].
    pub async fn check_filter(&self, table: &str, filter: RowFilter) -> Result<()> {
        let table = table.to_owned();
        self.call(move |w| prepare_filter(&w.conn, &table, &filter).map(drop))
            .await
    }

    /// Checks `filter` as [`check_filter`](Self::check_filter) does, then indexes
    /// each column of `table` it reads (but the key's), so that a reader's first
    /// [`export_filtered`](Self::export_filtered) finds the rows it may read
    /// through them: its cost then follows those rows, not the table's size.
    /// Returns the columns indexed; indexing a column again does nothing.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, RowFilter, Value};
    /// # #[derive(Synced)]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, owner_id: String, shared: bool }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let db = SyncDb::open_in_memory().await?;
    /// db.register::<Todo>().await?;
    /// let policy = RowFilter::Where {
    ///     sql: "owner_id = ?1 OR shared = 1".into(),
    ///     params: vec![Value::Null],
    /// };
    /// assert_eq!(db.index_filter("todo", policy).await?, ["owner_id", "shared"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn index_filter(&self, table: &str, filter: RowFilter) -> Result<Vec<String>> {
        let table = table.to_owned();
        self.call(move |w| {
            let schema = prepare_filter(&w.conn, &table, &filter)?;
            let RowFilter::Where { sql, params } = &filter else {
                return Ok(Vec::new());
            };
            // SQLite's authorizer names every column a statement reads as it
            // prepares it; the guard stays on while it does.
            let read = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
            let recorder = Reads {
                table: schema.name.to_string(),
                columns: Arc::clone(&read),
            };
            guard(&mut w.conn, &w.user_sql, Some(recorder))?;
            let prepared = w
                .conn
                .prepare(&sql::row_passes(&schema, sql, params.len()))
                .map(drop);
            guard(&mut w.conn, &w.user_sql, None)?;
            prepared?;
            let read = read.lock().map(|r| r.clone()).unwrap_or_default();
            let mut indexed = Vec::new();
            for column in schema.value_columns() {
                if read.iter().any(|r| r.eq_ignore_ascii_case(&column.name)) {
                    w.conn
                        .execute_batch(&sql::filter_index(&schema, &column.name))?;
                    indexed.push(column.name.to_string());
                }
            }
            Ok(indexed)
        })
        .await
    }

    /// The tables registered here, in name order (case-insensitive): the schema a
    /// server holds for its devices.
    pub async fn schemas(&self) -> Result<Vec<TableSchema>> {
        self.call(|w| tracking::synced_tables(&w.conn, false)).await
    }

    /// A fingerprint of every registered table's descriptor (name, algorithm,
    /// columns): two databases with the same fingerprint sync the same tables the
    /// same way. A device sends it to the server, which refuses a different one.
    pub async fn schema_fingerprint(&self) -> Result<u64> {
        let schemas = self.schemas().await?;
        Ok(export::fingerprint(schemas.iter()))
    }

    /// This database's version, now and after every commit that moves it (local
    /// writes, merges): wait on [`changed`](watch::Receiver::changed) to learn of new
    /// changes without polling.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.versions.subscribe()
    }

    /// The version last published to subscribers (see
    /// [`subscribe`](Self::subscribe)): never above the database's.
    pub(crate) fn published_version(&self) -> i64 {
        *self.inner.versions.borrow()
    }
}

impl SyncDb {
    /// Takes the server's acknowledgement of a batch sent: keeps this device's
    /// state of the rows it refused (`rejected`, see [`crate::quarantine`]),
    /// gives them back the server's state (`restore`, see
    /// [`PushReport::restore`]; `exported_at` is this database's version when the
    /// batch was made) and stores the sent cursor after the batch, in one
    /// transaction, so that a refused row is never left behind nor lost. Returns
    /// what the restore did and how many rows were kept.
    pub(crate) async fn acknowledged(
        &self,
        url: &str,
        next: Cursor,
        rejected: Vec<crate::merge::Rejection>,
        restore: Vec<u8>,
        exported_at: i64,
    ) -> Result<(ApplyReport, usize)> {
        let url = url.to_owned();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.call(move |w| {
            write(w, |tx| {
                tx.set_versions();
                let kept = crate::quarantine::keep(tx.conn(), &rejected, now_ms)?;
                let report = if restore.is_empty() {
                    ApplyReport::default()
                } else {
                    merge::restore(tx.conn(), &restore, exported_at)?
                };
                tx.conn().execute(
                    "INSERT INTO _synced_remote (url, sent, received) VALUES (?1, ?2, '0') \
                     ON CONFLICT (url) DO UPDATE SET sent = excluded.sent",
                    [url, next.to_string()],
                )?;
                Ok((report, kept))
            })
        })
        .await
    }

    /// Merges a batch received from a server and stores the cursor after it, in
    /// one transaction: the cursor never runs ahead of what was applied.
    pub(crate) async fn apply_received(
        &self,
        url: &str,
        payload: Vec<u8>,
        next: Cursor,
    ) -> Result<ApplyReport> {
        let url = url.to_owned();
        self.call(move |w| {
            write(w, |tx| {
                tx.set_versions();
                let report = merge::apply(tx.conn(), &payload, merge::Source::Server)?;
                tx.conn().execute(
                    "INSERT INTO _synced_remote (url, sent, received) VALUES (?1, '0', ?2) \
                     ON CONFLICT (url) DO UPDATE SET received = excluded.received",
                    [url, next.to_string()],
                )?;
                Ok(report)
            })
        })
        .await
    }
}

/// A push refused because more than one file uses the device's site id
/// leaves the id remembered as reused (after the push's own transaction rolled
/// back), so that every file presenting it later is refused too.
/// Otherwise, the report gets the database's version after the commit.
fn remember_reused(
    worker: &mut Worker,
    device: SiteId,
    pushed: Result<PushReport>,
) -> Result<PushReport> {
    let pushed = match pushed {
        Err(Error::SiteReused { message }) => {
            merge::mark_reused(&worker.conn, device)?;
            return Err(Error::SiteReused { message });
        }
        other => other?,
    };
    let version = worker
        .conn
        .query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
    Ok(PushReport { version, ..pushed })
}

/// Deletes every synced row, clock, cursor and peer, and takes `site` as this
/// database's new site id; tables and their tracking stay.
pub(crate) fn wipe(worker: &mut Worker, site: SiteId) -> Result<()> {
    write(worker, |tx| {
        tx.set_versions();
        let conn = tx.conn();
        conn.execute("UPDATE _synced_state SET applying = 1", [])?;
        for schema in tracking::synced_tables(conn, false)? {
            conn.execute_batch(&TableSql::new(&schema).wipe)?;
        }
        conn.execute_batch(
            "DELETE FROM _synced_versions; DELETE FROM _synced_peers; \
             DELETE FROM _synced_remote; DELETE FROM _synced_sites WHERE ordinal <> 0; \
             DELETE FROM _synced_identities; DELETE FROM _synced_rejected;",
        )?;
        let site = site.as_bytes().as_slice();
        conn.execute(
            "UPDATE _synced_sites SET site_id = ?1 WHERE ordinal = 0",
            [site],
        )?;
        conn.execute(
            "UPDATE _synced_state SET site_id = ?1, applying = 0",
            [site],
        )?;
        Ok(())
    })
}

fn row_values<T: Synced>(row: &T) -> Vec<Value> {
    (0..T::SCHEMA.columns.len())
        .map(|i| row.column_value(i).into_owned())
        .collect()
}

fn key_values<T: Synced>(key: &T::Key) -> Vec<Value> {
    (0..T::SCHEMA.key_columns().count())
        .map(|i| T::key_value(key, i).into_owned())
        .collect()
}

/// The schema of `table`, once `filter` prepared against it in every query an
/// export runs it in; anything else is [`Error::InvalidFilter`].
fn prepare_filter(conn: &Connection, table: &str, filter: &RowFilter) -> Result<TableSchema> {
    let invalid = |message: String| Error::InvalidFilter {
        table: table.to_owned(),
        message,
    };
    let schemas = tracking::synced_tables(conn, false)?;
    let schema = schemas
        .into_iter()
        .find(|s| s.name.eq_ignore_ascii_case(table))
        .ok_or_else(|| invalid("no such table is registered".into()))?;
    if let RowFilter::Where { sql, params } = filter {
        for query in [
            sql::row_passes(&schema, sql, params.len()),
            sql::snapshot_rows(&schema, Some(sql), params.len()),
        ] {
            conn.prepare(&query).map_err(|e| invalid(e.to_string()))?;
        }
    }
    Ok(schema)
}

/// Runs `f` in an immediate write transaction that closes its version on commit.
pub(crate) fn write<R, E>(
    worker: &mut Worker,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
) -> Result<R, E>
where
    E: From<Error>,
{
    let outcome = write_inner(worker, f);
    if outcome.is_err() {
        // The rollback undid any version this transaction closed for another
        // connection: look again next time.
        worker.seen_data_version = None;
    }
    outcome
}

fn write_inner<R, E>(
    worker: &mut Worker,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<R, E>,
) -> Result<R, E>
where
    E: From<Error>,
{
    let tx = worker
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::from)?;
    // Changes another connection recorded get their own version, before ours.
    if open_elsewhere(&tx, &mut worker.seen_data_version)? {
        close_version(&tx)?;
    }
    worker.recorded.store(false, Ordering::Relaxed);
    let mut transaction = Transaction::new(&tx, &worker.registry, &worker.user_sql);
    let result = f(&mut transaction)?;
    // A statement that failed took its clock writes back with it; if one did, the
    // hook's flag may be stale, so ask the clocks.
    let recorded = worker.recorded.swap(false, Ordering::Relaxed)
        && !transaction.versions_set()
        && (!transaction.failed() || open_changes(&tx)?);
    if recorded {
        close_version(&tx)?;
    }
    if tx.is_autocommit() {
        return Err(E::from(Error::TransactionEnded));
    }
    let moved = recorded || transaction.versions_set();
    tx.commit().map_err(Error::from)?;
    if moved {
        worker.publish_version()?;
    }
    Ok(result)
}

/// Runs `read` on one snapshot of the tracked tables in which every version is
/// final: if another connection left changes in an open version, it is closed
/// first, inside the same (write) transaction. A table whose tracking is off is
/// left out: its rows may have changed in ways its clock does not know.
fn read_final<R>(
    worker: &mut Worker,
    read: impl Fn(&Connection, &[TableSchema]) -> Result<R>,
) -> Result<R> {
    let read = |conn: &Connection| read(conn, &tracking::synced_tables(conn, true)?);
    let tx = worker.conn.transaction()?;
    if !open_elsewhere(&tx, &mut worker.seen_data_version)? {
        let result = read(&tx)?;
        tx.commit()?;
        return Ok(result);
    }
    drop(tx);
    worker.seen_data_version = None;
    write(worker, |tx| read(tx.conn()))
}

fn close_version(conn: &Connection) -> Result<()> {
    conn.prepare_cached(sql::CLOSE_VERSION)?.execute([])?;
    Ok(())
}

/// Whether another connection recorded changes that no version closed yet. Probes
/// the clocks only when another connection committed since the last look.
fn open_elsewhere(conn: &Connection, seen: &mut Option<i64>) -> Result<bool> {
    let now: i64 = conn.query_row(sql::DATA_VERSION, [], |r| r.get(0))?;
    if *seen == Some(now) {
        return Ok(false);
    }
    *seen = Some(now);
    open_changes(conn)
}

/// Whether any clock holds a change stamped with the open version.
fn open_changes(conn: &Connection) -> Result<bool> {
    for schema in tracking::synced_tables(conn, false)? {
        let open: bool = conn.query_row(&TableSql::new(&schema).open_changes, [], |r| r.get(0))?;
        if open {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Why an empty file is not opened as a new database (see [`Options::create`]).
const EMPTY_FILE: &str = "the file is empty (0 bytes): its database was lost, or its creation was \
                          cut short before anything was written";

/// Why a SQLite database without the runtime's tables is not opened as a Synced
/// one (see [`Options::create`]).
const NOT_A_REPLICA: &str =
    "it is a SQLite database but not a Synced one: it has no `_synced_state` table";

/// The columns of `table` the statements prepared under [`guard`] read.
struct Reads {
    table: String,
    columns: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Installs the connection's authorizer: while `user_sql` is set (the app's SQL
/// runs), it refuses transaction control, which would end the runtime's
/// transaction halfway; with `reads`, it also records the columns of its table
/// that statements read. It is the connection's only authorizer: whatever needs
/// another installs this one again with what it needs.
fn guard(conn: &mut Connection, user_sql: &Arc<tx::AppSql>, reads: Option<Reads>) -> Result<()> {
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    let refuse = Arc::clone(user_sql);
    conn.authorizer(Some(move |context: AuthContext<'_>| {
        if let (
            Some(reads),
            AuthAction::Read {
                table_name,
                column_name,
            },
        ) = (&reads, &context.action)
            && table_name.eq_ignore_ascii_case(&reads.table)
            && let Ok(mut columns) = reads.columns.lock()
        {
            columns.push((*column_name).to_owned());
        }
        let app = refuse.running.load(Ordering::Relaxed);
        if app {
            note_app_write(&refuse, &context.action);
        }
        let control = matches!(
            context.action,
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
        );
        if control && app {
            Authorization::Deny
        } else {
            Authorization::Allow
        }
    }))?;
    Ok(())
}

/// What SQLite's quick check reports as wrong with the database: `None` when it
/// finds nothing.
/// Records what the app's statement being compiled writes (see
/// [`tx::AppSql::compiled`]), and moves the epoch of its write sets when it
/// changes the schema.
fn note_app_write(app: &tx::AppSql, action: &rusqlite::hooks::AuthAction<'_>) {
    use rusqlite::hooks::AuthAction;
    let write = match *action {
        AuthAction::Insert { table_name } => {
            Some(tx::Write::Insert(table_name.to_ascii_lowercase()))
        }
        AuthAction::Update {
            table_name,
            column_name,
        } => Some(tx::Write::Update(
            table_name.to_ascii_lowercase(),
            column_name.to_ascii_lowercase(),
        )),
        AuthAction::Read { .. }
        | AuthAction::Select
        | AuthAction::Delete { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. } => None,
        // Everything else may change what a statement's triggers write.
        _ => {
            app.epoch.fetch_add(1, Ordering::Relaxed);
            None
        }
    };
    if let (Some(write), Ok(mut compiled)) = (write, app.compiled.lock())
        && let Some(writes) = compiled.as_mut()
    {
        writes.push(write);
    }
}

fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let mut rows = Vec::new();
    for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
        match row {
            Ok(row) => rows.push(row),
            // On some damage SQLite lists problems, then fails: they say more.
            Err(_) if !rows.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    if rows == ["ok"] {
        return Ok(None);
    }
    // A line naming the database comes before its problems.
    let problems: Vec<&String> = rows
        .iter()
        .filter(|row| !row.starts_with("*** in database"))
        .collect();
    Ok(Some(match problems.as_slice() {
        [] => "quick_check failed without naming a problem".to_owned(),
        [only] => format!("quick_check found: {only}"),
        // SQLite stops at 100.
        [first, ..] => format!(
            "quick_check found {} problems{}, the first: {first}",
            problems.len(),
            if problems.len() >= 100 {
                " or more"
            } else {
                ""
            }
        ),
    }))
}

fn open_connection(
    path: Option<&Path>,
    options: &Options,
    versions: Arc<watch::Sender<i64>>,
) -> Result<(Worker, SiteId)> {
    let file = path.map(Path::to_path_buf).unwrap_or_default();
    let damaged = |reason: String| Error::Damaged {
        path: file.clone(),
        reason,
    };
    if let Some(path) = path
        && !options.create
        && std::fs::metadata(path).is_ok_and(|m| m.len() == 0)
    {
        // SQLite would take it for a new database and write one into it.
        return Err(damaged(EMPTY_FILE.into()));
    }
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if options.create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = match path {
        Some(path) => Connection::open_with_flags(path, flags),
        None => Connection::open_in_memory(),
    }
    .map_err(|source| Error::Open {
        path: file.clone(),
        source: source.into(),
    })?;
    let at_open = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => Error::NotADatabase { path: file.clone() },
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => damaged(e.to_string()),
        _ => Error::from(e),
    };
    let synchronous = match options.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    // Settings of this connection only: nothing is read or written yet.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA cache_size = -{}; PRAGMA busy_timeout = {};",
        options.cache_size_kib, options.busy_timeout_ms
    ))
    .map_err(at_open)?;
    // The first read: SQLite checks the header of the file (its magic, page size,
    // and page count against the file's size) and refuses a file that fails.
    let replica: bool = conn
        .query_row(sql::IS_REPLICA, [], |r| r.get(0))
        .map_err(at_open)?;
    if !options.create && !replica {
        return Err(damaged(NOT_A_REPLICA.into()));
    }
    if options.quick_check {
        quick_check(&conn)
            .map_err(at_open)?
            .map_or(Ok(()), |problems| Err(damaged(problems)))?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(at_open)?;
    conn.set_prepared_statement_cache_capacity(128);
    if replica {
        format::upgrade(&mut conn, &file)?;
    } else {
        format::create(&mut conn, &file)?;
    }
    conn.execute(
        "INSERT INTO _synced_state (id, site_id, db_version, applying) VALUES (0, ?1, 0, 0) \
         ON CONFLICT DO NOTHING",
        [SiteId::random()
            .map_err(|e| Error::NoRandomness(e.to_string()))?
            .as_bytes()
            .as_slice()],
    )?;
    conn.execute_batch(
        "INSERT INTO _synced_sites (ordinal, site_id) SELECT 0, site_id FROM _synced_state
           WHERE true ON CONFLICT DO NOTHING;",
    )?;
    let bytes: Vec<u8> = conn.query_row("SELECT site_id FROM _synced_state", [], |r| r.get(0))?;
    let site_id = <[u8; 16]>::try_from(bytes.as_slice())
        .map(SiteId::from_bytes)
        .map_err(|_| Error::SchemaMismatch {
            table: "_synced_state".into(),
            details: format!("the stored site id has {} bytes instead of 16", bytes.len()),
        })?;
    let user_sql = Arc::new(tx::AppSql::default());
    guard(&mut conn, &user_sql, None)?;
    let recorded = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&recorded);
    let app = Arc::clone(&user_sql);
    conn.update_hook(Some(
        move |action: rusqlite::hooks::Action, _: &str, table: &str, rowid: i64| {
            if table.starts_with(sql::CLOCK_PREFIX) {
                flag.store(true, Ordering::Relaxed);
            }
            // A row the app's checked SQL inserts holds a key it wrote.
            if action == rusqlite::hooks::Action::SQLITE_INSERT
                && app.checking.load(Ordering::Relaxed)
                && let Ok(mut keys) = app.new_keys.lock()
            {
                keys.push((table.to_owned(), rowid));
            }
        },
    ))?;
    Ok((
        Worker {
            conn,
            registry: Registry::new(),
            recorded,
            user_sql,
            seen_data_version: None,
            versions,
        },
        site_id,
    ))
}
