//! Syncing through a server: the device's side of the [protocol](crate::protocol).
//!
//! [`SyncDb::sync`] sends the changes made here that the server has not
//! acknowledged yet, then fetches and applies the changes others made. Both go in
//! bounded batches; the cursor of each direction is stored in the database and moves
//! only once a batch is delivered (acknowledged by the server, or applied and
//! committed here), so an interruption at any point loses nothing and the next sync
//! resumes where the last one stopped. Sending a batch twice is harmless: merging
//! is idempotent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::field::Empty;

use crate::client::{ProgressFn, Remote, RemoteState, SyncOptions, SyncReport};
use crate::db::SyncDb;
use crate::error::{Error, Result};
use crate::export::{Batch, BatchLimits, Cursor, Scope};
use crate::id::SiteId;
use crate::identity;
use crate::merge::{self, ApplyReport, Rejection};
use crate::model::Synced;
use crate::protocol::{
    PullResponse, PushAck, SCHEMA_HEADER, SITE_HEADER, TABLES_HEADER, fingerprint_hex,
};
use crate::quarantine;
use crate::sql::{self, TableSql};
use crate::tracking;
use crate::value::Value;
use crate::worker::{SiteIds, Worker, write};

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
        self.set_remote_state(Arc::new(RemoteState::new(remote)));
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
        let url = self.remote_state().map(|state| state.remote.url.clone());
        let span = tracing::info_span!("sync", url = url.as_deref().unwrap_or_default());
        async {
            let mut report = self.sync_once(&options).await?;
            if report.site_id_renewed || report.server_lost_changes {
                // Under the new site id: what was not acknowledged, and everything
                // the server has.
                let again = self.sync_once(&options).await?;
                report.add(&again);
            }
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// One send and one fetch.
    async fn sync_once(&self, options: &SyncOptions) -> Result<SyncReport> {
        let mut options = options.clone();
        let mut report = self.send_changes_with(&options).await?;
        options.progress = options.progress.take().map(|each| {
            let sent = report.clone();
            Arc::new(move |r: &SyncReport| {
                let mut total = sent.clone();
                total.add(r);
                each(&total)
            }) as ProgressFn
        });
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
        let span = tracing::info_span!("send", changes = Empty, rejected = Empty, batches = Empty);
        self.answered(&state, span, self.send_batches(&state, options))
            .await
    }

    /// Runs the sends or fetches of `batches`, then acts on the server's
    /// answers (see [`after_answers`](Self::after_answers)), in `span`, which
    /// gets the counts of the report.
    async fn answered(
        &self,
        state: &RemoteState,
        span: tracing::Span,
        batches: impl Future<Output = Result<SyncReport>>,
    ) -> Result<SyncReport> {
        let report = async { self.after_answers(state, batches.await).await }
            .instrument(span.clone())
            .await?;
        span.record("changes", report.changes_sent + report.changes_received);
        span.record("applied", report.applied);
        span.record("rejected", report.rejected.len());
        span.record("batches", report.batches);
        Ok(report)
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
        if seen <= self.handle().published_version() || seen <= self.db_version().await? {
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
        identity::renew(self.handle(), true).await?;
        let url = state.remote.url.clone();
        self.call(move |w| {
            w.conn.execute(sql::FORGET_REMOTE, [url])?;
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
            w.conn
                .execute(sql::SET_SENT, [url, Cursor::at(seen).to_string()])?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// The batches of [`send_changes_with`](Self::send_changes_with): while
    /// the server merges one, the next is read here and the one before is
    /// recorded as acknowledged.
    async fn send_batches(
        &self,
        state: &Arc<RemoteState>,
        options: &SyncOptions,
    ) -> Result<SyncReport> {
        let state = Arc::clone(state);
        let _one_at_a_time = state.sending.lock().await;
        let url = state.remote.url.clone();
        let limits = state.remote.limits;
        let schema = self.schema_headers().await?;
        let cursor = self.remote_cursors(&url).await?.0;
        let acked = cursor.version();
        let mut batch = self.export_batch(cursor, Scope::Local, limits).await?;
        let mut report = SyncReport::default();
        let mut rows_sent = 0;
        // The batch the server acknowledged last, not recorded yet.
        let mut unrecorded: Option<Sent> = None;
        loop {
            let payload = bytes::Bytes::from(std::mem::take(&mut batch.payload));
            let bytes = payload.len() as u64;
            let push = async {
                if batch.rows == 0 {
                    return Ok::<_, Error>(None);
                }
                let span =
                    tracing::debug_span!("push", rows = batch.rows, bytes, rejected = Empty,);
                let ack = self
                    .push(&state, options, &schema, payload, acked)
                    .instrument(span.clone())
                    .await?;
                span.record("rejected", ack.rejected.len());
                Ok(Some(ack))
            };
            let next = async {
                if batch.complete {
                    return Ok::<_, Error>(None);
                }
                let next = self.export_batch(batch.next.clone(), Scope::Local, limits);
                next.await.map(Some)
            };
            // Recorded while the server merges this batch: the cursor moves
            // past the one before, which the server holds already.
            let record = async {
                match unrecorded.take() {
                    Some(sent) => {
                        self.record_sent(&url, sent, &mut report, &mut rows_sent, options)
                            .await
                    }
                    None => Ok(()),
                }
            };
            let (pushed, next, recorded) = tokio::join!(push, next, record);
            recorded?;
            let sent = Sent {
                ack: pushed?,
                next: batch.next.clone(),
                version: batch.version,
                rows: batch.rows,
                changes: batch.changes,
                bytes,
            };
            match next? {
                Some(next) => {
                    unrecorded = Some(sent);
                    batch = next;
                }
                None => {
                    self.record_sent(&url, sent, &mut report, &mut rows_sent, options)
                        .await?;
                    return Ok(report);
                }
            }
        }
    }

    /// Records a batch the server acknowledged: the cursor moves past it, and
    /// the rows the server refused are kept and take its state, in one
    /// transaction; then `report` counts it.
    async fn record_sent(
        &self,
        url: &str,
        sent: Sent,
        report: &mut SyncReport,
        rows_sent: &mut usize,
        options: &SyncOptions,
    ) -> Result<()> {
        let (rejected, restore, own) = match sent.ack {
            Some(ack) => (
                ack.rejected,
                ack.restore,
                ack.from.map(|from| (from, ack.version)),
            ),
            None => (Vec::new(), None, None),
        };
        let restore = match restore {
            Some(hex) => hex::decode(hex).map_err(|e| Error::Server {
                status: 200,
                message: format!("the push acknowledgement's restore is not hex: {e}"),
            })?,
            None => Vec::new(),
        };
        let rejected: Vec<Rejection> = rejected.iter().filter_map(|r| r.rejection()).collect();
        let (_, kept) = self
            .acknowledged(url, sent.next, rejected.clone(), restore, sent.version, own)
            .await?;
        if sent.rows > 0 {
            *rows_sent += sent.rows;
            report.changes_sent += sent.changes;
            report.rejected.extend(rejected);
            report.quarantined += kept;
            report.refused_all = report.rejected.len() >= *rows_sent;
            report.bytes_sent += sent.bytes;
            report.batches += 1;
        }
        if let Some(progress) = &options.progress {
            progress(report);
        }
        Ok(())
    }

    /// [`check_changes`](Self::check_changes) with options: with a
    /// [`wait`](field@SyncOptions::wait), the first request waits on the server until a
    /// change arrives or the wait is over.
    ///
    /// While one batch is merged here, the next one is fetched.
    pub async fn check_changes_with(&self, options: &SyncOptions) -> Result<SyncReport> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let span = tracing::info_span!("fetch", changes = Empty, applied = Empty, batches = Empty);
        self.answered(&state, span, self.fetch_batches(&state, options))
            .await
    }

    /// The batches of [`check_changes_with`](Self::check_changes_with).
    async fn fetch_batches(
        &self,
        state: &Arc<RemoteState>,
        options: &SyncOptions,
    ) -> Result<SyncReport> {
        let state = Arc::clone(state);
        let url = state.remote.url.clone();
        loop {
            let schema = self.schema_headers().await?;
            let site = self.site_id();
            let (sent, cursor) = self.remote_cursors(&url).await?;
            let acked = sent.version();
            // The first request (a long-poll may wait long) holds no lock: a
            // sync, a reset or a logout meanwhile goes ahead, and each batch
            // is checked against what they did before it is applied.
            let answer = self
                .pull(&state, options, &schema, &cursor, options.wait, acked)
                .await?;
            let _one_at_a_time = state.receiving.lock().await;
            let current = self
                .remote_state()
                .is_some_and(|now| Arc::ptr_eq(&now, &state));
            if !current {
                // The app replaced the remote: the answer is not for it.
                return Ok(SyncReport::default());
            }
            let asked = Asked { cursor, site };
            match self
                .apply_answers(&state, options, &schema, answer, asked, acked)
                .await?
            {
                Some(report) => return Ok(report),
                // The receive cursor went back meanwhile (a reset): ask again.
                None => continue,
            }
        }
    }

    /// Applies `answer`, asked as `asked` says, and the batches after it,
    /// each fetched while the one before is merged. `None` if the first was
    /// not applied because the receive cursor went back meanwhile. A site id
    /// that changed meanwhile (a logout, a renewal) ends the fetch: what was
    /// asked under the old one is not applied under the new one.
    async fn apply_answers(
        &self,
        state: &RemoteState,
        options: &SyncOptions,
        schema: &SchemaHeaders,
        mut answer: PullResponse,
        asked: Asked,
        acked: i64,
    ) -> Result<Option<SyncReport>> {
        let url = &state.remote.url;
        let mut cursor = Some(asked.cursor);
        let mut report = SyncReport::default();
        loop {
            let span = tracing::debug_span!("pull", bytes = answer.payload.len());
            let apply = self
                .apply_received(
                    url,
                    answer.payload.clone(),
                    answer.next.clone(),
                    schema.tables.clone(),
                    (cursor.take(), asked.site),
                )
                .instrument(span);
            let next = async {
                if answer.complete {
                    return Ok::<_, Error>(None);
                }
                let next = self.pull(state, options, schema, &answer.next, Duration::ZERO, acked);
                next.await.map(Some)
            };
            let (applied, next) = tokio::join!(apply, next);
            // Applied and committed with its cursor, in one transaction.
            let (applied, kept, moved) = match applied? {
                Received::Applied {
                    report,
                    kept,
                    cursor_moved,
                } => (report, kept, cursor_moved),
                Received::WentBack => return Ok(None),
                Received::OtherSite => return Ok(Some(report)),
            };
            report.changes_received += applied.applied + applied.ignored;
            report.applied += applied.applied;
            report.bytes_received += answer.payload.len() as u64;
            report.batches += 1;
            if let Some(progress) = &options.progress {
                progress(&report);
            }
            match next? {
                // The app registered more meanwhile, or another fetch moved
                // the cursor past this one's: the next fetch goes on from the
                // cursor stored.
                Some(_) if !kept || moved => return Ok(Some(report)),
                Some(next) => answer = next,
                None => return Ok(Some(report)),
            }
        }
    }

    /// Sends one payload; returns once the server acknowledged it, that is once
    /// its merge is committed there.
    async fn push(
        &self,
        state: &RemoteState,
        options: &SyncOptions,
        schema: &SchemaHeaders,
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
                        .header(SCHEMA_HEADER, &schema.whole)
                        .header(TABLES_HEADER, &schema.tables)
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

    /// The headers that tell the server this database's app version: the
    /// view fingerprint of each table, and (for servers of release 0.1.0) the
    /// whole schema's fingerprint.
    async fn schema_headers(&self) -> Result<SchemaHeaders> {
        let schemas = self.schemas().await?;
        Ok(SchemaHeaders {
            whole: fingerprint_hex(crate::schema::fingerprint(schemas.iter())),
            tables: crate::protocol::tables_header(&schemas),
        })
    }

    /// The [`PREVIOUS_SITE_HEADER`](crate::protocol::PREVIOUS_SITE_HEADER)
    /// and [`REUSED_SITE_HEADER`](crate::protocol::REUSED_SITE_HEADER)
    /// values: the site id this database had before, or empty; the same if it
    /// left it because another file used it too, or empty.
    fn previous_site_headers(&self) -> (String, String) {
        match self.handle().site_ids().previous {
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
        schema: &SchemaHeaders,
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
                        .header(SCHEMA_HEADER, &schema.whole)
                        .header(TABLES_HEADER, &schema.tables)
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
        let mut any = false;
        self.each_unsent(|batch| {
            any = batch.rows > 0;
            Ok(!any)
        })
        .await?;
        Ok(any)
    }

    /// What changes made here the server has not acknowledged yet: how many
    /// rows and changes, and how many rows per table. A UI shows it as
    /// "3 changes not synced yet"; [`has_unsent_changes`](Self::has_unsent_changes)
    /// answers sooner when all it needs is whether there are any, and
    /// [`unsent_rows`](Self::unsent_rows) lists the rows of one table.
    pub async fn unsent_changes(&self) -> Result<Unsent> {
        let mut unsent = Unsent::default();
        let mut tables = std::collections::BTreeMap::<String, usize>::new();
        self.each_unsent(|batch| {
            let payload = crate::wire::decode(&batch.payload)?;
            for row in &payload.rows {
                if let Some(table) = payload.tables.get(row.table as usize) {
                    *tables.entry(table.name.clone()).or_default() += 1;
                }
            }
            unsent.rows += batch.rows;
            unsent.changes += batch.changes;
            Ok(true)
        })
        .await?;
        unsent.tables = tables.into_iter().collect();
        Ok(unsent)
    }

    /// The rows of `T`'s table with changes made here that the server has not
    /// acknowledged yet, each as it is now (`None` once deleted), in the
    /// order they were last changed: for a UI that marks what is not synced.
    ///
    /// ```
    /// # use sync_runtime::{Remote, SyncDb, SyncId, Synced, Value};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let db = SyncDb::open_in_memory().await?.with_remote(Remote::new("http://127.0.0.1:9/todo"));
    /// db.register::<Todo>().await?;
    /// let todo = Todo { id: SyncId::new(), title: "milk".into() };
    /// db.insert(&todo).await?;
    /// let unsent = db.unsent_rows::<Todo>().await?;
    /// assert_eq!(unsent[0].key, [Value::from(todo.id)]);
    /// assert_eq!(unsent[0].row.as_ref(), Some(&todo));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsent_rows<T: Synced>(&self) -> Result<Vec<UnsentRow<T>>> {
        let mut keys = Vec::new();
        self.each_unsent(|batch| {
            let payload = crate::wire::decode(&batch.payload)?;
            let ours = payload
                .tables
                .iter()
                .position(|t| t.name.eq_ignore_ascii_case(&T::SCHEMA.name));
            keys.extend(
                payload
                    .rows
                    .into_iter()
                    .filter(|row| Some(row.table as usize) == ours)
                    .map(|row| (row.pk, row.columns.len())),
            );
            Ok(true)
        })
        .await?;
        self.handle()
            .read(move |conn, registry, _| {
                let table = crate::tx::table_of(registry, T::SCHEMA)?;
                keys.into_iter()
                    .map(|(key, changes)| {
                        let row = crate::tx::get(conn, table, |i| key[i].as_ref())?;
                        Ok(UnsentRow { key, row, changes })
                    })
                    .collect()
            })
            .await
    }

    /// Calls `each` with every batch of the changes made here that the
    /// server has not acknowledged, until it returns `false`.
    async fn each_unsent(&self, mut each: impl FnMut(Batch) -> Result<bool>) -> Result<()> {
        let state = self.remote_state().ok_or(Error::NoRemote)?;
        let mut cursor = self.remote_cursors(&state.remote.url).await?.0;
        let limits = BatchLimits::default().max_rows(1_000).max_bytes(usize::MAX);
        loop {
            let batch = self.export_batch(cursor, Scope::Local, limits).await?;
            let (complete, next) = (batch.complete, batch.next.clone());
            if (batch.rows > 0 && !each(batch)?) || complete {
                return Ok(());
            }
            cursor = next;
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
            w.conn.execute(sql::FORGET_REMOTE, [url])?;
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
        let site = SiteId::random().map_err(|e| Error::NoRandomness(e.to_string()))?;
        self.call(move |w| wipe(w, site)).await?;
        self.handle().set_site_ids(SiteIds {
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
    /// doubles from 50 ms up to `interval`. A [`sync`](Self::sync) or a
    /// [`logout`](Self::logout) meanwhile does not wait for the long-poll.
    /// Needs a Tokio runtime.
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
        self.call(move |w| stored_cursors(&w.conn, &url)).await
    }

    /// Takes the server's acknowledgement of a batch sent: keeps this device's
    /// state of the rows it refused (`rejected`, see [`crate::quarantine`]),
    /// gives them back the server's state (`restore`, see
    /// [`PushReport::restore`]; `exported_at` is this database's version when the
    /// batch was made) and stores the sent cursor after the batch, in one
    /// transaction, so that a refused row is never left behind nor lost; when
    /// the server's versions `own` hold nothing but the batch's changes (see
    /// [`PushAck::from`]), a receive cursor at the first moves past them.
    /// Returns what the restore did and how many rows were kept.
    pub(crate) async fn acknowledged(
        &self,
        url: &str,
        next: Cursor,
        rejected: Vec<Rejection>,
        restore: Vec<u8>,
        exported_at: i64,
        own: Option<(i64, i64)>,
    ) -> Result<(ApplyReport, usize)> {
        let url = url.to_owned();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.call(move |w| {
            write(w, |tx| {
                tx.set_versions();
                let kept = quarantine::keep(tx.conn(), &rejected, now_ms)?;
                let report = if restore.is_empty() {
                    ApplyReport::default()
                } else {
                    merge::restore(tx.conn(), &restore, exported_at)?
                };
                tx.conn()
                    .execute(sql::STORE_SENT, [&url, &next.to_string()])?;
                // Every change of the server's versions `from..=to` came in the
                // batch: pulls that had reached `from` go on from `to`.
                if let Some((from, to)) = own.filter(|(from, to)| from < to) {
                    tx.conn().execute(
                        sql::SKIP_RECEIVED,
                        [
                            url,
                            Cursor::at(from).to_string(),
                            Cursor::at(to).to_string(),
                        ],
                    )?;
                }
                Ok((report, kept))
            })
        })
        .await
    }

    /// Merges a batch received from a server and stores the cursor after it, in
    /// one transaction: the cursor never runs ahead of what was applied. The
    /// batch was asked for with the tables of `asked_with` (a
    /// [`TABLES_HEADER`] value): if the app registered more tables or columns
    /// since, the batch lacks them, and the cursor stays where that
    /// registration put it (the beginning) instead.
    ///
    /// Each batch was asked under a site id, and is not applied if the
    /// database has another now (a logout, a renewal). The first was asked
    /// from a cursor without holding the fetch lock: it is not applied if the
    /// receive cursor went back or elsewhere since (a reset); one that moved
    /// to a later version (another fetch, an acknowledgement that skips this
    /// device's own changes) lets it through and is kept.
    pub(crate) async fn apply_received(
        &self,
        url: &str,
        payload: Vec<u8>,
        mut next: Cursor,
        asked_with: String,
        (asked, site): (Option<Cursor>, SiteId),
    ) -> Result<Received> {
        let url = url.to_owned();
        self.call(move |w| {
            write(w, |tx| {
                if crate::site::own(tx.conn())? != site {
                    return Ok(Received::OtherSite);
                }
                let mut cursor_moved = false;
                if let Some(asked) = &asked {
                    let stored = stored_cursors(tx.conn(), &url)?.1;
                    if stored != *asked {
                        if stored.version() <= asked.version() {
                            return Ok(Received::WentBack);
                        }
                        cursor_moved = true;
                        if stored.version() > next.version() {
                            next = stored;
                        }
                    }
                }
                tx.set_versions();
                let report = merge::apply(tx.conn(), &payload, merge::Source::Server)?;
                let now =
                    crate::protocol::tables_header(&tracking::synced_tables(tx.conn(), false)?);
                let kept = now == asked_with;
                if kept {
                    tx.conn()
                        .execute(sql::STORE_RECEIVED, [url, next.to_string()])?;
                }
                Ok(Received::Applied {
                    report,
                    kept,
                    cursor_moved,
                })
            })
        })
        .await
    }
}

/// What [`SyncDb::apply_received`] did with a batch.
pub(crate) enum Received {
    /// Merged; `kept`: its cursor was stored (see `apply_received`);
    /// `cursor_moved`: another fetch or an acknowledgement had moved the
    /// receive cursor to a later version since the batch was asked for.
    Applied {
        report: ApplyReport,
        kept: bool,
        cursor_moved: bool,
    },
    /// Not applied: the receive cursor went back since it was asked for.
    WentBack,
    /// Not applied: the database has another site id than it was asked under.
    OtherSite,
}

/// What a fetch's first request was asked from: the receive cursor and the
/// site id at the time.
struct Asked {
    cursor: Cursor,
    site: SiteId,
}

/// The (sent, received) cursors kept for the server at `url`.
fn stored_cursors(conn: &rusqlite::Connection, url: &str) -> Result<(Cursor, Cursor)> {
    use rusqlite::OptionalExtension;
    let stored: Option<(String, String)> = conn
        .query_row(sql::REMOTE_CURSORS, [url], |r| Ok((r.get(0)?, r.get(1)?)))
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
}

/// Deletes every synced row, clock, cursor and peer, and takes `site` as this
/// database's new site id; tables and their tracking stay.
pub(crate) fn wipe(worker: &mut Worker, site: SiteId) -> Result<()> {
    write(worker, |tx| {
        tx.set_versions();
        // Tables emptied whole may not be reported row by row.
        tx.user_sql()
            .ran
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let conn = tx.conn();
        conn.execute(sql::BEGIN_APPLYING, [])?;
        for schema in tracking::synced_tables(conn, false)? {
            conn.execute_batch(&TableSql::new(&schema).wipe)?;
        }
        conn.execute_batch(sql::WIPE_META)?;
        let site = site.as_bytes().as_slice();
        conn.execute(sql::SET_OWN_SITE, [site])?;
        conn.execute(sql::SET_STATE_SITE_APPLIED, [site])?;
        Ok(())
    })
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

/// What [`SyncDb::unsent_changes`] counts: the changes made here that the
/// server has not acknowledged yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unsent {
    /// Rows with changes not sent, by table (in name order).
    pub tables: Vec<(String, usize)>,
    /// Rows with changes not sent, in all tables.
    pub rows: usize,
    /// The changes themselves: row existences (a creation, a delete) and
    /// column values.
    pub changes: usize,
}

/// A row with changes the server has not acknowledged yet (see
/// [`SyncDb::unsent_rows`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UnsentRow<T> {
    /// The row's key, one value per key column.
    pub key: Vec<Value>,
    /// The row as it is now; `None` once deleted (its delete is unsent).
    pub row: Option<T>,
    /// The column values not sent (0 for a delete or a row created with
    /// nothing but its key).
    pub changes: usize,
}

/// The values of [`SCHEMA_HEADER`] and [`TABLES_HEADER`] for a database.
struct SchemaHeaders {
    whole: String,
    tables: String,
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
    let options = SyncOptions::default().wait(Duration::from_secs(25));
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

/// A batch the server acknowledged, to be recorded here.
struct Sent {
    /// The server's answer; none for a batch without rows, not sent.
    ack: Option<PushAck>,
    /// The cursor after the batch.
    next: Cursor,
    /// This database's version when the batch was read.
    version: i64,
    rows: usize,
    changes: usize,
    bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
