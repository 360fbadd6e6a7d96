//! The plans of the relay's statements on the tables production has: never analyzed,
//! analyzed while empty, analyzed while it held only dispatched rows (what autovacuum leaves
//! before an outage's backlog arrives), and analyzed mid-backlog. Every hot statement (read,
//! rescan, predecessor probe, settle, failure record, replay) must take the index that makes
//! its cost O(batch) in each state, as a generic and as a custom plan; every periodic
//! statement (gauges, status page, retention) must touch the same buffers whatever the table
//! retains and however deep the backlog is.
//!
//! Plans are read with `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`, run as the relay runs the
//! statement (prepared, in a transaction with `store::PLAN_SETTINGS`), and rolled back.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDb, producers::insert_backlog};
use outbox_relay::{
    config::TableName,
    store::{PLAN_SETTINGS, Queries, admin, retention, status},
};
use serde_json::Value;
use tokio_postgres::Client;

/// Events settled, failed or replayed per statement in these tests.
const IDS: usize = 50;
/// Rows per read, as `relay.batch_size` by default.
const READ: i64 = 500;

/// The table states production reaches.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Loaded and never analyzed (a backlog between autovacuum runs).
    NeverAnalyzed,
    /// Analyzed while empty, then the backlog arrives.
    AnalyzedEmpty,
    /// Analyzed while it held only dispatched rows, then the backlog arrives.
    AnalyzedQuiet,
    /// Analyzed with the backlog in it.
    AnalyzedMidBacklog,
}

/// One node of a plan, flattened.
#[derive(Debug)]
struct Node {
    kind: String,
    index: Option<String>,
    loops: f64,
    rows: f64,
    removed: f64,
    buffers: i64,
}

/// An explained statement: its nodes (depth first), the whole plan's buffers, and the plan
/// as text for failure messages.
struct Explained {
    nodes: Vec<Node>,
    buffers: i64,
    text: String,
}

impl Explained {
    /// One line per index scan (kind, index, loops, rows, buffers) and the total: what
    /// `--no-capture` prints for the record.
    fn summary(&self) -> String {
        let scans: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.index.as_ref().map(|index| {
                    format!(
                        "{} on {index} (loops {}, rows {}, removed {}, buffers {})",
                        n.kind, n.loops, n.rows, n.removed, n.buffers
                    )
                })
            })
            .collect();
        format!("{}; total buffers {}", scans.join("; "), self.buffers)
    }

    fn has(&self, kind: &str) -> bool {
        self.nodes.iter().any(|n| n.kind.contains(kind))
    }

    /// The scan nodes on `index`.
    fn on(&self, index: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.index.as_deref() == Some(index))
            .collect()
    }
}

fn buffers(node: &Value) -> i64 {
    ["Shared Hit Blocks", "Shared Read Blocks"]
        .iter()
        .map(|k| node[k].as_i64().unwrap_or(0))
        .sum()
}

fn flatten(node: &Value, out: &mut Vec<Node>) {
    let number = |k: &str| node[k].as_f64().unwrap_or(0.0);
    let direction = match node["Scan Direction"].as_str() {
        Some("Backward") => " Backward",
        _ => "",
    };
    out.push(Node {
        kind: format!("{}{direction}", node["Node Type"].as_str().unwrap_or("")),
        index: node["Index Name"].as_str().map(str::to_owned),
        loops: number("Actual Loops"),
        rows: number("Actual Rows"),
        removed: number("Rows Removed by Filter") + number("Rows Removed by Join Filter"),
        buffers: buffers(node),
    });
    for child in node["Plans"].as_array().into_iter().flatten() {
        flatten(child, out);
    }
}

/// Explains `sql` (prepared with parameter `types`) executed with `args`, as the relay runs
/// it: in a transaction with the pinned planner settings, `mode` as the plan cache mode. `setup`
/// runs first in the same transaction; everything is rolled back.
async fn explain(
    client: &Client,
    mode: &str,
    setup: &str,
    sql: &str,
    types: &str,
    args: &str,
) -> Explained {
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    client
        .batch_execute(&format!(
            "BEGIN; {setup}; {PLAN_SETTINGS}; SET LOCAL plan_cache_mode = {mode}; \
             PREPARE s({types}) AS {sql}"
        ))
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE s({args})"),
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    let json: Value = row.get(0);
    let plan = &json[0]["Plan"];
    let mut nodes = Vec::new();
    flatten(plan, &mut nodes);
    Explained {
        nodes,
        buffers: buffers(plan),
        text: serde_json::to_string_pretty(&json).unwrap(),
    }
}

/// A migrated table in `shape` (autovacuum off, so the statistics stay as the shape left them)
/// holding a backlog of 30,000 pending events over 100 hot aggregates.
async fn table_in(shape: Shape) -> (TestDb, Client) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE outbox_events SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    match shape {
        Shape::AnalyzedEmpty => client.batch_execute("VACUUM ANALYZE outbox_events").await,
        Shape::AnalyzedQuiet => {
            insert_dispatched(&client, 20_000).await;
            client.batch_execute("VACUUM ANALYZE outbox_events").await
        }
        Shape::NeverAnalyzed | Shape::AnalyzedMidBacklog => Ok(()),
    }
    .unwrap();
    insert_backlog(&client, "hot", 100, 300).await;
    if let Shape::AnalyzedMidBacklog = shape {
        client
            .batch_execute("VACUUM ANALYZE outbox_events")
            .await
            .unwrap();
    }
    (db, client)
}

/// `n` rows already dispatched (retained history), over 1,000 old aggregates.
async fn insert_dispatched(client: &Client, n: i64) {
    client
        .execute(
            "INSERT INTO outbox_events \
                 (aggregate_type, aggregate_id, event_type, payload, status, dispatched_at) \
             SELECT 'order', 'old-' || (i % 1000), 'step', '{}', 'dispatched', now() \
             FROM generate_series(1, $1::int8) i",
            &[&n],
        )
        .await
        .unwrap();
}

/// VACUUM ANALYZE, after this session's own row counts have reached the statistics: a
/// backend flushes them at most once a second, so counts of a quick INSERT just before could
/// otherwise land after VACUUM's exact live-row count and be added to it.
async fn vacuum_analyze(client: &Client) {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    client
        .batch_execute("VACUUM ANALYZE outbox_events")
        .await
        .unwrap();
}

/// `IDS` pending ids from the middle of the backlog, as an array literal.
async fn middle_ids(client: &Client) -> String {
    let row = client
        .query_one(
            "SELECT array_agg(id)::text FROM ( \
                 SELECT id FROM outbox_events WHERE status = 'pending' \
                 ORDER BY seq OFFSET 15000 LIMIT $1) s",
            &[&(IDS as i64)],
        )
        .await
        .unwrap();
    format!("'{}'::uuid[]", row.get::<_, String>(0))
}

/// The `seq` in the middle of the backlog (where a main read resumes).
async fn middle_seq(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT seq FROM outbox_events WHERE status = 'pending' ORDER BY seq OFFSET 15000 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// THEN for a statement that looks `IDS` ids up: one probe of the primary key per id, nothing
/// filtered away, a bounded number of buffers per id, whatever the backlog.
fn assert_by_primary_key(what: &str, plan: &Explained) {
    println!("{what}: {}", plan.summary());
    assert!(
        !plan.has("Seq Scan") && !plan.has("Bitmap"),
        "{what}:\n{}",
        plan.text
    );
    let pkey = plan.on("outbox_events_pkey");
    assert_eq!(
        pkey.len(),
        1,
        "{what}: one scan of the primary key:\n{}",
        plan.text
    );
    let scan = pkey[0];
    assert_eq!(
        scan.rows * scan.loops,
        IDS as f64,
        "{what}: each id found once:\n{}",
        plan.text
    );
    assert_eq!(scan.removed, 0.0, "{what}:\n{}", plan.text);
    // A descent of the primary key and a heap page per id (about 4 buffers); walking the
    // 30,000-row backlog instead touches thousands.
    assert!(
        scan.buffers <= 8 * IDS as i64,
        "{what}: {} buffers for {IDS} ids:\n{}",
        scan.buffers,
        plan.text
    );
    for partial in [
        "outbox_events_pending_seq_idx",
        "outbox_events_pending_aggregate_idx",
        "outbox_events_dead_idx",
    ] {
        assert!(plan.on(partial).is_empty(), "{what}:\n{}", plan.text);
    }
}

async fn hot_statements_keep_their_plans(shape: Shape) {
    // GIVEN a 30,000-event backlog over 100 hot aggregates on a table in `shape`
    let (_db, client) = table_in(shape).await;
    let sql = Queries::new(&TableName::parse("outbox_events").unwrap());
    let ids = middle_ids(&client).await;
    let middle = middle_seq(&client).await;
    let buckets = format!(
        "'{{{}}}'::int4[], 64",
        (0..64).map(|b| b.to_string()).collect::<Vec<_>>().join(",")
    );

    for mode in ["force_generic_plan", "force_custom_plan"] {
        // WHEN the read runs from the start (a rescan) and from the middle (the main read)
        for after in [0, middle] {
            let what = format!("{shape:?} {mode} read after {after}");
            let plan = explain(
                &client,
                mode,
                "SELECT 1",
                &sql.read_pending,
                "int8, int8, int4[], int4",
                &format!("{after}, {READ}, {buckets}"),
            )
            .await;
            println!("{what}: {}", plan.summary());
            // THEN an ordered walk of the pending-seq index that stops at the LIMIT, and one
            // backward descent of the per-aggregate index per row for its predecessor
            assert!(!plan.has("Sort"), "{what}:\n{}", plan.text);
            assert!(
                !plan.has("Seq Scan") && !plan.has("Bitmap"),
                "{what}:\n{}",
                plan.text
            );
            let walk = plan.on("outbox_events_pending_seq_idx");
            assert_eq!(walk.len(), 1, "{what}:\n{}", plan.text);
            assert_eq!(walk[0].rows, READ as f64, "{what}:\n{}", plan.text);
            let probe = plan.on("outbox_events_pending_aggregate_idx");
            assert_eq!(probe.len(), 1, "{what}: the probe:\n{}", plan.text);
            assert_eq!(probe[0].loops, READ as f64, "{what}:\n{}", plan.text);
            assert_eq!(probe[0].removed, 0.0, "{what}:\n{}", plan.text);
            assert!(
                probe[0].buffers <= 6 * READ,
                "{what}: probe {} buffers:\n{}",
                probe[0].buffers,
                plan.text
            );
            assert!(
                plan.buffers <= 12 * READ,
                "{what}: {} buffers:\n{}",
                plan.buffers,
                plan.text
            );
        }

        // WHEN confirmed events are settled (marked or deleted)
        for (name, statement) in [
            ("mark", &sql.mark_dispatched),
            ("delete", &sql.delete_dispatched),
        ] {
            let plan = explain(&client, mode, "SELECT 1", statement, "uuid[]", &ids).await;
            // THEN the ids are looked up in the primary key
            assert_by_primary_key(&format!("{shape:?} {mode} {name}"), &plan);
        }

        // WHEN dead events are replayed by id
        let plan = explain(
            &client,
            mode,
            &format!("UPDATE outbox_events SET status = 'dead' WHERE id = ANY({ids})"),
            &admin::replay_ids_sql(&TableName::parse("outbox_events").unwrap()),
            "uuid[]",
            &ids,
        )
        .await;
        assert_by_primary_key(&format!("{shape:?} {mode} replay"), &plan);
    }

    // WHEN failures are recorded (always a custom plan, as the relay runs it)
    let n = IDS;
    let plan = explain(
        &client,
        "force_custom_plan",
        "SELECT 1",
        &sql.record_failures,
        "uuid[], text[], int8[], bool[]",
        &format!(
            "{ids}, array_fill('boom'::text, ARRAY[{n}]), array_fill(1000::int8, ARRAY[{n}]), \
             array_fill(false, ARRAY[{n}])"
        ),
    )
    .await;
    // THEN one primary-key probe per failure
    assert_by_primary_key(&format!("{shape:?} failures"), &plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_on_a_table_never_analyzed() {
    hot_statements_keep_their_plans(Shape::NeverAnalyzed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_on_a_table_analyzed_while_empty() {
    hot_statements_keep_their_plans(Shape::AnalyzedEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_on_a_table_analyzed_while_it_held_only_dispatched_rows() {
    hot_statements_keep_their_plans(Shape::AnalyzedQuiet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_on_a_table_analyzed_mid_backlog() {
    hot_statements_keep_their_plans(Shape::AnalyzedMidBacklog).await;
}

/// The buffers each periodic statement touches, by name, as the relay runs them.
async fn periodic_buffers(client: &Client) -> Vec<(String, i64, String)> {
    let table = TableName::parse("outbox_events").unwrap();
    let queries = status::StatusQueries::new(&table);
    let window = status::WINDOW;
    let mut out = Vec::new();
    for (name, sql, types, args) in [
        ("backlog", &queries.backlog, "int8", window.to_string()),
        (
            "summary",
            &queries.summary,
            "int8, text",
            format!("{window}, 'outbox_events'"),
        ),
        ("failures", &queries.failures, "int8", window.to_string()),
        (
            "retention",
            &retention::purge_sql(&table),
            "int8, int8",
            // retention.dispatched's default (7 days), retention.batch_size's default
            format!("{}, 1000", 7 * 24 * 3600 * 1000_i64),
        ),
    ] {
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let plan = explain(client, mode, "SELECT 1", sql, types, &args).await;
            assert!(!plan.has("Seq Scan"), "{name}:\n{}", plan.text);
            assert!(!plan.has("Bitmap"), "{name}:\n{}", plan.text);
            println!("{name} ({mode}): {}", plan.summary());
            out.push((format!("{name} ({mode})"), plan.buffers, plan.text));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_statements_cost_the_same_whatever_the_table_retains() {
    // GIVEN a backlog (2,000 pending, a few in backoff, a few dead) and 20,000 retained
    // dispatched rows, vacuumed and analyzed
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE outbox_events SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    insert_dispatched(&client, 20_000).await;
    insert_backlog(&client, "live", 20, 100).await;
    client
        .batch_execute(
            "UPDATE outbox_events SET attempts = 1, last_error = 'boom', \
                 available_at = now() + interval '1 hour' \
             WHERE seq IN (SELECT seq FROM outbox_events WHERE status = 'pending' \
                           ORDER BY seq LIMIT 5); \
             UPDATE outbox_events SET status = 'dead', last_error = 'poison' \
             WHERE seq IN (SELECT seq FROM outbox_events WHERE status = 'pending' \
                           ORDER BY seq DESC LIMIT 5)",
        )
        .await
        .unwrap();
    vacuum_analyze(&client).await;
    let before = periodic_buffers(&client).await;

    // WHEN the table retains a million dispatched rows more (vacuumed and analyzed, as
    // autovacuum leaves them)
    insert_dispatched(&client, 1_000_000).await;
    vacuum_analyze(&client).await;
    let after = periodic_buffers(&client).await;

    // THEN every periodic statement touches the same buffers (give or take a btree level)
    for ((name, b, _), (_, a, plan)) in before.iter().zip(&after) {
        assert!(
            *a <= b + 8,
            "{name}: {b} buffers with 20,000 retained rows, {a} with 1,020,000:\n{plan}"
        );
    }

    // AND the status says what it counted and what it estimated
    let s = status::status(&client, &db.table).await.unwrap();
    assert_eq!(s.backlog.pending, 1995, "{s:?}");
    assert_eq!(s.backlog.retrying, 5, "{s:?}");
    assert_eq!(s.backlog.dead, 5, "{s:?}");
    assert!(!s.backlog.estimated, "{s:?}");
    assert!(s.dispatched_estimated, "{s:?}");
    // VACUUM ANALYZE left the live-row count exact.
    assert_eq!(s.dispatched, 1_020_000, "{s:?}");
    assert_eq!(s.failures.len(), 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauges_cost_the_same_at_any_backlog_depth_and_estimate_past_the_window() {
    // GIVEN a backlog just past the status window, over two aggregate types (3 orders for 1
    // invoice)
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let insert = |n: i64| {
        format!(
            "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload) \
             SELECT CASE WHEN i % 4 = 0 THEN 'invoice' ELSE 'order' END, (i % 500)::text, \
                    'step', '{{}}' \
             FROM generate_series(1, {n}) i"
        )
    };
    let window = status::WINDOW;
    client.batch_execute(&insert(window + 2_000)).await.unwrap();
    let table = TableName::parse("outbox_events").unwrap();
    let backlog_sql = status::StatusQueries::new(&table).backlog;
    let shallow = explain(
        &client,
        "force_generic_plan",
        "SELECT 1",
        &backlog_sql,
        "int8",
        &window.to_string(),
    )
    .await;

    // WHEN it grows eight times deeper
    client
        .batch_execute(&insert(7 * (window + 2_000)))
        .await
        .unwrap();
    let deep = explain(
        &client,
        "force_generic_plan",
        "SELECT 1",
        &backlog_sql,
        "int8",
        &window.to_string(),
    )
    .await;

    // THEN the gauges' statement touches the same buffers
    assert!(
        deep.buffers <= shallow.buffers + 8,
        "{} buffers at {} pending, {} at {}:\n{}",
        shallow.buffers,
        window + 2_000,
        deep.buffers,
        8 * (window + 2_000),
        deep.text
    );

    // AND the counts past the window are estimated, say so, and are close: every seq after
    // the window is pending here, so the estimate is exact
    let total = 8 * (window + 2_000);
    let backlog = status::backlog(&client, &table).await.unwrap();
    assert!(backlog.estimated, "{backlog:?}");
    assert_eq!(backlog.pending, total, "{backlog:?}");
    let invoices = backlog.by_aggregate_type["invoice"].pending as f64;
    assert!(
        (invoices / total as f64 - 0.25).abs() < 0.01,
        "invoices are a quarter: {backlog:?}"
    );

    // AND below the window nothing is estimated
    client
        .batch_execute(&format!(
            "UPDATE outbox_events SET status = 'dispatched', dispatched_at = now() \
             WHERE seq > {}",
            window / 2
        ))
        .await
        .unwrap();
    let backlog = status::backlog(&client, &table).await.unwrap();
    assert!(!backlog.estimated, "{backlog:?}");
    assert_eq!(backlog.pending, window / 2, "{backlog:?}");
}
