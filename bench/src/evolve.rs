//! Schema evolution: adding columns to a synced table of many rows.

use std::time::Instant;

use serde_json::{Value as Json, json};
use sync_runtime::{SyncDb, SyncId};
use synced_bench::{Todo, TodoV2};

use crate::BoxError;

/// Registers [`TodoV2`] over a file whose `todos` holds `rows` rows of
/// [`Todo`]: how long it takes and how many changes it records (the target is
/// none).
pub(crate) async fn run(rows: usize) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("evolve.db");
    let db = SyncDb::open(&path).await?;
    db.register::<Todo>().await?;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(50_000) {
        let batch: Vec<Todo> = chunk
            .iter()
            .map(|&i| Todo {
                id: SyncId::new(),
                title: format!("todo number {i}"),
                done: i % 3 == 0,
                note: None,
                score: 0.0,
            })
            .collect();
        db.transaction(move |tx| {
            for row in &batch {
                tx.insert(row)?;
            }
            Ok::<_, sync_runtime::Error>(())
        })
        .await?;
    }
    drop(db);
    // A new process of the app's next version opens the file and registers.
    let db = SyncDb::open(&path).await?;
    let version = db.db_version().await?;
    let start = Instant::now();
    db.register::<TodoV2>().await?;
    let took = start.elapsed();
    let changes = db.changes_since(version).await?.len();
    println!(
        "add 2 columns to {rows} rows          {:>10.1} ms   {changes} changes recorded",
        took.as_secs_f64() * 1e3
    );
    Ok(json!({
        "rows": rows,
        "add_columns_ms": took.as_secs_f64() * 1e3,
        "changes_recorded": changes,
    }))
}
