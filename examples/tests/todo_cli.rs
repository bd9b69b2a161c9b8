//! The `todo` example against a real server: two devices, each a database file.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use sync_server::auth::hash_key;
use sync_server::{AuthConfig, Config, DatabaseConfig, Server};

const ADMIN_KEY: &str = "todo-cli-admin-key";
const SECRET: &str = "todo-cli-test-secret-of-enough-length";

/// Runs the `todo` binary in `dir` and returns its standard output.
fn todo(dir: &Path, url: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_todo"))
        .current_dir(dir)
        .env("SYNCED_URL", url)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "todo {args:?}: {stdout}{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_sync_through_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: dir.path().join("cloud"),
        auth: AuthConfig {
            api_keys: vec![hash_key(ADMIN_KEY)],
            jwt_hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        },
        databases: [("todo".to_owned(), DatabaseConfig::shared())].into(),
        ..Config::default()
    })
    .await
    .unwrap()
    .spawn();
    let url = server.url("todo");

    let d = dir.path().to_path_buf();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        let (d, url) = (d.as_path(), url2.as_str());
        let admin = [("SYNCED_API_KEY", ADMIN_KEY)];
        todo(d, url, &admin, &["--db", "admin.db", "publish-schema"]);
        let token = todo(d, url, &[], &["login", "ann", "--jwt-secret", SECRET]);
        let user = [("SYNCED_TOKEN", token.trim())];

        let added = todo(d, url, &user, &["--db", "phone.db", "add", "Buy milk"]);
        let id = added.trim().strip_prefix("added ").unwrap().to_owned();
        assert!(todo(d, url, &user, &["--db", "phone.db", "list"]).contains("not synced"));
        todo(d, url, &user, &["--db", "phone.db", "sync"]);
        todo(d, url, &user, &["--db", "laptop.db", "sync"]);
        let listed = todo(d, url, &user, &["--db", "laptop.db", "list"]);
        assert!(
            listed.contains("[ ]") && listed.contains("Buy milk"),
            "{listed}"
        );

        todo(d, url, &user, &["--db", "laptop.db", "done", &id[..12]]);
        todo(d, url, &user, &["--db", "laptop.db", "sync"]);
        todo(d, url, &user, &["--db", "phone.db", "sync"]);
        let listed = todo(d, url, &user, &["--db", "phone.db", "list"]);
        assert!(listed.contains(&format!("[x] {id}  Buy milk")), "{listed}");
    })
    .await
    .unwrap();

    server.stop().await.unwrap();
}
