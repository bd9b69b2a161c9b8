//! The app version each device is served, resolved once per header.
//!
//! Every push and pull names the device's tables in a header, which the server
//! resolves against the app versions published (see [`Versions::resolve`]).
//! Devices of one app version send the same header, and a device long-polling
//! sends it with every request: the view resolved for a header is kept, for the
//! database's app versions as they are, and shared by every request that sends
//! it. At most [`MAX_VIEWS`] are kept per database; a header beyond them is
//! resolved each time.

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
    /// By whether the header is a schema fingerprint, and its text.
    views: HashMap<(bool, String), Arc<View>>,
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
        let key = match sent {
            Sent::Tables(text) => (false, text),
            Sent::Schema(text) => (true, text),
        };
        {
            let databases = self.lock();
            let kept = databases
                .get(name)
                .filter(|kept| Arc::ptr_eq(&kept.versions, versions) && kept.oldest == oldest);
            if let Some(view) = kept.and_then(|kept| kept.views.get(&(key.0, key.1.to_owned()))) {
                return Ok(Arc::clone(view));
            }
        }
        let view = Arc::new(resolve(name, versions, oldest, sent)?);
        let mut databases = self.lock();
        let kept = databases
            .entry(name.to_owned())
            .or_insert_with(|| Resolved {
                versions: Arc::clone(versions),
                oldest,
                views: HashMap::new(),
            });
        if !Arc::ptr_eq(&kept.versions, versions) || kept.oldest != oldest {
            *kept = Resolved {
                versions: Arc::clone(versions),
                oldest,
                views: HashMap::new(),
            };
        }
        if kept.views.len() < MAX_VIEWS {
            kept.views
                .insert((key.0, key.1.to_owned()), Arc::clone(&view));
        }
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
