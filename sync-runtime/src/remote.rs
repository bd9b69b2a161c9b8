//! Syncing through a server: the device's side of the [protocol](crate::protocol).
//!
//! [`SyncDb::sync`] sends the changes made here that the server has not
//! acknowledged yet, then fetches and applies the changes others made. Both go in
//! bounded batches; the cursor of each direction is stored in the database and moves
//! only once a batch is delivered (acknowledged by the server, or applied and
//! committed here), so an interruption at any point loses nothing and the next sync
//! resumes where the last one stopped. Sending a batch twice is harmless: merging
//! is idempotent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::db::SyncDb;
use crate::error::{Error, Result};
use crate::export::{BatchLimits, Cursor, Scope};
use crate::merge::Rejection;
use crate::protocol::{
    API_KEY_HEADER, ErrorBody, PullResponse, PushAck, SCHEMA_HEADER, SITE_HEADER, fingerprint_hex,
};

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
    url: String,
    credentials: Option<Credentials>,
    timeout: Duration,
    limits: BatchLimits,
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
    /// [`wait`](SyncOptions::wait) comes on top.
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
    remote: Remote,
    /// The client, or why none could be built (reported by every sync).
    http: std::result::Result<reqwest::Client, String>,
    /// The highest [`SEEN_HEADER`](crate::protocol::SEEN_HEADER) the answers
    /// carried since it was last read; -1 if none.
    seen: std::sync::atomic::AtomicI64,
    /// The lowest `SEEN_HEADER` of an answer to a request sent when the server
    /// had acknowledged more than it (it lost changes); `i64::MAX` if none
    /// since it was last read.
    lost: std::sync::atomic::AtomicI64,
    sending: Mutex<()>,
    receiving: Mutex<()>,
}

/// Called with the running totals after every batch of a sync.
pub type ProgressFn = Arc<dyn Fn(&SyncReport) + Send + Sync>;

/// How a sync runs. `SyncOptions::default()` is what [`SyncDb::sync`] uses.
///
/// ```
/// use std::time::Duration;
/// use sync_runtime::SyncOptions;
///
/// let options = SyncOptions { wait: Duration::from_secs(5), max_retries: 3, ..Default::default() };
/// assert_eq!(options.backoff, Duration::from_millis(100));
/// ```
#[derive(Clone)]
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
    /// [`SyncDb::rejected`], re-submitted or discarded.
    pub quarantined: usize,
    /// Whether the server refused every row this sync sent: nothing of it was
    /// taken there. Typically the user may write nothing in the tables written
    /// (a database without policies for users is closed to them).
    pub refused_all: bool,
    /// Whether the server had received versions of this database's site id
    /// beyond its own version: the file is a copy of another device's, or was
    /// restored from a backup. It took a new site id
    /// ([`SyncDb::new_site_id`]) and forgot its cursors for this server, so
    /// that it sends what no server acknowledged and fetches what it lacks.
    pub site_id_renewed: bool,
    /// Whether the server had lost changes of this device that it had
    /// acknowledged (its database was restored from a backup): they are sent
    /// again, in this sync.
    pub server_lost_changes: bool,
}

impl SyncReport {
    fn add(&mut self, other: &SyncReport) {
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

impl SyncDb {
    /// Sets the sync server, builder style:
    /// `SyncDb::open(path).await?.with_remote(Remote::new(url))`.
    pub fn with_remote(self, remote: Remote) -> Self {
        self.set_remote(remote);
        self
    }

    /// Sets (or replaces) the sync server. Each server URL keeps its own cursors.
    ///
    /// A client that cannot be built (no TLS roots on the system, a root
    /// certificate that cannot be read) is reported by every sync, as
    /// [`Error::HttpClient`].
    pub fn set_remote(&self, remote: Remote) {
        let http = remote.client();
        self.set_remote_state(Arc::new(RemoteState {
            remote,
            http,
            seen: std::sync::atomic::AtomicI64::new(-1),
            lost: std::sync::atomic::AtomicI64::new(i64::MAX),
            sending: Mutex::new(()),
            receiving: Mutex::new(()),
        }));
    }

    /// Sends the changes made here that the server does not have, then fetches and
    /// applies the changes made elsewhere: [`sync_with`](Self::sync_with) with
    /// default options.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.sync_with(SyncOptions::default()).await
    }

    /// [`send_changes`](Self::send_changes), then
    /// [`check_changes`](Self::check_changes), with these options.
    pub async fn sync_with(&self, options: SyncOptions) -> Result<SyncReport> {
        let mut report = self.sync_once(&options).await?;
        if report.site_id_renewed || report.server_lost_changes {
            // Under the new site id: what was not acknowledged, and everything
            // the server has.
            let again = self.sync_once(&options).await?;
            report.add(&again);
        }
        Ok(report)
    }

    /// One send and one fetch.
    async fn sync_once(&self, options: &SyncOptions) -> Result<SyncReport> {
        let options = options.clone();
        let mut report = self.send_changes_with(&options).await?;
        let progress = options.progress.clone().map(|each| {
            let sent = report.clone();
            Arc::new(move |r: &SyncReport| {
                let mut total = sent.clone();
                total.add(r);
                each(&total)
            }) as ProgressFn
        });
        let options = SyncOptions {
            progress,
            ..options
        };
        report.add(&self.check_changes_with(&options).await?);
        Ok(report)
    }

    /// Sends the changes made here that the server has not acknowledged, in
    /// bounded batches. Writes made meanwhile go in the next send.
    pub async fn send_changes(&self) -> Result<SyncReport> {
        self.send_changes_with(&SyncOptions::default()).await
    }

    /// Fetches and applies the changes others sent to the server, in bounded
    /// batches, each committed with the cursor after it.
    pub async fn check_changes(&self) -> Result<SyncReport> {
        self.check_changes_with(&SyncOptions::default()).await
    }

    /// [`send_changes`](Self::send_changes) with options.
    ///
    /// While the server merges one batch, the next one is read here: the two
    /// overlap, and a large send takes little more than the server's merging.
    pub async fn send_changes_with(&self, options: &SyncOptions) -> Result<SyncReport> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let batches = self.send_batches(&state, options).await;
        self.after_answers(&state, batches).await
    }

    /// Acts on how far the server's answers said it has received this
    /// database's site id: beyond its own version, takes a new site id and
    /// forgets the cursors for this server (see
    /// [`SyncReport::site_id_renewed`]); short of what it acknowledged, sends
    /// again from there (see [`SyncReport::server_lost_changes`]).
    ///
    /// `batches` is what the sends or fetches did: refused because another file
    /// writes under this site id, nothing of the batch that showed it was taken
    /// or acknowledged, and the site id is renewed all the same.
    async fn after_answers(
        &self,
        state: &RemoteState,
        batches: Result<SyncReport>,
    ) -> Result<SyncReport> {
        let mut report = match batches {
            Err(Error::SiteReused { .. }) => {
                state
                    .seen
                    .store(i64::MAX, std::sync::atomic::Ordering::Relaxed);
                SyncReport::default()
            }
            other => other?,
        };
        self.renew_or_resend(state, &mut report).await?;
        Ok(report)
    }

    /// See [`after_answers`](Self::after_answers).
    async fn renew_or_resend(&self, state: &RemoteState, report: &mut SyncReport) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let seen = state.seen.swap(-1, Relaxed);
        let lost = state.lost.swap(i64::MAX, Relaxed);
        if seen < 0 {
            return Ok(());
        }
        // The version last published is never above the database's: most
        // answers are settled without asking the connection's thread.
        if seen <= self.published_version() || seen <= self.db_version().await? {
            if lost != i64::MAX {
                report.server_lost_changes |= self.resend_if_lost(state, lost).await?;
            }
            return Ok(());
        }
        report.site_id_renewed = true;
        // No send or fetch of this server runs meanwhile.
        let _sending = state.sending.lock().await;
        let _receiving = state.receiving.lock().await;
        // The send cursor says what is made again under the new id: first.
        self.leave_reused_site_id().await?;
        let url = state.remote.url.clone();
        self.call(move |w| {
            w.conn
                .execute("DELETE FROM _synced_remote WHERE url = ?1", [url])?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// If the server has received this database's changes only up to `seen`,
    /// short of what it acknowledged (its database was restored from a
    /// backup), moves the send cursor back there; returns whether it did.
    async fn resend_if_lost(&self, state: &RemoteState, seen: i64) -> Result<bool> {
        let _sending = state.sending.lock().await;
        let url = state.remote.url.clone();
        let sent = self.remote_cursors(&url).await?.0;
        if seen >= sent.version() {
            return Ok(false);
        }
        self.call(move |w| {
            w.conn.execute(
                "UPDATE _synced_remote SET sent = ?2 WHERE url = ?1",
                [url, Cursor::at(seen).to_string()],
            )?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// The batches of [`send_changes_with`](Self::send_changes_with).
    async fn send_batches(
        &self,
        state: &Arc<RemoteState>,
        options: &SyncOptions,
    ) -> Result<SyncReport> {
        let state = Arc::clone(state);
        let _one_at_a_time = state.sending.lock().await;
        let url = state.remote.url.clone();
        let limits = state.remote.limits;
        let fingerprint = self.schema_fingerprint().await?;
        let cursor = self.remote_cursors(&url).await?.0;
        let acked = cursor.version();
        let mut batch = self.export_batch(cursor, Scope::Local, limits).await?;
        let mut report = SyncReport::default();
        let mut rows_sent = 0;
        loop {
            let payload = bytes::Bytes::from(std::mem::take(&mut batch.payload));
            let bytes = payload.len() as u64;
            let push = async {
                if batch.rows == 0 {
                    return Ok::<_, Error>(None);
                }
                let ack = self.push(&state, options, fingerprint, payload, acked);
                Ok(Some(ack.await?))
            };
            let next = async {
                if batch.complete {
                    return Ok::<_, Error>(None);
                }
                let next = self.export_batch(batch.next.clone(), Scope::Local, limits);
                next.await.map(Some)
            };
            let (pushed, next) = tokio::join!(push, next);
            let ack = pushed?;
            let (rejected, restore) = match ack {
                Some(ack) => (ack.rejected, ack.restore),
                None => (Vec::new(), None),
            };
            let restore = match restore {
                Some(hex) => hex::decode(hex).map_err(|e| Error::Server {
                    status: 200,
                    message: format!("the push acknowledgement's restore is not hex: {e}"),
                })?,
                None => Vec::new(),
            };
            // Acknowledged: the cursor may move past the batch, and the rows the
            // server refused are kept and take its state, in one transaction.
            let rejected: Vec<Rejection> = rejected.iter().filter_map(|r| r.rejection()).collect();
            let (_, kept) = self
                .acknowledged(
                    &url,
                    batch.next.clone(),
                    rejected.clone(),
                    restore,
                    batch.version,
                )
                .await?;
            if batch.rows > 0 {
                rows_sent += batch.rows;
                report.changes_sent += batch.changes;
                report.rejected.extend(rejected);
                report.quarantined += kept;
                report.refused_all = report.rejected.len() >= rows_sent;
                report.bytes_sent += bytes;
                report.batches += 1;
            }
            if let Some(progress) = &options.progress {
                progress(&report);
            }
            match next? {
                Some(next) => batch = next,
                None => return Ok(report),
            }
        }
    }

    /// [`check_changes`](Self::check_changes) with options: with a
    /// [`wait`](SyncOptions::wait), the first request waits on the server until a
    /// change arrives or the wait is over.
    ///
    /// While one batch is merged here, the next one is fetched.
    pub async fn check_changes_with(&self, options: &SyncOptions) -> Result<SyncReport> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let batches = self.fetch_batches(&state, options).await;
        self.after_answers(&state, batches).await
    }

    /// The batches of [`check_changes_with`](Self::check_changes_with).
    async fn fetch_batches(
        &self,
        state: &Arc<RemoteState>,
        options: &SyncOptions,
    ) -> Result<SyncReport> {
        let state = Arc::clone(state);
        let _one_at_a_time = state.receiving.lock().await;
        let url = state.remote.url.clone();
        let fingerprint = self.schema_fingerprint().await?;
        let (sent, cursor) = self.remote_cursors(&url).await?;
        let acked = sent.version();
        let mut answer = self
            .pull(&state, options, fingerprint, &cursor, options.wait, acked)
            .await?;
        let mut report = SyncReport::default();
        loop {
            let apply = self.apply_received(&url, answer.payload.clone(), answer.next.clone());
            let next = async {
                if answer.complete {
                    return Ok::<_, Error>(None);
                }
                let next = self.pull(
                    &state,
                    options,
                    fingerprint,
                    &answer.next,
                    Duration::ZERO,
                    acked,
                );
                next.await.map(Some)
            };
            let (applied, next) = tokio::join!(apply, next);
            // Applied and committed with its cursor, in one transaction.
            let applied = applied?;
            report.changes_received += applied.applied + applied.ignored;
            report.applied += applied.applied;
            report.bytes_received += answer.payload.len() as u64;
            report.batches += 1;
            if let Some(progress) = &options.progress {
                progress(&report);
            }
            match next? {
                Some(next) => answer = next,
                None => return Ok(report),
            }
        }
    }

    /// Sends one payload; returns once the server acknowledged it, that is once
    /// its merge is committed there.
    async fn push(
        &self,
        state: &RemoteState,
        options: &SyncOptions,
        fingerprint: u64,
        payload: bytes::Bytes,
        acked: i64,
    ) -> Result<PushAck> {
        let site = self.site_id().to_string();
        let previous = self.previous_site_headers();
        state
            .call(
                options,
                acked,
                |http, remote| {
                    remote
                        .authorize(http.post(format!("{}/push", remote.url)))
                        .header(SCHEMA_HEADER, fingerprint_hex(fingerprint))
                        .header(SITE_HEADER, &site)
                        .header(crate::protocol::PREVIOUS_SITE_HEADER, &previous.0)
                        .header(crate::protocol::REUSED_SITE_HEADER, &previous.1)
                        .body(payload.clone())
                },
                // Read whole: a cut or damaged acknowledgement is no acknowledgement.
                |body| {
                    serde_json::from_slice(body)
                        .map_err(|e| format!("the push acknowledgement is unreadable: {e}"))
                },
            )
            .await
    }

    /// The [`PREVIOUS_SITE_HEADER`](crate::protocol::PREVIOUS_SITE_HEADER)
    /// and [`REUSED_SITE_HEADER`](crate::protocol::REUSED_SITE_HEADER)
    /// values: the site id this database had before, or empty; the same if it
    /// left it because another file used it too, or empty.
    fn previous_site_headers(&self) -> (String, String) {
        match self.site_ids().previous {
            Some((site, true)) => (site.to_string(), site.to_string()),
            Some((site, false)) => (site.to_string(), String::new()),
            None => (String::new(), String::new()),
        }
    }

    /// Fetches the batch after `cursor`, waiting up to `wait` for one.
    async fn pull(
        &self,
        state: &RemoteState,
        options: &SyncOptions,
        fingerprint: u64,
        cursor: &Cursor,
        wait: Duration,
        acked: i64,
    ) -> Result<PullResponse> {
        let query = [
            ("cursor", cursor.to_string()),
            ("wait", wait.as_millis().to_string()),
            ("limit", state.remote.limits.max_rows.to_string()),
        ];
        let site = self.site_id().to_string();
        let previous = self.previous_site_headers();
        state
            .call(
                options,
                acked,
                |http, remote| {
                    remote
                        .authorize(http.get(format!("{}/pull", remote.url)).query(&query))
                        .timeout(remote.timeout + wait)
                        .header(SCHEMA_HEADER, fingerprint_hex(fingerprint))
                        .header(SITE_HEADER, &site)
                        .header(crate::protocol::PREVIOUS_SITE_HEADER, &previous.0)
                        .header(crate::protocol::REUSED_SITE_HEADER, &previous.1)
                },
                |body| PullResponse::decode(body).map_err(|e| e.to_string()),
            )
            .await
    }

    /// Registers this database's tables on the server, creating the server
    /// database if needed: how an admin sets up a server database from the app's
    /// structs. Needs an API key ([`Remote::api_key`]); a user gets
    /// [`Error::Forbidden`]. Registering the same tables again changes nothing.
    pub async fn publish_schema(&self) -> Result<()> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let schemas = self.schemas().await?;
        let body = serde_json::to_vec(&schemas).map_err(|e| Error::Corrupt {
            details: format!("the schema does not serialise: {e}"),
        })?;
        state
            .call(
                &SyncOptions::default(),
                0,
                |http, remote| {
                    remote
                        .authorize(http.put(format!("{}/schema", remote.url)))
                        .header("content-type", "application/json")
                        .body(body.clone())
                },
                |_| Ok(()),
            )
            .await
    }

    /// Whether changes made here have not been acknowledged by the server yet.
    pub async fn has_unsent_changes(&self) -> Result<bool> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let mut cursor = self.remote_cursors(&state.remote.url).await?.0;
        let limits = BatchLimits {
            max_rows: 1_000,
            max_bytes: usize::MAX,
        };
        loop {
            let batch = self.export_batch(cursor, Scope::Local, limits).await?;
            if batch.rows > 0 {
                return Ok(true);
            }
            if batch.complete {
                return Ok(false);
            }
            cursor = batch.next;
        }
    }

    /// Starts over with the server: the next sync fetches every change again (and
    /// sends every local one again), which merging makes harmless. For a device
    /// that suspects it missed something, or a server restored from a backup.
    pub async fn reset_sync_version(&self) -> Result<()> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let _sending = state.sending.lock().await;
        let _receiving = state.receiving.lock().await;
        let url = state.remote.url.clone();
        self.call(move |w| {
            w.conn
                .execute("DELETE FROM _synced_remote WHERE url = ?1", [url])?;
            Ok(())
        })
        .await
    }

    /// Signs this device out: deletes every row of the synced tables and every
    /// cursor, keeps the tables and their tracking, and gives the database a new
    /// site id, so that the next user starts clean. Changes not sent yet are lost:
    /// call [`send_changes`](Self::send_changes) first to keep them.
    pub async fn logout(&self) -> Result<()> {
        let state = self.remote_state();
        let _sending = match &state {
            Some(state) => Some(state.sending.lock().await),
            None => None,
        };
        let _receiving = match &state {
            Some(state) => Some(state.receiving.lock().await),
            None => None,
        };
        let site = crate::id::SiteId::random().map_err(|e| Error::NoRandomness(e.to_string()))?;
        self.call(move |w| crate::db::wipe(w, site)).await?;
        self.set_site_ids(crate::db::SiteIds {
            current: site,
            previous: None,
        });
        Ok(())
    }

    /// Syncs in the background until the returned handle is dropped: local changes
    /// are sent as soon as they are committed, and a long-poll fetches others'
    /// changes as soon as the server has them. After a failure, or when nothing
    /// happens, it tries again every `interval`. A server that holds no
    /// long-polls (its answers come back empty at once) is polled at a pace that
    /// doubles from 50 ms up to `interval`. Needs a Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like `tokio::spawn`.
    pub fn auto_sync(&self, interval: Duration) -> AutoSync {
        let (events, receiver) = mpsc::channel(64);
        let sender = tokio::spawn(send_loop(self.clone(), interval, events.clone()));
        let fetcher = tokio::spawn(receive_loop(self.clone(), interval, events));
        AutoSync {
            events: receiver,
            tasks: vec![sender, fetcher],
        }
    }

    /// The (sent, received) cursors kept for a server.
    async fn remote_cursors(&self, url: &str) -> Result<(Cursor, Cursor)> {
        let url = url.to_owned();
        self.call(move |w| {
            use rusqlite::OptionalExtension;
            let stored: Option<(String, String)> = w
                .conn
                .query_row(
                    "SELECT sent, received FROM _synced_remote WHERE url = ?1",
                    [url],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let parse = |text: &str| {
                text.parse::<Cursor>().map_err(|e| Error::Corrupt {
                    details: format!("a stored sync cursor is unreadable: {e}"),
                })
            };
            match stored {
                None => Ok((Cursor::BEGINNING, Cursor::BEGINNING)),
                Some((sent, received)) => Ok((parse(&sent)?, parse(&received)?)),
            }
        })
        .await
    }
}

impl RemoteState {
    /// One request and the reading of its answer, tried again while the failure
    /// may pass: an unreachable server, a server error, or an answer that `read`
    /// finds damaged.
    ///
    /// `acked` is how far the server had acknowledged this database's changes
    /// before the request (its send cursor then; 0 if unknown): an answer
    /// saying it has received less shows that it lost changes.
    async fn call<T>(
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
                    tokio::time::sleep(retry_pause(options, attempt, retry_after)).await;
                    attempt += 1;
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
            self.seen
                .fetch_max(seen, std::sync::atomic::Ordering::Relaxed);
            if seen < acked {
                self.lost
                    .fetch_min(seen, std::sync::atomic::Ordering::Relaxed);
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
            401 => Error::Unauthorized { message },
            403 => Error::Forbidden { message },
            409 => Error::ServerSchemaMismatch { message },
            400..=499 if status != 408 && status != 429 => Error::Rejected { status, message },
            _ => Error::Server { status, message },
        })
    }
}

impl Remote {
    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
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

/// What a background sync ([`SyncDb::auto_sync`]) did.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncEvent {
    /// Local changes went to the server.
    Sent(SyncReport),
    /// Changes from elsewhere arrived and were applied: time to refresh views.
    Received(SyncReport),
    /// A sync failed; the loop tries again after its interval.
    Failed(Error),
}

/// A background sync; it stops when dropped. Read its events with
/// [`next`](Self::next) (events that are not read are dropped once 64 wait).
#[derive(Debug)]
pub struct AutoSync {
    events: mpsc::Receiver<SyncEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl AutoSync {
    /// The next event; `None` once the loop stopped.
    pub async fn next(&mut self) -> Option<SyncEvent> {
        self.events.recv().await
    }
}

impl Drop for AutoSync {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Sends local changes when a commit moves the version, and every `interval`.
async fn send_loop(db: SyncDb, interval: Duration, events: mpsc::Sender<SyncEvent>) {
    let mut versions = db.subscribe();
    loop {
        let event = match db.send_changes().await {
            Ok(report) if report.changes_sent > 0 => Some(SyncEvent::Sent(report)),
            Ok(_) => None,
            Err(e) => Some(SyncEvent::Failed(e)),
        };
        if let Some(event) = event {
            let _ = events.try_send(event);
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Waits on the server for changes (long-poll) and applies them, again and again.
///
/// An empty answer that comes back well before the wait it asked for means that
/// the server holds no pulls (its longest wait is shorter) or that something on
/// the way closes idle requests: the next pull then waits a pause first, doubling
/// from [`EMPTY_POLL_PAUSE`] up to `interval` while such answers go on, so that
/// the loop never spins.
async fn receive_loop(db: SyncDb, interval: Duration, events: mpsc::Sender<SyncEvent>) {
    let options = SyncOptions {
        wait: Duration::from_secs(25),
        ..SyncOptions::default()
    };
    let mut early = 0u32;
    loop {
        let asked = tokio::time::Instant::now();
        match db.check_changes_with(&options).await {
            Ok(report) if report.changes_received > 0 => {
                early = 0;
                let _ = events.try_send(SyncEvent::Received(report));
            }
            Ok(_) if asked.elapsed() < options.wait / 2 => {
                tokio::time::sleep(empty_poll_pause(early, interval)).await;
                early = early.saturating_add(1);
            }
            Ok(_) => early = 0,
            Err(e) => {
                let _ = events.try_send(SyncEvent::Failed(e));
                tokio::time::sleep(interval).await;
            }
        }
    }
}

/// The first pause after an empty answer that came back early (see
/// [`receive_loop`]).
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(50);

/// The pause before a pull after `early` empty answers in a row came back early
/// and another just did: doubling from [`EMPTY_POLL_PAUSE`], at most `interval`.
fn empty_poll_pause(early: u32, interval: Duration) -> Duration {
    EMPTY_POLL_PAUSE
        .saturating_mul(2u32.saturating_pow(early.min(16)))
        .min(interval.max(EMPTY_POLL_PAUSE))
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
    fn empty_polls_are_paced_doubling_up_to_the_interval() {
        let interval = Duration::from_secs(1);
        let pauses: Vec<u128> = (0..7)
            .map(|early| empty_poll_pause(early, interval).as_millis())
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            empty_poll_pause(u32::MAX, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(empty_poll_pause(0, Duration::ZERO), EMPTY_POLL_PAUSE);
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
        let slow = SyncOptions {
            backoff: Duration::from_secs(8),
            max_backoff: Duration::from_secs(8),
            ..SyncOptions::default()
        };
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
