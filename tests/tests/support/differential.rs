//! What the tests that hold the PostgreSQL store to the SQLite store share:
//! tables read the same way from both, copies of a device's file, and the
//! runner of their scripts.

use std::path::Path;

use proptest::prop_assert_eq;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sync_runtime::postgres::PgReplica;
use sync_runtime::server::Replica;
use sync_runtime::{BatchLimits, Cursor, SyncDb, Value};
use synced_testkit::postgres::Postgres;

/// A table's rows and clocks, each row as its values in a fixed order.
pub type Dump = Vec<Vec<Value>>;

/// The statements that read a table's rows and its clock in one order on both
/// stores: (rows, clock). The clock's columns are named by each column's
/// first name: `firsts`, for a table whose columns were renamed (see
/// [`dumps`]).
pub fn dumps_renamed(
    table: &str,
    keys: &[&str],
    values: &[&str],
    firsts: &[&str],
    clock: &str,
) -> (String, String) {
    let quote = |c: &str| format!("\"{c}\"");
    let order = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let all: Vec<String> = keys.iter().chain(values).map(|c| quote(c)).collect();
    let mut clock_columns: Vec<String> = keys.iter().map(|k| quote(k)).collect();
    clock_columns.extend(["_synced_cl", "_synced_dv", "_synced_created"].map(String::from));
    for first in firsts {
        clock_columns.push(quote(&format!("{first}.v")));
        clock_columns.push(quote(&format!("{first}.dv")));
    }
    (
        format!("SELECT {} FROM {table} ORDER BY {order}", all.join(", ")),
        format!(
            "SELECT {} FROM {clock} ORDER BY {order}",
            clock_columns.join(", ")
        ),
    )
}

/// [`dumps_renamed`] of a table no column of which was renamed.
pub fn dumps(table: &str, keys: &[&str], values: &[&str], clock: &str) -> (String, String) {
    dumps_renamed(table, keys, values, values, clock)
}

/// A SQLite table's rows, read by `query`.
pub fn sqlite_dump(conn: &rusqlite::Connection, query: &str) -> Dump {
    let mut stmt = conn.prepare(query).unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        (0..columns)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(i) => Value::Integer(i),
                    rusqlite::types::ValueRef::Real(r) => Value::Real(r),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::Text(String::from_utf8(t.to_vec()).unwrap())
                    }
                    rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                })
            })
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A PostgreSQL table's rows, read by `query`.
pub async fn pg_dump(client: &tokio_postgres::Client, query: &str) -> Dump {
    use tokio_postgres::types::Type;
    let rows = client.query(query, &[]).await.unwrap();
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, column)| {
                    let ty = column.type_();
                    if *ty == Type::INT8 {
                        row.get::<_, Option<i64>>(i)
                            .map_or(Value::Null, Value::Integer)
                    } else if *ty == Type::FLOAT8 {
                        row.get::<_, Option<f64>>(i)
                            .map_or(Value::Null, Value::Real)
                    } else if *ty == Type::TEXT {
                        row.get::<_, Option<String>>(i)
                            .map_or(Value::Null, Value::Text)
                    } else if *ty == Type::BYTEA {
                        row.get::<_, Option<Vec<u8>>>(i)
                            .map_or(Value::Null, Value::Blob)
                    } else {
                        panic!("unexpected column type {ty}")
                    }
                })
                .collect()
        })
        .collect()
}

/// A copy of the database file at `from` (with its WAL) at `to`: a file with
/// the same site id.
pub fn copy_database_file(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let source = format!("{}{suffix}", from.display());
        if Path::new(&source).exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

/// Runs `run` on scripts of `strategy` (`SYNCED_POSTGRES_CASES` of them, or
/// `default_cases`), each on a database of its own of one cluster.
pub fn run_scripts<S: proptest::strategy::Strategy>(
    default_cases: u32,
    strategy: S,
    run: impl Fn(&tokio::runtime::Runtime, &Postgres, &str, S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("SYNCED_POSTGRES_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |script| {
            case.set(case.get() + 1);
            run(&runtime, &cluster, &format!("case{}", case.get()), script)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log()));
}

/// Pulls through both servers, unfiltered, what each has after its cursor
/// for a device of two copies (one per server, one site id), in batches of
/// `limits`, until it has everything: each batch applied to its copy, and
/// the two alike in size.
pub async fn pull_alike(
    (sqlite, postgres): (&Replica, &PgReplica),
    copies: &[SyncDb; 2],
    cursors: &mut [Cursor; 2],
    limits: BatchLimits,
) -> Result<(), TestCaseError> {
    let site = copies[0].site_id();
    loop {
        let (a, _) = sqlite
            .export_for_device(site, cursors[0].clone(), limits, None)
            .await
            .unwrap();
        let (b, _) = postgres
            .export_for_device(site, cursors[1].clone(), limits, None)
            .await
            .unwrap();
        prop_assert_eq!(
            (a.rows, a.changes, a.complete),
            (b.rows, b.changes, b.complete)
        );
        copies[0].apply_server_batch(&a.payload).await.unwrap();
        copies[1].apply_server_batch(&b.payload).await.unwrap();
        *cursors = [a.next, b.next];
        if a.complete {
            return Ok(());
        }
    }
}
