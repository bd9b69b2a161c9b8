//! The sync client's side of the wire: a server and how to reach it
//! ([`Remote`]), how a sync runs ([`SyncOptions`]), what it did
//! ([`SyncReport`]), and the HTTP requests, tried again while a failure may
//! pass.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::export::BatchLimits;
use crate::merge::Rejection;
use crate::protocol::{API_KEY_HEADER, ErrorBody};

/// A sync server and how to reach it: the URL of one of its databases and the
/// credentials to use.
///
/// ```
/// use std::time::Duration;
/// use sync_runtime::Remote;
///
/// let remote = Remote::new("http://127.0.0.1:8787/v1/db/todo")
///     .bearer_token("eyJhbGciOi...")
///     .timeout(Duration::from_secs(10));
/// assert_eq!(remote.url(), "http://127.0.0.1:8787/v1/db/todo");
/// // Secrets never show in logs.
/// assert!(!format!("{remote:?}").contains("eyJ"));
/// ```
#[derive(Clone)]
pub struct Remote {
    pub(crate) url: String,
    credentials: Option<Credentials>,
    pub(crate) timeout: Duration,
    pub(crate) limits: BatchLimits,
    root_certificates: Vec<Vec<u8>>,
}

#[derive(Clone)]
enum Credentials {
    Bearer(String),
    ApiKey(String),
}

impl Remote {
    /// A server database, by URL: `http(s)://host:port/v1/db/<name>`.
    pub fn new(url: impl Into<String>) -> Self {
        let mut url = url.into();
        while url.ends_with('/') {
            url.pop();
        }
        Self {
            url,
            credentials: None,
            timeout: Duration::from_secs(30),
            limits: BatchLimits::default(),
            root_certificates: Vec::new(),
        }
    }

    /// Authenticates as a user, with a token (a JWT) the app got from its login.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Bearer(token.into()));
        self
    }

    /// Authenticates as a service, with an API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::ApiKey(key.into()));
        self
    }

    /// How long one request may take (default 30 s); a pull's long-poll
    /// [`wait`](field@SyncOptions::wait) comes on top.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How much one batch may carry, each way (default [`BatchLimits::default`]).
    pub fn batch_limits(mut self, limits: BatchLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Trusts a certificate authority (PEM) besides the system's, for a server
    /// whose certificate a private authority signed. A certificate that cannot be
    /// read fails the first sync with [`Error::HttpClient`].
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// The server database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP client for this server: every request gets the remote's timeout
    /// (a pull's long-poll wait comes on top, set on that request).
    fn client(&self) -> std::result::Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder().timeout(self.timeout);
        for pem in &self.root_certificates {
            let certificate = reqwest::Certificate::from_pem(pem)
                .map_err(|e| format!("a root certificate cannot be read: {}", error_chain(&e)))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build().map_err(|e| error_chain(&e))
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match self.credentials {
            None => "none",
            Some(Credentials::Bearer(_)) => "bearer token",
            Some(Credentials::ApiKey(_)) => "API key",
        };
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("credentials", &credentials)
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The server of a [`SyncDb`], with its HTTP client and the locks that keep one
/// send and one receive at a time (so that cursors only move forward).
pub(crate) struct RemoteState {
    pub(crate) remote: Remote,
    /// The client, or why none could be built (reported by every sync).
    http: std::result::Result<reqwest::Client, String>,
    /// The highest [`SEEN_HEADER`](crate::protocol::SEEN_HEADER) the answers
    /// carried since it was last read; -1 if none.
    pub(crate) seen: AtomicI64,
    /// The lowest `SEEN_HEADER` of an answer to a request sent when the server
    /// had acknowledged more than it (it lost changes); `i64::MAX` if none
    /// since it was last read.
    pub(crate) lost: AtomicI64,
    /// Held by the send in progress.
    pub(crate) sending: Mutex<()>,
    /// Held by the fetch in progress while it applies what it fetched (not
    /// while its first request waits on the server).
    pub(crate) receiving: Mutex<()>,
}

/// Called with the running totals after every batch of a sync.
pub type ProgressFn = Arc<dyn Fn(&SyncReport) + Send + Sync>;

/// How a sync runs. `SyncOptions::default()` is what
/// [`SyncDb::sync`](crate::SyncDb::sync) uses; each setting is read as a field
/// and set by the method of the same name, so that a setting added later
/// changes no code that builds one.
///
/// ```
/// use std::time::Duration;
/// use sync_runtime::SyncOptions;
///
/// let options = SyncOptions::default().wait(Duration::from_secs(5)).max_retries(3);
/// assert_eq!(options.wait, Duration::from_secs(5));
/// assert_eq!(options.backoff, Duration::from_millis(100));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct SyncOptions {
    /// How long the server may hold the request for changes when it has none yet
    /// (a long-poll: it answers as soon as one arrives). Default 0: answer at once.
    pub wait: Duration,
    /// How many times a failed request is tried again when the failure may pass
    /// (unreachable server, server error, damaged answer, a server busy with
    /// too many waiting pulls). Default 3.
    pub max_retries: u32,
    /// The first pause before a retry; it doubles with each retry, with random
    /// jitter. Default 100 ms. When the server says when to come back
    /// (`Retry-After`, honoured up to 30 s), the pause is that long, stretched by
    /// up to half at random.
    pub backoff: Duration,
    /// The longest pause between retries, unless the server asks for a longer
    /// one. Default 5 s.
    pub max_backoff: Duration,
    /// Told the running totals after every batch, to show progress.
    pub progress: Option<ProgressFn>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            wait: Duration::ZERO,
            max_retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            progress: None,
        }
    }
}

impl SyncOptions {
    /// Sets [`wait`](field@Self::wait), how long the server may hold the
    /// request for changes when it has none yet (default 0).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sync_runtime::SyncOptions;
    ///
    /// let long_poll = SyncOptions::default().wait(Duration::from_secs(25));
    /// assert_eq!(long_poll.wait, Duration::from_secs(25));
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`max_retries`](field@Self::max_retries), how many times a failed
    /// request is tried again when the failure may pass (default 3).
    ///
    /// ```
    /// use sync_runtime::SyncOptions;
    ///
    /// let once = SyncOptions::default().max_retries(0);
    /// assert_eq!(once.max_retries, 0);
    /// ```
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets [`backoff`](field@Self::backoff), the first pause before a retry
    /// (default 100 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sync_runtime::SyncOptions;
    ///
    /// let patient = SyncOptions::default().backoff(Duration::from_secs(1));
    /// assert_eq!(patient.backoff, Duration::from_secs(1));
    /// ```
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`max_backoff`](field@Self::max_backoff), the longest pause between
    /// retries (default 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sync_runtime::SyncOptions;
    ///
    /// let options = SyncOptions::default().max_backoff(Duration::from_secs(60));
    /// assert_eq!(options.max_backoff, Duration::from_secs(60));
    /// ```
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`progress`](field@Self::progress): `progress` is told the running
    /// totals after every batch (default none).
    ///
    /// ```
    /// use sync_runtime::SyncOptions;
    ///
    /// let options = SyncOptions::default().progress(|report| {
    ///     println!("{} changes received so far", report.changes_received);
    /// });
    /// assert!(options.progress.is_some());
    /// ```
    pub fn progress(mut self, progress: impl Fn(&SyncReport) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }
}

impl fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncOptions")
            .field("wait", &self.wait)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .finish()
    }
}

/// What a sync did (and, given to a [`ProgressFn`], what it has done so far).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Changes sent to the server (row existences and column values).
    pub changes_sent: usize,
    /// Changes received from the server.
    pub changes_received: usize,
    /// Received changes that won here and were written.
    pub applied: usize,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Requests that carried or fetched a batch.
    pub batches: usize,
    /// Rows sent that the server refused (row-level security, clocks beyond
    /// what a device can have counted to, or a peer's creation or delete that
    /// the peer has not sent there): not applied there, and given back
    /// here the server's state of them (as this user may see it) in the same
    /// sync.
    pub rejected: Vec<Rejection>,
    /// Refused rows whose values this device wrote were kept, to be listed with
    /// [`SyncDb::rejected`](crate::SyncDb::rejected), re-submitted or discarded.
    pub quarantined: usize,
    /// Whether the server refused every row this sync sent: nothing of it was
    /// taken there. Typically the user may write nothing in the tables written
    /// (a database without policies for users is closed to them).
    pub refused_all: bool,
    /// Whether the server had received versions of this database's site id
    /// beyond its own version: the file is a copy of another device's, or was
    /// restored from a backup. It took a new site id
    /// ([`SyncDb::new_site_id`](crate::SyncDb::new_site_id)) and forgot its cursors for this server, so
    /// that it sends what no server acknowledged and fetches what it lacks.
    pub site_id_renewed: bool,
    /// Whether the server had lost changes of this device that it had
    /// acknowledged (its database was restored from a backup): they are sent
    /// again, in this sync.
    pub server_lost_changes: bool,
}

impl SyncReport {
    pub(crate) fn add(&mut self, other: &SyncReport) {
        self.rejected.extend(other.rejected.iter().cloned());
        self.quarantined += other.quarantined;
        self.refused_all |= other.refused_all;
        self.site_id_renewed |= other.site_id_renewed;
        self.server_lost_changes |= other.server_lost_changes;
        self.changes_sent += other.changes_sent;
        self.changes_received += other.changes_received;
        self.applied += other.applied;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.batches += other.batches;
    }
}

impl RemoteState {
    /// The state of a server newly set; the HTTP client is built now.
    pub(crate) fn new(remote: Remote) -> Self {
        let http = remote.client();
        Self {
            remote,
            http,
            seen: AtomicI64::new(-1),
            lost: AtomicI64::new(i64::MAX),
            sending: Mutex::new(()),
            receiving: Mutex::new(()),
        }
    }

    /// One request and the reading of its answer, tried again while the failure
    /// may pass: an unreachable server, a server error, or an answer that `read`
    /// finds damaged.
    ///
    /// `acked` is how far the server had acknowledged this database's changes
    /// before the request (its send cursor then; 0 if unknown): an answer
    /// saying it has received less shows that it lost changes.
    pub(crate) async fn call<T>(
        &self,
        options: &SyncOptions,
        acked: i64,
        request: impl Fn(&reqwest::Client, &Remote) -> reqwest::RequestBuilder,
        read: impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let http = self.http.as_ref().map_err(|reason| Error::HttpClient {
            url: self.remote.url.clone(),
            reason: reason.clone(),
        })?;
        let mut attempt = 0;
        loop {
            let (outcome, retry_after) = self.call_once(request(http, &self.remote), acked).await;
            let outcome = outcome.and_then(|body| {
                read(&body).map_err(|message| Error::Server {
                    status: 200,
                    message,
                })
            });
            match outcome {
                Err(e) if e.is_transient() && attempt < options.max_retries => {
                    let pause = retry_pause(options, attempt, retry_after);
                    attempt += 1;
                    let span = tracing::info_span!(
                        "retry",
                        attempt,
                        pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        error = %e,
                    );
                    tokio::time::sleep(pause).instrument(span).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// One request: its answer's body, or the error, with the server's
    /// `Retry-After` when it sent one.
    async fn call_once(
        &self,
        request: reqwest::RequestBuilder,
        acked: i64,
    ) -> (Result<bytes::Bytes>, Option<Duration>) {
        let offline = |e: reqwest::Error| Error::Offline {
            url: self.remote.url.clone(),
            reason: error_chain(&e),
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return (Err(offline(e)), None),
        };
        let retry_after = retry_after(response.headers());
        if let Some(seen) = response
            .headers()
            .get(crate::protocol::SEEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            self.seen.fetch_max(seen, Ordering::Relaxed);
            if seen < acked {
                self.lost.fetch_min(seen, Ordering::Relaxed);
            }
        }
        (self.read_answer(response).await, retry_after)
    }

    /// The body of a successful answer, or the error an unsuccessful one means.
    async fn read_answer(&self, response: reqwest::Response) -> Result<bytes::Bytes> {
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| Error::Server {
            status,
            message: format!("the answer was cut short: {}", error_chain(&e)),
        })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => (Some(error.code), error.message),
            Err(_) => (
                None,
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        Err(match status {
            // A 503 that retries cannot fix.
            503 if code.as_deref() == Some(ErrorBody::DATABASE_UNAVAILABLE) => {
                Error::DatabaseUnavailable { message }
            }
            409 if code.as_deref() == Some(ErrorBody::SITE_REUSED) => Error::SiteReused { message },
            409 if code.as_deref() == Some(ErrorBody::SCHEMA_NOT_PUBLISHED) => {
                Error::SchemaNotPublished { message }
            }
            409 if code.as_deref() == Some(ErrorBody::SCHEMA_TOO_OLD) => {
                Error::SchemaTooOld { message }
            }
            401 => Error::Unauthorized { message },
            403 => Error::Forbidden { message },
            409 => Error::ServerSchemaMismatch { message },
            400..=499 if status != 408 && status != 429 => Error::Rejected { status, message },
            _ => Error::Server { status, message },
        })
    }
}

impl Remote {
    pub(crate) fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            None => request,
            Some(Credentials::Bearer(token)) => request.bearer_auth(token),
            Some(Credentials::ApiKey(key)) => request.header(API_KEY_HEADER, key),
        }
    }
}

/// The longest `Retry-After` honoured: one server's word should not stall a
/// sync for long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The pause before retry `attempt` (0-based): the [`backoff`], or, when the
/// server said when to come back (`Retry-After`, at most [`MAX_RETRY_AFTER`]),
/// that long stretched by up to half at random, so that devices turned away
/// together do not come back together.
fn retry_pause(options: &SyncOptions, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = backoff(options, attempt);
    match retry_after {
        None => backoff,
        Some(after) => {
            let after = after.min(MAX_RETRY_AFTER);
            backoff.max(after + after.mul_f64(random_fraction() / 2.0))
        }
    }
}

/// The server's `Retry-After`, when it is a number of seconds (the HTTP-date
/// form is not used by Synced servers, and is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// The pause before retry `attempt` (0-based): exponential, capped, with jitter
/// (half fixed, half random), so that devices that failed together do not retry
/// together.
fn backoff(options: &SyncOptions, attempt: u32) -> Duration {
    let exponential = options
        .backoff
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
    let delay = exponential.min(options.max_backoff);
    delay / 2 + delay.mul_f64(random_fraction() / 2.0)
}

/// A random number in `[0, 1)`; 0.5 when the system gives no randomness.
fn random_fraction() -> f64 {
    let mut random = [0u8; 8];
    match getrandom::fill(&mut random) {
        Ok(()) => (u64::from_le_bytes(random) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// An error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry_after: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, retry_after.parse().unwrap());
        headers
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(retry_after(&headers("10")), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(&headers(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&headers("-1")), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn a_retry_after_is_waited_out_stretched_by_up_to_half() {
        let options = SyncOptions::default();
        for _ in 0..100 {
            let pause = retry_pause(&options, 0, Some(Duration::from_secs(10)));
            assert!(pause >= Duration::from_secs(10), "{pause:?}");
            assert!(pause <= Duration::from_secs(15), "{pause:?}");
        }
    }

    #[test]
    fn a_retry_after_is_capped_and_never_shortens_the_backoff() {
        let options = SyncOptions::default();
        let pause = retry_pause(&options, 0, Some(Duration::from_secs(3_600)));
        assert!(pause <= MAX_RETRY_AFTER.mul_f64(1.5), "{pause:?}");
        let slow = SyncOptions::default()
            .backoff(Duration::from_secs(8))
            .max_backoff(Duration::from_secs(8));
        let pause = retry_pause(&slow, 0, Some(Duration::ZERO));
        assert!(pause >= Duration::from_secs(4), "{pause:?}");
    }

    #[test]
    fn without_retry_after_the_pause_is_the_backoff() {
        let options = SyncOptions::default();
        for attempt in 0..5 {
            let pause = retry_pause(&options, attempt, None);
            let delay = (options.backoff * 2u32.pow(attempt)).min(options.max_backoff);
            assert!(pause >= delay / 2 && pause <= delay, "{pause:?}");
        }
    }
}
