//! The to-do app's next version, side by side with the first one: a phone that
//! has not updated and a laptop that has sync through one server.
//!
//! ```text
//! cargo run --bin evolving
//! ```
//!
//! Version 2 of the app renames `title` to `label`, retires `note`, adds a
//! `due` date and a `tags` table. The admin publishes both versions; the phone
//! stays on version 1 while the laptop moves to version 2, and both keep
//! editing the same rows. Then the phone updates too.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sync_runtime::{Remote, SyncDb, SyncId, Synced, params};
use sync_server::auth::{hash_key, sign_token};
use sync_server::{AuthConfig, Config, DatabaseConfig, Server};

// ANCHOR: v1
/// Version 1 of the app's model.
mod v1 {
    use super::*;

    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        pub(crate) title: String,
        #[synced(default = false)]
        pub(crate) done: bool,
        pub(crate) note: Option<String>,
    }
}
// ANCHOR_END: v1

// ANCHOR: v2
/// Version 2: `title` is now `label`, `note` is gone (retired), `due` and the
/// `tags` table are new.
mod v2 {
    use super::*;

    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "todos")]
    pub(crate) struct Todo {
        #[synced(primary_key)]
        pub(crate) id: SyncId,
        #[synced(renamed_from = "title")]
        pub(crate) label: String,
        #[synced(default = false)]
        pub(crate) done: bool,
        /// A date as `YYYYMMDD`, if any.
        #[synced(index)]
        pub(crate) due: Option<i64>,
    }

    #[derive(Synced, Debug, Clone, PartialEq)]
    #[synced(table = "tags")]
    pub(crate) struct Tag {
        #[synced(primary_key)]
        pub(crate) todo: SyncId,
        #[synced(primary_key)]
        pub(crate) name: String,
    }

    /// What version 2 registers.
    pub(crate) async fn register(db: &SyncDb) -> sync_runtime::Result<()> {
        db.register::<Todo>().await?;
        db.register::<Tag>().await
    }
}
// ANCHOR_END: v2

const ADMIN_KEY: &str = "evolving-admin-key";
const JWT_SECRET: &str = "evolving-secret-shared-with-the-login-service";

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    run(dir.path()).await?;
    Ok(())
}

/// Runs the example in `dir`; returns the rows both devices ended with.
async fn run(dir: &Path) -> Result<Vec<v2::Todo>> {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: dir.join("server"),
        auth: AuthConfig {
            api_keys: vec![hash_key(ADMIN_KEY)],
            jwt_hs256_secret: Some(JWT_SECRET.into()),
            ..AuthConfig::default()
        },
        databases: [("todo".to_owned(), DatabaseConfig::shared())].into(),
        ..Config::default()
    };
    let server = Server::bind(config).await?.spawn();
    let url = server.url("todo");
    let admin = SyncDb::open_in_memory()
        .await?
        .with_remote(Remote::new(&url).api_key(ADMIN_KEY));
    admin.register::<v1::Todo>().await?;
    admin.publish_schema().await?;
    println!("Version 1 published: todos (id, title, done, note)");

    let phone = device(dir, "phone", &url).await?;
    phone.register::<v1::Todo>().await?;
    let milk = v1::Todo {
        id: SyncId::new(),
        title: "Buy milk".into(),
        done: false,
        note: Some("oat".into()),
    };
    phone.insert(&milk).await?;
    phone.sync().await?;
    println!("Phone (version 1) adds \"Buy milk\" and syncs");

    // ANCHOR: publish_v2
    // The admin publishes version 2 before the app ships; devices still on
    // version 1 keep syncing.
    let admin = SyncDb::open_in_memory()
        .await?
        .with_remote(Remote::new(&url).api_key(ADMIN_KEY));
    v2::register(&admin).await?;
    admin.publish_schema().await?;
    // ANCHOR_END: publish_v2
    println!("Version 2 published: todos (id, label, done, due), tags\n");

    // ANCHOR: side_by_side
    let laptop = device(dir, "laptop", &url).await?;
    v2::register(&laptop).await?;
    laptop.sync().await?;
    let mut todo: v2::Todo = laptop.get(&milk.id).await?.ok_or("not synced")?;
    todo.label = "Buy oat milk".into();
    todo.due = Some(20261224);
    laptop.update(&todo).await?;
    laptop
        .insert(&v2::Tag {
            todo: todo.id,
            name: "groceries".into(),
        })
        .await?;
    laptop.sync().await?;

    // The phone, still on version 1, reads the label as its title and never
    // sees `due` or `tags`; its edit leaves them as they are.
    phone.sync().await?;
    let mut on_phone: v1::Todo = phone.get(&milk.id).await?.ok_or("not synced")?;
    assert_eq!(on_phone.title, "Buy oat milk");
    on_phone.done = true;
    phone.update(&on_phone).await?;
    phone.sync().await?;
    laptop.sync().await?;
    // ANCHOR_END: side_by_side
    show(
        "phone (version 1)",
        &phone.query::<v1::Todo>("", params![]).await?,
    );
    show_v2("laptop (version 2)", &laptop).await?;

    // ANCHOR: update
    // The phone's app updates: it registers version 2 and gets what it was
    // not sent before (`due`, `tags`); the note it had stays in the file.
    drop(phone);
    let phone = device(dir, "phone", &url).await?;
    v2::register(&phone).await?;
    phone.sync().await?;
    // ANCHOR_END: update
    println!("\nThe phone updates to version 2 and syncs:");
    let rows = show_v2("phone (version 2)", &phone).await?;
    if rows
        != laptop
            .query::<v2::Todo>("ORDER BY label", params![])
            .await?
    {
        return Err("the devices differ".into());
    }
    Ok(rows)
}

/// A device of user `ann` with its own database file.
async fn device(dir: &Path, name: &str, url: &str) -> Result<SyncDb> {
    let token = sign_token(JWT_SECRET, "ann", Duration::from_secs(3600))?;
    Ok(SyncDb::open(dir.join(format!("{name}.db")))
        .await?
        .with_remote(Remote::new(url).bearer_token(token)))
}

fn show(name: &str, rows: &[v1::Todo]) {
    println!("  {name}:");
    for todo in rows {
        let mark = if todo.done { "x" } else { " " };
        let note = todo.note.as_deref().unwrap_or("");
        println!("    [{mark}] {:<14} note: {note}", todo.title);
    }
}

async fn show_v2(name: &str, db: &SyncDb) -> Result<Vec<v2::Todo>> {
    let rows: Vec<v2::Todo> = db.query("ORDER BY label", params![]).await?;
    let tags: Vec<v2::Tag> = db.query("ORDER BY name", params![]).await?;
    println!("  {name}:");
    for todo in &rows {
        let mark = if todo.done { "x" } else { " " };
        let due = todo.due.map(|d| d.to_string()).unwrap_or_default();
        let tagged: Vec<&str> = tags
            .iter()
            .filter(|t| t.todo == todo.id)
            .map(|t| t.name.as_str())
            .collect();
        println!(
            "    [{mark}] {:<14} due: {due:<9} tags: {}",
            todo.label,
            tagged.join(", ")
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_versions_sync_side_by_side_and_the_update_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let rows = super::run(dir.path()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].label, "Buy oat milk");
        assert!(rows[0].done, "the phone's edit on version 1");
        assert_eq!(rows[0].due, Some(20261224), "kept through that edit");
    }
}
