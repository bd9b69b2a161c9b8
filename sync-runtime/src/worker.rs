//! The thread that owns a database's connection, and the transaction protocol
//! every job on it runs in: versions close on commit, and reads see only final
//! versions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{broadcast, oneshot, watch};

use crate::error::{Error, Result};
use crate::events::{self, ChangeEvents, Changed};
use crate::id::SiteId;
use crate::job::{Caller, Reply, reply};
use crate::open::{self, Options};
use crate::pool::ReadPool;
use crate::schema::TableSchema;
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::tx::{self, Registered, Registry, Transaction};

/// The way to a database's connection: jobs go to its thread, and what a
/// request needs without waiting on that thread (site ids, the version last
/// published) is kept here.
pub(crate) struct Handle {
    jobs: mpsc::Sender<Job>,
    /// This database's site id and the one it had before (and whether it left
    /// that one because another file used it too), kept here so that a request
    /// to a server reads them without waiting on the connection's thread.
    /// Change only when the site id does (see [`crate::identity`]).
    site_ids: RwLock<SiteIds>,
    path: Option<PathBuf>,
    versions: Arc<watch::Sender<i64>>,
    /// The read connections of a file (see [`Options::read_connections`]).
    reads: Option<ReadPool>,
    /// The tables registered, as of the last registration, for reads on the
    /// read connections.
    registry: Shared<Registry>,
    /// What each commit changed (see [`Changed`]).
    events: broadcast::Sender<Arc<Changed>>,
    /// The write connection's app-SQL flags: once the app made a temporary
    /// object there, reads stay on that connection, the only one that sees it.
    app_sql: Arc<tx::AppSql>,
}

/// A value the worker thread replaces and other threads read.
type Shared<T> = Arc<RwLock<Arc<T>>>;

/// The connection and what this handle registered, owned by the worker thread.
pub(crate) struct Worker {
    pub(crate) conn: Connection,
    /// Change with [`set_registered`](Self::set_registered).
    pub(crate) registry: Registry,
    /// A copy of `registry` for the read connections.
    shared_registry: Shared<Registry>,
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
    /// The version a commit moved to, published once the job that committed
    /// it has answered its caller (see [`publish_staged`](Self::publish_staged)).
    staged: Option<i64>,
    /// The tables the open transaction wrote (see [`open::Written`]).
    written: open::Written,
    /// What each commit changed, for subscribers.
    events: broadcast::Sender<Arc<Changed>>,
    /// The tables (lowercase) with triggers of the app's own, whose writes
    /// the update hook may not see all of; `None` until read, and again after
    /// the app's SQL ran (it may have changed them).
    app_triggers: Option<std::collections::HashSet<String>>,
}

impl Worker {
    /// After a commit: publishes the version if it `moved` from `before`, and
    /// what the commit wrote to the change events' subscribers, if any.
    fn committed(&mut self, moved: bool, before: i64) -> Result<()> {
        if moved {
            self.staged = Some(self.current_version()?);
        }
        let written = std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()));
        let evicted = crate::merge::take_evicted();
        let app_wrote = self.user_sql.ran.load(Ordering::Relaxed);
        if app_wrote {
            // It may have created or dropped triggers: read them again when
            // an event needs them.
            self.app_triggers = None;
        }
        let nothing = written.is_empty() && evicted.is_empty() && !app_wrote;
        if nothing || self.events.receiver_count() == 0 {
            return Ok(());
        }
        let version = self.staged.unwrap_or(*self.versions.borrow());
        let app_triggers = match self.app_triggers.take() {
            Some(tables) => tables,
            None => events::tables_with_app_triggers(&self.conn).unwrap_or_default(),
        };
        // The app's triggers are the app's SQL too, whoever fires them.
        let triggered = written
            .iter()
            .any(|t| app_triggers.contains(&t.to_ascii_lowercase()));
        self.app_triggers = Some(app_triggers);
        let complete = !app_wrote && !triggered;
        let event = events::describe(&self.conn, written, evicted, before, version, complete)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a change event lists no table: reading what changed failed");
                Changed::unknown(version)
            });
        let _ = self.events.send(Arc::new(event));
        Ok(())
    }

    /// Forgets what an earlier statement outside a transaction of ours (or a
    /// rolled-back one) wrote, before a transaction starts.
    fn starting(&self) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        crate::merge::take_evicted();
        self.user_sql.ran.store(false, Ordering::Relaxed);
    }

    /// Registers `table` under `name`, or forgets `name` without one.
    pub(crate) fn set_registered(&mut self, name: String, table: Option<Arc<Registered>>) {
        match table {
            Some(table) => self.registry.insert(name, table),
            None => self.registry.remove(&name),
        };
        *self
            .shared_registry
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(self.registry.clone());
    }

    fn current_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?)
    }

    /// Tells subscribers the database's current version.
    fn publish_version(&self) -> Result<()> {
        self.publish(self.current_version()?);
        Ok(())
    }

    fn publish(&self, version: i64) {
        self.versions.send_if_modified(|seen| {
            let moved = *seen != version;
            *seen = version;
            moved
        });
    }

    /// Tells subscribers the version the last job's commits moved to, after
    /// the job answered: the caller that committed (a server's push) is woken
    /// before everyone waiting for the version (a server's long-polls, which
    /// may be thousands). The caller publishes it too, should it go on first
    /// (see [`Handle::call_raw`]).
    fn publish_staged(&mut self) {
        if let Some(version) = self.staged.take() {
            self.publish(version);
        }
    }
}

/// Tells `versions`' subscribers of `version` if it is later than the one
/// they know; never moves them back.
pub(crate) fn publish_later(versions: &watch::Sender<i64>, version: i64) {
    versions.send_if_modified(|seen| {
        let later = version > *seen;
        if later {
            *seen = version;
        }
        later
    });
}

/// A database's site id and the one it had before (see `Handle::site_ids`).
#[derive(Clone, Copy)]
pub(crate) struct SiteIds {
    pub(crate) current: SiteId,
    #[cfg_attr(
        not(feature = "http"),
        allow(dead_code, reason = "used by the sync client")
    )]
    pub(crate) previous: Option<(SiteId, bool)>,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

impl Handle {
    /// Opens the database at `path` (in memory without one) on a new thread.
    pub(crate) async fn open(path: Option<PathBuf>, options: Options) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = oneshot::channel();
        let thread_path = path.clone();
        let versions = Arc::new(watch::Sender::new(0));
        let thread_versions = Arc::clone(&versions);
        let registry = Shared::default();
        let thread_registry = Arc::clone(&registry);
        let events = broadcast::Sender::new(events::KEPT_EVENTS);
        let thread_events = events.clone();
        let settings = options.settings();
        let read_connections = options.read_connections;
        thread::Builder::new()
            .name("synced-sqlite".into())
            .spawn(move || {
                let opened = open::open(thread_path.as_deref(), &options);
                let mut worker = match opened {
                    Ok(opened) => {
                        let worker = Worker {
                            conn: opened.conn,
                            registry: Registry::new(),
                            shared_registry: thread_registry,
                            recorded: opened.recorded,
                            user_sql: opened.user_sql,
                            seen_data_version: None,
                            versions: thread_versions,
                            written: opened.written,
                            events: thread_events,
                            app_triggers: None,
                            staged: None,
                        };
                        let ids = SiteIds {
                            current: opened.site_id,
                            previous: opened.previous,
                        };
                        let app_sql = Arc::clone(&worker.user_sql);
                        let _ = ready.send(worker.publish_version().map(|()| (ids, app_sql)));
                        worker
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    job(&mut worker);
                    worker.publish_staged();
                }
            })
            .map_err(|_| Error::Closed)?;
        let (site_ids, app_sql) = opened.await.map_err(|_| Error::Closed)??;
        let reads = match &path {
            Some(path) if read_connections > 0 && !open::in_memory(path) => {
                Some(ReadPool::new(path, settings, read_connections))
            }
            _ => None,
        };
        Ok(Self {
            jobs,
            site_ids: RwLock::new(site_ids),
            path,
            versions,
            reads,
            registry,
            events,
            app_sql,
        })
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

    /// Like [`call`](Self::call); `Err(())` when the thread is gone.
    pub(crate) async fn call_raw<R, F>(&self, f: F) -> Result<R, ()>
    where
        R: Send + 'static,
        F: FnOnce(&mut Worker) -> R + Send + 'static,
    {
        let caller = Caller::here();
        let (answer, result) = oneshot::channel::<Reply<(R, Option<i64>)>>();
        let job: Job = Box::new(move |worker| {
            let _ = answer.send(caller.run(|| (f(worker), worker.staged)));
        });
        self.jobs.send(job).map_err(|_| ())?;
        let (value, committed) = reply(result).await?;
        // The thread publishes it right after answering, but may be preempted
        // in between: what returned is published before the caller goes on
        // (a pull that a server starts after a push was acknowledged reads
        // the version the push made).
        if let Some(version) = committed {
            publish_later(&self.versions, version);
        }
        Ok(value)
    }

    /// Runs `read` on a read connection (on the write connection in memory,
    /// without read connections, or where none can be opened) with the
    /// tables registered, as the app's SQL; it sees every commit that finished
    /// before it started.
    pub(crate) async fn read<R, F>(&self, read: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &Registry, &tx::AppSql) -> Result<R> + Send + 'static,
    {
        let read = match &self.reads {
            Some(pool) if !self.app_sql.temp.load(Ordering::Relaxed) => {
                let registry = Arc::clone(&self.registry.read().unwrap_or_else(|e| e.into_inner()));
                let outcome = pool
                    .read(move |reader| match reader {
                        Ok(reader) => Ok(read(&reader.conn, &registry, &reader.user_sql)),
                        // Handed back, to run on the write connection.
                        Err(_) => Err(read),
                    })
                    .await?;
                match outcome {
                    Ok(result) => return result,
                    Err(read) => read,
                }
            }
            _ => read,
        };
        self.call(move |w| read(&w.conn, &w.registry, &w.user_sql))
            .await
    }

    /// Runs `read` as [`read_final`] does (one snapshot of the tracked tables,
    /// every version in it final), on a read connection where there is one,
    /// so that it neither waits for writes nor holds them up; on the write
    /// connection where another connection left changes in an open version
    /// (which that connection closes first), or without read connections.
    pub(crate) async fn read_final<R, F>(&self, read: F) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(&Connection, &[TableSchema]) -> Result<R> + Send + Sync + 'static,
    {
        let read = Arc::new(read);
        if let Some(pool) = &self.reads
            && !self.app_sql.temp.load(Ordering::Relaxed)
        {
            let shared = Arc::clone(&read);
            let read_there = pool
                .read(move |reader| match reader {
                    Ok(reader) => final_snapshot(&reader.conn, &*shared),
                    Err(_) => Ok(None),
                })
                .await??;
            if let Some(result) = read_there {
                return Ok(result);
            }
        }
        self.call(move |w| read_final(w, |conn, tables| read(conn, tables)))
            .await
    }

    /// See `Handle::site_ids`.
    pub(crate) fn site_ids(&self) -> SiteIds {
        *self.site_ids.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_site_ids(&self, ids: SiteIds) {
        *self.site_ids.write().unwrap_or_else(|e| e.into_inner()) = ids;
    }

    /// The file the database lives in (`None` in memory).
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The database's version, now and after every commit that moves it.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.versions.subscribe()
    }

    /// What each commit from now on changes.
    pub(crate) fn change_events(&self) -> ChangeEvents {
        ChangeEvents::new(self.events.subscribe(), self.versions.subscribe())
    }

    /// The version last published to subscribers: never above the database's.
    #[cfg_attr(
        not(feature = "http"),
        allow(dead_code, reason = "used by the sync client")
    )]
    pub(crate) fn published_version(&self) -> i64 {
        *self.versions.borrow()
    }
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
    worker.starting();
    let tx = worker
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::from)?;
    // Changes another connection recorded get their own version, before ours.
    if open_elsewhere(&tx, &mut worker.seen_data_version)? {
        close_version(&tx)?;
    }
    // Where this transaction's changes start, for the change event: another
    // handle on the file may have committed since this one last published.
    let before = if worker.events.receiver_count() > 0 {
        tx.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))
            .map_err(Error::from)?
    } else {
        *worker.versions.borrow()
    };
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
        // What ran after the transaction ended committed on its own.
        drop(tx);
        let _ = worker.committed(false, before);
        return Err(E::from(Error::TransactionEnded));
    }
    let moved = recorded || transaction.versions_set();
    tx.commit().map_err(Error::from)?;
    worker.committed(moved, before)?;
    Ok(result)
}

/// Runs `read` on one snapshot of the tracked tables in which every version is
/// final: if another connection left changes in an open version, it is closed
/// first, inside the same (write) transaction. A table whose tracking is off is
/// left out: its rows may have changed in ways its clock does not know.
pub(crate) fn read_final<R>(
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

/// `read` on one read transaction of `conn`, if every version in it is final
/// (else `None`: a read-only connection cannot close another's version).
fn final_snapshot<R>(
    conn: &Connection,
    read: impl Fn(&Connection, &[TableSchema]) -> Result<R>,
) -> Result<Option<R>> {
    let tx = conn.unchecked_transaction()?;
    if open_changes(&tx)? {
        return Ok(None);
    }
    let result = read(&tx, &tracking::synced_tables(&tx, true)?)?;
    tx.commit()?;
    Ok(Some(result))
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
pub(crate) fn open_changes(conn: &Connection) -> Result<bool> {
    for schema in tracking::synced_tables(conn, false)? {
        let open: bool = conn
            .prepare_cached(&TableSql::of(&schema).open_changes)?
            .query_row([], |r| r.get(0))?;
        if open {
            return Ok(true);
        }
    }
    Ok(false)
}
