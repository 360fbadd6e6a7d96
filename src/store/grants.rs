//! The privileges of the two roles besides the owner, as GRANT statements for the configured
//! table: the relay's runtime role (`run`, `status`, `dead list`, `replay`, `purge`) and the
//! producers' role (INSERT, and EXECUTE on `<table>_enqueue`). Printed by `outbox-relay grants`; the owner runs `migrate`.

use crate::config::TableName;

/// The roles to print grants for (at least one).
#[derive(Debug, Clone, Default)]
pub struct Roles<'a> {
    /// The relay's runtime role.
    pub relay: Option<&'a str>,
    /// The role applications write events with.
    pub producer: Option<&'a str>,
}

/// The GRANT statements for `roles` on `table` in `database`, with comments, ready for psql.
/// An unqualified table is assumed to live in schema `public`.
pub fn statements(table: &TableName, database: &str, roles: &Roles<'_>) -> String {
    let schema = ident(table.schema().unwrap_or("public"));
    let object = |suffix: &str| format!("{schema}.{}", ident(&format!("{}{suffix}", table.name())));
    let database = ident(database);
    let mut out = format!(
        "-- outbox-relay grants for {} in database {database}.\n\
         -- Run as the role that owns the table (the one that runs `outbox-relay migrate`);\n\
         -- GRANT CONNECT needs the database's owner.\n",
        object("")
    );
    if let Some(role) = roles.relay {
        let role = ident(role);
        out.push_str(&format!(
            "\n-- The relay's runtime role: run, status, dead list, replay, purge.\n\
             GRANT CONNECT ON DATABASE {database} TO {role};\n\
             GRANT USAGE ON SCHEMA {schema} TO {role};\n\
             GRANT SELECT, UPDATE, DELETE ON TABLE {table} TO {role};\n\
             GRANT USAGE, SELECT ON SEQUENCE {identity}, {sleepers}, {wakers} TO {role};\n",
            table = object(""),
            identity = object("_seq_seq"),
            sleepers = object("_sleepers"),
            wakers = object("_wakers"),
        ));
    }
    if let Some(role) = roles.producer {
        let role = ident(role);
        out.push_str(&format!(
            "\n-- Producers: write events with {enqueue}(...) (it keeps each aggregate's events\n\
             -- in order) or plain INSERT. The NOTIFY trigger runs with the owner's privileges,\n\
             -- so nothing else is needed. INSERT ... RETURNING id would also need SELECT (id):\n\
             -- choose the ID in the application, or use the function, which returns it.\n\
             GRANT CONNECT ON DATABASE {database} TO {role};\n\
             GRANT USAGE ON SCHEMA {schema} TO {role};\n\
             GRANT INSERT ON TABLE {table} TO {role};\n\
             GRANT EXECUTE ON FUNCTION {enqueue}(text, text, text, jsonb, jsonb, uuid) TO {role};\n",
            table = object(""),
            enqueue = object("_enqueue"),
        ));
    }
    out
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_the_configured_table_and_quote_roles() {
        let table = TableName::parse("app.events").unwrap();
        let text = statements(
            &table,
            "shop",
            &Roles {
                relay: Some("relay"),
                producer: Some("we\"ird"),
            },
        );
        assert!(
            text.contains("GRANT SELECT, UPDATE, DELETE ON TABLE \"app\".\"events\" TO \"relay\";")
        );
        assert!(text.contains("\"app\".\"events_sleepers\", \"app\".\"events_wakers\""));
        assert!(text.contains("GRANT INSERT ON TABLE \"app\".\"events\" TO \"we\"\"ird\";"));
        assert!(text.contains(
            "GRANT EXECUTE ON FUNCTION \"app\".\"events_enqueue\"(text, text, text, jsonb, jsonb, uuid) TO \"we\"\"ird\";"
        ));
        assert!(text.contains("GRANT CONNECT ON DATABASE \"shop\" TO \"relay\";"));
    }

    #[test]
    fn only_the_requested_roles_are_printed() {
        let table = TableName::parse("outbox_events").unwrap();
        let text = statements(
            &table,
            "postgres",
            &Roles {
                relay: None,
                producer: Some("app"),
            },
        );
        assert!(text.contains("\"public\".\"outbox_events\" TO \"app\""));
        assert!(!text.contains("UPDATE"));
    }
}
