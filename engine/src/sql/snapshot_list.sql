SELECT log_offset, taken_at, size_bytes, checksum
FROM engine_snapshots
WHERE partition = $1
ORDER BY log_offset DESC
