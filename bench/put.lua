-- wrk script shared by both sides of bench/raft-writes.sh: every request is a write of a NEW
-- name, so every request is a real change that has to be committed through Raft.
--
--   BENCH_MODE=gateway  PUT /v1/pools/<name>    body: a one-backend pool (Pool JSON)
--   BENCH_MODE=etcd     POST /v3/kv/put         body: {"key": b64("/pools/<name>"), "value": b64(pool JSON)}
--   BENCH_RUN=<prefix>  names are <prefix>-<thread>-<counter>, so runs never overwrite each other
--   BENCH_NAMES=N       (optional) cycle over N names per thread instead: <prefix>-<thread>-<counter % N>;
--                       still a real change each time, as the backend port moves with the counter
--
-- The same pool JSON is the value on both sides, so both store the same bytes per write.
-- done() prints one line "BENCH_RESULT {json}" that bench/raft_writes.py parses.

local mode = os.getenv("BENCH_MODE") or "gateway"
local run = os.getenv("BENCH_RUN") or "r"
local names = tonumber(os.getenv("BENCH_NAMES") or "0") or 0

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  local len = #s
  for i = 1, len, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1)
    out[#out + 1] = b64chars:sub(c2 + 1, c2 + 1)
    out[#out + 1] = b and b64chars:sub(c3 + 1, c3 + 1) or "="
    out[#out + 1] = c and b64chars:sub(c4 + 1, c4 + 1) or "="
  end
  return table.concat(out)
end

local function pool_json(name, counter)
  -- small pool; the port varies with the counter so even the body differs between writes
  return '{"name":"' .. name .. '","balance":"round_robin","backends":[{"id":"a","address":"127.0.0.1:'
    .. (10000 + counter % 50000) .. '","weight":1}]}'
end

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local counter = 0
local json_headers = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  local name = run .. "-" .. tid .. "-" .. (names > 0 and counter % names or counter)
  local body = pool_json(name, counter)
  if mode == "etcd" then
    local put = '{"key":"' .. b64("/pools/" .. name) .. '","value":"' .. b64(body) .. '"}'
    return wrk.format("POST", "/v3/kv/put", json_headers, put)
  else
    return wrk.format("PUT", "/v1/pools/" .. name, json_headers, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_p50_us":%d,' ..
    '"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
