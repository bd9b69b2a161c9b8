//! A to-do list on the command line, one database file per device, synced through
//! a running `sync-server`.
//!
//! ```text
//! # a server (see the book, "Running the server"), with SYNCED_JWT_SECRET set:
//! SYNCED_JWT_SECRET=dev-secret cargo run -p sync-server -- --data ./cloud --config server.toml
//!
//! # once, as the admin: create the server database from the app's tables
//! cargo run --bin todo -- --db admin.db --api-key $ADMIN_KEY publish-schema
//!
//! # a token for a user (a stand-in for the app's login service)
//! export SYNCED_TOKEN=$(cargo run -q --bin todo -- login ann --jwt-secret dev-secret)
//!
//! cargo run --bin todo -- --db phone.db add "Buy milk"
//! cargo run --bin todo -- --db phone.db sync
//! cargo run --bin todo -- --db laptop.db sync
//! cargo run --bin todo -- --db laptop.db list
//! cargo run --bin todo -- --db laptop.db done 01a2f3   # the first characters of an id
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sync_runtime::{Remote, SyncDb, SyncId, Synced, params};
use sync_server::auth::sign_token;

/// A to-do item.
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

/// A synced to-do list.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// This device's database file.
    #[arg(long, default_value = "todo.db")]
    db: PathBuf,
    /// The server database's URL.
    #[arg(
        long,
        env = "SYNCED_URL",
        default_value = "http://127.0.0.1:8787/v1/db/todo"
    )]
    server: String,
    /// A user's token (JWT).
    #[arg(long, env = "SYNCED_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An API key (admins and services).
    #[arg(long, env = "SYNCED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds a to-do (works offline).
    Add {
        /// What to do.
        title: String,
    },
    /// Marks the to-do whose id starts with this prefix as done (works offline).
    Done {
        /// The id, or its first characters.
        id: String,
    },
    /// Lists the to-dos.
    List,
    /// Sends this device's changes and fetches the others'.
    Sync,
    /// Registers the app's tables on the server (needs --api-key).
    PublishSchema,
    /// Prints a token for a user, signed with the server's HS256 secret: what an
    /// app's login service does. For trying things out.
    Login {
        /// The user id (the token's `sub`).
        user: String,
        /// The server's `jwt_hs256_secret`.
        #[arg(long, env = "SYNCED_JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
    },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Command::Login { user, jwt_secret } = &cli.command {
        println!("{}", login(user, jwt_secret)?);
        return Ok(());
    }
    // ANCHOR: remote
    let mut remote = Remote::new(&cli.server);
    if let Some(token) = cli.token {
        remote = remote.bearer_token(token);
    }
    if let Some(key) = cli.api_key {
        remote = remote.api_key(key);
    }
    let db = SyncDb::open(&cli.db).await?.with_remote(remote);
    db.register::<Todo>().await?;
    // ANCHOR_END: remote
    match cli.command {
        Command::Add { title } => {
            let todo = Todo {
                id: SyncId::new(),
                title,
                done: false,
                note: None,
            };
            db.insert(&todo).await?;
            println!("added {}", todo.id);
        }
        Command::Done { id } => {
            let prefix = format!("{}%", id.replace(['%', '_'], ""));
            let found: Vec<Todo> = db.query("id LIKE ?1", params![prefix]).await?;
            match found.as_slice() {
                [todo] => {
                    // Only the column that changes: a whole-row `update` of the
                    // row read above would undo an edit merged since.
                    db.execute_raw("UPDATE todos SET done = 1 WHERE id = ?1", params![todo.id])
                        .await?;
                    println!("done: {}", todo.title);
                }
                [] => return Err(format!("no to-do has an id starting with {id:?}").into()),
                _ => {
                    return Err(
                        format!("{id:?} matches several to-dos; give more of the id").into(),
                    );
                }
            }
        }
        Command::List => {
            for todo in db.query::<Todo>("ORDER BY done, title", params![]).await? {
                let mark = if todo.done { "x" } else { " " };
                println!("[{mark}] {}  {}", todo.id, todo.title);
            }
            if db.has_unsent_changes().await.unwrap_or(false) {
                println!("(changes not synced yet)");
            }
        }
        Command::Sync => {
            let report = db.sync().await?;
            println!(
                "sent {} changes, received {} ({} applied)",
                report.changes_sent, report.changes_received, report.applied
            );
        }
        Command::PublishSchema => {
            db.publish_schema().await?;
            println!("registered the todos table at {}", cli.server);
        }
        Command::Login { .. } => {}
    }
    Ok(())
}

fn login(user: &str, secret: &str) -> Result<String, Box<dyn std::error::Error>> {
    Ok(sign_token(secret, user, Duration::from_secs(24 * 3600))?)
}
