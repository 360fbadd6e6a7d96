//! SQL text rendered once for the configured table. Identifiers come from a validated
//! [`TableName`]; every value is a bind parameter.

use crate::config::TableName;

/// Advisory-lock namespace shared with the NOTIFY trigger (`'outb'` in the high 32 bits, the
/// table's oid in the low 32 bits).
pub(crate) const WAKE_LOCK_NAMESPACE: i64 = 1_869_968_482;

/// Planner settings every hot and periodic statement runs with (`SET LOCAL`, in its own
/// transaction, pipelined with the statement: one round trip).
///
/// The statistics of an outbox table lie most of the time: autovacuum analyzes it while it is
/// quiet (no pending rows), then an outage's backlog arrives, and the planner believes every
/// partial index on `status = 'pending'` holds about one row; on a table loaded and never
/// analyzed, a custom plan may choose a bitmap scan of every pending row plus a sort. Each
/// statement is therefore written so that exactly one access path is usable without a
/// sequential scan, a bitmap scan or a sort, and these settings take the other three away,
/// whatever the statistics say and whatever size the table had when a generic plan was cached:
/// - the read: the ordered walk of `<table>_pending_seq_idx`, stopping at the LIMIT;
/// - its predecessor probe: one backward descent of `<table>_pending_aggregate_idx`
///   (see [`Queries::read_pending`]);
/// - settles and failure records: the primary key, by id ([`PENDING`]);
/// - the status windows: the pending or dead partial index in `seq` order, stopping at the LIMIT.
///
/// `tests/plans.rs` reads the plans on a table never analyzed, analyzed while empty, analyzed
/// holding only dispatched rows and analyzed mid-backlog.
pub const PLAN_SETTINGS: &str = "SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off";

/// `status = 'pending'` as settles and failure records test it: the same rows, compared
/// under the "C" collation, so the planner cannot prove the partial indexes' predicate
/// (`status = 'pending'`, default collation) from it. Otherwise, with statistics that say
/// nothing is pending, it walks the whole pending index filtering on `id` (every settle
/// O(backlog)) instead of looking up the batch's ids in the primary key. Equality of `text`
/// under any deterministic collation is byte equality: the rows are the same.
pub const PENDING: &str = "status = 'pending' COLLATE \"C\"";

/// The relay's statements for one table.
#[derive(Debug, Clone)]
pub struct Queries {
    /// The ordered read: pending rows after `$1 int8` in `seq` order, due or not (`due_in_ms`
    /// says how long a retry still waits), each with the `seq` of the pending row before it in
    /// its aggregate (`prev_seq`: one backward probe of the pending-aggregate index per
    /// returned row, so the relay can tell whether it holds that predecessor), `$2 int8` limit,
    /// `$3 int4[]` owned buckets or NULL, `$4 int4` bucket count. Only a lower bound on `seq`,
    /// so it is an index-ordered walk of `<table>_pending_seq_idx` that stops at the LIMIT
    /// (run with [`PLAN_SETTINGS`]).
    ///
    /// The probe bounds `aggregate_id` by a range (`>=` and `<=`) rather than `=`, and orders by
    /// `(aggregate_id, seq)`: an equality would make the `aggregate_id` sort key redundant, and
    /// the pending-seq index, walked backwards and filtered on `aggregate_id`, would then serve
    /// the same order (the plan the planner picks when the statistics say the pending indexes
    /// are empty, walking back to the start of the backlog for an aggregate with nothing
    /// earlier pending). With the range, only the per-aggregate index gives the order without a
    /// sort: one descent per row.
    pub read_pending: String,
    /// `BEGIN` plus [`PLAN_SETTINGS`]: the transaction every hot statement runs in.
    pub planned_begin: String,
    /// `BEGIN` plus [`PLAN_SETTINGS`] and a custom plan for every execution: for the failure
    /// record, a join whose best shape depends on the table's size as it is now, not as it
    /// was when a generic plan was cached.
    pub custom_begin: String,
    /// `$1 uuid[]`; looked up in the primary key ([`PENDING`]).
    pub mark_dispatched: String,
    /// `$1 uuid[]`; looked up in the primary key ([`PENDING`]).
    pub delete_dispatched: String,
    /// `$1 uuid[]`, `$2 text[]` error, `$3 int8[]` delay in ms, `$4 bool[]` dead; one
    /// primary-key probe per failure ([`PENDING`]).
    pub record_failures: String,
    /// Bumps the sleepers sequence.
    pub announce_sleep: String,
    /// Bumps the wakers sequence.
    pub announce_wake: String,
    /// `$1 text` regclass; true when no producer is between its INSERT and its commit.
    pub producers_quiet: String,
}

impl Queries {
    /// Renders the statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.qualified();
        Self {
            read_pending: format!(
                "SELECT e.id, e.seq, e.aggregate_type, e.aggregate_id, e.event_type, \
                        e.payload::text AS payload, e.headers, e.created_at, e.attempts, \
                        ((hashtext(e.aggregate_id) & 2147483647) % $4::int4) AS bucket, \
                        GREATEST(0, ceil(extract(epoch FROM e.available_at - now()) * 1000))::int8 \
                            AS due_in_ms, \
                        (SELECT p.seq FROM {t} p \
                         WHERE p.status = 'pending' \
                           AND p.aggregate_id >= e.aggregate_id \
                           AND p.aggregate_id <= e.aggregate_id \
                           AND p.seq < e.seq \
                         ORDER BY p.aggregate_id DESC, p.seq DESC LIMIT 1) AS prev_seq \
                 FROM {t} e \
                 WHERE e.status = 'pending' \
                   AND e.seq > $1::int8 \
                   AND ($3::int4[] IS NULL \
                        OR ((hashtext(e.aggregate_id) & 2147483647) % $4::int4) = ANY($3::int4[])) \
                 ORDER BY e.seq \
                 LIMIT $2"
            ),
            planned_begin: format!("BEGIN; {PLAN_SETTINGS}"),
            custom_begin: format!(
                "BEGIN; {PLAN_SETTINGS}; SET LOCAL plan_cache_mode = force_custom_plan"
            ),
            mark_dispatched: format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = now(), last_error = NULL \
                 WHERE id = ANY($1::uuid[]) AND {PENDING}"
            ),
            delete_dispatched: format!("DELETE FROM {t} WHERE id = ANY($1::uuid[]) AND {PENDING}"),
            record_failures: format!(
                "UPDATE {t} AS e SET \
                     attempts = e.attempts + 1, \
                     last_error = u.error, \
                     available_at = now() + u.delay_ms * interval '1 millisecond', \
                     status = CASE WHEN u.dead THEN 'dead' ELSE 'pending' END \
                 FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::bool[]) \
                      AS u(id, error, delay_ms, dead) \
                 WHERE e.id = u.id AND e.{PENDING}"
            ),
            announce_sleep: format!(
                "SELECT nextval('{}')",
                table.derived("_sleepers").replace('\'', "''")
            ),
            announce_wake: format!(
                "SELECT nextval('{}')",
                table.derived("_wakers").replace('\'', "''")
            ),
            producers_quiet: format!(
                "SELECT pg_try_advisory_xact_lock({WAKE_LOCK_NAMESPACE}::bigint * 4294967296 \
                 + $1::text::regclass::oid::bigint)"
            ),
        }
    }
}
