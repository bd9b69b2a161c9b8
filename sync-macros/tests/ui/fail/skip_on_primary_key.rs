use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key, skip)]
    id: SyncId,
    title: String,
}

fn main() {}
