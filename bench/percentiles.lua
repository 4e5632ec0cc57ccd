-- wrk script: one line per run with req/s and finer latency percentiles than --latency gives
-- (p50 .. p99.99, max, mean, standard deviation; milliseconds).
--   wrk -t1 -c64 -d3s -s bench/percentiles.lua http://127.0.0.1:PORT/
done = function(summary, latency, requests)
  local line = string.format("rps %.0f", summary.requests / (summary.duration / 1e6))
  for _, p in ipairs({50, 75, 90, 95, 98, 99, 99.5, 99.9, 99.99}) do
    line = line .. string.format(" p%g=%.2f", p, latency:percentile(p) / 1000)
  end
  line = line .. string.format(" max=%.2f mean=%.2f sd=%.2f",
    latency.max / 1000, latency.mean / 1000, latency.stdev / 1000)
  io.write(line .. "\n")
end
