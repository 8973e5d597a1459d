SELECT covered, taken_at, size_bytes
FROM readmodel_snapshots
WHERE log_id = $1
ORDER BY covered DESC
