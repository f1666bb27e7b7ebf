-- aggregate.sql with roll-ups: the same row per series x bucket, and one more series per value
-- (or combination of values) of each declared dimension set, named
-- <series>/<key>=<value>[/<key>=<value>...] in the declared key order, e.g.
-- checkout.revenue/region=eu/channel=app. The declared keys fill up to three slots (d1, d2, d3:
-- ${key1}, ${key2}, ${key3}; an unused slot names a key no event can have). Python keeps only the
-- declared grouping sets of those below (forewarn.query.keep_grouping_sets); the first, the series
-- itself, is always kept. An event without a key of a set is in no series of that set. A value
-- the dimension catalog does not keep for its bucket counts as '__other__' (kept1..kept3: each a
-- condition on the raw value r1..r3 and bucket_epoch, from forewarn.dimensions.kept_conditions).
-- A series whose per-series settings give it other roll-ups keeps only its own sets
-- (rollups_for: a condition on base_series and the grouping flags g1..g3, from
-- forewarn.dimensions.RollupPlan.condition; TRUE when no rule does). Athena (Trino) dialect.
-- Parameters: grain_seconds, out_start_epoch, out_end_epoch, key1, key2, key3, kept1, kept2, kept3,
-- rollups_for.
SELECT
  series,
  bucket_epoch,
  event_count,
  value_sum,
  value_mean,
  value_stddev,
  value_p95
FROM (
  SELECT
    concat(
      series,
      CASE WHEN grouping(d1) = 0 THEN concat('/${key1}=', d1) ELSE '' END,
      CASE WHEN grouping(d2) = 0 THEN concat('/${key2}=', d2) ELSE '' END,
      CASE WHEN grouping(d3) = 0 THEN concat('/${key3}=', d3) ELSE '' END
    ) AS series,
    (grouping(d1) = 1 OR d1 IS NOT NULL) AND (grouping(d2) = 1 OR d2 IS NOT NULL)
      AND (grouping(d3) = 1 OR d3 IS NOT NULL) AS complete,
    series AS base_series,
    grouping(d1) AS g1,
    grouping(d2) AS g2,
    grouping(d3) AS g3,
    bucket_epoch,
    count(*) AS event_count,
    sum(value) AS value_sum,
    avg(value) AS value_mean,
    stddev_samp(value) AS value_stddev,
    approx_percentile(value, 0.95) AS value_p95
  FROM (
    SELECT
      series,
      bucket_epoch,
      value,
      CASE WHEN r1 IS NULL THEN NULL WHEN ${kept1} THEN r1 ELSE '__other__' END AS d1,
      CASE WHEN r2 IS NULL THEN NULL WHEN ${kept2} THEN r2 ELSE '__other__' END AS d2,
      CASE WHEN r3 IS NULL THEN NULL WHEN ${kept3} THEN r3 ELSE '__other__' END AS d3
    FROM (
      SELECT
        series,
        CAST(floor(event_epoch / ${grain_seconds}) * ${grain_seconds} AS BIGINT) AS bucket_epoch,
        value,
        json_extract_scalar(dimensions, '$.${key1}') AS r1,
        json_extract_scalar(dimensions, '$.${key2}') AS r2,
        json_extract_scalar(dimensions, '$.${key3}') AS r3
      FROM counted_events
    )
  )
  GROUP BY GROUPING SETS (
    (series, bucket_epoch),
    (series, bucket_epoch, d1),
    (series, bucket_epoch, d2),
    (series, bucket_epoch, d3),
    (series, bucket_epoch, d1, d2),
    (series, bucket_epoch, d1, d3),
    (series, bucket_epoch, d2, d3),
    (series, bucket_epoch, d1, d2, d3)
  )
)
WHERE complete AND ${rollups_for}
ORDER BY 1, 2
