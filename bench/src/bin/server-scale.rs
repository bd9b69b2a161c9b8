//! The sync server under load, measured from outside: many devices waiting in
//! long-polls while one device writes.
//!
//! ```text
//! cargo run --release -p synced-bench --bin server-scale
//! cargo run --release -p synced-bench --bin server-scale -- --waiters 2000 --writes 10
//! ```
//!
//! The server runs in this process, with its SQLite store, on a loopback port;
//! one writer device (a `SyncDb`) in this process commits a row and pushes it
//! every `--every-ms`. The waiting devices are simulated in a process of their
//! own (this program, run as `simulate`): each holds one HTTP/1.1 connection
//! and long-polls on it with raw requests, as a device of its own user, without
//! a replica of its own, so that 10,000 of them fit beside the server. Each
//! answer's cursor says which versions the device has received; the time from
//! a write's push to the answer that brings it to a device is its
//! write-to-visible latency. The last line of output is one JSON object with
//! every figure and the parameters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::{Value as Json, json};
use sync_runtime::protocol::{PullResponse, SITE_HEADER, TABLES_HEADER, tables_header};
use sync_runtime::{Cursor, SiteId, SyncDb, SyncId, Synced};
use sync_server::{AppState, Server};
use synced_bench::Todo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// How long a scenario may take to set up or finish before it is a failure.
const PATIENCE: Duration = Duration::from_secs(300);

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
        return runtime.block_on(simulate(addr, &database, devices, from, until));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    println!("{report}");
    Ok(())
}

/// A scenario: `waiters` devices waiting while the writer commits `writes`
/// rows, one every `every`.
struct Scenario {
    waiters: usize,
    every: Duration,
    writes: usize,
}

async fn run(args: &Args) -> Result<Json, BoxError> {
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
    ];
    let names: Vec<String> = (0..scenarios.len()).map(|i| format!("live-{i}")).collect();
    let shared: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = synced_testkit::config_sharing(&dir.path().join("server"), &shared);
    let server = Server::bind(config).await?;
    let state = server.state().clone();
    let caps = state.waiting_caps();
    let serving = server.spawn();
    println!(
        "devices waiting in long-polls while one device writes (server: SQLite store, loopback; \
         waiting caps {} per server, {} per user)",
        caps.per_server, caps.per_user
    );
    let mut figures = Vec::new();
    for (scenario, name) in scenarios.iter().zip(&names) {
        let url = serving.url(name);
        figures.push(measure(scenario, &state, serving.local_addr(), name, &url).await?);
    }
    serving.stop().await?;
    Ok(json!({ "live": figures }))
}

/// The database's version now.
async fn version(state: &AppState, name: &str) -> Result<i64, BoxError> {
    let db = state
        .store()
        .database(name)
        .await?
        .ok_or("the database is missing")?;
    Ok(*db.subscribe().borrow())
}

/// Microseconds since the Unix epoch: a clock both processes read alike.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Commits and pushes one row every `every`, `writes` times; the push
/// latencies, and the version and time each push started at.
async fn write(
    writer: &SyncDb,
    state: &AppState,
    name: &str,
    every: Duration,
    writes: usize,
) -> Result<(Vec<Duration>, Vec<(i64, i64)>), BoxError> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pushes = Vec::with_capacity(writes);
    let mut written = Vec::with_capacity(writes);
    for i in 0..writes {
        ticks.tick().await;
        writer
            .insert(&Todo {
                id: SyncId::new(),
                title: format!("row {i}"),
                done: false,
                note: None,
                score: i as f64,
            })
            .await?;
        let at = now_us();
        let start = Instant::now();
        writer.send_changes().await?;
        pushes.push(start.elapsed());
        written.push((version(state, name).await?, at));
    }
    Ok((pushes, written))
}

/// The median, the 99th percentile and the largest of `values` (sorted here).
fn quantiles(values: &mut [f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), values[values.len() - 1])
}

async fn measure(
    scenario: &Scenario,
    state: &AppState,
    addr: SocketAddr,
    name: &str,
    url: &str,
) -> Result<Json, BoxError> {
    synced_testkit::publish_schema::<Todo>(url).await?;
    let writer = synced_testkit::device::<Todo>(None, url, "writer").await?;
    writer.sync().await?;

    // The writer alone: its push latency with no one waiting.
    let (mut idle, _) = write(&writer, state, name, scenario.every.min(ms(50)), 20).await?;
    let mut idle_ms: Vec<f64> = idle.iter_mut().map(|d| d.as_secs_f64() * 1e3).collect();
    let (idle_push, ..) = quantiles(&mut idle_ms);

    let from = version(state, name).await?;
    let until = from + scenario.writes as i64;
    let mut simulator = tokio::process::Command::new(std::env::current_exe()?)
        .args(["simulate", "--addr", &addr.to_string(), "--database", name])
        .args(["--devices", &scenario.waiters.to_string()])
        .args(["--from", &from.to_string(), "--until", &until.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut output = simulator.stdout.take().ok_or("no simulator output")?;
    let collected = tokio::spawn(async move {
        let mut text = String::new();
        output.read_to_string(&mut text).await.map(|_| text)
    });
    let settle = Instant::now();
    while state.waiting_pulls() < scenario.waiters {
        if settle.elapsed() > PATIENCE {
            return Err(format!(
                "only {} of {} devices waiting after {PATIENCE:?}",
                state.waiting_pulls(),
                scenario.waiters
            )
            .into());
        }
        if let Some(status) = simulator.try_wait()? {
            return Err(format!("the simulator ended early: {status}").into());
        }
        tokio::time::sleep(ms(20)).await;
    }
    let settled = settle.elapsed();

    let (pushes, written) = write(&writer, state, name, scenario.every, scenario.writes).await?;
    let status = tokio::time::timeout(PATIENCE, simulator.wait()).await??;
    let text = collected.await??;
    if !status.success() {
        return Err(format!("the simulator failed: {status}").into());
    }

    // Each device's answers: the version it reached, and when.
    let mut answers: HashMap<usize, Vec<(i64, i64)>> = HashMap::new();
    let mut errors = 0u64;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("answer") => {
                let mut number =
                    || -> Result<i64, BoxError> { Ok(fields.next().ok_or("short line")?.parse()?) };
                let (device, version, at) = (number()?, number()?, number()?);
                answers
                    .entry(device as usize)
                    .or_default()
                    .push((version, at));
            }
            Some("errors") => errors = fields.next().ok_or("short line")?.parse()?,
            _ => {}
        }
    }
    let mut latencies = Vec::with_capacity(scenario.waiters * scenario.writes);
    let mut missing = 0usize;
    for device in 0..scenario.waiters {
        let reached = answers.get(&device).map_or(&[][..], Vec::as_slice);
        for &(version, at) in &written {
            match reached.iter().find(|(got, _)| *got >= version) {
                Some((_, received)) => latencies.push((received - at) as f64 / 1e3),
                None => missing += 1,
            }
        }
    }
    let (p50, p99, max) = quantiles(&mut latencies);
    let mut push_ms: Vec<f64> = pushes.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let (push, ..) = quantiles(&mut push_ms);
    println!(
        "{:>6} devices, a row every {:>5} ms: write -> visible p50 {p50:.1} ms, p99 {p99:.1} ms, \
         max {max:.1} ms over {} deliveries; {missing} missing, {errors} errors; writer's push \
         median {push:.2} ms vs {idle_push:.2} ms with no one waiting ({:.2}x); all waiting after \
         {:.1} s",
        scenario.waiters,
        scenario.every.as_millis(),
        latencies.len(),
        push / idle_push,
        settled.as_secs_f64(),
    );
    if missing > 0 || errors > 0 {
        return Err(format!("{missing} deliveries missing, {errors} errors").into());
    }
    Ok(json!({
        "waiters": scenario.waiters,
        "every_ms": scenario.every.as_millis() as u64,
        "writes": scenario.writes,
        "wait_ms": WAIT_MS,
        "deliveries": latencies.len(),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "missing": missing,
        "errors": errors,
        "push_ms": push,
        "idle_push_ms": idle_push,
        "push_ratio": push / idle_push,
        "settle_s": settled.as_secs_f64(),
    }))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The simulated devices: prints `answer <device> <version> <µs>` for every
/// answer that moved a device's cursor, then `errors <n>`.
async fn simulate(
    addr: SocketAddr,
    database: &str,
    devices: usize,
    from: i64,
    until: i64,
) -> Result<(), BoxError> {
    sync_server::waiting::raise_open_files_limit();
    let tables = tables_header(std::slice::from_ref(Todo::SCHEMA));
    let mut running = tokio::task::JoinSet::new();
    for device in 0..devices {
        let request = Request {
            addr,
            path: format!("/v1/db/{database}/pull"),
            token: synced_testkit::token(&format!("device-{device}")),
            site: SiteId::from_bytes(*uuid::Uuid::new_v4().as_bytes()),
            tables: tables.clone(),
        };
        running.spawn(async move { (device, request.long_poll(from, until).await) });
        // Connections opened in steps, within the server's accept backlog.
        if device % 256 == 255 {
            tokio::time::sleep(ms(5)).await;
        }
    }
    let mut out = String::new();
    let mut errors = 0;
    while let Some(done) = running.join_next().await {
        match done? {
            (device, Ok(answers)) => {
                for (version, at) in answers {
                    out.push_str(&format!("answer {device} {version} {at}\n"));
                }
            }
            (device, Err(e)) => {
                errors += 1;
                eprintln!("device {device}: {e}");
            }
        }
    }
    out.push_str(&format!("errors {errors}\n"));
    let mut stdout = tokio::io::stdout();
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// What one simulated device sends.
struct Request {
    addr: SocketAddr,
    path: String,
    token: String,
    site: SiteId,
    tables: String,
}

impl Request {
    /// Long-polls from version `from` until the device has received `until`,
    /// on one connection; the version each answer brought and when.
    async fn long_poll(&self, from: i64, until: i64) -> Result<Vec<(i64, i64)>, BoxError> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut cursor = Cursor::at(from);
        let mut answers = Vec::new();
        while cursor.version() < until {
            let request = format!(
                "GET {}?cursor={}&wait={WAIT_MS} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
                 {TABLES_HEADER}: {}\r\n{SITE_HEADER}: {}\r\n\r\n",
                self.path,
                percent(&cursor.to_string()),
                self.addr,
                self.token,
                self.tables,
                self.site,
            );
            write.write_all(request.as_bytes()).await?;
            let (status, body) = response(&mut read).await?;
            let at = now_us();
            if status != 200 {
                return Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
                .into());
            }
            let answer = PullResponse::decode(&body)?;
            if answer.next.version() > cursor.version() {
                answers.push((answer.next.version(), at));
            }
            cursor = answer.next;
        }
        Ok(answers)
    }
}

/// Reads one HTTP/1.1 response with a `content-length`: its status and body.
async fn response<R: AsyncBufReadExt + Unpin>(read: &mut R) -> Result<(u16, Vec<u8>), BoxError> {
    let mut line = String::new();
    read.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .ok_or("the connection closed")?
        .parse()?;
    let mut length = 0usize;
    loop {
        line.clear();
        read.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body).await?;
    Ok((status, body))
}

/// `text` with every byte but letters, digits, `-`, `.` and `_` percent-encoded.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
