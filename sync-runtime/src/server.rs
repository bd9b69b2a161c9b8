//! What a sync server or a relay does with a database: the operations that
//! serve other replicas' devices, on a [`Replica`] view of a [`SyncDb`].
//!
//! An app needs none of this: it syncs with [`SyncDb::sync`] or, peer to peer,
//! with [`SyncDb::export_changes`] and [`SyncDb::apply_changes`]. A server
//! keeps a [`Replica`] of each database it serves and merges what devices push
//! into it with the same merge engine, checking who sends what and, with
//! [`RowFilters`], what each user may read and write.

use std::sync::Arc;

use rusqlite::Connection;

use crate::change::{Reads as _, SqliteReads};
use crate::db::SyncDb;
use crate::error::{Error, Result};
use crate::export::{self, Batch, BatchLimits, Cursor, Scope, Since};
use crate::guard::{Reads, guard};
use crate::id::SiteId;
use crate::merge;
use crate::schema::TableSchema;
use crate::site;
use crate::sql;
use crate::tracking;
use crate::tx::Registered;
use crate::wire::Payload;
use crate::worker::{Worker, write};

use crate::filter::{self, NewMark, Withheld};
pub use crate::filter::{MAX_WITHHELD, RowFilter, RowFilters};
pub use crate::merge::PushReport;
pub use crate::versions::{Unserved, Versions, View};

/// A filtered batch for every reader of one filter (see
/// [`Replica::export_shared_filtered`]): the rows it may read, whole.
#[derive(Debug)]
pub struct SharedBatch {
    /// The batch.
    pub batch: Batch,
    marks: Vec<NewMark>,
    withheld: Vec<Withheld>,
}

impl SharedBatch {
    /// The batch of an export for no reader in particular, the marks it sets
    /// and the rows it left out (see [`export::export_gated`]).
    pub(crate) fn new(batch: Batch, marks: Vec<NewMark>, withheld: Vec<Withheld>) -> Self {
        Self {
            batch,
            marks,
            withheld,
        }
    }

    /// The marks a reader that takes it is recorded with, and the rows it
    /// left out.
    #[cfg(feature = "postgres")]
    pub(crate) fn parts(&self) -> (&[NewMark], &[Withheld]) {
        (&self.marks, &self.withheld)
    }

    /// How many rows it left out: a reader that holds or created one of them
    /// needs an export of its own, and taking the batch checks each.
    pub fn withheld(&self) -> usize {
        self.withheld.len()
    }

    /// How many rows a reader that takes it is recorded as holding.
    pub fn marks(&self) -> usize {
        self.marks.len()
    }

    /// About how many bytes of memory it holds beside its batch's payload.
    pub fn bytes(&self) -> usize {
        let marks = self.marks.iter().map(NewMark::bytes);
        let withheld = self.withheld.iter().map(Withheld::bytes);
        std::mem::size_of::<Self>() + marks.chain(withheld).sum::<usize>()
    }

    /// Whether a reader takes it without a look at what it holds and without
    /// a record: it sends no row and left none out.
    pub fn taken_by_all(&self) -> bool {
        self.marks.is_empty() && self.withheld.is_empty()
    }
}

/// A database as a sync server or relay serves it: the operations only a
/// server or relay needs, on the same database as its [`SyncDb`] (a clone of
/// the handle; cheap).
///
/// ```
/// use sync_runtime::server::Replica;
/// use sync_runtime::{Since, SyncDb};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sync_runtime::Result<()> {
/// let device = SyncDb::open_in_memory().await?;
/// let server = Replica::new(SyncDb::open_in_memory().await?);
/// let payload = device.export_local_changes(Since::Beginning).await?;
/// let decoded = sync_runtime::wire::decode(&payload)?;
/// let report = server.apply_push(decoded, device.site_id()).await?;
/// assert!(report.rejected.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Replica {
    db: SyncDb,
    /// The tables and columns of the device served, if it does not know them all.
    view: Option<Arc<View>>,
}

impl Replica {
    /// The server's view of `db`.
    pub fn new(db: SyncDb) -> Self {
        Self { db, view: None }
    }

    /// This replica as it serves a device of an app version that has the
    /// tables and columns of `view` only (see
    /// [`Versions::resolve`]): its pulls ([`export_for_device`](Self::export_for_device),
    /// [`export_filtered`](Self::export_filtered)) and the
    /// [`restore`](PushReport::restore) of its pushes carry nothing else.
    pub fn serving(&self, view: impl Into<Arc<View>>) -> Self {
        Self {
            db: self.db.clone(),
            view: Some(view.into()),
        }
    }

    /// Publishes an app version: the descriptors of its tables (those it does
    /// not list stay as they are). Each table is created, or evolved to the
    /// descriptor (see the book's chapter "Evolving your schema"), in one
    /// transaction: an incompatible change ([`Error::IncompatibleChange`]) or
    /// an invalid descriptor leaves the database as it was. When a table is as
    /// no version published it, the publication is a new version; a table as
    /// an earlier version published it is left alone (publishing an older
    /// version again changes nothing). Returns the newest version's number.
    ///
    /// ```
    /// use sync_runtime::server::Replica;
    /// use sync_runtime::{Algorithm, ColumnSchema, SqlType, SyncDb, TableSchema};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let server = Replica::new(SyncDb::open_in_memory().await?);
    /// let key = ColumnSchema::new("id", SqlType::Text).primary_key();
    /// let v1 = TableSchema::new("todos", Algorithm::Cls, vec![key.clone()]);
    /// let due = ColumnSchema::new("due", SqlType::Integer).nullable(true);
    /// let v2 = TableSchema::new("todos", Algorithm::Cls, vec![key, due]);
    /// assert_eq!(server.publish(vec![v1.clone()]).await?, 1);
    /// assert_eq!(server.publish(vec![v1.clone()]).await?, 1);
    /// assert_eq!(server.publish(vec![v2.clone()]).await?, 2);
    ///
    /// // Devices of both versions are served, each with its own columns.
    /// let versions = server.versions().await?;
    /// let v1_device = [("todos".to_owned(), v1.view_fingerprint())];
    /// assert_eq!(versions.resolve(&v1_device, 1).unwrap().tables(), [v1]);
    /// assert!(versions.resolve(&v1_device, 2).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, schemas: Vec<TableSchema>) -> Result<i64> {
        let tables: Vec<_> = schemas
            .into_iter()
            .map(|schema| Registered::new(schema, None, &[]))
            .collect();
        self.db
            .call(move |w| {
                let version = write(w, |tx| crate::versions::publish(tx.conn(), &tables))?;
                crate::tx::note_synced_tables(&w.conn, &w.user_sql)?;
                for table in tables {
                    w.set_registered(table.schema.name.to_string(), Some(table));
                }
                Ok(version)
            })
            .await
    }

    /// The app versions published on this database, which devices are matched
    /// against (see [`Versions::resolve`]).
    pub async fn versions(&self) -> Result<Versions> {
        self.db.call(move |w| crate::versions::load(&w.conn)).await
    }

    /// `tables` (this replica's stored descriptors) as the device served reads them.
    fn narrow(&self, tables: Vec<TableSchema>) -> Vec<TableSchema> {
        match &self.view {
            Some(view) => view.narrow(&tables),
            None => tables,
        }
    }

    /// A batch for the device served, whose app version may check the
    /// payload's schema fingerprint (release 0.1.0).
    fn for_device(&self, batch: Batch) -> Batch {
        crate::versions::for_device(self.view.as_deref(), batch)
    }

    /// The database, for what apps and servers both do with it.
    pub fn db(&self) -> &SyncDb {
        &self.db
    }

    /// On a server: a device of `owner`'s left site id `from` for `to` (see
    /// [`new_site_id`](SyncDb::new_site_id)). When both are `owner`'s, `to`
    /// gets the record of the rows `from` holds (the rows a filtered pull
    /// evicts when they stop passing) if it has none yet, so that the device
    /// still gets the evictions of the rows its user may no longer read; and
    /// when the device left `from` because another file used it too
    /// (`reused`), `from` is remembered as reused: every later push or pull
    /// presenting it is refused with [`Error::SiteReused`] (see
    /// [`apply_push`](Self::apply_push) and
    /// [`export_for_device`](Self::export_for_device)).
    pub async fn site_renewed(
        &self,
        from: SiteId,
        to: SiteId,
        owner: &str,
        reused: bool,
    ) -> Result<()> {
        let owner = owner.to_owned();
        self.db
            .call(move |w| site::renewed(&w.conn, from, to, &owner, reused))
            .await
    }

    /// Like [`export_changes`](SyncDb::export_changes), without the changes `site`
    /// made: what a relay (a server) sends back to `site`, which has them already.
    pub async fn export_changes_except(&self, since: Since, site: SiteId) -> Result<Vec<u8>> {
        self.db
            .handle()
            .read_final(move |conn, tables| {
                export::export(conn, tables, since.version(), Scope::Except(site))
            })
            .await
    }

    /// Merges what a device pushed, as a server does: like
    /// [`apply_changes`](SyncDb::apply_changes) of a payload decoded beforehand
    /// (with [`wire::decode_within`](crate::wire::decode_within), so that a
    /// server bounds what a request inflates to and decodes off this database's
    /// thread), after checking that the payload
    /// holds only changes `device` made itself (exported by it with
    /// [`Scope::Local`]) and no evictions; anything else is [`Error::Refused`],
    /// and nothing is applied. A row whose clocks leap beyond what any replica
    /// can have counted to ([`wire::CLOCK_STEP`](crate::wire::CLOCK_STEP)), or
    /// whose existence would change here by another site's record (a peer's
    /// creation or delete, which the device received and cannot make for it), is
    /// rejected alone: the report lists it, and its
    /// [`restore`](PushReport::restore) gives the device this database's state
    /// of it.
    ///
    /// A device's version only grows, and its pushes go one at a time: a push
    /// whose range ends below what this replica received from `device` comes
    /// from another file using the same site id (a copy, a restored backup).
    /// It is refused with [`Error::SiteReused`], and the site id is remembered
    /// as reused, so that every later push or pull presenting it is refused the
    /// same way (see [`export_for_device`](Self::export_for_device)) and every
    /// file using it takes a new one.
    pub async fn apply_push(&self, payload: Payload, device: SiteId) -> Result<PushReport> {
        let view = self.view.clone();
        self.db
            .call(move |w| {
                let pushed = write(w, |tx| {
                    tx.set_versions();
                    push(tx.conn(), &payload, device, None, view.as_deref())
                });
                remember_reused(w, device, pushed)
            })
            .await
    }

    /// [`apply_push`](Self::apply_push) with row-level security: each pushed row
    /// must pass its table's filter in `may_write` before its change (if the row
    /// exists here) and after it (if it still exists). A row that does not is
    /// rejected: nothing of it is applied, the rest of the push is, and nothing
    /// here changes for it. The report lists the rejected rows, and its
    /// [`restore`](PushReport::restore) gives the device its state of each as
    /// `may_read` lets it see them, so that the device alone takes them back.
    pub async fn apply_push_checked(
        &self,
        payload: Payload,
        device: SiteId,
        may_write: RowFilters,
        may_read: RowFilters,
    ) -> Result<PushReport> {
        let view = self.view.clone();
        self.db
            .call(move |w| {
                let pushed = write(w, |tx| {
                    tx.set_versions();
                    let access = merge::Access {
                        write: &may_write,
                        read: &may_read,
                    };
                    push(tx.conn(), &payload, device, Some(access), view.as_deref())
                });
                remember_reused(w, device, pushed)
            })
            .await
    }

    /// Like [`export_batch`](SyncDb::export_batch) for one reader (a device of a
    /// user), with row-level security: only the changes of rows `filter` lets it
    /// read, whole for rows it does not hold yet, evictions for rows it holds but
    /// may no longer read, and nothing of other rows; never the reader's own
    /// changes. What each reader holds is kept in this database: the export
    /// reads on a read connection where there is one (beside pushes and merges,
    /// neither waiting for them nor holding them up), then records what the
    /// batch gives the reader in a small write of its own, committed before the
    /// batch is returned.
    ///
    /// From [`Cursor::BEGINNING`], the export is a snapshot: it walks the rows
    /// the reader may read now (through indexes of the columns the filter reads,
    /// see [`index_filter`](Self::index_filter)) and the rows it holds, not the
    /// history, so its cost follows what the reader may read. Once the snapshot
    /// is done, the reader goes on from the version it started at; a batch is
    /// [`complete`](Batch::complete) only if nothing changed meanwhile.
    pub async fn export_filtered(
        &self,
        from: Cursor,
        reader: SiteId,
        limits: BatchLimits,
        filter: RowFilters,
    ) -> Result<Batch> {
        let (batch, ()) = self
            .filtered(reader, from, limits, filter, |_| Ok(()))
            .await?;
        Ok(batch)
    }

    /// The filtered export of [`export_filtered`](Self::export_filtered), with
    /// what `first` reads on the same snapshot before it (and may refuse).
    async fn filtered<T: Send + 'static>(
        &self,
        reader: SiteId,
        from: Cursor,
        limits: BatchLimits,
        filter: RowFilters,
        first: impl Fn(&Connection) -> Result<T> + Send + Sync + 'static,
    ) -> Result<(Batch, T)> {
        let this = self.clone();
        let again = (self.clone(), from.clone(), filter.clone());
        let (batch, marks, first) = self
            .db
            .handle()
            .read_final(move |conn, tables| {
                let first = first(conn)?;
                let tables = this.narrow(tables.to_vec());
                let (batch, marks) =
                    export::export_filtered(conn, &tables, &from, reader, limits, &filter)?;
                Ok((this.for_device(batch), marks, first))
            })
            .await?;
        if marks.is_empty() {
            return Ok((batch, first));
        }
        let redone = self
            .db
            .call(move |w| {
                write(w, |tx| {
                    let conn = tx.conn();
                    if !marks.superseded(conn)? {
                        marks.record(conn)?;
                        return Ok(None);
                    }
                    let (this, from, filter) = again;
                    let tables = this.narrow(tracking::synced_tables(conn, true)?);
                    let (batch, marks) =
                        export::export_filtered(conn, &tables, &from, reader, limits, &filter)?;
                    marks.record(conn)?;
                    Ok(Some(this.for_device(batch)))
                })
            })
            .await?;
        Ok((redone.unwrap_or(batch), first))
    }

    /// On a server: what a pull of device site `device` returns, in one call
    /// on the connection's thread: the changes after `from` not made by the
    /// device ([`export_batch`](SyncDb::export_batch)), or with `filter` only
    /// those it may read ([`export_filtered`](Self::export_filtered)); and how
    /// far this replica has received the device's site id. A site id
    /// remembered as used by more than one file (a push showed it, see
    /// [`apply_push`](Self::apply_push), or a device that left it said so, see
    /// [`site_renewed`](Self::site_renewed)) is refused with
    /// [`Error::SiteReused`], so that every file using it takes a new one.
    pub async fn export_for_device(
        &self,
        device: SiteId,
        from: Cursor,
        limits: BatchLimits,
        filter: Option<RowFilters>,
    ) -> Result<(Batch, i64)> {
        let Some(filter) = filter else {
            // Unfiltered: a read, on a read connection where there is one.
            let this = self.clone();
            let batch = self
                .db
                .handle()
                .read_final(move |conn, tables| {
                    let seen = served_site(conn, device)?;
                    let tables = this.narrow(tables.to_vec());
                    let batch =
                        export::export_batch(conn, &tables, &from, Scope::Except(device), limits)?;
                    Ok((this.for_device(batch), seen))
                })
                .await?;
            return Ok(batch);
        };
        self.filtered(device, from, limits, filter, move |conn| {
            served_site(conn, device)
        })
        .await
    }

    /// On a server: how far this replica has received device site `device`
    /// (what a pull answers with, see
    /// [`SEEN_HEADER`](crate::protocol::SEEN_HEADER)), read on a read
    /// connection; [`Error::SiteReused`] if more than one file used it (see
    /// [`export_for_device`](Self::export_for_device)).
    pub async fn served_site(&self, device: SiteId) -> Result<i64> {
        self.db
            .handle()
            .read_final(move |conn, _| served_site(conn, device))
            .await
    }

    /// On a server: the batch after `from` as every device that made none of
    /// its changes receives it from
    /// [`export_for_device`](Self::export_for_device) without a filter: one
    /// export that the pulls waiting at the same place share. A device whose
    /// site is among the batch's [`sites`](Batch::sites) gets its own export
    /// instead (which leaves its changes out); for any other, this batch is
    /// the one its own export would give. It checks no device's site id: the
    /// caller has checked each one's with an export of its own.
    ///
    /// ```
    /// use sync_runtime::server::Replica;
    /// use sync_runtime::{BatchLimits, Cursor, SiteId, SyncDb};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let server = Replica::new(SyncDb::open_in_memory().await?);
    /// let device = SiteId::from_bytes([7; 16]);
    /// let shared = server.export_shared(Cursor::BEGINNING, BatchLimits::default()).await?;
    /// assert!(!shared.sites.contains(&device));
    /// let (own, _seen) = server
    ///     .export_for_device(device, Cursor::BEGINNING, BatchLimits::default(), None)
    ///     .await?;
    /// assert_eq!((shared.rows, &shared.next), (own.rows, &own.next));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn export_shared(&self, from: Cursor, limits: BatchLimits) -> Result<Batch> {
        let this = self.clone();
        self.db
            .handle()
            .read_final(move |conn, tables| {
                let tables = this.narrow(tables.to_vec());
                let batch = export::export_batch(conn, &tables, &from, Scope::All, limits)?;
                Ok(this.for_device(batch))
            })
            .await
    }

    /// Like [`export_filtered`](Self::export_filtered) for every reader of
    /// `filter` at once: the batch after `from` as a reader that holds
    /// nothing would get it, the rows it may read whole. Each reader then
    /// [takes](Self::take_shared) it, or, if it holds or created a row the
    /// batch leaves out, gets an export of its own. `None` from the beginning,
    /// where each reader's first export walks a snapshot of what it may read.
    /// It only reads.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, Value, BatchLimits, Cursor};
    /// # use sync_runtime::server::{Replica, RowFilter, RowFilters};
    /// # #[derive(Synced)]
    /// # struct Note { #[synced(primary_key)] id: SyncId, team: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let server = Replica::new(SyncDb::open_in_memory().await?);
    /// server.db().register::<Note>().await?;
    /// server.db().insert(&Note { id: SyncId::new(), team: "red".into() }).await?;
    /// let red = RowFilters::new(RowFilter::Nothing).table("notes", RowFilter::Where {
    ///     sql: "team = ?1".into(),
    ///     params: vec![Value::from("red")],
    /// });
    /// let limits = BatchLimits::default();
    /// let shared = server.export_shared_filtered(Cursor::at(1), limits, red.clone()).await?;
    /// assert!(shared.is_some());
    /// assert!(server.export_shared_filtered(Cursor::BEGINNING, limits, red).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn export_shared_filtered(
        &self,
        from: Cursor,
        limits: BatchLimits,
        filter: RowFilters,
    ) -> Result<Option<SharedBatch>> {
        let this = self.clone();
        self.db
            .handle()
            .read_final(move |conn, tables| {
                let tables = this.narrow(tables.to_vec());
                let shared = export::export_for_nobody(conn, &tables, &from, limits, &filter)?;
                Ok(shared.map(|(batch, marks, withheld)| {
                    SharedBatch::new(this.for_device(batch), marks, withheld)
                }))
            })
            .await
    }

    /// Which of `readers` take the batch each was given (see
    /// [`export_shared_filtered`](Self::export_shared_filtered)): those that
    /// hold and created none of the rows it left out. What each that takes it
    /// holds then is recorded, all in one write, which the batch must not be
    /// answered before. The others need an export of their own.
    pub async fn take_shared(&self, readers: Vec<(Arc<SharedBatch>, SiteId)>) -> Result<Vec<bool>> {
        self.db
            .call(move |w| {
                write(w, |tx| {
                    readers
                        .iter()
                        .map(|(shared, reader)| {
                            crate::filter::take_for(
                                tx.conn(),
                                *reader,
                                &shared.marks,
                                &shared.withheld,
                            )
                        })
                        .collect()
                })
            })
            .await
    }

    /// Binds a device's site id to its owner (a user) the first time it is seen,
    /// and tells whether `owner` is that site's owner: a server refuses a device
    /// that presents another user's site id, which would let it pose as that
    /// user's device. This database's own site id belongs to no one.
    pub async fn claim_site(&self, site: SiteId, owner: &str) -> Result<bool> {
        if site == self.db.site_id() {
            return Ok(false);
        }
        let owner = owner.to_owned();
        self.db
            .call(move |w| site::claim(&w.conn, site, &owner))
            .await
    }

    /// Checks that `filter` can run on `table`: the table is registered here and
    /// the filter's SQL prepares against it (known columns, valid syntax, one
    /// expression). Anything else is [`Error::InvalidFilter`].
    pub async fn check_filter(&self, table: &str, filter: RowFilter) -> Result<()> {
        let table = table.to_owned();
        self.db
            .call(move |w| prepare_filter(&w.conn, &table, &filter).map(drop))
            .await
    }

    /// Checks `filter` as [`check_filter`](Self::check_filter) does, then indexes
    /// each column of `table` it reads (but the key's), so that a reader's first
    /// [`export_filtered`](Self::export_filtered) finds the rows it may read
    /// through them: its cost then follows those rows, not the table's size.
    /// Returns the columns indexed; indexing a column again does nothing.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, Value};
    /// # use sync_runtime::server::{Replica, RowFilter};
    /// # #[derive(Synced)]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, owner_id: String, shared: bool }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// let db = Replica::new(SyncDb::open_in_memory().await?);
    /// db.db().register::<Todo>().await?;
    /// let policy = RowFilter::Where {
    ///     sql: "owner_id = ?1 OR shared = 1".into(),
    ///     params: vec![Value::Null],
    /// };
    /// assert_eq!(db.index_filter("todo", policy).await?, ["owner_id", "shared"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn index_filter(&self, table: &str, filter: RowFilter) -> Result<Vec<String>> {
        let table = table.to_owned();
        self.db
            .call(move |w| {
                let schema = prepare_filter(&w.conn, &table, &filter)?;
                let RowFilter::Where { sql, params } = &filter else {
                    return Ok(Vec::new());
                };
                // SQLite's authorizer names every column a statement reads as it
                // prepares it; the guard stays on while it does.
                let read = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
                let recorder = Reads {
                    table: schema.name.to_string(),
                    columns: Arc::clone(&read),
                };
                guard(&mut w.conn, &w.user_sql, Some(recorder))?;
                let prepared = w
                    .conn
                    .prepare(&sql::row_passes(&schema, sql, params.len()))
                    .map(drop);
                guard(&mut w.conn, &w.user_sql, None)?;
                prepared?;
                let read = read.lock().map(|r| r.clone()).unwrap_or_default();
                let mut indexed = Vec::new();
                for column in schema.value_columns() {
                    if read.iter().any(|r| r.eq_ignore_ascii_case(&column.name)) {
                        w.conn
                            .execute_batch(&sql::filter_index(&schema, &column.name))?;
                        indexed.push(column.name.to_string());
                    }
                }
                Ok(indexed)
            })
            .await
    }
}

/// How far this replica has received device site `device`, which a pull
/// answers with; [`Error::SiteReused`] if more than one file used it.
fn served_site(conn: &Connection, device: SiteId) -> Result<i64> {
    if let Some(message) = site::reused_site(conn, device, None)? {
        return Err(Error::SiteReused { message });
    }
    site::seen_version(conn, device)
}

/// Applies what `device` pushed (see [`merge::apply_push`]) and completes its
/// report: the payload that gives the device back this replica's state of each
/// row refused, as the device's user may read it, and how far this replica
/// has received the device's site id.
fn push(
    conn: &Connection,
    payload: &Payload,
    device: SiteId,
    access: Option<merge::Access<'_>>,
    view: Option<&View>,
) -> Result<PushReport> {
    let report = merge::apply_push(
        &mut merge::SqliteStorage::new(conn)?,
        payload,
        device,
        access,
    )?;
    let restore = if report.rejected.is_empty() {
        Vec::new()
    } else {
        let rows = report
            .rejected
            .iter()
            .map(|r| (r.table.as_str(), &r.pk[..]));
        let mut tables = tracking::synced_tables(conn, false)?;
        if let Some(view) = view {
            tables = view.narrow(&tables);
        }
        let reads = SqliteReads::new(conn)?;
        let restored = export::export_restore(&reads, &tables, rows, access.map(|a| a.read))?;
        if !restored.marks.is_empty() {
            let reader = site::local_sites(conn, &[device])?[0];
            let at = reads.upto()?;
            for (table, key, held) in &restored.marks {
                if *held {
                    filter::mark_held(conn, reader, table, key, at)?;
                } else {
                    filter::evict_if_held(conn, reader, table, key, at)?;
                }
            }
        }
        restored.payload
    };
    let seen = site::seen_version(conn, device)?;
    Ok(PushReport {
        restore,
        seen,
        ..report
    })
}

/// A push refused because more than one file uses the device's site id
/// leaves the id remembered as reused (after the push's own transaction rolled
/// back), so that every file presenting it later is refused too.
/// Otherwise, the report gets the database's version after the commit.
fn remember_reused(
    worker: &mut Worker,
    device: SiteId,
    pushed: Result<PushReport>,
) -> Result<PushReport> {
    let pushed = match pushed {
        Err(Error::SiteReused { message }) => {
            site::mark_reused(&worker.conn, device)?;
            return Err(Error::SiteReused { message });
        }
        other => other?,
    };
    let version = worker
        .conn
        .query_row(sql::CURRENT_VERSION, [], |r| r.get(0))?;
    Ok(PushReport { version, ..pushed })
}

/// The schema of `table`, once `filter` prepared against it in every query an
/// export runs it in; anything else is [`Error::InvalidFilter`].
fn prepare_filter(conn: &Connection, table: &str, filter: &RowFilter) -> Result<TableSchema> {
    let invalid = |message: String| Error::InvalidFilter {
        table: table.to_owned(),
        message,
    };
    let schemas = tracking::synced_tables(conn, false)?;
    let schema = schemas
        .into_iter()
        .find(|s| s.name.eq_ignore_ascii_case(table))
        .ok_or_else(|| invalid("no such table is registered".into()))?;
    if let RowFilter::Where { sql, params } = filter {
        for query in [
            sql::row_passes(&schema, sql, params.len()),
            sql::snapshot_rows(&schema, Some(sql), params.len()),
        ] {
            conn.prepare(&query).map_err(|e| invalid(e.to_string()))?;
        }
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Marks;
    use crate::schema::{Algorithm, ColumnSchema};
    use crate::value::{SqlType, Value};

    fn notes() -> TableSchema {
        TableSchema::new(
            "notes",
            Algorithm::Cls,
            vec![
                ColumnSchema::new("id", SqlType::Text).primary_key(),
                ColumnSchema::new("owner", SqlType::Text).default_sql("''"),
            ],
        )
    }

    /// A device that wrote one note of `owner`'s, and pushed it to `server`.
    async fn pushed_a_note(server: &Replica, id: &str, owner: &str) -> SyncDb {
        let device = SyncDb::open_in_memory().await.unwrap();
        device.register_schema(notes()).await.unwrap();
        device
            .execute_raw(
                "INSERT INTO notes (id, owner) VALUES (?1, ?2)",
                vec![Value::from(id), Value::from(owner)],
            )
            .await
            .unwrap();
        let payload = device.export_local_changes(Since::Beginning).await.unwrap();
        let decoded = crate::wire::decode(&payload).unwrap();
        server.apply_push(decoded, device.site_id()).await.unwrap();
        device
    }

    /// The marks a filtered export of `reader` sets, read on a read
    /// connection at the database's version now.
    async fn marks_now(server: &Replica, reader: SiteId) -> Marks {
        let filter = RowFilters::new(RowFilter::Nothing).table(
            "notes",
            RowFilter::Where {
                sql: "owner = 'ann'".into(),
                params: vec![],
            },
        );
        let (_, marks) = server
            .db()
            .handle()
            .read_final(move |conn, tables| {
                export::export_filtered(
                    conn,
                    tables,
                    &Cursor::BEGINNING,
                    reader,
                    BatchLimits::default(),
                    &filter,
                )
            })
            .await
            .unwrap();
        marks
    }

    /// An export's marks are recorded as they are unless the reader's own
    /// device pushed since the export read: then its push may have marked
    /// rows it created, which older marks must not replace, and the export is
    /// made again.
    #[tokio::test]
    async fn marks_are_superseded_by_a_push_of_their_reader_only() {
        let dir = tempfile::tempdir().unwrap();
        let server = Replica::new(SyncDb::open(dir.path().join("server.db")).await.unwrap());
        server.db().register_schema(notes()).await.unwrap();
        let reader = pushed_a_note(&server, "first", "ann").await;
        // A note of another device's, which the reader's export sends whole
        // and marks as held.
        pushed_a_note(&server, "theirs", "ann").await;
        let superseded = |marks: Marks| {
            let db = server.db().clone();
            async move { db.call(move |w| marks.superseded(&w.conn)).await.unwrap() }
        };

        let marks = marks_now(&server, reader.site_id()).await;
        assert!(!marks.is_empty());
        assert!(!superseded(marks).await);

        let marks = marks_now(&server, reader.site_id()).await;
        pushed_a_note(&server, "another's", "ann").await;
        assert!(!superseded(marks).await, "another device's push");

        let marks = marks_now(&server, reader.site_id()).await;
        reader
            .execute_raw(
                "INSERT INTO notes (id, owner) VALUES ('second', 'ann')",
                Vec::<Value>::new(),
            )
            .await
            .unwrap();
        let payload = reader.export_local_changes(Since::Beginning).await.unwrap();
        let decoded = crate::wire::decode(&payload).unwrap();
        server.apply_push(decoded, reader.site_id()).await.unwrap();
        assert!(superseded(marks).await, "the reader's own push");

        // A reader the database has never heard of has no marks to lose.
        let stranger = SiteId::from_bytes([3; 16]);
        assert!(!superseded(marks_now(&server, stranger).await).await);
    }
}
