//! The sync server under load, measured from outside: many devices waiting in
//! long-polls while one device writes ([`live`]), and the first sync of a
//! large database ([`first_sync`]).
//!
//! ```text
//! cargo run --release -p synced-bench --bin server-scale
//! cargo run --release -p synced-bench --bin server-scale -- --waiters 2000 --writes 10
//! cargo run --release -p synced-bench --bin server-scale -- --postgres
//! cargo run --release -p synced-bench --bin server-scale -- --stores
//! ```
//!
//! The server runs in this process, with its SQLite store (or, with
//! `--postgres`, on a PostgreSQL cluster started for the run), on a loopback
//! port; with `--stores`, on each in turn, and the figures are printed side
//! by side.
//! The last line of output is one JSON object with every figure and the
//! parameters.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::{Value as Json, json};
use sync_runtime::Synced;
use sync_server::{DatabaseConfig, Server, TablePolicies};
use synced_bench::Todo;

use crate::live::Scenario;

mod first_sync;
mod live;
mod simulator;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The allocator of the `sync-server` binary, which this process stands in for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "The sync server with many devices waiting for changes")]
struct Args {
    #[command(subcommand)]
    simulate: Option<Simulate>,
    /// Devices waiting in long-polls in the first scenario.
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    /// Milliseconds between the writer's commits in the first scenario.
    #[arg(long, default_value_t = 1_000)]
    every_ms: u64,
    /// Rows the writer commits in the first scenario.
    #[arg(long, default_value_t = 30)]
    writes: usize,
    /// Devices waiting in the second scenario.
    #[arg(long, default_value_t = 500)]
    fast_waiters: usize,
    /// Milliseconds between commits in the second scenario.
    #[arg(long, default_value_t = 50)]
    fast_every_ms: u64,
    /// Rows the writer commits in the second scenario.
    #[arg(long, default_value_t = 200)]
    fast_writes: usize,
    /// Devices waiting in the third scenario, each under the same row filter
    /// (a read policy every row passes).
    #[arg(long, default_value_t = 10_000)]
    filtered_waiters: usize,
    /// Milliseconds between commits in the third scenario.
    #[arg(long, default_value_t = 1_000)]
    filtered_every_ms: u64,
    /// Rows the writer commits in the third scenario.
    #[arg(long, default_value_t = 10)]
    filtered_writes: usize,
    /// Devices waiting in the fourth scenario, each its own user under a
    /// per-user read policy (every row the writer commits passes it).
    #[arg(long, default_value_t = 10_000)]
    per_user_waiters: usize,
    /// Milliseconds between commits in the fourth scenario.
    #[arg(long, default_value_t = 1_000)]
    per_user_every_ms: u64,
    /// Rows the writer commits in the fourth scenario.
    #[arg(long, default_value_t = 10)]
    per_user_writes: usize,
    /// Rows of the database whose first sync is timed.
    #[arg(long, default_value_t = 1_000_000)]
    first_sync_rows: usize,
    /// Rows of the small database the ten-row pulls are compared with.
    #[arg(long, default_value_t = 1_000)]
    small_rows: usize,
    /// Ten-row pulls timed on each database.
    #[arg(long, default_value_t = 30)]
    pulls: usize,
    /// Runs the server on a PostgreSQL cluster started for the run (see
    /// the book's "Scaling out"), rather than on SQLite.
    #[arg(long)]
    postgres: bool,
    /// Runs everything on SQLite, then on PostgreSQL, and prints the
    /// figures side by side.
    #[arg(long, conflicts_with = "postgres")]
    stores: bool,
}

/// The simulated devices, run as a process of their own.
#[derive(Debug, Subcommand)]
enum Simulate {
    /// Long-polls as `devices` devices until each has received `until`.
    Simulate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        database: String,
        #[arg(long)]
        devices: usize,
        /// The version every device starts after.
        #[arg(long)]
        from: i64,
        /// The version every device must reach.
        #[arg(long)]
        until: i64,
    },
}

/// What a device asks to wait for, at most: longer than any scenario's gap
/// between writes, shorter than the server's cap.
const WAIT_MS: u64 = 30_000;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(Simulate::Simulate {
        addr,
        database,
        devices,
        from,
        until,
    }) = args.simulate
    {
        // One thread: the simulator stays light beside the server (two
        // threads contend with it and make every figure worse).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(simulator::simulate(addr, &database, devices, from, until));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = if args.stores {
        let sqlite = runtime.block_on(run(&args, false))?;
        let postgres = runtime.block_on(run(&args, true))?;
        side_by_side(&sqlite, &postgres);
        json!({ "sqlite": sqlite, "postgres": postgres })
    } else {
        runtime.block_on(run(&args, args.postgres))?
    };
    println!("{report}");
    Ok(())
}

/// Prints the figures of a run on each store (see [`run`]) side by side,
/// with PostgreSQL's to SQLite's.
fn side_by_side(sqlite: &Json, postgres: &Json) {
    println!("side by side: SQLite, PostgreSQL, PostgreSQL / SQLite");
    let line = |what: String, unit: &str, a: f64, b: f64| {
        println!("{what:<58} {a:>9.2} {unit} {b:>9.2} {unit} {:>7.2}x", b / a);
    };
    let number = |figures: &Json, path: &[&str]| {
        path.iter()
            .fold(figures, |at, key| &at[key])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    for (what, key) in [
        ("first sync: A -> server", "push_s"),
        ("first sync: server -> B", "pull_s"),
    ] {
        let path = ["first_sync", key];
        line(
            what.into(),
            "s ",
            number(sqlite, &path),
            number(postgres, &path),
        );
    }
    let path = ["first_sync", "ten_row_pull", "large_ms"];
    let what = "a 10-row pull from the first sync's database".to_owned();
    line(what, "ms", number(sqlite, &path), number(postgres, &path));
    let live = |figures: &Json| figures["live"].as_array().cloned().unwrap_or_default();
    for (a, b) in live(sqlite).iter().zip(live(postgres).iter()) {
        let policy = a["read_policy"]
            .as_str()
            .map(|p| format!(", read policy `{p}`"))
            .unwrap_or_default();
        let scenario = format!(
            "{} devices, a row every {} ms{policy}",
            a["waiters"], a["every_ms"]
        );
        println!("{scenario}");
        for (what, key) in [
            ("write -> visible p50", "p50_ms"),
            ("write -> visible p99", "p99_ms"),
        ] {
            line(
                format!("  {what}"),
                "ms",
                number(a, &[key]),
                number(b, &[key]),
            );
        }
    }
}

/// The read policy of the third scenario: one row filter, the same for
/// every user, that every row passes.
const ONE_FILTER: &str = "score >= 0";

/// The read policy of the fourth scenario: a row filter of each user's own
/// (it binds the user's id), that every row the writer commits passes.
const PER_USER: &str = "note IS NULL OR note = $user_id";

/// Every figure, with the server on PostgreSQL if `postgres`, else on
/// SQLite.
async fn run(args: &Args, postgres: bool) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let scenarios = [
        Scenario {
            waiters: args.waiters,
            every: Duration::from_millis(args.every_ms),
            writes: args.writes,
        },
        Scenario {
            waiters: args.fast_waiters,
            every: Duration::from_millis(args.fast_every_ms),
            writes: args.fast_writes,
        },
        Scenario {
            waiters: args.filtered_waiters,
            every: Duration::from_millis(args.filtered_every_ms),
            writes: args.filtered_writes,
        },
        Scenario {
            waiters: args.per_user_waiters,
            every: Duration::from_millis(args.per_user_every_ms),
            writes: args.per_user_writes,
        },
    ];
    let policies = [None, None, Some(ONE_FILTER), Some(PER_USER)];
    let names: Vec<String> = (0..scenarios.len()).map(|i| format!("live-{i}")).collect();
    let mut shared: Vec<&str> = names
        .iter()
        .zip(policies)
        .filter(|(_, policy)| policy.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    shared.extend(first_sync::DATABASES);
    let mut config = synced_testkit::config_sharing(&dir.path().join("server"), &shared);
    let schema = dir.path().join("todos.schema.json");
    std::fs::write(&schema, serde_json::to_vec(&[Todo::SCHEMA])?)?;
    let cluster = match postgres {
        true => Some(synced_testkit::postgres::Postgres::start()?),
        false => None,
    };
    if let Some(cluster) = &cluster {
        config.storage.postgres = Some(cluster.connection_string("postgres"));
    }
    for (name, policy) in names.iter().zip(policies) {
        let Some(read) = policy else { continue };
        let policies = TablePolicies {
            read: Some(read.into()),
            write: Some("true".into()),
        };
        let database = DatabaseConfig {
            schema: Some(schema.clone()),
            tables: [("todos".to_owned(), policies)].into(),
            ..DatabaseConfig::default()
        };
        config.databases.insert(name.clone(), database);
    }
    let server = Server::bind(config).await?;
    let state = server.state().clone();
    let caps = state.waiting_caps();
    let serving = server.spawn();
    let plan = first_sync::Plan {
        rows: args.first_sync_rows,
        small_rows: args.small_rows,
        pulls: args.pulls,
    };
    let first = first_sync::run(&serving, dir.path(), &plan).await?;
    println!(
        "devices waiting in long-polls while one device writes (server: {} store, loopback; \
         waiting caps {} per server, {} per user)",
        if postgres { "PostgreSQL" } else { "SQLite" },
        caps.per_server,
        caps.per_user
    );
    let mut figures = Vec::new();
    let scenarios = scenarios.iter().zip(&names).zip(policies);
    for ((scenario, name), policy) in scenarios {
        match policy {
            Some(ONE_FILTER) => println!(
                "the same, every device under one row filter (a read policy every row passes, \
                 `{ONE_FILTER}`):"
            ),
            Some(policy) => println!(
                "the same, every device its own user under a per-user row filter (`{policy}`, \
                 every row passes):"
            ),
            None => {}
        }
        let url = serving.url(name);
        let mut figure = live::measure(scenario, &state, serving.local_addr(), name, &url).await?;
        if let (Some(policy), Some(figure)) = (policy, figure.as_object_mut()) {
            figure.insert("read_policy".into(), json!(policy));
        }
        figures.push(figure);
    }
    serving.stop().await?;
    let store = if postgres { "postgres" } else { "sqlite" };
    Ok(json!({ "store": store, "first_sync": first, "live": figures }))
}

/// Microseconds since the Unix epoch: a clock both processes read alike.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The CPU time this process used so far (user and system), from
/// `/proc/self/stat`; zero where it cannot be read.
pub(crate) fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The fields after the command's closing parenthesis: utime and stime are
    // the 12th and 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The median, the 99th percentile and the largest of `values` (sorted here).
pub(crate) fn quantiles(values: &mut [f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), values[values.len() - 1])
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
