-- Per series, the good events whose time falls in [out_start, out_end): copies landed and
-- distinct event ids, so duplicates are reported, not hidden. Athena (Trino) dialect.
-- Parameters: out_start_epoch, out_end_epoch.
SELECT
  series,
  count(*) AS copies,
  count(DISTINCT event_id) AS events
FROM classified_events
WHERE reason IS NULL
  AND event_epoch >= ${out_start_epoch}
  AND event_epoch < ${out_end_epoch}
GROUP BY 1
ORDER BY 1
