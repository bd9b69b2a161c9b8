use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
#[synced(algorithm = "dws")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
}

fn main() {}
