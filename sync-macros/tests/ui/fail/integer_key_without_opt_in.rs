use sync_runtime::Synced;

#[derive(Synced)]
struct Todo {
    #[synced(primary_key)]
    id: i64,
    title: String,
}

fn main() {}
