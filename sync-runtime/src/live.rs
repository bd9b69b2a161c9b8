//! Live queries: a query's result now, and again whenever a commit changes it.

use std::future::Future;
use std::pin::Pin;

use std::collections::HashSet;

use crate::db::SyncDb;
use crate::error::Result;
use crate::events::{self, ChangeEvents, Changed};
use crate::model::Synced;
use crate::read::FromRow;
use crate::value::Value;

type Run<R> =
    Box<dyn Fn(SyncDb) -> Pin<Box<dyn Future<Output = Result<Vec<R>>> + Send>> + Send + Sync>;

/// The tables a watched query reads (see [`events::tables_read`]).
type FindTables = Box<
    dyn Fn(SyncDb) -> Pin<Box<dyn Future<Output = Result<Option<HashSet<String>>>> + Send>>
        + Send
        + Sync,
>;

/// A query kept live (see [`SyncDb::watch`]): [`next`](Self::next) gives its
/// result now, then waits until a commit (a local write, raw SQL, a merge of
/// another device's changes) writes a table the query reads and changes its
/// result, and gives the new one. A burst of commits gives one result: the
/// one after the last commit that [`next`](Self::next) saw.
///
/// Which tables the query reads is found in the program SQLite compiles it
/// to, views and subqueries included; a commit that ran the app's own SQL,
/// which may write tables without SQLite reporting it (see
/// [`Changed::complete`]), and a query over a virtual table re-run on every
/// commit.
pub struct Watch<R> {
    db: SyncDb,
    run: Run<R>,
    find_tables: FindTables,
    /// The tables the query reads: `None` before the first run, and
    /// `Some(None)` when they are not known.
    reads: Option<Option<HashSet<String>>>,
    events: ChangeEvents,
    last: Option<Vec<R>>,
    /// How many times the query ran.
    runs: usize,
}

impl<R: PartialEq + Clone> Watch<R> {
    /// The result now, the first time; then the next result that differs
    /// from the last one given. [`Error::Closed`](crate::Error::Closed) once the database is closed.
    pub async fn next(&mut self) -> Result<Vec<R>> {
        loop {
            if self.last.is_some() {
                self.wait_for_a_change().await?;
            }
            let rows = (self.run)(self.db.clone()).await?;
            self.runs += 1;
            if self.last.as_ref() != Some(&rows) {
                self.last = Some(rows.clone());
                return Ok(rows);
            }
        }
    }

    /// Waits for a commit that may have changed the result, then takes the
    /// events already waiting too: the next run sees all of them.
    async fn wait_for_a_change(&mut self) -> Result<()> {
        if self.reads.is_none() {
            self.reads = Some((self.find_tables)(self.db.clone()).await?);
        }
        loop {
            let event = self.events.next().await?;
            if self.touches(&event) {
                break;
            }
        }
        while self.events.try_next().is_some() {}
        Ok(())
    }

    fn touches(&mut self, event: &Changed) -> bool {
        if !event.complete {
            // The app's SQL may have changed what the query reads (a view).
            self.reads = None;
            return true;
        }
        match &self.reads {
            Some(Some(tables)) => event
                .tables
                .iter()
                .any(|t| tables.contains(&t.table.to_ascii_lowercase())),
            _ => true,
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
        let select = filter.clone();
        let run: Run<T> = Box::new(move |db: SyncDb| {
            let (filter, params) = (filter.clone(), params.clone());
            Box::pin(async move { db.query::<T>(&filter, params).await })
        });
        let find_tables: FindTables = Box::new(move |db: SyncDb| {
            let filter = select.clone();
            Box::pin(async move {
                db.handle()
                    .read(move |conn, registry, _| {
                        let table = crate::tx::table_of(registry, T::SCHEMA)?;
                        let select = crate::sql::filtered_select(&table.sql.select, &filter);
                        events::tables_read(conn, &select)
                    })
                    .await
            })
        });
        self.watching(run, find_tables)
    }

    /// Keeps [`read`](Self::read) live: the result of read-only SQL (a join,
    /// an aggregate) now, and again whenever a commit changes it (see
    /// [`Watch`]).
    ///
    /// ```
    /// # use sync_runtime::{FromRow, Synced, SyncDb, SyncId, params};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String, done: bool }
    /// #[derive(FromRow, Debug, Clone, PartialEq)]
    /// struct Open {
    ///     open: i64,
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<Todo>().await?;
    /// let mut count = db.watch_read::<Open>("SELECT count(*) AS open FROM todos WHERE NOT done", params![]);
    /// assert_eq!(count.next().await?, [Open { open: 0 }]);
    /// db.insert(&Todo { id: SyncId::new(), title: "milk".into(), done: false }).await?;
    /// assert_eq!(count.next().await?, [Open { open: 1 }]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch_read<R>(&self, sql: &str, params: impl Into<Vec<Value>>) -> Watch<R>
    where
        R: FromRow + PartialEq + Clone,
    {
        let (sql, params) = (sql.to_owned(), params.into());
        let select = sql.clone();
        let run: Run<R> = Box::new(move |db: SyncDb| {
            let (sql, params) = (sql.clone(), params.clone());
            Box::pin(async move { db.read::<R>(&sql, params).await })
        });
        let find_tables: FindTables = Box::new(move |db: SyncDb| {
            let select = select.clone();
            Box::pin(async move {
                db.handle()
                    .read(move |conn, _, _| events::tables_read(conn, &select))
                    .await
            })
        });
        self.watching(run, find_tables)
    }

    fn watching<R>(&self, run: Run<R>, find_tables: FindTables) -> Watch<R> {
        Watch {
            db: self.clone(),
            run,
            find_tables,
            reads: None,
            // Subscribed before the first run: no commit after it is missed.
            events: self.change_events(),
            last: None,
            runs: 0,
        }
    }

    /// What each commit on this handle changes from now on: the tables it
    /// wrote and, for synced tables, the keys of the rows it changed, so that
    /// a UI updates what it shows without reading it all again. Local writes
    /// (typed or raw SQL), migrations and merges of other replicas' changes
    /// alike; each subscription gets every event, in order.
    ///
    /// ```
    /// # use sync_runtime::{Synced, SyncDb, SyncId, Value};
    /// # #[derive(Synced, Debug, Clone, PartialEq)]
    /// # #[synced(table = "todos")]
    /// # struct Todo { #[synced(primary_key)] id: SyncId, title: String, done: bool }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sync_runtime::Result<()> {
    /// # let db = SyncDb::open_in_memory().await?;
    /// # db.register::<Todo>().await?;
    /// let mut events = db.change_events();
    /// let todo = Todo { id: SyncId::new(), title: "milk".into(), done: false };
    /// db.insert(&todo).await?;
    /// db.delete::<Todo>(&todo.id).await?;
    ///
    /// let inserted = events.next().await?;
    /// let todos = inserted.table("todos").unwrap();
    /// let keys = todos.keys.as_ref().unwrap();
    /// assert_eq!(keys[0].key, [Value::from(todo.id)]);
    /// assert!(!keys[0].deleted);
    /// let deleted = events.next().await?;
    /// assert!(deleted.table("todos").unwrap().keys.as_ref().unwrap()[0].deleted);
    /// # Ok(())
    /// # }
    /// ```
    pub fn change_events(&self) -> ChangeEvents {
        self.handle().change_events()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::schema::{Algorithm, ColumnSchema, TableSchema};
    use crate::value::SqlType;
    use crate::{SyncDb, Value, params};

    fn table(name: &'static str) -> TableSchema {
        TableSchema::new(
            name,
            Algorithm::Cls,
            vec![
                ColumnSchema::new("id", SqlType::Integer).primary_key(),
                ColumnSchema::new("n", SqlType::Integer).default_sql("0"),
            ],
        )
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Count(i64);

    impl crate::FromRow for Count {
        fn from_row(row: &crate::ResultRow<'_>) -> crate::Result<Self> {
            row.get_at(0).map(Count)
        }
    }

    /// A query re-runs after commits that write a table it reads, not after
    /// those that write only other tables; raw SQL makes every query re-run.
    #[tokio::test]
    async fn a_query_runs_again_only_when_a_table_it_reads_is_written() {
        let db = SyncDb::open_in_memory().await.unwrap();
        for name in ["lists", "items", "other"] {
            db.register_schema(table(name)).await.unwrap();
        }
        let mut watch = db.watch_read::<Count>(
            "SELECT count(*) FROM items WHERE id IN (SELECT id FROM lists)",
            params![],
        );
        assert_eq!(watch.next().await.unwrap(), [Count(0)]);
        assert_eq!(watch.runs, 1);
        let insert = |table: &'static str, id: i64| {
            let db = db.clone();
            async move {
                db.transaction(move |tx| {
                    let schema = table;
                    tx.execute_raw(
                        &format!("INSERT INTO {schema} (id) VALUES (?1)"),
                        &[Value::Integer(id)],
                    )
                })
                .await
                .unwrap();
            }
        };
        // Raw SQL: the event is not complete, so the query runs again.
        insert("other", 1).await;
        insert("items", 1).await;
        insert("lists", 1).await;
        assert_eq!(watch.next().await.unwrap(), [Count(1)]);
        let ran = watch.runs;
        // Merged changes are complete events: only those of `items` and
        // `lists` make the query run.
        let peer = SyncDb::open_in_memory().await.unwrap();
        for name in ["lists", "items", "other"] {
            peer.register_schema(table(name)).await.unwrap();
        }
        let since = peer.db_version().await.unwrap();
        for id in 2..5 {
            peer.execute_raw("INSERT INTO other (id) VALUES (?1)", params![id])
                .await
                .unwrap();
        }
        let others = peer
            .export_changes(crate::Since::Version(since))
            .await
            .unwrap();
        db.apply_changes(&others).await.unwrap();
        let since = peer.db_version().await.unwrap();
        peer.execute_raw("INSERT INTO items (id) VALUES (2)", params![])
            .await
            .unwrap();
        peer.execute_raw("INSERT INTO lists (id) VALUES (2)", params![])
            .await
            .unwrap();
        let both = peer
            .export_changes(crate::Since::Version(since))
            .await
            .unwrap();
        db.apply_changes(&both).await.unwrap();
        assert_eq!(watch.next().await.unwrap(), [Count(2)]);
        assert_eq!(watch.runs, ran + 1, "ran for the merge of `other`");
    }
}
