//! Getting started: the smallest complete Synced program. The book's "Getting
//! started" chapter walks through it.
//!
//! ```text
//! cargo run --bin quickstart                  # in a temporary directory
//! cargo run --bin quickstart -- todos.db      # or in a file you keep
//! ```

use std::path::{Path, PathBuf};

// ANCHOR: model
use sync_runtime::{ChangeKind, Error, SyncDb, SyncId, Synced, params};

/// A to-do item: one row of the `todos` table.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(default = false)]
    done: bool,
    note: Option<String>,
}

impl Todo {
    fn new(title: &str) -> Self {
        Self {
            id: SyncId::new(),
            title: title.into(),
            done: false,
            note: None,
        }
    }
}
// ANCHOR_END: model

// ANCHOR: main
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| dir.path().join("quickstart.db"), PathBuf::from);
    run(&path).await?;
    Ok(())
}
// ANCHOR_END: main

async fn run(path: &Path) -> Result<(), Error> {
    // ANCHOR: open
    let db = SyncDb::open(path).await?;
    db.register::<Todo>().await?;
    // ANCHOR_END: open

    // ANCHOR: write
    let milk = Todo::new("Buy milk");
    let plants = Todo::new("Water the plants");
    db.insert(&milk).await?;
    db.insert(&plants).await?;

    // Save what changed: `modify` reads the row as it is now and writes only
    // the fields the closure changed.
    db.modify::<Todo, _>(&milk.id, |todo| todo.done = true)
        .await?;
    // ANCHOR_END: write

    // ANCHOR: read
    let stored = db.get::<Todo>(&milk.id).await?;
    println!("get:         {stored:?}");
    let open: Vec<Todo> = db.query("done = ?1 ORDER BY title", params![false]).await?;
    let titles: Vec<&str> = open.iter().map(|t| t.title.as_str()).collect();
    println!("query:       {titles:?}");
    // ANCHOR_END: read

    // ANCHOR: delete
    let deleted = db.delete::<Todo>(&plants.id).await?;
    println!("delete:      {deleted}");
    // ANCHOR_END: delete

    // ANCHOR: transaction
    let bread = Todo::new("Bake bread");
    let call = Todo::new("Call mum");
    db.transaction(move |tx| {
        tx.insert(&bread)?;
        tx.insert(&call)?;
        Ok::<_, Error>(())
    })
    .await?;
    // ANCHOR_END: transaction

    // ANCHOR: raw
    let changed = db
        .execute_raw(
            "UPDATE todos SET note = ?1 WHERE title = ?2",
            params!["oat milk", "Buy milk"],
        )
        .await?;
    println!("execute_raw: {changed} row changed");
    // ANCHOR_END: raw

    // ANCHOR: changes
    println!("db_version:  {}", db.db_version().await?);
    for change in db.changes_since(0).await? {
        let what = match &change.kind {
            ChangeKind::Insert => "insert".to_owned(),
            ChangeKind::Delete => "delete".to_owned(),
            ChangeKind::Set {
                column,
                value,
                col_version,
            } => format!("set {column} = {value:?} (col_version {col_version})"),
            other => format!("{other:?}"),
        };
        println!(
            "  version {} seq {} cl {} {} {:?}: {what}",
            change.db_version, change.seq, change.cl, change.table, change.pk
        );
    }
    // ANCHOR_END: changes
    Ok(())
}

// ANCHOR: test
#[cfg(test)]
mod tests {
    use sync_runtime::{ChangeKind, SyncDb, Value, params};

    use super::{Todo, run};

    #[tokio::test]
    async fn quickstart_leaves_three_todos_and_tracks_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quickstart.db");
        run(&path).await.unwrap();

        // Reopen the file: rows, versions and changes were persisted.
        let db = SyncDb::open(&path).await.unwrap();
        db.register::<Todo>().await.unwrap();
        let todos: Vec<Todo> = db.query("ORDER BY title", params![]).await.unwrap();
        let rows: Vec<_> = todos
            .iter()
            .map(|t| (t.title.as_str(), t.done, t.note.as_deref()))
            .collect();
        assert_eq!(
            rows,
            [
                ("Bake bread", false, None),
                ("Buy milk", true, Some("oat milk")),
                ("Call mum", false, None),
            ]
        );

        // One version per write transaction: two inserts, the update, the delete,
        // the transaction and the raw UPDATE.
        assert_eq!(db.db_version().await.unwrap(), 6);
        let changes = db.changes_since(0).await.unwrap();
        assert!(changes.iter().all(|c| c.site_id == db.site_id()));

        let deletes: Vec<_> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Delete)
            .map(|c| (c.db_version, c.cl))
            .collect();
        assert_eq!(deletes, [(4, 2)]);

        // The transaction's two inserts share version 5, numbered by seq.
        let in_transaction: Vec<_> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Insert && c.db_version == 5)
            .map(|c| c.seq)
            .collect();
        assert_eq!(in_transaction, [0, 1]);

        // The raw UPDATE is recorded like a typed one: the note's second write.
        let milk = &todos[1];
        let note = changes
            .iter()
            .find(|c| {
                c.pk == [Value::from(milk.id)]
                    && matches!(&c.kind, ChangeKind::Set { column, .. } if column == "note")
            })
            .unwrap();
        assert_eq!(note.db_version, 6);
        assert_eq!(
            note.kind,
            ChangeKind::Set {
                column: "note".into(),
                value: Value::from("oat milk"),
                col_version: 2,
            }
        );
    }
}
// ANCHOR_END: test
