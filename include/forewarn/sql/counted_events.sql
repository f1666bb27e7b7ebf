-- counted_events: the good events whose time falls in [out_start, out_end), each event (series
-- and event id, within its event hour as classified_events compares copies) once, whatever the
-- number of copies that landed (the copies classified_events keeps all carry the same time, value
-- and dimensions, so which one is counted changes nothing and the raw line is not needed). Athena
-- (Trino) dialect.
-- Parameters: out_start_epoch, out_end_epoch (and classified_events').
SELECT
  series,
  event_epoch,
  value,
  dimensions
FROM (
  SELECT
    series,
    event_epoch,
    value,
    dimensions,
    row_number() OVER (PARTITION BY series, event_id, floor(event_epoch / 3600) ORDER BY arrival_hour, source_key) AS copy_number
  FROM classified_events
  WHERE reason IS NULL
)
WHERE copy_number = 1
  AND event_epoch >= ${out_start_epoch}
  AND event_epoch < ${out_end_epoch}
