//! Exporting changes as a payload (see [`crate::wire`] for the format).

use std::collections::HashMap;

use rusqlite::Connection;

use crate::change::{Origins, scan};
use crate::error::Result;
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::wire::{self, ColumnChange, Compression, Origin, Payload, RowChange, TableEntry};

/// Where an export starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Every change this database holds.
    Beginning,
    /// The changes after this version of this database (a cursor a peer kept).
    Version(i64),
}

impl Since {
    pub(crate) fn version(self) -> i64 {
        match self {
            Since::Beginning => 0,
            Since::Version(v) => v.max(0),
        }
    }
}

/// Which changes an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every change, whoever made it: a replica relays what it received.
    All,
    /// Only the changes made on this database.
    Local,
    /// Every change except those made by one site (a relay answering that site).
    Except(SiteId),
}

/// Builds and encodes the payload of the changes after `since` in `tables`.
pub(crate) fn export(
    conn: &Connection,
    tables: &[TableSchema],
    since: i64,
    scope: Scope,
) -> Result<Vec<u8>> {
    let origins = Origins::new(conn)?;
    let upto: i64 = conn.query_row(crate::sql::CURRENT_VERSION, [], |r| r.get(0))?;
    let mut sites = SiteDictionary::new(&origins);
    let mut payload = Payload::default();
    let mut included = Vec::new();
    for schema in tables {
        let table = payload.tables.len() as u32;
        let mut rows = Vec::new();
        scan(conn, schema, since, |row| {
            let wanted = |sites: &SiteDictionary<'_>, version| -> Result<bool> {
                Ok(match scope {
                    Scope::All => true,
                    Scope::Local => sites.is_local(version)?,
                    Scope::Except(site) => !sites.made_by(version, site)?,
                })
            };
            let cl = u64::try_from(row.cl).unwrap_or_default();
            if row.cl % 2 == 0 {
                if wanted(&sites, row.version)? {
                    rows.push(RowChange {
                        table,
                        pk: row.pk,
                        cl,
                        origin: sites.origin(row.version)?,
                        columns: Vec::new(),
                    });
                }
                return Ok(());
            }
            if !row.exists {
                return Ok(());
            }
            let mut columns = Vec::new();
            for column in row.columns {
                if wanted(&sites, column.version)? {
                    columns.push(ColumnChange {
                        column: column.index as u32,
                        col_version: u64::try_from(column.col_version).unwrap_or_default(),
                        origin: sites.origin(column.version)?,
                        value: column.value,
                    });
                }
            }
            // The row's creation goes with its columns as their context, and alone
            // when the creation itself is one of the changes asked for.
            if columns.is_empty() && !(row.created > since && wanted(&sites, row.created)?) {
                return Ok(());
            }
            rows.push(RowChange {
                table,
                pk: row.pk,
                cl,
                origin: sites.origin(row.created)?,
                columns,
            });
            Ok(())
        })?;
        if !rows.is_empty() {
            payload.tables.push(TableEntry {
                name: schema.name.to_string(),
                keys: schema.key_columns().map(|c| c.name.to_string()).collect(),
                values: schema.value_columns().map(|c| c.name.to_string()).collect(),
            });
            payload.rows.extend(rows);
            included.push(schema);
        }
    }
    payload.sites = sites.list;
    payload.schema_fingerprint = fingerprint(included.iter().copied());
    payload.exporter = origins.site(0)?;
    payload.upto = u64::try_from(upto).unwrap_or_default();
    payload.since = u64::try_from(since).unwrap_or_default().min(payload.upto);
    Ok(wire::encode(&payload, Compression::Zstd))
}

/// The payload's site dictionary, filled as origins are looked up.
struct SiteDictionary<'o> {
    origins: &'o Origins<'o>,
    index: HashMap<i64, u32>,
    list: Vec<SiteId>,
}

impl<'o> SiteDictionary<'o> {
    fn new(origins: &'o Origins<'o>) -> Self {
        Self {
            origins,
            index: HashMap::new(),
            list: Vec::new(),
        }
    }

    /// Whether local version `version` was made here.
    fn is_local(&self, version: i64) -> Result<bool> {
        Ok(self.origins.of(version)?.0 == 0)
    }

    /// Whether local version `version` holds changes that `site` made.
    fn made_by(&self, version: i64, site: SiteId) -> Result<bool> {
        Ok(self.origins.site_of(version)? == site)
    }

    /// The payload origin of local version `version`, its site added to the
    /// dictionary.
    fn origin(&mut self, version: i64) -> Result<Origin> {
        let (ordinal, origin_version) = self.origins.of(version)?;
        let site = match self.index.get(&ordinal) {
            Some(&index) => index,
            None => {
                let index = self.list.len() as u32;
                self.list.push(self.origins.site(ordinal)?);
                self.index.insert(ordinal, index);
                index
            }
        };
        let version = u64::try_from(origin_version).unwrap_or_default();
        Ok(Origin { site, version })
    }
}

/// A fingerprint of the descriptors of `tables`, in order: name, algorithm and every
/// column's name, type, nullability, key role and default (FNV-1a, 64 bits).
pub(crate) fn fingerprint<'a>(tables: impl Iterator<Item = &'a TableSchema>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for table in tables {
        feed(table.name.to_ascii_lowercase().as_bytes());
        feed(table.algorithm.as_str().as_bytes());
        for c in table.columns.iter() {
            feed(c.name.as_bytes());
            feed(c.sql_type.as_sql().as_bytes());
            feed(&[u8::from(c.nullable), u8::from(c.primary_key)]);
            feed(c.default.as_deref().unwrap_or("").as_bytes());
        }
    }
    hash
}
