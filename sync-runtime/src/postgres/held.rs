//! What each filtered reader holds, on PostgreSQL: the marks that filtered
//! pulls and pushes set (see `crate::filter`), in `_synced_held`.
//!
//! A pull reads in a snapshot of its own, then records its marks in a
//! transaction of their own. A push of the reader's own device that
//! committed in between may have marked rows it wrote as held, which the
//! pull's older marks must not replace: both take the reader's lock
//! ([`sql::reader_lock`]) before they write marks, and the pull records
//! nothing (and reads again) if the reader pushed since it read.

use std::collections::{HashMap, HashSet};

use tokio::runtime::Handle;
use tokio_postgres::Client;

use super::{Db, pg_error, sql};
use crate::error::{Error, Result};
use crate::filter::NewMark;

/// Takes reader site ordinal `reader`'s lock until the transaction ends.
pub(crate) fn lock_reader(client: &Client, runtime: &Handle, db: &Db, reader: i64) -> Result<()> {
    let space = i32::try_from(db.space).map_err(|_| Error::Corrupt {
        details: format!("lock space {} is out of range", db.space),
    })?;
    runtime
        .block_on(client.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&space, &sql::reader_lock(reader)],
        ))
        .map_err(pg_error)?;
    Ok(())
}

/// Records the marks a filtered export set for reader `reader` (an
/// ordinal), in one statement: each replaces the reader's mark of its row
/// unless that one is from a later export.
pub(crate) fn record(
    client: &Client,
    runtime: &Handle,
    db: &Db,
    reader: i64,
    marks: &[NewMark],
) -> Result<()> {
    // One mark a row (the last), as one statement may write a row once.
    let mut last: HashMap<(&str, &[u8]), (i64, i64)> = HashMap::new();
    for mark in marks {
        let (table, key, evicted, at) = mark.parts();
        last.insert((table, key), (i64::from(evicted), at));
    }
    let mut tables = Vec::with_capacity(last.len());
    let mut keys = Vec::with_capacity(last.len());
    let mut evicted = Vec::with_capacity(last.len());
    let mut versions = Vec::with_capacity(last.len());
    for ((table, key), (gone, at)) in last {
        tables.push(table);
        keys.push(key);
        evicted.push(gone);
        versions.push(at);
    }
    let statement = format!(
        "INSERT INTO {0}._synced_held (site, tbl, pk, evicted, at) \
         SELECT $1, m.t, m.k, m.e, m.a \
         FROM unnest($2::text[], $3::bytea[], $4::bigint[], $5::bigint[]) AS m(t, k, e, a) \
         ON CONFLICT (site, tbl, pk) DO UPDATE SET evicted = excluded.evicted, at = excluded.at \
         WHERE excluded.at >= {0}._synced_held.at",
        db.schema
    );
    runtime
        .block_on(client.execute(&statement, &[&reader, &tables, &keys, &evicted, &versions]))
        .map_err(pg_error)?;
    Ok(())
}

/// Records the marks of a restore (see [`crate::export::Restored::marks`])
/// for reader `reader` (an ordinal), at version `at`: the rows sent whole
/// are held, the rows evicted are evicted if held.
pub(crate) fn restored(
    client: &Client,
    runtime: &Handle,
    db: &Db,
    reader: i64,
    marks: &[(String, Vec<u8>, bool)],
    at: i64,
) -> Result<()> {
    lock_reader(client, runtime, db, reader)?;
    for held in [true, false] {
        let rows: HashSet<(&str, &[u8])> = marks
            .iter()
            .filter(|(.., h)| *h == held)
            .map(|(table, key, _)| (table.as_str(), key.as_slice()))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let (tables, keys): (Vec<&str>, Vec<&[u8]>) = rows.into_iter().unzip();
        let statement = if held {
            format!(
                "INSERT INTO {0}._synced_held (site, tbl, pk, evicted, at) \
                 SELECT $1, m.t, m.k, 0, $4 FROM unnest($2::text[], $3::bytea[]) AS m(t, k) \
                 ON CONFLICT (site, tbl, pk) DO UPDATE SET evicted = 0, at = excluded.at",
                db.schema
            )
        } else {
            format!(
                "UPDATE {0}._synced_held h SET evicted = 1, at = $4 \
                 FROM unnest($2::text[], $3::bytea[]) AS m(t, k) \
                 WHERE h.site = $1 AND h.tbl = m.t AND h.pk = m.k",
                db.schema
            )
        };
        runtime
            .block_on(client.execute(&statement, &[&reader, &tables, &keys, &at]))
            .map_err(pg_error)?;
    }
    Ok(())
}
