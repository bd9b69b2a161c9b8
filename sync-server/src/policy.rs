//! Row-level security: the policies of the configuration, compiled once, and
//! bound to each caller's token claims.
//!
//! A policy is an SQL expression over a row's columns. `$user_id` stands for the
//! token's `sub`, `$<claim>` for any other claim; each becomes a numbered
//! parameter (`?1`, `?2`…) bound to the caller's value, so a claim is never part of
//! the SQL text. A claim the token lacks is NULL, which matches no comparison.

use std::collections::HashMap;

use sync_runtime::Value;
use sync_runtime::server::{RowFilter, RowFilters};

use crate::auth::Principal;
use crate::config::{Access, DatabaseConfig};

/// A compiled policy: SQL with numbered parameters, and the claim each stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    sql: String,
    claims: Vec<String>,
}

/// The claim that `$user_id` names: the token's subject.
const USER_ID: &str = "user_id";

impl Policy {
    /// Compiles a policy's text: `$name` outside string literals and quoted
    /// identifiers becomes a parameter. Refuses an empty policy, more than one
    /// statement, and `?` parameters (claims are the only parameters).
    ///
    /// ```
    /// use sync_server::policy::Policy;
    ///
    /// let policy = Policy::compile("owner_id = $user_id OR team = $team OR note = '$user_id'")?;
    /// assert_eq!(policy.sql(), "owner_id = ?1 OR team = ?2 OR note = '$user_id'");
    /// assert_eq!(policy.claims(), ["user_id", "team"]);
    /// assert!(Policy::compile("true; DELETE FROM todos").is_err());
    /// # Ok::<(), String>(())
    /// ```
    pub fn compile(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("the policy is empty; write `true` to allow every row".into());
        }
        let mut sql = String::with_capacity(text.len());
        let mut claims: Vec<String> = Vec::new();
        let mut chars = text.chars().peekable();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            if let Some(open) = quote {
                sql.push(c);
                if c == open {
                    quote = None;
                }
                continue;
            }
            match c {
                '\'' | '"' | '`' => {
                    quote = Some(c);
                    sql.push(c);
                }
                '[' => {
                    quote = Some(']');
                    sql.push(c);
                }
                ';' => return Err("a policy is one expression; `;` is not allowed".into()),
                '?' | ':' | '@' => {
                    return Err(format!(
                        "`{c}` parameters are not allowed; use $user_id or $<claim>"
                    ));
                }
                '$' => {
                    let mut name = String::new();
                    while let Some(&n) = chars.peek() {
                        if n.is_ascii_alphanumeric() || n == '_' {
                            name.push(n);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    if name.is_empty() {
                        return Err("`$` must be followed by a claim name, as in $user_id".into());
                    }
                    let index = match claims.iter().position(|c| *c == name) {
                        Some(index) => index,
                        None => {
                            claims.push(name);
                            claims.len() - 1
                        }
                    };
                    sql.push_str(&format!("?{}", index + 1));
                }
                _ => sql.push(c),
            }
        }
        if quote.is_some() {
            return Err("a quote is not closed".into());
        }
        Ok(Self { sql, claims })
    }

    /// The SQL, with `?1`, `?2`… for the claims.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The claims the parameters stand for, in order.
    pub fn claims(&self) -> &[String] {
        &self.claims
    }

    /// The filter of this policy for a user.
    pub fn bind(
        &self,
        user: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> RowFilter {
        let params = self
            .claims
            .iter()
            .map(|name| match name.as_str() {
                USER_ID => Value::from(user),
                other => claims.get(other).map_or(Value::Null, claim_value),
            })
            .collect();
        RowFilter::Where {
            sql: self.sql.clone(),
            params,
        }
    }

    /// The filter with every claim NULL: what start-up checks prepare.
    pub fn unbound(&self) -> RowFilter {
        RowFilter::Where {
            sql: self.sql.clone(),
            params: vec![Value::Null; self.claims.len()],
        }
    }
}

/// A claim's value as an SQL value: strings as TEXT, integers as INTEGER, other
/// numbers as REAL, booleans as 0 or 1, anything else as its JSON text.
fn claim_value(claim: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match claim {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => n.as_f64().map_or(Value::Null, Value::Real),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// What users may read or write of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Every row.
    All,
    /// No row.
    Nothing,
    /// The rows a policy allows.
    Where(Policy),
}

impl Rule {
    /// The filter start-up checks prepare: the policy with every claim NULL.
    pub(crate) fn unbound(&self) -> RowFilter {
        match self {
            Rule::Where(policy) => policy.unbound(),
            Rule::All | Rule::Nothing => RowFilter::All,
        }
    }

    fn filter(&self, user: &str, claims: &serde_json::Map<String, serde_json::Value>) -> RowFilter {
        match self {
            Rule::All => RowFilter::All,
            Rule::Nothing => RowFilter::Nothing,
            Rule::Where(policy) => policy.bind(user, claims),
        }
    }
}

/// The row-level security of one database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policies {
    /// Per table (lowercase): read, then write.
    tables: HashMap<String, (Rule, Rule)>,
    unlisted: Access,
    audience: Option<String>,
    /// The oldest app version served (0: every one).
    oldest_version: i64,
}

impl Policies {
    /// Compiles a database's configuration.
    pub fn new(config: &DatabaseConfig) -> Result<Self, String> {
        let rule = |text: &Option<String>| match text {
            None => Ok(Rule::Nothing),
            // Every row: no filter to evaluate, and no rows to keep track of.
            Some(text) if text.trim().eq_ignore_ascii_case("true") => Ok(Rule::All),
            Some(text) => Policy::compile(text).map(Rule::Where),
        };
        let mut tables = HashMap::new();
        for (table, policies) in &config.tables {
            let read = rule(&policies.read).map_err(|e| format!("table `{table}`, read: {e}"))?;
            let write =
                rule(&policies.write).map_err(|e| format!("table `{table}`, write: {e}"))?;
            if tables
                .insert(table.to_ascii_lowercase(), (read, write))
                .is_some()
            {
                return Err(format!(
                    "table `{table}` is listed twice (table names ignore case)"
                ));
            }
        }
        Ok(Self {
            tables,
            unlisted: config.unlisted_tables,
            audience: config.audience.clone(),
            oldest_version: config.oldest_supported_version.unwrap_or(0),
        })
    }

    /// The oldest app version whose devices the database serves (see
    /// [`DatabaseConfig::oldest_supported_version`]); 0 for every one.
    pub fn oldest_version(&self) -> i64 {
        self.oldest_version
    }

    /// Whether `caller` may use the database at all: an API key may; a user's
    /// token must name the database's audience, if it has one, in its `aud`
    /// claim (a string or an array of strings).
    pub fn admits(&self, caller: &Principal) -> bool {
        let (Principal::User { claims, .. }, Some(audience)) = (caller, &self.audience) else {
            return true;
        };
        match claims.get("aud") {
            Some(serde_json::Value::String(aud)) => aud == audience,
            Some(serde_json::Value::Array(auds)) => {
                auds.iter().any(|a| a.as_str() == Some(audience))
            }
            _ => false,
        }
    }

    /// The tables with policies, and their policies (for start-up checks).
    pub fn tables(&self) -> impl Iterator<Item = (&str, &Rule, &Rule)> {
        self.tables
            .iter()
            .map(|(name, (read, write))| (name.as_str(), read, write))
    }

    /// What `caller` may write: `None` for an API key, which writes everything.
    pub fn write_filter(&self, caller: &Principal) -> Option<RowFilters> {
        self.filters(caller, |(_, write)| write)
    }

    /// What `caller`'s pushes may write and read: `None` for an API key, which
    /// writes and reads everything.
    pub fn push_access(&self, caller: &Principal) -> Option<crate::store::PushAccess> {
        Some(crate::store::PushAccess {
            write: self.write_filter(caller)?,
            read: self.read_filter(caller)?,
        })
    }

    /// What `caller` may read: `None` for an API key, which reads everything.
    pub fn read_filter(&self, caller: &Principal) -> Option<RowFilters> {
        self.filters(caller, |(read, _)| read)
    }

    /// The filters of `caller`, one rule of each table chosen by `rule`.
    fn filters(
        &self,
        caller: &Principal,
        rule: impl Fn(&(Rule, Rule)) -> &Rule,
    ) -> Option<RowFilters> {
        let Principal::User { id, claims } = caller else {
            return None;
        };
        let others = match self.unlisted {
            Access::Closed => RowFilter::Nothing,
            Access::Shared => RowFilter::All,
        };
        let filters = self
            .tables
            .iter()
            .fold(RowFilters::new(others), |filters, (table, rules)| {
                filters.table(table, rule(rules).filter(id, claims))
            });
        Some(filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_become_numbered_parameters() {
        let policy = Policy::compile("a = $user_id AND (b = $team OR c = $user_id)").unwrap();
        assert_eq!(policy.sql(), "a = ?1 AND (b = ?2 OR c = ?1)");
        let claims = serde_json::json!({ "team": 7 });
        let filter = policy.bind("ann", claims.as_object().unwrap());
        assert_eq!(
            filter,
            RowFilter::Where {
                sql: policy.sql().into(),
                params: vec![Value::from("ann"), Value::Integer(7)],
            }
        );
    }

    #[test]
    fn quoted_text_is_left_alone() {
        let policy = Policy::compile(r#"note = 'it''s $x' AND "$col" = $y"#).unwrap();
        assert_eq!(policy.sql(), r#"note = 'it''s $x' AND "$col" = ?1"#);
        assert_eq!(policy.claims(), ["y"]);
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            "",
            "  ",
            "a = ?1",
            "a = :x",
            "a = $",
            "a = 'open",
            "1; DROP TABLE t",
        ] {
            assert!(Policy::compile(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_claim_is_null() {
        let policy = Policy::compile("tenant = $tenant").unwrap();
        let filter = policy.bind("ann", &serde_json::Map::new());
        assert_eq!(
            filter,
            RowFilter::Where {
                sql: "tenant = ?1".into(),
                params: vec![Value::Null],
            }
        );
    }

    #[test]
    fn a_true_policy_opens_the_table_without_a_filter() {
        let config = crate::DatabaseConfig {
            tables: [(
                "todos".to_owned(),
                crate::TablePolicies {
                    read: Some(" TRUE ".into()),
                    write: Some("owner = $user_id".into()),
                },
            )]
            .into(),
            ..crate::DatabaseConfig::default()
        };
        let policies = Policies::new(&config).unwrap();
        let ann = Principal::User {
            id: "ann".into(),
            claims: serde_json::Map::new(),
        };
        let read = policies.read_filter(&ann).unwrap();
        assert_eq!(read.for_table("todos"), &RowFilter::All);
        assert_eq!(read.for_table("other"), &RowFilter::Nothing);
        let write = policies.write_filter(&ann).unwrap();
        assert!(matches!(write.for_table("todos"), RowFilter::Where { .. }));
    }

    #[test]
    fn a_table_listed_twice_is_refused() {
        let open = crate::TablePolicies {
            read: Some("true".into()),
            write: None,
        };
        let config = crate::DatabaseConfig {
            tables: [
                ("todos".to_owned(), open.clone()),
                ("Todos".to_owned(), open),
            ]
            .into(),
            ..crate::DatabaseConfig::default()
        };
        let error = Policies::new(&config).unwrap_err();
        assert!(error.contains("listed twice"), "{error}");
    }
}
