//! Payloads the fuzz targets (`fuzz/`) found the merge mishandling, each kept
//! as the rule it broke.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::wire::{self, CLOCK_STEP, Compression, PLAUSIBLE_CLOCK, Payload, TableEntry};
use sync_runtime::{ChangeKind, Error, Since, SyncDb, Synced, TableSchema};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "notes")]
struct Note {
    #[synced(primary_key)]
    id: String,
    text: String,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "points")]
struct Point {
    #[synced(primary_key)]
    x: f64,
    label: String,
}

async fn db() -> SyncDb {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Note>().await.unwrap();
    db.register::<Point>().await.unwrap();
    db
}

/// A peer that wrote one note, and a replica that has it.
async fn peer_and_replica() -> (SyncDb, SyncDb) {
    let (peer, replica) = (db().await, db().await);
    peer.insert(&Note {
        id: "n".into(),
        text: "first".into(),
    })
    .await
    .unwrap();
    let all = peer.export_changes(Since::Beginning).await.unwrap();
    replica.apply_changes(&all).await.unwrap();
    (peer, replica)
}

async fn exported(db: &SyncDb) -> Payload {
    wire::decode(&db.export_changes(Since::Beginning).await.unwrap()).unwrap()
}

/// Applies `payload`, which must be refused, and checks that the replica did
/// not change.
async fn assert_refused(replica: &SyncDb, payload: &Payload) {
    let (version, before) = (
        replica.db_version().await.unwrap(),
        replica.export_changes(Since::Beginning).await.unwrap(),
    );
    let bytes = wire::encode(payload, Compression::None);
    let err = replica.apply_changes(&bytes).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("twice"), "{err}");
    assert_eq!(replica.db_version().await.unwrap(), version);
    assert_eq!(
        replica.export_changes(Since::Beginning).await.unwrap(),
        before
    );
}

#[tokio::test]
async fn a_row_carried_twice_cannot_climb_two_clock_steps() {
    let (peer, replica) = peer_and_replica().await;
    let mut payload = exported(&peer).await;
    let row = payload.rows[0].clone();
    // Each copy is within one step of the clock the copy before it leaves.
    payload.rows = [PLAUSIBLE_CLOCK, PLAUSIBLE_CLOCK + CLOCK_STEP]
        .map(|col_version| {
            let mut copy = row.clone();
            copy.columns[0].col_version = col_version;
            copy
        })
        .to_vec();
    assert_refused(&replica, &payload).await;
    let clocks: Vec<_> = replica
        .changes_since(0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|change| match change.kind {
            ChangeKind::Set { col_version, .. } => Some(col_version),
            _ => None,
        })
        .collect();
    assert_eq!(clocks, vec![1]);
}

#[tokio::test]
async fn a_row_and_its_eviction_in_one_payload_are_refused() {
    // Applied, such a payload took new versions at every delivery for a row
    // it created and forgot again.
    let (peer, replica) = peer_and_replica().await;
    let mut payload = exported(&peer).await;
    let mut evicted = payload.rows[0].clone();
    evicted.cl = wire::EVICT;
    evicted.columns.clear();
    payload.rows.push(evicted);
    assert_refused(&replica, &payload).await;
}

/// The schema fingerprint of `tables`, as the book's wire-format chapter
/// describes it: FNV-1a over each table's descriptor.
fn fingerprint(tables: &[&TableSchema]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for table in tables {
        feed(table.name.to_ascii_lowercase().as_bytes());
        feed(table.algorithm.as_str().as_bytes());
        for c in table.columns.iter() {
            feed(c.name.as_bytes());
            feed(c.sql_type.as_sql().as_bytes());
            feed(&[u8::from(c.nullable), u8::from(c.primary_key)]);
            feed(c.default.as_deref().unwrap_or("").as_bytes());
        }
    }
    hash
}

/// A payload that lists a table twice is refused whatever its rows: each entry
/// would have the statements of its rows prepared, and a small push could
/// name one table a hundred thousand times.
#[tokio::test]
async fn a_table_listed_twice_is_refused_even_without_rows_in_it() {
    let (peer, replica) = peer_and_replica().await;
    let mut payload = exported(&peer).await;
    let again = payload.tables[0].clone();
    payload.tables.extend(std::iter::repeat_n(again, 3));
    assert_refused(&replica, &payload).await;
}

#[tokio::test]
async fn a_table_named_twice_in_another_case_is_still_one_table() {
    let (peer, replica) = peer_and_replica().await;
    let mut payload = exported(&peer).await;
    assert_eq!(payload.schema_fingerprint, fingerprint(&[Note::SCHEMA]));
    let mut upper = payload.tables[0].clone();
    upper.name = upper.name.to_uppercase();
    payload.tables.push(upper);
    payload.schema_fingerprint = fingerprint(&[Note::SCHEMA, Note::SCHEMA]);
    let mut copy = payload.rows[0].clone();
    copy.table = 1;
    copy.columns[0].col_version = 2;
    payload.rows.push(copy);
    assert_refused(&replica, &payload).await;
}

#[tokio::test]
async fn zero_and_negative_zero_are_one_key() {
    let (peer, replica) = (db().await, db().await);
    peer.insert(&Point {
        x: 0.0,
        label: "origin".into(),
    })
    .await
    .unwrap();
    let mut payload = exported(&peer).await;
    assert_eq!(
        payload.tables,
        vec![TableEntry {
            name: "points".into(),
            keys: vec!["x".into()],
            values: vec!["label".into()],
        }]
    );
    let mut copy = payload.rows[0].clone();
    copy.pk = vec![sync_runtime::Value::Real(-0.0)];
    copy.columns[0].col_version = 2;
    payload.rows.push(copy);
    assert_refused(&replica, &payload).await;
}
