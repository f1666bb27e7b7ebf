-- classified_events: the parsed lines with the reason each is set aside (NULL for a good event).
-- Athena (Trino) dialect. An event is named by its series and event id (ids need only be unique
-- within a series: a per-source counter is a valid id). Copies of one event that disagree (time,
-- value, or dimensions as written) are conflicting duplicates: the copy with the smallest (event
-- time, value, dimensions) is the event, the others are set aside with that reason, whichever window reads them.
-- Copies are compared within their event hour: every run that rewrites an hour reads every landing
-- hour an event of it can arrive in, so it reads all of them, and the outcome is the same for
-- every run; a copy re-stamped into another hour is another event there. Everything
-- about an event is in its own series' lines, so the series can be split across readers.
-- Only the copies that can matter are ranked: every line set aside on its own, and every usable
-- copy of the event ids that have a usable copy in [classify_start, classify_end) (the window a
-- query counts; the whole read for the rejects). Ranking is per event, so leaving out ids with
-- no copy in that range changes nothing for those kept, and saves sorting every line read.
-- Parameters: lookback_hours, classify_start_epoch, classify_end_epoch.
SELECT
  source_key,
  arrival_hour,
  line,
  event_id,
  series,
  event_epoch,
  value,
  dimensions,
  CASE
    WHEN base_reason IS NULL
      AND dense_rank() OVER (PARTITION BY series, event_id, floor(event_epoch / 3600), base_reason IS NULL
                             ORDER BY event_epoch, value, dimensions) > 1
      THEN 'conflicting_duplicate'
    ELSE base_reason
  END AS reason
FROM parsed_lines
WHERE base_reason IS NOT NULL
  OR event_id IN (
    SELECT event_id
    FROM parsed_lines
    WHERE base_reason IS NULL
      AND event_epoch >= ${classify_start_epoch}
      AND event_epoch < ${classify_end_epoch}
  )
