use sync_runtime::{SqlType, Synced, ValueRef};

/// A composite key with an integer part needs no `integer_key` opt-in: only a
/// single integer key collides across devices.
#[derive(Synced, Debug, Clone, PartialEq)]
struct Membership {
    #[synced(primary_key)]
    group: String,
    #[synced(primary_key)]
    member: i64,
    role: Option<String>,
}

fn main() {
    let schema = <Membership as Synced>::SCHEMA;
    assert_eq!(schema.name, "membership");
    assert!(schema.validate().is_ok());

    let keys: Vec<_> = schema
        .key_columns()
        .map(|c| (&*c.name, c.sql_type, c.nullable, c.default.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            ("group", SqlType::Text, false, None),
            ("member", SqlType::Integer, false, None),
        ]
    );
    let values: Vec<_> = schema.value_columns().map(|c| &*c.name).collect();
    assert_eq!(values, ["role"]);

    let sql = schema.sql();
    assert!(sql.contains("PRIMARY KEY (\"group\", \"member\")"), "{sql}");

    // The key is the tuple of the key fields, in declaration order.
    let row = Membership {
        group: "admins".into(),
        member: 7,
        role: Some("owner".into()),
    };
    let key: (String, i64) = row.key();
    assert_eq!(key, ("admins".to_owned(), 7));
    assert_eq!(
        <Membership as Synced>::key_value(&key, 0),
        ValueRef::Text("admins")
    );
    assert_eq!(
        <Membership as Synced>::key_value(&key, 1),
        ValueRef::Integer(7)
    );
    assert_eq!(row.column_value(2), ValueRef::Text("owner"));
}
