use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo<T> {
    #[synced(primary_key)]
    id: SyncId,
    title: T,
}

fn main() {}
