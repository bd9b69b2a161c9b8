//! The connection's authorizer: what the app's SQL may not do inside the
//! runtime's transactions, what it writes, and which columns a statement reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::Connection;

use crate::error::Result;
use crate::tx;

/// The columns of `table` the statements prepared under [`guard`] read.
pub(crate) struct Reads {
    pub(crate) table: String,
    pub(crate) columns: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Installs the connection's authorizer: while `user_sql` is set (the app's SQL
/// runs), it refuses transaction control, which would end the runtime's
/// transaction halfway; with `reads`, it also records the columns of its table
/// that statements read. It is the connection's only authorizer: whatever needs
/// another installs this one again with what it needs.
pub(crate) fn guard(
    conn: &mut Connection,
    user_sql: &Arc<tx::AppSql>,
    reads: Option<Reads>,
) -> Result<()> {
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    let refuse = Arc::clone(user_sql);
    conn.authorizer(Some(move |context: AuthContext<'_>| {
        if let (
            Some(reads),
            AuthAction::Read {
                table_name,
                column_name,
            },
        ) = (&reads, &context.action)
            && table_name.eq_ignore_ascii_case(&reads.table)
            && let Ok(mut columns) = reads.columns.lock()
        {
            columns.push((*column_name).to_owned());
        }
        let app = refuse.running.load(Ordering::Relaxed);
        // The app's triggers are the app's SQL too, whoever fires them.
        let by_app_trigger = context.accessor.is_some_and(|a| !ours(a));
        if (app || by_app_trigger)
            && let Some(action) = runtime_object_change(&context, &refuse)
        {
            if let Ok(mut refused) = refuse.refused.lock() {
                refused.get_or_insert(action);
            }
            return Authorization::Deny;
        }
        if app {
            note_app_write(&refuse, &context.action);
            if refuse.reading.load(Ordering::Relaxed) && changes_connection(&context.action) {
                return Authorization::Deny;
            }
            if matches!(
                context.action,
                AuthAction::CreateTempTable { .. }
                    | AuthAction::CreateTempView { .. }
                    | AuthAction::CreateTempIndex { .. }
                    | AuthAction::CreateTempTrigger { .. }
            ) {
                refuse.temp.store(true, Ordering::Relaxed);
            }
        }
        let control = matches!(
            context.action,
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
        );
        if control && app {
            Authorization::Deny
        } else {
            Authorization::Allow
        }
    }))?;
    Ok(())
}

/// Pragmas that take a table's or an index's name and read its shape.
const SHAPE_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
];

/// Whether a read's `action` would leave its connection in another state for
/// what runs next: a transaction, an attached database, a setting. `PRAGMA
/// name = value` and `PRAGMA name(value)` look alike here: of those with a
/// value, only the ones that read a table's shape pass.
pub(crate) fn changes_connection(action: &rusqlite::hooks::AuthAction<'_>) -> bool {
    use rusqlite::hooks::AuthAction;
    match *action {
        AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::Attach { .. }
        | AuthAction::Detach { .. } => true,
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } => !SHAPE_PRAGMAS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(pragma_name)),
        _ => false,
    }
}

/// Whether an action of the app's SQL changes one of the runtime's own objects
/// (named with [`RESERVED_PREFIX`](crate::schema::RESERVED_PREFIX)): what it
/// would do, if so. The runtime's own triggers write its tables when the app
/// writes a synced table; their writes are theirs.
fn runtime_object_change(
    context: &rusqlite::hooks::AuthContext<'_>,
    app: &tx::AppSql,
) -> Option<String> {
    use rusqlite::hooks::AuthAction;
    let by_trigger_of_ours = context.accessor.is_some_and(ours);
    let (what, name) = match context.action {
        // What rewrites the schema behind SQLite's back.
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } if pragma_name.eq_ignore_ascii_case("writable_schema")
            || (pragma_name.eq_ignore_ascii_case("schema_version") && pragma_value.is_some()) =>
        {
            return Some(format!(
                "sets `PRAGMA {pragma_name}`, which edits the schema by hand"
            ));
        }
        // A synced table's shape is its struct's, and its triggers go with it.
        AuthAction::AlterTable { table_name, .. } if app.is_synced(table_name) => {
            return Some(format!(
                "alters the synced table `{table_name}`; change its struct instead"
            ));
        }
        AuthAction::DropTable { table_name } if app.is_synced(table_name) => {
            return Some(format!(
                "drops the synced table `{table_name}`; drop its tracking first (drop_tracking)"
            ));
        }
        AuthAction::CreateTempTable { table_name }
        | AuthAction::CreateTempView {
            view_name: table_name,
        } if app.is_synced(table_name) => {
            return Some(format!(
                "creates a temporary `{table_name}`, which would hide the synced table"
            ));
        }
        AuthAction::Insert { table_name } if !by_trigger_of_ours => ("writes", table_name),
        AuthAction::Update { table_name, .. } if !by_trigger_of_ours => ("writes", table_name),
        AuthAction::Delete { table_name } if !by_trigger_of_ours => ("deletes from", table_name),
        AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::CreateView {
            view_name: table_name,
        }
        | AuthAction::CreateTempView {
            view_name: table_name,
        } => ("creates", table_name),
        AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::DropView {
            view_name: table_name,
        }
        | AuthAction::DropTempView {
            view_name: table_name,
        } => ("drops", table_name),
        AuthAction::AlterTable { table_name, .. } => ("alters", table_name),
        AuthAction::CreateIndex {
            index_name,
            table_name,
        }
        | AuthAction::CreateTempIndex {
            index_name,
            table_name,
        }
        | AuthAction::CreateTrigger {
            trigger_name: index_name,
            table_name,
        }
        | AuthAction::CreateTempTrigger {
            trigger_name: index_name,
            table_name,
        } => (
            "creates an object on",
            if ours(index_name) {
                index_name
            } else {
                table_name
            },
        ),
        AuthAction::DropIndex { index_name, .. }
        | AuthAction::DropTempIndex { index_name, .. }
        | AuthAction::DropTrigger {
            trigger_name: index_name,
            ..
        }
        | AuthAction::DropTempTrigger {
            trigger_name: index_name,
            ..
        } => ("drops", index_name),
        _ => return None,
    };
    ours(name).then(|| format!("{what} `{name}`"))
}

/// Whether `name` is one of the runtime's own (named with
/// [`RESERVED_PREFIX`](crate::schema::RESERVED_PREFIX)).
fn ours(name: &str) -> bool {
    name.get(..crate::schema::RESERVED_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(crate::schema::RESERVED_PREFIX))
}

/// Records what the app's statement being compiled writes (see
/// [`tx::AppSql::compiled`]), and moves the epoch of its write sets when it
/// changes the schema.
fn note_app_write(app: &tx::AppSql, action: &rusqlite::hooks::AuthAction<'_>) {
    use rusqlite::hooks::AuthAction;
    let write = match *action {
        AuthAction::Insert { table_name } => {
            Some(tx::Write::Insert(table_name.to_ascii_lowercase()))
        }
        AuthAction::Update {
            table_name,
            column_name,
        } => Some(tx::Write::Update(
            table_name.to_ascii_lowercase(),
            column_name.to_ascii_lowercase(),
        )),
        AuthAction::Read { .. }
        | AuthAction::Select
        | AuthAction::Delete { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. } => None,
        // Everything else may change what a statement's triggers write.
        _ => {
            app.epoch.fetch_add(1, Ordering::Relaxed);
            None
        }
    };
    if let (Some(write), Ok(mut compiled)) = (write, app.compiled.lock())
        && let Some(writes) = compiled.as_mut()
    {
        writes.push(write);
    }
}
