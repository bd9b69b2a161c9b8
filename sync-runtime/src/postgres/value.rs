//! Values to and from PostgreSQL: one typed array per column for a set of
//! rows, and a column of a result row back into a [`Value`].

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::value::{SqlType, Value};

/// One array per column, of the column's type, for a statement that takes a
/// set of rows (see [`super::sql::TableSql`]).
pub(crate) struct Arrays<'v> {
    columns: Vec<Column<'v>>,
}

/// The values of one column of a set of rows.
enum Column<'v> {
    Integer(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Text(Vec<Option<&'v str>>),
    Blob(Vec<Option<&'v [u8]>>),
}

impl<'v> Arrays<'v> {
    /// Empty arrays of these types.
    pub(crate) fn new(types: impl Iterator<Item = SqlType>) -> Self {
        Self {
            columns: types
                .map(|ty| match ty {
                    SqlType::Integer => Column::Integer(Vec::new()),
                    SqlType::Real => Column::Real(Vec::new()),
                    SqlType::Text => Column::Text(Vec::new()),
                    SqlType::Blob => Column::Blob(Vec::new()),
                })
                .collect(),
        }
    }

    /// Adds `value` to column `column`, whose type it must have (or be NULL).
    pub(crate) fn push(&mut self, column: usize, value: &'v Value) -> Result<()> {
        match (&mut self.columns[column], value) {
            (Column::Integer(v), Value::Null) => v.push(None),
            (Column::Real(v), Value::Null) => v.push(None),
            (Column::Text(v), Value::Null) => v.push(None),
            (Column::Blob(v), Value::Null) => v.push(None),
            (Column::Integer(v), Value::Integer(i)) => v.push(Some(*i)),
            (Column::Real(v), Value::Real(r)) => v.push(Some(*r)),
            (Column::Text(v), Value::Text(t)) => v.push(Some(text(t)?)),
            (Column::Blob(v), Value::Blob(b)) => v.push(Some(b)),
            (_, value) => {
                return Err(Error::Corrupt {
                    details: format!(
                        "a {} value reached a column of another type",
                        value.as_ref().type_name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Adds an integer to column `column`, an integer column.
    pub(crate) fn push_integer(&mut self, column: usize, value: i64) -> Result<()> {
        match &mut self.columns[column] {
            Column::Integer(v) => v.push(Some(value)),
            _ => {
                return Err(Error::Corrupt {
                    details: "an integer reached a column of another type".into(),
                });
            }
        }
        Ok(())
    }

    /// How many rows they hold.
    pub(crate) fn len(&self) -> usize {
        match self.columns.first() {
            Some(Column::Integer(v)) => v.len(),
            Some(Column::Real(v)) => v.len(),
            Some(Column::Text(v)) => v.len(),
            Some(Column::Blob(v)) => v.len(),
            None => 0,
        }
    }

    /// The set as `COPY … FROM STDIN (FORMAT binary)` reads it: the
    /// format's header, each row's values (length, then bytes, as each type
    /// sends itself), its trailer.
    pub(crate) fn copy_data(&self) -> Result<Bytes> {
        let fields = i16::try_from(self.columns.len()).map_err(|_| Error::Corrupt {
            details: format!("{} columns are too many to copy", self.columns.len()),
        })?;
        let mut out = BytesMut::new();
        out.put_slice(b"PGCOPY\n\xff\r\n\0");
        out.put_i32(0); // flags
        out.put_i32(0); // header extension
        for row in 0..self.len() {
            out.put_i16(fields);
            for column in &self.columns {
                let (value, ty): (&(dyn ToSql + Sync), _) = match column {
                    Column::Integer(v) => (&v[row], Type::INT8),
                    Column::Real(v) => (&v[row], Type::FLOAT8),
                    Column::Text(v) => (&v[row], Type::TEXT),
                    Column::Blob(v) => (&v[row], Type::BYTEA),
                };
                let at = out.len();
                out.put_i32(0);
                let length =
                    match value
                        .to_sql_checked(&ty, &mut out)
                        .map_err(|e| Error::Refused {
                            reason: format!("a value cannot be copied in: {e}"),
                        })? {
                        IsNull::Yes => -1,
                        IsNull::No => {
                            i32::try_from(out.len() - at - 4).map_err(|_| Error::Refused {
                                reason: "a value is too large to copy in".into(),
                            })?
                        }
                    };
                out[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
        }
        out.put_i16(-1);
        Ok(out.freeze())
    }

    /// The arrays as a statement's parameters.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.columns
            .iter()
            .map(|column| -> &(dyn ToSql + Sync) {
                match column {
                    Column::Integer(v) => v,
                    Column::Real(v) => v,
                    Column::Text(v) => v,
                    Column::Blob(v) => v,
                }
            })
            .collect()
    }
}

/// Text as PostgreSQL can store it: it holds no NUL character, which SQLite
/// text may.
fn text(t: &str) -> Result<&str> {
    if t.contains('\0') {
        return Err(Error::Refused {
            reason: "a text value holds a NUL character (U+0000), which PostgreSQL cannot store"
                .into(),
        });
    }
    Ok(t)
}

/// One array per key column of `schema`, for a set of keys.
pub(crate) fn key_arrays<'v>(schema: &TableSchema, keys: &[&'v [Value]]) -> Result<Arrays<'v>> {
    let mut arrays = Arrays::new(schema.key_columns().map(|c| c.sql_type));
    for key in keys {
        for (i, value) in key.iter().enumerate() {
            arrays.push(i, value)?;
        }
    }
    Ok(arrays)
}

/// A value bound as a single parameter.
pub(crate) enum Param<'v> {
    Null(Option<i64>),
    Integer(i64),
    Real(f64),
    Text(&'v str),
    Blob(&'v [u8]),
}

/// Values bound as parameters `$1`, `$2`…
pub(crate) fn params(values: &[Value]) -> Result<Vec<Param<'_>>> {
    values
        .iter()
        .map(|value| {
            Ok(match value {
                Value::Null => Param::Null(None),
                Value::Integer(i) => Param::Integer(*i),
                Value::Real(r) => Param::Real(*r),
                Value::Text(t) => Param::Text(text(t)?),
                Value::Blob(b) => Param::Blob(b),
            })
        })
        .collect()
}

/// [`params`] as a statement takes them.
pub(crate) fn refs<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| -> &(dyn ToSql + Sync) {
            match param {
                Param::Null(v) => v,
                Param::Integer(v) => v,
                Param::Real(v) => v,
                Param::Text(v) => v,
                Param::Blob(v) => v,
            }
        })
        .collect()
}

/// Column `index` of `row`, of type `sql_type`.
pub(crate) fn get(row: &Row, index: usize, sql_type: SqlType) -> Result<Value> {
    let read = match sql_type {
        SqlType::Integer => row
            .try_get::<_, Option<i64>>(index)
            .map(|v| v.map(Value::Integer)),
        SqlType::Real => row
            .try_get::<_, Option<f64>>(index)
            .map(|v| v.map(Value::Real)),
        SqlType::Text => row
            .try_get::<_, Option<String>>(index)
            .map(|v| v.map(Value::Text)),
        SqlType::Blob => row
            .try_get::<_, Option<Vec<u8>>>(index)
            .map(|v| v.map(Value::Blob)),
    };
    Ok(read.map_err(super::pg_error)?.unwrap_or(Value::Null))
}
