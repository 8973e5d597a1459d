SELECT next_offset FROM projector_offsets WHERE partition = $1 FOR UPDATE
