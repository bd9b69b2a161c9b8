//! Local write overhead of Synced against plain SQLite, side by side; then syncing
//! through a server on loopback.
//!
//! ```text
//! cargo run --release -p synced-bench                 # 100,000 rows, UUIDv4 and UUIDv7 keys
//! cargo run --release -p synced-bench -- --rows 20000 --keys v7
//! ```
//!
//! Both sides use the same file settings (WAL, `synchronous = NORMAL`, the same page
//! cache), the same table shape and the same pre-generated keys. The last line of
//! output is one JSON object with every figure.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rusqlite::{Connection, params};
use serde_json::{Value as Json, json};
use sync_runtime::{Options, Since, SyncDb, SyncId, Transaction};
use synced_bench::Todo;

mod evolve;
mod reads;
mod server;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Keys {
    /// Random UUIDv4 keys, comparable with the published reference figures.
    V4,
    /// Time-ordered UUIDv7 keys, what `SyncId::new()` creates.
    V7,
    /// Both, one after the other.
    Both,
}

#[derive(Debug, Parser)]
#[command(about = "Synced vs plain SQLite: local write overhead")]
struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Single-row transactions to time.
    #[arg(long, default_value_t = 2_000)]
    singles: usize,
    /// Which keys to use.
    #[arg(long, value_enum, default_value_t = Keys::Both)]
    keys: Keys,
    /// SQLite page cache of both sides, in KiB (the runtime's default is 65,536).
    #[arg(long, default_value_t = Options::default().cache_size_kib)]
    cache_kib: u32,
    /// Rows sent from device A through the server to device B (default: --rows).
    #[arg(long)]
    server_rows: Option<usize>,
    /// Writes whose write-to-visible latency is measured.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Concurrent clients pushing and pulling.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Rounds of (write 20 rows, sync) per client.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Rows of the table that gains two columns in the schema-evolution figure.
    #[arg(long, default_value_t = 1_000_000)]
    evolve_rows: usize,
    /// Rows of the merge that point reads run beside.
    #[arg(long, default_value_t = 100_000)]
    merge_rows: usize,
    /// Runs only the figures of SQLite and PostgreSQL side by side (the
    /// transfer of `--server-rows` and the push throughput).
    #[arg(long)]
    stores_only: bool,
    /// The PostgreSQL database (started by the bench) a server process of
    /// the push throughput figure stores its databases in; without it, they
    /// are SQLite files.
    #[arg(long, hide = true, requires = "serve_dir")]
    serve_postgres: Option<String>,
    /// Runs as one of the server processes of the push throughput figure,
    /// keeping its files here.
    #[arg(long, hide = true)]
    serve_dir: Option<std::path::PathBuf>,
}

const PLAIN_TABLE: &str = "CREATE TABLE todos (
  id TEXT NOT NULL PRIMARY KEY,
  title TEXT NOT NULL DEFAULT '',
  done INTEGER NOT NULL DEFAULT 0,
  note TEXT,
  score REAL NOT NULL DEFAULT 0.0
) STRICT";

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let kinds: &[Keys] = match args.keys {
        Keys::Both => &[Keys::V4, Keys::V7],
        one => std::slice::from_ref(match one {
            Keys::V4 => &Keys::V4,
            _ => &Keys::V7,
        }),
    };
    if let Some(dir) = &args.serve_dir {
        let threaded = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return threaded.block_on(server::serve(dir, args.serve_postgres.clone()));
    }
    let mut report = serde_json::Map::new();
    if args.stores_only {
        let threaded = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let rows = args.server_rows.unwrap_or(args.rows);
        let stores = server::stores_side_by_side(rows, (args.clients, args.rounds));
        report.insert("stores".into(), threaded.block_on(stores)?);
        println!("{}", Json::Object(report));
        return Ok(());
    }
    report.insert("rows".into(), json!(args.rows));
    report.insert("singles".into(), json!(args.singles));
    report.insert("cache_kib".into(), json!(args.cache_kib));
    for &kind in kinds {
        let mut figures = runtime.block_on(run(&args, kind))?;
        let sync = runtime.block_on(exchange(&args, kind))?;
        if let Json::Object(map) = &mut figures {
            map.insert("sync".into(), sync);
        }
        report.insert(format!("{kind:?}").to_lowercase(), figures);
    }
    // The server and its clients share the machine's cores, as in production.
    let plan = server::Plan {
        rows: args.server_rows.unwrap_or(args.rows),
        writes: args.writes,
        clients: args.clients,
        rounds: args.rounds,
    };
    let threaded = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    report.insert("server".into(), threaded.block_on(server::run(&plan))?);
    report.insert(
        "stores".into(),
        threaded.block_on(server::stores_side_by_side(
            plan.rows,
            (plan.clients, plan.rounds),
        ))?,
    );
    report.insert(
        "versions".into(),
        threaded.block_on(evolve::side_by_side(plan.rows))?,
    );
    report.insert(
        "evolve".into(),
        runtime.block_on(evolve::run(args.evolve_rows))?,
    );
    report.insert(
        "reads".into(),
        threaded.block_on(reads::during_merge(args.merge_rows))?,
    );
    println!("{}", Json::Object(report));
    Ok(())
}

fn rows(count: usize, kind: Keys) -> Vec<Todo> {
    (0..count)
        .map(|i| Todo {
            id: match kind {
                Keys::V4 => SyncId::from_uuid(uuid::Uuid::new_v4()),
                _ => SyncId::new(),
            },
            title: format!("todo number {i}"),
            done: i % 3 == 0,
            note: (i % 2 == 0).then(|| format!("note {i}")),
            score: i as f64 * 0.5,
        })
        .collect()
}

struct Side {
    plain: Duration,
    synced: Duration,
}

impl Side {
    fn ratio(&self) -> f64 {
        self.synced.as_secs_f64() / self.plain.as_secs_f64()
    }
}

fn print_row(name: &str, side: &Side, per: usize) {
    let us = |d: Duration| d.as_secs_f64() * 1e6 / per as f64;
    println!(
        "{name:<34} {:>10.1} ms {:>10.1} ms {:>7.2}x   ({:.2} / {:.2} µs per row)",
        side.plain.as_secs_f64() * 1e3,
        side.synced.as_secs_f64() * 1e3,
        side.ratio(),
        us(side.plain),
        us(side.synced),
    );
}

fn figure(side: &Side, per: usize) -> Json {
    json!({
        "plain_ms": side.plain.as_secs_f64() * 1e3,
        "synced_ms": side.synced.as_secs_f64() * 1e3,
        "ratio": side.ratio(),
        "plain_us_per_row": side.plain.as_secs_f64() * 1e6 / per as f64,
        "synced_us_per_row": side.synced.as_secs_f64() * 1e6 / per as f64,
    })
}

fn open_plain(path: &Path, cache_kib: u32) -> Result<Connection, BoxError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{cache_kib};"
    ))?;
    conn.execute_batch(PLAIN_TABLE)?;
    Ok(conn)
}

/// Times `each` run for every item with one prepared statement on the plain table,
/// in one transaction.
fn plain_batch<T>(
    conn: &Connection,
    sql: &str,
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut rusqlite::CachedStatement<'_>, T) -> rusqlite::Result<usize>,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        for item in items {
            each(&mut stmt, item)?;
        }
    }
    tx.commit()?;
    Ok(start.elapsed())
}

/// Times `each` run for every row through the typed API, in one transaction.
async fn synced_batch(
    db: &SyncDb,
    rows: &Arc<Vec<Todo>>,
    each: impl Fn(&mut Transaction<'_>, &Todo) -> sync_runtime::Result<()> + Send + 'static,
) -> Result<Duration, BoxError> {
    let rows = Arc::clone(rows);
    let start = Instant::now();
    db.transaction(move |tx| rows.iter().try_for_each(|r| each(tx, r)))
        .await?;
    Ok(start.elapsed())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

async fn run(args: &Args, kind: Keys) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let (plain_path, synced_path) = (dir.path().join("plain.db"), dir.path().join("synced.db"));
    let plain = open_plain(&plain_path, args.cache_kib)?;
    let options = Options::default().cache_size_kib(args.cache_kib);
    let db = SyncDb::open_with(&synced_path, options).await?;
    db.register::<Todo>().await?;

    let data = Arc::new(rows(args.rows, kind));
    let singles = rows(args.singles, kind);
    println!(
        "\n{} rows, {:?} keys, cache {} KiB",
        args.rows, kind, args.cache_kib
    );
    println!(
        "{:<34} {:>13} {:>13} {:>8}",
        "operation", "plain", "synced", "ratio"
    );

    const INSERT: &str =
        "INSERT INTO todos (id, title, done, note, score) VALUES (?1, ?2, ?3, ?4, ?5)";

    // INSERT every row in one transaction.
    let insert = Side {
        plain: plain_batch(&plain, INSERT, data.iter(), |stmt, r| {
            stmt.execute(params![r.id.as_str(), r.title, r.done, r.note, r.score])
        })?,
        synced: synced_batch(&db, &data, |tx, r| tx.insert(r)).await?,
    };
    print_row("INSERT all rows, one transaction", &insert, args.rows);

    // One transaction per INSERT.
    let start = Instant::now();
    for r in &singles {
        plain.execute(
            INSERT,
            params![r.id.as_str(), r.title, r.done, r.note, r.score],
        )?;
    }
    let plain_time = start.elapsed();
    let start = Instant::now();
    for r in &singles {
        db.insert(r).await?;
    }
    let single = Side {
        plain: plain_time,
        synced: start.elapsed(),
    };
    print_row(
        &format!("{} INSERTs, one transaction each", args.singles),
        &single,
        args.singles,
    );

    // UPDATE one column of every row: typed (whole row written, one column differs)
    // and raw SQL (one column), each against the same statement on the plain table.
    let update_typed = Side {
        plain: plain_batch(
            &plain,
            "UPDATE todos SET title = ?2, done = ?3, note = ?4, score = ?5 WHERE id = ?1",
            data.iter(),
            |stmt, r| {
                stmt.execute(params![
                    r.id.as_str(),
                    r.title,
                    r.done,
                    r.note,
                    r.score + 1.0
                ])
            },
        )?,
        synced: synced_batch(&db, &data, |tx, r| {
            let mut changed = r.clone();
            changed.score += 1.0;
            tx.update(&changed)
        })
        .await?,
    };
    print_row("UPDATE one column, typed", &update_typed, args.rows);

    const UPDATE_SCORE: &str = "UPDATE todos SET score = ?2 WHERE id = ?1";
    let update_raw = Side {
        plain: plain_batch(&plain, UPDATE_SCORE, data.iter(), |stmt, r| {
            stmt.execute(params![r.id.as_str(), r.score + 2.0])
        })?,
        synced: synced_batch(&db, &data, |tx, r| {
            tx.execute_raw(UPDATE_SCORE, sync_runtime::params![r.id, r.score + 2.0])
                .map(drop)
        })
        .await?,
    };
    print_row("UPDATE one column, raw SQL", &update_raw, args.rows);

    // Size after VACUUM, with every row present.
    plain.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
    db.vacuum().await?;
    let (plain_size, synced_size) = (file_size(&plain_path), file_size(&synced_path));

    // DELETE every row, one statement per row, one transaction.
    let all: Arc<Vec<Todo>> = Arc::new(data.iter().chain(&singles).cloned().collect());
    let delete = Side {
        plain: plain_batch(
            &plain,
            "DELETE FROM todos WHERE id = ?1",
            all.iter(),
            |stmt, r| stmt.execute([r.id.as_str()]),
        )?,
        synced: synced_batch(&db, &all, |tx, r| tx.delete::<Todo>(&r.id).map(drop)).await?,
    };
    let deleted = all.len();
    print_row("DELETE every row, row by row", &delete, deleted);

    let size_ratio = synced_size as f64 / plain_size as f64;
    println!(
        "{:<34} {:>10.2} MB {:>10.2} MB {:>7.2}x",
        "size after VACUUM",
        plain_size as f64 / 1e6,
        synced_size as f64 / 1e6,
        size_ratio
    );

    Ok(json!({
        "insert_bulk": figure(&insert, args.rows),
        "insert_single_tx": figure(&single, args.singles),
        "update_typed": figure(&update_typed, args.rows),
        "update_raw": figure(&update_raw, args.rows),
        "delete": figure(&delete, deleted),
        "size": {"plain_bytes": plain_size, "synced_bytes": synced_size, "ratio": size_ratio},
    }))
}

/// Export and merge: payload size, encode time and apply throughput.
async fn exchange(args: &Args, kind: Keys) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let options = Options::default().cache_size_kib(args.cache_kib);
    let source = SyncDb::open_with(dir.path().join("a.db"), options.clone()).await?;
    let target = SyncDb::open_with(dir.path().join("b.db"), options).await?;
    for db in [&source, &target] {
        db.register::<Todo>().await?;
    }
    let data = Arc::new(rows(args.rows, kind));
    synced_batch(&source, &data, |tx, r| tx.insert(r)).await?;
    let rows = args.rows as f64;
    let changes = rows * 4.0; // four value columns per row
    println!(
        "\nexchange of {} rows ({} column changes), {:?} keys",
        args.rows, changes, kind
    );

    let start = Instant::now();
    let payload = source.export_changes(Since::Beginning).await?;
    let export = start.elapsed();
    println!(
        "{:<34} {:>10.1} ms   {:.2} bytes per column change, {:.1} per row",
        "export + encode",
        export.as_secs_f64() * 1e3,
        payload.len() as f64 / changes,
        payload.len() as f64 / rows
    );

    let timed_apply = |label: &'static str, payload: Vec<u8>| {
        let target = target.clone();
        async move {
            let start = Instant::now();
            let report = target.apply_changes(&payload).await?;
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "{label:<34} {:>10.1} ms   {:>9.0} column changes/s {:>9.0} rows/s  ({} applied, {} lost)",
                seconds * 1e3,
                changes / seconds,
                rows / seconds,
                report.applied,
                report.ignored
            );
            Ok::<_, BoxError>(json!({
                "ms": seconds * 1e3,
                "column_changes_per_s": changes / seconds,
                "rows_per_s": rows / seconds,
                "applied": report.applied,
                "ignored": report.ignored,
            }))
        }
    };
    let empty = timed_apply("apply into an empty replica", payload.clone()).await?;

    // Every column of every row written once more: the next payload wins everywhere.
    let before = source.db_version().await?;
    source
        .execute_raw(
            "UPDATE todos SET title = title || '!', done = 1 - done, note = coalesce(note, '') || '!', score = score + 1",
            sync_runtime::params![],
        )
        .await?;
    let newer = source.export_changes(Since::Version(before)).await?;
    let wins = timed_apply("apply newer versions (all win)", newer.clone()).await?;
    let loses = timed_apply("apply the same again (all lose)", newer).await?;

    Ok(json!({
        "export_ms": export.as_secs_f64() * 1e3,
        "payload_bytes": payload.len(),
        "bytes_per_column_change": payload.len() as f64 / changes,
        "bytes_per_row": payload.len() as f64 / rows,
        "apply_empty": empty,
        "apply_all_win": wins,
        "apply_all_lose": loses,
    }))
}
