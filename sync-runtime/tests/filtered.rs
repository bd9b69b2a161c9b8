//! Row-level read filters: each reader receives exactly the rows it may read, and
//! forgets the rows it may no longer read.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use sync_runtime::server::{PushReport, Replica, RowFilter, RowFilters};
use sync_runtime::{BatchLimits, Cursor, Since, SyncDb, SyncId, Synced, Value, params, wire};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "notes")]
struct Note {
    #[synced(primary_key)]
    id: SyncId,
    owner: String,
    #[synced(default = false)]
    shared: bool,
    text: String,
}

fn note(owner: &str, shared: bool, text: &str) -> Note {
    Note {
        id: SyncId::new(),
        owner: owner.into(),
        shared,
        text: text.into(),
    }
}

/// A device of `user` and the cursor it keeps on the server.
struct Reader {
    db: SyncDb,
    user: &'static str,
    cursor: Cursor,
}

impl Reader {
    async fn new(user: &'static str) -> Self {
        let db = SyncDb::open_in_memory().await.unwrap();
        db.register::<Note>().await.unwrap();
        Self {
            db,
            user,
            cursor: Cursor::BEGINNING,
        }
    }

    fn filter(&self) -> RowFilters {
        RowFilters::new(RowFilter::Nothing).table(
            "notes",
            RowFilter::Where {
                sql: "owner = ?1 OR shared = 1".into(),
                params: vec![Value::from(self.user)],
            },
        )
    }

    /// Fetches everything new from `server`, in small batches.
    async fn pull(&mut self, server: &SyncDb) {
        let limits = BatchLimits::default().max_rows(2);
        self.pull_in(server, limits).await;
    }

    /// Fetches everything new from `server`, in batches of `limits`.
    async fn pull_in(&mut self, server: &SyncDb, limits: BatchLimits) {
        loop {
            let batch = Replica::new(server.clone())
                .export_filtered(
                    self.cursor.clone(),
                    self.db.site_id(),
                    limits,
                    self.filter(),
                )
                .await
                .unwrap();
            self.db.apply_changes(&batch.payload).await.unwrap();
            self.cursor = batch.next;
            if batch.complete {
                return;
            }
        }
    }

    /// The next batch for this device, without taking it (an answer lost on the
    /// way).
    async fn peek(&self, server: &SyncDb) -> sync_runtime::Batch {
        let limits = BatchLimits::default();
        let (cursor, site) = (self.cursor.clone(), self.db.site_id());
        Replica::new(server.clone())
            .export_filtered(cursor, site, limits, self.filter())
            .await
            .unwrap()
    }

    /// The texts of the rows this device holds, sorted.
    async fn texts(&self) -> Vec<String> {
        let mut texts: Vec<String> = self
            .db
            .query::<Note>("", params![])
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.text)
            .collect();
        texts.sort();
        texts
    }

    /// Every key this device's clocks know, deleted rows included.
    async fn known_keys(&self) -> Vec<Value> {
        self.db
            .changes_since(0)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|c| c.pk)
            .collect()
    }
}

/// A server's database: on a file, as a server keeps it, so that its filtered
/// exports read on read connections and record their marks in a write of
/// their own.
struct Server {
    db: SyncDb,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = SyncDb;

    fn deref(&self) -> &SyncDb {
        &self.db
    }
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = SyncDb::open(dir.path().join("server.db")).await.unwrap();
    db.register::<Note>().await.unwrap();
    Server { db, _dir: dir }
}

#[tokio::test]
async fn a_reader_receives_only_the_rows_it_may_read() {
    let server = server().await;
    let secret = note("bob", false, "bob's secret");
    for row in [
        note("ann", false, "ann's own"),
        secret.clone(),
        note("bob", true, "bob's shared"),
    ] {
        server.insert(&row).await.unwrap();
    }
    server.delete::<Note>(&secret.id).await.unwrap();
    server
        .insert(&note("bob", false, "bob's other"))
        .await
        .unwrap();
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    assert_eq!(ann.texts().await, ["ann's own", "bob's shared"]);
    // Not its values, not its delete, not its existence.
    assert!(!ann.known_keys().await.contains(&Value::from(secret.id)));
    assert_eq!(ann.known_keys().await.len(), 2 * 4);
}

#[tokio::test]
async fn rows_move_out_and_in_as_the_filter_says() {
    let server = server().await;
    let shared = note("bob", true, "shared");
    let private = note("bob", false, "private");
    server.insert(&shared).await.unwrap();
    server.insert(&private).await.unwrap();
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    assert_eq!(ann.texts().await, ["shared"]);

    // Un-shared: ann forgets the row, and records nothing to send.
    server
        .execute_raw(
            "UPDATE notes SET shared = 0 WHERE id = ?1",
            params![shared.id],
        )
        .await
        .unwrap();
    ann.pull(&server).await;
    assert!(ann.texts().await.is_empty());
    assert!(ann.known_keys().await.is_empty());
    let local = ann.db.export_local_changes(Since::Beginning).await.unwrap();
    assert_eq!(sync_runtime::wire::decode(&local).unwrap().rows.len(), 0);

    // Given to ann: the whole row arrives, the columns written before too.
    server
        .execute_raw(
            "UPDATE notes SET owner = 'ann' WHERE id = ?1",
            params![private.id],
        )
        .await
        .unwrap();
    ann.pull(&server).await;
    assert_eq!(
        ann.db.get::<Note>(&private.id).await.unwrap(),
        Some(Note {
            owner: "ann".into(),
            ..private.clone()
        })
    );

    // Deleted: the delete reaches the reader that held the row.
    server.delete::<Note>(&private.id).await.unwrap();
    ann.pull(&server).await;
    assert!(ann.texts().await.is_empty());
}

#[tokio::test]
async fn an_eviction_that_was_not_received_goes_again() {
    let server = server().await;
    let row = note("bob", true, "shared");
    server.insert(&row).await.unwrap();
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    server
        .execute_raw("UPDATE notes SET shared = 0", params![])
        .await
        .unwrap();
    // The answer is lost: ann keeps its cursor.
    let lost = ann.peek(&server).await;
    assert_eq!(lost.rows, 1);
    ann.pull(&server).await;
    assert!(ann.texts().await.is_empty());
    // Once received, it does not go again.
    let again = ann.peek(&server).await;
    assert_eq!(again.rows, 0);
}

#[tokio::test]
async fn a_row_the_reader_created_is_evicted_when_given_away() {
    let server = server().await;
    let mut ann = Reader::new("ann").await;
    let mine = note("ann", false, "mine");
    ann.db.insert(&mine).await.unwrap();
    let pushed = ann.db.export_local_changes(Since::Beginning).await.unwrap();
    server.apply_changes(&pushed).await.unwrap();
    ann.pull(&server).await;
    assert_eq!(ann.texts().await, ["mine"]);

    server
        .execute_raw(
            "UPDATE notes SET owner = 'bob' WHERE id = ?1",
            params![mine.id],
        )
        .await
        .unwrap();
    ann.pull(&server).await;
    assert!(ann.texts().await.is_empty());

    let mut bob = Reader::new("bob").await;
    bob.pull(&server).await;
    assert_eq!(bob.texts().await, ["mine"]);
}

#[tokio::test]
async fn a_device_cannot_push_evictions() {
    let (server, other) = (server().await, server().await);
    let row = note("bob", true, "shared");
    server.insert(&row).await.unwrap();
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    server
        .execute_raw("UPDATE notes SET shared = 0", params![])
        .await
        .unwrap();
    let eviction = ann.peek(&server).await;
    // Sent to another replica as a push from the server's own site id.
    let error = Replica::new(other.clone())
        .apply_push(wire::decode(&eviction.payload).unwrap(), server.site_id())
        .await
        .unwrap_err();
    assert!(
        matches!(error, sync_runtime::Error::Refused { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_device_cannot_claim_a_row_another_site_created() {
    use sync_runtime::wire::Compression;
    let (server, alice, mallory) = (server().await, server().await, server().await);
    alice
        .insert(&note("alice", false, "alice's"))
        .await
        .unwrap();
    // Mallory rewrites alice's payload: the columns as its own, the row's
    // creation still alice's, which the server has never seen.
    let mut payload =
        wire::decode(&alice.export_local_changes(Since::Beginning).await.unwrap()).unwrap();
    payload.exporter = mallory.site_id();
    payload.sites.push(mallory.site_id());
    let own = (payload.sites.len() - 1) as u32;
    for row in &mut payload.rows {
        for column in &mut row.columns {
            column.origin.site = own;
        }
    }
    // The row is rejected alone, as a row a peer created reaches a server
    // through a device that received it: nothing of it is applied.
    let forged = wire::encode(&payload, Compression::None);
    let report = Replica::new(server.clone())
        .apply_push(wire::decode(&forged).unwrap(), mallory.site_id())
        .await
        .unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.applied, sync_runtime::ApplyReport::default());
    assert!(
        server
            .query::<Note>("", params![])
            .await
            .unwrap()
            .is_empty()
    );

    // Once the server has the row, the same context is fine: an update.
    let honest = alice.export_local_changes(Since::Beginning).await.unwrap();
    Replica::new(server.clone())
        .apply_push(wire::decode(&honest).unwrap(), alice.site_id())
        .await
        .unwrap();
    Replica::new(server.clone())
        .apply_push(wire::decode(&forged).unwrap(), mallory.site_id())
        .await
        .unwrap();

    // A context that ties with the server's record of the creation but names a
    // site that would win the tie changes nothing of who created the row.
    let mut tied = payload.clone();
    tied.sites[0] = sync_runtime::SiteId::from_bytes([0xff; 16]);
    let tied = wire::encode(&tied, Compression::None);
    Replica::new(server.clone())
        .apply_push(wire::decode(&tied).unwrap(), mallory.site_id())
        .await
        .unwrap();
    let creators: Vec<_> = server
        .changes_since(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == sync_runtime::ChangeKind::Insert)
        .map(|c| c.site_id)
        .collect();
    assert_eq!(creators, [alice.site_id()]);
}

#[tokio::test]
async fn the_delete_of_a_row_the_reader_created_reaches_it() {
    let server = server().await;
    let mut ann = Reader::new("ann").await;
    let mine = note("ann", true, "mine");
    ann.db.insert(&mine).await.unwrap();
    let pushed = ann.db.export_local_changes(Since::Beginning).await.unwrap();
    Replica::new(server.clone())
        .apply_push(wire::decode(&pushed).unwrap(), ann.db.site_id())
        .await
        .unwrap();
    ann.pull(&server).await;

    server.delete::<Note>(&mine.id).await.unwrap();
    ann.pull(&server).await;
    assert!(ann.texts().await.is_empty());
}

impl Reader {
    /// What this device may write: its own rows.
    fn write_filter(&self) -> RowFilters {
        RowFilters::new(RowFilter::Nothing).table(
            "notes",
            RowFilter::Where {
                sql: "owner = ?1".into(),
                params: vec![Value::from(self.user)],
            },
        )
    }

    /// Sends every change made here to `server`, with this user's filters, and
    /// takes back the server's state of the rows it refused, as a device does.
    async fn push(&self, server: &SyncDb) -> PushReport {
        let exported_at = self.db.db_version().await.unwrap();
        let payload = self
            .db
            .export_local_changes(Since::Beginning)
            .await
            .unwrap();
        let site = self.db.site_id();
        let report = Replica::new(server.clone())
            .apply_push_checked(
                wire::decode(&payload).unwrap(),
                site,
                self.write_filter(),
                self.filter(),
            )
            .await
            .unwrap();
        assert_eq!(report.rejected.is_empty(), report.restore.is_empty());
        if !report.restore.is_empty() {
            self.db
                .apply_restore(&report.restore, exported_at)
                .await
                .unwrap();
        }
        report
    }
}

/// A server with ann's own note and bob's shared one, and ann's device with both.
async fn two_owners() -> (Server, Reader, Note, Note) {
    let server = server().await;
    let (annes, bobs) = (note("ann", false, "ann's"), note("bob", true, "bob's"));
    server.insert(&annes).await.unwrap();
    server.insert(&bobs).await.unwrap();
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    (server, ann, annes, bobs)
}

#[tokio::test]
async fn a_write_the_policy_allows_is_applied() {
    let (server, ann, annes, _) = two_owners().await;
    let edited = Note {
        text: "edited".into(),
        ..annes.clone()
    };
    ann.db.update(&edited).await.unwrap();
    ann.db.insert(&note("ann", false, "new")).await.unwrap();
    let report = ann.push(&server).await;
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(server.get::<Note>(&annes.id).await.unwrap(), Some(edited));
    assert_eq!(server.query::<Note>("", params![]).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_rejected_update_is_undone_on_the_device_and_the_rest_applies() {
    let (server, mut ann, annes, bobs) = two_owners().await;
    let vandalised = Note {
        text: "vandalised".into(),
        ..bobs.clone()
    };
    ann.db.update(&vandalised).await.unwrap();
    let mine = Note {
        text: "mine, edited".into(),
        ..annes.clone()
    };
    ann.db.update(&mine).await.unwrap();
    let report = ann.push(&server).await;
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].pk, [Value::from(bobs.id)]);
    assert_eq!(
        server.get::<Note>(&bobs.id).await.unwrap(),
        Some(bobs.clone())
    );
    assert_eq!(server.get::<Note>(&annes.id).await.unwrap(), Some(mine));

    ann.pull(&server).await;
    assert_eq!(ann.db.get::<Note>(&bobs.id).await.unwrap(), Some(bobs));
    // Nothing left to send that would be refused again.
    assert!(ann.push(&server).await.rejected.is_empty());
}

#[tokio::test]
async fn a_rejected_creation_is_removed_from_the_device() {
    let (server, mut ann, _, _) = two_owners().await;
    let forged = note("bob", false, "in bob's name");
    ann.db.insert(&forged).await.unwrap();
    let report = ann.push(&server).await;
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(server.get::<Note>(&forged.id).await.unwrap(), None);
    ann.pull(&server).await;
    assert_eq!(ann.db.get::<Note>(&forged.id).await.unwrap(), None);
    assert_eq!(ann.texts().await, ["ann's", "bob's"]);
}

#[tokio::test]
async fn a_rejected_delete_brings_the_row_back_whole() {
    let (server, mut ann, _, bobs) = two_owners().await;
    ann.db.delete::<Note>(&bobs.id).await.unwrap();
    let report = ann.push(&server).await;
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(
        server.get::<Note>(&bobs.id).await.unwrap(),
        Some(bobs.clone())
    );
    ann.pull(&server).await;
    assert_eq!(ann.db.get::<Note>(&bobs.id).await.unwrap(), Some(bobs));
}

#[tokio::test]
async fn giving_a_row_away_is_a_write_the_new_owner_must_allow() {
    let (server, mut ann, annes, _) = two_owners().await;
    let given = Note {
        owner: "bob".into(),
        ..annes.clone()
    };
    ann.db.update(&given).await.unwrap();
    let report = ann.push(&server).await;
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    ann.pull(&server).await;
    assert_eq!(ann.db.get::<Note>(&annes.id).await.unwrap(), Some(annes));
}

/// A filtered reader's first fetch walks what it may read and what it holds, not
/// the history: the rows it created and may no longer read, or that were
/// deleted, go as evictions and deletes.
#[tokio::test]
async fn a_first_fetch_sends_what_the_reader_may_read_and_takes_back_the_rest() {
    let server = server().await;
    let ann = Reader::new("ann").await;
    let (kept, given, gone) = (
        note("ann", false, "kept"),
        note("ann", false, "given"),
        note("ann", false, "gone"),
    );
    for row in [&kept, &given, &gone] {
        ann.db.insert(row).await.unwrap();
    }
    assert!(ann.push(&server).await.rejected.is_empty());
    for row in [
        note("bob", false, "bob's private"),
        note("bob", true, "bob's shared"),
    ] {
        server.insert(&row).await.unwrap();
    }
    server
        .execute_raw(
            "UPDATE notes SET owner = 'bob' WHERE id = ?1",
            params![given.id],
        )
        .await
        .unwrap();
    server.delete::<Note>(&gone.id).await.unwrap();

    let mut ann = ann;
    ann.pull(&server).await;
    assert_eq!(ann.texts().await, ["bob's shared", "kept"]);
    let mut bob = Reader::new("bob").await;
    bob.pull(&server).await;
    assert_eq!(
        bob.texts().await,
        ["bob's private", "bob's shared", "given"]
    );
}

/// Rows that change while a first fetch goes batch by batch arrive as they are
/// at its end, whether the fetch had passed them or not.
#[tokio::test]
async fn rows_changed_during_a_first_fetch_arrive_as_they_end() {
    let server = server().await;
    let rows: Vec<Note> = (0..8)
        .map(|i| {
            note(
                if i % 2 == 0 { "ann" } else { "bob" },
                i < 4,
                &format!("{i}"),
            )
        })
        .collect();
    for row in &rows {
        server.insert(row).await.unwrap();
    }
    let mut ann = Reader::new("ann").await;
    let limits = BatchLimits::default().max_rows(2);
    let first = Replica::new(server.clone())
        .export_filtered(Cursor::BEGINNING, ann.db.site_id(), limits, ann.filter())
        .await
        .unwrap();
    assert!(!first.complete);
    assert_eq!(
        first.next.to_string().parse::<Cursor>(),
        Ok(first.next.clone())
    );
    ann.db.apply_changes(&first.payload).await.unwrap();
    ann.cursor = first.next;
    // Edit, un-share, share and delete rows on both sides of where it stopped.
    for (sql, row) in [
        (
            "UPDATE notes SET text = text || ' edited' WHERE id = ?1",
            &rows[0],
        ),
        ("UPDATE notes SET shared = 0 WHERE id = ?1", &rows[1]),
        ("UPDATE notes SET shared = 1 WHERE id = ?1", &rows[7]),
        ("DELETE FROM notes WHERE id = ?1", &rows[6]),
        (
            "UPDATE notes SET text = text || ' edited' WHERE id = ?1",
            &rows[4],
        ),
    ] {
        server.execute_raw(sql, params![row.id]).await.unwrap();
    }
    ann.pull(&server).await;
    let mut fresh = Reader::new("ann").await;
    fresh.pull(&server).await;
    assert_eq!(ann.texts().await, fresh.texts().await);
    assert_eq!(ann.texts().await, ["0 edited", "2", "3", "4 edited", "7"]);
}

/// A device that asks from the beginning again (a reset) is sent what it may
/// read, and forgets what it holds but may no longer read.
#[tokio::test]
async fn a_reader_that_starts_over_forgets_what_it_may_no_longer_read() {
    let (server, mut ann, _, bobs) = two_owners().await;
    server
        .execute_raw(
            "UPDATE notes SET shared = 0 WHERE id = ?1",
            params![bobs.id],
        )
        .await
        .unwrap();
    ann.cursor = Cursor::BEGINNING;
    ann.pull(&server).await;
    assert_eq!(ann.texts().await, ["ann's"]);
    assert!(!ann.known_keys().await.contains(&Value::from(bobs.id)));
}

/// Deletes of rows a reader holds reach it as deletes (its clocks keep them),
/// however the batches are cut.
#[tokio::test]
async fn deletes_cut_into_batches_by_size_arrive_as_deletes() {
    let server = server().await;
    let rows = [note("ann", false, "one"), note("ann", false, "two")];
    for row in &rows {
        server.insert(row).await.unwrap();
    }
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    for row in &rows {
        server.delete::<Note>(&row.id).await.unwrap();
    }
    let one_row_each = BatchLimits::default().max_bytes(1);
    ann.pull_in(&server, one_row_each).await;
    assert!(ann.texts().await.is_empty());
    let known = ann.known_keys().await;
    for row in &rows {
        assert!(known.contains(&Value::from(row.id)), "{known:?}");
    }
}

/// Who may write another user's notes: a row anyone may write.
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "grants")]
struct Grant {
    #[synced(primary_key)]
    id: SyncId,
    owner: String,
    grantee: String,
}

/// A write policy may read other tables: it sees every row merged before in
/// the same push, in a table without a policy of its own too (the merge
/// writes such rows in sets, and writes them out before any policy reads).
#[tokio::test]
async fn a_policy_sees_the_rows_merged_before_it_in_the_same_push() {
    let server = server().await;
    server.register::<Grant>().await.unwrap();
    let device = SyncDb::open_in_memory().await.unwrap();
    device.register::<Grant>().await.unwrap();
    device.register::<Note>().await.unwrap();
    // Enough grants that some are written by a full set and the last ones
    // wait for the next.
    for i in 0..70 {
        let grantee = if i == 69 { "ann" } else { "someone" };
        let grant = Grant {
            id: SyncId::new(),
            owner: format!("owner {i}"),
            grantee: grantee.into(),
        };
        device.insert(&grant).await.unwrap();
    }
    let granted = note("owner 69", false, "written by ann, as granted");
    let not_granted = note("owner 68", false, "written by ann, not granted");
    device.insert(&granted).await.unwrap();
    device.insert(&not_granted).await.unwrap();

    let payload = device.export_local_changes(Since::Beginning).await.unwrap();
    let write = RowFilters::new(RowFilter::All).table(
        "notes",
        RowFilter::Where {
            sql: "owner = ?1 OR EXISTS (SELECT 1 FROM grants \
                  WHERE grants.owner = notes.owner AND grants.grantee = ?1)"
                .into(),
            params: vec![Value::from("ann")],
        },
    );
    let report = Replica::new(server.db.clone())
        .apply_push_checked(
            wire::decode(&payload).unwrap(),
            device.site_id(),
            write,
            RowFilters::new(RowFilter::All),
        )
        .await
        .unwrap();
    let refused: Vec<&[Value]> = report.rejected.iter().map(|r| &r.pk[..]).collect();
    assert_eq!(refused, [&[Value::from(not_granted.id)][..]], "{report:?}");
    let grants = server.query::<Grant>("", params![]).await.unwrap();
    assert_eq!(grants.len(), 70);
    let notes = server.query::<Note>("", params![]).await.unwrap();
    assert_eq!(notes, [granted]);
}

/// What ann may read.
fn anns() -> RowFilters {
    RowFilters::new(RowFilter::Nothing).table(
        "notes",
        RowFilter::Where {
            sql: "owner = ?1 OR shared = 1".into(),
            params: vec![Value::from("ann")],
        },
    )
}

/// The batch after `reader`'s cursor that every reader of its filter shares,
/// if the reader takes it: applied, and its cursor moved.
async fn take_shared(server: &SyncDb, reader: &mut Reader) -> bool {
    let replica = Replica::new(server.clone());
    let shared = replica
        .export_shared_filtered(
            reader.cursor.clone(),
            BatchLimits::default(),
            reader.filter(),
        )
        .await
        .unwrap()
        .expect("a batch after the beginning is shared");
    let shared = std::sync::Arc::new(shared);
    let taken = replica
        .take_shared(vec![(shared.clone(), reader.db.site_id())])
        .await
        .unwrap();
    if taken[0] {
        reader
            .db
            .apply_changes(&shared.batch.payload)
            .await
            .unwrap();
        reader.cursor = shared.batch.next.clone();
    }
    taken[0]
}

/// Readers of one filter share one batch: the rows they may read, whole. A
/// reader takes it unless it holds or created a row the batch leaves out,
/// which its own export must evict or keep; one that takes it holds its rows
/// from then on, so that they are evicted when it may no longer read them.
#[tokio::test]
async fn readers_of_one_filter_share_a_batch_unless_they_hold_a_row_it_leaves_out() {
    let server = server().await;
    server
        .insert(&note("ann", false, "ann's first"))
        .await
        .unwrap();
    let (mut phone, mut laptop) = (Reader::new("ann").await, Reader::new("ann").await);
    assert_eq!(phone.filter(), anns());
    for device in [&mut phone, &mut laptop] {
        device.pull(&server).await;
    }
    // From the beginning, each reader walks its own snapshot.
    let replica = Replica::new(server.db.clone());
    let first = replica
        .export_shared_filtered(Cursor::BEGINNING, BatchLimits::default(), anns())
        .await
        .unwrap();
    assert!(first.is_none());

    // Bob's shared note reaches the phone through the shared batch, and
    // nothing of bob's private one does.
    let shared = note("bob", true, "bob's shared");
    let private = note("bob", false, "bob's private");
    server.insert(&shared).await.unwrap();
    server.insert(&private).await.unwrap();
    assert!(take_shared(&server, &mut phone).await);
    assert_eq!(phone.texts().await, ["ann's first", "bob's shared"]);
    assert!(!phone.known_keys().await.contains(&Value::from(private.id)));

    // Un-shared: the phone holds it (it took the batch that sent it), so the
    // next shared batch, which leaves it out, is not the phone's: its own
    // export evicts it. The laptop never had it: it takes the shared batch,
    // which tells it nothing of the note.
    server
        .execute_raw(
            "UPDATE notes SET shared = 0 WHERE id = ?1",
            params![shared.id],
        )
        .await
        .unwrap();
    assert!(!take_shared(&server, &mut phone).await);
    phone.pull(&server).await;
    assert_eq!(phone.texts().await, ["ann's first"]);
    assert!(!phone.known_keys().await.contains(&Value::from(shared.id)));
    assert!(take_shared(&server, &mut laptop).await);
    assert_eq!(laptop.texts().await, ["ann's first"]);
    assert!(!laptop.known_keys().await.contains(&Value::from(shared.id)));

    // A row the laptop created, which ann may not read, is left out of the
    // shared batch: the laptop holds it, so it needs its own export.
    let given = note("bob", false, "given to bob by ann's laptop");
    laptop.db.insert(&given).await.unwrap();
    let payload = laptop
        .db
        .export_local_changes(Since::Beginning)
        .await
        .unwrap();
    replica
        .apply_push_checked(
            wire::decode(&payload).unwrap(),
            laptop.db.site_id(),
            RowFilters::new(RowFilter::All),
            anns(),
        )
        .await
        .unwrap();
    assert!(!take_shared(&server, &mut laptop).await);
    laptop.pull(&server).await;
    assert!(!laptop.known_keys().await.contains(&Value::from(given.id)));
    // The phone, which did not create it, takes the next shared batch.
    assert!(take_shared(&server, &mut phone).await);
    assert_eq!(phone.texts().await, laptop.texts().await);
}

/// An export for every reader of a filter lists the rows it leaves out, which
/// each reader taking it is checked against: past
/// [`MAX_WITHHELD`](sync_runtime::server::MAX_WITHHELD) of them (a reader far
/// behind, under a filter that reads little), it is not shared, and stops
/// listing, however small the batches.
#[tokio::test]
async fn a_shared_batch_lists_a_bounded_number_of_rows_left_out() {
    use sync_runtime::server::MAX_WITHHELD;
    let server = server().await;
    server.insert(&note("ann", false, "ann's")).await.unwrap();
    let mut ann = Reader::new("ann").await;
    ann.pull(&server).await;
    let replica = Replica::new(server.db.clone());
    let small = BatchLimits::default().max_rows(2);
    let shared = |from: Cursor| replica.export_shared_filtered(from, small, anns());
    let bobs: Vec<Note> = (0..=MAX_WITHHELD)
        .map(|i| note("bob", false, &format!("bob's {i}")))
        .collect();
    for row in &bobs[..MAX_WITHHELD] {
        server.insert(row).await.unwrap();
    }
    let at = shared(ann.cursor.clone()).await.unwrap().unwrap();
    assert_eq!((at.withheld(), at.batch.rows), (MAX_WITHHELD, 0));
    server.insert(&bobs[MAX_WITHHELD]).await.unwrap();
    assert!(shared(ann.cursor.clone()).await.unwrap().is_none());
    // Its own export still finds nothing for ann, and ann is not behind.
    ann.pull(&server).await;
    assert_eq!(ann.texts().await, ["ann's"]);
}
