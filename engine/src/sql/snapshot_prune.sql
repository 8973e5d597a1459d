-- Keeps the newest $2 snapshots of partition $1 of log $3 (other logs' are not touched).
DELETE FROM engine_snapshots
WHERE partition = $1 AND log_id = $3
  AND log_offset < (SELECT min(log_offset)
                    FROM (SELECT log_offset FROM engine_snapshots
                          WHERE partition = $1 AND log_id = $3
                          ORDER BY log_offset DESC
                          LIMIT $2) AS kept)
