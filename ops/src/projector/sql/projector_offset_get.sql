SELECT next_offset FROM projector_offsets WHERE partition = $1 AND log_id = $2 FOR UPDATE
