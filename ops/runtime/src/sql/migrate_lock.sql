-- Serialises concurrent `migrate` runs on one schema (the lock ends with the transaction),
-- then makes sure the record of applied migrations exists (quietly: no NOTICE when it does).
SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.flashsale.migrate'));
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    -- md5 of the migration file as applied; a changed file is refused.
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
