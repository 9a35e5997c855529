-- wrk script for tests/bench/run.sh: single GET /v1/labels/{id}?box=...
-- with ids drawn uniformly from a file and RandomResizedCrop-like boxes
-- (area fraction U(0.08, 1), aspect ratio log-uniform in [3/4, 4/3],
-- position uniform, up to 10 draws then the whole image: torchvision's
-- draw on a square image), the same draw as bench_batch.c.
--
-- Environment:
--   IDS     file of ids, one per line (loaded once per wrk thread, in init,
--           before that thread's clock starts)
--   FORMAT  sparse | dense
--   PREFIX  path prefix (default ""). The nginx peer gets "/sparse" or
--           "/dense" so it serves its static file for the same random URLs:
--           wrk then spends the same Lua time per request on both servers.
--   SEED    base seed (default 7); each thread adds its own number.
--
-- done() prints one JSON line (requests, duration, errors, bytes and
-- latency percentiles in microseconds) that run.sh parses; wrk's own text
-- report still goes before it.

local threads_made = 0

function setup(thread)
  threads_made = threads_made + 1
  thread:set("thread_no", threads_made)
end

local ids, nids, fmt, prefix

function init(args)
  ids, nids = {}, 0
  for line in io.lines(os.getenv("IDS")) do
    if #line > 0 then
      nids = nids + 1
      ids[nids] = line
    end
  end
  fmt = os.getenv("FORMAT") or "sparse"
  prefix = os.getenv("PREFIX") or ""
  math.randomseed((tonumber(os.getenv("SEED")) or 7) * 1000 + (thread_no or 0))
end

local lo, hi = math.log(3 / 4), math.log(4 / 3)

local function rrc_box()
  for _ = 1, 10 do
    local area = 0.08 + 0.92 * math.random()
    local ratio = math.exp(lo + (hi - lo) * math.random())
    local w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
    if w <= 1 and h <= 1 then
      local x0, y0 = (1 - w) * math.random(), (1 - h) * math.random()
      return x0, y0, math.min(x0 + w, 1), math.min(y0 + h, 1)
    end
  end
  return 0, 0, 1, 1
end

function request()
  local x0, y0, x1, y1 = rrc_box()
  local path = string.format("%s/v1/labels/%s?box=%.5f,%.5f,%.5f,%.5f&format=%s",
                             prefix, ids[math.random(nids)], x0, y0, x1, y1, fmt)
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"lat_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
