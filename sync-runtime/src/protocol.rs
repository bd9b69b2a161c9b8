//! The HTTP protocol between devices and a sync server, shared by both sides.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /health` | | `{"status":"ok"}` |
//! | `POST /v1/db/{name}/push` | a [payload](crate::wire) | [`PushAck`] (JSON), sent once the merge committed |
//! | `GET /v1/db/{name}/pull?cursor=C&wait=MS&limit=N` | | a [`PullResponse`] |
//! | `GET /v1/db/{name}/schema` | | the tables, JSON |
//! | `PUT /v1/db/{name}/schema` | the tables, JSON (admin key) | the tables, JSON |
//!
//! Push and pull carry the view fingerprints of the device's tables
//! ([`TABLES_HEADER`]; a device of release 0.1.0 sends its whole schema's
//! fingerprint, [`SCHEMA_HEADER`], instead) and its site id ([`SITE_HEADER`]); a user authenticates with
//! `Authorization: Bearer <JWT>`, a service with [`API_KEY_HEADER`]. Errors come
//! as an [`ErrorBody`] with the status codes its [`code`](ErrorBody::code) lists.

use serde::{Deserialize, Serialize};

use crate::export::Cursor;
use crate::value::Value;

/// The header with the device's schema fingerprint ([`fingerprint_hex`]).
pub const SCHEMA_HEADER: &str = "synced-schema";
/// The header with the [view fingerprint](crate::TableSchema::view_fingerprint)
/// of each of the device's tables ([`tables_header`]): the server serves the
/// device the tables and columns of its app version (see
/// [`Versions`](crate::server::Versions)). A device of release 0.1.0 sends
/// [`SCHEMA_HEADER`] only.
pub const TABLES_HEADER: &str = "synced-tables";
/// The most tables a [`TABLES_HEADER`] may name.
pub const MAX_HEADER_TABLES: usize = 1024;
/// The header with the device's site id (32 hex digits).
pub const SITE_HEADER: &str = "synced-site";
/// The answer header of a push or a pull with the highest version the server
/// has received from the calling device's site id. A device whose own version
/// is lower was copied or restored from a backup: its site id made versions it
/// no longer has, and it takes a new one (see
/// [`SyncDb::new_site_id`](crate::SyncDb::new_site_id)).
pub const SEEN_HEADER: &str = "synced-seen";
/// The request header with the site id a device had before its current one
/// (see [`SyncDb::new_site_id`](crate::SyncDb::new_site_id)): its server
/// carries over what it knew of the rows the device holds, so that rows its
/// user may no longer read are still evicted.
pub const PREVIOUS_SITE_HEADER: &str = "synced-previous-site";
/// The request header with the previous site id again when the device left it
/// because another file used it too (a copy, a restored backup): the server
/// remembers it as reused and answers 409 `site_reused` (see
/// [`ErrorBody::SITE_REUSED`]) to every file that presents it later, so that
/// the other file takes a new site id too.
pub const REUSED_SITE_HEADER: &str = "synced-reused-site";
/// The header with an API key (services and admins).
pub const API_KEY_HEADER: &str = "x-api-key";

/// A schema fingerprint as it travels in [`SCHEMA_HEADER`]: 16 lowercase hex digits.
///
/// ```
/// use sync_runtime::protocol::{fingerprint_hex, parse_fingerprint};
///
/// assert_eq!(fingerprint_hex(0xab), "00000000000000ab");
/// assert_eq!(parse_fingerprint("00000000000000ab"), Some(0xab));
/// assert_eq!(parse_fingerprint("xyz"), None);
/// ```
pub fn fingerprint_hex(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// Reads a fingerprint written by [`fingerprint_hex`].
pub fn parse_fingerprint(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// The [`TABLES_HEADER`] of a device with these tables: `name=fingerprint`
/// per table, comma-separated, each name percent-encoded and each fingerprint
/// 16 hex digits.
///
/// ```
/// use sync_runtime::protocol::{parse_tables_header, tables_header};
/// use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};
///
/// let key = ColumnSchema::new("id", SqlType::Text).primary_key();
/// let todos = TableSchema::new("todos", Algorithm::Cls, vec![key.clone()]);
/// let notes = TableSchema::new("Notizen für mich", Algorithm::Cls, vec![key]);
/// let header = tables_header(&[todos.clone(), notes.clone()]);
/// assert!(header.starts_with("todos="));
/// assert_eq!(
///     parse_tables_header(&header),
///     Ok(vec![
///         ("todos".to_owned(), todos.view_fingerprint()),
///         ("Notizen für mich".to_owned(), notes.view_fingerprint()),
///     ])
/// );
/// assert!(parse_tables_header("todos=xyz").is_err());
/// assert_eq!(parse_tables_header(""), Ok(vec![]));
/// ```
pub fn tables_header(tables: &[crate::TableSchema]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut header = String::new();
    for table in tables {
        if !header.is_empty() {
            header.push(',');
        }
        header.extend(utf8_percent_encode(&table.name, NON_ALPHANUMERIC));
        header.push('=');
        header.push_str(&fingerprint_hex(table.view_fingerprint()));
    }
    header
}

/// Reads a [`tables_header`]: each table's name and view fingerprint. At
/// most [`MAX_HEADER_TABLES`] tables, each named once.
pub fn parse_tables_header(text: &str) -> Result<Vec<(String, u64)>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut tables: Vec<(String, u64)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, entry) in text.split(',').enumerate() {
        if i >= MAX_HEADER_TABLES {
            return Err(format!("it names more than {MAX_HEADER_TABLES} tables"));
        }
        let (name, fingerprint) = entry
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("`{entry}` is not `name=fingerprint`"))?;
        let name = percent_encoding::percent_decode_str(name)
            .decode_utf8()
            .map_err(|_| format!("the table name `{name}` is not UTF-8 once decoded"))?;
        let fingerprint = parse_fingerprint(fingerprint)
            .ok_or_else(|| format!("`{fingerprint}` is not a fingerprint (16 hex digits)"))?;
        if name.is_empty() || !names.insert(name.to_ascii_lowercase()) {
            return Err(format!("the table name `{name}` is empty or named twice"));
        }
        tables.push((name.into_owned(), fingerprint));
    }
    Ok(tables)
}

/// What the server answers to a push, once the changes are committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushAck {
    /// Changes that won and were written.
    pub applied: u64,
    /// Changes the server already had, or newer ones.
    pub ignored: u64,
    /// The server's version after the merge.
    pub version: i64,
    /// The rows refused (the user may not write them, their clocks leap
    /// beyond what a device can have counted to, or they carry another site's
    /// creation or delete, which that site has not sent): not applied.
    #[serde(default)]
    pub rejected: Vec<RejectedRow>,
    /// If rows were refused: the server's state of each as the device may see
    /// it, a [payload](crate::wire) in lowercase hex, which the device puts in
    /// place of its own state of those rows (see
    /// [`PushReport::restore`](crate::server::PushReport::restore)). Absent from the
    /// answers of servers before this field, and ignored by older devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// The server's version before the merge, when every change of the
    /// versions after it, up to [`version`](Self::version), came in this push
    /// and the device may read every row: a device whose pulls had reached
    /// that version has all of them, and its pulls go on from `version`
    /// instead of reading back its own changes. Absent from the answers of
    /// servers before this field, and ignored by older devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
}

/// A pushed row the server refused (row-level security).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// The table.
    pub table: String,
    /// The row's key values: JSON numbers, strings and null; a BLOB as
    /// `{"blob": "<hex>"}`.
    pub key: Vec<serde_json::Value>,
    /// Why.
    pub reason: String,
}

impl RejectedRow {
    /// The JSON form of a rejection.
    pub fn new(rejection: &crate::Rejection) -> Self {
        use serde_json::Value as Json;
        let key = rejection
            .pk
            .iter()
            .map(|value| match value {
                Value::Null => Json::Null,
                Value::Integer(i) => Json::from(*i),
                Value::Real(r) => Json::from(*r),
                Value::Text(t) => Json::from(t.as_str()),
                Value::Blob(b) => serde_json::json!({ "blob": hex::encode(b) }),
            })
            .collect();
        Self {
            table: rejection.table.clone(),
            key,
            reason: rejection.reason.clone(),
        }
    }

    /// The rejection this stands for (`None` if the key is not of the forms
    /// [`new`](Self::new) writes).
    pub fn rejection(&self) -> Option<crate::Rejection> {
        use serde_json::Value as Json;
        let pk = self
            .key
            .iter()
            .map(|json| match json {
                Json::Null => Some(Value::Null),
                Json::Number(n) => n
                    .as_i64()
                    .map(Value::Integer)
                    .or(n.as_f64().map(Value::Real)),
                Json::String(s) => Some(Value::Text(s.clone())),
                Json::Object(o) => hex::decode(o.get("blob")?.as_str()?).ok().map(Value::Blob),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(crate::Rejection::new(&self.table, pk, &self.reason))
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for programs: `unauthorized` (401), `forbidden` (403),
    /// `not_found` (404), `schema_mismatch` (409),
    /// [`schema_not_published`](Self::SCHEMA_NOT_PUBLISHED) and
    /// [`schema_too_old`](Self::SCHEMA_TOO_OLD) (409), `payload_too_large` (413),
    /// `too_many_requests` (429: too many pulls wait for changes already; pull
    /// again after the `Retry-After` header's seconds), `bad_request` (400: a
    /// malformed payload, cursor or header), `server_error` (500), `unavailable`
    /// (503: the request took too long) or
    /// [`database_unavailable`](Self::DATABASE_UNAVAILABLE) (503: the database's
    /// file on the server is damaged).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    /// The code of a database the server holds but cannot serve, because its file
    /// is damaged, until an operator restores it from a backup. A retry in a few
    /// seconds does not help, unlike the other 503s.
    pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";

    /// The code of a push refused because the server has received versions of
    /// the device's site id beyond the ones it sends (409): the device's file
    /// is a copy of another's, or was restored from a backup. The device takes
    /// a new site id and sends again.
    pub const SITE_REUSED: &str = "site_reused";

    /// The code of a device whose app version has a table as no published
    /// version has it (409): the app is newer than what the server was told
    /// of. The device keeps its changes; an admin publishes the version's
    /// schema.
    pub const SCHEMA_NOT_PUBLISHED: &str = "schema_not_published";

    /// The code of a device whose app version is older than the oldest the
    /// server still supports (409). The device keeps its changes until the
    /// app is updated.
    pub const SCHEMA_TOO_OLD: &str = "schema_too_old";
}

/// The body of a pull answer: one batch of changes and the cursor after it, with a
/// checksum over both, so that a damaged answer is refused rather than applied or,
/// worse, used to move the device's cursor.
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | magic `SYNP` |
/// | 4 | version (1) |
/// | 5 | flags: bit 0 set if the batch is complete |
/// | 6..8 | cursor length `c`, u16 little-endian |
/// | 8..8+c | the next cursor, as text |
/// | then 4 | payload length `p`, u32 little-endian |
/// | then p | the payload |
/// | last 4 | CRC-32 (IEEE) of everything before it |
///
/// ```
/// use sync_runtime::Cursor;
/// use sync_runtime::protocol::PullResponse;
///
/// let answer = PullResponse { payload: vec![1, 2, 3], next: Cursor::at(7), complete: true };
/// let bytes = answer.encode();
/// assert_eq!(PullResponse::decode(&bytes), Ok(answer));
/// assert!(PullResponse::decode(&bytes[..bytes.len() - 1]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResponse {
    /// The changes, a [payload](crate::wire).
    pub payload: Vec<u8>,
    /// Where the next pull starts, once this payload is applied.
    pub next: Cursor,
    /// Whether the server had nothing more when it answered.
    pub complete: bool,
}

const PULL_MAGIC: [u8; 4] = *b"SYNP";
const PULL_VERSION: u8 = 1;

impl PullResponse {
    /// Encodes the answer.
    pub fn encode(&self) -> Vec<u8> {
        let cursor = self.next.to_string();
        let mut out = Vec::with_capacity(self.payload.len() + cursor.len() + 16);
        out.extend_from_slice(&PULL_MAGIC);
        out.push(PULL_VERSION);
        out.push(u8::from(self.complete));
        // A cursor is a few numbers and a table name: far below u16::MAX.
        out.extend_from_slice(&(cursor.len() as u16).to_le_bytes());
        out.extend_from_slice(cursor.as_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an answer, checking every length and the checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or(EnvelopeError::Truncated)?;
        if body.len() < 8 {
            return Err(EnvelopeError::Truncated);
        }
        if body[..4] != PULL_MAGIC || body[4] != PULL_VERSION {
            return Err(EnvelopeError::Malformed("not a pull answer of version 1"));
        }
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(EnvelopeError::Checksum);
        }
        let complete = body[5] & 1 == 1;
        let cursor_len = usize::from(u16::from_le_bytes([body[6], body[7]]));
        let rest = &body[8..];
        let (cursor, rest) = rest
            .split_at_checked(cursor_len)
            .ok_or(EnvelopeError::Truncated)?;
        let (len, payload) = rest
            .split_first_chunk::<4>()
            .ok_or(EnvelopeError::Truncated)?;
        if payload.len() != u32::from_le_bytes(*len) as usize {
            return Err(EnvelopeError::Malformed(
                "the payload length does not match",
            ));
        }
        let next = std::str::from_utf8(cursor)
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or(EnvelopeError::Malformed("the cursor is not valid"))?;
        Ok(Self {
            payload: payload.to_vec(),
            next,
            complete,
        })
    }
}

/// Why bytes are not a valid [`PullResponse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes end too early.
    #[error("the pull answer is truncated")]
    Truncated,
    /// The checksum does not match: the answer was damaged on the way.
    #[error("the pull answer's checksum does not match: it was damaged in transit")]
    Checksum,
    /// The content is inconsistent.
    #[error("malformed pull answer: {0}")]
    Malformed(&'static str),
}
