//! A server's replica on PostgreSQL, for servers that scale out: several
//! server processes share one PostgreSQL database, and a backend reads and
//! writes the app's rows there with plain SQL.
//!
//! The merge is the same as everywhere (the module `merge`); only its
//! storage differs (see `storage`). A database is a PostgreSQL schema of its
//! name, laid out as `sql` says.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::TryStreamExt;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::export::{self, Batch, BatchLimits, Cursor, Gating, Scope};
use crate::filter::{MAX_WITHHELD, RowFilter, RowFilters};
use crate::id::SiteId;
use crate::merge::storage::Storage as _;
use crate::merge::{self, PushReport};
use crate::schema::TableSchema;
use crate::server::SharedBatch;
use crate::versions::{self, Catalog, Versions, View};
use crate::wire::Payload;

mod evolve;
mod held;
mod listen;
mod policy;
mod reads;
mod sql;
mod storage;
mod value;

/// The most connections one replica opened alone, or the databases of one
/// [`Directory`] together, keep open (besides each database's listener).
const MAX_CONNECTIONS: usize = 16;

/// An error of PostgreSQL or of the connection to it.
pub(crate) fn pg_error(error: tokio_postgres::Error) -> Error {
    Error::Postgres {
        code: error.code().map(|c| c.code().to_owned()),
        message: match error.as_db_error() {
            Some(db) => db.to_string(),
            None => error.to_string(),
        },
    }
}

/// Runs `statement` on the connection of `client`, prepared once while the
/// connection keeps it (see [`prepared`]), blocking on `runtime`: the rows
/// it returns.
pub(crate) fn query(
    client: &ClientWrapper,
    runtime: &Handle,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    runtime
        .block_on(async {
            let prepared = prepared(client, statement).await?;
            client.query(&prepared, params).await
        })
        .map_err(pg_error)
}

/// [`query`], each row given to `each` as it arrives: what `each` does
/// with one goes on while PostgreSQL reads the next.
pub(crate) fn query_each(
    client: &ClientWrapper,
    runtime: &Handle,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    mut each: impl FnMut(tokio_postgres::Row) -> Result<()>,
) -> Result<()> {
    runtime.block_on(async {
        let prepared = prepared(client, statement).await.map_err(pg_error)?;
        let rows = client
            .query_raw(&prepared, params.iter().copied())
            .await
            .map_err(pg_error)?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.try_next().await.map_err(pg_error)? {
            each(row)?;
        }
        Ok(())
    })
}

/// [`query`] for a statement that returns no rows: how many it changed.
pub(crate) fn execute(
    client: &ClientWrapper,
    runtime: &Handle,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    runtime
        .block_on(async {
            let prepared = prepared(client, statement).await?;
            client.execute(&prepared, params).await
        })
        .map_err(pg_error)
}

/// The most statements a connection keeps prepared: those of a few hundred
/// databases' pulls. Past it, the connection forgets them all and prepares
/// again what it runs next, so that a server of many databases does not
/// grow each connection's memory with each.
const PREPARED_PER_CONNECTION: usize = 1_024;

/// `statement` prepared on `client`, once while the connection keeps it
/// (see [`PREPARED_PER_CONNECTION`]).
async fn prepared(
    client: &ClientWrapper,
    statement: &str,
) -> std::result::Result<tokio_postgres::Statement, tokio_postgres::Error> {
    if client.statement_cache.size() >= PREPARED_PER_CONNECTION {
        client.statement_cache.clear();
    }
    client.prepare_cached(statement).await
}

/// A pooled connection, shared by a transaction's thread and the tasks it
/// sends writes to (see `storage`).
pub(crate) type Connection = Arc<Object>;

/// What every operation on one database needs to know of it.
#[derive(Debug)]
pub(crate) struct Db {
    /// Its PostgreSQL schema, quoted.
    schema: String,
    /// Its site id.
    site: SiteId,
    /// The lock space of its version locks (see [`sql::hold_floor`]).
    space: i64,
    /// What begins its transactions, its exports' and its publications' (see
    /// [`sql::begin`]).
    begin: [String; 3],
}

impl Db {
    /// The version every change at or below which is committed and visible to
    /// a snapshot taken after this returns (see [`sql::LOWEST_FLOOR`]).
    fn horizon(&self, client: &ClientWrapper, runtime: &Handle) -> Result<i64> {
        let (horizon, _) = runtime.block_on(self.horizon_async(client))?;
        Ok(horizon)
    }

    /// The horizon (see [`horizon`](Self::horizon)), and the last version
    /// given out.
    /// Both statements are prepared once a connection: every pull reads the
    /// horizon, and planning the read of `pg_locks` costs more than running
    /// it.
    async fn horizon_async(&self, client: &ClientWrapper) -> Result<(i64, i64)> {
        let last_version = prepared(client, &sql::last_version(&self.schema))
            .await
            .map_err(pg_error)?;
        let lowest_floor = prepared(client, sql::LOWEST_FLOOR)
            .await
            .map_err(pg_error)?;
        let last: i64 = client
            .query_one(&last_version, &[])
            .await
            .map_err(pg_error)?
            .get(0);
        let floor: Option<i64> = client
            .query_one(&lowest_floor, &[&self.space])
            .await
            .map_err(pg_error)?
            .get(0);
        Ok((floor.map_or(last, |floor| floor.min(last)), last))
    }

    /// The site id of site ordinal `ordinal`.
    fn site_of_ordinal(&self, client: &Client, runtime: &Handle, ordinal: i64) -> Result<SiteId> {
        let statement = format!(
            "SELECT site_id FROM {}._synced_sites WHERE ordinal = $1",
            self.schema
        );
        let bytes: Vec<u8> = runtime
            .block_on(client.query_opt(&statement, &[&ordinal]))
            .map_err(pg_error)?
            .map(|r| r.get(0))
            .ok_or_else(|| Error::Corrupt {
                details: format!("site ordinal {ordinal} is not in _synced_sites"),
            })?;
        crate::site::from_stored(&bytes).ok_or_else(|| Error::Corrupt {
            details: format!("site ordinal {ordinal} has {} bytes, not 16", bytes.len()),
        })
    }

    /// How far this database has received device site `device`; refused with
    /// [`Error::SiteReused`] if more than one file used it.
    fn served_site(&self, client: &ClientWrapper, runtime: &Handle, device: SiteId) -> Result<i64> {
        runtime.block_on(self.served_site_async(client, device))
    }

    /// [`served_site`](Self::served_site), in one prepared statement: every
    /// pull asks.
    async fn served_site_async(&self, client: &ClientWrapper, device: SiteId) -> Result<i64> {
        let statement = format!(
            "SELECT EXISTS (SELECT 1 FROM {0}._synced_reused WHERE site_id = $1), \
             (SELECT p.seen FROM {0}._synced_peers p JOIN {0}._synced_sites s \
             ON s.ordinal = p.site WHERE s.site_id = $1)",
            self.schema
        );
        let statement = prepared(client, &statement).await.map_err(pg_error)?;
        let row = client
            .query_one(&statement, &[&device.as_bytes().as_slice()])
            .await
            .map_err(pg_error)?;
        let (reused, seen): (bool, Option<i64>) = (row.get(0), row.get(1));
        if reused {
            return Err(Error::SiteReused {
                message: format!(
                    "site {device} was used by more than one file; the device needs a new site id"
                ),
            });
        }
        Ok(seen.unwrap_or(0))
    }

    /// The synced tables, with their numbers (which name their clocks).
    fn tables(&self, client: &Client, runtime: &Handle) -> Result<Vec<(i64, TableSchema)>> {
        let statement = format!(
            "SELECT id, name, descriptor FROM {}._synced_tables ORDER BY lower(name)",
            self.schema
        );
        let rows = runtime
            .block_on(client.query(&statement, &[]))
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let (id, name, descriptor): (i64, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                Ok((id, crate::tracking::parsed(&name, &descriptor)?))
            })
            .collect()
    }
}

/// A database on PostgreSQL as a sync server serves it: the counterpart of a
/// [`Replica`](crate::server::Replica) on SQLite. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgReplica {
    pool: Pool,
    db: Arc<Db>,
    /// The connection settings, for the connection that listens for commits.
    config: tokio_postgres::Config,
    /// What this process hears of the database's commits, once
    /// [`subscribe`](Self::subscribe)d to.
    heard: Arc<std::sync::OnceLock<Arc<listen::Heard>>>,
    /// The reads of the horizon that [`catch_up`](Self::catch_up) shares.
    catching_up: Arc<CatchingUp>,
    /// The tables and columns of the device served, if it does not know
    /// them all (see [`serving`](Self::serving)).
    view: Option<Arc<View>>,
}

/// The reads of a database's horizon begun and finished (see
/// [`PgReplica::catch_up`]), one at a time.
#[derive(Debug, Default)]
struct CatchingUp {
    /// How many reads began.
    begun: AtomicU64,
    /// The number of the last read finished (counting from 1), held while
    /// one is under way.
    last_read: tokio::sync::Mutex<u64>,
}

impl PgReplica {
    /// Opens database `name` in the PostgreSQL database that `config` (a
    /// connection string, e.g. `host=/run/postgresql dbname=app`) names,
    /// creating it if it does not exist: a schema `name`, with the runtime's
    /// tables in it.
    ///
    /// It has connections of its own; the databases a [`Directory`] opens
    /// share the directory's.
    pub async fn open(config: &str, name: &str) -> Result<Self> {
        let config: tokio_postgres::Config = config.parse().map_err(pg_error)?;
        let pool = pool(&config, MAX_CONNECTIONS)?;
        Self::open_on(pool, config, name).await
    }

    /// [`open`](Self::open), on the connections of `pool`.
    async fn open_on(pool: Pool, config: tokio_postgres::Config, name: &str) -> Result<Self> {
        if name.is_empty() || name.len() > sql::MAX_IDENTIFIER {
            return Err(Error::Postgres {
                code: None,
                message: format!(
                    "a database name has 1 to {} bytes: {name:?}",
                    sql::MAX_IDENTIFIER
                ),
            });
        }
        let schema = sql::ident(name);
        let client = pool.get().await.map_err(pool_error)?;
        let created = SiteId::random().map_err(|e| Error::NoRandomness(e.to_string()))?;
        client
            .batch_execute(&format!(
                "BEGIN; {} {} {} {}",
                sql::CREATION_LOCK,
                sql::CREATE_LOCK_SPACES,
                sql::create_meta(&schema),
                sql::create_tx_version(&schema)
            ))
            .await
            .map_err(pg_error)?;
        let setup = async {
            client
                .execute(
                    "INSERT INTO _synced.lock_spaces (schema_name) VALUES ($1) \
                     ON CONFLICT (schema_name) DO NOTHING",
                    &[&name],
                )
                .await?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {schema}._synced_state (id, site_id, lock_space) \
                         SELECT 1, $1, space FROM _synced.lock_spaces WHERE schema_name = $2 \
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    &[&created.as_bytes().as_slice(), &name],
                )
                .await?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {schema}._synced_sites (ordinal, site_id) \
                         SELECT 0, site_id FROM {schema}._synced_state ON CONFLICT DO NOTHING"
                    ),
                    &[],
                )
                .await?;
            let row = client
                .query_one(
                    &format!("SELECT site_id, lock_space FROM {schema}._synced_state"),
                    &[],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
            Ok::<(Vec<u8>, i64), tokio_postgres::Error>((row.get(0), row.get(1)))
        };
        let (site, space) = match setup.await {
            Ok(site) => site,
            Err(error) => {
                client.batch_execute("ROLLBACK").await.ok();
                return Err(pg_error(error));
            }
        };
        let site = crate::site::from_stored(&site).ok_or_else(|| Error::Corrupt {
            details: format!("the site id is {} bytes, not 16", site.len()),
        })?;
        drop(client);
        Ok(Self {
            pool,
            db: Arc::new(Db {
                site,
                space,
                begin: [
                    sql::begin(&schema),
                    sql::begin_export(&schema),
                    sql::begin_publishing(&schema),
                ],
                schema,
            }),
            config,
            heard: Arc::default(),
            catching_up: Arc::default(),
            view: None,
        })
    }

    /// This database as it serves a device of an app version that has the
    /// tables and columns of `view` only (see
    /// [`Replica::serving`](crate::server::Replica::serving)).
    pub fn serving(&self, view: impl Into<Arc<View>>) -> Self {
        Self {
            view: Some(view.into()),
            ..self.clone()
        }
    }

    /// This database's site id.
    pub fn site_id(&self) -> SiteId {
        self.db.site
    }

    /// The database's horizon as it moves: the version up to which every
    /// change is committed, which pulls read up to (see
    /// [`export_for_device`](Self::export_for_device)). It moves with every
    /// commit that took versions, made by any process on this database.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.heard().horizon.subscribe()
    }

    /// Reads the horizon from PostgreSQL and publishes it to
    /// [`subscribe`](Self::subscribe)'s receivers, without waiting to hear of
    /// the commits that moved it: a pull that starts once a push was
    /// acknowledged, by this process or any other, sees the version the push
    /// made. Returns the horizon.
    ///
    /// Many pulls catching up at once share reads: a caller takes the
    /// horizon of a read that began after it called, whoever asked for it.
    pub async fn catch_up(&self) -> Result<i64> {
        let arrived = self.catching_up.begun.load(Ordering::SeqCst);
        let mut last_read = self.catching_up.last_read.lock().await;
        if *last_read > arrived {
            return Ok(*self.heard().horizon.borrow());
        }
        let read = self.catching_up.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let client = self.pool.get().await.map_err(pool_error)?;
        let (horizon, _) = self.db.horizon_async(&client).await?;
        self.heard().reached(horizon);
        *last_read = read;
        Ok(horizon)
    }

    /// How many publications of app versions this process heard of, made
    /// by any process: the [`versions`](Self::versions) read before the
    /// last one may be out of date.
    pub fn publications(&self) -> watch::Receiver<u64> {
        self.heard().publications.subscribe()
    }

    fn heard(&self) -> &Arc<listen::Heard> {
        self.heard.get_or_init(|| {
            let (alive, gone) = tokio::sync::oneshot::channel();
            let heard = Arc::new(listen::Heard {
                horizon: watch::Sender::new(0),
                publications: watch::Sender::new(0),
                _alive: alive,
            });
            listen::spawn(
                self.config.clone(),
                self.pool.clone(),
                self.db.clone(),
                Arc::downgrade(&heard),
                gone,
            );
            heard
        })
    }

    /// Publishes an app version: the descriptors of its tables, each created
    /// as an ordinary table with its clock if this database does not have it
    /// yet, or evolved to it (see
    /// [`Replica::publish`](crate::server::Replica::publish)), all or none;
    /// returns the newest version's number. It waits for the database's
    /// transactions open, and the ones that begin meanwhile wait for it.
    pub async fn publish(&self, schemas: Vec<TableSchema>) -> Result<i64> {
        for schema in &schemas {
            schema.validate()?;
            if let Some(reason) = sql::names_too_long(schema) {
                return Err(Error::InvalidSchema(crate::schema::SchemaError {
                    table: schema.name.to_string(),
                    reason,
                }));
            }
        }
        // One publication at a time, whatever process publishes, and alone.
        self.transaction_beginning(Begin::Publishing, move |(client, runtime, db)| {
            let catalog = &mut PgCatalog {
                client,
                runtime,
                db,
            };
            let published = versions::publish_to(catalog, &schemas)?;
            // Heard by every process's listener once this commits.
            let channel = listen::channel(db);
            runtime
                .block_on(
                    client.execute("SELECT pg_notify($1, $2)", &[&channel, &listen::PUBLISHED]),
                )
                .map_err(pg_error)?;
            Ok(published)
        })
        .await
    }

    /// The app versions published, which devices are matched against (see
    /// [`Replica::versions`](crate::server::Replica::versions)).
    pub async fn versions(&self) -> Result<Versions> {
        self.read(move |(client, runtime, db), _| {
            versions::load_from(&mut PgCatalog {
                client,
                runtime,
                db,
            })
        })
        .await
    }

    /// The synced tables' descriptors.
    pub async fn schemas(&self) -> Result<Vec<TableSchema>> {
        self.read(move |(client, runtime, db), _| {
            Ok(db
                .tables(client, runtime)?
                .into_iter()
                .map(|(_, schema)| schema)
                .collect())
        })
        .await
    }

    /// Merges what device `device` pushed (see
    /// [`Replica::apply_push`](crate::server::Replica::apply_push)), in one
    /// transaction. Merges of other processes take versions at the same
    /// time: the report's `before` is the version before the push's first
    /// only when every version from there to its last is the push's and
    /// every version below them is committed; otherwise it is the report's
    /// `version` (the push's versions are not a range of its own).
    pub async fn apply_push(&self, payload: Payload, device: SiteId) -> Result<PushReport> {
        self.push(payload, device, None).await
    }

    /// [`apply_push`](Self::apply_push) with row-level security (see
    /// [`Replica::apply_push_checked`](crate::server::Replica::apply_push_checked)):
    /// a pushed row that does not pass its table's filter in `may_write`
    /// before and after its change is rejected, and the report's restore
    /// gives the device its state as `may_read` lets it see it.
    pub async fn apply_push_checked(
        &self,
        payload: Payload,
        device: SiteId,
        may_write: RowFilters,
        may_read: RowFilters,
    ) -> Result<PushReport> {
        self.push(payload, device, Some((may_write, may_read)))
            .await
    }

    /// [`apply_push_checked`](Self::apply_push_checked), or without
    /// `access` [`apply_push`](Self::apply_push).
    async fn push(
        &self,
        payload: Payload,
        device: SiteId,
        access: Option<(RowFilters, RowFilters)>,
    ) -> Result<PushReport> {
        let view = self.view.clone();
        let report = self
            .transaction(move |(client, runtime, db)| {
                let storage = &mut storage::PgStorage::new(client, runtime, db);
                let checked = access
                    .as_ref()
                    .map(|(write, read)| merge::Access { write, read });
                let report = merge::apply_push(storage, &payload, device, checked)?;
                let version = storage.last_version().unwrap_or(report.before);
                let before = storage.took_all_since().unwrap_or(version);
                let restore = if report.rejected.is_empty() {
                    Vec::new()
                } else {
                    let may_read = access.as_ref().map(|(_, read)| read);
                    let rejected = &report.rejected;
                    restore(
                        storage,
                        (client, runtime, db),
                        rejected,
                        device,
                        may_read,
                        view.as_deref(),
                        version,
                    )?
                };
                Ok(PushReport {
                    version,
                    before,
                    restore,
                    seen: db.served_site(client, runtime, device)?,
                    ..report
                })
            })
            .await?;
        // Waiting pulls here need not wait to hear of it; and unless a
        // transaction still open may yet commit a version below it, a device
        // whose pulls reached `before` may go on from `version`.
        let horizon = self.catch_up().await?;
        Ok(PushReport {
            before: if horizon >= report.version {
                report.before
            } else {
                report.version
            },
            ..report
        })
    }

    /// The changes after `from` not made by device site `device`, bounded by
    /// `limits`, of the tables and columns of the device served (see
    /// [`serving`](Self::serving)); with `filter` (a user's pull), only
    /// those of rows it lets the device read; and how far this database has
    /// received the device (see
    /// [`Replica::export_for_device`](crate::server::Replica::export_for_device)):
    /// read at this database's horizon, so that a version committed later
    /// below the cursor is never passed.
    ///
    /// A filtered pull reads the history from its cursor (a first one walks
    /// it all; on SQLite it walks what the reader may read instead), and
    /// records what it sent the reader in a transaction of its own (see
    /// `held`).
    pub async fn export_for_device(
        &self,
        device: SiteId,
        from: Cursor,
        limits: BatchLimits,
        filter: Option<RowFilters>,
    ) -> Result<(Batch, i64)> {
        let view = self.view.clone();
        let Some(filter) = filter else {
            return self
                .read(move |(client, runtime, db), upto| {
                    let seen = db.served_site(client, runtime, device)?;
                    let scope = Scope::Except(device);
                    let reads = &Exporting::new(client, runtime, db, upto, view.as_deref())?;
                    let (batch, ..) = reads.export(&from, scope, limits, None)?;
                    Ok((batch, seen))
                })
                .await;
        };
        let filter = Arc::new(filter);
        for _ in 0..ATTEMPTS {
            let (view, from, read_filter) = (view.clone(), from.clone(), Arc::clone(&filter));
            let (batch, seen, marks) = self
                .read(move |(client, runtime, db), upto| {
                    let seen = db.served_site(client, runtime, device)?;
                    let scope = Scope::Except(device);
                    let gating = Some(Gating::Reader(&read_filter, device));
                    let reads = &Exporting::new(client, runtime, db, upto, view.as_deref())?;
                    let (batch, marks, _) = reads.export(&from, scope, limits, gating)?;
                    Ok((batch, seen, marks))
                })
                .await?;
            if marks.is_empty() {
                return Ok((batch, seen));
            }
            let marks = Arc::new(marks);
            let recorded = self
                .transaction(move |(client, runtime, db)| {
                    let storage = &mut storage::PgStorage::new(client, runtime, db);
                    let reader = storage.site_ordinals(&[device])?[0];
                    held::lock_reader(client, runtime, db, reader)?;
                    // A push of the device committed since the export read:
                    // it may hold rows the marks say it does not.
                    if db.served_site(client, runtime, device)? != seen {
                        return Ok(false);
                    }
                    held::record(client, runtime, db, reader, &marks)?;
                    Ok(true)
                })
                .await?;
            if recorded {
                return Ok((batch, seen));
            }
        }
        // A conflict with the device's own pushes, which a later pull does
        // not meet: said as a serialization failure (see `Error::may_retry`).
        Err(Error::Postgres {
            code: Some("40001".into()),
            message: format!(
                "device {device} pushed during each of {ATTEMPTS} filtered pulls; it may pull again"
            ),
        })
    }

    /// The changes after `from` as every device that made none of them gets
    /// them (see [`Replica::export_shared`](crate::server::Replica::export_shared)).
    pub async fn export_shared(&self, from: Cursor, limits: BatchLimits) -> Result<Batch> {
        let view = self.view.clone();
        self.read(move |(client, runtime, db), upto| {
            let reads = &Exporting::new(client, runtime, db, upto, view.as_deref())?;
            let (batch, ..) = reads.export(&from, Scope::All, limits, None)?;
            Ok(batch)
        })
        .await
    }

    /// Like a filtered [`export_for_device`](Self::export_for_device) for
    /// every reader of `filter` at once (see
    /// [`Replica::export_shared_filtered`](crate::server::Replica::export_shared_filtered)):
    /// the batch after `from` as a reader that holds nothing would get it;
    /// `None` if it leaves out more than [`MAX_WITHHELD`] rows. Each reader
    /// then [takes](Self::take_shared) it, or exports on its own.
    pub async fn export_shared_filtered(
        &self,
        from: Cursor,
        limits: BatchLimits,
        filter: RowFilters,
    ) -> Result<Option<SharedBatch>> {
        let view = self.view.clone();
        self.read(move |(client, runtime, db), upto| {
            let reads = &Exporting::new(client, runtime, db, upto, view.as_deref())?;
            let gating = Some(Gating::Nobody(&filter));
            let (batch, marks, withheld) = reads.export(&from, Scope::All, limits, gating)?;
            Ok((withheld.len() <= MAX_WITHHELD).then(|| SharedBatch::new(batch, marks, withheld)))
        })
        .await
    }

    /// Which of `readers` take the batch each was given (see
    /// [`Replica::take_shared`](crate::server::Replica::take_shared)):
    /// those that hold and created none of the rows it left out; what each
    /// that takes it holds then is recorded, in one transaction.
    pub async fn take_shared(&self, readers: Vec<(Arc<SharedBatch>, SiteId)>) -> Result<Vec<bool>> {
        let readers = Arc::new(readers);
        self.transaction(move |(client, runtime, db)| held::take(client, runtime, db, &readers))
            .await
    }

    /// Checks that `filter` can judge the rows of `table` here: it must read
    /// nothing but the row it judges (see `policy`); anything else is
    /// [`Error::InvalidFilter`].
    pub async fn check_filter(&self, table: &str, filter: RowFilter) -> Result<()> {
        let schemas = self.schemas().await?;
        let schema = schemas
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(table))
            .ok_or_else(|| Error::InvalidFilter {
                table: table.to_owned(),
                message: "no such table is registered".into(),
            })?;
        policy::check(schema, &filter)
    }

    /// Binds a device's site id to its owner the first time it is seen, and
    /// tells whether `owner` is that site's owner (see
    /// [`Replica::claim_site`](crate::server::Replica::claim_site)).
    pub async fn claim_site(&self, site: SiteId, owner: &str) -> Result<bool> {
        if site == self.db.site {
            return Ok(false);
        }
        let owner = owner.to_owned();
        self.transaction(move |(client, runtime, db)| {
            let bytes = site.as_bytes().as_slice();
            runtime
                .block_on(async {
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {}._synced_site_owners (site_id, owner) \
                                 VALUES ($1, $2) ON CONFLICT (site_id) DO NOTHING",
                                db.schema
                            ),
                            &[&bytes, &owner],
                        )
                        .await?;
                    let bound: String = client
                        .query_one(
                            &format!(
                                "SELECT owner FROM {}._synced_site_owners WHERE site_id = $1",
                                db.schema
                            ),
                            &[&bytes],
                        )
                        .await?
                        .get(0);
                    Ok(bound == owner)
                })
                .map_err(pg_error)
        })
        .await
    }

    /// A device of `owner`'s left site id `from` for `to`, because another
    /// file used it too if `reused` (see
    /// [`Replica::site_renewed`](crate::server::Replica::site_renewed)):
    /// then `from` is refused from now on.
    pub async fn site_renewed(
        &self,
        from: SiteId,
        to: SiteId,
        owner: &str,
        reused: bool,
    ) -> Result<()> {
        if from == to || !reused {
            return Ok(());
        }
        let owner = owner.to_owned();
        self.transaction(move |(client, runtime, db)| {
            let bytes = from.as_bytes().as_slice();
            runtime
                .block_on(client.execute(
                    &format!(
                        "INSERT INTO {0}._synced_reused (site_id) \
                         SELECT site_id FROM {0}._synced_site_owners \
                         WHERE site_id = $1 AND owner = $2 ON CONFLICT DO NOTHING",
                        db.schema
                    ),
                    &[&bytes, &owner],
                ))
                .map_err(pg_error)?;
            Ok(())
        })
        .await
    }

    /// Remembers `site` as used by more than one file: its pushes and pulls
    /// are refused from now on.
    pub async fn mark_reused(&self, site: SiteId) -> Result<()> {
        self.transaction(move |(client, runtime, db)| {
            let bytes = site.as_bytes().as_slice();
            runtime
                .block_on(client.execute(
                    &format!(
                        "INSERT INTO {}._synced_reused (site_id) VALUES ($1) ON CONFLICT DO NOTHING",
                        db.schema
                    ),
                    &[&bytes],
                ))
                .map_err(pg_error)?;
            Ok(())
        })
        .await
    }

    /// How far this database has received device site `device` (see
    /// [`Replica::served_site`](crate::server::Replica::served_site)).
    pub async fn served_site(&self, device: SiteId) -> Result<i64> {
        // Outside a transaction: it needs no snapshot.
        let client = self.pool.get().await.map_err(pool_error)?;
        self.db.served_site_async(&client, device).await
    }

    /// Runs `work` in a read-only transaction on a pooled connection, on a
    /// blocking thread, given the horizon read just before it began (see
    /// [`Db::horizon`]).
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce((&Connection, &Handle, &Db), i64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let client = Arc::new(self.pool.get().await.map_err(pool_error)?);
        let db = self.db.clone();
        let runtime = Handle::current();
        tokio::task::spawn_blocking(move || {
            let upto = db.horizon(&client, &runtime)?;
            runtime
                .block_on(client.batch_execute(&db.begin[Begin::Export as usize]))
                .map_err(pg_error)?;
            let done = work((&client, &runtime, &db), upto);
            runtime.block_on(client.batch_execute("COMMIT")).ok();
            done
        })
        .await
        .map_err(|e| Error::Postgres {
            code: None,
            message: format!("the export's thread failed: {e}"),
        })?
    }

    /// Runs `work` in a transaction on a pooled connection, on a blocking
    /// thread: committed if it returns `Ok`, rolled back otherwise.
    async fn transaction<T: Send + 'static>(
        &self,
        work: impl Fn((&Connection, &Handle, &Db)) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.transaction_beginning(Begin::Transaction, work).await
    }

    /// [`transaction`](Self::transaction), begun as `begin` says.
    async fn transaction_beginning<T: Send + 'static>(
        &self,
        begin: Begin,
        work: impl Fn((&Connection, &Handle, &Db)) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let client = Arc::new(self.pool.get().await.map_err(pool_error)?);
        let db = self.db.clone();
        let runtime = Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut attempt = 1;
            loop {
                let done = runtime
                    .block_on(client.batch_execute(&db.begin[begin as usize]))
                    .map_err(pg_error)
                    .and_then(|()| work((&client, &runtime, &db)))
                    .and_then(|done| {
                        // PostgreSQL answers the COMMIT of a transaction a
                        // statement of which failed as it does a rollback,
                        // without an error: whether one failed is asked first,
                        // in the same round trip.
                        runtime
                            .block_on(client.batch_execute("SELECT 1; COMMIT"))
                            .map_err(pg_error)?;
                        Ok(done)
                    });
                match done {
                    Ok(done) => return Ok(done),
                    Err(error) => {
                        runtime.block_on(client.batch_execute("ROLLBACK")).ok();
                        // Two transactions that waited for each other: the
                        // one PostgreSQL chose to end goes again.
                        if attempt < ATTEMPTS && error.may_retry() {
                            attempt += 1;
                            continue;
                        }
                        return Err(error);
                    }
                }
            }
        })
        .await
        .map_err(|e| Error::Postgres {
            code: None,
            message: format!("the merge's thread failed: {e}"),
        })?
    }
}

/// How a transaction begins (see [`Db::begin`]).
#[derive(Debug, Clone, Copy)]
enum Begin {
    /// A merge's, or any other that writes.
    Transaction = 0,
    /// An export's.
    Export = 1,
    /// A publication's.
    Publishing = 2,
}

/// How many times a transaction that PostgreSQL ended for a deadlock or a
/// serialization failure is tried.
const ATTEMPTS: u32 = 5;

/// The longest name of a database on PostgreSQL, in bytes: PostgreSQL's
/// longest identifier (its schema's name).
pub const MAX_DATABASE_NAME: usize = sql::MAX_IDENTIFIER;

/// A pool of up to `size` connections made with `config`.
fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| Error::Postgres {
            code: None,
            message: e.to_string(),
        })
}

/// The databases of one PostgreSQL database (see [`PgReplica::open`]), and
/// the connections they share: a server of many databases keeps at most 16
/// open for them all (and one listener each), whatever their number, and a
/// request naming a database that is not open yet costs a query on one of
/// them, never a new connection.
#[derive(Debug)]
pub struct Directory {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl Directory {
    /// The directory of the PostgreSQL database `config` (a connection
    /// string) names; refused if it cannot be read.
    pub async fn open(config: &str) -> Result<Self> {
        let config: tokio_postgres::Config = config.parse().map_err(pg_error)?;
        let directory = Self {
            pool: pool(&config, MAX_CONNECTIONS)?,
            config,
        };
        directory.names().await?;
        Ok(directory)
    }

    /// Opens database `name` (see [`PgReplica::open`]) on the directory's
    /// connections.
    pub async fn replica(&self, name: &str) -> Result<PgReplica> {
        PgReplica::open_on(self.pool.clone(), self.config.clone(), name).await
    }

    /// The databases, sorted.
    pub async fn names(&self) -> Result<Vec<String>> {
        let listed = self
            .list(
                "SELECT schema_name FROM _synced.lock_spaces ORDER BY schema_name",
                &[],
            )
            .await?;
        Ok(listed.iter().map(|r| r.get(0)).collect())
    }

    /// Whether database `name` exists.
    pub async fn contains(&self, name: &str) -> Result<bool> {
        let statement = "SELECT schema_name FROM _synced.lock_spaces WHERE schema_name = $1";
        Ok(!self.list(statement, &[&name]).await?.is_empty())
    }

    async fn list(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        match client.query(statement, params).await {
            Ok(rows) => Ok(rows),
            // No database was ever created there.
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                    || e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(pg_error(e)),
        }
    }
}

/// An export's reads of a database, at its horizon, of the tables and
/// columns of a view.
struct Exporting<'a> {
    reads: reads::PgReads<'a>,
    tables: Vec<TableSchema>,
    view: Option<&'a View>,
}

impl<'a> Exporting<'a> {
    /// The reads of `db` at `upto`, in the transaction open on `client`, of
    /// the tables and columns of `view` (every one without it).
    fn new(
        client: &'a ClientWrapper,
        runtime: &'a Handle,
        db: &'a Db,
        upto: i64,
        view: Option<&'a View>,
    ) -> Result<Self> {
        let numbered = db.tables(client, runtime)?;
        let reads = reads::PgReads::new(client, runtime, db, upto, &numbered);
        let mut tables: Vec<TableSchema> = numbered.into_iter().map(|(_, schema)| schema).collect();
        if let Some(view) = view {
            tables = view.narrow(&tables);
        }
        Ok(Self {
            reads,
            tables,
            view,
        })
    }

    /// The batch after `from` (see [`export::export_gated`]), for the
    /// device's app version.
    fn export(
        &self,
        from: &Cursor,
        scope: Scope,
        limits: BatchLimits,
        gating: Option<Gating<'_>>,
    ) -> Result<export::Gated> {
        let (batch, marks, withheld) =
            export::export_gated(&self.reads, &self.tables, from, scope, limits, gating)?;
        Ok((versions::for_device(self.view, batch), marks, withheld))
    }
}

/// The payload that gives device `device` back this database's state of the
/// `rejected` rows of its push (see [`export::export_restore`]), as
/// `may_read` lets it see them, of the tables and columns of `view`; with
/// `may_read`, what it then holds is recorded at version `at`.
fn restore(
    storage: &mut storage::PgStorage<'_>,
    (client, runtime, db): (&ClientWrapper, &Handle, &Db),
    rejected: &[merge::Rejection],
    device: SiteId,
    may_read: Option<&RowFilters>,
    view: Option<&View>,
    at: i64,
) -> Result<Vec<u8>> {
    let exporting = Exporting::new(client, runtime, db, at, view)?;
    let rows = rejected.iter().map(|r| (r.table.as_str(), &r.pk[..]));
    let restored = export::export_restore(&exporting.reads, &exporting.tables, rows, may_read)?;
    if !restored.marks.is_empty() {
        let reader = storage.site_ordinals(&[device])?[0];
        held::restored(client, runtime, db, reader, &restored.marks, at)?;
    }
    Ok(restored.payload)
}

/// A database on PostgreSQL as a [`Catalog`].
struct PgCatalog<'a> {
    client: &'a Client,
    runtime: &'a Handle,
    db: &'a Db,
}

impl Catalog for PgCatalog<'_> {
    fn published(&mut self) -> Result<Vec<(i64, TableSchema)>> {
        let statement = format!(
            "SELECT version, descriptor FROM {}._synced_published ORDER BY version, tbl",
            self.db.schema
        );
        let rows = self
            .runtime
            .block_on(self.client.query(&statement, &[]))
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let version: i64 = row.get(0);
                Ok((
                    version,
                    versions::published_descriptor(version, row.get(1))?,
                ))
            })
            .collect()
    }

    fn tables(&mut self) -> Result<Vec<TableSchema>> {
        Ok(self
            .db
            .tables(self.client, self.runtime)?
            .into_iter()
            .map(|(_, schema)| schema)
            .collect())
    }

    fn record(&mut self, published: &[(i64, TableSchema)]) -> Result<()> {
        let statement = format!(
            "INSERT INTO {}._synced_published (version, tbl, descriptor) VALUES ($1, $2, $3)",
            self.db.schema
        );
        for (version, schema) in published {
            let descriptor = serde_json::to_string(schema).map_err(|e| Error::Corrupt {
                details: format!("a descriptor does not serialise: {e}"),
            })?;
            let name = schema.name.to_ascii_lowercase();
            self.runtime
                .block_on(
                    self.client
                        .execute(&statement, &[version, &name, &descriptor]),
                )
                .map_err(pg_error)?;
        }
        Ok(())
    }

    fn register(&mut self, schema: &TableSchema, stored: Option<&TableSchema>) -> Result<()> {
        let (client, runtime, db) = (self.client, self.runtime, self.db);
        if let Some(stored) = stored {
            let evolution = crate::evolve::plan(stored, schema)?;
            if !evolution.changes(stored) {
                return Ok(());
            }
            let number = db
                .tables(client, runtime)?
                .into_iter()
                .find(|(_, table)| table.name.eq_ignore_ascii_case(&stored.name))
                .map(|(number, _)| number)
                .ok_or_else(|| Error::NotRegistered {
                    table: stored.name.to_string(),
                })?;
            return evolve::apply(client, runtime, db, number, stored, &evolution);
        }
        let descriptor = serde_json::to_string(schema).map_err(|e| Error::SchemaMismatch {
            table: schema.name.to_string(),
            details: e.to_string(),
        })?;
        let statement = format!(
            "INSERT INTO {}._synced_tables (name, algorithm, descriptor) \
             VALUES ($1, $2, $3) RETURNING id",
            db.schema
        );
        let name: &str = &schema.name;
        let id: i64 = runtime
            .block_on(client.query_one(
                &statement,
                &[&name, &schema.algorithm.as_str(), &descriptor],
            ))
            .map_err(pg_error)?
            .get(0);
        let clock = sql::clock_table(&db.schema, id);
        let table = sql::TableSql::new(&db.schema, schema, &clock);
        let triggers = sql::triggers(&db.schema, schema, &clock);
        runtime
            .block_on(client.batch_execute(&format!("{}{triggers}", table.create)))
            .map_err(pg_error)
    }
}

/// An error of the connection pool.
fn pool_error(error: deadpool_postgres::PoolError) -> Error {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg_error(error),
        other => Error::Postgres {
            code: None,
            message: other.to_string(),
        },
    }
}
