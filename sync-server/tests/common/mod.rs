//! A real server on an ephemeral loopback port, real client databases, real HTTP.

#![allow(dead_code, unreachable_pub)] // each test file uses a part of these helpers

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use sync_runtime::protocol::{
    API_KEY_HEADER, ErrorBody, PullResponse, PushAck, SCHEMA_HEADER, SITE_HEADER, fingerprint_hex,
};
use sync_runtime::{BatchLimits, Cursor, Scope, SyncDb, Synced};
use sync_server::{AppState, Config, Server, auth};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

pub use synced_testkit::{ADMIN_KEY, JWT_SECRET as SECRET, Todo};

/// The database tests sync through.
pub const DB: &str = "todo";
/// The bound of every wait in these tests: nothing should come close.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// The `sync-server` binary.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sync-server");

pub fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// A server running in this process, with its data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<sync_server::Result<()>>>,
    pub data: TempDir,
}

/// The shared test configuration ([`synced_testkit::config_sharing`] of
/// [`DB`]) with an RS256 public key too, and a long wait for pulls.
pub fn test_config(data: &std::path::Path) -> Config {
    let mut config = synced_testkit::config_sharing(data, &[DB]);
    config.auth.jwt_rs256_public_key = Some(keys_dir().join("rs256-public.pem"));
    config.limits.max_wait = Duration::from_secs(30);
    config
}

impl TestServer {
    /// A server with [`test_config`].
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with [`test_config`] and the test database created.
    pub async fn with_todo_db() -> Self {
        let server = Self::start().await;
        server.create_todo_db().await;
        server
    }

    /// A server with [`test_config`] changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), adjust).await
    }

    /// A server with [`test_config`] changed by `adjust`, on a data directory
    /// that may already hold database files.
    pub async fn start_in(data: TempDir, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(data.path());
        adjust(&mut config);
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let state = server.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            http: reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .unwrap(),
            stop: Some(stop),
            task: Some(task),
            data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts a graceful shutdown.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits until the server has stopped.
    pub async fn stop(mut self) -> sync_server::Result<()> {
        self.begin_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap()
    }

    pub fn as_admin(&self, request: RequestBuilder) -> RequestBuilder {
        request.header(API_KEY_HEADER, ADMIN_KEY)
    }

    /// Creates the test database with the schema of [`Todo`].
    pub async fn create_todo_db(&self) {
        let body = serde_json::to_vec(&[Todo::SCHEMA]).unwrap();
        let response = self
            .as_admin(self.http.put(self.url(&format!("/v1/db/{DB}/schema"))))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{}",
            text(response).await
        );
    }

    /// Checks that the server answers `/health` with 200.
    pub async fn assert_healthy(&self) {
        let health = self.http.get(self.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }

    /// Waits (polling) until `n` pulls wait for changes on the server.
    pub async fn until_waiting_pulls(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            while self.state.waiting_pulls() != n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the pull never started waiting");
    }
}

/// A device: its own database file with the [`Todo`] table.
pub struct Device {
    pub db: SyncDb,
    pub token: String,
    _dir: TempDir,
}

impl Device {
    pub async fn new(user: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = SyncDb::open(dir.path().join("device.db")).await.unwrap();
        db.register::<Todo>().await.unwrap();
        Self {
            db,
            token: user_token(user),
            _dir: dir,
        }
    }

    pub async fn fingerprint(&self) -> String {
        fingerprint_hex(self.db.schema_fingerprint().await.unwrap())
    }

    /// Everything this device wrote, as one payload.
    pub async fn local_changes(&self) -> Vec<u8> {
        self.db
            .export_batch(Cursor::BEGINNING, Scope::Local, BatchLimits::UNLIMITED)
            .await
            .unwrap()
            .payload
    }

    /// A request to `endpoint` (`push`, `pull`) of database `database`, with this
    /// device's token, fingerprint and site id.
    pub async fn request_to(
        &self,
        server: &TestServer,
        method: reqwest::Method,
        database: &str,
        endpoint: &str,
    ) -> RequestBuilder {
        server
            .http
            .request(method, server.url(&format!("/v1/db/{database}/{endpoint}")))
            .bearer_auth(&self.token)
            .header(SCHEMA_HEADER, self.fingerprint().await)
            .header(SITE_HEADER, self.db.site_id().to_string())
    }

    /// A push request of `body` with this device's token and fingerprint.
    pub async fn push_request(&self, server: &TestServer, body: Vec<u8>) -> RequestBuilder {
        self.request_to(server, reqwest::Method::POST, DB, "push")
            .await
            .body(body)
    }

    /// Sends a push request of `body`.
    pub async fn send_push(&self, server: &TestServer, body: Vec<u8>) -> Response {
        self.push_request(server, body).await.send().await.unwrap()
    }

    /// Pushes everything this device wrote.
    pub async fn push(&self, server: &TestServer) -> PushAck {
        let response = self.send_push(server, self.local_changes().await).await;
        assert_eq!(response.status(), StatusCode::OK);
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
    }

    /// A pull request after `cursor`, waiting up to `wait_ms`.
    pub async fn pull_request(
        &self,
        server: &TestServer,
        cursor: &Cursor,
        wait_ms: u64,
    ) -> RequestBuilder {
        let query = [
            ("cursor", cursor.to_string()),
            ("wait", wait_ms.to_string()),
        ];
        self.pull_request_with(server, &query).await
    }

    /// A pull request with this device's headers and the given query.
    pub async fn pull_request_with(
        &self,
        server: &TestServer,
        query: &[(&str, String)],
    ) -> RequestBuilder {
        self.request_to(server, reqwest::Method::GET, DB, "pull")
            .await
            .query(query)
    }

    /// Sends a pull request after `cursor`, waiting up to `wait_ms`.
    pub async fn send_pull(&self, server: &TestServer, cursor: &Cursor, wait_ms: u64) -> Response {
        self.pull_request(server, cursor, wait_ms)
            .await
            .send()
            .await
            .unwrap()
    }

    /// Sends a pull request with the given query.
    pub async fn send_pull_with(&self, server: &TestServer, query: &[(&str, String)]) -> Response {
        self.pull_request_with(server, query)
            .await
            .send()
            .await
            .unwrap()
    }

    /// Pulls after `cursor` and applies what came.
    pub async fn pull(&self, server: &TestServer, cursor: &Cursor, wait_ms: u64) -> PullResponse {
        let pulled = decode_pull(self.send_pull(server, cursor, wait_ms).await).await;
        self.db.apply_changes(&pulled.payload).await.unwrap();
        pulled
    }

    pub async fn todos(&self) -> Vec<Todo> {
        let mut todos: Vec<Todo> = self.db.query("", []).await.unwrap();
        todos.sort_by(|a, b| a.title.cmp(&b.title));
        todos
    }
}

pub async fn decode_pull(response: Response) -> PullResponse {
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/octet-stream");
    PullResponse::decode(&response.bytes().await.unwrap()).unwrap()
}

/// Sends `request` with header `name` set to `value` instead of what it had.
pub async fn send_with_header(
    server: &TestServer,
    request: RequestBuilder,
    name: &'static str,
    value: &str,
) -> Response {
    let mut request = request.build().unwrap();
    request.headers_mut().insert(name, value.parse().unwrap());
    server.http.execute(request).await.unwrap()
}

pub async fn text(response: Response) -> String {
    response.text().await.unwrap_or_default()
}

/// The [`ErrorBody`] of an error response, checked to carry `status`.
pub async fn error_body(response: Response, status: StatusCode) -> ErrorBody {
    assert_eq!(response.status(), status);
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not an error body ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Claims {
    pub fn valid(user: &str) -> Self {
        Self {
            sub: user.into(),
            exp: Some(now() + 3600),
            nbf: None,
            iss: None,
            aud: None,
        }
    }
}

/// A valid HS256 token for `user`, signed as a login service does.
pub fn user_token(user: &str) -> String {
    auth::sign_token(SECRET, user, Duration::from_secs(3600)).unwrap()
}

pub fn hs256_token(claims: &Claims) -> String {
    hs256_token_with(claims, SECRET)
}

pub fn hs256_token_with(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn rs256_token(claims: &Claims, private_key_file: &str) -> String {
    let pem = std::fs::read(keys_dir().join(private_key_file)).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// An unsigned token: header `{"alg":"none"}`, an empty signature.
pub fn unsigned_token(claims: &Claims) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = base64url(&serde_json::to_vec(claims).unwrap());
    format!("{header}.{claims}.")
}

pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Starts the binary with `args`; its address is read from its `listening on` line.
pub async fn spawn_server(args: &[&str]) -> (Child, SocketAddr) {
    spawn_server_to(args, Stdio::null()).await
}

/// Like [`spawn_server`], with the server's log (its standard error) to read line
/// by line. Read it, or the server blocks once the pipe is full.
pub async fn spawn_server_with_log(
    args: &[&str],
) -> (Child, SocketAddr, Lines<BufReader<ChildStderr>>) {
    let (mut child, addr) = spawn_server_to(args, Stdio::piped()).await;
    let log = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, addr, log)
}

async fn spawn_server_to(args: &[&str], stderr: Stdio) -> (Child, SocketAddr) {
    let mut child = Command::new(SERVER_BIN)
        .args(args)
        .env_remove("SYNCED_JWT_SECRET")
        // The default level, whatever the environment of the tests.
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    timeout(PATIENCE, stdout.read_line(&mut line))
        .await
        .expect("the server did not start")
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}
