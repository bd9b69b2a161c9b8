use sync_runtime::{SyncId, Synced};

#[derive(Synced)]
struct Todo(SyncId, String);

fn main() {}
