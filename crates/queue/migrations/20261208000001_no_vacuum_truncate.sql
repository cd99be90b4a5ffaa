-- The claim tables keep their pages when vacuum empties them. The planner prices a seq
-- scan by the heap's size now: once vacuum had cut the inbox back to a few pages, the
-- claims' generic plans (sqlx prepares every statement) switched to a seq scan and a sort,
-- and kept them while the heap filled again with the dead rows of handled messages until
-- the next vacuum. At 350 sagas/s more than half of the shop's claims read the whole inbox
-- that way (median 380 pages, up to 2,274), and the relays read the whole outbox (median
-- 50, up to 436), where a claim reads a few index pages. Kept, the pages make a scan cost
-- what it reads, so plans stay on the claim indexes; the free space is reused by the next
-- inserts, and the heap stays at its high-water mark instead of shrinking.
ALTER TABLE conveyor.inbox SET (vacuum_truncate = false);
ALTER TABLE conveyor.outbox SET (vacuum_truncate = false);
