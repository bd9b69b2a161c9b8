//! Exporting changes as a payload (see [`crate::wire`] for the format).

use std::collections::HashMap;

use rusqlite::Connection;

use crate::change::{ClockRow, PageFilter, Range, Reads, SqliteReads};
use crate::error::Result;
use crate::filter::{
    Decision, Gate, MAX_WITHHELD, Marks, NewMark, RowFilter, RowFilters, Withheld,
};
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::value::Value;
use crate::wire::{self, ColumnChange, Compression, Origin, Payload, RowChange, TableEntry};

mod snapshot;

/// Where an export starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Every change this database holds.
    Beginning,
    /// The changes after this version of this database (a cursor a peer kept).
    Version(i64),
}

impl Since {
    pub(crate) fn version(self) -> i64 {
        match self {
            Since::Beginning => 0,
            Since::Version(v) => v.max(0),
        }
    }
}

/// Which changes an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Every change, whoever made it: a replica relays what it received.
    All,
    /// Only the changes made on this database: what a device sends to a server.
    Local,
    /// Every change except those made by one site: what a relay (a server) sends
    /// back to that site, which has them already.
    Except(SiteId),
}

/// A position in a replica's change history, where a batched export
/// ([`SyncDb::export_batch`](crate::SyncDb::export_batch)) resumes.
///
/// A cursor is exact: every change up to it was in the batches before it, and the
/// next batch starts right after it, even inside one large transaction. Keep the
/// [`Batch::next`] cursor of the last batch that was delivered (sent and
/// acknowledged, or received and committed) and ask from there; asking again from
/// an older cursor is harmless, since merging a change twice changes nothing.
///
/// Its text form (`Display` / `FromStr`) is meant to be stored or put in a URL:
/// `<version>`, `<base>.<version>.<rowid>.<table>` inside the changes after a
/// base version, or `s.<version>.r<rowid>.<table>` / `s.<version>.h<key>.<table>`
/// inside a filtered reader's first export (a snapshot of what it may read, see
/// [`Replica::export_filtered`](crate::server::Replica::export_filtered)), whose
/// [`version`](Self::version) is 0 until it is done. Those two end with
/// `.<count>` once the exporting database has been
/// [vacuumed](crate::SyncDb::vacuum): a cursor made before a vacuum resumes at
/// the start of its version (or table), since a vacuum may renumber the rowids
/// it names.
///
/// ```
/// use sync_runtime::Cursor;
///
/// let cursor = Cursor::at(42);
/// assert_eq!(cursor.to_string(), "42");
/// assert_eq!("42".parse::<Cursor>(), Ok(cursor.clone()));
/// assert_eq!(Cursor::BEGINNING.version(), 0);
/// assert!("42.x".parse::<Cursor>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Cursor {
    base: i64,
    position: Position,
    /// How many times the exporting database had been vacuumed when a cursor
    /// inside a version or a snapshot was made: such a cursor names a rowid,
    /// which a vacuum may renumber (see [`Cursor::resumed`]). 0 for the others.
    vacuums: i64,
}

/// Where in the changes after a cursor's base version the next batch starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) enum Position {
    /// Right after the base version.
    #[default]
    Base,
    /// After the last row a batch carried.
    Page(PageEnd),
    /// Inside a reader's first filtered export (see [`snapshot`]); the
    /// base is 0.
    Snapshot(SnapshotEnd),
}

/// Where a batch that stopped inside the changes after a cursor's base version
/// ended: the last clock row it carried, in export order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PageEnd {
    /// The version of the row's last change.
    version: i64,
    /// The row's table (lowercase: tables are exported in case-insensitive order).
    table: String,
    /// The row's clock rowid.
    rowid: i64,
}

/// Where a batch of a snapshot ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SnapshotEnd {
    /// The version the snapshot started at.
    pub(crate) at: i64,
    /// The table of the last row (lowercase).
    pub(crate) table: String,
    /// Where in that table.
    pub(crate) part: SnapshotPart,
}

/// Which part of a table's snapshot a batch ended in, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SnapshotPart {
    /// Among the rows the reader may read, after this rowid.
    Readable(i64),
    /// Among the other rows the reader holds, after this key (encoded).
    Held(Vec<u8>),
}

impl Cursor {
    /// Before every change.
    pub const BEGINNING: Cursor = Cursor {
        base: 0,
        position: Position::Base,
        vacuums: 0,
    };

    /// After every change up to `version` of the exporting database.
    pub fn at(version: i64) -> Cursor {
        Cursor {
            base: version.max(0),
            position: Position::Base,
            vacuums: 0,
        }
    }

    /// The version up to which every change was delivered (a batch that stopped
    /// inside the changes after it carried some of the later ones too).
    pub fn version(&self) -> i64 {
        self.base
    }

    /// Inside a snapshot.
    pub(crate) fn snapshot(end: SnapshotEnd) -> Cursor {
        Cursor {
            base: 0,
            position: Position::Snapshot(end),
            vacuums: 0,
        }
    }

    /// This cursor as made by a database vacuumed `vacuums` times: one inside a
    /// version or a snapshot names a rowid, and keeps the count with it.
    pub(crate) fn made_after(mut self, vacuums: i64) -> Cursor {
        if !matches!(self.position, Position::Base) {
            self.vacuums = vacuums;
        }
        self
    }

    /// Where to resume from this cursor in a database vacuumed `vacuums` times.
    /// A vacuum may renumber the rowids of the tables without an `INTEGER
    /// PRIMARY KEY` (SQLite says so), the clocks among them: a cursor made before
    /// one resumes at the start of its version (inside a snapshot: at the start
    /// of its table), carrying again what it may have carried already, which
    /// merges as a no-op, rather than skipping a row whose rowid moved.
    pub(crate) fn resumed(&self, vacuums: i64) -> Cursor {
        if self.vacuums == vacuums {
            return self.clone();
        }
        let position = match &self.position {
            Position::Base => Position::Base,
            Position::Page(end) => Position::Page(PageEnd {
                version: end.version,
                // Before every table (names are never empty) and every rowid.
                table: String::new(),
                rowid: i64::MIN,
            }),
            Position::Snapshot(end) => Position::Snapshot(SnapshotEnd {
                part: match &end.part {
                    SnapshotPart::Readable(_) => SnapshotPart::Readable(i64::MIN),
                    // Keys do not move.
                    held @ SnapshotPart::Held(_) => held.clone(),
                },
                ..end.clone()
            }),
        };
        Cursor {
            base: self.base,
            position,
            vacuums: 0,
        }
        .made_after(vacuums)
    }

    /// Where the scan of `table` (at `index` in export order) starts: after this
    /// `(version, rowid)`. Rows are exported in `(version, table, rowid)` order.
    fn after(&self, table: &str) -> (i64, i64) {
        match &self.position {
            Position::Base | Position::Snapshot(_) => (self.base, i64::MAX),
            Position::Page(end) => match table.cmp(end.table.as_str()) {
                std::cmp::Ordering::Less => (end.version, i64::MAX),
                std::cmp::Ordering::Equal => (end.version, end.rowid),
                std::cmp::Ordering::Greater => (end.version, i64::MIN),
            },
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.position {
            Position::Base => write!(f, "{}", self.base)?,
            Position::Page(end) => write!(
                f,
                "{}.{}.{}.{}",
                self.base, end.version, end.rowid, end.table
            )?,
            Position::Snapshot(end) => {
                write!(f, "s.{}.", end.at)?;
                match &end.part {
                    SnapshotPart::Readable(rowid) => write!(f, "r{rowid}")?,
                    SnapshotPart::Held(key) => write!(f, "h{}", hex::encode(key))?,
                }
                write!(f, ".{}", end.table)?;
            }
        }
        // After the table, whose name has no `.`: the previous release keeps
        // what follows the table as part of its name, and sends it back as is.
        if self.vacuums > 0 {
            write!(f, ".{}", self.vacuums)?;
        }
        Ok(())
    }
}

/// The text is not a [`Cursor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sync cursor")]
pub struct BadCursor(String);

impl std::str::FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<Self, BadCursor> {
        let bad = || BadCursor(text.chars().take(100).collect());
        let number = |part: Option<&str>| -> Result<i64, BadCursor> {
            part.and_then(|p| p.parse::<i64>().ok())
                .filter(|n| (0..=MAX_VERSION).contains(n))
                .ok_or_else(bad)
        };
        // The table, then the count of vacuums if there were any.
        let table = |part: Option<&str>| -> Result<(String, i64), BadCursor> {
            let part = part.ok_or_else(bad)?;
            let (name, vacuums) = match part.split_once('.') {
                Some((name, vacuums)) => (name, number(Some(vacuums)).map_err(|_| bad())?),
                None => (part, 0),
            };
            if name.is_empty() || name.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(bad());
            }
            Ok((name.to_owned(), vacuums))
        };
        if let Some(rest) = text.strip_prefix("s.") {
            let mut parts = rest.splitn(3, '.');
            let at = number(parts.next())?;
            let part = parts.next().unwrap_or_default();
            let part = if let Some(rowid) = part.strip_prefix('r') {
                let rowid = rowid.parse::<i64>().map_err(|_| bad())?;
                SnapshotPart::Readable(rowid)
            } else if let Some(key) = part.strip_prefix('h') {
                SnapshotPart::Held(hex::decode(key).map_err(|_| bad())?)
            } else {
                return Err(bad());
            };
            let (table, vacuums) = table(parts.next())?;
            return Ok(Cursor::snapshot(SnapshotEnd { at, table, part }).made_after(vacuums));
        }
        let mut parts = text.splitn(4, '.');
        let base = number(parts.next())?;
        let Some(version) = parts.next() else {
            return Ok(Cursor::at(base));
        };
        let version = number(Some(version))?;
        let rowid = number(parts.next())?;
        let (table, vacuums) = table(parts.next())?;
        if version <= base {
            return Err(bad());
        }
        Ok(Cursor {
            base,
            position: Position::Page(PageEnd {
                version,
                table,
                rowid,
            }),
            vacuums,
        })
    }
}

/// The largest version a cursor may name (see [`wire::MAX_CLOCK`]).
const MAX_VERSION: i64 = 1 << 62;

/// How much one batch may carry. Each limit is read as a field and set by the
/// method of the same name, from [`default`](Self::default), so that a limit
/// added later changes no code that builds one.
///
/// ```
/// use sync_runtime::BatchLimits;
///
/// let limits = BatchLimits::default().max_rows(1_000);
/// assert_eq!(limits.max_rows, 1_000);
/// assert_eq!(limits.max_bytes, 4 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchLimits {
    /// The most rows (each with any number of its column changes); at least one is
    /// always carried. Default 10,000.
    pub max_rows: usize,
    /// Roughly the most bytes of values (before compression); a single row larger
    /// than this still goes, alone. Default 4 MiB.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl BatchLimits {
    /// No limit: one batch holds everything.
    ///
    /// ```
    /// use sync_runtime::BatchLimits;
    ///
    /// assert_eq!(BatchLimits::UNLIMITED.max_rows, usize::MAX);
    /// assert_eq!(BatchLimits::UNLIMITED.max_bytes, usize::MAX);
    /// ```
    pub const UNLIMITED: BatchLimits = BatchLimits {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
    };

    /// Sets [`max_rows`](field@Self::max_rows), the most rows in a batch
    /// (default 10,000).
    ///
    /// ```
    /// use sync_runtime::BatchLimits;
    ///
    /// assert_eq!(BatchLimits::default().max_rows(1).max_rows, 1);
    /// ```
    pub fn max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }

    /// Sets [`max_bytes`](field@Self::max_bytes), roughly the most bytes of
    /// values in a batch before compression (default 4 MiB).
    ///
    /// ```
    /// use sync_runtime::BatchLimits;
    ///
    /// let limits = BatchLimits::default().max_rows(1_000).max_bytes(64 * 1024);
    /// assert_eq!((limits.max_rows, limits.max_bytes), (1_000, 64 * 1024));
    /// ```
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }
}

/// One bounded part of an export: see
/// [`SyncDb::export_batch`](crate::SyncDb::export_batch).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// The payload, for [`apply_changes`](crate::SyncDb::apply_changes).
    pub payload: Vec<u8>,
    /// Where the next batch starts.
    pub next: Cursor,
    /// Whether this batch reached the end of the changes (when it was made).
    pub complete: bool,
    /// The rows the payload carries.
    pub rows: usize,
    /// The changes the payload carries: row existences and column values.
    pub changes: usize,
    /// The exporting database's version when the batch was made: every change
    /// the batch carries was made at or before it.
    pub version: i64,
    /// The tables the payload has changes of, in payload order.
    pub tables: Vec<String>,
    /// The sites whose changes the payload carries (its site dictionary): a
    /// site not among them made none of them, so an export that leaves out
    /// that site's changes would carry the same batch.
    pub sites: Vec<SiteId>,
}

/// Builds and encodes the payload of the changes after `since` in `tables`.
pub(crate) fn export(
    conn: &Connection,
    tables: &[TableSchema],
    since: i64,
    scope: Scope,
) -> Result<Vec<u8>> {
    Ok(export_batch(
        conn,
        tables,
        &Cursor::at(since),
        scope,
        BatchLimits::UNLIMITED,
    )?
    .payload)
}

/// A row of a batch with its place in export order, (version, table, rowid), and
/// whether its existence is one of the changes (a creation or a delete after the
/// base) rather than the context of its columns.
type Placed = ((i64, usize, i64), RowChange, bool);

/// Builds the batch of the changes after `from` in `tables` (in the
/// case-insensitive name order `synced_tables` gives), within `limits`.
///
/// Rows go in `(version of their last change, table, rowid)` order. A row whose
/// later change moves it past the cursor is carried again by a later batch, whole
/// (every column written after the cursor's base), so a change is never skipped.
pub(crate) fn export_batch(
    conn: &Connection,
    tables: &[TableSchema],
    from: &Cursor,
    scope: Scope,
    limits: BatchLimits,
) -> Result<Batch> {
    let reads = SqliteReads::new(conn)?;
    Ok(export_gated(&reads, tables, from, scope, limits, None)?.0)
}

/// [`export_batch`] of the changes `reader` may see through `filter` (its own
/// left out), with the marks of the rows it sends and evicts (see
/// [`crate::filter`]): a read, whose marks the caller records in a write of its
/// own before it answers the batch.
pub(crate) fn export_filtered(
    conn: &Connection,
    tables: &[TableSchema],
    from: &Cursor,
    reader: SiteId,
    limits: BatchLimits,
    filter: &RowFilters,
) -> Result<(Batch, Marks)> {
    let reads = SqliteReads::new(conn)?;
    let vacuums = reads.vacuums()?;
    let from = &from.resumed(vacuums);
    // A reader's first export walks what it may read rather than the history.
    let snapshot = match &from.position {
        Position::Snapshot(end) => Some(Some(end)),
        Position::Base if from.base == 0 => Some(None),
        _ => None,
    };
    if let Some(resume) = snapshot
        && !filter.allows_everything()
        && snapshot::applies(conn, tables)?
    {
        let (batch, marks) = snapshot::export(conn, tables, resume, reader, limits, filter)?;
        let batch = Batch {
            next: batch.next.made_after(vacuums),
            ..batch
        };
        let at = batch.version;
        return Ok((batch, Marks::new(reader, marks, at)));
    }
    let scope = Scope::Except(reader);
    let gating = Gating::Reader(filter, reader);
    let (batch, marks, _) = export_gated(&reads, tables, from, scope, limits, Some(gating))?;
    let at = batch.version;
    Ok((batch, Marks::new(reader, marks, at)))
}

/// A filtered export for no reader in particular (see
/// [`Gate::nobody`](crate::filter::Gate::nobody)): the batch after `from` of
/// the rows `filter` lets through, each whole, with the marks a reader that
/// takes it takes and the rows it left out. `None` from the beginning, where a
/// reader's first export walks a snapshot of what it may read instead, and
/// when it would leave out more than [`MAX_WITHHELD`] rows (each reader that
/// takes it is checked against each).
pub(crate) fn export_for_nobody(
    conn: &Connection,
    tables: &[TableSchema],
    from: &Cursor,
    limits: BatchLimits,
    filter: &RowFilters,
) -> Result<Option<Gated>> {
    let reads = SqliteReads::new(conn)?;
    let resumed = from.resumed(reads.vacuums()?);
    let first = match &resumed.position {
        Position::Snapshot(_) => true,
        Position::Base => resumed.base == 0,
        Position::Page(_) => false,
    };
    if first && !filter.allows_everything() && snapshot::applies(conn, tables)? {
        return Ok(None);
    }
    let gating = Some(Gating::Nobody(filter));
    let gated = export_gated(&reads, tables, from, Scope::All, limits, gating)?;
    Ok(Some(gated).filter(|(_, _, withheld)| withheld.len() <= MAX_WITHHELD))
}

/// A batch of a filtered export, with the marks its rows set and the rows it
/// left out (see [`Gate`]).
pub(crate) type Gated = (Batch, Vec<NewMark>, Vec<Withheld>);

/// Whose rows a filtered export decides: a reader's, or no reader's in
/// particular.
pub(crate) enum Gating<'f> {
    Reader(&'f RowFilters, SiteId),
    Nobody(&'f RowFilters),
}

/// The batch after `from` of `tables` read through `reads`, within `limits`,
/// of the changes `scope` wants, each row decided by `gating` if the export
/// is filtered (see [`export_batch`], [`export_filtered`] and
/// [`export_for_nobody`]).
pub(crate) fn export_gated(
    reads: &dyn Reads,
    tables: &[TableSchema],
    from: &Cursor,
    scope: Scope,
    limits: BatchLimits,
    gating: Option<Gating<'_>>,
) -> Result<Gated> {
    let upto = reads.upto()?;
    let vacuums = reads.vacuums()?;
    let resumed = from.resumed(vacuums);
    let from = &resumed;
    // A cursor past this database's history came from another database (one that
    // was replaced, or restored from a backup): start over, which is harmless.
    let from = if from.base > upto {
        &Cursor::BEGINNING
    } else {
        from
    };
    let (tables, names) = export_order(tables);
    let max_rows = limits.max_rows.max(1);
    let mut sites = SiteDictionary::new(reads);
    let base = from.base;
    // A change at or below `upto` in a row changed again above it cannot be
    // in this batch (the row is read as it is now): the batch stops before
    // it, and carries nothing after, so that a pull that finds nothing new
    // waits rather than takes the same rows again.
    // A row left out so is read later as it is then: any change it has
    // after `base` must then be after the batch's end too, so the end moves
    // down until no row left out has one before it.
    let mut upto = upto;
    loop {
        let mut hidden: Option<i64> = None;
        for schema in &tables {
            if let Some(version) = reads.hidden(schema, base, upto)? {
                hidden = Some(hidden.map_or(version, |lowest| lowest.min(version)));
            }
        }
        match hidden {
            Some(version) => upto = version - 1,
            None => break,
        }
    }
    let mut gate = match gating {
        Some(Gating::Reader(filter, reader)) => Some(Gate::new(reads, filter, reader, base, upto)?),
        Some(Gating::Nobody(filter)) => Some(Gate::nobody(filter, base, upto)),
        None => None,
    };
    // A filtered export may send a row whole: it reads every column.
    let scan_base = if gate.is_some() { 0 } else { base };
    let mut placed: Vec<Placed> = Vec::new();
    // The marks the rows set, by place: only those of the rows a batch ends up
    // carrying (or passing) are recorded.
    let mut marks = Vec::new();
    let mut from = from.clone();
    // Pages whose rows the scope leaves out are skipped here, rather than sent
    // empty: a device that just pushed a large change set does not fetch it back
    // as empty batches.
    let mut end = loop {
        let end = page_end(reads, &tables, &names, &from, upto, max_rows)?;
        for (index, schema) in tables.iter().enumerate() {
            let after = from.after(&names[index]);
            let last = match &end {
                None => (upto, i64::MAX),
                Some(end) => end.after(&names[index]),
            };
            if after >= last {
                continue;
            }
            let filter = match &mut gate {
                Some(gate) => match gate.filter_of(schema) {
                    RowFilter::Where { sql, params } => Some(PageFilter {
                        sql: sql.as_str(),
                        params: params.as_slice(),
                        only_passing_for: gate.unmarked_reader(reads, schema)?,
                    }),
                    _ => None,
                },
                None => None,
            };
            let range = Range::Page {
                base: scan_base,
                after,
                upto: last,
                filter,
            };
            reads.scan(schema, range, &mut |row| {
                let place = (row.version, index, row.rowid);
                let table = index as u32;
                let decision = match &mut gate {
                    Some(gate) => {
                        let (decision, mark) = gate.decide(reads, schema, &row)?;
                        marks.extend(mark.map(|mark| (place, mark)));
                        decision
                    }
                    None => Decision::Changes,
                };
                if let Some((change, existence)) =
                    decided(&mut sites, row, table, decision, base, scope)?
                {
                    placed.push((place, change, existence));
                }
                Ok(())
            })?;
        }
        // An export for no reader in particular that left out too many rows
        // to be shared stops here: its readers export on their own.
        if gate.as_ref().is_some_and(Gate::withheld_too_many) {
            break None;
        }
        match end {
            Some(end) if placed.is_empty() => from = end,
            end => break end,
        }
    };
    placed.sort_by_key(|(place, ..)| *place);
    // The byte limit: stop after the row that reaches it.
    let mut bytes = 0usize;
    if let Some(cut) = placed.iter().position(|(_, row, _)| {
        bytes = bytes.saturating_add(row_size(row));
        bytes >= limits.max_bytes
    }) && cut + 1 < placed.len()
    {
        placed.truncate(cut + 1);
        let last = placed[cut].0;
        marks.retain(|(place, _)| *place <= last);
        let (version, table, rowid) = last;
        end = Some(Cursor {
            base,
            position: Position::Page(PageEnd {
                version,
                table: names[table].clone(),
                rowid,
            }),
            vacuums: 0,
        });
    }

    let complete = end.is_none();
    let next = end.map_or_else(|| Cursor::at(upto), |end| end.made_after(vacuums));
    let rows = placed
        .into_iter()
        .map(|(_, row, existence)| (row, existence));
    let done = Done {
        base,
        upto,
        complete,
        next,
    };
    let batch = finish(&tables, reads, sites, rows, done)?;
    let marks = marks.into_iter().map(|(_, mark)| mark).collect();
    Ok((batch, marks, gate.map(Gate::withheld).unwrap_or_default()))
}

/// The payload that gives a device back this replica's state of rows it pushed
/// and was refused (`rows`: table and key), as a reader that `filters` let
/// read what they pass (every row without them) may see them: a live row it
/// may read goes whole; any other row, whether or not it exists here, goes as
/// the same eviction, so that the answer tells nothing of rows the user may not
/// read. With filters, the device's marks follow ([`Restored::marks`], see
/// [`crate::filter`]).
pub(crate) fn export_restore<'a>(
    reads: &dyn Reads,
    tables: &[TableSchema],
    rows: impl Iterator<Item = (&'a str, &'a [Value])>,
    filters: Option<&RowFilters>,
) -> Result<Restored> {
    let (tables, names) = export_order(tables);
    let mut sites = SiteDictionary::new(reads);
    let mut out = Vec::new();
    let mut marks = Vec::new();
    for (table, pk) in rows {
        let lower = table.to_ascii_lowercase();
        let Some(index) = names.iter().position(|name| *name == lower) else {
            continue;
        };
        let schema = tables[index];
        let filter = filters.map_or(&RowFilter::All, |filters| filters.for_table(table));
        let (sql, params) = filter.as_sql();
        let row = reads.clock_row(schema, pk, sql, params)?;
        let readable = row
            .as_ref()
            .is_some_and(|r| r.cl % 2 == 1 && r.exists && r.passes == Some(true));
        match row.filter(|_| readable) {
            Some(row) => {
                let whole = decided(
                    &mut sites,
                    row,
                    index as u32,
                    Decision::Whole,
                    0,
                    Scope::All,
                )?;
                out.extend(whole.map(|(change, _)| change));
            }
            None => {
                out.push(RowChange {
                    table: index as u32,
                    pk: pk.to_vec(),
                    cl: wire::EVICT,
                    origin: sites.origin(0)?,
                    columns: Vec::new(),
                });
            }
        }
        if filters.is_some() {
            marks.push((lower, wire::encode_key(pk), readable));
        }
    }
    let done = Done {
        base: 0,
        upto: 0,
        complete: true,
        next: Cursor::BEGINNING,
    };
    let rows = out.into_iter().map(|row| (row, true));
    Ok(Restored {
        payload: finish(&tables, reads, sites, rows, done)?.payload,
        marks,
    })
}

/// What [`export_restore`] gives a device back.
pub(crate) struct Restored {
    /// The payload.
    pub(crate) payload: Vec<u8>,
    /// The marks it sets for the device, once it applied it, at the
    /// replica's version: each row (lowercase table, encoded key) it sent
    /// whole is held (`true`); each one it evicted is evicted if held
    /// (`false`).
    pub(crate) marks: Vec<(String, Vec<u8>, bool)>,
}

/// `tables` in export order (case-insensitive name order), with their lowercase
/// names.
pub(crate) fn export_order(tables: &[TableSchema]) -> (Vec<&TableSchema>, Vec<String>) {
    let mut tables: Vec<&TableSchema> = tables.iter().collect();
    tables.sort_by_cached_key(|t| t.name.to_ascii_lowercase());
    let names = tables.iter().map(|t| t.name.to_ascii_lowercase()).collect();
    (tables, names)
}

/// Where a batch ends: its range, whether it reached the end and where the next
/// one starts.
pub(crate) struct Done {
    pub(crate) base: i64,
    pub(crate) upto: i64,
    pub(crate) complete: bool,
    pub(crate) next: Cursor,
}

/// Encodes the `rows` of a batch (each with whether its existence is one of the
/// changes), in order.
pub(crate) fn finish(
    tables: &[&TableSchema],
    reads: &dyn Reads,
    sites: SiteDictionary<'_>,
    rows: impl Iterator<Item = (RowChange, bool)>,
    done: Done,
) -> Result<Batch> {
    let mut payload = Payload::default();
    let mut local_index = vec![u32::MAX; tables.len()];
    let mut included = Vec::new();
    let mut changes = 0;
    for (mut row, existence) in rows {
        let table = row.table as usize;
        if local_index[table] == u32::MAX {
            local_index[table] = payload.tables.len() as u32;
            let schema = tables[table];
            payload.tables.push(TableEntry {
                name: schema.name.to_string(),
                keys: schema.key_columns().map(|c| c.name.to_string()).collect(),
                // Columns travel under their ids, which renames leave alone.
                values: schema.value_columns().map(|c| c.id().to_owned()).collect(),
            });
            included.push(schema);
        }
        row.table = local_index[table];
        changes += row.columns.len() + usize::from(existence);
        payload.rows.push(row);
    }
    payload.sites = sites.list;
    payload.schema_fingerprint = crate::schema::fingerprint(included.iter().copied());
    payload.exporter = reads.site(0)?;
    // A payload claims to hold everything between `since` and `upto` only when it
    // does: a partial batch claims nothing beyond its base.
    let upto = u64::try_from(done.upto).unwrap_or_default();
    payload.since = u64::try_from(done.base).unwrap_or_default().min(upto);
    payload.upto = if done.complete { upto } else { payload.since };
    let rows = payload.rows.len();
    Ok(Batch {
        payload: wire::encode(&payload, Compression::Zstd),
        next: done.next,
        complete: done.complete,
        rows,
        changes,
        version: done.upto,
        tables: payload.tables.into_iter().map(|t| t.name).collect(),
        sites: payload.sites,
    })
}

/// Where the batch starting after `from` ends if more than `max_rows` rows follow
/// it: the cursor after its last row; `None` if the rest fits.
fn page_end(
    reads: &dyn Reads,
    tables: &[&TableSchema],
    names: &[String],
    from: &Cursor,
    upto: i64,
    max_rows: usize,
) -> Result<Option<Cursor>> {
    if max_rows == usize::MAX {
        return Ok(None);
    }
    let limit = i64::try_from(max_rows)
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let mut keys: Vec<(i64, usize, i64)> = Vec::new();
    for (index, schema) in tables.iter().enumerate() {
        let after = from.after(&names[index]);
        for (version, rowid) in reads.page_keys(schema, after, upto, limit)? {
            keys.push((version, index, rowid));
        }
    }
    if keys.len() <= max_rows {
        return Ok(None);
    }
    keys.sort_unstable();
    let (version, table, rowid) = keys[max_rows - 1];
    Ok(Some(Cursor {
        base: from.base,
        position: Position::Page(PageEnd {
            version,
            table: names[table].clone(),
            rowid,
        }),
        vacuums: 0,
    }))
}

/// The payload row for a clock row of a filtered export, as `decision` says (see
/// [`row_change`]).
pub(crate) fn decided(
    sites: &mut SiteDictionary<'_>,
    row: ClockRow,
    table: u32,
    decision: Decision,
    base: i64,
    scope: Scope,
) -> Result<Option<(RowChange, bool)>> {
    match decision {
        Decision::Skip => Ok(None),
        Decision::Changes => row_change(sites, row, table, base, scope),
        Decision::Whole => row_change(sites, row, table, 0, Scope::All),
        Decision::Evict => Ok(Some((evict(sites, row, table)?, true))),
    }
}

/// The payload row for a clock row: its existence and the columns written after
/// `base` that `scope` wants, and whether the existence is itself a change; `None`
/// if nothing of it is wanted.
fn row_change(
    sites: &mut SiteDictionary<'_>,
    row: ClockRow,
    table: u32,
    base: i64,
    scope: Scope,
) -> Result<Option<(RowChange, bool)>> {
    let wanted = |sites: &SiteDictionary<'_>, version| -> Result<bool> {
        Ok(match scope {
            Scope::All => true,
            Scope::Local => sites.is_local(version)?,
            Scope::Except(site) => !sites.made_by(version, site)?,
        })
    };
    let cl = u64::try_from(row.cl).unwrap_or_default();
    if row.cl % 2 == 0 {
        if !wanted(sites, row.version)? {
            return Ok(None);
        }
        let change = RowChange {
            table,
            pk: row.pk,
            cl,
            origin: sites.origin(row.version)?,
            columns: Vec::new(),
        };
        return Ok(Some((change, true)));
    }
    if !row.exists {
        return Ok(None);
    }
    let mut columns = Vec::new();
    for column in row.columns {
        if column.version > base && wanted(sites, column.version)? {
            columns.push(ColumnChange {
                column: column.index as u32,
                col_version: u64::try_from(column.col_version).unwrap_or_default(),
                origin: sites.origin(column.version)?,
                value: column.value,
            });
        }
    }
    // The row's creation goes with its columns as their context, and alone when
    // the creation itself is one of the changes asked for.
    let created = row.created > base && wanted(sites, row.created)?;
    if columns.is_empty() && !created {
        return Ok(None);
    }
    let change = RowChange {
        table,
        pk: row.pk,
        cl,
        origin: sites.origin(row.created)?,
        columns,
    };
    Ok(Some((change, created)))
}

/// The eviction of a row (see [`wire::EVICT`]).
fn evict(sites: &mut SiteDictionary<'_>, row: ClockRow, table: u32) -> Result<RowChange> {
    Ok(RowChange {
        table,
        pk: row.pk,
        cl: wire::EVICT,
        origin: sites.origin(row.version)?,
        columns: Vec::new(),
    })
}

/// Roughly the bytes a row takes in a payload body, before compression.
pub(crate) fn row_size(row: &RowChange) -> usize {
    let value = |v: &Value| match v {
        Value::Text(t) => t.len() + 2,
        Value::Blob(b) => b.len() + 2,
        _ => 9,
    };
    row.pk.iter().map(value).sum::<usize>()
        + row
            .columns
            .iter()
            .map(|c| value(&c.value) + 6)
            .sum::<usize>()
        + 8
}

/// The payload's site dictionary, filled as origins are looked up.
pub(crate) struct SiteDictionary<'o> {
    reads: &'o dyn Reads,
    index: HashMap<i64, u32>,
    list: Vec<SiteId>,
    /// The ordinal looked up last, and its index.
    last: Option<(i64, u32)>,
}

impl<'o> SiteDictionary<'o> {
    pub(crate) fn new(reads: &'o dyn Reads) -> Self {
        Self {
            reads,
            index: HashMap::new(),
            list: Vec::new(),
            last: None,
        }
    }

    /// Whether local version `version` was made here.
    fn is_local(&self, version: i64) -> Result<bool> {
        Ok(self.reads.origin(version)?.0 == 0)
    }

    /// Whether local version `version` holds changes that `site` made.
    fn made_by(&self, version: i64, site: SiteId) -> Result<bool> {
        Ok(self.reads.site_of(version)? == site)
    }

    /// The payload origin of local version `version`, its site added to the
    /// dictionary.
    fn origin(&mut self, version: i64) -> Result<Origin> {
        let (ordinal, origin_version) = self.reads.origin(version)?;
        let site = match self.last {
            Some((last, index)) if last == ordinal => index,
            _ => match self.index.get(&ordinal) {
                Some(&index) => index,
                None => {
                    let index = self.list.len() as u32;
                    self.list.push(self.reads.site(ordinal)?);
                    self.index.insert(ordinal, index);
                    index
                }
            },
        };
        self.last = Some((ordinal, site));
        let version = u64::try_from(origin_version).unwrap_or_default();
        Ok(Origin { site, version })
    }
}
