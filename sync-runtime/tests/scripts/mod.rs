//! The scripts of the convergence test: the models, the steps (writes on
//! one replica, deliveries between two, app upgrades), their strategy, and
//! how a replica makes a step's write and shows its rows and clocks. Shared
//! by `convergence.rs` (replicas that deliver to each other) and the
//! differential test of the two server stores (replicas that sync through a
//! server on each).

#![allow(dead_code, unreachable_pub)] // each test uses its own part

use proptest::prelude::*;
use sync_runtime::{ChangeKind, Error, SiteId, SyncDb, SyncId, Synced, Value, params};

/// A table with every supported column type.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "items")]
pub struct Item {
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
pub struct ItemV2 {
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
pub struct Pair {
    #[synced(primary_key)]
    a: String,
    #[synced(primary_key)]
    b: i64,
    val: Option<i64>,
}

/// A grow-only table.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events", algorithm = "gos")]
pub struct Event {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}

pub const KEYS: usize = 4;

/// One step of a script.
#[derive(Debug, Clone)]
pub enum Step {
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

impl Step {
    /// The replica whose write this is; `None` for a delivery or an upgrade.
    pub fn writer(&self) -> Option<usize> {
        match *self {
            Step::InsertItem { replica, .. }
            | Step::UpdateItem { replica, .. }
            | Step::RawUpdateItems { replica, .. }
            | Step::ChangeItem { replica, .. }
            | Step::DeleteItem { replica, .. }
            | Step::RekeyItem { replica, .. }
            | Step::UpsertPair { replica, .. }
            | Step::DeletePair { replica, .. }
            | Step::InsertEvent { replica, .. }
            | Step::UpdateEvent { replica, .. } => Some(replica),
            Step::Sync { .. }
            | Step::SyncSeen { .. }
            | Step::Batch { .. }
            | Step::Replay { .. }
            | Step::Upgrade { .. } => None,
        }
    }
}

pub fn step(replicas: usize) -> impl Strategy<Value = Step> {
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

pub fn script() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2usize..=5).prop_flat_map(|replicas| {
        (
            Just(replicas),
            proptest::collection::vec(step(replicas), 1..40),
        )
    })
}

pub const TITLES: [&str; 3] = ["a", "b", "c"];

/// Ignores the errors a script provokes on purpose (a key that exists already).
pub fn tolerate<T>(result: Result<T, Error>) {
    match result {
        Ok(_) | Err(Error::Constraint { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Makes the write of `step` on `db`, whose app is at the next version if
/// `v2`; `false` if `step` is not a write (a delivery or an upgrade).
#[allow(
    unused_variables,
    reason = "a write names its replica, which the caller took"
)]
pub async fn write(db: &SyncDb, step: &Step, keys: &[SyncId], v2: bool) -> bool {
    match step.clone() {
        Step::InsertItem {
            replica,
            key,
            title,
            qty,
        } if v2 => tolerate(
            db.insert(&ItemV2 {
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
            db.insert(&Item {
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
                _ => return true,
            };
            tolerate(
                db.execute_raw(
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
            let title = title.map(|t| TITLES[t].to_owned());
            if v2 {
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
            db.execute_raw("UPDATE items SET qty = qty + ?1", params![qty])
                .await,
        ),
        Step::DeleteItem { replica, key } if v2 => tolerate(db.delete::<ItemV2>(&keys[key]).await),
        Step::DeleteItem { replica, key } => tolerate(db.delete::<Item>(&keys[key]).await),
        Step::RekeyItem { replica, from, to } => tolerate(
            db.execute_raw(
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
            if db.update(&pair).await.is_err() {
                tolerate(db.insert(&pair).await);
            }
        }
        Step::DeletePair { replica, a, b } => {
            tolerate(db.delete::<Pair>(&(["x", "y"][a].to_owned(), b)).await)
        }
        Step::InsertEvent { replica, key, text } => tolerate(
            db.insert(&Event {
                id: keys[key],
                text: TITLES[text].into(),
            })
            .await,
        ),
        Step::UpdateEvent { replica, key, text } => tolerate(
            db.execute_raw(
                "UPDATE events SET text = ?1 WHERE id = ?2",
                params![TITLES[text], keys[key]],
            )
            .await,
        ),
        _ => return false,
    }
    true
}

/// Changes the item `key` on `db`: through `modify`, or by reading it and
/// writing every field back with `update`.
pub async fn change_item<T>(
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

/// Every row and every clock of a replica (local versions aside, which differ by
/// design).
pub type Clock = (String, Vec<Value>, String, i64, i64, SiteId);

/// What [`snapshot`] shows of a replica.
pub type Snapshot = (Vec<ItemV2>, Vec<Pair>, Vec<Event>, Vec<Clock>);

pub async fn snapshot(db: &SyncDb) -> Snapshot {
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
