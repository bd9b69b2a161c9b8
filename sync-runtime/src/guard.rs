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
