//! Live queries: a query's result now, and again whenever a commit changes it.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use crate::db::SyncDb;
use crate::error::{Error, Result};
use crate::model::Synced;
use crate::read::FromRow;
use crate::value::Value;

type Run<R> =
    Box<dyn Fn(SyncDb) -> Pin<Box<dyn Future<Output = Result<Vec<R>>> + Send>> + Send + Sync>;

/// A query kept live (see [`SyncDb::watch`]): [`next`](Self::next) gives its
/// result now, then waits until a commit (a local write, raw SQL, a merge of
/// another device's changes) changes the result, and gives the new one. A
/// burst of commits gives one result: the one after the last commit that
/// [`next`](Self::next) saw.
pub struct Watch<R> {
    db: SyncDb,
    run: Run<R>,
    versions: watch::Receiver<i64>,
    last: Option<Vec<R>>,
}

impl<R: PartialEq + Clone> Watch<R> {
    /// The result now, the first time; then the next result that differs
    /// from the last one given. [`Error::Closed`] once the database is closed.
    pub async fn next(&mut self) -> Result<Vec<R>> {
        loop {
            if self.last.is_some() {
                self.versions.changed().await.map_err(|_| Error::Closed)?;
            }
            // Seen before the query: a commit after this point wakes the wait.
            self.versions.borrow_and_update();
            let rows = (self.run)(self.db.clone()).await?;
            if self.last.as_ref() != Some(&rows) {
                self.last = Some(rows.clone());
                return Ok(rows);
            }
        }
    }
}

impl SyncDb {
    /// Keeps [`query`](Self::query) live: the rows of `T` matching `filter`
    /// now, and again whenever a commit changes them (see [`Watch`]).
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, params};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String, done: bool }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<Todo>().await?;
    /// let mut open = db.watch::<Todo>("NOT done ORDER BY title", params![]);
    /// assert!(open.next().await?.is_empty());
    /// db.insert(&Todo { id: SyncId::new(), title: "milk".into(), done: false }).await?;
    /// assert_eq!(open.next().await?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch<T>(&self, filter: &str, params: impl Into<Vec<Value>>) -> Watch<T>
    where
        T: Synced + PartialEq + Clone,
    {
        let (filter, params) = (filter.to_owned(), params.into());
        let run: Run<T> = Box::new(move |db: SyncDb| {
            let (filter, params) = (filter.clone(), params.clone());
            Box::pin(async move { db.query::<T>(&filter, params).await })
        });
        self.watching(run)
    }

    /// Keeps [`read`](Self::read) live: the result of read-only SQL (a join,
    /// an aggregate) now, and again whenever a commit changes it (see
    /// [`Watch`]).
    pub fn watch_read<R>(&self, sql: &str, params: impl Into<Vec<Value>>) -> Watch<R>
    where
        R: FromRow + PartialEq + Clone,
    {
        let (sql, params) = (sql.to_owned(), params.into());
        let run: Run<R> = Box::new(move |db: SyncDb| {
            let (sql, params) = (sql.clone(), params.clone());
            Box::pin(async move { db.read::<R>(&sql, params).await })
        });
        self.watching(run)
    }

    fn watching<R>(&self, run: Run<R>) -> Watch<R> {
        Watch {
            db: self.clone(),
            run,
            versions: self.subscribe(),
            last: None,
        }
    }
}
