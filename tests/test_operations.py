"""The comparison under real operations: skipped and failed runs, backfills over an outage,
midnight, numbers at their extremes, crashes between a sink and the registry, Firehose's
buffering, a stream that is behind. Each test is one case an operator met; each runs the
comparison as the DAG does (``compare_interval`` on the embedded stack) and counts what the
people on call were told."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError

from forewarn.aggregate import make_engine, range_windows, run_window
from forewarn.compare import compare_interval, detector_config, judge
from forewarn.config import Settings
from forewarn.detect import Memory, warm
from forewarn.synth import Anomaly, Scenario, SeriesSpec
from forewarn.train import train_all

from helpers import fresh_settings, land_and_aggregate, list_keys

pytestmark = pytest.mark.stack

DAY0 = datetime(2026, 10, 1, tzinfo=UTC)
T = DAY0 + timedelta(days=8)  # the training run's end: forecasts cover T .. T + 26 h
DROP_AT = T + timedelta(hours=2)
DROP_HOURS = 3
END = T + timedelta(hours=27)
STEP = timedelta(minutes=15)
NOW = END + timedelta(hours=1)


class Sink:
    """A sink that cannot deduplicate (as SNS), recording every call; ``fail`` names calls
    (open, update, resolve) that raise once."""

    deduplicates = False

    def __init__(self, name: str = "sns"):
        self.name = name
        self.opened, self.updated, self.resolved = [], [], []
        self.fail: set[str] = set()

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail:
            self.fail.discard(call)
            raise ClientError({"Error": {"Code": "InternalError", "Message": f"{self.name} {call} failed"}}, call)

    def open(self, incident):
        self._maybe_fail("open")
        self.opened.append(incident.episode)
        return f"{self.name}-{len(self.opened)}"

    def update(self, incident, ref):
        self._maybe_fail("update")
        self.updated.append(incident.episode)

    def resolve(self, incident, ref):
        self._maybe_fail("resolve")
        self.resolved.append(incident.episode)

    def series_opened(self) -> list[str]:
        return [e.split("|", 1)[0] for e in self.opened]


class AwsCloudWatch:
    """PutMetricData as AWS checks it: a value must be finite and within ±2^360 (moto accepts
    anything); ``throttle`` calls fail with Throttling first."""

    LIMIT = 2.0**360

    def __init__(self, throttle: int = 0):
        self.data: list[dict] = []
        self.throttle = throttle

    def put_metric_data(self, Namespace, MetricData):  # noqa: N803
        if self.throttle:
            self.throttle -= 1
            raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "PutMetricData")
        for datum in MetricData:
            value = datum["Value"]
            if not np.isfinite(value) or abs(value) > self.LIMIT:
                raise ClientError({"Error": {"Code": "InvalidParameterValue",
                                             "Message": f"The value {value} for parameter MetricData.member.Value is invalid."}},
                                  "PutMetricData")
        self.data.extend(MetricData)


def _world(clients, anomaly: Anomaly) -> Settings:
    """Eight days of two series (orders counted, a gauge) with ``anomaly`` on the orders, landed,
    aggregated and trained up to ``T``."""
    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=15)
    scenario = Scenario([SeriesSpec("orders.count", rate=6.0, weekly_amplitude=0.0),
                         SeriesSpec("temp", kind="gauge", period_s=120, value_mean=5, value_sd=0.1, weekly_amplitude=0.0)],
                        anomalies=[anomaly], seed=5)
    land_and_aggregate(clients, settings, scenario, DAY0, END, 24 * 10)
    train_all(settings, clients.s3, T)
    return settings


@pytest.fixture(scope="module")
def world(clients):
    """Eight days of two series, a 3-hour drop of orders to 30% two hours after the training
    run, trained forecasts; each test gets its own copy (``clone``)."""
    return _world(clients, Anomaly("drop", "orders.count", DROP_AT.timestamp(), DROP_HOURS * 3600, 0.3))


BURST_AT = T + timedelta(hours=2)
BURST_HOURS = 3


@pytest.fixture(scope="module")
def burst_world(clients):
    """The world's two series with, instead of the drop, orders doubled for 3 hours two hours
    after the training run (the detector flags its first bucket and damps the rest)."""
    return _world(clients, Anomaly("spike", "orders.count", BURST_AT.timestamp(), BURST_HOURS * 3600, 2.0))


def clone(clients, world: Settings) -> Settings:
    """A fresh bucket holding the world's landed events, aggregates and forecasts (no state, no
    incidents), with its own Glue tables."""
    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=15)
    for prefix in (world.raw_prefix, world.aggregates_prefix, world.forecasts_prefix):
        for key in list_keys(clients.s3, world.bucket, prefix):
            clients.s3.copy_object(Bucket=settings.bucket, Key=key, CopySource={"Bucket": world.bucket, "Key": key})
    return settings


def run(settings, clients, sinks, start, end, *, skip=(), live=True, cloudwatch=None, s3=None):
    """compare_interval over [start, end) in STEP intervals as the scheduler runs them; intervals
    in ``skip`` do not run. Returns the summaries."""
    engine = make_engine(settings, clients)
    out = []
    t = start
    while t < end:
        if t not in skip:
            out.append(compare_interval(settings, engine, s3 or clients.s3, cloudwatch or AwsCloudWatch(), sinks, t, t + STEP, NOW,
                                        open_incidents=live))
        t += STEP
    return out


# --------------------------------------------------------------------------------------------
# 1. A compare interval that fails past its retries, or is skipped
# --------------------------------------------------------------------------------------------


def test_replayed_intervals_get_evidence_objects_as_long_as_the_run_s_own_interval(clients, world):
    from forewarn.compare import read_evidence
    from forewarn.layout import EVIDENCE_PREFIX

    settings = clone(clients, world).replace(compare_minutes=30)  # the settings say 30, the runs are 15 minutes long
    run(settings, clients, [Sink()], T, T + 4 * STEP, skip={T + STEP, T + 2 * STEP})
    objects = {key.rsplit("/", 1)[1]: read_evidence(clients.s3, settings.bucket, key)
               for key in list_keys(clients.s3, settings.bucket, EVIDENCE_PREFIX)}
    assert sorted(objects) == ["0000.parquet", "0015.parquet", "0030.parquet", "0045.parquet"]
    for name, evidence in objects.items():
        assert {f"{b:%H%M}" for b in evidence["bucket_start"]} == {name[:4]}


def test_skipped_and_failed_intervals_carry_the_episode_one_incident_resolved_once(clients, world):
    settings = clone(clients, world)
    sink = Sink()
    first = run(settings, clients, [sink], T, DROP_AT + timedelta(minutes=45))
    assert sink.series_opened() == ["orders.count"]
    # the scheduler was down for two intervals; the next one fails past its retries (CloudWatch
    # throttled every attempt) having written nothing of its state
    gap = [DROP_AT + timedelta(minutes=45), DROP_AT + timedelta(minutes=60)]
    failing = DROP_AT + timedelta(minutes=75)
    with pytest.raises(ClientError):
        run(settings, clients, [sink], failing, failing + STEP, cloudwatch=AwsCloudWatch(throttle=10**6))
    after = run(settings, clients, [sink], failing + STEP, DROP_AT + timedelta(hours=DROP_HOURS + 3))
    assert after[0]["state_from"] == (DROP_AT + timedelta(minutes=45)).isoformat()
    assert after[0]["replayed_buckets"] == len(gap) + 1 and not after[0]["bridged"]
    assert not after[0]["state_warmed_from_backtests"]
    assert sink.series_opened() == ["orders.count"], "the outage was reported twice"
    assert sink.resolved == sink.opened, "the one incident was not resolved once"
    assert first[0]["state_warmed_from_backtests"]


def test_a_gap_longer_than_the_replay_is_bridged_without_forgetting_the_episode(clients, world):
    settings = clone(clients, world)
    sink = Sink()
    run(settings, clients, [sink], T, DROP_AT + timedelta(minutes=45))
    resume = DROP_AT + timedelta(hours=DROP_HOURS + 1)  # 4 h 15 min later: more than compare_replay_hours
    after = run(settings, clients, [sink], resume, resume + timedelta(hours=3))
    assert after[0]["bridged"] and after[0]["replayed_buckets"] == 0
    assert sink.series_opened() == ["orders.count"] and sink.resolved == sink.opened


# --------------------------------------------------------------------------------------------
# 2. A backfill over the stretch where an outage began, or ended
# --------------------------------------------------------------------------------------------


def test_a_backfill_over_an_outage_start_does_not_silence_the_live_runs(clients, world):
    settings = clone(clients, world)
    sink = Sink()
    down = DROP_AT - timedelta(minutes=15)
    back = DROP_AT + timedelta(minutes=60)
    run(settings, clients, [sink], T, down)  # live, until the scheduler stopped
    run(settings, clients, [sink], down, back, live=False)  # the stretch backfilled: nobody is paged
    assert sink.opened == []
    run(settings, clients, [sink], back, DROP_AT + timedelta(hours=DROP_HOURS + 3))  # live again
    assert sink.series_opened() == ["orders.count"], "the live runs never reported the outage"
    assert sink.resolved == sink.opened


def test_a_backfill_that_resolves_an_episode_leaves_the_live_incident_to_the_live_runs(clients, world):
    settings = clone(clients, world)
    sink = Sink()
    down = DROP_AT + timedelta(minutes=45)
    back = DROP_AT + timedelta(hours=DROP_HOURS + 2)
    run(settings, clients, [sink], T, down)
    assert sink.series_opened() == ["orders.count"]
    run(settings, clients, [sink], down, back, live=False)  # the backfill sees the outage end
    assert sink.resolved == []
    run(settings, clients, [sink], back, back + timedelta(hours=2))
    assert sink.resolved == sink.opened, "the real incident was never resolved"


def _spans(clients, settings) -> list[dict]:
    return [json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read())
            for k in list_keys(clients.s3, settings.bucket, "episodes/")]


@pytest.mark.parametrize("live", [True, False], ids=["cleared-task", "backfill"])
def test_rerunning_the_interval_that_opened_an_episode_keeps_its_whole_span_out_of_training(clients, world, live):
    settings = clone(clients, world)
    sink = Sink()
    run(settings, clients, [sink], T, DROP_AT + timedelta(hours=DROP_HOURS + 3))
    (whole,) = _spans(clients, settings)
    assert whole["ended"] and whole["last_anomalous"] > (DROP_AT + timedelta(hours=1)).isoformat()
    calls = len(sink.opened), len(sink.updated), len(sink.resolved)
    run(settings, clients, [sink], DROP_AT, DROP_AT + STEP, live=live)  # one interval cleared, or backfilled
    (after,) = _spans(clients, settings)
    assert (after["last_anomalous"], after["ended"], after["chain"]) == (whole["last_anomalous"], whole["ended"], "live")
    assert set(whole["metrics"]) <= set(after["metrics"])
    assert (len(sink.opened), len(sink.updated), len(sink.resolved)) == calls, "a rerun notified someone again"


def test_a_span_record_merges_with_the_stored_one_and_never_shrinks():
    from forewarn.compare import merge_span

    known = {"episode": "a|2026-10-09T02:00:00+00:00", "started": "2026-10-09T02:00:00+00:00", "chain": "live",
             "last_anomalous": "2026-10-09T05:00:00+00:00", "ended": "2026-10-09T06:30:00+00:00", "metrics": ["event_count", "value_mean"]}
    early = {**known, "last_anomalous": "2026-10-09T02:00:00+00:00", "ended": None, "metrics": ["event_count"], "chain": "backfill"}
    assert merge_span(known, early) == known
    later = {**known, "last_anomalous": "2026-10-09T07:00:00+00:00", "ended": "2026-10-09T08:00:00+00:00", "metrics": ["p95"]}
    merged = merge_span(known, later)
    assert (merged["last_anomalous"], merged["ended"]) == (later["last_anomalous"], later["ended"])
    assert merged["metrics"] == ["event_count", "p95", "value_mean"]
    assert merge_span(None, early) == early
    assert merge_span({**known, "episode": "other"}, early) == early


@pytest.mark.parametrize("rule", ["direction: above\n    metrics: [event_count]", "threshold: 0.999999"])
def test_what_a_per_series_rule_keeps_from_alerting_is_still_kept_out_of_training(clients, world, rule):
    """A rule says what to be told of, not what is normal: the drop on a series watched only for
    rises (or at a threshold it never reaches) opens no incident, but its anomalous buckets are
    recorded as spans training keeps out, once however often the interval reruns (learnt, a
    burst on a series watched for drops made the next run's bands 27 times wider and hid a drop)."""
    from forewarn.train import episode_spans

    settings = clone(clients, world)
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=f"series:\n  - match: orders.count\n    {rule}\n".encode())
    sink = Sink()
    run(settings, clients, [sink], DROP_AT - STEP, DROP_AT + timedelta(hours=DROP_HOURS))
    assert "orders.count" not in sink.series_opened(), sink.opened
    records = _spans(clients, settings)
    assert records and all(r["ruled_out"] and r["series"] == "orders.count" for r in records), records
    if "metrics:" in rule:  # a metric the rules do not judge is nobody's alert: not recorded
        assert all(r["metrics"] == ["event_count"] for r in records), records
    assert min(r["started"] for r in records) < (DROP_AT + timedelta(hours=1)).isoformat()
    run(settings, clients, [sink], DROP_AT, DROP_AT + 2 * STEP)  # a rerun rewrites the same records
    assert sorted(map(json.dumps, _spans(clients, settings))) == sorted(map(json.dumps, records))
    kept = episode_spans(settings, clients.s3, T, T + timedelta(days=1))
    assert {k["series"] for k in kept} == {"orders.count"} and all(k["first"] >= DROP_AT.isoformat() for k in kept)


WATCHED_FOR_DROPS = b"series:\n  - match: orders.count\n    direction: below\n"


def test_a_sustained_burst_a_rule_keeps_from_alerting_is_kept_out_to_its_calm_buckets_in_one_record(clients, burst_world):
    """Orders doubled for three hours on a series watched only for drops: the detector flags the
    first bucket and damps the rest, yet the whole burst is kept out of the next training, as an
    episode's would be: one record, carried from interval to interval in the comparison's state,
    open while the burst goes on, ended by the calm buckets at its last bucket outside the band.
    (With only the flagged bucket kept out, the next day's forecast for those hours learnt the
    burst: 30% above the usual level, its 95% band 2.1 times as wide.)"""
    from forewarn.compare import load_forecasts
    from forewarn.train import episode_spans

    settings = clone(clients, burst_world)
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key, Body=WATCHED_FOR_DROPS)
    sink = Sink()
    burst = pd.date_range(BURST_AT, BURST_AT + timedelta(hours=BURST_HOURS), freq=STEP, inclusive="left")
    run(settings, clients, [sink], BURST_AT - STEP, BURST_AT + timedelta(hours=2))  # two hours into the burst
    (record,) = _spans(clients, settings)
    assert record["ruled_out"] and record["started"] == BURST_AT.isoformat() and record["ended"] is None, record
    (kept,) = episode_spans(settings, clients.s3, T, T + timedelta(days=1))
    assert kept["first"] == BURST_AT.isoformat() and kept["last"] >= burst[7].isoformat(), kept  # open: to all it has seen

    run(settings, clients, [sink], BURST_AT + timedelta(hours=2), BURST_AT + timedelta(hours=BURST_HOURS + 2))
    assert sink.opened == [], "the rule wants drops only"
    (record,) = _spans(clients, settings)  # still one record, the same one
    assert record["episode"].endswith(BURST_AT.isoformat()) and record["ended"], record
    (kept,) = episode_spans(settings, clients.s3, T, T + timedelta(days=1))
    assert (kept["series"], kept["metrics"]) == ("orders.count", ["event_count"])
    assert (kept["first"], kept["last"]) == (burst[0].isoformat(), burst[-1].isoformat()), kept

    manifest = train_all(settings, clients.s3, T + timedelta(days=1))  # the next day's run
    assert manifest["masked_buckets"] == len(burst)
    usual, _, _ = load_forecasts(settings, clients.s3, burst)  # the day before's run, for the burst's hours
    learnt, _, _ = load_forecasts(settings, clients.s3, burst + pd.Timedelta(days=1))
    orders = [f[(f["series"] == "orders.count") & (f["metric"] == "event_count")] for f in (usual, learnt)]
    level = [f["mean"].mean() for f in orders]
    width = [(f["upper_95"] - f["lower_95"]).mean() for f in orders]
    assert abs(level[1] / level[0] - 1) < 0.1, f"the next day's forecast for the burst's hours: {level[1]:.1f} against {level[0]:.1f}"
    assert abs(width[1] / width[0] - 1) < 0.1, f"the next day's 95% band for the burst's hours: {width[1]:.1f} against {width[0]:.1f}"


@pytest.mark.parametrize("live", [True, False], ids=["cleared-task", "backfill"])
def test_rerunning_an_interval_of_a_ruled_out_run_rewrites_its_one_record(clients, burst_world, live):
    """Airflow clears an interval of the burst (or a backfill runs over it): its one record is
    rewritten as it was, never shrunk to what that interval saw, and the state it leaves is the same."""
    from forewarn.layout import state_key

    settings = clone(clients, burst_world)
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key, Body=WATCHED_FOR_DROPS)
    sink = Sink()
    run(settings, clients, [sink], BURST_AT - STEP, BURST_AT + timedelta(hours=BURST_HOURS + 2))
    (whole,) = _spans(clients, settings)
    assert whole["ended"] and whole["last_anomalous"] == (BURST_AT + timedelta(hours=BURST_HOURS) - STEP).isoformat(), whole
    # the interval that opened it, one in the middle, one of its calm buckets
    for at in (BURST_AT, BURST_AT + timedelta(hours=1), BURST_AT + timedelta(hours=BURST_HOURS, minutes=30)):
        if not live:  # a backfill's first run writes its own chain's state; the rerun compares with it
            run(settings, clients, [sink], at, at + STEP, live=False)
        key = state_key(settings, at + STEP, "live" if live else "backfill")
        before = clients.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        run(settings, clients, [sink], at, at + STEP, live=live)
        assert _spans(clients, settings) == [whole], at
        assert clients.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read() == before, at
    assert sink.opened == []


def test_a_change_of_grain_is_blind_until_trained_at_it_then_judged_afresh_without_false_incidents(clients, world, caplog):
    settings = clone(clients, world)
    sink = Sink()
    run(settings, clients, [sink], T, T + 2 * STEP)
    coarser = settings.replace(grain_seconds=1800, compare_minutes=30)
    engine = make_engine(coarser, clients)

    def compare(at: datetime) -> dict:
        return compare_interval(coarser, engine, clients.s3, AwsCloudWatch(), [sink], at, at + 2 * STEP, NOW)

    with caplog.at_level("WARNING", logger="forewarn.compare"):
        first = compare(T + 2 * STEP)  # the forecasts are at the old grain: not these buckets
    assert "grain_seconds" in caplog.text and "start afresh" in caplog.text
    assert first["scored"] == 0 and sink.series_opened() == ["forewarn"], sink.opened
    train_all(coarser, clients.s3, T)  # the day's run again, at the new grain
    later = [compare(T + k * 2 * STEP) for k in (2, 3)]
    assert all(summary["scored"] == 4 for summary in later), [summary["scored"] for summary in later]
    assert sink.series_opened() == ["forewarn"], f"false incidents after the change: {sink.opened}"
    assert sink.resolved == sink.opened, "the blind incident stayed open once judged again"


# --------------------------------------------------------------------------------------------
# 3. Midnight until the day's training run, and a day with no training run
# --------------------------------------------------------------------------------------------


def test_events_with_no_forecast_at_all_are_blind_and_a_new_series_is_counted(clients, world):
    settings = clone(clients, world)
    at = T + timedelta(minutes=20)
    line = json.dumps({"event_id": "signup-1", "series": "signup.count", "event_time": at.isoformat().replace("+00:00", "Z"), "value": 1})
    clients.s3.put_object(Bucket=settings.bucket, Key=f"{settings.raw_prefix}{at:%Y/%m/%d/%H}/new-series", Body=(line + "\n").encode())
    sink = Sink()
    (summary,) = run(settings, clients, [sink], T + STEP, T + 2 * STEP)  # a new series beside forecast ones
    assert summary["health"]["unforecast_series"] == 1 and summary["health"]["blind_series"] == 0
    assert summary["health"]["judged_ratio"] == 1.0 and sink.opened == [], "a new series is not a blind spot"

    settings = clone(clients, world)
    beyond = T + timedelta(hours=26, minutes=15)  # past the run's horizon, no later run, no state: data flows, nothing judged
    (summary,) = run(settings, clients, [sink], beyond, beyond + STEP)
    health = summary["health"]
    assert summary["scored"] == 0 and health["unforecast_series"] == 2
    assert health["blind_series"] > 0 and health["judged_ratio"] == 0.0, health
    assert sink.series_opened() == ["forewarn"], "data flows, nothing is judged, and nobody was told"

    settings = clone(clients, world)
    for key in list_keys(clients.s3, settings.bucket, settings.forecasts_prefix):  # a fresh deployment: never trained
        clients.s3.delete_object(Bucket=settings.bucket, Key=key)
    fresh = Sink()
    (summary,) = run(settings, clients, [fresh], DROP_AT, DROP_AT + STEP)
    assert summary["health"]["judged_ratio"] == 0.0 and summary["health"]["unforecast_series"] == 2
    assert fresh.opened == [], "an incident before the first training run could ever have judged anything"


def test_a_run_trained_with_a_longer_horizon_is_used_as_far_as_it_reaches(clients, world):
    settings = clone(clients, world)
    train_all(settings.replace(horizon_hours=48), clients.s3, T)  # forewarn_train run with its horizon_hours param
    at = T + timedelta(hours=26)  # beyond the configured 26 hours, and the next day's run is missing
    sink = Sink()
    (summary,) = run(settings, clients, [sink], at, at + STEP)
    assert summary["scored"] > 0 and summary["health"]["blind_series"] == 0
    assert sink.opened == [], "forewarn said it was blind with a forecast in hand"


def test_an_older_run_with_a_longer_horizon_covers_what_the_newer_one_does_not_reach(clients, world):
    settings = clone(clients, world)
    train_all(settings.replace(horizon_hours=52), clients.s3, T - timedelta(days=1))  # reaches T + 28 h
    start = T + timedelta(hours=26) - STEP  # T's run (26 h) covers the first bucket only; the next day's run is missing
    summary = compare_interval(settings, make_engine(settings, clients), clients.s3, AwsCloudWatch(), [Sink()], start, start + 2 * STEP,
                               NOW)
    assert summary["health"]["blind_series"] == 0 and summary["health"]["judged_ratio"] == 1.0, summary["health"]
    assert summary["forecast_runs"] == [(T - timedelta(days=1)).isoformat(), T.isoformat()]


def test_after_midnight_the_previous_run_judges_and_without_any_forewarn_says_it_is_blind(clients, world):
    settings = clone(clients, world)
    sink = Sink()
    midnight = T + timedelta(days=1)
    night = run(settings, clients, [sink], midnight - timedelta(minutes=30), midnight + timedelta(minutes=45))
    for summary in night:
        assert summary["scored"] == 2 * 2, summary  # two series x two metrics, one bucket each
        assert summary["health"]["judged_ratio"] == 1.0
    # the day's training never ran: past the previous run's 26 hours nothing covers the buckets
    beyond = T + timedelta(hours=26)
    cloudwatch = AwsCloudWatch()
    blind = run(settings, clients, [sink], midnight + timedelta(minutes=45), beyond + timedelta(minutes=30), cloudwatch=cloudwatch)[-2:]
    assert all(s["scored"] == 0 and s["health"]["judged_ratio"] == 0.0 and s["health"]["blind_series"] == 4 for s in blind), [(s["scored"], s["health"], s["forecast_runs"]) for s in blind]
    # (what the series themselves raise is the detector's business, not this test's)
    assert [s for s in sink.series_opened() if s == "forewarn"] == ["forewarn"], "one notification of forewarn's own blindness"
    ratio = [d["Value"] for d in cloudwatch.data if d["MetricName"] == "BucketsJudgedRatio"]
    assert ratio[-2:] == [0.0, 0.0] and set(ratio[:-2]) == {1.0}
    train_all(settings, clients.s3, midnight)  # training catches up
    seen = run(settings, clients, [sink], beyond + timedelta(minutes=30), beyond + timedelta(minutes=45))
    blind_episode = next(e for e in sink.opened if e.startswith("forewarn|"))
    assert seen[0]["scored"] == 4 and blind_episode in sink.resolved


def test_a_manual_run_judges_the_last_whole_interval_and_an_outage_stays_one_incident(clients, world):
    """Airflow gives a manual run the interval that ends when it was triggered (01:07:23 - 15
    min .. 01:07:23): it judges the last whole interval before it, so no bucket is judged before
    it ends, and the scheduled runs after it carry on on the grid, even past one that failed."""
    from forewarn.tasks import aligned_interval

    settings = clone(clients, world)
    sink = Sink()
    run(settings, clients, [sink], T, DROP_AT + 4 * STEP)
    assert sink.series_opened() == ["orders.count"]
    pressed = DROP_AT + timedelta(hours=1, minutes=7, seconds=23)
    start, end = aligned_interval(settings, pressed - STEP, pressed)
    assert (start, end) == (DROP_AT + 3 * STEP, DROP_AT + 4 * STEP)  # a rerun of the last whole one
    manual = compare_interval(settings, make_engine(settings, clients), clients.s3, AwsCloudWatch(), [sink], start, end, NOW)
    assert manual["scored"] == 4
    after = run(settings, clients, [sink], DROP_AT + 5 * STEP, DROP_AT + timedelta(hours=DROP_HOURS + 3))  # +4 STEP failed
    assert after[0]["state_from"] == end.isoformat() and after[0]["replayed_buckets"] == 1
    assert all(s["scored"] > 0 and s["health"]["blind_series"] == 0 for s in after)
    assert sink.series_opened() == ["orders.count"], "the outage was reported twice"
    assert sink.resolved == sink.opened


def test_an_interval_off_the_bucket_grid_is_refused_with_what_to_do(clients, world):
    settings = clone(clients, world)
    pressed = T + timedelta(hours=1, minutes=7, seconds=23)
    with pytest.raises(ValueError, match="not on the 900-second bucket grid.*aligns a manual run"):
        compare_interval(settings, make_engine(settings, clients), clients.s3, AwsCloudWatch(), [Sink()], pressed - STEP, pressed, NOW)
    assert list_keys(clients.s3, settings.bucket, settings.state_prefix) == []  # refused before anything was written


def test_a_state_left_off_the_grid_is_judged_from_its_bucket(clients, world, caplog):
    """A state an earlier version wrote at a manual run's odd moment (01:37): the next run judges
    from that moment's bucket on the grid, not from buckets off it that no forecast covers."""
    from forewarn.state import read_state, write_state

    settings = clone(clients, world)
    run(settings, clients, [Sink()], T, T + 2 * STEP)
    state = read_state(settings, clients.s3, T + 2 * STEP, "live", detector_config(settings))
    odd = T + 2 * STEP + timedelta(minutes=7)
    write_state(settings, clients.s3, odd, state)
    for key in list_keys(clients.s3, settings.bucket, settings.state_prefix):
        if f"{(T + 2 * STEP):%H%M}" in key.rsplit("/", 1)[-1]:
            clients.s3.delete_object(Bucket=settings.bucket, Key=key)
    with caplog.at_level("WARNING", logger="forewarn.compare"):
        (after,) = run(settings, clients, [Sink()], T + 3 * STEP, T + 4 * STEP)
    assert after["state_from"] == odd.isoformat() and after["replayed_buckets"] == 1
    assert after["scored"] == 2 * 2 * 2 and after["health"]["judged_ratio"] == 1.0  # two buckets of four series-metrics
    assert "not on the 900-second bucket grid" in caplog.text


# --------------------------------------------------------------------------------------------
# 4-5. Numbers: a long partial drop of counts, sums judged as sums
# --------------------------------------------------------------------------------------------


def _history(rng, n: int, mean: float, counts: bool) -> Memory:
    actual = rng.poisson(mean, n).astype(float) if counts else rng.normal(mean, mean * 0.2, n)
    sd = np.sqrt(mean) if counts else mean * 0.2
    return warm(actual, np.full(n, mean), np.full(n, mean - 1.96 * sd), np.full(n, mean + 1.96 * sd),
                detector_config(Settings(grain_seconds=300)), counts=counts)


def test_a_long_partial_drop_of_counts_stays_finite_and_flagged_throughout():
    settings = Settings(grain_seconds=300)
    cfg = detector_config(settings)
    rng = np.random.default_rng(1)
    mean = 400.0
    state = _history(rng, 2000, mean, counts=True)
    buckets = pd.date_range("2026-11-02", periods=24, freq="5min", tz="UTC")
    actual = rng.poisson(mean * 0.4, 24).astype(float)  # two hours at 40%
    sd = np.sqrt(mean)
    rows = judge("orders", "event_count", buckets, actual, np.full(24, mean), np.full(24, mean - 1.96 * sd),
                 np.full(24, mean + 1.96 * sd), state, cfg)
    likelihood = np.array([r["likelihood"] for r in rows])
    assert np.isfinite(likelihood).all() and np.isfinite([r["deviation"] for r in rows]).all()
    flagged = [r["anomalous"] for r in rows]
    assert flagged[3:] == [-1] * 21, f"the deepest buckets of the drop went unflagged: {flagged}"


def test_sums_are_not_judged_as_counts_and_negative_sums_score():
    """value_sum of a few events a bucket: empty buckets are zeros but no Poisson count; three
    clean days raise no alarm, and a negative sum is a number like any other."""
    settings = Settings(grain_seconds=300)
    cfg = detector_config(settings)
    rng = np.random.default_rng(2)
    per_bucket, value, sd_value = 1.5, 40.0, 15.0
    n = 288 * 7

    def sums(k: int) -> np.ndarray:
        events = rng.poisson(per_bucket, k)
        out = np.array([rng.normal(value, sd_value, e).sum() if e else np.nan for e in events])
        return out  # NaN where no event landed, as the aggregates have it

    mean = per_bucket * value
    sd = np.sqrt(per_bucket * (value**2 + sd_value**2))
    lower, upper = mean - 1.96 * sd, mean + 1.96 * sd
    history = np.nan_to_num(sums(n), nan=0.0)
    state = warm(history, np.full(n, mean), np.full(n, lower), np.full(n, upper), cfg, counts=False)
    k = 288 * 3
    buckets = pd.date_range("2026-11-08", periods=k, freq="5min", tz="UTC")
    rows = judge("payments", "value_sum", buckets, sums(k), np.full(k, mean), np.full(k, lower), np.full(k, upper), state, cfg)
    false_alarms = sum(r["anomalous"] != 0 for r in rows)
    assert false_alarms == 0, f"{false_alarms} anomalous buckets in three clean days of a sum"
    refund = judge("payments", "value_sum", buckets[:1] + pd.Timedelta(days=3), np.array([-35.0]), np.array([mean]),
                   np.array([lower]), np.array([upper]), state, cfg)
    assert np.isfinite(refund[0]["likelihood"]) and np.isfinite(refund[0]["deviation"])


# --------------------------------------------------------------------------------------------
# 6. One event with a finite but huge value
# --------------------------------------------------------------------------------------------


def test_huge_values_never_reach_cloudwatch_and_are_set_aside_with_a_reason(clients, world):
    settings = clone(clients, world)
    at = T + timedelta(minutes=20)
    lines = [json.dumps({"event_id": f"huge-{i}", "series": "orders.count", "event_time": at.isoformat().replace("+00:00", "Z"),
                         "value": v}) for i, v in enumerate([1e200, 1e308, 1e308])]
    key = f"{settings.raw_prefix}{at:%Y/%m/%d/%H}/huge-values"
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
    sink = Sink()
    cloudwatch = AwsCloudWatch()
    summaries = run(settings, clients, [sink], T, T + timedelta(minutes=45), cloudwatch=cloudwatch)
    assert all(s["metrics"]["sent"] > 0 for s in summaries)
    assert all(np.isfinite(d["Value"]) and abs(d["Value"]) <= AwsCloudWatch.LIMIT for d in cloudwatch.data)
    engine = make_engine(settings, clients)
    [window] = range_windows(T, T + timedelta(hours=1), settings.lookback_hours, 1)
    summary = run_window(settings, engine, clients.s3, window)
    assert summary["rejected_by_reason"].get("value_out_of_range") == 3, summary["rejected_by_reason"]


# --------------------------------------------------------------------------------------------
# 7. A crash between a sink call and the registry write; a partial resolve
# --------------------------------------------------------------------------------------------


class CrashingS3:
    """The real S3 client, except that the first registry write after ``sink`` has answered a
    call never happens: the worker died between the sink's answer and the record."""

    def __init__(self, s3, sink: Sink):
        self._s3, self.sink = s3, sink
        self.crashed = 0

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith("incidents/") and self.sink.opened and not self.crashed:
            self.crashed += 1
            raise SystemExit("worker killed")
        return self._s3.put_object(**kwargs)


def test_a_crash_after_the_sink_answered_publishes_no_second_notification(clients, world):
    settings = clone(clients, world)
    sink = Sink()
    s3 = CrashingS3(clients.s3, sink)
    t = T
    while not sink.opened:  # up to the interval whose run opens the incident, and dies there
        try:
            run(settings, clients, [sink], t, t + STEP, s3=s3)
        except SystemExit:
            break
        t += STEP
    assert s3.crashed == 1 and sink.series_opened() == ["orders.count"]
    run(settings, clients, [sink], t, t + STEP)  # Airflow's retry of that interval
    run(settings, clients, [sink], t + STEP, t + timedelta(minutes=60))
    assert sink.series_opened() == ["orders.count"], "incident.opened was published twice"


def test_a_resolve_that_failed_in_one_sink_is_retried_there_only(clients, world):
    from forewarn.registry import SinkFailed

    settings = clone(clients, world)
    sns, ops = Sink("sns"), Sink("opscenter")
    run(settings, clients, [sns, ops], T, DROP_AT + timedelta(hours=DROP_HOURS))
    assert sns.series_opened() == ops.series_opened() == ["orders.count"]
    ops.fail.add("resolve")
    t = DROP_AT + timedelta(hours=DROP_HOURS)
    failed_at = None
    while not sns.resolved and t < END:
        try:
            run(settings, clients, [sns, ops], t, t + STEP)
        except SinkFailed:
            failed_at = t
            break
        t += STEP
    assert failed_at is not None and sns.resolved == sns.opened and ops.resolved == []
    run(settings, clients, [sns, ops], failed_at, failed_at + STEP)  # Airflow's retry
    assert sns.resolved == sns.opened, "the sink that had resolved was called again"
    assert ops.resolved == ops.opened



def test_a_resolve_that_failed_and_was_not_retried_is_finished_by_the_next_run(clients, world):
    """The run that found the episode over failed in a sink and was not retried (past its
    retries): its state no longer holds the episode. The next run finishes the resolve, as of
    when the episode ended; it does not take the episode up again (chaos_compare found one
    adopted and left open)."""
    from forewarn.registry import SinkFailed, open_tokens, read_record

    settings = clone(clients, world)
    sns, ops = Sink("sns"), Sink("opscenter")
    run(settings, clients, [sns, ops], T, DROP_AT + timedelta(hours=DROP_HOURS))
    ops.fail.add("resolve")
    t = DROP_AT + timedelta(hours=DROP_HOURS)
    while t < END:
        try:
            run(settings, clients, [sns, ops], t, t + STEP)
        except SinkFailed:
            break
        t += STEP
    assert sns.resolved == sns.opened and ops.resolved == []
    token = next(iter(open_tokens(settings, clients.s3)))
    ended = read_record(settings, clients.s3, token)["resolving"]["ended"]
    summary = run(settings, clients, [sns, ops], t + STEP, t + 2 * STEP)[0]  # the next interval, not a retry
    assert summary["reconciled"]["resolved_late"] == 1 and summary["reconciled"]["adopted"] == 0
    assert ops.resolved == ops.opened and sns.resolved == sns.opened, "a sink was told twice, or never"
    record = read_record(settings, clients.s3, token)
    assert record["status"] == "resolved" and record["ended"] == ended and open_tokens(settings, clients.s3) == {}

# --------------------------------------------------------------------------------------------
# 8-9. Timing that matches the infrastructure
# --------------------------------------------------------------------------------------------


def test_the_default_wait_covers_the_firehose_buffer_the_template_configures():
    import yaml

    from conftest import ROOT

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((ROOT / "infra" / "forewarn.yaml").read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader
    buffer = template["Parameters"]["FirehoseBufferSeconds"]["Default"]
    for seconds in (int(buffer), 300):
        settings = Settings(firehose_buffer_seconds=seconds)
        assert settings.compare_wait_minutes * 60 >= seconds + 60, seconds
    assert Settings().firehose_buffer_seconds == int(buffer)
    assert Settings(compare_delay_minutes=0).compare_wait_minutes == 0  # an explicit setting wins


class LaggingKinesis:
    """A one-shard stream whose first pages are empty although records remain, as AWS returns
    them (MillisBehindLatest > 0)."""

    class exceptions:  # noqa: N801
        class ExpiredIteratorException(Exception):
            pass

    def __init__(self, records: list[dict], empty_pages: int):
        self.pages = [[]] * empty_pages + [records[i:i + 2] for i in range(0, len(records), 2)]

    def list_shards(self, StreamName):  # noqa: N803
        return {"Shards": [{"ShardId": "shardId-000"}]}

    def get_shard_iterator(self, **kwargs):
        return {"ShardIterator": "0"}

    def get_records(self, ShardIterator, Limit):  # noqa: N803
        i = int(ShardIterator)
        page = self.pages[i] if i < len(self.pages) else []
        behind = 0 if i >= len(self.pages) - 1 else 60_000
        return {"Records": page, "NextShardIterator": str(i + 1), "MillisBehindLatest": behind}


def test_the_kinesis_reader_reads_past_empty_pages_until_it_has_caught_up():
    from forewarn.actuals import KinesisReader

    start = datetime(2026, 11, 2, tzinfo=UTC)
    records = [{"SequenceNumber": f"{i:05d}", "Data": b"{}", "ApproximateArrivalTimestamp": start + timedelta(seconds=i)}
               for i in range(6)]
    got, positions = KinesisReader(LaggingKinesis(records, empty_pages=4), "s").read({}, start, start + timedelta(minutes=5))
    assert [r["sequence"] for r in got] == [r["SequenceNumber"] for r in records]
    assert positions == {"shardId-000": "00005"}


# --------------------------------------------------------------------------------------------
# 10. Re-aggregating a window whose raw data has expired
# --------------------------------------------------------------------------------------------


def test_a_window_whose_raw_data_expired_refuses_to_empty_its_aggregates(clients, world):
    from forewarn.aggregate import RefusedOverwrite
    from forewarn.layout import aggregate_key

    settings = clone(clients, world)
    engine = make_engine(settings, clients)
    day = DAY0 + timedelta(days=2)
    [window] = range_windows(day, day + timedelta(hours=3), settings.lookback_hours, 3)
    before = {h: clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, day + timedelta(hours=h)))["Body"].read()
              for h in range(3)}
    for key in list_keys(clients.s3, settings.bucket, f"{settings.raw_prefix}{day:%Y/%m/%d}/"):  # the lifecycle rule ran
        clients.s3.delete_object(Bucket=settings.bucket, Key=key)
    for key in list_keys(clients.s3, settings.bucket, f"{settings.raw_prefix}{day - timedelta(hours=1):%Y/%m/%d/%H}/"):
        clients.s3.delete_object(Bucket=settings.bucket, Key=key)
    with pytest.raises(RefusedOverwrite, match="force_overwrite") as refused:
        run_window(settings, engine, clients.s3, window)
    assert "3 hour(s)" in str(refused.value)
    after = {h: clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, day + timedelta(hours=h)))["Body"].read()
             for h in range(3)}
    assert after == before, "the landed aggregates were replaced"
    forced = run_window(settings, engine, clients.s3, window, force=True)
    assert forced["rows"] == 0
    # an hour that had no events and no raw objects is written empty as before (nothing is lost)
    assert run_window(settings, engine, clients.s3, window)["rows"] == 0


def test_an_hour_whose_own_landing_expired_is_not_replaced_by_its_late_events_and_keeps_its_rejects(clients, world):
    from forewarn.aggregate import RefusedOverwrite
    from forewarn.layout import aggregate_key, rejects_key

    settings = clone(clients, world)
    engine = make_engine(settings, clients)
    hour = DAY0 + timedelta(days=2, hours=10)
    clients.s3.put_object(Bucket=settings.bucket, Key=f"{settings.raw_prefix}{hour:%Y/%m/%d/%H}/broken",
                          Body=b"".join(b"{broken json %d\n" % i for i in range(5)))
    [window] = range_windows(hour, hour + timedelta(hours=1), settings.lookback_hours, 1)
    first = run_window(settings, engine, clients.s3, window)
    assert first["rejected_by_reason"] == {"invalid_json": 5}
    before = clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour))["Body"].read()
    for key in list_keys(clients.s3, settings.bucket, f"{settings.raw_prefix}{hour:%Y/%m/%d/%H}/"):  # its own landing hour expired
        clients.s3.delete_object(Bucket=settings.bucket, Key=key)
    assert list_keys(clients.s3, settings.bucket, f"{settings.raw_prefix}{hour + timedelta(hours=1):%Y/%m/%d/%H}/"), "no late events"
    with pytest.raises(RefusedOverwrite, match="fewer events") as refused:
        run_window(settings, engine, clients.s3, window)
    assert f"{hour:%Y-%m-%dT%H}" in str(refused.value)
    assert clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour))["Body"].read() == before
    # a live run, while the landing hour may still be arriving, cannot tell: it does not refuse
    run_window(settings, engine, clients.s3, window, now=hour + timedelta(minutes=90))
    assert clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour))["Body"].read() != before
    run_window(settings, engine, clients.s3, window, force=True)  # replaced on purpose: the rejects set aside stay
    kept = clients.s3.get_object(Bucket=settings.bucket, Key=rejects_key(settings, hour))["Body"].read().decode().splitlines()
    assert len(kept) == 5


def test_conflicting_copies_are_counted_and_the_counts_agree_with_the_aggregates(clients, world):
    import io

    import pyarrow.parquet as pq

    from forewarn.layout import aggregate_key

    settings = clone(clients, world)
    engine = make_engine(settings, clients)
    at = DAY0 + timedelta(days=3, minutes=7)
    line = '{"event_id":"dup-1","series":"orders.count","event_time":"%s","value":%s}'
    stamp = at.isoformat().replace("+00:00", "Z")
    clients.s3.put_object(Bucket=settings.bucket, Key=f"{settings.raw_prefix}{at:%Y/%m/%d/%H}/copy-a", Body=(line % (stamp, 5) + "\n").encode())
    later = at + timedelta(hours=1)
    clients.s3.put_object(Bucket=settings.bucket, Key=f"{settings.raw_prefix}{later:%Y/%m/%d/%H}/copy-b", Body=(line % (stamp, 9) + "\n").encode())
    [window] = range_windows(at - timedelta(minutes=7), at + timedelta(minutes=53), settings.lookback_hours, 1)
    summary = run_window(settings, engine, clients.s3, window)
    assert summary["rejected_by_reason"].get("conflicting_duplicate") == 1
    body = clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, window.out_start))["Body"].read()
    table = pq.read_table(io.BytesIO(body)).to_pandas()
    orders = table[table.series == "orders.count"]
    assert int(orders["event_count"].sum()) == summary["events_by_series"]["orders.count"]


# --------------------------------------------------------------------------------------------
# 12. A backfill runs its own max_active_runs; every client retries alike
# --------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, run_type: str, state: str = "running"):
        self.run_type, self.state = run_type, state


class _TI:
    def __init__(self, previous):
        self.previous = previous

    def get_previous_dagrun(self):
        return self.previous


def test_a_backfilled_interval_waits_for_the_one_before_it():
    from forewarn.tasks import previous_backfill_pending

    assert previous_backfill_pending(_Run("backfill"), _TI(_Run("backfill", "running")))
    from airflow.utils.types import DagRunType

    assert previous_backfill_pending(_Run(DagRunType.BACKFILL_JOB), _TI(_Run(DagRunType.BACKFILL_JOB, "queued")))
    assert not previous_backfill_pending(_Run("backfill"), _TI(_Run("backfill", "success")))
    assert not previous_backfill_pending(_Run("backfill"), _TI(_Run("backfill", "failed")))  # a failed one is carried over
    assert not previous_backfill_pending(_Run("backfill"), _TI(None))  # the backfill's first interval
    assert not previous_backfill_pending(_Run("backfill"), _TI(_Run("scheduled", "running")))  # a live run: its own chain
    assert not previous_backfill_pending(_Run("scheduled"), _TI(_Run("backfill", "running")))  # live runs never wait


def test_every_aws_client_forewarn_makes_retries_throttling_adaptively():
    import boto3

    from forewarn.aws import RETRY_SETTINGS, AwsClients

    clients = AwsClients(session=boto3.Session(aws_access_key_id="k", aws_secret_access_key="s",  # noqa: S106 - no real credential
                                               region_name="us-east-1"),
                         endpoint_url="http://127.0.0.1:9")
    assert clients.client("cloudwatch").meta.config.retries["mode"] == "adaptive"
    assert clients.filesystem().config_kwargs == RETRY_SETTINGS
    engine = make_engine(Settings(engine="athena", aws_conn_id="forewarn_no_such_conn"), clients)
    assert engine.hook.config.retries == RETRY_SETTINGS["retries"]
