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
use std::sync::Arc;

use deadpool_postgres::ClientWrapper;
use tokio::runtime::Handle;

use super::{Db, sql};
use crate::error::{Error, Result};
use crate::filter::NewMark;
use crate::id::SiteId;
use crate::merge::storage::Storage as _;
use crate::server::SharedBatch;

/// Takes reader site ordinal `reader`'s lock until the transaction ends.
pub(crate) fn lock_reader(
    client: &ClientWrapper,
    runtime: &Handle,
    db: &Db,
    reader: i64,
) -> Result<()> {
    let space = i32::try_from(db.space).map_err(|_| Error::Corrupt {
        details: format!("lock space {} is out of range", db.space),
    })?;
    super::execute(
        client,
        runtime,
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&space, &sql::reader_lock(reader)],
    )?;
    Ok(())
}

/// Records the marks a filtered export set for reader `reader` (an
/// ordinal), in one statement: each replaces the reader's mark of its row
/// unless that one is from a later export.
pub(crate) fn record(
    client: &ClientWrapper,
    runtime: &Handle,
    db: &Db,
    reader: i64,
    marks: &[NewMark],
) -> Result<()> {
    let all: Vec<(i64, &NewMark)> = marks.iter().map(|mark| (reader, mark)).collect();
    record_all(client, runtime, db, &all)
}

/// Records marks of readers (each an ordinal, with its mark) as [`record`]
/// does, in one statement.
fn record_all(
    client: &ClientWrapper,
    runtime: &Handle,
    db: &Db,
    marks: &[(i64, &NewMark)],
) -> Result<()> {
    // One mark a row (the last), as one statement may write a row once.
    let mut last: HashMap<(i64, &str, &[u8]), (i64, i64)> = HashMap::new();
    for (reader, mark) in marks {
        let (table, key, evicted, at) = mark.parts();
        last.insert((*reader, table, key), (i64::from(evicted), at));
    }
    let mut readers = Vec::with_capacity(last.len());
    let mut tables = Vec::with_capacity(last.len());
    let mut keys = Vec::with_capacity(last.len());
    let mut evicted = Vec::with_capacity(last.len());
    let mut versions = Vec::with_capacity(last.len());
    for ((reader, table, key), (gone, at)) in last {
        readers.push(reader);
        tables.push(table);
        keys.push(key);
        evicted.push(gone);
        versions.push(at);
    }
    let statement = format!(
        "INSERT INTO {0}._synced_held (site, tbl, pk, evicted, at) \
         SELECT m.s, m.t, m.k, m.e, m.a FROM \
         unnest($1::bigint[], $2::text[], $3::bytea[], $4::bigint[], $5::bigint[]) AS m(s, t, k, e, a) \
         ON CONFLICT (site, tbl, pk) DO UPDATE SET evicted = excluded.evicted, at = excluded.at \
         WHERE excluded.at >= {0}._synced_held.at",
        db.schema
    );
    super::execute(
        client,
        runtime,
        &statement,
        &[&readers, &tables, &keys, &evicted, &versions],
    )?;
    Ok(())
}

/// Records the marks of a restore (see [`crate::export::Restored::marks`])
/// for reader `reader` (an ordinal), at version `at`: the rows sent whole
/// are held, the rows evicted are evicted if held.
pub(crate) fn restored(
    client: &ClientWrapper,
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
        super::execute(client, runtime, &statement, &[&reader, &tables, &keys, &at])?;
    }
    Ok(())
}

/// Which of `readers` take the batch each was given (see
/// [`crate::filter::take_for`]): unless one holds or created a row its batch
/// left out, its own export would send the same rows. The marks of each that
/// takes its batch are recorded as its own. A few statements for them all.
pub(crate) fn take(
    client: &super::Connection,
    runtime: &Handle,
    db: &Db,
    readers: &[(Arc<SharedBatch>, SiteId)],
) -> Result<Vec<bool>> {
    let sites: Vec<&[u8]> = readers
        .iter()
        .map(|(_, r)| r.as_bytes().as_slice())
        .collect();
    let known: HashMap<Vec<u8>, i64> = super::query(
        client,
        runtime,
        &format!(
            "SELECT site_id, ordinal FROM {}._synced_sites WHERE site_id = ANY($1)",
            db.schema
        ),
        &[&sites],
    )?
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    let ordinal = |site: &SiteId| known.get(site.as_bytes().as_slice()).copied();
    // A reader the site dictionary does not know holds and created nothing.
    let mut takes: Vec<bool> = readers
        .iter()
        .map(|(shared, reader)| {
            let (_, withheld) = shared.parts();
            ordinal(reader).is_none_or(|o| withheld.iter().all(|row| row.creator != o))
        })
        .collect();
    // The readers that hold a row their batch left out, in one look-up.
    let (mut holders, mut tables, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for ((shared, reader), takes) in readers.iter().zip(&takes) {
        if let (true, Some(o)) = (*takes, ordinal(reader)) {
            for row in shared.parts().1 {
                holders.push(o);
                tables.push(row.table.as_str());
                keys.push(row.key.as_slice());
            }
        }
    }
    if !holders.is_empty() {
        let holding: HashSet<i64> = super::query(
            client,
            runtime,
            &format!(
                "SELECT DISTINCT h.site FROM {}._synced_held h \
                     JOIN unnest($1::bigint[], $2::text[], $3::bytea[]) AS m(s, t, k) \
                     ON h.site = m.s AND h.tbl = m.t AND h.pk = m.k",
                db.schema
            ),
            &[&holders, &tables, &keys],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
        for ((_, reader), takes) in readers.iter().zip(&mut takes) {
            if ordinal(reader).is_some_and(|o| holding.contains(&o)) {
                *takes = false;
            }
        }
    }
    // The marks of those that take theirs, in one statement.
    let marking: Vec<(&SharedBatch, SiteId)> = readers
        .iter()
        .zip(&takes)
        .filter(|((shared, _), takes)| **takes && !shared.parts().0.is_empty())
        .map(|((shared, reader), _)| (&**shared, *reader))
        .collect();
    if !marking.is_empty() {
        let sites: Vec<SiteId> = marking.iter().map(|(_, reader)| *reader).collect();
        let ordinals = super::storage::PgStorage::new(client, runtime, db).site_ordinals(&sites)?;
        let all: Vec<(i64, &NewMark)> = marking
            .iter()
            .zip(ordinals)
            .flat_map(|((shared, _), reader)| shared.parts().0.iter().map(move |m| (reader, m)))
            .collect();
        record_all(client, runtime, db, &all)?;
    }
    Ok(takes)
}
