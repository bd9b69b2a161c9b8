//! Applies payloads to a replica as a peer's (`apply_changes`), after
//! repairing their frame ([`repair`]), so that mutated seeds reach the merge.
//! The merge must either refuse a payload with one of its checks and leave the
//! replica exactly as it was, or apply it and move the replica's version by no
//! more than the remote transactions the payload holds; applied a second time,
//! a payload must change nothing.
//!
//! From `fuzz/`, with the seeds of `seeds/` (see the book's wire-format
//! chapter for why `-s none -a`):
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a apply corpus/apply seeds -- -rss_limit_mb=256
//! ```

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use sync_runtime::wire::{Payload, decode};
use sync_runtime::{Error, Since, SiteId, SyncDb};
use sync_runtime_fuzz::{REPLICA, repair, replica, runtime};

fuzz_target!(|input: &[u8]| {
    let bytes = repair(input);
    // Bytes the decoder refuses never reach the merge; the `decode` target
    // explores them.
    let Ok(payload) = decode(&bytes) else {
        return;
    };
    runtime().block_on(check(&bytes, &payload));
});

/// What the replica holds before each input, besides its own two rows: the
/// rows of three peers, some deleted, one re-created, some edited by two of
/// them, and its own rows as they edited them. Without them a payload's row
/// could only meet a row of the replica's own at causal length 1: no lower
/// causal length to ignore, no tie with another site's record to break.
const STATE: &[u8] = include_bytes!("../seeds/c-relay.none");

async fn check(bytes: &[u8], payload: &Payload) {
    // A new replica for every input, so that an input does the same whatever
    // ran before it, a crash reproduces from its input alone, and memory stays
    // flat. Measured without sanitizer: 2.2 ms to open one in memory with its
    // tables and rows, and 1 ms to apply a seed of 9 rows such as its starting
    // state. Copying a prepared database file and opening that took 0.7 ms,
    // but would leave files behind whenever the fuzzer stops at a crash.
    let db = replica().await.expect("the replica opens");
    db.apply_changes(STATE)
        .await
        .expect("the replica takes its starting state");
    let before = state(&db, payload.exporter).await;
    match db.apply_changes(bytes).await {
        Err(error) => {
            assert!(
                refused_by_a_check(&error),
                "the payload reached SQLite or the metadata unchecked: {error:?}"
            );
            assert_eq!(
                state(&db, payload.exporter).await,
                before,
                "a refused payload changed the replica ({error})"
            );
        }
        Ok(_) => {
            let after = state(&db, payload.exporter).await;
            let moved = after.version - before.version;
            let remote = remote_transactions(payload);
            assert!(
                (0..=remote).contains(&moved),
                "the replica's version moved by {moved}, for {remote} remote transactions"
            );
            db.apply_changes(bytes)
                .await
                .expect("a payload applied once applies again");
            assert_eq!(
                state(&db, payload.exporter).await,
                after,
                "a payload applied a second time changed the replica"
            );
        }
    }
}

/// What a payload may change: the replica's version, its rows and their
/// clocks (its whole export), and the version up to which it holds the
/// exporter's changes.
#[derive(Debug, PartialEq)]
struct State {
    version: i64,
    export: Vec<u8>,
    seen: i64,
}

async fn state(db: &SyncDb, exporter: SiteId) -> State {
    State {
        version: db.db_version().await.expect("the version reads"),
        export: db
            .export_changes(Since::Beginning)
            .await
            .expect("the replica exports"),
        seen: db.seen_version(exporter).await.expect("the mark reads"),
    }
}

/// The errors that say a payload was refused before anything was written.
/// Any other (SQLite's, inconsistent metadata) means something the checks let
/// through was refused only by the database.
fn refused_by_a_check(error: &Error) -> bool {
    matches!(
        error,
        Error::Payload(_)
            | Error::Refused { .. }
            | Error::UnknownTable { .. }
            | Error::UnknownColumn { .. }
            | Error::SchemaMismatch { .. }
            | Error::WrongType { .. }
            | Error::GrowOnly { .. }
    )
}

/// The remote transactions a payload holds: its distinct origins made by
/// another site than the replica. Each takes at most one local version.
fn remote_transactions(payload: &Payload) -> i64 {
    let origins = payload
        .rows
        .iter()
        .flat_map(|row| std::iter::once(row.origin).chain(row.columns.iter().map(|c| c.origin)));
    let remote: HashSet<_> = origins
        .map(|origin| (payload.sites[origin.site as usize], origin.version))
        .filter(|(site, _)| *site != REPLICA)
        .collect();
    remote.len() as i64
}
