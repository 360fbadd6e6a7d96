-- outbox-relay schema, version 3: the producer function `outbox_events_enqueue`.
--
-- Applied by `outbox-relay migrate` (which substitutes the configured table name for
-- `outbox_events`, so the function of table `orders_outbox` is `orders_outbox_enqueue`), or by
-- your own migration tool as-is.
--
-- Per-aggregate order needs producers to serialize their writes per aggregate: `seq` is taken
-- at INSERT, visibility comes at COMMIT. The function does it for them: it takes the
-- transaction-level advisory lock `pg_advisory_xact_lock(hashtext(aggregate_id))` (the same
-- lock the README tells hand-written producers to take, so both kinds serialize with each
-- other) and then inserts. A second transaction writing the same aggregate waits at the lock
-- until the first one ends, so it gets the later `seq` and commits later.
--
--   SELECT outbox_events_enqueue('order', '42', 'order.paid', '{"amount": 1999}');
--
-- Call it inside the transaction that makes the business change. A transaction that writes
-- several aggregates must take them in one fixed order (e.g. sorted by aggregate_id), as with
-- any lock, or two such transactions can deadlock.
--
-- The function runs with the caller's rights (SECURITY INVOKER): a producer role needs USAGE
-- on the schema, INSERT on the table and EXECUTE on the function, which is revoked from
-- PUBLIC below:
--   GRANT EXECUTE ON FUNCTION outbox_events_enqueue(text, text, text, jsonb, jsonb, uuid) TO app;

CREATE OR REPLACE FUNCTION outbox_events_enqueue(
    p_aggregate_type text,
    p_aggregate_id   text,
    p_event_type     text,
    p_payload        jsonb,
    p_headers        jsonb DEFAULT '{}',
    p_id             uuid  DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_id uuid := coalesce(p_id, gen_random_uuid());
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_aggregate_id));
    INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload, headers)
    VALUES (v_id, p_aggregate_type, p_aggregate_id, p_event_type, p_payload,
            coalesce(p_headers, '{}'));
    RETURN v_id;
END;
$$;

-- Resolve names in the schema the function was created in (the table's), whatever the
-- caller's search_path: pg_catalog first, so no caller-visible object can shadow a built-in.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION outbox_events_enqueue(text, text, text, jsonb, jsonb, uuid) '
        'SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
END;
$$;

REVOKE EXECUTE ON FUNCTION outbox_events_enqueue(text, text, text, jsonb, jsonb, uuid) FROM PUBLIC;
