use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(indexed)]
    title: String,
}

fn main() {}
