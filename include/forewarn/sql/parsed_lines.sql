-- parsed_lines: every non-blank raw line with its parsed fields and, when the line itself cannot
-- be used, the reason it is set aside (``base_reason``, NULL for a usable line). Athena (Trino)
-- dialect. Reads the relation raw_lines(source_key, arrival_hour 'YYYY/MM/DD/HH', line), which
-- each engine provides over the Firehose landing zone for the hours being read. One leading byte
-- order mark (U+FEFF, which producers on Windows write) is skipped: the rest of the line is the
-- event (``line`` stays as it landed). forewarn.events.validate_line applies the same rules.
-- Parameters: lookback_hours.
SELECT
  source_key,
  arrival_hour,
  line,
  event_id,
  series,
  event_epoch,
  value,
  -- as written (minified): copies of one event must write them alike; {} and null are none
  CASE WHEN dimensions_text IS NULL OR dimensions_text IN ('null', '{}') THEN NULL ELSE dimensions_text END AS dimensions,
  CASE
    WHEN invalid_json THEN 'invalid_json'
    -- absent, null, empty or only JSON whitespace (space, tab, CR, LF: forewarn.events.JSON_WHITESPACE)
    WHEN event_id_json IS NULL OR event_id_json = 'null'
      OR (event_id_is_string AND NOT regexp_like(event_id, '[^ \t\n\r]')) THEN 'missing_event_id'
    -- neither a JSON string nor an integer written plainly (-?, 1 to 15 digits: a double holds it
    -- exactly, so every engine writes its digits alike and 7 is the id "7"), or longer than 128:
    -- engines write other JSON (1.50, 1e2, a 16-digit integer, true, an object) as different text
    WHEN NOT (event_id_is_string OR regexp_like(event_id_json, '^-?[0-9]{1,15}\z'))
      OR length(event_id) > 128 THEN 'bad_event_id'
    -- \z, not $: in Trino's patterns (Java syntax) $ also matches before a final line feed
    -- a JSON string: engines write a number or true as different text (1.50 and 1.5, 1e2)
    WHEN series IS NULL OR NOT coalesce(series_is_string, FALSE)
      OR NOT regexp_like(series, '^[A-Za-z0-9_.:/-]{1,128}\z') THEN 'bad_series'
    WHEN event_epoch IS NULL THEN 'bad_event_time'
    -- a JSON number, or a string holding one as JSON writes it: engines cast other text apart
    -- (' 12', '1_000', '0x10', '1.5d', other scripts' digits)
    WHEN value IS NULL OR NOT is_finite(value)
      OR (coalesce(value_is_string, FALSE)
          AND NOT regexp_like(value_text, '^-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][-+]?[0-9]+)?\z')) THEN 'bad_value'
    -- Beyond what a metric can carry (CloudWatch refuses values past 2^360; sums of a few such
    -- values overflow): forewarn.config.MAX_ABS_VALUE.
    WHEN abs(value) > 1e100 THEN 'value_out_of_range'
    -- Optional dimensions: an object of at most 5 keys [a-z][a-z0-9_]{0,31}, each a string
    -- [A-Za-z0-9_.:-]{1,64}, no key twice (forewarn.events.dimensions_problem).
    WHEN dimensions_text IS NOT NULL AND dimensions_text <> 'null' AND NOT (
      dimensions_map_ok
      AND regexp_like(dimensions_text, '^\{\s*("[a-z][a-z0-9_]{0,31}"\s*:\s*"[A-Za-z0-9_.:-]{1,64}"(\s*,\s*"[a-z][a-z0-9_]{0,31}"\s*:\s*"[A-Za-z0-9_.:-]{1,64}"){0,4})?\s*\}\z')
    ) THEN 'bad_dimensions'
    -- Older than the look-back: no run will rewrite its partition any more.
    WHEN event_epoch < arrival_epoch - ${lookback_hours} * 3600 THEN 'too_late'
    -- More than an hour ahead of its arrival hour: a producer clock is wrong.
    WHEN event_epoch >= arrival_epoch + 7200 THEN 'future_event_time'
    ELSE NULL
  END AS base_reason
FROM (
  SELECT
    source_key,
    arrival_hour,
    line,
    -- not JSON, or JSON but not an object (an array, a string, a number, true, false, null): a
    -- valid document is an object exactly when its first character past JSON whitespace is {
    -- (a second byte order mark is not whitespace: the line is invalid). DuckDB's parser also
    -- takes what RFC 8259 and Athena's refuse: NaN and Infinity (in any case, signed or not) and
    -- a trailing comma, found outside strings (a prefix of whole strings and other characters).
    -- A line that was no UTF-8 is read with U+FFFD in place of its bad bytes (both engines):
    -- valid JSON then, whose ids or series could merge with others', so it is set aside (the
    -- landing object keeps its bytes).
    TRY(json_parse(body)) IS NULL OR NOT regexp_like(body, '^[ \t\n\r]*[{]') OR strpos(body, chr(65533)) > 0
      -- half a surrogate pair (\ud800 alone, or \udc00): no UTF-8 text holds it, and engines read
      -- it apart (DuckDB refuses the JSON, Trino's reader may not). Past the escaped backslashes
      -- (\\, which JSON reads first) and the whole pairs, no surrogate escape may be left.
      OR (strpos(body, chr(92)) > 0
          AND regexp_like(regexp_replace(regexp_replace(body, '\\\\', ''),
                                         '\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}', ''),
                          '\\u[dD][89a-fA-F][0-9a-fA-F]{2}'))
      OR regexp_like(body, '^([^"]|"([^"\\]|\\.)*")*([Nn][Aa][Nn]|[Ii][Nn][Ff]|,[ \t\n\r]*[\]}])') AS invalid_json,
    TRY(json_extract_scalar(body, '$.event_id')) AS event_id,
    TRY(json_format(json_extract(body, '$.event_id'))) AS event_id_json,  -- its JSON text: "e1", 7, 1.5, {"a":1}
    TRY(regexp_like(json_format(json_extract(body, '$.event_id')), '^"')) AS event_id_is_string,
    TRY(json_extract_scalar(body, '$.series')) AS series,
    TRY(regexp_like(json_format(json_extract(body, '$.series')), '^"')) AS series_is_string,
    -- ISO 8601 with a date, a time and an offset (Z or +hh:mm, at most 14:00 either way; Athena
    -- has no zone beyond, and a longer offset is no real zone's): without one, each engine would
    -- guess a zone (forewarn.events.EVENT_TIME_PATTERN)
    TRY(CASE WHEN regexp_like(json_extract_scalar(body, '$.event_time'),
                              '^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.][0-9]+)?)?(Z|[+-](0[0-9]|1[0-3])(:?[0-5][0-9])?|[+-]14(:?00)?)\z')
             THEN to_unixtime(from_iso8601_timestamp(json_extract_scalar(body, '$.event_time'))) END) AS event_epoch,
    TRY(CAST(json_extract_scalar(body, '$.value') AS DOUBLE)) AS value,
    TRY(json_extract_scalar(body, '$.value')) AS value_text,
    TRY(regexp_like(json_format(json_extract(body, '$.value')), '^"')) AS value_is_string,
    TRY(json_format(json_extract(body, '$.dimensions'))) AS dimensions_text,
    TRY(CAST(json_extract(body, '$.dimensions') AS MAP(VARCHAR, VARCHAR))) IS NOT NULL AS dimensions_map_ok,
    to_unixtime(date_parse(arrival_hour, '%Y/%m/%d/%H')) AS arrival_epoch
  FROM (
    SELECT
      source_key,
      arrival_hour,
      line,
      -- the line past one leading byte order mark (U+FEFF)
      CASE WHEN substr(line, 1, 1) = chr(65279) THEN substr(line, 2) ELSE line END AS body
    FROM raw_lines
  )
  -- a blank line (nothing but JSON whitespace past the byte order mark) is no event; trim is no
  -- test of that: DuckDB's strips the Unicode spaces (U+00A0 too) but not tab, CR or LF, Trino's
  -- Java's white space (a form feed too)
  WHERE NOT regexp_like(body, '^[ \t\n\r]*\z')
)
