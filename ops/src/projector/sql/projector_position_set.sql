INSERT INTO projector_positions (topic, partition, next_offset, log_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (log_id, topic, partition) DO UPDATE
SET next_offset = GREATEST(projector_positions.next_offset, EXCLUDED.next_offset), updated_at = now()
