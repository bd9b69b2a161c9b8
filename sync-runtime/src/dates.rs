//! Date and time fields from the `chrono` and `time` crates (features of the
//! same names), stored as integers that sort as the values do.
//!
//! | Rust type | Stored as (`INTEGER`) |
//! |---|---|
//! | `chrono::DateTime<Utc>`, `time::OffsetDateTime` | microseconds since 1970-01-01T00:00:00Z |
//! | `chrono::NaiveDateTime`, `time::PrimitiveDateTime` | microseconds since 1970-01-01T00:00:00, read as UTC |
//! | `chrono::NaiveDate`, `time::Date` | days since 1970-01-01 |
//! | `chrono::NaiveTime`, `time::Time` | microseconds since midnight |
//!
//! Integers sort as the instants do over the whole range of both crates
//! (microseconds since the epoch fit an `i64` for ±292,000 years), cost 1 to 8
//! bytes on the wire, and SQLite's date functions read them:
//! `datetime(due / 1000000, 'unixepoch')`, `date(day * 86400, 'unixepoch')`.
//! Both crates store the same instant as the same integer, so an app may move
//! from one to the other without touching its data.
//!
//! The precision is the microsecond, as in PostgreSQL's `timestamptz`: a value
//! with nanoseconds is stored rounded down to its microsecond, and chrono's
//! leap second (23:59:60) as its second's last microsecond, 23:59:59.999999. An
//! `OffsetDateTime` is stored as its instant and read back in UTC (its offset
//! is not kept; equality, which compares instants, holds). The natural
//! default, which a row that never wrote the column reads, is 0: the epoch,
//! 1970-01-01, or midnight. A `#[synced(default = …)]` for these fields is the
//! stored integer.

use crate::value::{ValueError, ValueRef};

/// Microseconds in a second.
const MICROS: i64 = 1_000_000;

fn integer(value: ValueRef<'_>) -> Result<i64, ValueError> {
    match value {
        ValueRef::Integer(i) => Ok(i),
        other => Err(ValueError::WrongType {
            expected: "INTEGER",
            found: other.type_name(),
        }),
    }
}

/// Reads an integer and converts it, or names it out of range for `target`.
fn decode<T>(
    value: ValueRef<'_>,
    target: &'static str,
    convert: impl FnOnce(i64) -> Option<T>,
) -> Result<T, ValueError> {
    let stored = integer(value)?;
    convert(stored).ok_or(ValueError::OutOfRange {
        value: stored,
        target,
    })
}

/// Implements `SyncValue` (an integer column whose natural default is 0: the
/// epoch, or midnight) and
/// `Value::from` for a date or time type, given its encoding and decoding.
macro_rules! integer_coded {
    ($t:ty, $name:literal, |$v:ident| $encode:expr, |$i:ident| $decode:expr) => {
        impl SyncValue for $t {
            const SQL_TYPE: SqlType = SqlType::Integer;
            const DEFAULT_SQL: Option<&'static str> = Some("0");

            fn to_value_ref(&self) -> ValueRef<'_> {
                let $v = self;
                ValueRef::Integer($encode)
            }

            fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
                decode(value, $name, |$i| $decode)
            }
        }

        impl crate::__private::DefaultLiteral for $t {
            type Literal = i64;
        }

        impl From<$t> for crate::Value {
            fn from(v: $t) -> Self {
                v.to_value_ref().into_owned()
            }
        }

        impl From<&$t> for crate::Value {
            fn from(v: &$t) -> Self {
                v.to_value_ref().into_owned()
            }
        }
    };
}

#[cfg(feature = "chrono")]
mod chrono_types {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};

    use super::{MICROS, decode};
    use crate::value::{SqlType, SyncValue, ValueError, ValueRef};

    /// Days from 0001-01-01 (day 1 of the common era) to 1970-01-01.
    const EPOCH_FROM_CE: i64 = 719_163;

    /// Microseconds since the epoch; a leap second (nanoseconds past
    /// 999,999,999) keeps its second's last microsecond, so that it sorts
    /// before the next second. Every chrono instant (±262,143 years) fits.
    fn micros(t: &DateTime<Utc>) -> i64 {
        t.timestamp() * MICROS + i64::from(t.timestamp_subsec_nanos().min(999_999_999) / 1_000)
    }

    integer_coded!(DateTime<Utc>, "chrono::DateTime<Utc>", |v| micros(v), |i| {
        DateTime::from_timestamp_micros(i)
    });

    integer_coded!(
        NaiveDateTime,
        "chrono::NaiveDateTime",
        |v| micros(&v.and_utc()),
        |i| DateTime::from_timestamp_micros(i).map(|t| t.naive_utc())
    );

    integer_coded!(
        NaiveDate,
        "chrono::NaiveDate",
        |v| i64::from(chrono::Datelike::num_days_from_ce(v)) - EPOCH_FROM_CE,
        |i| i
            .checked_add(EPOCH_FROM_CE)
            .and_then(|days| i32::try_from(days).ok())
            .and_then(NaiveDate::from_num_days_from_ce_opt)
    );

    integer_coded!(
        NaiveTime,
        "chrono::NaiveTime",
        // A leap second (nanoseconds past 999,999,999) keeps its last microsecond.
        |v| i64::from(v.num_seconds_from_midnight()) * MICROS
            + i64::from(v.nanosecond().min(999_999_999) / 1_000),
        |i| {
            let seconds = u32::try_from(i / MICROS).ok()?;
            let nanos = u32::try_from(i % MICROS * 1_000).ok()?;
            NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos)
        }
    );
}

#[cfg(feature = "time")]
mod time_types {
    use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

    use super::{MICROS, decode};
    use crate::value::{SqlType, SyncValue, ValueError, ValueRef};

    /// The Julian day number of 1970-01-01.
    const EPOCH_JULIAN_DAY: i64 = 2_440_588;

    /// Microseconds since the epoch. Microseconds fit an `i64` for ±292,277
    /// years: every `OffsetDateTime` of the crate's default range (±9,999
    /// years) does; one beyond, with the crate's `large-dates`, is stored as
    /// `i64::MIN` or `i64::MAX`, which keep the order and which reading
    /// refuses (`OutOfRange`) rather than give another date.
    fn micros(t: OffsetDateTime) -> i64 {
        let micros = t.unix_timestamp_nanos().div_euclid(1_000);
        i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
    }

    fn from_micros(i: i64) -> Option<OffsetDateTime> {
        if i == i64::MIN || i == i64::MAX {
            return None;
        }
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(i) * 1_000).ok()
    }

    integer_coded!(
        OffsetDateTime,
        "time::OffsetDateTime",
        |v| micros(*v),
        |i| from_micros(i)
    );

    integer_coded!(
        PrimitiveDateTime,
        "time::PrimitiveDateTime",
        |v| micros(v.assume_utc()),
        |i| from_micros(i).map(|t| PrimitiveDateTime::new(t.date(), t.time()))
    );

    integer_coded!(
        Date,
        "time::Date",
        |v| i64::from(v.to_julian_day()) - EPOCH_JULIAN_DAY,
        |i| i
            .checked_add(EPOCH_JULIAN_DAY)
            .and_then(|day| i32::try_from(day).ok())
            .and_then(|day| Date::from_julian_day(day).ok())
    );

    integer_coded!(
        Time,
        "time::Time",
        |v| {
            let (h, m, s, micro) = v.as_hms_micro();
            (i64::from(h) * 3_600 + i64::from(m) * 60 + i64::from(s)) * MICROS + i64::from(micro)
        },
        |i| {
            if !(0..86_400 * MICROS).contains(&i) {
                return None;
            }
            let seconds = i / MICROS;
            let (h, m, s) = (seconds / 3_600, seconds / 60 % 60, seconds % 60);
            Time::from_hms_micro(
                u8::try_from(h).ok()?,
                u8::try_from(m).ok()?,
                u8::try_from(s).ok()?,
                u32::try_from(i % MICROS).ok()?,
            )
            .ok()
        }
    );
}

#[cfg(all(test, feature = "chrono", feature = "time"))]
mod tests {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    use proptest::prelude::*;

    use crate::value::{SyncValue, ValueError, ValueRef};

    fn stored<T: SyncValue>(v: &T) -> i64 {
        match v.to_value_ref() {
            ValueRef::Integer(i) => i,
            other => panic!("stored as {other:?}"),
        }
    }

    #[test]
    fn the_formats_are_the_documented_ones() {
        let t: DateTime<Utc> = "2026-12-01T20:36:16.123456789Z".parse().unwrap();
        assert_eq!(stored(&t), 1_796_157_376_123_456);
        let o = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_157_376_123_456_789).unwrap();
        assert_eq!(stored(&o), 1_796_157_376_123_456);
        let d = NaiveDate::from_ymd_opt(1970, 1, 2).unwrap();
        assert_eq!(stored(&d), 1);
        assert_eq!(stored(&time::Date::from_julian_day(2_440_587).unwrap()), -1);
        let noon = NaiveTime::from_hms_micro_opt(12, 0, 0, 5).unwrap();
        assert_eq!(stored(&noon), 43_200_000_005);
        assert_eq!(
            stored(&time::Time::from_hms_micro(12, 0, 0, 5).unwrap()),
            43_200_000_005
        );
    }

    #[test]
    fn the_extremes_round_trip() {
        for t in [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::UNIX_EPOCH,
        ] {
            let back = DateTime::<Utc>::from_value_ref(t.to_value_ref()).unwrap();
            assert_eq!(back.timestamp_micros(), t.timestamp_micros());
        }
        for d in [NaiveDate::MIN, NaiveDate::MAX] {
            assert_eq!(NaiveDate::from_value_ref(d.to_value_ref()).unwrap(), d);
        }
        for d in [time::Date::MIN, time::Date::MAX] {
            assert_eq!(time::Date::from_value_ref(d.to_value_ref()).unwrap(), d);
        }
        let last = time::Time::from_hms_micro(23, 59, 59, 999_999).unwrap();
        assert_eq!(
            time::Time::from_value_ref(last.to_value_ref()).unwrap(),
            last
        );
    }

    #[test]
    fn integers_outside_a_type_are_out_of_range() {
        for i in [i64::MIN, -1, 86_400_000_000, 1 << 62, i64::MAX] {
            let err = NaiveTime::from_value_ref(ValueRef::Integer(i)).unwrap_err();
            assert!(
                matches!(err, ValueError::OutOfRange { value, .. } if value == i),
                "{i}"
            );
            assert!(
                time::Time::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
        }
        // chrono spans ±262,143 years (±8.3e18 µs), `time` ±9,999.
        for i in [i64::MIN, i64::MAX] {
            assert!(
                DateTime::<Utc>::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
            assert!(
                NaiveDateTime::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
        }
        for i in [i64::MIN, -(1 << 62), 1 << 62, i64::MAX] {
            assert!(
                time::PrimitiveDateTime::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
            assert!(
                NaiveDate::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
            assert!(
                time::OffsetDateTime::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
            assert!(
                time::Date::from_value_ref(ValueRef::Integer(i)).is_err(),
                "{i}"
            );
        }
        let err = NaiveDate::from_value_ref(ValueRef::Text("2026-12-01")).unwrap_err();
        assert!(matches!(
            err,
            ValueError::WrongType {
                expected: "INTEGER",
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn both_crates_store_an_instant_alike_and_in_order(
            a in -8_000_000_000_000_000i64..8_000_000_000_000_000,
            b in -8_000_000_000_000_000i64..8_000_000_000_000_000,
        ) {
            let ca = DateTime::<Utc>::from_value_ref(ValueRef::Integer(a)).unwrap();
            let cb = DateTime::<Utc>::from_value_ref(ValueRef::Integer(b)).unwrap();
            let ta = time::OffsetDateTime::from_value_ref(ValueRef::Integer(a));
            // `time` spans ±9,999 years; chrono more.
            if let Ok(ta) = ta {
                prop_assert_eq!(stored(&ta), a);
                prop_assert_eq!(ta.unix_timestamp(), ca.timestamp());
                let tp = time::PrimitiveDateTime::new(ta.date(), ta.time());
                prop_assert_eq!(stored(&tp), a);
            }
            prop_assert_eq!(stored(&ca), a);
            prop_assert_eq!(stored(&ca.naive_utc()), a);
            prop_assert_eq!(ca.cmp(&cb), a.cmp(&b));
            let (da, db) = (ca.date_naive(), cb.date_naive());
            prop_assert_eq!(da.cmp(&db), stored(&da).cmp(&stored(&db)));
            prop_assert_eq!(NaiveDate::from_value_ref(da.to_value_ref()).unwrap(), da);
            prop_assert_eq!(NaiveDateTime::from_value_ref(ca.naive_utc().to_value_ref()).unwrap(), ca.naive_utc());
            let (na, nb) = (ca.time(), cb.time());
            prop_assert_eq!(na.cmp(&nb), stored(&na).cmp(&stored(&nb)));
            prop_assert_eq!(NaiveTime::from_value_ref(na.to_value_ref()).unwrap(), na);
        }
    }
}
