//! A complete, effectively-once consumer of the relay's messages: the reference to copy.
//!
//! For every batch of messages it opens one Postgres transaction, records the message IDs in
//! the inbox (`outbox-relay migrate --inbox` creates it), applies only the new messages (here:
//! per aggregate, `events + 1` and `last_seq` in `aggregate_counts`), commits, and only then
//! acks (RabbitMQ: one multiple-ack; SQS: `DeleteMessageBatch`). A crash before the commit
//! rolls everything back and the broker redelivers; a crash after it makes the redelivery a
//! duplicate the inbox skips. It counts duplicates and out-of-order arrivals (`seq` lower than
//! the aggregate's `last_seq`) and prints them on exit and on SIGTERM/SIGINT. Broker and
//! database failures are retried with backoff, reconnecting both.
//!
//! ```sh
//! cargo run --release --example inbox_consumer -- --broker rabbitmq \
//!     --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --queue billing \
//!     --database-url postgres://postgres@127.0.0.1/billing --consumer billing
//! cargo run --release --example inbox_consumer -- --broker sqs \
//!     --sqs-queue-url http://127.0.0.1:4566/000000000000/billing.fifo \
//!     --sqs-endpoint-url http://127.0.0.1:4566 --database-url ... --consumer billing
//! ```
//!
//! `--exit-after-commit N` (for tests) exits with code 3 right after the Nth committed batch,
//! before acking it, so that batch is certainly redelivered.
#![allow(missing_docs)]

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use outbox_relay::{
    backoff::ReconnectBackoff,
    config::TableName,
    inbox::{Inbox, Recorded},
    store::connect::Connector,
};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Broker {
    Rabbitmq,
    Sqs,
}

#[derive(Debug, Parser)]
#[command(about = "Effectively-once consumer of outbox-relay messages (inbox example)")]
struct Args {
    #[arg(long, value_enum)]
    broker: Broker,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// RabbitMQ queue to consume (bound to the relay's exchange beforehand).
    #[arg(long, required_if_eq("broker", "rabbitmq"))]
    queue: Option<String>,
    #[arg(long, required_if_eq("broker", "sqs"))]
    sqs_queue_url: Option<String>,
    /// Emulators, VPC endpoints; credentials and region come from the AWS default chain.
    #[arg(long)]
    sqs_endpoint_url: Option<String>,
    /// The consumer's own database: the inbox and the consumer's state live there.
    #[arg(long)]
    database_url: String,
    /// This consumer's name in the inbox (each service dedupes on its own).
    #[arg(long)]
    consumer: String,
    #[arg(long, default_value = "outbox_inbox")]
    inbox_table: String,
    /// Messages per transaction (RabbitMQ; SQS receives at most 10 per call).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Exit (code 3) right after the Nth committed batch, before acking it.
    #[arg(long)]
    exit_after_commit: Option<u64>,
    /// For the benchmark only: the same consumer without the inbox (every message applied,
    /// duplicates NOT detected).
    #[arg(long)]
    no_inbox: bool,
}

/// One message as the consumer needs it: the relay's message contract.
struct Message {
    /// The event ID: the dedupe key.
    id: Uuid,
    aggregate_id: String,
    /// The event's write order (`x-seq` / `seq`).
    seq: i64,
}

/// What the consumer saw, printed on exit.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    batches: u64,
    applied: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Counters {
    fn print(&self) {
        println!(
            "inbox_consumer: batches={} applied={} duplicates={} out_of_order={}",
            self.batches, self.applied, self.duplicates, self.out_of_order
        );
    }
}

/// The consumer's state and its inbox, on one Postgres connection.
struct Consumer {
    pg: Client,
    /// The connection's notices; dropping it would close the connection at the next one.
    _notices: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
    /// `None` with `--no-inbox`.
    inbox: Option<Inbox>,
    exit_after_commit: Option<u64>,
    counters: Counters,
}

impl Consumer {
    /// Applies one batch in one transaction; returns once it is committed (ack after this).
    async fn apply(&mut self, batch: &[Message]) -> Result<()> {
        let tx = self.pg.transaction().await?;
        let ids: Vec<Uuid> = batch.iter().map(|m| m.id).collect();
        let recorded = match &self.inbox {
            Some(inbox) => inbox.record(&tx, &ids).await?,
            None => Recorded {
                new: ids,
                duplicates: Vec::new(),
            },
        };
        let mut new: HashSet<Uuid> = recorded.new.iter().copied().collect();
        let fresh: Vec<&Message> = batch.iter().filter(|m| new.remove(&m.id)).collect();

        // The aggregates' last applied seq, locked until commit.
        let aggregates: Vec<&str> = fresh.iter().map(|m| m.aggregate_id.as_str()).collect();
        let mut state: HashMap<String, (i64, i64)> = tx
            .query(
                "SELECT aggregate_id, last_seq FROM aggregate_counts \
                 WHERE aggregate_id = ANY($1) FOR UPDATE",
                &[&aggregates],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), (0, row.get(1))))
            .collect();
        let mut out_of_order = 0;
        for m in &fresh {
            let (events, last_seq) = state.entry(m.aggregate_id.clone()).or_insert((0, 0));
            if m.seq < *last_seq {
                out_of_order += 1; // information (e.g. a replayed event), still applied
            }
            *events += 1;
            *last_seq = (*last_seq).max(m.seq);
        }
        let (keys, deltas): (Vec<String>, Vec<(i64, i64)>) = state.into_iter().unzip();
        let (events, seqs): (Vec<i64>, Vec<i64>) = deltas.into_iter().unzip();
        tx.execute(
            "INSERT INTO aggregate_counts (aggregate_id, events, last_seq) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) \
             ON CONFLICT (aggregate_id) DO UPDATE \
             SET events = aggregate_counts.events + excluded.events, \
                 last_seq = greatest(aggregate_counts.last_seq, excluded.last_seq)",
            &[&keys, &events, &seqs],
        )
        .await?;
        tx.commit().await?;

        let c = &mut self.counters;
        c.batches += 1;
        c.applied += fresh.len() as u64;
        c.duplicates += recorded.duplicates.len() as u64;
        c.out_of_order += out_of_order;
        if self.exit_after_commit == Some(c.batches) {
            // Committed, not acked: the broker will redeliver this batch as duplicates.
            c.print();
            std::process::exit(3);
        }
        Ok(())
    }
}

/// Connects to the consumer's database and creates the example's state table.
async fn connect_pg(args: &Args, counters: Counters) -> Result<Consumer> {
    let table = TableName::parse(&args.inbox_table)?;
    let connector = Connector::new(
        &args.database_url,
        None,
        "inbox-consumer",
        Duration::from_secs(5),
    )?;
    let (pg, notices) = connector.connect_dedicated().await?;
    pg.batch_execute(
        "CREATE TABLE IF NOT EXISTS aggregate_counts (aggregate_id text PRIMARY KEY, \
         events bigint NOT NULL, last_seq bigint NOT NULL)",
    )
    .await?;
    Ok(Consumer {
        pg,
        _notices: notices,
        inbox: (!args.no_inbox).then(|| Inbox::new(&table, args.consumer.clone())),
        exit_after_commit: args.exit_after_commit,
        counters,
    })
}

/// RabbitMQ: manual acks with a prefetch of two batches; one multiple-ack per committed batch.
async fn rabbitmq(
    args: &Args,
    consumer: &mut Consumer,
    backoff: &mut ReconnectBackoff,
    stop: &CancellationToken,
) -> Result<()> {
    let queue = args.queue.as_deref().context("--queue is required")?;
    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let prefetch = u16::try_from(args.batch_size * 2).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "inbox-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    backoff.reset(); // connected to both
    loop {
        // A batch: wait for one delivery, then take what arrives within 20 ms, up to the size.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            next = deliveries.next() => next,
        };
        let mut batch: Vec<Delivery> = vec![first.context("consumer cancelled")??];
        while batch.len() < args.batch_size {
            match tokio::time::timeout(Duration::from_millis(20), deliveries.next()).await {
                Ok(Some(delivery)) => batch.push(delivery?),
                Ok(None) => bail!("consumer cancelled"),
                Err(_) => break,
            }
        }
        let messages: Vec<Message> = batch.iter().filter_map(from_amqp).collect();
        consumer.apply(&messages).await?;
        if let Some(last) = batch.last() {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
}

/// The relay's message contract on RabbitMQ; anything else is logged and acked away.
fn from_amqp(delivery: &Delivery) -> Option<Message> {
    let props = &delivery.properties;
    let headers = props.headers().as_ref()?.inner();
    let message = (|| {
        let id = Uuid::parse_str(props.message_id().as_ref()?.as_str()).ok()?;
        let aggregate_id = match headers.get(&ShortString::from("x-aggregate-id"))? {
            AMQPValue::LongString(s) => s.to_string(),
            _ => return None,
        };
        let seq = match headers.get(&ShortString::from("x-seq"))? {
            AMQPValue::LongLongInt(n) => *n,
            _ => return None,
        };
        Some(Message {
            id,
            aggregate_id,
            seq,
        })
    })();
    if message.is_none() {
        eprintln!("inbox_consumer: skipping a message without the relay's contract");
    }
    message
}

/// SQS: long-poll up to 10 messages, one transaction per receive, `DeleteMessageBatch` after.
async fn sqs(
    args: &Args,
    consumer: &mut Consumer,
    backoff: &mut ReconnectBackoff,
    stop: &CancellationToken,
) -> Result<()> {
    let queue_url = args.sqs_queue_url.as_deref().context("--sqs-queue-url")?;
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(endpoint) = &args.sqs_endpoint_url {
        config = config.endpoint_url(endpoint);
    }
    let client = aws_sdk_sqs::Client::from_conf(config.build());
    loop {
        let receive = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send();
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            received = receive => received?,
        };
        backoff.reset(); // connected to both
        let batch = received.messages();
        if batch.is_empty() {
            continue;
        }
        let messages: Vec<Message> = batch.iter().filter_map(from_sqs).collect();
        consumer.apply(&messages).await?;
        let mut delete = client.delete_message_batch().queue_url(queue_url);
        for (i, m) in batch.iter().enumerate() {
            delete = delete.entries(
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle().map(str::to_owned))
                    .build()?,
            );
        }
        delete.send().await?;
    }
}

/// The relay's message contract on SQS (attributes `event_id`, `aggregate_id`, `seq`).
fn from_sqs(message: &aws_sdk_sqs::types::Message) -> Option<Message> {
    let attribute = |name: &str| {
        message
            .message_attributes()?
            .get(name)?
            .string_value()
            .map(str::to_owned)
    };
    let parsed = (|| {
        Some(Message {
            id: Uuid::parse_str(&attribute("event_id")?).ok()?,
            aggregate_id: attribute("aggregate_id")?,
            seq: attribute("seq")?.parse().ok()?,
        })
    })();
    if parsed.is_none() {
        eprintln!("inbox_consumer: skipping a message without the relay's contract");
    }
    parsed
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        token.cancel();
    });

    // Reconnect loop: any failure drops both connections (unacked messages go back to the
    // queue, the uncommitted transaction rolls back) and starts over after a backoff.
    let mut backoff = ReconnectBackoff::new();
    let mut counters = Counters::default();
    while !stop.is_cancelled() {
        let result = match Box::pin(connect_pg(&args, counters)).await {
            Ok(mut consumer) => {
                let result = match args.broker {
                    Broker::Rabbitmq => rabbitmq(&args, &mut consumer, &mut backoff, &stop).await,
                    Broker::Sqs => sqs(&args, &mut consumer, &mut backoff, &stop).await,
                };
                counters = consumer.counters;
                result
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            let delay = backoff.next_delay();
            eprintln!("inbox_consumer: {error:#}; reconnecting in {delay:?}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    counters.print();
    Ok(())
}
