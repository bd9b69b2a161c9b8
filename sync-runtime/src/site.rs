//! Site bookkeeping: the dictionary of site ids, how far each site's changes
//! were received, the site ids a database had before its current one, and on a
//! server, who owns each device's site id and which ones more than one file used.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::id::SiteId;
use crate::sql;

/// The local ordinal of every site in `sites` (this database is 0), adding new
/// sites to the dictionary.
pub(crate) fn local_sites(conn: &Connection, sites: &[SiteId]) -> Result<Vec<i64>> {
    sites
        .iter()
        .map(|site| {
            conn.prepare_cached(sql::ADD_SITE)?
                .execute([site.as_bytes().as_slice()])?;
            Ok(conn
                .prepare_cached(sql::SITE_ORDINAL)?
                .query_row([site.as_bytes().as_slice()], |r| r.get(0))?)
        })
        .collect()
}

/// The local ordinal of `site`, if the dictionary has it (a read).
pub(crate) fn ordinal(conn: &Connection, site: SiteId) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(sql::SITE_ORDINAL)?
        .query_row([site.as_bytes().as_slice()], |r| r.get(0))
        .optional()?)
}

/// The site id of a dictionary ordinal, if the dictionary has it (a read).
pub(crate) fn of_ordinal(conn: &Connection, ordinal: i64) -> Result<Option<SiteId>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached(sql::SITE_OF_ORDINAL)?
        .query_row([ordinal], |r| r.get(0))
        .optional()?;
    bytes
        .map(|bytes| {
            from_stored(&bytes).ok_or_else(|| Error::Corrupt {
                details: format!("site ordinal {ordinal} has {} bytes, not 16", bytes.len()),
            })
        })
        .transpose()
}

/// A site id as stored: 16 bytes.
pub(crate) fn from_stored(bytes: &[u8]) -> Option<SiteId> {
    <[u8; 16]>::try_from(bytes).ok().map(SiteId::from_bytes)
}

/// This database's own site id.
pub(crate) fn own(conn: &Connection) -> Result<SiteId> {
    let bytes: Vec<u8> = conn.query_row(sql::OWN_SITE, [], |r| r.get(0))?;
    from_stored(&bytes).ok_or_else(|| Error::Corrupt {
        details: format!("the site id is {} bytes, not 16", bytes.len()),
    })
}

/// The site ids a database had before its current one: up to which version
/// each was its own, in version order (see [`crate::identity`]).
pub(crate) fn identities(conn: &Connection) -> Result<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare_cached(sql::IDENTITIES)?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The site id this database had before its current one, if it had one, and
/// whether it left it because another file used it too.
pub(crate) fn previous(conn: &Connection) -> Result<Option<(SiteId, bool)>> {
    let previous: Option<(Vec<u8>, bool)> = conn
        .prepare_cached(sql::PREVIOUS_SITE)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(previous.and_then(|(bytes, reused)| Some((from_stored(&bytes)?, reused))))
}

/// The highest of `site`'s versions this replica has seen (0 if none).
pub(crate) fn seen_version(conn: &Connection, site: SiteId) -> Result<i64> {
    Ok(conn
        .prepare_cached(sql::SEEN_VERSION)?
        .query_row([site.as_bytes().as_slice()], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Why device site `device`, at its own `version` when it says (a push's
/// range), cannot be the only file using that id: a server remembers it as
/// reused (see [`renewed`]), or received versions of it beyond `version`;
/// `None` if it can be.
pub(crate) fn reused_site(
    conn: &Connection,
    device: SiteId,
    version: Option<i64>,
) -> Result<Option<String>> {
    if is_reused(conn, device)? {
        return Ok(Some(format!(
            "site {device} was used by more than one file; the device needs a new site id"
        )));
    }
    match version {
        Some(version) => behind(conn, device, version),
        None => Ok(None),
    }
}

/// Whether a server remembers `site` as used by more than one file.
pub(crate) fn is_reused(conn: &Connection, site: SiteId) -> Result<bool> {
    Ok(conn
        .prepare_cached(sql::IS_REUSED)?
        .query_row([site.as_bytes().as_slice()], |r| r.get(0))?)
}

/// Remembers `site` as used by more than one file.
pub(crate) fn mark_reused(conn: &Connection, site: SiteId) -> Result<()> {
    conn.prepare_cached(sql::MARK_REUSED)?
        .execute([site.as_bytes().as_slice()])?;
    Ok(())
}

/// Why a device that says it is at `version` cannot be site `device`: the
/// server received versions of that site beyond it (a device's version only
/// grows, so its file is a copy of another device's, or was restored from a
/// backup); `None` if it can be.
fn behind(conn: &Connection, device: SiteId, version: i64) -> Result<Option<String>> {
    let seen = seen_version(conn, device)?;
    Ok((version < seen).then(|| {
        format!(
            "it received versions of site {device} up to {seen}, and the device says it is at \
             {version}: its file is a copy of another device's, or was restored from a backup; \
             it needs a new site id"
        )
    }))
}

/// Binds a device's site id to its owner the first time it is seen, and tells
/// whether `owner` is that site's owner.
pub(crate) fn claim(conn: &Connection, site: SiteId, owner: &str) -> Result<bool> {
    let site = site.as_bytes().as_slice();
    conn.prepare_cached(sql::CLAIM_SITE)?
        .execute((site, owner))?;
    let bound: String = conn
        .prepare_cached(sql::SITE_OWNER)?
        .query_row([site], |r| r.get(0))?;
    Ok(bound == owner)
}

/// On a server: a device of `owner`'s left site id `from` for `to`. When both
/// are `owner`'s, `to` gets the record of the rows `from` holds if it has none
/// yet, and `from` is remembered as reused when the device left it because
/// another file used it too.
pub(crate) fn renewed(
    conn: &Connection,
    from: SiteId,
    to: SiteId,
    owner: &str,
    reused: bool,
) -> Result<()> {
    // Reads, and a statement when there is something to record: a device
    // sends this with every request.
    let owned: Option<String> = conn
        .prepare_cached(sql::SITE_OWNER)?
        .query_row([from.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    if from == to || owned.as_deref() != Some(owner) {
        return Ok(());
    }
    if reused && !is_reused(conn, from)? {
        mark_reused(conn, from)?;
    }
    let ordinals = local_sites(conn, &[from, to])?;
    let has: bool = conn
        .prepare_cached(sql::HOLDS_ANY)?
        .query_row([ordinals[1]], |r| r.get(0))?;
    if !has {
        conn.prepare_cached(sql::INHERIT_HELD)?
            .execute((ordinals[0], ordinals[1]))?;
    }
    Ok(())
}
