//! The HTTP API: routes, handlers and the layers around them.
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `GET /health` | anyone | `{"status":"ok"}` |
//! | `POST /v1/db/{name}/push` | API key or JWT | merges the payload in the body; replies with a [`PushAck`] once committed |
//! | `GET /v1/db/{name}/pull?cursor=&wait=&limit=` | API key or JWT | the changes after `cursor` not made by the caller's site, as a [`PullResponse`](protocol::PullResponse); waits up to `wait` ms for one, or gets 429 when too many pulls wait already ([`waiting`](crate::waiting)) |
//! | `GET /v1/db/{name}/schema` | API key or JWT | the registered tables, a JSON array of [`TableSchema`] |
//! | `PUT /v1/db/{name}/schema` | API key | publishes an app version with the tables in the body (a JSON array), creating the database if needed |
//!
//! Push and pull carry the fingerprints of the device's tables in the
//! `synced-tables` header (a device of release 0.1.0 sends its whole schema's
//! fingerprint in `synced-schema` instead): the device is served the tables and
//! columns of its app version, and gets 409 when no published version from the
//! oldest supported has them. They carry the device's site id in
//! `synced-site` (its own changes are left out of pulls; 403 if the site belongs to
//! another caller). Every error has a JSON
//! [`ErrorBody`](protocol::ErrorBody).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::HeaderName;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use sync_runtime::protocol::{
    self, PushAck, SCHEMA_HEADER, SEEN_HEADER, SITE_HEADER, TABLES_HEADER,
};
use sync_runtime::server::{RowFilters, View};
use sync_runtime::wire::{self, Payload};
use sync_runtime::{BatchLimits, Cursor, SiteId, TableSchema};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{Authenticator, Principal};
use crate::config::Limits;
use crate::error::{Error, Result, error_response};
use crate::fanout::{Answer, Fanout};
use crate::policy::Policies;
use crate::store::{Database, Store, bad_database_name, valid_database_name};
use crate::views::{Sent, Views};
use crate::waiting::{WaitingCaps, WaitingPulls, open_files_limit};

/// What every handler shares: the store, the authenticator, the limits, the
/// waiting pulls with their caps, and the shutdown signal that wakes long-polls.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    auth: Authenticator,
    limits: Limits,
    /// Row-level security by database; a database not listed has every table
    /// closed to users.
    policies: HashMap<String, Policies>,
    shutdown: watch::Sender<bool>,
    /// Pulls waiting for changes right now, and their caps.
    waiting: WaitingPulls,
    /// Pull requests received since the start.
    pulls: std::sync::atomic::AtomicU64,
    /// The answers that pulls share.
    fanout: Fanout,
    /// The app version each device is served, by its header.
    views: Views,
}

impl AppState {
    /// The state of a server with these parts. The caps on waiting pulls are
    /// those of `limits`, lowered to fit the open-file limit in force now
    /// ([`WaitingCaps::new`]).
    pub fn new(
        store: Arc<dyn Store>,
        auth: Authenticator,
        limits: Limits,
        policies: HashMap<String, Policies>,
    ) -> Self {
        let waiting = WaitingPulls::new(WaitingCaps::new(&limits, open_files_limit()));
        Self {
            shared: Arc::new(Shared {
                store,
                auth,
                limits,
                policies,
                shutdown: watch::Sender::new(false),
                waiting,
                pulls: std::sync::atomic::AtomicU64::new(0),
                fanout: Fanout::default(),
                views: Views::default(),
            }),
        }
    }

    /// The row-level security of a database.
    pub fn policies(&self, database: &str) -> &Policies {
        static CLOSED: std::sync::OnceLock<Policies> = std::sync::OnceLock::new();
        self.shared
            .policies
            .get(database)
            .unwrap_or_else(|| CLOSED.get_or_init(Policies::default))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The limits requests are held to.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// How many pull requests the server has received since it started, answered
    /// or refused: with [`waiting_pulls`](Self::waiting_pulls), what a monitor
    /// reads to see how often devices poll.
    pub fn pulls_received(&self) -> u64 {
        self.shared.pulls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many pulls are waiting for changes (long-polls) right now.
    pub fn waiting_pulls(&self) -> usize {
        self.shared.waiting.count()
    }

    /// The caps on waiting pulls in force: the configured ones, lowered to fit
    /// the open-file limit.
    pub fn waiting_caps(&self) -> WaitingCaps {
        self.shared.waiting.caps()
    }

    /// Starts shutting down: waiting pulls return what they have now.
    pub fn shut_down(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// The database `name`, for `caller`: 400 for an invalid name, 403 for a
    /// token meant for another database, 404 if it does not exist, 503 if its
    /// file is damaged.
    async fn database(&self, name: &str, caller: &Principal) -> Result<Arc<dyn Database>> {
        check_name(name)?;
        if !self.policies(name).admits(caller) {
            return Err(Error::Forbidden(format!(
                "this token is not meant for database `{name}`: its `aud` claim does not name \
                 the database's audience"
            )));
        }
        self.shared
            .store
            .database(name)
            .await?
            .ok_or_else(|| Error::DatabaseNotFound(name.to_owned()))
    }
}

/// The server's routes with their layers: authentication on `/v1`, the body limit,
/// the request timeout, JSON bodies for every error, and request tracing.
pub fn router(state: AppState) -> Router {
    let limits = state.limits().clone();
    let api = Router::new()
        .route("/v1/db/{name}/push", post(push))
        .route("/v1/db/{name}/pull", get(pull))
        .route("/v1/db/{name}/schema", get(get_schema).put(put_schema));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.total_timeout(),
        ))
        // A plain function of the response: no future is boxed per request.
        .layer(tower::util::MapResponseLayer::new(fill_error_body))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The caller of a request to `/v1`, authenticated by its credentials before
/// anything else of the request is read: without valid ones, the request is
/// refused (401).
struct Caller(Arc<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        state.shared.auth.caller(&parts.headers).map(Caller)
    }
}

/// Gives an [`ErrorBody`](protocol::ErrorBody) to the error responses made
/// outside the handlers (a timeout, a method not allowed).
fn fill_error_body(response: Response) -> Response {
    use axum::body::HttpBody;
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || response.body().size_hint().exact() != Some(0) {
        return response;
    }
    let message = match status {
        StatusCode::SERVICE_UNAVAILABLE => "the request took longer than the server allows".into(),
        StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take this method".into(),
        other => other.canonical_reason().unwrap_or("error").to_owned(),
    };
    error_response(status, Error::code(status), message)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn no_route(request: Request) -> Error {
    Error::RouteNotFound(request.uri().path().to_owned())
}

async fn push(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let db = state.database(&name, &caller).await?;
    let body = body.map_err(|rejection| body_error(&rejection, state.limits()))?;
    let policies = state.policies(&name);
    let view = device_view(&state, &*db, &name, &headers, policies.oldest_version()).await?;
    let site = device_site(&*db, &caller, &headers).await?;
    let bytes = body.len();
    let payload = decode_push(body, state.limits().inflated_limit()).await?;
    let access = policies.push_access(&caller);
    let rows = payload.rows.len();
    let (ack, seen) = db.push(payload, site, access, view).await?;
    if rows > 0 && ack.rejected.len() == rows {
        // A device whose every write is refused keeps them in quarantine; its
        // user, or the operator, needs to know.
        let closed = policies.tables().next().is_none();
        tracing::warn!(
            database = %name,
            caller = %caller,
            rows,
            reason = ack.rejected.first().map_or("", |r| r.reason.as_str()),
            "every row of a push was refused{}",
            if closed {
                ": the database has no policies for users, so its tables are closed to them"
            } else {
                ""
            }
        );
    }
    tracing::debug!(
        database = %name,
        caller = %caller,
        bytes,
        applied = ack.applied,
        ignored = ack.ignored,
        version = ack.version,
        rejected = ack.rejected.len(),
        "push merged"
    );
    Ok(([(SEEN_HEADER, seen.to_string())], Json::<PushAck>(ack)).into_response())
}

/// The most bytes a pushed body may hold, and inflate to, to be decoded on the
/// request's own task rather than on the blocking pool.
const INLINE_DECODE: u32 = 16 * 1024;

/// Decodes a pushed payload whose body may inflate to `limit` bytes, on the
/// blocking pool: never on a database's thread, where a costly body would hold
/// up every device of that database.
async fn decode_push(body: Bytes, limit: usize) -> Result<Payload> {
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    // A small body that says it inflates to little is decoded here, within
    // that little: its cost is the size of a few rows, less than the trip to
    // the pool.
    let inflates_to = body
        .get(20..24)
        .map(|n| u32::from_le_bytes([n[0], n[1], n[2], n[3]]));
    if body.len() <= INLINE_DECODE as usize && inflates_to.is_some_and(|n| n <= INLINE_DECODE) {
        return wire::decode_within(&body, limit.min(INLINE_DECODE))
            .map_err(|e| Error::Runtime(e.into()));
    }
    tokio::task::spawn_blocking(move || wire::decode_within(&body, limit))
        .await
        // The task is never cancelled: it can only have panicked, which goes on.
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| Error::Runtime(e.into()))
}

/// The query of a pull.
#[derive(Debug, Deserialize)]
struct PullQuery {
    /// Where to continue (the `next` of the previous pull); the beginning if absent.
    cursor: Option<String>,
    /// How long to wait for a change when there is none, in milliseconds.
    wait: Option<u64>,
    /// The most rows to return.
    limit: Option<usize>,
}

async fn pull(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PullQuery>, QueryRejection>,
) -> Result<Response> {
    state
        .shared
        .pulls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = state.database(&name, &caller).await?;
    let oldest = state.policies(&name).oldest_version();
    let view = device_view(&state, &*db, &name, &headers, oldest).await?;
    let site = device_site(&*db, &caller, &headers).await?;
    let Query(query) =
        query.map_err(|e| Error::BadRequest(format!("bad pull query: {}", e.body_text())))?;
    let from = match query.cursor.as_deref() {
        None | Some("") => Cursor::BEGINNING,
        Some(text) => text
            .parse::<Cursor>()
            .map_err(|e| Error::BadRequest(format!("the cursor {text:?} is not valid: {e}")))?,
    };
    let limits = state.limits();
    let wait = Duration::from_millis(query.wait.unwrap_or(0)).min(limits.max_wait);
    let max_rows = query
        .limit
        .unwrap_or(limits.max_batch_rows)
        .clamp(1, limits.max_batch_rows);
    let batch_limits = BatchLimits::default()
        .max_rows(max_rows)
        .max_bytes(limits.max_batch_bytes);
    let filter = state
        .policies(&name)
        .read_filter(&caller)
        .filter(|filter| !filter.allows_everything())
        .map(Arc::new);
    let seen = db.served_site(site).await?;
    let changes = Changes {
        state: &state,
        name: &name,
        db: &*db,
        site,
        limits: batch_limits,
        filter,
        view,
    };
    let answer = wait_for_changes(&state, &caller, &changes, from, wait)
        .await
        .inspect_err(|e| {
            if matches!(e, Error::TooManyWaitingPulls { .. }) {
                tracing::debug!(database = %name, caller = %caller, "long-poll refused: {e}");
            }
        })?;
    tracing::debug!(database = %name, rows = answer.rows, next = %answer.next, "pull served");
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_owned()),
            (HeaderName::from_static(SEEN_HEADER), seen.to_string()),
        ],
        answer.body.clone(),
    )
        .into_response())
}

/// What a pull reads: the changes of database `name` not made by `site`, that
/// `filter` lets through, in batches of `limits`, of the tables and columns of
/// `view`.
struct Changes<'a> {
    state: &'a AppState,
    name: &'a str,
    db: &'a dyn Database,
    site: SiteId,
    limits: BatchLimits,
    filter: Option<Arc<RowFilters>>,
    view: Arc<View>,
}

impl Changes<'_> {
    /// The answer after `from`, for a pull that saw the database at
    /// `version`: the one the pulls asking the same share
    /// ([`fanout`](crate::fanout)), unless it carries changes of this
    /// device's or, under a filter, the device does not take it; otherwise
    /// one of its own.
    async fn after(&self, from: &Cursor, version: i64) -> Result<Arc<Answer>> {
        let fanout = &self.state.shared.fanout;
        match &self.filter {
            None => {
                let shared = fanout
                    .answer(self.name, self.db, version, from, self.limits, &self.view)
                    .await?;
                if !shared.sites.contains(&self.site) {
                    return Ok(shared);
                }
            }
            Some(filter) => {
                let (name, db, limits, view) = (self.name, self.db, self.limits, &self.view);
                let shared = fanout
                    .answer_filtered(name, db, version, from, limits, view, filter)
                    .await?;
                if let Some(taken) = &shared.filtered
                    && !shared.sites.contains(&self.site)
                    && self.db.take_shared(Arc::clone(taken), self.site).await?
                {
                    return Ok(shared);
                }
            }
        }
        let (batch, _seen) = self
            .db
            .pull(
                from.clone(),
                self.site,
                self.limits,
                self.filter.as_deref().cloned(),
                self.view.clone(),
            )
            .await?;
        Ok(Arc::new(Answer::new(batch)))
    }
}

/// The answer of the changes after `from`; when there are none yet, waits for
/// the database's version to move (or the wait to end, or the server to shut
/// down) and looks again. The wait takes one of the server's waiting slots, or
/// is refused (429) when `caller` or the server has none left.
async fn wait_for_changes(
    state: &AppState,
    caller: &Principal,
    changes: &Changes<'_>,
    mut from: Cursor,
    wait: Duration,
) -> Result<Arc<Answer>> {
    let deadline = Instant::now() + wait;
    let mut shutdown = state.shared.shutdown.subscribe();
    let mut versions = changes.db.subscribe();
    changes.db.catch_up().await?;
    let mut slot = None;
    loop {
        // Marked seen before the export: a commit after this point either is in
        // the export or wakes the wait below.
        let version = *versions.borrow_and_update();
        let answer = changes.after(&from, version).await?;
        if !answer.nothing_new() || wait.is_zero() || *shutdown.borrow() {
            return Ok(answer);
        }
        // What was skipped (the caller's own changes) need not be read again.
        from = answer.next.clone();
        if slot.is_none() {
            slot = Some(state.shared.waiting.try_start(caller)?);
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return Ok(answer) },
            () = tokio::time::sleep_until(deadline) => return Ok(answer),
            _ = shutdown.changed() => return Ok(answer),
        }
    }
}

async fn get_schema(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<TableSchema>>> {
    let db = state.database(&name, &caller).await?;
    Ok(Json(db.schemas().await?))
}

async fn put_schema(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<TableSchema>>> {
    if !caller.is_admin() {
        return Err(Error::Forbidden(
            "only an API key may change a database's schema".into(),
        ));
    }
    check_name(&name)?;
    let body = body.map_err(|rejection| body_error(&rejection, state.limits()))?;
    let schemas: Vec<TableSchema> = serde_json::from_slice(&body).map_err(|e| {
        Error::BadRequest(format!(
            "the body is not a JSON array of table schemas: {e}"
        ))
    })?;
    for schema in &schemas {
        schema
            .validate()
            .map_err(|e| Error::Runtime(sync_runtime::Error::InvalidSchema(e)))?;
    }
    let db = state.store().create(&name).await?;
    let version = db.publish(schemas).await?;
    tracing::info!(database = %name, caller = %caller, version, "schema published");
    Ok(Json(db.schemas().await?))
}

fn check_name(name: &str) -> Result<()> {
    if valid_database_name(name) {
        Ok(())
    } else {
        Err(Error::BadRequest(bad_database_name(name)))
    }
}

/// The tables and columns the device's app version has, from its
/// `synced-tables` header (or, from a device of release 0.1.0, its
/// `synced-schema` header): 409 when no published version from the oldest
/// the database supports has them.
async fn device_view(
    state: &AppState,
    db: &dyn Database,
    name: &str,
    headers: &HeaderMap,
    oldest: i64,
) -> Result<Arc<View>> {
    let versions = db.versions().await?;
    let sent = if headers.contains_key(TABLES_HEADER) {
        Sent::Tables(required_header(headers, TABLES_HEADER)?)
    } else {
        Sent::Schema(required_header(headers, SCHEMA_HEADER)?)
    };
    state.shared.views.resolve(name, &versions, oldest, sent)
}

/// The one value of header `name`.
fn required_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values
        .next()
        .ok_or_else(|| Error::BadRequest(format!("the {name} header is missing")))?;
    if values.next().is_some() {
        return Err(Error::BadRequest(format!(
            "the {name} header is sent more than once"
        )));
    }
    value
        .to_str()
        .map_err(|_| Error::BadRequest(format!("the {name} header is not text")))
}

/// The caller's device: its `synced-site`, which belongs to the first caller that
/// used it: a user, or the holders of API keys. Another caller presenting it gets
/// 403, so that no one can pose as another's device (and have the changes it
/// sends left out of that device's pulls).
async fn device_site(db: &dyn Database, caller: &Principal, headers: &HeaderMap) -> Result<SiteId> {
    let site = parse_site(required_header(headers, SITE_HEADER)?)?;
    let owner = match caller {
        Principal::Admin => "key".to_owned(),
        Principal::User { id, .. } => format!("user:{id}"),
    };
    if !db.claim_site(site, &owner).await? {
        return Err(Error::Forbidden(
            "this device's site id belongs to another user or to this server; a device signs \
             in as one user (logout gives it a new site id)"
                .into(),
        ));
    }
    // A device that took a new site id keeps what the server knew it holds,
    // and one that left it because another file used it too has it remembered.
    let optional_site = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<SiteId>().ok())
    };
    if let Some(previous) = optional_site(protocol::PREVIOUS_SITE_HEADER) {
        let reused = optional_site(protocol::REUSED_SITE_HEADER) == Some(previous);
        db.site_renewed(previous, site, &owner, reused).await?;
    }
    Ok(site)
}

fn parse_site(text: &str) -> Result<SiteId> {
    text.trim().parse().map_err(|_| {
        Error::BadRequest(format!(
            "the {SITE_HEADER} header must be a site id (32 hex digits)"
        ))
    })
}

/// A body that could not be read: too large (413) or cut off (400).
fn body_error(rejection: &BytesRejection, limits: &Limits) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge {
            limit: limits.max_body_bytes,
        }
    } else {
        Error::BadRequest(format!(
            "the request body could not be read: {}",
            rejection.body_text()
        ))
    }
}
