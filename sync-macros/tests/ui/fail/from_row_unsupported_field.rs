use std::collections::HashMap;

use sync_runtime::FromRow;

#[derive(FromRow)]
struct Progress {
    name: String,
    counts: HashMap<String, i64>,
}

fn main() {}
