//! SQL text rendered once for the configured table. Identifiers come from a validated
//! [`TableName`]; every value is a bind parameter.

use super::TableName;

/// Advisory-lock namespace shared with the NOTIFY trigger (`'outb'` in the high 32 bits, the
/// table's oid in the low 32 bits).
pub const WAKE_LOCK_NAMESPACE: i64 = 1_869_968_482;

/// The relay's statements for one table.
#[derive(Debug, Clone)]
pub struct Queries {
    /// `$1 int8` cursor (only rows after it; every pending row at or before it blocks its
    /// aggregate), `$2 int8` limit, `$3 int4[]` owned buckets or NULL, `$4 int4` bucket count.
    pub claim: String,
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
            claim: format!(
                "SELECT e.id, e.seq, e.aggregate_type, e.aggregate_id, e.event_type, \
                        e.payload::text AS payload, e.headers, e.created_at, e.attempts, \
                        ((hashtext(e.aggregate_id) & 2147483647) % $4::int4) AS bucket \
                 FROM {t} e \
                 WHERE e.status = 'pending' \
                   AND e.seq > $1::int8 \
                   AND e.available_at <= now() \
                   AND ($3::int4[] IS NULL \
                        OR ((hashtext(e.aggregate_id) & 2147483647) % $4::int4) = ANY($3::int4[])) \
                   AND NOT EXISTS ( \
                       SELECT 1 FROM {t} p \
                       WHERE p.status = 'pending' AND p.aggregate_id = e.aggregate_id \
                         AND p.seq < e.seq \
                         AND (p.available_at > now() OR p.seq <= $1::int8)) \
                 ORDER BY e.seq \
                 LIMIT $2"
            ),
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
