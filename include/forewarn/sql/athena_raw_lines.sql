-- raw_lines on Athena: the Glue table over the Firehose landing zone (one string column per
-- line, partition projection on arrival_hour), limited to the hours being read.
-- Parameters: database, raw_table, arrival_start, arrival_end ('YYYY/MM/DD/HH').
SELECT
  "$path" AS source_key,
  arrival_hour,
  line
FROM "${database}"."${raw_table}"
WHERE arrival_hour >= '${arrival_start}'
  AND arrival_hour < '${arrival_end}'
