SELECT partition, next_offset FROM projector_positions WHERE topic = $1 AND log_id = $2
