//! Why the tracking triggers look the way they do: the generated design against the
//! alternatives it was chosen over, on the same table and keys.
//!
//! ```text
//! cargo run --release --bin trigger-variants              # 100,000 rows
//! cargo run --release --bin trigger-variants -- --rows 20000
//! ```
//!
//! Each variant starts from the schema `SyncDb::register` creates, then rewrites its
//! triggers or clock table with plain SQL, and runs the same statements: INSERT
//! every row (one transaction), UPDATE one column of every row, DELETE every row
//! (row by row). The last line is one JSON object with every figure.

use std::path::Path;
use std::time::Instant;

use clap::Parser;
use rusqlite::Connection;
use serde_json::json;
use sync_runtime::SyncDb;
use synced_bench::Todo;

#[derive(Debug, Parser)]
#[command(about = "Tracking trigger design variants, measured side by side")]
struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A way to change the generated schema before measuring.
struct Variant {
    name: &'static str,
    apply: fn(&Connection) -> Result<(), BoxError>,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "untracked (triggers dropped)",
        apply: drop_triggers,
    },
    Variant {
        name: "generated",
        apply: |_| Ok(()),
    },
    Variant {
        name: "generated, without the merge guard",
        apply: without_guard,
    },
    Variant {
        name: "generated + one SQL function call",
        apply: function_call,
    },
    Variant {
        name: "WITHOUT ROWID clock keyed by pk",
        apply: without_rowid_clock,
    },
];

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let ids: Vec<String> = (0..args.rows)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    println!(
        "{} rows, UUIDv4 keys; µs per row\n{:<36} {:>8} {:>8} {:>8}",
        args.rows, "variant", "INSERT", "UPDATE", "DELETE"
    );
    let mut figures = serde_json::Map::new();
    for variant in VARIANTS {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("variant.db");
        runtime.block_on(async {
            let db = SyncDb::open(&path).await?;
            db.register::<Todo>().await
        })?;
        let conn = open(&path)?;
        (variant.apply)(&conn)?;
        let [insert, update, delete] = measure(&conn, &ids)?;
        println!(
            "{:<36} {insert:>8.2} {update:>8.2} {delete:>8.2}",
            variant.name
        );
        figures.insert(
            variant.name.into(),
            json!({"insert_us": insert, "update_us": update, "delete_us": delete}),
        );
    }
    println!("{}", json!({"rows": args.rows, "variants": figures}));
    Ok(())
}

/// The settings `SyncDb` uses: WAL, `synchronous = NORMAL`, a 64 MiB cache.
fn open(path: &Path) -> Result<Connection, BoxError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536;")?;
    Ok(conn)
}

fn per_row(start: Instant, rows: usize) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / rows as f64
}

/// Runs the three operations the way the runtime does (one transaction each, the
/// version closed before commit) and returns µs per row for each.
fn measure(conn: &Connection, ids: &[String]) -> Result<[f64; 3], BoxError> {
    let close = "UPDATE _synced_state SET db_version = db_version + 1";
    let run = |sql: &str, bind: &dyn Fn(usize) -> Vec<rusqlite::types::Value>| {
        let start = Instant::now();
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(sql)?;
            for i in 0..ids.len() {
                stmt.execute(rusqlite::params_from_iter(bind(i)))?;
            }
        }
        tx.execute(close, [])?;
        tx.commit()?;
        Ok::<_, BoxError>(per_row(start, ids.len()))
    };
    use rusqlite::types::Value as V;
    let insert = run(
        "INSERT OR FAIL INTO todos (id, title, done, note, score) VALUES (?1, ?2, ?3, ?4, ?5)",
        &|i| {
            vec![
                V::Text(ids[i].clone()),
                V::Text(format!("todo number {i}")),
                V::Integer((i % 3 == 0).into()),
                if i % 2 == 0 {
                    V::Text(format!("note {i}"))
                } else {
                    V::Null
                },
                V::Real(i as f64 * 0.5),
            ]
        },
    )?;
    let update = run("UPDATE todos SET score = score + 1 WHERE id = ?1", &|i| {
        vec![V::Text(ids[i].clone())]
    })?;
    let delete = run("DELETE FROM todos WHERE id = ?1", &|i| {
        vec![V::Text(ids[i].clone())]
    })?;
    Ok([insert, update, delete])
}

/// Every tracking trigger of the table, as (name, SQL).
fn triggers(conn: &Connection) -> Result<Vec<(String, String)>, BoxError> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'todos'",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Replaces every trigger with `rewrite(sql)`.
fn rewrite_triggers(conn: &Connection, rewrite: impl Fn(&str) -> String) -> Result<(), BoxError> {
    for (name, sql) in triggers(conn)? {
        conn.execute_batch(&format!("DROP TRIGGER \"{name}\";"))?;
        conn.execute_batch(&rewrite(&sql))?;
    }
    Ok(())
}

fn drop_triggers(conn: &Connection) -> Result<(), BoxError> {
    rewrite_triggers(conn, |_| String::new())
}

fn without_guard(conn: &Connection) -> Result<(), BoxError> {
    rewrite_triggers(conn, |sql| {
        let guard = "(SELECT applying FROM _synced_state) = 0";
        sql.replacen(&format!("WHEN {guard} AND "), "WHEN ", 1)
            .replacen(&format!("WHEN {guard} BEGIN"), "BEGIN", 1)
    })
}

fn function_call(conn: &Connection) -> Result<(), BoxError> {
    rewrite_triggers(conn, |sql| {
        // A function of a column, so that SQLite cannot evaluate it once up front.
        sql.replace(
            "FROM _synced_state WHERE ",
            "FROM _synced_state WHERE abs(db_version) >= 0 AND ",
        )
        .replace(
            "FROM _synced_state)",
            "FROM _synced_state WHERE abs(db_version) >= 0)",
        )
    })
}

fn without_rowid_clock(conn: &Connection) -> Result<(), BoxError> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE name = '_synced_clock.todos'",
        [],
        |r| r.get(0),
    )?;
    let keyed = sql
        .trim_end()
        .strip_suffix(')')
        .ok_or("unexpected clock DDL")?
        .to_owned()
        + ", PRIMARY KEY (\"id\")) WITHOUT ROWID";
    conn.execute_batch(&format!(
        "DROP TABLE \"_synced_clock.todos\"; {keyed}; \
         CREATE INDEX \"_synced_clock.todos.dv\" ON \"_synced_clock.todos\" (_synced_dv);"
    ))?;
    // The triggers' upserts name the key as conflict target: still valid.
    Ok(())
}
