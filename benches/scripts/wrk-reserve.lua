-- benches/scripts/wrk-reserve.lua - the wrk side of bench-compare.sh.
--
-- FLASHSALE_WRK_MODE=reserve (default): every request is POST /api/v1/reservations for
-- FLASHSALE_WRK_SKU by a new userId ("<FLASHSALE_WRK_TAG>-<thread>-<n>"), so no user
-- ever meets its limit; answers are counted by status.
-- FLASHSALE_WRK_MODE=get: the URL given to wrk, unchanged (/health, availability).
-- FLASHSALE_WRK_MODE=retry: the same POST /api/v1/reservations for FLASHSALE_WRK_SKU by
-- one user (FLASHSALE_WRK_TAG) again and again, as a buyer retrying on a sold-out SKU:
-- a static request, so wrk runs no Lua per request (the same generator cost as `get`,
-- which makes the two rates comparable).
--
-- done() prints one line for the script to parse:
--   wrk-result requests=N duration_us=D p50_us=X p99_us=Y s201=N non201=N errors=N
-- (non201: answers with another status; errors: connect/read/write/timeout failures).

local mode = os.getenv("FLASHSALE_WRK_MODE") or "reserve"
local threads = {}
local next_id = 1

function setup(thread)
	thread:set("tid", next_id)
	next_id = next_id + 1
	table.insert(threads, thread)
end

if mode == "retry" then
	wrk.method = "POST"
	wrk.path = "/api/v1/reservations"
	wrk.headers["Content-Type"] = "application/json"
	wrk.body = string.format('{"userId":"%s","skuId":"%s","quantity":1}',
		os.getenv("FLASHSALE_WRK_TAG") or "wrk", os.getenv("FLASHSALE_WRK_SKU") or "SKU")
end

if mode == "reserve" then
	local sku = os.getenv("FLASHSALE_WRK_SKU") or "SKU"
	local tag = os.getenv("FLASHSALE_WRK_TAG") or "wrk"
	local headers = { ["Content-Type"] = "application/json" }
	local n = 0
	counts = { s201 = 0, other = 0 }

	function request()
		n = n + 1
		local body = string.format('{"userId":"%s-%d-%d","skuId":"%s","quantity":1}', tag, tid, n, sku)
		return wrk.format("POST", "/api/v1/reservations", headers, body)
	end

	function response(status, _, _)
		if status == 201 then
			counts.s201 = counts.s201 + 1
		else
			counts.other = counts.other + 1
		end
	end
end

function done(summary, latency, _)
	local s201, other = 0, 0
	for _, t in ipairs(threads) do
		local c = t:get("counts")
		if c then
			s201 = s201 + (c.s201 or 0)
			other = other + (c.other or 0)
		end
	end
	local e = summary.errors
	if mode ~= "reserve" then
		-- wrk counts non-2xx/3xx answers as status errors.
		other = e.status
		s201 = 0
	end
	io.write(string.format(
		"wrk-result requests=%d duration_us=%d p50_us=%d p99_us=%d s201=%d non201=%d errors=%d\n",
		summary.requests,
		summary.duration,
		latency:percentile(50),
		latency:percentile(99),
		s201,
		other,
		e.connect + e.read + e.write + e.timeout
	))
end
