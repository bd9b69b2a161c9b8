use sync_runtime::{Algorithm, SyncId, Synced};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "events", algorithm = "gos")]
struct Event {
    #[synced(primary_key)]
    id: SyncId,
    kind: String,
    at: i64,
}

// Without `table`, the name is the struct's name in snake case.
#[derive(Synced)]
#[synced(algorithm = "cls")]
struct AuditEntry {
    #[synced(primary_key)]
    id: SyncId,
}

fn main() {
    let schema = <Event as Synced>::SCHEMA;
    assert_eq!(schema.name, "events");
    assert_eq!(schema.algorithm, Algorithm::Gos);
    assert!(schema.validate().is_ok());
    let names: Vec<_> = schema.columns.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["id", "kind", "at"]);

    let audit = <AuditEntry as Synced>::SCHEMA;
    assert_eq!(audit.name, "audit_entry");
    assert_eq!(audit.algorithm, Algorithm::Cls);
}
