-- baseline-redis: one reservation, decided and recorded atomically (Redis runs a script
-- alone). Keys share the SKU's hash tag, so the script stays valid on a cluster.
--   KEYS[1] fsb:{SKU}:p        product hash (available, reserved, limit, window)
--   KEYS[2] fsb:{SKU}:u        user id -> units held or bought
--   KEYS[3] fsb:{SKU}:r:<id>   the reservation record
--   ARGV    user id, quantity, now (ms), expires (ms)
-- Returns {code, a, b}: 0 unknown product, 1 not active (starts, ends), 2 limit
-- exceeded (limit, held), 3 out of stock (available), 4 reserved (available after).
local p = redis.call('HMGET', KEYS[1], 'available', 'limit', 'starts_ms', 'ends_ms')
if not p[1] then
  return {0}
end
local now = tonumber(ARGV[3])
local starts, ends = tonumber(p[3]), tonumber(p[4])
if now < starts or now >= ends then
  return {1, starts, ends}
end
local qty = tonumber(ARGV[2])
local limit = tonumber(p[2])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if held + qty > limit then
  return {2, limit, held}
end
local available = tonumber(p[1])
if available < qty then
  return {3, available}
end
redis.call('HINCRBY', KEYS[1], 'available', -qty)
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
redis.call('HSET', KEYS[3], 'userId', ARGV[1], 'quantity', qty, 'status', 'RESERVED',
  'createdMs', ARGV[3], 'expiresMs', ARGV[4])
return {4, available - qty}
