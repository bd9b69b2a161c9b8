//! This release's server serves devices of release 0.1.0: a client built from
//! that release's source (commit 1f08564, its `todo` command line) publishes,
//! pushes and pulls against a server of this release, side by side with
//! devices of the app's next version, which renamed a column, retired one
//! and added others.
//!
//! The client is built once, from the release's source kept in
//! `tests/fixtures/0.1.0/source.tar.gz`, into `target/release-0.1.0`
//! (offline, with its own lock file; about a minute).

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{ADMIN_KEY, TestServer, token};
use sync_runtime::{Remote, SyncDb, SyncId, Synced, params};

/// The app's next version of 0.1.0's `Todo` (`todos`: id, title, done, note).
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct TodoV2 {
    #[synced(primary_key)]
    id: SyncId,
    #[synced(renamed_from = "title")]
    label: String,
    #[synced(default = false)]
    done: bool,
    due: Option<i64>,
}

/// The `todo` binary of release 0.1.0, built from its source if it is not
/// built yet.
fn client() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let home = workspace.join("target").join("release-0.1.0");
    let binary = home.join("target").join("debug").join("todo");
    if binary.exists() {
        return binary;
    }
    let source = home.join("source");
    if !source.join("Cargo.lock").exists() {
        std::fs::create_dir_all(&source).unwrap();
        let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/0.1.0/source.tar.gz");
        let unpacked = Command::new("tar")
            .arg("-x")
            .arg("-z")
            .arg("-f")
            .arg(&archive)
            .arg("-C")
            .arg(&source)
            .status()
            .expect("tar runs");
        assert!(unpacked.success(), "{} unpacks", archive.display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", home.join("target"))
        .env("CARGO_INCREMENTAL", "0")
        .args(["build", "--offline", "--locked", "--bin", "todo"])
        .status()
        .expect("cargo runs");
    assert!(built.success(), "release 0.1.0's client builds");
    binary
}

/// The 0.1.0 client, on a phone of user `ann` and an admin's file.
struct OldClient {
    binary: PathBuf,
    url: String,
    dir: PathBuf,
}

impl OldClient {
    /// Runs `todo <args>` on the phone (or, `as_admin`, the admin's file with
    /// the API key); its standard output.
    async fn run(&self, as_admin: bool, args: &[&str]) -> String {
        let (file, credentials) = if as_admin {
            ("admin.db", ["--api-key".to_owned(), ADMIN_KEY.to_owned()])
        } else {
            ("phone.db", ["--token".to_owned(), token("ann")])
        };
        let out = tokio::process::Command::new(&self.binary)
            .arg("--db")
            .arg(self.dir.join(file))
            .args(["--server", &self.url])
            .args(credentials)
            .args(args)
            .env_remove("SYNCED_TOKEN")
            .env_remove("SYNCED_API_KEY")
            .env_remove("SYNCED_URL")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "0.1.0 `todo {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_release_0_1_0_syncs_with_this_server_beside_the_next_app_version() {
    let binary = tokio::task::spawn_blocking(client).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    let old = OldClient {
        binary,
        url: url.clone(),
        dir: dir.path().to_path_buf(),
    };

    // The 0.1.0 admin tool publishes the first version; a 0.1.0 phone syncs.
    old.run(true, &["publish-schema"]).await;
    let added = old.run(false, &["add", "Buy milk"]).await;
    let milk: SyncId = added.trim().trim_start_matches("added ").parse().unwrap();
    old.run(false, &["sync"]).await;

    // The next version, published and used by a device of this release.
    let next_admin = SyncDb::open_in_memory()
        .await
        .unwrap()
        .with_remote(Remote::new(&url).api_key(ADMIN_KEY));
    next_admin.register::<TodoV2>().await.unwrap();
    next_admin.publish_schema().await.unwrap();
    let laptop = SyncDb::open(dir.path().join("laptop.db"))
        .await
        .unwrap()
        .with_remote(Remote::new(&url).bearer_token(token("ann")));
    laptop.register::<TodoV2>().await.unwrap();
    laptop.sync().await.unwrap();
    let mut rows: Vec<TodoV2> = laptop.query("", params![]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].id, rows[0].label.as_str()), (milk, "Buy milk"));
    rows[0].due = Some(20261224);
    rows[0].label = "Buy oat milk".into();
    laptop.update(&rows[0]).await.unwrap();
    let bread = TodoV2 {
        id: SyncId::new(),
        label: "Bake bread".into(),
        done: false,
        due: Some(20261225),
    };
    laptop.insert(&bread).await.unwrap();
    laptop.sync().await.unwrap();

    // The 0.1.0 phone pulls both (under the column's old name), marks one
    // done and pushes: the laptop keeps its `due`.
    old.run(false, &["sync"]).await;
    let list = old.run(false, &["list"]).await;
    assert!(list.contains("Buy oat milk"), "{list}");
    assert!(list.contains("Bake bread"), "{list}");
    let prefix = &bread.id.to_string()[..12];
    old.run(false, &["done", prefix]).await;
    old.run(false, &["sync"]).await;
    let list = old.run(false, &["list"]).await;
    assert!(!list.contains("not synced"), "{list}");

    laptop.sync().await.unwrap();
    let now: Vec<TodoV2> = laptop.query("ORDER BY label", params![]).await.unwrap();
    let bread_now = now.iter().find(|t| t.id == bread.id).unwrap();
    assert!(bread_now.done);
    assert_eq!(bread_now.due, Some(20261225));
    let milk_now = now.iter().find(|t| t.id == milk).unwrap();
    assert_eq!(
        (milk_now.label.as_str(), milk_now.due),
        ("Buy oat milk", Some(20261224))
    );
}
