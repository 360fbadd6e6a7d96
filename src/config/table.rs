//! The outbox table's name: validation of `database.table` and the quoted identifiers derived
//! from it (sequences, trigger, NOTIFY channel). Nothing user-supplied is spliced into SQL
//! without passing through [`TableName::parse`].

use std::fmt;

/// Longest accepted table name part, leaving room for derived names (`<table>_schema_history`)
/// inside Postgres' 63-byte identifier limit.
const MAX_NAME_LEN: usize = 40;

/// `database.table` is not a valid identifier.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a valid table name: use lowercase letters, digits and underscores \
     (starting with a letter or underscore, at most {MAX_NAME_LEN} characters), optionally \
     schema-qualified as `schema.table`"
)]
pub struct InvalidTableName(String);

/// A validated, optionally schema-qualified table name (`database.table`, `inbox.table`:
/// parsed when the configuration loads).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// Parses `table` or `schema.table`; every part must be a plain lowercase identifier.
    pub fn parse(raw: &str) -> Result<Self, InvalidTableName> {
        let invalid = || InvalidTableName(raw.to_owned());
        let (schema, name) = match raw.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, raw),
        };
        let valid = |part: &str| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && part.len() <= MAX_NAME_LEN
        };
        if !valid(name) || schema.is_some_and(|s| !valid(s)) {
            return Err(invalid());
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The schema, if the name was qualified.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The unqualified table name (also the NOTIFY channel).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quoted, qualified table identifier for SQL, e.g. `"app"."outbox_events"`.
    pub fn qualified(&self) -> String {
        self.derived("")
    }

    /// A quoted, qualified identifier for an object named after the table, e.g.
    /// `derived("_sleepers")` is `"app"."outbox_events_sleepers"`.
    pub fn derived(&self, suffix: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}{suffix}\"", self.name),
            None => format!("\"{}{suffix}\"", self.name),
        }
    }

    /// The text form usable as a `regclass` literal parameter (`schema.table` or `table`).
    pub fn regclass(&self) -> String {
        self.to_string()
    }

    /// Renders a migration written for the default name `outbox_events` for this table: every
    /// identifier starting with `outbox_events` gets this table's name instead. Migrations run
    /// with `search_path` set to the table's schema, so unqualified names land there.
    pub fn render_migration(&self, sql: &str) -> String {
        self.render_sql(sql, "outbox_events")
    }

    /// Renders SQL written for the table name `default` for this table (the same rule as
    /// [`TableName::render_migration`], for the inbox's `outbox_inbox`).
    pub fn render_sql(&self, sql: &str, default: &str) -> String {
        sql.replace(default, &self.name)
    }
}

impl TryFrom<String> for TableName {
    type Error = InvalidTableName;

    fn try_from(raw: String) -> Result<Self, InvalidTableName> {
        Self::parse(&raw)
    }
}

impl From<TableName> for String {
    fn from(table: TableName) -> String {
        table.to_string()
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified_names() {
        let plain = TableName::parse("outbox_events").unwrap();
        assert_eq!(plain.qualified(), "\"outbox_events\"");
        let qualified = TableName::parse("app.events2").unwrap();
        assert_eq!(qualified.qualified(), "\"app\".\"events2\"");
        assert_eq!(qualified.derived("_wakers"), "\"app\".\"events2_wakers\"");
        assert_eq!(qualified.to_string(), "app.events2");
    }

    #[test]
    fn rejects_anything_that_could_escape() {
        for bad in [
            "",
            "Outbox",
            "a-b",
            "a;drop table x",
            "a.b.c",
            "\"x\"",
            "1abc",
            ".x",
            "x.",
            "a b",
            &"x".repeat(41),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn renders_migrations_for_custom_names() {
        let t = TableName::parse("app.events").unwrap();
        let sql = "CREATE INDEX outbox_events_idx ON outbox_events (seq); SELECT pg_notify('outbox_events', '')";
        assert_eq!(
            t.render_migration(sql),
            "CREATE INDEX events_idx ON events (seq); SELECT pg_notify('events', '')"
        );
    }
}
