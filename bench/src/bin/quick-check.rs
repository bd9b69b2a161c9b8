//! What the server's check of a database file at open costs: opening an existing
//! Synced database with and without SQLite's `PRAGMA quick_check`
//! (`Options::quick_check`, the server's `[storage] quick_check`).
//!
//! ```text
//! cargo run --release -p synced-bench --bin quick-check               # 100,000 rows
//! cargo run --release -p synced-bench --bin quick-check -- --rows 1000000
//! ```
//!
//! The file is read from the operating system's cache (it was just written); from
//! a cold disk, the check costs about the time to read the whole file. The last
//! line is one JSON object with every figure.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use sync_runtime::{Options, SyncDb, SyncId, Synchronous};
use synced_bench::Todo;

#[derive(Debug, Parser)]
#[command(about = "The cost of SQLite's quick check when a database is opened")]
struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Opens timed each way; the fastest counts.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(run(&args))
}

async fn run(args: &Args) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.db");
    let db = SyncDb::open(&path).await?;
    db.register::<Todo>().await?;
    let rows = args.rows;
    db.transaction(move |tx| {
        for i in 0..rows {
            tx.insert(&Todo {
                id: SyncId::new(),
                title: format!("todo number {i}"),
                done: i % 3 == 0,
                note: (i % 2 == 0).then(|| format!("note {i}")),
                score: i as f64 * 0.5,
            })?;
        }
        Ok::<_, sync_runtime::Error>(())
    })
    .await?;
    db.vacuum().await?;
    drop(db);
    let bytes = std::fs::metadata(&path)?.len();

    // As the server opens its files.
    let options = Options::default()
        .synchronous(Synchronous::Full)
        .create(false);
    let mut fastest = [Duration::MAX; 2];
    for _ in 0..args.runs {
        for (checked, fastest) in fastest.iter_mut().enumerate() {
            let start = Instant::now();
            let db = SyncDb::open_with(&path, options.clone().quick_check(checked == 1)).await?;
            *fastest = (*fastest).min(start.elapsed());
            drop(db);
        }
    }
    let [plain, checked] = fastest.map(|d| d.as_secs_f64() * 1e3);
    println!(
        "{rows} rows, {:.1} MB: open {plain:.1} ms, open with quick_check {checked:.1} ms \
         (the check: {:.1} ms)",
        bytes as f64 / 1e6,
        checked - plain
    );
    println!(
        "{}",
        json!({
            "rows": rows,
            "file_bytes": bytes,
            "open_ms": plain,
            "open_quick_check_ms": checked,
            "quick_check_ms": checked - plain,
        })
    );
    Ok(())
}
