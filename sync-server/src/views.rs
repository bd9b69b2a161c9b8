//! The app version each device is served, resolved once per header.
//!
//! Every push and pull names the device's tables in a header, which the server
//! resolves against the app versions published (see [`Versions::resolve`]).
//! Devices of one app version send the same header, and a device long-polling
//! sends it with every request: the view resolved for a header is kept, for the
//! database's app versions as they are, and shared by every request that sends
//! it. At most [`MAX_VIEWS`] are kept per database; a header beyond them
//! makes the database's views start over, so that headers resolved once and
//! never again cannot keep the others out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sync_runtime::protocol;
use sync_runtime::server::{Versions, View};

use crate::error::{Error, Result};

/// The most views kept per database: far more than the app versions in use.
pub const MAX_VIEWS: usize = 64;

/// What a device says its tables are.
#[derive(Clone, Copy)]
pub(crate) enum Sent<'h> {
    /// Its tables' fingerprints (the `synced-tables` header).
    Tables(&'h str),
    /// Its whole schema's fingerprint (the `synced-schema` header of a device
    /// of release 0.1.0).
    Schema(&'h str),
}

/// The views resolved, by database.
#[derive(Default)]
pub(crate) struct Views {
    databases: Mutex<HashMap<String, Resolved>>,
}

/// The views resolved against one set of app versions.
struct Resolved {
    versions: Arc<Versions>,
    oldest: i64,
    /// By the text of a `synced-tables` header.
    by_tables: HashMap<String, Arc<View>>,
    /// By the text of a `synced-schema` header.
    by_schema: HashMap<String, Arc<View>>,
}

impl Resolved {
    fn new(versions: &Arc<Versions>, oldest: i64) -> Self {
        Self {
            versions: Arc::clone(versions),
            oldest,
            by_tables: HashMap::new(),
            by_schema: HashMap::new(),
        }
    }

    fn of<'s, 'h>(&'s mut self, sent: Sent<'h>) -> (&'s mut HashMap<String, Arc<View>>, &'h str) {
        match sent {
            Sent::Tables(text) => (&mut self.by_tables, text),
            Sent::Schema(text) => (&mut self.by_schema, text),
        }
    }
}

impl Views {
    /// The view of a device of database `name` that sent `sent`, against
    /// `versions` from the oldest supported; 400 for a header that cannot be
    /// read, 409 when no published version from the oldest has its tables.
    pub(crate) fn resolve(
        &self,
        name: &str,
        versions: &Arc<Versions>,
        oldest: i64,
        sent: Sent<'_>,
    ) -> Result<Arc<View>> {
        let current =
            |kept: &Resolved| Arc::ptr_eq(&kept.versions, versions) && kept.oldest == oldest;
        {
            let mut databases = self.lock();
            if let Some(kept) = databases.get_mut(name).filter(|kept| current(kept)) {
                let (views, text) = kept.of(sent);
                if let Some(view) = views.get(text) {
                    return Ok(Arc::clone(view));
                }
            }
        }
        let view = Arc::new(resolve(name, versions, oldest, sent)?);
        let mut databases = self.lock();
        let kept = databases
            .entry(name.to_owned())
            .or_insert_with(|| Resolved::new(versions, oldest));
        if !current(kept) {
            *kept = Resolved::new(versions, oldest);
        }
        // Full: start over, so that headers resolved once and never again
        // (a client's made-up variations) cannot keep the others out.
        if kept.by_tables.len() + kept.by_schema.len() >= MAX_VIEWS {
            kept.by_tables.clear();
            kept.by_schema.clear();
        }
        let (views, text) = kept.of(sent);
        views.insert(text.to_owned(), Arc::clone(&view));
        Ok(view)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resolved>> {
        // Every step under the lock leaves the map consistent.
        self.databases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads and resolves what a device sent.
fn resolve(name: &str, versions: &Versions, oldest: i64, sent: Sent<'_>) -> Result<View> {
    let resolved = match sent {
        Sent::Tables(text) => {
            let tables = protocol::parse_tables_header(text).map_err(|e| {
                Error::BadRequest(format!(
                    "the {} header is invalid: {e}",
                    protocol::TABLES_HEADER
                ))
            })?;
            versions.resolve(&tables, oldest)
        }
        Sent::Schema(text) => {
            let fingerprint = protocol::parse_fingerprint(text).ok_or_else(|| {
                Error::BadRequest(format!(
                    "the {} header must be a schema fingerprint (16 hex digits)",
                    protocol::SCHEMA_HEADER
                ))
            })?;
            versions.resolve_legacy(fingerprint, oldest)
        }
    };
    resolved.map_err(|reason| Error::Unserved {
        database: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};

    use super::*;
    use crate::store::{Database, SqliteDatabase};

    #[tokio::test]
    async fn a_header_is_resolved_once_per_publication() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDatabase::open(&dir.path().join("todo.db"))
            .await
            .unwrap();
        let key = ColumnSchema::new("id", SqlType::Text).primary_key();
        let v1 = TableSchema::new("todos", Algorithm::Cls, vec![key.clone()]);
        db.publish(vec![v1.clone()]).await.unwrap();
        let header = protocol::tables_header(std::slice::from_ref(&v1));
        let views = Views::default();
        let versions = db.versions().await.unwrap();
        let resolve = |versions: &Arc<Versions>, header: &str| {
            views.resolve("todo", versions, 0, Sent::Tables(header))
        };

        let first = resolve(&versions, &header).unwrap();
        assert_eq!(first.tables(), std::slice::from_ref(&v1));
        assert!(Arc::ptr_eq(&first, &resolve(&versions, &header).unwrap()));
        assert!(matches!(
            resolve(&versions, "todos=xyz"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            resolve(&versions, "notes=0000000000000001"),
            Err(Error::Unserved { .. })
        ));

        // A new app version: the header is resolved again, against it.
        let due = ColumnSchema::new("due", SqlType::Integer).nullable(true);
        let v2 = TableSchema::new("todos", Algorithm::Cls, vec![key, due]);
        db.publish(vec![v2]).await.unwrap();
        let republished = db.versions().await.unwrap();
        let again = resolve(&republished, &header).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(*first, *again);

        // Headers that resolve but are never sent again (the same tables,
        // spelt another way each time) do not keep the others out.
        for spaces in 1..=2 * MAX_VIEWS {
            let spelt = format!("{}{header}", " ".repeat(spaces));
            resolve(&republished, &spelt).unwrap();
        }
        let late = format!("{header} ");
        let kept = resolve(&republished, &late).unwrap();
        assert!(Arc::ptr_eq(&kept, &resolve(&republished, &late).unwrap()));
    }
}
