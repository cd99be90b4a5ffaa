-- Pull delivery (src/pull.rs): the outbox is also a log that subscribers read with cursors
-- kept in their own databases.
--
-- Each row records the transaction that wrote it (tx) and a sequence number (seq): readers
-- go in (tx, seq) order, and remember the transactions still running below their cursor,
-- so a late commit never lands behind a cursor unread. `part` spreads rows over 16 partitions, each read by one
-- claim loop at a time: by key, so one key's messages stay in order; a message without a
-- key by its transaction, so what one transaction publishes is read in one batch. Identity
-- columns need no privilege on their sequence, so publishers' roles stay as they are.
ALTER TABLE conveyor.outbox
    ADD COLUMN tx   xid8     NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN seq  bigint   GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN part smallint GENERATED ALWAYS AS
        ((CASE WHEN key IS NULL THEN tx::text::bigint ELSE hashtextextended(key, 0) END & 15)::smallint) STORED;
CREATE INDEX outbox_pull_idx ON conveyor.outbox (part, tx, seq);

-- A subscriber's cursor of each partition of each publisher (source) it pulls from: every
-- row up to (tx, seq) is handled, but those of the transactions in pending_tx, which were
-- still running when the cursor passed them (of each, the rows after pending_seq remain).
-- Each claim of a partition locks its row; the update that moves it commits with the
-- handlers' writes. Updated in place many times a second: leave room for HOT updates.
CREATE TABLE conveyor.pull_cursors (
    source      text     NOT NULL,
    part        smallint NOT NULL,
    tx          xid8     NOT NULL DEFAULT '0',
    seq         bigint   NOT NULL DEFAULT 0,
    pending_tx  bigint[] NOT NULL DEFAULT '{}',
    pending_seq bigint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (source, part)
) WITH (fillfactor = 50);

-- In a publisher's database: where each pull subscriber has got to, as it last reported,
-- and the topics it pulls. The pruner deletes the rows of those topics everybody passed.
-- A subscriber retired for good must be deleted from here, or its topics are never pruned.
CREATE TABLE conveyor.pull_positions (
    subscriber  text        NOT NULL,
    part        smallint    NOT NULL,
    tx          xid8        NOT NULL,
    seq         bigint      NOT NULL,
    pending_tx  bigint[]    NOT NULL DEFAULT '{}',
    topics      text[]      NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber, part)
);
