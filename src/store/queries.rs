//! SQL text rendered once for the configured table. Identifiers come from a validated
//! [`TableName`]; every value is a bind parameter.

use crate::config::TableName;

/// Advisory-lock namespace shared with the NOTIFY trigger (`'outb'` in the high 32 bits, the
/// table's oid in the low 32 bits).
pub(crate) const WAKE_LOCK_NAMESPACE: i64 = 1_869_968_482;

/// Planner settings the ordered read runs with (`SET LOCAL`, in its own transaction): on a
/// table loaded and never analyzed, a custom plan can otherwise choose a bitmap scan of every
/// pending row plus a sort, a cost that grows with the backlog. With these, the only plan left
/// is the ordered walk of the pending-seq index that stops at the LIMIT.
pub const READ_SETTINGS: &str = "SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off";

/// The relay's statements for one table.
#[derive(Debug, Clone)]
pub struct Queries {
    /// The ordered read: pending rows after `$1 int8` in `seq` order, due or not (`due_in_ms`
    /// says how long a retry still waits), each with the `seq` of the pending row before it in
    /// its aggregate (`prev_seq`: one backward probe of the pending-aggregate index per
    /// returned row, so the relay can tell whether it holds that predecessor), `$2 int8` limit, `$3 int4[]` owned buckets or NULL,
    /// `$4 int4` bucket count. Only a lower bound on `seq` and no per-row subquery, so it is
    /// an index-ordered walk of `<table>_pending_seq_idx` that stops at the LIMIT (run with
    /// [`READ_SETTINGS`], whatever the statistics say (`tests/read_plan.rs` checks the plan on an unanalyzed table)).
    pub read_pending: String,
    /// `BEGIN` plus [`READ_SETTINGS`]: the transaction the read runs in.
    pub read_begin: String,
    /// `$1 uuid[]`.
    pub mark_dispatched: String,
    /// `$1 uuid[]`.
    pub delete_dispatched: String,
    /// `$1 uuid[]`, `$2 text[]` error, `$3 int8[]` delay in ms, `$4 bool[]` dead.
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
                         WHERE p.status = 'pending' AND p.aggregate_id = e.aggregate_id \
                           AND p.seq < e.seq \
                         ORDER BY p.seq DESC LIMIT 1) AS prev_seq \
                 FROM {t} e \
                 WHERE e.status = 'pending' \
                   AND e.seq > $1::int8 \
                   AND ($3::int4[] IS NULL \
                        OR ((hashtext(e.aggregate_id) & 2147483647) % $4::int4) = ANY($3::int4[])) \
                 ORDER BY e.seq \
                 LIMIT $2"
            ),
            read_begin: format!("BEGIN; {READ_SETTINGS}"),
            mark_dispatched: format!(
                "UPDATE {t} SET status = 'dispatched', dispatched_at = now(), last_error = NULL \
                 WHERE id = ANY($1::uuid[]) AND status = 'pending'"
            ),
            delete_dispatched: format!(
                "DELETE FROM {t} WHERE id = ANY($1::uuid[]) AND status = 'pending'"
            ),
            record_failures: format!(
                "UPDATE {t} AS e SET \
                     attempts = e.attempts + 1, \
                     last_error = u.error, \
                     available_at = now() + u.delay_ms * interval '1 millisecond', \
                     status = CASE WHEN u.dead THEN 'dead' ELSE 'pending' END \
                 FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::bool[]) \
                      AS u(id, error, delay_ms, dead) \
                 WHERE e.id = u.id AND e.status = 'pending'"
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
