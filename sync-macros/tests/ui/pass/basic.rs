use sync_runtime::{Algorithm, SqlType, SyncId, Synced};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(default = false)]
    done: bool,
    note: Option<String>,
}

fn main() {
    let schema = <Todo as Synced>::SCHEMA;
    assert_eq!(schema.name, "todos");
    assert_eq!(schema.algorithm, Algorithm::Cls);
    assert!(schema.validate().is_ok());

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
    assert_eq!(
        columns,
        [
            ("id", SqlType::Text, false, true, None),
            ("title", SqlType::Text, false, false, Some("''")),
            ("done", SqlType::Integer, false, false, Some("0")),
            ("note", SqlType::Text, true, false, None),
        ]
    );

    let sql = schema.sql();
    assert!(
        sql.contains(
            "CREATE TABLE IF NOT EXISTS \"todos\" (\n  \"id\" TEXT NOT NULL PRIMARY KEY,\n"
        ),
        "{sql}"
    );

    // The generated row conversions.
    let id = SyncId::new();
    let todo = Todo {
        id,
        title: "Write docs".into(),
        done: true,
        note: None,
    };
    assert_eq!(todo.key(), id);
    assert_eq!(
        todo.column_value(0),
        sync_runtime::ValueRef::Text(id.as_str())
    );
    assert_eq!(
        todo.column_value(1),
        sync_runtime::ValueRef::Text("Write docs")
    );
    assert_eq!(todo.column_value(2), sync_runtime::ValueRef::Integer(1));
    assert_eq!(todo.column_value(3), sync_runtime::ValueRef::Null);
    assert_eq!(
        <Todo as Synced>::key_value(&id, 0),
        sync_runtime::ValueRef::Text(id.as_str())
    );
}
