//! The app versions a server serves side by side.
//!
//! A server's tables hold the union of every app version it accepted (see
//! [`crate::evolve`]); devices on different versions read and write them
//! together. Each publication of the app's tables (`PUT /schema`, see
//! [`Replica::publish`](crate::server::Replica::publish)) that changes any of
//! them is one *app version*, numbered from 1, whose descriptors are kept in
//! `_synced_published`: version `n` has the tables published in it and, carried
//! over, every table of version `n − 1` it did not name. A server that served
//! before it recorded any version (one of release 0.1.0) has version 1: the
//! tables it had.
//!
//! A device names its app version by the [view
//! fingerprint](crate::TableSchema::view_fingerprint) of each of its tables
//! ([`TABLES_HEADER`](crate::protocol::TABLES_HEADER)); a device of release
//! 0.1.0 sends its whole-schema fingerprint only. [`Versions::resolve`] finds
//! the [`View`] each stands for: the tables and columns the server sends that
//! device, so that it never receives one it does not know. A table no version
//! published as the device has it is refused, and so is one only versions
//! older than the oldest the server still supports have.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::schema::{SchemaError, TableSchema, fingerprint};
use crate::sql;
use crate::tracking;
use crate::tx::Registered;

/// The app versions a server published, as loaded from its database: what
/// [`resolve`](Self::resolve) matches devices against.
///
/// Each publication that changes a table (see
/// [`Replica::publish`](crate::server::Replica::publish)) is the next app
/// version, numbered from 1: it has the tables published in it and, carried
/// over, every table of the version before that it did not name. A database
/// that served before it recorded any version has version 1: the tables it had.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    /// Per version, oldest first: every table it has, by lowercase name.
    versions: Vec<(i64, BTreeMap<String, TableSchema>)>,
    /// Per table as an app version has it (lowercase name, view fingerprint):
    /// its descriptor as last published and the newest version that has it.
    views: HashMap<(String, u64), (TableSchema, i64)>,
    /// Per whole-schema fingerprint (what release 0.1.0 devices send): the
    /// newest version whose tables have it.
    legacy: HashMap<u64, i64>,
}

/// What a server sends one device: the tables and columns its app version
/// has (see [`Versions::resolve`]).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The device's tables, as its app version has them.
    tables: Vec<TableSchema>,
    /// Whether the device is of release 0.1.0, which checks that a payload's
    /// fingerprint is that of its own descriptors of the tables in it.
    legacy: bool,
}

/// Why a server does not serve a device's app version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unserved {
    /// A table of the device is not as any published app version has it: the
    /// app is newer than anything published, or was built for another database.
    #[error(
        "table `{table}` as this app version has it was never published on this database: \
         publish the app version's schema before its devices sync"
    )]
    NotPublished {
        /// The table.
        table: String,
    },
    /// A table of the device is as only app versions older than the oldest
    /// the server supports have it.
    #[error(
        "table `{table}` as this app version has it was last published in app version \
         {version}, and this database serves app versions {oldest} and later: update the app"
    )]
    TooOld {
        /// The table.
        table: String,
        /// The newest app version with the table as the device has it.
        version: i64,
        /// The oldest app version the server supports.
        oldest: i64,
    },
    /// A device of release 0.1.0 sent a whole-schema fingerprint that no
    /// published app version has.
    #[error(
        "no published app version has the schema fingerprint {fingerprint} of this app: \
         publish the app's schema, or update the app"
    )]
    UnknownSchema {
        /// The fingerprint, in hex.
        fingerprint: String,
    },
}

impl Versions {
    /// The newest version (0 when nothing was published).
    pub fn latest(&self) -> i64 {
        self.versions.last().map_or(0, |(version, _)| *version)
    }

    /// The tables of version `version`, by name order (`None` if there is no
    /// such version).
    pub fn tables(&self, version: i64) -> Option<Vec<TableSchema>> {
        let (_, tables) = self.versions.iter().find(|(v, _)| *v == version)?;
        Some(tables.values().cloned().collect())
    }

    /// The view of a device that sent the [view
    /// fingerprint](TableSchema::view_fingerprint) of each of its tables, by
    /// name. Every table must be as an app version from `oldest` on has it: a
    /// device is judged by its tables, so one whose tables no later version
    /// changed is served as the later versions' devices are (it differs from
    /// one of those that registered only some tables in nothing the server
    /// can see, and it reads and writes what they do).
    pub fn resolve(&self, tables: &[(String, u64)], oldest: i64) -> Result<View, Unserved> {
        let mut view = Vec::with_capacity(tables.len());
        for (name, fingerprint) in tables {
            view.push(self.supported(name, *fingerprint, oldest)?.clone());
        }
        Ok(View {
            tables: view,
            legacy: false,
        })
    }

    /// The descriptor of table `name` as the app version with its view
    /// `fingerprint` has it, if a version from `oldest` on has it so.
    fn supported(
        &self,
        name: &str,
        fingerprint: u64,
        oldest: i64,
    ) -> Result<&TableSchema, Unserved> {
        let key = (name.to_ascii_lowercase(), fingerprint);
        let Some((schema, version)) = self.views.get(&key) else {
            return Err(Unserved::NotPublished {
                table: name.to_owned(),
            });
        };
        if *version < oldest {
            return Err(Unserved::TooOld {
                table: name.to_owned(),
                version: *version,
                oldest,
            });
        }
        Ok(schema)
    }

    /// The view of a device of release 0.1.0, which sends the fingerprint of
    /// its whole schema: the tables of the newest version with that
    /// fingerprint, each of which must be as a version from `oldest` on has it
    /// (as [`resolve`](Self::resolve) judges devices of later releases).
    pub fn resolve_legacy(&self, fingerprint: u64, oldest: i64) -> Result<View, Unserved> {
        let unknown = || Unserved::UnknownSchema {
            fingerprint: format!("{fingerprint:016x}"),
        };
        let version = *self.legacy.get(&fingerprint).ok_or_else(unknown)?;
        let tables = self.tables(version).ok_or_else(unknown)?;
        for table in &tables {
            self.supported(&table.name, table.view_fingerprint(), oldest)?;
        }
        Ok(View {
            tables,
            legacy: true,
        })
    }

    /// Builds the versions from every published descriptor, by version.
    fn build(published: Vec<(i64, TableSchema)>) -> Self {
        let mut versions: Vec<(i64, BTreeMap<String, TableSchema>)> = Vec::new();
        for (version, schema) in published {
            if versions.last().is_none_or(|(v, _)| *v != version) {
                let carried = versions.last().map(|(_, t)| t.clone()).unwrap_or_default();
                versions.push((version, carried));
            }
            if let Some((_, tables)) = versions.last_mut() {
                tables.insert(schema.name.to_ascii_lowercase(), schema);
            }
        }
        let mut views = HashMap::new();
        let mut legacy = HashMap::new();
        for (version, tables) in &versions {
            for (name, schema) in tables {
                let key = (name.clone(), schema.view_fingerprint());
                views.insert(key, (schema.clone(), *version));
            }
            legacy.insert(fingerprint(tables.values()), *version);
        }
        Self {
            versions,
            views,
            legacy,
        }
    }
}

impl View {
    /// The view of a device that knows every table and column of `tables`.
    pub fn of(tables: Vec<TableSchema>) -> Self {
        Self {
            tables,
            legacy: false,
        }
    }

    /// The device's tables, as its app version has them.
    pub fn tables(&self) -> &[TableSchema] {
        &self.tables
    }

    /// A replica's stored descriptors `tables` as the device reads them: only
    /// its tables, each with its key and only the columns it has.
    pub(crate) fn narrow(&self, tables: &[TableSchema]) -> Vec<TableSchema> {
        tables
            .iter()
            .filter_map(|stored| {
                let known = self
                    .tables
                    .iter()
                    .find(|t| t.name.eq_ignore_ascii_case(&stored.name))?;
                let mut narrowed = stored.clone();
                narrowed.columns = stored
                    .columns
                    .iter()
                    .filter(|c| c.primary_key || known.has_column(c.id()))
                    .cloned()
                    .collect();
                Some(narrowed)
            })
            .collect()
    }

    /// The schema fingerprint a payload of the tables `names` (in payload
    /// order) carries for this device: for a device of release 0.1.0, which
    /// checks it, that of its own descriptors; `None` for others.
    pub(crate) fn payload_fingerprint(&self, names: &[String]) -> Option<u64> {
        if !self.legacy {
            return None;
        }
        let described = names.iter().filter_map(|name| {
            self.tables
                .iter()
                .find(|t| t.name.eq_ignore_ascii_case(name))
        });
        Some(fingerprint(described))
    }
}

/// `batch` for a device of `view`, whose app version may check the payload's
/// schema fingerprint (release 0.1.0).
pub(crate) fn for_device(view: Option<&View>, mut batch: crate::Batch) -> crate::Batch {
    if let Some(fingerprint) = view.and_then(|view| view.payload_fingerprint(&batch.tables)) {
        crate::wire::set_schema_fingerprint(&mut batch.payload, fingerprint);
    }
    batch
}

/// Where a replica keeps its tables and the app versions published: what
/// [`load_from`] and [`publish_to`] read and write, in SQLite
/// ([`SqliteCatalog`]) or in PostgreSQL.
pub(crate) trait Catalog {
    /// Every published descriptor, by version, in version order.
    fn published(&mut self) -> Result<Vec<(i64, TableSchema)>>;

    /// The synced tables' descriptors.
    fn tables(&mut self) -> Result<Vec<TableSchema>>;

    /// Records descriptors of published versions.
    fn record(&mut self, published: &[(i64, TableSchema)]) -> Result<()>;

    /// Creates the table of `schema`, or evolves the one stored (`stored`,
    /// checked already) to it.
    fn register(&mut self, schema: &TableSchema, stored: Option<&TableSchema>) -> Result<()>;
}

/// The versions published, as `catalog` has them.
pub(crate) fn load_from(catalog: &mut impl Catalog) -> Result<Versions> {
    let published = catalog.published()?;
    if published.is_empty() {
        return Ok(Versions::build(first_version(catalog)?));
    }
    Ok(Versions::build(published))
}

/// The versions published on the database of `conn`.
pub(crate) fn load(conn: &Connection) -> Result<Versions> {
    load_from(&mut SqliteCatalog { conn, tables: &[] })
}

/// Version 1 of a database that recorded none: the tables it has.
fn first_version(catalog: &mut impl Catalog) -> Result<Vec<(i64, TableSchema)>> {
    Ok(catalog
        .tables()?
        .into_iter()
        .map(|schema| (1, schema))
        .collect())
}

/// Publishes an app version with the tables `schemas`, inside the caller's
/// write transaction: each table is created or evolved to it (see
/// [`crate::evolve`]; an incompatible change fails the whole publication), and
/// the tables whose descriptor no version had are recorded as a new version.
/// A table as an earlier version published it is left alone: publishing an
/// older version again (a configuration file not updated) changes nothing.
/// Returns the newest version.
pub(crate) fn publish(conn: &Connection, tables: &[Arc<Registered>]) -> Result<i64> {
    let schemas: Vec<TableSchema> = tables.iter().map(|t| t.schema.clone()).collect();
    publish_to(&mut SqliteCatalog { conn, tables }, &schemas)
}

/// [`publish`] into any [`Catalog`].
pub(crate) fn publish_to(catalog: &mut impl Catalog, schemas: &[TableSchema]) -> Result<i64> {
    for (i, schema) in schemas.iter().enumerate() {
        schema.validate()?;
        if schemas[..i]
            .iter()
            .any(|other| other.name.eq_ignore_ascii_case(&schema.name))
        {
            return Err(Error::InvalidSchema(SchemaError {
                table: schema.name.to_string(),
                reason: "the table is listed twice".into(),
            }));
        }
    }
    let mut recorded = catalog.published()?;
    if recorded.is_empty() {
        // The tables served before any version was recorded are version 1.
        recorded = first_version(catalog)?;
        catalog.record(&recorded)?;
    }
    let latest = recorded.iter().map(|(v, _)| *v).max().unwrap_or(0);
    let stored = catalog.tables()?;
    let mut changed = Vec::new();
    for schema in schemas {
        let published = recorded
            .iter()
            .any(|(_, t)| t.name.eq_ignore_ascii_case(&schema.name) && t == schema);
        if !published {
            let old = stored
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(&schema.name));
            if let Some(old) = old {
                // What the evolution refuses first, then what only a
                // publication must say.
                crate::evolve::plan(old, schema)?;
                crate::evolve::check_first_defaults(old, schema)?;
            }
            catalog.register(schema, old)?;
            changed.push((latest + 1, schema.clone()));
        }
    }
    if changed.is_empty() {
        return Ok(latest);
    }
    catalog.record(&changed)?;
    Ok(latest + 1)
}

/// A SQLite database as a [`Catalog`], with the tables about to be
/// registered (their SQL generated already).
pub(crate) struct SqliteCatalog<'c> {
    conn: &'c Connection,
    tables: &'c [Arc<Registered>],
}

impl Catalog for SqliteCatalog<'_> {
    fn published(&mut self) -> Result<Vec<(i64, TableSchema)>> {
        let mut stmt = self.conn.prepare_cached(sql::PUBLISHED)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (version, descriptor) = row?;
            Ok((version, published_descriptor(version, &descriptor)?))
        })
        .collect()
    }

    fn tables(&mut self) -> Result<Vec<TableSchema>> {
        tracking::synced_tables(self.conn, false)
    }

    fn record(&mut self, published: &[(i64, TableSchema)]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(sql::PUBLISH)?;
        for (version, schema) in published {
            let descriptor = serde_json::to_string(schema).map_err(|e| Error::Corrupt {
                details: format!("a descriptor does not serialise: {e}"),
            })?;
            stmt.execute((version, schema.name.to_ascii_lowercase(), descriptor))?;
        }
        Ok(())
    }

    fn register(&mut self, schema: &TableSchema, _stored: Option<&TableSchema>) -> Result<()> {
        let table = self
            .tables
            .iter()
            .find(|t| t.schema.name.eq_ignore_ascii_case(&schema.name))
            .ok_or_else(|| Error::NotRegistered {
                table: schema.name.to_string(),
            })?;
        tracking::register(self.conn, table)
    }
}

/// A descriptor of published version `version`, as stored.
pub(crate) fn published_descriptor(version: i64, descriptor: &str) -> Result<TableSchema> {
    serde_json::from_str(descriptor).map_err(|e| Error::Corrupt {
        details: format!("a descriptor of published version {version} is unreadable ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Algorithm, ColumnSchema};
    use crate::value::SqlType;

    fn todos(extra: &[&str]) -> TableSchema {
        let mut columns = vec![
            ColumnSchema::new("id", SqlType::Text).primary_key(),
            ColumnSchema::new("title", SqlType::Text).default_sql("''"),
        ];
        for name in extra {
            columns.push(ColumnSchema::new(name.to_string(), SqlType::Integer).nullable(true));
        }
        TableSchema::new("todos", Algorithm::Cls, columns)
    }

    fn tags() -> TableSchema {
        TableSchema::new(
            "tags",
            Algorithm::Cls,
            vec![ColumnSchema::new("name", SqlType::Text).primary_key()],
        )
    }

    fn of(view: &TableSchema) -> (String, u64) {
        (view.name.to_string(), view.view_fingerprint())
    }

    #[test]
    fn versions_carry_over_the_tables_they_do_not_name() {
        let versions = Versions::build(vec![(1, todos(&[])), (2, tags()), (3, todos(&["due"]))]);
        assert_eq!(versions.latest(), 3);
        assert_eq!(versions.tables(2).unwrap(), [tags(), todos(&[])]);
        assert_eq!(versions.tables(3).unwrap(), [tags(), todos(&["due"])]);
        // A view is supported as long as its newest version is.
        let v1 = versions.resolve(&[of(&todos(&[]))], 2).unwrap();
        assert_eq!(v1.tables(), [todos(&[])]);
        assert_eq!(
            versions.resolve(&[of(&todos(&[]))], 3),
            Err(Unserved::TooOld {
                table: "todos".into(),
                version: 2,
                oldest: 3
            })
        );
        assert!(versions.resolve(&[of(&tags())], 3).is_ok());
        assert_eq!(
            versions.resolve(&[of(&todos(&["later"]))], 1),
            Err(Unserved::NotPublished {
                table: "todos".into()
            })
        );
        // A device may have some of the tables only.
        assert!(versions.resolve(&[], 1).unwrap().tables().is_empty());
    }

    #[test]
    fn a_release_0_1_0_device_is_matched_by_its_whole_fingerprint() {
        let versions = Versions::build(vec![(1, todos(&[])), (2, tags()), (3, todos(&["due"]))]);
        let v1 = fingerprint([todos(&[])].iter());
        let v2 = fingerprint([tags(), todos(&[])].iter());
        assert_eq!(
            versions.resolve_legacy(v1, 1).unwrap().tables(),
            [todos(&[])]
        );
        assert_eq!(versions.resolve_legacy(v2, 1).unwrap().tables().len(), 2);
        // Judged by its tables, as later releases' devices are: version 2
        // changed nothing of what version 1 has.
        assert!(versions.resolve_legacy(v1, 2).is_ok());
        assert!(matches!(
            versions.resolve_legacy(v1, 3),
            Err(Unserved::TooOld { version: 2, .. })
        ));
        assert!(matches!(
            versions.resolve_legacy(7, 1),
            Err(Unserved::UnknownSchema { .. })
        ));
    }

    #[test]
    fn a_view_reads_its_columns_by_id_and_fingerprints_payloads_only_for_0_1_0() {
        let mut stored = todos(&["due", "size"]);
        stored.columns.to_mut()[1] = ColumnSchema::new("label", SqlType::Text)
            .renamed_from("title")
            .default_sql("''");
        let view = View::of(vec![todos(&["size"])]);
        let narrowed = view.narrow(&[stored.clone(), tags()]);
        let names: Vec<&str> = narrowed[0].columns.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["id", "label", "size"]);
        assert_eq!(narrowed.len(), 1);
        assert_eq!(view.payload_fingerprint(&["todos".into()]), None);
        let legacy = View {
            legacy: true,
            ..view
        };
        assert_eq!(
            legacy.payload_fingerprint(&["todos".into()]),
            Some(fingerprint([todos(&["size"])].iter()))
        );
    }
}
