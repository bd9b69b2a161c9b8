//! A database's site id, and the ones it had before.
//!
//! Every change is labelled with the site id of the database that made it and
//! its version there. Two files that share a site id (a byte copy of a file,
//! or a file restored from a backup over the device that kept writing after
//! it) would label different changes alike, and replicas would take one for
//! the other. Such a file takes a new site id ([`SyncDb::new_site_id`]) and
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

use rusqlite::{Connection, OptionalExtension};

use crate::db::{SyncDb, Worker, write};
use crate::error::{Error, Result};
use crate::export::Cursor;
use crate::id::SiteId;
use crate::merge;
use crate::sql::{self, TableSql};
use crate::tracking;

impl SyncDb {
    /// Gives this database a new site id, keeping its rows and their history.
    ///
    /// Call it on a file that is a copy of another replica's (two files must
    /// never sync under one site id) or that was restored from a backup while
    /// its device kept writing after the backup was taken. Returns the new id.
    /// The changes it made and has not sent yet are sent under the new id (see
    /// the module's documentation).
    pub async fn new_site_id(&self) -> Result<SiteId> {
        self.renew_site_id(false).await
    }

    /// Gives this database a new site id because another file uses its
    /// current one too (its server or a peer showed it): the requests to its
    /// server then say so (see
    /// [`REUSED_SITE_HEADER`](crate::protocol::REUSED_SITE_HEADER)), so that
    /// the other file is told to take a new one as well.
    pub(crate) async fn leave_reused_site_id(&self) -> Result<SiteId> {
        self.renew_site_id(true).await
    }

    async fn renew_site_id(&self, reused: bool) -> Result<SiteId> {
        let site = SiteId::random().map_err(|e| Error::NoRandomness(e.to_string()))?;
        let old = self.call(move |w| rekey(w, site, reused)).await?;
        self.set_site_ids(crate::db::SiteIds {
            current: site,
            previous: Some((old, reused)),
        });
        Ok(site)
    }
}

impl SyncDb {
    /// The site id this database had before its current one, if it had one,
    /// and whether it left it because another file used it too.
    pub(crate) async fn previous_site_id(&self) -> Result<Option<(SiteId, bool)>> {
        self.call(|w| {
            let previous: Option<(Vec<u8>, bool)> = w
                .conn
                .prepare_cached(
                    "SELECT s.site_id, i.reused FROM _synced_identities AS i \
                     JOIN _synced_sites AS s ON s.ordinal = i.site ORDER BY i.id DESC LIMIT 1",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(previous.and_then(|(bytes, reused)| {
                let site = SiteId::from_bytes(<[u8; 16]>::try_from(bytes.as_slice()).ok()?);
                Some((site, reused))
            }))
        })
        .await
    }

    /// On a server: a device of `owner`'s left site id `from` for `to` (see
    /// [`new_site_id`](Self::new_site_id)). When both are `owner`'s, `to`
    /// gets the record of the rows `from` holds (the rows a filtered pull
    /// evicts when they stop passing) if it has none yet, so that the device
    /// still gets the evictions of the rows its user may no longer read; and
    /// when the device left `from` because another file used it too
    /// (`reused`), `from` is remembered as reused: every later push or pull
    /// presenting it is refused with [`Error::SiteReused`] (see
    /// [`apply_push`](Self::apply_push) and
    /// [`export_for_device`](Self::export_for_device)).
    pub async fn site_renewed(
        &self,
        from: SiteId,
        to: SiteId,
        owner: &str,
        reused: bool,
    ) -> Result<()> {
        let owner = owner.to_owned();
        self.call(move |w| {
            // Reads, and a statement when there is something to record: a
            // device sends this with every request.
            let conn = &w.conn;
            let owned: Option<String> = conn
                .prepare_cached("SELECT owner FROM _synced_site_owners WHERE site_id = ?1")?
                .query_row([from.as_bytes().as_slice()], |r| r.get(0))
                .optional()?;
            if from == to || owned.as_deref() != Some(owner.as_str()) {
                return Ok(());
            }
            if reused && !merge::is_reused(conn, from)? {
                merge::mark_reused(conn, from)?;
            }
            let ordinals = merge::local_sites(conn, &[from, to])?;
            let has: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM _synced_held WHERE site = ?1)")?
                .query_row([ordinals[1]], |r| r.get(0))?;
            if !has {
                conn.execute(
                    "INSERT INTO _synced_held (site, tbl, pk, evicted, at) \
                     SELECT ?2, tbl, pk, evicted, at FROM _synced_held WHERE site = ?1 \
                     ON CONFLICT DO NOTHING",
                    (ordinals[0], ordinals[1]),
                )?;
            }
            Ok(())
        })
        .await
    }
}

/// Moves the database to site id `site` (see the module's documentation);
/// `reused`: it leaves its current one because another file uses it too.
/// Returns the site id it left.
fn rekey(worker: &mut Worker, site: SiteId, reused: bool) -> Result<SiteId> {
    write(worker, |tx| {
        tx.set_versions();
        let conn = tx.conn();
        let current: i64 = conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
        let old: Vec<u8> = conn.query_row("SELECT site_id FROM _synced_state", [], |r| r.get(0))?;
        let left = <[u8; 16]>::try_from(old.as_slice())
            .map(SiteId::from_bytes)
            .map_err(|_| Error::Corrupt {
                details: format!("the site id is {} bytes, not 16", old.len()),
            })?;
        conn.execute(
            "UPDATE _synced_sites SET site_id = ?1 WHERE ordinal = 0",
            [site.as_bytes().as_slice()],
        )?;
        conn.execute(
            "INSERT INTO _synced_sites (ordinal, site_id) \
             SELECT max(ordinal) + 1, ?1 FROM _synced_sites",
            [&old],
        )?;
        let ordinal: i64 = conn.query_row(
            "SELECT ordinal FROM _synced_sites WHERE site_id = ?1",
            [&old],
            |r| r.get(0),
        )?;
        conn.execute(
            // A site id it left without making anything under it (`upto` the
            // same as the one before) keeps no version from the earlier one.
            "INSERT INTO _synced_identities (upto, site, reused) VALUES (?1, ?2, ?3)",
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
        conn.execute(
            "UPDATE _synced_state SET site_id = ?1",
            [site.as_bytes().as_slice()],
        )?;
        if moved > 0 {
            conn.execute("UPDATE _synced_state SET db_version = ?1", [restamped])?;
        }
        Ok(left)
    })
}

/// The version up to which every server this database syncs with acknowledged
/// its changes: the least of its send cursors; 0 without a server.
fn acknowledged(conn: &Connection) -> Result<i64> {
    let mut stmt = conn.prepare("SELECT sent FROM _synced_remote")?;
    let sent = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut least: Option<i64> = None;
    for cursor in sent {
        let version = cursor?.parse::<Cursor>().map_or(0, |c| c.version());
        least = Some(least.map_or(version, |l| l.min(version)));
    }
    Ok(least.unwrap_or(0))
}
