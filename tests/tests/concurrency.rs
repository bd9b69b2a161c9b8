//! One database, many tasks: `SyncDb` is `Clone + Send + Sync`, its clones share one
//! connection, and every transaction gets its own version.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::collections::BTreeSet;

use sync_runtime::{ChangeKind, Error, SyncDb, SyncId, Synced, params};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events")]
struct Event {
    #[synced(primary_key)]
    id: SyncId,
    task: i64,
    n: i64,
}

const TASKS: i64 = 8;
const WRITES: i64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_get_one_version_per_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = SyncDb::open(dir.path().join("shared.db")).await.unwrap();
    db.register::<Event>().await.unwrap();

    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..WRITES {
                    let pair = [SyncId::new(), SyncId::new()];
                    // Two rows per transaction, alternating typed and raw writes.
                    db.transaction(move |tx| {
                        tx.insert(&Event {
                            id: pair[0],
                            task,
                            n,
                        })?;
                        tx.execute_raw(
                            "INSERT INTO events (id, task, n) VALUES (?1, ?2, ?3)",
                            params![pair[1], task, n],
                        )?;
                        Ok::<_, Error>(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }

    let transactions = TASKS * WRITES;
    assert_eq!(db.db_version().await.unwrap(), transactions);
    let changes = db.changes_since(0).await.unwrap();
    let inserts: Vec<_> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Insert)
        .collect();
    assert_eq!(inserts.len() as i64, 2 * transactions);
    // Every version holds exactly the two rows of one transaction.
    let versions: BTreeSet<i64> = inserts.iter().map(|c| c.db_version).collect();
    assert_eq!(versions, (1..=transactions).collect());
    for version in versions {
        let rows: Vec<_> = inserts.iter().filter(|c| c.db_version == version).collect();
        assert_eq!(rows.len(), 2, "version {version}");
        assert_eq!(rows.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![0, 1]);
    }
    let stored: Vec<Event> = db.query("", params![]).await.unwrap();
    assert_eq!(stored.len() as i64, 2 * transactions);
}

#[tokio::test]
async fn the_connection_closes_when_the_last_clone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.db");
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Event>().await.unwrap();
    let clone = db.clone();
    drop(db);
    clone
        .insert(&Event {
            id: SyncId::new(),
            task: 0,
            n: 0,
        })
        .await
        .unwrap();
    drop(clone);
    // The file is whole and reopens with its row and version.
    let db = SyncDb::open(&path).await.unwrap();
    db.register::<Event>().await.unwrap();
    assert_eq!(db.db_version().await.unwrap(), 1);
    assert_eq!(db.query::<Event>("", params![]).await.unwrap().len(), 1);
}

/// A write that returned is published to the database's subscribers: a
/// server's pull that starts after a push was acknowledged reads the version
/// the push made, and so never takes an answer made before it (busy threads
/// keep both cores taken, so that the database's thread is often preempted
/// right after it answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_published_to_subscribers_before_it_returns() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Event>().await.unwrap();
    let versions = db.subscribe();
    let busy = synced_testkit::busy::BusyCores::start(4);
    let mut behind = 0;
    for n in 0..2_000 {
        db.insert(&Event {
            id: SyncId::new(),
            task: 0,
            n,
        })
        .await
        .unwrap();
        if *versions.borrow() != n + 1 {
            behind += 1;
        }
    }
    drop(busy);
    assert_eq!(
        behind, 0,
        "writes returned before their version was published"
    );
}
