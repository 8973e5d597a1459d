UPDATE projector_offsets SET next_offset = $2, updated_at = now() WHERE partition = $1 AND log_id = $3
