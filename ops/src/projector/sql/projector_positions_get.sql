SELECT partition, next_offset FROM projector_positions WHERE topic = $1
