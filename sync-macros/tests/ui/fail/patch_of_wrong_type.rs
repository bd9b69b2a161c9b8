use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    done: bool,
}

fn main() {
    let _ = TodoPatch { done: Some("yes") };
}
