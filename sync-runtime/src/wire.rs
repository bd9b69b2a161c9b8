//! The payload format: how changes travel between replicas, byte by byte.
//!
//! A payload is a header, a body and a checksum:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SYNC` |
//! | 4 | format version (1) |
//! | 5 | compression: 0 none, 1 zstd |
//! | 6..8 | reserved, 0 |
//! | 8..16 | schema fingerprint, u64 little-endian |
//! | 16..20 | stored body length, u32 little-endian |
//! | 20..24 | body length once decompressed, u32 little-endian (at most [`MAX_BODY`]) |
//! | 24..28 | number of rows, u32 little-endian (the body must hold exactly as many) |
//! | 28..44 | the exporter's site id |
//! | 44..52 | `since`: the payload holds every change of the exporter's versions after it… |
//! | 52..60 | …`upto` this one, u64s little-endian (`since` ≤ `upto` ≤ [`MAX_CLOCK`]) |
//! | 60..60+n | the body, compressed or not |
//! | last 4 | CRC-32 (IEEE) of everything before it, little-endian |
//!
//! The body, once decompressed, is a sequence of unsigned LEB128 varints
//! (`varint`), values and strings:
//!
//! ```text
//! sites:   varint n, then n × 16 bytes (site ids)
//! tables:  varint n, then per table: string name, varint keys, varint values,
//!          then keys + values strings (key column names first, then
//!          value column ids: a column's first name, which renames keep)
//! rows:    varint n, then per row:
//!            varint table index
//!            one value per key column
//!            varint causal length (0: the row is evicted, see [`EVICT`])
//!            origin of the row's existence: varint site index, varint version
//!            varint number of column changes, then per change:
//!              varint (column index << 1 | 1 if its origin differs from the row's)
//!              varint col_version
//!              [varint site index, varint version]   only if the flag is set
//!              value
//! string:  varint length, then UTF-8 bytes
//! value:   tag byte, then 0 NULL | 1 INTEGER zigzag varint | 2 REAL 8 bytes
//!          little-endian | 3 TEXT string | 4 BLOB varint length + bytes
//! ```
//!
//! Column indexes count the table's value columns only. The decoder treats every
//! byte as hostile: lengths and counts are checked against the bytes that remain
//! before anything is allocated, indexes against their dictionaries, and the body
//! must end exactly where its last row does.

use crate::id::SiteId;
use crate::value::Value;

/// The first four bytes of every payload.
pub const MAGIC: [u8; 4] = *b"SYNC";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The largest causal length, column version or version a payload may carry: far
/// from `i64::MAX`, so that every replica can keep counting from any of them.
pub const MAX_CLOCK: u64 = 1 << 62;
/// The largest version a replica takes from another: a payload's range and the
/// versions of its changes' origins, and its causal lengths and column versions.
///
/// Versions count a replica's own transactions, which no other replica can move,
/// so a version beyond 2^53 (285 years of a million transactions a second) is
/// made up and the payload is refused. A causal length or column version may
/// exceed it only by at most [`CLOCK_STEP`] above the receiver's own value of
/// it: a writer can raise a clock past another's value, never leap to the
/// format's limit ([`MAX_CLOCK`]), which leaves every replica room to count on.
/// 2^53 is also the largest integer a JSON reader in JavaScript keeps exact.
pub const PLAUSIBLE_CLOCK: u64 = 1 << 53;
/// How far above the receiver's own value a causal length or column version
/// beyond [`PLAUSIBLE_CLOCK`] may be: a million writes of one column between two
/// syncs. At this step a writer would need 2^42 payloads to climb from
/// [`PLAUSIBLE_CLOCK`] to [`MAX_CLOCK`].
pub const CLOCK_STEP: u64 = 1 << 20;
/// The causal length of an eviction: the receiver may no longer read the row
/// (row-level security on a server), so it forgets the row, values and clock, as if
/// it never had it. An eviction carries no column changes. It is not a delete: no
/// replica records it, and the row comes back whole if it is readable again.
pub const EVICT: u64 = 0;
/// The largest body a payload may hold once decompressed: 256 MiB.
pub const MAX_BODY: u32 = 256 * 1024 * 1024;

const HEADER: usize = 60;
const CHECKSUM: usize = 4;

/// How the body of a payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Stored as is.
    None,
    /// zstd.
    Zstd,
}

/// Changes as they travel: dictionaries and one record per changed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Fingerprint of the schema of the tables the changes belong to.
    pub schema_fingerprint: u64,
    /// The database that exported the payload.
    pub exporter: SiteId,
    /// The payload holds every change of the exporter's versions after this one…
    pub since: u64,
    /// …up to this one (the exporter's version when it exported): a receiver
    /// that had the exporter's changes up to `since` has them up to `upto`.
    pub upto: u64,
    /// The sites that made the changes; [`Origin::site`] indexes this list.
    pub sites: Vec<SiteId>,
    /// The tables of the changes; [`RowChange::table`] indexes this list.
    pub tables: Vec<TableEntry>,
    /// One record per changed row.
    pub rows: Vec<RowChange>,
}

impl Default for Payload {
    fn default() -> Self {
        Self {
            schema_fingerprint: 0,
            exporter: SiteId::from_bytes([0; 16]),
            since: 0,
            upto: 0,
            sites: Vec::new(),
            tables: Vec::new(),
            rows: Vec::new(),
        }
    }
}

/// A table in a payload's dictionary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    /// The table's name.
    pub name: String,
    /// Its key columns, in key order.
    pub keys: Vec<String>,
    /// Its value columns, by id (see
    /// [`ColumnSchema::id`](crate::schema::ColumnSchema::id));
    /// [`ColumnChange::column`] indexes this list. A receiver leaves out the
    /// columns it does not have.
    pub values: Vec<String>,
}

/// Where a change was made: a site, and its version there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// Index into [`Payload::sites`].
    pub site: u32,
    /// The version of the change on that site.
    pub version: u64,
}

/// The changes of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// Index into [`Payload::tables`].
    pub table: u32,
    /// The row's key, one value per key column.
    pub pk: Vec<Value>,
    /// The row's causal length: odd while it exists, even once deleted; 0 when
    /// the exporter evicts the row from the receiver (see [`EVICT`]).
    pub cl: u64,
    /// Where the row's causal length was last raised (its creation or delete).
    pub origin: Origin,
    /// The columns written.
    pub columns: Vec<ColumnChange>,
}

/// One column's value and clock.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnChange {
    /// Index into the table's [`TableEntry::values`].
    pub column: u32,
    /// The column's version.
    pub col_version: u64,
    /// Where this value was written.
    pub origin: Origin,
    /// The value.
    pub value: Value,
}

/// Why bytes are not a valid payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes end before the payload does.
    #[error("the payload is truncated")]
    Truncated,
    /// The bytes do not start with the payload magic.
    #[error("not a Synced payload (wrong magic bytes)")]
    BadMagic,
    /// The payload was written by a newer format.
    #[error(
        "payload format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    /// The checksum does not match: the payload was damaged on the way.
    #[error("the payload checksum does not match: it was damaged in transit")]
    Checksum,
    /// The header names a compression this build does not know.
    #[error("unknown compression {0}")]
    UnknownCompression(u8),
    /// The body, once decompressed, would be larger than the limit the decoder
    /// was given ([`MAX_BODY`] at most).
    #[error(
        "the payload body ({size} bytes once decompressed) is larger than the limit of {limit} \
         bytes; send smaller batches"
    )]
    TooLarge {
        /// The size the header declares.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The compressed body does not decompress to its declared length.
    #[error("the payload body does not decompress: {0}")]
    Decompression(String),
    /// The body's content is inconsistent.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

thread_local! {
    /// The thread's compression context: making one costs more than
    /// compressing a small payload with it.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `body` compressed with zstd at level 1, with the thread's context.
fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|kept| {
        let mut kept = kept.borrow_mut();
        let compressor = match kept.as_mut() {
            Some(compressor) => compressor,
            None => kept.insert(zstd::bulk::Compressor::new(1)?),
        };
        compressor.compress(body)
    })
}

/// Encodes a payload.
pub fn encode(payload: &Payload, compression: Compression) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + payload.rows.len() * 64);
    write_body(&mut body, payload);
    let (flag, stored) = match compression {
        Compression::None => (0u8, body.clone()),
        // Level 1: on 100,000 rows of the benchmark table it compressed smaller
        // and twice as fast as the default level 3, and LZ4 came out twice as
        // large (see the book's wire-format chapter).
        Compression::Zstd => match compress(&body) {
            Ok(compressed) => (1, compressed),
            Err(_) => (0, body.clone()),
        },
    };
    let mut out = Vec::with_capacity(HEADER + stored.len() + CHECKSUM);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(flag);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&payload.schema_fingerprint.to_le_bytes());
    out.extend_from_slice(&len32(stored.len()).to_le_bytes());
    out.extend_from_slice(&len32(body.len()).to_le_bytes());
    out.extend_from_slice(&len32(payload.rows.len()).to_le_bytes());
    out.extend_from_slice(payload.exporter.as_bytes());
    out.extend_from_slice(&payload.since.to_le_bytes());
    out.extend_from_slice(&payload.upto.to_le_bytes());
    out.extend_from_slice(&stored);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Gives an encoded payload another schema fingerprint (and the checksum that
/// goes with it): what a server sends a device of release 0.1.0, which checks
/// that the fingerprint is that of its own descriptors of the payload's
/// tables. Bytes too short to be a payload are left as they are.
pub fn set_schema_fingerprint(payload: &mut [u8], fingerprint: u64) {
    let Some(body) = payload.len().checked_sub(CHECKSUM).filter(|&b| b >= HEADER) else {
        return;
    };
    payload[8..16].copy_from_slice(&fingerprint.to_le_bytes());
    let crc = crc32fast::hash(&payload[..body]);
    payload[body..].copy_from_slice(&crc.to_le_bytes());
}

fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Decodes a payload, checking everything: [`decode_within`] with the format's
/// own limit, [`MAX_BODY`].
pub fn decode(bytes: &[u8]) -> Result<Payload, WireError> {
    decode_within(bytes, MAX_BODY)
}

/// Decodes a payload whose body may take at most `max_body` bytes once
/// decompressed (capped at [`MAX_BODY`]). The limit is checked against the
/// header before anything is decompressed or allocated, and decompression stops
/// at it, so a small body cannot inflate to more: what a receiver bounds its
/// requests to, it bounds its memory to.
///
/// ```
/// use sync_runtime::wire::{Compression, Payload, WireError, decode_within, encode};
///
/// let bytes = encode(&Payload::default(), Compression::Zstd);
/// assert!(decode_within(&bytes, 1024).is_ok());
/// assert!(matches!(decode_within(&bytes, 1), Err(WireError::TooLarge { .. })));
/// ```
pub fn decode_within(bytes: &[u8], max_body: u32) -> Result<Payload, WireError> {
    let max_body = max_body.min(MAX_BODY);
    if bytes.len() < HEADER + CHECKSUM {
        return Err(if bytes.len() >= 4 && bytes[..4] != MAGIC {
            WireError::BadMagic
        } else {
            WireError::Truncated
        });
    }
    if bytes[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion(bytes[4]));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let stored_len = u32_at(16) as usize;
    let body_len = u32_at(20);
    if body_len > max_body {
        return Err(WireError::TooLarge {
            size: body_len.into(),
            limit: max_body.into(),
        });
    }
    let end = HEADER.checked_add(stored_len).ok_or(WireError::Truncated)?;
    match bytes.len().cmp(&(end + CHECKSUM)) {
        std::cmp::Ordering::Less => return Err(WireError::Truncated),
        std::cmp::Ordering::Greater => {
            return Err(WireError::Malformed("bytes after the checksum"));
        }
        std::cmp::Ordering::Equal => {}
    }
    let crc = u32_at(end);
    if crc32fast::hash(&bytes[..end]) != crc {
        return Err(WireError::Checksum);
    }
    let stored = &bytes[HEADER..end];
    let decompressed;
    let body: &[u8] = match bytes[5] {
        0 => {
            if stored.len() != body_len as usize {
                return Err(WireError::Malformed(
                    "body length does not match the header",
                ));
            }
            stored
        }
        1 => {
            decompressed = zstd::bulk::decompress(stored, body_len as usize)
                .map_err(|e| WireError::Decompression(e.to_string()))?;
            if decompressed.len() != body_len as usize {
                return Err(WireError::Decompression(
                    "the body is shorter than its declared length".into(),
                ));
            }
            &decompressed
        }
        other => return Err(WireError::UnknownCompression(other)),
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (since, upto) = (u64_at(44), u64_at(52));
    if since > upto || upto > MAX_CLOCK {
        return Err(WireError::Malformed(
            "the header's versions are out of order or too large",
        ));
    }
    let mut exporter = [0u8; 16];
    exporter.copy_from_slice(&bytes[28..44]);
    let mut reader = Reader { bytes: body };
    let mut payload = reader.body(u64_at(8), u32_at(24) as usize)?;
    payload.exporter = SiteId::from_bytes(exporter);
    (payload.since, payload.upto) = (since, upto);
    if !reader.bytes.is_empty() {
        return Err(WireError::Malformed("bytes after the last row"));
    }
    Ok(payload)
}

fn write_body(out: &mut Vec<u8>, payload: &Payload) {
    put_varint(out, payload.sites.len() as u64);
    for site in &payload.sites {
        out.extend_from_slice(site.as_bytes());
    }
    put_varint(out, payload.tables.len() as u64);
    for table in &payload.tables {
        put_str(out, &table.name);
        put_varint(out, table.keys.len() as u64);
        put_varint(out, table.values.len() as u64);
        for name in table.keys.iter().chain(&table.values) {
            put_str(out, name);
        }
    }
    put_varint(out, payload.rows.len() as u64);
    for row in &payload.rows {
        put_varint(out, row.table.into());
        for value in &row.pk {
            put_value(out, value);
        }
        put_varint(out, row.cl);
        put_origin(out, row.origin);
        put_varint(out, row.columns.len() as u64);
        for column in &row.columns {
            let differs = column.origin != row.origin;
            put_varint(out, u64::from(column.column) << 1 | u64::from(differs));
            put_varint(out, column.col_version);
            if differs {
                put_origin(out, column.origin);
            }
            put_value(out, &column.value);
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_origin(out: &mut Vec<u8>, origin: Origin) {
    put_varint(out, origin.site.into());
    put_varint(out, origin.version);
}

/// A row's key values as bytes (the payload's value encoding, one after the
/// other): the same key gives the same bytes.
pub(crate) fn encode_key(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 20);
    for value in values {
        put_value(&mut out, value);
    }
    out
}

/// The key values of `keys` columns that [`encode_key`] encoded.
pub(crate) fn decode_key(bytes: &[u8], keys: usize) -> Result<Vec<Value>, WireError> {
    let mut reader = Reader { bytes };
    let values = (0..keys)
        .map(|_| reader.value())
        .collect::<Result<Vec<_>, _>>()?;
    if !reader.bytes.is_empty() {
        return Err(WireError::Malformed("bytes after a row key"));
    }
    Ok(values)
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0),
        Value::Integer(i) => {
            out.push(1);
            put_varint(out, ((*i << 1) ^ (*i >> 63)) as u64);
        }
        Value::Real(r) => {
            out.push(2);
            out.extend_from_slice(&r.to_le_bytes());
        }
        Value::Text(t) => {
            out.push(3);
            put_str(out, t);
        }
        Value::Blob(b) => {
            out.push(4);
            put_bytes(out, b);
        }
    }
}

/// Reads a body; every method checks the bytes it consumes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn body(&mut self, schema_fingerprint: u64, header_rows: usize) -> Result<Payload, WireError> {
        // Each site takes 16 bytes; each table, key, column and row at least one.
        let sites = self.count(16)?;
        let sites = (0..sites)
            .map(|_| {
                let bytes: [u8; 16] = self
                    .take(16)?
                    .try_into()
                    .map_err(|_| WireError::Truncated)?;
                Ok(SiteId::from_bytes(bytes))
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let tables = self.count(3)?;
        let tables = (0..tables)
            .map(|_| {
                let name = self.string()?;
                let keys = self.count(1)?;
                let values = self.count(1)?;
                if keys == 0 {
                    return Err(WireError::Malformed("a table without key columns"));
                }
                let keys = (0..keys).map(|_| self.string()).collect::<Result<_, _>>()?;
                let values = (0..values)
                    .map(|_| self.string())
                    .collect::<Result<_, _>>()?;
                Ok(TableEntry { name, keys, values })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let rows = self.count(5)?;
        if rows != header_rows {
            return Err(WireError::Malformed(
                "the header's row count differs from the body's",
            ));
        }
        let mut out = Vec::with_capacity(rows.min(1 << 16));
        for _ in 0..rows {
            out.push(self.row(&tables, sites.len())?);
        }
        Ok(Payload {
            schema_fingerprint,
            sites,
            tables,
            rows: out,
            ..Payload::default()
        })
    }

    fn row(&mut self, tables: &[TableEntry], sites: usize) -> Result<RowChange, WireError> {
        let table = self.index(tables.len(), "table index out of range")?;
        let entry = &tables[table as usize];
        let pk = (0..entry.keys.len())
            .map(|_| self.value())
            .collect::<Result<Vec<_>, _>>()?;
        let cl = self.clock()?;
        let origin = self.origin(sites)?;
        let changes = self.count(3)?;
        if cl == 0 && changes > 0 {
            return Err(WireError::Malformed(
                "an evicted row (causal length 0) with columns",
            ));
        }
        let mut columns = Vec::with_capacity(changes);
        for _ in 0..changes {
            let tagged = self.varint()?;
            let column = u32::try_from(tagged >> 1)
                .ok()
                .filter(|&c| (c as usize) < entry.values.len())
                .ok_or(WireError::Malformed("column index out of range"))?;
            let col_version = self.clock()?;
            let origin = if tagged & 1 == 1 {
                self.origin(sites)?
            } else {
                origin
            };
            columns.push(ColumnChange {
                column,
                col_version,
                origin,
                value: self.value()?,
            });
        }
        Ok(RowChange {
            table,
            pk,
            cl,
            origin,
            columns,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.bytes.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(WireError::Malformed("varint overflows 64 bits"));
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(WireError::Malformed("varint longer than 10 bytes"))
    }

    /// A causal length, column version or version: at most [`MAX_CLOCK`].
    fn clock(&mut self) -> Result<u64, WireError> {
        let n = self.varint()?;
        if n > MAX_CLOCK {
            return Err(WireError::Malformed("a clock value above 2^62"));
        }
        Ok(n)
    }

    /// A count of items that take at least `min_bytes` each: a count that the
    /// remaining bytes cannot hold is refused before anything is allocated.
    fn count(&mut self, min_bytes: usize) -> Result<usize, WireError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_bytes) <= self.bytes.len())
            .ok_or(WireError::Malformed("a count larger than the payload"))
    }

    fn index(&mut self, len: usize, what: &'static str) -> Result<u32, WireError> {
        let i = self.varint()?;
        u32::try_from(i)
            .ok()
            .filter(|&i| (i as usize) < len)
            .ok_or(WireError::Malformed(what))
    }

    fn origin(&mut self, sites: usize) -> Result<Origin, WireError> {
        Ok(Origin {
            site: self.index(sites, "site index out of range")?,
            version: self.clock()?,
        })
    }

    fn bytes_field(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, WireError> {
        let bytes = self.bytes_field()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Malformed("text is not UTF-8"))
    }

    fn value(&mut self) -> Result<Value, WireError> {
        Ok(match self.byte()? {
            0 => Value::Null,
            1 => {
                let z = self.varint()?;
                Value::Integer(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            2 => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| WireError::Truncated)?;
                Value::Real(f64::from_le_bytes(b))
            }
            3 => Value::Text(self.string()?),
            4 => Value::Blob(self.bytes_field()?.to_vec()),
            _ => return Err(WireError::Malformed("unknown value tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_to_what_was_encoded() {
        let key = vec![
            Value::Integer(-5),
            Value::Text("ü".into()),
            Value::Blob(vec![0, 1]),
            Value::Real(0.5),
        ];
        let bytes = encode_key(&key);
        assert_eq!(decode_key(&bytes, 4), Ok(key));
        assert!(decode_key(&bytes, 3).is_err());
        assert!(decode_key(&bytes, 5).is_err());
        assert!(decode_key(&bytes[..bytes.len() - 1], 4).is_err());
    }

    fn sample() -> Payload {
        let origin = Origin {
            site: 0,
            version: 7,
        };
        Payload {
            schema_fingerprint: 0xdead_beef_0123_4567,
            exporter: SiteId::from_bytes([1; 16]),
            since: 3,
            upto: 9,
            sites: vec![SiteId::from_bytes([1; 16]), SiteId::from_bytes([2; 16])],
            tables: vec![TableEntry {
                name: "todos".into(),
                keys: vec!["id".into()],
                values: vec!["title".into(), "done".into(), "note".into(), "score".into()],
            }],
            rows: vec![
                RowChange {
                    table: 0,
                    pk: vec![Value::Text("a".into())],
                    cl: 1,
                    origin,
                    columns: vec![
                        ColumnChange {
                            column: 0,
                            col_version: 1,
                            origin,
                            value: Value::Text("milk ü".into()),
                        },
                        ColumnChange {
                            column: 1,
                            col_version: 3,
                            origin: Origin {
                                site: 1,
                                version: MAX_CLOCK,
                            },
                            value: Value::Integer(i64::MIN),
                        },
                        ColumnChange {
                            column: 2,
                            col_version: 1,
                            origin,
                            value: Value::Null,
                        },
                        ColumnChange {
                            column: 3,
                            col_version: 2,
                            origin,
                            value: Value::Real(-0.5),
                        },
                    ],
                },
                RowChange {
                    table: 0,
                    pk: vec![Value::Blob(vec![0, 255])],
                    cl: 2,
                    origin: Origin {
                        site: 1,
                        version: 3,
                    },
                    columns: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        for compression in [Compression::None, Compression::Zstd] {
            let bytes = encode(&sample(), compression);
            assert_eq!(decode(&bytes), Ok(sample()), "{compression:?}");
        }
    }

    #[test]
    fn a_new_schema_fingerprint_is_sealed_with_its_checksum() {
        let mut bytes = encode(&sample(), Compression::Zstd);
        set_schema_fingerprint(&mut bytes, 0x0123_4567_89ab_cdef);
        let expected = Payload {
            schema_fingerprint: 0x0123_4567_89ab_cdef,
            ..sample()
        };
        assert_eq!(decode(&bytes), Ok(expected));
        // Too short to be a payload: left alone.
        let mut short = bytes[..HEADER].to_vec();
        set_schema_fingerprint(&mut short, 1);
        assert_eq!(short, bytes[..HEADER]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample(), Compression::None);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn every_flipped_bit_is_an_error() {
        let bytes = encode(&sample(), Compression::Zstd);
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(decode(&damaged).is_err(), "bit {i}");
        }
    }

    #[test]
    fn dictionary_indexes_out_of_range_are_errors() {
        type Damage = fn(&mut Payload);
        let cases: [(Damage, &str); 3] = [
            (|p| p.rows[0].table = 1, "table index out of range"),
            (|p| p.rows[0].origin.site = 2, "site index out of range"),
            (
                |p| p.rows[0].columns[0].column = 4,
                "column index out of range",
            ),
        ];
        for (damage, message) in cases {
            let mut payload = sample();
            damage(&mut payload);
            let bytes = encode(&payload, Compression::None);
            assert_eq!(decode(&bytes), Err(WireError::Malformed(message)));
        }
    }

    #[test]
    fn clock_values_above_the_bound_are_errors() {
        let mut payload = sample();
        payload.rows[0].columns[1].col_version = MAX_CLOCK + 1;
        assert_eq!(
            decode(&encode(&payload, Compression::None)),
            Err(WireError::Malformed("a clock value above 2^62"))
        );
        let mut payload = sample();
        payload.rows[1].origin.version = u64::MAX;
        assert!(decode(&encode(&payload, Compression::None)).is_err());
    }

    #[test]
    fn a_row_count_that_lies_is_an_error() {
        let mut bytes = encode(&sample(), Compression::None);
        bytes[24..28].copy_from_slice(&3u32.to_le_bytes());
        let end = bytes.len() - CHECKSUM;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(WireError::Malformed(
                "the header's row count differs from the body's"
            ))
        );
    }

    #[test]
    fn header_errors_are_named() {
        let bytes = encode(&sample(), Compression::None);
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert_eq!(decode(&wrong), Err(WireError::BadMagic));
        let mut future = bytes.clone();
        future[4] = 2;
        assert_eq!(decode(&future), Err(WireError::UnsupportedVersion(2)));
    }

    /// The payload of `rows` rows of 1 KiB of zeros: its body compresses to
    /// little and inflates to more than `rows` KiB.
    fn inflating(rows: usize) -> Payload {
        let mut payload = sample();
        let row = payload.rows[0].clone();
        payload.rows = (0..rows)
            .map(|i| {
                let mut row = row.clone();
                row.pk = vec![Value::Integer(i as i64)];
                row.columns[0].value = Value::Blob(vec![0; 1024]);
                row
            })
            .collect();
        payload
    }

    #[test]
    fn a_body_inflates_to_its_limit_and_not_a_byte_more() {
        let bytes = encode(&inflating(64), Compression::Zstd);
        let declared = u32_of(&bytes[20..24]);
        assert!(bytes.len() < declared as usize / 8, "{} bytes", bytes.len());
        assert!(decode_within(&bytes, declared).is_ok());
        assert_eq!(
            decode_within(&bytes, declared - 1),
            Err(WireError::TooLarge {
                size: declared.into(),
                limit: (declared - 1).into()
            })
        );
        assert!(decode_within(&bytes, 0).is_err());
        // A header that declares less than the body inflates to: decompression
        // stops at the declared size.
        let mut lying = bytes.clone();
        lying[20..24].copy_from_slice(&(declared / 2).to_le_bytes());
        let end = lying.len() - CHECKSUM;
        let crc = crc32fast::hash(&lying[..end]);
        lying[end..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_within(&lying, declared),
            Err(WireError::Decompression(_))
        ));
    }

    fn u32_of(bytes: &[u8]) -> u32 {
        u32::from_le_bytes(bytes.try_into().unwrap())
    }

    #[test]
    fn absurd_sizes_are_refused_without_allocating() {
        // A body that claims 4 GiB once decompressed.
        let mut bytes = encode(&sample(), Compression::Zstd);
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let end = bytes.len() - CHECKSUM;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(WireError::TooLarge {
                size: u32::MAX.into(),
                limit: MAX_BODY.into()
            })
        );

        // A row count that the body cannot hold, with a valid checksum.
        let mut body = Vec::new();
        put_varint(&mut body, 0); // sites
        put_varint(&mut body, 0); // tables
        put_varint(&mut body, u64::MAX >> 1); // rows
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&len32(body.len()).to_le_bytes());
        bytes.extend_from_slice(&len32(body.len()).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.extend_from_slice(&body);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(WireError::Malformed("a count larger than the payload"))
        );
    }
}
