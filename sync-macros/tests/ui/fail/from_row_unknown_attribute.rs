use sync_runtime::FromRow;

#[derive(FromRow)]
struct Progress {
    #[from_row(column = "list_name")]
    name: String,
    open: i64,
}

fn main() {}
