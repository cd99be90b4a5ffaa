-- A cursor moves by a new row, not an update (src/pull.rs, "Cursor rows"): each move
-- deletes the partition's row of generation `gen` and inserts generation gen + 1. Updated
-- in place, a cursor row kept every version written while the xmin horizon was held, and
-- each claim walked them to the live one (3 -> 3,261 buffers per claim after two minutes
-- of a held snapshot at 800 msgs/s). A claim now finds the newest generation with one
-- backward index probe and locks that row only; a deleted row cannot be locked, so a
-- claim that saw an older generation gets nothing instead of a stale position.
ALTER TABLE conveyor.pull_cursors ADD COLUMN gen bigint NOT NULL DEFAULT 0;
ALTER TABLE conveyor.pull_cursors DROP CONSTRAINT pull_cursors_pkey;
ALTER TABLE conveyor.pull_cursors ADD PRIMARY KEY (source, part, gen);
ALTER TABLE conveyor.pull_cursors RESET (fillfactor);
