-- outbox-relay schema, version 1.
--
-- Applied by `outbox-relay migrate` (which substitutes the configured table name for
-- `outbox_events` and tracks applied versions), or by your own migration tool as-is.
--
-- Producers only ever need:
--   INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
--   VALUES ('order', '42', 'order.created', '{"total": 10}');
-- inside the same transaction as their business change.

CREATE TABLE IF NOT EXISTS outbox_events (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL DEFAULT 'pending',
    attempts       int         NOT NULL DEFAULT 0,
    available_at   timestamptz NOT NULL DEFAULT now(),
    last_error     text,
    dispatched_at  timestamptz,
    CONSTRAINT outbox_events_status_check CHECK (status IN ('pending', 'dispatched', 'dead')),
    CONSTRAINT outbox_events_headers_check CHECK (jsonb_typeof(headers) = 'object')
);

-- The relay's work queue: pending rows in write order. Partial, so it stays small however
-- many dispatched rows are retained.
CREATE INDEX IF NOT EXISTS outbox_events_pending_seq_idx
    ON outbox_events (seq) WHERE status = 'pending';

-- Per-aggregate ordering checks ("is an earlier event of this aggregate still pending?").
CREATE INDEX IF NOT EXISTS outbox_events_pending_aggregate_idx
    ON outbox_events (aggregate_id, seq) WHERE status = 'pending';

-- Retention purge of old dispatched rows.
CREATE INDEX IF NOT EXISTS outbox_events_dispatched_at_idx
    ON outbox_events (dispatched_at) WHERE status = 'dispatched';

-- Dead-letter inspection and replay.
CREATE INDEX IF NOT EXISTS outbox_events_dead_idx
    ON outbox_events (seq) WHERE status = 'dead';

-- Wake-up protocol. A relay that is about to sleep bumps `_sleepers`; a relay that wakes up
-- bumps `_wakers`. Producers only pay for a NOTIFY while some relay sleeps
-- (sleepers > wakers). Sequences are read outside MVCC, so producers always see the latest
-- value, and they are never rolled back.
CREATE SEQUENCE IF NOT EXISTS outbox_events_sleepers MINVALUE 0 START 0;
CREATE SEQUENCE IF NOT EXISTS outbox_events_wakers MINVALUE 0 START 0;
SELECT nextval('outbox_events_sleepers'), nextval('outbox_events_wakers');

-- Statement-level trigger: at most one cheap check per INSERT statement, and a NOTIFY only
-- when a relay sleeps. The shared advisory lock (held until the producer's transaction ends)
-- lets a relay that is going to sleep wait out producers that saw "nobody sleeps" but have
-- not committed yet, so no wake-up is lost.
CREATE OR REPLACE FUNCTION outbox_events_notify() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    -- Both statements are plpgsql "simple expressions" (no table scan, no executor start):
    -- the trigger costs a shared lock and two sequence reads per INSERT statement.
    PERFORM pg_advisory_xact_lock_shared(1869968482::bigint * 4294967296 + TG_RELID::bigint);
    IF pg_sequence_last_value('outbox_events_sleepers'::regclass)
       > pg_sequence_last_value('outbox_events_wakers'::regclass) THEN
        PERFORM pg_notify('outbox_events', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events;
CREATE TRIGGER outbox_events_notify
    AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();
