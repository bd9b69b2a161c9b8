use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
#[synced(table = "a", table = "b")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
}

fn main() {}
