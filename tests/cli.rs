//! The binary's contract: exit codes and messages for bad configuration, `migrate`
//! idempotence, `config` redaction, and a friendly error before `migrate` was run.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::{process::relay_binary, *};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_key_exits_2_and_names_it() {
    let dir = std::env::temp_dir().join(format!("outbox-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, "[relay]\nbatch_sise = 10\n").unwrap();
    let out = relay_binary()
        .args(["--config", file.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("relay.batch_sise"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_env_value_exits_2_and_names_the_key() {
    let out = relay_binary()
        .env("OUTBOX_RELAY_RETRY__MAX_BACKOFF", "forever")
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("retry.max_backoff"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_broker_kind_exits_2() {
    let out = relay_binary()
        .env("OUTBOX_RELAY_BROKER__KIND", "kafka")
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broker.kind"), "{}", stderr(&out));
}

#[test]
fn invalid_table_name_exits_2() {
    let out = relay_binary()
        .env("OUTBOX_RELAY_DATABASE__TABLE", "outbox; drop table users")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("database.table"), "{}", stderr(&out));
}

#[test]
fn missing_config_file_exits_2() {
    let out = relay_binary()
        .args(["--config", "/nonexistent/outbox.toml", "config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/outbox.toml"));
}

#[test]
fn unknown_subcommand_exits_2() {
    let out = relay_binary().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_command_redacts_secrets() {
    let out = relay_binary()
        .env(
            "OUTBOX_RELAY_DATABASE__URL",
            "postgres://app:hunter2@db:5432/app",
        )
        .env(
            "OUTBOX_RELAY_BROKER__RABBITMQ__URL",
            "amqps://relay:s3cret@mq:5671/%2f",
        )
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(shown.contains("app:***@db"), "{shown}");
}

#[tokio::test]
async fn migrate_is_idempotent_and_supports_schema_qualified_tables() {
    let db = TestDb::empty().await;
    for _ in 0..2 {
        let out = relay_binary()
            .env("OUTBOX_RELAY_DATABASE__URL", &db.url)
            .env("OUTBOX_RELAY_DATABASE__TABLE", "app.events")
            .arg("migrate")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let client = db.client().await;
    // A producer with a default search_path writes through the qualified name and the
    // trigger still finds its sequences.
    client
        .batch_execute(
            "INSERT INTO app.events (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('a', '1', 'e', '{}')",
        )
        .await
        .unwrap();
    // So does one calling the producer function, named after the configured table.
    client
        .batch_execute("SELECT app.events_enqueue('a', '1', 'e', '{}')")
        .await
        .unwrap();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM app.events_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|entry| {
            let path = entry.as_ref().unwrap().path();
            path.extension().is_some_and(|ext| ext == "sql")
        })
        .count();
    assert_eq!(versions, files as i64);
}

#[tokio::test]
async fn run_before_migrate_says_what_to_do() {
    let db = TestDb::empty().await;
    let out = relay_binary()
        .env("OUTBOX_RELAY_DATABASE__URL", &db.url)
        .env("OUTBOX_RELAY_METRICS__LISTEN", "127.0.0.1:0")
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("outbox-relay migrate"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
