-- wrk reporter: one machine-readable line, parsed by bench/common.py.
-- Latencies are in microseconds, duration too; bytes are response bytes
-- (headers included), as wrk counts them.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk-result requests=%d duration_us=%d bytes=%d status_errors=%d " ..
    "socket_errors=%d timeouts=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
