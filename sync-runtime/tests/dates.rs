//! Date and time fields of `chrono` and `time` (the features of the same
//! names): stored as integers that sort, filter and read in SQL as documented.

#![cfg(all(feature = "chrono", feature = "time"))]
#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sync_runtime::{SyncDb, SyncId, Synced, Value, params};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events")]
struct Event {
    #[synced(primary_key)]
    id: SyncId,
    at: DateTime<Utc>,
    local: NaiveDateTime,
    day: NaiveDate,
    #[synced(default = 0)]
    starts: NaiveTime,
    ends: Option<DateTime<Utc>>,
}

/// The same table read with the `time` crate's types.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events")]
struct TimeEvent {
    #[synced(primary_key)]
    id: SyncId,
    at: time::OffsetDateTime,
    local: time::PrimitiveDateTime,
    day: time::Date,
    #[synced(default = 0)]
    starts: time::Time,
    ends: Option<time::OffsetDateTime>,
}

fn event(at: &str) -> Event {
    let at: DateTime<Utc> = at.parse().unwrap();
    Event {
        id: SyncId::new(),
        at,
        local: at.naive_utc(),
        day: at.date_naive(),
        starts: at.time(),
        ends: None,
    }
}

#[tokio::test]
async fn dates_round_trip_sort_and_filter() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Event>().await.unwrap();
    let events = [
        event("2026-12-01T09:30:00.000001Z"),
        event("1969-07-20T20:17:40Z"),
        event("2038-01-19T03:14:08.5Z"),
        event("0900-01-01T00:00:00Z"),
    ];
    for e in &events {
        db.insert(e).await.unwrap();
    }
    for e in &events {
        assert_eq!(db.get::<Event>(&e.id).await.unwrap().as_ref(), Some(e));
    }

    // The stored integers sort as the instants, days and times do.
    let by = |column: &str| format!("true ORDER BY {column}");
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.at);
    assert_eq!(
        db.query::<Event>(&by("at"), params![]).await.unwrap(),
        sorted
    );
    assert_eq!(
        db.query::<Event>(&by("day"), params![]).await.unwrap(),
        sorted
    );
    sorted.sort_by_key(|e| e.starts);
    assert_eq!(
        db.query::<Event>(&by("starts"), params![]).await.unwrap(),
        sorted
    );

    // A date is a query parameter like any value.
    let since = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
    let recent = db
        .query::<Event>("day >= ? ORDER BY at", params![since])
        .await
        .unwrap();
    assert_eq!(recent, [events[0].clone(), events[2].clone()]);

    // SQLite's date functions read the columns.
    let text: Vec<(String, String, String)> = db
        .read_with(
            "SELECT datetime(at / 1000000, 'unixepoch'), date(day * 86400, 'unixepoch'), \
             time(starts / 1000000, 'unixepoch') FROM events WHERE id = ?",
            params![events[0].id],
            |row| Ok((row.get_at(0)?, row.get_at(1)?, row.get_at(2)?)),
        )
        .await
        .unwrap();
    assert_eq!(
        text,
        [(
            "2026-12-01 09:30:00".into(),
            "2026-12-01".into(),
            "09:30:00".into()
        )]
    );
}

#[tokio::test]
async fn chrono_and_time_store_the_same_integers() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Event>().await.unwrap();
    db.register::<TimeEvent>().await.unwrap();
    let mut e = event("2026-12-01T09:30:00.123456Z");
    e.ends = Some(e.at + chrono::Duration::hours(2));
    db.insert(&e).await.unwrap();

    let t = db.get::<TimeEvent>(&e.id).await.unwrap().unwrap();
    assert_eq!(t.at.unix_timestamp_nanos(), 1_796_117_400_123_456_000);
    assert_eq!(t.day, time::macros::date!(2026 - 12 - 01));
    assert_eq!(t.starts, time::macros::time!(09:30:00.123456));
    assert_eq!(t.local, time::macros::datetime!(2026-12-01 09:30:00.123456));
    assert_eq!(t.ends.unwrap() - t.at, time::Duration::hours(2));

    // Written back through `time`, it reads as the same chrono value.
    db.update(&t).await.unwrap();
    assert_eq!(db.get::<Event>(&e.id).await.unwrap().unwrap(), e);

    // Nanoseconds are stored to the microsecond, rounded down, before and after
    // the epoch alike.
    let early = TimeEvent {
        id: SyncId::new(),
        at: time::macros::datetime!(1969-12-31 23:59:59.999_999_999 UTC),
        ..t.clone()
    };
    db.insert(&early).await.unwrap();
    let stored: Vec<i64> = db
        .read_with(
            "SELECT at FROM events WHERE id = ?",
            params![early.id],
            |row| row.get_at(0),
        )
        .await
        .unwrap();
    assert_eq!(stored, [-1]);
    assert_eq!(Value::from(early.at), Value::Integer(-1));
}

#[tokio::test]
async fn a_stored_integer_outside_the_type_fails_its_row_by_name() {
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Event>().await.unwrap();
    let e = event("2026-12-01T09:30:00Z");
    db.insert(&e).await.unwrap();
    db.execute_raw(
        "UPDATE events SET starts = ? WHERE id = ?",
        params![86_400_000_000i64, e.id],
    )
    .await
    .unwrap();
    let err = db.get::<Event>(&e.id).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("starts") && text.contains("86400000000"),
        "{text}"
    );
    let readable = db.query_readable::<Event>("true", params![]).await.unwrap();
    assert!(readable.rows.is_empty());
    assert_eq!(readable.unreadable.len(), 1);
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "stamps")]
struct Stamp {
    #[synced(primary_key)]
    n: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// chrono's leap second (23:59:60.5) keeps its second's last microsecond: it
/// sorts before the next second, as the instants do.
#[tokio::test]
async fn a_leap_second_sorts_before_the_next_second() {
    let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
        .unwrap()
        .and_hms_milli_opt(23, 59, 59, 1_500)
        .unwrap()
        .and_utc();
    let after = NaiveDate::from_ymd_opt(2017, 1, 1)
        .unwrap()
        .and_hms_milli_opt(0, 0, 0, 200)
        .unwrap()
        .and_utc();
    let db = SyncDb::open_in_memory().await.unwrap();
    db.register::<Stamp>().await.unwrap();
    db.insert(&Stamp {
        n: "leap".into(),
        at: leap,
    })
    .await
    .unwrap();
    db.insert(&Stamp {
        n: "after".into(),
        at: after,
    })
    .await
    .unwrap();
    let rows = db.query::<Stamp>("ORDER BY at", params![]).await.unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.n.as_str()).collect();
    assert_eq!(names, ["leap", "after"]);
    // It keeps its second's last microsecond.
    let last = NaiveDate::from_ymd_opt(2016, 12, 31)
        .unwrap()
        .and_hms_micro_opt(23, 59, 59, 999_999)
        .unwrap()
        .and_utc();
    assert_eq!(rows[0].at, last);
}
