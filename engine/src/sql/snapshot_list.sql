SELECT log_offset, taken_at, size_bytes, checksum
FROM engine_snapshots
WHERE partition = $1 AND log_id = $2
ORDER BY log_offset DESC
