-- baseline-redis: create a sale atomically, refusing it whole when a SKU exists.
--   KEYS[1..n]  fsb:{SKU}:p product hashes;  KEYS[n+1] fsb:sale:<id>
--   ARGV[1..n]  JSON objects of the product hash fields;  ARGV[n+1] JSON of the sale's
-- Returns 0 when created, else the 1-based index of the first SKU that exists.
local n = #KEYS - 1
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return i
  end
end
local function put(key, json)
  local flat = {}
  for k, v in pairs(cjson.decode(json)) do
    flat[#flat + 1] = k
    flat[#flat + 1] = tostring(v)
  end
  redis.call('HSET', key, unpack(flat))
end
for i = 1, n do
  put(KEYS[i], ARGV[i])
end
put(KEYS[n + 1], ARGV[n + 1])
return 0
