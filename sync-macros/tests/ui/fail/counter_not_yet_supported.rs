use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Post {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(counter)]
    likes: i64,
}

fn main() {}
