-- The partition's projection offset, locked until the batch's transaction ends, so two
-- projectors never apply the same records at once.
INSERT INTO projector_offsets (partition, next_offset) VALUES ($1, 0)
ON CONFLICT (partition) DO NOTHING
