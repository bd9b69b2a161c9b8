//! The convergence test's scripts (see `sync-runtime/tests/convergence.rs`),
//! run through servers: each replica is a device, and each delivery from one
//! to another is a push of the first to its server and a pull of the other.
//! Each device is two copies of one file (one site id): one syncs with a
//! server on SQLite, the other with a server on PostgreSQL, and both make the
//! same writes. The servers end with the same rows and clocks, every local
//! version included, and each device's copies with the same rows and clocks,
//! as every device's.
//!
//! ```text
//! cargo test -p synced-tests --test postgres_convergence                  # 24 scripts
//! SYNCED_POSTGRES_CASES=2000 cargo test --release -p synced-tests --test postgres_convergence
//! ```

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

#[path = "../../sync-runtime/tests/scripts/mod.rs"]
mod scripts;
mod support;

use proptest::prelude::*;
use scripts::{Event, Item, ItemV2, Pair, Step, script, snapshot, write};
use support::differential::{
    copy_database_file, dumps_renamed, pg_dump, pull_alike, run_scripts, sqlite_dump,
};
use sync_runtime::postgres::PgReplica;
use sync_runtime::server::{Replica, Versions, View};
use sync_runtime::{BatchLimits, Cursor, Since, SyncDb, SyncId, Synced, TableSchema};
use synced_testkit::postgres::Postgres;

/// One device: its copy that syncs with the server on SQLite and its copy
/// that syncs with the server on PostgreSQL, what each pushed up to and its
/// cursor, and whether its app is at the next version.
struct Device {
    copies: [SyncDb; 2],
    sent: [i64; 2],
    cursors: [Cursor; 2],
    v2: bool,
}

/// The two servers.
struct Servers {
    sqlite: Replica,
    postgres: PgReplica,
    /// Whether the next app version is published.
    v2: bool,
}

/// The tables of an app version.
fn tables(v2: bool) -> Vec<TableSchema> {
    let item = if v2 { ItemV2::SCHEMA } else { Item::SCHEMA };
    vec![item.clone(), Pair::SCHEMA.clone(), Event::SCHEMA.clone()]
}

impl Servers {
    /// The two servers as they serve a device of the app version `v2` says.
    async fn serving(&self, v2: bool) -> (Replica, PgReplica) {
        let tables: Vec<(String, u64)> = tables(v2)
            .iter()
            .map(|t| (t.name.to_string(), t.view_fingerprint()))
            .collect();
        let view = |versions: Versions| -> View { versions.resolve(&tables, 0).unwrap() };
        let sqlite = view(self.sqlite.versions().await.unwrap());
        let postgres = view(self.postgres.versions().await.unwrap());
        (self.sqlite.serving(sqlite), self.postgres.serving(postgres))
    }

    /// `device` pushes what it wrote since its last push, to both.
    async fn push(&self, device: &mut Device) -> Result<(), TestCaseError> {
        let (sqlite, postgres) = self.serving(device.v2).await;
        let mut pushed = Vec::new();
        for copy in 0..2 {
            let db = &device.copies[copy];
            let payload = db
                .export_local_changes(Since::Version(device.sent[copy]))
                .await
                .unwrap();
            let decoded = sync_runtime::wire::decode(&payload).unwrap();
            device.sent[copy] = i64::try_from(decoded.upto).unwrap();
            pushed.push(match copy {
                0 => sqlite.apply_push(decoded, db.site_id()).await,
                _ => postgres.apply_push(decoded, db.site_id()).await,
            });
        }
        match (&pushed[0], &pushed[1]) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.applied, b.applied);
                prop_assert_eq!(&a.rejected, &b.rejected);
                prop_assert_eq!(a.restore.is_empty(), b.restore.is_empty());
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (a, b) => prop_assert!(false, "SQLite: {a:?}\nPostgreSQL: {b:?}"),
        }
        Ok(())
    }

    /// `device` pulls what its servers have after its cursors, in batches of
    /// `rows` rows, until it has everything.
    async fn pull(&self, device: &mut Device, rows: usize) -> Result<(), TestCaseError> {
        let (sqlite, postgres) = self.serving(device.v2).await;
        let limits = BatchLimits::default().max_rows(rows);
        pull_alike(
            (&sqlite, &postgres),
            &device.copies,
            &mut device.cursors,
            limits,
        )
        .await
    }

    /// Publishes the next app version on both, once.
    async fn publish_v2(&mut self) {
        if !self.v2 {
            self.sqlite.publish(tables(true)).await.unwrap();
            self.postgres.publish(tables(true)).await.unwrap();
            self.v2 = true;
        }
    }
}

/// Moves `device`'s app to the next version, once, after its servers: what
/// it received before lacked the columns it has now, so its cursors start
/// over, as a device's at its server do.
async fn upgrade(servers: &mut Servers, device: &mut Device) {
    if device.v2 {
        return;
    }
    servers.publish_v2().await;
    for db in &device.copies {
        db.register::<ItemV2>().await.unwrap();
    }
    device.v2 = true;
    device.cursors = [Cursor::BEGINNING, Cursor::BEGINNING];
}

/// Runs a script of `replicas` devices through a server on SQLite and one
/// on PostgreSQL (database `name` of `cluster`), and compares them after.
async fn run(
    cluster: &Postgres,
    name: &str,
    replicas: usize,
    steps: &[Step],
    keys: &[SyncId],
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    let mut servers = Servers {
        sqlite: Replica::new(SyncDb::open(&path).await.unwrap()),
        postgres: PgReplica::open(&cluster.connection_string("postgres"), name)
            .await
            .unwrap(),
        v2: false,
    };
    servers.sqlite.publish(tables(false)).await.unwrap();
    servers.postgres.publish(tables(false)).await.unwrap();
    let mut devices = Vec::new();
    for i in 0..replicas {
        let paths = [0, 1].map(|copy| dir.path().join(format!("device{i}-{copy}.db")));
        let first = SyncDb::open(&paths[0]).await.unwrap();
        first.register::<Item>().await.unwrap();
        first.register::<Pair>().await.unwrap();
        first.register::<Event>().await.unwrap();
        copy_database_file(&paths[0], &paths[1]);
        let copy = SyncDb::open(&paths[1]).await.unwrap();
        copy.register::<Item>().await.unwrap();
        copy.register::<Pair>().await.unwrap();
        copy.register::<Event>().await.unwrap();
        devices.push(Device {
            copies: [first, copy],
            sent: [0, 0],
            cursors: [Cursor::BEGINNING, Cursor::BEGINNING],
            v2: false,
        });
    }
    for step in steps {
        if let Some(replica) = step.writer() {
            let device = &devices[replica];
            for db in &device.copies {
                write(db, step, keys, device.v2).await;
            }
            continue;
        }
        match *step {
            // A delivery: a push of the sender, a pull of the receiver.
            Step::Sync { from, to, .. } | Step::SyncSeen { from, to } => {
                servers.push(&mut devices[from]).await?;
                servers.pull(&mut devices[to], 100).await?;
            }
            Step::Batch { from, to, max_rows } => {
                servers.push(&mut devices[from]).await?;
                servers.pull(&mut devices[to], max_rows).await?;
            }
            // A server never takes a device's payload again from another.
            Step::Replay { .. } => {}
            Step::Upgrade { replica } => upgrade(&mut servers, &mut devices[replica]).await,
            _ => unreachable!("a write, made above"),
        }
    }
    // Every app moves to the next version; then every device pushes and
    // pulls, twice round.
    for device in &mut devices {
        upgrade(&mut servers, device).await;
    }
    for _ in 0..2 {
        for device in &mut devices {
            servers.push(device).await?;
        }
        for device in &mut devices {
            servers.pull(device, 2).await?;
        }
    }

    let conn = rusqlite::Connection::open(&path).unwrap();
    let client = support::connect(cluster, "postgres").await;
    let layout: [(&str, &[&str], &[&str], i64); 3] = [
        (
            "items",
            &["id"],
            &[
                "name", "qty", "price", "data", "flag", "note", "rank", "due",
            ],
            1,
        ),
        ("pairs", &["a", "b"], &["val"], 2),
        ("events", &["id"], &["text"], 3),
    ];
    for (table, keys, values, number) in layout {
        // `name` was first called `title`.
        let firsts: Vec<&str> = values
            .iter()
            .map(|v| if *v == "name" { "title" } else { v })
            .collect();
        let clock = format!("\"_synced_clock.{table}\"");
        let (rows, clock) = dumps_renamed(table, keys, values, &firsts, &clock);
        let (pg_rows, pg_clock) = dumps_renamed(
            &format!("\"{name}\".{table}"),
            keys,
            values,
            &firsts,
            &format!("\"{name}\".\"_synced_clock_{number}\""),
        );
        prop_assert_eq!(
            sqlite_dump(&conn, &rows),
            pg_dump(&client, &pg_rows).await,
            "rows of {}",
            table
        );
        prop_assert_eq!(
            sqlite_dump(&conn, &clock),
            pg_dump(&client, &pg_clock).await,
            "clocks of {}",
            table
        );
    }
    // A device's copies alike; every device alike, but for the clocks of
    // the column the next version retired, which a server sends only to the
    // devices whose app has it (a device keeps those it wrote or received
    // before it moved on).
    let retired_aside = |(items, pairs, events, mut clocks): scripts::Snapshot| {
        clocks.retain(|(_, _, column, ..)| column != "note");
        (items, pairs, events, clocks)
    };
    let first = retired_aside(snapshot(&devices[0].copies[0]).await);
    for device in &devices {
        let [a, b] = [&device.copies[0], &device.copies[1]];
        let copy = snapshot(a).await;
        prop_assert_eq!(&copy, &snapshot(b).await);
        prop_assert_eq!(&retired_aside(copy), &first);
    }
    Ok(())
}

#[test]
fn the_convergence_scripts_end_alike_through_a_server_on_either_store() {
    let keys: Vec<SyncId> = (0..scripts::KEYS).map(|_| SyncId::new()).collect();
    run_scripts(24, script(), |runtime, cluster, name, (replicas, steps)| {
        runtime.block_on(run(cluster, name, replicas, &steps, &keys))
    });
}
