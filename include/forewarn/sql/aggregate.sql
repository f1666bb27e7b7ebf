-- One row per series x bucket for events whose time falls in [out_start, out_end): count, sum,
-- mean, sample standard deviation and 95th percentile of the event values, each event counted
-- once (counted_events). Athena (Trino) dialect.
-- Parameters: grain_seconds, out_start_epoch, out_end_epoch.
SELECT
  series,
  CAST(floor(event_epoch / ${grain_seconds}) * ${grain_seconds} AS BIGINT) AS bucket_epoch,
  count(*) AS event_count,
  sum(value) AS value_sum,
  avg(value) AS value_mean,
  stddev_samp(value) AS value_stddev,
  approx_percentile(value, 0.95) AS value_p95
FROM counted_events
GROUP BY 1, 2
ORDER BY 1, 2
