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

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sync_runtime::{
    BatchLimits, ChangeKind, Cursor, Error, Scope, Since, SiteId, SyncDb, SyncId, Synced, Value,
    params,
};

/// A table with every supported column type.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "items")]
struct Item {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    qty: i64,
    price: f64,
    data: Vec<u8>,
    flag: bool,
    note: Option<String>,
}

/// [`Item`] in the app's next version: `title` renamed to `name`, `note`
/// retired, `rank` (with a default) and `due` added.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "items")]
struct ItemV2 {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(renamed_from = "title")]
    name: String,
    qty: i64,
    price: f64,
    data: Vec<u8>,
    flag: bool,
    #[synced(default = 0)]
    rank: i64,
    due: Option<i64>,
}

/// A composite key.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "pairs")]
struct Pair {
    #[synced(primary_key)]
    a: String,
    #[synced(primary_key)]
    b: i64,
    val: Option<i64>,
}

/// A grow-only table.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events", algorithm = "gos")]
struct Event {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}

const KEYS: usize = 4;

/// One step of a script.
#[derive(Debug, Clone)]
enum Step {
    InsertItem {
        replica: usize,
        key: usize,
        title: usize,
        qty: i64,
    },
    UpdateItem {
        replica: usize,
        key: usize,
        column: usize,
        value: usize,
    },
    RawUpdateItems {
        replica: usize,
        qty: i64,
    },
    /// Changes some fields of an item through `modify` (only they are
    /// written), or, `whole`, writes back every field of the item as read
    /// (`update`).
    ChangeItem {
        replica: usize,
        key: usize,
        title: Option<usize>,
        qty: Option<i64>,
        whole: bool,
    },
    DeleteItem {
        replica: usize,
        key: usize,
    },
    RekeyItem {
        replica: usize,
        from: usize,
        to: usize,
    },
    UpsertPair {
        replica: usize,
        a: usize,
        b: i64,
        val: Option<i64>,
    },
    DeletePair {
        replica: usize,
        a: usize,
        b: i64,
    },
    InsertEvent {
        replica: usize,
        key: usize,
        text: usize,
    },
    UpdateEvent {
        replica: usize,
        key: usize,
        text: usize,
    },
    /// Sends `from`'s changes after a cursor (`None`: all) to `to`, maybe twice.
    Sync {
        from: usize,
        to: usize,
        cursor: Option<u8>,
        twice: bool,
    },
    /// Sends `from`'s own changes that `to` has not seen of it (the cursor protocol).
    SyncSeen {
        from: usize,
        to: usize,
    },
    /// Sends the next batch of at most `max_rows` rows of `from`'s changes after
    /// the cursor `to` keeps for it, and moves the cursor.
    Batch {
        from: usize,
        to: usize,
        max_rows: usize,
    },
    /// Delivers a payload made earlier again, late.
    Replay {
        payload: usize,
        to: usize,
    },
    /// The replica's app moves to the next version ([`ItemV2`]).
    Upgrade {
        replica: usize,
    },
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    let r = 0..replicas;
    let k = 0..KEYS;
    prop_oneof![
        (r.clone(), k.clone(), 0..3usize, -2i64..3).prop_map(|(replica, key, title, qty)| {
            Step::InsertItem {
                replica,
                key,
                title,
                qty,
            }
        }),
        (r.clone(), k.clone(), 0..8usize, 0..3usize).prop_map(|(replica, key, column, value)| {
            Step::UpdateItem {
                replica,
                key,
                column,
                value,
            }
        }),
        (r.clone(), -2i64..3).prop_map(|(replica, qty)| Step::RawUpdateItems { replica, qty }),
        (
            r.clone(),
            k.clone(),
            proptest::option::of(0..3usize),
            proptest::option::of(-2i64..3),
            any::<bool>()
        )
            .prop_map(|(replica, key, title, qty, whole)| Step::ChangeItem {
                replica,
                key,
                title,
                qty,
                whole,
            }),
        (r.clone(), k.clone()).prop_map(|(replica, key)| Step::DeleteItem { replica, key }),
        (r.clone(), k.clone(), k.clone()).prop_map(|(replica, from, to)| Step::RekeyItem {
            replica,
            from,
            to
        }),
        (r.clone(), 0..2usize, 0..2i64, proptest::option::of(0..3i64))
            .prop_map(|(replica, a, b, val)| Step::UpsertPair { replica, a, b, val }),
        (r.clone(), 0..2usize, 0..2i64).prop_map(|(replica, a, b)| Step::DeletePair {
            replica,
            a,
            b
        }),
        (r.clone(), k.clone(), 0..3usize).prop_map(|(replica, key, text)| Step::InsertEvent {
            replica,
            key,
            text
        }),
        (r.clone(), k.clone(), 0..3usize).prop_map(|(replica, key, text)| Step::UpdateEvent {
            replica,
            key,
            text
        }),
        (
            r.clone(),
            r.clone(),
            proptest::option::of(any::<u8>()),
            any::<bool>()
        )
            .prop_map(|(from, to, cursor, twice)| Step::Sync {
                from,
                to,
                cursor,
                twice
            }),
        (r.clone(), r.clone()).prop_map(|(from, to)| Step::SyncSeen { from, to }),
        (r.clone(), r.clone(), 1..4usize).prop_map(|(from, to, max_rows)| Step::Batch {
            from,
            to,
            max_rows
        }),
        (0..16usize, r.clone()).prop_map(|(payload, to)| Step::Replay { payload, to }),
        r.prop_map(|replica| Step::Upgrade { replica }),
    ]
}

fn script() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2usize..=5).prop_flat_map(|replicas| {
        (
            Just(replicas),
            proptest::collection::vec(step(replicas), 1..40),
        )
    })
}

const TITLES: [&str; 3] = ["a", "b", "c"];

/// Ignores the errors a script provokes on purpose (a key that exists already).
fn tolerate<T>(result: Result<T, Error>) {
    match result {
        Ok(_) | Err(Error::Constraint { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
    }
}

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
        match step {
            Step::InsertItem {
                replica,
                key,
                title,
                qty,
            } if upgraded[replica] => tolerate(
                dbs[replica]
                    .insert(&ItemV2 {
                        id: keys[key],
                        name: TITLES[title].into(),
                        qty,
                        price: qty as f64 / 2.0,
                        data: vec![title as u8],
                        flag: qty > 0,
                        rank: qty * 2,
                        due: (title > 0).then_some(qty),
                    })
                    .await,
            ),
            Step::InsertItem {
                replica,
                key,
                title,
                qty,
            } => tolerate(
                dbs[replica]
                    .insert(&Item {
                        id: keys[key],
                        title: TITLES[title].into(),
                        qty,
                        price: qty as f64 / 2.0,
                        data: vec![title as u8],
                        flag: qty > 0,
                        note: (title > 0).then(|| TITLES[title].into()),
                    })
                    .await,
            ),
            Step::UpdateItem {
                replica,
                key,
                column,
                value,
            } => {
                let v2 = upgraded[replica];
                let (column, v): (&str, Value) = match column {
                    0 if v2 => ("name", TITLES[value].into()),
                    0 => ("title", TITLES[value].into()),
                    1 => ("qty", (value as i64).into()),
                    2 => ("price", (value as f64 * 1.5).into()),
                    3 => ("data", vec![value as u8; value].into()),
                    4 => ("flag", (value % 2 == 0).into()),
                    // Retired in the next version, which still merges it: raw
                    // SQL of either version may write it.
                    5 => ("note", (value > 0).then(|| TITLES[value].to_owned()).into()),
                    // Only the next version has these.
                    6 if v2 => ("rank", (value as i64 - 1).into()),
                    7 if v2 => ("due", (value > 0).then_some(value as i64).into()),
                    _ => continue,
                };
                tolerate(
                    dbs[replica]
                        .execute_raw(
                            &format!("UPDATE items SET {column} = ?1 WHERE id = ?2"),
                            vec![v, keys[key].into()],
                        )
                        .await,
                );
            }
            Step::ChangeItem {
                replica,
                key,
                title,
                qty,
                whole,
            } => {
                let db = &dbs[replica];
                let title = title.map(|t| TITLES[t].to_owned());
                if upgraded[replica] {
                    let change = move |item: &mut ItemV2| {
                        if let Some(title) = title {
                            item.name = title;
                        }
                        if let Some(qty) = qty {
                            item.qty = qty;
                        }
                    };
                    change_item(db, keys[key], whole, change).await;
                } else {
                    let change = move |item: &mut Item| {
                        if let Some(title) = title {
                            item.title = title;
                        }
                        if let Some(qty) = qty {
                            item.qty = qty;
                        }
                    };
                    change_item(db, keys[key], whole, change).await;
                }
            }
            Step::RawUpdateItems { replica, qty } => tolerate(
                dbs[replica]
                    .execute_raw("UPDATE items SET qty = qty + ?1", params![qty])
                    .await,
            ),
            Step::DeleteItem { replica, key } if upgraded[replica] => {
                tolerate(dbs[replica].delete::<ItemV2>(&keys[key]).await)
            }
            Step::DeleteItem { replica, key } => {
                tolerate(dbs[replica].delete::<Item>(&keys[key]).await)
            }
            Step::RekeyItem { replica, from, to } => tolerate(
                dbs[replica]
                    .execute_raw(
                        "UPDATE items SET id = ?1 WHERE id = ?2",
                        params![keys[to], keys[from]],
                    )
                    .await,
            ),
            Step::UpsertPair { replica, a, b, val } => {
                let pair = Pair {
                    a: ["x", "y"][a].into(),
                    b,
                    val,
                };
                let db = &dbs[replica];
                if db.update(&pair).await.is_err() {
                    tolerate(db.insert(&pair).await);
                }
            }
            Step::DeletePair { replica, a, b } => tolerate(
                dbs[replica]
                    .delete::<Pair>(&(["x", "y"][a].to_owned(), b))
                    .await,
            ),
            Step::InsertEvent { replica, key, text } => tolerate(
                dbs[replica]
                    .insert(&Event {
                        id: keys[key],
                        text: TITLES[text].into(),
                    })
                    .await,
            ),
            Step::UpdateEvent { replica, key, text } => tolerate(
                dbs[replica]
                    .execute_raw(
                        "UPDATE events SET text = ?1 WHERE id = ?2",
                        params![TITLES[text], keys[key]],
                    )
                    .await,
            ),
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

/// Changes the item `key` on `db`: through `modify`, or by reading it and
/// writing every field back with `update`.
async fn change_item<T>(
    db: &SyncDb,
    key: SyncId,
    whole: bool,
    change: impl FnOnce(&mut T) + Send + 'static,
) where
    T: Synced<Key = SyncId>,
{
    if !whole {
        db.modify::<T, _>(&key, change).await.unwrap();
        return;
    }
    if let Some(mut row) = db.get::<T>(&key).await.unwrap() {
        change(&mut row);
        tolerate(db.update(&row).await);
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

/// Every row and every clock of a replica (local versions aside, which differ by
/// design).
type Clock = (String, Vec<Value>, String, i64, i64, SiteId);

async fn snapshot(db: &SyncDb) -> (Vec<ItemV2>, Vec<Pair>, Vec<Event>, Vec<Clock>) {
    let mut clocks: Vec<Clock> = db
        .changes_since(0)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let (column, col_version) = match c.kind {
                ChangeKind::Set {
                    column,
                    col_version,
                    ..
                } => (column, col_version),
                ChangeKind::Delete => ("-".into(), 0),
                _ => (String::new(), 0),
            };
            (c.table, c.pk, column, col_version, c.cl, c.site_id)
        })
        // A column never written (col_version 0) reads its default: whether
        // its clock was touched (a replica with the column received the row's
        // creation) or not (the replica got the column later) is the same clock.
        .filter(|(_, _, column, col_version, ..)| {
            column == "-" || column.is_empty() || *col_version > 0
        })
        .collect();
    clocks.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    (
        db.query("ORDER BY id", params![]).await.unwrap(),
        db.query("ORDER BY a, b", params![]).await.unwrap(),
        db.query("ORDER BY id", params![]).await.unwrap(),
        clocks,
    )
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
