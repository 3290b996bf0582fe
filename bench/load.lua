-- wrk script for bench/load.py: a mix of cached pulls, new images, unknown
-- packages and bad input, from the plan load.py writes (BENCH_PLAN).
--
-- Each wrk thread walks the plan's deck of categories in turn; within a
-- category it takes the next request of that category's list, so cached
-- pulls go manifest, config, layers as a client would.  New images are
-- scheduled by time: all clients ask for the same new image during one
-- `new_period`, then move on to the next, so each new image is first a
-- burst of concurrent requests (one build expected) and then cached.
-- Each thread stops after `max_requests` responses, wrk after -d seconds.

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local plan = dofile(os.getenv("BENCH_PLAN"))
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  -- globals, so done() can read them with thread:get()
  statuses = {}
  responses = 0
  new_seen = ""
  started = now()
  cursor = { deck = 0, cached = 0, unknown = 0, bad = 0 }
  seen = {}
end

local function next_of(kind)
  local list = plan[kind]
  cursor[kind] = cursor[kind] % #list + 1
  return list[cursor[kind]]
end

function request()
  cursor.deck = cursor.deck % #plan.deck + 1
  local kind = plan.deck[cursor.deck]
  local r
  if kind == "new" then
    local i = math.floor((now() - started) / plan.new_period) % #plan.new + 1
    if not seen[i] then
      seen[i] = true
      new_seen = new_seen .. i .. ","
    end
    r = plan.new[i]
  else
    r = next_of(kind)
  end
  return wrk.format(r.method or "GET", r.path, r.headers)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  responses = responses + 1
  if responses >= plan.max_requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total = {}
  local new_indices = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
    for i in string.gmatch(thread:get("new_seen"), "(%d+),") do
      new_indices[i] = true
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, status .. ":" .. n)
  end
  local seen_list = {}
  for i in pairs(new_indices) do
    table.insert(seen_list, i)
  end
  local e = summary.errors
  io.write(string.format(
    "wrk-result requests=%d duration_us=%d bytes=%d status_errors=%d " ..
    "socket_errors=%d timeouts=%d p50_us=%d p99_us=%d statuses=%s new_seen=%s\n",
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(99),
    table.concat(parts, ","), table.concat(seen_list, ",")))
end
