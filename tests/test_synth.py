"""The synthetic producer: seasonality, injected anomalies and data faults behave as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forewarn.synth import (
    Anomaly,
    Quality,
    Scenario,
    SeriesSpec,
    generate_events,
    load_scenario,
    plan_landing,
    replay_csv,
)

DAY = 86400
MONDAY = 1_795_478_400  # 2026-11-23T00:00:00Z


def test_counts_follow_the_daily_season():
    spec = SeriesSpec("orders", rate=10, daily_amplitude=0.6, peak_hour=14)
    events = generate_events(Scenario([spec], seed=1), MONDAY, MONDAY + DAY)
    hours = ((events["event_epoch"] - MONDAY) // 3600).astype(int)
    per_hour = hours.value_counts().sort_index()
    assert per_hour.loc[13:15].mean() > 2.5 * per_hour.loc[[0, 1, 2, 23]].mean()


def test_anomalies_change_what_they_should():
    spec = SeriesSpec("orders", rate=20, daily_amplitude=0)
    gauge = SeriesSpec("temp", kind="gauge", period_s=30, value_mean=10, value_sd=0.1, daily_amplitude=0, weekly_amplitude=0)
    start = MONDAY + 3600
    scenario = Scenario(
        [spec, gauge],
        anomalies=[Anomaly("drop", "orders", start, 1800, 0.1), Anomaly("missing", "temp", start, 600),
                   Anomaly("level_shift", "temp", start + 1200, 600, 1.5)],
        seed=2,
    )
    events = generate_events(scenario, MONDAY, MONDAY + 2 * 3600)
    orders = events[events.series == "orders"]["event_epoch"]
    inside = ((orders >= start) & (orders < start + 1800)).sum()
    before = ((orders >= start - 1800) & (orders < start)).sum()
    assert inside < 0.2 * before
    temp = events[events.series == "temp"]
    assert not ((temp.event_epoch >= start) & (temp.event_epoch < start + 600)).any()
    shifted = temp[(temp.event_epoch >= start + 1200) & (temp.event_epoch < start + 1800)]["value"]
    assert shifted.mean() == pytest.approx(15, rel=0.02)


def test_unknown_anomaly_kind_is_refused():
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        Anomaly("wobble", "s", 0, 60)


def test_plan_has_valid_lines_duplicates_and_verdicts():
    scenario = Scenario([SeriesSpec("a", rate=30)], quality=Quality(duplicate_rate=0.1, malformed_rate=0.05, very_late_rate=0.02), seed=4)
    plan = plan_landing(scenario, MONDAY, MONDAY + 6 * 3600, lookback_hours=2)
    good = plan[plan.expected_reason.isna()]
    for line in good["line"].head(200):
        doc = json.loads(line)
        assert set(doc) == {"event_id", "series", "event_time", "value"}
    assert (plan["copy"] == 1).sum() > 0
    copies = plan[plan["copy"] == 1]
    assert set(copies["event_id"]) <= set(plan[plan["copy"] == 0]["event_id"])
    assert {"too_late", "invalid_json"} <= set(plan.expected_reason.dropna())
    assert (plan["arrival_epoch"] < MONDAY + 6 * 3600).all()


def test_the_lines_the_producer_writes_are_classified_as_it_expects():
    """Every line the demo's producer writes gets the reason it expects (none for a good event)
    from the SQL and from ``events.validate_line``, one line of every malformed kind included:
    the demo's expected reject counts are what the classifier decides."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from forewarn.aggregate import classify_within
    from forewarn.events import validate_line
    from forewarn.query import run_duckdb
    from forewarn.synth import MALFORMED_KINDS

    scenario = Scenario([SeriesSpec("a", rate=30), SeriesSpec("b.c", rate=10)], quality=Quality(duplicate_rate=0.1, malformed_rate=0.3), seed=5)
    plan = plan_landing(scenario, MONDAY, MONDAY + 600, lookback_hours=2, send_at=MONDAY + 700)  # all in one arrival hour
    assert {reason for reason, _ in MALFORMED_KINDS} <= set(plan["expected_reason"].dropna())
    lines = plan["line"].tolist()
    hour = datetime.fromtimestamp(MONDAY + 700, UTC).strftime("%Y/%m/%d/%H")
    raw = pa.table({"source_key": ["s3://b/raw/obj"] * len(lines), "arrival_hour": [hour] * len(lines), "line": lines})
    out = run_duckdb("classified_events", classify_within({"lookback_hours": 2}), raw)
    got = sorted(zip(out.column("line").to_pylist(), [r or "-" for r in out.column("reason").to_pylist()], strict=True))
    assert got == sorted(zip(lines, plan["expected_reason"].fillna("-"), strict=True))
    assert [validate_line(line) or "-" for line in lines] == plan["expected_reason"].fillna("-").tolist()


def test_live_send_arrives_all_at_once():
    plan = plan_landing(Scenario([SeriesSpec("a")], seed=1), MONDAY, MONDAY + 600, 2, send_at=MONDAY + 700)
    assert np.all(plan["arrival_epoch"] == MONDAY + 700)


def test_shipped_scenario_loads_with_anomalies_relative_to_the_live_start():
    scenario = load_scenario(live_start=MONDAY)
    assert len(scenario.series) == 6 and scenario.rollups == "region"
    regional = [a for a in scenario.anomalies if a.where]
    assert [(a.series, a.where) for a in regional] == [("sales.count", {"region": "eu"})]
    assert {a.kind for a in scenario.anomalies} == set(Anomaly.KINDS)
    assert all(a.start >= MONDAY for a in scenario.anomalies)


def test_replay_reads_a_nab_style_csv_and_shifts_it(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,2.5\n2014-04-01 00:10:00,oops\n")
    events = replay_csv(path, "nab.sample", shift_to=MONDAY)
    assert events["event_epoch"].tolist() == [MONDAY - 600, MONDAY - 300, MONDAY]
    assert events["value"].isna().sum() == 1
    with pytest.raises(ValueError, match="not valid"):
        replay_csv(path, "bad name")


def test_events_carry_their_dimensions_by_share_and_a_regional_drop_touches_its_region_only():
    import json

    spec = SeriesSpec("sales", rate=20.0, weekly_amplitude=0.0, daily_amplitude=0.0, dimensions={"region": {"eu": 0.75, "us": 0.25}})
    drop = Anomaly("drop", "sales", MONDAY + 3600, 3600, 0.0, where={"region": "eu"})
    plan = plan_landing(Scenario([spec], anomalies=[drop], seed=3), MONDAY, MONDAY + 7200, 2)
    regions = [json.loads(line)["dimensions"]["region"] for line in plan["line"]]
    first = np.array(regions)[plan["event_epoch"].to_numpy() < MONDAY + 3600]
    second = np.array(regions)[plan["event_epoch"].to_numpy() >= MONDAY + 3600]
    assert abs((first == "eu").mean() - 0.75) < 0.05 and set(second) == {"us"}  # eu silent in the second hour
    assert 0.2 * 20 * 60 < len(second) < 0.3 * 20 * 60
