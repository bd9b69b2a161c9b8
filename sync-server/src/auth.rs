//! Who is calling: API keys (admins and services) and JWT bearer tokens (users).
//!
//! API keys are configured as SHA-256 hashes and compared in constant time. JWTs are
//! verified with the configured HS256 secret or RS256 public key; the algorithm
//! named in a token's header must be one with a configured key, so unsigned
//! (`alg: none`) tokens and algorithm confusion are refused. Neither keys nor tokens
//! are ever logged.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync_runtime::protocol::API_KEY_HEADER;

use crate::config::AuthConfig;
use crate::error::{Error, Result};

/// The prefix of a hashed API key in the configuration.
pub const KEY_HASH_PREFIX: &str = "sha256:";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The caller of a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A holder of an API key: an admin or a trusted service, with access to
    /// everything.
    Admin,
    /// A user authenticated by a JWT.
    User {
        /// The token's `sub` claim.
        id: String,
        /// Every claim of the token, for row-level security policies.
        claims: serde_json::Map<String, serde_json::Value>,
    },
}

impl Principal {
    /// Whether this caller may change schemas and create databases.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("api key"),
            Principal::User { id, .. } => write!(f, "user {id}"),
        }
    }
}

/// The form of an API key to put in the configuration: `sha256:<hex>`.
///
/// ```
/// use sync_server::auth::hash_key;
///
/// assert_eq!(
///     hash_key("foo"),
///     "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
/// );
/// ```
pub fn hash_key(key: &str) -> String {
    format!(
        "{KEY_HASH_PREFIX}{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// Signs an HS256 token for `user` (its `sub`), valid for `valid_for` from now:
/// what an app's login service does once it knows who the user is, with the
/// server's `jwt_hs256_secret`. Handy for tests, demos and tools too.
///
/// ```
/// use std::time::Duration;
/// use sync_server::auth::sign_token;
///
/// let token = sign_token("a-secret-of-enough-length", "ann", Duration::from_secs(3600))?;
/// assert_eq!(token.split('.').count(), 3);
/// # Ok::<(), sync_server::Error>(())
/// ```
pub fn sign_token(secret: &str, user: &str, valid_for: std::time::Duration) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Config("the system clock is before 1970".into()))?
        .as_secs();
    let claims = serde_json::json!({
        "sub": user,
        "iat": now,
        "exp": now.saturating_add(valid_for.as_secs()),
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(|e| Error::Config(format!("cannot sign a token: {e}")))
}

/// The 32 bytes of a configured `sha256:<hex>` hash, or `None` if it is not one.
pub(crate) fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let digits = text.trim().strip_prefix(KEY_HASH_PREFIX)?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(digits, &mut hash).ok()?;
    Some(hash)
}

/// Checks the credentials of requests against the configured keys.
///
/// A token that verified is remembered, by its SHA-256 hash, until it expires:
/// a device sends the same token with every request (a long-poll after each
/// change), and checking its signature and reading its claims again each time
/// cost a tenth of a busy server's time. At most [`REMEMBERED_TOKEN_BYTES`] of
/// tokens are remembered; the others are verified each time.
pub struct Authenticator {
    api_keys: Vec<[u8; 32]>,
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    verified: quick_cache::sync::Cache<[u8; 32], Arc<Verified>, TokenWeight>,
}

/// The most bytes of tokens remembered once verified (a token's claims take
/// about as many bytes as the token).
pub const REMEMBERED_TOKEN_BYTES: u64 = 32 << 20;

/// A token that verified: its caller, and its expiry (`exp`, in seconds since
/// the epoch).
struct Verified {
    caller: Arc<Principal>,
    expires: u64,
    bytes: u64,
}

/// Weighs a remembered token by its length.
#[derive(Clone)]
struct TokenWeight;

impl quick_cache::Weighter<[u8; 32], Arc<Verified>> for TokenWeight {
    fn weight(&self, _: &[u8; 32], verified: &Arc<Verified>) -> u64 {
        verified.bytes
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.api_keys.len())
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The claims the server reads; the signature covers the others too.
impl Authenticator {
    /// Prepares the keys of an `[auth]` section: parses the API key hashes and
    /// reads the RS256 public key file.
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let api_keys = config
            .api_keys
            .iter()
            .map(|key| {
                parse_key_hash(key).ok_or_else(|| {
                    Error::Config(
                        "[auth] api_keys must hold `sha256:<64 hex digits>` hashes".into(),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let hs256 = match config.jwt_hs256_secret.as_deref() {
            Some("") => return Err(Error::Config("[auth] jwt_hs256_secret is empty".into())),
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let rs256 = match &config.jwt_rs256_public_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| Error::Io {
                    what: format!("cannot read the RS256 public key {}", path.display()),
                    source,
                })?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    Error::Config(format!(
                        "{} is not an RSA public key in PEM form: {e}",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        Ok(Self {
            api_keys,
            hs256,
            rs256,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            verified: quick_cache::sync::Cache::with_weighter(
                16_384,
                REMEMBERED_TOKEN_BYTES,
                TokenWeight,
            ),
        })
    }

    /// Whether any credential can be accepted at all.
    pub fn accepts_anything(&self) -> bool {
        !self.api_keys.is_empty() || self.hs256.is_some() || self.rs256.is_some()
    }

    /// Authenticates a request by its headers: an `x-api-key`, else an
    /// `Authorization: Bearer` token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal> {
        self.caller(headers).map(Arc::unwrap_or_clone)
    }

    /// [`authenticate`](Self::authenticate), sharing the caller of a token
    /// remembered.
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Arc<Principal>> {
        if let Some(key) = headers.get(API_KEY_HEADER) {
            return self.check_api_key(key.as_bytes()).map(Arc::new);
        }
        let Some(authorization) = headers.get(AUTHORIZATION) else {
            return Err(unauthorized(
                "no credentials: send an API key in `x-api-key` or a token in `Authorization: Bearer`",
            ));
        };
        let token = authorization
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
        self.check_token(token)
    }

    /// Accepts a key whose hash is configured. Every configured hash is compared,
    /// in constant time, whatever matched.
    fn check_api_key(&self, key: &[u8]) -> Result<Principal> {
        let hash: [u8; 32] = Sha256::digest(key).into();
        let matched = self
            .api_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&hash)
            });
        if bool::from(matched) {
            Ok(Principal::Admin)
        } else {
            Err(unauthorized("the API key is not valid"))
        }
    }

    /// The caller of a token: remembered if it verified before and has not
    /// expired since (with the same leeway as a verification), else verified.
    fn check_token(&self, token: &str) -> Result<Arc<Principal>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_seconds();
        if let Some(verified) = self.verified.get(&hash)
            && now <= verified.expires.saturating_add(LEEWAY_SECS)
        {
            return Ok(Arc::clone(&verified.caller));
        }
        let (caller, expires) = self.verify_token(token)?;
        let caller = Arc::new(caller);
        let verified = Verified {
            caller: Arc::clone(&caller),
            expires,
            bytes: token.len() as u64,
        };
        self.verified.insert(hash, Arc::new(verified));
        Ok(caller)
    }

    /// Verifies a token: its caller and its expiry.
    fn verify_token(&self, token: &str) -> Result<(Principal, u64)> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("the bearer token is not a valid JWT"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            unauthorized(&format!(
                "tokens signed with {:?} are not accepted by this server",
                header.alg
            ))
        })?;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &self.validation(header.alg),
        )
        .map_err(|e| unauthorized(token_problem(e.kind())))?
        .claims;
        let Some(serde_json::Value::String(id)) = claims.get("sub") else {
            return Err(unauthorized("the bearer token names no user (sub)"));
        };
        // Required and checked: a number of seconds.
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_f64)
            .map_or(0, |exp| exp as u64);
        let caller = Principal::User {
            id: id.clone(),
            claims,
        };
        Ok((caller, expires))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        validation
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unauthorized(message: &str) -> Error {
    tracing::debug!(reason = message, "request refused");
    Error::Unauthorized(message.to_owned())
}

/// Why a token was refused, in words (never the token).
fn token_problem(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the bearer token has expired",
        ErrorKind::ImmatureSignature => "the bearer token is not valid yet (nbf)",
        ErrorKind::InvalidSignature => "the bearer token's signature does not verify",
        ErrorKind::InvalidAlgorithm => "the bearer token's algorithm is not accepted",
        ErrorKind::InvalidIssuer => "the bearer token has another issuer (iss)",
        ErrorKind::InvalidAudience => "the bearer token is meant for another audience (aud)",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the bearer token has no expiry (exp)",
            "sub" => "the bearer token names no user (sub)",
            "iss" => "the bearer token names no issuer (iss)",
            "aud" => "the bearer token names no audience (aud)",
            _ => "the bearer token lacks a required claim",
        },
        _ => "the bearer token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_round_trip() {
        let hash = hash_key("secret key");
        assert!(parse_key_hash(&hash).is_some());
        assert!(parse_key_hash("secret key").is_none());
        assert!(parse_key_hash("sha256:abc").is_none());
    }

    #[test]
    fn only_configured_keys_are_admins() {
        let auth = Authenticator::new(&AuthConfig {
            api_keys: vec![hash_key("one"), hash_key("two")],
            ..AuthConfig::default()
        })
        .unwrap();
        let with_key = |key: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(API_KEY_HEADER, key.parse().unwrap());
            auth.authenticate(&headers)
        };
        assert_eq!(with_key("two").unwrap(), Principal::Admin);
        assert!(matches!(with_key("three"), Err(Error::Unauthorized(_))));
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn a_remembered_token_is_shared_until_it_expires() {
        const SECRET: &str = "a-secret-of-enough-length-for-hs256";
        let auth = Authenticator::new(&AuthConfig {
            jwt_hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        })
        .unwrap();
        let bearer = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            headers
        };
        let valid = sign_token(SECRET, "ann", std::time::Duration::from_secs(3600)).unwrap();
        let first = auth.caller(&bearer(&valid)).unwrap();
        assert!(Arc::ptr_eq(&first, &auth.caller(&bearer(&valid)).unwrap()));

        // A token that verified once and has expired since, beyond the leeway:
        // refused, as its verification says.
        let now = unix_seconds();
        let claims = serde_json::json!({ "sub": "ann", "exp": now - LEEWAY_SECS - 1 });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let expired =
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let hash: [u8; 32] = Sha256::digest(expired.as_bytes()).into();
        let remembered = Verified {
            caller: Arc::clone(&first),
            expires: now - LEEWAY_SECS - 1,
            bytes: expired.len() as u64,
        };
        auth.verified.insert(hash, Arc::new(remembered));
        let refused = auth.caller(&bearer(&expired)).err().unwrap();
        assert!(refused.to_string().contains("expired"), "{refused}");
        // Within the leeway, it is still the caller it was.
        let remembered = Verified {
            caller: Arc::clone(&first),
            expires: now - LEEWAY_SECS + 5,
            bytes: expired.len() as u64,
        };
        auth.verified.insert(hash, Arc::new(remembered));
        assert!(Arc::ptr_eq(
            &first,
            &auth.caller(&bearer(&expired)).unwrap()
        ));
    }
}
