use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key, integer_key)]
    id: SyncId,
}

fn main() {}
