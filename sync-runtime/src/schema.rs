//! Schema descriptors: what a synced table looks like.
//!
//! `#[derive(Synced)]` emits one static [`TableSchema`] per struct; the same type can
//! be built by hand (tests, tools, a server that learns schemas at run time). All SQL
//! for a table is generated from its descriptor in one module of the runtime, and
//! [`TableSchema::sql`] prints what `register` creates.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::value::{SqlType, Value};

/// Prefix reserved for the runtime's own tables, columns and triggers.
pub const RESERVED_PREFIX: &str = "_synced";

/// How concurrent changes to a table's rows merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Algorithm {
    /// Causal-length set (the default): rows can be inserted, updated, deleted and
    /// re-inserted; the longer causal history of a row's existence wins.
    #[default]
    Cls,
    /// Grow-only set: rows can be inserted and updated but never deleted.
    Gos,
}

impl Algorithm {
    /// The name used in `#[synced(algorithm = "…")]`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Cls => "cls",
            Algorithm::Gos => "gos",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One column of a synced table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ColumnSchema {
    /// The column's name in SQL.
    pub name: Cow<'static, str>,
    /// Its storage type.
    pub sql_type: SqlType,
    /// Whether it accepts `NULL`.
    pub nullable: bool,
    /// Whether it is part of the primary key (in declaration order).
    pub primary_key: bool,
    /// Its default, written as an SQL literal (`0`, `-1.5`, `''`, `'open'`,
    /// `x'00ff'`, `NULL`, `true`, `false`). It is a value, never SQL: the runtime
    /// parses it, checks it against the column's type (see
    /// [`TableSchema::validate`]) and writes the literal itself.
    pub default: Option<Cow<'static, str>>,
    /// The names the column had before, oldest first
    /// (`#[synced(renamed_from = "…")]`). The oldest is its [`id`](Self::id):
    /// the name it travels under between replicas, whatever each calls it.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub renamed_from: Cow<'static, [Cow<'static, str>]>,
    /// Set in a replica's stored descriptor when the app's struct no longer has
    /// the column: the app stops reading and writing it, the replica keeps its
    /// values and keeps merging them (other app versions may still use it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub retired: bool,
    /// The default the column was added with, when its
    /// [`default`](Self::default) changed since (`#[synced(first_default =
    /// …)]`): what every replica reads for a row that never wrote the column
    /// (one created before the column existed, or by an app version without
    /// it), so that replicas that got the column at different times agree.
    /// [`default`](Self::default) is then what new rows get. A replica that
    /// had the column before the change keeps its first default on its own;
    /// a new install learns it from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_default: Option<Cow<'static, str>>,
    /// Whether the replica indexes the column (`#[synced(index)]`), so that
    /// the app's queries that filter or sort by it need not read the whole
    /// table. An index is the replica's own: it changes nothing of what syncs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub indexed: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl ColumnSchema {
    /// A `NOT NULL` column without default that is not part of the key.
    pub fn new(name: impl Into<Cow<'static, str>>, sql_type: SqlType) -> Self {
        Self {
            name: name.into(),
            sql_type,
            nullable: false,
            primary_key: false,
            default: None,
            renamed_from: Cow::Borrowed(&[]),
            retired: false,
            first_default: None,
            indexed: false,
        }
    }

    /// Records a name the column had before (call it once per earlier name,
    /// oldest first): the same column, renamed, on every replica.
    pub fn renamed_from(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.renamed_from.to_mut().push(name.into());
        self
    }

    /// Its current name and every earlier one.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_ref()).chain(self.renamed_from.iter().map(AsRef::as_ref))
    }

    /// The column's identity between replicas: the first name it had. Replicas
    /// that call it differently (an app version before or after a rename) name it
    /// by this in payloads and clocks.
    pub fn id(&self) -> &str {
        self.renamed_from.first().unwrap_or(&self.name)
    }

    /// Records the default the column was added with, when its default
    /// changed since: see [`first_default`](field@Self::first_default).
    pub fn first_default(mut self, literal: impl Into<Cow<'static, str>>) -> Self {
        self.first_default = Some(literal.into());
        self
    }

    /// Indexes the column on every replica that registers the table.
    pub fn indexed(mut self) -> Self {
        self.indexed = true;
        self
    }

    /// Sets whether the column accepts `NULL`.
    pub fn nullable(mut self, nullable: bool) -> Self {
        self.nullable = nullable;
        self
    }

    /// Makes the column part of the primary key.
    pub fn primary_key(mut self) -> Self {
        self.primary_key = true;
        self
    }

    /// Sets the column's default, written as an SQL literal (`0`, `''`, `'open'`,
    /// …): a value of the column's type, not an expression.
    pub fn default_sql(mut self, literal: impl Into<Cow<'static, str>>) -> Self {
        self.default = Some(literal.into());
        self
    }
}

/// A synced table: its name, merge algorithm and columns.
///
/// ```
/// use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};
///
/// let notes = TableSchema::new(
///     "notes",
///     Algorithm::Cls,
///     vec![
///         ColumnSchema::new("id", SqlType::Text).primary_key(),
///         ColumnSchema::new("body", SqlType::Text).default_sql("''"),
///     ],
/// );
/// assert!(notes.validate().is_ok());
/// // The schema objects the runtime creates for this table, for inspection:
/// println!("{}", notes.sql());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableSchema {
    /// The table's name.
    pub name: Cow<'static, str>,
    /// How concurrent changes merge.
    pub algorithm: Algorithm,
    /// Its columns, in table order.
    pub columns: Cow<'static, [ColumnSchema]>,
}

impl TableSchema {
    /// A table descriptor.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        algorithm: Algorithm,
        columns: impl Into<Cow<'static, [ColumnSchema]>>,
    ) -> Self {
        Self {
            name: name.into(),
            algorithm,
            columns: columns.into(),
        }
    }

    /// The descriptor `#[derive(Synced)]` emits, built at compile time.
    #[doc(hidden)]
    pub const fn from_static(
        name: &'static str,
        algorithm: Algorithm,
        columns: &'static [ColumnSchema],
    ) -> Self {
        Self {
            name: Cow::Borrowed(name),
            algorithm,
            columns: Cow::Borrowed(columns),
        }
    }

    /// The primary-key columns, in key order.
    pub fn key_columns(&self) -> impl Iterator<Item = &ColumnSchema> {
        self.columns.iter().filter(|c| c.primary_key)
    }

    /// The columns outside the primary key, in table order.
    pub fn value_columns(&self) -> impl Iterator<Item = &ColumnSchema> {
        self.columns.iter().filter(|c| !c.primary_key)
    }

    /// A fingerprint of the table as one app version reads and writes it, which
    /// a device sends its server so that the server serves it that version's
    /// columns (see the book's chapter "Evolving your schema"): the name and
    /// algorithm, the key columns in order, and every column the app has (its
    /// retired ones left out) by [`id`](ColumnSchema::id), type and
    /// nullability. Names and defaults are left out: a rename or a changed
    /// default is the same table to a server.
    ///
    /// ```
    /// use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};
    ///
    /// let key = ColumnSchema::new("id", SqlType::Text).primary_key();
    /// let v1 = TableSchema::new("todos", Algorithm::Cls, vec![
    ///     key.clone(),
    ///     ColumnSchema::new("title", SqlType::Text).default_sql("''"),
    /// ]);
    /// let renamed = TableSchema::new("todos", Algorithm::Cls, vec![
    ///     key.clone(),
    ///     ColumnSchema::new("label", SqlType::Text).renamed_from("title").default_sql("'-'"),
    /// ]);
    /// let v2 = TableSchema::new("todos", Algorithm::Cls, vec![
    ///     key,
    ///     ColumnSchema::new("title", SqlType::Text).default_sql("''"),
    ///     ColumnSchema::new("due", SqlType::Integer).nullable(true),
    /// ]);
    /// assert_eq!(v1.view_fingerprint(), renamed.view_fingerprint());
    /// assert_ne!(v1.view_fingerprint(), v2.view_fingerprint());
    /// ```
    pub fn view_fingerprint(&self) -> u64 {
        let mut hash = Fnv::new();
        hash.feed(b"view");
        hash.feed(self.name.to_ascii_lowercase().as_bytes());
        hash.feed(self.algorithm.as_str().as_bytes());
        for key in self.key_columns() {
            hash.feed(key.id().to_ascii_lowercase().as_bytes());
            hash.feed(key.sql_type.as_sql().as_bytes());
        }
        let mut values: Vec<&ColumnSchema> = self.value_columns().filter(|c| !c.retired).collect();
        values.sort_by_cached_key(|c| c.id().to_ascii_lowercase());
        for column in values {
            hash.feed(column.id().to_ascii_lowercase().as_bytes());
            hash.feed(column.sql_type.as_sql().as_bytes());
            hash.feed(&[u8::from(column.nullable)]);
        }
        hash.0
    }

    /// Whether the app version that stored this descriptor has column `id`
    /// (by [`id`](ColumnSchema::id), not retired).
    pub(crate) fn has_column(&self, id: &str) -> bool {
        self.columns
            .iter()
            .any(|c| !c.retired && c.id().eq_ignore_ascii_case(id))
    }

    /// Checks the rules every synced table follows; the derive enforces the same
    /// rules at compile time, this catches hand-built descriptors.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let err = |reason: String| {
            Err(SchemaError {
                table: self.name.to_string(),
                reason,
            })
        };
        if self.name.is_empty() || reserved(&self.name) || self.name.contains('.') {
            return err(format!(
                "table names must be non-empty, contain no `.` and not start with `{RESERVED_PREFIX}`"
            ));
        }
        let keys: Vec<_> = self.key_columns().collect();
        if keys.is_empty() {
            return err("a synced table needs a primary key".into());
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.name.is_empty()
                || reserved(&c.name)
                || c.name.contains('.')
                || rowid_alias(&c.name)
            {
                return err(format!(
                    "column `{}`: names must be non-empty, contain no `.`, not start with `{RESERVED_PREFIX}` \
                     and not be `rowid`, `oid` or `_rowid_`",
                    c.name
                ));
            }
            // SQLite compares column names without regard to ASCII case.
            if self.columns[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                return err(format!("column `{}` appears twice", c.name));
            }
            for old in c.renamed_from.iter() {
                if old.is_empty() || reserved(old) || old.contains('.') || rowid_alias(old) {
                    return err(format!(
                        "column `{}`: the earlier name `{old}` is not a column name",
                        c.name
                    ));
                }
            }
            if let Some(twice) = c
                .names()
                .enumerate()
                .find(|(j, n)| c.names().take(*j).any(|m| m.eq_ignore_ascii_case(n)))
            {
                return err(format!(
                    "column `{}`: the name `{}` is listed twice among its names",
                    c.name, twice.1
                ));
            }
            if c.primary_key && c.indexed {
                return err(format!(
                    "key column `{}` is indexed already: the primary key is an index",
                    c.name
                ));
            }
            if c.primary_key && c.retired {
                return err(format!(
                    "key column `{}` cannot be retired: the key is how replicas find a row",
                    c.name
                ));
            }
            if c.primary_key && !c.renamed_from.is_empty() {
                return err(format!(
                    "key column `{}` cannot be renamed: the key is how replicas find a row",
                    c.name
                ));
            }
            if let Some((other, name)) = self.columns[..i].iter().find_map(|o| {
                o.names()
                    .find(|n| c.names().any(|m| m.eq_ignore_ascii_case(n)))
                    .map(|n| (o, n))
            }) {
                return err(format!(
                    "columns `{}` and `{}` both claim the name `{name}`; a name identifies one \
                     column for good (its values travel under its first name), so give the new \
                     column another name",
                    other.name, c.name,
                ));
            }
            if c.primary_key && c.nullable {
                return err(format!("key column `{}` cannot be nullable", c.name));
            }
            if let Err(reason) = c.default_value() {
                return err(format!("column `{}`: {reason}", c.name));
            }
            if let Err(reason) = c.never_written() {
                return err(format!("column `{}`: first default: {reason}", c.name));
            }
            if c.primary_key && c.first_default.is_some() {
                return err(format!(
                    "key column `{}` takes no default: every row carries its key",
                    c.name
                ));
            }
            if !c.primary_key && !c.nullable && c.default.is_none() {
                return err(format!(
                    "column `{}` is NOT NULL without a default; a row may arrive column by column, so give it a default or make it nullable",
                    c.name
                ));
            }
        }
        Ok(())
    }
}

impl ColumnSchema {
    /// The column's default as a value (`None` without one): its literal parsed
    /// and checked against the column's type. An integer literal in a `REAL`
    /// column is its real value, as SQLite stores it.
    pub(crate) fn default_value(&self) -> Result<Option<Value>, String> {
        self.literal_value(self.default.as_deref())
    }

    /// What a row that never wrote the column reads: its
    /// [`first_default`](field@Self::first_default), or its default.
    pub(crate) fn never_written(&self) -> Result<Option<Value>, String> {
        match &self.first_default {
            Some(first) => self.literal_value(Some(first)),
            None => self.default_value(),
        }
    }

    /// [`never_written`](Self::never_written) as an SQL literal.
    pub(crate) fn never_written_sql(&self) -> Option<&str> {
        self.first_default.as_deref().or(self.default.as_deref())
    }

    /// A default literal of the column, parsed and checked against its type.
    fn literal_value(&self, literal: Option<&str>) -> Result<Option<Value>, String> {
        let Some(literal) = literal else {
            return Ok(None);
        };
        let value = parse_literal(literal).ok_or_else(|| {
            format!(
                "the default `{literal}` is not a value; write an integer (`-3`), a real \
                 (`1.5`), a text (`'it''s'`), a blob (`x'00ff'`), `NULL`, `true` or `false`"
            )
        })?;
        let value = match (self.sql_type, value) {
            (_, Value::Null) if self.nullable => Value::Null,
            (_, Value::Null) => {
                return Err("a NOT NULL column cannot default to NULL".into());
            }
            (SqlType::Real, Value::Integer(i)) => Value::Real(i as f64),
            (SqlType::Integer, v @ Value::Integer(_))
            | (SqlType::Real, v @ Value::Real(_))
            | (SqlType::Text, v @ Value::Text(_))
            | (SqlType::Blob, v @ Value::Blob(_)) => v,
            (sql_type, value) => {
                return Err(format!(
                    "the default `{literal}` is {}, not {sql_type}",
                    value.as_ref().type_name()
                ));
            }
        };
        Ok(Some(value))
    }
}

/// Parses an SQL literal: an integer (within `i64`), a finite real, a quoted
/// text (`''` for a quote), a blob (`x'…'`, whole bytes), `NULL`, `true` or
/// `false` (1 and 0), in any case and with surrounding spaces. `None` for
/// anything else.
fn parse_literal(text: &str) -> Option<Value> {
    let text = text.trim();
    let word = |w: &str| text.eq_ignore_ascii_case(w);
    if word("null") {
        return Some(Value::Null);
    }
    if word("true") || word("false") {
        return Some(Value::Integer(i64::from(word("true"))));
    }
    if let Some(body) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            // SQL text ends at a NUL: no literal can hold one.
            if c == '\0' {
                return None;
            }
            // A quote inside is written twice.
            if c == '\'' && chars.next() != Some('\'') {
                return None;
            }
            out.push(c);
        }
        return Some(Value::Text(out));
    }
    if let Some(hex) = text
        .strip_prefix(['x', 'X'])
        .and_then(|t| t.strip_prefix('\''))
        .and_then(|t| t.strip_suffix('\''))
    {
        return hex::decode(hex).ok().map(Value::Blob);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if !numeric {
        return None;
    }
    if digits.chars().all(|c| c.is_ascii_digit()) {
        return text.parse().ok().map(Value::Integer);
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Real)
}

/// SQLite's names for a table's rowid, which the clock queries use.
pub(crate) fn rowid_alias(name: &str) -> bool {
    ["rowid", "oid", "_rowid_"]
        .iter()
        .any(|alias| name.eq_ignore_ascii_case(alias))
}

fn reserved(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(RESERVED_PREFIX))
}

/// A table descriptor that breaks the rules of synced tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table `{table}`: {reason}")]
pub struct SchemaError {
    /// The table.
    pub table: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// A fingerprint of the descriptors of `tables`, in order: name, algorithm and every
/// column's name, type, nullability, key role and default, then its earlier names
/// and whether it is retired, when it has any (FNV-1a, 64 bits). A descriptor
/// without earlier names or retired columns has the fingerprint release 0.1.0
/// gave it.
pub(crate) fn fingerprint<'a>(tables: impl Iterator<Item = &'a TableSchema>) -> u64 {
    let mut hash = Fnv::new();
    for table in tables {
        hash.feed(table.name.to_ascii_lowercase().as_bytes());
        hash.feed(table.algorithm.as_str().as_bytes());
        for c in table.columns.iter() {
            hash.feed(c.name.as_bytes());
            hash.feed(c.sql_type.as_sql().as_bytes());
            hash.feed(&[u8::from(c.nullable), u8::from(c.primary_key)]);
            hash.feed(c.default.as_deref().unwrap_or("").as_bytes());
            if !c.renamed_from.is_empty() {
                hash.feed(b"renamed_from");
                for name in c.renamed_from.iter() {
                    hash.feed(name.as_bytes());
                }
            }
            if c.retired {
                hash.feed(b"retired");
            }
            if let Some(first) = &c.first_default {
                hash.feed(b"first_default");
                hash.feed(first.as_bytes());
            }
        }
    }
    hash.0
}

/// FNV-1a, 64 bits, over fields each followed by `0xff`: stable across
/// releases and platforms, as fingerprints that travel must be.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: Vec<ColumnSchema>) -> TableSchema {
        TableSchema::new("t", Algorithm::Cls, columns)
    }

    #[test]
    fn a_key_is_required() {
        let t = table(vec![ColumnSchema::new("a", SqlType::Text).nullable(true)]);
        assert!(t.validate().unwrap_err().reason.contains("primary key"));
    }

    #[test]
    fn not_null_columns_need_defaults() {
        let t = table(vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("a", SqlType::Text),
        ]);
        assert!(t.validate().unwrap_err().reason.contains("default"));
    }

    fn with_default(sql_type: SqlType, nullable: bool, literal: &str) -> Result<(), SchemaError> {
        table(vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("a", sql_type)
                .nullable(nullable)
                .default_sql(literal.to_owned()),
        ])
        .validate()
    }

    #[test]
    fn defaults_are_values_of_the_columns_type() {
        for (sql_type, literal) in [
            (SqlType::Integer, "0"),
            (SqlType::Integer, "-9223372036854775808"),
            (SqlType::Integer, "+7"),
            (SqlType::Integer, "TRUE"),
            (SqlType::Integer, "false"),
            (SqlType::Real, "1.5"),
            (SqlType::Real, "-0.0"),
            (SqlType::Real, "1e300"),
            (SqlType::Real, ".5"),
            (SqlType::Real, "3"),
            (SqlType::Text, "''"),
            (SqlType::Text, "'it''s'"),
            (SqlType::Text, " 'open' "),
            (SqlType::Blob, "x''"),
            (SqlType::Blob, "X'00fF'"),
        ] {
            assert_eq!(with_default(sql_type, false, literal), Ok(()), "{literal}");
        }
        assert_eq!(with_default(SqlType::Text, true, "NULL"), Ok(()));
    }

    #[test]
    fn a_default_that_is_not_a_value_is_refused_naming_its_column() {
        for (sql_type, nullable, literal) in [
            (
                SqlType::Text,
                false,
                "''); DELETE FROM other; CREATE TABLE x (a TEXT DEFAULT ''",
            ),
            (SqlType::Text, false, "'a' || 'b'"),
            (SqlType::Text, false, "'unclosed"),
            (SqlType::Text, false, "'a'b'"),
            (SqlType::Integer, false, "(1)"),
            (SqlType::Integer, false, "1 + 1"),
            (SqlType::Integer, false, "9223372036854775808"),
            (SqlType::Integer, false, "1.5"),
            (SqlType::Integer, false, "'1'"),
            (SqlType::Real, false, "inf"),
            (SqlType::Real, false, "NaN"),
            (SqlType::Real, false, "1e999"),
            (SqlType::Real, false, "1..2"),
            (SqlType::Blob, false, "x'0'"),
            (SqlType::Blob, false, "x'zz'"),
            (SqlType::Blob, false, "''"),
            (SqlType::Text, false, "CURRENT_TIMESTAMP"),
            (SqlType::Text, false, "NULL"),
            (SqlType::Text, false, ""),
            (SqlType::Text, false, "'a\0b'"),
        ] {
            let error = with_default(sql_type, nullable, literal).unwrap_err();
            assert_eq!(error.table, "t", "{literal}");
            assert!(
                error.reason.starts_with("column `a`: "),
                "{literal}: {error}"
            );
        }
    }

    #[test]
    fn reserved_and_duplicate_names_are_refused() {
        let t = table(vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("_synced_x", SqlType::Text).nullable(true),
        ]);
        assert!(t.validate().is_err());
        let t = table(vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("id", SqlType::Text).nullable(true),
        ]);
        assert!(t.validate().unwrap_err().reason.contains("twice"));
    }
}
