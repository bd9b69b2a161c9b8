//! Schema evolution: adding columns to a synced table of many rows.

use std::time::Instant;

use serde_json::{Value as Json, json};
use sync_runtime::{SyncDb, SyncId};
use synced_bench::{Todo, TodoV2};

use crate::BoxError;
use synced_bench::insert_all;

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
        insert_all(&db, batch).await?;
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

/// Two devices exchange `rows` rows each way through a server that published
/// both app versions: two devices of the next version ([`TodoV2`]), then one
/// of each; three runs of each, alternating. Prints the medians and their
/// ratio (the target: the mixed pair no slower than 1.1 times the other).
pub(crate) async fn side_by_side(rows: usize) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let runs = 3;
    let names: Vec<String> = (0..runs)
        .flat_map(|run| [format!("same-{run}"), format!("mixed-{run}")])
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = synced_testkit::config_sharing(&dir.path().join("server"), &names);
    let server = sync_server::Server::bind(config).await?.spawn();
    let mut same = Vec::new();
    let mut mixed = Vec::new();
    for run in 0..runs {
        for (name, times) in [("same", &mut same), ("mixed", &mut mixed)] {
            let url = server.url(&format!("{name}-{run}"));
            synced_testkit::publish_schema::<Todo>(&url).await?;
            synced_testkit::publish_schema::<TodoV2>(&url).await?;
            let path = |device: &str| dir.path().join(format!("{name}-{run}-{device}.db"));
            let x = if name == "mixed" {
                synced_testkit::device::<Todo>(Some(&path("x")), &url, "ann").await?
            } else {
                synced_testkit::device::<TodoV2>(Some(&path("x")), &url, "ann").await?
            };
            let y = synced_testkit::device::<TodoV2>(Some(&path("y")), &url, "ann").await?;
            let start = Instant::now();
            if name == "mixed" {
                insert_all(&x, (0..rows).map(v1_row).collect()).await?;
            } else {
                insert_all(&x, (0..rows).map(v2_row).collect()).await?;
            }
            x.sync().await?;
            y.sync().await?;
            insert_all(&y, (0..rows).map(v2_row).collect()).await?;
            y.sync().await?;
            x.sync().await?;
            times.push(start.elapsed());
            let count = |db: SyncDb| async move {
                let all: Vec<TodoV2> = db.query("", sync_runtime::params![]).await?;
                Ok::<_, sync_runtime::Error>(all.len())
            };
            if count(y).await? != 2 * rows {
                return Err(format!("{name}: the rows did not all arrive").into());
            }
        }
    }
    same.sort();
    mixed.sort();
    let (same, mixed) = (same[runs / 2], mixed[runs / 2]);
    let ratio = mixed.as_secs_f64() / same.as_secs_f64();
    println!(
        "{rows} rows each way, v2 <-> v2        {:>10.1} ms   v1 <-> v2 {:.1} ms: {ratio:.2}x (median of {runs})",
        same.as_secs_f64() * 1e3,
        mixed.as_secs_f64() * 1e3,
    );
    Ok(json!({
        "rows_each_way": rows,
        "v2_v2_ms": same.as_secs_f64() * 1e3,
        "v1_v2_ms": mixed.as_secs_f64() * 1e3,
        "ratio": ratio,
    }))
}

fn v1_row(i: usize) -> Todo {
    Todo {
        id: SyncId::new(),
        title: format!("todo number {i}"),
        done: i.is_multiple_of(3),
        note: None,
        score: 0.5,
    }
}

fn v2_row(i: usize) -> TodoV2 {
    TodoV2 {
        id: SyncId::new(),
        title: format!("todo number {i}"),
        done: i.is_multiple_of(3),
        note: None,
        score: 0.5,
        due: Some(i as i64),
        priority: 1,
    }
}
