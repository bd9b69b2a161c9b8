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
        if app {
            if let Some(action) = runtime_object_change(&context) {
                if let Ok(mut refused) = refuse.refused.lock() {
                    *refused = Some(action);
                }
                return Authorization::Deny;
            }
            note_app_write(&refuse, &context.action);
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

/// Whether an action of the app's SQL changes one of the runtime's own objects
/// (named with [`RESERVED_PREFIX`](crate::schema::RESERVED_PREFIX)): what it
/// would do, if so. The runtime's own triggers write its tables when the app
/// writes a synced table; their writes are theirs.
fn runtime_object_change(context: &rusqlite::hooks::AuthContext<'_>) -> Option<String> {
    use rusqlite::hooks::AuthAction;
    let ours = |name: &str| {
        name.get(..crate::schema::RESERVED_PREFIX.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(crate::schema::RESERVED_PREFIX))
    };
    let by_trigger_of_ours = context.accessor.is_some_and(ours);
    let (what, name) = match context.action {
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
