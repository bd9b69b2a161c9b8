use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key, renamed_from = "key")]
    id: SyncId,
    title: String,
}

fn main() {}
