//! What tracking records: a database, typed and raw writes, and the changes Synced
//! tracked.
//!
//! ```text
//! cargo run --bin tracking             # in a temporary directory
//! cargo run --bin tracking -- my.db    # or in a file you keep
//! ```

use std::path::{Path, PathBuf};

use sync_runtime::{ChangeKind, Error, SyncDb, SyncId, Synced, Value, params};

/// A to-do item, the model of the demo.
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = std::env::args()
        .nth(1)
        .map_or_else(|| dir.path().join("demo.db"), PathBuf::from);
    Ok(run(&path).await?)
}

async fn run(path: &Path) -> Result<(), Error> {
    println!("Opening {}", path.display());
    let db = SyncDb::open(path).await?;
    db.register::<Todo>().await?;
    println!("  site id     {}", db.site_id());
    let start = db.db_version().await?;
    println!("  db_version  {start}\n");

    println!("Typed writes, one transaction each:");
    let mut milk = Todo::new("Buy milk");
    let call = Todo::new("Call mum");
    let plants = Todo::new("Water the plants");
    for todo in [&milk, &call, &plants] {
        db.insert(todo).await?;
        println!("  insert  {:?}", todo.title);
    }
    milk.done = true;
    db.update(&milk).await?;
    println!("  update  {:?}: done = true", milk.title);
    db.delete::<Todo>(&plants.id).await?;
    println!("  delete  {:?}", plants.title);

    println!("\nRaw SQL on the same connection is tracked too:");
    let changed = db
        .execute_raw(
            "UPDATE todos SET note = ?1 WHERE title = ?2",
            params!["Sunday afternoon", "Call mum"],
        )
        .await?;
    println!("  UPDATE todos SET note = 'Sunday afternoon' ... ({changed} row)");

    println!("\nSeveral writes in one transaction share one db_version:");
    let bread = Todo::new("Bake bread");
    let call_id = call.id;
    db.transaction(move |tx| {
        // Read-modify-write: the row as it is now, with the note set by raw SQL.
        if let Some(mut call) = tx.get::<Todo>(&call_id)? {
            call.done = true;
            tx.update(&call)?;
        }
        tx.insert(&bread)?;
        Ok::<_, Error>(())
    })
    .await?;
    println!("  mark \"Call mum\" done + insert \"Bake bread\"");

    println!("\nRows now:");
    for todo in db.query::<Todo>("ORDER BY title", params![]).await? {
        let mark = if todo.done { "x" } else { " " };
        let note = todo.note.as_deref().unwrap_or("");
        println!("  [{mark}] {:<18} {note}", todo.title);
    }

    println!(
        "\nTracked changes since version {start} (db_version is now {}):",
        db.db_version().await?
    );
    println!(
        "  {:>7} {:>3} {:>3}  {:<8} {:<36}  change",
        "version", "seq", "cl", "table", "row"
    );
    for change in db.changes_since(start).await? {
        let row = match change.pk.first() {
            Some(Value::Text(id)) => id.clone(),
            other => format!("{other:?}"),
        };
        let what = match &change.kind {
            ChangeKind::Insert => "row inserted".to_owned(),
            ChangeKind::Delete => "row deleted".to_owned(),
            ChangeKind::Set {
                column,
                value,
                col_version,
            } => format!("{column} = {} (col_version {col_version})", show(value)),
            other => format!("{other:?}"),
        };
        println!(
            "  {:>7} {:>3} {:>3}  {:<8} {row:<36}  {what}",
            change.db_version, change.seq, change.cl, change.table
        );
    }
    Ok(())
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => format!("{t:?}"),
        Value::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_tracking_example_runs() {
        let dir = tempfile::tempdir().unwrap();
        super::run(&dir.path().join("demo.db")).await.unwrap();
    }
}
