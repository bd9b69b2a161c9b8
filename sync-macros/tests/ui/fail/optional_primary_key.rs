use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: Option<SyncId>,
    title: String,
}

fn main() {}
