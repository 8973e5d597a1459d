-- Keeps the newest $2 read-model snapshots of log $1.
DELETE FROM readmodel_snapshots
WHERE log_id = $1
  AND covered < (SELECT min(covered)
                 FROM (SELECT covered FROM readmodel_snapshots
                       WHERE log_id = $1
                       ORDER BY covered DESC
                       LIMIT $2) AS kept)
