use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(default = 5, first_default = None)]
    priority: i64,
}

fn main() {}
