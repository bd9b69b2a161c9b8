use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(default = 3, first_default = "x")]
    n: i64,
}

fn main() {}
