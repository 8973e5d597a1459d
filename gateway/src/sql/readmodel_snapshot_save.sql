-- Stores a read-model snapshot of log $1 only if it covers more than every stored one
-- (gateways racing to write the same or older positions change nothing).
INSERT INTO readmodel_snapshots (log_id, covered, taken_at, format_version, checksum, size_bytes, image)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE NOT EXISTS (SELECT 1 FROM readmodel_snapshots WHERE log_id = $1 AND covered >= $2)
ON CONFLICT (log_id, covered) DO NOTHING
