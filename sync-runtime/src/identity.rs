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
        let site = SiteId::random().map_err(|e| Error::NoRandomness(e.to_string()))?;
        self.call(move |w| rekey(w, site)).await?;
        self.set_site_id(site);
        Ok(site)
    }
}

impl SyncDb {
    /// The site id this database had before its current one, if it had one.
    pub(crate) async fn previous_site_id(&self) -> Result<Option<SiteId>> {
        self.call(|w| {
            let Some(&(_, ordinal)) = crate::change::identities(&w.conn)?.last() else {
                return Ok(None);
            };
            let bytes: Vec<u8> = w.conn.query_row(
                "SELECT site_id FROM _synced_sites WHERE ordinal = ?1",
                [ordinal],
                |r| r.get(0),
            )?;
            Ok(<[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(SiteId::from_bytes))
        })
        .await
    }

    /// On a server: gives device site `to` the record of the rows device site
    /// `from` holds (the rows a filtered pull evicts when they stop passing),
    /// when `to` has none yet and both
    /// belong to `owner`: a device that took a new site id
    /// ([`new_site_id`](Self::new_site_id)) still gets the evictions of the
    /// rows its user may no longer read.
    pub async fn inherit_held(&self, from: SiteId, to: SiteId, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.call(move |w| {
            // Reads, and one statement when there is something to carry over:
            // a device sends this with every request.
            let conn = &w.conn;
            let owned: Option<String> = conn
                .prepare_cached("SELECT owner FROM _synced_site_owners WHERE site_id = ?1")?
                .query_row([from.as_bytes().as_slice()], |r| r.get(0))
                .optional()?;
            if from == to || owned.as_deref() != Some(owner.as_str()) {
                return Ok(());
            }
            let ordinals = crate::merge::local_sites(conn, &[from, to])?;
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

    /// On a server: checks that a device presenting site id `site`, at its own
    /// `version` when it says (a pull's `synced-version` header, a push's
    /// range), is the only file using that id. A site id the server has
    /// received versions of beyond `version` was used by more than one file:
    /// it is remembered as reused, and this call and every later one with it
    /// fail with [`Error::SiteReused`], so that every file using it takes a new
    /// one.
    pub async fn check_device_version(&self, site: SiteId, version: Option<i64>) -> Result<()> {
        let message = self
            .call(move |w| {
                // Reads alone, but for the mark: a pull takes no write lock.
                let conn = &w.conn;
                let reused: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM _synced_reused WHERE site_id = ?1)",
                    )?
                    .query_row([site.as_bytes().as_slice()], |r| r.get(0))?;
                if reused {
                    return Ok(Some(format!(
                        "site {site} was used by more than one file; the device needs a new site id"
                    )));
                }
                let Some(version) = version else {
                    return Ok(None);
                };
                let behind = crate::merge::behind(conn, site, version)?;
                if behind.is_some() {
                    conn.execute(
                        "INSERT INTO _synced_reused (site_id) VALUES (?1) ON CONFLICT DO NOTHING",
                        [site.as_bytes().as_slice()],
                    )?;
                }
                Ok(behind)
            })
            .await?;
        match message {
            Some(message) => Err(Error::SiteReused { message }),
            None => Ok(()),
        }
    }
}

/// Moves the database to site id `site` (see the module's documentation).
fn rekey(worker: &mut Worker, site: SiteId) -> Result<()> {
    write(worker, |tx| {
        tx.set_versions();
        let conn = tx.conn();
        let current: i64 = conn.query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
        let old: Vec<u8> = conn.query_row("SELECT site_id FROM _synced_state", [], |r| r.get(0))?;
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
            "INSERT INTO _synced_identities (upto, site) VALUES (?1, ?2) \
             ON CONFLICT (upto) DO UPDATE SET site = excluded.site",
            (current, ordinal),
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
        Ok(())
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
