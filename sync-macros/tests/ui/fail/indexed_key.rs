use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key, index)]
    id: SyncId,
    title: String,
}

fn main() {}
