-- Two engines may write the same partition at the same offset during a rebalance; the
-- state is a pure function of the log prefix, so the bytes are the same: keep either.
INSERT INTO engine_snapshots (partition, log_offset, taken_at, format_version, checksum, size_bytes, state, log_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (log_id, partition, log_offset) DO UPDATE
SET taken_at = EXCLUDED.taken_at,
    format_version = EXCLUDED.format_version,
    checksum = EXCLUDED.checksum,
    size_bytes = EXCLUDED.size_bytes,
    state = EXCLUDED.state,
    written_at = now()
