use sync_runtime::SyncValue;

#[derive(SyncValue)]
enum Shape {
    Point,
    Circle(f64),
}

fn main() {}
