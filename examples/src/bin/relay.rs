//! A relay of its own: two devices sync through a `Replica` that this program
//! serves itself (here, by calling it; it could sit behind any transport),
//! with the same merge engine and checks as `sync-server`.
//!
//! ```text
//! cargo run --bin relay
//! ```

use sync_runtime::server::Replica;
use sync_runtime::{BatchLimits, Cursor, Scope, SyncDb, SyncId, Synced, params, wire};

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "notes")]
struct Note {
    #[synced(primary_key)]
    id: SyncId,
    text: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ANCHOR: relay
/// Takes what `device` made since `sent` into the relay; returns the cursor
/// to send from next time.
async fn push(relay: &Replica, device: &SyncDb, sent: Cursor) -> Result<Cursor, BoxError> {
    let batch = device
        .export_batch(sent, Scope::Local, BatchLimits::default())
        .await?;
    let report = relay
        .apply_push(wire::decode(&batch.payload)?, device.site_id())
        .await?;
    // Rows the relay refused come back as the relay's state of them.
    if !report.restore.is_empty() {
        device.apply_restore(&report.restore, batch.version).await?;
    }
    Ok(batch.next)
}

/// Gives `device` what the relay holds since `received` that it did not
/// make; returns the cursor to fetch from next time.
async fn pull(relay: &Replica, device: &SyncDb, received: Cursor) -> Result<Cursor, BoxError> {
    let (batch, _seen) = relay
        .export_for_device(device.site_id(), received, BatchLimits::default(), None)
        .await?;
    device.apply_changes(&batch.payload).await?;
    Ok(batch.next)
}
// ANCHOR_END: relay

async fn run() -> Result<(SyncDb, SyncDb), BoxError> {
    let relay = Replica::new(SyncDb::open_in_memory().await?);
    relay.db().register::<Note>().await?;
    let (laptop, phone) = (
        SyncDb::open_in_memory().await?,
        SyncDb::open_in_memory().await?,
    );
    for device in [&laptop, &phone] {
        device.register::<Note>().await?;
        relay.claim_site(device.site_id(), "ann").await?;
    }
    laptop
        .insert(&Note {
            id: SyncId::new(),
            text: "from the laptop".into(),
        })
        .await?;
    phone
        .insert(&Note {
            id: SyncId::new(),
            text: "from the phone".into(),
        })
        .await?;
    for device in [&laptop, &phone] {
        push(&relay, device, Cursor::BEGINNING).await?;
    }
    for device in [&laptop, &phone] {
        pull(&relay, device, Cursor::BEGINNING).await?;
    }
    Ok((laptop, phone))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (laptop, phone) = run().await?;
    for (name, device) in [("laptop", &laptop), ("phone", &phone)] {
        let notes: Vec<Note> = device.query("ORDER BY text", params![]).await?;
        let texts: Vec<&str> = notes.iter().map(|n| n.text.as_str()).collect();
        println!("{name}: {texts:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_devices_hold_both_notes() {
        let (laptop, phone) = run().await.unwrap();
        for device in [&laptop, &phone] {
            let notes: Vec<Note> = device.query("ORDER BY text", params![]).await.unwrap();
            let texts: Vec<&str> = notes.iter().map(|n| n.text.as_str()).collect();
            assert_eq!(texts, ["from the laptop", "from the phone"]);
        }
    }
}
