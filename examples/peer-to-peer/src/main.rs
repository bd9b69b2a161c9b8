//! Two devices sync through files, with no server: each exports what the other has
//! not seen, the payload travels as a file (it could be Bluetooth or a USB stick),
//! and the other applies it.
//!
//! ```text
//! cargo run --bin peer_to_peer                  # in a temporary directory
//! cargo run --bin peer_to_peer -- some/dir      # keeps the databases and payloads there
//! ```

use std::path::{Path, PathBuf};

use sync_runtime::{Since, SyncDb, SyncId, Synced, params};

// ANCHOR: model
#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "todos")]
struct Todo {
    #[synced(primary_key)]
    id: SyncId,
    title: String,
    #[synced(default = false)]
    done: bool,
    note: Option<String>,
}
// ANCHOR_END: model

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let temporary = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temporary.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    let (laptop, phone) = run(&dir).await?;
    println!("\nBoth devices now hold:");
    for todo in laptop.query::<Todo>("ORDER BY title", params![]).await? {
        let mark = if todo.done { "x" } else { " " };
        println!(
            "  [{mark}] {:<16} {}",
            todo.title,
            todo.note.unwrap_or_default()
        );
    }
    assert_eq!(
        laptop.query::<Todo>("ORDER BY id", params![]).await?,
        phone.query::<Todo>("ORDER BY id", params![]).await?
    );
    Ok(())
}

/// Sends to `to` what it has not seen of `from`, through a file in `dir`.
// ANCHOR: send
async fn send(from: &SyncDb, to: &SyncDb, dir: &Path) -> Result<(), BoxError> {
    // What `to` already has of `from`'s own changes; it relays nothing else here.
    let seen = to.seen_version(from.site_id()).await?;
    let payload = from.export_local_changes(Since::Version(seen)).await?;
    let file = dir.join(format!("{}-to-{}.sync", from.site_id(), to.site_id()));
    std::fs::write(&file, &payload)?;

    let report = to.apply_changes(&std::fs::read(&file)?).await?;
    println!(
        "  {} bytes: {} changes applied, {} lost to newer ones, {} rows",
        payload.len(),
        report.applied,
        report.ignored,
        report.rows
    );
    Ok(())
}
// ANCHOR_END: send

async fn run(dir: &Path) -> Result<(SyncDb, SyncDb), BoxError> {
    let laptop = SyncDb::open(dir.join("laptop.db")).await?;
    let phone = SyncDb::open(dir.join("phone.db")).await?;
    for db in [&laptop, &phone] {
        db.register::<Todo>().await?;
    }

    println!("The laptop writes two todos and sends them to the phone:");
    let mut milk = Todo {
        id: SyncId::new(),
        title: "Buy milk".into(),
        done: false,
        note: None,
    };
    let plants = Todo {
        id: SyncId::new(),
        title: "Water plants".into(),
        done: false,
        note: None,
    };
    laptop.insert(&milk).await?;
    laptop.insert(&plants).await?;
    send(&laptop, &phone, dir).await?;

    println!("\nBoth edit offline:");
    milk.note = Some("oat milk".into());
    laptop.update(&milk).await?;
    println!("  laptop: note of \"Buy milk\" = \"oat milk\"");
    let mut on_phone = milk.clone();
    on_phone.note = Some("2 litres".into());
    on_phone.done = true;
    phone.update(&on_phone).await?;
    println!("  phone:  note of \"Buy milk\" = \"2 litres\", done");
    phone.delete::<Todo>(&plants.id).await?;
    println!("  phone:  deletes \"Water plants\"");
    phone
        .insert(&Todo {
            id: SyncId::new(),
            title: "Call mum".into(),
            done: false,
            note: None,
        })
        .await?;
    println!("  phone:  adds \"Call mum\"");

    println!("\nThey exchange what the other has not seen:");
    send(&laptop, &phone, dir).await?;
    send(&phone, &laptop, dir).await?;
    Ok((laptop, phone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_devices_converge() {
        let dir = tempfile::tempdir().unwrap();
        let (laptop, phone) = run(dir.path()).await.unwrap();
        let all = |db: SyncDb| async move {
            db.query::<Todo>("ORDER BY title", params![]).await.unwrap()
        };
        let (a, b) = (all(laptop).await, all(phone).await);
        assert_eq!(a, b);
        let titles: Vec<_> = a.iter().map(|t| t.title.as_str()).collect();
        assert_eq!(titles, ["Buy milk", "Call mum"]);
        // Both wrote the note once: the greater value wins on both devices.
        assert_eq!(a[0].note.as_deref(), Some("oat milk"));
        assert!(a[0].done);
    }
}
