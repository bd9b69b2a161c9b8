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

/// The CPU time this process used so far (user and system), from
/// `/proc/self/stat`; zero where it cannot be read.
fn cpu_time() -> Duration {
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
    // The writer device runs on a thread and a runtime of its own, as a device
    // on another machine would: it is not queued behind the server's tasks.
    let (idle_done, idle_pushes) = tokio::sync::oneshot::channel();
    let (go, start_writing) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let (state, name, url) = (state.clone(), name.to_owned(), url.to_owned());
        let (every, writes) = (scenario.every, scenario.writes);
        std::thread::spawn(move || -> Result<_, BoxError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let writer = synced_testkit::device::<Todo>(None, &url, "writer").await?;
                writer.sync().await?;
                // The writer alone: its push latency with no one waiting.
                let (idle, _) = write(&writer, &state, &name, every.min(ms(50)), 20).await?;
                let _ = idle_done.send(idle);
                start_writing.await?;
                write(&writer, &state, &name, every, writes).await
            })
        })
    };
    let mut idle_ms: Vec<f64> = idle_pushes
        .await?
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let (idle_push, ..) = quantiles(&mut idle_ms);

    let from = version(state, name).await?;
    let until = from + scenario.writes as i64;
    let mut simulator = tokio::process::Command::new(std::env::current_exe()?)
        .args(["simulate", "--addr", &addr.to_string(), "--database", name])
        .args(["--devices", &scenario.waiters.to_string()])
        .args(["--from", &from.to_string(), "--until", &until.to_string()])
        .stdin(Stdio::piped())
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
    let mut settled_signal = simulator.stdin.take().ok_or("no simulator input")?;
    settled_signal.write_all(b"settled\n").await?;
    drop(settled_signal);

    let cpu_before = cpu_time();
    let _ = go.send(());
    let (pushes, written) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the writer panicked")??;
    let status = tokio::time::timeout(PATIENCE, simulator.wait()).await??;
    let server_cpu = cpu_time().saturating_sub(cpu_before);
    let text = collected.await??;
    if !status.success() {
        return Err(format!("the simulator failed: {status}").into());
    }

    // Each device's answers: the version it reached, when it arrived and
    // when the simulator had read it.
    let mut answers: HashMap<usize, Vec<(i64, i64, i64)>> = HashMap::new();
    let mut errors = 0u64;
    let mut simulator_cpu_ms = 0u64;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("answer") => {
                let mut number =
                    || -> Result<i64, BoxError> { Ok(fields.next().ok_or("short line")?.parse()?) };
                let (device, version) = (number()?, number()?);
                let (arrived, read) = (number()?, number()?);
                answers
                    .entry(device as usize)
                    .or_default()
                    .push((version, arrived, read));
            }
            Some("errors") => errors = fields.next().ok_or("short line")?.parse()?,
            Some("cpu_ms") => simulator_cpu_ms = fields.next().ok_or("short line")?.parse()?,
            _ => {}
        }
    }
    // Each write's latency to each device: until the answer that brought it
    // arrived, and until the simulator had read it.
    let mut arrived_ms = Vec::with_capacity(scenario.waiters * scenario.writes);
    let mut read_ms = Vec::with_capacity(scenario.waiters * scenario.writes);
    let mut missing = 0usize;
    for device in 0..scenario.waiters {
        let reached = answers.get(&device).map_or(&[][..], Vec::as_slice);
        for &(version, at) in &written {
            match reached.iter().find(|(got, ..)| *got >= version) {
                Some((_, arrived, read)) => {
                    arrived_ms.push((arrived - at) as f64 / 1e3);
                    read_ms.push((read - at) as f64 / 1e3);
                }
                None => missing += 1,
            }
        }
    }
    let (p50, p99, max) = quantiles(&mut arrived_ms);
    let (read_p50, read_p99, _) = quantiles(&mut read_ms);
    let latencies = arrived_ms;
    let mut push_ms: Vec<f64> = pushes.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let (push, ..) = quantiles(&mut push_ms);
    let deliveries = latencies.len().max(1) as f64;
    let server_us = server_cpu.as_secs_f64() * 1e6 / deliveries;
    let simulator_us = simulator_cpu_ms as f64 * 1e3 / deliveries;
    println!(
        "{:>6} devices, a row every {:>5} ms: write -> visible p50 {p50:.1} ms, p99 {p99:.1} ms, \
         max {max:.1} ms over {} deliveries (read by the simulator: p50 {read_p50:.1} ms, p99 \
         {read_p99:.1} ms); {missing} missing, {errors} errors; writer's push median {push:.2} ms \
         vs {idle_push:.2} ms with no one waiting ({:.2}x); CPU per delivery: server \
         {server_us:.0} µs, simulator {simulator_us:.0} µs; all waiting after {:.1} s",
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
        "read_p50_ms": read_p50,
        "read_p99_ms": read_p99,
        "missing": missing,
        "errors": errors,
        "push_ms": push,
        "idle_push_ms": idle_push,
        "push_ratio": push / idle_push,
        "settle_s": settled.as_secs_f64(),
        "server_cpu_us_per_delivery": server_us,
        "simulator_cpu_us_per_delivery": simulator_us,
    }))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The simulated devices: prints `answer <device> <version> <arrived µs>
/// <read µs>` for every answer that moved a device's cursor, then `errors <n>`
/// and `cpu_ms <n>` (the CPU time used once every device waited).
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
    // The CPU used so far when the parent says every device waits.
    let settled_cpu = tokio::spawn(async {
        let mut line = String::new();
        let mut input = BufReader::new(tokio::io::stdin());
        let _ = input.read_line(&mut line).await;
        cpu_time()
    });
    let mut out = String::new();
    let mut errors = 0;
    while let Some(done) = running.join_next().await {
        match done? {
            (device, Ok(answers)) => {
                for Received {
                    version,
                    arrived,
                    read,
                } in answers
                {
                    out.push_str(&format!("answer {device} {version} {arrived} {read}\n"));
                }
            }
            (device, Err(e)) => {
                errors += 1;
                eprintln!("device {device}: {e}");
            }
        }
    }
    out.push_str(&format!("errors {errors}\n"));
    // What the devices used once connected and waiting (roughly: from when
    // the first one ended).
    let cpu = cpu_time().saturating_sub(settled_cpu.await?);
    out.push_str(&format!("cpu_ms {}\n", cpu.as_millis()));
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

/// One answer a device received: the version it brought the device to, when
/// it reached the device's socket (the kernel's receive time) and when the
/// simulator had read it (both in µs since the epoch).
struct Received {
    version: i64,
    arrived: i64,
    read: i64,
}

impl Request {
    /// Long-polls from version `from` until the device has received `until`,
    /// on one connection: each answer that moved its cursor.
    async fn long_poll(&self, from: i64, until: i64) -> Result<Vec<Received>, BoxError> {
        use std::io::Write as _;
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        )?;
        let mut cursor = Cursor::at(from);
        let mut received = Vec::new();
        let (mut request, mut buffer) = (Vec::with_capacity(1024), Vec::with_capacity(4096));
        while cursor.version() < until {
            request.clear();
            write!(
                request,
                "GET {}?cursor={}&wait={WAIT_MS} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
                 {TABLES_HEADER}: {}\r\n{SITE_HEADER}: {}\r\n\r\n",
                self.path,
                percent(&cursor.to_string()),
                self.addr,
                self.token,
                self.tables,
                self.site,
            )?;
            stream.write_all(&request).await?;
            let (status, body, arrived) = response(&stream, &mut buffer).await?;
            let read = now_us();
            if status != 200 {
                return Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
                .into());
            }
            let answer = PullResponse::decode(&body)?;
            if answer.next.version() > cursor.version() {
                received.push(Received {
                    version: answer.next.version(),
                    arrived: arrived.unwrap_or(read),
                    read,
                });
            }
            cursor = answer.next;
        }
        Ok(received)
    }
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`, through
/// `buffer` (which keeps what follows it): its status, its body, and when its
/// last part reached the socket (if the kernel said).
async fn response(
    stream: &TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>, Option<i64>), BoxError> {
    let mut arrived = None;
    let mut chunk = vec![0; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end])?;
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .ok_or("no status line")?
                .parse()?;
            let length: usize = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(Ok(0), |(_, value)| value.trim().parse())?;
            let total = end + 4 + length;
            if buffer.len() >= total {
                let body = buffer[end + 4..total].to_vec();
                buffer.drain(..total);
                return Ok((status, body, arrived));
            }
        }
        stream.readable().await?;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            receive(std::os::fd::AsRawFd::as_raw_fd(stream), &mut chunk)
        });
        match read {
            Ok((0, _)) => return Err("the connection closed".into()),
            Ok((n, at)) => {
                buffer.extend_from_slice(&chunk[..n]);
                arrived = at.or(arrived);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recvmsg` of what `fd` holds: the bytes read, and the kernel's receive
/// time of the data (µs since the epoch) when it gives one.
fn receive(fd: std::os::fd::RawFd, into: &mut [u8]) -> std::io::Result<(usize, Option<i64>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use nix::sys::time::TimeValLike;
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut parts = [std::io::IoSliceMut::new(into)];
    let message = recvmsg::<()>(fd, &mut parts, Some(&mut space), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let at = message
        .cmsgs()
        .map_err(std::io::Error::from)?
        .find_map(|control| match control {
            ControlMessageOwned::ScmTimestampns(at) => Some(at.num_microseconds()),
            _ => None,
        });
    Ok((message.bytes, at))
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
