-- The engine's second generation: done messages leave the inbox.
--
-- Before, a handled message stayed in conveyor.inbox as state 'done' for the dedupe window
-- (an hour): completing it rewrote the whole row (payload and headers included) and the
-- claimed table held an hour of history next to the few rows that wait. Now the claim
-- deletes the row and records the message here, in the same transaction: an insert-only
-- table of small rows (no payload), pruned along its UUID v7 key. The inbox holds only
-- what waits, runs or is dead. A repeated delivery is caught by the inbox's primary key
-- while the original waits, and once the original is done its copy conflicts on this
-- primary key when it is claimed and is dropped without running its handler. (The relay
-- does not look here: an anti-join in its hot insert, planned once while this table was
-- empty, walked all of it on every batch.)
CREATE TABLE conveyor.inbox_done (
    message_id   uuid        PRIMARY KEY,
    topic        text        NOT NULL,
    -- Attempts it took, the successful one included.
    attempts     integer     NOT NULL,
    published_at timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    done_at      timestamptz NOT NULL DEFAULT now(),
    -- The errors of the attempts that failed before (NULL when none did).
    errors       jsonb
);

-- Insert-only but for the pruner's deletes of the oldest prefix: vacuum after a fixed
-- amount of either, so the visibility map stays current and the table does not bloat.
ALTER TABLE conveyor.inbox_done SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
                                     autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 10000,
                                     autovacuum_analyze_scale_factor = 0.05);

INSERT INTO conveyor.inbox_done (message_id, topic, attempts, published_at, received_at, done_at, errors)
SELECT message_id, topic, attempts, published_at, received_at, coalesce(done_at, now()), NULLIF(errors, '[]'::jsonb)
FROM conveyor.inbox WHERE state = 'done'
ON CONFLICT (message_id) DO NOTHING;
DELETE FROM conveyor.inbox WHERE state = 'done';
-- `state = 'done'` and `done_at` stay allowed in conveyor.inbox so that workers of the
-- previous version, still running during a rolling upgrade, can finish their batches;
-- the pruner removes such rows after the window like the records here.
