//! The first sync of a large database, and what a small pull costs beside it.
//!
//! Device A (a database file) holds `rows` rows of the five-column benchmark
//! table, written in one transaction before the clock starts; its first sync
//! sends them to the server. Then a new device B's first sync fetches them.
//! Last, A writes ten rows at a time and pushes them, and B's pull of them is
//! timed, against the same on a database of `small_rows` rows: a pull's cost
//! should follow what it fetches, not the database's size.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sync_runtime::SyncDb;
use sync_server::Serving;
use synced_bench::{Todo, todo};

use crate::{BoxError, quantiles};

/// What the first-sync measurement runs.
pub(crate) struct Plan {
    /// Rows of the large database.
    pub(crate) rows: usize,
    /// Rows of the small one the ten-row pulls are compared with.
    pub(crate) small_rows: usize,
    /// Ten-row pulls timed on each.
    pub(crate) pulls: usize,
}

/// The databases this measurement uses.
pub(crate) const DATABASES: [&str; 2] = ["first-large", "first-small"];

/// A device of user `ann` syncing with database `name`, in file `file` of `dir`.
async fn device(serving: &Serving, dir: &Path, name: &str, file: &str) -> Result<SyncDb, BoxError> {
    let path = dir.join(file);
    Ok(synced_testkit::device::<Todo>(Some(&path), &serving.url(name), "ann").await?)
}

/// Writes `rows` rows on `db` in one transaction.
async fn fill(db: &SyncDb, rows: usize) -> Result<(), BoxError> {
    Ok(synced_bench::insert_all(db, (0..rows).map(todo).collect()).await?)
}

/// Device A with `rows` rows, its first sync, and a new device B's: their
/// durations, with both devices.
async fn first_syncs(
    serving: &Serving,
    dir: &Path,
    name: &str,
    rows: usize,
) -> Result<(Duration, Duration, SyncDb, SyncDb), BoxError> {
    synced_testkit::publish_schema::<Todo>(&serving.url(name)).await?;
    let a = device(serving, dir, name, &format!("{name}-a.db")).await?;
    fill(&a, rows).await?;
    let start = Instant::now();
    let sent = a.sync().await?;
    let push = start.elapsed();
    let b = device(serving, dir, name, &format!("{name}-b.db")).await?;
    let start = Instant::now();
    let received = b.sync().await?;
    let pull = start.elapsed();
    synced_bench::received_all(&sent, &received)?;
    Ok((push, pull, a, b))
}

/// The median time of B's pull of ten rows A writes and pushes, `pulls` times.
async fn ten_row_pulls(a: &SyncDb, b: &SyncDb, pulls: usize) -> Result<f64, BoxError> {
    let mut took = Vec::with_capacity(pulls);
    for round in 0..pulls {
        fill(a, 10).await?;
        a.send_changes().await?;
        let start = Instant::now();
        let report = b.check_changes().await?;
        took.push(start.elapsed().as_secs_f64() * 1e3);
        if report.applied == 0 {
            return Err(format!("pull {round} brought nothing").into());
        }
    }
    Ok(quantiles(&mut took).0)
}

/// Runs the measurement on `serving` (which serves [`DATABASES`]); prints
/// it and returns its JSON.
pub(crate) async fn run(serving: &Serving, dir: &Path, plan: &Plan) -> Result<Json, BoxError> {
    let [large, small] = DATABASES;
    let (push, pull, a, b) = first_syncs(serving, dir, large, plan.rows).await?;
    println!(
        "first sync of {} rows: A -> server {:.2} s, server -> new device B {:.2} s",
        plan.rows,
        push.as_secs_f64(),
        pull.as_secs_f64()
    );
    let (_, _, small_a, small_b) = first_syncs(serving, dir, small, plan.small_rows).await?;
    let large_ms = ten_row_pulls(&a, &b, plan.pulls).await?;
    let small_ms = ten_row_pulls(&small_a, &small_b, plan.pulls).await?;
    println!(
        "pull of 10 rows: {large_ms:.2} ms from {} rows vs {small_ms:.2} ms from {} rows \
         ({:.2}x; median of {})",
        plan.rows,
        plan.small_rows,
        large_ms / small_ms,
        plan.pulls
    );
    Ok(json!({
        "rows": plan.rows,
        "push_s": push.as_secs_f64(),
        "pull_s": pull.as_secs_f64(),
        "ten_row_pull": {
            "large_rows": plan.rows,
            "small_rows": plan.small_rows,
            "pulls": plan.pulls,
            "large_ms": large_ms,
            "small_ms": small_ms,
            "ratio": large_ms / small_ms,
        },
    }))
}
