use sync_runtime::FromRow;

#[derive(FromRow)]
enum Progress {
    Open,
    Done,
}

fn main() {}
