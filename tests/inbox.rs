//! The consumers' inbox: `migrate --inbox`, `inbox::Inbox` (new vs duplicate IDs), `purge
//! --inbox`, and the example consumer (`examples/inbox_consumer.rs`) end to end against the
//! real relay binary: crashed, killed and restarted, it ends with exact results.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    io::BufRead,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
};

use aws_sdk_sqs::types::QueueAttributeName;
use common::{
    process::{RelayProcess, relay_binary, sigterm},
    producers::insert_backlog,
    *,
};
use outbox_relay::{config::TableName, inbox::Inbox};
use uuid::Uuid;

/// Runs `outbox-relay <args> --database-url <url>` with only the test's `OUTBOX_RELAY_*`
/// variables and returns its stdout (asserting exit 0).
fn relay_command(url: &str, envs: &[(&str, &str)], args: &[&str]) -> String {
    let out = relay_binary()
        .envs(envs.iter().copied())
        .args(args)
        .args(["--database-url", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A consumer database with the inbox created by `outbox-relay migrate --inbox`.
async fn consumer_db() -> TestDb {
    let db = TestDb::empty().await;
    relay_command(&db.url, &[], &["migrate", "--inbox"]);
    db
}

#[tokio::test]
async fn inbox_tells_new_ids_from_duplicates_per_consumer() {
    // GIVEN an inbox named by `inbox.table`, migrated twice
    let db = TestDb::empty().await;
    let envs = [("OUTBOX_RELAY_INBOX__TABLE", "app.received")];
    let first = relay_command(&db.url, &envs, &["migrate", "--inbox"]);
    assert!(
        first.contains("applied V1__outbox_inbox to app.received"),
        "{first}"
    );
    let again = relay_command(&db.url, &envs, &["migrate", "--inbox"]);
    assert!(again.contains("up to date"), "{again}");
    let table = TableName::parse("app.received").unwrap();
    let billing = Inbox::new(&table, "billing");
    let mut client = db.client().await;
    let [a, b, c, d] = [(); 4].map(|_| Uuid::new_v4());

    // WHEN a batch holds an ID twice, THEN its second copy is a duplicate
    let tx = client.transaction().await.unwrap();
    let recorded = billing.record(&tx, &[a, b, a]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recorded.new, [a, b]);
    assert_eq!(recorded.duplicates, [a]);

    // WHEN a transaction that recorded an ID rolls back, THEN the ID is still new afterwards
    let tx = client.transaction().await.unwrap();
    assert_eq!(billing.record(&tx, &[d]).await.unwrap().new, [d]);
    tx.rollback().await.unwrap();

    // WHEN a later batch repeats committed IDs, THEN only the unseen ones are new
    let tx = client.transaction().await.unwrap();
    let recorded = billing.record(&tx, &[b, c, d]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recorded.new, [c, d]);
    assert_eq!(recorded.duplicates, [b]);

    // AND another consumer dedupes on its own
    let shipping = Inbox::new(&table, "shipping");
    assert_eq!(shipping.record(&client, &[a]).await.unwrap().new, [a]);
}

#[test]
fn bad_inbox_table_or_database_url_exits_2_naming_it() {
    for (envs, url, named) in [
        (
            vec![("OUTBOX_RELAY_INBOX__TABLE", "Inbox")],
            "postgres://x@h/db",
            "`inbox.table`",
        ),
        (vec![], "nope://x", "--database-url"),
    ] {
        let out = relay_binary()
            .envs(envs)
            .args(["migrate", "--inbox", "--database-url", url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{err}");
    }
}

#[tokio::test]
async fn purge_inbox_deletes_rows_older_than_the_window_only() {
    // GIVEN inbox rows received 10 days, 8 days and 1 hour ago
    let db = consumer_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO outbox_inbox (consumer, message_id, received_at) VALUES \
             ('a', gen_random_uuid(), now() - interval '10 days'), \
             ('b', gen_random_uuid(), now() - interval '8 days'), \
             ('a', gen_random_uuid(), now() - interval '1 hour')",
        )
        .await
        .unwrap();

    // WHEN the inbox is purged with a 7-day window, in batches of one row
    let out = relay_command(
        &db.url,
        &[("OUTBOX_RELAY_RETENTION__BATCH_SIZE", "1")],
        &["purge", "--inbox", "--older-than", "7d"],
    );

    // THEN the two old rows are gone, the recent one stays
    assert!(out.contains("purged 2 inbox row(s)"), "{out}");
    let left: i64 = client
        .query_one("SELECT count(*) FROM outbox_inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

/// What a consumer run printed on exit.
#[derive(Debug, Default, Clone, Copy)]
struct Report {
    applied: u64,
    duplicates: u64,
    out_of_order: u64,
}

/// The example consumer as a child process; its exit report is read from stdout.
struct ConsumerRun {
    child: Child,
    report: Arc<Mutex<Option<Report>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ConsumerRun {
    fn spawn(args: &[String], envs: &[(&str, String)]) -> Self {
        let binary = consumer_binary();
        let mut child = Command::new(&binary)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let stdout = child.stdout.take().unwrap();
        let report = Arc::new(Mutex::new(None));
        let sink = report.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[consumer] {line}");
                if let Some(parsed) = parse_report(&line) {
                    *sink.lock().unwrap() = Some(parsed);
                }
            }
        });
        Self {
            child,
            report,
            reader: Some(reader),
        }
    }

    /// Awaits the exit; returns the status and the report it printed.
    async fn exited(mut self) -> (ExitStatus, Report) {
        let mut status = None;
        eventually("the consumer exits", || {
            status = self.child.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        self.reader.take().unwrap().join().unwrap();
        let report = self.report.lock().unwrap().expect("no report printed");
        (status.unwrap(), report)
    }

    /// SIGTERM, then the exit (code 0) and the report.
    async fn terminate(self) -> Report {
        sigterm(&self.child);
        let (status, report) = self.exited().await;
        assert!(status.success(), "{status:?}");
        report
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn parse_report(line: &str) -> Option<Report> {
    let fields: HashMap<&str, u64> = line
        .strip_prefix("inbox_consumer: ")?
        .split(' ')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k, v.parse().ok()?))
        })
        .collect();
    Some(Report {
        applied: fields["applied"],
        duplicates: fields["duplicates"],
        out_of_order: fields["out_of_order"],
    })
}

fn consumer_binary() -> PathBuf {
    example_binary("inbox_consumer")
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// THEN-part shared by both brokers: exact state, exact inbox, duplicates seen, order kept.
async fn assert_exact(
    consumer: &tokio_postgres::Client,
    aggregates: i64,
    per_aggregate: i64,
    reports: &[Report],
) {
    let wrong: i64 = count(
        consumer,
        &format!(
            "SELECT count(*) + (SELECT {aggregates} - count(*) FROM aggregate_counts) \
             FROM aggregate_counts WHERE events <> {per_aggregate}"
        ),
    )
    .await;
    assert_eq!(wrong, 0, "aggregates whose count is not {per_aggregate}");
    let inbox = count(consumer, "SELECT count(*) FROM outbox_inbox").await;
    assert_eq!(inbox, aggregates * per_aggregate);
    let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
    assert!(duplicates > 0, "{reports:?}");
    assert!(reports.iter().all(|r| r.out_of_order == 0), "{reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_consumer_ends_exact_after_crashes_and_restarts() {
    // GIVEN 20,000 events over 200 aggregates, a relay process and an empty consumer database
    const AGGREGATES: i64 = 200;
    const PER_AGGREGATE: i64 = 100;
    const EVENTS: i64 = AGGREGATES * PER_AGGREGATE;
    let outbox = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let db = consumer_db().await;
    let pg = outbox.client().await;
    let consumer = db.client().await;
    insert_backlog(&pg, "agg", AGGREGATES, PER_AGGREGATE).await;
    let relay_env = vec![
        ("OUTBOX_RELAY_DATABASE__URL", outbox.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
        ("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "100ms".into()),
    ];
    let mut relay = RelayProcess::spawn(&relay_env);
    let args: Vec<String> = [
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp_url(),
        "--queue",
        &broker.queue,
        "--database-url",
        &db.url,
        "--consumer",
        "counts",
        "--batch-size",
        "200",
    ]
    .map(str::to_owned)
    .to_vec();
    let inbox_rows = || count(&consumer, "SELECT count(*) FROM outbox_inbox");

    // WHEN the consumer is killed with SIGKILL, the relay is killed and restarted, the
    // consumer is killed again, then exits right after a commit and before its ack
    let run = ConsumerRun::spawn(&args, &[]);
    eventually("a quarter consumed", || async {
        inbox_rows().await >= EVENTS / 4
    })
    .await;
    run.kill9();
    relay.kill9();
    relay = RelayProcess::spawn(&relay_env);
    let run = ConsumerRun::spawn(&args, &[]);
    eventually("half consumed", || async {
        inbox_rows().await >= EVENTS / 2
    })
    .await;
    run.kill9();
    let mut exit_after = args.clone();
    exit_after.extend(["--exit-after-commit".to_owned(), "3".to_owned()]);
    let (status, first) = ConsumerRun::spawn(&exit_after, &[]).exited().await;
    assert_eq!(status.code(), Some(3));

    // AND consumers run until the relay has nothing pending and the queue is empty
    let mut reports = vec![first];
    loop {
        let run = ConsumerRun::spawn(&args, &[]);
        eventually("everything consumed", || async {
            inbox_rows().await == EVENTS
                && outbox.count(&pg, "pending").await == 0
                && broker.queue_state().await.0 == 0
        })
        .await;
        reports.push(run.terminate().await);
        // Once the broker dropped the consumer, its unacked messages are back in the queue.
        eventually("the consumer is gone", || async {
            broker.queue_state().await.1 == 0
        })
        .await;
        if broker.queue_state().await.0 == 0 {
            break;
        }
    }

    // THEN the counts are exact, the inbox holds every event once, duplicates were skipped
    // (certain after --exit-after-commit) and nothing arrived out of order
    assert_exact(&consumer, AGGREGATES, PER_AGGREGATE, &reports).await;
    let applied: u64 = reports.iter().map(|r| r.applied).sum();
    assert!(applied <= EVENTS as u64);
    assert!(relay.terminate().await.success());
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_fifo_consumer_ends_exact_after_crashes_and_restarts() {
    // GIVEN 300 events over 10 aggregates (what the emulator carries quickly), a FIFO queue
    // whose received messages come back after 2 s, a relay process publishing to it and an
    // empty consumer database
    const AGGREGATES: i64 = 10;
    const PER_AGGREGATE: i64 = 30;
    const EVENTS: i64 = AGGREGATES * PER_AGGREGATE;
    let outbox = TestDb::migrated().await;
    let db = consumer_db().await;
    let pg = outbox.client().await;
    let consumer = db.client().await;
    let sqs_client = sqs::client();
    let queue = sqs_client
        .create_queue()
        .queue_name(format!("outbox-test-{}.fifo", Uuid::new_v4().simple()))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    insert_backlog(&pg, "agg", AGGREGATES, PER_AGGREGATE).await;
    let aws = vec![
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    let mut relay_env = vec![
        ("OUTBOX_RELAY_DATABASE__URL", outbox.url.clone()),
        ("OUTBOX_RELAY_BROKER__KIND", "sqs".into()),
        ("OUTBOX_RELAY_BROKER__SQS__QUEUE_URL", queue.clone()),
        ("OUTBOX_RELAY_BROKER__SQS__ENDPOINT_URL", sqs::endpoint()),
        ("OUTBOX_RELAY_RELAY__POLL_INTERVAL", "100ms".into()),
    ];
    relay_env.extend(aws.iter().cloned());
    let mut relay = RelayProcess::spawn(&relay_env);
    let args: Vec<String> = [
        "--broker",
        "sqs",
        "--sqs-queue-url",
        &queue,
        "--sqs-endpoint-url",
        &sqs::endpoint(),
        "--database-url",
        &db.url,
        "--consumer",
        "counts",
    ]
    .map(str::to_owned)
    .to_vec();
    let inbox_rows = || count(&consumer, "SELECT count(*) FROM outbox_inbox");

    // WHEN the consumer is killed with SIGKILL, the relay is killed and restarted, and the
    // consumer exits right after a commit and before deleting the batch
    let run = ConsumerRun::spawn(&args, &aws);
    eventually("a quarter consumed", || async {
        inbox_rows().await >= EVENTS / 4
    })
    .await;
    run.kill9();
    relay.kill9();
    relay = RelayProcess::spawn(&relay_env);
    let mut exit_after = args.clone();
    exit_after.extend(["--exit-after-commit".to_owned(), "3".to_owned()]);
    let (status, first) = ConsumerRun::spawn(&exit_after, &aws).exited().await;
    assert_eq!(status.code(), Some(3));

    // AND consumers run until the relay has nothing pending and the queue is empty
    let mut reports = vec![first];
    loop {
        let run = ConsumerRun::spawn(&args, &aws);
        eventually("everything consumed", || async {
            inbox_rows().await == EVENTS && outbox.count(&pg, "pending").await == 0
        })
        .await;
        // Redeliveries of what a crashed run received come back after the visibility timeout.
        eventually("the queue is empty", || async {
            sqs_queue_depth(&sqs_client, &queue).await == 0
        })
        .await;
        reports.push(run.terminate().await);
        if sqs_queue_depth(&sqs_client, &queue).await == 0 {
            break;
        }
    }

    // THEN the counts are exact, the inbox holds every event once, duplicates were skipped
    // and nothing arrived out of order
    assert_exact(&consumer, AGGREGATES, PER_AGGREGATE, &reports).await;
    assert!(relay.terminate().await.success());
}

/// Visible plus in-flight messages.
async fn sqs_queue_depth(client: &aws_sdk_sqs::Client, queue: &str) -> u64 {
    let attributes = client
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    attributes
        .attributes()
        .unwrap()
        .values()
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}
