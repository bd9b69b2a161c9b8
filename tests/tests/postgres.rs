//! A server's replica on PostgreSQL merges and exports exactly as one on
//! SQLite. Each device is two copies of one file (one site id): one syncs
//! with a server on SQLite, the other with a server on PostgreSQL, and both
//! make the same writes. The same pushes and pulls, in the same order, leave
//! the same rows and the same clocks (every causal length, column version and
//! local version) on both servers and on both copies of every device.
//!
//! ```text
//! cargo test -p synced-tests --test postgres                              # 24 scripts
//! SYNCED_POSTGRES_CASES=500 cargo test --release -p synced-tests --test postgres
//! ```

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::differential::{
    Dump, copy_database_file, dumps, pg_dump, pull_alike, run_scripts, sqlite_dump,
};
use sync_runtime::postgres::PgReplica;
use sync_runtime::server::{Replica, RowFilter, RowFilters};
use sync_runtime::{BatchLimits, Cursor, Since, SyncDb, SyncId, Synced, Value, wire};
use synced_testkit::postgres::Postgres;
use tokio_postgres::NoTls;

/// Every column type, nullable or not.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "items")]
struct Item {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    qty: i64,
    price: f64,
    data: Vec<u8>,
    note: Option<String>,
}

/// A composite key of text and integer.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "pairs")]
struct Pair {
    #[synced(primary_key)]
    a: String,
    #[synced(primary_key)]
    b: i64,
    val: Option<i64>,
}

/// A device in memory with [`Item`] registered.
async fn item_device() -> SyncDb {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Item>().await.unwrap();
    db
}

/// The keys the scripts write: few, so that devices meet on the same rows.
fn item_id(key: u8) -> SyncId {
    SyncId::from_uuid(uuid::Uuid::from_u128(u128::from(key) + 1))
}

#[derive(Debug, Clone)]
enum Step {
    /// A device writes an item (inserted, or updated if it has it).
    Write {
        device: usize,
        key: u8,
        title: String,
        qty: i64,
        price: f64,
        note: Option<String>,
    },
    /// A device deletes an item.
    Delete { device: usize, key: u8 },
    /// A device writes a pair.
    Pair {
        device: usize,
        a: String,
        b: i64,
        val: Option<i64>,
    },
    /// A device pushes what it wrote since its last push to both servers.
    Push { device: usize },
    /// A device pulls what its server has after its cursor, in batches of
    /// `rows` rows.
    Pull { device: usize, rows: usize },
    /// One device takes another's changes, peer to peer.
    Exchange { from: usize, to: usize },
}

const DEVICES: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    let device = 0..DEVICES;
    prop_oneof![
        3 => (device.clone(), 0u8..4, "[ab]{0,2}", -2i64..3, prop_oneof![Just(0.0), Just(-0.0), Just(1.5), Just(-1.5)], proptest::option::of("[xy]{0,1}"))
            .prop_map(|(device, key, title, qty, price, note)| Step::Write { device, key, title, qty, price, note }),
        1 => (device.clone(), 0u8..4).prop_map(|(device, key)| Step::Delete { device, key }),
        1 => (device.clone(), "[ab]{1}", 0i64..2, proptest::option::of(-1i64..2))
            .prop_map(|(device, a, b, val)| Step::Pair { device, a, b, val }),
        3 => device.clone().prop_map(|device| Step::Push { device }),
        2 => (device.clone(), 1usize..4).prop_map(|(device, rows)| Step::Pull { device, rows }),
        1 => (device.clone(), device).prop_map(|(from, to)| Step::Exchange { from, to }),
    ]
}

/// Whether column `i` of a clock dump (see [`dumps`]) of a table with `keys`
/// key columns is a local version: after the key, the row's two, then each
/// column's second.
fn is_version(i: usize, keys: usize) -> bool {
    i == keys + 1 || i == keys + 2 || (i > keys + 2 && (i - keys).is_multiple_of(2))
}

/// A clock dump (see [`dumps`]) of a table with `keys` key columns without
/// its local versions.
fn without_versions(dump: Dump, keys: usize) -> Dump {
    dump.into_iter()
        .map(|row| {
            let values = row.into_iter().enumerate();
            values
                .filter(|(i, _)| !is_version(*i, keys))
                .map(|(_, v)| v)
                .collect()
        })
        .collect()
}

/// One device: its copy that syncs with the server on SQLite and its copy
/// that syncs with the server on PostgreSQL, each with what it pushed up to
/// and its cursor.
struct Device {
    copies: [SyncDb; 2],
    paths: [std::path::PathBuf; 2],
    sent: [i64; 2],
    cursors: [Cursor; 2],
}

/// The tables of the scripts: name, key columns, value columns, and the
/// number of its clock on PostgreSQL.
const TABLES: [(&str, &[&str], &[&str], i64); 2] = [
    (
        "items",
        &["id"],
        &["title", "qty", "price", "data", "note"],
        1,
    ),
    ("pairs", &["a", "b"], &["val"], 2),
];

/// How many pushed rows the scripts' servers rejected.
static REJECTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What the user of device `device` may read and write in a script run with
/// row-level security: device 0 is an admin's (no filter), device 1 user
/// `x`'s, device 2 user `y`'s. The filters compare text parameters with
/// integer columns, where SQLite's rules are not PostgreSQL's.
fn access(filtered: bool, device: usize) -> Option<(RowFilters, RowFilters)> {
    let user = match (filtered, device) {
        (false, _) | (_, 0) => return None,
        (_, 1) => "x",
        _ => "y",
    };
    let filter = |sql: &str, params: Vec<Value>| RowFilter::Where {
        sql: sql.into(),
        params,
    };
    let read = RowFilters::new(RowFilter::Nothing)
        .table(
            "items",
            filter(
                "note IS NULL OR note = ?1 OR qty > ?2",
                vec![Value::from(user), Value::from("1")],
            ),
        )
        .table(
            "pairs",
            filter("val IS NULL OR val = ?1", vec![Value::from(" 1")]),
        );
    let write = RowFilters::new(RowFilter::All).table(
        "items",
        filter("note IS NULL OR note = ?1", vec![Value::from(user)]),
    );
    Some((write, read))
}

/// Runs `steps` against a server on SQLite and one on PostgreSQL (database
/// `name` of `cluster`), and compares them, and each device's copies, after.
/// With `filtered`, devices 1 and 2 push and pull under row-level security
/// (see [`access`]).
async fn run(
    cluster: &Postgres,
    name: &str,
    steps: &[Step],
    filtered: bool,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let sqlite = Replica::new(SyncDb::open(&path).await.unwrap());
    let postgres = PgReplica::open(&cluster.connection_string("postgres"), name)
        .await
        .unwrap();
    let schemas = vec![Item::SCHEMA.clone(), Pair::SCHEMA.clone()];
    sqlite.publish(schemas.clone()).await.unwrap();
    postgres.publish(schemas).await.unwrap();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let paths = [0, 1].map(|copy| dir.path().join(format!("device{i}-{copy}.db")));
        let first = SyncDb::open(&paths[0]).await.unwrap();
        first.register::<Item>().await.unwrap();
        first.register::<Pair>().await.unwrap();
        copy_database_file(&paths[0], &paths[1]);
        let copy = SyncDb::open(&paths[1]).await.unwrap();
        copy.register::<Item>().await.unwrap();
        copy.register::<Pair>().await.unwrap();
        let copies = [first, copy];
        prop_assert_eq!(copies[0].site_id(), copies[1].site_id());
        devices.push(Device {
            copies,
            paths,
            sent: [0, 0],
            cursors: [Cursor::BEGINNING, Cursor::BEGINNING],
        });
    }
    let client = support::connect(cluster, "postgres").await;
    for (index, step) in steps.iter().enumerate() {
        // Alike before each step, but for local versions (see below).
        let when = format!("before step {index}");
        alike(&path, &client, name, &devices, false, &when).await?;
        match step.clone() {
            Step::Write {
                device,
                key,
                title,
                qty,
                price,
                note,
            } => {
                let item = Item {
                    id: item_id(key),
                    title,
                    qty,
                    price,
                    data: vec![key],
                    note,
                };
                for db in &devices[device].copies {
                    db.upsert(&item).await.unwrap();
                }
            }
            Step::Delete { device, key } => {
                for db in &devices[device].copies {
                    db.delete::<Item>(&item_id(key)).await.unwrap();
                }
            }
            Step::Pair { device, a, b, val } => {
                let pair = Pair { a, b, val };
                for db in &devices[device].copies {
                    db.upsert(&pair).await.unwrap();
                }
            }
            // Filtered, a device's refused write, relayed back to it by a
            // peer, makes it take a new site id (a random one, another for
            // each copy): the scripts leave peers out.
            Step::Exchange { .. } if filtered => {}
            Step::Exchange { from, to } => {
                for copy in 0..2 {
                    let payload = devices[from].copies[copy]
                        .export_changes(Since::Beginning)
                        .await
                        .unwrap();
                    devices[to].copies[copy]
                        .apply_changes(&payload)
                        .await
                        .unwrap();
                }
            }
            Step::Push { device: number } => {
                let access = access(filtered, number);
                let device = &mut devices[number];
                let mut pushed = Vec::new();
                for copy in 0..2 {
                    let db = &device.copies[copy];
                    let since = Since::Version(device.sent[copy]);
                    let payload = db.export_local_changes(since).await.unwrap();
                    let decoded = wire::decode(&payload).unwrap();
                    device.sent[copy] = i64::try_from(decoded.upto).unwrap();
                    let site = db.site_id();
                    pushed.push(match (copy, access.clone()) {
                        (0, None) => sqlite.apply_push(decoded, site).await,
                        (_, None) => postgres.apply_push(decoded, site).await,
                        (0, Some((write, read))) => {
                            sqlite.apply_push_checked(decoded, site, write, read).await
                        }
                        (_, Some((write, read))) => {
                            postgres
                                .apply_push_checked(decoded, site, write, read)
                                .await
                        }
                    });
                }
                match (&pushed[0], &pushed[1]) {
                    (Ok(a), Ok(b)) => {
                        // Filtered, a device's two copies received what they
                        // may read in other batches: where two sites wrote
                        // the same value at the same column version, which
                        // one a copy holds as its origin depends on which
                        // arrived first (both are right), and so does
                        // whether a push of its own carries it again.
                        if !filtered {
                            prop_assert_eq!(a.applied, b.applied);
                        }
                        prop_assert_eq!(&a.rejected, &b.rejected);
                        REJECTED.fetch_add(a.rejected.len(), std::sync::atomic::Ordering::Relaxed);
                        // The same state of the same rows (from servers of
                        // their own site ids; origins aside, as above).
                        let decoded = |restore: &[u8]| {
                            (!restore.is_empty()).then(|| {
                                let rows = wire::decode(restore).unwrap().rows;
                                rows.into_iter()
                                    .map(|row| {
                                        let columns: Vec<_> = row
                                            .columns
                                            .into_iter()
                                            .map(|c| (c.column, c.col_version, c.value))
                                            .collect();
                                        (row.table, row.pk, row.cl, columns)
                                    })
                                    .collect::<Vec<_>>()
                            })
                        };
                        prop_assert_eq!(decoded(&a.restore), decoded(&b.restore));
                        for (copy, report) in [a, b].into_iter().enumerate() {
                            if !report.restore.is_empty() {
                                device.copies[copy]
                                    .apply_restore(&report.restore, device.sent[copy])
                                    .await
                                    .unwrap();
                            }
                        }
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => prop_assert!(false, "SQLite: {a:?}\nPostgreSQL: {b:?}"),
                }
            }
            Step::Pull {
                device: number,
                rows,
            } => {
                let read = access(filtered, number).map(|(_, read)| read);
                let device = &mut devices[number];
                let limits = BatchLimits::default().max_rows(rows);
                let site = device.copies[0].site_id();
                if read.is_some() {
                    // Filtered, a first pull walks a snapshot on SQLite and the
                    // history on PostgreSQL: batches differ, what they leave
                    // the device with does not.
                    for copy in 0..2 {
                        loop {
                            let cursor = device.cursors[copy].clone();
                            let filter = read.clone();
                            let (batch, _) = match copy {
                                0 => sqlite.export_for_device(site, cursor, limits, filter).await,
                                _ => {
                                    postgres
                                        .export_for_device(site, cursor, limits, filter)
                                        .await
                                }
                            }
                            .unwrap();
                            device.copies[copy]
                                .apply_server_batch(&batch.payload)
                                .await
                                .unwrap();
                            device.cursors[copy] = batch.next;
                            if batch.complete {
                                break;
                            }
                        }
                    }
                    continue;
                }
                let servers = (&sqlite, &postgres);
                pull_alike(servers, &device.copies, &mut device.cursors, limits).await?;
            }
        }
    }

    // Filtered, a device's copies number the same changes apart (they
    // receive what they may read in other batches: a first filtered pull
    // walks a snapshot on SQLite and the history on PostgreSQL), so their
    // pushes list them in other orders, which the servers' local versions
    // follow; and a write refused on PostgreSQL took a version from a
    // sequence, which its rollback does not give back.
    alike(&path, &client, name, &devices, !filtered, "at the end").await?;
    Ok(())
}

/// Whether both servers (the SQLite file at `path`, database `name` on
/// PostgreSQL through `client`) hold the same rows and clocks, and each
/// device's copies too, and the copies the same site id; local versions
/// compared too if `versions`. `when` is said if not.
async fn alike(
    path: &std::path::Path,
    client: &tokio_postgres::Client,
    name: &str,
    devices: &[Device],
    versions: bool,
    when: &str,
) -> Result<(), TestCaseError> {
    let conn = rusqlite::Connection::open(path).unwrap();
    for (table, keys, values, number) in TABLES {
        let clocks = |dump: Dump| match versions {
            true => dump,
            false => without_versions(dump, keys.len()),
        };
        let (rows, clock) = dumps(table, keys, values, &format!("\"_synced_clock.{table}\""));
        let (pg_rows, pg_clock) = dumps(
            &format!("\"{name}\".{table}"),
            keys,
            values,
            &format!("\"{name}\".\"_synced_clock_{number}\""),
        );
        prop_assert_eq!(
            sqlite_dump(&conn, &rows),
            pg_dump(client, &pg_rows).await,
            "the servers' rows of {} differ {}",
            table,
            when
        );
        prop_assert_eq!(
            clocks(sqlite_dump(&conn, &clock)),
            clocks(pg_dump(client, &pg_clock).await),
            "the servers' clocks of {} differ {}",
            table,
            when
        );
        for (number, device) in devices.iter().enumerate() {
            prop_assert_eq!(
                device.copies[0].site_id(),
                device.copies[1].site_id(),
                "device {}'s copies' site ids differ {}",
                number,
                when
            );
            let copies = device
                .paths
                .each_ref()
                .map(|path| rusqlite::Connection::open(path).unwrap());
            prop_assert_eq!(
                sqlite_dump(&copies[0], &rows),
                sqlite_dump(&copies[1], &rows),
                "device {}'s copies differ in {} {}",
                number,
                table,
                when
            );
            prop_assert_eq!(
                clocks(sqlite_dump(&copies[0], &clock)),
                clocks(sqlite_dump(&copies[1], &clock)),
                "device {}'s copies differ in the clocks of {} {}",
                number,
                table,
                when
            );
        }
    }
    Ok(())
}

#[test]
fn pushes_merge_on_postgresql_exactly_as_on_sqlite() {
    let steps = proptest::collection::vec(step(), 1..40);
    run_scripts(24, steps, |runtime, cluster, name, steps| {
        runtime.block_on(run(cluster, name, &steps, false))
    });
}

/// The same scripts with row-level security: two of the three devices are
/// users' whose pushes are checked and whose pulls are filtered. Both
/// servers refuse the same rows and give the devices the same state of
/// them, and the rows and clocks on the servers and on every device end the
/// same: a policy means on PostgreSQL what it means on SQLite.
#[test]
fn policies_filter_on_postgresql_exactly_as_on_sqlite() {
    let steps = proptest::collection::vec(step(), 1..40);
    run_scripts(16, steps, |runtime, cluster, name, steps| {
        runtime.block_on(run(cluster, name, &steps, true))
    });
    // The scripts made writes the policies refuse.
    assert!(REJECTED.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// Many devices pushing at once to one replica on PostgreSQL (each push its
/// own transaction on its own connection), while a reader pulls all along:
/// nothing is lost, the rows and clocks are those of the same pushes merged
/// one by one on SQLite (but the local versions, which follow the order the
/// merges took them in), and the reader, which pulled while transactions
/// committed out of order, ends with every row.
#[test]
fn concurrent_pushes_lose_nothing_and_pulls_pass_no_late_commit() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "busy")
            .await
            .unwrap();
        postgres.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        let mut pushers = Vec::new();
        for device in 0..8u8 {
            let postgres = postgres.clone();
            pushers.push(tokio::spawn(async move {
                let db = item_device().await;
                let mut sent = 0;
                let mut payloads = Vec::new();
                for round in 0..10u8 {
                    for n in 0..5u8 {
                        let key = (device * 3 + round + n) % 24;
                        let item = Item {
                            id: item_id(key),
                            title: format!("{device}-{round}-{n}"),
                            qty: i64::from(round),
                            price: f64::from(n),
                            data: vec![device],
                            note: None,
                        };
                        db.upsert(&item).await.unwrap();
                    }
                    let payload = db.export_local_changes(Since::Version(sent)).await.unwrap();
                    let decoded = wire::decode(&payload).unwrap();
                    sent = i64::try_from(decoded.upto).unwrap();
                    let report = postgres
                        .apply_push(decoded.clone(), db.site_id())
                        .await
                        .unwrap();
                    assert!(report.rejected.is_empty());
                    payloads.push((decoded, db.site_id()));
                }
                payloads
            }));
        }
        // A reader pulling while the pushes commit.
        let reader = item_device().await;
        let mut cursor = Cursor::BEGINNING;
        let limits = BatchLimits::default().max_rows(7);
        while pushers.iter().any(|p| !p.is_finished()) {
            let (batch, _) = postgres
                .export_for_device(reader.site_id(), cursor.clone(), limits, None)
                .await
                .unwrap();
            reader.apply_changes(&batch.payload).await.unwrap();
            cursor = batch.next;
        }
        let mut pushed = Vec::new();
        for pusher in pushers {
            pushed.extend(pusher.await.unwrap());
        }
        loop {
            let (batch, _) = postgres
                .export_for_device(reader.site_id(), cursor.clone(), limits, None)
                .await
                .unwrap();
            reader.apply_changes(&batch.payload).await.unwrap();
            cursor = batch.next;
            if batch.complete {
                break;
            }
        }

        // The same pushes, one by one, on SQLite.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let sqlite = Replica::new(SyncDb::open(&path).await.unwrap());
        sqlite.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        for (payload, site) in pushed {
            sqlite.apply_push(payload, site).await.unwrap();
        }
        let client = support::connect(&cluster, "postgres").await;
        let (_, keys, values, _) = TABLES[0];
        let (rows, clock) = dumps("items", keys, values, "\"_synced_clock.items\"");
        let (pg_rows, pg_clock) = dumps("busy.items", keys, values, "busy.\"_synced_clock_1\"");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let expected = sqlite_dump(&conn, &rows);
        assert_eq!(expected.len(), 24);
        assert_eq!(pg_dump(&client, &pg_rows).await, expected);
        // Causal lengths and column versions; not the local versions.
        let clocks_without_versions = |dump: Dump| -> Dump {
            dump.into_iter()
                .map(|row| {
                    let mut kept = vec![row[0].clone(), row[1].clone()];
                    kept.extend(row[4..].iter().step_by(2).cloned());
                    kept
                })
                .collect()
        };
        assert_eq!(
            clocks_without_versions(pg_dump(&client, &pg_clock).await),
            clocks_without_versions(sqlite_dump(&conn, &clock)),
        );
        // The reader has every row as the server has it.
        let mut read: Vec<Item> = reader.query("1 = 1", Vec::<Value>::new()).await.unwrap();
        read.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let read: Dump = read
            .into_iter()
            .map(|item| {
                vec![
                    Value::Text(item.id.as_str().to_owned()),
                    Value::Text(item.title),
                    Value::Integer(item.qty),
                    Value::Real(item.price),
                    Value::Blob(item.data),
                    item.note.map_or(Value::Null, Value::Text),
                ]
            })
            .collect();
        assert_eq!(read, expected, "the reader missed changes");
    });
}

/// A commit through one process wakes what waits in another: two replicas
/// of one database (each its own pool and listener, as two server processes
/// have), a push through one, and the other's horizon moves to it.
#[test]
fn a_push_through_one_process_moves_the_horizon_another_watches() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = cluster.connection_string("postgres");
        let one = PgReplica::open(&config, "shared").await.unwrap();
        let other = PgReplica::open(&config, "shared").await.unwrap();
        assert_eq!(one.site_id(), other.site_id());
        // A publication through one is heard of by the other, whose app
        // versions read before it are then out of date.
        let mut publications = other.publications();
        let listening = *publications.wait_for(|heard| *heard > 0).await.unwrap();
        one.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            publications.wait_for(|heard| *heard > listening),
        )
        .await
        .expect("the other process hears of the publication")
        .unwrap();
        assert_eq!(other.versions().await.unwrap().latest(), 1);
        let mut horizon = other.subscribe();
        let device = item_device().await;
        for round in 0..3 {
            let item = Item {
                id: item_id(round),
                title: "a".into(),
                qty: 1,
                price: 0.0,
                data: vec![],
                note: None,
            };
            device.insert(&item).await.unwrap();
            let payload = device.export_local_changes(Since::Beginning).await.unwrap();
            let report = one
                .apply_push(wire::decode(&payload).unwrap(), device.site_id())
                .await
                .unwrap();
            let version = report.version;
            assert!(version > report.before);
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                horizon.wait_for(|seen| *seen >= version),
            )
            .await
            .expect("the other process hears of the commit")
            .unwrap();
        }
    });
}

/// What a backend writes with plain SQL in a replica's tables on PostgreSQL
/// is tracked as the SQLite store's triggers track an app's raw writes: the
/// same writes (a creation, a column's write, a delete, a change of key, a
/// write that changes nothing) in one transaction on both stores leave the
/// same rows and clocks, and a device pulling from PostgreSQL receives them.
#[test]
fn backend_writes_on_postgresql_are_tracked_as_on_sqlite_and_reach_devices() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = cluster.connection_string("postgres");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let sqlite = Replica::new(SyncDb::open(&path).await.unwrap());
        let postgres = PgReplica::open(&config, "backend").await.unwrap();
        sqlite.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        postgres.publish(vec![Item::SCHEMA.clone()]).await.unwrap();

        // A device's rows first, on both.
        let device = item_device().await;
        for key in 0..3 {
            let item = Item {
                id: item_id(key),
                title: format!("device {key}"),
                qty: 1,
                price: 0.5,
                data: vec![key],
                note: None,
            };
            device.insert(&item).await.unwrap();
        }
        let payload =
            wire::decode(&device.export_local_changes(Since::Beginning).await.unwrap()).unwrap();
        sqlite
            .apply_push(payload.clone(), device.site_id())
            .await
            .unwrap();
        postgres
            .apply_push(payload, device.site_id())
            .await
            .unwrap();

        // The backend's transaction, on both.
        let id = |key: u8| item_id(key).as_str().to_owned();
        let writes: Vec<(String, Vec<Value>)> =
            vec![
            (
                "INSERT INTO items (id, title, qty, price, data, note) VALUES (?, ?, ?, ?, ?, ?)"
                    .into(),
                vec![
                    Value::Text(id(7)),
                    Value::Text("backend".into()),
                    Value::Integer(3),
                    Value::Real(1.25),
                    Value::Blob(vec![7]),
                    Value::Text("new".into()),
                ],
            ),
            (
                "UPDATE items SET title = ?, qty = qty WHERE id = ?".into(),
                vec![Value::Text("edited by the backend".into()), Value::Text(id(0))],
            ),
            (
                "UPDATE items SET note = note WHERE id = ?".into(),
                vec![Value::Text(id(0))],
            ),
            ("DELETE FROM items WHERE id = ?".into(), vec![Value::Text(id(1))]),
            (
                "UPDATE items SET id = ? WHERE id = ?".into(),
                vec![Value::Text(id(9)), Value::Text(id(2))],
            ),
        ];
        let on_sqlite = writes.clone();
        sqlite
            .db()
            .transaction(move |tx| {
                for (statement, params) in &on_sqlite {
                    tx.execute_raw(statement, params)?;
                }
                Ok::<_, sync_runtime::Error>(())
            })
            .await
            .unwrap();
        let (mut client, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
        tokio::spawn(connection);
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL search_path TO backend")
            .await
            .unwrap();
        for (statement, params) in &writes {
            let mut numbered = String::new();
            let mut n = 0;
            for c in statement.chars() {
                if c == '?' {
                    n += 1;
                    numbered.push_str(&format!("${n}"));
                } else {
                    numbered.push(c);
                }
            }
            let bound: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = params
                .iter()
                .map(
                    |value| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                        match value {
                            Value::Integer(i) => Box::new(*i),
                            Value::Real(r) => Box::new(*r),
                            Value::Text(t) => Box::new(t.clone()),
                            Value::Blob(b) => Box::new(b.clone()),
                            Value::Null => Box::new(None::<String>),
                        }
                    },
                )
                .collect();
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = bound
                .iter()
                .map(|b| &**b as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&numbered, &refs).await.unwrap();
        }
        tx.commit().await.unwrap();

        let conn = rusqlite::Connection::open(&path).unwrap();
        let (_, keys, values, _) = TABLES[0];
        let (rows, clock) = dumps("items", keys, values, "\"_synced_clock.items\"");
        let (pg_rows, pg_clock) =
            dumps("backend.items", keys, values, "backend.\"_synced_clock_1\"");
        let expected_rows = sqlite_dump(&conn, &rows);
        assert_eq!(expected_rows.len(), 3);
        assert_eq!(pg_dump(&client, &pg_rows).await, expected_rows);
        assert_eq!(
            pg_dump(&client, &pg_clock).await,
            sqlite_dump(&conn, &clock)
        );

        // The device receives the backend's writes.
        let mut cursor = Cursor::BEGINNING;
        loop {
            let (batch, _) = postgres
                .export_for_device(device.site_id(), cursor, BatchLimits::default(), None)
                .await
                .unwrap();
            device.apply_changes(&batch.payload).await.unwrap();
            cursor = batch.next;
            if batch.complete {
                break;
            }
        }
        let mut held: Vec<Item> = device.query("1 = 1", Vec::<Value>::new()).await.unwrap();
        held.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let titles: Vec<(String, String)> = held
            .iter()
            .map(|item| (item.id.as_str().to_owned(), item.title.clone()))
            .collect();
        assert_eq!(
            titles,
            [
                (id(0), "edited by the backend".to_owned()),
                (id(7), "backend".to_owned()),
                (id(9), "device 2".to_owned()),
            ]
        );
    });
}

/// A backend transaction left open holds every pull below its version; a
/// row changed again meanwhile, above it, loses none of its earlier changes
/// on the way to a device: a column written before the transaction began,
/// in a row written again while it is open, still reaches the reader once it
/// ends.
#[test]
fn an_open_backend_transaction_holds_pulls_and_hides_no_earlier_change() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = cluster.connection_string("postgres");
        let postgres = PgReplica::open(&config, "held").await.unwrap();
        postgres.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        let writer = item_device().await;
        let reader = item_device().await;
        let mut sent = 0;
        let mut push = async |item: &Item| {
            writer.upsert(item).await.unwrap();
            let payload = writer.export_local_changes(Since::Version(sent)).await.unwrap();
            let decoded = wire::decode(&payload).unwrap();
            sent = i64::try_from(decoded.upto).unwrap();
            postgres.apply_push(decoded, writer.site_id()).await.unwrap()
        };
        let mut item = Item {
            id: item_id(0),
            title: "first".into(),
            qty: 1,
            price: 0.0,
            data: vec![],
            note: None,
        };
        push(&item).await;
        item.title = "written before the backend began".into();
        let before = push(&item).await.version;
        // A row changed last below the backend's version, after the first's
        // earlier changes.
        let mut second = item.clone();
        second.id = item_id(1);
        let alone = push(&second).await;
        // Its version was its own: a device up to date before it may go on
        // from there.
        assert_eq!(alone.before, alone.version - 1);

        // The backend's transaction takes the next version, and stays open.
        let (mut client, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
        tokio::spawn(connection);
        let backend = client.transaction().await.unwrap();
        let other = item_id(5).as_str().to_owned();
        backend
            .execute(
                "INSERT INTO held.items (id, title, qty, price, data) VALUES ($1, 'backend', 0, 0, '')",
                &[&other],
            )
            .await
            .unwrap();
        item.qty = 2;
        let beside = push(&item).await;
        let after = beside.version;
        assert!(after > before + 1, "the backend took a version between");
        // A version below it may yet commit: a device may not skip to it.
        assert_eq!(beside.before, beside.version);

        let pull = async |cursor: Cursor| {
            let (batch, _) = postgres
                .export_for_device(reader.site_id(), cursor, BatchLimits::default(), None)
                .await
                .unwrap();
            reader.apply_changes(&batch.payload).await.unwrap();
            batch
        };
        let held = pull(Cursor::BEGINNING).await;
        // The row is changed above the horizon: not sent yet, and the cursor
        // does not pass its earlier title.
        assert_eq!(held.rows, 0);
        assert!(held.version < before, "{} < {before}", held.version);
        // Pulled again while the transaction is open: still nothing, so a
        // long-poll waits rather than takes the same rows again and again.
        let again = pull(held.next.clone()).await;
        assert_eq!((again.rows, &again.next), (0, &held.next));
        backend.commit().await.unwrap();
        item.price = 1.5;
        let after_commit = push(&item).await;
        assert_eq!(after_commit.before, after_commit.version - 1);
        let released = pull(held.next).await;
        assert!(released.complete);
        let mut rows: Vec<Item> = reader.query("1 = 1", Vec::<Value>::new()).await.unwrap();
        rows.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], item);
        assert_eq!(rows[1], second);
        assert_eq!(rows[2].title, "backend");
    });
}

/// A column's values of one type (and NULL), for [`postgresql_orders_values_as_sqlite_does`].
fn column_values() -> impl Strategy<Value = (&'static str, &'static str, Vec<Value>)> {
    let nullable = |values: BoxedStrategy<Value>| {
        proptest::collection::vec(prop_oneof![1 => Just(Value::Null), 6 => values], 0..24)
    };
    prop_oneof![
        nullable(
            prop_oneof![
                any::<i64>(),
                Just(i64::MIN),
                Just(i64::MAX),
                Just(0i64),
                -3i64..3
            ]
            .prop_map(Value::Integer)
            .boxed()
        )
        .prop_map(|v| ("INTEGER", "bigint", v)),
        nullable(
            prop_oneof![
                any::<f64>().prop_filter("SQLite stores no NaN", |r| !r.is_nan()),
                Just(0.0),
                Just(-0.0),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(f64::MIN_POSITIVE),
                Just(1e300),
            ]
            .prop_map(Value::Real)
            .boxed()
        )
        .prop_map(|v| ("REAL", "double precision", v)),
        nullable(
            "[a-zA-Z0-9 _éÉß€😀\u{7f}\u{80}\u{ffff}\u{1}-]{0,6}"
                .prop_map(Value::Text)
                .boxed()
        )
        .prop_map(|v| ("TEXT", "text COLLATE \"C\"", v)),
        nullable(
            proptest::collection::vec(any::<u8>(), 0..6)
                .prop_map(Value::Blob)
                .boxed()
        )
        .prop_map(|v| ("BLOB", "bytea", v)),
    ]
}

/// Where PostgreSQL compares a replica's values (the keys its upserts and
/// locks match, the order a backend sorts by), it compares them as SQLite
/// does: the same values of one column type, with NULLs, sort into the same
/// order in both, and the same of them are equal, in a database whose own
/// order of text is a language's. (The merge itself compares values in
/// Rust, the same code on both stores.)
#[test]
fn postgresql_orders_values_as_sqlite_does() {
    let cases = std::env::var("SYNCED_POSTGRES_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        // A database whose own order of text is a language's (ICU's root
        // collation), as most installations' are: a column must say it sorts
        // text by its bytes.
        let (admin, connection) =
            tokio_postgres::connect(&cluster.connection_string("postgres"), NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(
                "CREATE DATABASE ordered TEMPLATE template0 ENCODING 'UTF8' \
                 LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C'",
            )
            .await
            .unwrap();

        support::connect(&cluster, "ordered").await
    });
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&column_values(), |(sqlite_type, pg_type, values)| {
            // Equal values (0.0 and -0.0 are one in both) print alike.
            let canonical = |dump: Dump| -> Vec<Value> {
                dump.into_iter()
                    .map(|row| match &row[0] {
                        Value::Real(r) => Value::Real(r + 0.0),
                        other => other.clone(),
                    })
                    .collect()
            };
            let conn = rusqlite::Connection::open_in_memory().unwrap();
            conn.execute_batch(&format!("CREATE TABLE t (v {sqlite_type}) STRICT"))
                .unwrap();
            for value in &values {
                let bound: rusqlite::types::Value = match value.clone() {
                    Value::Null => rusqlite::types::Value::Null,
                    Value::Integer(i) => rusqlite::types::Value::Integer(i),
                    Value::Real(r) => rusqlite::types::Value::Real(r),
                    Value::Text(t) => rusqlite::types::Value::Text(t),
                    Value::Blob(b) => rusqlite::types::Value::Blob(b),
                };
                conn.execute("INSERT INTO t VALUES (?1)", [bound]).unwrap();
            }
            let sqlite_order = canonical(sqlite_dump(&conn, "SELECT v FROM t ORDER BY v"));
            let sqlite_distinct =
                sqlite_dump(&conn, "SELECT count(DISTINCT v) FROM t")[0][0].clone();
            let (pg_order, pg_distinct) = runtime.block_on(async {
                client
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS t; CREATE TABLE t (v {pg_type})"
                    ))
                    .await
                    .unwrap();
                for value in &values {
                    let statement = "INSERT INTO t VALUES ($1)";
                    match value {
                        Value::Null => client.execute("INSERT INTO t VALUES (NULL)", &[]).await,
                        Value::Integer(i) => client.execute(statement, &[i]).await,
                        Value::Real(r) => client.execute(statement, &[r]).await,
                        Value::Text(t) => client.execute(statement, &[t]).await,
                        Value::Blob(b) => client.execute(statement, &[b]).await,
                    }
                    .unwrap();
                }
                let order =
                    canonical(pg_dump(&client, "SELECT v FROM t ORDER BY v NULLS FIRST").await);
                let distinct = client
                    .query_one("SELECT count(DISTINCT v) FROM t", &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0);
                (order, Value::Integer(distinct))
            });
            prop_assert_eq!(&pg_order, &sqlite_order);
            prop_assert_eq!(pg_distinct, sqlite_distinct);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Text holding a NUL character, which SQLite stores and PostgreSQL cannot:
/// the push is refused whole with a typed error, and nothing of it is
/// applied.
#[test]
fn text_postgresql_cannot_store_refuses_the_push_whole() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "nul")
            .await
            .unwrap();
        postgres.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        let device = item_device().await;
        for (key, title) in [(0, "fine"), (1, "a\0b")] {
            let item = Item {
                id: item_id(key),
                title: title.into(),
                qty: 0,
                price: 0.0,
                data: vec![],
                note: None,
            };
            device.insert(&item).await.unwrap();
        }
        let payload = device.export_local_changes(Since::Beginning).await.unwrap();
        let refused = postgres
            .apply_push(wire::decode(&payload).unwrap(), device.site_id())
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, sync_runtime::Error::Refused { reason } if reason.contains("NUL")),
            "{refused:?}"
        );
        let (batch, _) = postgres
            .export_for_device(
                sync_runtime::SiteId::from_bytes([3; 16]),
                Cursor::BEGINNING,
                BatchLimits::default(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(batch.rows, 0, "nothing of the refused push is applied");
    });
}

/// A row a backend wrote with its triggers off (as a restore with
/// `session_replication_role = replica` does) has no clock: a device's push
/// of the same row still merges, writing over it, rather than failing as an
/// insert of a row that exists would.
#[test]
fn a_push_writes_over_a_row_that_has_no_clock() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = cluster.connection_string("postgres");
        let postgres = PgReplica::open(&config, "untracked").await.unwrap();
        postgres.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
        tokio::spawn(connection);
        let id = item_id(7).as_str().to_owned();
        client
            .batch_execute(&format!(
                "SET session_replication_role = replica; \
                 INSERT INTO untracked.items (id, title, qty, price, data) \
                 VALUES ('{id}', 'restored', 0, 0, ''); \
                 SET session_replication_role = origin"
            ))
            .await
            .unwrap();
        let device = item_device().await;
        let item = Item {
            id: item_id(7),
            title: "from the device".into(),
            qty: 3,
            price: 1.5,
            data: vec![1],
            note: None,
        };
        device.insert(&item).await.unwrap();
        let payload = device.export_local_changes(Since::Beginning).await.unwrap();
        postgres
            .apply_push(wire::decode(&payload).unwrap(), device.site_id())
            .await
            .unwrap();
        let title: String = client
            .query_one("SELECT title FROM untracked.items WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(title, "from the device");
    });
}

/// A column added on PostgreSQL is read by every row there as a row that
/// never wrote it reads it, and a changed default is for rows inserted from
/// then on: rows that never wrote the column keep what they read, as on
/// SQLite; and the same rows reach a device as on a server on SQLite.
#[test]
fn a_column_added_and_its_default_changed_on_postgresql_read_as_on_sqlite() {
    use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "defaults")
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Replica::new(SyncDb::open(dir.path().join("server.db")).await.unwrap());
        let client = support::connect(&cluster, "postgres").await;
        let key = ColumnSchema::new("id", SqlType::Text).primary_key();
        let rank = ColumnSchema::new("rank", SqlType::Integer).default_sql("5");
        let versions = [
            vec![key.clone()],
            vec![key.clone(), rank.clone()],
            vec![key, rank.default_sql("9").first_default("5")],
        ];
        for (version, columns) in versions.into_iter().enumerate() {
            let schema = TableSchema::new("things", Algorithm::Cls, columns);
            postgres.publish(vec![schema.clone()]).await.unwrap();
            sqlite.publish(vec![schema]).await.unwrap();
            // A backend's row, written without the column.
            let id = format!("row {version}");
            client
                .execute("INSERT INTO defaults.things (id) VALUES ($1)", &[&id])
                .await
                .unwrap();
            sqlite
                .db()
                .execute_raw("INSERT INTO things (id) VALUES (?1)", vec![Value::from(id)])
                .await
                .unwrap();
        }
        let read = client
            .query("SELECT id, rank FROM defaults.things ORDER BY id", &[])
            .await
            .unwrap();
        let read: Vec<(String, i64)> = read.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            read,
            [
                ("row 0".into(), 5),
                ("row 1".into(), 5),
                ("row 2".into(), 9)
            ]
        );
        // A device of the last version receives the same rows from both.
        let mut received = Vec::new();
        for from_postgres in [false, true] {
            let device = SyncDb::open_in_memory().await.unwrap();
            device
                .register_schema(postgres.schemas().await.unwrap().remove(0))
                .await
                .unwrap();
            let site = device.site_id();
            let (batch, _) = match from_postgres {
                false => {
                    sqlite
                        .export_for_device(site, Cursor::BEGINNING, BatchLimits::default(), None)
                        .await
                }
                true => {
                    postgres
                        .export_for_device(site, Cursor::BEGINNING, BatchLimits::default(), None)
                        .await
                }
            }
            .unwrap();
            device.apply_changes(&batch.payload).await.unwrap();
            let rows = device
                .read_with("SELECT id, rank FROM things ORDER BY id", vec![], |row| {
                    Ok((row.get_at::<String>(0)?, row.get_at::<i64>(1)?))
                })
                .await
                .unwrap();
            received.push(rows);
        }
        assert_eq!(received[0], received[1]);
        assert_eq!(received[0].len(), 3);
    });
}

/// Pushes the changes of `device` after version `since` to both servers:
/// each applies as many changes.
async fn push_to_both(device: &SyncDb, since: Since, sqlite: &Replica, postgres: &PgReplica) {
    let payload = device.export_local_changes(since).await.unwrap();
    let decoded = wire::decode(&payload).unwrap();
    let a = sqlite
        .apply_push(decoded.clone(), device.site_id())
        .await
        .unwrap();
    let b = postgres
        .apply_push(decoded, device.site_id())
        .await
        .unwrap();
    assert_eq!(
        a.applied, b.applied,
        "changes applied, pushed after {since:?}"
    );
}

/// Asserts that `table` (its key and value columns) holds the same rows and
/// clocks in the SQLite server file `conn` and in the PostgreSQL schema
/// `schema` (its clock table numbered `number`); the rows.
async fn stored_alike(
    conn: &rusqlite::Connection,
    client: &tokio_postgres::Client,
    (table, keys, values): (&str, &[&str], &[&str]),
    (schema, number): (&str, i64),
) -> Dump {
    let (rows, clock) = dumps(table, keys, values, &format!("\"_synced_clock.{table}\""));
    let (pg_rows, pg_clock) = dumps(
        &format!("{schema}.{table}"),
        keys,
        values,
        &format!("{schema}.\"_synced_clock_{number}\""),
    );
    let rows = sqlite_dump(conn, &rows);
    assert_eq!(rows, pg_dump(client, &pg_rows).await, "rows of {table}");
    assert_eq!(
        sqlite_dump(conn, &clock),
        pg_dump(client, &pg_clock).await,
        "clocks of {table}"
    );
    rows
}

/// A push of many new rows (copied into PostgreSQL rather than inserted)
/// leaves the same rows and clocks as on SQLite, every type and NULL
/// included.
#[test]
fn many_new_rows_are_copied_in_as_sqlite_stores_them() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let sqlite = Replica::new(SyncDb::open(&path).await.unwrap());
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "copied")
            .await
            .unwrap();
        let schemas = vec![Item::SCHEMA.clone(), Pair::SCHEMA.clone()];
        sqlite.publish(schemas.clone()).await.unwrap();
        postgres.publish(schemas).await.unwrap();
        let device = item_device().await;
        device.register::<Pair>().await.unwrap();
        for i in 0..300i64 {
            let item = Item {
                id: SyncId::new(),
                title: format!("ünïcode {i} '\"\\"),
                qty: i - 150,
                price: i as f64 / 7.0,
                data: (0..(i % 5) as u8).collect(),
                note: (i % 3 == 0).then(|| format!("note {i}")),
            };
            device.insert(&item).await.unwrap();
            let pair = Pair {
                a: format!("{i}"),
                b: i,
                val: (i % 2 == 0).then_some(i),
            };
            device.insert(&pair).await.unwrap();
        }
        push_to_both(&device, Since::Beginning, &sqlite, &postgres).await;
        let conn = rusqlite::Connection::open(&path).unwrap();
        let client = support::connect(&cluster, "postgres").await;
        for (table, keys, values, number) in TABLES {
            let rows =
                stored_alike(&conn, &client, (table, keys, values), ("copied", number)).await;
            assert_eq!(rows.len(), 300);
        }
    });
}

/// Pulls running while a publication renames a column never read a
/// descriptor their tables no longer match: an export takes the lock that
/// publications wait for before its snapshot, and none fails.
#[test]
fn pulls_during_a_publication_that_renames_a_column_never_fail() {
    use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "renamed")
            .await
            .unwrap();
        let key = ColumnSchema::new("id", SqlType::Text).primary_key();
        let title = ColumnSchema::new("title", SqlType::Text).nullable(true);
        let label = ColumnSchema::new("label", SqlType::Text)
            .nullable(true)
            .renamed_from("title");
        let v1 = TableSchema::new("things", Algorithm::Cls, vec![key.clone(), title]);
        let v2 = TableSchema::new("things", Algorithm::Cls, vec![key, label]);
        postgres.publish(vec![v1]).await.unwrap();
        let client = support::connect(&cluster, "postgres").await;
        client
            .batch_execute(
                "INSERT INTO renamed.things (id, title) \
                 SELECT 'row ' || n, 'title ' || n FROM generate_series(1, 200) AS n",
            )
            .await
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut pulls = Vec::new();
        for _ in 0..4 {
            let (postgres, stop) = (postgres.clone(), std::sync::Arc::clone(&stop));
            pulls.push(tokio::spawn(async move {
                let site = sync_runtime::SiteId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
                let mut done = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || done == 0 {
                    let limits = BatchLimits::default().max_rows(50);
                    postgres
                        .export_for_device(site, Cursor::BEGINNING, limits, None)
                        .await
                        .map_err(|e| format!("pull {done}: {e}"))?;
                    done += 1;
                }
                Ok::<u32, String>(done)
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        postgres.publish(vec![v2]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for pull in pulls {
            assert!(pull.await.unwrap().unwrap() > 0);
        }
        let labels = client
            .query_one("SELECT count(label) FROM renamed.things", &[])
            .await
            .unwrap();
        assert_eq!(labels.get::<_, i64>(0), 200);
    });
}

/// A set of keys is looked up one by one only when the table holds a key in
/// the set's range, its least to its greatest in the key column's order
/// (bytes' order for text). In a database whose collation orders text
/// otherwise ('a' before 'B'), keys already there are still found: rows
/// written again merge as on SQLite rather than being taken for new ones.
#[test]
fn keys_already_there_are_found_whatever_the_database_collation() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = support::connect(&cluster, "postgres").await;
        admin
            .batch_execute(
                "CREATE DATABASE worded LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
                 TEMPLATE template0",
            )
            .await
            .unwrap();
        let worded = support::connect(&cluster, "worded").await;
        let ordered: bool = worded
            .query_one("SELECT 'a' < 'B'", &[])
            .await
            .unwrap()
            .get(0);
        assert!(ordered, "the database orders text otherwise than bytes");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let sqlite = Replica::new(SyncDb::open(&path).await.unwrap());
        let postgres = PgReplica::open(&cluster.connection_string("worded"), "ranged")
            .await
            .unwrap();
        let schemas = vec![Pair::SCHEMA.clone()];
        sqlite.publish(schemas.clone()).await.unwrap();
        postgres.publish(schemas).await.unwrap();
        let device = SyncDb::open_in_memory().await.unwrap();
        device.register::<Pair>().await.unwrap();
        let pair = |a: &str, val: i64| Pair {
            a: a.into(),
            b: 1,
            val: Some(val),
        };
        // Few rows (one statement each) and many (copied in).
        for count in [2, 100] {
            for round in 0..2 {
                let before = device.db_version().await.unwrap();
                for i in 0..count {
                    // Bytes' order: "B…" < "a…"; the database's: "a…" < "B…".
                    for a in [format!("a{count}-{i}"), format!("B{count}-{i}")] {
                        if round == 0 && a.starts_with('B') {
                            continue;
                        }
                        device.upsert(&pair(&a, round)).await.unwrap();
                    }
                }
                let since = Since::Version(before);
                push_to_both(&device, since, &sqlite, &postgres).await;
            }
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let (table, keys, values, _) = TABLES[1];
        let rows = stored_alike(&conn, &worded, (table, keys, values), ("ranged", 1)).await;
        assert_eq!(rows.len(), 2 * (2 + 100));
    });
}

/// Sets of new rows are copied in by tasks of their own while the merge
/// goes on: one that PostgreSQL refuses (here for a constraint a backend
/// added) fails the push with PostgreSQL's error, and nothing of the push is
/// written; the next push on the same connections merges.
#[test]
fn a_set_postgresql_refuses_to_copy_in_fails_the_push_whole() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "checked")
            .await
            .unwrap();
        postgres.publish(vec![Item::SCHEMA.clone()]).await.unwrap();
        let admin = support::connect(&cluster, "postgres").await;
        admin
            .batch_execute(
                "ALTER TABLE checked.items ADD CONSTRAINT fit CHECK (title <> 'refused')",
            )
            .await
            .unwrap();
        let count = |table: &'static str| {
            let admin = &admin;
            async move {
                let statement = format!("SELECT count(*) FROM checked.{table}");
                admin.query_one(&statement, &[]).await.unwrap().get::<_, i64>(0)
            }
        };
        let item = |i: usize, title: &str| Item {
            id: SyncId::new(),
            title: title.into(),
            qty: i as i64,
            price: 0.0,
            data: vec![],
            note: None,
        };
        // The refused row in the first set copied in, the rest merged after.
        let device = item_device().await;
        for i in 0..5_000 {
            let title = if i == 100 { "refused" } else { "fine" };
            device.insert(&item(i, title)).await.unwrap();
        }
        let payload = device.export_local_changes(Since::Beginning).await.unwrap();
        let refused = postgres
            .apply_push(wire::decode(&payload).unwrap(), device.site_id())
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, sync_runtime::Error::Postgres { code: Some(code), .. } if code == "23514"),
            "{refused:?}"
        );
        assert_eq!(count("items").await, 0, "no row of the refused push");
        assert_eq!(count("\"_synced_clock_1\"").await, 0, "no clock of it");

        let device = item_device().await;
        for i in 0..5_000 {
            device.insert(&item(i, "fine")).await.unwrap();
        }
        let payload = device.export_local_changes(Since::Beginning).await.unwrap();
        let report = postgres
            .apply_push(wire::decode(&payload).unwrap(), device.site_id())
            .await
            .unwrap();
        assert_eq!(report.applied.ignored, 0);
        assert_eq!(count("items").await, 5_000);
        assert_eq!(count("\"_synced_clock_1\"").await, 5_000);
    });
}

/// A table keyed by a blob.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "blobs")]
struct Blobbed {
    #[synced(primary_key)]
    id: Vec<u8>,
    v: i64,
}

/// Blob keys are ranged too (PostgreSQL before 18 has no `min` of
/// `bytea`): rows written again and new ones, few and many, merge as on
/// SQLite.
#[test]
fn a_table_keyed_by_blobs_merges_as_on_sqlite() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let sqlite = Replica::new(SyncDb::open(&path).await.unwrap());
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "blobs")
            .await
            .unwrap();
        let schemas = vec![Blobbed::SCHEMA.clone()];
        sqlite.publish(schemas.clone()).await.unwrap();
        postgres.publish(schemas).await.unwrap();
        let device = SyncDb::open_in_memory().await.unwrap();
        device.register::<Blobbed>().await.unwrap();
        for (round, count) in [(0_i64, 3_u16), (1, 3), (2, 100), (3, 300)] {
            let before = device.db_version().await.unwrap();
            for i in 0..count {
                let id = i.to_be_bytes().to_vec();
                device.upsert(&Blobbed { id, v: round }).await.unwrap();
            }
            push_to_both(&device, Since::Version(before), &sqlite, &postgres).await;
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let client = support::connect(&cluster, "postgres").await;
        let table = ("blobs", &["id"][..], &["v"][..]);
        let rows = stored_alike(&conn, &client, table, ("blobs", 1)).await;
        assert_eq!(rows.len(), 300);
    });
}

/// Tables keyed by integers, for pushes with many new rows.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "alpha")]
struct Alpha {
    #[synced(primary_key, integer_key)]
    id: i64,
    v: i64,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "beta")]
struct Beta {
    #[synced(primary_key, integer_key)]
    id: i64,
    v: i64,
}

/// A statement a merge sends while a set is being copied in waits for it:
/// here the lock a device's push takes before it marks the rows it created
/// in a table its user may not read whole, which another session holds,
/// so that the lock fails (`lock_timeout`) right after a copy began. Had it
/// been sent beside the copy, the copies after it would be bound on a
/// failed transaction (a COPY refused at its start leaves the connection
/// answering the wrong requests); pushes after it fail on no connection.
#[test]
fn a_lock_that_fails_beside_a_copy_leaves_every_connection_in_step() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = support::connect(&cluster, "postgres").await;
        admin
            .batch_execute("ALTER DATABASE postgres SET lock_timeout = '300ms'")
            .await
            .unwrap();
        let postgres = PgReplica::open(&cluster.connection_string("postgres"), "stepped")
            .await
            .unwrap();
        let schemas = vec![Alpha::SCHEMA.clone(), Beta::SCHEMA.clone()];
        postgres.publish(schemas).await.unwrap();
        let device = SyncDb::open_in_memory().await.unwrap();
        device.register::<Alpha>().await.unwrap();
        device.register::<Beta>().await.unwrap();
        let write = || RowFilters::new(RowFilter::All);
        let read = || RowFilters::new(RowFilter::All).table("beta", RowFilter::Nothing);
        let push = async |from: i64| {
            // More new rows of `alpha` than a set, then a row of `beta`.
            let before = device.db_version().await.unwrap();
            device
                .transaction(move |tx| -> sync_runtime::Result<()> {
                    tx.execute_raw(
                        "WITH RECURSIVE n(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM n \
                         WHERE x < ?2) INSERT INTO alpha (id, v) SELECT x, 0 FROM n",
                        vec![Value::Integer(from), Value::Integer(from + 4_299)],
                    )?;
                    tx.execute_raw("INSERT INTO beta (id, v) VALUES (?, 0)", vec![Value::Integer(from)])?;
                    Ok(())
                })
                .await
                .unwrap();
            let payload = device
                .export_local_changes(Since::Version(before))
                .await
                .unwrap();
            let payload = wire::decode(&payload).unwrap();
            postgres
                .apply_push_checked(payload, device.site_id(), write(), read())
                .await
        };
        // The connections' statements prepared, the reader's lock known.
        push(0).await.unwrap();
        let space: i32 = admin
            .query_one(
                "SELECT space::int FROM _synced.lock_spaces WHERE schema_name = 'stepped'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let site = device.site_id();
        let ordinal: i64 = admin
            .query_one(
                "SELECT ordinal FROM stepped._synced_sites WHERE site_id = $1",
                &[&site.as_bytes().as_slice()],
            )
            .await
            .unwrap()
            .get(0);
        let reader = 65_536 + i32::try_from(ordinal).unwrap();
        for round in 1..=3 {
            admin
                .execute("SELECT pg_advisory_lock($1, $2)", &[&space, &reader])
                .await
                .unwrap();
            let blocked = push(round * 100_000).await.unwrap_err();
            assert!(
                matches!(&blocked, sync_runtime::Error::Postgres { code: Some(code), .. } if code == "55P03"),
                "{blocked:?}"
            );
            admin
                .execute("SELECT pg_advisory_unlock($1, $2)", &[&space, &reader])
                .await
                .unwrap();
            push(round * 100_000 + 50_000).await.unwrap();
        }
        let log = cluster.log();
        let lines: Vec<&str> = log.lines().collect();
        let bound_after_failing = lines.windows(2).any(|pair| {
            pair[0].contains("current transaction is aborted") && pair[1].contains("STATEMENT:  COPY")
        });
        assert!(!bound_after_failing, "a COPY was sent on a failed transaction:\n{log}");
    });
}
