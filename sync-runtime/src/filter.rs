//! Row-level read filters on exports: what one reader may see of each table.
//!
//! A server exports, for each device, only the rows its user may read. What the
//! device holds is remembered per reader site in `_synced_held`, so that:
//!
//! - a row the reader may read but does not hold yet (a move-in) goes whole, with
//!   every column, whoever wrote it;
//! - a row the reader holds but may no longer read (a move-out) goes as an
//!   eviction ([`wire::EVICT`]), which makes the reader forget it;
//! - a row the reader never held and may not read sends nothing: not its values,
//!   not its delete, not its existence.
//!
//! A reader holds the rows it was sent and the rows it created. Marks carry the
//! version of the export that set them: an export from a cursor older than a mark
//! was not received (the reader would have moved its cursor), so the row goes
//! again, whole or evicted.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::change::{ClockRow, Reads};
use crate::error::Result;
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::sql;
use crate::value::Value;
use crate::wire;

/// Which rows of one table a reader may see.
#[derive(Debug, Clone, PartialEq)]
pub enum RowFilter {
    /// Every row.
    All,
    /// No row.
    Nothing,
    /// The rows for which an SQL expression over the table's columns is true;
    /// `?1`, `?2`… in it are bound to `params`, never spliced into the text.
    Where {
        /// The expression, e.g. `owner_id = ?1 OR shared = 1`.
        sql: String,
        /// The values of `?1`, `?2`…
        params: Vec<Value>,
    },
}

impl RowFilter {
    /// The filter as SQL and the values of its parameters: `1` for every row,
    /// `0` for none.
    pub(crate) fn as_sql(&self) -> (&str, &[Value]) {
        match self {
            RowFilter::All => ("1", &[]),
            RowFilter::Nothing => ("0", &[]),
            RowFilter::Where { sql, params } => (sql, params),
        }
    }
}

/// The row filter of each table: what a reader may read in an export (see
/// [`Replica::export_filtered`](crate::server::Replica::export_filtered)).
///
/// ```
/// use sync_runtime::Value;
/// use sync_runtime::server::{RowFilter, RowFilters};
///
/// let filter = RowFilters::new(RowFilter::Nothing).table(
///     "todos",
///     RowFilter::Where { sql: "owner_id = ?1 OR shared = 1".into(), params: vec![Value::from("ann")] },
/// );
/// assert_eq!(filter.for_table("TODOS"), &RowFilter::Where {
///     sql: "owner_id = ?1 OR shared = 1".into(),
///     params: vec![Value::from("ann")],
/// });
/// assert_eq!(filter.for_table("notes"), &RowFilter::Nothing);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilters {
    tables: HashMap<String, RowFilter>,
    others: RowFilter,
}

impl RowFilters {
    /// A filter that applies `others` to every table not named with
    /// [`table`](Self::table).
    pub fn new(others: RowFilter) -> Self {
        Self {
            tables: HashMap::new(),
            others,
        }
    }

    /// Sets the filter of one table (names are case-insensitive).
    pub fn table(mut self, name: &str, filter: RowFilter) -> Self {
        self.tables.insert(name.to_ascii_lowercase(), filter);
        self
    }

    /// Whether every row of every table passes: the filter changes nothing.
    pub fn allows_everything(&self) -> bool {
        self.others == RowFilter::All && self.tables.values().all(|f| *f == RowFilter::All)
    }

    /// The filter of a table.
    pub fn for_table(&self, name: &str) -> &RowFilter {
        self.tables
            .get(&name.to_ascii_lowercase())
            .unwrap_or(&self.others)
    }
}

impl Eq for RowFilters {}

impl std::hash::Hash for RowFilters {
    /// Hashes the tables named, and each filter's SQL and values (so that the
    /// filters of many users of one policy hash apart), equal filters alike.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut tables: Vec<(&String, &RowFilter)> = self.tables.iter().collect();
        tables.sort_by_key(|(name, _)| *name);
        for (name, filter) in tables {
            name.hash(state);
            filter.hash(state);
        }
        self.others.hash(state);
    }
}

impl std::hash::Hash for RowFilter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            RowFilter::All => 0u8.hash(state),
            RowFilter::Nothing => 1u8.hash(state),
            RowFilter::Where { sql, params } => {
                2u8.hash(state);
                sql.hash(state);
                for param in params {
                    match param {
                        Value::Null => 0u8.hash(state),
                        Value::Integer(n) => (1u8, n).hash(state),
                        // Equal reals hash alike: 0.0 and -0.0 are equal.
                        Value::Real(r) => (2u8, (r + 0.0).to_bits()).hash(state),
                        Value::Text(text) => (3u8, text).hash(state),
                        Value::Blob(bytes) => (4u8, bytes).hash(state),
                    }
                }
            }
        }
    }
}

/// Whether the row of `schema` with key `pk` passes `filter`; `None` if there is
/// no such row.
pub(crate) fn passes(
    conn: &Connection,
    schema: &TableSchema,
    filter: &RowFilter,
    pk: &[Value],
) -> Result<Option<bool>> {
    let (sql, params) = filter.as_sql();
    let query = sql::row_passes(schema, sql, params.len());
    let mut stmt = conn.prepare_cached(&query)?;
    let bound = params.iter().chain(pk);
    Ok(stmt
        .query_row(rusqlite::params_from_iter(bound), |r| r.get(0))
        .optional()?)
}

/// Marks `reader` (a site ordinal) as holding the row of `table` (lowercase)
/// with key `key` (encoded) from version `at` on: 0 for a row it created, which
/// it holds whatever the cursor it fetches from; the version of the answer for a
/// row it is sent back after a rejected write, which it holds once it applied
/// that answer. A fetch from an older cursor may not come from a device that
/// did (a push in its name by someone else, or an answer lost on the way), so
/// the row goes again, whole.
pub(crate) fn mark_held(
    conn: &Connection,
    reader: i64,
    table: &str,
    key: &[u8],
    at: i64,
) -> Result<()> {
    conn.prepare_cached(sql::MARK_HELD)?
        .execute((reader, table, key, at))?;
    Ok(())
}

/// Marks a row `reader` (a site ordinal) holds in `table` (lowercase) as evicted
/// at version `at`: it was told to forget the row. A row it does not hold gets
/// no mark, so that nothing is ever sent of a row it never knew.
pub(crate) fn evict_if_held(
    conn: &Connection,
    reader: i64,
    table: &str,
    key: &[u8],
    at: i64,
) -> Result<()> {
    conn.prepare_cached(sql::MARK_EVICTED)?
        .execute((reader, table, key, at))?;
    Ok(())
}

/// What an export does with one row for a filtered reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing of the row goes.
    Skip,
    /// The changes after the cursor's base go, as for an unfiltered export.
    Changes,
    /// The whole row goes: the reader does not hold it.
    Whole,
    /// The reader must forget the row.
    Evict,
}

/// A reader's marks on one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Held { at: i64 },
    Evicted { at: i64 },
}

/// A mark an export sets on a row it sends, recorded with the batch's other
/// [`Marks`] once the batch that carries the row is final.
#[derive(Debug)]
pub(crate) struct NewMark {
    table: String,
    key: Vec<u8>,
    mark: Mark,
}

impl NewMark {
    /// The row's table (lowercase) and key (encoded), whether the mark is an
    /// eviction, and its version: what a store records.
    pub(crate) fn parts(&self) -> (&str, &[u8], bool, i64) {
        let (evicted, at) = match self.mark {
            Mark::Held { at } => (false, at),
            Mark::Evicted { at } => (true, at),
        };
        (&self.table, &self.key, evicted, at)
    }

    /// About how many bytes of memory it holds.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.table.len() + self.key.len()
    }
}

/// The marks a filtered export sets for its reader: what the reader holds
/// once it received the batch. An export only reads, so that it can run on a
/// read connection beside the writes; its marks are a small write of their own,
/// committed before the batch is answered ([`record`](Self::record)).
#[must_use = "a filtered export's marks must be recorded before its batch is answered"]
pub(crate) struct Marks {
    reader: SiteId,
    marks: Vec<NewMark>,
    /// The version the export read at.
    at: i64,
}

impl Marks {
    /// The marks of `reader`, set by an export that read at version `at`.
    pub(crate) fn new(reader: SiteId, marks: Vec<NewMark>, at: i64) -> Self {
        Self { reader, marks, at }
    }

    /// Whether the reader's own device wrote here since the export read: its
    /// push may have marked rows it created (or re-created) as held, which
    /// these older marks must not replace. The export is then made again in
    /// the write transaction, with the marks it sets.
    pub(crate) fn superseded(&self, conn: &Connection) -> Result<bool> {
        let Some(reader) = crate::site::ordinal(conn, self.reader)? else {
            return Ok(false);
        };
        Ok(conn
            .prepare_cached(sql::WROTE_SINCE)?
            .query_row((self.at, reader), |r| r.get(0))?)
    }

    /// Whether there is nothing to record.
    pub(crate) fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Stores the marks (adding the reader to the site dictionary if it is new
    /// there), in the caller's write transaction.
    pub(crate) fn record(self, conn: &Connection) -> Result<()> {
        set_marks(conn, self.reader, &self.marks)
    }
}

/// Stores `marks` as `reader`'s (adding it to the site dictionary if it is
/// new there and there are marks).
fn set_marks(conn: &Connection, reader: SiteId, marks: &[NewMark]) -> Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    let reader = crate::site::local_sites(conn, &[reader])?[0];
    let mut stmt = conn.prepare_cached(sql::SET_MARK)?;
    for mark in marks {
        let (table, key, evicted, at) = mark.parts();
        stmt.execute((reader, table, key, evicted, at))?;
    }
    Ok(())
}

/// Whether `reader` may take a batch exported for no reader in particular
/// (see [`Gate::nobody`]), which set `marks` and left out `withheld`: unless
/// it holds or created a row left out, its own export would send the same
/// rows (those it holds as their changes, which the whole rows include). If
/// it may, the batch's marks are recorded as its own, in the caller's write
/// transaction.
pub(crate) fn take_for(
    conn: &Connection,
    reader: SiteId,
    marks: &[NewMark],
    withheld: &[Withheld],
) -> Result<bool> {
    // A reader the site dictionary does not know holds and created nothing.
    if let Some(ordinal) = crate::site::ordinal(conn, reader)? {
        let mut held = conn.prepare_cached(sql::HELD_MARK)?;
        for row in withheld {
            if row.creator == ordinal || held.exists((ordinal, &row.table, &row.key))? {
                return Ok(false);
            }
        }
    }
    set_marks(conn, reader, marks)?;
    Ok(true)
}

/// The filtered reader of one export: decides row by row, and gives the marks
/// the export sets. It only reads.
pub(crate) struct Gate<'f> {
    filter: &'f RowFilters,
    /// The reader's site ordinal here; `None` while it is not in the site
    /// dictionary, when it holds nothing and created nothing here.
    reader: Option<i64>,
    /// The cursor's base version and the version of this export.
    base: i64,
    upto: i64,
    /// Per table, whether the reader has any mark there.
    marked: HashMap<String, bool>,
    /// Exporting for no reader in particular (see [`Gate::nobody`]): the rows
    /// left out, each with the ordinal of the site that created it.
    nobody: Option<Vec<Withheld>>,
}

/// The most rows an export for every reader of a filter may leave out (see
/// [`Replica::export_shared_filtered`](crate::server::Replica::export_shared_filtered)):
/// each reader that takes it is checked against each, and one far behind under
/// a filter that reads little would otherwise list the whole history.
pub const MAX_WITHHELD: usize = 256;

/// A row an export for no reader in particular left out: a reader that holds
/// it, or created it, needs an export of its own.
#[derive(Debug, Clone)]
pub(crate) struct Withheld {
    pub(crate) table: String,
    pub(crate) key: Vec<u8>,
    pub(crate) creator: i64,
}

impl Withheld {
    /// About how many bytes of memory it holds.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.table.len() + self.key.len()
    }
}

impl<'f> Gate<'f> {
    /// A gate for `reader` exporting after `base`, at version `upto`.
    pub(crate) fn new(
        reads: &dyn Reads,
        filter: &'f RowFilters,
        reader: SiteId,
        base: i64,
        upto: i64,
    ) -> Result<Self> {
        let reader = reads.ordinal(reader)?;
        Ok(Self {
            filter,
            reader,
            base,
            upto,
            marked: HashMap::new(),
            nobody: None,
        })
    }

    /// A gate for a reader that holds nothing and created nothing, exporting
    /// after `base` at version `upto`: every row the filter lets through goes
    /// whole, and the others are left out and listed ([`withheld`](Self::withheld)).
    /// Its batch is what any reader of the same filter gets, but one that holds
    /// or created a row left out.
    pub(crate) fn nobody(filter: &'f RowFilters, base: i64, upto: i64) -> Self {
        Self {
            filter,
            reader: None,
            base,
            upto,
            marked: HashMap::new(),
            nobody: Some(Vec::new()),
        }
    }

    /// The rows left out by a gate for [`nobody`](Self::nobody).
    pub(crate) fn withheld(self) -> Vec<Withheld> {
        self.nobody.unwrap_or_default()
    }

    /// Whether a gate for [`nobody`](Self::nobody) left out more rows than
    /// [`MAX_WITHHELD`]: its export is not shared.
    pub(crate) fn withheld_too_many(&self) -> bool {
        self.nobody
            .as_ref()
            .is_some_and(|withheld| withheld.len() > MAX_WITHHELD)
    }

    /// The reader's site ordinal here, if it has one.
    pub(crate) fn reader(&self) -> Option<i64> {
        self.reader
    }

    /// The filter of a table, for the scan to evaluate.
    pub(crate) fn filter_of(&self, schema: &TableSchema) -> &'f RowFilter {
        self.filter.for_table(&schema.name)
    }

    /// The reader's site ordinal if it has no mark in the table of `schema`: then
    /// the only rows it holds there that fail the filter are those it created,
    /// and a scan may leave out the others.
    pub(crate) fn unmarked_reader(
        &mut self,
        reads: &dyn Reads,
        schema: &TableSchema,
    ) -> Result<Option<i64>> {
        let table = schema.name.to_ascii_lowercase();
        // For no reader in particular, every row is read: those left out are
        // listed.
        if self.nobody.is_some() || self.is_marked(reads, &table)? {
            return Ok(None);
        }
        // A reader the site dictionary does not know created nothing here: no
        // row has a creator with a negative ordinal.
        Ok(Some(self.reader.unwrap_or(-1)))
    }

    /// Whether the reader has any mark in `table` (lowercase).
    fn is_marked(&mut self, reads: &dyn Reads, table: &str) -> Result<bool> {
        let Some(reader) = self.reader else {
            return Ok(false);
        };
        if let Some(&marked) = self.marked.get(table) {
            return Ok(marked);
        }
        let marked = reads.holds_in_table(reader, table)?;
        self.marked.insert(table.to_owned(), marked);
        Ok(marked)
    }

    /// What goes of `row` of `schema`, and the mark that sets on the row.
    pub(crate) fn decide(
        &mut self,
        reads: &dyn Reads,
        schema: &TableSchema,
        row: &ClockRow,
    ) -> Result<(Decision, Option<NewMark>)> {
        // Every row of the table is readable: nothing to track.
        if *self.filter.for_table(&schema.name) == RowFilter::All {
            return Ok((Decision::Changes, None));
        }
        let table = schema.name.to_ascii_lowercase();
        if self.nobody.is_some() {
            return self.decide_for_nobody(reads, schema, row, table);
        }
        // A reader with no marks in a table (its first fetch, typically) needs no
        // look-up per row.
        let marked = self.is_marked(reads, &table)?;
        let mark = match self.reader {
            Some(reader) if marked => reads
                .held_mark(reader, &table, &wire::encode_key(&row.pk))?
                .map(|(evicted, at)| {
                    if evicted {
                        Mark::Evicted { at }
                    } else {
                        Mark::Held { at }
                    }
                }),
            _ => None,
        };
        let lives = row.cl % 2 == 1;
        // A reader holds what it was sent (and received: the mark is not newer than
        // its cursor) and what it created.
        let holds = match mark {
            Some(Mark::Held { at }) => Some(at <= self.base),
            Some(Mark::Evicted { .. }) => None,
            None => (Some(reads.origin(row.created)?.0) == self.reader).then_some(true),
        };
        // An eviction the reader may not have received goes again.
        let evicted_unseen = matches!(mark, Some(Mark::Evicted { at }) if at > self.base);
        let readable = self.readable(reads, schema, row)?;
        let decision = match (readable, holds) {
            (true, Some(true)) => Decision::Changes,
            (true, _) => Decision::Whole,
            // The reader held the row, which was deleted: the delete goes.
            (false, Some(_)) if !lives => Decision::Changes,
            (false, Some(_)) => Decision::Evict,
            (false, None) if evicted_unseen => Decision::Evict,
            (false, None) => Decision::Skip,
        };
        let new_mark = match decision {
            Decision::Whole => Some(Mark::Held { at: self.upto }),
            Decision::Evict => Some(Mark::Evicted { at: self.upto }),
            Decision::Changes if !lives => Some(Mark::Evicted { at: self.upto }),
            _ => None,
        };
        let new_mark = new_mark.map(|mark| NewMark {
            table,
            key: wire::encode_key(&row.pk),
            mark,
        });
        Ok((decision, new_mark))
    }

    /// Whether `row` of `schema` lives and its table's filter lets it through.
    fn readable(&self, reads: &dyn Reads, schema: &TableSchema, row: &ClockRow) -> Result<bool> {
        if row.cl % 2 == 0 || !row.exists {
            return Ok(false);
        }
        if let Some(passes) = row.passes {
            return Ok(passes);
        }
        Ok(match self.filter.for_table(&schema.name) {
            RowFilter::All => true,
            RowFilter::Nothing => false,
            RowFilter::Where { sql, params } => {
                reads.passes(schema, sql, params, &row.pk)? == Some(true)
            }
        })
    }

    /// [`decide`](Self::decide) for a reader that holds nothing: a row it may
    /// read goes whole, and is marked held; any other is left out, and listed.
    fn decide_for_nobody(
        &mut self,
        reads: &dyn Reads,
        schema: &TableSchema,
        row: &ClockRow,
        table: String,
    ) -> Result<(Decision, Option<NewMark>)> {
        let readable = self.readable(reads, schema, row)?;
        let key = wire::encode_key(&row.pk);
        if readable {
            let mark = Mark::Held { at: self.upto };
            return Ok((Decision::Whole, Some(NewMark { table, key, mark })));
        }
        let creator = reads.origin(row.created)?.0;
        if let Some(withheld) = &mut self.nobody {
            withheld.push(Withheld {
                table,
                key,
                creator,
            });
        }
        Ok((Decision::Skip, None))
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    fn of(value: Value) -> RowFilters {
        RowFilters::new(RowFilter::Nothing).table(
            "notes",
            RowFilter::Where {
                sql: "owner = ?1".into(),
                params: vec![value],
            },
        )
    }

    /// Filters are told apart by their values too (the answers of one
    /// policy's users are kept apart, not in one bucket), and equal ones hash
    /// alike.
    #[test]
    fn filters_hash_by_their_values() {
        let state = RandomState::new();
        let hash = |filter: &RowFilters| state.hash_one(filter);
        assert_eq!(hash(&of(Value::from("ann"))), hash(&of(Value::from("ann"))));
        assert_ne!(hash(&of(Value::from("ann"))), hash(&of(Value::from("bob"))));
        assert_ne!(of(Value::from("ann")), of(Value::from("bob")));
        // Equal values, equal hashes: 0.0 and -0.0 are one value.
        assert_eq!(of(Value::Real(0.0)), of(Value::Real(-0.0)));
        assert_eq!(hash(&of(Value::Real(0.0))), hash(&of(Value::Real(-0.0))));
        assert_ne!(hash(&of(Value::Integer(1))), hash(&of(Value::Real(1.0))));
    }
}
