//! Reads of a database file run on read-only connections of their own: they
//! neither wait for an open write transaction nor see it before it commits,
//! and nothing the app's SQL does on one changes what the next read sees.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::time::Duration;

use sync_runtime::{Error, Options, SyncDb, SyncId, Synced, params};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "notes")]
struct Note {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tags")]
struct Tag {
    #[synced(primary_key)]
    name: String,
}

fn note(text: &str) -> Note {
    Note {
        id: SyncId::new(),
        text: text.into(),
    }
}

/// A bound on a wait that must end, not a measure of how long it takes.
const BOUND: Duration = Duration::from_secs(30);

async fn open(dir: &tempfile::TempDir, options: Options) -> SyncDb {
    let db = SyncDb::open_with(dir.path().join("notes.db"), options)
        .await
        .unwrap();
    db.register::<Note>().await.unwrap();
    db
}

#[tokio::test]
async fn reads_run_while_a_write_transaction_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    let first = note("committed");
    db.insert(&first).await.unwrap();

    let second = note("in the open transaction");
    // Holds the write connection until the reads below are done.
    let (writer, finish) = hold_write_connection(&db, second.clone()).await;

    // The write connection is busy; these reads go on without it, and see the
    // last commit, not the open transaction.
    let reads = async {
        let got = db.get::<Note>(&first.id).await.unwrap();
        let all: Vec<Note> = db.query("", params![]).await.unwrap();
        let count: Vec<i64> = db
            .read_with("SELECT count(*) FROM notes", params![], |r| r.get_at(0))
            .await
            .unwrap();
        (got, all, count)
    };
    let (got, all, count) = tokio::time::timeout(BOUND, reads)
        .await
        .expect("the reads waited for the write transaction");
    assert_eq!(got, Some(first.clone()));
    assert_eq!(all, std::slice::from_ref(&first));
    assert_eq!(count, [1]);

    finish.send(()).unwrap();
    writer.await.unwrap().unwrap();
    // Committed: every read from now on sees it.
    assert_eq!(db.get::<Note>(&second.id).await.unwrap(), Some(second));
}

#[tokio::test]
async fn many_reads_at_once_share_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default().read_connections(2)).await;
    let notes: Vec<Note> = (0..64).map(|i| note(&format!("note {i}"))).collect();
    db.transaction({
        let notes = notes.clone();
        move |tx| {
            for n in &notes {
                tx.insert(n)?;
            }
            Ok::<_, Error>(())
        }
    })
    .await
    .unwrap();
    let reads = notes.iter().map(|n| {
        let db = db.clone();
        let id = n.id;
        tokio::spawn(async move { db.get::<Note>(&id).await })
    });
    let mut read = Vec::new();
    for r in reads {
        read.push(r.await.unwrap().unwrap().unwrap());
    }
    assert_eq!(read, notes);
}

#[tokio::test]
async fn the_apps_sql_cannot_change_a_read_connection_for_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    // One read connection, so that every read below runs on the same one.
    let db = open(&dir, Options::default().read_connections(1)).await;
    let other = dir.path().join("other.db");
    let attach = format!("ATTACH '{}' AS other", other.display());
    for sql in [
        "BEGIN",
        "SAVEPOINT s",
        attach.as_str(),
        "PRAGMA query_only = 0",
        "PRAGMA cache_size = 1",
    ] {
        let refused = db.read_with(sql, params![], |_| Ok(())).await;
        assert!(refused.is_err(), "{sql} ran on a read connection");
        // Whatever it tried, the next read sees the next commit.
        let n = note(sql);
        db.insert(&n).await.unwrap();
        assert_eq!(db.get::<Note>(&n.id).await.unwrap(), Some(n), "after {sql}");
    }
    assert!(matches!(
        db.read_with("DELETE FROM notes", params![], |_| Ok(()))
            .await,
        Err(Error::NotReadOnly)
    ));
    // Reading pragmas, as an app's diagnostics might, is a read.
    let columns: Vec<String> = db
        .read_with("PRAGMA table_info(notes)", params![], |r| r.get("name"))
        .await
        .unwrap();
    assert_eq!(columns, ["id", "text"]);
}

#[tokio::test]
async fn a_panic_while_reading_reaches_the_caller_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default().read_connections(1)).await;
    let n = note("still here");
    db.insert(&n).await.unwrap();
    let panicked = tokio::spawn({
        let db = db.clone();
        async move {
            db.read_with("SELECT 1", params![], |_| -> sync_runtime::Result<()> {
                panic!("the app's mapper panicked")
            })
            .await
        }
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(db.get::<Note>(&n.id).await.unwrap(), Some(n));
}

#[tokio::test]
async fn reads_know_tables_registered_and_dropped_since_they_started() {
    let dir = tempfile::tempdir().unwrap();
    for connections in [0, 3] {
        let db = open(&dir, Options::default().read_connections(connections)).await;
        assert!(matches!(
            db.query::<Tag>("", params![]).await,
            Err(Error::NotRegistered { .. })
        ));
        db.register::<Tag>().await.unwrap();
        db.insert(&Tag {
            name: format!("tag {connections}"),
        })
        .await
        .unwrap();
        assert_eq!(db.query::<Tag>("", params![]).await.unwrap().len(), 1);
        db.drop_tracking::<Tag>().await.unwrap();
        assert!(matches!(
            db.query::<Tag>("", params![]).await,
            Err(Error::NotRegistered { .. })
        ));
        db.execute_raw("DROP TABLE tags", params![]).await.unwrap();
    }
}

#[tokio::test]
async fn reads_after_a_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    let n = note("before");
    db.insert(&n).await.unwrap();
    db.vacuum().await.unwrap();
    assert_eq!(db.get::<Note>(&n.id).await.unwrap(), Some(n));
}

/// Where no read connection can be opened (here the file's directory is
/// gone; elsewhere, no file descriptor is left), reads run on the write
/// connection, as they would without read connections.
#[tokio::test]
async fn reads_go_on_where_no_read_connection_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    let n = note("kept");
    db.insert(&n).await.unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    for _ in 0..3 {
        assert_eq!(db.get::<Note>(&n.id).await.unwrap(), Some(n.clone()));
    }
    let later = note("written after");
    db.insert(&later).await.unwrap();
    assert_eq!(db.query::<Note>("", params![]).await.unwrap().len(), 2);
}

/// Opens a write transaction that inserts `held` and keeps the write
/// connection until `finish` is sent; returns once it is open.
async fn hold_write_connection(
    db: &SyncDb,
    held: Note,
) -> (
    tokio::task::JoinHandle<Result<(), Error>>,
    std::sync::mpsc::Sender<()>,
) {
    let (opened, wait_opened) = tokio::sync::oneshot::channel();
    let (finish, wait_finish) = std::sync::mpsc::channel::<()>();
    let writer = tokio::spawn({
        let db = db.clone();
        async move {
            db.transaction(move |tx| {
                tx.insert(&held)?;
                opened.send(()).unwrap();
                wait_finish.recv().unwrap();
                Ok::<_, Error>(())
            })
            .await
        }
    });
    wait_opened.await.unwrap();
    (writer, finish)
}

/// A server's pull of a device is a read: it runs on a read connection while
/// a push holds the write connection, and sees the last commit.
#[tokio::test]
async fn a_pull_runs_while_a_push_holds_the_write_connection() {
    use sync_runtime::server::Replica;
    use sync_runtime::{BatchLimits, Cursor, SiteId};

    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    let first = note("committed");
    db.insert(&first).await.unwrap();
    let replica = Replica::new(db.clone());
    let device = SiteId::from_bytes([7; 16]);

    let (writer, finish) = hold_write_connection(&db, note("in the open transaction")).await;
    let pull = replica.export_for_device(device, Cursor::BEGINNING, BatchLimits::default(), None);
    let (batch, seen) = tokio::time::timeout(BOUND, pull)
        .await
        .expect("the pull waited for the write transaction")
        .unwrap();
    assert_eq!((batch.rows, seen), (1, 0));
    assert!(batch.complete);
    finish.send(()).unwrap();
    writer.await.unwrap().unwrap();
    let (batch, _) = replica
        .export_for_device(device, Cursor::BEGINNING, BatchLimits::default(), None)
        .await
        .unwrap();
    assert_eq!(batch.rows, 2);
}

/// A filtered pull reads on a read connection as well: while a push holds the
/// write connection, a pull that gives the reader nothing new to hold answers;
/// what a pull gives the reader is recorded once the write connection is free,
/// so that a row it may no longer read is evicted later.
#[tokio::test]
async fn a_filtered_pull_runs_while_a_push_holds_the_write_connection() {
    use sync_runtime::server::{Replica, RowFilter, RowFilters};
    use sync_runtime::{BatchLimits, Cursor, SiteId, wire};

    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    let mine = note("mine");
    db.insert(&mine).await.unwrap();
    db.insert(&note("theirs")).await.unwrap();
    let replica = Replica::new(db.clone());
    let reader = SiteId::from_bytes([9; 16]);
    let filter = RowFilters::new(RowFilter::Nothing).table(
        "notes",
        RowFilter::Where {
            sql: "text LIKE 'mine%'".into(),
            params: vec![],
        },
    );
    let pull = |from: Cursor| {
        replica.export_filtered(from, reader, BatchLimits::default(), filter.clone())
    };
    let first = pull(Cursor::BEGINNING).await.unwrap();
    assert_eq!(first.rows, 1);

    let (writer, finish) = hold_write_connection(&db, note("mine too")).await;
    let nothing_new = tokio::time::timeout(BOUND, pull(first.next.clone()))
        .await
        .expect("the filtered pull waited for the write transaction")
        .unwrap();
    assert_eq!(nothing_new.rows, 0);
    assert!(nothing_new.complete);
    finish.send(()).unwrap();
    writer.await.unwrap().unwrap();

    let second = pull(first.next.clone()).await.unwrap();
    assert_eq!(second.rows, 1);
    // The row the first pull sent moves out of the reader's sight: it is held,
    // so it goes as an eviction.
    db.update(&Note {
        text: "given away".into(),
        ..mine.clone()
    })
    .await
    .unwrap();
    let third = pull(second.next.clone()).await.unwrap();
    let payload = wire::decode(&third.payload).unwrap();
    assert_eq!(payload.rows.len(), 1);
    assert_eq!(payload.rows[0].cl, wire::EVICT);
}

/// Changes another connection recorded and no version closed yet (a plain
/// SQLite connection wrote the file) are in the next pull all the same: a
/// read connection cannot close their version, so the write connection reads.
#[tokio::test]
async fn a_pull_closes_what_another_connection_left_open() {
    use sync_runtime::server::Replica;
    use sync_runtime::{BatchLimits, Cursor, SiteId};

    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    db.insert(&note("typed")).await.unwrap();
    let plain = rusqlite::Connection::open(dir.path().join("notes.db")).unwrap();
    let id = SyncId::new();
    plain
        .execute(
            "INSERT INTO notes (id, text) VALUES (?1, 'by another connection')",
            [id.to_string()],
        )
        .unwrap();
    drop(plain);
    let replica = Replica::new(db.clone());
    let (batch, _) = replica
        .export_for_device(
            SiteId::from_bytes([7; 16]),
            Cursor::BEGINNING,
            BatchLimits::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        batch.rows, 2,
        "the row the other connection wrote is in the pull"
    );
    let version = db.db_version().await.unwrap();
    assert_eq!(batch.version, version);
}

/// A path that names an in-memory database (`:memory:`) has no file for a
/// read connection to open: reads stay on the write connection, which holds
/// the database.
#[tokio::test]
async fn a_memory_path_reads_its_own_database() {
    let db = SyncDb::open(":memory:").await.unwrap();
    db.register::<Note>().await.unwrap();
    let n = note("in memory");
    db.insert(&n).await.unwrap();
    assert_eq!(db.get::<Note>(&n.id).await.unwrap(), Some(n));
}

/// A temporary table belongs to the connection that made it: once the app's
/// SQL makes one, reads run there.
#[tokio::test]
async fn temporary_tables_stay_readable_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, Options::default()).await;
    db.execute_raw("CREATE TEMP TABLE scratch (x)", params![])
        .await
        .unwrap();
    db.execute_raw("INSERT INTO scratch VALUES (1)", params![])
        .await
        .unwrap();
    let count: Vec<i64> = db
        .read_with("SELECT count(*) FROM scratch", params![], |r| r.get_at(0))
        .await
        .unwrap();
    assert_eq!(count, [1]);
}

/// What a read may not do to a read connection, it may not do to the write
/// connection either, where reads run without read connections.
#[tokio::test]
async fn a_read_on_the_write_connection_cannot_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let on_file = open(&dir, Options::default().read_connections(0)).await;
    let in_memory = SyncDb::open_in_memory().await.unwrap();
    in_memory.register::<Note>().await.unwrap();
    for db in [on_file, in_memory] {
        for sql in [
            "PRAGMA query_only = 1",
            "BEGIN",
            "ATTACH ':memory:' AS other",
        ] {
            let refused = db.read_with(sql, params![], |_| Ok(())).await;
            assert!(refused.is_err(), "{sql} ran");
        }
        db.insert(&note("still writable")).await.unwrap();
    }
}
