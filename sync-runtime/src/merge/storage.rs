//! What the merge reads and writes, as one interface that every store of a
//! replica implements: SQLite for apps and the embedded server (see
//! [`super::sqlite`]), PostgreSQL for servers that scale out.
//!
//! The merge decides; a store only reads and writes. Reads come in sets (the
//! clocks and values of many rows of one table at once) and writes may be
//! gathered until [`Storage::flush`], so that a store across a network pays a
//! round trip per set of rows, not per row. Everything happens inside one
//! transaction the caller opened, which the caller commits.

use std::borrow::Borrow;

use crate::error::Result;
use crate::filter::RowFilter;
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::value::Value;

/// A row's clock as stored: causal length, versions, and per value column its
/// `col_version` and local version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clock {
    /// The causal length: odd while the row exists, even once deleted.
    pub(crate) cl: i64,
    /// The version of the row's last change.
    pub(crate) dv: i64,
    /// The version of the row's (re)creation.
    pub(crate) created: i64,
    /// Per value column of the table, in its order: `col_version` and the
    /// version of the column's last write.
    pub(crate) columns: Vec<(i64, i64)>,
}

/// The storage of a replica as the merge uses it, inside an open write
/// transaction.
///
/// Tables are named by their index among those [`prepare`](Self::prepare)d
/// for the payload, in the order they were prepared. Keys are the values of a
/// table's key columns, in key order; values, those of its value columns, in
/// the order of its descriptor.
pub(crate) trait Storage {
    /// How many of a payload's rows the merge reads at once: their clocks,
    /// then the values of those it needs, in one set per table.
    fn rows_read_together(&self) -> usize {
        1024
    }

    /// The synced tables' descriptors.
    fn tables(&mut self) -> Result<Vec<TableSchema>>;

    /// Makes ready to merge `rows` rows into the table of `schema` (one of
    /// [`tables`](Self::tables)); it is table number `n` for the `n`-th call.
    fn prepare(&mut self, schema: &TableSchema, rows: usize) -> Result<()>;

    /// The replica's version: the last one its transactions took.
    fn current_version(&mut self) -> Result<i64>;

    /// A new local version, for one remote transaction whose changes win
    /// here: greater than every version this replica gave out before.
    fn new_version(&mut self) -> Result<i64>;

    /// What [`forget_versions_after`](Self::forget_versions_after) may go
    /// back to: the version given out last, or less.
    fn version_mark(&mut self) -> i64;

    /// The versions given out after `mark` (a [`version_mark`](Self::version_mark))
    /// were rolled back with a savepoint: a store may give them out again.
    fn forget_versions_after(&mut self, mark: i64);

    /// From here to [`end_applying`](Self::end_applying), writes are the
    /// merge's: the store's own change tracking records nothing of them.
    fn begin_applying(&mut self) -> Result<()>;

    /// Ends what [`begin_applying`](Self::begin_applying) began: the replica's
    /// version becomes the last one [`new_version`](Self::new_version) gave.
    fn end_applying(&mut self) -> Result<()>;

    /// The ordinal of each site id here, added to the dictionary if new.
    fn site_ordinals(&mut self, sites: &[SiteId]) -> Result<Vec<i64>>;

    /// Why a push of `device`'s claiming its changes up to `claimed` (if it
    /// claims a range) must come from another file using its site id, if it
    /// must (see [`crate::site::reused_site`]).
    fn reused_site(&mut self, device: SiteId, claimed: Option<i64>) -> Result<Option<String>>;

    /// Records that site `site` (an ordinal) is to be asked again from its
    /// version `since` once this replica has more tables or columns.
    fn skipped(&mut self, site: i64, since: i64) -> Result<()>;

    /// How far this replica holds site `site`'s changes (0: not at all).
    fn peer_seen(&mut self, site: i64) -> Result<i64>;

    /// Records that this replica holds site `site`'s changes up to `upto`.
    fn set_peer_seen(&mut self, site: i64, upto: i64) -> Result<()>;

    /// Locks the rows of `rows` (each a table and a key) until the
    /// transaction ends, so that no other merge or writer changes one between
    /// the merge's read of it and its write. A store with one writer at a
    /// time has nothing to lock.
    fn lock_rows(&mut self, rows: &[(usize, &[Value])]) -> Result<()>;

    /// The clocks of the rows of `table` with these keys, in their order.
    fn read_clocks(&mut self, table: usize, keys: &[&[Value]]) -> Result<Vec<Option<Clock>>>;

    /// The values of the live rows of `table` with these keys, in their order.
    fn read_rows(&mut self, table: usize, keys: &[&[Value]]) -> Result<Vec<Option<Vec<Value>>>>;

    /// Writes a whole row (inserted or replaced); may be gathered until
    /// [`flush`](Self::flush).
    fn write_row<V: Borrow<Value>>(
        &mut self,
        table: usize,
        key: &[Value],
        values: &[V],
    ) -> Result<()>;

    /// Writes a row's whole clock; may be gathered until [`flush`](Self::flush).
    fn write_clock(&mut self, table: usize, key: &[Value], clock: &Clock) -> Result<()>;

    /// Deletes a row; whether there was one.
    fn delete_row(&mut self, table: usize, key: &[Value]) -> Result<bool>;

    /// Deletes a row's clock; whether there was one.
    fn delete_clock(&mut self, table: usize, key: &[Value]) -> Result<bool>;

    /// A row and its clock were forgotten (an eviction): no clock is left to
    /// tell of it, so the store keeps it for whoever is told of this
    /// transaction's changes.
    fn forgotten(&mut self, table: usize, key: &[Value]);

    /// Writes what was gathered.
    fn flush(&mut self) -> Result<()>;

    /// The site id that made local version `version`.
    fn site_of_version(&mut self, version: i64) -> Result<SiteId>;

    /// Lists local version `version` as made by site `site` (an ordinal) at
    /// its version `origin_version`; may be written at the next
    /// [`flush`](Self::flush).
    fn add_version_origin(&mut self, version: i64, site: i64, origin_version: i64) -> Result<()>;

    /// Whether local version `version` holds changes made elsewhere.
    fn made_elsewhere(&mut self, version: i64) -> Result<bool>;

    /// Up to which version the replica's changes were made under its last
    /// earlier site id, if it had one (see [`crate::identity`]).
    fn earlier_identity_upto(&mut self) -> Result<Option<i64>>;

    /// Whether the row of `table` with key `key` passes `filter`, if the row
    /// exists; reads what was [`flush`](Self::flush)ed.
    fn passes(&mut self, table: usize, filter: &RowFilter, key: &[Value]) -> Result<Option<bool>>;

    /// Opens a savepoint for one row.
    fn savepoint(&mut self) -> Result<()>;

    /// Undoes everything since the [`savepoint`](Self::savepoint), and closes it.
    fn roll_back_savepoint(&mut self) -> Result<()>;

    /// Closes the [`savepoint`](Self::savepoint), keeping what it holds.
    fn release_savepoint(&mut self) -> Result<()>;

    /// Records that reader site `reader` (an ordinal) holds the row of `table`
    /// with key `key` whatever the cursor it fetches from (see
    /// [`crate::filter::mark_held`]).
    fn mark_held(&mut self, reader: i64, table: usize, key: &[Value]) -> Result<()>;
}
