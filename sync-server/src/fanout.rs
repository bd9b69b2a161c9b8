//! Answers that the pulls of one database share.
//!
//! A commit wakes every pull waiting on the database, and every device pulls
//! again once answered. Exported one by one, the answers cost one export per
//! device per commit, all on the database's read connections: with 10,000
//! devices waiting, a change took seconds to reach the last of them. Instead,
//! the pulls that ask from the same place (cursor), for the same app version
//! (view) and with the same batch limits take one answer, exported once with
//! every site's changes ([`Database::pull_shared`]) and encoded once. A device
//! whose own changes are among the answer's (its site is in the batch's
//! `sites`) gets an export of its own instead, which leaves them out; for any
//! other device the shared answer is the one its own export would give.
//!
//! Pulls under one row filter (the devices of one user, or of users whose
//! policies bind the same values) share one too: the rows they may read,
//! each whole, as a device that holds none of them gets them
//! ([`Database::pull_shared_filtered`]). A device takes it unless it holds or
//! created a row the answer leaves out (its own export must evict or keep
//! it); what it then holds is recorded before it is answered, for all the
//! devices taking answers at once in one write ([`Database::take_shared`]). A
//! device's first pull, from the beginning, is its own, and so is any pull
//! when the answer would leave out more than
//! [`MAX_WITHHELD`](sync_runtime::server::MAX_WITHHELD) rows.
//!
//! The answers kept are those of the database's latest version: a pull that
//! saw version `v` may take any answer built at `v` or later, which holds every
//! change up to `v`. They are dropped when the version moves, and held to
//! [`MAX_ANSWERS`] and [`MAX_ANSWER_BYTES`] per database: when full, an answer
//! no pull holds makes room for a new one; when every one is held, a pull
//! exports on its own, as it did before.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use sync_runtime::protocol::PullResponse;
use sync_runtime::server::{RowFilters, SharedBatch, View};
use sync_runtime::{Batch, BatchLimits, Cursor, SiteId};
use tokio::sync::OnceCell;

use crate::error::Result;
use crate::store::Database;

/// The most answers kept for one database's latest version.
pub const MAX_ANSWERS: usize = 1_024;

/// The most bytes of answers kept for one database's latest version.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A pull's answer, encoded once for every pull that takes it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The encoded [`PullResponse`].
    pub(crate) body: Bytes,
    /// The rows its payload carries.
    pub(crate) rows: usize,
    /// Where the next pull starts.
    pub(crate) next: Cursor,
    /// Whether the database had nothing more when it was made.
    pub(crate) complete: bool,
    /// The sites whose changes it carries.
    pub(crate) sites: Vec<SiteId>,
    /// For filtered pulls: what each device takes with it, if it may (see
    /// [`Database::take_shared`]); `None` if they may not share one.
    pub(crate) filtered: Option<Arc<SharedBatch>>,
}

impl Answer {
    pub(crate) fn new(batch: Batch) -> Self {
        let body = PullResponse {
            payload: batch.payload,
            next: batch.next.clone(),
            complete: batch.complete,
        }
        .encode();
        Self {
            body: Bytes::from(body),
            rows: batch.rows,
            next: batch.next,
            complete: batch.complete,
            sites: batch.sites,
            filtered: None,
        }
    }

    /// The answer filtered pulls after `from` share, from `shared` (its
    /// payload moved here); one that none takes, which sends each to an
    /// export of its own, when there is none (see
    /// [`Replica::export_shared_filtered`](sync_runtime::server::Replica::export_shared_filtered)).
    fn filtered(shared: Option<SharedBatch>, from: &Cursor) -> Self {
        let Some(mut shared) = shared else {
            return Self {
                body: Bytes::new(),
                rows: 0,
                next: from.clone(),
                complete: false,
                sites: Vec::new(),
                filtered: None,
            };
        };
        let payload = std::mem::take(&mut shared.batch.payload);
        let mut batch = shared.batch.clone();
        batch.payload = payload;
        Self {
            filtered: Some(Arc::new(shared)),
            ..Self::new(batch)
        }
    }

    /// About how many bytes of memory it holds.
    fn bytes(&self) -> usize {
        self.body.len() + self.filtered.as_ref().map_or(0, |shared| shared.bytes())
    }

    /// Whether it carries nothing, and the database had nothing more.
    pub(crate) fn nothing_new(&self) -> bool {
        self.rows == 0 && self.complete
    }
}

/// The answers shared by the pulls of every database.
#[derive(Default)]
pub(crate) struct Fanout {
    databases: Mutex<HashMap<String, Answers>>,
}

/// The answers kept for one database.
#[derive(Default)]
struct Answers {
    /// The version they were asked at or after.
    version: i64,
    by_place: HashMap<Place, Arc<OnceCell<Arc<Answer>>>>,
    /// The bytes of the answers built.
    bytes: usize,
}

/// What makes two pulls' answers the same: where they start, the app version
/// served, the batch limits and the rows the user may read.
#[derive(PartialEq, Eq, Hash, Clone)]
struct Place {
    from: Cursor,
    max_rows: usize,
    max_bytes: usize,
    view: ViewKey,
    filter: Option<Arc<RowFilters>>,
}

impl Place {
    fn new(
        from: &Cursor,
        limits: BatchLimits,
        view: &Arc<View>,
        filter: Option<&Arc<RowFilters>>,
    ) -> Self {
        Self {
            from: from.clone(),
            max_rows: limits.max_rows,
            max_bytes: limits.max_bytes,
            view: ViewKey(Arc::clone(view)),
            filter: filter.cloned(),
        }
    }
}

/// A view compared whole (at once when it is the same one), hashed by its
/// table names.
#[derive(Clone)]
struct ViewKey(Arc<View>);

impl PartialEq for ViewKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for ViewKey {}

impl Hash for ViewKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for table in self.0.tables() {
            table.name.hash(state);
        }
    }
}

impl Fanout {
    /// The answer after `from` of `db` (the database `name`) for an unfiltered
    /// pull that saw the database at `version`, within `limits`, of the tables
    /// and columns of `view`: the one the pulls asking the same share, built
    /// by the first of them. Its `sites` say whose pulls it does not serve.
    pub(crate) async fn answer(
        &self,
        name: &str,
        db: &dyn Database,
        version: i64,
        from: &Cursor,
        limits: BatchLimits,
        view: &Arc<View>,
    ) -> Result<Arc<Answer>> {
        let place = Place::new(from, limits, view, None);
        let export = || async {
            let batch = db
                .pull_shared(from.clone(), limits, Arc::clone(view))
                .await?;
            Ok::<_, crate::Error>(Arc::new(Answer::new(batch)))
        };
        self.shared(name, version, &place, export).await
    }

    /// [`answer`](Self::answer) for pulls under `filter`: the one the
    /// pulls of that filter asking the same share. Its `sites` say whose pulls
    /// it does not serve; each of the others serves it if it
    /// [takes](Database::take_shared) it.
    #[allow(clippy::too_many_arguments, reason = "answer's, and the filter")]
    pub(crate) async fn answer_filtered(
        &self,
        name: &str,
        db: &dyn Database,
        version: i64,
        from: &Cursor,
        limits: BatchLimits,
        view: &Arc<View>,
        filter: &Arc<RowFilters>,
    ) -> Result<Arc<Answer>> {
        let place = Place::new(from, limits, view, Some(filter));
        let export = || async {
            let shared = db
                .pull_shared_filtered(
                    from.clone(),
                    limits,
                    Arc::clone(view),
                    RowFilters::clone(filter),
                )
                .await?;
            Ok::<_, crate::Error>(Arc::new(Answer::filtered(shared, from)))
        };
        self.shared(name, version, &place, export).await
    }

    /// The answer for `place` made by `export`, kept for the pulls that ask the
    /// same at `version` or before.
    async fn shared<F: Future<Output = Result<Arc<Answer>>>>(
        &self,
        name: &str,
        version: i64,
        place: &Place,
        export: impl FnOnce() -> F,
    ) -> Result<Arc<Answer>> {
        let Some((cell, kept_at)) = self.cell(name, version, place) else {
            return export().await;
        };
        let mut built = false;
        let answer = cell
            .get_or_try_init(|| {
                built = true;
                export()
            })
            .await?;
        if built {
            self.account(name, kept_at, place, &cell, answer.bytes());
        }
        Ok(Arc::clone(answer))
    }

    /// The answer kept for `place`, made if there is room, with the version
    /// the database's answers are kept at; `None` when the caps leave no room.
    fn cell(
        &self,
        name: &str,
        version: i64,
        place: &Place,
    ) -> Option<(Arc<OnceCell<Arc<Answer>>>, i64)> {
        let mut databases = self.lock();
        let answers = match databases.get_mut(name) {
            Some(answers) => answers,
            None => databases.entry(name.to_owned()).or_default(),
        };
        if version > answers.version {
            *answers = Answers {
                version,
                ..Answers::default()
            };
        }
        if let Some(cell) = answers.by_place.get(place) {
            return Some((Arc::clone(cell), answers.version));
        }
        if answers.by_place.len() >= MAX_ANSWERS || answers.bytes >= MAX_ANSWER_BYTES {
            // Full: an answer no pull holds now makes room, so that pulls
            // asking from made-up places cannot keep the others from sharing.
            let idle = answers
                .by_place
                .iter()
                .find(|(_, cell)| Arc::strong_count(cell) == 1)
                .map(|(idle, _)| idle.clone())?;
            if let Some(cell) = answers.by_place.remove(&idle) {
                let bytes = cell.get().map_or(0, |answer| answer.bytes());
                answers.bytes = answers.bytes.saturating_sub(bytes);
            }
            if answers.bytes >= MAX_ANSWER_BYTES {
                return None;
            }
        }
        let cell = Arc::new(OnceCell::new());
        answers.by_place.insert(place.clone(), Arc::clone(&cell));
        Some((cell, answers.version))
    }

    /// Counts an answer of `bytes` built in `cell` for `place` at `version`; drops it
    /// when that takes its database beyond [`MAX_ANSWER_BYTES`] (the pulls
    /// that have it already still answer with it).
    fn account(
        &self,
        name: &str,
        version: i64,
        place: &Place,
        cell: &Arc<OnceCell<Arc<Answer>>>,
        bytes: usize,
    ) {
        let mut databases = self.lock();
        let Some(answers) = databases.get_mut(name) else {
            return;
        };
        // Not if it was dropped meanwhile (the version moved, or it made
        // room), even if another answer for the same place was kept since.
        let kept = answers.by_place.get(place);
        if answers.version != version || !kept.is_some_and(|kept| Arc::ptr_eq(kept, cell)) {
            return;
        }
        if answers.bytes.saturating_add(bytes) > MAX_ANSWER_BYTES {
            answers.by_place.remove(place);
        } else {
            answers.bytes += bytes;
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Answers>> {
        // Every step under the lock leaves the maps consistent.
        self.databases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use sync_runtime::{Algorithm, ColumnSchema, SqlType, TableSchema};

    use super::*;
    use crate::store::SqliteDatabase;

    async fn database() -> (tempfile::TempDir, SqliteDatabase, Arc<View>) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDatabase::open(&dir.path().join("todo.db"))
            .await
            .unwrap();
        let key = ColumnSchema::new("id", SqlType::Text).primary_key();
        let todos = TableSchema::new("todos", Algorithm::Cls, vec![key]);
        db.publish(vec![todos.clone()]).await.unwrap();
        (dir, db, Arc::new(View::of(vec![todos])))
    }

    #[tokio::test]
    async fn pulls_at_the_same_place_share_one_answer_until_the_version_moves() {
        let (_dir, db, view) = database().await;
        let fanout = Fanout::default();
        let limits = BatchLimits::default();
        let start = Cursor::BEGINNING;
        let answer = |version, limits| fanout.answer("todo", &db, version, &start, limits, &view);

        let first = answer(1, limits).await.unwrap();
        assert!(Arc::ptr_eq(&first, &answer(1, limits).await.unwrap()));
        // Other limits, another answer.
        let fewer = limits.max_rows(1);
        assert!(!Arc::ptr_eq(&first, &answer(1, fewer).await.unwrap()));
        // A later version: a new answer, which a pull that saw an older one
        // takes too.
        let later = answer(2, limits).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &later));
        assert!(Arc::ptr_eq(&later, &answer(1, limits).await.unwrap()));
    }

    #[tokio::test]
    async fn pulls_under_one_filter_share_one_answer() {
        use sync_runtime::Value;
        use sync_runtime::server::RowFilter;
        let (_dir, db, view) = database().await;
        let fanout = Fanout::default();
        let limits = BatchLimits::default();
        let of = |user: &str| {
            Arc::new(RowFilters::new(RowFilter::Nothing).table(
                "todos",
                RowFilter::Where {
                    sql: "id > ?1".into(),
                    params: vec![Value::from(user)],
                },
            ))
        };
        let answer = |from: Cursor, filter: Arc<RowFilters>| {
            let (db, view) = (&db, &view);
            let fanout = &fanout;
            async move {
                fanout
                    .answer_filtered("todo", db, 1, &from, limits, view, &filter)
                    .await
                    .unwrap()
            }
        };
        let ann = answer(Cursor::at(1), of("ann")).await;
        assert!(ann.filtered.is_some());
        assert!(Arc::ptr_eq(&ann, &answer(Cursor::at(1), of("ann")).await));
        // Another user's filter, another answer; and none unfiltered.
        let bob = answer(Cursor::at(1), of("bob")).await;
        assert!(!Arc::ptr_eq(&ann, &bob));
        let everyone = fanout
            .answer("todo", &db, 1, &Cursor::at(1), limits, &view)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&ann, &everyone) && everyone.filtered.is_none());
        // From the beginning, each device's first pull is its own.
        assert!(
            answer(Cursor::BEGINNING, of("ann"))
                .await
                .filtered
                .is_none()
        );
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_answer_makes_room() {
        let (_dir, db, view) = database().await;
        let fanout = Fanout::default();
        let start = Cursor::BEGINNING;
        let answer = |rows| {
            let limits = BatchLimits::default().max_rows(rows);
            fanout.answer("todo", &db, 1, &start, limits, &view)
        };
        // Made-up places fill every slot; none is held once answered.
        for rows in 1..=MAX_ANSWERS {
            answer(rows).await.unwrap();
        }
        let kept = answer(MAX_ANSWERS + 1).await.unwrap();
        assert!(Arc::ptr_eq(&kept, &answer(MAX_ANSWERS + 1).await.unwrap()));
        assert_eq!(fanout.lock()["todo"].by_place.len(), MAX_ANSWERS);

        // Every slot held by a pull: the next pull exports on its own.
        let held: Vec<_> = fanout.lock()["todo"].by_place.values().cloned().collect();
        let alone = answer(MAX_ANSWERS + 2).await.unwrap();
        assert!(!Arc::ptr_eq(
            &alone,
            &answer(MAX_ANSWERS + 2).await.unwrap()
        ));
        drop(held);
        assert_eq!(fanout.lock()["todo"].by_place.len(), MAX_ANSWERS);
    }
}
