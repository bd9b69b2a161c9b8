//! The `sync-server` binary: flags, config file, the `listening on` line, SIGTERM.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;
use sync_runtime::Synced;
use sync_runtime::protocol::API_KEY_HEADER;
use tokio::process::Child;
use tokio::time::timeout;

/// A running `sync-server` process, killed if the test ends without stopping it.
struct Process {
    child: Child,
    url: String,
}

impl Process {
    /// Starts the binary and reads the address from its `listening on` line.
    async fn start(args: &[&str]) -> Process {
        let (child, addr) = spawn_server(args).await;
        let url = format!("http://{addr}");
        Process { child, url }
    }

    /// Sends SIGTERM and waits for the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        timeout(PATIENCE, self.child.wait())
            .await
            .expect("the server did not stop on SIGTERM")
            .unwrap()
    }
}

#[tokio::test]
async fn the_binary_serves_on_an_ephemeral_port_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("cloud");
    let process =
        Process::start(&["--listen", "127.0.0.1:0", "--data", dir.to_str().unwrap()]).await;
    assert!(!process.url.ends_with(":0"), "{}", process.url);

    let health = reqwest::get(format!("{}/health", process.url))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(dir.is_dir(), "the data directory was not created");

    assert!(process.terminate().await.success());
}

#[tokio::test]
async fn the_config_file_sets_keys_and_databases() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("todo.json"),
        serde_json::to_string(&[Todo::SCHEMA]).unwrap(),
    )
    .unwrap();
    let config = format!(
        r#"
        listen = "127.0.0.1:0"
        data = "data"

        [auth]
        api_keys = ["{}"]

        [limits]
        max_wait = "5s"

        [databases.todo]
        schema = "todo.json"
        "#,
        sync_server::auth::hash_key("from-the-config")
    );
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, config).unwrap();

    let process = Process::start(&["--config", config_path.to_str().unwrap()]).await;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/v1/db/todo/schema", process.url))
        .header(API_KEY_HEADER, "from-the-config")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tables: Vec<sync_runtime::TableSchema> =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(tables, std::slice::from_ref(Todo::SCHEMA));
    assert!(dir.path().join("data/todo.db").exists());
    assert!(process.terminate().await.success());
}

#[test]
fn an_invalid_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, "[auth]\napi_keys = [\"my-plain-key\"]\n").unwrap();
    let output = Command::new(SERVER_BIN)
        .args([
            "--config",
            config_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hash-key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let missing = Command::new(SERVER_BIN)
        .args(["--config", "/nonexistent/server.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/server.toml"));
}

#[test]
fn hash_key_prints_the_form_for_the_config() {
    let output = Command::new(SERVER_BIN)
        .args(["hash-key", "foo"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    );
}

/// A push whose every row is refused is logged as a warning at the default
/// level, saying when the database has no policies for users at all.
#[tokio::test]
async fn a_push_refused_whole_is_logged_as_a_warning() {
    use sync_runtime::protocol::{SCHEMA_HEADER, SITE_HEADER};
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("todo.schema.json");
    std::fs::write(&schema, serde_json::to_vec(&[Todo::SCHEMA]).unwrap()).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\njwt_hs256_secret = \"{SECRET}\"\n\n[databases.{DB}]\nschema = \"{}\"\n",
            schema.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (_server, addr, mut log) = spawn_server_with_log(&[
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    let device = Device::new("alice").await;
    device.db.insert(&Todo::new("mine")).await.unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/db/{DB}/push"))
        .bearer_auth(&device.token)
        .header(SCHEMA_HEADER, device.fingerprint().await)
        .header(SITE_HEADER, device.db.site_id().to_string())
        .body(device.local_changes().await)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let warning = timeout(PATIENCE, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("WARN") && line.contains("refused") {
                return line;
            }
        }
        panic!("the log ended without the warning");
    })
    .await
    .expect("no warning was logged");
    assert!(
        warning.contains("every row of a push was refused"),
        "{warning}"
    );
    assert!(warning.contains("no policies for users"), "{warning}");
    assert!(warning.contains("alice"), "{warning}");
}
