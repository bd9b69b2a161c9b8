//! The server's configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! listen = "0.0.0.0:8787"
//! data = "/var/lib/synced"                    # relative paths: to this file
//!
//! [auth]
//! # `sync-server hash-key <KEY>` prints this form; the key itself is never stored.
//! api_keys = ["sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
//! jwt_hs256_secret = "a long random secret"   # or the SYNCED_JWT_SECRET variable
//! jwt_rs256_public_key = "keys/auth.pem"      # relative to this file
//! issuer = "https://auth.example.com/"
//! audience = "synced"
//!
//! [limits]
//! max_body_bytes = 16777216
//! max_inflated_bytes = 16777216               # default: max_body_bytes
//! max_batch_rows = 10000
//! max_batch_bytes = 4194304
//! request_timeout = "30s"
//! max_wait = "60s"
//! max_waiting_pulls = 16384                   # long-polls waiting at once; beyond: 429
//! max_waiting_pulls_per_user = 16             # of one user (API keys: not held to it)
//!
//! [storage]
//! quick_check = true                          # false: skip reading every file whole at start
//! # postgres = "host=/run/postgresql dbname=app" # every database in PostgreSQL instead
//!
//! [databases.todo]
//! schema = "todo.schema.json"                 # relative to this file
//! unlisted_tables = "closed"                  # tables without policies: "closed" or "shared"
//! oldest_supported_version = 1                # older app versions get 409 schema_too_old
//!
//! [databases.todo.tables.todos]               # row-level security for users (tokens)
//! read = "owner_id = $user_id OR shared = 1"
//! write = "owner_id = $user_id"
//! ```
//!
//! Every section and field is optional; [`Config::default`] describes the defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use crate::auth::parse_key_hash;
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::store::{bad_database_name, valid_database_name};

/// The environment variable that may hold the HS256 secret instead of the file.
pub const JWT_SECRET_ENV: &str = "SYNCED_JWT_SECRET";

/// The address the server listens on by default: port 8787 of the loopback
/// interface.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8787);

/// Everything the server needs to start.
///
/// Build one in code (tests, an in-process demo) or read it from a file with
/// [`Config::load`]:
///
/// ```
/// use sync_server::Config;
///
/// let config = Config {
///     listen: "127.0.0.1:0".parse()?,
///     data: "./cloud".into(),
///     ..Config::default()
/// };
/// assert_eq!(config.limits.max_body_bytes, 16 * 1024 * 1024);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The socket address to listen on (default `127.0.0.1:8787`; port 0 picks a
    /// free port, see [`Server::local_addr`](crate::Server::local_addr)).
    pub listen: SocketAddr,
    /// The data directory: one SQLite file per database, `<data>/<name>.db`.
    /// Created if missing (default `synced-data`; in a file, a path relative to
    /// the file, like every path there).
    pub data: PathBuf,
    /// Who may call the server.
    pub auth: AuthConfig,
    /// Request and batch limits.
    pub limits: Limits,
    /// The checks of the database files.
    pub storage: StorageConfig,
    /// Databases by name: created (if missing) at start, each with an optional
    /// schema and the row-level security of its tables. Databases already in the
    /// data directory are served too; for users, their tables are closed unless
    /// configured here.
    pub databases: BTreeMap<String, DatabaseConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            data: PathBuf::from("synced-data"),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            storage: StorageConfig::default(),
            databases: BTreeMap::new(),
        }
    }
}

/// The `[auth]` section: API keys for admins and services, JWTs for users.
///
/// A request carries either an API key (header `x-api-key`) or a JWT
/// (`Authorization: Bearer <jwt>`); without either, or with an invalid one, it gets
/// 401. A JWT must carry `exp` and `sub` (the user id); `nbf` is checked when
/// present, `iss` and `aud` when [`issuer`](Self::issuer) and
/// [`audience`](Self::audience) are set. Only the algorithms with a configured key
/// are accepted (HS256, RS256), so `alg: none` and algorithm confusion are refused.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Hashes of the accepted API keys, each `sha256:<64 hex digits>` (print one
    /// with `sync-server hash-key <KEY>`). An API key grants admin access: schema
    /// changes and every database.
    pub api_keys: Vec<String>,
    /// The shared secret of HS256 tokens. May instead come from the
    /// `SYNCED_JWT_SECRET` environment variable ([`JWT_SECRET_ENV`]).
    pub jwt_hs256_secret: Option<String>,
    /// A PEM file with the RSA public key of RS256 tokens (a path relative to the
    /// configuration file, when read from one).
    pub jwt_rs256_public_key: Option<PathBuf>,
    /// The required `iss` claim, if any.
    pub issuer: Option<String>,
    /// The required `aud` claim, if any. When unset, `aud` is not checked.
    pub audience: Option<String>,
}

impl fmt::Debug for AuthConfig {
    // The secret stays out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "api_keys",
                &format_args!("[{} hashed keys]", self.api_keys.len()),
            )
            .field(
                "jwt_hs256_secret",
                &self.jwt_hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_rs256_public_key", &self.jwt_rs256_public_key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The `[limits]` section. Durations are written `"500ms"`, `"30s"`, `"2m"`,
/// `"1h 30m"`, `"1.5s"` (numbers with units, added up; the units are those of
/// [`humantime::parse_duration`]) or as a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest request body accepted, in bytes (default 16 MiB); larger ones
    /// get 413.
    pub max_body_bytes: usize,
    /// The most bytes a pushed payload's body may inflate to once decompressed
    /// (default: `max_body_bytes`, what the same body may take sent as it is);
    /// larger ones get 413 before anything is decompressed. It bounds the memory
    /// a push may make the server use, whatever it compresses (an 8 KB body can
    /// declare 256 MiB of zeros).
    pub max_inflated_bytes: Option<usize>,
    /// The most rows one pull returns (default 10,000); a client may ask for fewer
    /// with `limit`.
    pub max_batch_rows: usize,
    /// The approximate largest payload one pull returns, in bytes (default 4 MiB).
    pub max_batch_bytes: usize,
    /// How long a request may work (default 30 s). A pull's long-poll wait comes on
    /// top of it, so the whole request may take up to `request_timeout + max_wait`;
    /// beyond that it gets 503.
    #[serde(deserialize_with = "deserialize_duration")]
    pub request_timeout: Duration,
    /// The longest long-poll wait a pull may ask for (default 60 s); longer `wait`
    /// values are cut to it.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_wait: Duration,
    /// The most pulls that may wait for changes at once on the server (default
    /// 16,384); a pull that would wait beyond it is answered 429 at once, with
    /// `Retry-After`. Only the wait counts: a pull with changes to return is
    /// answered whatever the count. Each waiting pull holds a connection, so the
    /// server lowers this cap to leave a quarter of its open-file limit, and at
    /// least 256 files, for pushes and the rest (see [`waiting`](crate::waiting)).
    ///
    /// The default lets 10,000 devices of distinct users wait, with room to
    /// grow; the open-file limit that needs, 21,845 (13,333 for 10,000 devices),
    /// is well under the hard limit of common Linux systems, to which the server
    /// raises its soft limit at start. 0 lets no pull wait.
    pub max_waiting_pulls: usize,
    /// The most pulls of one user (a token's `sub`, across databases) that may
    /// wait at once (default 16: a phone, a laptop, a tablet and a dozen browser
    /// tabs), so that one account cannot take every slot; beyond it, 429.
    /// Callers with an API key are the operator's services and are not held to
    /// it; they count toward [`max_waiting_pulls`](Self::max_waiting_pulls).
    pub max_waiting_pulls_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_inflated_bytes: None,
            max_batch_rows: 10_000,
            max_batch_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            max_waiting_pulls: 16_384,
            max_waiting_pulls_per_user: 16,
        }
    }
}

impl Limits {
    /// The most bytes a pushed payload's body may inflate to:
    /// [`max_inflated_bytes`](Self::max_inflated_bytes), or by default
    /// [`max_body_bytes`](Self::max_body_bytes).
    ///
    /// ```
    /// use sync_server::Limits;
    ///
    /// assert_eq!(Limits::default().inflated_limit(), 16 * 1024 * 1024);
    /// let limits = Limits { max_inflated_bytes: Some(1 << 30), ..Limits::default() };
    /// assert_eq!(limits.inflated_limit(), 1 << 30);
    /// ```
    pub fn inflated_limit(&self) -> usize {
        self.max_inflated_bytes.unwrap_or(self.max_body_bytes)
    }

    /// The time after which any request is cut off: the work time plus the longest
    /// long-poll wait.
    pub fn total_timeout(&self) -> Duration {
        self.request_timeout.saturating_add(self.max_wait)
    }
}

/// The `[storage]` section: how the database files of the data directory are
/// checked when the server opens them (at start, or when a file appears).
///
/// A file that fails a check is not served: the server logs an error with its
/// path and the reason, answers every request to that database with 503
/// (`database_unavailable`), serves the other databases, and leaves the file as
/// it is, for an operator to restore it from a backup and restart the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Whether each file is read whole with SQLite's `PRAGMA quick_check`
    /// (default `true`), which finds pages lost or overwritten inside a file. It
    /// costs a read of every page: 40 to 60 ms for a table of 100,000 rows (a
    /// 23 MB file), 0.5 s for 1,000,000 rows (233 MB), in the operating system's
    /// cache (`cargo run --release -p synced-bench --bin quick-check`); from
    /// disk, about the time it takes to read the file. Turn it off for very large
    /// files whose start-up time matters more; the cheap checks still run: an
    /// empty file, a file that is not a SQLite database or whose header does not
    /// match its size (a truncated file), and a SQLite file that is not a Synced
    /// database are refused.
    pub quick_check: bool,
    /// A PostgreSQL database to keep every database in instead of SQLite
    /// files in the data directory: its connection string, e.g.
    /// `"host=/run/postgresql dbname=app user=synced"` (libpq's form, or a
    /// `postgresql://` URL). Several servers configured with the same one
    /// serve the same databases side by side (see the book's "Scaling out").
    pub postgres: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            quick_check: true,
            postgres: None,
        }
    }
}

/// One `[databases.<name>]` section; the name is the database's name in URLs
/// (`/v1/db/<name>/…`): 1 to 64 characters among `a-z`, `0-9`, `_` and `-`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A JSON file with an array of table schemas (as `GET /v1/db/<name>/schema`
    /// returns them, or `serde_json::to_string(&[T::SCHEMA])` prints them),
    /// registered at start. A path relative to the configuration file.
    pub schema: Option<PathBuf>,
    /// What users (tokens) may do with the tables that have no
    /// [`tables`](Self::tables) entry: nothing (`"closed"`, the default) or
    /// everything (`"shared"`). API keys are never restricted.
    pub unlisted_tables: Access,
    /// Row-level security per table, for users: `[databases.<name>.tables.<table>]`.
    pub tables: BTreeMap<String, TablePolicies>,
    /// The audience a user's token must name (in its `aud` claim) to use this
    /// database, so that a token made for one database does not open another.
    /// Unset, any valid token may try (its policies still apply). API keys are
    /// not concerned.
    pub audience: Option<String>,
    /// The oldest app version whose devices this database serves: devices of
    /// older versions get 409 `schema_too_old` (see the book's chapter
    /// "Evolving your schema"). Every published app version (`PUT /schema`
    /// that changed the tables) is numbered, from 1. Unset, every version is
    /// served.
    pub oldest_supported_version: Option<i64>,
}

impl DatabaseConfig {
    /// A database whose tables every user reads and writes whole (no row-level
    /// security): one user's devices, or a list everyone shares.
    ///
    /// ```
    /// use sync_server::{Access, DatabaseConfig};
    ///
    /// assert_eq!(DatabaseConfig::shared().unlisted_tables, Access::Shared);
    /// ```
    pub fn shared() -> Self {
        Self {
            unlisted_tables: Access::Shared,
            ..Self::default()
        }
    }
}

/// What users may do with tables that have no policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Nothing: no row is sent, no write accepted.
    #[default]
    Closed,
    /// Everything: every row is sent, every write accepted.
    Shared,
}

/// The policies of one table: `[databases.<name>.tables.<table>]`.
///
/// Each is an SQL expression over the row's columns, true for the rows a user
/// may read (or write); `$user_id` is the token's `sub`, `$<claim>` any other claim
/// of the token (NULL when the token lacks it). Claims are bound as parameters,
/// never spliced into the SQL. A missing policy allows nothing; `"true"` allows
/// every row, and then the server keeps no track of which rows each device holds
/// (tightening it later does not take rows back from devices).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TablePolicies {
    /// Which rows a user receives.
    pub read: Option<String>,
    /// Which rows a user may create, change or delete: checked on the row before
    /// and after each change.
    pub write: Option<String>,
}

impl Config {
    /// Reads a configuration file, resolves its relative paths against the file's
    /// directory, takes the HS256 secret from `SYNCED_JWT_SECRET` if the file has
    /// none, and [validates](Self::validate) the result.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("cannot read the configuration file {}", path.display()),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
            other => other,
        })?;
        if let Some(base) = path.parent() {
            config.resolve_paths(base);
        }
        config.secret_from_env();
        config.validate()?;
        Ok(config)
    }

    /// Parses the TOML text of a configuration (without validating it).
    ///
    /// ```
    /// let config = sync_server::Config::parse(r#"
    ///     listen = "127.0.0.1:9000"
    ///     [limits]
    ///     max_wait = "10s"
    /// "#)?;
    /// assert_eq!(config.limits.max_wait, std::time::Duration::from_secs(10));
    /// # Ok::<(), sync_server::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Fills [`AuthConfig::jwt_hs256_secret`] from the `SYNCED_JWT_SECRET`
    /// environment variable when it is not set.
    pub fn secret_from_env(&mut self) {
        if self.auth.jwt_hs256_secret.is_none()
            && let Ok(secret) = std::env::var(JWT_SECRET_ENV)
            && !secret.is_empty()
        {
            self.auth.jwt_hs256_secret = Some(secret);
        }
    }

    /// Checks what can be checked before starting: API key hashes, database names,
    /// limits, and that the HS256 secret is not empty.
    pub fn validate(&self) -> Result<()> {
        for key in &self.auth.api_keys {
            if parse_key_hash(key).is_none() {
                return Err(Error::Config(
                    "[auth] api_keys must hold `sha256:<64 hex digits>` hashes; \
                     print one with `sync-server hash-key <KEY>`"
                        .into(),
                ));
            }
        }
        if self.auth.jwt_hs256_secret.as_deref() == Some("") {
            return Err(Error::Config(
                "[auth] jwt_hs256_secret is empty; give a long random secret or remove it".into(),
            ));
        }
        for (name, database) in &self.databases {
            if !valid_database_name(name) {
                return Err(Error::Config(format!(
                    "[databases.{name}]: {}",
                    bad_database_name(name)
                )));
            }
            for (table, policies) in &database.tables {
                for (kind, text) in [("read", &policies.read), ("write", &policies.write)] {
                    if let Some(text) = text {
                        Policy::compile(text).map_err(|e| {
                            Error::Config(format!("[databases.{name}.tables.{table}] {kind}: {e}"))
                        })?;
                    }
                }
            }
        }
        let limits = &self.limits;
        if limits.max_body_bytes == 0 || limits.max_batch_rows == 0 || limits.max_batch_bytes == 0 {
            return Err(Error::Config(
                "[limits] max_body_bytes, max_batch_rows and max_batch_bytes must be above 0"
                    .into(),
            ));
        }
        if limits.request_timeout.is_zero() {
            return Err(Error::Config(
                "[limits] request_timeout must be above 0".into(),
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.data);
        if let Some(key) = &mut self.auth.jwt_rs256_public_key {
            resolve(key);
        }
        for database in self.databases.values_mut() {
            if let Some(schema) = &mut database.schema {
                resolve(schema);
            }
        }
    }
}

/// Reads a duration: a number of seconds (`"30"`), or numbers with units as
/// [`humantime::parse_duration`] reads them (`"500ms"`, `"2m"`, `"1h 30m"`,
/// `"1.5s"`). An error names the text, why it is refused and the forms that do.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    // humantime wants a unit after every number but a lone 0; the file has always
    // taken a bare number as seconds.
    if text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(seconds) = text.parse()
    {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|error| {
        let reason = match error {
            // humantime would say "expected number at 0".
            _ if text.starts_with('-') => NEGATIVE.to_owned(),
            humantime::DurationError::NumberOverflow => TOO_LARGE.to_owned(),
            other => other.to_string(),
        };
        not_a_duration(format_args!("{text:?}"), &reason)
    })
}

const DURATION_FORMS: &str =
    "write e.g. \"500ms\", \"30s\", \"2m\", \"1h 30m\" or a number of seconds";
const NEGATIVE: &str = "a duration cannot be negative";
const TOO_LARGE: &str = "too large for 64 bits of seconds, or a fraction too fine for its unit";

fn not_a_duration(value: impl fmt::Display, reason: &str) -> String {
    format!("{value} is not a duration ({reason}); {DURATION_FORMS}")
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// Takes a string with units or an integer of seconds. TOML gives integers as
/// `i64` (`i128` beyond it), so negative and huge ones are named as such rather
/// than as a type mismatch.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration: {DURATION_FORMS}")
    }

    fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(seconds))
    }

    fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
        self.visit_i128(seconds.into())
    }

    fn visit_i128<E: de::Error>(self, seconds: i128) -> Result<Duration, E> {
        let reason = if seconds < 0 { NEGATIVE } else { TOO_LARGE };
        u64::try_from(seconds)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(not_a_duration(seconds, reason)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 30 s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn durations_may_add_up_units_and_take_fractions() {
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("2 minutes 5 sec"),
            Ok(Duration::from_secs(125))
        );
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_duration("5 days"),
            Ok(Duration::from_secs(5 * 86_400))
        );
        // Units are case-sensitive: `M` is a month of 30.44 days.
        assert_eq!(parse_duration("1M"), Ok(Duration::from_secs(2_630_016)));
    }

    #[test]
    fn a_zero_duration_parses_but_a_request_must_have_time_to_work() {
        for zero in ["0", "\"0\"", "\"0s\"", "\"0ms\""] {
            let config = Config::parse(&format!("[limits]\nmax_wait = {zero}")).unwrap();
            assert_eq!(config.limits.max_wait, Duration::ZERO);
            config.validate().unwrap();
        }
        let config = Config::parse("[limits]\nrequest_timeout = \"0s\"").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("request_timeout must be above 0"), "{error}");
    }

    fn max_wait_error(value: &str) -> String {
        let error = Config::parse(&format!("[limits]\nmax_wait = {value}")).unwrap_err();
        error.to_string()
    }

    #[test]
    fn an_invalid_duration_names_the_text_and_the_forms_that_would_do() {
        let error = max_wait_error("\"forever\"");
        assert!(error.contains("max_wait"), "{error}");
        assert!(error.contains("\"forever\" is not a duration"), "{error}");
        assert!(
            error.contains("\"500ms\", \"30s\", \"2m\", \"1h 30m\""),
            "{error}"
        );
        let error = max_wait_error("\"5 fortnights\"");
        assert!(
            error.contains("unknown time unit \"fortnights\""),
            "{error}"
        );
        let error = max_wait_error("1.5");
        assert!(error.contains("expected a duration"), "{error}");
    }

    #[test]
    fn a_negative_duration_is_refused() {
        for negative in ["\"-5s\"", "\"-5\"", "-5"] {
            let error = max_wait_error(negative);
            assert!(error.contains("a duration cannot be negative"), "{error}");
        }
    }

    #[test]
    fn a_duration_too_large_or_too_fine_is_refused() {
        // Too many digits for 64 bits, too many hours for 64 bits of seconds, a
        // fraction of an hour that is no whole second, half a nanosecond.
        for value in [
            "\"99999999999999999999\"",
            "\"9999999999999999999h\"",
            "\"0.333h\"",
            "\"0.5ns\"",
        ] {
            let error = max_wait_error(value);
            assert!(
                error.contains("too large for 64 bits of seconds"),
                "{error}"
            );
        }
        let error = max_wait_error("99999999999999999999");
        assert!(
            error.contains("99999999999999999999 is not a duration (too large"),
            "{error}"
        );
        // The largest that counts is kept; the total timeout saturates.
        for largest in ["18446744073709551615", "\"18446744073709551615s\""] {
            let config = Config::parse(&format!("[limits]\nmax_wait = {largest}")).unwrap();
            assert_eq!(config.limits.max_wait, Duration::from_secs(u64::MAX));
            assert_eq!(config.limits.total_timeout(), Duration::MAX);
        }
    }

    #[test]
    fn a_full_file_parses() {
        let config = Config::parse(
            r#"
            listen = "0.0.0.0:9000"
            data = "/srv/synced"
            [auth]
            api_keys = ["sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
            jwt_hs256_secret = "s3cret"
            issuer = "me"
            audience = "synced"
            [limits]
            max_body_bytes = 1024
            request_timeout = 5
            max_wait = "250ms"
            max_waiting_pulls = 100
            max_waiting_pulls_per_user = 3
            [storage]
            quick_check = false
            [databases.todo]
            schema = "todo.json"
            unlisted_tables = "shared"
            [databases.todo.tables.todos]
            read = "owner_id = $user_id OR shared = 1"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(config.limits.max_wait, Duration::from_millis(250));
        assert_eq!(config.limits.max_waiting_pulls, 100);
        assert_eq!(config.limits.max_waiting_pulls_per_user, 3);
        assert!(!config.storage.quick_check);
        let todo = &config.databases["todo"];
        assert_eq!(todo.unlisted_tables, Access::Shared);
        assert!(todo.tables["todos"].write.is_none());
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn mistakes_are_reported_not_ignored() {
        assert!(Config::parse("lisen = \"127.0.0.1:1\"").is_err());
        assert!(Config::parse("[limits]\nmax_wait = \"forever\"").is_err());
        let bad_key = Config::parse("[auth]\napi_keys = [\"plaintext\"]").unwrap();
        assert!(bad_key.validate().is_err());
        let bad_name = Config::parse("[databases.\"Todo!\"]").unwrap();
        assert!(bad_name.validate().is_err());
    }
}
