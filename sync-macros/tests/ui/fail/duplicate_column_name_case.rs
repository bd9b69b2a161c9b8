use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(rename = "Title")]
    heading: String,
}

fn main() {}
