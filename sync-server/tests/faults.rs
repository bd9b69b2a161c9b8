//! Fault injection: the server process killed (-9) in the middle of pushes and
//! pulls and restarted, a proxy that cuts requests and cuts or damages responses,
//! a server that answers 500 for a while. Every time: nothing lost, nothing
//! duplicated, and the devices and the server end up with the same rows.
//!
//! Random choices (fault kinds, cut positions, kill moments, writes) come from one
//! seed, printed at the start of each test; `FAULTS_SEED=<n>` replays them (the
//! interleaving of the tasks still varies from run to run).

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ADMIN_KEY, DB, PATIENCE, SECRET, Todo, spawn_server, user_token};
use sync_runtime::{BatchLimits, Error, Remote, SyncDb, SyncId, SyncOptions, Synced};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// The bound of a whole test.
const LIMIT: Duration = Duration::from_secs(120);
/// Rows per batch, each way: small, so that a sync takes several requests and a
/// fault can land between two of them.
const BATCH_ROWS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_loses_no_acknowledged_change() {
    within(async {
        let mut rng = Rng::new(seed("killed_server_loses_no_acknowledged_change"));
        let cloud = Cloud::start(rng.next()).await;
        let mut devices = Vec::new();
        for name in ["phone", "laptop", "tablet"] {
            devices.push(cloud.device(name, rng.next()).await);
        }
        kill_while_syncing(cloud, rng, devices, 20, |device| {
            Box::pin(async move {
                device.write().await;
                if device.rng.below(2) == 0 {
                    device.sync(&retrying(2)).await;
                }
            })
        })
        .await;
    })
    .await;
}

/// A read policy that lets every row through, yet filters: each pull is
/// read on a read connection, and the rows it sends are marked as held in a
/// write of their own before it is answered. (Policies need the table: the
/// schema is published at the start.)
const EVERY_ROW_FILTERED: &str = "schema = \"todo.schema.json\"\n\
                                  [databases.todo.tables.todos]\n\
                                  read = \"title IS NOT NULL\"\nwrite = \"true\"\n";

/// The server killed (-9) in the middle of filtered pulls, and of a large
/// first push merged in sets of rows (a device with thousands of rows in each
/// batch): nothing acknowledged is lost, and everything converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_mid_filtered_pull_or_large_push_loses_nothing() {
    /// Rows the large device writes before each of its syncs, and sends a
    /// batch at a time.
    const BULK: usize = 3_000;
    const BULK_BATCH: usize = 1_000;
    within(async {
        let mut rng = Rng::new(seed(
            "killed_server_mid_filtered_pull_or_large_push_loses_nothing",
        ));
        let cloud = Cloud::start_with(rng.next(), EVERY_ROW_FILTERED).await;
        let mut devices = Vec::new();
        for name in ["phone", "laptop"] {
            devices.push(cloud.device(name, rng.next()).await);
        }
        devices.push(cloud.device_with("desktop", rng.next(), BULK_BATCH).await);
        kill_while_syncing(cloud, rng, devices, 8, |device| {
            Box::pin(async move {
                if device.name == "desktop" {
                    device.write_many(BULK).await;
                } else {
                    device.write().await;
                }
                device.sync(&retrying(2)).await;
            })
        })
        .await;
    })
    .await;
}

/// What a device does again and again while the server is killed.
type Step = fn(&mut Device) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

/// Each device runs `step` over and over, with short random pauses, on a
/// task of its own until the flag returned is set; each task gives its
/// device back.
fn run_devices(devices: Vec<Device>, step: Step) -> (Arc<AtomicBool>, Vec<JoinHandle<Device>>) {
    let done = Arc::new(AtomicBool::new(false));
    let writers = devices
        .into_iter()
        .map(|mut device| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    step(&mut device).await;
                    sleep(Duration::from_millis(device.rng.below(3) as u64)).await;
                }
                device
            })
        })
        .collect();
    (done, writers)
}

/// The devices run `step` over and over, with short random pauses, while the
/// server is killed `kills` times, each a few milliseconds into a push or a
/// pull (in turn): before, during or after its commit. After each kill, what
/// the server acknowledged is in its file; at the end, with the network
/// healthy, the devices and the server hold every write.
async fn kill_while_syncing(
    mut cloud: Cloud,
    mut rng: Rng,
    devices: Vec<Device>,
    kills: usize,
    step: Step,
) {
    let ledgers: Vec<_> = devices.iter().map(|d| Arc::clone(&d.ledger)).collect();
    let (done, writers) = run_devices(devices, step);

    for kill in 0..kills {
        let kind = if kill % 2 == 0 {
            Kind::Push
        } else {
            Kind::Pull
        };
        sleep(Duration::from_millis(rng.below(20) as u64)).await;
        timeout(PATIENCE, cloud.proxy.until_in_flight(kind))
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} came for {PATIENCE:?}"));
        sleep(Duration::from_millis(rng.below(4) as u64)).await;
        cloud.proxy.set_upstream(None);
        cloud.server.kill().await;

        // What the server acknowledged before it died is in its file.
        let on_server: HashSet<SyncId> = rows_in(&cloud.server.database_file())
            .await
            .into_iter()
            .map(|row| row.id)
            .collect();
        for ledger in &ledgers {
            ledger
                .lock()
                .unwrap()
                .check(&on_server, &format!("after kill {kill}"));
        }

        cloud.server.restart().await;
        cloud.proxy.set_upstream(Some(cloud.server.addr));
    }
    done.store(true, Ordering::Relaxed);
    let mut devices = Vec::new();
    for writer in writers {
        devices.push(writer.await.unwrap());
    }

    let interrupted = cloud.proxy.interrupted();
    eprintln!(
        "{kills} kills; requests cut by them (push, pull, other): {interrupted:?}; \
         failed syncs: {:?}; rows: {}",
        devices.iter().map(|d| d.failures).collect::<Vec<_>>(),
        devices.iter().map(|d| d.written.len()).sum::<usize>()
    );
    assert!(
        interrupted[Kind::Push as usize] > 0 && interrupted[Kind::Pull as usize] > 0,
        "no kill landed in the middle of a push and of a pull: {interrupted:?}"
    );

    converge(&mut devices).await;
    let server_rows = cloud.stop().await;
    let on_server = server_rows.iter().map(|row| row.id).collect();
    for device in &devices {
        device
            .ledger
            .lock()
            .unwrap()
            .check(&on_server, "at the end");
    }
    assert_converged(&devices, &server_rows).await;
}

/// Three server processes sharing one PostgreSQL database, a device talking
/// to each (through a proxy of its own), and the processes killed (-9) one
/// after another in the middle of a push, each started again: nothing
/// acknowledged is lost (every acknowledged write is in PostgreSQL right after
/// each kill), and every device converges, whichever process it talks to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgresql_one_killed_mid_push_lose_nothing() {
    const KILLS: usize = 6;
    within(async {
        let mut rng = Rng::new(seed(
            "three_servers_on_postgresql_one_killed_mid_push_lose_nothing",
        ));
        let cluster = synced_testkit::postgres::Postgres::start().expect("a cluster starts");
        let postgres = cluster.connection_string("postgres");
        let storage = format!("\n[storage]\npostgres = {postgres:?}\n");
        let dir = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..3 {
            let home = dir.path().join(format!("server{i}"));
            std::fs::create_dir_all(&home).unwrap();
            let server = ServerProcess::start(&home, &storage).await;
            proxies.push(Proxy::start(server.addr, rng.next()).await);
            servers.push(server);
        }
        let admin = SyncDb::open_in_memory()
            .await
            .unwrap()
            .with_remote(Remote::new(servers[0].url()).api_key(ADMIN_KEY));
        admin.register::<Todo>().await.unwrap();
        admin.publish_schema().await.unwrap();
        let mut devices = Vec::new();
        for (i, name) in ["phone", "laptop", "tablet"].into_iter().enumerate() {
            devices.push(Device::open(dir.path(), &proxies[i], name, rng.next(), BATCH_ROWS).await);
        }
        let ledgers: Vec<_> = devices.iter().map(|d| Arc::clone(&d.ledger)).collect();
        let (done, writers) = run_devices(devices, |device| {
            Box::pin(async move {
                device.write().await;
                device.sync(&retrying(2)).await;
            })
        });
        for kill in 0..KILLS {
            let i = kill % servers.len();
            sleep(Duration::from_millis(rng.below(20) as u64)).await;
            timeout(PATIENCE, proxies[i].until_in_flight(Kind::Push))
                .await
                .unwrap_or_else(|_| panic!("no push came to server {i} for {PATIENCE:?}"));
            sleep(Duration::from_millis(rng.below(4) as u64)).await;
            proxies[i].set_upstream(None);
            servers[i].kill().await;
            // What any process acknowledged is in PostgreSQL.
            let on_server: HashSet<SyncId> = ids_on_postgres(&postgres).await.into_iter().collect();
            for ledger in &ledgers {
                ledger
                    .lock()
                    .unwrap()
                    .check(&on_server, &format!("after kill {kill} (server {i})"));
            }
            servers[i].restart().await;
            proxies[i].set_upstream(Some(servers[i].addr));
        }
        done.store(true, Ordering::Relaxed);
        let mut devices = Vec::new();
        for writer in writers {
            devices.push(writer.await.unwrap());
        }
        let interrupted: usize = proxies
            .iter()
            .map(|p| p.interrupted()[Kind::Push as usize])
            .sum();
        eprintln!(
            "{KILLS} kills; pushes cut by them: {interrupted}; failed syncs: {:?}; rows: {}",
            devices.iter().map(|d| d.failures).collect::<Vec<_>>(),
            devices.iter().map(|d| d.written.len()).sum::<usize>()
        );
        assert!(interrupted > 0, "no kill landed in the middle of a push");

        converge(&mut devices).await;
        let on_server: HashSet<SyncId> = ids_on_postgres(&postgres).await.into_iter().collect();
        for device in &devices {
            device
                .ledger
                .lock()
                .unwrap()
                .check(&on_server, "at the end");
        }
        // Every device, whichever process it talks to, has what the others
        // wrote, as the server has it.
        let mut expected = Vec::new();
        for device in &devices {
            expected.extend(device.written.values().cloned());
        }
        let expected = sorted(expected);
        assert_eq!(
            expected.iter().map(|row| row.id).collect::<HashSet<_>>(),
            on_server
        );
        for device in &devices {
            let rows = sorted(device.db.query("", []).await.unwrap());
            assert_eq!(rows, expected, "{} differs", device.name);
        }
        for server in &mut servers {
            server.kill().await;
        }
    })
    .await;
}

/// The keys of the rows of the test's database on PostgreSQL, read with
/// plain SQL, as a backend reads them.
async fn ids_on_postgres(config: &str) -> Vec<SyncId> {
    let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client
        .query(&format!("SELECT id FROM \"{DB}\".todos"), &[])
        .await
        .unwrap();
    driver.abort();
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            SyncId::from_uuid(id.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_proxy_cannot_lose_or_duplicate_changes() {
    const WRITES: usize = 40;
    within(async {
        let mut rng = Rng::new(seed("a_flaky_proxy_cannot_lose_or_duplicate_changes"));
        let cloud = Cloud::start(rng.next()).await;
        let mut devices = Vec::new();
        for name in ["phone", "laptop", "tablet"] {
            devices.push(cloud.device(name, rng.next()).await);
        }

        cloud.proxy.set_plan(Plan::Flaky);
        let writers: Vec<JoinHandle<Device>> = devices
            .into_iter()
            .map(|mut device| {
                tokio::spawn(async move {
                    for write in 0..WRITES {
                        device.write().await;
                        if write % 2 == 1 {
                            device.sync(&retrying(3)).await;
                        }
                    }
                    device
                })
            })
            .collect();
        let mut devices = Vec::new();
        for writer in writers {
            devices.push(writer.await.unwrap());
        }
        cloud.proxy.set_plan(Plan::Healthy);

        let injected = cloud.proxy.injected();
        eprintln!(
            "faults injected: {injected:?}; failed syncs: {:?}",
            devices.iter().map(|d| d.failures).collect::<Vec<_>>()
        );
        for fault in Fault::ALL {
            for kind in [Kind::Push, Kind::Pull] {
                assert!(
                    injected.get(&(fault, kind)).is_some_and(|n| *n > 0),
                    "no {kind:?} met {fault:?}: {injected:?}"
                );
            }
        }

        converge(&mut devices).await;
        let server_rows = cloud.stop().await;
        assert_converged(&devices, &server_rows).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_for_a_while_then_recovery() {
    within(async {
        let mut rng = Rng::new(seed("server_errors_for_a_while_then_recovery"));
        let cloud = Cloud::start(rng.next()).await;
        let mut phone = cloud.device("phone", rng.next()).await;
        let laptop = cloud.device("laptop", rng.next()).await;
        // Enough writes that some rows survive the random deletes whatever the seed.
        for _ in 0..12 {
            phone.write().await;
        }
        phone.db.sync().await.unwrap();
        laptop.db.sync().await.unwrap();

        // Every request gets a 500: the sync gives up after its retries with the
        // server's error, and the changes wait.
        cloud.proxy.set_plan(Plan::Always(Fault::ServerError));
        phone.write().await;
        let error = phone.db.sync_with(retrying(2)).await.unwrap_err();
        assert!(
            matches!(error, Error::Server { status: 500, .. }),
            "{error}"
        );
        assert!(phone.db.has_unsent_changes().await.unwrap());
        let error = laptop
            .db
            .check_changes_with(&retrying(2))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Server { status: 500, .. }),
            "{error}"
        );

        // The server takes the push, but the answer is a 500: for all the phone
        // knows the push failed, so it keeps the changes to send them again.
        cloud
            .proxy
            .set_plan(Plan::Always(Fault::ErrorAfterHandling));
        phone.write().await;
        let error = phone.db.send_changes_with(&retrying(2)).await.unwrap_err();
        assert!(
            matches!(error, Error::Server { status: 500, .. }),
            "{error}"
        );
        assert!(phone.db.has_unsent_changes().await.unwrap());

        // A sync that keeps retrying through the outage goes through once it ends.
        cloud.proxy.set_plan(Plan::Always(Fault::ServerError));
        let before = cloud.proxy.injected_total();
        let sync = tokio::spawn({
            let db = phone.db.clone();
            async move { db.sync_with(retrying(1_000)).await }
        });
        cloud.proxy.until_injected(before + 5).await;
        cloud.proxy.set_plan(Plan::Healthy);
        let report = sync.await.unwrap().unwrap();
        assert!(report.changes_sent > 0, "{report:?}");
        assert!(!phone.db.has_unsent_changes().await.unwrap());

        let mut devices = vec![phone, laptop];
        converge(&mut devices).await;
        let server_rows = cloud.stop().await;
        assert_converged(&devices, &server_rows).await;
    })
    .await;
}

/// Runs a test body, failing the test if it takes longer than [`LIMIT`].
async fn within<F: Future>(body: F) -> F::Output {
    timeout(LIMIT, body)
        .await
        .expect("the test did not finish in time")
}

/// Sync options for a faulty network: `max_retries` quick retries.
fn retrying(max_retries: u32) -> SyncOptions {
    SyncOptions::default()
        .max_retries(max_retries)
        .backoff(Duration::from_millis(2))
        .max_backoff(Duration::from_millis(20))
}

/// The seed of a test: `FAULTS_SEED` if set, else a new one, printed either way.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.as_nanos() as u64
        });
    eprintln!("{test}: FAULTS_SEED={seed}");
    seed
}

/// A small seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------
// The server process

/// The `sync-server` binary on an ephemeral port, with its configuration and data
/// in one directory; killed when dropped.
struct ServerProcess {
    dir: PathBuf,
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Writes a configuration (the admin key, the JWT secret) into `dir` and
    /// starts the server on `dir/data`.
    async fn start(dir: &Path, policies: &str) -> Self {
        let config = format!(
            "[auth]\napi_keys = [\"{}\"]\njwt_hs256_secret = \"{SECRET}\"\n\
             [databases.{DB}]\nunlisted_tables = \"shared\"\n{policies}",
            sync_server::auth::hash_key(ADMIN_KEY)
        );
        std::fs::write(dir.join("server.toml"), config).unwrap();
        let schema = serde_json::to_vec(&[Todo::SCHEMA]).unwrap();
        std::fs::write(dir.join("todo.schema.json"), schema).unwrap();
        let (child, addr) = Self::spawn(dir).await;
        Self {
            dir: dir.to_path_buf(),
            child,
            addr,
        }
    }

    /// Starts the binary with the configuration and data in `dir`.
    async fn spawn(dir: &Path) -> (Child, SocketAddr) {
        let config = dir.join("server.toml");
        let data = dir.join("data");
        spawn_server(&[
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .await
    }

    /// `kill -9`, and waits until the process is gone.
    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Starts the server again on the same data (and a new port).
    async fn restart(&mut self) {
        (self.child, self.addr) = Self::spawn(&self.dir).await;
    }

    fn url(&self) -> String {
        format!("http://{}/v1/db/{DB}", self.addr)
    }

    fn database_file(&self) -> PathBuf {
        self.dir.join("data").join(format!("{DB}.db"))
    }
}

// ---------------------------------------------------------------------------
// The proxy

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    /// Passes part of the request on, then hangs up on both sides.
    CutRequest,
    /// Passes the request on; passes part of the response back, then hangs up.
    CutResponse,
    /// Passes the request on and the response back with one bit of its body
    /// flipped.
    DamageResponse,
    /// Passes the request on, then answers 500 instead of the server's response.
    ErrorAfterHandling,
    /// Answers 500; the server never sees the request.
    ServerError,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::CutRequest,
        Fault::CutResponse,
        Fault::DamageResponse,
        Fault::ErrorAfterHandling,
        Fault::ServerError,
    ];
}

/// Which faults the proxy injects.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// None: every request and response passes.
    Healthy,
    /// Half of the requests pass; the others meet one fault, drawn at random.
    Flaky,
    /// Every request meets this fault.
    Always(Fault),
}

/// The requests the proxy tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Push,
    Pull,
    Other,
}

/// A count per [`Kind`], indexed by `kind as usize`.
type PerKind = [usize; 3];

/// A TCP proxy in front of the server. It reads each request and the whole
/// response (it speaks just enough HTTP/1.1 for that), so that it can spoil them
/// as its [`Plan`] says. Each request goes to the server on a new connection,
/// while the client keeps its connection: a server restart does not break a
/// client's pooled connections, the faults do.
struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    /// Where the server is; `None` while it is down.
    upstream: Mutex<Option<SocketAddr>>,
    plan: Mutex<(Plan, Rng)>,
    /// The faults injected, by fault and kind of request.
    injected: watch::Sender<BTreeMap<(Fault, Kind), usize>>,
    /// Requests passed to the server and not answered yet.
    in_flight: watch::Sender<PerKind>,
    /// Requests passed to the server that got no whole response (it died).
    interrupted: Mutex<PerKind>,
}

/// A request as the proxy passes it on: asking the server to close the connection
/// after its response, so that the response ends where the connection does.
struct Request {
    kind: Kind,
    bytes: Vec<u8>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(Some(upstream)),
            plan: Mutex::new((Plan::Healthy, Rng::new(seed))),
            injected: watch::Sender::new(BTreeMap::new()),
            in_flight: watch::Sender::new(PerKind::default()),
            interrupted: Mutex::new(PerKind::default()),
        });
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(Arc::clone(&shared).serve(client));
                }
            }
        });
        Self { addr, shared, task }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/db/{DB}", self.addr)
    }

    fn set_upstream(&self, upstream: Option<SocketAddr>) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    fn set_plan(&self, plan: Plan) {
        self.shared.plan.lock().unwrap().0 = plan;
    }

    fn injected(&self) -> BTreeMap<(Fault, Kind), usize> {
        self.shared.injected.borrow().clone()
    }

    fn injected_total(&self) -> usize {
        self.shared.injected.borrow().values().sum()
    }

    /// Returns once `total` faults were injected.
    async fn until_injected(&self, total: usize) {
        let mut injected = self.shared.injected.subscribe();
        injected
            .wait_for(|n| n.values().sum::<usize>() >= total)
            .await
            .unwrap();
    }

    fn interrupted(&self) -> PerKind {
        *self.shared.interrupted.lock().unwrap()
    }

    /// Returns once a request of this kind is with the server.
    async fn until_in_flight(&self, kind: Kind) {
        let mut in_flight = self.shared.in_flight.subscribe();
        in_flight.wait_for(|n| n[kind as usize] > 0).await.unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// Serves one client connection, request after request, until a fault or the
    /// client ends it.
    async fn serve(self: Arc<Self>, client: TcpStream) -> io::Result<()> {
        let mut client = BufReader::new(client);
        while let Some(request) = read_request(&mut client).await? {
            let (fault, dice) = self.draw(request.kind);
            let client = client.get_mut();
            let keep_alive = match fault {
                None => {
                    let response = self.forward(&request).await?;
                    client.write_all(&response).await?;
                    is_complete(&response)
                }
                Some(Fault::CutRequest) => {
                    let mut server = TcpStream::connect(self.upstream()?).await?;
                    let cut = dice % request.bytes.len();
                    server.write_all(&request.bytes[..cut]).await?;
                    false
                }
                Some(Fault::CutResponse) => {
                    let response = self.forward(&request).await?;
                    let cut = dice % response.len().max(1);
                    client.write_all(&response[..cut]).await?;
                    false
                }
                Some(Fault::DamageResponse) => {
                    let mut response = self.forward(&request).await?;
                    flip_a_body_bit(&mut response, dice);
                    client.write_all(&response).await?;
                    is_complete(&response)
                }
                Some(Fault::ErrorAfterHandling) => {
                    self.forward(&request).await?;
                    client.write_all(&error_500()).await?;
                    true
                }
                Some(Fault::ServerError) => {
                    client.write_all(&error_500()).await?;
                    true
                }
            };
            if !keep_alive {
                break;
            }
        }
        Ok(())
    }

    /// The fault for the next request, if any, and a random number to place it.
    fn draw(&self, kind: Kind) -> (Option<Fault>, usize) {
        let mut plan = self.plan.lock().unwrap();
        let (plan, rng) = &mut *plan;
        let fault = match *plan {
            Plan::Healthy => None,
            Plan::Always(fault) => Some(fault),
            Plan::Flaky => Fault::ALL.get(rng.below(2 * Fault::ALL.len())).copied(),
        };
        if let Some(fault) = fault {
            self.injected
                .send_modify(|injected| *injected.entry((fault, kind)).or_default() += 1);
        }
        (fault, rng.next() as usize)
    }

    fn upstream(&self) -> io::Result<SocketAddr> {
        self.upstream
            .lock()
            .unwrap()
            .ok_or_else(|| io::Error::other("the server is down"))
    }

    /// Passes the request to the server and returns its response, without the
    /// server's `connection` header (the client's connection stays open). A
    /// response cut short (the server died) is returned as it came.
    async fn forward(&self, request: &Request) -> io::Result<Vec<u8>> {
        let mut server = TcpStream::connect(self.upstream()?).await?;
        let kind = request.kind as usize;
        self.in_flight.send_modify(|n| n[kind] += 1);
        let exchange = async {
            server.write_all(&request.bytes).await?;
            let mut response = Vec::new();
            server.read_to_end(&mut response).await?;
            Ok::<_, io::Error>(response)
        };
        let response = timeout(PATIENCE, exchange)
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the server did not answer in time")))
            .map(|response| with_connection_header(&response, ""));
        self.in_flight.send_modify(|n| n[kind] -= 1);
        if !response.as_ref().is_ok_and(|r| is_complete(r)) {
            self.interrupted.lock().unwrap()[kind] += 1;
        }
        response
    }
}

/// Reads one request from the client: its head, and its body by `content-length`.
/// `None` when the client closed the connection.
async fn read_request(client: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        if client.read_until(b'\n', &mut head).await? == 0 {
            return Ok(None);
        }
        if head[start..] == *b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    assert!(
        header(&text, "transfer-encoding").is_none(),
        "the proxy only reads bodies with a content-length:\n{text}"
    );
    let length = header(&text, "content-length").map_or(0, |n| n.parse().unwrap());
    let mut request = head;
    request.resize(request.len() + length, 0);
    let body_start = request.len() - length;
    client.read_exact(&mut request[body_start..]).await?;
    let path = text.split(' ').nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let kind = if path.ends_with("/push") {
        Kind::Push
    } else if path.ends_with("/pull") {
        Kind::Pull
    } else {
        Kind::Other
    };
    Ok(Some(Request {
        kind,
        bytes: with_connection_header(&request, "connection: close\r\n"),
    }))
}

/// The offset just after the blank line that ends an HTTP head.
fn head_end(message: &[u8]) -> Option<usize> {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The value of header `name` in an HTTP head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// `message` with its `connection` headers replaced by `lines` (whole header
/// lines, possibly none).
fn with_connection_header(message: &[u8], lines: &str) -> Vec<u8> {
    let Some(end) = head_end(message) else {
        return message.to_vec();
    };
    let head = String::from_utf8_lossy(&message[..end - 2]);
    let mut out: String = head
        .split_inclusive("\r\n")
        .filter(|line| {
            !line
                .split_once(':')
                .is_some_and(|(key, _)| key.trim().eq_ignore_ascii_case("connection"))
        })
        .collect();
    out.push_str(lines);
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&message[end..]);
    bytes
}

/// Whether a response holds its whole head and the body its `content-length` says.
fn is_complete(response: &[u8]) -> bool {
    let Some(end) = head_end(response) else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]);
    header(&head, "content-length")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n == response.len() - end)
}

/// Flips one bit of the body (not the head: a damaged status line could turn a
/// 200 into a 400, which no client can tell from the real thing).
fn flip_a_body_bit(response: &mut [u8], dice: usize) {
    let body = head_end(response).unwrap_or(response.len());
    if body < response.len() {
        let at = body + dice % (response.len() - body);
        response[at] ^= 1 << (dice / 7 % 8);
    }
}

/// What a failing server answers.
fn error_500() -> Vec<u8> {
    let body = r#"{"code":"server_error","message":"injected by the test proxy"}"#;
    format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// Devices

/// A server process, a proxy in front of it, and the server database with the
/// schema of [`Todo`]; devices sync through the proxy.
struct Cloud {
    dir: TempDir,
    server: ServerProcess,
    proxy: Proxy,
}

impl Cloud {
    async fn start(seed: u64) -> Self {
        Self::start_with(seed, "").await
    }

    /// A cloud whose server configuration ends with `policies`.
    async fn start_with(seed: u64, policies: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), policies).await;
        let proxy = Proxy::start(server.addr, seed).await;
        // The admin creates the database from the app's struct (straight to the
        // server: the proxy is for the devices).
        let admin = SyncDb::open(dir.path().join("admin.db"))
            .await
            .unwrap()
            .with_remote(Remote::new(server.url()).api_key(ADMIN_KEY));
        admin.register::<Todo>().await.unwrap();
        admin.publish_schema().await.unwrap();
        Self { dir, server, proxy }
    }

    async fn device(&self, name: &str, seed: u64) -> Device {
        self.device_with(name, seed, BATCH_ROWS).await
    }

    /// A device that sends and fetches `batch_rows` rows at a time.
    async fn device_with(&self, name: &str, seed: u64, batch_rows: usize) -> Device {
        Device::open(self.dir.path(), &self.proxy, name, seed, batch_rows).await
    }

    /// Kills the server (what it acknowledged is on disk all the same) and reads
    /// the rows of its database file.
    async fn stop(mut self) -> Vec<Todo> {
        self.server.kill().await;
        rows_in(&self.server.database_file()).await
    }
}

impl Device {
    /// A device with its file in `dir`, syncing through `proxy` `batch_rows`
    /// rows at a time each way.
    async fn open(dir: &Path, proxy: &Proxy, name: &str, seed: u64, batch_rows: usize) -> Self {
        let db = SyncDb::open(dir.join(format!("{name}.db")))
            .await
            .unwrap()
            .with_remote(
                Remote::new(proxy.url())
                    .bearer_token(user_token(name))
                    .timeout(PATIENCE)
                    .batch_limits(BatchLimits::default().max_rows(batch_rows)),
            );
        db.register::<Todo>().await.unwrap();
        Device {
            name: name.into(),
            db,
            rng: Rng::new(seed),
            written: BTreeMap::new(),
            ledger: Arc::default(),
            failures: 0,
        }
    }
}

/// A device: its own database file, and what it wrote.
struct Device {
    name: String,
    db: SyncDb,
    rng: Rng,
    /// The rows written here, as last written (deleted ones removed).
    written: BTreeMap<SyncId, Todo>,
    ledger: Arc<Mutex<Ledger>>,
    /// Syncs that failed (transiently) because of the faults.
    failures: usize,
}

impl Device {
    /// One transaction: one or two new rows, now and then an edit or a delete of
    /// an earlier row.
    async fn write(&mut self) {
        let new: Vec<Todo> = (0..1 + self.rng.below(2))
            .map(|_| Todo::new(&format!("{} {}", self.name, self.rng.next())))
            .collect();
        let edit = self.pick(3).map(|id| {
            let mut row = self.written[&id].clone();
            row.done = !row.done;
            row.title.push_str(" (edited)");
            row
        });
        let delete = self
            .pick(6)
            .filter(|id| edit.as_ref().is_none_or(|e| e.id != *id));

        let (rows, changed) = (new.clone(), edit.clone());
        self.db
            .transaction(move |tx| {
                for row in &rows {
                    tx.insert(row)?;
                }
                if let Some(row) = &changed {
                    tx.update(row)?;
                }
                if let Some(id) = &delete {
                    tx.delete::<Todo>(id)?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();

        let mut ledger = self.ledger.lock().unwrap();
        for row in new.into_iter().chain(edit) {
            ledger.writes.push((row.id, true));
            self.written.insert(row.id, row);
        }
        if let Some(id) = delete {
            ledger.writes.push((id, false));
            self.written.remove(&id);
        }
    }

    /// One transaction of `rows` new rows.
    async fn write_many(&mut self, rows: usize) {
        let new: Vec<Todo> = (0..rows)
            .map(|_| Todo::new(&format!("{} {}", self.name, self.rng.next())))
            .collect();
        let inserted = new.clone();
        self.db
            .transaction(move |tx| {
                for row in &inserted {
                    tx.insert(row)?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        let mut ledger = self.ledger.lock().unwrap();
        for row in new {
            ledger.writes.push((row.id, true));
            self.written.insert(row.id, row);
        }
    }

    /// A key written here, one time in `odds`.
    fn pick(&mut self, odds: usize) -> Option<SyncId> {
        if self.written.is_empty() || self.rng.below(odds) != 0 {
            return None;
        }
        let at = self.rng.below(self.written.len());
        self.written.keys().nth(at).copied()
    }

    /// Sends, then fetches. A transient failure (what the faults cause) is
    /// counted; any other fails the test.
    async fn sync(&mut self, options: &SyncOptions) {
        let written = self.ledger.lock().unwrap().writes.len();
        if let Err(e) = self.db.send_changes_with(options).await {
            self.failed(e);
            return;
        }
        self.ledger.lock().unwrap().acked = written;
        if let Err(e) = self.db.check_changes_with(options).await {
            self.failed(e);
        }
    }

    fn failed(&mut self, error: Error) {
        assert!(error.is_transient(), "{}: {error}", self.name);
        self.failures += 1;
    }

    async fn rows(&self) -> Vec<Todo> {
        sorted(self.db.query("", []).await.unwrap())
    }
}

/// The keys a device wrote, in order, and how many of these writes the server
/// acknowledged.
#[derive(Debug, Default)]
struct Ledger {
    /// Each write's key, and whether the row exists after it.
    writes: Vec<(SyncId, bool)>,
    acked: usize,
}

impl Ledger {
    /// Checks the keys on the server against the acknowledged writes: an
    /// acknowledged row is there, an acknowledged delete is gone. Keys written
    /// again since are left out: the server may or may not have the later write.
    fn check(&self, on_server: &HashSet<SyncId>, when: &str) {
        let mut acknowledged = HashMap::new();
        for (id, exists) in &self.writes[..self.acked] {
            acknowledged.insert(*id, *exists);
        }
        for (id, _) in &self.writes[self.acked..] {
            acknowledged.remove(id);
        }
        let wrong: Vec<_> = acknowledged
            .iter()
            .filter(|(id, exists)| on_server.contains(*id) != **exists)
            .collect();
        assert!(
            wrong.is_empty(),
            "{when}: {} of {} acknowledged writes are not on the server (key, exists): {:?}",
            wrong.len(),
            acknowledged.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

/// Sends every device's changes, then fetches on every device: with the network
/// healthy again, each then holds what every other wrote.
async fn converge(devices: &mut [Device]) {
    let options = retrying(5);
    for device in devices.iter_mut() {
        let written = device.ledger.lock().unwrap().writes.len();
        device.db.send_changes_with(&options).await.unwrap();
        device.ledger.lock().unwrap().acked = written;
        assert!(!device.db.has_unsent_changes().await.unwrap());
    }
    for device in devices.iter() {
        device.db.check_changes_with(&options).await.unwrap();
    }
}

/// Every device and the server hold exactly the rows the devices wrote, each once,
/// as last written.
async fn assert_converged(devices: &[Device], server_rows: &[Todo]) {
    let mut expected = Vec::new();
    for device in devices {
        expected.extend(device.written.values().cloned());
    }
    let expected = sorted(expected);
    let keys: HashSet<SyncId> = expected.iter().map(|row| row.id).collect();
    assert_eq!(keys.len(), expected.len(), "two devices wrote the same key");
    assert!(
        expected.len() > 2 * devices.len(),
        "the devices wrote little"
    );

    for device in devices {
        let rows = device.rows().await;
        assert!(
            rows == expected,
            "{}: {}",
            device.name,
            difference(&rows, &expected)
        );
    }
    assert!(
        server_rows == expected,
        "the server: {}",
        difference(server_rows, &expected)
    );
}

/// How `found` differs from `expected`, briefly.
fn difference(found: &[Todo], expected: &[Todo]) -> String {
    let found_by_key: HashMap<SyncId, &Todo> = found.iter().map(|row| (row.id, row)).collect();
    let expected_by_key: HashMap<SyncId, &Todo> =
        expected.iter().map(|row| (row.id, row)).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|row| !found_by_key.contains_key(&row.id))
        .collect();
    let unexpected: Vec<_> = found
        .iter()
        .filter(|row| !expected_by_key.contains_key(&row.id))
        .collect();
    let changed: Vec<_> = found
        .iter()
        .filter(|row| expected_by_key.get(&row.id).is_some_and(|e| e != row))
        .collect();
    format!(
        "{} rows where {} were written: {} missing (first: {:?}), {} unexpected \
         (first: {:?}), {} with other values (first: {:?})",
        found.len(),
        expected.len(),
        missing.len(),
        missing.first(),
        unexpected.len(),
        unexpected.first(),
        changed.len(),
        changed.first()
    )
}

/// The rows of a database file (the server's, once it is stopped).
async fn rows_in(file: &Path) -> Vec<Todo> {
    let db = SyncDb::open(file).await.unwrap();
    db.register::<Todo>().await.unwrap();
    sorted(db.query("", []).await.unwrap())
}

fn sorted(mut rows: Vec<Todo>) -> Vec<Todo> {
    rows.sort_by_key(|row| row.id);
    rows
}
