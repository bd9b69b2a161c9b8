//! `sync-server`: serves Synced databases over HTTP.
//!
//! ```text
//! sync-server --data ./cloud --listen 127.0.0.1:8787 --config server.toml
//! sync-server hash-key <KEY>      # the form of an API key for the config file
//! ```

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sync_server::{Config, Server, auth};
use tracing_subscriber::EnvFilter;

/// Every request allocates a little, on whichever thread serves it: mimalloc
/// does that with a third less CPU than the system allocator (measured with
/// the `server-scale` bench, whose process uses it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves Synced databases over HTTP: devices push their changes and pull the
/// others'. Logs go to stderr (filter with RUST_LOG, e.g. RUST_LOG=sync_server=debug).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The data directory: one SQLite file per database (created if missing).
    /// Overrides `data` of the config file.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The address to listen on [default: 127.0.0.1:8787]; port 0 picks a free
    /// port. Overrides `listen` of the config file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A TOML configuration file (auth, limits, databases).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the `sha256:…` form of an API key, to put in `[auth] api_keys`.
    HashKey {
        /// The key; `-` reads it from the first line of stdin (keeps it out of
        /// the shell's history).
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashKey { key }) = &cli.command {
        return hash_key(key);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

async fn serve(cli: Cli) -> sync_server::Result<()> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => {
            let mut config = Config::default();
            config.secret_from_env();
            config
        }
    };
    if let Some(data) = cli.data {
        config.data = data;
    }
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    let server = Server::bind(config).await?;
    // Tests and scripts read this line to find the port.
    println!("listening on http://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    server.run().await?;
    tracing::info!("stopped");
    Ok(())
}

fn hash_key(key: &str) -> ExitCode {
    let key = if key == "-" {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            return fail(&format!("cannot read the key from stdin: {e}"));
        }
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        key.to_owned()
    };
    if key.is_empty() {
        return fail("the key is empty");
    }
    println!("{}", auth::hash_key(&key));
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("sync-server: {message}");
    ExitCode::FAILURE
}
