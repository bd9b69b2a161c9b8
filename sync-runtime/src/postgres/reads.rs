//! What an export reads (see [`Reads`]) from a database on PostgreSQL, in a
//! read-only transaction whose snapshot was taken after its horizon was read
//! (see [`super::sql::horizon`]): every change at or below the horizon is
//! committed, and visible.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use deadpool_postgres::ClientWrapper;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;

use super::sql::{self, ident};
use super::{Db, policy, value};
use crate::change::{ClockColumn, ClockRow, Range, Reads};
use crate::error::{Error, Result};
use crate::id::SiteId;
use crate::schema::TableSchema;
use crate::value::Value;

/// A database's reads, in the transaction open on `client`, at `upto`.
pub(crate) struct PgReads<'a> {
    client: &'a ClientWrapper,
    runtime: &'a Handle,
    db: &'a Db,
    upto: i64,
    /// The clock table of each table, by lowercase name.
    clocks: HashMap<String, String>,
    /// The origin of each local version looked up: site ordinal, version there.
    origins: RefCell<HashMap<i64, (i64, i64)>>,
    /// The site id of each site ordinal looked up.
    sites: RefCell<HashMap<i64, SiteId>>,
    /// The evaluator of row filters, once one was needed.
    evaluator: RefCell<Option<policy::Evaluator>>,
}

impl<'a> PgReads<'a> {
    /// The reads of `db` at version `upto` (its horizon), in the transaction
    /// open on `client`, of its synced `tables` (with their numbers).
    pub(crate) fn new(
        client: &'a ClientWrapper,
        runtime: &'a Handle,
        db: &'a Db,
        upto: i64,
        tables: &[(i64, TableSchema)],
    ) -> Self {
        let clocks = tables
            .iter()
            .map(|(id, schema)| {
                (
                    schema.name.to_ascii_lowercase(),
                    sql::clock_table(&db.schema, *id),
                )
            })
            .collect();
        Self {
            client,
            runtime,
            db,
            upto,
            clocks,
            origins: RefCell::new(HashMap::new()),
            sites: RefCell::new(HashMap::new()),
            evaluator: RefCell::new(None),
        }
    }

    /// Runs `statement`, prepared (see [`super::prepared`]): an export's
    /// statements are few, and a small pull's time went to planning them.
    fn query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        super::query(self.client, self.runtime, statement, params)
    }

    fn clock(&self, schema: &TableSchema) -> Result<&str> {
        self.clocks
            .get(&schema.name.to_ascii_lowercase())
            .map(String::as_str)
            .ok_or_else(|| Error::NotRegistered {
                table: schema.name.to_string(),
            })
    }

    /// Looks up the origins of `versions` not looked up yet, in one statement.
    fn fetch_origins(&self, versions: impl Iterator<Item = i64>) -> Result<()> {
        let wanted: Vec<i64> = {
            let known = self.origins.borrow();
            let set: HashSet<i64> = versions.filter(|v| !known.contains_key(v)).collect();
            set.into_iter().collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let statement = format!(
            "SELECT db_version, site, origin_version FROM {}._synced_versions \
             WHERE db_version = ANY($1)",
            self.db.schema
        );
        let rows = self.query(&statement, &[&wanted])?;
        let mut known = self.origins.borrow_mut();
        // A version not listed was made here.
        for version in &wanted {
            known.insert(*version, (0, *version));
        }
        for row in rows {
            known.insert(row.get(0), (row.get(1), row.get(2)));
        }
        Ok(())
    }
    /// The clock rows of `schema` that `condition` (over the clock `c`, with
    /// `params`) picks, with the value columns written after `base`, and
    /// whether each passes `filter` (SQL and parameters), if given.
    fn clock_rows(
        &self,
        schema: &TableSchema,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
        base: i64,
        filter: Option<(&str, &[Value])>,
    ) -> Result<Vec<ClockRow>> {
        let clock = self.clock(schema)?;
        let app = format!("{}.{}", self.db.schema, ident(&schema.name));
        let keys: Vec<_> = schema.key_columns().collect();
        let values: Vec<_> = schema.value_columns().collect();
        let mut columns: Vec<String> = keys
            .iter()
            .map(|c| format!("c.{}", ident(&c.name)))
            .collect();
        columns.extend(
            ["_synced_cl", "_synced_dv", "_synced_created", "_synced_seq"]
                .map(|c| format!("c.{c}")),
        );
        for column in &values {
            columns.push(format!("c.{}", ident(&format!("{}.v", column.id()))));
            columns.push(format!("c.{}", ident(&format!("{}.dv", column.id()))));
            columns.push(format!("t.{}", ident(&column.name)));
        }
        let first_key = keys.first().map(|c| ident(&c.name)).unwrap_or_default();
        columns.push(format!("t.{first_key} IS NOT NULL"));
        let join = keys
            .iter()
            .map(|c| format!("t.{0} = c.{0}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let statement = format!(
            "SELECT {} FROM {clock} c LEFT JOIN {app} t ON {join} WHERE {condition}",
            columns.join(", "),
        );
        // Each row made ready as it arrives, while PostgreSQL reads the next;
        // then the origins of every version the rows show, in one look-up.
        let mut read = Vec::new();
        let mut versions = HashSet::new();
        let meta = keys.len();
        let each = |row: tokio_postgres::Row| -> Result<()> {
            let pk = keys
                .iter()
                .enumerate()
                .map(|(i, c)| value::get(&row, i, c.sql_type))
                .collect::<Result<Vec<Value>>>()?;
            let exists: bool = row.get(meta + 4 + 3 * values.len());
            let mut current = Vec::with_capacity(values.len());
            let mut changed = Vec::new();
            for (index, column) in values.iter().enumerate() {
                let at = meta + 4 + 3 * index;
                let value = value::get(&row, at + 2, column.sql_type)?;
                let version: i64 = row.get(at + 1);
                versions.insert(version);
                if version > base {
                    changed.push(ClockColumn {
                        index,
                        col_version: row.get(at),
                        version,
                        value: value.clone(),
                    });
                }
                current.push(value);
            }
            // As on SQLite: a row that is not there passes no filter.
            let passes = match filter {
                Some((sql, params)) => Some(
                    exists
                        && self.evaluator()?.passes(
                            schema,
                            sql,
                            params,
                            &policy::whole_row(schema, &pk, &current),
                        )?,
                ),
                None => None,
            };
            let (version, created) = (row.get(meta + 1), row.get(meta + 2));
            versions.extend([version, created]);
            read.push(ClockRow {
                pk,
                cl: row.get(meta),
                version,
                created,
                rowid: row.get(meta + 3),
                exists,
                passes,
                columns: changed,
            });
            Ok(())
        };
        super::query_each(self.client, self.runtime, &statement, params, each)?;
        self.fetch_origins(versions.into_iter())?;
        Ok(read)
    }

    /// The evaluator of row filters, made the first time.
    fn evaluator(&self) -> Result<std::cell::RefMut<'_, policy::Evaluator>> {
        let mut evaluator = self.evaluator.borrow_mut();
        if evaluator.is_none() {
            *evaluator = Some(policy::Evaluator::new()?);
        }
        Ok(std::cell::RefMut::map(evaluator, |e| {
            e.as_mut().unwrap_or_else(|| unreachable!("made above"))
        }))
    }

    /// The condition on the clock `c` that picks the row whose key is bound
    /// to the first parameters.
    fn by_key(schema: &TableSchema) -> String {
        schema
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("c.{} = ${}", ident(&c.name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

impl Reads for PgReads<'_> {
    fn upto(&self) -> Result<i64> {
        Ok(self.upto)
    }

    fn vacuums(&self) -> Result<i64> {
        // PostgreSQL keeps creation order across a VACUUM.
        Ok(0)
    }

    fn origin(&self, version: i64) -> Result<(i64, i64)> {
        if let Some(&origin) = self.origins.borrow().get(&version) {
            return Ok(origin);
        }
        self.fetch_origins(std::iter::once(version))?;
        Ok(self.origins.borrow()[&version])
    }

    fn site(&self, ordinal: i64) -> Result<SiteId> {
        if let Some(&site) = self.sites.borrow().get(&ordinal) {
            return Ok(site);
        }
        let site = self
            .db
            .site_of_ordinal(self.client, self.runtime, ordinal)?;
        self.sites.borrow_mut().insert(ordinal, site);
        Ok(site)
    }

    fn ordinal(&self, site: SiteId) -> Result<Option<i64>> {
        let statement = format!(
            "SELECT ordinal FROM {}._synced_sites WHERE site_id = $1",
            self.db.schema
        );
        let bytes = site.as_bytes().as_slice();
        Ok(self.query(&statement, &[&bytes])?.first().map(|r| r.get(0)))
    }

    fn page_keys(
        &self,
        schema: &TableSchema,
        after: (i64, i64),
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>> {
        let statement = format!(
            "SELECT _synced_dv, _synced_seq FROM {} \
             WHERE (_synced_dv, _synced_seq) > ($1, $2) AND _synced_dv <= $3 \
             ORDER BY _synced_dv, _synced_seq LIMIT $4",
            self.clock(schema)?
        );
        let rows = self.query(&statement, &[&after.0, &after.1, &upto, &limit])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn scan(
        &self,
        schema: &TableSchema,
        range: Range<'_>,
        each: &mut dyn FnMut(ClockRow) -> Result<()>,
    ) -> Result<()> {
        let (condition, params, base, filter): (&str, Vec<i64>, i64, _) = match range {
            Range::Since(since) => ("c._synced_dv > $1", vec![since], since, None),
            Range::Page {
                base,
                after,
                upto,
                filter,
            } => (
                "(c._synced_dv, c._synced_seq) > ($1, $2) \
                 AND (c._synced_dv, c._synced_seq) <= ($3, $4)",
                vec![after.0, after.1, upto.0, upto.1],
                base,
                filter,
            ),
        };
        let condition = format!("{condition} AND c._synced_dv <= ${}", params.len() + 1);
        let mut bound: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        bound.push(&self.upto);
        let judged = filter.map(|f| (f.sql, f.params));
        let rows = self.clock_rows(schema, &condition, &bound, base, judged)?;
        for row in rows {
            // The rows that fail are left out, but those the reader created.
            if let Some(reader) = filter.and_then(|f| f.only_passing_for)
                && row.passes == Some(false)
                && self.origin(row.created)?.0 != reader
            {
                continue;
            }
            each(row)?;
        }
        Ok(())
    }

    fn hidden(&self, schema: &TableSchema, base: i64, end: i64) -> Result<Option<i64>> {
        let mut versions = vec!["(c._synced_created)".to_owned()];
        versions.extend(
            schema
                .value_columns()
                .map(|c| format!("(c.{})", ident(&format!("{}.dv", c.id())))),
        );
        let statement = format!(
            "SELECT min(x.v) FROM {} c, LATERAL (VALUES {}) AS x(v) \
             WHERE c._synced_dv > $1 AND x.v > $2 AND x.v <= $1",
            self.clock(schema)?,
            versions.join(", ")
        );
        Ok(self.query(&statement, &[&end, &base])?[0].get(0))
    }

    fn holds_in_table(&self, reader: i64, table: &str) -> Result<bool> {
        let statement = format!(
            "SELECT EXISTS (SELECT 1 FROM {}._synced_held WHERE site = $1 AND tbl = $2)",
            self.db.schema
        );
        Ok(self.query(&statement, &[&reader, &table])?[0].get(0))
    }

    fn held_mark(&self, reader: i64, table: &str, key: &[u8]) -> Result<Option<(bool, i64)>> {
        let statement = format!(
            "SELECT evicted, at FROM {}._synced_held WHERE site = $1 AND tbl = $2 AND pk = $3",
            self.db.schema
        );
        Ok(self
            .query(&statement, &[&reader, &table, &key])?
            .first()
            .map(|r| (r.get::<_, i64>(0) != 0, r.get(1))))
    }

    fn passes(
        &self,
        schema: &TableSchema,
        sql: &str,
        params: &[Value],
        pk: &[Value],
    ) -> Result<Option<bool>> {
        Ok(self
            .clock_row(schema, pk, sql, params)?
            .filter(|row| row.exists)
            .and_then(|row| row.passes))
    }

    fn clock_row(
        &self,
        schema: &TableSchema,
        pk: &[Value],
        sql: &str,
        params: &[Value],
    ) -> Result<Option<ClockRow>> {
        let key = value::params(pk)?;
        let rows = self.clock_rows(
            schema,
            &Self::by_key(schema),
            &value::refs(&key),
            0,
            Some((sql, params)),
        )?;
        Ok(rows.into_iter().next())
    }
}
