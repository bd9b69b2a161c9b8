//! Syncing through a server on loopback: transfer time, write-to-visible latency
//! and throughput under many clients.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sync_runtime::{FromRow, Remote, SyncDb, SyncId, Synced, params};
use sync_server::{DatabaseConfig, Server, Serving, TablePolicies};
use synced_bench::{Owned, Todo, todo};
use synced_testkit::{ADMIN_KEY, config_sharing, token};
use tokio::task::JoinSet;

use crate::BoxError;

/// What the server benchmark runs.
pub(crate) struct Plan {
    /// Rows sent from device A to device B.
    pub(crate) rows: usize,
    /// Writes whose latency is measured.
    pub(crate) writes: usize,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Rounds of (write, sync) per client.
    pub(crate) rounds: usize,
}

/// A server in this process until dropped, on a free loopback port.
struct Running {
    server: Serving,
}

impl Running {
    /// A new server database with the benchmark table; its URL.
    async fn database(&self, name: &str) -> Result<String, BoxError> {
        let url = self.server.url(name);
        synced_testkit::publish_schema::<Todo>(&url).await?;
        Ok(url)
    }
}

/// A server storing its databases in `dir`, or in the PostgreSQL database
/// `postgres` names (without the row-level security database, which it
/// does not serve yet).
async fn start(dir: &Path, postgres: Option<String>) -> Result<Running, BoxError> {
    std::fs::create_dir_all(dir)?;
    // The row-level security database: users read their own rows.
    let schema = dir.join("owned.json");
    std::fs::write(&schema, serde_json::to_string(&[Owned::SCHEMA])?)?;
    let owned = DatabaseConfig {
        schema: Some(schema),
        tables: [(
            "owned".to_owned(),
            TablePolicies {
                read: Some("owner_id = $user_id".into()),
                write: Some("owner_id = $user_id".into()),
            },
        )]
        .into(),
        ..DatabaseConfig::default()
    };
    // Shared tables: these figures are without row-level security.
    let mut config = config_sharing(
        &dir.join("server"),
        &["transfer", "latency", "watch", "clients", "clients3"],
    );
    if postgres.is_none() {
        config.databases.insert("owned".to_owned(), owned);
    }
    config.storage.postgres = postgres;
    let server = Server::bind(config).await?;
    Ok(Running {
        server: server.spawn(),
    })
}

/// A server in a process of its own: this program, run with `--serve-dir`
/// (see [`serve`]), until dropped.
struct Process {
    _child: tokio::process::Child,
    address: String,
}

impl Process {
    /// Starts one storing its files in `dir`, its databases there too or in
    /// the PostgreSQL database `postgres` names; returns once it listens.
    async fn start(dir: &Path, postgres: Option<&str>) -> Result<Self, BoxError> {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("--serve-dir").arg(dir);
        if let Some(postgres) = postgres {
            command.arg("--serve-postgres").arg(postgres);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no server output")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = lines.next_line().await?.ok_or("the server process ended")?;
        let address = first
            .strip_prefix("listening ")
            .ok_or_else(|| format!("the server process said {first:?}"))?
            .to_owned();
        Ok(Self {
            _child: child,
            address,
        })
    }

    /// The URL of database `name`.
    fn url(&self, name: &str) -> String {
        format!("http://{}/v1/db/{name}", self.address)
    }
}

/// Runs a server (the process [`Process::start`] starts), on PostgreSQL if
/// `postgres` names a database: says `listening <address>` on a line, then
/// serves until its input ends.
pub(crate) async fn serve(dir: &Path, postgres: Option<String>) -> Result<(), BoxError> {
    use tokio::io::AsyncReadExt;
    let running = start(dir, postgres).await?;
    println!("listening {}", running.server.local_addr());
    let mut input = Vec::new();
    tokio::io::stdin().read_to_end(&mut input).await?;
    running.server.stop().await?;
    Ok(())
}

async fn device(path: Option<&Path>, url: &str, user: &str) -> Result<SyncDb, BoxError> {
    Ok(synced_testkit::device::<Todo>(path, url, user).await?)
}

/// Sends `rows` rows from a device A through the server's database
/// `transfer` to a device B (their files in `dir`), prints the figures; the
/// figures, and the seconds it took.
async fn transfer(server: &Running, dir: &Path, rows: usize) -> Result<(Json, f64), BoxError> {
    let url = server.database("transfer").await?;
    let a = device(Some(&dir.join("a.db")), &url, "ann").await?;
    let b = device(Some(&dir.join("b.db")), &url, "ann").await?;
    let written: Vec<Todo> = (0..rows).map(todo).collect();
    let written = Arc::new(written);
    let inserted = Arc::clone(&written);
    a.transaction(move |tx| {
        for row in inserted.iter() {
            tx.insert(row)?;
        }
        Ok::<_, sync_runtime::Error>(())
    })
    .await?;
    let start = Instant::now();
    let sent = a.sync().await?;
    let send = start.elapsed();
    let received = b.sync().await?;
    let total = start.elapsed();
    synced_bench::received_all(&sent, &received)?;
    let seconds = total.as_secs_f64();
    println!(
        "{:<34} {:>10.1} ms   A sends {:.0} ms + B fetches {:.0} ms; {:.0} rows/s, {:.0} column changes/s ({} batches up, {} down)",
        format!("{rows} rows A -> server -> B"),
        seconds * 1e3,
        send.as_secs_f64() * 1e3,
        (total - send).as_secs_f64() * 1e3,
        rows as f64 / seconds,
        sent.changes_sent as f64 / seconds,
        sent.batches,
        received.batches,
    );
    let figures = json!({
        "rows": rows,
        "ms": seconds * 1e3,
        "send_ms": send.as_secs_f64() * 1e3,
        "fetch_ms": (total - send).as_secs_f64() * 1e3,
        "rows_per_s": rows as f64 / seconds,
        "bytes_up": sent.bytes_sent,
        "bytes_down": received.bytes_received,
    });
    Ok((figures, seconds))
}

/// `count` clients at once, each of them syncing with one of the servers'
/// database at `urls` in turn, each writing 20 rows and syncing, `rounds`
/// times: prints the changes pushed and pulled a second; the figures, and
/// how many clients failed.
async fn clients(urls: &[String], count: usize, rounds: usize) -> Result<(Json, usize), BoxError> {
    let per_round = 20;
    let start = Instant::now();
    let mut clients = JoinSet::new();
    for c in 0..count {
        let url = urls[c % urls.len()].clone();
        clients.spawn(async move {
            let db = device(None, &url, &format!("user{c}")).await?;
            let mut sent = 0;
            let mut received = 0;
            for round in 0..rounds {
                let rows: Vec<Todo> = (0..per_round)
                    .map(|i| todo(round * per_round + i))
                    .collect();
                db.transaction(move |tx| {
                    for row in &rows {
                        tx.insert(row)?;
                    }
                    Ok::<_, sync_runtime::Error>(())
                })
                .await?;
                let report = db.sync().await?;
                sent += report.changes_sent;
                received += report.changes_received;
            }
            Ok::<_, BoxError>((sent, received))
        });
    }
    let (mut sent, mut received, mut errors) = (0, 0, 0);
    while let Some(outcome) = clients.join_next().await {
        match outcome {
            Ok(Ok((s, r))) => {
                sent += s;
                received += r;
            }
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("client error: {e}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("client task failed: {e}");
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{:<34} {:>10.1} ms   {:.0} changes/s pushed, {:.0} changes/s pulled, {} errors",
        format!("{count} clients x {rounds} rounds"),
        seconds * 1e3,
        sent as f64 / seconds,
        received as f64 / seconds,
        errors
    );
    let load = json!({
        "clients": count,
        "rounds": rounds,
        "servers": urls.len(),
        "ms": seconds * 1e3,
        "pushed_changes_per_s": sent as f64 / seconds,
        "pulled_changes_per_s": received as f64 / seconds,
        "errors": errors,
    });
    Ok((load, errors))
}

/// The transfer of `rows` rows on a server on SQLite and on one on
/// PostgreSQL (a cluster of its own, started here), side by side; then
/// `throughput` (clients, rounds) pushing through one server process on
/// PostgreSQL and through three sharing it (each a process of its own, as in
/// production).
pub(crate) async fn stores_side_by_side(
    rows: usize,
    throughput: (usize, usize),
) -> Result<Json, BoxError> {
    println!("\nthe same through a server on SQLite and one on PostgreSQL");
    let dir = tempfile::tempdir()?;
    let sqlite = start(&dir.path().join("sqlite"), None).await?;
    let (on_sqlite, sqlite_s) = transfer(&sqlite, &dir.path().join("sqlite"), rows).await?;
    drop(sqlite);
    // Pushes through a server process on SQLite, as through those on
    // PostgreSQL below.
    let on_sqlite_process = Process::start(&dir.path().join("sqlite-process"), None).await?;
    let url = on_sqlite_process.url("clients");
    synced_testkit::publish_schema::<Todo>(&url).await?;
    let cluster = synced_testkit::postgres::Postgres::start()?;
    let postgres = start(
        &dir.path().join("postgres"),
        Some(cluster.connection_string("postgres")),
    )
    .await?;
    let (on_postgres, postgres_s) = transfer(&postgres, &dir.path().join("postgres"), rows).await?;
    let ratio = postgres_s / sqlite_s;
    println!("{:<34} {ratio:>10.2}x   PostgreSQL / SQLite", "transfer");

    // The databases the server processes serve, made here.
    postgres.database("clients").await?;
    postgres.database("clients3").await?;
    drop(postgres);
    println!(
        "pushes through 1 server process on SQLite, 1 on PostgreSQL, then 3 sharing it \
         (each a process of its own)"
    );
    let (sqlite_one, sqlite_errors) = clients(&[url], throughput.0, throughput.1).await?;
    drop(on_sqlite_process);
    let connection = cluster.connection_string("postgres");
    let one_server = [Process::start(&dir.path().join("process0"), Some(&connection)).await?];
    let url = one_server[0].url("clients");
    let (one, one_errors) = clients(&[url], throughput.0, throughput.1).await?;
    drop(one_server);
    let mut servers = Vec::new();
    for i in 0..3 {
        let home = dir.path().join(format!("process{i}"));
        servers.push(Process::start(&home, Some(&connection)).await?);
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url("clients3")).collect();
    let (three, three_errors) = clients(&urls, throughput.0, throughput.1).await?;
    drop(servers);
    let errors = sqlite_errors + one_errors + three_errors;
    if errors > 0 {
        return Err(format!("{errors} clients failed").into());
    }
    Ok(json!({
        "sqlite": on_sqlite,
        "postgres": on_postgres,
        "ratio": ratio,
        "sqlite_clients_1_server": sqlite_one,
        "clients_1_server": one,
        "clients_3_servers": three,
    }))
}

/// The median and the 99th percentile of `took`, in milliseconds.
fn median_p99_ms(took: &mut [Duration]) -> (f64, f64) {
    took.sort();
    let quantile = |q: f64| {
        let index = ((took.len() as f64 - 1.0) * q).round() as usize;
        took[index].as_secs_f64() * 1e3
    };
    (quantile(0.5), quantile(0.99))
}

/// The result of the watched query.
#[derive(FromRow, Debug, Clone, PartialEq)]
struct Count {
    n: i64,
}

/// A live query on a device that syncs by long-poll: from the push that
/// commits a change on the server (its start: the server commits during it)
/// to the device's updated result, over `changes` changes.
async fn watch_latency(server: &Running, changes: usize) -> Result<Json, BoxError> {
    let url = server.database("watch").await?;
    let a = device(None, &url, "ann").await?;
    let watching = device(None, &url, "ann").await?;
    let _sync = watching.auto_sync(Duration::from_secs(1));
    a.sync().await?;
    watching.sync().await?;
    let mut watch = watching.watch_read::<Count>("SELECT count(*) AS n FROM todos", params![]);
    let before = watch.next().await?[0].n;
    let mut took = Vec::with_capacity(changes);
    for i in 0..changes {
        a.insert(&todo(i)).await?;
        let expected = before + i as i64 + 1;
        let start = Instant::now();
        let seen = async {
            loop {
                if watch.next().await?[0].n == expected {
                    return Ok::<_, BoxError>(Instant::now());
                }
            }
        };
        let (pushed, seen) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(a.sync(), seen)
        })
        .await
        .map_err(|_| format!("change {i} not in the live result after 10 s"))?;
        pushed?;
        took.push(seen? - start);
    }
    let (median, p99) = median_p99_ms(&mut took);
    println!(
        "{:<34} {:>10.2} ms   median; p99 {p99:.2} ms ({changes} changes)",
        "server commit -> live result", median
    );
    Ok(json!({ "changes": changes, "median_ms": median, "p99_ms": p99 }))
}

/// Runs the three measurements; prints them and returns their JSON.
pub(crate) async fn run(plan: &Plan) -> Result<Json, BoxError> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), None).await?;
    println!("\nsync through a server on loopback (HTTP, SQLite store, JWT auth)");

    // 1. Rows from A to B: A's sync sends them, B's sync fetches them.
    let (transfer, _) = transfer(&server, dir.path(), plan.rows).await?;

    // 2. Write-to-visible latency: A syncs automatically, B waits in a long-poll.
    let url = server.database("latency").await?;
    let a = device(None, &url, "ann").await?;
    let b = device(None, &url, "ann").await?;
    let _a_sync = a.auto_sync(Duration::from_secs(1));
    let _b_sync = b.auto_sync(Duration::from_secs(1));
    let mut visible = b.subscribe();
    // Let both loops settle (B's first long-poll is waiting once nothing is left).
    a.sync().await?;
    b.sync().await?;
    let mut latencies = Vec::with_capacity(plan.writes);
    for i in 0..plan.writes {
        let row = todo(i);
        a.insert(&row).await?;
        let written = Instant::now();
        let deadline = written + Duration::from_secs(10);
        loop {
            if b.get::<Todo>(&row.id).await?.is_some() {
                break;
            }
            tokio::time::timeout_at(deadline.into(), visible.changed())
                .await
                .map_err(|_| format!("write {i} not visible on B after 10 s"))??;
        }
        latencies.push(written.elapsed());
    }
    let max = latencies
        .iter()
        .max()
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let (median, p99) = median_p99_ms(&mut latencies);
    println!(
        "{:<34} {:>10.2} ms   median; p99 {:.2} ms, max {:.2} ms ({} writes)",
        "write on A -> visible on B", median, p99, max, plan.writes
    );
    let latency = json!({ "writes": plan.writes, "median_ms": median, "p99_ms": p99 });
    drop((a, b));
    let watch = watch_latency(&server, plan.writes).await?;

    // 3. Many clients at once, each writing and syncing in rounds: every client
    // receives what all the others write (one shared list, no row-level security).
    let url = server.database("clients").await?;
    let (load, errors) = clients(&[url], plan.clients, plan.rounds).await?;
    let security = row_level_security(&server, dir.path(), plan.rows).await?;
    drop(server);
    if errors > 0 {
        return Err(format!("{errors} of {} clients failed", plan.clients).into());
    }
    Ok(json!({
        "transfer": transfer,
        "latency": latency,
        "watch": watch,
        "clients": load,
        "rls": security,
    }))
}

/// A user's first pull of a table of which it may read a tenth, against an
/// admin's pull of the whole table.
async fn row_level_security(server: &Running, dir: &Path, rows: usize) -> Result<Json, BoxError> {
    let url = server.server.url("owned");
    let open = |name: &str, remote: Remote| {
        let path = dir.join(format!("{name}.db"));
        async move {
            let db = SyncDb::open(path).await?.with_remote(remote);
            db.register::<Owned>().await?;
            Ok::<_, BoxError>(db)
        }
    };
    let admin = open("rls-admin", Remote::new(&url).api_key(ADMIN_KEY)).await?;
    let owned: Vec<Owned> = (0..rows)
        .map(|i| Owned {
            id: SyncId::new(),
            owner_id: format!("user{}", i % 10),
            title: format!("row {i}"),
            done: i % 3 == 0,
        })
        .collect();
    admin
        .transaction(move |tx| {
            for row in &owned {
                tx.insert(row)?;
            }
            Ok::<_, sync_runtime::Error>(())
        })
        .await?;
    admin.sync().await?;

    let timed = |db: SyncDb| async move {
        let start = Instant::now();
        let report = db.sync().await?;
        Ok::<_, BoxError>((start.elapsed().as_secs_f64(), report.changes_received))
    };
    // The user's pull first: it gets no cache the other pull warmed.
    let user = open("rls-user", Remote::new(&url).bearer_token(token("user0"))).await?;
    let (user_s, user_changes) = timed(user).await?;
    let everything = open("rls-all", Remote::new(&url).api_key(ADMIN_KEY)).await?;
    let (all_s, all_changes) = timed(everything).await?;
    println!(
        "{:<34} {:>10.1} ms   {} changes; the whole table: {:.1} ms, {} changes; ratio {:.2}",
        format!("pull of 10% of {rows} rows (RLS)"),
        user_s * 1e3,
        user_changes,
        all_s * 1e3,
        all_changes,
        user_s / all_s
    );
    Ok(json!({
        "rows": rows,
        "user_ms": user_s * 1e3,
        "user_changes": user_changes,
        "all_ms": all_s * 1e3,
        "all_changes": all_changes,
        "ratio": user_s / all_s,
    }))
}
