"""Per-series settings: the rules file, its errors, and how the comparison applies it."""

from __future__ import annotations

import pytest

from forewarn.series_settings import SeriesSettingsError, applied, judge_arrays, parse_series_settings

GOOD = """\
series:
  - match: "payments.*"
    direction: below
    min_abs_deviation: 5
    min_rel_deviation: 0.1
  - match: "payments.refunds"
    threshold: 0.8
    metrics: [event_count]
"""


def test_rules_apply_in_file_order_and_later_ones_win():
    rules = parse_series_settings(GOOD, "series.yaml", ["event_count", "value_mean"])
    refunds = applied(rules, "payments.refunds")
    assert (refunds.threshold, refunds.direction, refunds.min_abs_deviation, refunds.metrics, refunds.rules) == (
        0.8, "below", 5, ("event_count",), (2, 6))
    assert applied(rules, "orders.count").rules == () and applied(rules, "orders.count").threshold is None
    arrays = judge_arrays(rules, [("payments.refunds", "event_count"), ("payments.refunds", "value_mean"), ("orders.count", "event_count")], 0.62)
    assert arrays["threshold"].tolist() == [0.8, 0.8, 0.62] and arrays["direction"].tolist() == [-1, -1, 0]
    assert arrays["judged"].tolist() == [True, False, True] and arrays["min_rel"].tolist() == [0.1, 0.1, 0.0]
    assert judge_arrays([], [("a", "b")], 0.6) is None
    assert parse_series_settings("") == [] and parse_series_settings("series:\n") == []


@pytest.mark.parametrize(("text", "says"), [
    ("series: [", "line 1: not YAML"),
    ("- match: x\n", "line 1: the file is a mapping with one key, 'series'"),
    ("series: []\nrules: []\n", "line 2: unknown key 'rules'"),
    ("series:\n  match: x\n", "line 2: 'series' is a list of rules"),
    ("series:\n  - threshold: 0.7\n", "line 2: a rule needs 'match'"),
    ("series:\n  - match: x\n    treshold: 0.7\n", "line 3: unknown field 'treshold'"),
    ("series:\n  - match: x\n    threshold: 1.5\n", "line 3: 'threshold' is 1.5"),
    ("series:\n  - match: x\n\n    direction: up\n", "line 4: 'direction' is 'up'; choose one of above, below, both"),
    ("series:\n  - match: x\n    min_abs_deviation: -1\n", "line 3: 'min_abs_deviation' is -1"),
    ("series:\n  - match: x\n    metrics: [events]\n", "line 3: 'metrics' names events, not among the metrics forecast"),
    ("series:\n  - match: x\n    sinks: pagerduty\n", "line 3: 'sinks' is a list of incident sinks"),
    ("series:\n  - match: x\n    model: prophet\n", "line 3: 'model' is 'prophet'; the models are ar, ets"),
    ("series:\n  - match: x\n    sinks: [pagerduty, teams]\n", "line 3: 'sinks' names teams; the sinks are sns, incident_manager"),
    ("series:\n  - match: x\n    holidays: XX\n", "line 3: 'holidays' is 'XX', not a country code the holidays package knows"),
    ("series:\n  - match: x\n    holidays: US-ZZ\n", "line 3: 'holidays' is 'US-ZZ', but US has no subdivision 'ZZ'"),
    ("series:\n  - match: x\n    events: [black friday]\n", "line 3: 'events' is a list of dates (YYYY-MM-DD)"),
    ("series:\n  - match: x\n    tz: Mars/Olympus\n", "line 3: 'tz' is 'Mars/Olympus', not an IANA time zone"),
    ("series:\n  - match: x\n    rollups: Region\n", "line 3: 'rollups' is 'Region': 'Region' must be distinct dimension keys"),
    ("series:\n  - match: x\n    rollups: [region]\n", "line 3: 'rollups' is ['region']: is dimension sets separated by ';'"),
])
def test_an_error_names_the_line_and_the_field(text, says):
    with pytest.raises(SeriesSettingsError) as err:
        parse_series_settings(text, "s3://b/settings/series.yaml", ["event_count", "value_mean"])
    assert str(err.value).startswith("s3://b/settings/series.yaml") and says in str(err.value)


def test_a_rule_routes_its_series_and_a_route_to_a_missing_sink_never_leaves_them_unsent():
    from types import SimpleNamespace

    from forewarn.series_settings import route_problems, routed_sinks

    rules = parse_series_settings("series:\n  - match: 'orders.*'\n    sinks: [slack]\n  - match: 'orders.refunds'\n    sinks: [pagerduty]\n",
                                  metrics=["event_count"])
    assert applied(rules, "orders.count").sinks == ("slack",)
    assert applied(rules, "orders.refunds").sinks == ("pagerduty",)  # a later rule wins
    assert applied(rules, "payments.value").sinks is None  # every configured sink
    assert route_problems(rules, ["sns", "slack", "pagerduty"]) == []
    assert route_problems(rules, ["sns", "slack"]) == [
        "series settings line 4: 'sinks' names pagerduty, which FOREWARN_INCIDENT_SINKS (sns, slack) does not list"]
    sns, slack = SimpleNamespace(name="sns"), SimpleNamespace(name="slack")
    assert routed_sinks([sns, slack], ("slack",)) == [slack]
    assert routed_sinks([sns, slack], ("pagerduty",)) == [sns, slack]  # none it names exists: every sink, not none
    assert routed_sinks([sns, slack], None) == [sns, slack]


def test_a_calendar_s_days_are_local_to_the_series_time_zone():
    import pandas as pd

    from forewarn.calendars import Calendar

    rules = parse_series_settings("series:\n  - match: 'shop.*'\n    holidays: US\n    events: [2026-12-02]\n"
                                  "  - match: 'shop.eu'\n    holidays: DE-BY\n    tz: Europe/Berlin\n")
    us, eu = applied(rules, "shop.us").calendar, applied(rules, "shop.eu").calendar
    assert us == Calendar("US", (pd.Timestamp("2026-12-02").date(),), "UTC") and eu.country == "DE-BY" and eu.tz == "Europe/Berlin"
    assert not applied(rules, "other").calendar
    hours = pd.date_range("2026-12-24T20:00Z", "2026-12-26T02:00Z", freq="h")
    on = pd.Series(eu.on_holiday(hours), index=hours)
    # Christmas Day (a Bavarian holiday; the 24th is not) starts at 23:00 UTC in Berlin and ends at 23:00 UTC; the 26th is one too
    assert not on["2026-12-24T22:00Z"] and on["2026-12-24T23:00Z"] and on["2026-12-25T22:00Z"] and on["2026-12-26T02:00Z"]
    assert Calendar("US", tz="America/New_York").on_holiday(pd.DatetimeIndex(["2026-11-27T04:00Z", "2026-11-27T05:00Z"], tz="UTC")).tolist() \
        == [True, False]  # Thanksgiving (the 26th) ends at 05:00 UTC in New York


def test_a_rule_gives_its_series_their_own_roll_ups_within_three_keys_in_all():
    from forewarn.config import Settings
    from forewarn.dimensions import rollup_plan

    rules = parse_series_settings("series:\n  - match: 'pay*'\n    rollups: channel,region;region\n"
                                  "  - match: payments.refunds\n    rollups: none\n", "s", ["event_count"])
    plan = rollup_plan(Settings(rollups="region"), rules)
    assert plan.keys == ("region", "channel") and plan.sets == (("region",), ("region", "channel"))
    assert plan.sets_for("payments.value") == (("region", "channel"), ("region",))
    assert plan.sets_for("payments.refunds") == () and plan.sets_for("orders.count") == (("region",),)
    assert applied(rules, "payments.refunds").rollups == () and applied(rules, "orders").rollups is None
    many = parse_series_settings("series:\n  - match: a\n    rollups: x,y\n  - match: b\n    rollups: z\n", "s", ["event_count"])
    with pytest.raises(SeriesSettingsError, match="line 4: 'rollups' brings the dimension keys to 4"):
        rollup_plan(Settings(rollups="region"), many)
