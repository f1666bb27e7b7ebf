-- One row per series x bucket for events whose time falls in [out_start, out_end): count, sum,
-- mean, sample standard deviation and 95th percentile of the event values. Each event (series
-- and event id) is counted once, whatever the number of copies that landed (the copies
-- classified_events keeps all carry the same time and value, so which one is counted changes
-- nothing and the raw line is not needed). Athena (Trino) dialect.
-- Parameters: grain_seconds, out_start_epoch, out_end_epoch.
SELECT
  series,
  CAST(floor(event_epoch / ${grain_seconds}) * ${grain_seconds} AS BIGINT) AS bucket_epoch,
  count(*) AS event_count,
  sum(value) AS value_sum,
  avg(value) AS value_mean,
  stddev_samp(value) AS value_stddev,
  approx_percentile(value, 0.95) AS value_p95
FROM (
  SELECT
    series,
    event_epoch,
    value,
    row_number() OVER (PARTITION BY series, event_id ORDER BY arrival_hour, source_key) AS copy_number
  FROM classified_events
  WHERE reason IS NULL
)
WHERE copy_number = 1
  AND event_epoch >= ${out_start_epoch}
  AND event_epoch < ${out_end_epoch}
GROUP BY 1, 2
ORDER BY 1, 2
