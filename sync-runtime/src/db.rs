//! [`SyncDb`]: the handle apps use. Each method is one job on the connection's
//! thread (see [`crate::worker`]), done by the module that owns its concept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(feature = "http")]
use std::sync::RwLock;

use tokio::sync::watch;

use crate::change::{self, Change};
#[cfg(feature = "http")]
use crate::client::RemoteState;
use crate::error::{Error, Result};
use crate::export::{self, Batch, BatchLimits, Cursor, Scope, Since};
use crate::id::SiteId;
use crate::identity;
use crate::merge::{self, ApplyReport};
use crate::model::{Patch, Synced};
use crate::open::Options;
use crate::quarantine::{self, Rejected};
use crate::schema::TableSchema;
use crate::site;
use crate::sql;
use crate::tracking;
use crate::tx::{self, Registered, Transaction};
use crate::value::{Domain, Value};
use crate::worker::{Handle, Worker, read_final, write};

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
    handle: Handle,
    /// The sync server, once set.
    #[cfg(feature = "http")]
    remote: RwLock<Option<Arc<RemoteState>>>,
}

impl std::fmt::Debug for SyncDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncDb")
            .field("path", &self.path())
            .field("site_id", &self.site_id())
            .finish_non_exhaustive()
    }
}

impl SyncDb {
    /// Opens (or creates) a database file with default [`Options`].
    ///
    /// A new file gets a fresh site id; an existing one keeps its site id, versions,
    /// registered tables and tracking. A file that is not a SQLite database gives
    /// [`Error::NotADatabase`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Options::default()).await
    }

    /// Opens (or, unless [`Options::create`](field@Options::create) says not
    /// to, creates) a database file. A file that SQLite finds damaged gives
    /// [`Error::Damaged`].
    pub async fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Self::start(Some(path), options).await
    }

    /// Opens a private in-memory database (gone when the last handle is dropped).
    pub async fn open_in_memory() -> Result<Self> {
        Self::start(None, Options::default()).await
    }

    async fn start(path: Option<PathBuf>, options: Options) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                handle: Handle::open(path, options).await?,
                #[cfg(feature = "http")]
                remote: RwLock::new(None),
            }),
        })
    }

    /// The way to the connection's thread.
    pub(crate) fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// Runs `f` on the connection's thread (see [`Handle::call`]).
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Worker) -> Result<R> + Send + 'static,
    {
        self.inner.handle.call(f).await
    }

    /// This database's site id: created with the file, kept for its whole life
    /// (only [`logout`](Self::logout) gives it a new one).
    pub fn site_id(&self) -> SiteId {
        self.inner.handle.site_ids().current
    }

    #[cfg(feature = "http")]
    pub(crate) fn remote_state(&self) -> Option<Arc<RemoteState>> {
        self.inner
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    #[cfg(feature = "http")]
    pub(crate) fn set_remote_state(&self, state: Arc<RemoteState>) {
        *self.inner.remote.write().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// The file this database lives in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.inner.handle.path()
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
        self.call(move |w| register(w, schema, Some(source), T::KEY_DOMAINS))
            .await
    }

    /// [`register`](Self::register) for a descriptor built at run time.
    pub async fn register_schema(&self, schema: TableSchema) -> Result<()> {
        self.call(move |w| register(w, schema, None, &[])).await
    }

    /// Stops recording changes to `T`'s table (its rows stay). Writes made while
    /// tracking is off are not synced, except that
    /// [`enable_tracking`](Self::enable_tracking) records rows that appeared or
    /// disappeared meanwhile.
    pub async fn disable_tracking<T: Synced>(&self) -> Result<()> {
        let name = T::SCHEMA.name.to_string();
        self.call(move |w| write(w, |tx| tracking::set_tracking(tx.conn(), &name, false)))
            .await
    }

    /// Resumes recording changes to `T`'s table. Rows inserted while tracking was off
    /// are recorded as inserted, rows deleted meanwhile as deleted; updates made
    /// meanwhile to rows that existed before are not detected.
    pub async fn enable_tracking<T: Synced>(&self) -> Result<()> {
        let name = T::SCHEMA.name.to_string();
        self.call(move |w| write(w, |tx| tracking::set_tracking(tx.conn(), &name, true)))
            .await
    }

    /// Removes all sync metadata of `T`'s table (triggers, clock table, registration)
    /// and leaves the table and its rows as plain SQLite data.
    pub async fn drop_tracking<T: Synced>(&self) -> Result<()> {
        let name = T::SCHEMA.name.to_string();
        self.call(move |w| {
            write(w, |tx| tracking::drop_tracking(tx.conn(), &name))?;
            tx::note_synced_tables(&w.conn, &w.user_sql)?;
            w.set_registered(name, None);
            Ok(())
        })
        .await
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
        self.inner
            .handle
            .call_raw(move |w| write(w, f))
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

    /// Changes the row with `key` in its own transaction: reads it as it is
    /// now (with every edit merged so far), lets `change` set what the user
    /// changed, and writes the columns whose value `change` changed, and only
    /// those. Returns the row as changed, or `None` if there is no such row
    /// (nothing is written). A change of the key is refused with
    /// [`Error::KeyChanged`].
    ///
    /// This is how a form saves: another device's edit of another column,
    /// merged while the form was open, stays, because that column is not
    /// written.
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
    /// db.insert(&Todo { id, title: "milk".into(), done: false }).await?;
    /// let form = db.get::<Todo>(&id).await?.unwrap();
    /// // Meanwhile another device marks it done, and the edit is merged here.
    /// # db.execute_raw("UPDATE todos SET done = 1", sync_runtime::params![]).await?;
    /// let title = "oat milk".to_owned();
    /// let saved = db.modify::<Todo, _>(&form.id, move |t| t.title = title).await?;
    /// assert_eq!(saved, Some(Todo { id, title: "oat milk".into(), done: true }));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn modify<T, F>(&self, key: &T::Key, change: F) -> Result<Option<T>>
    where
        T: Synced,
        F: FnOnce(&mut T) + Send + 'static,
    {
        let key = key_values::<T>(key);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                tx::modify(tx.conn(), table, |i| key[i].as_ref(), change)
            })
        })
        .await
    }

    /// Writes the columns `patch` sets (its fields that are `Some`) into the row
    /// with `key`, in its own transaction, without reading the row first: only
    /// those columns are written and recorded, so another device's edit of any
    /// other column stays. Returns whether there is such a row (nothing is
    /// written if there is none). The patch type is generated by
    /// `#[derive(Synced)]` (see [`Patch`](crate::Patch)), so a column's name
    /// and type are checked at compile time.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId};
    /// #[derive(Synced, Debug, Clone, PartialEq)]
    /// #[synced(table = "todos")]
    /// struct Todo {
    ///     #[synced(primary_key)]
    ///     id: SyncId,
    ///     title: String,
    ///     done: bool,
    ///     note: Option<String>,
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<Todo>().await?;
    /// let id = SyncId::new();
    /// db.insert(&Todo { id, title: "milk".into(), done: false, note: Some("oat".into()) }).await?;
    /// let done = TodoPatch { done: Some(true), note: Some(None), ..TodoPatch::default() };
    /// assert!(db.patch(&id, done).await?);
    /// let todo = db.get::<Todo>(&id).await?.unwrap();
    /// assert_eq!((todo.title.as_str(), todo.done, todo.note), ("milk", true, None));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn patch<P: Patch>(&self, key: &<P::Row as Synced>::Key, patch: P) -> Result<bool> {
        let key = key_values::<P::Row>(key);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), <P::Row as Synced>::SCHEMA)?;
                tx::write_columns(tx.conn(), table, |i| key[i].as_ref(), &patch.values())
            })
        })
        .await
    }

    /// Inserts `row` in its own transaction, or, if a row with its key exists,
    /// writes every column of it as [`update`](Self::update) does; whether it
    /// inserted.
    pub async fn upsert<T: Synced>(&self, row: &T) -> Result<bool> {
        let values = row_values(row);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                tx::upsert(tx.conn(), table, |i| values[i].as_ref())
            })
        })
        .await
    }

    /// Inserts `row` in its own transaction unless a row with its key exists,
    /// which stays as it is; whether it inserted. Creating a row that several
    /// devices may create (a settings row with a fixed key) this way never
    /// overwrites the one already here.
    pub async fn insert_if_absent<T: Synced>(&self, row: &T) -> Result<bool> {
        let values = row_values(row);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                tx::insert_if_absent(tx.conn(), table, |i| values[i].as_ref())
            })
        })
        .await
    }

    /// Replaces the row with `row`'s key by `row`, in its own transaction:
    /// every column gets `row`'s value; only columns whose value changed are
    /// recorded. [`Error::NotFound`] if no such row.
    ///
    /// Every column gets `row`'s value, including columns the app did not mean to
    /// change. A `row` read before another device's edit was merged here still
    /// holds the old value of the column that edit changed: writing it back
    /// records a new change that undoes that edit, and the undo wins everywhere.
    /// To save what a user changed, use [`modify`](Self::modify), which writes
    /// only the changed columns. To replace a row on purpose, read, change and
    /// write it in one [`transaction`](Self::transaction), so that no merge can
    /// land in between:
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
        self.handle()
            .read(move |conn, registry, _| {
                let table = tx::table_of(registry, T::SCHEMA)?;
                tx::get(conn, table, |i| key[i].as_ref())
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
        self.handle()
            .read(move |conn, registry, user_sql| {
                let table = tx::table_of(registry, T::SCHEMA)?;
                tx::query(conn, user_sql, table, &filter, &params)
            })
            .await
    }

    /// Runs any read-only SQL (joins, aggregates, `GROUP BY`, CTEs, reads of
    /// several tables) with `?N` parameters, and makes each row a `R` (see
    /// [`FromRow`](crate::FromRow)). A statement that writes is refused with
    /// [`Error::NotReadOnly`] before it runs.
    ///
    /// ```
    /// # use sync_runtime::{FromRow, SyncDb, SyncId, Synced, params};
    /// # #[derive(Synced)]
    /// # #[synced(table = "lists")]
    /// # struct List { #[synced(primary_key)] id: SyncId, name: String }
    /// # #[derive(Synced)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, list: Option<SyncId>, done: bool }
    /// #[derive(FromRow, Debug, PartialEq)]
    /// struct Progress {
    ///     name: String,
    ///     open: i64,
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<List>().await?;
    /// # db.register::<Todo>().await?;
    /// # let list = SyncId::new();
    /// # db.insert(&List { id: list, name: "home".into() }).await?;
    /// # db.insert(&Todo { id: SyncId::new(), list: Some(list), done: false }).await?;
    /// let progress: Vec<Progress> = db
    ///     .read(
    ///         "SELECT l.name, count(*) FILTER (WHERE NOT t.done) AS open \
    ///          FROM lists l JOIN todos t ON t.list = l.id GROUP BY l.id ORDER BY l.name",
    ///         params![],
    ///     )
    ///     .await?;
    /// assert_eq!(progress, [Progress { name: "home".into(), open: 1 }]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read<R: crate::FromRow>(
        &self,
        sql: &str,
        params: impl Into<Vec<Value>>,
    ) -> Result<Vec<R>> {
        self.read_with(sql, params, R::from_row).await
    }

    /// [`read`](Self::read) with a closure that makes each row a value.
    ///
    /// ```
    /// # use sync_runtime::{SyncDb, params};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// let sums = db
    ///     .read_with("SELECT 1 + 1 AS two, 'x' AS x", params![], |row| {
    ///         Ok((row.get::<i64>("two")?, row.get_at::<String>(1)?))
    ///     })
    ///     .await?;
    /// assert_eq!(sums, [(2, "x".to_owned())]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_with<R, F>(
        &self,
        sql: &str,
        params: impl Into<Vec<Value>>,
        map: F,
    ) -> Result<Vec<R>>
    where
        R: Send + 'static,
        F: FnMut(&crate::ResultRow<'_>) -> Result<R> + Send + 'static,
    {
        let (sql, params) = (sql.to_owned(), params.into());
        self.handle()
            .read(move |conn, _, user_sql| crate::read::read(conn, user_sql, &sql, &params, map))
            .await
    }

    /// [`query`](Self::query) that reads what it can: a row the struct cannot
    /// read (a value an app version with more enum variants wrote, say) is set
    /// aside with its [`Error::Decode`], which names its table, key and
    /// column, instead of failing the whole query.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, SyncValue, params};
    /// #[derive(SyncValue, Debug, Clone, Copy, PartialEq)]
    /// enum Status { Open, Done }
    ///
    /// #[derive(Synced, Debug, Clone, PartialEq)]
    /// #[synced(table = "tasks")]
    /// struct Task { #[synced(primary_key)] id: SyncId, #[synced(default = "Open")] status: Status }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<Task>().await?;
    /// db.insert(&Task { id: SyncId::new(), status: Status::Done }).await?;
    /// // A newer app version's status.
    /// db.execute_raw("INSERT INTO tasks (id, status) VALUES (?1, 'Archived')", params![SyncId::new()]).await?;
    /// let read = db.query_readable::<Task>("", params![]).await?;
    /// assert_eq!(read.rows.len(), 1);
    /// assert_eq!(read.unreadable.len(), 1);
    /// assert!(db.query::<Task>("", params![]).await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn query_readable<T: Synced>(
        &self,
        filter: &str,
        params: impl Into<Vec<Value>>,
    ) -> Result<tx::Readable<T>> {
        let (filter, params) = (filter.to_owned(), params.into());
        self.handle()
            .read(move |conn, registry, user_sql| {
                let table = tx::table_of(registry, T::SCHEMA)?;
                tx::query_rows(conn, user_sql, table, &filter, &params, true)
            })
            .await
    }

    /// Applies the app's own schema migrations that this file has not
    /// recorded yet, in order, in one write transaction; returns how many it
    /// applied. They are for what is not synced: indexes (on synced tables
    /// too), views, local tables. Synced tables change through their structs
    /// (see [`register`](Self::register)).
    ///
    /// `migrations` is the app's whole history, oldest first: each script is
    /// applied once, statement by statement as raw SQL (writes to synced tables
    /// are tracked), and recorded with its text in the file (not in `PRAGMA
    /// user_version`, which stays the app's). [`Error::Migration`] names the
    /// migration that cannot be applied, and nothing is: an applied script
    /// whose text changed, a file that a newer app version migrated further, a
    /// statement that fails, or a migration that changes a synced table's
    /// columns.
    ///
    /// ```
    /// # use sync_runtime::{SyncDb, Synced, SyncId};
    /// # #[derive(Synced)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String, done: bool }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let db = SyncDb::open_in_memory().await?;
    /// db.register::<Todo>().await?;
    /// const MIGRATIONS: &[&str] = &[
    ///     "CREATE INDEX todos_by_title ON todos (title)",
    ///     "CREATE TABLE drafts (id INTEGER PRIMARY KEY, text TEXT);
    ///      CREATE VIEW open_todos AS SELECT * FROM todos WHERE NOT done",
    /// ];
    /// assert_eq!(db.migrate(MIGRATIONS).await?, 2);
    /// assert_eq!(db.migrate(MIGRATIONS).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate(&self, migrations: &[&str]) -> Result<usize> {
        let scripts: Vec<String> = migrations.iter().map(|s| (*s).to_owned()).collect();
        self.call(move |w| write(w, |tx| crate::migrate::run(tx, &scripts)))
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
            w.conn.execute_batch(sql::VACUUM)?;
            w.conn.execute(sql::COUNT_VACUUM, [])?;
            Ok(w.conn.execute_batch(sql::CHECKPOINT)?)
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
                identity::renew(self.handle(), true).await?;
                merge(payload).await
            }
            other => other,
        }
    }

    /// Merges a batch this database's server sent it (a pull's answer, as
    /// [`sync`](Self::sync) does with one), for an app that carries batches
    /// itself: like [`apply_changes`](Self::apply_changes), but a change in
    /// this database's own name that comes back (a row it wrote, sent whole
    /// when its user may read it again) keeps the version it was made at.
    /// One it did not make shows that another file writes under its site id:
    /// [`Error::SiteReused`], and nothing is applied (the app then takes a
    /// new site id, see [`new_site_id`](Self::new_site_id)).
    pub async fn apply_server_batch(&self, payload: &[u8]) -> Result<ApplyReport> {
        let payload = payload.to_vec();
        self.call(move |w| {
            write(w, |tx| {
                tx.set_versions();
                merge::apply(tx.conn(), &payload, merge::Source::Server)
            })
        })
        .await
    }

    /// Takes back a server's state of rows it refused from a push of this
    /// database's (a [`PushReport::restore`](crate::server::PushReport::restore), as [`sync`](Self::sync) does with
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
            site::seen_version(&w.conn, site)
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
    /// let limits = BatchLimits::default().max_rows(2);
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
        Ok(crate::schema::fingerprint(schemas.iter()))
    }

    /// This database's version, now and after every commit that moves it (local
    /// writes, merges): wait on [`changed`](watch::Receiver::changed) to learn of new
    /// changes without polling.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.handle.subscribe()
    }
}

impl SyncDb {
    /// Gives this database a new site id, keeping its rows and their history.
    ///
    /// Call it on a file that is a copy of another replica's (two files must
    /// never sync under one site id) or that was restored from a backup while
    /// its device kept writing after the backup was taken. Returns the new id.
    /// The versions it made under its earlier id stay that id's; the changes
    /// it made and no server acknowledged yet are made again under the new id,
    /// at one new version, so that they are sent (see the book's "Copies and
    /// backups" in "Syncing through a server").
    pub async fn new_site_id(&self) -> Result<SiteId> {
        identity::renew(self.handle(), false).await
    }

    /// The writes to `T`'s table that the server refused, oldest first, each with
    /// the values this device had written (see [`Rejected`]). They stay until
    /// [`resubmit`](Self::resubmit) or [`discard`](Self::discard), across syncs
    /// and reopenings.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let db = SyncDb::open_in_memory().await?;
    /// db.register::<Todo>().await?;
    /// for refused in db.rejected::<Todo>().await? {
    ///     println!("{:?} was refused: {}", refused.row, refused.reason);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rejected<T: Synced>(&self) -> Result<Vec<Rejected<T>>> {
        self.call(|w| {
            tx::table_of(&w.registry, T::SCHEMA)?;
            quarantine::list::<T>(&w.conn)
        })
        .await
    }

    /// Writes a refused row again, as a new change of this device: the values it
    /// had (inserting the row if it is gone here, updating it otherwise), or its
    /// delete; the next sync sends it. The entry is removed; if the server
    /// refuses the write again, a new one takes its place. Returns whether there
    /// was an entry for `key`.
    pub async fn resubmit<T: Synced>(&self, key: &T::Key) -> Result<bool> {
        let pk = key_values::<T>(key);
        self.call(move |w| {
            write(w, |tx| {
                let table = tx::table_of(tx.registry(), T::SCHEMA)?;
                quarantine::resubmit(tx.conn(), table, &pk)
            })
        })
        .await
    }

    /// Drops the entry of a refused row, keeping the server's state of it.
    /// Returns whether there was one.
    pub async fn discard<T: Synced>(&self, key: &T::Key) -> Result<bool> {
        let pk = key_values::<T>(key);
        self.call(move |w| {
            let table = tx::table_of(&w.registry, T::SCHEMA)?;
            Ok(quarantine::take(&w.conn, &table.schema, &pk)?.is_some())
        })
        .await
    }
}

/// Registers `schema` for this handle: checks it, creates or checks its
/// table and metadata, and keeps it for the typed API.
fn register(
    worker: &mut Worker,
    schema: TableSchema,
    source: Option<usize>,
    key_domains: &'static [Domain],
) -> Result<()> {
    schema.validate()?;
    let table = Registered::new(schema, source, key_domains);
    write(worker, |tx| tracking::register(tx.conn(), &table))?;
    tx::note_synced_tables(&worker.conn, &worker.user_sql)?;
    worker.set_registered(table.schema.name.to_string(), Some(table));
    Ok(())
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
