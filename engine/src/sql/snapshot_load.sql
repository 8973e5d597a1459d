SELECT format_version, checksum, state
FROM engine_snapshots
WHERE partition = $1 AND log_offset = $2 AND log_id = $3
