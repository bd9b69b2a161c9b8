//! The main demo: a sync server and two devices of one user that edit offline,
//! conflict, and converge.
//!
//! ```text
//! cargo run --bin demo
//! ```
//!
//! One process starts a real server on a loopback port (its store: a SQLite file in a
//! temporary directory), opens two device databases, edits both offline (including
//! the same field of the same row, and an edit of a row the other device deletes),
//! syncs them through the server over HTTP, and prints each step and the result.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sync_runtime::{Remote, SyncDb, SyncId, SyncReport, Synced, params};
use sync_server::auth::hash_key;
use sync_server::{AuthConfig, Config, DatabaseConfig, Server};

/// A to-do item, the model of the demo.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(default = false)]
    done: bool,
    note: Option<String>,
}

impl Todo {
    fn new(title: &str) -> Self {
        Self {
            id: SyncId::new(),
            title: title.into(),
            done: false,
            note: None,
        }
    }
}

/// The server's admin key and the secret its JWTs are signed with. A real
/// deployment reads them from its configuration (see the book's "Running the
/// server").
const ADMIN_KEY: &str = "demo-admin-key";
const JWT_SECRET: &str = "demo-secret-shared-with-the-login-service";

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    run(dir.path()).await?;
    Ok(())
}

/// Runs the demo in `dir`; returns the rows every replica ended with.
async fn run(dir: &Path) -> Result<Vec<Todo>> {
    // 1. The server, in this process, on a free loopback port.
    // ANCHOR: server
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: dir.join("server"),
        auth: AuthConfig {
            api_keys: vec![hash_key(ADMIN_KEY)],
            jwt_hs256_secret: Some(JWT_SECRET.into()),
            ..AuthConfig::default()
        },
        // One user's devices share the whole list (the book's "Row-level
        // security" chapter shows per-user rows).
        databases: [("todo".to_owned(), DatabaseConfig::shared())].into(),
        ..Config::default()
    };
    let server = Server::bind(config).await?.spawn();
    let url = server.url("todo");
    println!("Server listening, database URL {url}");
    // ANCHOR_END: server

    // 2. An admin creates the server database from the app's structs.
    // ANCHOR: publish_schema
    let admin = SyncDb::open_in_memory()
        .await?
        .with_remote(Remote::new(&url).api_key(ADMIN_KEY));
    admin.register::<Todo>().await?;
    admin.publish_schema().await?;
    // ANCHOR_END: publish_schema
    println!("Admin registered the `todos` table on the server\n");

    // 3. Two devices of the same user, each with its own database file.
    let phone = device(dir, "phone", &url).await?;
    let laptop = device(dir, "laptop", &url).await?;

    println!("Phone adds three to-dos and syncs; the laptop syncs:");
    // ANCHOR: first_sync
    let milk = Todo::new("Buy milk");
    let plants = Todo::new("Water the plants");
    let bread = Todo::new("Bake bread");
    for todo in [&milk, &plants, &bread] {
        phone.insert(todo).await?;
    }
    report("phone", phone.sync().await?);
    report("laptop", laptop.sync().await?);
    show("laptop", &laptop).await?;
    // ANCHOR_END: first_sync

    println!("\nBoth go offline and edit:");
    let mut on_phone = milk.clone();
    on_phone.title = "Buy oat milk".into();
    phone.update(&on_phone).await?;
    println!("  phone   renames \"Buy milk\" to \"Buy oat milk\"");
    let mut on_laptop = milk.clone();
    on_laptop.title = "Buy whole milk".into();
    on_laptop.done = true;
    laptop.update(&on_laptop).await?;
    println!("  laptop  renames \"Buy milk\" to \"Buy whole milk\" and marks it done");
    laptop.delete::<Todo>(&plants.id).await?;
    println!("  laptop  deletes \"Water the plants\"");
    phone
        .execute_raw(
            "UPDATE todos SET note = ?1 WHERE id = ?2",
            params!["the ferns too", plants.id],
        )
        .await?;
    println!("  phone   adds a note to \"Water the plants\" (raw SQL, tracked too)");
    phone.insert(&Todo::new("Call mum")).await?;
    println!("  phone   adds \"Call mum\"");
    // ANCHOR: unsent
    for (name, db) in [("phone", &phone), ("laptop", &laptop)] {
        println!(
            "  {name:<7} has unsent changes: {}",
            db.has_unsent_changes().await?
        );
    }
    // ANCHOR_END: unsent

    println!("\nBack online, each syncs (the phone twice, to fetch the laptop's edits):");
    report("phone", phone.sync().await?);
    report("laptop", laptop.sync().await?);
    report("phone", phone.sync().await?);

    println!("\nConverged:");
    let rows = show("phone", &phone).await?;
    let laptop_rows = show("laptop", &laptop).await?;
    let server_db = SyncDb::open(dir.join("server").join("todo.db")).await?;
    server_db.register::<Todo>().await?;
    let server_rows = show("server", &server_db).await?;
    if rows != laptop_rows || rows != server_rows {
        return Err("the replicas differ".into());
    }
    println!(
        "\nAll three hold the same {} rows, with nothing lost:\n\
         - \"Buy milk\" was renamed on both: each edit is the title's second version, so\n  \
           the greater value wins everywhere (\"Buy whole milk\"); \"done\" came only from\n  \
           the laptop and is kept.\n\
         - \"Water the plants\" was deleted on the laptop while the phone edited it: the\n  \
           delete ends the row's life, and the older edit does not bring it back.\n\
         - Rows added offline on either device are everywhere.",
        rows.len()
    );

    server.stop().await?;
    Ok(rows)
}

// ANCHOR: device
/// Opens a device database syncing as the demo user.
async fn device(dir: &Path, name: &str, url: &str) -> Result<SyncDb> {
    let db = SyncDb::open(dir.join(format!("{name}.db")))
        .await?
        .with_remote(Remote::new(url).bearer_token(login("ann")?));
    db.register::<Todo>().await?;
    Ok(db)
}
// ANCHOR_END: device

// ANCHOR: login
/// What a login service does: signs a JWT naming the user (`sub`).
fn login(user: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({ "sub": user, "iat": now, "exp": now + 3600 });
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}
// ANCHOR_END: login

fn report(name: &str, report: SyncReport) {
    println!(
        "  {name:<7} sync: sent {} changes, received {} ({} applied), {} B up, {} B down",
        report.changes_sent,
        report.changes_received,
        report.applied,
        report.bytes_sent,
        report.bytes_received
    );
}

/// Prints a replica's rows; returns them.
async fn show(name: &str, db: &SyncDb) -> Result<Vec<Todo>> {
    let rows: Vec<Todo> = db.query("ORDER BY title", params![]).await?;
    println!("  {name}:");
    for todo in &rows {
        let mark = if todo.done { "x" } else { " " };
        let note = todo.note.as_deref().unwrap_or("");
        println!("    [{mark}] {:<16} {note}", todo.title);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_converges() {
        let dir = tempfile::tempdir().unwrap();
        let rows = super::run(dir.path()).await.unwrap();
        let titles: Vec<_> = rows.iter().map(|t| t.title.as_str()).collect();
        assert_eq!(titles, ["Bake bread", "Buy whole milk", "Call mum"]);
        assert!(rows[1].done);
    }
}
