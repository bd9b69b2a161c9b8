//! Row filters (a server's row-level policies) on PostgreSQL, evaluated by
//! SQLite: one policy means the same on both stores because SQLite evaluates
//! it on both.
//!
//! A filter is SQLite SQL over a row's columns (see
//! [`RowFilter::Where`]). Translated to PostgreSQL it would compare and
//! convert values differently (text against numbers, `LIKE`, functions,
//! NULL in arithmetic), so it is not translated: the rows it judges are read
//! from PostgreSQL with their values as SQLite holds them, and SQLite judges
//! each in an in-memory table of the app table's columns, types and key.
//!
//! What the filter may read is therefore its row alone: its own columns,
//! SQLite's functions and the parameters bound to it. A filter that reads
//! anything else (another table, a subquery, the rowid) is refused when the
//! server starts ([`check`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::error::{Error, Result};
use crate::filter::RowFilter;
use crate::schema::TableSchema;
use crate::sql::{self, ident};
use crate::value::Value;

/// Judges rows against row filters, one at a time (see the module's
/// documentation).
pub(crate) struct Evaluator {
    conn: Connection,
    /// The tables created, by name.
    tables: HashMap<String, Table>,
}

/// A table of an [`Evaluator`]: the statements that put a row in and take
/// it out again, and the query of each filter judged on it (see
/// [`judged`]), by the filter's SQL.
struct Table {
    insert: String,
    delete: String,
    queries: HashMap<String, String>,
}

impl Evaluator {
    /// An evaluator with no table yet.
    pub(crate) fn new() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        // Three statements a table: a row in, the filter, the row out.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            conn,
            tables: HashMap::new(),
        })
    }

    /// Creates the table of `schema`, the first time.
    fn table(&mut self, schema: &TableSchema) -> Result<()> {
        if !self.tables.contains_key(schema.name.as_ref()) {
            self.conn
                .execute_batch(&sql::evaluation_table(schema))
                .map_err(|e| invalid(schema, e.to_string()))?;
            let table = ident(&schema.name);
            let columns: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();
            let slots: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
            let made = Table {
                insert: format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    columns.join(", "),
                    slots.join(", ")
                ),
                delete: format!("DELETE FROM {table}"),
                queries: HashMap::new(),
            };
            self.tables.insert(schema.name.to_string(), made);
        }
        Ok(())
    }

    /// Whether the row `row` (the value of each column of `schema`, in the
    /// table's order) passes the row filter `filter` (SQL with `params`, see
    /// [`RowFilter::as_sql`]).
    pub(crate) fn passes(
        &mut self,
        schema: &TableSchema,
        filter: &str,
        params: &[Value],
        row: &[Value],
    ) -> Result<bool> {
        self.table(schema)?;
        let Self { conn, tables } = self;
        let table = tables
            .get_mut(schema.name.as_ref())
            .unwrap_or_else(|| unreachable!("made above"));
        if !table.queries.contains_key(filter) {
            table
                .queries
                .insert(filter.to_owned(), judged(schema, filter));
        }
        conn.prepare_cached(&table.insert)?
            .execute(rusqlite::params_from_iter(row))?;
        let passes = conn
            .prepare_cached(&table.queries[filter])
            .and_then(|mut stmt| stmt.exists(rusqlite::params_from_iter(params)));
        // Emptied whatever the filter gave.
        conn.prepare_cached(&table.delete)?.execute([])?;
        passes.map_err(|e| invalid(schema, e.to_string()))
    }
}

/// The values of every column of `schema`, in the table's order, of the row
/// whose key is `pk` and whose value columns hold `values` (in their order).
pub(crate) fn whole_row(schema: &TableSchema, pk: &[Value], values: &[Value]) -> Vec<Value> {
    let (mut keys, mut rest) = (pk.iter(), values.iter());
    schema
        .columns
        .iter()
        .map(|column| {
            let value = if column.primary_key {
                keys.next()
            } else {
                rest.next()
            };
            value.cloned().unwrap_or(Value::Null)
        })
        .collect()
}

/// The query that gives a row if the one row of the table of `schema`
/// passes `filter`: the filter in a `WHERE`, as everywhere on SQLite.
fn judged(schema: &TableSchema, filter: &str) -> String {
    format!("SELECT 1 FROM {} WHERE ({filter})", ident(&schema.name))
}

/// Checks that `filter` can be evaluated on the rows of `schema` (see the
/// module's documentation): it prepares on the table, and reads nothing
/// but the row.
pub(crate) fn check(schema: &TableSchema, filter: &RowFilter) -> Result<()> {
    let RowFilter::Where { sql, .. } = filter else {
        return Ok(());
    };
    let mut evaluator = Evaluator::new()?;
    evaluator.table(schema)?;
    let table = schema.name.to_ascii_lowercase();
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let mut selects = 0;
    let seen = Arc::clone(&refused);
    let authorize = move |context: AuthContext<'_>| {
        let reason = match context.action {
            AuthAction::Select => {
                selects += 1;
                (selects > 1).then(|| "a subquery".to_owned())
            }
            AuthAction::Read { table_name, .. } if table_name.eq_ignore_ascii_case(&table) => None,
            AuthAction::Read { table_name, .. } => Some(format!("table `{table_name}`")),
            AuthAction::Function { .. } => None,
            other => Some(format!("{other:?}")),
        };
        match reason {
            None => Authorization::Allow,
            Some(reason) => {
                let mut first = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert(reason);
                Authorization::Deny
            }
        }
    };
    evaluator.conn.authorizer(Some(authorize))?;
    let prepared = evaluator
        .conn
        .prepare(&judged(schema, sql))
        .map(drop)
        .map_err(|e| e.to_string());
    let reason = refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match (reason, prepared) {
        (Some(reason), _) => Err(invalid(
            schema,
            format!(
                "on PostgreSQL a policy reads only the row it judges (its columns, SQLite's \
                 functions and the claims); this one reads {reason}"
            ),
        )),
        (None, Err(message)) => Err(invalid(schema, message)),
        (None, Ok(())) => Ok(()),
    }
}

fn invalid(schema: &TableSchema, message: String) -> Error {
    Error::InvalidFilter {
        table: schema.name.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Algorithm, ColumnSchema};
    use crate::value::SqlType;

    fn items() -> TableSchema {
        TableSchema::new(
            "items",
            Algorithm::Cls,
            vec![
                ColumnSchema::new("id", SqlType::Text).primary_key(),
                ColumnSchema::new("owner", SqlType::Text).nullable(true),
                ColumnSchema::new("rank", SqlType::Integer).nullable(true),
                ColumnSchema::new("score", SqlType::Real).nullable(true),
                ColumnSchema::new("data", SqlType::Blob).nullable(true),
            ],
        )
    }

    fn filter(sql: &str, params: Vec<Value>) -> RowFilter {
        RowFilter::Where {
            sql: sql.into(),
            params,
        }
    }

    /// The evaluator judges as a SQLite table of the same schema does, for
    /// the comparisons whose meaning depends on SQLite's types: a column's
    /// affinity converts the parameter it is compared with, text compares
    /// in binary order, `LIKE` ignores ASCII case, NULL matches nothing.
    #[test]
    fn it_judges_as_sqlite_does() {
        let schema = items();
        let sqlite = Connection::open_in_memory().unwrap();
        sqlite
            .execute_batch(&crate::sql::stored_table_sql(&schema))
            .unwrap();
        let rows: Vec<Vec<Value>> = vec![
            vec![
                Value::from("a"),
                Value::from("7"),
                Value::Integer(7),
                Value::Real(7.0),
                Value::Blob(vec![7]),
            ],
            vec![
                Value::from("b"),
                Value::from("Ann"),
                Value::Integer(-3),
                Value::Real(0.5),
                Value::Null,
            ],
            vec![
                Value::from("c"),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Blob(Vec::new()),
            ],
            vec![
                Value::from("d"),
                Value::from("ann"),
                Value::Integer(10),
                Value::Real(-0.0),
                Value::Blob(b"ann".to_vec()),
            ],
        ];
        for row in &rows {
            sqlite
                .execute(
                    "INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params_from_iter(row),
                )
                .unwrap();
        }
        let cases: Vec<(&str, Vec<Value>)> = vec![
            ("owner = ?1", vec![Value::Integer(7)]),
            ("rank = ?1", vec![Value::from("7")]),
            ("rank = ?1", vec![Value::from(" 7")]),
            ("score = ?1", vec![Value::from("7")]),
            ("rank < ?1", vec![Value::from("x")]),
            ("owner > ?1", vec![Value::Integer(100)]),
            ("owner LIKE 'ANN'", vec![]),
            ("owner = 'ann' COLLATE NOCASE", vec![]),
            ("owner < 'a'", vec![]),
            ("owner = ?1 OR rank > 5", vec![Value::Null]),
            ("NOT (owner = ?1)", vec![Value::Null]),
            ("owner IS ?1", vec![Value::Null]),
            ("data = ?1", vec![Value::from("ann")]),
            ("data = CAST(?1 AS BLOB)", vec![Value::from("ann")]),
            ("rank + 0.5 > score", vec![]),
            ("rank / 2 = 3", vec![]),
            ("score = 0", vec![]),
            ("lower(owner) = 'ann' AND length(id) = 1", vec![]),
            ("rank IN (?1, 10)", vec![Value::from("7")]),
            ("coalesce(rank, 0) BETWEEN -5 AND 8", vec![]),
            ("owner GLOB 'A*'", vec![]),
            ("typeof(score) = 'real'", vec![]),
            ("substr(owner, 1, 1) = upper(substr(owner, 1, 1))", vec![]),
        ];
        let mut evaluator = Evaluator::new().unwrap();
        for (sql, params) in cases {
            let rule = filter(sql, params.clone());
            check(&schema, &rule).unwrap();
            let mut stmt = sqlite
                .prepare(&format!("SELECT id FROM items WHERE ({sql}) ORDER BY id"))
                .unwrap();
            let expected: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(&params), |r| r.get(0))
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            let judged: Vec<String> = rows
                .iter()
                .filter(|row| evaluator.passes(&schema, sql, &params, row).unwrap())
                .map(|row| match &row[0] {
                    Value::Text(id) => id.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(judged, expected, "{sql} with {params:?}");
        }
    }

    /// What reads more than its row is refused, with the reason; so is what
    /// does not prepare.
    #[test]
    fn a_filter_that_reads_beyond_its_row_is_refused() {
        let schema = items();
        for (sql, reason) in [
            ("EXISTS (SELECT 1)", "a subquery"),
            (
                "owner IN (SELECT owner FROM items WHERE rank = 1)",
                "a subquery",
            ),
            ("owner = (SELECT name FROM sqlite_schema)", "sqlite_master"),
            ("rowid = 1", "no such column: rowid"),
            ("nope = 1", "no such column: nope"),
            ("owner = ", "syntax error"),
        ] {
            let error = check(&schema, &filter(sql, vec![])).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidFilter { table, message }
                    if table == "items" && message.contains(reason)),
                "{sql}: {error}"
            );
        }
        check(&schema, &RowFilter::Nothing).unwrap();
        check(&schema, &filter("items.owner = ?1 AND id <> ''", vec![])).unwrap();
    }
}
