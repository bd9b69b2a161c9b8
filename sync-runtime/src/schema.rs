//! Schema descriptors: what a synced table looks like.
//!
//! `#[derive(Synced)]` emits one static [`TableSchema`] per struct; the same type can
//! be built by hand (tests, tools, a server that learns schemas at run time). All SQL
//! for a table is generated from its descriptor in one module of the runtime, and
//! [`TableSchema::sql`] prints what `register` creates.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::value::SqlType;

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
    /// Its default, as an SQL literal (`0`, `''`, `NULL`, `'open'`, …).
    pub default: Option<Cow<'static, str>>,
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
        }
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

    /// Sets the column's default, an SQL literal (`0`, `''`, `'open'`, …).
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
            if c.primary_key && c.nullable {
                return err(format!("key column `{}` cannot be nullable", c.name));
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
