use sync_runtime::{Patch, SyncId, Synced, ValueRef};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    note: Option<String>,
    #[synced(skip)]
    _cached: u64,
}

#[derive(Synced)]
#[synced(patch = "TagChanges")]
struct Tag {
    #[synced(primary_key)]
    name: String,
    color: i64,
}

fn main() {
    let patch = TodoPatch {
        note: Some(None),
        ..TodoPatch::default()
    };
    // Column indexes in table order; the key is never in a patch.
    assert_eq!(patch.values(), [(2, ValueRef::Null)]);
    let changes = TagChanges { color: Some(3) };
    assert_eq!(changes.values(), [(1, ValueRef::Integer(3))]);
}
