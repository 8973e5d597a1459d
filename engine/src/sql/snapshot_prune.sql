-- Keeps the newest $2 snapshots of partition $1.
DELETE FROM engine_snapshots
WHERE partition = $1
  AND log_offset < (SELECT min(log_offset)
                    FROM (SELECT log_offset FROM engine_snapshots
                          WHERE partition = $1
                          ORDER BY log_offset DESC
                          LIMIT $2) AS kept)
