use sync_runtime::{SqlType, Synced};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "legacy_items")]
struct LegacyItem {
    #[synced(primary_key, integer_key)]
    id: i64,
    name: String,
}

fn main() {
    let schema = <LegacyItem as Synced>::SCHEMA;
    assert_eq!(schema.name, "legacy_items");
    assert!(schema.validate().is_ok());

    let id = &schema.columns[0];
    assert_eq!(id.name, "id");
    assert_eq!(id.sql_type, SqlType::Integer);
    assert!(id.primary_key);
    assert!(!id.nullable);
    assert_eq!(id.default, None);

    assert!(
        schema.sql().contains("\"id\" INTEGER NOT NULL PRIMARY KEY"),
        "{}",
        schema.sql()
    );

    let item = LegacyItem {
        id: 42,
        name: "x".into(),
    };
    let key: i64 = item.key();
    assert_eq!(key, 42);
}
