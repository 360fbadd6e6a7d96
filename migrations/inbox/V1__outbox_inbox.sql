-- outbox-relay consumer inbox, version 1. Applied to the CONSUMER's database by
-- `outbox-relay migrate --inbox` (which substitutes `inbox.table` for `outbox_inbox` and tracks
-- versions in `<inbox table>_schema_history`), or by your own migration tool as-is.
--
-- A consumer records each message ID here in the same transaction as the message's side
-- effect, and skips a message whose ID is already here:
--   INSERT INTO outbox_inbox (consumer, message_id) VALUES ('billing', $1)
--   ON CONFLICT DO NOTHING;            -- 1 row: new, apply it; 0 rows: duplicate, skip it
-- Rows older than the dedupe window are deleted by `outbox-relay purge --inbox --older-than`.

CREATE TABLE IF NOT EXISTS outbox_inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Retention: the purge deletes the oldest rows first, in batches.
CREATE INDEX IF NOT EXISTS outbox_inbox_received_at_idx ON outbox_inbox (received_at);
