use std::collections::HashMap;

use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    tags: HashMap<String, String>,
}

fn main() {}
