-- The partition's projection offset (of log $2), locked until the batch's transaction
-- ends, so two projectors never apply the same records at once.
INSERT INTO projector_offsets (partition, next_offset, log_id) VALUES ($1, 0, $2)
ON CONFLICT (log_id, partition) DO NOTHING
