//! Writes the server refuses are kept on the device that made them, with the
//! values its user wrote, until the app re-submits or discards them.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use support::Store;

use std::collections::BTreeMap;

use support::policy::{Item, cast, item, items_schema, open, titles};
use support::{TestServer, config, token};
use sync_runtime::{Rejected, Remote, SyncDb, Value};
use sync_server::DatabaseConfig;

/// The titles of the kept rows (`-` for a delete), sorted.
fn kept_titles(kept: &[Rejected<Item>]) -> Vec<String> {
    let mut titles: Vec<String> = kept
        .iter()
        .map(|k| k.row.as_ref().map_or("-".to_owned(), |r| r.title.clone()))
        .collect();
    titles.sort();
    titles
}

async fn refused_writes_are_kept_with_the_values_the_user_wrote(store: Store) {
    let (dir, server, [_admin, ann, bob]) = cast(store).await;
    let url = server.url("items");
    let shared = item("ann", true, "ann's shared");
    let other = item("ann", true, "ann's other");
    ann.insert(&shared).await.unwrap();
    ann.insert(&other).await.unwrap();
    ann.sync().await.unwrap();
    bob.sync().await.unwrap();

    // Offline, bob writes what he may not: a row in ann's name, an edit and a
    // delete of her rows; and a row of his own.
    let forged = item("ann", false, "typed by bob");
    bob.insert(&forged).await.unwrap();
    let mut edited = shared.clone();
    edited.title = "bob's title".into();
    bob.update(&edited).await.unwrap();
    bob.delete::<Item>(&other.id).await.unwrap();
    bob.insert(&item("bob", false, "bob's own")).await.unwrap();
    let report = bob.sync().await.unwrap();
    assert_eq!(report.rejected.len(), 3, "{report:?}");
    assert_eq!(report.quarantined, 3);
    assert!(!report.refused_all);

    // His device took the server's state of them back...
    assert_eq!(
        titles(&bob).await,
        ["ann's other", "ann's shared", "bob's own"]
    );
    // ...and kept what he wrote, after the sync and after a reopening.
    let expected = ["-", "bob's title", "typed by bob"];
    let kept = bob.rejected::<Item>().await.unwrap();
    assert_eq!(kept_titles(&kept), expected);
    let forged_entry = kept
        .iter()
        .find(|k| k.key == [Value::from(forged.id)])
        .unwrap();
    assert_eq!(forged_entry.row.as_ref(), Some(&forged));
    assert_eq!(
        forged_entry.reason,
        "the row may not be written by this user"
    );
    assert!(forged_entry.refused_at > 0);
    drop(bob);
    let bob = open(
        dir.path(),
        "bob",
        Remote::new(&url).bearer_token(token("bob")),
    )
    .await;
    assert_eq!(
        kept_titles(&bob.rejected::<Item>().await.unwrap()),
        expected
    );

    // Discarded, an entry is gone; re-submitted, it is written again, refused
    // again, and kept again.
    assert!(bob.discard::<Item>(&shared.id).await.unwrap());
    assert!(!bob.discard::<Item>(&shared.id).await.unwrap());
    assert!(bob.resubmit::<Item>(&forged.id).await.unwrap());
    assert_eq!(bob.get::<Item>(&forged.id).await.unwrap(), Some(forged));
    let again = bob.sync().await.unwrap();
    assert_eq!(again.quarantined, 1, "{again:?}");
    assert!(again.refused_all);
    assert_eq!(
        kept_titles(&bob.rejected::<Item>().await.unwrap()),
        ["-", "typed by bob"]
    );
    // Re-submitted, a refused delete deletes the row here again.
    assert!(bob.resubmit::<Item>(&other.id).await.unwrap());
    assert_eq!(bob.get::<Item>(&other.id).await.unwrap(), None);
    server.stop().await;
}

/// A database without policies for users is closed to them: every row a user
/// pushes is refused, and the report says so plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_every_row_is_refused_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("server"));
    config.databases = BTreeMap::from([(
        "items".to_owned(),
        DatabaseConfig {
            schema: Some(items_schema(dir.path())),
            ..DatabaseConfig::default()
        },
    )]);
    let server = TestServer::start_with(config).await;
    let ann: SyncDb = open(
        dir.path(),
        "ann",
        Remote::new(server.url("items")).bearer_token(token("ann")),
    )
    .await;
    let mine = item("ann", false, "mine");
    ann.insert(&mine).await.unwrap();
    let report = ann.sync().await.unwrap();
    assert!(report.refused_all, "{report:?}");
    assert_eq!(report.quarantined, 1);
    let kept = ann.rejected::<Item>().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].row.as_ref(), Some(&mine));
    server.stop().await;
}

/// The `items` table in a later shape of the app: one more column.
#[derive(sync_runtime::Synced, Debug, Clone, PartialEq)]
#[synced(table = "items")]
struct ItemV2 {
    #[synced(primary_key)]
    id: sync_runtime::SyncId,
    owner_id: String,
    #[synced(default = false)]
    shared: bool,
    title: String,
    #[synced(default = 0)]
    priority: i64,
}

/// `drop_tracking` removes every trace of sync from a table, the refused
/// writes kept in its old shape too: a table registered again in a new shape
/// starts with none, instead of entries it could not read.
async fn dropping_a_tables_tracking_drops_its_refused_writes(store: Store) {
    let (_dir, server, [_admin, _ann, bob]) = cast(store).await;
    let forged = item("ann", false, "typed by bob");
    bob.insert(&forged).await.unwrap();
    let report = bob.sync().await.unwrap();
    assert_eq!(report.quarantined, 1, "{report:?}");

    bob.drop_tracking::<Item>().await.unwrap();
    bob.execute_raw("DROP TABLE items", sync_runtime::params![])
        .await
        .unwrap();
    bob.register::<ItemV2>().await.unwrap();
    let listed = bob.rejected::<ItemV2>().await;
    assert!(
        listed.as_ref().is_ok_and(Vec::is_empty),
        "the entries of the dropped table are still there: {listed:?}"
    );
    server.stop().await;
}

support::on_each_store!(
    refused_writes_are_kept_with_the_values_the_user_wrote,
    dropping_a_tables_tracking_drops_its_refused_writes,
);
