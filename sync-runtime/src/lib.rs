//! Local-first sync for SQLite, typed.
//!
//! Put `#[derive(Synced)]` on a model struct, register it with a [`SyncDb`], and
//! write rows as usual, online or offline. Every write, through the typed API or raw
//! SQL on the same connection, is recorded by triggers in compact clock metadata.
//! Replicas exchange their changes as payloads
//! ([`export_changes`](SyncDb::export_changes),
//! [`apply_changes`](SyncDb::apply_changes)) and converge without conflicts, whatever
//! the order of deliveries.
//!
//! ```
//! use sync_runtime::{Synced, SyncDb, SyncId, params};
//!
//! #[derive(Synced, Debug, Clone, PartialEq)]
//! #[synced(table = "todos")]
//! struct Todo {
//!     #[synced(primary_key)]
//!     id: SyncId,
//!     title: String,
//!     #[synced(default = false)]
//!     done: bool,
//!     note: Option<String>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sync_runtime::Result<()> {
//! let db = SyncDb::open_in_memory().await?;
//! db.register::<Todo>().await?;
//!
//! let todo = Todo { id: SyncId::new(), title: "Write docs".into(), done: false, note: None };
//! db.insert(&todo).await?;
//! db.execute_raw("UPDATE todos SET done = 1 WHERE title = ?1", params!["Write docs"]).await?;
//!
//! let done: Vec<Todo> = db.query("done = ?1", params![true]).await?;
//! assert_eq!(done.len(), 1);
//! for change in db.changes_since(0).await? {
//!     println!("{change:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # The derive
//!
//! `#[derive(Synced)]` reads these attributes:
//!
//! | attribute | where | meaning |
//! |---|---|---|
//! | `table = "name"` | struct | the table's name (default: the struct's name in snake case) |
//! | `algorithm = "cls"` / `"gos"` | struct | merge algorithm: causal-length set (default) or grow-only |
//! | `primary_key` | field | part of the primary key (one or more fields, in order) |
//! | `integer_key` | field | allows a single integer primary key (ids may collide across devices) |
//! | `rename = "name"` | field | the column's name |
//! | `default = literal` | field | the column's default (`false`, `0`, `1.5`, `"text"`) |
//! | `skip` | field | not stored; filled with `Default::default()` when read |
//!
//! Field types map to `STRICT` column types: integers and `bool` → `INTEGER`,
//! `f32`/`f64` → `REAL`, `String` and [`SyncId`] → `TEXT`, `Vec<u8>` → `BLOB`,
//! `Option<T>` → nullable. See [`SyncValue`].

pub mod change;
#[cfg(feature = "http")]
mod client;
#[cfg(any(feature = "chrono", feature = "time"))]
mod dates;
mod db;
pub mod error;
mod events;
mod evolve;
mod export;
mod filter;
mod format;
mod guard;
mod id;
mod identity;
mod job;
mod json;
mod live;
mod merge;
mod migrate;
mod model;
mod open;
mod pool;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod protocol;
mod quarantine;
mod read;
pub mod schema;
pub mod server;
mod site;
mod sql;
#[cfg(feature = "http")]
mod sync;
mod tracking;
mod tx;
pub mod value;
mod versions;
pub mod wire;
mod worker;

pub use change::{Change, ChangeKind};
#[cfg(feature = "http")]
pub use client::{ProgressFn, Remote, SyncOptions, SyncReport};
pub use db::SyncDb;
pub use error::{Error, Result};
pub use events::{ChangeEvents, Changed, KeyChange, MAX_LISTED_KEYS, TableChanges};
pub use export::{BadCursor, Batch, BatchLimits, Cursor, Scope, Since};
pub use id::{BadSiteId, SiteId, SyncId};
pub use json::Json;
pub use live::Watch;
pub use merge::{ApplyReport, Rejection};
pub use model::{Patch, RowReader, Synced};
pub use open::{Options, Synchronous};
pub use quarantine::Rejected;
pub use read::{FromRow, ResultRow};
pub use schema::{Algorithm, ColumnSchema, TableSchema};
#[cfg(feature = "http")]
pub use sync::{AutoSync, SyncEvent, Unsent, UnsentRow};
pub use tx::{Readable, Transaction};
pub use value::{Domain, SqlType, SyncValue, Value, ValueRef};

/// Derives [`Synced`](trait@Synced) for a struct; see the [crate docs](crate#the-derive).
pub use sync_macros::Synced;

/// Derives [`FromRow`](trait@FromRow) for a struct: each field reads the
/// column of its name in a [`read`](SyncDb::read)'s result (its `AS` name),
/// as the field's [`SyncValue`](trait@SyncValue) type; `#[from_row(rename =
/// "…")]` reads another column. See [`SyncDb::read`] for an example.
pub use sync_macros::FromRow;

/// Derives [`SyncValue`](trait@SyncValue), so that a type of the app's can be
/// a field of a synced struct:
///
/// - a **unit enum** is stored as the name of its variant (TEXT;
///   `#[sync_value(rename = "…")]` on a variant stores another name), or with
///   `#[sync_value(integer)]` on the enum as its discriminant (INTEGER). Its
///   natural default is the variant marked `#[default]` (with
///   `#[derive(Default)]`); without one, a field of it needs an explicit
///   `#[synced(default = …)]` (the stored name or number) or an `Option`. A
///   stored value that is none of the variants (one an app version with more
///   variants wrote) fails the read with
///   [`ValueError::UnknownVariant`](value::ValueError::UnknownVariant), naming
///   the table and column.
/// - a **newtype** (`struct Email(String);`) is stored as what it wraps.
///
/// ```
/// use sync_runtime::{SyncDb, SyncId, SyncValue, Synced, params};
///
/// #[derive(SyncValue, Debug, Clone, Copy, PartialEq, Default)]
/// enum Status {
///     #[default]
///     Open,
///     #[sync_value(rename = "in-progress")]
///     InProgress,
///     Done,
/// }
///
/// #[derive(SyncValue, Debug, Clone, Copy, PartialEq)]
/// #[sync_value(integer)]
/// enum Priority {
///     Low = 1,
///     High = 5,
/// }
///
/// #[derive(SyncValue, Debug, Clone, PartialEq)]
/// struct Email(String);
///
/// #[derive(Synced, Debug, Clone, PartialEq)]
/// #[synced(table = "tasks")]
/// struct Task {
///     #[synced(primary_key)]
///     id: SyncId,
///     status: Status,
///     #[synced(default = 1)]
///     priority: Priority,
///     owner: Option<Email>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sync_runtime::Result<()> {
/// let db = SyncDb::open_in_memory().await?;
/// db.register::<Task>().await?;
/// let task = Task {
///     id: SyncId::new(),
///     status: Status::InProgress,
///     priority: Priority::High,
///     owner: Some(Email("ann@example.com".into())),
/// };
/// db.insert(&task).await?;
/// let found: Vec<Task> = db.query("status = ?1 AND priority = ?2", params!["in-progress", 5]).await?;
/// assert_eq!(found, [task]);
/// # Ok(())
/// # }
/// ```
pub use sync_macros::SyncValue;

/// Builds the parameter list of a query or raw statement: `params![a, b]` binds `a`
/// to `?1` and `b` to `?2`. Accepts every field type, `&str` and `Option`s.
///
/// ```
/// use sync_runtime::{Value, params};
///
/// assert_eq!(params![1, "x", None::<i64>], vec![Value::Integer(1), Value::Text("x".into()), Value::Null]);
/// ```
#[macro_export]
macro_rules! params {
    () => { ::std::vec::Vec::<$crate::Value>::new() };
    ($($param:expr),+ $(,)?) => { ::std::vec![$($crate::Value::from($param)),+] };
}

/// Support for the code `#[derive(Synced)]` generates. Not public API.
///
/// The generated code names field types only through qualified paths
/// (`<T as SyncValue>::SQL_TYPE`, `<T as DefaultLiteral>::Literal`), never through
/// the bounds of a generic function, so that an unsupported field type is reported
/// once, at the field, without notes pointing into this crate.
#[doc(hidden)]
pub mod __private {
    pub use crate::value::SyncValue;

    /// The Rust type of a `#[synced(default = …)]` literal for a field type. The
    /// derive checks a default with `const _: <T as DefaultLiteral>::Literal = …;`,
    /// so a literal of the wrong type is an ordinary type mismatch at the literal,
    /// and an out-of-range integer is refused by the compiler.
    #[diagnostic::on_unimplemented(
        message = "a field of type `{Self}` cannot have a `default`",
        label = "`{Self}` has no default literal",
        note = "defaults can be given to bool, integer, float, String and Vec<u8> fields \
                and to Options of these; remove the `default`"
    )]
    pub trait DefaultLiteral {
        /// The literal's type.
        type Literal;
    }
    impl DefaultLiteral for bool {
        type Literal = bool;
    }
    impl DefaultLiteral for String {
        type Literal = &'static str;
    }
    impl DefaultLiteral for Vec<u8> {
        type Literal = &'static [u8];
    }
    macro_rules! same_type_default {
        ($($t:ty),*) => {$( impl DefaultLiteral for $t { type Literal = $t; } )*};
    }
    same_type_default!(i8, i16, i32, i64, u8, u16, u32, f32, f64);
    impl<T: DefaultLiteral> DefaultLiteral for Option<T> {
        type Literal = T::Literal;
    }

    /// The descriptor of a field's column, from the field type's `SyncValue`
    /// constants. Without an explicit default, a `NOT NULL` value column takes its
    /// type's natural default.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per part of a descriptor, passed by generated code only"
    )]
    pub const fn column(
        name: &'static str,
        primary_key: bool,
        default: Option<&'static str>,
        sql_type: crate::SqlType,
        nullable: bool,
        natural_default: Option<&'static str>,
        renamed_from: &'static [std::borrow::Cow<'static, str>],
        first_default: Option<&'static str>,
        indexed: bool,
    ) -> crate::ColumnSchema {
        let default = match default {
            Some(sql) => Some(sql),
            None if primary_key || nullable => None,
            None => natural_default,
        };
        crate::ColumnSchema {
            name: std::borrow::Cow::Borrowed(name),
            sql_type,
            nullable,
            primary_key,
            default: match default {
                Some(sql) => Some(std::borrow::Cow::Borrowed(sql)),
                None => None,
            },
            renamed_from: std::borrow::Cow::Borrowed(renamed_from),
            retired: false,
            first_default: match first_default {
                Some(sql) => Some(std::borrow::Cow::Borrowed(sql)),
                None => None,
            },
            indexed,
        }
    }
}
