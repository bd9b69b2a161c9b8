use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(default = 5, first_default = 3, index)]
    priority: i64,
    /// Added without a default (NULL), given one later.
    #[synced(default = "-", first_default = None)]
    note: Option<String>,
}

fn main() {
    let columns = &Todo::SCHEMA.columns;
    assert_eq!(columns[1].first_default.as_deref(), Some("3"));
    assert!(columns[1].indexed);
    assert_eq!(columns[2].first_default.as_deref(), Some("NULL"));
    assert_eq!(columns[2].default.as_deref(), Some("'-'"));
}
