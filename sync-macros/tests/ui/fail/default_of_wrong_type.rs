use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(default = "x")]
    n: i64,
}

fn main() {}
