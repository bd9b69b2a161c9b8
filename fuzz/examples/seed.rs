//! Writes the seed payloads of the fuzz targets into `fuzz/seeds/`, replacing
//! what is there: what three peers and the `apply` target's replica export as
//! they create, update, delete and re-create rows of every table (every value
//! type, composite and integer keys, a grow-only table), relay each other's
//! changes, export in batches and evict rows, and one payload that carries a
//! row twice; each payload once compressed with zstd and once not.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed
//! ```
//!
//! Peers draw random site ids, so the bytes differ from one run to the next;
//! the replica's site id and every key and value are fixed. The `apply`
//! target's replica starts from `c-relay.none`, so it changes with the seeds.

use std::path::Path;

use sync_runtime::wire::{Compression, decode, encode};
use sync_runtime::{BatchLimits, Cursor, Scope, Since, SyncDb, params};
use sync_runtime_fuzz::{Event, Item, Pair, Slot, register, replica, runtime};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn main() -> Result<()> {
    let seeds = runtime().block_on(scenario())?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in &seeds {
        let payload = decode(bytes)?;
        for (compression, suffix) in [(Compression::Zstd, "zstd"), (Compression::None, "none")] {
            std::fs::write(
                dir.join(format!("{name}.{suffix}")),
                encode(&payload, compression),
            )?;
        }
    }
    println!("{} seeds in {}", seeds.len() * 2, dir.display());
    Ok(())
}

async fn peer() -> Result<SyncDb> {
    let db = SyncDb::open_in_memory().await?;
    register(&db).await?;
    Ok(db)
}

fn item(id: &str, title: &str, qty: i64, price: f64, data: &[u8], note: Option<&str>) -> Item {
    Item {
        id: id.into(),
        title: title.into(),
        qty,
        price,
        data: data.to_vec(),
        flag: qty % 2 == 0,
        note: note.map(Into::into),
    }
}

/// The payloads, by name.
async fn scenario() -> Result<Vec<(String, Vec<u8>)>> {
    let mut seeds = Vec::new();
    let mut seed = |name: &str, bytes: Vec<u8>| seeds.push((name.to_owned(), bytes));
    let here = replica().await?;
    let (a, b, c) = (peer().await?, peer().await?, peer().await?);

    // A creates rows of every table, one transaction per row and several in one.
    a.insert(&item(
        "a1",
        "milk ü",
        i64::MIN,
        -0.5,
        &[0, 255],
        Some("note"),
    ))
    .await?;
    a.insert(&item("a2", "", i64::MAX, 1e300, &[], None))
        .await?;
    a.transaction(|tx| {
        for index in 0..2 {
            tx.insert(&Pair {
                list: "groceries".into(),
                index,
                item: Some(format!("item {index}")),
                weight: (index == 0).then_some(0.25),
            })?;
        }
        tx.insert(&Event {
            id: "e1".into(),
            text: "created".into(),
        })?;
        tx.insert(&Slot {
            id: -3,
            level: 9,
            blob: Some(vec![7; 5]),
        })?;
        Ok::<_, sync_runtime::Error>(())
    })
    .await?;
    let a_all = a.export_local_changes(Since::Beginning).await?;
    seed("a-local", a_all.clone());
    let a_mark = a.db_version().await?;

    // B takes A's rows and the replica's, changes some of both, deletes some.
    b.apply_changes(&a_all).await?;
    let here_all = here.export_local_changes(Since::Beginning).await?;
    seed("replica-local", here_all.clone());
    b.apply_changes(&here_all).await?;
    let b_mark = b.db_version().await?;
    b.execute_raw(
        "UPDATE items SET title = ?1, note = NULL WHERE id = ?2",
        params!["oat milk", "a1"],
    )
    .await?;
    b.execute_raw(
        "UPDATE items SET qty = qty + 1 WHERE id = ?1",
        params!["r1"],
    )
    .await?;
    b.execute_raw("DELETE FROM items WHERE id = ?1", params!["a2"])
        .await?;
    b.execute_raw(
        "DELETE FROM pairs WHERE list = ?1 AND \"index\" = ?2",
        params!["groceries", 1],
    )
    .await?;
    b.insert(&Slot {
        id: 2,
        level: 7,
        blob: None,
    })
    .await?;
    seed("b-relay", b.export_changes(Since::Beginning).await?);
    seed(
        "b-local-since",
        b.export_local_changes(Since::Version(b_mark)).await?,
    );
    let limits = BatchLimits::default().max_rows(2);
    let first = b
        .export_batch(Cursor::BEGINNING, Scope::All, limits)
        .await?;
    let second = b
        .export_batch(first.next.clone(), Scope::All, limits)
        .await?;
    seed("b-batch-0", first.payload);
    seed("b-batch-1", second.payload);

    // C re-creates the row B deleted and edits what A edits at the same time.
    c.apply_changes(&b.export_changes(Since::Beginning).await?)
        .await?;
    c.insert(&item("a2", "again", 0, 0.0, &[1], Some("re-created")))
        .await?;
    c.execute_raw(
        "UPDATE items SET title = ?1 WHERE id = ?2",
        params!["C's", "a1"],
    )
    .await?;
    c.execute_raw("DELETE FROM slots WHERE id = ?1", params![-3])
        .await?;
    a.execute_raw(
        "UPDATE items SET title = ?1 WHERE id = ?2",
        params!["A's", "a1"],
    )
    .await?;
    seed(
        "a-concurrent",
        a.export_local_changes(Since::Version(a_mark)).await?,
    );
    let c_all = c.export_changes(Since::Beginning).await?;
    seed("c-relay", c_all.clone());

    // The replica takes everything back and changes its own rows again.
    here.apply_changes(&c_all).await?;
    here.apply_changes(&a.export_local_changes(Since::Version(a_mark)).await?)
        .await?;
    here.execute_raw(
        "UPDATE items SET price = ?1 WHERE id = ?2",
        params![9.75, "r1"],
    )
    .await?;
    seed(
        "replica-relay",
        here.export_changes(Since::Beginning).await?,
    );

    // Evictions: every row of C's, forgotten rather than deleted.
    let mut evict = decode(&c_all)?;
    for row in &mut evict.rows {
        row.cl = sync_runtime::wire::EVICT;
        row.columns.clear();
    }
    seed("c-evict", encode(&evict, Compression::None));

    // A row carried twice, its clock one step higher the second time: refused,
    // since the fuzzer found that each copy could climb a step.
    let mut twice = decode(&a_all)?;
    let mut copy = twice.rows[0].clone();
    for column in &mut copy.columns {
        column.col_version += 1;
    }
    twice.rows.push(copy);
    seed("a-twice", encode(&twice, Compression::None));

    // A payload with no changes.
    seed(
        "empty",
        peer().await?.export_changes(Since::Beginning).await?,
    );
    Ok(seeds)
}
