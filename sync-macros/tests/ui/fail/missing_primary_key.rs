use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    id: SyncId,
    title: String,
}

fn main() {}
