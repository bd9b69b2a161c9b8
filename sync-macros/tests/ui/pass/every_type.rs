use std::collections::HashMap;

use sync_runtime::{SqlType, SyncId, Synced};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "every_type")]
struct EveryType {
    #[synced(primary_key)]
    id: SyncId,
    // Natural defaults.
    flag: bool,
    tiny: i8,
    small: i16,
    int: i32,
    big: i64,
    byte: u8,
    word: u16,
    dword: u32,
    single: f32,
    double: f64,
    text: String,
    bytes: Vec<u8>,
    // Nullable columns.
    parent: Option<SyncId>,
    maybe_int: Option<i64>,
    maybe_text: Option<String>,
    maybe_real: Option<f64>,
    maybe_bytes: Option<Vec<u8>>,
    // Not stored.
    #[synced(skip)]
    cache: HashMap<String, String>,
    // Renamed.
    #[synced(rename = "type")]
    kind: String,
    // Explicit defaults of each literal kind.
    #[synced(default = true)]
    enabled: bool,
    #[synced(default = 7)]
    seven: i32,
    #[synced(default = -3)]
    minus_three: i64,
    #[synced(default = 200)]
    unsigned: u8,
    #[synced(default = 1.5)]
    ratio: f64,
    #[synced(default = -0.25)]
    offset: f32,
    #[synced(default = 2.0)]
    two: f64,
    #[synced(default = "it's open")]
    status: String,
    #[synced(default = b"\x01\xff")]
    magic: Vec<u8>,
    #[synced(default = 5)]
    maybe_five: Option<i64>,
    #[synced(default = "x")]
    maybe_x: Option<String>,
}

fn main() {
    let schema = <EveryType as Synced>::SCHEMA;
    assert_eq!(schema.name, "every_type");
    assert!(schema.validate().is_ok(), "{:?}", schema.validate());

    let columns: Vec<_> = schema
        .columns
        .iter()
        .map(|c| {
            (
                &*c.name,
                c.sql_type,
                c.nullable,
                c.primary_key,
                c.default.as_deref(),
            )
        })
        .collect();
    use SqlType::{Blob, Integer, Real, Text};
    assert_eq!(
        columns,
        [
            ("id", Text, false, true, None),
            ("flag", Integer, false, false, Some("0")),
            ("tiny", Integer, false, false, Some("0")),
            ("small", Integer, false, false, Some("0")),
            ("int", Integer, false, false, Some("0")),
            ("big", Integer, false, false, Some("0")),
            ("byte", Integer, false, false, Some("0")),
            ("word", Integer, false, false, Some("0")),
            ("dword", Integer, false, false, Some("0")),
            ("single", Real, false, false, Some("0.0")),
            ("double", Real, false, false, Some("0.0")),
            ("text", Text, false, false, Some("''")),
            ("bytes", Blob, false, false, Some("x''")),
            ("parent", Text, true, false, None),
            ("maybe_int", Integer, true, false, None),
            ("maybe_text", Text, true, false, None),
            ("maybe_real", Real, true, false, None),
            ("maybe_bytes", Blob, true, false, None),
            ("type", Text, false, false, Some("''")),
            ("enabled", Integer, false, false, Some("1")),
            ("seven", Integer, false, false, Some("7")),
            ("minus_three", Integer, false, false, Some("-3")),
            ("unsigned", Integer, false, false, Some("200")),
            ("ratio", Real, false, false, Some("1.5")),
            ("offset", Real, false, false, Some("-0.25")),
            ("two", Real, false, false, Some("2.0")),
            ("status", Text, false, false, Some("'it''s open'")),
            ("magic", Blob, false, false, Some("x'01ff'")),
            ("maybe_five", Integer, true, false, Some("5")),
            ("maybe_x", Text, true, false, Some("'x'")),
        ]
    );
    // The skipped field has no column.
    assert!(!schema.columns.iter().any(|c| c.name == "cache"));

    let sql = schema.sql();
    assert!(sql.contains("\"type\" TEXT NOT NULL DEFAULT ''"), "{sql}");
    assert!(
        sql.contains("\"minus_three\" INTEGER NOT NULL DEFAULT -3"),
        "{sql}"
    );
    assert!(
        sql.contains("\"magic\" BLOB NOT NULL DEFAULT x'01ff'"),
        "{sql}"
    );
    assert!(sql.contains("\"maybe_x\" TEXT DEFAULT 'x'"), "{sql}");
}
