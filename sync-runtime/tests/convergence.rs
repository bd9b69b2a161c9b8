//! Proof of convergence: replicas that edit the same rows offline and exchange
//! payloads in any order, any number of times, end with the same rows and the same
//! clocks; and so do replicas that move to the app's next version at different
//! moments (a column renamed, one retired, two added), syncing with those still
//! on the previous one meanwhile.
//!
//! ```text
//! cargo test -p sync-runtime --test convergence                      # 500 scripts
//! SYNCED_CONVERGENCE_CASES=20000 cargo test --release -p sync-runtime --test convergence
//! ```

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod scripts;

use proptest::test_runner::{Config, TestRunner};
use scripts::{Event, Item, ItemV2, KEYS, Pair, Step, script, snapshot, write};
use sync_runtime::{BatchLimits, Cursor, Scope, Since, SyncDb, SyncId};

/// How a script ends: every replica sends everything to every other, or only what
/// follows the batch cursors each one kept (which must be enough).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finish {
    Everything,
    FromCursors,
}

async fn run(replicas: usize, steps: Vec<Step>, keys: &[SyncId], finish: Finish) {
    let mut dbs = Vec::new();
    for _ in 0..replicas {
        let db = SyncDb::open_in_memory().await.unwrap();
        db.register::<Item>().await.unwrap();
        db.register::<Pair>().await.unwrap();
        db.register::<Event>().await.unwrap();
        dbs.push(db);
    }
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut cursors = vec![vec![Cursor::BEGINNING; replicas]; replicas];
    let mut upgraded = vec![false; replicas];
    for step in steps {
        if let Some(replica) = step.writer() {
            write(&dbs[replica], &step, keys, upgraded[replica]).await;
            continue;
        }
        match step {
            Step::Sync {
                from,
                to,
                cursor,
                twice,
            } => {
                let source = &dbs[from];
                let since = match cursor {
                    None => Since::Beginning,
                    Some(c) => {
                        let version = source.db_version().await.unwrap();
                        Since::Version(i64::from(c) % (version + 1))
                    }
                };
                let payload = source.export_changes(since).await.unwrap();
                dbs[to].apply_changes(&payload).await.unwrap();
                if twice {
                    dbs[to].apply_changes(&payload).await.unwrap();
                }
                sent.push(payload);
            }
            Step::SyncSeen { from, to } => {
                let seen = dbs[to].seen_version(dbs[from].site_id()).await.unwrap();
                let payload = dbs[from]
                    .export_local_changes(Since::Version(seen))
                    .await
                    .unwrap();
                dbs[to].apply_changes(&payload).await.unwrap();
                sent.push(payload);
            }
            Step::Batch { from, to, max_rows } => {
                let limits = BatchLimits::default().max_rows(max_rows);
                let cursor = cursors[from][to].clone();
                let batch = dbs[from]
                    .export_batch(cursor, Scope::All, limits)
                    .await
                    .unwrap();
                assert!(batch.rows <= max_rows);
                dbs[to].apply_changes(&batch.payload).await.unwrap();
                cursors[from][to] = batch.next;
                sent.push(batch.payload);
            }
            Step::Replay { payload, to } => {
                if let Some(bytes) = sent.get(payload) {
                    dbs[to].apply_changes(bytes).await.unwrap();
                }
            }
            Step::Upgrade { replica } => upgrade(&dbs, &mut upgraded, &mut cursors, replica).await,
            _ => unreachable!("a write, made above"),
        }
    }
    // Every app moves to the next version before the last rounds.
    for replica in 0..replicas {
        upgrade(&dbs, &mut upgraded, &mut cursors, replica).await;
    }
    // A full round, twice: every replica has seen everything.
    for _ in 0..2 {
        for from in 0..replicas {
            for to in 0..replicas {
                if from == to {
                    continue;
                }
                if finish == Finish::Everything {
                    let payload = dbs[from].export_changes(Since::Beginning).await.unwrap();
                    dbs[to].apply_changes(&payload).await.unwrap();
                    continue;
                }
                let limits = BatchLimits::default().max_rows(2);
                loop {
                    let cursor = cursors[from][to].clone();
                    let batch = dbs[from]
                        .export_batch(cursor, Scope::All, limits)
                        .await
                        .unwrap();
                    dbs[to].apply_changes(&batch.payload).await.unwrap();
                    cursors[from][to] = batch.next;
                    if batch.complete {
                        break;
                    }
                }
            }
        }
    }
    let first = snapshot(&dbs[0]).await;
    for db in &dbs[1..] {
        assert_eq!(snapshot(db).await, first);
    }
}

/// Moves `replica`'s app to [`ItemV2`], once. What it received before lacked
/// the columns it has now: like a device's cursor at its server, the batch
/// cursors of what it receives start over (what peers send by seen versions
/// is asked for again by the runtime itself).
async fn upgrade(
    dbs: &[SyncDb],
    upgraded: &mut [bool],
    cursors: &mut [Vec<Cursor>],
    replica: usize,
) {
    if upgraded[replica] {
        return;
    }
    dbs[replica].register::<ItemV2>().await.unwrap();
    upgraded[replica] = true;
    for from in cursors.iter_mut() {
        from[replica] = Cursor::BEGINNING;
    }
}

#[test]
fn replicas_converge_whatever_the_order_of_deliveries() {
    check(Finish::Everything, 500);
}

/// Batches resume exactly where their cursor says, even when rows change between
/// two batches: catching up from the cursors alone misses nothing.
#[test]
fn batch_cursors_miss_no_change() {
    check(Finish::FromCursors, 300);
}

fn check(finish: Finish, default_cases: u32) {
    let cases = std::env::var("SYNCED_CONVERGENCE_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    let keys: Vec<SyncId> = (0..KEYS).map(|_| SyncId::new()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&script(), |(replicas, steps)| {
            runtime.block_on(run(replicas, steps, &keys, finish));
            Ok(())
        })
        .unwrap();
}
