SELECT image
FROM readmodel_snapshots
WHERE log_id = $1 AND covered = $2
