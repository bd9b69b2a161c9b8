//! The runtime's error type.

use std::path::PathBuf;

use crate::schema::SchemaError;
use crate::sql::GROW_ONLY_PREFIX;
use crate::value::ValueError;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but is not a SQLite database (or is encrypted).
    #[error("{} is not a SQLite database; open a database file or a new path", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },

    /// The database file is damaged (SQLite finds it malformed, or its quick check
    /// reports problems), or it holds no Synced database where one was expected
    /// (see [`Options::create`](field@crate::Options::create)). The file is left
    /// as it is.
    #[error("the database file {} cannot be used: {reason}; restore it from a backup", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The database file was written by a newer release, in a file format this
    /// release does not know. The file is left as it is.
    #[error(
        "{} is in file format {found}, written by a newer release; this release reads formats \
         up to {supported}: update the app",
        path.display()
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The file's format.
        found: i64,
        /// The newest format this release reads.
        supported: i64,
    },

    /// A value to write is NaN, which SQLite cannot store: it would store `NULL`
    /// in its place (and refuse it in a `NOT NULL` column). Nothing was written.
    /// Typed writes, raw SQL's parameters and payloads are all checked.
    #[error("NaN cannot be stored ({place}): SQLite would store NULL in its place")]
    NotANumber {
        /// Where it was: ``column `score` of table `items` `` or `parameter ?2`.
        place: String,
    },

    /// The database file could not be opened or created.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: SqliteError,
    },

    /// PostgreSQL (a server's replica there) refused a statement, or the
    /// connection to it failed.
    #[error("PostgreSQL: {message}")]
    Postgres {
        /// The SQLSTATE code, if PostgreSQL gave one (`40001` and `40P01`: the
        /// transaction may be tried again).
        code: Option<String>,
        /// What it said.
        message: String,
    },

    /// A table descriptor breaks the rules of synced tables.
    #[error(transparent)]
    InvalidSchema(#[from] SchemaError),

    /// A table that is not a synced table, or not one the runtime made, exists
    /// with a shape other than the struct describes.
    #[error(
        "table `{table}` already exists with another shape: {details}; rename the existing \
         table or use another table name"
    )]
    SchemaMismatch {
        /// The table.
        table: String,
        /// The first difference found.
        details: String,
    },

    /// The struct of a synced table changed in a way replicas cannot follow
    /// on their own (see the book's chapter "Evolving your schema"): nothing
    /// was changed.
    #[error("table `{table}`: {change}; {remedy}")]
    IncompatibleChange {
        /// The table.
        table: String,
        /// The change.
        change: String,
        /// What to do instead.
        remedy: String,
    },

    /// One of the app's migrations (see [`SyncDb::migrate`](crate::SyncDb::migrate))
    /// could not be applied: none of them was.
    #[error("migration {index}: {reason}")]
    Migration {
        /// Its position in the app's list, from 0.
        index: usize,
        /// Why.
        reason: String,
    },

    /// A typed operation on a struct whose table was not registered with this database.
    #[error("table `{table}` is not registered; call `db.register::<T>()` first")]
    NotRegistered {
        /// The table.
        table: String,
    },

    /// `update` found no row with the struct's key.
    #[error("no row of `{table}` has this key")]
    NotFound {
        /// The table.
        table: String,
    },

    /// A write broke a constraint of the table: a value of the wrong type for a
    /// `STRICT` column, `NULL` in a `NOT NULL` column, a duplicate key, …
    /// Nothing of the failed statement was written.
    #[error("constraint violated: {message}")]
    Constraint {
        /// SQLite's message, naming the table and column.
        message: String,
    },

    /// A row of a grow-only (`gos`) table was to be deleted or given another key.
    #[error("rows of `{table}` cannot be deleted or re-keyed: the table is grow-only (gos)")]
    GrowOnly {
        /// The table.
        table: String,
    },

    /// The app's raw SQL would give a row a key that the key field's type cannot
    /// read back, such as text that is not a [`SyncId`](crate::SyncId) in
    /// its canonical form (see [`Domain`](crate::Domain)). Nothing was written.
    #[error(
        "the key column `{column}` of `{table}` takes only values its type can read back \
         (for a SyncId: its 36-character lowercase text, as SyncId::to_string writes it)"
    )]
    InvalidKey {
        /// The table.
        table: String,
        /// The key column.
        column: String,
    },

    /// A stored value could not be read as the field's type (usually a value written
    /// by raw SQL that the struct cannot represent).
    #[error("cannot read `{table}.{column}` of the row with key {key:?}: {source}")]
    Decode {
        /// The table.
        table: String,
        /// The row's key, in key order (empty where the row could not be read
        /// at all).
        key: Vec<crate::value::Value>,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: ValueError,
    },

    /// A payload could not be read: damaged, truncated, or not a payload at all.
    /// Nothing of it was applied.
    #[error("payload rejected: {0}")]
    Payload(#[from] crate::wire::WireError),

    /// A row filter cannot run on a table: the table is not registered, or the
    /// filter's SQL does not prepare (a syntax error, an unknown column).
    #[error("the row filter of table `{table}` is not valid: {message}")]
    InvalidFilter {
        /// The table.
        table: String,
        /// What is wrong.
        message: String,
    },

    /// A device's push carries what a device may not send: changes made by other
    /// sites (a replay or a forgery), evictions, or another site's payload.
    /// Nothing was applied.
    #[error("payload refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },

    /// A payload names a table this database does not sync. Nothing was applied.
    #[error("payload rejected: table `{table}` is not synced here; register it first")]
    UnknownTable {
        /// The table.
        table: String,
    },

    /// A payload names a column the table does not have here. Nothing was applied.
    #[error("payload rejected: table `{table}` has no column `{column}` here")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },

    /// A payload carries a value of another type than its column's (or `NULL` for
    /// a `NOT NULL` column). Nothing was applied.
    #[error("payload rejected: `{table}.{column}` is {expected}, the payload has {found}")]
    WrongType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The column's type.
        expected: String,
        /// What the payload holds.
        found: &'static str,
    },

    /// The app's SQL ended the runtime's transaction (it is refused up front; this
    /// is the check behind that).
    #[error(
        "the transaction was ended by the app's SQL; use db.transaction instead of BEGIN/COMMIT"
    )]
    TransactionEnded,

    /// [`SyncDb::read`](crate::SyncDb::read) was given a statement that
    /// writes: it runs read-only SQL only. Nothing ran.
    #[error(
        "`read` runs read-only SQL; write with execute_raw or the typed writes (insert, modify, \
         patch, …)"
    )]
    NotReadOnly,

    /// [`SyncDb::execute_raw`](crate::SyncDb::execute_raw) was given a
    /// statement that returns rows.
    #[error("the statement returns rows: read them with db.read (or read_with)")]
    ReturnsRows,

    /// A read's result has no column of this name (or position).
    #[error("the result has no column `{column}`")]
    NoSuchColumn {
        /// The name (or position) asked for.
        column: String,
    },

    /// A value of a read's result could not be read as the type asked for.
    #[error("cannot read column `{column}` of the result: {source}")]
    ReadColumn {
        /// The column's name (or position).
        column: String,
        /// Why.
        #[source]
        source: crate::value::ValueError,
    },

    /// A change of a row through [`SyncDb::modify`](crate::SyncDb::modify)
    /// changed its key: a key is how every replica finds a row. Nothing was
    /// written; delete the row and insert one with the new key instead.
    #[error(
        "the change of a row of `{table}` changed its key; delete the row and insert it with the \
         new key instead"
    )]
    KeyChanged {
        /// The table.
        table: String,
    },

    /// The app's SQL tried to change the runtime's own tables, triggers or
    /// indexes (those named `_synced…`), which record what syncs: refused
    /// before it ran. Reading them is allowed.
    #[error(
        "the app's SQL may not change the runtime's own objects: it {action}; their state is \
         what syncs, and the runtime keeps it"
    )]
    RuntimeObject {
        /// What the statement would have done.
        action: String,
    },

    /// The operating system gave no random bytes for a new database's site id.
    #[error("the system has no randomness for a new site id: {0}")]
    NoRandomness(String),

    /// The runtime's metadata is inconsistent (edited by hand, or a bug).
    #[error("sync metadata is inconsistent: {details}")]
    Corrupt {
        /// What was found.
        details: String,
    },

    /// Any other error reported by SQLite.
    #[error(transparent)]
    Sqlite(#[from] SqliteError),

    /// The database's worker thread is gone (it panicked or the process is exiting).
    #[error("the database connection is closed")]
    Closed,

    /// A sync was asked for, but no server is set: see
    /// [`SyncDb::with_remote`](crate::SyncDb::with_remote).
    #[error("no sync server is set; call with_remote first")]
    NoRemote,

    /// No HTTP client could be built for the server: the system has no TLS
    /// roots, or a [root certificate](crate::Remote::root_certificate) cannot be
    /// read. Not transient: it lasts until the app or the system is fixed.
    #[error("no HTTP client can be made for the sync server at {url}: {reason}")]
    HttpClient {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },

    /// Another file made changes under this database's site id: the server has
    /// received versions of it beyond this database's own (409, `site_reused`),
    /// or sent a change in its name that it did not make. The file is a copy
    /// of another device's, or was restored from a backup (or someone with its
    /// user's token wrote in its name). The sync takes a new site id and goes
    /// on ([`SyncReport::site_id_renewed`](crate::SyncReport::site_id_renewed)).
    #[error("the sync server has seen this database's site id further than it is: {message}")]
    SiteReused {
        /// The server's message.
        message: String,
    },

    /// The server could not be reached (no network, refused, timed out), even
    /// after the retries. Local writes go on; sync again later.
    #[error("the sync server at {url} is unreachable: {reason}")]
    Offline {
        /// The server.
        url: String,
        /// What failed.
        reason: String,
    },

    /// The server refused the credentials (401): none, expired, or wrong.
    #[error("the sync server refused the credentials: {message}")]
    Unauthorized {
        /// The server's message.
        message: String,
    },

    /// The credentials are valid but do not allow this (403).
    #[error("the sync server forbids this: {message}")]
    Forbidden {
        /// The server's message.
        message: String,
    },

    /// The server syncs this database with another schema (409). The unsent
    /// changes stay here until the app and the server agree.
    #[error("the sync server has another schema for this database: {message}")]
    ServerSchemaMismatch {
        /// The server's message.
        message: String,
    },

    /// The server was never told of this app version: a table of it is as no
    /// published version has it (409, code
    /// [`schema_not_published`](crate::protocol::ErrorBody::SCHEMA_NOT_PUBLISHED)).
    /// The unsent changes stay here until an admin publishes the version's
    /// schema (see the book's chapter "Evolving your schema").
    #[error("the sync server does not serve this app version yet: {message}")]
    SchemaNotPublished {
        /// The server's message.
        message: String,
    },

    /// This app version is older than the oldest the server still supports
    /// (409, code [`schema_too_old`](crate::protocol::ErrorBody::SCHEMA_TOO_OLD)).
    /// The unsent changes stay here until the app is updated.
    #[error("the sync server no longer serves this app version: {message}")]
    SchemaTooOld {
        /// The server's message.
        message: String,
    },

    /// The server has this database but cannot serve it: its file there is
    /// damaged (503 with code `database_unavailable`). Not transient: it lasts
    /// until an operator restores the file from a backup and restarts the server.
    /// The unsent changes stay here.
    #[error("the sync server cannot serve this database: {message}")]
    DatabaseUnavailable {
        /// The server's message.
        message: String,
    },

    /// The server rejected what was sent (400 or 413): a payload it cannot take.
    #[error("the sync server rejected the request ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },

    /// The server failed (a 5xx status, or an answer damaged on the way) or asked
    /// to be called again later (408, 429: too many pulls wait there already),
    /// even after the retries, which honour the server's `Retry-After`.
    #[error("the sync server failed ({status}): {message}")]
    Server {
        /// The HTTP status (a 200 whose answer was damaged or cut short counts
        /// here too, with its status).
        status: u16,
        /// What happened.
        message: String,
    },
}

impl Error {
    /// Whether trying again later may succeed: the server was unreachable or
    /// failed, as opposed to refusing the request.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Offline { .. } | Error::Server { .. })
    }

    /// Whether PostgreSQL ended the transaction to break a deadlock or for a
    /// serialization failure (or a store gave up on one it tried again each
    /// time so): the same request tried again may succeed.
    #[cfg(feature = "postgres")]
    pub fn may_retry(&self) -> bool {
        matches!(self, Error::Postgres { code: Some(code), .. } if code == "40P01" || code == "40001")
    }
}

/// An error reported by SQLite, with its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SqliteError(#[from] rusqlite::Error);

impl SqliteError {
    /// SQLite's extended result code, if the error came from SQLite itself.
    pub fn code(&self) -> Option<i32> {
        match &self.0 {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if matches!(e, rusqlite::Error::ExecuteReturnedResults) {
            return Error::ReturnsRows;
        }
        if let rusqlite::Error::SqliteFailure(code, message) = &e {
            let message = message.clone().unwrap_or_else(|| code.to_string());
            if let Some(table) = message.strip_prefix(GROW_ONLY_PREFIX) {
                return Error::GrowOnly {
                    table: table.to_owned(),
                };
            }
            if code.code == ErrorCode::ConstraintViolation {
                return Error::Constraint { message };
            }
        }
        Error::Sqlite(SqliteError(e))
    }
}
