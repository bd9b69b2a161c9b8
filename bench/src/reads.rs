//! Reads while a merge runs: point reads on the read connections while the
//! write connection applies a large payload, against the same reads on an
//! idle database.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sync_runtime::{Options, Since, SyncDb, SyncId};
use synced_bench::{Todo, insert_all};

use crate::BoxError;

/// Point reads timed per figure.
const READS: usize = 1_000;
/// Rows the reading device holds, which the reads pick from.
const HELD: usize = 10_000;

fn todos(count: usize, prefix: &str) -> Vec<Todo> {
    (0..count)
        .map(|i| Todo {
            id: SyncId::new(),
            title: format!("{prefix} {i}"),
            done: i % 3 == 0,
            note: (i % 2 == 0).then(|| format!("note {i}")),
            score: i as f64,
        })
        .collect()
}

/// `READS` point reads of the held rows, each timed; stops early once
/// `until` is set, if given.
async fn point_reads(
    db: &SyncDb,
    keys: &[SyncId],
    until: Option<&AtomicBool>,
) -> Result<Vec<Duration>, BoxError> {
    let mut took = Vec::with_capacity(READS);
    for i in 0..READS {
        if until.is_some_and(|done| done.load(Ordering::Acquire)) {
            break;
        }
        // A stride through the keys, so that reads do not hit one page.
        let key = keys[(i * 7_919) % keys.len()];
        let start = Instant::now();
        let row = db.get::<Todo>(&key).await?;
        took.push(start.elapsed());
        if row.is_none() {
            return Err("a held row was not found".into());
        }
    }
    Ok(took)
}

fn median_us(took: &mut [Duration]) -> f64 {
    took.sort_unstable();
    took[took.len() / 2].as_secs_f64() * 1e6
}

fn p99_us(took: &[Duration]) -> f64 {
    took[(took.len() * 99 / 100).min(took.len() - 1)].as_secs_f64() * 1e6
}

/// A device holding `HELD` rows, with `options`, in a new file in `dir`.
async fn reader(
    dir: &Path,
    name: &str,
    held: &[Todo],
    options: Options,
) -> Result<SyncDb, BoxError> {
    let path = dir.join(name);
    {
        let db = SyncDb::open(&path).await?;
        db.register::<Todo>().await?;
        insert_all(&db, held.to_vec()).await?;
    }
    let db = SyncDb::open_with(&path, options).await?;
    db.register::<Todo>().await?;
    Ok(db)
}

/// Merges `payload` into `db` while reading: the reads that finished while
/// the merge ran, and how long the merge took.
async fn read_while_merging(
    db: &SyncDb,
    keys: &[SyncId],
    payload: &Arc<Vec<u8>>,
) -> Result<(Vec<Duration>, Duration, usize), BoxError> {
    let merged = Arc::new(AtomicBool::new(false));
    let merge = tokio::spawn({
        let (db, payload, merged) = (db.clone(), Arc::clone(payload), Arc::clone(&merged));
        async move {
            let start = Instant::now();
            let report = db.apply_changes(&payload).await;
            merged.store(true, Ordering::Release);
            report.map(|r| (r.applied, start.elapsed()))
        }
    });
    // The merge's job reaches the write connection before the first read.
    tokio::task::yield_now().await;
    let busy = point_reads(db, keys, Some(&merged)).await?;
    let (applied, took) = merge.await??;
    if busy.is_empty() {
        return Err("the merge ended before the first read".into());
    }
    Ok((busy, took, applied))
}

/// A device holding `HELD` rows reads `READS` of them, idle, then while it
/// merges `merge_rows` rows from another device. Prints both medians and their
/// ratio (the target: at most 2x), and, for contrast, how long a read during
/// the same merge waits without read connections.
pub(crate) async fn during_merge(merge_rows: usize) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let source = SyncDb::open(dir.path().join("source.db")).await?;
    source.register::<Todo>().await?;
    insert_all(&source, todos(merge_rows, "merged")).await?;
    let payload = Arc::new(source.export_changes(Since::Beginning).await?);
    drop(source);
    let held = todos(HELD, "held");
    let keys: Vec<SyncId> = held.iter().map(|t| t.id).collect();

    let db = reader(dir.path(), "reader.db", &held, Options::default()).await?;
    // Warm both the cache and the read connections.
    point_reads(&db, &keys, None).await?;
    let mut idle = point_reads(&db, &keys, None).await?;
    let (mut busy, merge_took, applied) = read_while_merging(&db, &keys, &payload).await?;
    if busy.len() < READS {
        println!("  (the merge ended after {} of {READS} reads)", busy.len());
    }
    drop(db);

    // Before read connections: reads wait for the merge on the one connection.
    let options = Options::default().read_connections(0);
    let single = reader(dir.path(), "single.db", &held, options).await?;
    point_reads(&single, &keys, None).await?;
    let (waited, _, _) = read_while_merging(&single, &keys, &payload).await?;
    let single_wait_ms = waited.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3);

    let (idle_median, busy_median) = (median_us(&mut idle), median_us(&mut busy));
    let ratio = busy_median / idle_median;
    println!(
        "point read, idle / during a {merge_rows}-row merge   {idle_median:>7.1} µs {busy_median:>7.1} µs {ratio:>6.2}x   (p99 {:.1} / {:.1} µs; merge {:.0} ms; without read connections, a read waits {single_wait_ms:.0} ms)",
        p99_us(&idle),
        p99_us(&busy),
        merge_took.as_secs_f64() * 1e3,
    );
    Ok(json!({
        "merge_rows": merge_rows,
        "merged_changes": applied,
        "merge_ms": merge_took.as_secs_f64() * 1e3,
        "reads": READS,
        "reads_during_merge": busy.len(),
        "idle_median_us": idle_median,
        "during_merge_median_us": busy_median,
        "idle_p99_us": p99_us(&idle),
        "during_merge_p99_us": p99_us(&busy),
        "ratio": ratio,
        "without_read_connections_longest_read_ms": single_wait_ms,
    }))
}
