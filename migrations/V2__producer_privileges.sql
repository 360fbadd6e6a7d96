-- outbox-relay schema, version 2: producers need only INSERT.
--
-- Version 1's trigger function read the `outbox_events_sleepers` / `_wakers` sequences with the
-- privileges of the inserting role, so a producer holding only INSERT on the table failed
-- with "permission denied for sequence outbox_events_sleepers" and so did its business
-- transaction. The function now runs with the privileges of its owner (the role that
-- migrates, which owns the sequences): SECURITY DEFINER, with `search_path` pinned to
-- `pg_catalog, <the table's schema>, pg_temp` and every name schema-qualified, so nothing a
-- producer puts on its own search_path can stand in for them. EXECUTE is revoked from
-- PUBLIC: a trigger fires whatever the inserting role's privileges on its function, and
-- nobody needs to call it directly.
--
-- Plain SQL, usable by your own migration tool: the table's schema is looked up from the
-- catalog, so it works wherever version 1 created the table.

DO $migration$
DECLARE
    schema_name text := (
        SELECT n.nspname
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = 'outbox_events'::regclass
    );
BEGIN
    EXECUTE format(
        $create$
        CREATE OR REPLACE FUNCTION %1$I.outbox_events_notify() RETURNS trigger
        LANGUAGE plpgsql
        SECURITY DEFINER
        SET search_path = pg_catalog, %1$I, pg_temp
        AS $body$
        BEGIN
            -- A shared lock held until the producer's transaction ends (see version 1), then
            -- a NOTIFY only while some relay sleeps (sleepers > wakers).
            PERFORM pg_catalog.pg_advisory_xact_lock_shared(
                1869968482::bigint * 4294967296 + TG_RELID::bigint);
            IF pg_catalog.pg_sequence_last_value(%2$L::pg_catalog.regclass)
               > pg_catalog.pg_sequence_last_value(%3$L::pg_catalog.regclass) THEN
                PERFORM pg_catalog.pg_notify('outbox_events', '');
            END IF;
            RETURN NULL;
        END;
        $body$
        $create$,
        schema_name,
        pg_catalog.quote_ident(schema_name) || '.outbox_events_sleepers',
        pg_catalog.quote_ident(schema_name) || '.outbox_events_wakers'
    );
    EXECUTE format(
        'REVOKE ALL ON FUNCTION %I.outbox_events_notify() FROM PUBLIC',
        schema_name
    );
END
$migration$;
