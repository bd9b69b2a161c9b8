//! Servers on PostgreSQL: several server processes configured with one
//! PostgreSQL database serve the same databases, and devices connected to
//! different ones sync with each other.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use std::time::Duration;

use support::{TestServer, Todo, TodoV2, device, publish_schema, rows, todo, until_waiting};
use synced_testkit::postgres::Postgres;

/// `N` servers on the PostgreSQL database of `cluster`, each with its data
/// directory in `dir`.
async fn servers<const N: usize>(cluster: &Postgres, dir: &std::path::Path) -> [TestServer; N] {
    let mut servers = Vec::new();
    for i in 0..N {
        let mut config = support::config(&dir.join(format!("server{i}")));
        config.storage.postgres = Some(cluster.connection_string("postgres"));
        servers.push(TestServer::start_with(config).await);
    }
    servers
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} servers started"))
}

/// Two servers sharing one PostgreSQL database: a device on each, what one
/// writes the other receives, through a sync and through a long-poll woken
/// by a commit made through the other server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_servers_sharing_postgresql_converge_and_wake() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let [one, two] = servers(&cluster, dir.path()).await;
    publish_schema(&one.url("todo"), dir.path()).await;
    // Nothing of the databases is in the data directories.
    assert!(!dir.path().join("server0").join("todo.db").exists());

    let a = device(dir.path(), "a", &one.url("todo"), "ann").await;
    let b = device(dir.path(), "b", &two.url("todo"), "bob").await;
    a.insert(&todo("written on a")).await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(rows(&b).await, rows(&a).await);
    let mut edited = rows(&b).await.remove(0);
    edited.title = "edited on b".into();
    b.update(&edited).await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(rows(&a).await, vec![edited]);

    // A long-poll waiting on the second server, woken by a push through the
    // first.
    // Its interval is longer than the test: only a wake-up delivers in time.
    let mut b_events = b.auto_sync(Duration::from_secs(120));
    until_waiting(&two, 1).await;
    let row = todo("woke b");
    a.insert(&row).await.unwrap();
    a.sync().await.unwrap();
    let deadline = Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout(deadline, b_events.next())
            .await
            .expect("the device on the other server hears of the write");
        if matches!(&event, Some(sync_runtime::SyncEvent::Received(_))) {
            break;
        }
    }
    assert_eq!(b.get::<Todo>(&row.id).await.unwrap(), Some(row));
    drop(b_events);
    one.stop().await;
    two.stop().await;
}

/// A push acknowledged by one server is in the next pull through it or
/// through another, however soon that pull comes: a server answers from the
/// horizon as PostgreSQL has it, not as the last notification it heard, so
/// it never hands out an answer it kept from before the push. Busy threads
/// keep both cores taken, so that the push's notification is often heard
/// after the pull came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_acknowledged_is_in_the_next_pull_through_any_server() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let [one, two] = servers(&cluster, dir.path()).await;
    publish_schema(&one.url("todo"), dir.path()).await;
    let writer = device(dir.path(), "writer", &one.url("todo"), "ann").await;
    let same = device(dir.path(), "same", &one.url("todo"), "bob").await;
    let other = device(dir.path(), "other", &two.url("todo"), "cy").await;
    // Two devices of one app version at one cursor share answers.
    let same_twin = device(dir.path(), "same-twin", &one.url("todo"), "dee").await;
    let other_twin = device(dir.path(), "other-twin", &two.url("todo"), "eve").await;
    let busy = synced_testkit::busy::BusyCores::start(4);
    // Without catching up, most runs of 30 writes missed one.
    for n in 0..30 {
        for reader in [&same, &other, &same_twin, &other_twin] {
            reader.sync().await.unwrap();
        }
        let row = todo(&format!("written {n}"));
        writer.insert(&row).await.unwrap();
        writer.send_changes().await.unwrap();
        for reader in [&same, &other] {
            reader.check_changes().await.unwrap();
            assert_eq!(
                reader.get::<Todo>(&row.id).await.unwrap().as_ref(),
                Some(&row),
                "write {n}: the next pull missed it"
            );
        }
    }
    drop(busy);
    one.stop().await;
    two.stop().await;
}

/// Many devices pushing and pulling at once through three servers sharing
/// one PostgreSQL database: no request fails, and every device ends with
/// every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_through_three_servers_at_once() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sync_server=warn,sync_runtime=warn")
        .with_test_writer()
        .try_init();
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let servers: [TestServer; 3] = servers(&cluster, dir.path()).await;
    publish_schema(&servers[0].url("todo"), dir.path()).await;
    let mut devices = Vec::new();
    for d in 0..12 {
        let url = servers[d % 3].url("todo");
        devices.push(device(dir.path(), &format!("d{d}"), &url, &format!("user{d}")).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (d, db) in devices.iter().enumerate() {
        let db = db.clone();
        tasks.spawn(async move {
            for round in 0..5 {
                for n in 0..4 {
                    db.insert(&todo(&format!("{d}-{round}-{n}"))).await.unwrap();
                }
                db.sync().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for db in &devices {
        db.sync().await.unwrap();
    }
    for db in &devices {
        assert_eq!(rows(db).await.len(), 12 * 5 * 4);
    }
    for server in servers {
        server.stop().await;
    }
}

/// Requests naming databases that do not exist, as any token holder may
/// send, are each answered 404 from a query on a connection the server
/// keeps: none opens a connection to PostgreSQL of its own. A name too long
/// for PostgreSQL is a bad request; a database closed to users is refused
/// as not served there yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_names_open_no_connections() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let [server] = servers(&cluster, dir.path()).await;
    publish_schema(&server.url("todo"), dir.path()).await;
    let client = support::connect(&cluster, "postgres").await;
    // Sessions started so far, counted once they end or report.
    let sessions = async || -> i64 {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        client
            .query_one(
                "SELECT sessions FROM pg_stat_database WHERE datname = 'postgres'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    let before = sessions().await;
    let http = reqwest::Client::new();
    for n in 0..30 {
        let answer = http
            .get(format!("{}/pull", server.url(&format!("missing{n}"))))
            .bearer_auth(support::token("ann"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);
    }
    let after = sessions().await;
    assert!(
        after - before < 5,
        "{} sessions for 30 requests",
        after - before
    );
    // A name PostgreSQL cannot hold (SQLite's may be a byte longer) is a
    // bad request, said so, and no server error.
    let long = "x".repeat(64);
    let answer = http
        .get(format!("{}/pull", server.url(&long)))
        .bearer_auth(support::token("ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("at most 63"));
    let created = synced_testkit::publish_schema::<Todo>(&server.url(&long)).await;
    assert!(
        matches!(
            &created,
            Err(sync_runtime::Error::Rejected { status: 400, .. })
        ),
        "{created:?}"
    );
    // A database the configuration does not list is closed to users, as on
    // SQLite: a user's write is refused and kept on the device, and nothing
    // of the database reaches it.
    let url = server.url("unlisted");
    publish_schema(&url, dir.path()).await;
    let admin = sync_runtime::SyncDb::open_in_memory()
        .await
        .unwrap()
        .with_remote(sync_runtime::Remote::new(&url).api_key(support::ADMIN_KEY));
    admin.register::<Todo>().await.unwrap();
    admin.insert(&todo("the admin's")).await.unwrap();
    admin.sync().await.unwrap();
    let user = device(dir.path(), "user", &url, "ann").await;
    user.insert(&todo("ann's")).await.unwrap();
    let report = user.sync().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(rows(&user).await.is_empty());
    assert_eq!(user.rejected::<Todo>().await.unwrap().len(), 1);
    server.stop().await;
}

/// The databases of a server share its connections to PostgreSQL: thirty
/// databases, each written to, keep no more open than one database's pool
/// and a listener each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_share_their_connections() {
    const DATABASES: usize = 30;
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..DATABASES).map(|n| format!("db{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut config = synced_testkit::config_sharing(&dir.path().join("server"), &names);
    config.storage.postgres = Some(cluster.connection_string("postgres"));
    let server = TestServer::start_with(config).await;
    for n in 0..DATABASES {
        let url = server.url(&format!("db{n}"));
        publish_schema(&url, dir.path()).await;
        let db = device(dir.path(), &format!("d{n}"), &url, "ann").await;
        db.insert(&todo("one")).await.unwrap();
        db.sync().await.unwrap();
    }
    let client = support::connect(&cluster, "postgres").await;
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // One pool of 16, a listener a database, and this connection.
    assert!(open <= 16 + DATABASES as i64 + 1, "{open} connections open");
    server.stop().await;
}

/// Publishing an app version that renames, retires and adds columns evolves
/// the tables on PostgreSQL: the rows there read the new columns as a row
/// that never wrote them does, a backend writes them under their new names,
/// and its writes reach devices of both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_evolves_on_postgresql_and_a_backend_writes_its_new_columns() {
    let cluster = Postgres::start().expect("a PostgreSQL cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let [server] = servers(&cluster, dir.path()).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let old = device(dir.path(), "old", &url, "ann").await;
    let first = todo("first");
    old.insert(&first).await.unwrap();
    old.sync().await.unwrap();

    synced_testkit::publish_schema::<TodoV2>(&url)
        .await
        .unwrap();
    let client = support::connect(&cluster, "postgres").await;
    let read = client
        .query_one(
            "SELECT label, priority, due, note FROM todo.todos WHERE id = $1",
            &[&first.id.to_string()],
        )
        .await
        .unwrap();
    let read: (String, i64, Option<i64>, Option<String>) =
        (read.get(0), read.get(1), read.get(2), read.get(3));
    assert_eq!(read, ("first".into(), 3, None, None));

    // A backend writes under the new names, as any client of PostgreSQL.
    let backend = sync_runtime::SyncId::new();
    client
        .batch_execute(&format!(
            "INSERT INTO todo.todos (id, label, priority) VALUES ('{backend}', 'from the backend', 5);
             UPDATE todo.todos SET label = 'first, edited', due = 7 WHERE id = '{}';",
            first.id
        ))
        .await
        .unwrap();

    let new = sync_runtime::SyncDb::open(dir.path().join("new.db"))
        .await
        .unwrap()
        .with_remote(sync_runtime::Remote::new(&url).bearer_token(support::token("bob")));
    new.register::<TodoV2>().await.unwrap();
    new.sync().await.unwrap();
    let read: Vec<(String, bool, Option<i64>, i64)> = new
        .query::<TodoV2>("ORDER BY label", sync_runtime::params![])
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.label, row.done, row.due, row.priority))
        .collect();
    assert_eq!(
        read,
        [
            ("first, edited".to_owned(), false, Some(7), 3),
            ("from the backend".to_owned(), false, None, 5),
        ]
    );
    old.sync().await.unwrap();
    let mut titles: Vec<String> = rows(&old).await.into_iter().map(|t| t.title).collect();
    titles.sort();
    assert_eq!(titles, ["first, edited", "from the backend"]);
    server.stop().await;
}
