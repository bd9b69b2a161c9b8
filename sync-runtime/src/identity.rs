//! A database's site id, and the ones it had before.
//!
//! Every change is labelled with the site id of the database that made it and
//! its version there. Two files that share a site id (a byte copy of a file,
//! or a file restored from a backup over the device that kept writing after
//! it) would label different changes alike, and replicas would take one for
//! the other. Such a file takes a new site id ([`SyncDb::new_site_id`](crate::SyncDb::new_site_id)) and
//! keeps its rows and history:
//!
//! - the versions it made under its earlier id stay that id's: the id moves to
//!   an ordinary ordinal of the site dictionary, and `_synced_identities`
//!   records up to which version it was this database's;
//! - its own changes that its server has not acknowledged yet (after the send
//!   cursor of every server it syncs with, or all of them if it syncs with
//!   none) are made again under the new id, at one new version, so that they
//!   are sent: the other file may never send them. A replica that has them
//!   already under the earlier id gets the same values again, which changes
//!   nothing.

use rusqlite::Connection;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::export::Cursor;
use crate::id::SiteId;
use crate::site;
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::worker::{Handle, SiteIds, Worker, write};

/// Gives the database a new site id, keeping its rows and their history (see
/// the module's documentation); `reused`: it leaves its current one because
/// another file uses it too, which the requests to its server then say (see
/// [`REUSED_SITE_HEADER`](crate::protocol::REUSED_SITE_HEADER)), so that the
/// other file is told to take a new one as well. Returns the new id.
pub(crate) async fn renew(handle: &Handle, reused: bool) -> Result<SiteId> {
    let site = SiteId::random().map_err(|e| Error::NoRandomness(e.to_string()))?;
    let span = tracing::info_span!("rekey", to = %site, reused, from = tracing::field::Empty);
    let old = handle
        .call(move |w| rekey(w, site, reused))
        .instrument(span.clone())
        .await?;
    span.record("from", tracing::field::display(old));
    handle.set_site_ids(SiteIds {
        current: site,
        previous: Some((old, reused)),
    });
    Ok(site)
}

/// Moves the database to site id `site` (see the module's documentation);
/// `reused`: it leaves its current one because another file uses it too.
/// Returns the site id it left.
fn rekey(worker: &mut Worker, site: SiteId, reused: bool) -> Result<SiteId> {
    write(worker, |tx| {
        tx.set_versions();
        let conn = tx.conn();
        let current: i64 = conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
        let left = site::own(conn)?;
        let old = left.as_bytes().as_slice();
        conn.execute(sql::SET_OWN_SITE, [site.as_bytes().as_slice()])?;
        conn.execute(sql::ADD_LEFT_SITE, [old])?;
        let ordinal: i64 = conn.query_row(sql::SITE_ORDINAL, [old], |r| r.get(0))?;
        conn.execute(
            // A site id it left without making anything under it (`upto` the
            // same as the one before) keeps no version from the earlier one.
            sql::ADD_IDENTITY,
            (current, ordinal, reused),
        )?;
        // Made again under the new id: what no server acknowledged.
        let acknowledged = acknowledged(conn)?;
        let restamped = current + 1;
        let mut moved = 0;
        for schema in tracking::synced_tables(conn, false)? {
            let sql = TableSql::new(&schema);
            let mut statements = sql.restamp.split('\n');
            if let Some(first) = statements.next() {
                moved += conn.execute(first, (acknowledged, current, restamped))?;
            }
            for rest in statements {
                conn.execute(rest, [acknowledged])?;
            }
        }
        conn.execute(sql::SET_STATE_SITE, [site.as_bytes().as_slice()])?;
        if moved > 0 {
            conn.execute(sql::SET_VERSION, [restamped])?;
        }
        Ok(left)
    })
}

/// The version up to which every server this database syncs with acknowledged
/// its changes: the least of its send cursors; 0 without a server.
fn acknowledged(conn: &Connection) -> Result<i64> {
    let mut stmt = conn.prepare(sql::SEND_CURSORS)?;
    let sent = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut least: Option<i64> = None;
    for cursor in sent {
        let version = cursor?.parse::<Cursor>().map_or(0, |c| c.version());
        least = Some(least.map_or(version, |l| l.min(version)));
    }
    Ok(least.unwrap_or(0))
}
