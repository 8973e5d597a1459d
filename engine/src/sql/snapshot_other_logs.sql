-- Snapshots of partition $1 that belong to logs other than $2: never used, only named.
SELECT log_id, count(*), max(log_offset)
FROM engine_snapshots
WHERE partition = $1 AND log_id <> $2
GROUP BY log_id
ORDER BY log_id
