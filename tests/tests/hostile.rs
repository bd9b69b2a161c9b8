//! A user with a valid token attacks the server with hand-made requests, and a
//! peer hands a device hand-made payloads: whatever they send, no other user's
//! data or sync is harmed. The tests marked `ignore` are known gaps: each says
//! what fails today.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use support::Store;

use support::policy::{Item, cast, item, open, titles};
use support::token;
use sync_runtime::protocol::{
    PREVIOUS_SITE_HEADER, PushAck, REUSED_SITE_HEADER, SCHEMA_HEADER, SITE_HEADER, fingerprint_hex,
};
use sync_runtime::wire::{self, Compression, Origin, Payload};
use sync_runtime::{BatchLimits, Cursor, Remote, Scope, SyncDb, Value};

/// The largest version a replica accepts from another (2^53).
const PLAUSIBLE: u64 = 1 << 53;

/// Pushes `payload` to the server database at `url` as `device` (its site id and
/// schema fingerprint) with `user`'s token: the status and the body.
async fn push_raw(url: &str, device: &SyncDb, user: &str, payload: &Payload) -> (u16, String) {
    let fingerprint = device.schema_fingerprint().await.unwrap();
    let response = reqwest::Client::new()
        .post(format!("{url}/push"))
        .bearer_auth(token(user))
        .header(SCHEMA_HEADER, fingerprint_hex(fingerprint))
        .header(SITE_HEADER, device.site_id().to_string())
        .body(wire::encode(payload, Compression::Zstd))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The server's version after a push that was accepted.
fn version_of(answer: &(u16, String)) -> i64 {
    assert_eq!(answer.0, 200, "{}", answer.1);
    serde_json::from_str::<PushAck>(&answer.1).unwrap().version
}

/// Everything `device` wrote, decoded so that it can be tampered with.
async fn own_changes(device: &SyncDb) -> Payload {
    let batch = device
        .export_batch(Cursor::BEGINNING, Scope::Local, BatchLimits::UNLIMITED)
        .await
        .unwrap();
    wire::decode(&batch.payload).unwrap()
}

/// A payload of no change from `device` that claims to cover its versions up to
/// `upto`.
fn empty_claiming(device: &SyncDb, upto: u64) -> Payload {
    Payload {
        exporter: device.site_id(),
        upto,
        ..Payload::default()
    }
}

async fn versions_a_push_claims_never_move_the_servers_version(store: Store) {
    let (dir, server, [admin, ann, bob]) = cast(store).await;
    let url = server.url("items");
    admin.insert(&item("bob", false, "bob's")).await.unwrap();
    admin.sync().await.unwrap();
    bob.sync().await.unwrap();
    let before = version_of(&push_raw(&url, &ann, "ann", &empty_claiming(&ann, 0)).await);

    // Beyond the bound, an empty payload's range is refused whole.
    for upto in [PLAUSIBLE + 1, 1 << 62] {
        let (status, body) = push_raw(&url, &ann, "ann", &empty_claiming(&ann, upto)).await;
        assert_eq!(status, 400, "{body}");
    }
    // At the bound it is taken, and moves nothing here.
    let answer = push_raw(&url, &ann, "ann", &empty_claiming(&ann, PLAUSIBLE)).await;
    assert_eq!(version_of(&answer), before);

    // A real change whose origin claims a huge version takes one version here.
    ann.insert(&item("ann", false, "ann's")).await.unwrap();
    let mut tampered = own_changes(&ann).await;
    tampered.upto = PLAUSIBLE;
    for row in &mut tampered.rows {
        row.origin.version = PLAUSIBLE;
        for column in &mut row.columns {
            column.origin.version = PLAUSIBLE;
        }
    }
    let answer = push_raw(&url, &ann, "ann", &tampered).await;
    assert_eq!(version_of(&answer), before + 1);

    // Every device goes on syncing, a new one included.
    admin
        .insert(&item("bob", false, "bob's too"))
        .await
        .unwrap();
    admin.sync().await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    assert_eq!(titles(&bob).await, ["bob's", "bob's too"]);
    assert_eq!(titles(&ann).await, ["ann's"]);
    let carol = open(
        dir.path(),
        "carol",
        Remote::new(&url).bearer_token(token("bob")),
    )
    .await;
    carol.sync().await.unwrap();
    assert_eq!(titles(&carol).await, ["bob's", "bob's too"]);
    server.stop().await;
}

async fn a_column_at_the_bound_climbs_at_most_a_step_at_a_time(store: Store) {
    let (_dir, server, [admin, ann, _bob]) = cast(store).await;
    let url = server.url("items");
    ann.insert(&item("ann", false, "ann's")).await.unwrap();
    ann.sync().await.unwrap();
    let mut edit = own_changes(&ann).await;
    let title = edit.tables[0]
        .values
        .iter()
        .position(|c| c == "title")
        .unwrap() as u32;
    edit.rows[0].columns.retain(|c| c.column == title);
    // Her own title: to the bound, a step above it, then more than a step.
    let step = wire::CLOCK_STEP;
    for (col_version, taken) in [
        (PLAUSIBLE, true),
        (PLAUSIBLE + step, true),
        (PLAUSIBLE + 2 * step + 1, false),
    ] {
        edit.rows[0].columns[0].col_version = col_version;
        edit.rows[0].columns[0].value = Value::from(format!("at {col_version}").as_str());
        let (status, body) = push_raw(&url, &ann, "ann", &edit).await;
        assert_eq!(status, 200, "{body}");
        let ack: PushAck = serde_json::from_str(&body).unwrap();
        assert_eq!(ack.rejected.is_empty(), taken, "{col_version}: {body}");
    }
    admin.sync().await.unwrap();
    let title = format!("at {}", PLAUSIBLE + step);
    assert_eq!(titles(&admin).await, [title]);
    server.stop().await;
}

async fn a_push_whose_range_contradicts_its_changes_is_refused(store: Store) {
    let (_dir, server, [_admin, ann, _bob]) = cast(store).await;
    let url = server.url("items");
    ann.insert(&item("ann", false, "ann's")).await.unwrap();
    // The payload says it holds ann's changes up to version 1, yet one of them
    // was made at version 9.
    let mut tampered = own_changes(&ann).await;
    tampered.upto = 1;
    tampered.rows[0].columns[0].origin.version = 9;
    let (status, body) = push_raw(&url, &ann, "ann", &tampered).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("version"), "{body}");
    // Her honest push goes through.
    ann.sync().await.unwrap();
    assert!(!ann.has_unsent_changes().await.unwrap());
    server.stop().await;
}

async fn a_peer_cannot_push_a_devices_version_forward(store: Store) {
    let (_dir, server, [admin, ann, bob]) = cast(store).await;
    admin.insert(&item("bob", false, "bob's")).await.unwrap();
    admin.sync().await.unwrap();
    ann.insert(&item("ann", true, "ann's")).await.unwrap();
    let before = bob.db_version().await.unwrap();

    for upto in [PLAUSIBLE + 1, 1 << 62] {
        let payload = wire::encode(&empty_claiming(&ann, upto), Compression::None);
        let error = bob.apply_changes(&payload).await.unwrap_err();
        assert!(
            matches!(error, sync_runtime::Error::Refused { .. }),
            "{error:?}"
        );
    }
    let mut tampered = own_changes(&ann).await;
    tampered.upto = PLAUSIBLE;
    for row in &mut tampered.rows {
        row.origin.version = PLAUSIBLE;
        for column in &mut row.columns {
            column.origin.version = PLAUSIBLE;
        }
    }
    let report = bob
        .apply_changes(&wire::encode(&tampered, Compression::None))
        .await
        .unwrap();
    assert!(report.applied > 0);
    assert_eq!(bob.db_version().await.unwrap(), before + 1);

    // Bob syncs on as before.
    bob.sync().await.unwrap();
    assert_eq!(titles(&bob).await, ["ann's", "bob's"]);
    assert!(bob.db_version().await.unwrap() < 100);
    server.stop().await;
}

/// A row of `owner`'s that ann may neither read nor write, as a push from ann's
/// device that writes `title` at column version `col_version`.
async fn forged_edit(ann: &SyncDb, row: &Item, col_version: u64) -> Payload {
    ann.insert(row).await.unwrap();
    let mut payload = own_changes(ann).await;
    payload.rows.retain(|r| r.pk == [Value::from(row.id)]);
    ann.delete::<Item>(&row.id).await.unwrap();
    let title = payload.tables[0]
        .values
        .iter()
        .position(|c| c == "title")
        .unwrap();
    let forged = &mut payload.rows[0];
    forged.columns.retain(|c| c.column as usize == title);
    forged.columns[0].col_version = col_version;
    payload
}

async fn a_refused_write_never_overrides_another_users_edit(store: Store) {
    for col_version in [1000, PLAUSIBLE, PLAUSIBLE + 1, 1 << 62] {
        let (_dir, server, [admin, ann, bob]) = cast(store).await;
        let url = server.url("items");
        let bobs = item("bob", false, "bob's");
        bob.insert(&bobs).await.unwrap();
        bob.sync().await.unwrap();
        // Offline, bob edits his row; meanwhile ann, who knows its key, pushes an
        // edit of it with a high column version, which the server refuses.
        let edited = Item {
            title: "bob's, edited".into(),
            ..bobs.clone()
        };
        bob.update(&edited).await.unwrap();
        let forged = forged_edit(&ann, &bobs, col_version).await;
        let (status, body) = push_raw(&url, &ann, "ann", &forged).await;
        assert_eq!(status, 200, "{body}");
        let ack: PushAck = serde_json::from_str(&body).unwrap();
        assert_eq!(ack.rejected.len(), 1, "{body}");
        // Bob's edit goes through and reaches everyone; his syncs go on.
        let report = bob.sync().await.unwrap();
        assert!(report.rejected.is_empty(), "{report:?}");
        admin.sync().await.unwrap();
        assert_eq!(admin.get::<Item>(&bobs.id).await.unwrap(), Some(edited));
        bob.update(&Item {
            title: "bob's, again".into(),
            ..bobs.clone()
        })
        .await
        .unwrap();
        bob.sync().await.unwrap();
        admin.sync().await.unwrap();
        assert_eq!(titles(&admin).await, ["bob's, again"], "{col_version}");
        server.stop().await;
    }
}

async fn a_refusal_looks_the_same_whether_or_not_the_key_exists(store: Store) {
    let (_dir, server, [admin, ann, _bob]) = cast(store).await;
    let url = server.url("items");
    let existing = item("bob", false, "bob's");
    admin.insert(&existing).await.unwrap();
    admin.sync().await.unwrap();
    let fresh = item("bob", false, "bob's");

    // Ann creates a row in bob's name, once under the key of bob's row and once
    // under a key no row has: what she is told is the same, but for the key.
    let mut answers = Vec::new();
    for row in [&existing, &fresh] {
        ann.insert(row).await.unwrap();
        let mut payload = own_changes(&ann).await;
        payload.rows.retain(|r| r.pk == [Value::from(row.id)]);
        ann.delete::<Item>(&row.id).await.unwrap();
        let (status, body) = push_raw(&url, &ann, "ann", &payload).await;
        assert_eq!(status, 200, "{body}");
        let ack: PushAck = serde_json::from_str(&body).unwrap();
        assert_eq!(ack.rejected.len(), 1, "{body}");
        let restore = wire::decode(&hex::decode(ack.restore.clone().unwrap()).unwrap()).unwrap();
        answers.push((ack, restore));
    }
    let [(first, mut first_restore), (second, mut second_restore)] =
        <[_; 2]>::try_from(answers).unwrap();
    assert_eq!(first.rejected[0].reason, second.rejected[0].reason);
    assert_eq!(
        (first.applied, first.ignored, first.version),
        (second.applied, second.ignored, second.version)
    );
    for restore in [&first_restore, &second_restore] {
        assert_eq!(restore.rows.len(), 1);
        assert_eq!(restore.rows[0].cl, wire::EVICT);
    }
    first_restore.rows[0].pk.clear();
    second_restore.rows[0].pk.clear();
    assert_eq!(first_restore, second_restore);
    // Bob's row is as it was.
    admin.sync().await.unwrap();
    assert_eq!(
        admin.get::<Item>(&existing.id).await.unwrap(),
        Some(existing)
    );
    server.stop().await;
}

async fn a_refused_write_is_undone_on_the_device_that_made_it_alone(store: Store) {
    let (_dir, server, [admin, ann, bob]) = cast(store).await;
    let shared = item("bob", true, "bob's shared");
    bob.insert(&shared).await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    // Ann may read bob's shared row, not write it: her edit is refused and
    // undone on her device in the same sync; her next syncs send nothing of it.
    ann.update(&Item {
        title: "vandalised".into(),
        ..shared.clone()
    })
    .await
    .unwrap();
    let report = ann.sync().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(
        ann.get::<Item>(&shared.id).await.unwrap(),
        Some(shared.clone())
    );
    assert!(!ann.has_unsent_changes().await.unwrap());
    assert!(ann.sync().await.unwrap().rejected.is_empty());
    // The server's clocks did not move: bob's later edit, made without fetching,
    // wins everywhere.
    let edited = Item {
        title: "bob's, edited".into(),
        ..shared.clone()
    };
    bob.update(&edited).await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    admin.sync().await.unwrap();
    for db in [&admin, &ann, &bob] {
        assert_eq!(
            db.get::<Item>(&shared.id).await.unwrap(),
            Some(edited.clone())
        );
    }
    server.stop().await;
}

/// `payload`, zstd-compressed, with a header that says its body inflates to
/// `declared` bytes (and a checksum that matches).
fn declaring(payload: &Payload, declared: u32) -> Vec<u8> {
    let mut bytes = wire::encode(payload, Compression::Zstd);
    bytes[20..24].copy_from_slice(&declared.to_le_bytes());
    let end = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

async fn a_body_may_not_inflate_beyond_the_request_limit(store: Store) {
    let (_dir, server, [_admin, ann, _bob]) = cast(store).await;
    let url = server.url("items");
    ann.insert(&item("ann", false, "ann's")).await.unwrap();
    let payload = own_changes(&ann).await;
    let limit = 16 * 1024 * 1024; // the default: max_body_bytes
    let send = |bytes: Vec<u8>| {
        let (ann, url) = (&ann, &url);
        async move {
            let fingerprint = ann.schema_fingerprint().await.unwrap();
            let response = reqwest::Client::new()
                .post(format!("{url}/push"))
                .bearer_auth(token("ann"))
                .header(SCHEMA_HEADER, fingerprint_hex(fingerprint))
                .header(SITE_HEADER, ann.site_id().to_string())
                .body(bytes)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // A few hundred bytes that say they inflate to 256 MiB, or to one byte more
    // than the limit: refused before anything is decompressed.
    for declared in [256 * 1024 * 1024, limit + 1, u32::MAX] {
        let (status, body) = send(declaring(&payload, declared)).await;
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("payload_too_large"), "{body}");
    }
    // At the limit the size passes, and the body that does not inflate to what
    // it says is refused as malformed.
    let (status, body) = send(declaring(&payload, limit)).await;
    assert_eq!(status, 400, "{body}");
    // Honest pushes go on.
    ann.sync().await.unwrap();
    assert!(!ann.has_unsent_changes().await.unwrap());
    server.stop().await;
}

async fn a_refusal_the_device_never_received_never_leaves_it_part_of_a_row(store: Store) {
    let (_dir, server, [_admin, ann, bob]) = cast(store).await;
    let url = server.url("items");
    let private = item("bob", false, "bob's");
    bob.insert(&private).await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    // Bob shares his row; ann's device has not fetched it yet.
    let shared = Item {
        shared: true,
        ..private.clone()
    };
    bob.update(&shared).await.unwrap();
    bob.sync().await.unwrap();
    // Someone with ann's token pushes, in her device's name, a change of bob's
    // row: refused, and the restore goes to the sender, not to her device.
    ann.insert(&item("ann", false, "ann's")).await.unwrap();
    let mut payload = own_changes(&ann).await;
    payload.rows.truncate(1);
    payload.rows[0].pk = vec![Value::from(shared.id)];
    payload.rows[0].columns.clear();
    let (status, body) = push_raw(&url, &ann, "ann", &payload).await;
    assert_eq!(status, 200, "{body}");
    let ack: PushAck = serde_json::from_str(&body).unwrap();
    assert_eq!(ack.rejected.len(), 1, "{body}");
    // Her device gets bob's row whole, not only the column that changed.
    ann.sync().await.unwrap();
    assert_eq!(ann.get::<Item>(&shared.id).await.unwrap(), Some(shared));
    server.stop().await;
}

async fn a_row_a_peer_re_created_never_stops_a_device_syncing(store: Store) {
    let (dir, server, [admin, _ann, bob]) = cast(store).await;
    let row = item("bob", false, "bob's");
    bob.insert(&row).await.unwrap();
    bob.sync().await.unwrap();
    // A peer that never syncs with the server deletes and re-creates the row,
    // and hands bob's device the change.
    let peer = SyncDb::open(dir.path().join("peer.db")).await.unwrap();
    peer.register::<Item>().await.unwrap();
    peer.apply_changes(
        &bob.export_changes(sync_runtime::Since::Beginning)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    peer.delete::<Item>(&row.id).await.unwrap();
    peer.insert(&row).await.unwrap();
    bob.apply_changes(
        &peer
            .export_changes(sync_runtime::Since::Beginning)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    // Bob edits the row and writes another: the server cannot take the row's
    // re-creation, which its maker never sent, so that row alone is refused.
    bob.update(&Item {
        title: "bob's, edited".into(),
        ..row.clone()
    })
    .await
    .unwrap();
    let other = item("bob", false, "bob's other");
    bob.insert(&other).await.unwrap();
    let report = bob.sync().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(!bob.has_unsent_changes().await.unwrap());
    assert_eq!(bob.get::<Item>(&row.id).await.unwrap(), Some(row.clone()));
    // His syncs go on.
    let edited = Item {
        title: "bob's, edited again".into(),
        ..row.clone()
    };
    bob.update(&edited).await.unwrap();
    assert!(bob.sync().await.unwrap().rejected.is_empty());
    admin.sync().await.unwrap();
    assert_eq!(admin.get::<Item>(&row.id).await.unwrap(), Some(edited));
    assert_eq!(admin.get::<Item>(&other.id).await.unwrap(), Some(other));
    server.stop().await;
}

/// A known gap, not fixed: a server checks a value's SQL type, not the domain
/// of the app type it stands for, so a user can write, in a row of her own,
/// values no typed read can decode: a key that is not a `SyncId` in canonical
/// form, or a `bool` of 2. Every typed query of the table then fails, for her
/// and for everyone who may read the row. A schema that carried each column's
/// domain would let every replica refuse such values, as it refuses a wrong type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: values outside an app type's domain pass the server's checks"]
async fn a_row_a_user_writes_never_breaks_other_users_typed_reads() {
    let (_dir, server, [admin, ann, bob]) = cast(Store::Sqlite).await;
    let url = server.url("items");
    bob.insert(&item("bob", false, "bob's")).await.unwrap();
    bob.sync().await.unwrap();
    // Ann shares a row of hers under a key that is no `SyncId`.
    ann.insert(&item("ann", true, "ann's")).await.unwrap();
    let mut payload = own_changes(&ann).await;
    payload.rows[0].pk = vec![Value::from("not-an-id")];
    let (status, body) = push_raw(&url, &ann, "ann", &payload).await;
    assert_eq!(status, 200, "{body}");
    bob.sync().await.unwrap();
    admin.sync().await.unwrap();
    // Today both fail with `Error::Decode` (`InvalidId("not-an-id")`).
    assert_eq!(titles(&bob).await, ["bob's"]);
    assert_eq!(titles(&admin).await, ["bob's"]);
    server.stop().await;
}

/// A known gap, not fixed: a write policy is checked on a row as it is, and a
/// deleted row is no one's. A user who knows its key (she could read the row)
/// may create a row of hers under it, or delete it again at a higher causal
/// length; either way its owner can no longer bring it back under its key (an
/// undo that inserts it again). Keeping a deleted row's last values for the
/// write policy to check would close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: a deleted row's key is anyone's to take"]
async fn a_deleted_rows_key_stays_its_owners() {
    let (_dir, server, [admin, ann, bob]) = cast(Store::Sqlite).await;
    let row = item("bob", true, "bob's");
    bob.insert(&row).await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    bob.delete::<Item>(&row.id).await.unwrap();
    bob.sync().await.unwrap();
    ann.sync().await.unwrap();
    // Ann, through her app, creates a row of hers under the key.
    ann.insert(&Item {
        owner_id: "ann".into(),
        ..row.clone()
    })
    .await
    .unwrap();
    let taken = ann.sync().await.unwrap();
    // Bob undoes his delete. Today ann's row is taken and his is refused.
    bob.insert(&row).await.unwrap();
    let report = bob.sync().await.unwrap();
    assert_eq!(taken.rejected.len(), 1, "{taken:?}");
    assert!(report.rejected.is_empty(), "{report:?}");
    admin.sync().await.unwrap();
    assert_eq!(admin.get::<Item>(&row.id).await.unwrap(), Some(row));
    server.stop().await;
}

/// A server cannot tell a device's pushes from pushes made in its name with
/// its user's token (its site id shows in the clocks of the rows it shares). A
/// change pushed so at a version the device never had reaches the device in
/// the next row it fetches whole: the device takes it as proof that another
/// file writes under its site id, takes a new one, and takes the change as
/// another's, instead of refusing every batch from then on.
async fn a_change_pushed_in_a_devices_name_never_stops_its_pulls(store: Store) {
    let (dir, server, [_admin, ann, _bob]) = cast(store).await;
    let url = server.url("items");
    // Another device of ann's creates a row, which her first device has not
    // fetched yet.
    let other = open(
        dir.path(),
        "ann2",
        Remote::new(&url).bearer_token(token("ann")),
    )
    .await;
    let row = item("ann", false, "ann's");
    other.insert(&row).await.unwrap();
    other.sync().await.unwrap();
    // In her first device's name, an edit of the row at a version that device
    // never had.
    ann.insert(&item("ann", false, "scratch")).await.unwrap();
    let mut payload = own_changes(&ann).await;
    let mut edit = payload.rows[0].clone();
    edit.pk = vec![Value::from(row.id)];
    edit.columns
        .retain(|c| payload.tables[0].values[c.column as usize] == "title");
    edit.columns[0].col_version = 2;
    edit.columns[0].value = Value::from("forged");
    edit.columns[0].origin.version = 1000;
    // The row's creation stays the other device's, as the context of the edit.
    payload.sites.push(other.site_id());
    edit.origin = Origin {
        site: (payload.sites.len() - 1) as u32,
        version: 1,
    };
    payload.rows = vec![edit];
    (payload.since, payload.upto) = (0, 0);
    let (status, body) = push_raw(&url, &ann, "ann", &payload).await;
    assert_eq!(status, 200, "{body}");
    // On 1f08564: `Refused { "a change claims to have been made here at
    // version 1000, which is not one of this database's own" }`, at every
    // sync. The device takes a new site id instead, and takes the change as
    // another's.
    let report = ann.sync().await.unwrap();
    assert!(report.site_id_renewed, "{report:?}");
    assert!(!ann.sync().await.unwrap().site_id_renewed);
    let mut forged = row.clone();
    forged.title = "forged".into();
    assert_eq!(ann.get::<Item>(&row.id).await.unwrap(), Some(forged));
    server.stop().await;
}

/// A known gap, not fixed: a filtered pull never sends the delete of a row the
/// device never held. A device that then creates a row under that key (one
/// derived from the user, say) gets a lower causal length than the delete's:
/// the server ignores its row, and the device keeps it alone, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: a row created over a delete its device never saw stays on it alone"]
async fn a_row_created_over_an_unseen_delete_converges() {
    let (dir, server, [admin, ann, _bob]) = cast(Store::Sqlite).await;
    let url = server.url("items");
    // Her other device creates and deletes a row under a key both use.
    let other = open(
        dir.path(),
        "ann2",
        Remote::new(&url).bearer_token(token("ann")),
    )
    .await;
    let row = item("ann", false, "settings");
    other.insert(&row).await.unwrap();
    other.sync().await.unwrap();
    other.delete::<Item>(&row.id).await.unwrap();
    other.sync().await.unwrap();
    ann.sync().await.unwrap();
    // Her first device, which never held it, creates it.
    ann.insert(&row).await.unwrap();
    ann.sync().await.unwrap();
    ann.sync().await.unwrap();
    // Today the server has the delete and her device the row.
    admin.sync().await.unwrap();
    assert_eq!(
        admin.get::<Item>(&row.id).await.unwrap(),
        ann.get::<Item>(&row.id).await.unwrap()
    );
    server.stop().await;
}

/// A device takes changes in its own name as its own only from its server,
/// coming back: a peer that labels a change with the device's site and one of
/// its unsent versions would otherwise have the device send it to its server as
/// its own write, taken as the device's user's. The device takes a new site id
/// instead (another file writes under its old one), and the change stays the
/// old id's: it is not sent as the device's.
async fn a_peer_never_writes_to_the_server_in_a_devices_name(store: Store) {
    let (_dir, server, [admin, _ann, bob]) = cast(store).await;
    let row = item("bob", false, "bob's");
    bob.insert(&row).await.unwrap();
    bob.sync().await.unwrap();
    // Bob makes another change, not sent yet.
    bob.insert(&item("bob", false, "pending")).await.unwrap();
    let pending = bob.db_version().await.unwrap() as u64;
    // A peer says bob gave his first row a new title at that version.
    let mut payload = own_changes(&bob).await;
    payload.rows.retain(|r| r.pk == [Value::from(row.id)]);
    let title = payload.tables[0]
        .values
        .iter()
        .position(|c| c == "title")
        .unwrap() as u32;
    payload.rows[0].columns.retain(|c| c.column == title);
    let forged = &mut payload.rows[0].columns[0];
    (forged.col_version, forged.origin.version) = (2, pending);
    forged.value = Value::from("written by a peer");
    payload.exporter = sync_runtime::SiteId::from_bytes([7; 16]);
    (payload.since, payload.upto) = (0, 0);
    // On 1f08564 it was taken, sent with bob's next sync and taken by the server.
    let site = bob.site_id();
    bob.apply_changes(&wire::encode(&payload, Compression::None))
        .await
        .unwrap();
    assert_ne!(bob.site_id(), site);
    bob.sync().await.unwrap();
    admin.sync().await.unwrap();
    assert_eq!(titles(&admin).await, ["bob's", "pending"]);
    server.stop().await;
}

/// Saying that another user's device site id was reused (as a device that left
/// it would) marks nothing: the server takes it only from the id's owner.
async fn no_one_marks_another_users_site_id_reused(store: Store) {
    let (_dir, server, [_admin, ann, bob]) = cast(store).await;
    let url = server.url("items");
    ann.sync().await.unwrap();
    bob.sync().await.unwrap();
    let fingerprint = bob.schema_fingerprint().await.unwrap();
    for path in ["pull", "pull?cursor=&wait=0"] {
        let response = reqwest::Client::new()
            .get(format!("{url}/{path}"))
            .bearer_auth(token("bob"))
            .header(SCHEMA_HEADER, fingerprint_hex(fingerprint))
            .header(SITE_HEADER, bob.site_id().to_string())
            .header(PREVIOUS_SITE_HEADER, ann.site_id().to_string())
            .header(REUSED_SITE_HEADER, ann.site_id().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    ann.insert(&item("ann", false, "still hers")).await.unwrap();
    let site = ann.site_id();
    let report = ann.sync().await.unwrap();
    assert!(!report.site_id_renewed, "{report:?}");
    assert_eq!(ann.site_id(), site);
    assert!(!bob.sync().await.unwrap().site_id_renewed);
    server.stop().await;
}

support::on_each_store!(
    versions_a_push_claims_never_move_the_servers_version,
    a_column_at_the_bound_climbs_at_most_a_step_at_a_time,
    a_push_whose_range_contradicts_its_changes_is_refused,
    a_peer_cannot_push_a_devices_version_forward,
    a_refused_write_never_overrides_another_users_edit,
    a_refusal_looks_the_same_whether_or_not_the_key_exists,
    a_refused_write_is_undone_on_the_device_that_made_it_alone,
    a_body_may_not_inflate_beyond_the_request_limit,
    a_refusal_the_device_never_received_never_leaves_it_part_of_a_row,
    a_row_a_peer_re_created_never_stops_a_device_syncing,
    a_change_pushed_in_a_devices_name_never_stops_its_pulls,
    a_peer_never_writes_to_the_server_in_a_devices_name,
    no_one_marks_another_users_site_id_reused,
);
