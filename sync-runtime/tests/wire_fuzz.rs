//! The payload decoder never panics, whatever the bytes, and always gives back
//! exactly what was encoded.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use proptest::prelude::*;
use sync_runtime::SiteId;
use sync_runtime::Value;
use sync_runtime::wire::{
    ColumnChange, Compression, Origin, Payload, RowChange, TableEntry, decode, encode,
};

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("NaN never equals itself", |f| !f.is_nan())
            .prop_map(Value::Real),
        ".{0,20}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Blob),
    ]
}

/// Payloads over two sites and one table with one key and three value columns.
fn payload() -> impl Strategy<Value = Payload> {
    let clock = 0..=sync_runtime::wire::MAX_CLOCK;
    let origin = (0u32..2, clock.clone()).prop_map(|(site, version)| Origin { site, version });
    let column = (0u32..3, clock, origin.clone(), value()).prop_map(
        |(column, col_version, origin, value)| ColumnChange {
            column,
            col_version,
            origin,
            value,
        },
    );
    let row = (
        value(),
        1u64..1000,
        origin,
        proptest::collection::vec(column, 0..4),
    )
        .prop_map(|(pk, cl, origin, columns)| RowChange {
            table: 0,
            pk: vec![pk],
            cl,
            origin,
            columns,
        });
    (any::<u64>(), proptest::collection::vec(row, 0..8)).prop_map(|(fingerprint, rows)| Payload {
        schema_fingerprint: fingerprint,
        exporter: SiteId::from_bytes([3; 16]),
        since: 1,
        upto: 5,
        sites: vec![SiteId::from_bytes([1; 16]), SiteId::from_bytes([2; 16])],
        tables: vec![TableEntry {
            name: "t".into(),
            keys: vec!["id".into()],
            values: vec!["a".into(), "b".into(), "c".into()],
        }],
        rows,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        prefix in proptest::collection::vec(0u8..4, 0..6),
    ) {
        // Small counts in front make the reader go deeper into the body.
        let body: Vec<u8> = prefix.into_iter().chain(body).collect();
        let _ = decode(&framed(&body));
    }

    #[test]
    fn payloads_round_trip(payload in payload(), zstd in any::<bool>()) {
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        prop_assert_eq!(decode(&encode(&payload, compression)).unwrap(), payload);
    }

    #[test]
    fn mutated_payloads_are_errors_not_panics(
        payload in payload(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode(&payload, Compression::None);
        let original = bytes.clone();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        // The checksum catches every change; a no-op edit leaves it valid.
        prop_assert_eq!(decode(&bytes).is_ok(), bytes == original);
    }
}

/// `body`, uncompressed, behind a valid header and checksum.
fn framed(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_le_bytes();
    let mut bytes = b"SYNC".to_vec();
    bytes.extend_from_slice(&[sync_runtime::wire::FORMAT_VERSION, 0, 0, 0]);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&len);
    bytes.extend_from_slice(&len);
    bytes.extend_from_slice(&0u32.to_le_bytes()); // rows: the bodies here hold none
    bytes.extend_from_slice(&[0u8; 32]); // exporter, since, upto
    bytes.extend_from_slice(body);
    let crc = crc32(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// CRC-32 (IEEE), bit by bit: the test does not trust the code it checks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_framed_body_decodes() {
    // sites 0, tables 0, rows 0: the smallest valid body.
    let payload = decode(&framed(&[0, 0, 0])).unwrap();
    assert!(payload.rows.is_empty());
}
