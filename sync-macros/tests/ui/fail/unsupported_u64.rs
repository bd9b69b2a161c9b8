use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Counter {
    #[synced(primary_key)]
    id: SyncId,
    hits: u64,
}

fn main() {}
