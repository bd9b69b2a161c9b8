//! What the benchmark binaries share: the table they measure.

use sync_runtime::{SyncDb, SyncId, Synced};

/// The benchmark table: `id TEXT` key, title TEXT, done INTEGER, note TEXT nullable,
/// score REAL.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
pub struct Todo {
    /// The key.
    #[synced(primary_key)]
    pub id: SyncId,
    /// A text column.
    pub title: String,
    /// An integer column.
    pub done: bool,
    /// A nullable text column.
    pub note: Option<String>,
    /// A real column.
    pub score: f64,
}

/// A table with an owner, for row-level security: `owner_id = $user_id`.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "owned")]
pub struct Owned {
    /// The key.
    #[synced(primary_key)]
    pub id: SyncId,
    /// The user who may read the row.
    pub owner_id: String,
    /// A text column.
    pub title: String,
    /// An integer column.
    pub done: bool,
}

/// [`Todo`] in its app's next version: a nullable `due` and a `priority` with a
/// default, for the schema-evolution figures.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
pub struct TodoV2 {
    /// The key.
    #[synced(primary_key)]
    pub id: SyncId,
    /// A text column.
    pub title: String,
    /// An integer column.
    pub done: bool,
    /// A nullable text column.
    pub note: Option<String>,
    /// A real column.
    pub score: f64,
    /// Added: a nullable integer.
    pub due: Option<i64>,
    /// Added: an integer with a default.
    #[synced(default = 2)]
    pub priority: i64,
}

/// The `i`-th row of the server benchmarks: a new key, every column written
/// (the note on every other row).
pub fn todo(i: usize) -> Todo {
    Todo {
        id: SyncId::new(),
        title: format!("todo number {i}"),
        done: i.is_multiple_of(3),
        note: i.is_multiple_of(2).then(|| format!("note {i}")),
        score: i as f64 * 0.5,
    }
}

/// An error unless a device applied every change another sent: the check of
/// each transfer the benchmarks time.
pub fn received_all(
    sent: &sync_runtime::SyncReport,
    received: &sync_runtime::SyncReport,
) -> Result<(), String> {
    if received.applied == sent.changes_sent {
        Ok(())
    } else {
        Err(format!(
            "B applied {} changes of the {} A sent",
            received.applied, sent.changes_sent
        ))
    }
}

/// Inserts `rows` in one transaction.
pub async fn insert_all<T: Synced + Send + 'static>(
    db: &SyncDb,
    rows: Vec<T>,
) -> sync_runtime::Result<()> {
    db.transaction(move |tx| {
        for row in &rows {
            tx.insert(row)?;
        }
        Ok(())
    })
    .await
}
