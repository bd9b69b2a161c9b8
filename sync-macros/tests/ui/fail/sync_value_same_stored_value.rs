use sync_runtime::SyncValue;

#[derive(SyncValue)]
enum Status {
    Open,
    #[sync_value(rename = "Open")]
    Reopened,
}

fn main() {}
