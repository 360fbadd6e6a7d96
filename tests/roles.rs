//! Least privilege: the owner migrates, the relay and every operator command run as a role
//! holding exactly what `outbox-relay grants` prints, producers hold only INSERT (and wake a
//! sleeping relay through the trigger all the same), and `migrate` as the runtime role says
//! which role it needs.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::{
    process::{cli, notify_only_relay},
    *,
};
use uuid::Uuid;

/// Three login roles of one test, dropped with its database.
struct Roles {
    owner: String,
    relay: String,
    producer: String,
    db: TestDb,
}

impl Roles {
    /// An empty database owned by a fresh non-superuser owner role, a relay role and a
    /// producer role with no privileges yet; CONNECT revoked from PUBLIC.
    async fn create() -> Self {
        let db = TestDb::empty().await;
        let id = Uuid::new_v4().simple().to_string();
        let [owner, relay, producer] =
            ["owner", "relay", "producer"].map(|r| format!("outbox_{r}_{}", &id[..12]));
        let admin = db.client().await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {owner} LOGIN NOSUPERUSER;
                 CREATE ROLE {relay} LOGIN NOSUPERUSER;
                 CREATE ROLE {producer} LOGIN NOSUPERUSER;
                 ALTER DATABASE {name} OWNER TO {owner};
                 REVOKE ALL ON DATABASE {name} FROM PUBLIC;",
                name = db.name
            ))
            .await
            .unwrap();
        Self {
            owner,
            relay,
            producer,
            db,
        }
    }

    /// This test's database as `role`.
    fn url(&self, role: &str) -> String {
        let server = pg_server();
        let rest = server.split_once('@').map_or(server.as_str(), |(_, r)| r);
        format!("postgres://{role}@{rest}/{}", self.db.name)
    }

    async fn drop(self) {
        let admin = connect(&format!("{}/postgres", pg_server())).await;
        // One statement per call: DROP DATABASE cannot run in a multi-statement batch.
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db.name
            ))
            .await
            .unwrap();
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {}, {}, {}",
                self.owner, self.relay, self.producer
            ))
            .await
            .unwrap();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `outbox-relay grants` for this test's roles, applied by the owner.
async fn apply_grants(roles: &Roles) {
    let out = cli(
        &roles.url(&roles.owner),
        &[
            "grants",
            "--relay-role",
            &roles.relay,
            "--producer-role",
            &roles.producer,
        ],
    );
    succeeded(&out, "grants");
    connect(&roles.url(&roles.owner))
        .await
        .batch_execute(&text(&out.stdout))
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_commands_and_producers_run_with_the_printed_grants_only() {
    // GIVEN a schema migrated by a non-superuser owner and the printed grants applied
    let roles = Roles::create().await;
    succeeded(
        &cli(&roles.url(&roles.owner), &["migrate"]),
        "migrate as owner",
    );
    apply_grants(&roles).await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;

    // AND a relay running as the runtime role that only wakes up on NOTIFY (no polls, no
    // rescans within the test), lingering 1 ms before it sleeps
    let relay_url = roles.url(&roles.relay);
    let relay = notify_only_relay(&relay_url, &broker.exchange);
    let admin = roles.db.client().await;
    eventually("the relay announces that it sleeps", || {
        relay_sleeps(&admin)
    })
    .await;

    // WHEN an INSERT-only producer writes an event in its own transaction
    let mut producer = connect(&roles.url(&roles.producer)).await;
    let tx = producer.transaction().await.unwrap();
    // (the producer chooses the ID: RETURNING would need SELECT on the column)
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload) \
         VALUES ($1, 'order', '1', 'order.created', '{}')",
        &[&id],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // THEN the sleeping relay is woken and publishes it
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, id.to_string());

    // AND the same role may write through the producer function, which returns the ID
    let via_function: Uuid = producer
        .query_one(
            "SELECT outbox_events_enqueue('order', '1', 'order.paid', '{}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, via_function.to_string());

    // AND every operator command works as the runtime role
    for args in [
        vec!["status"],
        vec!["dead", "list"],
        vec!["replay", "--all-dead"],
        vec!["purge", "--older-than", "1s"],
    ] {
        succeeded(&cli(&relay_url, &args), &args.join(" "));
    }

    // AND the producer can read nothing and change nothing but its inserts
    let denied = producer
        .query("SELECT count(*) FROM outbox_events", &[])
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );

    drop(relay);
    broker.cleanup().await;
    roles.drop().await;
}

#[tokio::test]
async fn migrate_as_the_runtime_role_names_the_role_it_needs() {
    // GIVEN a schema migrated by the owner and the relay's grants applied
    let roles = Roles::create().await;
    succeeded(
        &cli(&roles.url(&roles.owner), &["migrate"]),
        "migrate as owner",
    );
    apply_grants(&roles).await;

    // WHEN the runtime role runs migrate
    let out = cli(&roles.url(&roles.relay), &["migrate"]);

    // THEN it exits 1 with one line naming the owning role
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("\"{}\" cannot migrate", roles.relay))
            && lines[0].contains(&format!("owning role \"{}\"", roles.owner)),
        "{stderr}"
    );
    roles.drop().await;
}

#[tokio::test]
async fn migrate_without_create_privilege_says_so_before_touching_anything() {
    // GIVEN an empty database and a role that may connect but not create
    let roles = Roles::create().await;
    connect(&roles.url(&roles.owner))
        .await
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO {}",
            roles.db.name, roles.relay
        ))
        .await
        .unwrap();

    // WHEN it runs migrate
    let out = cli(&roles.url(&roles.relay), &["migrate"]);

    // THEN it exits 1 saying which privilege is missing, and no table was created
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("lacks the CREATE privilege on schema \"public\""),
        "{}",
        text(&out.stderr)
    );
    let exists: bool = roles
        .db
        .client()
        .await
        .query_one("SELECT to_regclass('outbox_events') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
    roles.drop().await;
}
