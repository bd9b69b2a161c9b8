//! Identifiers: row ids ([`SyncId`]) and replica ids ([`SiteId`]).

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::value::{Domain, SqlType, SyncValue, Value, ValueError, ValueRef, canonical_uuid};

/// A globally unique, time-ordered row id: a UUIDv7 stored as 36 characters of text.
///
/// Two devices can create rows offline without ever picking the same key, and ids
/// created later sort after earlier ones, which keeps the primary-key index compact.
///
/// ```
/// use sync_runtime::SyncId;
///
/// let a = SyncId::new();
/// let b = SyncId::new();
/// assert!(a < b);
/// assert_eq!(a.as_str().len(), 36);
/// assert_eq!(a.as_str().parse::<SyncId>()?, a);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncId {
    // The hyphenated lowercase text, kept so that writing a row borrows it.
    text: [u8; 36],
}

impl SyncId {
    /// A new UUIDv7 id (milliseconds since the epoch, then random bits; monotonic
    /// within this process).
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    /// Wraps any UUID (for example a random v4 id from another system).
    pub fn from_uuid(uuid: Uuid) -> Self {
        let mut text = [0u8; 36];
        uuid.hyphenated().encode_lower(&mut text);
        Self { text }
    }

    /// The UUID this id stands for.
    pub fn to_uuid(&self) -> Uuid {
        // The text was produced by `encode_lower` or checked by `parse`.
        Uuid::try_parse_ascii(&self.text).unwrap_or_default()
    }

    /// The stored text: 36 characters, hyphenated, lowercase.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `from_uuid`), so this cannot fail.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }
}

impl Default for SyncId {
    /// A fresh id, like [`SyncId::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncId({})", self.as_str())
    }
}

impl FromStr for SyncId {
    type Err = ValueError;

    /// Parses a UUID in any of the usual text forms and normalises it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self::from_uuid)
            .map_err(|_| ValueError::InvalidId(s.to_owned()))
    }
}

impl From<Uuid> for SyncId {
    fn from(uuid: Uuid) -> Self {
        Self::from_uuid(uuid)
    }
}

impl From<SyncId> for Value {
    fn from(id: SyncId) -> Self {
        id.to_value_ref().into_owned()
    }
}

impl From<&SyncId> for Value {
    fn from(id: &SyncId) -> Self {
        id.to_value_ref().into_owned()
    }
}

impl SyncValue for SyncId {
    const SQL_TYPE: SqlType = SqlType::Text;
    const DEFAULT_SQL: Option<&'static str> = None;
    const DOMAIN: Domain = Domain::SyncId;

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_str())
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            // Only the canonical form the runtime writes: an id stored in another
            // form (by raw SQL) could never be found by its key, so reading it is
            // an error rather than a silent normalisation.
            ValueRef::Text(t) if canonical_uuid(t) => t.parse(),
            ValueRef::Text(t) => Err(ValueError::InvalidId(t.to_owned())),
            other => Err(ValueError::WrongType {
                expected: "TEXT",
                found: other.type_name(),
            }),
        }
    }
}

/// A `uuid::Uuid` field is stored as its 16 bytes (`BLOB`), which sort as
/// the UUIDs do; [`SyncId`] is the key type made for rows, stored as text.
impl SyncValue for uuid::Uuid {
    const SQL_TYPE: SqlType = SqlType::Blob;
    const DEFAULT_SQL: Option<&'static str> = None;

    fn to_value_ref(&self) -> ValueRef<'_> {
        ValueRef::Blob(self.as_bytes())
    }

    fn from_value_ref(value: ValueRef<'_>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Blob(bytes) => {
                uuid::Uuid::from_slice(bytes).map_err(|_| ValueError::InvalidUuid(bytes.len()))
            }
            other => Err(ValueError::WrongType {
                expected: "BLOB",
                found: other.type_name(),
            }),
        }
    }
}

/// The identity of one replica (one database file): 16 random bytes, created once
/// when the database is first opened and kept for its whole life.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId([u8; 16]);

impl SiteId {
    /// A new random site id.
    pub(crate) fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 32];
        // 16 bytes always fit 32 digits.
        hex::encode_to_slice(self.0, &mut text).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// The text is not a site id (32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a site id: expected 32 hex digits")]
pub struct BadSiteId;

impl FromStr for SiteId {
    type Err = BadSiteId;

    /// Reads the form `Display` writes (32 hex digits, either case).
    fn from_str(text: &str) -> Result<Self, BadSiteId> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| BadSiteId)?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_by_creation() {
        let ids: Vec<SyncId> = (0..1000).map(|_| SyncId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn site_ids_read_back_their_text() {
        let site = SiteId::random().unwrap();
        assert_eq!(site.to_string().parse::<SiteId>(), Ok(site));
        assert_eq!(site.to_string().to_uppercase().parse::<SiteId>(), Ok(site));
        assert!("00".parse::<SiteId>().is_err());
        assert!("g".repeat(32).parse::<SiteId>().is_err());
        assert!("".parse::<SiteId>().is_err());
        assert!("0".repeat(31).parse::<SiteId>().is_err());
        assert!("0".repeat(33).parse::<SiteId>().is_err());
        assert!("0".repeat(64).parse::<SiteId>().is_err());
        // 32 bytes, not 32 digits.
        assert!("é".repeat(16).parse::<SiteId>().is_err());
        assert_eq!(
            "0".repeat(32).parse::<SiteId>(),
            Ok(SiteId::from_bytes([0; 16]))
        );
        assert_eq!(SiteId::from_bytes([0xab; 16]).to_string(), "ab".repeat(16));
    }

    #[test]
    fn parse_normalises_and_rejects() {
        let id = SyncId::new();
        let upper = id.as_str().to_uppercase();
        assert_eq!(upper.parse::<SyncId>(), Ok(id));
        assert_eq!(id.to_uuid().get_version_num(), 7);
        assert!("not-an-id".parse::<SyncId>().is_err());
    }
}
