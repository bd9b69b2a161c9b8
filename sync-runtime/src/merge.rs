//! Applying a payload: the merge rules every replica follows.
//!
//! For each row of the payload, against the local clock of that row:
//!
//! - A lower causal length than the local one: the change is ignored (it was
//!   overtaken by a delete or a re-insert this replica already has).
//! - A higher causal length: the row's existence changes first. An even one
//!   deletes the row; an odd one (re)creates it with every column at its default
//!   and `col_version` 0, so that columns the payload does not carry come out the
//!   same on every replica.
//! - Then, if the row exists, every column merges on its own: the higher
//!   `col_version` wins; on a tie the greater value (SQLite's order) wins; on a tie
//!   of values the greater site id wins, so that the clocks agree too.
//!
//! Every remote transaction whose changes win gets the next local version, as a
//! local transaction would, listed with its origin in `_synced_versions`. The
//! versions a payload shows are the sender's: they are kept per site and never
//! move this database's own version.
//!
//! Nothing in a payload is trusted. It is refused whole when it claims versions
//! beyond [`wire::PLAUSIBLE_CLOCK`], when its range (`since`, `upto`) contradicts
//! the versions of its exporter's own changes, when it carries a row twice, or
//! when a causal length or column version leaps beyond what any replica can have
//! counted to (see [`wire::CLOCK_STEP`]). The whole payload applies in one
//! transaction, with the tracking triggers off (the merge writes the clocks
//! itself).

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use rusqlite::{CachedStatement, Connection, OptionalExtension};

use crate::change::Origins;
use crate::error::{Error, Result};
use crate::filter::{self, RowFilter, RowFilters};
use crate::id::SiteId;
use crate::schema::{Algorithm, TableSchema};
use crate::site::{self, local_sites};
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::value::{self, SqlType, Value};
use crate::wire::{self, ColumnChange, Origin, Payload, RowChange};

/// What applying a payload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Changes (column values and row existences) that won and were written.
    pub applied: usize,
    /// Changes that lost against what this replica already had (a column value
    /// older than the one here, or a row overtaken by a delete or re-insert).
    pub ignored: usize,
    /// Rows that changed here.
    pub rows: usize,
    /// Changes of tables and columns this database does not have (another app
    /// version's), left out. They are not lost: this database asks their
    /// exporter for them again once its app registers those tables and
    /// columns (see [`SyncDb::register`](crate::SyncDb::register)).
    pub skipped: usize,
}

thread_local! {
    /// The rows this thread's open transaction evicted (their row and clock
    /// deleted), which the commit's change event lists: no clock is left to
    /// list them from.
    static EVICTED: std::cell::RefCell<Vec<(String, Vec<Value>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Takes the rows this thread's transaction evicted (see [`EVICTED`]).
pub(crate) fn take_evicted() -> Vec<(String, Vec<Value>)> {
    EVICTED.with_borrow_mut(std::mem::take)
}

/// A payload table matched to its local descriptor, with the statements the
/// merge runs for each of its rows, prepared once per payload.
struct Target<'c> {
    schema: TableSchema,
    sql: std::sync::Arc<TableSql>,
    /// Local value-column index of each payload value column.
    columns: Vec<usize>,
    defaults: Vec<Value>,
    statements: RowStatements<'c>,
}

/// The statements the merge of a row runs, held for the whole payload: taken
/// from the connection's cache for each row, they cost a sixth of a large
/// merge (the cache finds a statement by its text).
struct RowStatements<'c> {
    read_clock: RefCell<CachedStatement<'c>>,
    read_row: RefCell<CachedStatement<'c>>,
    write_row: RefCell<Gathered<'c>>,
    write_clock: RefCell<Gathered<'c>>,
}

impl<'c> RowStatements<'c> {
    /// The statements of a table with `rows` rows in the payload.
    fn new(conn: &'c Connection, sql: &TableSql, rows: usize) -> Result<Self> {
        let prepared = |text: &str| Ok::<_, Error>(RefCell::new(conn.prepare_cached(text)?));
        Ok(Self {
            read_clock: prepared(&sql.merge_read_clock)?,
            read_row: prepared(&sql.select_by_key)?,
            write_row: RefCell::new(Gathered::new(conn, &sql.merge_write_row, rows)?),
            write_clock: RefCell::new(Gathered::new(conn, &sql.merge_write_clock, rows)?),
        })
    }

    /// Writes the rows and clocks gathered so far.
    fn flush(&self) -> Result<()> {
        self.write_row.borrow_mut().flush()?;
        self.write_clock.borrow_mut().flush()
    }
}

/// The most rows one statement writes; more saved little in a measure of a
/// million rows (a statement per row: 3.3 s; 8 rows: 2.1 s; 64: 1.9 s;
/// 128: 1.9 s).
const ROWS_PER_STATEMENT: usize = 64;

/// The most parameters a statement of [`Gathered`] binds: SQLite's smallest
/// default limit.
const PARAMETERS_PER_STATEMENT: usize = 32_766;

/// Rows to write gathered in one multi-row upsert (see [`sql::RowsUpsert`]):
/// each row is bound into the next free row of the statement as the merge
/// decides it, and the statement runs when every row of it is bound, or when
/// what was gathered must be read ([`RowStatements::flush`]). Rows are written
/// later than the merge decides them, never in another order that matters:
/// a payload carries each row once.
struct Gathered<'c> {
    statement: CachedStatement<'c>,
    /// Parameters of a row, its marker not counted.
    columns: usize,
    /// Rows of the statement.
    rows: usize,
    /// Rows bound since it last ran.
    bound: usize,
}

impl<'c> Gathered<'c> {
    /// The statement of `upsert` for a table of `rows` rows in the payload:
    /// as many rows as it has, up to [`ROWS_PER_STATEMENT`], in one of a few
    /// sizes so that the connection's statement cache keeps them.
    fn new(conn: &'c Connection, upsert: &sql::RowsUpsert, rows: usize) -> Result<Self> {
        let most = (PARAMETERS_PER_STATEMENT / (upsert.columns + 1)).clamp(1, ROWS_PER_STATEMENT);
        let rows = match rows {
            0 | 1 => 1,
            2..=8 => 8,
            _ => ROWS_PER_STATEMENT,
        }
        .min(most);
        Ok(Self {
            statement: conn.prepare_cached(&upsert.sql(rows))?,
            columns: upsert.columns,
            rows,
            bound: 0,
        })
    }

    /// Binds one row, its parameters given in order to `bind`'s binder.
    fn row(
        &mut self,
        bind: impl FnOnce(&mut dyn FnMut(&dyn rusqlite::ToSql) -> Result<()>) -> Result<()>,
    ) -> Result<()> {
        let first = self.bound * (self.columns + 1) + 1;
        self.statement.raw_bind_parameter(first, 1)?;
        let mut next = first + 1;
        let statement = &mut self.statement;
        bind(&mut |value| {
            statement.raw_bind_parameter(next, value)?;
            next += 1;
            Ok(())
        })?;
        let given = next - first - 1;
        if given != self.columns {
            return Err(rusqlite::Error::InvalidParameterCount(given, self.columns).into());
        }
        self.bound += 1;
        if self.bound == self.rows {
            self.statement.raw_execute()?;
            self.bound = 0;
        }
        Ok(())
    }

    /// Writes the rows bound, if any: the rows of the statement left unbound
    /// are marked as none.
    fn flush(&mut self) -> Result<()> {
        if self.bound == 0 {
            return Ok(());
        }
        for row in self.bound..self.rows {
            let marker = row * (self.columns + 1) + 1;
            self.statement
                .raw_bind_parameter(marker, rusqlite::types::Null)?;
        }
        self.statement.raw_execute()?;
        self.bound = 0;
        Ok(())
    }
}

/// Writes what the merge of `targets` gathered (see [`Gathered`]).
fn flush(targets: &[Target<'_>]) -> Result<()> {
    targets.iter().try_for_each(|t| t.statements.flush())
}

/// A row's clock as stored: causal length, versions, and per value column its
/// `col_version` and local version.
struct Clock {
    cl: i64,
    dv: i64,
    created: i64,
    columns: Vec<(i64, i64)>,
}

/// Where a payload comes from, which decides how far its clocks are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The server this device syncs with, in a pull: it holds only clocks it
    /// checked, and a device takes them as they are.
    #[cfg_attr(
        not(feature = "http"),
        allow(dead_code, reason = "used by the sync client")
    )]
    Server,
    /// A peer: a causal length or column version that leaps beyond what any
    /// replica can have counted to (see [`wire::CLOCK_STEP`]) refuses the payload.
    Peer,
}

/// Applies an encoded payload from `source` inside the caller's write
/// transaction; returns what it did.
pub(crate) fn apply(conn: &Connection, bytes: &[u8], source: Source) -> Result<ApplyReport> {
    let payload = wire::decode(bytes)?;
    Ok(apply_payload(conn, &payload, Sender::Replica(source))?.applied)
}

/// A pushed row that was refused (a write filter, clocks that leap beyond what a
/// replica can have counted to, or a creation or delete another site made, which
/// that site has not sent here): nothing of it was applied, and the device takes
/// back the server's state of it (see [`PushReport::restore`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Rejection {
    /// The table.
    pub table: String,
    /// The row's primary key, in key order.
    pub pk: Vec<Value>,
    /// Why.
    pub reason: String,
}

impl Rejection {
    /// A rejection (as a client rebuilds it from a server's answer).
    pub fn new(table: &str, pk: Vec<Value>, reason: &str) -> Self {
        Self {
            table: table.to_owned(),
            pk,
            reason: reason.to_owned(),
        }
    }
}

/// What applying a device's push did.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct PushReport {
    /// What the merge did with the rows it accepted.
    pub applied: ApplyReport,
    /// The rows refused.
    pub rejected: Vec<Rejection>,
    /// For the device, if rows were refused: a payload of this replica's state of
    /// each of them, as the device may see it (a row it may read, whole; any
    /// other, an eviction, the same whether or not the row exists here). The
    /// device replaces its own state of those rows with it, so that it alone
    /// takes them back: nothing changes here, and no clock rises that other
    /// devices' writes are judged against.
    pub restore: Vec<u8>,
    /// How far this replica has received the device's site id after the
    /// merge (see [`SyncDb::seen_version`](crate::SyncDb::seen_version)).
    pub seen: i64,
    /// This replica's version once the merge is committed.
    pub version: i64,
    /// This replica's version before the merge: every change of the versions
    /// after it, up to [`version`](Self::version), came in this push.
    pub before: i64,
}

/// What a user may write and read: the row filters of a checked push.
#[derive(Clone, Copy)]
pub(crate) struct Access<'f> {
    pub(crate) write: &'f RowFilters,
    pub(crate) read: &'f RowFilters,
}

/// Applies what a device pushed: only changes made by the device itself (every
/// origin is the payload's exporter, which must be `device`), and no evictions,
/// which only a server may send. A row whose clocks leap beyond what a replica
/// can have counted to is rejected, and so is a row whose existence would change
/// here by another site's record (a peer's creation or delete, which the device
/// received and cannot make for it), and, with `access`, a row that does not
/// pass its table's write filter before and after its change (see
/// [`Rejection`]).
pub(crate) fn apply_push(
    conn: &Connection,
    payload: &Payload,
    device: SiteId,
    access: Option<Access<'_>>,
) -> Result<PushReport> {
    let refuse = |reason: String| Err(Error::Refused { reason });
    if payload.exporter != device {
        return refuse(format!(
            "the payload was exported by site {}, not by the sending device {device}",
            payload.exporter
        ));
    }
    let claimed =
        (payload.upto > payload.since).then(|| i64::try_from(payload.upto).unwrap_or(i64::MAX));
    if let Some(message) = site::reused_site(conn, device, claimed)? {
        return Err(Error::SiteReused { message });
    }
    let own = |origin| made_by(payload, origin, device);
    for row in &payload.rows {
        if row.cl == wire::EVICT {
            return refuse("a device cannot send evictions".into());
        }
        // A row's existence may come from elsewhere as the context of its columns;
        // such a row that would change its existence here is rejected alone.
        if !row.columns.iter().all(|c| own(c.origin)) {
            return refuse(FOREIGN_CHANGES.into());
        }
    }
    apply_payload(conn, payload, Sender::Device { device, access })
}

/// Replaces this device's state of rows its server refused with the server's
/// (a [`PushReport::restore`] payload), inside the caller's write transaction.
///
/// A row the device has not changed since `exported_at` (its version when it
/// exported the refused push) takes the server's state whole, clocks included,
/// or is forgotten for an eviction. A row changed here since keeps what changed:
/// columns written since keep their newer value (it goes with the next push);
/// the others take the server's, if the row's existence agrees.
pub(crate) fn restore(conn: &Connection, bytes: &[u8], exported_at: i64) -> Result<ApplyReport> {
    let payload = wire::decode(bytes)?;
    let Fitted {
        payload, targets, ..
    } = resolve(conn, &payload, true)?;
    let payload = payload.as_ref();
    check_types(payload, &targets)?;
    check_rows_once(payload, &targets)?;
    check_versions(payload)?;
    let current: i64 = conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
    conn.execute(sql::BEGIN_APPLYING, [])?;
    let mut merge = Merge {
        conn,
        payload,
        device: None,
        sites: local_sites(conn, &payload.sites)?,
        origins: Origins::new(conn)?,
        versions: Versions::new(current, true),
        current,
        report: ApplyReport::default(),
    };
    for row in &payload.rows {
        let target = &targets[row.table as usize];
        let Some(stored) = read_clock(target, &row.pk, target.defaults.len())? else {
            if row.cl != wire::EVICT {
                merge.row(target, row)?;
            }
            continue;
        };
        if stored.dv <= exported_at {
            merge.forget(target, &row.pk)?;
            if row.cl != wire::EVICT {
                merge.row(target, row)?;
            }
        } else if i64::try_from(row.cl).is_ok_and(|cl| cl == stored.cl && cl % 2 == 1) {
            merge.restore_columns(target, row, stored, exported_at)?;
        }
    }
    flush(&targets)?;
    conn.execute(sql::END_APPLYING, [])?;
    conn.execute(sql::SET_VERSION, [merge.versions.next.max(current)])?;
    Ok(merge.report)
}

/// Who sent a payload.
#[derive(Clone, Copy)]
enum Sender<'f> {
    /// Another replica, whose changes merge as they come.
    Replica(Source),
    /// A device pushing its own changes to this server, with what its user may
    /// write and read.
    Device {
        device: SiteId,
        access: Option<Access<'f>>,
    },
}

/// Whether the change of `origin` in `payload` was made by `site`.
fn made_by(payload: &Payload, origin: Origin, site: SiteId) -> bool {
    payload.sites.get(origin.site as usize) == Some(&site)
}

const FOREIGN_CHANGES: &str = "a device may send only the changes it made itself";

/// Applies a decoded payload; from a device, an existence record that would
/// change a row here must have been made by that device, and rows are checked
/// one by one (their clocks, and its write filter).
fn apply_payload(conn: &Connection, payload: &Payload, sender: Sender<'_>) -> Result<PushReport> {
    let span = tracing::debug_span!(
        "merge",
        exporter = %payload.exporter,
        rows = payload.rows.len(),
        applied = tracing::field::Empty,
        ignored = tracing::field::Empty,
        rejected = tracing::field::Empty,
    )
    .entered();
    // A server knows every column a device's app version has (see
    // `crate::server`); a replica may hear of columns of a newer version.
    let whole = payload;
    let Fitted {
        payload,
        targets,
        skipped,
    } = resolve(conn, payload, matches!(sender, Sender::Replica(_)))?;

    let payload = payload.as_ref();
    check_types(payload, &targets)?;
    check_rows_once(payload, &targets)?;
    let sites = local_sites(conn, &payload.sites)?;
    for row in &payload.rows {
        let target = &targets[row.table as usize];
        // A grow-only row is created once and never deleted: its causal length is 1
        // (or 0, an eviction, which is no delete).
        if target.schema.algorithm == Algorithm::Gos && row.cl > 1 {
            return Err(Error::GrowOnly {
                table: target.schema.name.to_string(),
            });
        }
    }

    check_versions(payload)?;
    let current: i64 = conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
    // Only its server returns a device's own changes to it.
    let versions = Versions::new(current, matches!(sender, Sender::Replica(Source::Server)));
    remember_exporter(conn, whole, skipped)?;

    conn.execute(sql::BEGIN_APPLYING, [])?;
    let (device, access) = match sender {
        Sender::Device { device, access } => (Some(device), access),
        Sender::Replica(_) => (None, None),
    };
    let mut merge = Merge {
        conn,
        payload,
        device: match device {
            Some(device) => Some((device, local_sites(conn, &[device])?[0])),
            None => None,
        },
        sites,
        origins: Origins::new(conn)?,
        versions,
        current,
        report: ApplyReport {
            skipped,
            ..ApplyReport::default()
        },
    };
    let mut rejected = Vec::new();
    for row in &payload.rows {
        let target = &targets[row.table as usize];
        let mut reject = |reason: String| {
            rejected.push(Rejection {
                table: target.schema.name.to_string(),
                pk: row.pk.clone(),
                reason,
            });
        };
        // Clocks first, so that whether a row exists here decides no reason. The
        // clock read for it serves the merge too.
        let mut known = None;
        if sender_checks_clocks(sender) {
            let stored = read_clock(target, &row.pk, target.defaults.len())?;
            if let Some(reason) = leap(target, row, stored.as_ref()) {
                match sender {
                    Sender::Device { .. } => {
                        reject(reason);
                        continue;
                    }
                    Sender::Replica(_) => return Err(Error::Refused { reason }),
                }
            }
            // A device holds rows created or deleted by a peer, which may never
            // send that change here: the device cannot make it for them.
            if let Sender::Device { device, .. } = sender {
                let local_cl = stored.as_ref().map_or(0, |c| c.cl);
                let cl = i64::try_from(row.cl).unwrap_or(i64::MAX);
                if !made_by(payload, row.origin, device) && cl > local_cl {
                    reject(FOREIGN_EXISTENCE.into());
                    continue;
                }
            }
            known = Some(stored);
        }
        let filter = access
            .map(|access| access.write.for_table(&target.schema.name))
            .filter(|filter| **filter != RowFilter::All);
        match filter {
            None => merge.row_with(target, row, known)?,
            Some(filter) => {
                // A policy may read any row merged before this one.
                flush(&targets)?;
                if merge.checked_row(target, row, filter)? {
                    reject(WRITE_REFUSED.into());
                    continue;
                }
            }
        }
        // A checked device holds the rows it creates, which a filtered export
        // must then know without a scan of the history; in a table its user
        // may read whole, no export is filtered, and nothing is kept, as for
        // the rows it receives there.
        let filtered = access
            .is_some_and(|access| *access.read.for_table(&target.schema.name) != RowFilter::All);
        if filtered && device.is_some_and(|d| made_by(payload, row.origin, d)) {
            merge.mark_held(target, row)?;
        }
    }
    flush(&targets)?;
    conn.execute(sql::END_APPLYING, [])?;
    let (report, versions) = (merge.report, merge.versions);

    conn.execute(sql::SET_VERSION, [versions.next.max(current)])?;
    span.record("applied", report.applied);
    span.record("ignored", report.ignored);
    span.record("rejected", rejected.len());
    Ok(PushReport {
        applied: report,
        rejected,
        restore: Vec::new(),
        seen: 0,
        version: 0,
        before: current,
    })
}

/// Why a device may not create or delete a row as another site did.
const FOREIGN_EXISTENCE: &str = "the row was created or deleted by another site, which has not \
                                 sent that change here; a device sends only its own";

/// Why a device may not write a row. The same words whether or not the row
/// exists here, so that a refusal tells nothing of other users' rows.
const WRITE_REFUSED: &str = "the row may not be written by this user";

/// Whether the clocks of `sender`'s rows are held to what a replica can have
/// counted to: a peer's and a device's, not the server's.
fn sender_checks_clocks(sender: Sender<'_>) -> bool {
    !matches!(sender, Sender::Replica(Source::Server))
}

/// Refuses a payload that carries a row twice (a payload holds one record per
/// row). Each copy would merge against what the one before it left: copies
/// could climb a clock by one [`wire::CLOCK_STEP`] each, where a payload may
/// climb one step, and a payload delivered again would take new versions for
/// a row it created and evicted. The same row is the same key in the same
/// local table, which a dictionary may name twice (names match in any case),
/// as SQLite compares keys (`0.0` and `-0.0` are one key). Runs after
/// [`check_types`], which refuses NaN.
fn check_rows_once(payload: &Payload, targets: &[Target<'_>]) -> Result<()> {
    let table = |index: u32| {
        let name = &targets[index as usize].schema.name;
        targets
            .iter()
            .position(|t| t.schema.name.eq_ignore_ascii_case(name))
            .unwrap_or(index as usize)
    };
    let tables: Vec<usize> = (0..payload.tables.len() as u32).map(table).collect();
    let mut seen = HashSet::with_capacity(payload.rows.len());
    for row in &payload.rows {
        let table = tables[row.table as usize];
        if !seen.insert((table, Key(&row.pk))) {
            return Err(Error::Refused {
                reason: format!(
                    "it carries a row of `{}` twice (key {:?})",
                    targets[table].schema.name, row.pk
                ),
            });
        }
    }
    Ok(())
}

/// A row's key, equal to another as SQLite compares keys: values of one type
/// each (see [`check_types`]), `0.0` and `-0.0` one value, no NaN.
#[derive(Clone, Copy)]
struct Key<'a>(&'a [Value]);

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(other.0).all(|(a, b)| match (a, b) {
                (Value::Real(x), Value::Real(y)) => x == y,
                _ => a == b,
            })
    }
}

impl Eq for Key<'_> {}

impl std::hash::Hash for Key<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for value in self.0 {
            match value {
                Value::Null => state.write_u8(0),
                Value::Integer(i) => i.hash(state),
                // `-0.0 + 0.0` is `0.0`: equal keys hash alike.
                Value::Real(r) => (r + 0.0).to_bits().hash(state),
                Value::Text(t) => t.hash(state),
                Value::Blob(b) => b.hash(state),
            }
        }
    }
}

/// Refuses a payload whose versions cannot be true: beyond
/// [`wire::PLAUSIBLE_CLOCK`], or a change of its exporter made after the version
/// the payload says it holds the exporter's changes up to.
fn check_versions(payload: &Payload) -> Result<()> {
    let refuse = |reason: String| Err(Error::Refused { reason });
    if payload.upto > wire::PLAUSIBLE_CLOCK {
        return refuse(format!(
            "it claims to hold its exporter's changes up to version {}, beyond {}",
            payload.upto,
            wire::PLAUSIBLE_CLOCK
        ));
    }
    // A batch that claims no range (`upto == since`) says nothing of its changes'
    // versions; one that does holds none of its exporter's after `upto`.
    let claims_range = payload.upto > payload.since;
    let origins = payload
        .rows
        .iter()
        .flat_map(|r| std::iter::once(r.origin).chain(r.columns.iter().map(|c| c.origin)));
    for origin in origins {
        if origin.version > wire::PLAUSIBLE_CLOCK {
            return refuse(format!(
                "a change claims version {} of its site, beyond {}",
                origin.version,
                wire::PLAUSIBLE_CLOCK
            ));
        }
        if claims_range
            && origin.version > payload.upto
            && made_by(payload, origin, payload.exporter)
        {
            return refuse(format!(
                "a change of its exporter has version {}, after the version {} it claims to \
                 hold the exporter's changes up to",
                origin.version, payload.upto
            ));
        }
    }
    Ok(())
}

/// Why a causal length or column version that leaps from `local`, this
/// replica's value of it, beyond what any replica can have counted to (see
/// [`wire::CLOCK_STEP`]) is refused; `None` if it does not.
fn leaps(clock: u64, local: i64, what: &str, table: &str) -> Option<String> {
    let reach = u64::try_from(local)
        .unwrap_or_default()
        .saturating_add(wire::CLOCK_STEP)
        .max(wire::PLAUSIBLE_CLOCK);
    (clock > reach).then(|| {
        format!(
            "a {what} of {clock} in `{table}` is beyond what a replica can have counted to \
             (at most {}, or {} above this replica's {local})",
            wire::PLAUSIBLE_CLOCK,
            wire::CLOCK_STEP
        )
    })
}

/// Why `row` is refused if one of its clocks leaps beyond what any replica can
/// have counted to from `stored`, this replica's clock of the row.
fn leap(target: &Target<'_>, row: &RowChange, stored: Option<&Clock>) -> Option<String> {
    let table = &target.schema.name;
    let local_cl = stored.map_or(0, |c| c.cl);
    leaps(row.cl, local_cl, "causal length", table).or_else(|| {
        row.columns.iter().find_map(|change| {
            let local = stored.map_or(0, |c| c.columns[target.columns[change.column as usize]].0);
            leaps(change.col_version, local, "column version", table)
        })
    })
}

/// Local versions for the remote transactions whose changes win, one each, listed
/// with their origin as soon as they are given out.
#[derive(Clone)]
struct Versions {
    next: i64,
    assigned: HashMap<(i64, i64), i64>,
    /// The version assigned last, with its `(site, origin version)`: a
    /// payload's changes come in their versions' order.
    last: Option<((i64, i64), i64)>,
    /// Whether a change in this database's own name may come back here (see
    /// [`Versions::local`]).
    own_returns: bool,
}

impl Versions {
    fn new(current: i64, own_returns: bool) -> Self {
        Self {
            next: current,
            assigned: HashMap::new(),
            last: None,
            own_returns,
        }
    }

    /// The local version of the change `site` made at its `origin_version`.
    /// `current` is this database's version before the merge.
    ///
    /// A change in this database's own name (`site` 0) that wins here is one of
    /// its own coming back from its server (a row restored after a refused
    /// push): it keeps the version it was made at, so that it is not taken for
    /// a new change and sent again, and only a version this database gave one
    /// of its own transactions is believed. Anything else shows that another
    /// file writes under this database's site id ([`Error::SiteReused`]): its
    /// own changes never come back from a peer newer than what it holds, and
    /// one taken at a version not sent yet would go to its server as its own
    /// write. The caller takes a new site id and merges again (see
    /// [`crate::identity`]).
    fn local(
        &mut self,
        conn: &Connection,
        site: i64,
        origin_version: i64,
        current: i64,
    ) -> Result<i64> {
        if site == 0 {
            return own_version(conn, origin_version, current, self.own_returns);
        }
        let origin = (site, origin_version);
        if let Some((last, local)) = self.last
            && last == origin
        {
            return Ok(local);
        }
        if let Some(&local) = self.assigned.get(&origin) {
            self.last = Some((origin, local));
            return Ok(local);
        }
        // Local versions grow by one per transaction, far from i64::MAX.
        self.next = self.next.checked_add(1).ok_or_else(|| Error::Corrupt {
            details: "the database version would overflow".into(),
        })?;
        conn.prepare_cached(sql::ADD_VERSION_ORIGIN)?
            .execute((self.next, site, origin_version))?;
        self.assigned.insert(origin, self.next);
        self.last = Some((origin, self.next));
        Ok(self.next)
    }
}

impl Versions {
    /// Forgets the versions given out after `next`, whose writes were rolled
    /// back.
    fn forget_after(&mut self, next: i64) {
        self.next = next;
        self.assigned.retain(|_, version| *version <= next);
        self.last = self.last.filter(|(_, version)| *version <= next);
    }
}

/// The local version of a change in this database's own name made at `version`
/// (see [`Versions::local`]).
fn own_version(conn: &Connection, version: i64, current: i64, may_return: bool) -> Result<i64> {
    if !may_return {
        // Another file writes under this database's site id (see
        // `crate::identity`): it takes a new one, and the change is the other's.
        return Err(Error::SiteReused {
            message: "a peer's change in this database's own name is newer than what it \
                      holds: only this database makes its changes"
                .into(),
        });
    }
    let remote: bool = conn
        .prepare_cached(sql::MADE_ELSEWHERE)?
        .query_row([version], |r| r.get(0))?;
    // Made under a site id this database had before, not under its own.
    let earlier = site::identities(conn)?
        .last()
        .is_some_and(|(upto, _)| version <= *upto);
    if version < 1 || version > current || remote || earlier {
        // From its server: another file made changes under this database's
        // site id (a copy, a restored backup, or someone with its user's
        // token); it takes a new one (see `crate::identity`).
        return Err(Error::SiteReused {
            message: format!(
                "a change in this database's name claims version {version}, which is not \
                 one of its own"
            ),
        });
    }
    Ok(version)
}

/// A payload fitted to this database: what of it this database has tables and
/// columns for, and their local descriptors.
struct Fitted<'p, 'c> {
    /// The payload without what this database has no table or column for.
    payload: Cow<'p, Payload>,
    /// Per table of `payload`, its local descriptor.
    targets: Vec<Target<'c>>,
    /// Changes left out: rows of tables and values of columns this database
    /// does not have (another app version's).
    skipped: usize,
}

/// Matches every payload table to its local descriptor, and each of its columns
/// by id (see [`ColumnSchema::id`](crate::schema::ColumnSchema::id)). Tables
/// and columns this database does not have are left out when `skip_unknown`
/// (another replica's app version may have more); otherwise they refuse the
/// payload.
fn resolve<'p, 'c>(
    conn: &'c Connection,
    payload: &'p Payload,
    skip_unknown: bool,
) -> Result<Fitted<'p, 'c>> {
    let local = tracking::synced_tables(conn, false)?;
    let mut targets = Vec::with_capacity(payload.tables.len());
    // Per payload table, its index among the targets and, per payload column,
    // its position among the columns kept (`None`: left out).
    let mut tables: Vec<Option<(u32, Vec<Option<u32>>)>> = Vec::with_capacity(payload.tables.len());
    let mut partial = false;
    // Each table once: an exporter lists a table once, and each entry has the
    // statements of its rows prepared.
    let mut listed = HashSet::new();
    let mut rows = vec![0; payload.tables.len()];
    for row in &payload.rows {
        if let Some(rows) = rows.get_mut(row.table as usize) {
            *rows += 1;
        }
    }
    for (entry, rows) in payload.tables.iter().zip(rows) {
        if !listed.insert(entry.name.to_ascii_lowercase()) {
            return Err(Error::Refused {
                reason: format!("the payload lists table `{}` twice", entry.name),
            });
        }
        let Some(schema) = local
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&entry.name))
        else {
            if !skip_unknown {
                return Err(Error::UnknownTable {
                    table: entry.name.clone(),
                });
            }
            tables.push(None);
            partial = true;
            continue;
        };
        let keys: Vec<&str> = schema.key_columns().map(|c| c.name.as_ref()).collect();
        if keys != entry.keys {
            return Err(Error::SchemaMismatch {
                table: entry.name.clone(),
                details: format!(
                    "the payload's key is ({}), here it is ({})",
                    entry.keys.join(", "),
                    keys.join(", ")
                ),
            });
        }
        let values: Vec<&str> = schema.value_columns().map(|c| c.id()).collect();
        let mut columns = Vec::with_capacity(entry.values.len());
        for name in &entry.values {
            let local = values.iter().position(|v| v.eq_ignore_ascii_case(name));
            if local.is_none() {
                if !skip_unknown {
                    return Err(Error::UnknownColumn {
                        table: entry.name.clone(),
                        column: name.clone(),
                    });
                }
                partial = true;
            }
            if local.is_some() && columns.contains(&local) {
                return Err(Error::Payload(wire::WireError::Malformed(
                    "a table of the payload lists a column twice",
                )));
            }
            columns.push(local);
        }
        let mut kept = 0;
        let positions = columns
            .iter()
            .map(|local| {
                local.map(|_| {
                    kept += 1;
                    kept - 1
                })
            })
            .collect();
        tables.push(Some((targets.len() as u32, positions)));
        let sql = TableSql::of(schema);
        let defaults = schema
            .value_columns()
            .map(|c| {
                c.never_written()
                    .map(Option::unwrap_or_default)
                    .map_err(|reason| {
                        // A descriptor stored by a release that took defaults
                        // as SQL (see `crate::format`).
                        Error::InvalidSchema(crate::schema::SchemaError {
                            table: schema.name.to_string(),
                            reason: format!("column `{}`: {reason}", c.name),
                        })
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        targets.push(Target {
            schema: schema.clone(),
            statements: RowStatements::new(conn, &sql, rows)?,
            sql,
            columns: columns.into_iter().flatten().collect(),
            defaults,
        });
    }
    if !partial {
        return Ok(Fitted {
            payload: Cow::Borrowed(payload),
            targets,
            skipped: 0,
        });
    }
    // Leave out what has no place here; the column indexes of what is kept
    // follow the targets' own column lists.
    let mut skipped = 0;
    let mut fitted = Payload {
        tables: Vec::new(),
        rows: Vec::with_capacity(payload.rows.len()),
        sites: payload.sites.clone(),
        ..*payload
    };
    for row in &payload.rows {
        let Some(Some((table, columns))) = tables.get(row.table as usize) else {
            skipped += 1 + row.columns.len();
            continue;
        };
        let mut kept = RowChange {
            table: *table,
            pk: row.pk.clone(),
            cl: row.cl,
            origin: row.origin,
            columns: Vec::with_capacity(row.columns.len()),
        };
        for change in &row.columns {
            // A column index beyond the table's list is the decoder's to refuse.
            let Some(position) = columns.get(change.column as usize) else {
                return Err(Error::Payload(wire::WireError::Malformed(
                    "a column index is beyond its table's columns",
                )));
            };
            match position {
                Some(column) => kept.columns.push(ColumnChange {
                    column: *column,
                    ..change.clone()
                }),
                None => skipped += 1,
            }
        }
        fitted.rows.push(kept);
    }
    fitted.tables = targets
        .iter()
        .map(|t| wire::TableEntry {
            name: t.schema.name.to_string(),
            keys: t.schema.key_columns().map(|c| c.name.to_string()).collect(),
            values: t.columns.iter().map(|_| String::new()).collect(),
        })
        .collect();
    Ok(Fitted {
        payload: Cow::Owned(fitted),
        targets,
        skipped,
    })
}

/// Every value must have its column's type exactly: a STRICT table would quietly
/// turn an integer into text, and the replicas would then disagree.
fn check_types(payload: &Payload, targets: &[Target<'_>]) -> Result<()> {
    for row in &payload.rows {
        let target = &targets[row.table as usize];
        let keys = target.schema.key_columns();
        let values: Vec<_> = target.schema.value_columns().collect();
        let pairs = keys.zip(&row.pk).chain(
            row.columns
                .iter()
                .map(|c| (values[target.columns[c.column as usize]], &c.value)),
        );
        for (column, value) in pairs {
            if matches!(value, Value::Real(r) if r.is_nan()) {
                return Err(Error::NotANumber {
                    place: format!("column `{}` of table `{}`", column.name, target.schema.name),
                });
            }
            let fits = match value {
                Value::Null => column.nullable,
                Value::Integer(_) => column.sql_type == SqlType::Integer,
                Value::Real(_) => column.sql_type == SqlType::Real,
                Value::Text(_) => column.sql_type == SqlType::Text,
                Value::Blob(_) => column.sql_type == SqlType::Blob,
            };
            if !fits {
                return Err(Error::WrongType {
                    table: target.schema.name.to_string(),
                    column: column.name.to_string(),
                    expected: if column.nullable {
                        format!("{} (nullable)", column.sql_type)
                    } else {
                        format!("{} NOT NULL", column.sql_type)
                    },
                    found: value.as_ref().type_name(),
                });
            }
        }
    }
    Ok(())
}

/// Records that this database holds every change the exporter made up to
/// `upto`, if it held them up to `since` before (a payload holds every change of
/// its exporter's versions between the two). Relayed or partial changes of other
/// sites never raise their mark.
///
/// When `skipped` changes of it had no table or column here, it also records
/// that the exporter is to be asked again from `since` once this database has
/// more tables or columns (see [`crate::evolve`]).
fn remember_exporter(conn: &Connection, payload: &Payload, skipped: usize) -> Result<()> {
    let exporter = local_sites(conn, std::slice::from_ref(&payload.exporter))?[0];
    if exporter == 0 {
        return Ok(());
    }
    if skipped > 0 {
        let since = i64::try_from(payload.since).unwrap_or(i64::MAX);
        conn.prepare_cached(sql::SKIPPED)?
            .execute((exporter, since))?;
    }
    let seen: i64 = conn
        .prepare_cached(sql::PEER_SEEN)?
        .query_row([exporter], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let (since, upto) = (
        i64::try_from(payload.since).unwrap_or(i64::MAX),
        i64::try_from(payload.upto).unwrap_or(i64::MAX),
    );
    if since <= seen && upto > seen {
        conn.prepare_cached(sql::SET_PEER_SEEN)?
            .execute((exporter, upto))?;
    }
    Ok(())
}

/// The state of one apply: the payload, what it maps to here, and what it did.
struct Merge<'a> {
    conn: &'a Connection,
    payload: &'a Payload,
    /// The device whose push this is, if it is one, and its ordinal here.
    device: Option<(SiteId, i64)>,
    /// The local ordinal of each payload site.
    sites: Vec<i64>,
    origins: Origins<'a>,
    versions: Versions,
    /// This database's version before the merge.
    current: i64,
    report: ApplyReport,
}

impl Merge<'_> {
    /// The local version for a change of `origin` (one per remote transaction).
    fn local_version(&mut self, origin: Origin) -> Result<i64> {
        self.versions.local(
            self.conn,
            self.sites[origin.site as usize],
            i64::try_from(origin.version).unwrap_or(i64::MAX),
            self.current,
        )
    }

    /// Merges a pushed row if `filter` lets the device write it, before and after
    /// its change; otherwise undoes it and says true.
    fn checked_row(
        &mut self,
        target: &Target<'_>,
        row: &RowChange,
        filter: &RowFilter,
    ) -> Result<bool> {
        let conn = self.conn;
        // A row that exists and fails the filter may not be written.
        let denied = || {
            Ok::<_, Error>(filter::passes(conn, &target.schema, filter, &row.pk)? == Some(false))
        };
        if denied()? {
            return Ok(true);
        }
        let (next, report) = (self.versions.next, self.report);
        conn.prepare_cached(sql::ROW_SAVEPOINT)?.execute([])?;
        self.row(target, row)?;
        // Written inside the savepoint, and read by the filter.
        target.statements.flush()?;
        if denied()? {
            conn.prepare_cached(sql::ROW_ROLLBACK)?.execute([])?;
            conn.prepare_cached(sql::ROW_RELEASE)?.execute([])?;
            // The versions given out since were rolled back with the row.
            self.versions.forget_after(next);
            self.report = report;
            return Ok(true);
        }
        conn.prepare_cached(sql::ROW_RELEASE)?.execute([])?;
        Ok(false)
    }

    /// Marks the pushing device as holding `row`, whatever the cursor it fetches
    /// from (see [`crate::filter`]).
    fn mark_held(&self, target: &Target<'_>, row: &RowChange) -> Result<()> {
        let Some((_, reader)) = self.device else {
            return Ok(());
        };
        let table = target.schema.name.to_ascii_lowercase();
        filter::mark_held(self.conn, reader, &table, &wire::encode_key(&row.pk), 0)
    }

    /// Forgets a row, values and clock, as if this replica never had it: the
    /// exporter says this replica may no longer read it. Nothing is recorded, so
    /// nothing of it is sent anywhere.
    fn evict(&mut self, target: &Target<'_>, row: &RowChange) -> Result<()> {
        self.forget(target, &row.pk)
    }

    /// Deletes a row and its clock without a trace.
    fn forget(&mut self, target: &Target<'_>, pk: &[Value]) -> Result<()> {
        let conn = self.conn;
        let deleted = conn
            .prepare_cached(&target.sql.delete)?
            .execute(rusqlite::params_from_iter(pk))?;
        let forgotten = conn
            .prepare_cached(&target.sql.delete_clock)?
            .execute(rusqlite::params_from_iter(pk))?;
        if deleted + forgotten > 0 {
            self.report.applied += 1;
            self.report.rows += 1;
            // Its clock is gone: the change event learns of it here.
            EVICTED.with_borrow_mut(|evicted| {
                evicted.push((target.schema.name.to_string(), pk.to_vec()));
            });
        }
        Ok(())
    }

    /// Gives the columns of a live row that were not written here after
    /// `exported_at` the value and clock `row` carries (see [`restore`]).
    fn restore_columns(
        &mut self,
        target: &Target<'_>,
        row: &RowChange,
        mut clock: Clock,
        exported_at: i64,
    ) -> Result<()> {
        let Some(mut current) = read_row(target, &row.pk)? else {
            return Ok(());
        };
        let mut changed = false;
        for change in &row.columns {
            let column = target.columns[change.column as usize];
            if clock.columns[column].1 > exported_at {
                self.report.ignored += 1;
                continue;
            }
            let version = self.local_version(change.origin)?;
            let col_version = i64::try_from(change.col_version).unwrap_or(i64::MAX);
            clock.columns[column] = (col_version, version);
            clock.dv = clock.dv.max(version);
            current[column] = change.value.clone();
            changed = true;
            self.report.applied += 1;
        }
        if changed {
            write_row(target, &row.pk, &current)?;
            write_clock(target, &row.pk, &clock)?;
            self.report.rows += 1;
        }
        Ok(())
    }

    /// Whether the payload's record of a row's existence replaces the local one,
    /// for the same causal length: the greater site id wins.
    fn existence_wins(&self, row: &RowChange, clock: &Clock) -> Result<bool> {
        let local = if clock.cl % 2 == 0 {
            clock.dv
        } else {
            clock.created
        };
        let ours = self.origins.site_of(local)?;
        Ok(self.payload.sites[row.origin.site as usize] > ours)
    }

    /// Whether a column change beats the column's local value and clock.
    fn column_wins(
        &self,
        change: &ColumnChange,
        current: &Value,
        local: (i64, i64),
    ) -> Result<bool> {
        let incoming = i64::try_from(change.col_version).unwrap_or(i64::MAX);
        Ok(match incoming.cmp(&local.0) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => match change.value.sqlite_cmp(current) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => {
                    let theirs = self.payload.sites[change.origin.site as usize];
                    theirs > self.origins.site_of(local.1)?
                }
            },
        })
    }

    fn row(&mut self, target: &Target<'_>, row: &RowChange) -> Result<()> {
        self.row_with(target, row, None)
    }

    /// Merges one row; `known` is its clock here if it was read already.
    fn row_with(
        &mut self,
        target: &Target<'_>,
        row: &RowChange,
        known: Option<Option<Clock>>,
    ) -> Result<()> {
        let conn = self.conn;
        if row.cl == wire::EVICT {
            return self.evict(target, row);
        }
        let cl = i64::try_from(row.cl).unwrap_or(i64::MAX);
        let value_count = target.defaults.len();
        let stored = match known {
            Some(stored) => stored,
            None => read_clock(target, &row.pk, value_count)?,
        };
        let local_cl = stored.as_ref().map_or(0, |c| c.cl);
        // A push may change a row's existence only by the device's own record.
        let own = match self.device {
            Some((device, _)) => made_by(self.payload, row.origin, device),
            None => true,
        };
        if !own && cl > local_cl {
            return Err(Error::Refused {
                reason: FOREIGN_CHANGES.into(),
            });
        }
        if cl < local_cl {
            self.report.ignored += 1 + row.columns.len();
            return Ok(());
        }
        // A row without a clock here is created with its defaults below: it
        // need not be read. Values are borrowed from the defaults and the
        // payload until written: a new row copies none.
        let mut values: Option<Vec<Cow<'_, Value>>> = if stored.is_none() && cl % 2 == 1 {
            None
        } else {
            read_row(target, &row.pk)?.map(|values| values.into_iter().map(Cow::Owned).collect())
        };
        let mut clock = stored.unwrap_or(Clock {
            cl: 0,
            dv: 0,
            created: 0,
            columns: vec![(0, 0); value_count],
        });
        let mut changed = false;
        if cl > local_cl {
            let version = self.local_version(row.origin)?;
            clock.cl = cl;
            clock.dv = version;
            changed = true;
            self.report.applied += 1;
            if cl % 2 == 0 {
                self.report.ignored += row.columns.len();
                if values.is_some() {
                    conn.prepare_cached(&target.sql.delete)?
                        .execute(rusqlite::params_from_iter(&row.pk))?;
                }
                write_clock(target, &row.pk, &clock)?;
                self.report.rows += 1;
                return Ok(());
            }
            // (Re)created: every column starts afresh, at its default.
            clock.created = version;
            clock.columns = vec![(0, version); value_count];
            values = Some(target.defaults.iter().map(Cow::Borrowed).collect());
        } else if own && self.existence_wins(row, &clock)? {
            // The same causal length reached twice (two creations, or two deletes):
            // the greater site id keeps the record, so that every clock agrees.
            let version = self.local_version(row.origin)?;
            if cl % 2 == 0 {
                clock.dv = version;
            } else {
                clock.created = version;
                clock.dv = clock.dv.max(version);
            }
            changed = true;
            self.report.applied += 1;
        }
        let Some(mut current) = values.filter(|_| clock.cl % 2 == 1) else {
            // A deleted row: nothing of its columns applies, its clock may still
            // have taken the other site's record of the delete.
            self.report.ignored += row.columns.len();
            if changed {
                write_clock(target, &row.pk, &clock)?;
                self.report.rows += 1;
            }
            return Ok(());
        };
        for change in &row.columns {
            let column = target.columns[change.column as usize];
            if self.column_wins(change, &current[column], clock.columns[column])? {
                let incoming = i64::try_from(change.col_version).unwrap_or(i64::MAX);
                clock.columns[column] = (incoming, self.local_version(change.origin)?);
                clock.dv = clock.dv.max(clock.columns[column].1);
                current[column] = Cow::Borrowed(&change.value);
                changed = true;
                self.report.applied += 1;
            } else {
                self.report.ignored += 1;
            }
        }
        if changed {
            write_row(target, &row.pk, &current)?;
            write_clock(target, &row.pk, &clock)?;
            self.report.rows += 1;
        }
        Ok(())
    }
}

fn read_clock(target: &Target<'_>, pk: &[Value], value_count: usize) -> Result<Option<Clock>> {
    let mut stmt = target.statements.read_clock.borrow_mut();
    let mut rows = stmt.query(rusqlite::params_from_iter(pk))?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let layout = target.sql.merge_clock_layout;
    let columns = (0..value_count)
        .map(|i| Ok((row.get(layout.col_version(i))?, row.get(layout.col_dv(i))?)))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Clock {
        cl: row.get(layout.cl())?,
        dv: row.get(layout.dv())?,
        created: row.get(layout.created())?,
        columns,
    }))
}

/// The current values of the row's value columns, if the row exists.
fn read_row(target: &Target<'_>, pk: &[Value]) -> Result<Option<Vec<Value>>> {
    let mut stmt = target.statements.read_row.borrow_mut();
    let mut rows = stmt.query(rusqlite::params_from_iter(pk))?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(target.defaults.len());
    for (i, column) in target.schema.columns.iter().enumerate() {
        if !column.primary_key {
            let value = value::from_sqlite(row.get_ref(i)?).map_err(|source| Error::Decode {
                table: target.schema.name.to_string(),
                key: pk.to_vec(),
                column: column.name.to_string(),
                source,
            })?;
            values.push(value.into_owned());
        }
    }
    Ok(Some(values))
}

/// Gathers the writing of a whole app row (see [`Gathered`]).
fn write_row(
    target: &Target<'_>,
    pk: &[Value],
    values: &[impl std::borrow::Borrow<Value>],
) -> Result<()> {
    // In the table's column order: no list is made per row.
    let (mut keys, mut rest) = (pk.iter(), values.iter().map(std::borrow::Borrow::borrow));
    target.statements.write_row.borrow_mut().row(|bind| {
        for column in target.schema.columns.iter() {
            let value = if column.primary_key {
                keys.next()
            } else {
                rest.next()
            };
            bind(value.unwrap_or(&Value::Null))?;
        }
        Ok(())
    })
}

/// Gathers the writing of a row's whole clock (see [`Gathered`]).
fn write_clock(target: &Target<'_>, pk: &[Value], clock: &Clock) -> Result<()> {
    target.statements.write_clock.borrow_mut().row(|bind| {
        for key in pk {
            bind(key)?;
        }
        for number in [clock.cl, clock.dv, clock.created] {
            bind(&number)?;
        }
        for (col_version, version) in &clock.columns {
            bind(col_version)?;
            bind(version)?;
        }
        Ok(())
    })
}
