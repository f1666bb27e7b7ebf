"""The aggregation SQL: every shipped query parses as Trino and translates to DuckDB; the
classification agrees with the documented event rules; results equal pandas on generated data."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlglot
from hypothesis import example, given, settings
from hypothesis import strategies as st

from forewarn.aggregate import classify_within
from forewarn.events import REJECT_REASONS, event_line, is_blank_line, validate, validate_line
from forewarn.query import (
    athena_pages_to_table,
    render,
    run_duckdb,
    shipped_queries,
    sql_text,
    substitute,
    to_duckdb,
)

PARAMS = classify_within({"lookback_hours": 2, "grain_seconds": 300, "out_start_epoch": 0, "out_end_epoch": 4_000_000_000,
                          "key1": "region", "key2": "channel", "key3": "_unused3",  # the roll-ups' slots
                          "kept1": "TRUE", "kept2": "TRUE", "kept3": "TRUE",  # every value kept
                          "rollups_for": "TRUE"})  # every series has every set
ATHENA_SOURCE = {"database": "forewarn", "raw_table": "raw_events", "arrival_start": "2026/11/27/00", "arrival_end": "2026/11/27/03"}


def lines_table(lines: list[str], hour: str = "2026/11/27/02") -> pa.Table:
    return pa.table({"source_key": [f"s3://b/raw/{hour}/obj"] * len(lines), "arrival_hour": [hour] * len(lines), "line": lines})


def test_the_expected_queries_ship():
    assert {"aggregate", "classified_events", "event_counts", "parsed_lines", "rejects", "athena_raw_lines"} <= set(shipped_queries())


def tables_read(tree: sqlglot.exp.Expression) -> set[tuple[str, str]]:
    """The tables a query reads, its own WITH clauses aside."""
    own = {cte.alias_or_name for cte in tree.find_all(sqlglot.exp.CTE)}
    return {(t.db, t.name) for t in tree.find_all(sqlglot.exp.Table) if t.db or t.name not in own}


@pytest.mark.parametrize("name", [q for q in shipped_queries() if q != "athena_raw_lines"])
def test_every_query_parses_as_trino_and_translates_to_duckdb(name):
    import duckdb

    trino = render(name, PARAMS, sources={"raw_lines": substitute(sql_text("athena_raw_lines"), ATHENA_SOURCE)})
    text = trino.sql(dialect="trino")
    assert tables_read(trino) == {("forewarn", "raw_events")}  # Athena reads the Glue table, nothing else
    sqlglot.parse_one(text, read="trino")  # round-trips

    duck = to_duckdb(render(name, PARAMS))
    assert "APPROX_QUANTILE" not in duck.upper()
    assert "IS_FINITE" not in duck.upper()
    con = duckdb.connect()
    con.register("raw_lines", lines_table(['{"event_id":"a","series":"s","event_time":"2026-11-27T02:00:00Z","value":1}']))
    con.execute("SET TimeZone='UTC'")
    con.sql(duck).fetchall()  # binds and runs


def test_parameters_refuse_text_that_could_change_the_statement():
    with pytest.raises(ValueError, match="not allowed"):
        substitute("SELECT '${x}'", {"x": "'; DROP TABLE t; --"})
    with pytest.raises(KeyError):
        substitute("SELECT ${missing}", {})
    with pytest.raises(TypeError):
        substitute("SELECT ${x}", {"x": [1]})


GOOD = '{"event_id":"e1","series":"orders.count","event_time":"2026-11-27T02:10:00.000Z","value":3.5}'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (GOOD, None),
        ('{"event_id":"e1","series":"orders.count",', "invalid_json"),
        ("not json at all", "invalid_json"),
        ('{"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
        ('{"event_id":"","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
        ('{"event_id":"   ","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
        ('{"event_id":" \\t\\r\\n","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
        # JSON, but not an object: no event
        ("[1, 2]", "invalid_json"),
        ("[" + GOOD + "]", "invalid_json"),
        ("42", "invalid_json"),
        ('"e1"', "invalid_json"),
        ("null", "invalid_json"),
        ("true", "invalid_json"),
        # one leading byte order mark is skipped; the line is kept as it landed
        ("\ufeff" + GOOD, None),
        ("\ufeff \t" + GOOD, None),
        ('\ufeff{"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
        ("\ufeff\ufeff" + GOOD, "invalid_json"),
        ("\ufeff[1]", "invalid_json"),
        ('{"event_id":"e","series":"has space","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
        ('{"event_id":"e","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
        ('{"event_id":"e","series":"s","event_time":"yesterday","value":1}', "bad_event_time"),
        # an offset is required (without one each engine would guess a zone), and the T
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27 02:10:00Z","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":1795745400,"value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T03:10+0100","value":1}', None),
        # offsets up to 14:00 either way (Athena has no zone beyond), minutes 00-59
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T16:10:00+14:00","value":1}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-26T12:10:00-14:00","value":1}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T15:40:00+1330","value":1}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-28T03:10:00+25:00","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T20:10:00+18:00","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T16:11:00+14:01","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-26T12:09:00-14:01","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T08:10:00+05:60","value":1}', "bad_event_time"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"n/a"}', "bad_value"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"NaN"}', "bad_value"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":true}', "bad_value"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z"}', "bad_value"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":-1e200}', "value_out_of_range"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1e100}', None),
        # arrival hour 02: older than 00:00 is beyond the 2 h look-back, 04:00 or later is the future
        ('{"event_id":"e","series":"s","event_time":"2026-11-26T23:59:59Z","value":1}', "too_late"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T00:00:00Z","value":1}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T03:59:59+00:00","value":1}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T05:00:00+01:00","value":1}', "future_event_time"),
        # dimensions: optional, a flat object of a few short strings
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":"eu","channel":"app"}}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions": { "region" : "eu-west-1" } }', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{}}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":"eu\\n"}}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":null}', None),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":5}}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":["eu"]}}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":"eu"}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"Region":"eu"}}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":"north america"}}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":"%s"}}' % ("x" * 65), "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6"}}', "bad_dimensions"),
        ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":"eu","region":"us"}}', "bad_dimensions"),
    ],
)
def test_classification(line, reason):
    out = run_duckdb("classified_events", PARAMS, lines_table([line]))
    assert out.column("reason").to_pylist() == [reason]


def test_copies_that_disagree_are_set_aside_whichever_arrived_first():
    """Two copies of one event id with different values: the one with the smaller value is the
    event, in either arrival order; the other is a conflicting duplicate. Identical copies are
    duplicates, counted once, not rejected."""
    first = '{"event_id":"e1","series":"s","event_time":"2026-11-27T02:10:00Z","value":%s}'
    kept = []
    for order in ((5, 9), (9, 5)):
        lines = pa.concat_tables([lines_table([first % order[0]], "2026/11/27/02"), lines_table([first % order[1], first % order[1]], "2026/11/27/03")])
        out = run_duckdb("classified_events", PARAMS, lines).to_pandas()
        assert sorted(out["reason"].fillna("-")) == (["-", "conflicting_duplicate", "conflicting_duplicate"] if order == (5, 9)
                                                      else ["-", "-", "conflicting_duplicate"])
        rows = run_duckdb("aggregate", PARAMS, lines).to_pandas()
        counts = run_duckdb("event_counts", PARAMS, lines).to_pandas()
        assert rows["event_count"].tolist() == [1] and counts["events"].tolist() == [1]
        kept.append(rows["value_sum"].iloc[0])
    assert kept == [5.0, 5.0]


def test_copies_that_disagree_on_their_dimensions_are_conflicting_duplicates_and_dimensions_pass_through():
    line = '{"event_id":"e1","series":"s","event_time":"2026-11-27T02:10:00Z","value":5,"dimensions":{"region":"%s"}}'
    out = run_duckdb("classified_events", PARAMS, lines_table([line % "us", line % "eu", line % "eu"])).to_pandas()
    assert sorted(zip(out["dimensions"], out["reason"].fillna("-"), strict=True)) == [
        ('{"region":"eu"}', "-"), ('{"region":"eu"}', "-"), ('{"region":"us"}', "conflicting_duplicate")]
    assert run_duckdb("aggregate", PARAMS, lines_table([line % "eu"])).to_pandas()["event_count"].tolist() == [1]
    bare = '{"event_id":"e1","series":"s","event_time":"2026-11-27T02:10:00Z","value":5%s}'
    same = run_duckdb("classified_events", PARAMS, lines_table([bare % "", bare % ',"dimensions":{}', bare % ',"dimensions":null']))
    assert same.column("reason").to_pylist() == [None] * 3 and same.column("dimensions").to_pylist() == [None] * 3  # none, three ways


def test_an_event_id_names_an_event_within_its_series():
    """Ids need only be unique within a series (a per-source counter is a valid id): the same id
    in two series is two events, each counted in its own series; in one series, a copy that
    disagrees is still a conflicting duplicate."""
    line = '{"event_id":"7","series":"%s","event_time":"2026-11-27T02:10:00Z","value":%s}'
    lines = lines_table([line % ("a", 1), line % ("b", 2), line % ("b", 2), line % ("b", 3)], "2026/11/27/02")
    out = run_duckdb("classified_events", PARAMS, lines).to_pandas()
    assert sorted(zip(out["series"], out["reason"].fillna("-"), strict=True)) == [
        ("a", "-"), ("b", "-"), ("b", "-"), ("b", "conflicting_duplicate")]
    rows = run_duckdb("aggregate", PARAMS, lines).to_pandas()
    assert rows[["series", "event_count", "value_sum"]].values.tolist() == [["a", 1, 1.0], ["b", 1, 2.0]]
    counts = run_duckdb("event_counts", PARAMS, lines).to_pandas()
    assert counts[["series", "copies", "events"]].values.tolist() == [["a", 1, 1], ["b", 2, 1]]


def test_an_integer_event_id_is_the_string_of_its_digits():
    """A producer sending integer ids (7, -42) keeps its events: 7 and "7" are one id, so a copy
    of either is counted once and one that disagrees is a conflicting duplicate."""
    line = '{"event_id":%s,"series":"s","event_time":"2026-11-27T02:10:00Z","value":%s}'
    lines = lines_table([line % (7, 1), line % ('"7"', 1), line % (-42, 2), line % ('"-42"', 3)])
    out = run_duckdb("classified_events", PARAMS, lines).to_pandas()
    assert sorted(zip(out["event_id"], out["reason"].fillna("-"), strict=True)) == [
        ("-42", "-"), ("-42", "conflicting_duplicate"), ("7", "-"), ("7", "-")]
    assert run_duckdb("aggregate", PARAMS, lines).to_pandas()[["event_count", "value_sum"]].values.tolist() == [[2, 3.0]]


def test_blank_lines_are_not_events():
    out = run_duckdb("classified_events", PARAMS, lines_table(["", "   ", "\ufeff", "\ufeff  ", GOOD]))
    assert out.num_rows == 1


#: Lines of nothing but JSON whitespace (a CRLF line's lone CR, say) are blank, no event; a line of
#: other white space (a form feed, a no-break or ideographic space, a line separator) is no JSON.
BLANK_OR_NOT = [
    ("\r", True), ("\t", True), (" \r\n", True), ("\ufeff\r", True), ("\n\n", True),
    ("\f", False), ("\v", False), ("\u00a0", False), ("\u3000", False), ("\u2028", False), ("\u0085", False), ("\ufeff\ufeff", False),
]


@pytest.mark.parametrize(("line", "blank"), BLANK_OR_NOT)
def test_both_engines_skip_the_same_blank_lines(line, blank):
    """The SQL skips a blank line (no row) and sets any other aside as invalid_json;
    ``events.is_blank_line`` says which is which, and ``validate_line`` refuses both."""
    reasons = run_duckdb("classified_events", PARAMS, lines_table([line])).column("reason").to_pylist()
    assert reasons == ([] if blank else ["invalid_json"])
    assert is_blank_line(line) is blank
    assert validate_line(line) == "invalid_json"


#: Lines both engines must classify alike (no time-window rule applies to them).
LINE_RULES = [
    ('{"event_id":"  ","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
    ('{"event_id":"\\t\\n","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
    ('{"event_id":"\\u00a0","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),  # not JSON whitespace
    ('{"event_id":" e ","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ("\ufeff" + GOOD, None),
    ('\ufeff{"event_id":"e","series":"s","event_time":"yesterday","value":1}', "bad_event_time"),
    ("\ufeff\ufeff" + GOOD, "invalid_json"),
    ("[" + GOOD + "]", "invalid_json"),
    ("[]", "invalid_json"),
    ("3.5", "invalid_json"),
    ('"text"', "invalid_json"),
    ("null", "invalid_json"),
    ("false", "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-28T03:10:00+25:00","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T20:10:00+18:00","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T16:11:00+1401","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-26T12:10:00-15","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T16:10:00+14","value":1}', None),
    ('{"event_id":"e","series":"s","event_time":"2026-11-26T12:10:00-14:00","value":1}', None),
    # an id is a JSON string, or an integer of at most 15 digits written plainly (its digits are the
    # id): each engine writes other JSON (1.50, 1e2, 16 digits, an object) as other text
    ('{"event_id":{"a":1},"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":["e"],"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":1.5,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":1.0,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":1e2,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":1234567890123456,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":true,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":false,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_event_id"),
    ('{"event_id":7,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":-42,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":0,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":123456789012345,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":-123456789012345,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":"%s","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}' % ("x" * 129), "bad_event_id"),
    ('{"event_id":"%s","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}' % ("x" * 128), None),
    ('{"event_id":"7","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":null,"series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "missing_event_id"),
    # RFC 8259 JSON only, as Athena parses it: no bare NaN or Infinity (any case), no trailing comma
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":NaN}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":-Infinity}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":nan}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"source":NaN}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"region":INF}}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"tags":["a" , ]}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"NaN"}', "bad_value"),
    ('{"event_id":"NaN","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"source":"say \\"Infinity,]\\" \\\\"}', None),
    # a series or time with a final line feed: Trino's $ would match before it, \z does not
    ('{"event_id":"e","series":"abc\\n","event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z\\n","value":1}', "bad_event_time"),
    # a number past a double's range is valid JSON that both engines read as an infinity: no value
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1e999}', "bad_value"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":-1E+400}', "bad_value"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"1e999"}', "bad_value"),
    # underflow is a zero, a value like any other
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1e-999}', None),
    # a series is a JSON string: engines write 5, true, 1.50 and 1e2 as other text (1.5 and 1.50 would merge)
    ('{"event_id":"e","series":5,"event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
    ('{"event_id":"e","series":true,"event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
    ('{"event_id":"e","series":1.50,"event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
    ('{"event_id":"e","series":1e2,"event_time":"2026-11-27T02:10:00Z","value":1}', "bad_series"),
    # a value is a JSON number or a string holding one as JSON writes it
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"12"}', None),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"-1.5e3"}', None),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":" 12"}', "bad_value"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"1_000"}', "bad_value"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"007"}', "bad_value"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"\u0661\u0662"}', "bad_value"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"0x10"}', "bad_value"),
    # bytes that were no UTF-8 (read as U+FFFD), half a surrogate pair: no event
    ('{"event_id":"caf\ufffd","series":"s","event_time":"2026-11-27T02:10:00Z","value":1}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"\\ud800"}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"\\ud83d\\ude00"}', None),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"\\udc00"}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"\\ude00\\ud83d"}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"\\\\ud800"}', None),  # a backslash, then text
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"\\\\\\ud800"}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"note":"x","note":"\\ud800"}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"n":{"a":"x","a":"\\ud800"}}', "invalid_json"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1%s}' % ("0" * 400), "bad_value"),
    # a key written twice: the first is read, in ``dimensions`` it is refused
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"value":"x"}', None),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"x","value":1}', "bad_value"),
    ('{"event_id":"e","series":"s","series":5,"event_time":"2026-11-27T02:10:00Z","value":1}', None),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":1,"dimensions":{"a":"x","a":"y"}}', "bad_dimensions"),
    # a time of day or date no clock shows
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T24:00:00Z","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"2026-11-27T23:60:00Z","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"2026-13-01T00:00:00Z","value":1}', "bad_event_time"),
    ('{"event_id":"e","series":"s","event_time":"0000-01-01T00:00:00Z","value":1}', "bad_event_time"),
]


@pytest.mark.parametrize(("line", "reason"), LINE_RULES)
def test_both_engines_classify_a_line_alike(line, reason):
    """Blank ids, a byte order mark, JSON that is no object, offsets beyond ±14:00: the SQL and
    ``events.validate_line`` reach the documented reason."""
    assert run_duckdb("classified_events", PARAMS, lines_table([line])).column("reason").to_pylist() == [reason]
    assert validate_line(line) == reason


def test_no_pattern_in_the_sql_ends_at_a_dollar():
    """In Trino's patterns (Java syntax) $ matches before a final line feed too, in DuckDB's (RE2)
    only at the end: the SQL's patterns end at \\z, which is the end of the text in both."""
    for name in [q for q in shipped_queries() if q != "athena_raw_lines"]:
        for node in render(name, PARAMS).find_all(sqlglot.exp.RegexpLike):
            assert not re.search(r"(?<!\\)[$]", node.expression.name), (name, node.expression.name)


def test_a_parsed_value_that_is_no_object_is_invalid_json():
    assert [validate(doc) for doc in ([], [{"event_id": "e"}], 5, "e", None, True)] == ["invalid_json"] * 6


def test_a_line_with_a_byte_order_mark_is_set_aside_as_it_landed():
    line = '\ufeff{"event_id":"e","series":"s","event_time":"2026-11-27T02:10:00Z","value":"n/a"}'
    rejects = run_duckdb("rejects", PARAMS, lines_table([line, "\ufeff" + GOOD])).to_pylist()
    assert [(r["reason"], r["line"]) for r in rejects] == [("bad_value", line)]


json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(alphabet="abc019.:-_ /!", max_size=12),
)
#: json_values, or NaN and infinities: json.dumps writes them as bare NaN and Infinity, no JSON.
json_values_or_not_finite = st.one_of(json_values, st.sampled_from([float("nan"), float("inf"), float("-inf")]))


#: Usable ids and series, offered often: an event must pass them to reach the rules after them.
some_ids = st.one_of(st.sampled_from(["e1", "7"]), st.text(alphabet="abcdef0123456789", min_size=1, max_size=40))
some_series = st.sampled_from(["orders.count", "a/b:c-d_e"])


#: A usable event, as test_sql_and_python_rules_agree is given it.
USABLE = {"event_id": "e1", "series": "orders.count", "hour_offset": 0, "written": "{date}T{time}Z", "offset": ("+", 0, 0, "{h}:{m}"),
          "value": 1, "drop": None, "dimensions": None, "shape": "object", "other": None, "prefix": ""}


@settings(max_examples=200, deadline=None)
@given(
    # blank ids: empty or JSON whitespace only (a no-break space is not); ids that are no string
    # (integers of up to 15 digits are ids, of 16 not; 7.0 and 1e2 are no integers)
    event_id=st.one_of(some_ids, st.none(), st.text(alphabet=" \t\n\r\u00a0a", max_size=4), json_values,
                       st.integers(-10**16, 10**16), st.sampled_from([10**15 - 1, 10**15, -(10**15 - 1), -(10**15), 7.0, 1e2]),
                       st.lists(json_values, max_size=2), st.dictionaries(st.text(alphabet="ab", max_size=2), json_values, max_size=2)),
    series=st.one_of(some_series, st.none(), st.text(alphabet="ab.:/-_ !Z9\n", min_size=0, max_size=20)),
    hour_offset=st.integers(-30, 30),
    written=st.sampled_from(["{date}T{time}Z", "{date}T{time}+00:00", "{date}T{time}+0000", "{date}T{time}",
                             "{date} {time}Z", "{date}", "{date}T{time}.250-00:00"] + ["offset"] * 4),
    # an offset (with "offset" above): sign, hours, minutes, how it is written; up to 14:00 is one
    offset=st.tuples(st.sampled_from("+-"), st.sampled_from([0, 1, 5, 9, 12, 13, 14, 15, 18, 19, 23, 24, 25, 30]),
                     st.sampled_from([0, 0, 1, 30, 59, 60, 99]), st.sampled_from(["{h}:{m}", "{h}{m}", "{h}"])),
    value=json_values_or_not_finite,
    drop=st.sampled_from([None] * 4 + ["event_id", "series", "event_time", "value"]),
    dimensions=st.one_of(st.none(), json_values, st.dictionaries(st.text(alphabet="aZ_0 b\n", min_size=0, max_size=34),
                                                                  st.one_of(json_values_or_not_finite, st.text(alphabet="ab9\n", max_size=3)), max_size=7)),
    shape=st.sampled_from(["object"] * 6 + ["array", "value"]),  # the line: the event, [event], or another value
    other=json_values_or_not_finite,
    prefix=st.sampled_from(["", "", "", "\ufeff", "\ufeff", " ", "\ufeff\t", "\ufeff\ufeff"]),  # before the JSON
)
# the gaps found before (a blank id, a byte order mark, JSON that is no object, an offset beyond
# ±14:00, an id that is no string, NaN or Infinity, a series ending in a line feed), tried on every run
@example(**{**USABLE, "event_id": " \t"})
@example(**{**USABLE, "prefix": "\ufeff"})
@example(**{**USABLE, "shape": "array"})
@example(**{**USABLE, "shape": "value", "other": "e1"})
@example(**{**USABLE, "written": "offset", "offset": ("+", 25, 0, "{h}:{m}")})
@example(**{**USABLE, "written": "offset", "offset": ("+", 15, 0, "{h}:{m}")})
@example(**{**USABLE, "written": "offset", "offset": ("-", 14, 1, "{h}{m}")})
@example(**{**USABLE, "written": "offset", "offset": ("+", 5, 60, "{h}:{m}")})
@example(**{**USABLE, "event_id": 1.5})
@example(**{**USABLE, "event_id": {"a": 1}})
@example(**{**USABLE, "event_id": -42})
@example(**{**USABLE, "event_id": 10**15})
@example(**{**USABLE, "event_id": True})
@example(**{**USABLE, "value": float("nan")})
@example(**{**USABLE, "dimensions": {"region": float("-inf")}})
@example(**{**USABLE, "series": "abc\n"})
def test_sql_and_python_rules_agree(event_id, series, hour_offset, written, offset, value, drop, dimensions, shape, other, prefix):
    """The SQL decides on landed data; events.validate_line (and validate, on the parsed event)
    mirrors it for producers. They must agree on every line (time-window rules aside), however
    its time is written, whatever comes before its JSON and whether or not the JSON is an object."""
    instant = datetime(2026, 11, 27, 2, 30) + timedelta(minutes=hour_offset)
    if written == "offset":  # the same instant, at the wall time of the offset (an impossible one too)
        sign, hours, minutes, style = offset
        minutes = minutes if "{m}" in style else 0
        wall = instant + (1 if sign == "+" else -1) * timedelta(hours=hours, minutes=minutes)
        event_time = wall.strftime("%Y-%m-%dT%H:%M:%S") + sign + style.format(h=f"{hours:02d}", m=f"{minutes:02d}")
    else:
        event_time = written.format(date="2026-11-27", time=f"02:{30 + hour_offset:02d}:00")
    doc = {"event_id": event_id, "series": series, "event_time": event_time, "value": value, "dimensions": dimensions}
    if drop:
        del doc[drop]
    doc = {k: v for k, v in doc.items() if v is not None}
    line = prefix + json.dumps({"object": doc, "array": [doc], "value": other}[shape])
    sql_reason = run_duckdb("classified_events", PARAMS, lines_table([line])).column("reason").to_pylist()[0]
    assert sql_reason == validate_line(line), line
    if shape == "object" and prefix.count("\ufeff") < 2 and is_json(doc):  # NaN or Infinity: no JSON, a line only
        assert sql_reason == validate(doc), line


def is_json(doc: object) -> bool:
    """Whether RFC 8259 can write ``doc`` (no NaN, no infinity)."""
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        return False
    return True


def generated_lines(seed: int = 3) -> tuple[pd.DataFrame, list[str]]:
    """Good events over three hours, with duplicates and some malformed lines."""
    rng = np.random.default_rng(seed)
    base = 1_795_737_600  # 2026-11-27T00:00:00Z
    n = 3000
    events = pd.DataFrame(
        {
            "event_id": [f"id{i}" for i in range(n)],
            "series": rng.choice(["a", "b.c", "d:e/f"], n),
            "event_epoch": np.round(base + rng.uniform(0, 3 * 3600, n), 3),
            "value": np.round(rng.normal(10, 3, n), 4),
        }
    )
    lines = [event_line(r.event_id, r.series, r.event_epoch, r.value) for r in events.itertuples()]
    lines += lines[:100]  # duplicate copies
    lines += ["garbage", '{"event_id":"x","series":"a","event_time":"2026-11-27T01:00:00Z","value":"x"}']
    return events, lines


def test_aggregation_matches_pandas_with_duplicates_and_malformed_lines():
    events, lines = generated_lines()
    raw = lines_table(lines, hour="2026/11/27/02")
    out = run_duckdb("aggregate", PARAMS, raw).to_pandas()

    events["bucket_epoch"] = (events["event_epoch"] // 300 * 300).astype("int64")
    grouped = events.groupby(["series", "bucket_epoch"])["value"]
    expected = pd.DataFrame(
        {
            "event_count": grouped.size(),
            "value_sum": grouped.sum(),
            "value_mean": grouped.mean(),
            "value_stddev": grouped.std(ddof=1),
            "value_p95": grouped.quantile(0.95),
        }
    ).reset_index()
    merged = expected.merge(out, on=["series", "bucket_epoch"], suffixes=("", "_sql"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert (merged["event_count"] == merged["event_count_sql"]).all()
    for col in ("value_sum", "value_mean", "value_stddev", "value_p95"):
        np.testing.assert_allclose(merged[col + "_sql"], merged[col], rtol=1e-9, atol=1e-9, err_msg=col)

    counts = run_duckdb("event_counts", PARAMS, raw).to_pandas().set_index("series")
    assert counts["events"].sum() == len(events)
    assert (counts["copies"] - counts["events"]).sum() == 100
    rejects = run_duckdb("rejects", PARAMS, raw).to_pandas()
    assert sorted(rejects["reason"]) == ["bad_value", "invalid_json"]


def test_out_range_limits_the_buckets():
    events, lines = generated_lines()
    start, end = 1_795_737_600 + 3600, 1_795_737_600 + 7200
    out = run_duckdb("aggregate", classify_within({**PARAMS, "out_start_epoch": start, "out_end_epoch": end}, start, end), lines_table(lines)).to_pandas()
    assert out["bucket_epoch"].between(start, end - 300).all()
    inside = events[(events["event_epoch"] >= start) & (events["event_epoch"] < end)]
    assert out["event_count"].sum() == len(inside)


def test_athena_result_pages_become_a_typed_table():
    pages = [
        {
            "ResultSet": {
                "ResultSetMetadata": {"ColumnInfo": [{"Name": "series", "Type": "varchar"}, {"Name": "n", "Type": "bigint"}, {"Name": "v", "Type": "double"}]},
                "Rows": [
                    {"Data": [{"VarCharValue": "series"}, {"VarCharValue": "n"}, {"VarCharValue": "v"}]},
                    {"Data": [{"VarCharValue": "a"}, {"VarCharValue": "3"}, {"VarCharValue": "1.5"}]},
                ],
            }
        },
        {"ResultSet": {"ResultSetMetadata": {"ColumnInfo": []}, "Rows": [{"Data": [{"VarCharValue": "b"}, {"VarCharValue": "4"}, {}]}]}},
    ]
    table = athena_pages_to_table(pages)
    assert table.to_pylist() == [{"series": "a", "n": 3, "v": 1.5}, {"series": "b", "n": 4, "v": None}]
    assert table.schema.field("n").type == pa.int64()


def test_reject_reasons_are_the_documented_ones():
    text = sql_text("parsed_lines") + sql_text("classified_events")
    assert all(f"'{reason}'" in text for reason in REJECT_REASONS)


def test_an_hour_aggregates_to_the_same_bits_whatever_else_the_query_reads():
    """A backfill may rewrite an hour from a window holding other hours' lines too, in another
    order: its sums, means and deviations must come out bit for bit the same."""
    events, lines = generated_lines(seed=11)
    start, end = 1_795_737_600 + 3600, 1_795_737_600 + 7200
    params = classify_within({**PARAMS, "out_start_epoch": start, "out_end_epoch": end}, start, end)
    inside = [line for line, epoch in zip(lines, events["event_epoch"], strict=False) if start <= epoch < end]
    alone = run_duckdb("aggregate", params, lines_table(inside))
    rng = np.random.default_rng(0)
    others = [event_line(f"other{i}", "a", 1_795_737_600 + 7200 + i * 0.1, float(i % 97)) for i in range(60_000)]
    mixed = [(lines + others)[i] for i in rng.permutation(len(lines) + len(others))]
    with_everything = run_duckdb("aggregate", params, lines_table(mixed))
    assert alone.num_rows > 20
    assert alone.equals(with_everything)
    assert to_duckdb(render("aggregate", PARAMS)).count("FROM raw_lines") == 1  # each line parsed once
    assert "SUM(value ORDER BY value)" in to_duckdb(render("aggregate", PARAMS)).replace("\n", " ")


def test_a_window_ranks_only_its_own_event_ids_and_counts_what_ranking_everything_counts():
    """The aggregation de-duplicates only the event ids with a copy in its window (a copy that
    wins elsewhere still sets an in-window copy aside); the rejects rank every copy read."""
    hour = 1_795_741_200  # 2026-11-27 02:00 UTC, the lines' arrival hour
    start, end = hour + 300, hour + 600
    lines = [
        event_line("won-elsewhere", "s", start - 290, 1.0),  # the smallest copy: before the window, the same hour
        event_line("won-elsewhere", "s", start + 10, 1.0),  # its conflicting copy, in the window
        event_line("plain", "s", start + 20, 2.0),
        event_line("plain", "s", start + 20, 2.0),  # an exact copy
        event_line("outside", "t", start + 900, 3.0),
        event_line("outside", "t", start + 960, 3.0),  # a conflict the window never counts
        event_line("restamped", "u", hour - 600, 4.0),  # copies in two event hours: two events
        event_line("restamped", "u", start + 30, 4.0),
        "not json",
    ]
    raw = lines_table(lines)
    base = {**PARAMS, "out_start_epoch": start, "out_end_epoch": end}
    windowed = run_duckdb("aggregate", classify_within(base, start, end), raw)
    everything = run_duckdb("aggregate", classify_within(base), raw)
    assert windowed.equals(everything)
    counted = {row["series"]: row["event_count"] for row in windowed.to_pylist()}
    assert counted == {"s": 1, "u": 1}  # "plain" once, "won-elsewhere" set aside; "restamped" in its own hour
    ranked = run_duckdb("classified_events", classify_within(base, start, end), raw).to_pandas()
    assert set(ranked["event_id"].dropna()) == {"won-elsewhere", "plain", "restamped"} and ranked["reason"].eq("invalid_json").sum() == 1
    rejects = run_duckdb("rejects", classify_within(base), raw).to_pandas()
    assert sorted(rejects["reason"]) == ["conflicting_duplicate", "conflicting_duplicate", "invalid_json"]


def test_rollups_add_a_series_per_value_of_each_declared_dimension_set_and_keep_the_totals():
    """``FOREWARN_ROLLUPS=region;region,channel``: each series as before, plus
    ``<series>/region=<v>`` and ``<series>/region=<v>/channel=<w>`` for the events that carry
    those keys (an event without them is only in its series' total), equal to pandas; no other
    set is computed; without roll-ups the query is the plain one."""
    from forewarn.config import Settings
    from forewarn.query import aggregate_query

    rng = np.random.default_rng(11)
    n = 600
    events = pd.DataFrame({
        "event_id": [f"id{i}" for i in range(n)], "series": rng.choice(["pay", "orders.count"], n),
        "event_epoch": np.round(1_795_741_200 + rng.uniform(0, 3600, n), 3), "value": np.round(rng.normal(10, 3, n), 3),
        "region": rng.choice(["eu", "us", None], n, p=[0.5, 0.4, 0.1]), "channel": rng.choice(["app", "web"], n),
    })
    lines = []
    for r in events.itertuples():
        dims = {"channel": r.channel} | ({"region": r.region} if isinstance(r.region, str) else {})
        lines.append(event_line(r.event_id, r.series, r.event_epoch, r.value, dimensions=dims))
    raw = lines_table(lines + lines[:50], hour="2026/11/27/02")  # copies count once
    settings = Settings(rollups="region;region,channel")
    name, extra = aggregate_query(settings)
    assert name == "aggregate_rollups" and aggregate_query(Settings())[0] == "aggregate"
    assert len(to_duckdb(render(name, {**PARAMS, **extra})).split("GROUPING SETS")[1].split("\n)")[0].split("(series")) == 4
    got = run_duckdb(name, {**PARAMS, **extra}, raw).to_pandas()
    events["bucket"] = (events["event_epoch"] // 300 * 300).astype("int64")
    expected = [events.assign(name=events["series"])]
    with_region = events[events["region"].notna()]
    expected.append(with_region.assign(name=with_region["series"] + "/region=" + with_region["region"]))
    expected.append(with_region.assign(name=with_region["series"] + "/region=" + with_region["region"] + "/channel=" + with_region["channel"]))
    want = (pd.concat(expected).groupby(["name", "bucket"])["value"].agg(["count", "sum"]).reset_index()
            .sort_values(["name", "bucket"]).reset_index(drop=True))
    assert got["series"].tolist() == want["name"].tolist()
    assert got["bucket_epoch"].tolist() == want["bucket"].tolist()
    assert got["event_count"].tolist() == want["count"].tolist()
    assert np.allclose(got["value_sum"], want["sum"])
    assert not got["series"].str.contains("channel=").loc[~got["series"].str.contains("region=")].any()  # no channel-only set
    plain = run_duckdb("aggregate", PARAMS, raw).to_pandas()
    totals = got[~got["series"].str.contains("/")].reset_index(drop=True)
    pd.testing.assert_frame_equal(totals, plain[totals.columns])


def test_values_the_catalog_does_not_keep_count_as_other_from_the_bucket_it_says():
    """The dimension catalog caps a key's values: the top ones by volume are admitted while the
    key has room and count as themselves from their ``since`` bucket; every other value, and an
    admitted one before its bucket, counts as ``__other__``; the children still add up to the
    total; ``dimension_values`` counts the values the catalog admits by."""
    from forewarn.config import Settings
    from forewarn.dimensions import Catalog, admit
    from forewarn.query import aggregate_query, slot_params

    t0 = 1_795_741_200
    regions = ["ap"] + ["eu"] * 6 + ["us"] * 4 + ["ap", "sa"]  # ap's first in bucket t0, its second in t0+600
    lines = [event_line(f"e{i}", "pay", t0 + 60 * i + 1, 1.0, dimensions={"region": r, "channel": "app"})
             for i, r in enumerate(regions)]
    raw = lines_table(lines, hour="2026/11/27/02")
    settings = Settings(rollups="region", rollup_max_values=2)
    volumes = run_duckdb("dimension_values", {**PARAMS, **slot_params(["region"])}, raw).to_pandas()
    assert volumes.loc[volumes["dimension_key"] == "region", ["dimension_value", "events"]].values.tolist() == [
        ["eu", 6], ["us", 4], ["ap", 2], ["sa", 1]]
    catalog = Catalog()
    assert admit(catalog, list(volumes.itertuples(index=False, name=None)), ["region"], 2, t0) == [("region", "eu"), ("region", "us")]
    assert admit(catalog, [("region", "ap", 99), ("region", "__other__", 100)], ["region"], 3, t0 + 300) == [("region", "ap")]
    name, extra = aggregate_query(settings, catalog)
    got = run_duckdb(name, {**PARAMS, **extra}, raw).to_pandas().groupby("series")["event_count"].sum().to_dict()
    # ap counts as itself from bucket t0+300 on (its second event), before that as __other__
    assert got == {"pay": 13, "pay/region=eu": 6, "pay/region=us": 4, "pay/region=ap": 1, "pay/region=__other__": 2}
    capped = run_duckdb(name, {**PARAMS, **aggregate_query(settings, Catalog())[1]}, raw).to_pandas()
    assert capped.groupby("series")["event_count"].sum().to_dict() == {"pay": 13, "pay/region=__other__": 13}
    with pytest.raises(ValueError, match="no event can carry"):
        aggregate_query(settings, Catalog({"region": {"x'); DROP": 0}}))


def test_a_series_settings_roll_ups_hold_for_its_series_alone():
    """FOREWARN_ROLLUPS=region for every series; the per-series settings give ``pay*`` region x
    channel as well and ``orders.[!x]*`` none: each series gets exactly its own sets."""
    from forewarn.config import Settings
    from forewarn.dimensions import rollup_plan
    from forewarn.query import aggregate_query
    from forewarn.series_settings import parse_series_settings

    lines = [event_line(f"{s}{i}", s, 1_795_741_200 + i, 1.0, dimensions={"region": ("eu", "us")[i % 2], "channel": "app"})
             for s in ("pay", "orders.count", "api.errors") for i in range(4)]
    raw = lines_table(lines)
    rules = parse_series_settings("series:\n  - match: 'pay*'\n    rollups: region;region,channel\n"
                                  "  - match: 'orders.[!x]*'\n    rollups: none\n"
                                  "  - match: \"it's*\"\n    rollups: channel\n", "s", ["event_count"])  # a quote in a pattern
    name, extra = aggregate_query(Settings(rollups="region"), None, rollup_plan(Settings(rollups="region"), rules))
    got = set(run_duckdb(name, {**PARAMS, **extra}, raw).to_pandas()["series"])
    assert got == {"pay", "pay/region=eu", "pay/region=us", "pay/region=eu/channel=app", "pay/region=us/channel=app",
                   "orders.count", "api.errors", "api.errors/region=eu", "api.errors/region=us"}
    assert "regexp_like" in to_duckdb(render(name, {**PARAMS, **extra})).lower() or "regexp_matches" in to_duckdb(
        render(name, {**PARAMS, **extra})).lower()


@pytest.mark.parametrize("value", ["region;Region", "a,b;c;d", "region,region", "region;;x-y"])
def test_rollups_that_cannot_be_used_say_why(value):
    from forewarn.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="FOREWARN_ROLLUPS"):
        Settings(rollups=value)


#: ``parsed_lines.sql``'s SHA-256 for each ``query.PARSED_VERSION``: the kept parsed fields carry
#: the reasons it decided, so a changed rule must come with a new version, or the landing objects
#: parsed before keep the old verdicts. Add the new digest with the new version.
PARSED_LINES_DIGESTS = {7: "838f36b3b694bdfb768acc24cc9388ca1940ec9a794055e33514da3cf583a972"}


def test_a_change_to_the_parsing_rules_comes_with_a_new_version_of_the_kept_fields():
    import hashlib
    from pathlib import Path

    from forewarn import query

    digest = hashlib.sha256((Path(query.__file__).parent / "sql" / "parsed_lines.sql").read_bytes()).hexdigest()
    assert PARSED_LINES_DIGESTS.get(query.PARSED_VERSION) == digest, (
        f"parsed_lines.sql changed (sha256 {digest}): raise query.PARSED_VERSION and add the digest here")


def test_the_run_summary_counts_events_as_the_aggregates_do():
    """Copies of one id in two event hours are two events in the counts the run summary reports
    (``event_counts``) as in the aggregates; copies in one hour, one."""
    hour = 1_795_741_200  # 2026-11-27 02:00 UTC
    lines = [event_line("r", "s", hour - 600, 1.0), event_line("r", "s", hour + 30, 1.0),
             event_line("d", "s", hour + 60, 2.0), event_line("d", "s", hour + 60, 2.0)]
    raw = lines_table(lines)
    counts = run_duckdb("event_counts", PARAMS, raw).to_pylist()
    rows = run_duckdb("aggregate", PARAMS, raw).to_pandas()
    assert counts == [{"series": "s", "copies": 4, "events": 3}] and rows["event_count"].sum() == 3
