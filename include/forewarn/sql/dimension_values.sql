-- dimension_values: per roll-up key (key1..key3 in their slots; an unused slot names a key no
-- event can have) and value, the good events in [out_start, out_end) that carry it, each counted
-- once: what the dimension catalog admits values by (forewarn.dimensions.admit). Athena (Trino)
-- dialect.
-- Parameters: out_start_epoch, out_end_epoch, key1, key2, key3 (and counted_events').
SELECT
  dimension_key,
  dimension_value,
  count(*) AS events
FROM (
  SELECT '${key1}' AS dimension_key, json_extract_scalar(dimensions, '$.${key1}') AS dimension_value FROM counted_events
  UNION ALL
  SELECT '${key2}' AS dimension_key, json_extract_scalar(dimensions, '$.${key2}') AS dimension_value FROM counted_events
  UNION ALL
  SELECT '${key3}' AS dimension_key, json_extract_scalar(dimensions, '$.${key3}') AS dimension_value FROM counted_events
)
WHERE dimension_value IS NOT NULL
GROUP BY 1, 2
ORDER BY 1, 3 DESC, 2
