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
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::filter::{RowFilter, RowFilters};
use crate::id::SiteId;
use crate::schema::{Algorithm, TableSchema};
use crate::value::{SqlType, Value};
use crate::wire::{self, ColumnChange, Origin, Payload, RowChange};

mod sqlite;
pub(crate) mod storage;

pub(crate) use sqlite::{SqliteStorage, take_evicted};
use storage::{Clock, Storage};

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

/// A payload table matched to its local descriptor; the storage's table of
/// the same index.
struct Target {
    /// The storage's table number, and the payload's (once fitted).
    index: usize,
    schema: TableSchema,
    /// Local value-column index of each payload value column.
    columns: Vec<usize>,
    defaults: Vec<Value>,
}

/// Where a payload comes from, which decides how far its clocks are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The server this device syncs with, in a pull: it holds only clocks it
    /// checked, and a device takes them as they are.
    Server,
    /// A peer: a causal length or column version that leaps beyond what any
    /// replica can have counted to (see [`wire::CLOCK_STEP`]) refuses the payload.
    Peer,
}

/// Applies an encoded payload from `source` inside the caller's write
/// transaction; returns what it did.
pub(crate) fn apply(conn: &Connection, bytes: &[u8], source: Source) -> Result<ApplyReport> {
    let payload = wire::decode(bytes)?;
    let storage = &mut SqliteStorage::new(conn)?;
    Ok(apply_payload(storage, &payload, Sender::Replica(source))?.applied)
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
    storage: &mut impl Storage,
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
    if let Some(message) = storage.reused_site(device, claimed)? {
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
    apply_payload(storage, payload, Sender::Device { device, access })
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
    let storage = &mut SqliteStorage::new(conn)?;
    let Fitted {
        payload, targets, ..
    } = resolve(storage, &payload, true)?;
    let payload = payload.as_ref();
    check_types(payload, &targets)?;
    check_rows_once(payload, &targets)?;
    check_versions(payload)?;
    let current = storage.current_version()?;
    storage.begin_applying()?;
    let sites = storage.site_ordinals(&payload.sites)?;
    let mut merge = Merge {
        storage,
        payload,
        device: None,
        sites,
        versions: Versions::new(true),
        current,
        report: ApplyReport::default(),
    };
    let together = merge.storage.rows_read_together();
    for chunk in payload.rows.chunks(together) {
        let (clocks, values) = read_together(merge.storage, chunk)?;
        for ((row, stored), values) in chunk.iter().zip(clocks).zip(values) {
            let target = &targets[row.table as usize];
            let Some(stored) = stored else {
                if row.cl != wire::EVICT {
                    merge.row(target, row, None, values)?;
                }
                continue;
            };
            if stored.dv <= exported_at {
                merge.forget(target, &row.pk)?;
                if row.cl != wire::EVICT {
                    merge.row(target, row, None, None)?;
                }
            } else if i64::try_from(row.cl).is_ok_and(|cl| cl == stored.cl && cl % 2 == 1) {
                merge.restore_columns(target, row, stored, values, exported_at)?;
            }
        }
    }
    let storage = merge.storage;
    storage.flush()?;
    storage.end_applying()?;

    Ok(merge.report)
}

/// The clocks of `rows` here, then the values of those the merge needs (see
/// [`needs_values`]; `None` for the others), each read in one set per table.
type ReadTogether = (Vec<Option<Clock>>, Vec<Option<Vec<Value>>>);

/// Reads what the merge of `rows` needs (see [`ReadTogether`]): a payload
/// carries each row once, so what one row's merge writes changes nothing
/// read for another.
fn read_together(storage: &mut impl Storage, rows: &[RowChange]) -> Result<ReadTogether> {
    let mut tables: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        tables.entry(row.table).or_default().push(i);
    }
    let mut clocks = vec![None; rows.len()];
    for (&table, indexes) in &tables {
        let keys: Vec<&[Value]> = indexes.iter().map(|&i| &rows[i].pk[..]).collect();
        let read = storage.read_clocks(table as usize, &keys)?;
        for (&i, clock) in indexes.iter().zip(read) {
            clocks[i] = clock;
        }
    }
    let mut values = vec![None; rows.len()];
    for (&table, indexes) in &mut tables {
        indexes.retain(|&i| needs_values(&rows[i], clocks[i].as_ref()));
        if indexes.is_empty() {
            continue;
        }
        let keys: Vec<&[Value]> = indexes.iter().map(|&i| &rows[i].pk[..]).collect();
        let read = storage.read_rows(table as usize, &keys)?;
        for (&i, row) in indexes.iter().zip(read) {
            values[i] = row;
        }
    }
    Ok((clocks, values))
}

/// Whether the merge of `row` reads the row's values here, given its clock
/// here: not for an eviction, a change its causal length loses, or the
/// creation of a row this replica never had.
fn needs_values(row: &RowChange, stored: Option<&Clock>) -> bool {
    let cl = i64::try_from(row.cl).unwrap_or(i64::MAX);
    let local_cl = stored.map_or(0, |c| c.cl);
    row.cl != wire::EVICT && cl >= local_cl && (stored.is_some() || cl % 2 == 0)
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
fn apply_payload(
    storage: &mut impl Storage,
    payload: &Payload,
    sender: Sender<'_>,
) -> Result<PushReport> {
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
    } = resolve(storage, payload, matches!(sender, Sender::Replica(_)))?;

    let payload = payload.as_ref();
    check_types(payload, &targets)?;
    check_rows_once(payload, &targets)?;
    let sites = storage.site_ordinals(&payload.sites)?;
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
    let rows: Vec<(usize, &[Value])> = payload
        .rows
        .iter()
        .map(|row| (row.table as usize, &row.pk[..]))
        .collect();
    storage.lock_rows(&rows)?;
    let current = storage.current_version()?;
    // Only its server returns a device's own changes to it.
    let versions = Versions::new(matches!(sender, Sender::Replica(Source::Server)));
    remember_exporter(storage, whole, skipped)?;

    storage.begin_applying()?;
    let (device, access) = match sender {
        Sender::Device { device, access } => (Some(device), access),
        Sender::Replica(_) => (None, None),
    };
    let device_ordinal = match device {
        Some(device) => Some((device, storage.site_ordinals(&[device])?[0])),
        None => None,
    };
    let mut merge = Merge {
        storage,
        payload,
        device: device_ordinal,
        sites,
        versions,
        current,
        report: ApplyReport {
            skipped,
            ..ApplyReport::default()
        },
    };
    let mut rejected = Vec::new();
    let together = merge.storage.rows_read_together();
    for chunk in payload.rows.chunks(together) {
        // Clocks first, so that whether a row exists here decides no reason.
        let (clocks, values) = read_together(merge.storage, chunk)?;
        for ((row, stored), values) in chunk.iter().zip(clocks).zip(values) {
            let target = &targets[row.table as usize];
            let mut reject = |reason: String| {
                rejected.push(Rejection {
                    table: target.schema.name.to_string(),
                    pk: row.pk.clone(),
                    reason,
                });
            };
            if sender_checks_clocks(sender) {
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
            }
            let filter = access
                .map(|access| access.write.for_table(&target.schema.name))
                .filter(|filter| **filter != RowFilter::All);
            match filter {
                None => merge.row(target, row, stored, values)?,
                Some(filter) => {
                    // A policy may read any row merged before this one.
                    merge.storage.flush()?;
                    if merge.checked_row(target, row, filter, stored, values)? {
                        reject(WRITE_REFUSED.into());
                        continue;
                    }
                }
            }
            // A checked device holds the rows it creates, which a filtered export
            // must then know without a scan of the history; in a table its user
            // may read whole, no export is filtered, and nothing is kept, as for
            // the rows it receives there.
            let filtered = access.is_some_and(|access| {
                *access.read.for_table(&target.schema.name) != RowFilter::All
            });
            if filtered && device.is_some_and(|d| made_by(payload, row.origin, d)) {
                merge.mark_held(row)?;
            }
        }
    }
    let (report, storage) = (merge.report, merge.storage);
    storage.flush()?;
    storage.end_applying()?;
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
fn check_rows_once(payload: &Payload, targets: &[Target]) -> Result<()> {
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
fn leap(target: &Target, row: &RowChange, stored: Option<&Clock>) -> Option<String> {
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
    assigned: HashMap<(i64, i64), i64>,
    /// The version assigned last, with its `(site, origin version)`: a
    /// payload's changes come in their versions' order.
    last: Option<((i64, i64), i64)>,
    /// Whether a change in this database's own name may come back here (see
    /// [`Versions::local`]).
    own_returns: bool,
}

impl Versions {
    fn new(own_returns: bool) -> Self {
        Self {
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
        storage: &mut impl Storage,
        site: i64,
        origin_version: i64,
        current: i64,
    ) -> Result<i64> {
        if site == 0 {
            return own_version(storage, origin_version, current, self.own_returns);
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
        let local = storage.new_version()?;
        storage.add_version_origin(local, site, origin_version)?;
        self.assigned.insert(origin, local);
        self.last = Some((origin, local));
        Ok(local)
    }
}

impl Versions {
    /// Forgets the versions given out after `mark`, whose writes were rolled
    /// back.
    fn forget_after(&mut self, mark: i64) {
        self.assigned.retain(|_, version| *version <= mark);
        self.last = self.last.filter(|(_, version)| *version <= mark);
    }
}

/// The local version of a change in this database's own name made at `version`
/// (see [`Versions::local`]).
fn own_version(
    storage: &mut impl Storage,
    version: i64,
    current: i64,
    may_return: bool,
) -> Result<i64> {
    if !may_return {
        // Another file writes under this database's site id (see
        // `crate::identity`): it takes a new one, and the change is the other's.
        return Err(Error::SiteReused {
            message: "a peer's change in this database's own name is newer than what it \
                      holds: only this database makes its changes"
                .into(),
        });
    }
    let remote = storage.made_elsewhere(version)?;
    // Made under a site id this database had before, not under its own.
    let earlier = storage
        .earlier_identity_upto()?
        .is_some_and(|upto| version <= upto);
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
struct Fitted<'p> {
    /// The payload without what this database has no table or column for.
    payload: Cow<'p, Payload>,
    /// Per table of `payload`, its local descriptor.
    targets: Vec<Target>,
    /// Changes left out: rows of tables and values of columns this database
    /// does not have (another app version's).
    skipped: usize,
}

/// Matches every payload table to its local descriptor, and each of its columns
/// by id (see [`ColumnSchema::id`](crate::schema::ColumnSchema::id)). Tables
/// and columns this database does not have are left out when `skip_unknown`
/// (another replica's app version may have more); otherwise they refuse the
/// payload.
fn resolve<'p>(
    storage: &mut impl Storage,
    payload: &'p Payload,
    skip_unknown: bool,
) -> Result<Fitted<'p>> {
    let local = storage.tables()?;
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
        storage.prepare(schema, rows)?;
        targets.push(Target {
            index: targets.len(),
            schema: schema.clone(),
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
fn check_types(payload: &Payload, targets: &[Target]) -> Result<()> {
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
fn remember_exporter(storage: &mut impl Storage, payload: &Payload, skipped: usize) -> Result<()> {
    let exporter = storage.site_ordinals(std::slice::from_ref(&payload.exporter))?[0];
    if exporter == 0 {
        return Ok(());
    }
    let (since, upto) = (
        i64::try_from(payload.since).unwrap_or(i64::MAX),
        i64::try_from(payload.upto).unwrap_or(i64::MAX),
    );
    if skipped > 0 {
        storage.skipped(exporter, since)?;
    }
    let seen = storage.peer_seen(exporter)?;
    if since <= seen && upto > seen {
        storage.set_peer_seen(exporter, upto)?;
    }
    Ok(())
}

/// The state of one apply: the payload, what it maps to here, and what it did.
struct Merge<'a, S> {
    storage: &'a mut S,
    payload: &'a Payload,
    /// The device whose push this is, if it is one, and its ordinal here.
    device: Option<(SiteId, i64)>,
    /// The local ordinal of each payload site.
    sites: Vec<i64>,
    versions: Versions,
    /// This database's version before the merge.
    current: i64,
    report: ApplyReport,
}

impl<S: Storage> Merge<'_, S> {
    /// The local version for a change of `origin` (one per remote transaction).
    fn local_version(&mut self, origin: Origin) -> Result<i64> {
        self.versions.local(
            self.storage,
            self.sites[origin.site as usize],
            i64::try_from(origin.version).unwrap_or(i64::MAX),
            self.current,
        )
    }

    /// Merges a pushed row (see [`row`](Self::row)) if `filter` lets the
    /// device write it, before and after its change; otherwise undoes it and
    /// says true.
    fn checked_row(
        &mut self,
        target: &Target,
        row: &RowChange,
        filter: &RowFilter,
        stored: Option<Clock>,
        values: Option<Vec<Value>>,
    ) -> Result<bool> {
        // A row that exists and fails the filter may not be written.
        let denied = |storage: &mut S| {
            Ok::<_, Error>(storage.passes(target.index, filter, &row.pk)? == Some(false))
        };
        if denied(self.storage)? {
            return Ok(true);
        }
        let (mark, report) = (self.storage.version_mark(), self.report);
        self.storage.savepoint()?;
        self.row(target, row, stored, values)?;
        // Written inside the savepoint, and read by the filter.
        self.storage.flush()?;
        if denied(self.storage)? {
            self.storage.roll_back_savepoint()?;
            // The versions given out since were rolled back with the row.
            self.storage.forget_versions_after(mark);
            self.versions.forget_after(mark);
            self.report = report;
            return Ok(true);
        }
        self.storage.release_savepoint()?;
        Ok(false)
    }

    /// Marks the pushing device as holding `row`, whatever the cursor it fetches
    /// from (see [`crate::filter`]).
    fn mark_held(&mut self, row: &RowChange) -> Result<()> {
        let Some((_, reader)) = self.device else {
            return Ok(());
        };
        self.storage.mark_held(reader, row.table as usize, &row.pk)
    }

    /// Deletes a row and its clock without a trace: the exporter says this
    /// replica may no longer read it (an eviction), or a restore replaces it.
    /// Nothing is recorded, so nothing of it is sent anywhere.
    fn forget(&mut self, target: &Target, pk: &[Value]) -> Result<()> {
        let deleted = self.storage.delete_row(target.index, pk)?;
        let forgotten = self.storage.delete_clock(target.index, pk)?;
        if deleted || forgotten {
            self.report.applied += 1;
            self.report.rows += 1;
            self.storage.forgotten(target.index, pk);
        }
        Ok(())
    }

    /// Gives the columns of a live row (of values `current`, if it exists) that
    /// were not written here after `exported_at` the value and clock `row`
    /// carries (see [`restore`]).
    fn restore_columns(
        &mut self,
        target: &Target,
        row: &RowChange,
        mut clock: Clock,
        current: Option<Vec<Value>>,
        exported_at: i64,
    ) -> Result<()> {
        let Some(mut current) = current else {
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
            self.storage.write_row(target.index, &row.pk, &current)?;
            self.storage.write_clock(target.index, &row.pk, &clock)?;
            self.report.rows += 1;
        }
        Ok(())
    }

    /// Whether the payload's record of a row's existence replaces the local one,
    /// for the same causal length: the greater site id wins.
    fn existence_wins(&mut self, row: &RowChange, clock: &Clock) -> Result<bool> {
        let local = if clock.cl % 2 == 0 {
            clock.dv
        } else {
            clock.created
        };
        let ours = self.storage.site_of_version(local)?;
        Ok(self.payload.sites[row.origin.site as usize] > ours)
    }

    /// Whether a column change beats the column's local value and clock.
    fn column_wins(
        &mut self,
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
                    theirs > self.storage.site_of_version(local.1)?
                }
            },
        })
    }

    /// Merges one row, given its clock here and, if [`needs_values`] says so,
    /// its values here (if it exists).
    fn row(
        &mut self,
        target: &Target,
        row: &RowChange,
        stored: Option<Clock>,
        values: Option<Vec<Value>>,
    ) -> Result<()> {
        if row.cl == wire::EVICT {
            return self.forget(target, &row.pk);
        }
        let cl = i64::try_from(row.cl).unwrap_or(i64::MAX);
        let value_count = target.defaults.len();
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
        // was not read. Values are borrowed from the defaults and the payload
        // until written: a new row copies none.
        let mut values: Option<Vec<Cow<'_, Value>>> =
            values.map(|values| values.into_iter().map(Cow::Owned).collect());
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
                    self.storage.delete_row(target.index, &row.pk)?;
                }
                self.storage.write_clock(target.index, &row.pk, &clock)?;
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
                self.storage.write_clock(target.index, &row.pk, &clock)?;
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
            self.storage.write_row(target.index, &row.pk, &current)?;
            self.storage.write_clock(target.index, &row.pk, &clock)?;
            self.report.rows += 1;
        }
        Ok(())
    }
}
