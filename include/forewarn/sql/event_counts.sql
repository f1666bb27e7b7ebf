-- Per series, the good events whose time falls in [out_start, out_end): copies landed and
-- distinct events (event id within its event hour, as classified_events compares copies), so
-- duplicates are reported, not hidden. Athena (Trino) dialect.
-- Parameters: out_start_epoch, out_end_epoch.
SELECT
  series,
  CAST(sum(copies) AS BIGINT) AS copies,
  count(*) AS events
FROM (
  SELECT series, event_id, floor(event_epoch / 3600) AS event_hour, count(*) AS copies
  FROM classified_events
  WHERE reason IS NULL
    AND event_epoch >= ${out_start_epoch}
    AND event_epoch < ${out_end_epoch}
  GROUP BY 1, 2, 3
)
GROUP BY 1
ORDER BY 1
