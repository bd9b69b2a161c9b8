//! Opening a database file: the options, the checks a file passes before
//! anything is written to it, and the connection's settings and hooks.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::format;
use crate::guard::guard;
use crate::id::SiteId;
use crate::schema::RESERVED_PREFIX;
use crate::site;
use crate::sql;
use crate::tx;

/// How a database is opened. `Options::default()` is what
/// [`SyncDb::open`](crate::SyncDb::open) uses; each setting is read as a field
/// and set by the method of the same name, so that a setting added later
/// changes no code that builds one.
///
/// ```
/// use sync_runtime::{Options, Synchronous};
///
/// let options = Options::default().cache_size_kib(16 * 1024).synchronous(Synchronous::Full);
/// assert_eq!(options.cache_size_kib, 16 * 1024);
/// assert_eq!(options.synchronous, Synchronous::Full);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// The most memory SQLite may use to cache pages, in KiB (default 65,536:
    /// 64 MiB; more than `i32::MAX` counts as `i32::MAX`). Pages are only
    /// allocated when used, so a small database uses little; a larger cache
    /// makes writes to large tables markedly faster (see the book's performance
    /// page).
    pub cache_size_kib: u32,
    /// When a commit reaches the disk (default [`Synchronous::Normal`]).
    pub synchronous: Synchronous,
    /// Whether a path without a Synced database may become a new one (default
    /// `true`). With `false`, only an existing Synced database opens: a missing
    /// file gives [`Error::Open`], and an empty (0-byte) file or a SQLite database
    /// without the runtime's tables gives [`Error::Damaged`] and is left as it is,
    /// where SQLite and the default would quietly turn it into a new, empty
    /// database. For a file that must hold data, such as a server's.
    pub create: bool,
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
    pub quick_check: bool,
    /// How long a write waits for another connection's lock before failing
    /// (default 5 s; counted in whole milliseconds, at most `i32::MAX` of them).
    pub busy_timeout: Duration,
    /// The most read-only connections the app's reads use at once (default
    /// 4): [`get`](crate::SyncDb::get), [`query`](crate::SyncDb::query),
    /// [`read`](crate::SyncDb::read) and live queries run on them, beside the
    /// one connection that writes, so a long merge or a bulk write does not
    /// hold them up (WAL mode lets readers and the writer work at once). Each
    /// is opened when reads first need that many at once, on a thread of its
    /// own, with this `cache_size_kib`. With 0, and always in memory (a
    /// private in-memory database has one connection), reads run on the
    /// write connection, in turn with writes. A read sees every commit that
    /// finished before it started.
    pub read_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cache_size_kib: 64 * 1024,
            synchronous: Synchronous::Normal,
            create: true,
            quick_check: false,
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
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
    /// Sets [`cache_size_kib`](field@Self::cache_size_kib), the page cache's
    /// limit in KiB (default 65,536: 64 MiB).
    ///
    /// ```
    /// use sync_runtime::Options;
    ///
    /// let small = Options::default().cache_size_kib(2 * 1024);
    /// assert_eq!(small.cache_size_kib, 2 * 1024);
    /// ```
    pub fn cache_size_kib(mut self, kib: u32) -> Self {
        self.cache_size_kib = kib;
        self
    }

    /// Sets [`synchronous`](field@Self::synchronous), when a commit reaches the
    /// disk (default [`Synchronous::Normal`]).
    ///
    /// ```
    /// use sync_runtime::{Options, Synchronous};
    ///
    /// let durable = Options::default().synchronous(Synchronous::Full);
    /// assert_eq!(durable.synchronous, Synchronous::Full);
    /// ```
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets [`create`](field@Self::create), whether a path without a Synced
    /// database may become a new one (default `true`).
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

    /// Sets [`quick_check`](field@Self::quick_check), whether opening reads the
    /// whole file to check it first (default `false`).
    ///
    /// ```
    /// use sync_runtime::Options;
    ///
    /// let checked = Options::default().quick_check(true);
    /// assert!(checked.quick_check);
    /// ```
    pub fn quick_check(mut self, quick_check: bool) -> Self {
        self.quick_check = quick_check;
        self
    }

    /// Sets [`busy_timeout`](field@Self::busy_timeout), how long a write waits
    /// for another connection's lock before failing (default 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sync_runtime::Options;
    ///
    /// let options = Options::default().busy_timeout(Duration::from_secs(30));
    /// assert_eq!(options.busy_timeout, Duration::from_secs(30));
    /// ```
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets [`read_connections`](field@Self::read_connections), how many
    /// read-only connections reads use at most (default 4; 0 reads on the
    /// write connection).
    ///
    /// ```
    /// use sync_runtime::Options;
    ///
    /// let options = Options::default().read_connections(8);
    /// assert_eq!(options.read_connections, 8);
    /// ```
    pub fn read_connections(mut self, connections: usize) -> Self {
        self.read_connections = connections;
        self
    }

    /// The pragmas every connection to the file runs first.
    pub(crate) fn settings(&self) -> String {
        // SQLite takes both numbers as signed 32-bit ones.
        let cache_size_kib = self.cache_size_kib.min(i32::MAX as u32);
        let busy_timeout_ms = u32::try_from(self.busy_timeout.as_millis())
            .unwrap_or(u32::MAX)
            .min(i32::MAX as u32);
        sql::connection_settings(
            self.synchronous == Synchronous::Full,
            cache_size_kib,
            busy_timeout_ms,
        )
    }
}

/// Why an empty file is not opened as a new database (see
/// [`Options::create`](field@Options::create)).
const EMPTY_FILE: &str = "the file is empty (0 bytes): its database was lost, or its creation was \
                          cut short before anything was written";

/// Why a SQLite database without the runtime's tables is not opened as a Synced
/// one (see [`Options::create`](field@Options::create)).
const NOT_A_REPLICA: &str =
    "it is a SQLite database but not a Synced one: it has no `_synced_state` table";

/// A connection opened, checked, upgraded and hooked.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    /// The database's site id.
    pub(crate) site_id: SiteId,
    /// The site id it had before, if any (see [`site::previous`]).
    pub(crate) previous: Option<(SiteId, bool)>,
    /// Set by the connection's update hook whenever a trigger writes a clock row:
    /// the open transaction recorded changes and takes a version.
    pub(crate) recorded: Arc<AtomicBool>,
    /// The tables written since it was last emptied, as the update hook names
    /// them (a synced table for its clock's rows too): what a commit's
    /// [`Changed`](crate::Changed) event lists.
    pub(crate) written: Written,
    /// The app's own SQL while it runs (see [`tx::AppSql`]).
    pub(crate) user_sql: Arc<tx::AppSql>,
}

/// Whether `path` names an in-memory database rather than a file (`:memory:`,
/// an empty path, a `file:` URI with `mode=memory`): a second connection to
/// it would open another, empty database.
pub(crate) fn in_memory(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.is_empty()
        || text == ":memory:"
        || (text.starts_with("file:")
            && (text.starts_with("file::memory:") || text.contains("mode=memory")))
}

/// See [`Opened::written`].
pub(crate) type Written = Arc<Mutex<Vec<String>>>;

/// Adds `table` to the tables written, once; called for every row written,
/// so the common case (the same table as the last one added) comes first.
fn note_written(written: &Mutex<Vec<String>>, table: &str) {
    let Ok(mut tables) = written.lock() else {
        return;
    };
    if !tables.iter().rev().any(|t| t.eq_ignore_ascii_case(table)) {
        tables.push(table.to_owned());
    }
}

/// Opens the database at `path` (in memory without one) as `options` say.
pub(crate) fn open(path: Option<&Path>, options: &Options) -> Result<Opened> {
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
    // Settings of this connection only: nothing is read or written yet.
    conn.execute_batch(&options.settings()).map_err(at_open)?;
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
        sql::INIT_STATE,
        [SiteId::random()
            .map_err(|e| Error::NoRandomness(e.to_string()))?
            .as_bytes()
            .as_slice()],
    )?;
    conn.execute_batch(sql::INIT_OWN_SITE)?;
    let site_id = site::own(&conn)?;
    let user_sql = Arc::new(tx::AppSql::default());
    tx::note_synced_tables(&conn, &user_sql)?;
    guard(&mut conn, &user_sql, None)?;
    let recorded = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&recorded);
    let app = Arc::clone(&user_sql);
    let written = Arc::new(Mutex::new(Vec::new()));
    let tables = Arc::clone(&written);
    conn.update_hook(Some(
        move |action: rusqlite::hooks::Action, _: &str, table: &str, rowid: i64| {
            let app_table = match table.strip_prefix(sql::CLOCK_PREFIX) {
                Some(synced) => {
                    flag.store(true, Ordering::Relaxed);
                    Some(synced)
                }
                None if table.starts_with(RESERVED_PREFIX) => None,
                None => Some(table),
            };
            if let Some(name) = app_table {
                note_written(&tables, name);
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
    let previous = site::previous(&conn)?;
    Ok(Opened {
        conn,
        site_id,
        previous,
        recorded,
        written,
        user_sql,
    })
}

/// What SQLite's quick check reports as wrong with the database: `None` when it
/// finds nothing.
fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare(sql::QUICK_CHECK)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.pragma_query_value(None, name, |r| r.get(0)).unwrap()
    }

    #[test]
    fn settings_reach_the_connection() {
        let options = Options::default()
            .cache_size_kib(2 * 1024)
            .busy_timeout(Duration::from_millis(1_500));
        let opened = open(None, &options).unwrap();
        assert_eq!(pragma(&opened.conn, "cache_size"), -2 * 1024);
        assert_eq!(pragma(&opened.conn, "busy_timeout"), 1_500);
    }

    #[test]
    fn settings_beyond_what_sqlite_takes_are_cut_to_its_largest() {
        // Unclamped, SQLite reads a cache size of -4294967295 KiB as 0.
        let options = Options::default()
            .cache_size_kib(u32::MAX)
            .busy_timeout(Duration::MAX);
        let opened = open(None, &options).unwrap();
        assert_eq!(pragma(&opened.conn, "cache_size"), -i64::from(i32::MAX));
        assert_eq!(pragma(&opened.conn, "busy_timeout"), i64::from(i32::MAX));
    }
}
