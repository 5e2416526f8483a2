-- wrk script for the service load benchmark: POST /v2/measure with one fixed JSON body.
--
--   wrk -t2 -c64 -d10s -s bench/wrk/measure.lua http://127.0.0.1:3000/v2/measure
--
-- Environment (all optional):
--   MEASURE_BODY     the JSON body to send; default: the 5 rows below, all hits once warmed
--   MEASURE_API_KEY  sent as "Authorization: Bearer <key>"; default: bench-key
--   WRK_JSON         when set, done() prints one line "WRK_JSON {...}" for scripts to parse

local default_rows = {}
for i = 1, 5 do
  default_rows[i] = string.format(
    '{"inventoryId":"site%d.com","utcDatetime":"2024-10-30","impressions":1000,'
    .. '"country":"US","channel":"web","deviceType":"pc","rowIdentifier":"r%d"}', i, i)
end

wrk.method = "POST"
wrk.body = os.getenv("MEASURE_BODY") or ('{"rows":[' .. table.concat(default_rows, ",") .. ']}')
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("MEASURE_API_KEY") or "bench-key")

-- Latencies are in microseconds; the JSON line reports milliseconds.
function done(summary, latency, requests)
  if not os.getenv("WRK_JSON") then
    return
  end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"non_2xx":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
    .. '"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"p99.9":%.3f}}\n',
    summary.requests, seconds, summary.requests / seconds, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency:percentile(99.9) / 1e3))
end
