//! SQLite values and the mapping between Rust field types and SQLite column types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The storage type of a column in a `STRICT` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SqlType {
    /// A 64-bit signed integer (`INTEGER`); also used for `bool`.
    Integer,
    /// A 64-bit float (`REAL`).
    Real,
    /// UTF-8 text (`TEXT`).
    Text,
    /// Raw bytes (`BLOB`).
    Blob,
}

impl SqlType {
    /// The type's name as written in `CREATE TABLE`.
    pub const fn as_sql(self) -> &'static str {
        match self {
            SqlType::Integer => "INTEGER",
            SqlType::Real => "REAL",
            SqlType::Text => "TEXT",
            SqlType::Blob => "BLOB",
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_sql())
    }
}

/// An owned SQLite value.
///
/// Used for query parameters (see [`params!`](crate::params)), primary keys in
/// [`Change`](crate::Change) records and anywhere a value has to outlive the row it
/// came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `NULL`.
    #[default]
    Null,
    /// An `INTEGER`.
    Integer(i64),
    /// A `REAL`.
    Real(f64),
    /// A `TEXT`.
    Text(String),
    /// A `BLOB`.
    Blob(Vec<u8>),
}

/// A borrowed SQLite value: what a field hands to the database when a row is written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// `NULL`.
    Null,
    /// An `INTEGER`.
    Integer(i64),
    /// A `REAL`.
    Real(f64),
    /// A `TEXT`.
    Text(&'a str),
    /// A `BLOB`.
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    /// SQLite's order of values; see [`Value::sqlite_cmp`].
    pub fn sqlite_cmp(self, other: ValueRef<'_>) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        fn class(v: ValueRef<'_>) -> u8 {
            match v {
                ValueRef::Null => 0,
                ValueRef::Integer(_) | ValueRef::Real(_) => 1,
                ValueRef::Text(_) => 2,
                ValueRef::Blob(_) => 3,
            }
        }
        match (self, other) {
            (ValueRef::Integer(a), ValueRef::Integer(b)) => a.cmp(&b),
            (ValueRef::Integer(a), ValueRef::Real(b)) => compare_int_real(a, b),
            (ValueRef::Real(a), ValueRef::Integer(b)) => compare_int_real(b, a).reverse(),
            // SQLite stores no NaN (it becomes NULL), so a total order is safe.
            (ValueRef::Real(a), ValueRef::Real(b)) => a.total_cmp(&b),
            (ValueRef::Text(a), ValueRef::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (ValueRef::Blob(a), ValueRef::Blob(b)) => a.cmp(b),
            (a, b) => match class(a).cmp(&class(b)) {
                Ordering::Equal => Ordering::Equal,
                unequal => unequal,
            },
        }
    }

    /// Copies the value into an owned [`Value`].
    pub fn into_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// The name of the value's storage class, for error messages.
    pub fn type_name(self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Integer(_) => "INTEGER",
            ValueRef::Real(_) => "REAL",
            ValueRef::Text(_) => "TEXT",
            ValueRef::Blob(_) => "BLOB",
        }
    }
}

impl Value {
    /// Compares two values the way SQLite orders them: `NULL` first, then numbers
    /// (integers and reals compared by value), then text (byte-wise, SQLite's
    /// `BINARY` collation), then blobs (byte-wise). The merge uses this order to
    /// break a tie between two writes of the same column version: the greater
    /// value wins, on every replica alike.
    ///
    /// ```
    /// use std::cmp::Ordering;
    /// use sync_runtime::Value;
    ///
    /// assert_eq!(Value::Integer(2).sqlite_cmp(&Value::Real(1.5)), Ordering::Greater);
    /// assert_eq!(Value::Text("a".into()).sqlite_cmp(&Value::Integer(9)), Ordering::Greater);
    /// assert_eq!(Value::Null.sqlite_cmp(&Value::Blob(vec![])), Ordering::Less);
    /// ```
    pub fn sqlite_cmp(&self, other: &Value) -> std::cmp::Ordering {
        self.as_ref().sqlite_cmp(other.as_ref())
    }

    /// Borrows the value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

impl rusqlite::ToSql for ValueRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(ToSqlOutput::Borrowed(match *self {
            ValueRef::Null => R::Null,
            ValueRef::Integer(i) => R::Integer(i),
            ValueRef::Real(r) => R::Real(r),
            ValueRef::Text(t) => R::Text(t.as_bytes()),
            ValueRef::Blob(b) => R::Blob(b),
        }))
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => R::Null,
            Value::Integer(i) => R::Integer(*i),
            Value::Real(r) => R::Real(*r),
            Value::Text(t) => R::Text(t.as_bytes()),
            Value::Blob(b) => R::Blob(b),
        }))
    }
}

/// An integer against a real, exactly (a cast of large integers to f64 rounds).
fn compare_int_real(i: i64, r: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    if r.is_nan() {
        return Ordering::Greater;
    }
    // Beyond ±2^63 every i64 compares the same way.
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let truncated = r.trunc();
    // `truncated` is within i64 range here, so the cast is exact.
    match i.cmp(&(truncated as i64)) {
        Ordering::Equal => 0.0f64.total_cmp(&(r - truncated)),
        unequal => unequal,
    }
}

/// Reads a column of a SQLite row as our borrowed value.
pub(crate) fn from_sqlite(
    value: rusqlite::types::ValueRef<'_>,
) -> Result<ValueRef<'_>, ValueError> {
    use rusqlite::types::ValueRef as R;
    Ok(match value {
        R::Null => ValueRef::Null,
        R::Integer(i) => ValueRef::Integer(i),
        R::Real(r) => ValueRef::Real(r),
        R::Text(t) => ValueRef::Text(std::str::from_utf8(t).map_err(|_| ValueError::InvalidUtf8)?),
        R::Blob(b) => ValueRef::Blob(b),
    })
}

/// Why a stored value could not become a field's Rust type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The stored value has another storage class than the field expects.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the field's type reads.
        expected: &'static str,
        /// What was stored.
        found: &'static str,
    },
    /// An integer does not fit the field's integer type (or a `bool` is not 0 or 1).
    #[error("integer {value} is out of range for {target}")]
    OutOfRange {
        /// The stored integer.
        value: i64,
        /// The field's Rust type.
        target: &'static str,
    },
    /// Stored text is not valid UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// Stored text is not a valid id.
    #[error("{0:?} is not a valid id (expected a hyphenated UUID)")]
    InvalidId(String),
    /// Stored text is not the JSON of a [`Json`](crate::Json) field's type.
    #[error("the stored JSON does not read as the field's type: {0}")]
    Json(String),
    /// A stored blob is not the 16 bytes of a `uuid::Uuid` field.
    #[error("a blob of {0} bytes is not a UUID (16 bytes)")]
    InvalidUuid(usize),
    /// The stored value is none of an enum's variants (`#[derive(SyncValue)]`):
    /// written by an app version with more variants, say.
    #[error("{value} is not a variant of {target}")]
    UnknownVariant {
        /// The stored value, as text.
        value: String,
        /// The enum.
        target: &'static str,
    },
}

/// A Rust type that can be stored in a synced column.
///
/// Implemented for `bool`, the integer types up to `i64`/`u32`, `f32`, `f64`,
/// `String`, `Vec<u8>`, [`SyncId`](crate::SyncId), `uuid::Uuid`,
/// [`Json<T>`](crate::Json) and `Option<T>` of any of them; with the `chrono`
/// feature, for `chrono`'s `DateTime<Utc>`, `NaiveDateTime`, `NaiveDate` and
/// `NaiveTime`, and with the `time` feature for `time`'s `OffsetDateTime`,
/// `PrimitiveDateTime`, `Date` and `Time` (stored as integers: microseconds
/// since the Unix epoch or midnight, days since 1970-01-01).
/// [`#[derive(SyncValue)]`](derive@crate::SyncValue) implements it for the app's
/// unit enums and newtypes.
///
/// ```
/// use sync_runtime::{SyncValue, ValueRef};
///
/// assert_eq!(true.to_value_ref(), ValueRef::Integer(1));
/// assert_eq!(u32::from_value_ref(ValueRef::Integer(7)), Ok(7));
/// assert!(u8::from_value_ref(ValueRef::Integer(256)).is_err());
/// # #[cfg(feature = "chrono")]
/// # {
/// // With the `chrono` feature: a date is the days since 1970-01-01.
/// let day = chrono::NaiveDate::from_ymd_opt(1970, 1, 2).unwrap();
/// assert_eq!(day.to_value_ref(), ValueRef::Integer(1));
/// # }
/// ```
///
/// The derive checks every field against this trait, so an unsupported field type is
/// a compile error that names the field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a synced column",
    label = "unsupported field type",
    note = "supported: bool, i8..i64, u8..u32, f32, f64, String, Vec<u8>, SyncId, uuid::Uuid, Json<T> \
            and Option<T> of these, chrono's and time's dates and times with the `chrono` and `time` \
            features, and unit enums and newtypes with #[derive(SyncValue)]; mark the field \
            #[synced(skip)] to keep it out of the table",
    note = "u64, usize and u128 do not fit SQLite's INTEGER, a signed 64-bit integer: use i64 (or u32) \
            if the values do, or a newtype with #[derive(SyncValue)] over String or Vec<u8> that \
            encodes them"
)]
pub trait SyncValue: Sized {
    /// The column's storage type.
    const SQL_TYPE: SqlType;
    /// Whether the column accepts `NULL` (only `Option<T>`).
    const NULLABLE: bool = false;
    /// Whether this is an `Option` of a nullable type, which cannot round-trip.
    #[doc(hidden)]
    const NESTED_OPTION: bool = false;
    /// The SQL literal used as the column's default when the field has no explicit
    /// `#[synced(default = …)]`; `None` when the type has no natural default.
    const DEFAULT_SQL: Option<&'static str>;
    /// The values of the storage type the type can read back, where that is not
    /// all of them; in a key column, the app's raw SQL may not write others (see
    /// [`Domain`]).
    const DOMAIN: Domain = Domain::Any;

    /// The value to write.
    fn to_value_ref(&self) -> ValueRef<'_>;

    /// Reads the value back.
    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError>;
}

/// The values of its storage type a field type can read back.
///
/// A key column whose type has a narrower domain than its storage type is
/// checked on the app's raw SQL (the derive passes the domains on through
/// [`Synced::KEY_DOMAINS`](crate::Synced::KEY_DOMAINS)): a statement that would
/// insert a key no typed read can decode, or give a row such a key, fails with
/// [`Error::InvalidKey`](crate::Error::InvalidKey) and writes nothing. Typed
/// writes cannot write such a key; changes merged from other replicas are not
/// checked: a replica never refuses what it receives row by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Domain {
    /// Every value of the storage type.
    Any,
    /// The text of a [`SyncId`](crate::SyncId) as the runtime writes it: 36
    /// characters, lowercase hexadecimal digits in groups of 8, 4, 4, 4 and 12
    /// joined by hyphens.
    SyncId,
    /// The integers from `min` to `max`: a narrower integer type's, or `bool`'s
    /// 0 and 1.
    Integers {
        /// The smallest.
        min: i64,
        /// The largest.
        max: i64,
    },
}

/// Whether `text` is a UUID in the form a [`SyncId`](crate::SyncId) is
/// stored in: 36 characters, hyphenated, lowercase.
pub(crate) fn canonical_uuid(text: &str) -> bool {
    let mut canonical = [0u8; 36];
    uuid::Uuid::try_parse(text).is_ok_and(|uuid| {
        uuid.hyphenated().encode_lower(&mut canonical);
        canonical == text.as_bytes()
    })
}

impl Domain {
    /// Whether `value` is in this domain.
    pub fn admits(self, value: &Value) -> bool {
        match self {
            Domain::Any => true,
            Domain::SyncId => matches!(value, Value::Text(text) if canonical_uuid(text)),
            Domain::Integers { min, max } => {
                matches!(value, Value::Integer(i) if (min..=max).contains(i))
            }
        }
    }
}

fn wrong_type(expected: &'static str, found: ValueRef<'_>) -> ValueError {
    ValueError::WrongType {
        expected,
        found: found.type_name(),
    }
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl SyncValue for $t {
            const SQL_TYPE: SqlType = SqlType::Integer;
            const DEFAULT_SQL: Option<&'static str> = Some("0");
            // Every value of these fits an i64.
            const DOMAIN: Domain = Domain::Integers {
                min: <$t>::MIN as i64,
                max: <$t>::MAX as i64,
            };

            fn to_value_ref(&self) -> ValueRef<'_> {
                ValueRef::Integer(i64::from(*self))
            }

            fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
                match value {
                    ValueRef::Integer(i) => <$t>::try_from(i).map_err(|_| ValueError::OutOfRange {
                        value: i,
                        target: stringify!($t),
                    }),
                    other => Err(wrong_type("INTEGER", other)),
                }
            }
        }
    )*};
}

integer_value!(i8, i16, i32, u8, u16, u32);

impl SyncValue for i64 {
    const SQL_TYPE: SqlType = SqlType::Integer;
    const DEFAULT_SQL: Option<&'static str> = Some("0");

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Integer(*self)
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Integer(i) => Ok(i),
            other => Err(wrong_type("INTEGER", other)),
        }
    }
}

impl SyncValue for bool {
    const SQL_TYPE: SqlType = SqlType::Integer;
    const DEFAULT_SQL: Option<&'static str> = Some("0");
    const DOMAIN: Domain = Domain::Integers { min: 0, max: 1 };

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Integer(i64::from(*self))
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Integer(0) => Ok(false),
            ValueRef::Integer(1) => Ok(true),
            ValueRef::Integer(i) => Err(ValueError::OutOfRange {
                value: i,
                target: "bool",
            }),
            other => Err(wrong_type("INTEGER", other)),
        }
    }
}

impl SyncValue for f64 {
    const SQL_TYPE: SqlType = SqlType::Real;
    const DEFAULT_SQL: Option<&'static str> = Some("0.0");

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Real(r) => Ok(r),
            other => Err(wrong_type("REAL", other)),
        }
    }
}

impl SyncValue for f32 {
    const SQL_TYPE: SqlType = SqlType::Real;
    const DEFAULT_SQL: Option<&'static str> = Some("0.0");

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Real(f64::from(*self))
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        // Narrowing is the documented behaviour of an f32 field: it stores what it holds.
        f64::from_value_ref(value).map(|r| r as f32)
    }
}

impl SyncValue for String {
    const SQL_TYPE: SqlType = SqlType::Text;
    const DEFAULT_SQL: Option<&'static str> = Some("''");

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Text(t) => Ok(t.to_owned()),
            other => Err(wrong_type("TEXT", other)),
        }
    }
}

impl SyncValue for Vec<u8> {
    const SQL_TYPE: SqlType = SqlType::Blob;
    const DEFAULT_SQL: Option<&'static str> = Some("x''");

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            other => Err(wrong_type("BLOB", other)),
        }
    }
}

impl<T: SyncValue> SyncValue for Option<T> {
    const SQL_TYPE: SqlType = T::SQL_TYPE;
    // `Some(None)` would be stored as NULL and read back as `None`; the derive
    // refuses such a field.
    const NESTED_OPTION: bool = T::NULLABLE;
    const NULLABLE: bool = true;
    const DEFAULT_SQL: Option<&'static str> = Some("NULL");
    const DOMAIN: Domain = T::DOMAIN;

    fn to_value_ref(&self) -> ValueRef<'_> {
        match self {
            Some(v) => v.to_value_ref(),
            None => ValueRef::Null,
        }
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::from_value_ref(other).map(Some),
        }
    }
}

macro_rules! value_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                v.to_value_ref().into_owned()
            }
        }
        impl From<&$t> for Value {
            fn from(v: &$t) -> Self {
                v.to_value_ref().into_owned()
            }
        }
    )*};
}

value_from!(
    bool,
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    f32,
    f64,
    String,
    Vec<u8>
);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_out_of_range_are_errors() {
        assert_eq!(
            u8::from_value_ref(ValueRef::Integer(300)),
            Err(ValueError::OutOfRange {
                value: 300,
                target: "u8"
            })
        );
        assert_eq!(
            bool::from_value_ref(ValueRef::Integer(2)),
            Err(ValueError::OutOfRange {
                value: 2,
                target: "bool"
            })
        );
    }

    #[test]
    fn values_order_like_sqlite() {
        use std::cmp::Ordering::*;
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let values = [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(-1.5),
            Value::Integer(-1),
            Value::Real(0.0),
            Value::Integer(1),
            Value::Real(1.5),
            Value::Integer(i64::MAX),
            Value::Real(1e300),
            Value::Text(String::new()),
            Value::Text("a".into()),
            Value::Text("é".into()),
            Value::Blob(vec![]),
            Value::Blob(vec![0]),
        ];
        for a in &values {
            for b in &values {
                // SQLite's comparison operators give NULL with a NULL operand; its
                // sort order puts NULL first.
                if matches!(a, Value::Null) || matches!(b, Value::Null) {
                    continue;
                }
                let sqlite: i64 = conn
                    .query_row("SELECT (?1 > ?2) - (?1 < ?2)", [a, b], |r| r.get(0))
                    .unwrap();
                let expected = match sqlite {
                    -1 => Less,
                    0 => Equal,
                    _ => Greater,
                };
                assert_eq!(a.sqlite_cmp(b), expected, "{a:?} vs {b:?}");
            }
        }
        assert_eq!(Value::Null.sqlite_cmp(&Value::Integer(0)), Less);
        assert_eq!(Value::Null.sqlite_cmp(&Value::Null), Equal);
    }

    #[test]
    fn wrong_storage_class_is_an_error() {
        assert_eq!(
            String::from_value_ref(ValueRef::Integer(1)),
            Err(ValueError::WrongType {
                expected: "TEXT",
                found: "INTEGER"
            })
        );
        assert_eq!(Option::<String>::from_value_ref(ValueRef::Null), Ok(None));
    }
}
