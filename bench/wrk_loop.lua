-- The wrk 4.x side of bench/wrk_client.py: a closed loop over prepared POST bodies, bounded by a request count.
--
-- wrk_client.py prepends one generated line, `local CONFIG = {...}` (bodies file, result file, path, marker,
-- threads, connections, per-thread quotas, park delay), and runs this with `wrk -t T -c C -d D -s script`. Each wrk thread has its own
-- Lua state: setup() and done() run in a separate one, so every counter the Python side needs is a global of the
-- thread state, fetched with thread:get() in done().
--
-- Why each hook exists:
--   delay()    grants a send while the thread's quota lasts, then parks the connection. Counting in request()
--              would race: wrk calls delay() for several connections before it calls request() for any of them.
--   request()  thread k sends bodies k, k+T, k+2T, ... (with T = 1 the global round robin of closed_loop.py);
--              every request string was built once, in init().
--   response() counts statuses, and for 200 replies what the reply says it carried (OpenAI `usage` and `index`),
--              because response() is not told which connection, hence which body, it answers. When the last
--              quota'd reply is in, it stops the thread and tells Python on stderr: wrk's main thread sleeps for
--              the whole -d regardless, so Python interrupts it (SIGINT) once every thread is done.
--   done()     writes counters, wrk's summary and its raw latency histogram as JSON. The histogram is read
--              through the FFI because wrk has already added synthetic coordinated-omission samples to it and
--              the Lua accessor (latency(i)) costs a full scan per bucket; Python undoes the correction.

local ffi = require("ffi")
ffi.cdef [[ typedef struct { uint64_t count, limit, min, max; } wrk_client_stats; ]]

-- thread state ------------------------------------------------------------------------------------------------
tid, quota, granted, sent, answered = 0, 0, 0, 0, 0
statuses, ok_sentences, ok_tokens, ok_without_usage = {}, 0, 0, 0
local prepared = {}

function init(args)
  quota = CONFIG.quotas[tid + 1]
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(CONFIG.bodies) do
    prepared[#prepared + 1] = wrk.format("POST", CONFIG.path, headers, line)
  end
end

function delay()
  if granted < quota then
    granted = granted + 1
    return 0
  end
  return CONFIG.park_ms
end

function request()
  -- wrk calls request() once before the run, to check the request parses; delay() precedes every real send.
  if granted == 0 then return prepared[1] end
  local i = tid + CONFIG.threads * sent
  sent = sent + 1
  return prepared[i % #prepared + 1]
end

local function count_items(body)
  local n, at = 0, 1
  while true do
    local _, stop = string.find(body, '"index"%s*:', at)
    if not stop then return n end
    n, at = n + 1, stop + 1
  end
end

function response(status, headers, body)
  answered = answered + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    -- usage closes the reply: look at its tail first, then (another server's key order) at all of it.
    local tokens = string.match(body, '"prompt_tokens"%s*:%s*(%d+)', math.max(1, #body - 256))
      or string.match(body, '"prompt_tokens"%s*:%s*(%d+)')
    if tokens then
      ok_tokens = ok_tokens + tonumber(tokens)
      ok_sentences = ok_sentences + count_items(body)
    else
      ok_without_usage = ok_without_usage + 1
    end
  end
  if answered == quota then
    wrk.thread:stop()
    io.stderr:write(CONFIG.marker .. "\n")
    io.stderr:flush()
  end
end

-- setup/done state ---------------------------------------------------------------------------------------------
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

local function int(x)
  return string.format("%.0f", tonumber(x))
end

local function latency_histogram(summary, latency)
  -- wrk's stats: {count, limit, min, max, data[limit]}, one bucket per microsecond; the userdata holds a pointer.
  local s = ffi.cast("wrk_client_stats **", latency)[0]
  local data = ffi.cast("uint64_t *", s) + 4
  local pairs_ = {}
  local low = tonumber(s.min)
  -- wrk's correction adds samples down to its interval + 1 us, which may lie below the smallest real one.
  local per_connection = math.floor(summary.requests / CONFIG.connections)
  if per_connection > 0 then low = math.min(low, math.floor(summary.duration / per_connection) + 1) end
  for us = low, tonumber(s.max) do
    local n = data[us]
    if n > 0 then pairs_[#pairs_ + 1] = "[" .. us .. "," .. int(n) .. "]" end
  end
  return "[" .. table.concat(pairs_, ",") .. "]", int(s.count)
end

function done(summary, latency, requests)
  local per_thread = {}
  for _, t in ipairs(threads) do
    local codes = {}
    for status, n in pairs(t:get("statuses")) do codes[#codes + 1] = '"' .. int(status) .. '":' .. int(n) end
    per_thread[#per_thread + 1] = string.format(
      '{"tid":%s,"quota":%s,"sent":%s,"answered":%s,"statuses":{%s},"ok_sentences":%s,"ok_tokens":%s,' ..
      '"ok_without_usage":%s}', int(t:get("tid")), int(t:get("quota")), int(t:get("sent")),
      int(t:get("answered")), table.concat(codes, ","), int(t:get("ok_sentences")), int(t:get("ok_tokens")),
      int(t:get("ok_without_usage")))
  end
  local histogram, recorded = latency_histogram(summary, latency)
  local e = summary.errors
  local out = io.open(CONFIG.result, "w")
  out:write(string.format(
    '{"threads":[%s],"duration_us":%s,"requests":%s,"bytes":%s,' ..
    '"errors":{"connect":%s,"read":%s,"write":%s,"status":%s,"timeout":%s},' ..
    '"latency_recorded":%s,"latency_us":%s,"wrk_percentiles_us":{"50":%s,"95":%s,"99":%s}}',
    table.concat(per_thread, ","), int(summary.duration), int(summary.requests), int(summary.bytes),
    int(e.connect), int(e.read), int(e.write), int(e.status), int(e.timeout), recorded, histogram,
    int(latency:percentile(50)), int(latency:percentile(95)), int(latency:percentile(99))))
  out:close()
end
