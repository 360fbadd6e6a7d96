//! The command line: the benchmark's flags (clap) and their value parsers.

use clap::{Parser, builder::RangedU64ValueParser};

use crate::fixtures::{Backlog, TableShape};

/// The relay benchmark (see the README's Performance section).
#[derive(Parser, Debug)]
#[command(name = "relay-bench", bin_name = "cargo bench --bench relay --")]
pub struct Args {
    /// Events in the backlog of parts 1-3 (raw broker, raw store, relay drain).
    #[arg(long, default_value_t = 100_000, value_parser = positive())]
    pub events: usize,
    /// Payload size of each event.
    #[arg(long, default_value_t = 500)]
    pub payload_bytes: usize,
    /// The relay's `relay.batch_size` (and the raw store's claim size).
    #[arg(long, default_value_t = 500, value_parser = positive())]
    pub batch_size: usize,
    /// Relay processes draining one table.
    #[arg(long, default_value_t = 1, value_parser = positive())]
    pub replicas: usize,
    /// Distinct aggregate_ids the prefilled backlog is spread over, round-robin in `seq`
    /// order (event i belongs to aggregate i mod N): each aggregate gets ~events/N events,
    /// interleaved with all others.
    #[arg(long, default_value_t = 1_000, value_parser = positive())]
    pub aggregates: usize,
    /// The table's statistics when the relay meets the prefilled backlog: `unanalyzed` (as
    /// loaded by one INSERT ... SELECT, no statistics: a backlog arriving between autovacuum
    /// runs), `analyzed` (VACUUM ANALYZE after the load) or `quiet` (`--quiet-rows`
    /// dispatched rows, VACUUM ANALYZE, then the backlog, not analyzed after: what autovacuum
    /// leaves before an outage's backlog arrives; autovacuum is turned off on the table).
    #[arg(long, value_enum, default_value_t = TableShape::Unanalyzed)]
    table_shape: TableShape,
    /// Same as `--table-shape analyzed`.
    #[arg(long, conflicts_with = "table_shape")]
    analyze: bool,
    /// Dispatched rows written and analyzed before the backlog in the `quiet` table shape
    /// (also in `--matrix`'s quiet-analyzed rows).
    #[arg(long, default_value_t = 20_000, value_parser = positive())]
    pub quiet_rows: usize,
    /// Give up on a drain after this many seconds and report the rate so far.
    #[arg(long, default_value_t = 600, value_parser = positive_u64())]
    pub drain_timeout: u64,
    /// Part 4's duration.
    #[arg(long, default_value_t = 10, value_parser = positive_u64())]
    pub latency_seconds: u64,
    /// Part 4's event rate (one event per transaction).
    #[arg(long, default_value_t = 1000, value_parser = positive_u64())]
    pub rate: u64,
    /// Part 5's duration per variant.
    #[arg(long, default_value_t = 5, value_parser = positive_u64())]
    pub producer_seconds: u64,
    /// Run part 7, the SQS variant against the emulator at OUTBOX_TEST_SQS.
    #[arg(long)]
    pub sqs: bool,
    /// Events of part 7.
    #[arg(long, default_value_t = 1_000, value_parser = positive())]
    pub sqs_events: usize,
    /// Instead of parts 2-7: the raw broker limit, the confirm round trip at 1/10/100
    /// outstanding confirms, and the relay drain for aggregates 10 / 100 / 1,000 / 100,000
    /// at a 50,000 backlog and 1,000 aggregates at a 500,000 backlog, then both backlogs
    /// over 1,000 aggregates on a table analyzed while quiet, as one table.
    #[arg(long)]
    pub matrix: bool,
    /// Multiplies the matrix's backlogs (e.g. 0.05 for a smoke run); aggregates stay.
    #[arg(long, default_value_t = 1.0, value_parser = positive_f64)]
    pub matrix_scale: f64,
    /// Instead of parts 1-7, for each N of a comma-separated list (e.g. 3000000,10000000):
    /// a database retaining N dispatched rows (analyzed, nothing pending): the idle relay's
    /// CPU cost to Postgres and to itself, then a `--retained-drain-events` drain, each next
    /// to the same on an empty table.
    #[arg(long, value_delimiter = ',', value_parser = positive(), conflicts_with = "matrix")]
    pub retained: Vec<usize>,
    /// `--retained`: how long the idle relay's CPU is measured (after 5 s of start-up).
    #[arg(long, default_value_t = 30, value_parser = positive_u64())]
    pub idle_seconds: u64,
    /// `--retained`: events of the pending backlog drained on the retained and the empty table.
    #[arg(long, default_value_t = 100_000, value_parser = positive())]
    pub retained_drain_events: usize,
    /// Skip part 1 (raw broker).
    #[arg(long)]
    pub skip_broker: bool,
    /// Skip part 2 (raw store).
    #[arg(long)]
    pub skip_store: bool,
    /// Skip parts 3 and 6 (relay drain, its peak RSS).
    #[arg(long)]
    pub skip_drain: bool,
    /// Skip part 4 (notify wake-up latency).
    #[arg(long)]
    pub skip_latency: bool,
    /// Skip part 5 (producers' commit rate).
    #[arg(long)]
    pub skip_producers: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    /// The table shape of the prefilled backlogs (`--analyze` is `--table-shape analyzed`).
    pub fn shape(&self) -> TableShape {
        if self.analyze {
            TableShape::Analyzed
        } else {
            self.table_shape
        }
    }

    /// The prefilled backlog of `events` over `aggregates` in the run's payload size, table
    /// shape and quiet rows.
    pub fn backlog(&self, events: usize, aggregates: usize) -> Backlog {
        Backlog {
            events,
            aggregates,
            payload: self.payload_bytes,
            shape: self.shape(),
            quiet_rows: self.quiet_rows,
        }
    }
}

fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

fn positive_u64() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::<u64>::new().range(1..)
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}
