//! The trait `#[derive(Synced)]` implements.

use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::value::{self, Domain, SyncValue, ValueRef};

/// A Rust struct stored in a synced table.
///
/// Implement it with `#[derive(Synced)]`, not by hand: the derive checks the struct
/// at compile time and generates the descriptor and the row conversions. The methods
/// are what the runtime calls to write and read rows.
///
/// ```
/// use sync_runtime::{Synced, SyncId};
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
/// let schema = Todo::SCHEMA;
/// assert_eq!(schema.name, "todos");
/// assert_eq!(schema.columns.len(), 4);
/// ```
pub trait Synced: Sized + Send + 'static {
    /// The primary key: the key field's type, or a tuple of the key fields' types
    /// (in declaration order) for a composite key.
    type Key: Send + Sync + 'static;

    /// The table's descriptor.
    const SCHEMA: &'static TableSchema;

    /// The [`Domain`] of each key column's type, in key order: the keys the
    /// app's raw SQL writes to the table are checked against them. Empty (the
    /// default) checks nothing.
    const KEY_DOMAINS: &'static [Domain] = &[];

    /// The value of the column at `index` (table order, as in [`Self::SCHEMA`]).
    fn column_value(&self, index: usize) -> ValueRef<'_>;

    /// This row's key.
    fn key(&self) -> Self::Key;

    /// The value of the key column at `index` (key order) of `key`.
    fn key_value(key: &Self::Key, index: usize) -> ValueRef<'_>;

    /// Builds a row from a result row holding the table's columns in table order.
    fn from_row(row: &mut RowReader<'_>) -> Result<Self>;
}

/// Changes to some columns of a row of [`Row`](Self::Row), written without
/// reading the row first: the type `#[derive(Synced)]` generates next to the
/// struct, `<Struct>Patch` (or the name `#[synced(patch = "…")]` gives), with
/// an `Option` per column outside the key. See
/// [`SyncDb::patch`](crate::SyncDb::patch).
pub trait Patch: Send + 'static {
    /// The synced struct whose rows it changes.
    type Row: Synced;

    /// The columns it sets (their index in table order) and their values.
    fn values(&self) -> Vec<(usize, ValueRef<'_>)>;
}

/// Reads the columns of one result row in order, with errors that name the column.
///
/// Handed to [`Synced::from_row`]; the derive calls [`RowReader::read`] once per
/// stored field.
pub struct RowReader<'r> {
    row: &'r rusqlite::Row<'r>,
    schema: &'r TableSchema,
    index: usize,
}

impl<'r> RowReader<'r> {
    /// The row's key, as far as it reads (for errors).
    pub(crate) fn key(&self) -> Vec<crate::value::Value> {
        let keys = self
            .schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.primary_key);
        keys.filter_map(|(i, _)| self.row.get_ref(i).ok())
            .filter_map(|raw| value::from_sqlite(raw).ok().map(ValueRef::into_owned))
            .collect()
    }

    pub(crate) fn new(row: &'r rusqlite::Row<'r>, schema: &'r TableSchema) -> Self {
        Self {
            row,
            schema,
            index: 0,
        }
    }

    /// Reads the next column as `T`.
    pub fn read<T: SyncValue>(&mut self) -> Result<T> {
        let index = self.index;
        self.index += 1;
        let decode_error = |source| Error::Decode {
            table: self.schema.name.to_string(),
            key: self.key(),
            column: self
                .schema
                .columns
                .get(index)
                .map_or_else(|| index.to_string(), |c| c.name.to_string()),
            source,
        };
        let raw = self.row.get_ref(index)?;
        let value = value::from_sqlite(raw).map_err(decode_error)?;
        T::from_value_ref(value).map_err(decode_error)
    }
}
