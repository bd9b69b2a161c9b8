use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(rename = "_synced_x")]
    title: String,
}

fn main() {}
