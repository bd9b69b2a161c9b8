//! Schema evolution: how a synced table's stored descriptor follows the struct
//! an app registers.
//!
//! A replica stores, per synced table, the descriptor of every column its table
//! has: the union of the app versions it ran. [`plan`] compares it with the
//! descriptor the app registers now and decides what changes; columns are
//! matched by [`id`](ColumnSchema::id) (their first name), never by position:
//!
//! - a column the struct adds is added at the end of the table (nullable or
//!   with a default), with clock columns at 0, "never written": no row and no
//!   clock row is touched, and every existing row reads the default;
//! - a column the struct no longer has is *retired*: the app stops reading and
//!   writing it, the replica keeps its values and keeps merging them (another
//!   app version may still write it); a retired column the struct has again
//!   comes back with its values;
//! - a column whose name changed, and which the struct says it was renamed
//!   from, is renamed in place; its clock columns and the name it travels
//!   under stay those of its id;
//! - a changed default leaves the stored one: the default a column was added
//!   with is what every replica reads for rows that never wrote it.
//!
//! Everything else (a column's type or nullability, the key, the algorithm, a
//! name that would mean two columns) is refused with
//! [`Error::IncompatibleChange`], naming the change and the way out. [`apply`]
//! runs inside the registering transaction: a failure leaves the file as it was.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::schema::{ColumnSchema, TableSchema};
use crate::sql::{self, TableSql};

/// What registering a struct changes in a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evolution {
    /// The descriptor to store: every column of the table, in table order.
    pub(crate) stored: TableSchema,
    /// Columns renamed, from and to.
    pub(crate) renamed: Vec<(String, String)>,
    /// Columns added at the end of the table, in order.
    pub(crate) added: Vec<ColumnSchema>,
    /// Whether the app now has columns it did not have before (added, or
    /// retired and back): what other replicas sent it before lacked them.
    pub(crate) widens: bool,
    /// Columns whose default changes (see [`DefaultChange`]).
    pub(crate) defaults: Vec<DefaultChange>,
}

/// A column whose default in the table's SQL is not its descriptor's default
/// (a changed default, or a column added with a first default other than its
/// default), or whose first default the struct says is not the one this file
/// had.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DefaultChange {
    /// The column's name in the new descriptor.
    pub(crate) column: String,
    /// The struct says the column's first default is not the one this file
    /// has (a version that did not say it, installed here, read its default
    /// for rows that never wrote the column): those rows take the one it says.
    pub(crate) realign: bool,
}

/// A default as the value it stands for; no default is `NULL`.
fn value_of(default: Result<Option<crate::value::Value>, String>) -> crate::value::Value {
    default.ok().flatten().unwrap_or(crate::value::Value::Null)
}

impl Evolution {
    /// Whether the stored descriptor changes at all.
    pub(crate) fn changes(&self, before: &TableSchema) -> bool {
        self.stored != *before
    }
}

/// Decides how the table of `stored` becomes the one `wanted` describes (both
/// valid descriptors of the same table).
pub(crate) fn plan(stored: &TableSchema, wanted: &TableSchema) -> Result<Evolution> {
    let refuse = |change: String, remedy: &str| {
        Err(Error::IncompatibleChange {
            table: wanted.name.to_string(),
            change,
            remedy: remedy.to_owned(),
        })
    };
    if stored.algorithm != wanted.algorithm {
        return refuse(
            format!(
                "its merge algorithm changes from {} to {}",
                stored.algorithm, wanted.algorithm
            ),
            "replicas merge its rows with the algorithm it was created with; create a new \
             table with the new algorithm and copy the rows",
        );
    }
    let old_keys: Vec<&str> = stored.key_columns().map(|c| c.name.as_ref()).collect();
    let new_keys: Vec<&str> = wanted.key_columns().map(|c| c.name.as_ref()).collect();
    if !old_keys
        .iter()
        .zip(&new_keys)
        .all(|(a, b)| a.eq_ignore_ascii_case(b))
        || old_keys.len() != new_keys.len()
    {
        return refuse(
            format!(
                "its primary key changes from ({}) to ({})",
                old_keys.join(", "),
                new_keys.join(", ")
            ),
            "the key is how every replica finds a row; create a new table with the new key \
             and copy the rows",
        );
    }

    let mut columns: Vec<ColumnSchema> = stored.columns.to_vec();
    let mut renamed = Vec::new();
    let mut matched = vec![false; columns.len()];
    let mut added = Vec::new();
    let mut widens = false;
    let mut defaults = Vec::new();
    for new in wanted.columns.iter() {
        let same = columns
            .iter()
            .position(|old| old.id().eq_ignore_ascii_case(new.id()));
        // A name that another column has or had.
        let clash = columns.iter().enumerate().find(|(i, old)| {
            Some(*i) != same
                && old
                    .names()
                    .any(|n| new.names().any(|m| m.eq_ignore_ascii_case(n)))
        });
        if let Some((_, old)) = clash {
            let shared = old
                .names()
                .find(|n| new.names().any(|m| m.eq_ignore_ascii_case(n)))
                .unwrap_or_default();
            let retired = if old.retired { " (retired)" } else { "" };
            let renaming = new
                .renamed_from
                .iter()
                .any(|n| old.names().any(|m| m.eq_ignore_ascii_case(n)))
                || new.name.eq_ignore_ascii_case(&old.name);
            return match same {
                Some(i) => refuse(
                    format!(
                        "column `{}` would be renamed to `{}`, a name column `{}`{retired} has \
                         or had",
                        columns[i].name, new.name, old.name
                    ),
                    "a name identifies one column for good; choose another name",
                ),
                None if renaming => refuse(
                    format!(
                        "column `{}` was first called `{}`, the name its values travel under",
                        old.name,
                        old.id()
                    ),
                    &format!(
                        "list every earlier name, oldest first, starting with \
                         #[synced(renamed_from = \"{}\")]",
                        old.id()
                    ),
                ),
                None => refuse(
                    format!(
                        "new column `{}` takes the name `{shared}`, which column `{}`{retired} \
                         has or had",
                        new.name, old.name
                    ),
                    "a name identifies one column for good; give the new column another name",
                ),
            };
        }
        match same {
            Some(i) => {
                let old = &columns[i];
                if matched[i] {
                    return refuse(
                        format!("two columns are the column `{}`", old.name),
                        "give each column its own earlier names",
                    );
                }
                if old.sql_type != new.sql_type || old.nullable != new.nullable {
                    return refuse(
                        format!(
                            "column `{}` changes from {} to {}",
                            new.name,
                            type_name(old),
                            type_name(new)
                        ),
                        &format!(
                            "replicas on other app versions still read and write it as {}; add \
                             a new column of the new type and copy the values into it (or \
                             create a new table)",
                            type_name(old)
                        ),
                    );
                }
                if old.primary_key != new.primary_key {
                    return refuse(
                        format!("column `{}` changes its role in the primary key", new.name),
                        "create a new table with the new key and copy the rows",
                    );
                }
                let mut column = old.clone();
                // Names differing in case only are one name to SQLite: the
                // stored one stays, and so does the column's id.
                if !column.name.eq_ignore_ascii_case(&new.name) {
                    renamed.push((column.name.to_string(), new.name.to_string()));
                    column.name = new.name.clone();
                }
                let same_history = column.renamed_from.len() == new.renamed_from.len()
                    && column
                        .renamed_from
                        .iter()
                        .zip(new.renamed_from.iter())
                        .all(|(a, b)| a.eq_ignore_ascii_case(b));
                if !same_history {
                    let id = old.id().to_owned();
                    column.renamed_from = new.renamed_from.clone();
                    if let Some(first) = column.renamed_from.to_mut().first_mut() {
                        *first = id.into();
                    }
                }
                // What a row that never wrote the column reads stays: a new
                // default is for the rows created from now on. The struct's
                // word on the first default wins over this file's (a version
                // that did not say it may have been installed here).
                let had = value_of(old.never_written());
                let (first, first_sql) = match &new.first_default {
                    Some(sql) => (value_of(new.never_written()), sql.clone()),
                    None => (
                        had.clone(),
                        old.never_written_sql().unwrap_or("NULL").to_owned().into(),
                    ),
                };
                let realign = first != had;
                if realign || value_of(new.default_value()) != value_of(old.default_value()) {
                    defaults.push(DefaultChange {
                        column: column.name.to_string(),
                        realign,
                    });
                }
                column.default = new.default.clone();
                column.first_default =
                    (value_of(new.default_value()) != first).then_some(first_sql);
                // A published descriptor may list the columns its app retired.
                widens |= column.retired && !new.retired;
                column.retired = new.retired;
                column.indexed = new.indexed;
                matched[i] = true;
                columns[i] = column;
            }
            None if new.primary_key => {
                return refuse(
                    format!("key column `{}` is new", new.name),
                    "the key is how every replica finds a row; create a new table with the new \
                     key and copy the rows",
                );
            }
            None => {
                if !new.nullable && new.default.is_none() {
                    return refuse(
                        format!("new column `{}` is NOT NULL without a default", new.name),
                        "rows that exist (and rows other app versions create) need a value: \
                         make the field an Option or give it #[synced(default = ...)]",
                    );
                }
                let mut column = new.clone();
                if value_of(column.default_value()) == value_of(column.never_written()) {
                    column.first_default = None;
                } else {
                    defaults.push(DefaultChange {
                        column: column.name.to_string(),
                        realign: false,
                    });
                }
                widens |= !column.retired;
                added.push(column.clone());
                columns.push(column);
                matched.push(true);
            }
        }
    }
    for (column, matched) in columns.iter_mut().zip(&matched) {
        if !matched {
            // Key columns were all matched: the keys are the same.
            column.retired = true;
            column.indexed = false;
        }
    }
    let mut next = stored.clone();
    next.columns = columns.into();
    Ok(Evolution {
        stored: next,
        renamed,
        added,
        widens,
        defaults,
    })
}

/// Adds `evolution.added` to the table of `before` (and their clock columns).
///
/// SQLite's `ADD COLUMN` checks every row of a `STRICT` table afterwards
/// (`pragma_quick_check`), which takes time in proportion to the table. A new
/// column at the end of a table changes no stored row: a row stored before
/// reads the column's default. So when the table's SQL text is the one
/// `register` wrote, the runtime writes the new text itself, as SQLite's
/// documented procedure for schema changes that leave the stored rows alone
/// does (`writable_schema`, then a new `schema_version`), and checks the
/// columns SQLite then reads; if any of it fails, or the text is not the
/// runtime's (a table the app created and `register` adopted), `ADD COLUMN`
/// runs instead.
fn add_columns(conn: &Connection, before: &TableSchema, evolution: &Evolution) -> Result<()> {
    let name = before.name.as_ref();
    let mut widened = before.clone();
    // The rows that exist read what a row that never wrote a column reads.
    widened
        .columns
        .to_mut()
        .extend(evolution.added.iter().map(|column| {
            let mut column = column.clone();
            column.default = column.never_written_sql().map(|s| s.to_owned().into());
            column.first_default = None;
            column
        }));
    let text: Option<String> = conn
        .query_row(sql::TABLE_SQL, [name], |r| r.get(0))
        .optional()?;
    let ours = text.as_deref() == Some(sql::stored_table_sql(before).as_str());
    let rewritten = ours && {
        conn.execute_batch("SAVEPOINT synced_add_columns")?;
        let result = rewrite_table_sql(conn, name, &sql::stored_table_sql(&widened), &widened);
        if matches!(result, Ok(true)) {
            conn.execute_batch("RELEASE synced_add_columns")?;
            true
        } else {
            conn.execute_batch("ROLLBACK TO synced_add_columns; RELEASE synced_add_columns")?;
            false
        }
    };
    for column in &evolution.added {
        let [table, clock] = sql::add_column(name, column);
        if !rewritten {
            conn.execute_batch(&table)?;
        }
        conn.execute_batch(&clock)?;
    }
    Ok(())
}

/// Gives table `name` the SQL text `text` and checks that SQLite then reads
/// the columns of `expected`; `Ok(false)` if it does not.
fn rewrite_table_sql(
    conn: &Connection,
    name: &str,
    text: &str,
    expected: &TableSchema,
) -> Result<bool> {
    let version: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA writable_schema = ON")?;
    let updated = conn.execute(sql::SET_TABLE_SQL, (name, text));
    // A new schema version makes every connection read the schema again.
    let bumped = conn.execute_batch(&format!("PRAGMA schema_version = {}", version + 1));
    conn.execute_batch("PRAGMA writable_schema = RESET")?;
    if updated? != 1 {
        return Ok(false);
    }
    bumped?;
    let mut stmt = conn.prepare(sql::TABLE_COLUMNS)?;
    let columns = stmt
        .query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let expected: Vec<(String, String, bool)> = expected
        .columns
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.sql_type.as_sql().to_owned(),
                !c.nullable,
            )
        })
        .collect();
    Ok(columns == expected)
}

/// Checks that a published descriptor says the first default of each column
/// whose default changed since `stored` got it: a device that installs the app
/// version takes the descriptor as it is, and would otherwise read the new
/// default for rows that never wrote the column, where devices that updated
/// read the first one. (A device that updates knows the first default from
/// its own file.)
pub(crate) fn check_first_defaults(stored: &TableSchema, published: &TableSchema) -> Result<()> {
    for new in published.value_columns() {
        let Some(old) = stored
            .value_columns()
            .find(|old| old.id().eq_ignore_ascii_case(new.id()))
        else {
            continue;
        };
        let first = value_of(old.never_written());
        if value_of(new.never_written()) == first {
            continue;
        }
        let literal = old.never_written_sql().unwrap_or("NULL");
        let attribute = if first == crate::value::Value::Null {
            "None".to_owned()
        } else {
            literal.to_owned()
        };
        let said = match &new.first_default {
            Some(first) => format!("says it was {first}"),
            None => format!(
                "has the default {} without saying so",
                new.default.as_deref().unwrap_or("NULL")
            ),
        };
        return Err(Error::IncompatibleChange {
            table: published.name.to_string(),
            change: format!(
                "column `{}` was added with the default {literal}, and this version {said}: its \
                 new installs would read another value than the devices that updated for rows \
                 that never wrote the column",
                new.name,
            ),
            remedy: format!(
                "keep the first default with #[synced(first_default = {attribute})] on the field \
                 (ColumnSchema::first_default(\"{literal}\"))"
            ),
        });
    }
    Ok(())
}

/// Gives the columns of `evolution.defaults` their new default in the
/// table's SQL, so that rows inserted from now on get it, after storing in
/// every row the value it reads now (a row stored before its column was
/// added reads the table's default, and keeps it so). Rows that never wrote a
/// column whose first default the struct corrects take the one it says. Only
/// the runtime's own table text is rewritten (see [`add_columns`]): a table
/// the app created keeps its SQL defaults, and its rows read their first
/// defaults all the same. Every trigger is off meanwhile (the runtime's are
/// dropped, and the app's must not see rows rewritten as they are).
fn change_defaults(conn: &Connection, before: &TableSchema, evolution: &Evolution) -> Result<()> {
    use rusqlite::config::DbConfig;
    let triggers_on = conn.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    let result = rewrite_defaults(conn, before, evolution);
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, triggers_on)?;
    result
}

fn rewrite_defaults(conn: &Connection, before: &TableSchema, evolution: &Evolution) -> Result<()> {
    let name = before.name.as_ref();
    let after = &evolution.stored;
    let change = |column: &ColumnSchema| {
        evolution
            .defaults
            .iter()
            .find(|d| d.column.eq_ignore_ascii_case(&column.name))
    };
    for column in after.columns.iter() {
        if change(column).is_some_and(|c| c.realign) {
            conn.execute_batch(&sql::realign_never_written(after, column))?;
        }
    }
    // The table as its SQL text is now: the new descriptor with the defaults
    // the text still has.
    let mut now = after.clone();
    for column in now.columns.to_mut() {
        if change(column).is_none() {
            continue;
        }
        let old = before
            .columns
            .iter()
            .find(|o| o.id().eq_ignore_ascii_case(column.id()));
        column.default = match old {
            Some(old) => old.default.clone(),
            None => column.never_written_sql().map(|s| s.to_owned().into()),
        };
    }
    if now == *after {
        return Ok(());
    }
    let text: Option<String> = conn
        .query_row(sql::TABLE_SQL, [name], |r| r.get(0))
        .optional()?;
    if text.as_deref() != Some(sql::stored_table_sql(&now).as_str()) {
        return Ok(());
    }
    for column in after.columns.iter() {
        if change(column).is_some() {
            conn.execute_batch(&sql::store_what_rows_read(after, column))?;
        }
    }
    conn.execute_batch("SAVEPOINT synced_change_defaults")?;
    let result = rewrite_table_sql(conn, name, &sql::stored_table_sql(after), after);
    if matches!(result, Ok(true)) {
        conn.execute_batch("RELEASE synced_change_defaults")?;
    } else {
        conn.execute_batch("ROLLBACK TO synced_change_defaults; RELEASE synced_change_defaults")?;
    }
    Ok(())
}

fn type_name(column: &ColumnSchema) -> String {
    if column.nullable {
        format!("{} (nullable)", column.sql_type)
    } else {
        format!("{} NOT NULL", column.sql_type)
    }
}

/// Changes the table of `before` as `evolution` says and stores the new
/// descriptor, inside the caller's write transaction. The tracking triggers are
/// dropped; the caller creates them again from the new descriptor.
pub(crate) fn apply(conn: &Connection, before: &TableSchema, evolution: &Evolution) -> Result<()> {
    let name = before.name.as_ref();
    conn.execute_batch(&TableSql::new(before).drop_triggers)?;
    // Columns first: the table's text is then still the one `before` describes
    // (see `add_columns`).
    if !evolution.added.is_empty() {
        add_columns(conn, before, evolution)?;
    }
    for (from, to) in &evolution.renamed {
        conn.execute_batch(&sql::rename_column(name, from, to))?;
    }
    if !evolution.defaults.is_empty() {
        change_defaults(conn, before, evolution)?;
    }
    let descriptor = serde_json::to_string(&evolution.stored).map_err(|e| {
        Error::InvalidSchema(crate::schema::SchemaError {
            table: name.to_owned(),
            reason: e.to_string(),
        })
    })?;
    conn.execute(sql::STORE_DESCRIPTOR, (name, descriptor))?;
    if evolution.widens {
        ask_again(conn)?;
    }
    Ok(())
}

/// What other replicas sent this database before it had a table or column it
/// has now lacked it, so it asks them again: payloads from peers that carried
/// tables or columns it left out are asked for again from where the first such
/// payload started, and its servers (which send a device only the tables and
/// columns its app has) from the beginning.
pub(crate) fn ask_again(conn: &Connection) -> Result<()> {
    conn.execute(sql::ASK_AGAIN_FOR_SKIPPED, [])?;
    conn.execute(sql::FORGET_SKIPPED, [])?;
    conn.execute(sql::RECEIVE_AGAIN, [])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Algorithm;
    use crate::value::{SqlType, Value};

    fn todos(columns: Vec<ColumnSchema>) -> TableSchema {
        let mut all = vec![ColumnSchema::new("id", SqlType::Text).primary_key()];
        all.extend(columns);
        TableSchema::new("todos", Algorithm::Cls, all)
    }

    fn title() -> ColumnSchema {
        ColumnSchema::new("title", SqlType::Text).default_sql("''")
    }

    fn refused(stored: &TableSchema, wanted: &TableSchema) -> (String, String) {
        match plan(stored, wanted) {
            Err(Error::IncompatibleChange { change, remedy, .. }) => (change, remedy),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_same_struct_changes_nothing() {
        let t = todos(vec![title()]);
        let e = plan(&t, &t).unwrap();
        assert!(!e.changes(&t));
    }

    #[test]
    fn a_new_column_is_added_at_the_end() {
        let v1 = todos(vec![title()]);
        let due = ColumnSchema::new("due", SqlType::Integer).nullable(true);
        let v2 = todos(vec![due.clone(), title()]);
        let e = plan(&v1, &v2).unwrap();
        assert_eq!(e.added, vec![due]);
        let names: Vec<_> = e.stored.columns.iter().map(|c| c.name.as_ref()).collect();
        assert_eq!(names, ["id", "title", "due"]);
    }

    #[test]
    fn a_missing_column_is_retired_and_comes_back() {
        let v1 = todos(vec![title()]);
        let v2 = todos(vec![]);
        let e = plan(&v1, &v2).unwrap();
        assert!(e.stored.columns[1].retired);
        assert!(e.added.is_empty());
        let back = plan(&e.stored, &v1).unwrap();
        assert_eq!(back.stored, v1);
    }

    #[test]
    fn a_rename_keeps_the_columns_id() {
        let v1 = todos(vec![title()]);
        let v2 = todos(vec![
            ColumnSchema::new("name", SqlType::Text)
                .default_sql("''")
                .renamed_from("title"),
        ]);
        let e = plan(&v1, &v2).unwrap();
        assert_eq!(e.renamed, [("title".to_owned(), "name".to_owned())]);
        assert_eq!(e.stored.columns[1].id(), "title");
        assert!(e.added.is_empty());
        // A second rename lists both earlier names.
        let v3 = todos(vec![
            ColumnSchema::new("label", SqlType::Text)
                .default_sql("''")
                .renamed_from("title")
                .renamed_from("name"),
        ]);
        let e3 = plan(&e.stored, &v3).unwrap();
        assert_eq!(e3.renamed, [("name".to_owned(), "label".to_owned())]);
        // A replica still on v1 goes straight to v3.
        assert_eq!(plan(&v1, &v3).unwrap().stored, e3.stored);
    }

    #[test]
    fn names_differing_in_case_only_keep_the_stored_name_and_id() {
        let v1 = todos(vec![title()]);
        let shouting = TableSchema::new(
            "todos",
            Algorithm::Cls,
            vec![
                ColumnSchema::new("ID", SqlType::Text).primary_key(),
                ColumnSchema::new("Title", SqlType::Text).default_sql("''"),
            ],
        );
        let e = plan(&v1, &shouting).unwrap();
        assert!(e.renamed.is_empty());
        assert_eq!(e.stored, v1);
        // Renamed from the id in another case: the id keeps the stored case.
        let renamed = todos(vec![
            ColumnSchema::new("name", SqlType::Text)
                .default_sql("''")
                .renamed_from("TITLE"),
        ]);
        let e = plan(&v1, &renamed).unwrap();
        assert_eq!(e.stored.columns[1].id(), "title");
        assert_eq!(e.renamed, [("title".to_owned(), "name".to_owned())]);
    }

    #[test]
    fn a_rename_that_forgets_the_first_name_is_refused() {
        let v2 = todos(vec![
            ColumnSchema::new("name", SqlType::Text)
                .default_sql("''")
                .renamed_from("title"),
        ]);
        let stored = plan(&todos(vec![title()]), &v2).unwrap().stored;
        let v3 = todos(vec![
            ColumnSchema::new("label", SqlType::Text)
                .default_sql("''")
                .renamed_from("name"),
        ]);
        let (change, remedy) = refused(&stored, &v3);
        assert!(change.contains("first called `title`"), "{change}");
        assert!(remedy.contains("renamed_from = \"title\""), "{remedy}");
    }

    #[test]
    fn a_name_is_never_reused() {
        // `title` became `name`, then `label`; a new `name` would be another column.
        let v3 = todos(vec![
            ColumnSchema::new("label", SqlType::Text)
                .default_sql("''")
                .renamed_from("title")
                .renamed_from("name"),
        ]);
        let stored = plan(&todos(vec![title()]), &v3).unwrap().stored;
        let v4 = todos(vec![
            v3.columns[1].clone(),
            ColumnSchema::new("name", SqlType::Integer).nullable(true),
        ]);
        let (change, remedy) = refused(&stored, &v4);
        assert!(
            change.contains("new column `name` takes the name `name`"),
            "{change}"
        );
        assert!(remedy.contains("another name"), "{remedy}");
        // Dropping `renamed_from` would make it another column.
        let forgot = todos(vec![
            ColumnSchema::new("label", SqlType::Text).default_sql("''"),
        ]);
        let (change, _) = refused(&stored, &forgot);
        assert!(change.contains("first called `title`"), "{change}");
        // A rename onto a retired column's name.
        let retired = plan(
            &todos(vec![
                title(),
                ColumnSchema::new("notes", SqlType::Text).nullable(true),
            ]),
            &todos(vec![title()]),
        )
        .unwrap()
        .stored;
        let onto = todos(vec![
            ColumnSchema::new("notes", SqlType::Text)
                .default_sql("''")
                .renamed_from("title"),
        ]);
        let (change, _) = refused(&retired, &onto);
        assert!(change.contains("retired"), "{change}");
    }

    #[test]
    fn a_retired_columns_name_brings_it_back_with_its_type() {
        let v1 = todos(vec![
            title(),
            ColumnSchema::new("notes", SqlType::Text).nullable(true),
        ]);
        let retired = plan(&v1, &todos(vec![title()])).unwrap().stored;
        let (change, _) = refused(
            &retired,
            &todos(vec![
                title(),
                ColumnSchema::new("notes", SqlType::Integer).nullable(true),
            ]),
        );
        assert!(
            change.contains("column `notes` changes from TEXT"),
            "{change}"
        );
        assert_eq!(plan(&retired, &v1).unwrap().stored, v1);
    }

    #[test]
    fn incompatible_changes_are_refused_by_name() {
        let v1 = todos(vec![title()]);
        for (wanted, expected) in [
            (
                todos(vec![
                    ColumnSchema::new("title", SqlType::Integer).default_sql("0"),
                ]),
                "changes from TEXT NOT NULL to INTEGER NOT NULL",
            ),
            (
                todos(vec![
                    ColumnSchema::new("title", SqlType::Text).nullable(true),
                ]),
                "changes from TEXT NOT NULL to TEXT (nullable)",
            ),
            (
                TableSchema::new("todos", Algorithm::Gos, v1.columns.clone()),
                "algorithm changes from cls to gos",
            ),
            (
                TableSchema::new(
                    "todos",
                    Algorithm::Cls,
                    vec![
                        ColumnSchema::new("id", SqlType::Text).primary_key(),
                        title().primary_key(),
                    ],
                ),
                "primary key changes from (id) to (id, title)",
            ),
            (
                TableSchema::new(
                    "todos",
                    Algorithm::Cls,
                    vec![
                        ColumnSchema::new("key", SqlType::Text).primary_key(),
                        title(),
                    ],
                ),
                "primary key changes from (id) to (key)",
            ),
            (
                todos(vec![title(), ColumnSchema::new("due", SqlType::Integer)]),
                "NOT NULL without a default",
            ),
        ] {
            let (change, remedy) = refused(&v1, &wanted);
            assert!(change.contains(expected), "{change}");
            assert!(!remedy.is_empty());
        }
    }

    #[test]
    fn a_changed_default_keeps_the_one_the_column_was_added_with() {
        let v1 = todos(vec![title()]);
        let untitled = || ColumnSchema::new("title", SqlType::Text).default_sql("'untitled'");
        let v2 = todos(vec![untitled()]);
        let e = plan(&v1, &v2).unwrap();
        // New rows get the new default; rows that never wrote it read the first.
        let kept = todos(vec![untitled().first_default("''")]);
        assert_eq!(e.stored, kept);
        let changed = |column: &str, realign| DefaultChange {
            column: column.to_owned(),
            realign,
        };
        assert_eq!(e.defaults, [changed("title", false)]);
        assert_eq!(
            e.stored.columns[1].never_written(),
            Ok(Some(Value::Text(String::new())))
        );
        // A new install says so itself; saying another first default is refused.
        assert_eq!(plan(&v1, &kept).unwrap().stored, kept);
        assert_eq!(plan(&kept, &kept).unwrap().stored, kept);
        // A struct that says another first default is taken at its word on a
        // device (one that did not say it may have been installed there)...
        let other = todos(vec![untitled().first_default("'none'")]);
        let e = plan(&v1, &other).unwrap();
        assert_eq!(e.defaults, [changed("title", true)]);
        assert_eq!(e.stored, other);
        // ...and refused by a server, which knows the first one.
        assert!(matches!(
            check_first_defaults(&v1, &other),
            Err(Error::IncompatibleChange { change, .. }) if change.contains("says it was 'none'")
        ));
        assert!(matches!(
            check_first_defaults(&v1, &v2),
            Err(Error::IncompatibleChange { remedy, .. }) if remedy.contains("first_default = ''")
        ));
        assert!(check_first_defaults(&v1, &kept).is_ok());
        // A nullable column without a default reads NULL first.
        let note = |c: ColumnSchema| todos(vec![c]);
        let plain = note(ColumnSchema::new("note", SqlType::Text).nullable(true));
        let defaulted = ColumnSchema::new("note", SqlType::Text)
            .nullable(true)
            .default_sql("'-'");
        let e = plan(&plain, &note(defaulted.clone())).unwrap();
        assert_eq!(e.stored.columns[1].first_default.as_deref(), Some("NULL"));
        assert_eq!(e.stored.columns[1].never_written(), Ok(Some(Value::Null)));
        assert!(check_first_defaults(&plain, &note(defaulted.clone())).is_err());
        assert!(check_first_defaults(&plain, &e.stored).is_ok());
        assert!(check_first_defaults(&plain, &note(defaulted.first_default("NULL"))).is_ok());
        // Back to the first default: nothing to remember.
        assert_eq!(plan(&kept, &v1).unwrap().stored, v1);
    }

    #[test]
    fn a_column_added_with_a_changed_default_reads_its_first_one() {
        let v1 = todos(vec![title()]);
        let v3 = todos(vec![
            title(),
            ColumnSchema::new("rank", SqlType::Integer)
                .default_sql("5")
                .first_default("3"),
        ]);
        let e = plan(&v1, &v3).unwrap();
        assert_eq!(e.added.len(), 1);
        assert_eq!(
            e.defaults,
            [DefaultChange {
                column: "rank".into(),
                realign: false
            }]
        );
        assert_eq!(e.stored, v3);
    }
}
