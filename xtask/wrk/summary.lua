-- `cargo xtask bench http`: at the end of a wrk run, one line of JSON (prefixed so that the
-- harness finds it among wrk's own output) with the request count, the run's duration and the
-- latency percentiles, all in microseconds, and the errors by kind.
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'wrk-summary: {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
