//! Devices waiting in long-polls while one device writes.
//!
//! One writer device (a `SyncDb`, on a thread and a runtime of its own, as a
//! device on another machine) commits a row and pushes it every `every`. The
//! waiting devices are simulated in a process of their own (see
//! [`crate::simulator`]). Each answer's cursor says which versions a device
//! has received; the time from a write's push to the arrival of the answer
//! that brings it to a device is its write-to-visible latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sync_runtime::{SyncDb, SyncId};
use sync_server::AppState;
use synced_bench::Todo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{BoxError, WAIT_MS, cpu_time, ms, now_us, quantiles};

/// Pushes of the writer alone, before the devices wait.
const IDLE_PUSHES: usize = 10;

/// How long a scenario may take to set up or finish before it is a failure.
const PATIENCE: Duration = Duration::from_secs(300);

/// A scenario: `waiters` devices waiting while the writer commits `writes`
/// rows, one every `every`.
pub(crate) struct Scenario {
    pub(crate) waiters: usize,
    pub(crate) every: Duration,
    pub(crate) writes: usize,
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

pub(crate) async fn measure(
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
                // The writer alone: its push latency with no one waiting, at
                // the same pace (a machine idle for a second between pushes
                // answers slower than one pushed to every 50 ms).
                let (idle, _) = write(&writer, &state, &name, every, IDLE_PUSHES).await?;
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
