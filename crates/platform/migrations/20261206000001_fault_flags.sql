-- Fault flags switched at run time (crates/platform/src/faults.rs, docs/faults.md): one row
-- per flag an operator set; a flag without a row is 0 (off). Each service declares its
-- flags in code, with their ranges; the API checks values against them before writing, and
-- readers clamp whatever they find. Workers read the table about once a second, so the
-- table stays tiny and the read is an index-only lookup of a handful of rows.
CREATE TABLE conveyor.fault_flags (
    name       text             PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value      double precision NOT NULL CHECK (value > '-Infinity' AND value < 'Infinity'),
    updated_at timestamptz      NOT NULL DEFAULT now()
);
