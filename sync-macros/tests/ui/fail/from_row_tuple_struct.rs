use sync_runtime::FromRow;

#[derive(FromRow)]
struct Progress(String, i64);

fn main() {}
