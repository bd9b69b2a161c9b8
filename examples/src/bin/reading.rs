//! Reading and live queries: a task list's screens, read with joins and kept
//! live while another device's changes arrive.
//!
//! ```text
//! cargo run --bin reading
//! ```
//!
//! The phone shows each list with how many of its tasks are open, and the
//! open tasks of one list. The laptop edits; the phone merges the laptop's
//! changes, and both screens update: the list screen by re-reading its
//! query, the task screen from the change events' keys.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use sync_runtime::{FromRow, Options, Since, SyncDb, SyncId, SyncValue, Synced, Value, params};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

// ANCHOR: model
#[derive(SyncValue, Debug, Clone, Copy, PartialEq, Default)]
enum Status {
    #[default]
    Open,
    Done,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "lists")]
struct List {
    #[synced(primary_key)]
    id: SyncId,
    name: String,
}

#[derive(Synced, Debug, Clone, PartialEq)]
#[synced(table = "tasks")]
struct Task {
    #[synced(primary_key)]
    id: SyncId,
    // A reference to another row: `Option`, as a row may arrive column by
    // column and a key has no default.
    #[synced(index)]
    list: Option<SyncId>,
    title: String,
    status: Status,
    due: Option<NaiveDate>,
}
// ANCHOR_END: model

// ANCHOR: progress
/// A row of the list screen: not a table, the result of a join.
#[derive(FromRow, Debug, Clone, PartialEq)]
struct ListProgress {
    name: String,
    open: i64,
    #[from_row(rename = "next_due")]
    next: Option<NaiveDate>,
}

const PROGRESS: &str = "
    SELECT l.name,
           count(t.id) FILTER (WHERE t.status = 'Open') AS open,
           min(t.due) FILTER (WHERE t.status = 'Open') AS next_due
    FROM lists l LEFT JOIN tasks t ON t.list = l.id
    GROUP BY l.id
    ORDER BY l.name";
// ANCHOR_END: progress

async fn device(path: &Path) -> Result<SyncDb> {
    // ANCHOR: open
    // Reads run on up to 4 read-only connections of their own (the default),
    // beside the one that writes and merges.
    let db = SyncDb::open_with(path, Options::default().read_connections(4)).await?;
    db.register::<List>().await?;
    db.register::<Task>().await?;
    // ANCHOR_END: open
    Ok(db)
}

/// What the phone's screens showed, in order.
#[derive(Debug, Default)]
struct Screens {
    lists: Vec<Vec<ListProgress>>,
    tasks: Vec<Vec<String>>,
}

async fn run(dir: &Path) -> Result<Screens> {
    let phone = device(&dir.join("phone.db")).await?;
    let laptop = device(&dir.join("laptop.db")).await?;
    let home = List {
        id: SyncId::new(),
        name: "Home".into(),
    };
    let day = |d| NaiveDate::from_ymd_opt(2026, 12, d);
    let task = |title: &str, due| Task {
        id: SyncId::new(),
        list: Some(home.id),
        title: title.into(),
        status: Status::Open,
        due,
    };
    let (milk, bins) = (task("Buy milk", day(3)), task("Take out the bins", day(2)));
    laptop.insert(&home).await?;
    laptop.insert(&milk).await?;
    laptop.insert(&bins).await?;
    let merge = |since| {
        let (phone, laptop) = (phone.clone(), laptop.clone());
        async move {
            let changes = laptop.export_changes(since).await?;
            phone.apply_changes(&changes).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }
    };
    merge(Since::Beginning).await?;
    let mut screens = Screens::default();

    // ANCHOR: read
    let progress: Vec<ListProgress> = phone.read(PROGRESS, params![]).await?;
    // A closure instead of a struct, for one-off shapes.
    let due_soon: Vec<(String, NaiveDate)> = phone
        .read_with(
            "SELECT title, due FROM tasks WHERE due <= ?1 ORDER BY due",
            params![day(2)],
            |row| Ok((row.get("title")?, row.get("due")?)),
        )
        .await?;
    // ANCHOR_END: read
    assert_eq!(
        due_soon,
        [("Take out the bins".to_owned(), bins.due.unwrap_or_default())]
    );
    println!("lists: {progress:?}");

    // ANCHOR: watch
    // The list screen: its query, live.
    let mut lists = phone.watch_read::<ListProgress>(PROGRESS, params![]);
    screens.lists.push(lists.next().await?);
    // ANCHOR_END: watch

    // ANCHOR: events
    // The task screen keeps its rows by key and updates only those a commit
    // changed.
    let mut shown: BTreeMap<SyncId, Task> = phone
        .query::<Task>("list = ?1 AND status = 'Open'", params![home.id])
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let mut events = phone.change_events();
    // ANCHOR_END: events
    screens.tasks.push(titles(&shown));

    // The laptop finishes the bins and adds a task; the phone merges.
    let before = laptop.db_version().await?;
    laptop
        .modify::<Task, _>(&bins.id, |t| t.status = Status::Done)
        .await?;
    laptop.insert(&task("Call the plumber", day(1))).await?;
    merge(Since::Version(before)).await?;

    // ANCHOR: update
    let changed = events.next().await?;
    match changed.table("tasks").and_then(|t| t.keys.as_ref()) {
        Some(keys) => {
            for change in keys {
                let [Value::Text(id)] = change.key.as_slice() else {
                    continue;
                };
                let id: SyncId = id.parse()?;
                shown.remove(&id);
                if let Some(task) = phone.get::<Task>(&id).await?
                    && task.list == Some(home.id)
                    && task.status == Status::Open
                {
                    shown.insert(id, task);
                }
            }
        }
        // Too many rows, or what changed is not known: read the screen again.
        None if changed.may_have_changed("tasks") => {
            shown = phone
                .query::<Task>("list = ?1 AND status = 'Open'", params![home.id])
                .await?
                .into_iter()
                .map(|t| (t.id, t))
                .collect();
        }
        None => {}
    }
    // ANCHOR_END: update
    screens.tasks.push(titles(&shown));
    screens.lists.push(lists.next().await?);
    println!("lists now: {:?}", screens.lists.last());
    println!("open tasks now: {:?}", screens.tasks.last());
    Ok(screens)
}

/// The titles of the tasks shown, by due date.
fn titles(shown: &BTreeMap<SyncId, Task>) -> Vec<String> {
    let mut tasks: Vec<&Task> = shown.values().collect();
    tasks.sort_by_key(|t| t.due);
    tasks.iter().map(|t| t.title.clone()).collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    run(dir.path()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_screens_follow_the_laptops_changes() {
        let dir = tempfile::tempdir().unwrap();
        let screens = run(dir.path()).await.unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2026, 12, d);
        assert_eq!(
            screens.lists,
            [
                vec![ListProgress {
                    name: "Home".into(),
                    open: 2,
                    next: day(2)
                }],
                vec![ListProgress {
                    name: "Home".into(),
                    open: 2,
                    next: day(1)
                }],
            ]
        );
        assert_eq!(
            screens.tasks,
            [
                vec!["Take out the bins", "Buy milk"],
                vec!["Call the plumber", "Buy milk"],
            ]
        );
    }
}
