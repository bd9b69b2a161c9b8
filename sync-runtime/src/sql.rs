//! Every SQL statement the runtime runs, generated in one place from descriptors.
//!
//! # Layout
//!
//! Runtime-owned tables (all prefixed `_synced`):
//!
//! - `_synced_format`: one row; the file format's version (see
//!   [`crate::format`]).
//! - `_synced_state`: one row; this database's site id, its `db_version` (the last
//!   closed version), the `applying` flag of the merge and how many times it was
//!   vacuumed (`vacuums`, see `Cursor::resumed`).
//! - `_synced_sites`: site-id dictionary; ordinal 0 is this database.
//! - `_synced_versions`: for every version that holds changes made elsewhere, the
//!   site that made them and their version there (merging gives each remote
//!   transaction its own local version); a version not listed was made here. So
//!   the writer of any change is the origin of its version, and no clock row
//!   stores a site.
//! - `_synced_peers`: per site, the highest of its versions this database has seen.
//! - `_synced_reused`: on a server, the site ids more than one file used (see
//!   `Replica::site_renewed`).
//! - `_synced_identities`: the site ids this database had before its current one
//!   (see [`crate::identity`]), in the order it had them (`id`): the versions
//!   up to `upto` not listed in `_synced_versions` (and above the `upto` of an
//!   earlier one) were made under the site of ordinal `site`; `reused` when the
//!   database left it because another file used it too.
//! - `_synced_rejected`: this device's writes its server refused, with the values
//!   it wrote (see [`crate::quarantine`]).
//! - `_synced_tables`: every synced table with its algorithm, descriptor (JSON) and
//!   whether tracking is on.
//! - `_synced_clock.<table>`: one clock row per app row (live or deleted), found by
//!   a unique index on the primary key: the causal length (`_synced_cl`, odd = live),
//!   the version of the row's last change (`_synced_dv`, indexed for "changes
//!   since") and of its (re)creation (`_synced_created`), and per value column
//!   `<col>.v` (col_version) and `<col>.dv` (version of the write). A deleted row's
//!   last change is its delete.
//!
//! # Why the triggers look like this
//!
//! Every statement here runs once per written row, so each one was measured (see the
//! book's performance page):
//!
//! - No SQL functions: a function call inside a trigger makes SQLite keep a
//!   statement journal for every written row.
//! - The open transaction's version is read from `_synced_state` (`db_version + 1`),
//!   with one row-value subquery per statement. The triggers write nothing else:
//!   the runtime learns that a transaction recorded changes from SQLite's update
//!   hook on its connection, and closes the version once, just before `COMMIT`.
//!   Changes recorded by other connections are found by a probe of each clock's
//!   `_synced_dv` index, run only when `PRAGMA data_version` says that another
//!   connection committed.
//! - Every trigger is guarded by the state's `applying` flag, which the merge sets
//!   while it writes remote changes: the merge records its own metadata, and the
//!   app's own triggers (full-text indexes, audit tables) keep firing for remote
//!   changes. The insert trigger tests it in the `SELECT` it runs anyway.
//! - The clock is a table with an implicit rowid and a unique index on the key:
//!   updates rewrite a small record in place and the `_synced_dv` index holds
//!   integers only (a `WITHOUT ROWID` clock keyed by the primary key measured
//!   1.5–2x slower on updates and deletes).

use std::fmt::{self, Write as _};

use crate::schema::{Algorithm, ColumnSchema, TableSchema};
use crate::value::Value;

/// Declares the runtime's fixed statements, and lists every one in
/// `STATEMENTS` for the test that runs them against a new database, so that
/// none can break unnoticed.
macro_rules! statements {
    ($($(#[$attr:meta])* $name:ident = $sql:expr;)*) => {
        $($(#[$attr])* pub(crate) const $name: &str = $sql;)*

        /// Every fixed statement, by name.
        #[cfg(test)]
        const STATEMENTS: &[(&str, &str)] = &[$((stringify!($name), $name)),*];
    };
}

statements! {
    /// The runtime's own tables.
    CREATE_META = "\
    CREATE TABLE IF NOT EXISTS _synced_state (
      id INTEGER PRIMARY KEY,
      site_id BLOB,
      db_version INTEGER,
      applying INTEGER,
      vacuums INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS _synced_sites (
      ordinal INTEGER PRIMARY KEY,
      site_id BLOB NOT NULL UNIQUE
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_versions (
      db_version INTEGER PRIMARY KEY,
      site INTEGER NOT NULL,
      origin_version INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_peers (
      site INTEGER PRIMARY KEY,
      seen INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_remote (
      url TEXT PRIMARY KEY,
      sent TEXT NOT NULL,
      received TEXT NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_held (
      site INTEGER NOT NULL,
      tbl TEXT NOT NULL,
      pk BLOB NOT NULL,
      evicted INTEGER NOT NULL,
      at INTEGER NOT NULL,
      PRIMARY KEY (site, tbl, pk)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS _synced_site_owners (
      site_id BLOB PRIMARY KEY,
      owner TEXT NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_reused (
      site_id BLOB PRIMARY KEY
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_identities (
      id INTEGER PRIMARY KEY,
      upto INTEGER NOT NULL,
      site INTEGER NOT NULL,
      reused INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_rejected (
      tbl TEXT NOT NULL,
      pk BLOB NOT NULL,
      row BLOB,
      reason TEXT NOT NULL,
      at INTEGER NOT NULL,
      PRIMARY KEY (tbl, pk)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS _synced_tables (
      name TEXT PRIMARY KEY COLLATE NOCASE,
      algorithm TEXT NOT NULL,
      descriptor TEXT NOT NULL,
      tracking INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_skipped (
      site INTEGER PRIMARY KEY,
      since INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_migrations (
      n INTEGER PRIMARY KEY,
      script TEXT NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS _synced_published (
      version INTEGER NOT NULL,
      tbl TEXT NOT NULL,
      descriptor TEXT NOT NULL,
      PRIMARY KEY (version, tbl)
    ) STRICT;";

    /// The file format's version (see [`crate::format`]): one row.
    CREATE_FORMAT = "\
    CREATE TABLE IF NOT EXISTS _synced_format (
      id INTEGER PRIMARY KEY CHECK (id = 0),
      version INTEGER NOT NULL
    ) STRICT;";

    /// Whether the file records its format (release 0.1.0 did not).
    HAS_FORMAT =
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_synced_format')";

    /// The file's format.
    READ_FORMAT = "SELECT version FROM _synced_format WHERE id = 0";

    /// Records the file's format.
    WRITE_FORMAT = "INSERT INTO _synced_format (id, version) VALUES (0, ?1) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version";

    /// Whether the database holds the runtime's tables (a Synced database, not a new
    /// or foreign one).
    IS_REPLICA =
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_synced_state')";

    /// Closes the open version: the changes recorded since the last close keep the
    /// version they were stamped with (`db_version + 1`), and the next ones get the
    /// one after.
    CLOSE_VERSION = "UPDATE _synced_state SET db_version = db_version + 1";

    /// Keeps a refused write (see [`crate::quarantine`]): table (lowercase), key,
    /// values (none for a delete), reason, when.
    #[cfg_attr(
        not(feature = "http"),
        allow(dead_code, reason = "used by the sync client")
    )]
    KEEP_REJECTED = "INSERT INTO _synced_rejected (tbl, pk, row, reason, at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (tbl, pk) DO UPDATE SET row = excluded.row, reason = excluded.reason, \
         at = excluded.at";

    /// The refused writes to one table, oldest first.
    LIST_REJECTED =
        "SELECT pk, row, reason, at FROM _synced_rejected WHERE tbl = ?1 ORDER BY at, pk";

    /// Removes a refused write, returning its values.
    TAKE_REJECTED =
        "DELETE FROM _synced_rejected WHERE tbl = ?1 AND pk = ?2 RETURNING row";

    /// How many times the database was vacuumed (see `Cursor::resumed`).
    VACUUMS = "SELECT vacuums FROM _synced_state";

    /// Counts a vacuum, before it runs.
    COUNT_VACUUM = "UPDATE _synced_state SET vacuums = vacuums + 1";

    /// Adds the count of vacuums to a format 1 file.
    ADD_VACUUMS =
        "ALTER TABLE _synced_state ADD COLUMN vacuums INTEGER NOT NULL DEFAULT 0";

    /// The last closed version.
    CURRENT_VERSION = "SELECT db_version FROM _synced_state";

    /// A change counter of the database file that moves when another connection commits.
    DATA_VERSION = "PRAGMA data_version";

    /// Adds a site to the dictionary, at the next ordinal, unless it is there.
    ADD_SITE = "INSERT INTO _synced_sites (ordinal, site_id) \
         SELECT coalesce(max(ordinal), 0) + 1, ?1 FROM _synced_sites WHERE true \
         ON CONFLICT (site_id) DO NOTHING";

    /// The ordinal of a site id.
    SITE_ORDINAL = "SELECT ordinal FROM _synced_sites WHERE site_id = ?1";

    /// The site id of an ordinal.
    SITE_OF_ORDINAL = "SELECT site_id FROM _synced_sites WHERE ordinal = ?1";

    /// This database's site id.
    OWN_SITE = "SELECT site_id FROM _synced_state";

    /// The site ids this database had before, in version order.
    IDENTITIES = "SELECT upto, site FROM _synced_identities ORDER BY upto, id";

    /// The site id this database had last before its current one, and whether it
    /// left it because another file used it too.
    PREVIOUS_SITE = "SELECT s.site_id, i.reused FROM _synced_identities AS i \
         JOIN _synced_sites AS s ON s.ordinal = i.site ORDER BY i.id DESC LIMIT 1";

    /// The highest version of a site (by id) this database has seen.
    SEEN_VERSION = "SELECT p.seen FROM _synced_peers AS p \
         JOIN _synced_sites AS s ON s.ordinal = p.site WHERE s.site_id = ?1";

    /// Whether a site id is remembered as used by more than one file.
    IS_REUSED =
        "SELECT EXISTS (SELECT 1 FROM _synced_reused WHERE site_id = ?1)";

    /// Remembers a site id as used by more than one file.
    MARK_REUSED =
        "INSERT INTO _synced_reused (site_id) VALUES (?1) ON CONFLICT DO NOTHING";

    /// Binds a site id to its owner unless it has one.
    CLAIM_SITE =
        "INSERT INTO _synced_site_owners (site_id, owner) VALUES (?1, ?2) ON CONFLICT DO NOTHING";

    /// The owner of a site id.
    SITE_OWNER = "SELECT owner FROM _synced_site_owners WHERE site_id = ?1";

    /// Whether a reader (by ordinal) holds any row.
    HOLDS_ANY = "SELECT EXISTS (SELECT 1 FROM _synced_held WHERE site = ?1)";

    /// Gives reader `?2` the record of the rows reader `?1` holds.
    INHERIT_HELD = "INSERT INTO _synced_held (site, tbl, pk, evicted, at) \
         SELECT ?2, tbl, pk, evicted, at FROM _synced_held WHERE site = ?1 ON CONFLICT DO NOTHING";

    /// Registers a synced table: name, algorithm, descriptor (JSON), tracking on.
    REGISTER_TABLE = "INSERT INTO _synced_tables (name, algorithm, descriptor, tracking) \
         VALUES (?1, ?2, ?3, 1)";

    /// Turns a synced table's tracking on or off.
    SET_TRACKING = "UPDATE _synced_tables SET tracking = ?2 WHERE name = ?1";

    /// Forgets a synced table.
    UNREGISTER_TABLE = "DELETE FROM _synced_tables WHERE name = ?1";

    /// Drops the refused writes kept for one table (lowercase name).
    DISCARD_REJECTED_OF = "DELETE FROM _synced_rejected WHERE tbl = ?1";

    /// Every synced table's name and descriptor.
    SYNCED_TABLES = "SELECT name, descriptor FROM _synced_tables ORDER BY name";

    /// The name of every synced table.
    SYNCED_TABLE_NAMES = "SELECT name FROM _synced_tables";

    /// The name and descriptor of every synced table whose tracking is on.
    TRACKED_TABLES =
        "SELECT name, descriptor FROM _synced_tables WHERE tracking ORDER BY name";

    /// One synced table's descriptor and tracking flag.
    STORED_TABLE =
        "SELECT descriptor, tracking FROM _synced_tables WHERE name = ?1";

    /// Whether a table of the main schema is STRICT (no row: no such table).
    IS_STRICT =
        "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE";

    /// A table's columns: name, type, not-null flag, key position.
    TABLE_COLUMNS =
        "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid";

    /// The state row of a new database: its site id (`?1`), version 0.
    INIT_STATE = "INSERT INTO _synced_state (id, site_id, db_version, applying) VALUES (0, ?1, 0, 0) \
         ON CONFLICT DO NOTHING";

    /// This database as ordinal 0 of the site dictionary.
    INIT_OWN_SITE = "INSERT INTO _synced_sites (ordinal, site_id) SELECT 0, site_id FROM _synced_state
               WHERE true ON CONFLICT DO NOTHING;";

    /// SQLite's check of the file's structure; one row `ok` when it finds nothing.
    QUICK_CHECK = "PRAGMA quick_check";

    /// The site (ordinal) and version there of a local version made elsewhere.
    VERSION_ORIGIN = "SELECT site, origin_version FROM _synced_versions WHERE db_version = ?1";

    /// Marks a row (`?3`, of table `?2`) as held by reader `?1` since version `?4`.
    MARK_HELD = "INSERT INTO _synced_held (site, tbl, pk, evicted, at) VALUES (?1, ?2, ?3, 0, ?4) \
         ON CONFLICT (site, tbl, pk) DO UPDATE SET evicted = 0, at = excluded.at";

    /// Marks a row a reader holds as evicted at version `?4`.
    MARK_EVICTED = "UPDATE _synced_held SET evicted = 1, at = ?4 WHERE site = ?1 AND tbl = ?2 AND pk = ?3";

    /// Whether a reader holds any row of a table.
    HOLDS_IN_TABLE = "SELECT EXISTS (SELECT 1 FROM _synced_held WHERE site = ?1 AND tbl = ?2)";

    /// Whether site ordinal `?2` made a version after `?1` here.
    WROTE_SINCE = "SELECT EXISTS (SELECT 1 FROM _synced_versions WHERE db_version > ?1 AND site = ?2)";

    /// A reader's mark of one row.
    HELD_MARK = "SELECT evicted, at FROM _synced_held WHERE site = ?1 AND tbl = ?2 AND pk = ?3";

    /// Sets a reader's mark of one row, unless it has one from a later export
    /// (two pulls of one device at once, the later recorded first).
    SET_MARK = "INSERT INTO _synced_held (site, tbl, pk, evicted, at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (site, tbl, pk) DO UPDATE SET evicted = excluded.evicted, at = excluded.at \
         WHERE excluded.at >= _synced_held.at";

    /// Gives ordinal 0 of the site dictionary (this database) a new site id.
    SET_OWN_SITE = "UPDATE _synced_sites SET site_id = ?1 WHERE ordinal = 0";

    /// Adds a site id this database left to the dictionary, at the next ordinal.
    ADD_LEFT_SITE = "INSERT INTO _synced_sites (ordinal, site_id) \
         SELECT max(ordinal) + 1, ?1 FROM _synced_sites";

    /// Records a site id this database left: up to which version it was its own, its ordinal, whether it left it because another file used it too.
    ADD_IDENTITY = "INSERT INTO _synced_identities (upto, site, reused) VALUES (?1, ?2, ?3)";

    /// Gives the state row a new site id.
    SET_STATE_SITE = "UPDATE _synced_state SET site_id = ?1";

    /// Sets the last closed version.
    SET_VERSION = "UPDATE _synced_state SET db_version = ?1";

    /// The send cursor of every server this database syncs with.
    SEND_CURSORS = "SELECT sent FROM _synced_remote";

    /// Whether a table is `WITHOUT ROWID`.
    IS_WITHOUT_ROWID = "SELECT wr FROM pragma_table_list(?1)";

    /// The keys of a table a reader holds after `?3` that it got before version `?4` or that were evicted, in key order.
    HELD_TO_CHECK = "SELECT pk FROM _synced_held WHERE site = ?1 AND tbl = ?2 AND pk > ?3 \
         AND (at < ?4 OR evicted) ORDER BY pk";

    /// Forgets a server's cursors.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    FORGET_REMOTE = "DELETE FROM _synced_remote WHERE url = ?1";

    /// Moves a server's send cursor.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    SET_SENT = "UPDATE _synced_remote SET sent = ?2 WHERE url = ?1";

    /// A server's send and receive cursors.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    REMOTE_CURSORS = "SELECT sent, received FROM _synced_remote WHERE url = ?1";

    /// Stores a server's send cursor.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    STORE_SENT = "INSERT INTO _synced_remote (url, sent, received) VALUES (?1, ?2, '0') \
         ON CONFLICT (url) DO UPDATE SET sent = excluded.sent";

    /// Every table descriptor a server published, by app version (see
    /// [`crate::versions`]).
    PUBLISHED = "SELECT version, descriptor FROM _synced_published ORDER BY version, tbl";

    /// Records a table descriptor of a published app version.
    PUBLISH = "INSERT INTO _synced_published (version, tbl, descriptor) VALUES (?1, ?2, ?3)";

    /// Moves every server's receive cursor back to the beginning.
    RECEIVE_AGAIN = "UPDATE _synced_remote SET received = '0'";

    /// Moves server `?1`'s receive cursor from `?2` to `?3`, if it is at `?2`.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    SKIP_RECEIVED = "UPDATE _synced_remote SET received = ?3 WHERE url = ?1 AND received = ?2";

    /// Stores a server's receive cursor.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    STORE_RECEIVED = "INSERT INTO _synced_remote (url, sent, received) VALUES (?1, '0', ?2) \
         ON CONFLICT (url) DO UPDATE SET received = excluded.received";

    /// Turns the triggers off: what follows is not recorded as local changes.
    BEGIN_APPLYING = "UPDATE _synced_state SET applying = 1";

    /// Deletes every version origin, peer, cursor, earlier site id, other site and refused write.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    WIPE_META = "DELETE FROM _synced_versions; DELETE FROM _synced_peers; \
         DELETE FROM _synced_remote; DELETE FROM _synced_sites WHERE ordinal <> 0; \
         DELETE FROM _synced_identities; DELETE FROM _synced_rejected;";

    /// Gives the state row a new site id and turns the triggers back on.
    #[cfg_attr(not(feature = "http"), allow(dead_code, reason = "used by the sync client"))]
    SET_STATE_SITE_APPLIED = "UPDATE _synced_state SET site_id = ?1, applying = 0";

    /// Turns the triggers back on.
    END_APPLYING = "UPDATE _synced_state SET applying = 0";

    /// Records that a local version holds changes made elsewhere: by site `?2`, at its version `?3`.
    ADD_VERSION_ORIGIN = "INSERT INTO _synced_versions (db_version, site, origin_version) VALUES (?1, ?2, ?3)";

    /// Whether a local version holds changes made elsewhere.
    MADE_ELSEWHERE = "SELECT EXISTS (SELECT 1 FROM _synced_versions WHERE db_version = ?1)";

    /// The highest version of a site (by ordinal) this database has seen.
    PEER_SEEN = "SELECT seen FROM _synced_peers WHERE site = ?1";

    /// Sets the highest version of a site (by ordinal) this database has seen.
    SET_PEER_SEEN = "INSERT INTO _synced_peers (site, seen) VALUES (?1, ?2) \
         ON CONFLICT (site) DO UPDATE SET seen = excluded.seen";

    /// Records that a payload exported by a site (by ordinal) after its version
    /// `?2` carried tables or columns this database did not have.
    SKIPPED = "INSERT INTO _synced_skipped (site, since) VALUES (?1, ?2) \
         ON CONFLICT (site) DO UPDATE SET since = min(since, excluded.since)";

    /// Lowers what this database has seen of each site whose payloads carried
    /// tables or columns it did not have, to ask them again once it has more.
    ASK_AGAIN_FOR_SKIPPED = "UPDATE _synced_peers SET seen = min(seen, \
         (SELECT s.since FROM _synced_skipped AS s WHERE s.site = _synced_peers.site)) \
         WHERE site IN (SELECT site FROM _synced_skipped)";

    /// Forgets what peers' payloads carried that this database lacked.
    FORGET_SKIPPED = "DELETE FROM _synced_skipped";

    /// The SQL text of a table of the main schema.
    TABLE_SQL = "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1";

    /// Replaces the SQL text of a table (with `writable_schema` on).
    SET_TABLE_SQL = "UPDATE sqlite_schema SET sql = ?2 WHERE type = 'table' AND name = ?1";

    /// The text of every applied migration, in order.
    APPLIED_MIGRATIONS = "SELECT script FROM _synced_migrations ORDER BY n";

    /// Records an applied migration.
    RECORD_MIGRATION = "INSERT INTO _synced_migrations (n, script) VALUES (?1, ?2)";

    /// Stores a synced table's new descriptor.
    STORE_DESCRIPTOR = "UPDATE _synced_tables SET descriptor = ?2 WHERE name = ?1";

    /// Opens the savepoint around one pushed row.
    ROW_SAVEPOINT = "SAVEPOINT synced_row";

    /// Undoes what one pushed row did.
    ROW_ROLLBACK = "ROLLBACK TO synced_row";

    /// Closes the savepoint around one pushed row.
    ROW_RELEASE = "RELEASE synced_row";

    /// Opens the savepoint around one of the app's raw statements.
    RAW_SAVEPOINT = "SAVEPOINT synced_raw";

    /// Closes the savepoint around one of the app's raw statements.
    RAW_RELEASE = "RELEASE synced_raw";

    /// Undoes one of the app's raw statements.
    RAW_ROLLBACK = "ROLLBACK TO synced_raw";

    /// Rebuilds the file to its smallest size.
    VACUUM = "VACUUM;";

    /// Moves the write-ahead log into the file and truncates the log.
    CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE);";
}

/// Message prefix of the error raised when a row of a grow-only table would be
/// deleted (or re-keyed); the table name follows.
pub(crate) const GROW_ONLY_PREFIX: &str = "synced: grow-only table rows cannot be deleted: ";

/// The settings of a connection: `synchronous` (`FULL` when `full`, else
/// `NORMAL`), the page cache's limit in KiB and the busy timeout in ms.
/// The tables with triggers of the app's own: those not named as the
/// runtime's (see [`crate::schema::RESERVED_PREFIX`]).
pub(crate) const APP_TRIGGER_TABLES: &str = "SELECT DISTINCT tbl_name FROM sqlite_schema \
     WHERE type = 'trigger' AND substr(lower(name), 1, 7) <> '_synced'";

/// What makes a read connection refuse writes, even to its temporary tables.
pub(crate) const READ_ONLY: &str = "PRAGMA query_only = 1;";

pub(crate) fn connection_settings(full: bool, cache_size_kib: u32, busy_timeout_ms: u32) -> String {
    let synchronous = if full { "FULL" } else { "NORMAL" };
    format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA cache_size = -{cache_size_kib}; \
         PRAGMA busy_timeout = {busy_timeout_ms};"
    )
}

/// A row of `count` parameters (`SELECT ?1, ?2, …`), to read values as a row.
pub(crate) fn select_params(count: usize) -> String {
    let params: Vec<String> = (1..=count).map(|i| format!("?{i}")).collect();
    format!("SELECT {}", params.join(", "))
}

/// A table's `select` for a user's filter (see [`where_clause`]).
pub(crate) fn filtered_select(select: &str, filter: &str) -> String {
    format!("{select}{}", where_clause(filter))
}

/// What follows `SELECT … FROM t` for a user's filter: nothing, `WHERE filter`, or
/// the filter itself when it starts with `ORDER BY` or `LIMIT`.
fn where_clause(filter: &str) -> String {
    let trimmed = filter.trim_start();
    let mut words = trimmed.split_whitespace();
    let first = words.next().unwrap_or_default();
    let clause = first.eq_ignore_ascii_case("LIMIT")
        || (first.eq_ignore_ascii_case("ORDER")
            && words.next().is_some_and(|w| w.eq_ignore_ascii_case("BY")));
    if trimmed.is_empty() {
        String::new()
    } else if clause {
        format!(" {trimmed}")
    } else {
        format!(" WHERE {filter}")
    }
}

const CL: &str = "_synced_cl";
const DV: &str = "_synced_dv";
const CREATED: &str = "_synced_created";
const STATE: &str = "_synced_state";
/// The open version, qualified: an app column may be called `db_version`.
const OPEN_VERSION: &str = "_synced_state.db_version + 1";
/// The state row, unless the merge is writing: the insert trigger needs no `WHEN`
/// (and no second read of the state) when its `SELECT` filters on the flag.
const NEW_ROW_SOURCE: &str = "_synced_state WHERE _synced_state.applying = 0";
/// True unless the merge is writing remote changes.
const LOCAL: &str = "(SELECT applying FROM _synced_state) = 0";

/// Quotes an identifier: `a"b` → `"a""b"`.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Writes a value as an SQL literal: `NULL`, `-3`, `1.5`, `'it''s'`, `x'00ff'`.
/// A real keeps a decimal point or an exponent, so that SQLite reads it as one.
pub(crate) fn value_literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => i.to_string(),
        // `{:?}` writes `1.0`, `-0.0`, `1e300`; NaN and infinities never get here
        // (a default is finite), but would read back as NULL.
        Value::Real(r) if r.is_finite() => format!("{r:?}"),
        Value::Real(_) => "NULL".to_owned(),
        Value::Text(text) => literal(text),
        Value::Blob(bytes) => format!("x'{}'", hex::encode(bytes)),
    }
}

/// Quotes a string literal: `it's` → `'it''s'`.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A clock column of a value column, named after the column's id (its first
/// name), so that a rename leaves the clock as it is.
fn meta_col(column: &str, part: &str) -> String {
    ident(&format!("{column}.{part}"))
}

/// The prefix of every clock table's name. Generated names join their parts with
/// `.`, which table names cannot contain, so no two tables' objects share a name.
pub(crate) const CLOCK_PREFIX: &str = "_synced_clock.";

/// The name of a table's clock table.
/// The keys and causal lengths of `schema`'s rows changed after version `?1`,
/// in the order of their last change, at most `?2` of them.
pub(crate) fn changed_keys(schema: &TableSchema) -> String {
    let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
    format!(
        "SELECT {}, {CL} FROM {} WHERE {DV} > ?1 ORDER BY {DV}, rowid LIMIT ?2",
        keys.join(", "),
        ident(&clock_table(&schema.name))
    )
}

pub(crate) fn clock_table(table: &str) -> String {
    format!("{CLOCK_PREFIX}{table}")
}

fn trigger(table: &str, what: &str) -> String {
    ident(&format!("_synced_trigger.{table}.{what}"))
}

/// `"a", "b"` for the given columns, optionally qualified.
fn list<'a>(columns: impl Iterator<Item = &'a ColumnSchema>, qualifier: &str) -> String {
    columns
        .map(|c| format!("{qualifier}{}", ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `<qualifier><key> = ?<n>` for each key column, in key order, numbered after
/// `before` other parameters.
fn key_equals(schema: &TableSchema, qualifier: &str, before: usize) -> String {
    schema
        .key_columns()
        .enumerate()
        .map(|(i, c)| format!("{qualifier}{} = ?{}", ident(&c.name), before + i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `l."a" = r."a" AND l."b" = r."b"` over the key columns.
fn key_match(schema: &TableSchema, left: &str, right: &str) -> String {
    schema
        .key_columns()
        .map(|c| format!("{left}{0} = {right}{0}", ident(&c.name)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Where a clock row's columns sit in a query's result: after `offset` leading
/// columns come the row's causal length, version and creation version, then per
/// value column its col_version and version (and, in `changes_since`, its current
/// value). The queries below and the code that reads them share this one layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockLayout {
    offset: usize,
    per_column: usize,
}

impl ClockLayout {
    /// How the changes queries of `schema` (`changes_since` and the like) lay
    /// out their result: the key columns, the clock, then whether the app row
    /// exists and the clock row's rowid.
    pub(crate) fn changes(schema: &TableSchema) -> Self {
        Self {
            offset: schema.key_columns().count(),
            per_column: 3,
        }
    }

    pub(crate) fn cl(self) -> usize {
        self.offset
    }

    pub(crate) fn dv(self) -> usize {
        self.offset + 1
    }

    pub(crate) fn created(self) -> usize {
        self.offset + 2
    }

    pub(crate) fn col_version(self, column: usize) -> usize {
        self.offset + 3 + self.per_column * column
    }

    pub(crate) fn col_dv(self, column: usize) -> usize {
        self.col_version(column) + 1
    }

    /// The current value of a column (`changes_since` only).
    pub(crate) fn value(self, column: usize) -> usize {
        self.col_version(column) + 2
    }

    /// The first result column after those of `columns` value columns.
    pub(crate) fn after(self, columns: usize) -> usize {
        self.col_version(columns)
    }
}

/// Every statement for one synced table.
#[derive(Debug, Clone)]
pub(crate) struct TableSql {
    pub(crate) create_table: String,
    pub(crate) create_clock: String,
    pub(crate) create_triggers: String,
    pub(crate) drop_triggers: String,
    pub(crate) create_guards: String,
    pub(crate) drop_guards: String,
    /// Creates the index of every column the app indexes, and drops those of
    /// the others (`#[synced(index)]`).
    pub(crate) indexes: String,
    pub(crate) drop_clock: String,
    /// Deletes every row and every clock (run with the triggers off).
    #[cfg_attr(
        not(feature = "http"),
        allow(dead_code, reason = "used by the sync client")
    )]
    pub(crate) wipe: String,
    /// Gives the changes this database made under an earlier site id, after
    /// version `?1` and up to `?2`, version `?3` (see [`crate::identity`]).
    pub(crate) restamp: String,
    /// Deletes a row's clock by key (an eviction, with the triggers off).
    pub(crate) delete_clock: String,
    pub(crate) insert: String,
    pub(crate) update: Option<String>,
    pub(crate) delete: String,
    pub(crate) select: String,
    pub(crate) select_by_key: String,
    /// The key of the clock row with rowid `?1`.
    pub(crate) clock_key_by_rowid: String,
    /// The key of the table's row with rowid `?1`.
    pub(crate) key_by_rowid: String,
    pub(crate) changes_since: String,
    /// `changes_since` for the clock rows whose `(_synced_dv, rowid)` lies after
    /// `(?1, ?2)` and up to `(?3, ?4)`: one page of a batched export.
    pub(crate) changes_between: String,
    /// The `(_synced_dv, rowid)` of up to `?3` clock rows after `(?1, ?2)`, in that
    /// order: where the pages of a batched export end.
    pub(crate) batch_keys: String,
    pub(crate) open_changes: String,
    pub(crate) backfill_live: String,
    pub(crate) backfill_deleted: String,
    /// The merge: a row's clock by key, laid out as `merge_clock_layout` says.
    pub(crate) merge_read_clock: String,
    pub(crate) merge_clock_layout: ClockLayout,
    /// The merge: writes whole clock rows (key columns, then as read).
    pub(crate) merge_write_clock: RowsUpsert,
    /// The merge: writes whole app rows (every column, table order).
    pub(crate) merge_write_row: RowsUpsert,
}

/// An upsert of any number of rows in one statement (see [`RowsUpsert::sql`]):
/// the merge writes the rows of a payload in sets, since a statement run per
/// row cost as much as the rows' own B-tree writes.
#[derive(Debug, Clone)]
pub(crate) struct RowsUpsert {
    /// Parameters of each row, its marker not counted.
    pub(crate) columns: usize,
    /// `INSERT INTO … (…)`
    insert: String,
    /// `ON CONFLICT (…) DO …`
    conflict: String,
}

impl RowsUpsert {
    /// Writes `columns` into `table` as the rows given, and on a conflict of
    /// `keys` runs `action`.
    fn new(table: &str, columns: &[String], keys: &str, action: &str) -> Self {
        Self {
            columns: columns.len(),
            insert: format!("INSERT INTO {table} ({})", columns.join(", ")),
            conflict: format!("ON CONFLICT ({keys}) DO {action}"),
        }
    }

    /// The statement for `rows` rows, each `1 + columns` parameters in a
    /// row: a marker, then the columns. A row whose marker is NULL is not
    /// written, so that a statement of many rows can write fewer. The
    /// statement of one row is a plain upsert, which leaves its marker out
    /// (a set of rows costs a select from a list of values, about 0.8 µs more
    /// for a row alone).
    pub(crate) fn sql(&self, rows: usize) -> String {
        let (insert, conflict) = (&self.insert, &self.conflict);
        if rows == 1 {
            let values = (2..=self.columns + 1)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            return format!("{insert} VALUES ({values}) {conflict}");
        }
        let selected = (2..=self.columns + 1)
            .map(|i| format!("column{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = format!("(?{})", ", ?".repeat(self.columns));
        let values = vec![row; rows].join(", ");
        format!(
            "{insert} SELECT {selected} FROM (VALUES {values}) WHERE column1 IS NOT NULL {conflict}"
        )
    }
}

/// The most tables whose statements [`TableSql::of`] keeps per thread.
const KEPT_TABLE_SQL: usize = 64;

thread_local! {
    /// The statements of the tables this thread used last, by their schema.
    static KEPT_SQL: std::cell::RefCell<Vec<(TableSchema, std::sync::Arc<TableSql>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl TableSql {
    /// [`new`](Self::new), kept for the thread's next use of the same
    /// schema: an export, a merge or a look for open changes needs a few of a
    /// table's statements, and writing all of them out took most of a small
    /// filtered export's time.
    pub(crate) fn of(schema: &TableSchema) -> std::sync::Arc<TableSql> {
        KEPT_SQL.with(|kept| {
            let mut kept = kept.borrow_mut();
            if let Some((_, sql)) = kept.iter().find(|(known, _)| known == schema) {
                return std::sync::Arc::clone(sql);
            }
            if kept.len() >= KEPT_TABLE_SQL {
                kept.clear();
            }
            let sql = std::sync::Arc::new(TableSql::new(schema));
            kept.push((schema.clone(), std::sync::Arc::clone(&sql)));
            sql
        })
    }

    pub(crate) fn new(schema: &TableSchema) -> Self {
        let table = ident(&schema.name);
        let clock = ident(&clock_table(&schema.name));
        let all = list(schema.columns.iter(), "");
        let key_params = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.primary_key)
            .map(|(i, c)| format!("{} = ?{}", ident(&c.name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let by_key_params = key_equals(schema, "", 0);
        let placeholders = (1..=schema.columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sets = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.primary_key)
            .map(|(i, c)| format!("{} = ?{}", ident(&c.name), i + 1))
            .collect::<Vec<_>>();

        Self {
            create_table: create_table(schema),
            create_clock: create_clock(schema),
            create_triggers: create_triggers(schema),
            drop_triggers: drop_triggers(schema, &["insert", "update", "rekey", "delete"]),
            create_guards: create_guards(schema),
            drop_guards: drop_triggers(schema, &["guard_delete", "guard_rekey"]),
            indexes: indexes(schema),
            drop_clock: format!("DROP TABLE IF EXISTS {clock};"),
            wipe: format!("DELETE FROM {table}; DELETE FROM {clock};"),
            restamp: restamp(schema),
            delete_clock: format!("DELETE FROM {clock} WHERE {by_key_params}"),

            insert: format!("INSERT OR FAIL INTO {table} ({all}) VALUES ({placeholders})"),
            update: (!sets.is_empty()).then(|| {
                format!(
                    "UPDATE OR FAIL {table} SET {} WHERE {key_params}",
                    sets.join(", ")
                )
            }),
            delete: format!("DELETE FROM {table} WHERE {by_key_params}"),
            select: format!("SELECT {all} FROM {table}"),
            select_by_key: format!("SELECT {all} FROM {table} WHERE {by_key_params}"),
            clock_key_by_rowid: format!(
                "SELECT {} FROM {clock} WHERE rowid = ?1",
                list(schema.key_columns(), "")
            ),
            key_by_rowid: format!(
                "SELECT {} FROM {table} WHERE rowid = ?1",
                list(schema.key_columns(), "")
            ),
            changes_since: changes_since(schema, &format!("c.{DV} > ?1")),
            changes_between: changes_since(schema, &page_between(1)),
            // In two parts, the rest of version ?1 and the versions after,
            // merged in order: a search of the index on the version alone.
            // (SQLite searches `(v, rowid) > (?1, ?2)` as `v >= ?1`, and a
            // batch inside a version of a million rows read every row of it
            // before its own.)
            batch_keys: format!(
                "SELECT {DV}, rowid FROM {clock} WHERE {DV} = ?1 AND rowid > ?2 \
                 AND {DV} <= (SELECT {STATE}.db_version FROM {STATE}) \
                 UNION ALL SELECT {DV}, rowid FROM {clock} WHERE {DV} > ?1 \
                 AND {DV} <= (SELECT {STATE}.db_version FROM {STATE}) ORDER BY 1, 2 LIMIT ?3"
            ),
            merge_clock_layout: ClockLayout {
                offset: 0,
                per_column: 2,
            },
            open_changes: format!(
                "SELECT EXISTS (SELECT 1 FROM {clock} WHERE {DV} > (SELECT {STATE}.db_version FROM {STATE}))"
            ),
            backfill_live: backfill_live(schema),
            merge_read_clock: {
                let meta = clock_columns(schema);
                let keys = schema.key_columns().count();
                format!(
                    "SELECT {} FROM {clock} WHERE {by_key_params}",
                    meta[keys..].join(", ")
                )
            },
            merge_write_clock: {
                let cols = clock_columns(schema);
                let keys = schema.key_columns().count();
                let sets = cols[keys..]
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                RowsUpsert::new(
                    &clock,
                    &cols,
                    &list(schema.key_columns(), ""),
                    &format!("UPDATE SET {sets}"),
                )
            },
            merge_write_row: {
                let values: Vec<String> = schema
                    .value_columns()
                    .map(|c| format!("{0} = excluded.{0}", ident(&c.name)))
                    .collect();
                let action = if values.is_empty() {
                    "NOTHING".to_owned()
                } else {
                    format!("UPDATE SET {}", values.join(", "))
                };
                let columns: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();
                RowsUpsert::new(&table, &columns, &list(schema.key_columns(), ""), &action)
            },
            backfill_deleted: tombstone(
                schema,
                &format!(
                    "{CL} % 2 = 1 AND NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {})",
                    key_match(schema, "t.", &format!("{clock}."))
                ),
            ),
        }
    }
}

impl fmt::Display for TableSql {
    /// The schema objects of the table, as a script.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}\n", self.create_table)?;
        writeln!(f, "{}\n", self.create_clock)?;
        write!(f, "{}{}", self.create_triggers, self.create_guards)?;
        let mut created = self.indexes.lines().filter(|l| l.starts_with("CREATE"));
        created.try_for_each(|index| write!(f, "\n{index}"))
    }
}

impl TableSchema {
    /// The `CREATE` statements (table, clock table, index, triggers) the runtime runs
    /// when this table is registered, as one script for inspection.
    pub fn sql(&self) -> String {
        TableSql::new(self).to_string()
    }
}

/// The index of each value column the app indexes (`CREATE INDEX IF NOT
/// EXISTS`), and the removal of those of the others, one statement a line.
/// An index is named after its column's id, which renames keep (SQLite moves
/// an index to a column's new name with it).
fn indexes(schema: &TableSchema) -> String {
    let mut sql = String::new();
    for column in schema.value_columns() {
        let name = ident(&format!(
            // The table's length keeps `a_b` + `c` apart from `a` + `b_c`.
            "_synced_index.{}.{}.{}",
            schema.name.len(),
            schema.name,
            column.id()
        ));
        if column.indexed && !column.retired {
            let _ = writeln!(
                sql,
                "CREATE INDEX IF NOT EXISTS {name} ON {} ({});",
                ident(&schema.name),
                ident(&column.name)
            );
        } else {
            let _ = writeln!(sql, "DROP INDEX IF EXISTS {name};");
        }
    }
    sql
}

fn create_table(schema: &TableSchema) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (\n", ident(&schema.name));
    let single_key = schema.key_columns().count() == 1;
    for c in schema.columns.iter() {
        let _ = write!(sql, "  {} {}", ident(&c.name), c.sql_type.as_sql());
        if !c.nullable {
            sql.push_str(" NOT NULL");
        }
        if c.primary_key && single_key {
            sql.push_str(" PRIMARY KEY");
        }
        // A default the descriptor's checks refused is not written at all.
        if let Ok(Some(default)) = c.default_value() {
            let _ = write!(sql, " DEFAULT {}", value_literal(&default));
        }
        sql.push_str(",\n");
    }
    if single_key {
        sql.truncate(sql.len() - 2);
        sql.push('\n');
    } else {
        let _ = writeln!(sql, "  PRIMARY KEY ({})", list(schema.key_columns(), ""));
    }
    sql.push_str(") STRICT;");
    sql
}

fn clock_columns(schema: &TableSchema) -> Vec<String> {
    let mut cols: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
    cols.extend([CL, DV, CREATED].map(String::from));
    for c in schema.value_columns() {
        for part in ["v", "dv"] {
            cols.push(meta_col(c.id(), part));
        }
    }
    cols
}

/// The table in which a store that does not keep its rows in SQLite has
/// SQLite evaluate a row filter on one row at a time: the app table's columns,
/// types and key as `register` creates them (so every comparison and
/// conversion is the one the filter makes on SQLite), without a rowid, which
/// such a store does not have.
#[cfg(feature = "postgres")]
pub(crate) fn evaluation_table(schema: &TableSchema) -> String {
    create_table(schema).replacen(") STRICT;", ") STRICT, WITHOUT ROWID;", 1)
}

/// The text SQLite keeps in `sqlite_schema` for the app table `register`
/// creates from `schema` (without `IF NOT EXISTS` and the final `;`).
pub(crate) fn stored_table_sql(schema: &TableSchema) -> String {
    create_table(schema)
        .replacen("CREATE TABLE IF NOT EXISTS ", "CREATE TABLE ", 1)
        .trim_end_matches(';')
        .to_owned()
}

/// Renames a column of an app table (SQLite also renames it in the indexes,
/// views and triggers that name it).
pub(crate) fn rename_column(table: &str, from: &str, to: &str) -> String {
    format!(
        "ALTER TABLE {} RENAME COLUMN {} TO {};",
        ident(table),
        ident(from),
        ident(to)
    )
}

/// Adds a value column: to its app table, and its clock columns, at 0 ("never
/// written") in every existing clock row, to the clock table. No row is
/// rewritten.
pub(crate) fn add_column(table: &str, column: &ColumnSchema) -> [String; 2] {
    let mut app = format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        ident(table),
        ident(&column.name),
        column.sql_type.as_sql()
    );
    if !column.nullable {
        app.push_str(" NOT NULL");
    }
    // The rows that exist read it: what a row that never wrote it reads.
    if let Ok(Some(default)) = column.never_written() {
        let _ = write!(app, " DEFAULT {}", value_literal(&default));
    }
    app.push(';');
    let clock = ident(&clock_table(table));
    let clock = ["v", "dv"]
        .map(|part| {
            format!(
                "ALTER TABLE {clock} ADD COLUMN {} INTEGER DEFAULT 0;",
                meta_col(column.id(), part)
            )
        })
        .join("\n");
    [app, clock]
}

fn create_clock(schema: &TableSchema) -> String {
    let clock = clock_table(&schema.name);
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (\n", ident(&clock));
    for c in schema.key_columns() {
        let _ = writeln!(sql, "  {} {},", ident(&c.name), c.sql_type.as_sql());
    }
    let mut meta: Vec<String> = [CL, DV, CREATED].map(String::from).to_vec();
    for c in schema.value_columns() {
        for part in ["v", "dv"] {
            meta.push(meta_col(c.id(), part));
        }
    }
    let meta: Vec<String> = meta.iter().map(|m| format!("  {m} INTEGER")).collect();
    let _ = write!(
        sql,
        "{}\n);\nCREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({});\nCREATE INDEX IF NOT EXISTS {} ON {} ({DV});",
        meta.join(",\n"),
        ident(&format!("{clock}.key")),
        ident(&clock),
        list(schema.key_columns(), ""),
        ident(&format!("{clock}.dv")),
        ident(&clock),
    );
    sql
}

/// Records the row `source` (e.g. `NEW.`) as inserted: a new clock row, or, when the
/// key has a clock already, a resurrection (deleted row: causal length + 1, column
/// versions start afresh) or a rewrite of every column (live row, e.g. `INSERT OR
/// REPLACE`). `source_where` is the `FROM … WHERE …` tail that supplies the rows
/// and the state's `db_version` (a `WHERE` is required there:
/// it keeps SQLite from reading `ON CONFLICT` as a join constraint).
fn record_insert(schema: &TableSchema, source: &str, source_where: &str) -> String {
    let clock = ident(&clock_table(&schema.name));
    let mut values: Vec<String> = schema
        .key_columns()
        .map(|c| format!("{source}{}", ident(&c.name)))
        .collect();
    values.extend(["1".into(), OPEN_VERSION.into(), OPEN_VERSION.into()]);
    let mut updates = vec![
        format!("{CL} = {CL} + 1 - {CL} % 2"),
        format!("{DV} = excluded.{DV}"),
        format!("{CREATED} = CASE WHEN {CL} % 2 = 0 THEN excluded.{DV} ELSE {CREATED} END"),
    ];
    for c in schema.value_columns() {
        values.extend(["1".into(), OPEN_VERSION.into()]);
        let (v, dv) = (meta_col(c.id(), "v"), meta_col(c.id(), "dv"));
        updates.push(format!(
            "{v} = CASE WHEN {CL} % 2 = 0 THEN 1 ELSE {v} + 1 END"
        ));
        updates.push(format!("{dv} = excluded.{DV}"));
    }
    format!(
        "INSERT INTO {clock} ({}) SELECT {} FROM {source_where} ON CONFLICT ({}) DO UPDATE SET {};",
        clock_columns(schema).join(", "),
        values.join(", "),
        list(schema.key_columns(), ""),
        updates.join(", "),
    )
}

/// See [`TableSql::restamp`]: each version of the clock row (its columns', its
/// creation's, its last change's) that is one of this database's own in the
/// range moves to `?3`, and the row's last change is the latest of them. A
/// row's last change is never older than its other versions, so only rows
/// changed after `?1` are read and written (through the index on it).
fn restamp(schema: &TableSchema) -> String {
    let own = |column: &str| {
        format!(
            "{column} = CASE WHEN {column} > ?1 AND {column} <= ?2 AND {column} NOT IN \
             (SELECT db_version FROM _synced_versions) THEN ?3 ELSE {column} END"
        )
    };
    let mut sets: Vec<String> = vec![own(CREATED), own(DV)];
    let mut latest = vec![DV.to_owned()];
    for c in schema.value_columns() {
        let column = meta_col(c.id(), "dv");
        sets.push(own(&column));
        latest.push(column);
    }
    let clock = ident(&clock_table(&schema.name));
    let mut sql = format!("UPDATE {clock} SET {} WHERE {DV} > ?1;", sets.join(", "));
    // `max` of one argument would be the aggregate.
    if latest.len() > 1 {
        let _ = write!(
            sql,
            "\nUPDATE {clock} SET {DV} = max({}) WHERE {DV} > ?1;",
            latest.join(", ")
        );
    }
    sql
}

/// Marks the live clock rows matching `filter` as deleted (causal length + 1).
fn tombstone(schema: &TableSchema, filter: &str) -> String {
    format!(
        "UPDATE {} SET {CL} = {CL} + 1, {DV} = (SELECT {OPEN_VERSION} FROM {STATE}) WHERE {filter};",
        ident(&clock_table(&schema.name)),
    )
}

fn drop_triggers(schema: &TableSchema, which: &[&str]) -> String {
    which
        .iter()
        .map(|t| format!("DROP TRIGGER IF EXISTS {};\n", trigger(&schema.name, t)))
        .collect()
}

fn key_changed(schema: &TableSchema) -> String {
    schema
        .key_columns()
        .map(|c| format!("OLD.{0} IS NOT NEW.{0}", ident(&c.name)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Grow-only tables refuse deletes and key changes (a key change deletes the old
/// key). These guards stay while tracking is off.
fn create_guards(schema: &TableSchema) -> String {
    if schema.algorithm != Algorithm::Gos {
        return String::new();
    }
    let name = &schema.name;
    let table = ident(name);
    let raise = format!(
        "SELECT RAISE(ABORT, {});",
        literal(&format!("{GROW_ONLY_PREFIX}{name}"))
    );
    format!(
        "CREATE TRIGGER IF NOT EXISTS {} BEFORE DELETE ON {table} WHEN {LOCAL} BEGIN\n  {raise}\nEND;\n\
         CREATE TRIGGER IF NOT EXISTS {} BEFORE UPDATE ON {table} WHEN {LOCAL} AND ({}) BEGIN\n  {raise}\nEND;\n",
        trigger(name, "guard_delete"),
        trigger(name, "guard_rekey"),
        key_changed(schema),
    )
}

/// Tracking triggers: insert, update of value columns, key change and delete.
fn create_triggers(schema: &TableSchema) -> String {
    let name = &schema.name;
    let table = ident(name);
    let clock = ident(&clock_table(name));
    let key_changed = key_changed(schema);
    let old_key = key_match(schema, "", "OLD.");
    let mut sql = String::new();

    let _ = writeln!(
        sql,
        "CREATE TRIGGER IF NOT EXISTS {} AFTER INSERT ON {table} BEGIN\n  {}\nEND;",
        trigger(name, "insert"),
        record_insert(schema, "NEW.", NEW_ROW_SOURCE),
    );

    let value_columns: Vec<_> = schema.value_columns().collect();
    if !value_columns.is_empty() {
        let changed = |c: &ColumnSchema| format!("OLD.{0} IS NOT NEW.{0}", ident(&c.name));
        // Column versions are plain assignments; the columns that need the open
        // version come from one row-value subquery of the state.
        let mut sets = Vec::new();
        let (mut targets, mut stamps) = (Vec::new(), Vec::new());
        for c in &value_columns {
            let (v, dv) = (meta_col(c.id(), "v"), meta_col(c.id(), "dv"));
            let ch = changed(c);
            sets.push(format!("{v} = {v} + ({ch})"));
            targets.push(dv.clone());
            stamps.push(format!("CASE WHEN {ch} THEN {OPEN_VERSION} ELSE {dv} END"));
        }
        targets.push(DV.to_owned());
        stamps.push(OPEN_VERSION.to_owned());
        sets.push(format!(
            "({}) = (SELECT {} FROM {STATE})",
            targets.join(", "),
            stamps.join(", ")
        ));
        let any_changed = value_columns
            .iter()
            .map(|c| changed(c))
            .collect::<Vec<_>>()
            .join(" OR ");
        let _ = writeln!(
            sql,
            "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE ON {table} WHEN {LOCAL} AND NOT ({key_changed}) AND ({any_changed}) BEGIN\n  UPDATE {clock} SET {} WHERE {};\nEND;",
            trigger(name, "update"),
            sets.join(", "),
            key_match(schema, "", "NEW."),
        );
    }

    if schema.algorithm == Algorithm::Cls {
        let _ = writeln!(
            sql,
            "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE ON {table} WHEN {LOCAL} AND ({key_changed}) BEGIN\n  {}\n  {}\nEND;",
            trigger(name, "rekey"),
            tombstone(schema, &format!("{old_key} AND {CL} % 2 = 1")),
            record_insert(schema, "NEW.", NEW_ROW_SOURCE),
        );
        let _ = writeln!(
            sql,
            "CREATE TRIGGER IF NOT EXISTS {} AFTER DELETE ON {table} WHEN {LOCAL} BEGIN\n  {}\nEND;",
            trigger(name, "delete"),
            tombstone(schema, &format!("{old_key} AND {CL} % 2 = 1")),
        );
    }
    sql
}

/// Whether the row whose key is bound after the filter's `params` parameters
/// passes `filter` (SQL over the table's columns, with `?1`…`?{params}`): 1 or
/// 0, and no result if there is no such row.
pub(crate) fn row_passes(schema: &TableSchema, filter: &str, params: usize) -> String {
    let keys = key_equals(schema, "", params);
    format!(
        "SELECT CASE WHEN ({filter}) THEN 1 ELSE 0 END FROM {} WHERE {keys}",
        ident(&schema.name)
    )
}

/// An index of one column of an app table, for the row filters that read it.
pub(crate) fn filter_index(schema: &TableSchema, column: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        // The table's length keeps `a_b` + `c` apart from `a` + `b_c`.
        ident(&format!(
            "_synced_filter.{}.{}.{column}",
            schema.name.len(),
            schema.name
        )),
        ident(&schema.name),
        ident(column)
    )
}

/// Whether the app row `p` of the clock row `c` passes a row filter (false if
/// there is no app row).
fn passes(schema: &TableSchema, filter: &str) -> String {
    format!(
        "coalesce((SELECT ({filter}) FROM {} AS p WHERE {}), 0)",
        ident(&schema.name),
        key_match(schema, "p.", "c.")
    )
}

/// The clock rows `c` whose `(version, rowid)` lies after `(?n, ?n+1)` and at
/// or before `(?n+2, ?n+3)`, as four ranges of the index on the version, each
/// bounded on both ends, which SQLite searches one by one (those whose
/// condition on the bounds alone is false, not at all). Compared as row
/// values, the same pair is searched from the first row of the first version
/// to the end of it, whatever the rowids: a page inside a version of a million
/// rows read every row of the version after its start.
fn page_between(n: usize) -> String {
    let (after, after_rowid, upto, upto_rowid) = (n, n + 1, n + 2, n + 3);
    format!(
        "((c.{DV} = ?{after} AND ?{after} = ?{upto} \
           AND c.rowid > ?{after_rowid} AND c.rowid <= ?{upto_rowid}) \
          OR (c.{DV} = ?{after} AND ?{after} < ?{upto} AND c.rowid > ?{after_rowid}) \
          OR (c.{DV} > ?{after} AND c.{DV} < ?{upto}) \
          OR (c.{DV} = ?{upto} AND ?{after} < ?{upto} AND c.rowid <= ?{upto_rowid}))"
    )
}

/// A page of clock rows (as `TableSql::changes_between`) with one more column:
/// whether the app row passes a row filter of `params` parameters, bound first,
/// before the page's bounds. With `only_passing`, the rows that fail are left
/// out unless the site whose ordinal is bound after the bounds created them: for
/// a reader that holds nothing else in the table.
pub(crate) fn changes_between_filtered(
    schema: &TableSchema,
    filter: &str,
    params: usize,
    only_passing: bool,
) -> String {
    let passes = passes(schema, filter);
    let mut page = page_between(params + 1);
    if only_passing {
        page.push_str(&format!(
            " AND ({passes} OR EXISTS (SELECT 1 FROM _synced_versions AS v \
             WHERE v.db_version = c.{CREATED} AND v.site = ?{}))",
            params + 5
        ));
    }
    changes_query(schema, Drive::Clock, &page, &[&passes])
}

/// The clock row whose key is bound after a row filter's `params` parameters,
/// laid out as [`changes_between_filtered`].
pub(crate) fn clock_row_filtered(schema: &TableSchema, filter: &str, params: usize) -> String {
    let keys = key_equals(schema, "c.", params);
    changes_query(schema, Drive::Clock, &keys, &[&passes(schema, filter)])
}

/// The rows a snapshot walks for a reader, after the position bound after a row
/// filter's `params` parameters, in position order, laid out as
/// [`changes_between_filtered`] with the position last.
///
/// With a filter (`Some`), the live rows that pass it, positioned by the app
/// row's rowid: the query starts from the app table, so the indexes of the
/// columns the filter reads find the rows, and the cost follows what passes
/// rather than the table's size. Without one (every row may be read), every
/// clock row, deletes included, positioned by the clock's rowid.
pub(crate) fn snapshot_rows(schema: &TableSchema, filter: Option<&str>, params: usize) -> String {
    let after = params + 1;
    match filter {
        Some(filter) => {
            // The filter reads the app table alone, as everywhere else: in the
            // join, a key column's name would be ambiguous.
            let passing = format!("({filter}) AND rowid > ?{after}");
            let query = changes_query(
                schema,
                Drive::App(&passing),
                &format!("c.{CL} % 2 = 1"),
                &["1", &format!("t.{APP_ROWID}")],
            );
            format!("{query} ORDER BY t.{APP_ROWID}")
        }
        None => {
            let query = changes_query(
                schema,
                Drive::Clock,
                &format!("c.rowid > ?{after}"),
                &["1", "c.rowid"],
            );
            format!("{query} ORDER BY c.rowid")
        }
    }
}

/// The app row's rowid, as `Drive::App` names it.
const APP_ROWID: &str = "_synced_rowid";

/// Clock rows that match `filter` (changed after `?1`, or in a page), joined with
/// the app row for current values, laid out as [`ClockLayout::changes`] says.
fn changes_since(schema: &TableSchema, filter: &str) -> String {
    changes_query(schema, Drive::Clock, filter, &[])
}

/// Which table a changes query starts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drive<'a> {
    /// Every clock row that matches, with its app row if there is one.
    Clock,
    /// The app rows that match this condition (over the app table alone), each
    /// with its clock.
    App(&'a str),
}

fn changes_query(schema: &TableSchema, drive: Drive<'_>, filter: &str, extra: &[&str]) -> String {
    let mut cols: Vec<String> = schema
        .key_columns()
        .map(|c| format!("c.{}", ident(&c.name)))
        .collect();
    cols.extend([CL, DV, CREATED].map(|m| format!("c.{m}")));
    for c in schema.value_columns() {
        for part in ["v", "dv"] {
            cols.push(format!("c.{}", meta_col(c.id(), part)));
        }
        cols.push(format!("t.{}", ident(&c.name)));
    }
    let first_key = schema
        .key_columns()
        .next()
        .map(|c| ident(&c.name))
        .unwrap_or_default();
    cols.push(format!("t.{first_key} IS NOT NULL"));
    cols.push("c.rowid".to_owned());
    cols.extend(extra.iter().map(|e| (*e).to_owned()));
    let clock = ident(&clock_table(&schema.name));
    let table = ident(&schema.name);
    let from = match drive {
        Drive::Clock => format!("{clock} AS c LEFT JOIN {table} AS t"),
        // CROSS JOIN keeps the app table outside, where its indexes apply.
        Drive::App(rows) => format!(
            "(SELECT rowid AS {APP_ROWID}, * FROM {table} WHERE {rows}) AS t CROSS JOIN {clock} AS c"
        ),
    };
    format!(
        // Never a change of the open version: it is final only once closed.
        "SELECT {} FROM {from} ON {} \
         WHERE {filter} AND c.{DV} <= (SELECT {STATE}.db_version FROM {STATE})",
        cols.join(", "),
        key_match(schema, "t.", "c."),
    )
}

/// Sets the columns at `columns` (table order) of the row with a key: their
/// values are `?1`…`?n`, then the key's, in key order. Only these columns are
/// written, so only they can be recorded as changed.
pub(crate) fn update_columns(schema: &TableSchema, columns: &[usize]) -> String {
    let sets = columns
        .iter()
        .enumerate()
        .map(|(p, &i)| format!("{} = ?{}", ident(&schema.columns[i].name), p + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE OR FAIL {} SET {sets} WHERE {}",
        ident(&schema.name),
        key_equals(schema, "", columns.len())
    )
}

/// Stores in every row of `schema`'s table the value of `column` it reads now:
/// a row stored before the column was added reads the table's default, and
/// keeps that value when the default changes. Run with every trigger off.
pub(crate) fn store_what_rows_read(schema: &TableSchema, column: &ColumnSchema) -> String {
    let name = ident(&column.name);
    format!("UPDATE {} SET {name} = {name}", ident(&schema.name))
}

/// Gives every live row of `schema`'s table that never wrote `column` (its
/// clock of the column at 0) the value such a row reads
/// ([`ColumnSchema::never_written`]). Run with every trigger off: nothing is
/// recorded.
pub(crate) fn realign_never_written(schema: &TableSchema, column: &ColumnSchema) -> String {
    let value = column
        .never_written()
        .ok()
        .flatten()
        .map_or_else(|| "NULL".to_owned(), |v| value_literal(&v));
    let table = ident(&schema.name);
    let clock = ident(&clock_table(&schema.name));
    format!(
        "UPDATE {table} AS t SET {} = {value} WHERE EXISTS (SELECT 1 FROM {clock} AS c \
         WHERE {} AND c.{CL} % 2 = 1 AND c.{} = 0)",
        ident(&column.name),
        key_match(schema, "c.", "t."),
        meta_col(column.id(), "v"),
    )
}

/// Records every app row without a live clock as inserted (tracking turned on for
/// rows written while it was off, or for a table that existed before).
fn backfill_live(schema: &TableSchema) -> String {
    let table = ident(&schema.name);
    let clock = ident(&clock_table(&schema.name));
    let from = format!(
        "{table} AS t, {STATE} WHERE NOT EXISTS (SELECT 1 FROM {clock} AS c WHERE {} AND c.{CL} % 2 = 1)",
        key_match(schema, "c.", "t.")
    );
    record_insert(schema, "t.", &from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::SqlType;

    fn todos() -> TableSchema {
        TableSchema::new(
            "todos",
            Algorithm::Cls,
            vec![
                ColumnSchema::new("id", SqlType::Text).primary_key(),
                ColumnSchema::new("title", SqlType::Text).default_sql("''"),
                ColumnSchema::new("done", SqlType::Integer).default_sql("0"),
                ColumnSchema::new("note", SqlType::Text).nullable(true),
            ],
        )
    }

    fn pairs() -> TableSchema {
        TableSchema::new(
            "pairs",
            Algorithm::Gos,
            vec![
                ColumnSchema::new("a", SqlType::Text).primary_key(),
                ColumnSchema::new("b", SqlType::Integer).primary_key(),
            ],
        )
    }

    fn conn_with(schema: &TableSchema) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(CREATE_META).unwrap();
        let sql = TableSql::new(schema);
        conn.execute_batch(&sql.create_table).unwrap();
        conn.execute_batch(&sql.create_clock).unwrap();
        conn.execute_batch(&sql.create_triggers).unwrap();
        conn
    }

    #[test]
    fn filters_become_where_clauses_unless_they_only_order() {
        assert_eq!(where_clause(""), "");
        assert_eq!(where_clause("done = ?1"), " WHERE done = ?1");
        assert_eq!(where_clause(" order by title"), " order by title");
        assert_eq!(where_clause("LIMIT 3"), " LIMIT 3");
        assert_eq!(where_clause("ordering = 1"), " WHERE ordering = 1");
        assert_eq!(where_clause("limited = ?1"), " WHERE limited = ?1");
        assert_eq!(where_clause("ORDER\n  BY title"), " ORDER\n  BY title");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn tables_are_strict_with_defaults() {
        let sql = TableSql::new(&todos()).create_table;
        assert!(sql.ends_with(") STRICT;"), "{sql}");
        assert!(sql.contains(r#""id" TEXT NOT NULL PRIMARY KEY"#), "{sql}");
        assert!(
            sql.contains(r#""done" INTEGER NOT NULL DEFAULT 0"#),
            "{sql}"
        );
        // A nullable column: its definition ends after its type.
        let note = &sql[sql.find(r#""note""#).expect("the note column")..];
        let note = note.split([',', '\n']).next().unwrap_or_default().trim();
        assert_eq!(note, r#""note" TEXT"#, "{sql}");
        let pairs = TableSql::new(&pairs()).create_table;
        assert!(pairs.contains(r#"PRIMARY KEY ("a", "b")"#), "{pairs}");
    }

    /// Prepares `statement`; a script of several statements runs instead, in a
    /// savepoint that is rolled back.
    fn check(conn: &rusqlite::Connection, name: &str, statement: &str) {
        if statement.trim().is_empty() {
            return; // a script with nothing to do for this table
        }
        match conn.prepare(statement) {
            Ok(_) => {}
            Err(rusqlite::Error::MultipleStatement) => {
                conn.execute_batch("SAVEPOINT checked").unwrap();
                let ran = conn.execute_batch(statement);
                conn.execute_batch("ROLLBACK TO checked; RELEASE checked")
                    .unwrap();
                ran.unwrap_or_else(|e| panic!("{name}: {e}\n{statement}"));
            }
            Err(e) => panic!("{name}: {e}\n{statement}"),
        }
    }

    #[test]
    fn every_fixed_statement_prepares() {
        let conn = conn_with(&todos());
        conn.execute_batch(CREATE_FORMAT).unwrap();
        // `SET_TABLE_SQL` runs with it on (see `crate::evolve`).
        conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
        assert!(STATEMENTS.len() > 60, "{}", STATEMENTS.len());
        // Upgrades of older formats run against the state table those had.
        let upgrades = ["ADD_VACUUMS"];
        let older = rusqlite::Connection::open_in_memory().unwrap();
        older
            .execute_batch(
                "CREATE TABLE _synced_state (id INTEGER PRIMARY KEY, site_id BLOB, \
                 db_version INTEGER, applying INTEGER);",
            )
            .unwrap();
        for (name, statement) in STATEMENTS {
            let conn = if upgrades.contains(name) {
                &older
            } else {
                &conn
            };
            check(conn, name, statement);
        }
        check(&conn, "select_params", &select_params(3));
        // Settings run outside any transaction, as at opening.
        for settings in [
            connection_settings(true, 1024, 5_000),
            connection_settings(false, 0, 0),
        ] {
            conn.execute_batch(&settings)
                .unwrap_or_else(|e| panic!("{e}\n{settings}"));
        }
    }

    /// A page inside one version of many rows is searched between its two
    /// rowids, and the end of the next page is found from the page's end: a
    /// batched export of a million rows written in one transaction reads each
    /// row once, not every row of the version before it for each batch.
    #[test]
    fn pages_are_searched_between_their_bounds() {
        let schema = todos();
        let conn = conn_with(&schema);
        let sql = TableSql::new(&schema);
        let page = plan(&conn, &sql.changes_between, 4);
        assert!(page.contains("=? AND rowid>? AND rowid<?)"), "{page}");
        assert!(!page.contains("SCAN c"), "{page}");
        let keys = plan(&conn, &sql.batch_keys, 3);
        assert!(keys.contains("MERGE (UNION ALL)"), "{keys}");
        assert!(keys.contains("rowid>?"), "{keys}");
        assert!(!keys.contains("USE TEMP B-TREE"), "{keys}");
    }

    #[test]
    fn every_generated_statement_prepares() {
        for schema in [&todos(), &pairs()] {
            let conn = conn_with(schema);
            // Every statement of the table (a field added later must be
            // listed here to compile).
            let TableSql {
                create_table,
                create_clock,
                create_triggers,
                drop_triggers,
                create_guards,
                drop_guards,
                drop_clock,
                wipe,
                restamp,
                delete_clock,
                insert,
                update,
                delete,
                select,
                select_by_key,
                clock_key_by_rowid,
                key_by_rowid,
                changes_since,
                changes_between,
                batch_keys,
                open_changes,
                backfill_live,
                backfill_deleted,
                merge_read_clock,
                merge_clock_layout: _,
                merge_write_clock,
                merge_write_row,
                indexes,
            } = TableSql::new(schema);
            let named = [
                ("create_table", create_table),
                ("create_clock", create_clock),
                ("create_triggers", create_triggers),
                ("create_guards", create_guards),
                ("wipe", wipe),
                ("delete_clock", delete_clock),
                ("insert", insert),
                ("delete", delete),
                ("select", select),
                ("select_by_key", select_by_key),
                ("clock_key_by_rowid", clock_key_by_rowid),
                ("key_by_rowid", key_by_rowid),
                ("changes_since", changes_since),
                ("changes_between", changes_between),
                ("batch_keys", batch_keys),
                ("open_changes", open_changes),
                ("backfill_live", backfill_live),
                ("backfill_deleted", backfill_deleted),
                ("merge_read_clock", merge_read_clock),
                ("merge_write_clock", merge_write_clock.sql(1)),
                ("merge_write_clock", merge_write_clock.sql(64)),
                ("merge_write_row", merge_write_row.sql(1)),
                ("merge_write_row", merge_write_row.sql(64)),
                ("drop_triggers", drop_triggers),
                ("drop_guards", drop_guards),
                ("drop_clock", drop_clock),
            ];
            for (name, statement) in &named {
                check(&conn, name, statement);
            }
            // The re-keying runs its lines one by one, and so do the indexes
            // (of the table as it is, and with every value column indexed).
            for line in restamp.split('\n') {
                check(&conn, "restamp", line);
            }
            let mut indexed = schema.clone();
            for column in indexed.columns.to_mut().iter_mut() {
                column.indexed = !column.primary_key;
            }
            for line in indexes
                .lines()
                .chain(TableSql::new(&indexed).indexes.lines())
            {
                check(&conn, "indexes", line);
            }
            if let Some(update) = &update {
                check(&conn, "update", update);
            }
            // The filtered reads, with a filter of one parameter.
            let filter = "?1 IS NULL OR rowid > 0";
            let column = &schema
                .value_columns()
                .next()
                .unwrap_or(&schema.columns[0])
                .name;
            for (name, statement) in [
                ("row_passes", row_passes(schema, filter, 1)),
                ("clock_row_filtered", clock_row_filtered(schema, filter, 1)),
                ("snapshot_rows", snapshot_rows(schema, Some(filter), 1)),
                ("snapshot_rows", snapshot_rows(schema, None, 0)),
                (
                    "changes_between_filtered",
                    changes_between_filtered(schema, filter, 1, true),
                ),
                (
                    "changes_between_filtered",
                    changes_between_filtered(schema, filter, 1, false),
                ),
                ("filter_index", filter_index(schema, column)),
            ] {
                check(&conn, name, &statement);
            }
        }
    }

    /// The plan of `query` with `params` bound to NULL, one step per line.
    fn plan(conn: &rusqlite::Connection, query: &str, params: usize) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
            .unwrap();
        let nulls = vec![rusqlite::types::Null; params];
        let steps = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_snapshot_finds_the_rows_through_the_filters_indexes() {
        let schema = todos();
        let conn = conn_with(&schema);
        for column in ["title", "done"] {
            conn.execute_batch(&filter_index(&schema, column)).unwrap();
        }
        // A filter may name a key column, which the clock has too.
        for filter in [
            "title = ?1",
            "title = ?1 OR done = 1",
            "title = ?1 AND id > ''",
        ] {
            let query = snapshot_rows(&schema, Some(filter), 1);
            let plan = plan(&conn, &query, 2);
            assert!(plan.contains("_synced_filter.5.todos.title"), "{plan}");
            assert!(!plan.contains("SCAN todos"), "{plan}");
        }
    }

    #[test]
    fn triggers_call_no_functions() {
        // A function call inside a trigger costs a statement journal per row.
        let triggers = TableSql::new(&todos()).create_triggers;
        for f in [
            "coalesce(",
            "max(",
            "min(",
            "iif(",
            "ifnull(",
            "abs(",
            "changes(",
            "last_insert_rowid(",
        ] {
            assert!(!triggers.to_lowercase().contains(f), "{f} in {triggers}");
        }
    }

    #[test]
    fn schema_script_is_printable() {
        let script = todos().sql();
        assert!(script.contains("CREATE TABLE IF NOT EXISTS \"todos\""));
        assert!(script.contains("CREATE TRIGGER IF NOT EXISTS \"_synced_trigger.todos.insert\""));
        assert!(pairs().sql().contains("RAISE(ABORT"));
    }
}
