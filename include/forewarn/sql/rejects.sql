-- Every line that cannot be used, with its reason, so it is set aside under the errors prefix
-- and counted, never silently dropped. Athena (Trino) dialect.
SELECT
  arrival_hour,
  reason,
  source_key,
  line
FROM classified_events
WHERE reason IS NOT NULL
ORDER BY arrival_hour, source_key, line
