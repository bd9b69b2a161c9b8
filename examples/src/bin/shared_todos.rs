//! Row-level security: a to-do list that two users share, each with rows of their
//! own.
//!
//! ```text
//! cargo run --bin shared_todos
//! ```
//!
//! One process starts a real server whose `todos` table users read when they own
//! a row or when it is shared, and write only when they own it. Ann and Bob sync
//! their devices through it; Bob's edit of Ann's shared row is refused and
//! undone; Ann un-shares it and it leaves Bob's device.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sync_runtime::{Remote, SyncDb, SyncId, Synced, params};
use sync_server::auth::hash_key;
use sync_server::{AuthConfig, Config, DatabaseConfig, Server, TablePolicies};

// ANCHOR: model
/// A to-do item with an owner, which its owner may share with everyone.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    /// The user who owns the row: the `sub` of their token.
    owner_id: String,
    title: String,
    #[synced(default = false)]
    shared: bool,
}
// ANCHOR_END: model

const ADMIN_KEY: &str = "shared-todos-admin-key";
const JWT_SECRET: &str = "shared-todos-secret-shared-with-the-login-service";

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    run(dir.path()).await?;
    Ok(())
}

/// Runs the example in `dir`; returns the titles Ann and Bob end with.
async fn run(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    // ANCHOR: config
    // The server's tables, from the app's structs (or from `GET .../schema`).
    let schema = dir.join("todo-schema.json");
    std::fs::write(&schema, serde_json::to_string(&[Todo::SCHEMA])?)?;
    let todos = TablePolicies {
        read: Some("owner_id = $user_id OR shared = 1".into()),
        write: Some("owner_id = $user_id".into()),
    };
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: dir.join("server"),
        auth: AuthConfig {
            api_keys: vec![hash_key(ADMIN_KEY)],
            jwt_hs256_secret: Some(JWT_SECRET.into()),
            ..AuthConfig::default()
        },
        databases: BTreeMap::from([(
            "todo".to_owned(),
            DatabaseConfig {
                schema: Some(schema),
                tables: BTreeMap::from([("todos".to_owned(), todos)]),
                ..DatabaseConfig::default()
            },
        )]),
        ..Config::default()
    };
    // ANCHOR_END: config
    let server = Server::bind(config).await?.spawn();
    let url = server.url("todo");

    let ann = device(dir, "ann", &url).await?;
    let bob = device(dir, "bob", &url).await?;

    println!("Ann adds a private to-do and a shared one; Bob adds a private one:");
    // ANCHOR: own_rows
    let groceries = todo("ann", "Ann's groceries", false);
    let lunch = todo("ann", "Team lunch", true);
    ann.insert(&groceries).await?;
    ann.insert(&lunch).await?;
    bob.insert(&todo("bob", "Bob's taxes", false)).await?;
    for db in [&ann, &bob, &ann] {
        db.sync().await?;
    }
    // ANCHOR_END: own_rows
    let ann_sees = show("ann", &ann).await?;
    let bob_sees = show("bob", &bob).await?;
    check(&ann_sees, &["Ann's groceries", "Team lunch"])?;
    check(&bob_sees, &["Bob's taxes", "Team lunch"])?;

    println!("\nBob renames Ann's shared to-do, which he may read but not write:");
    // ANCHOR: rejected
    bob.execute_raw(
        "UPDATE todos SET title = ?2 WHERE id = ?1",
        params![lunch.id, "Team lunch (Bob pays)"],
    )
    .await?;
    let report = bob.sync().await?;
    for rejection in &report.rejected {
        println!(
            "  refused: {} {:?}: {}",
            rejection.table, rejection.pk, rejection.reason
        );
    }
    // The same sync fetched the server's state of the row back.
    let back: Option<Todo> = bob.get(&lunch.id).await?;
    assert_eq!(back.map(|t| t.title), Some("Team lunch".to_owned()));
    // ANCHOR_END: rejected
    if report.rejected.len() != 1 {
        return Err("Bob's edit of Ann's row was not refused".into());
    }
    // ANCHOR: quarantine
    // What Bob typed is kept: the app can show it, write it again, or drop it.
    for refused in bob.rejected::<Todo>().await? {
        let typed = refused.row.map(|t| t.title);
        println!("  kept:    {typed:?} ({})", refused.reason);
    }
    bob.discard::<Todo>(&lunch.id).await?;
    // ANCHOR_END: quarantine
    show("bob", &bob).await?;

    println!("\nAnn un-shares the lunch; it leaves Bob's device at his next sync:");
    // ANCHOR: unshare
    ann.execute_raw(
        "UPDATE todos SET shared = 0 WHERE id = ?1",
        params![lunch.id],
    )
    .await?;
    ann.sync().await?;
    bob.sync().await?;
    // ANCHOR_END: unshare
    let ann_sees = show("ann", &ann).await?;
    let bob_sees = show("bob", &bob).await?;
    check(&ann_sees, &["Ann's groceries", "Team lunch"])?;
    check(&bob_sees, &["Bob's taxes"])?;

    server.stop().await?;
    Ok((ann_sees, bob_sees))
}

fn todo(owner: &str, title: &str, shared: bool) -> Todo {
    Todo {
        id: SyncId::new(),
        owner_id: owner.into(),
        title: title.into(),
        shared,
    }
}

/// Opens the device database of `user`, syncing with a token naming them.
async fn device(dir: &Path, user: &str, url: &str) -> Result<SyncDb> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({ "sub": user, "iat": now, "exp": now + 3600 });
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?;
    let db = SyncDb::open(dir.join(format!("{user}.db")))
        .await?
        .with_remote(Remote::new(url).bearer_token(token));
    db.register::<Todo>().await?;
    Ok(db)
}

/// Prints the titles a device holds; returns them, sorted.
async fn show(name: &str, db: &SyncDb) -> Result<Vec<String>> {
    let rows: Vec<Todo> = db.query("ORDER BY title", params![]).await?;
    let titles: Vec<String> = rows.into_iter().map(|t| t.title).collect();
    println!("  {name:<4} holds {titles:?}");
    Ok(titles)
}

fn check(titles: &[String], expected: &[&str]) -> Result<()> {
    if titles != expected {
        return Err(format!("expected {expected:?}, found {titles:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_user_ends_with_what_the_policies_allow() {
        let dir = tempfile::tempdir().unwrap();
        let (ann, bob) = super::run(dir.path()).await.unwrap();
        assert_eq!(ann, ["Ann's groceries", "Team lunch"]);
        assert_eq!(bob, ["Bob's taxes"]);
    }
}
